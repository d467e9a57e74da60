"""Training metrics: one JSON object per line in `<run>/metrics.jsonl`, optionally mirrored.

Each record has `step`, `split` ("train" or "val") and the figures of that step. Weights & Biases and
TensorBoard are imported only when asked for, with an install hint when they are missing. Only rank 0
writes; on resume, records after the resumed step (written after its checkpoint) are dropped, so the
file tells the story of the weights the run ends with.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from atomic import write_text_atomic
from llama.jsonfile import parse_json


def read_metrics(path: Path) -> list[dict]:
    """All records of a metrics file (a torn last line from a crash is ignored)."""
    records = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                records.append(parse_json(line, path))
            except ValueError:
                continue
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the records up to `last_step` (rewritten atomically)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def decoder_orthogonality(W_dec: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean |cosine| between distinct decoder rows of W_dec (d_sae, d_in), over the sampled `rows`
    (a random subset keeps this O(n^2 d) cheap for big SAEs); 0 = mutually orthogonal."""
    with torch.no_grad():
        w = torch.nn.functional.normalize(W_dec[rows].float(), dim=1)  # (n, d_in)
        cos = (w @ w.T).abs()                                          # (n, n)
        n = cos.shape[0]
        return float((cos.sum() - cos.diagonal().sum()) / max(1, n * (n - 1)))


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


class MetricsLogger:
    """Append records to a JSONL file, and mirror them to wandb / TensorBoard when configured."""

    def __init__(self, path: Path, *, wandb_project: str = "", tensorboard_dir: Path | None = None,
                 config: dict | None = None, run_name: str = ""):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._wandb = self._tensorboard = None
        if wandb_project:
            wandb = _import_optional("wandb", "--wandb-project")
            self._wandb = wandb.init(project=wandb_project, name=run_name or None, config=config,
                                     resume="allow")
        if tensorboard_dir is not None:
            tensorboard = _import_optional("torch.utils.tensorboard", "--tensorboard", package="tensorboard")
            self._tensorboard = tensorboard.SummaryWriter(log_dir=str(tensorboard_dir))

    def log(self, record: dict) -> None:
        """Write one record {"step", "split", name: number, ...}; flushed at once."""
        clean = {key: _finite(value) for key, value in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        numbers = {f"{record['split']}/{k}": v for k, v in record.items()
                   if k not in ("step", "split") and isinstance(v, (int, float))}
        if self._wandb is not None:
            self._wandb.log(numbers, step=record["step"])
        if self._tensorboard is not None:
            for name, value in numbers.items():
                self._tensorboard.add_scalar(name, value, record["step"])

    def close(self) -> None:
        """Close the file and the mirrors (safe to call twice)."""
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tensorboard is not None:
            self._tensorboard.close()
        self._wandb = self._tensorboard = None


def require_mirrors(*, wandb_project: str, tensorboard: bool) -> None:
    """Give the install hint of an asked-for mirror that is missing now, before a run folder changes."""
    if wandb_project:
        _import_optional("wandb", "--wandb-project")
    if tensorboard:
        _import_optional("torch.utils.tensorboard", "--tensorboard", package="tensorboard")


def _import_optional(module: str, flag: str, package: str | None = None):
    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module
        raise ValueError(f"{flag} needs the package {package}, which is not installed: "
                         f"pip install {package} (or drop {flag})") from None
