"""Per-latent top-N buffers updated a batch at a time with torch.topk merges.

One buffer holds, for every latent, the N largest scores seen so far and a payload per entry (row
numbers, context activations...). Each batch contributes its own per-latent top N; the merge keeps
the top N of the union. Memory is (d_sae, N, ...) whatever the dataset size, and there is no Python
loop over latents or elements.
"""

from __future__ import annotations

import torch


class TopNBuffer:
    """Top-N scores per latent with payload tensors carried along.

    scores: (d_sae, N) float32, -inf where empty. payload[name]: (d_sae, N, *shape) of its dtype.
    Only scores > 0 enter (a latent that did not fire is no evidence).
    """

    def __init__(self, d_sae: int, n: int, payload: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 device: torch.device | str = "cpu"):
        self.n = n
        self.scores = torch.full((d_sae, n), float("-inf"), device=device)
        self.payload = {name: torch.zeros((d_sae, n, *shape), dtype=dtype, device=device)
                        for name, (shape, dtype) in payload.items()}

    def merge(self, scores: torch.Tensor, payload: dict[str, torch.Tensor]) -> None:
        """Merge candidates: scores (d_sae, m), payload[name] (d_sae, m, *shape)."""
        scores = scores.float().masked_fill(scores <= 0, float("-inf"))
        both = torch.cat([self.scores, scores], dim=1)                        # (d_sae, N + m)
        self.scores, keep = torch.topk(both, self.n, dim=1, sorted=True)     # (d_sae, N)
        for name, current in self.payload.items():
            joined = torch.cat([current, payload[name].to(current.dtype)], dim=1)
            index = keep.view(*keep.shape, *([1] * (joined.dim() - 2))).expand(-1, -1, *joined.shape[2:])
            self.payload[name] = torch.gather(joined, 1, index)

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        state = {f"{prefix}.scores": self.scores}
        state.update({f"{prefix}.{name}": t for name, t in self.payload.items()})
        return state

    def load_state_dict(self, prefix: str, state: dict[str, torch.Tensor]) -> None:
        device = self.scores.device
        self.scores = state[f"{prefix}.scores"].to(device).clone()
        for name in self.payload:
            self.payload[name] = state[f"{prefix}.{name}"].to(device).clone()
