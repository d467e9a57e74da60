"""Each rank's share of the prebatched batches, and the statistics the SAE is initialised from.

The trainer reads any sequence of float32 `(batch_size, d_in)` tensors (`data.batches.BatchDataset`,
or a list in tests). At global step `s` of epoch `e`, the batches are taken in groups of `world_size`
consecutive batches: rank `r` reads batch `world_size * perm_e[s] + r`, so batch `i` always goes to
rank `i % world_size`, and `perm_e` (a seeded permutation of the groups, new each epoch) makes the
order depend only on (seed, epoch, step). The data position is therefore just the step: resuming needs
no iterator state, and one process reading the concatenated groups sees the same global batches.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import torch


class Rebatched:
    """A batch sequence seen with another batch size (a divisor or a multiple of the stored one)."""

    def __init__(self, batches: Sequence[torch.Tensor], batch_size: int, stored: int):
        if batch_size % stored and stored % batch_size:
            raise ValueError(f"--batch-size {batch_size} must divide or be a multiple of the prebatched "
                             f"batch size {stored}; choose e.g. {stored // 2} or {stored * 2}")
        self.batches, self.batch_size, self.stored = batches, batch_size, stored
        for name in ("meta", "stats", "folder"):
            if hasattr(batches, name):
                setattr(self, name, getattr(batches, name))

    def __len__(self) -> int:
        return len(self.batches) * self.stored // self.batch_size

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range for {len(self)} batches")
        if self.batch_size <= self.stored:  # a slice of one stored batch
            per = self.stored // self.batch_size
            start = (i % per) * self.batch_size
            return self.batches[i // per][start:start + self.batch_size]
        per = self.batch_size // self.stored  # several stored batches joined
        return torch.cat([self.batches[i * per + j] for j in range(per)])


class RankShare:
    """Rank `rank`'s batch for each global step, epoch after epoch (see the module docstring)."""

    def __init__(self, batches: Sequence[torch.Tensor], rank: int, world_size: int, seed: int):
        self.batches, self.rank, self.world_size, self.seed = batches, rank, world_size, seed
        self.steps_per_epoch = len(batches) // world_size  # a last incomplete group is skipped
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(batches)} training batches cannot feed {world_size} ranks; "
                             f"prebatch more data or use fewer processes")
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def index(self, step: int) -> int:
        """The dataset index this rank reads at global step `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.steps_per_epoch, generator=generator)
        return int(self._perm[position]) * self.world_size + self.rank

    def batch(self, step: int) -> torch.Tensor:
        """Rank's float32 batch (batch_size, d_in) at global step `step`."""
        return self.batches[self.index(step)]

    def total_steps(self, epochs: float, max_steps: int) -> int:
        """Steps of the run: `max_steps` when given, else `epochs` passes (at least one step)."""
        return max_steps if max_steps else max(1, math.ceil(epochs * self.steps_per_epoch))


def data_stats(batches: Sequence[torch.Tensor], sample_batches: int = 16) -> dict:
    """The dataset's {"mean", "mean_sq_norm", "count"}: its `.stats` when it has them (the prebatching's
    Welford pass over every row), else estimated from the first `sample_batches` batches."""
    stats = getattr(batches, "stats", None)
    if stats:
        return {"mean": torch.tensor(stats["mean"], dtype=torch.float64),
                "mean_sq_norm": float(stats["mean_sq_norm"]), "count": int(stats["count"])}
    rows = torch.cat([batches[i] for i in range(min(sample_batches, len(batches)))]).double()
    return {"mean": rows.mean(0), "mean_sq_norm": float(rows.pow(2).sum(1).mean()), "count": len(rows)}


def normalized_mean(sae: torch.nn.Module, batches: Sequence[torch.Tensor], stats: dict,
                    sample_batches: int = 16) -> torch.Tensor:
    """Mean of the SAE's normalised inputs (d_in,), which `b_pre` starts from. Where the normalisation
    is linear it is the normalised dataset mean (exact, and the same whatever the rank or batch size);
    otherwise it is averaged over the first `sample_batches` batches."""
    if sae.normalization.linear:
        return sae.normalized_mean([stats["mean"][None].float()])  # normalize(E[x]) = E[normalize(x)]
    return sae.normalized_mean(batches[i] for i in range(min(sample_batches, len(batches))))


def data_identity(batches: Sequence[torch.Tensor]) -> dict:
    """What a checkpoint records of the data it trains on: a fingerprint of the batches folder (its
    batches.json and stats.json; of the statistics for data held in memory), the width d_in, the batch
    size the trainer reads and the number of such batches."""
    folder = getattr(batches, "folder", None)
    if folder is not None:
        parts = [(Path(folder) / name).read_bytes() for name in ("batches.json", "stats.json")]
    else:
        parts = [json.dumps(getattr(batches, "stats", None) or {}, sort_keys=True).encode()]
    first = batches[0]
    return {"fingerprint": hashlib.sha256(b"\0".join(parts)).hexdigest()[:16], "d_in": int(first.shape[-1]),
            "batch_size": int(first.shape[0]), "batches": len(batches)}


def identity_mismatch(saved: dict, current: dict) -> str:
    """What differs between two `data_identity` records, in words ("" when nothing does)."""
    names = {"d_in": "width d_in", "batch_size": "batch size", "batches": "batch count",
             "fingerprint": "folder fingerprint"}
    return ", ".join(f"{label} {saved.get(key)} -> {current[key]}" for key, label in names.items()
                     if saved.get(key) != current[key])
