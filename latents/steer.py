"""The one place where latents/ steers a model through sae.steering: an injection pushing one latent,
and the latent's value on an activation. (sae.steering's interface may change; only this file follows.)"""

from __future__ import annotations

from typing import Callable

import torch

from latents.stats import sae_encoder

Injection = Callable[[torch.Tensor], torch.Tensor]  # (bsz, seqlen, d_in) -> same, at the SAE's hook


def push(sae, latent: int, value: float, mode: str = "direction") -> Injection:
    """An injection that pushes `latent` by `value` (sae.steering's modes: direction, sae, clamp)."""
    from sae.steering import Steer, Steering

    return Steering(sae, [Steer(int(latent), float(value))], mode)


def latent_values(sae, acts: torch.Tensor, latent: int) -> torch.Tensor:
    """(...,) activation of `latent` on raw activations acts (..., d_in): 0 where it is not among the top k."""
    flat = acts.reshape(-1, acts.shape[-1])
    values, indices = sae_encoder(sae)(flat)
    return ((indices == latent) * values).sum(-1).reshape(acts.shape[:-1])
