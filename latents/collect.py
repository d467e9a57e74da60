"""Run the statistics pass (resumable) and turn the accumulated counts into per-latent figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import records
from atomic import atomic_path
from data.shards import PARTS, shard_file
from latents.histogram import LogBins, auroc_from_histograms
from latents.source import CapturedData
from latents.stats import Encoder, LatentAccumulator, StatsConfig


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """safetensors file with a JSON `meta` entry in its header, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"meta": json.dumps(meta)})


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Inverse of save_tensors: (tensors, meta)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return load_file(str(path)), meta
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path}: unreadable ({err}); delete it and rerun") from None


def inputs_identity(sae_folder: Path, data: CapturedData) -> dict:
    """What a statistics pass is computed from, by content (records.identity), never by path or mtime:
    the SAE's weights and config, and the capture (`capture_identity`). A moved folder keeps its
    statistics; a retrained SAE, or a recapture into the same folder, does not."""
    return {"sae": records.identity(records.entries(sae_folder, ["sae.safetensors", "config.json"])),
            "capture": capture_identity(data), "rows": data.n_rows}


def capture_identity(data: CapturedData) -> str:
    """The capture's content: its manifest, which records every shard file's size and sampled CRC-32 (so
    shards of gigabytes are not read again), and its sentence table; the files of a shard the manifest
    records no checks for are hashed themselves."""
    names = ["manifest.json", "sentences.jsonl"]
    for entry in data.manifest["shards"]:
        if not entry.get("files"):
            names += [shard_file(data.folder, part, entry["shard"]).name for part in PARTS]
    return records.identity(records.entries(data.folder, names))


@dataclass
class LatentStats:
    """The statistics of every latent (tensors on the CPU) and what they were computed from."""
    tensors: dict[str, torch.Tensor]
    meta: dict

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    @property
    def d_sae(self) -> int:
        return int(self.tensors["fired"].numel())

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.get("label_names", []))

    @property
    def bins(self) -> LogBins:
        return LogBins(**self.meta["config"]["bins"])

    def live(self) -> torch.Tensor:
        """(n_live,) indices of the latents that fired at least once."""
        return torch.nonzero(self.tensors["fired"] > 0).flatten()

    def save(self, path: Path) -> None:
        save_tensors(path, self.tensors, self.meta)

    @classmethod
    def load(cls, path: Path) -> "LatentStats":
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: not found; run interpret.py to compute the statistics")
        return cls(*load_tensors(path))


def summarize(state: dict[str, torch.Tensor], meta: dict) -> LatentStats:
    """Derived per-latent figures (density, means, label AUROC and mean difference) from raw counts."""
    t = {k: v.detach().cpu() for k, v in state.items()}
    rows = max(int(t["rows"]), 1)
    fired = t["fired"].double()
    t["density"] = fired / rows
    t["mean"] = t["sum"] / rows                                   # over all tokens
    t["mean_active"] = t["sum"] / fired.clamp(min=1)              # over the tokens where it fires
    n_labels = len(meta.get("label_names", []))
    if n_labels:
        hist = t["label_hist"][:, :n_labels].double()               # (d_sae, L, bins) non-zero values
        count = t["label_count"][:n_labels].double()                # (L,) sentences per label
        zeros = count - hist.sum(-1)                                # sentences where the latent is 0
        with_zero = torch.cat([zeros[..., None], hist], dim=-1)     # (d_sae, L, 1 + bins)
        rest = with_zero.sum(1, keepdim=True) - with_zero           # one label against the others
        t["label_auroc"] = auroc_from_histograms(with_zero, rest)   # (d_sae, L)
        sums = t["label_sum"][:n_labels].T                          # (d_sae, L)
        others = (count.sum() - count).clamp(min=1)
        t["label_mean_diff"] = sums / count.clamp(min=1) - (sums.sum(1, keepdim=True) - sums) / others
    return LatentStats(t, meta)


def collect_stats(data: CapturedData, encode: Encoder, d_sae: int, cfg: StatsConfig, *,
                  rows_per_chunk: int = 4096, device: torch.device | str = "cpu",
                  checkpoint: Path | None = None, checkpoint_every: int = 200, identity: dict | None = None,
                  progress: Callable[[Iterable], Iterable] = lambda it: it) -> LatentStats:
    """One pass over `data`, encoding each chunk with `encode`; resumes from `checkpoint` if it
    holds a partial pass over the same inputs (`identity`: anything that names them)."""
    table = data.sentences
    labels_of = torch.from_numpy(table.labels.astype("int64"))
    acc = LatentAccumulator(d_sae, len(table.label_names), len(table.labels), cfg, device=device)
    meta = {"config": cfg.to_dict(), "label_names": table.label_names, "identity": identity or {},
            "rows_per_chunk": rows_per_chunk, "n_sentences": len(table.labels), "d_sae": d_sae}
    done = _resume(acc, checkpoint, meta)
    with torch.no_grad():
        for i, chunk in enumerate(progress(data.chunks(rows_per_chunk))):
            if chunk.first_row < done:
                continue
            values, indices = encode(chunk.acts.to(device))                    # (n, w) each
            ordinals = torch.unique_consecutive(chunk.sentence)
            acc.update(values, indices, chunk, labels_of[ordinals].to(device))
            if checkpoint is not None and (i + 1) % checkpoint_every == 0:
                save_tensors(checkpoint, acc.state_dict(),
                             {**meta, "next_row": chunk.first_row + len(chunk.tokens)})
    stats = summarize(acc.state_dict(), {**meta, "n_rows": data.n_rows})
    if checkpoint is not None and Path(checkpoint).exists():
        Path(checkpoint).unlink()
    return stats


def _resume(acc: LatentAccumulator, checkpoint: Path | None, meta: dict) -> int:
    """Load a matching partial pass into `acc`; the first row still to do (0 for a fresh start)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return 0
    state, saved = load_tensors(checkpoint)
    if {k: saved.get(k) for k in meta} != json.loads(json.dumps(meta)):
        return 0  # a pass over other inputs or settings: start again
    acc.load_state_dict(state)
    return int(saved["next_row"])
