"""Logit lens of SAE latents: which tokens a latent's decoder direction promotes and suppresses.

A latent adds (activation x direction) to the residual stream. Read straight through the model's
head, that direction changes the logits by (direction * g) @ W_U^T, where g is the final RMSNorm's
gain and W_U the unembedding (vocab, dim). The RMS scaling of the norm is left out: it depends on the
whole residual, not on the latent, and does not change the ranking of tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LogitLens(NamedTuple):
    """Top tokens per latent: promoted (largest logit change) and suppressed (most negative)."""
    promoted_ids: torch.Tensor     # (n_latents, top) int64 token ids
    promoted: torch.Tensor         # (n_latents, top) logit change per unit of activation
    suppressed_ids: torch.Tensor   # (n_latents, top) int64
    suppressed: torch.Tensor       # (n_latents, top) most negative first


@torch.no_grad()
def logit_lens(directions: torch.Tensor, norm_gain: torch.Tensor, unembed: torch.Tensor, *,
               top: int = 10, chunk: int = 256) -> LogitLens:
    """directions (n_latents, dim) raw-space decoder directions; norm_gain (dim,); unembed (vocab, dim).
    Processed `chunk` latents at a time, so memory stays at (chunk, vocab)."""
    parts = []
    weight = unembed.float()
    gain = norm_gain.float().to(weight.device)
    for start in range(0, len(directions), chunk):
        block = directions[start:start + chunk].float().to(weight.device) * gain   # (c, dim)
        logits = block @ weight.T                                                  # (c, vocab)
        up, up_ids = logits.topk(top, dim=-1)
        down, down_ids = (-logits).topk(top, dim=-1)
        parts.append((up_ids, up, down_ids, -down))
    if not parts:
        empty = torch.zeros(0, top)
        return LogitLens(empty.long(), empty, empty.long(), empty)
    return LogitLens(*(torch.cat(p).cpu() for p in zip(*parts)))


def sae_directions(sae, latents: torch.Tensor) -> torch.Tensor:
    """(n, d_in) raw-space decoder directions of `latents` (see SparseAutoencoder.decoder_direction)."""
    return torch.stack([sae.decoder_direction(int(i)) for i in latents]) if len(latents) else \
        torch.zeros(0, sae.cfg.d_in)


def model_head(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(final norm gain (dim,), unembedding (vocab, dim)) of a llama Transformer (tied or not)."""
    return model.norm.weight.detach(), model.output.weight.detach()
