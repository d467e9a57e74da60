"""Per-latent top-N buffers updated a batch at a time with torch.topk merges.

One buffer holds, for every latent, the N largest scores seen so far and a payload per entry (row
numbers, context activations...). A batch offers sparse candidates (latent, score); only those that
beat their latent's current N-th score are considered, at most N per latent, and a torch.topk over
(old N + new N) per touched latent decides which enter. Memory is (d_sae, N, ...) whatever the dataset size, and there is no
Python loop over latents or elements.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def rank_within_groups(group: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order entries by (group, score descending); returns (order, rank of each ordered entry in its group)."""
    if group.device.type == "cpu":  # numpy's lexsort is several times faster than torch's CPU sorts
        order = torch.from_numpy(np.lexsort((-score.numpy(), group.numpy())))
    else:
        order = torch.argsort(score, descending=True, stable=True)
        order = order[torch.argsort(group[order], stable=True)]
    grouped = group[order]
    first = torch.searchsorted(grouped, grouped)                               # start of each entry's group
    return order, torch.arange(len(order), device=group.device) - first


def argsort(key: torch.Tensor) -> torch.Tensor:
    """torch.argsort(key, stable=True), through numpy on the CPU (several times faster there)."""
    if key.device.type == "cpu":
        return torch.from_numpy(np.argsort(key.numpy(), kind="stable"))
    return torch.argsort(key, stable=True)


def unique_inverse(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(key, return_inverse=True), through numpy on the CPU (faster there)."""
    if key.device.type == "cpu":
        values, inverse = np.unique(key.numpy(), return_inverse=True)
        return torch.from_numpy(values), torch.from_numpy(inverse.reshape(-1))
    return torch.unique(key, return_inverse=True)


def dense_ids(ids: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct ids ascending (T,), position of each id among them (len(ids),)) for ids in [0, size)."""
    present = torch.bincount(ids, minlength=size) > 0
    distinct = torch.nonzero(present).flatten()
    lookup = torch.cumsum(present, 0) - 1
    return distinct, lookup[ids]


class TopNBuffer:
    """Top-N scores per latent with payload tensors carried along.

    scores: (d_sae, N) float32, -inf where empty (in no order until `sorted_`). payload[name]:
    (d_sae, N, *shape).
    Only scores > 0 enter (a latent that did not fire is no evidence).
    """

    def __init__(self, d_sae: int, n: int, payload: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 device: torch.device | str = "cpu"):
        self.n = n
        self.scores = torch.full((d_sae, n), float("-inf"), device=device)
        self.payload = {name: torch.zeros((d_sae, n, *shape), dtype=dtype, device=device)
                        for name, (shape, dtype) in payload.items()}

    def offer(self, latent: torch.Tensor, score: torch.Tensor,
              payload: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> None:
        """Merge candidates latent (C,), score (C,); `payload(selected)` gives the payload tensors
        (S, *shape) of the selected candidates (positions into latent / score), computed only for
        the candidates that enter. Entries that enter take the slots of the entries they evict, so
        the work is proportional to the candidates, not to the buffer (rows are sorted on export)."""
        keep = (score > 0) & (score > self.scores.amin(1).index_select(0, latent))
        idx = torch.nonzero(keep).flatten()
        if not len(idx):
            return
        order, rank = rank_within_groups(latent[idx], score[idx])
        top = rank < self.n                                                     # at most N per latent
        chosen, rank = idx[order[top]], rank[top]                               # (S,)
        touched, row = dense_ids(latent[chosen], len(self.scores))             # (T,), (S,)
        n, dev = self.n, score.device
        cand = torch.full((len(touched) * n,), float("-inf"), device=dev)
        cand[row * n + rank] = score[chosen].float()                           # flat indices: fast on CPU
        cand = cand.view(len(touched), n)                                       # (T, N)
        old = self.scores.index_select(0, touched)                              # (T, N)
        _, pick = torch.topk(torch.cat([old, cand], dim=1), n, dim=1)
        kept = torch.zeros(len(touched), 2 * n, dtype=torch.bool, device=dev).scatter_(1, pick, True)
        admitted_mask = kept[:, n:] & torch.isfinite(cand)                      # new entries that enter
        # Each touched latent evicts as many of its lowest old entries as it admits new ones.
        lowest_first = torch.argsort(old, dim=1)                                # (T, N)
        evict = torch.arange(n, device=dev) < admitted_mask.sum(1, keepdim=True)
        evicted_row = torch.nonzero(evict)[:, 0]                                # (K,) row-major
        target = touched[evicted_row] * n + lowest_first[evict]                 # (K,) flat buffer slots
        slot_of = torch.full((len(touched) * n,), -1, dtype=torch.long, device=dev)
        slot_of[row * n + rank] = torch.arange(len(chosen), device=dev)
        source = chosen[slot_of[torch.nonzero(admitted_mask.flatten()).flatten()]]  # (K,) row-major
        self.scores.view(-1)[target] = score[source].float()
        for name, values in payload(source).items():
            current = self.payload[name]
            current.view(-1, *current.shape[2:])[target] = values.to(current.dtype)

    def sorted_(self) -> None:
        """Sort every latent's entries by score, best first (payload follows)."""
        self.scores, order = torch.sort(self.scores, dim=1, descending=True)
        for name, current in self.payload.items():
            index = order.view(*order.shape, *([1] * (current.dim() - 2))).expand_as(current)
            self.payload[name] = torch.gather(current, 1, index)

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """Scores and payloads, each latent's entries sorted best first."""
        self.sorted_()
        state = {f"{prefix}.scores": self.scores}
        state.update({f"{prefix}.{name}": t for name, t in self.payload.items()})
        return state

    def load_state_dict(self, prefix: str, state: dict[str, torch.Tensor]) -> None:
        device = self.scores.device
        self.scores = state[f"{prefix}.scores"].to(device).clone()
        for name in self.payload:
            self.payload[name] = state[f"{prefix}.{name}"].to(device).clone()
