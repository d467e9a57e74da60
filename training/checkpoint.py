"""Training checkpoints: one file per saved step, written atomically, the newest few loadable ones kept.

`<run>/checkpoints/step-00001200.pt` holds a dict of tensors and plain values (model, optimiser,
scheduler, `TrainState`, configs, the data's identity) saved with `torch.save` and read back with
`weights_only=True`. Each file goes through `atomic.open_atomic` (temporary name, fsync, rename), so a
file with a final name was complete when written; one damaged later is skipped on resume in favour of
the one before, and never counts as one of the checkpoints kept.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from atomic import open_atomic

FORMAT = "llama-sae-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    """The one place that names a run's checkpoint folder (for saving and for resuming)."""
    return Path(run_dir) / "checkpoints"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete-named checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(folder: Path, step: int, payload: dict, keep: int) -> Path:
    """Write `payload` as the checkpoint of `step` atomically, then prune to the newest `keep` that load."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    with open_atomic(path, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
    prune(folder, keep, known_good=path)
    return path


def prune(folder: Path, keep: int, known_good: Path | None = None) -> list[Path]:
    """Delete every checkpoint older than the `keep` newest loadable ones; returns what was deleted.

    A damaged file never counts as kept (so pruning cannot leave only damaged files), and nothing
    newer than the oldest kept checkpoint is touched.
    """
    kept, deleted = 0, []
    for _, path in reversed(list_checkpoints(folder)):
        if kept >= keep:
            path.unlink(missing_ok=True)
            deleted.append(path)
        elif path == known_good or loads(path):
            kept += 1
    return deleted


def loads(path: Path) -> bool:
    """Whether `path` opens as a checkpoint. Memory-mapped: the tensors' bytes are not read, so a
    multi-gigabyte checkpoint costs its zip directory and pickle."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated zip, unpickling error, zeroed file
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT and payload.get("version") == VERSION


def load_checkpoint(path: Path) -> dict:
    """Read one checkpoint onto the CPU; ValueError naming the file when it is damaged or foreign."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated zip, unpickling error: the file is not usable
        raise ValueError(f"{path}: damaged checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')}, this code reads {VERSION}")
    return payload


def load_latest(folder: Path) -> tuple[Path | None, dict | None, list[str]]:
    """The newest checkpoint that loads: (path, payload, reasons the newer ones were skipped).

    (None, None, reasons) when there is none.
    """
    skipped: list[str] = []
    for _, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path), skipped
        except ValueError as err:
            skipped.append(str(err))
    return None, None, skipped
