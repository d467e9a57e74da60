"""Synthetic batch sequences for the trainer tests (shared by the in-process and the torchrun tests)."""

from __future__ import annotations

import torch


class Batches(list):
    """A list of float32 (batch, d) tensors with the `stats` and `meta` of a prebatched dataset."""

    def __init__(self, batches: list[torch.Tensor], stats: dict | None = None):
        super().__init__(batches)
        rows = torch.cat(batches).double()
        self.stats = stats or {"mean": rows.mean(0).tolist(), "mean_sq_norm": float(rows.pow(2).sum(1).mean()),
                               "count": rows.shape[0], "var": rows.var(0, unbiased=False).tolist()}
        self.meta = {"hook": "blocks.1.hook_resid_post", "model": "synthetic-test-model",
                     "prepend_bos": True, "chat": False}


def planted_batches(n_batches: int, batch: int, d: int = 16, atoms: int = 48, active: int = 3,
                    seed: int = 0) -> Batches:
    """Sparse positive combinations of `active` atoms of a random unit dictionary, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, d, generator=g), dim=1)
    offset = torch.randn(d, generator=g)
    out = []
    for _ in range(n_batches):
        idx = torch.rand(batch, atoms, generator=g).argsort(dim=1)[:, :active]
        codes = torch.zeros(batch, atoms).scatter(1, idx, torch.rand(batch, active, generator=g) + 0.5)
        out.append((codes @ dictionary + offset).float())
    return Batches(out)


def merge_pairs(batches: Batches, world: int) -> Batches:
    """What one process must read to match `world` ranks: batch j = concat of batches world*j ... + world-1
    (the dataset statistics stay those of the whole data)."""
    merged = [torch.cat(batches[j:j + world]) for j in range(0, len(batches) - world + 1, world)]
    return Batches(merged, stats=batches.stats)
