"""Steering a model through SAE latents: injection functions for the model's hook points.

Three ways to push latent i by VALUE at the SAE's hook (every position, prompt and generated tokens):

  "sae"        the SAE's reconstruction replaces the activation, with VALUE added to latent i's
               pre-activation through `h_bias` (before TopK, so the latent enters the top k). Every later
               layer sees the steered reconstruction. VALUE is in latent-activation units (normalised
               space); value 0 gives the SAE-spliced model, which differs from the plain model by the
               SAE's reconstruction error.
  "direction"  VALUE times latent i's decoder direction (raw space) is added to the activation; nothing
               else changes (no reconstruction error). Value 0 is exactly the plain model.
  "clamp"      latent i is set to VALUE on every token: the activation gets (VALUE - a_i) times the
               decoder direction, a_i being the latent's current activation; the reconstruction error
               is kept (clamping with the error term, as in Templeton et al. 2024).

In all modes a latent moving by d moves the SAE's reconstruction by d * W_dec[i] in normalised space,
i.e. d * W_dec[i] * scale in raw space (scale: 1 / norm_scale, or the token's std / norm for per-token
normalisations), so the same VALUE means the same push whatever the mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

from sae.model import SparseAutoencoder

MODES = ("sae", "direction", "clamp")


@dataclass(frozen=True)
class Steer:
    """Push latent `latent` by `value` (see the module docstring for what value means per mode)."""

    latent: int
    value: float


def parse_steer(text: str) -> Steer:
    """"IDX:VALUE" -> Steer; a one-line ValueError naming the flag otherwise."""
    idx, sep, value = str(text).partition(":")
    if not sep or not idx.strip() or not value.strip():
        raise ValueError(f"--steer {text}: expected IDX:VALUE, e.g. --steer 896:20")
    try:
        latent = int(idx)
    except ValueError:
        raise ValueError(f"--steer {text}: latent index {idx!r} is not an integer") from None
    if latent < 0:
        raise ValueError(f"--steer {text}: latent index must be >= 0")
    try:
        amount = float(value)
    except ValueError:
        raise ValueError(f"--steer {text}: value {value!r} is not a number") from None
    if not math.isfinite(amount):
        raise ValueError(f"--steer {text}: value must be a finite number")
    return Steer(latent, amount)


def check_steers(steers: Iterable[Steer], d_sae: int) -> None:
    """One-line ValueError for a latent index outside the SAE."""
    for steer in steers:
        if not 0 <= steer.latent < d_sae:
            raise ValueError(f"--steer {steer.latent}:{steer.value:g}: latent index out of range, the SAE "
                             f"has latents 0..{d_sae - 1}")


class LatentRecord(NamedTuple):
    """Latents the SAE saw at the hook during one forward call (for --show-features)."""

    values: Tensor   # (bsz, seqlen, k) activations of the active latents
    indices: Tensor  # (bsz, seqlen, k) their indices


class Steering:
    """An injection (`fn(act) -> act` for `model(..., injections={hook: fn})`) steering SAE latents.

    `record = True` keeps the SAE's active latents of the last call in `last` (computed on what flows on:
    the steered reconstruction in "sae" mode, the steered activation otherwise).
    """

    def __init__(self, sae: SparseAutoencoder, steers: Sequence[Steer] = (), mode: str = "sae"):
        if mode not in MODES:
            raise ValueError(f"--mode {mode}: choose one of {', '.join(MODES)}")
        check_steers(steers, sae.cfg.d_sae)
        self.sae, self.mode, self.steers = sae, mode, tuple(steers)
        device, dtype = sae.W_dec.device, sae.W_dec.dtype
        self.delta = torch.zeros(sae.cfg.d_sae, device=device, dtype=dtype)  # (d_sae,) h_bias offsets
        for steer in steers:
            self.delta[steer.latent] += steer.value
        self.latents = torch.tensor([s.latent for s in steers], dtype=torch.long, device=device)  # (n,)
        self.values = torch.tensor([s.value for s in steers], dtype=dtype, device=device)  # (n,)
        self.rows = sae.W_dec.detach()[self.latents]  # (n, d_in) normalised-space decoder rows
        self.record = False
        self.last: LatentRecord | None = None

    @torch.no_grad()
    def __call__(self, act: Tensor) -> Tensor:
        x = act.to(self.sae.W_dec.dtype)  # (bsz, seqlen, d_in)
        if self.mode == "sae":
            out = self._splice(x)
        elif self.mode == "direction":
            out = x + self._push(x, self.values.expand(*x.shape[:-1], -1))
        else:
            values, indices = self.sae.encode_topk(self.sae.normalize(x)[0])  # (bsz, seqlen, k)
            # each steered latent's current activation, 0 where it is not among the active ones
            current = ((indices[..., None] == self.latents) * values[..., None]).sum(-2)  # (bsz, seqlen, n)
            out = x + self._push(x, self.values - current)
        if self.record and self.mode != "sae":  # "sae" mode records inside _splice
            self.last = LatentRecord(*self.sae.encode_topk(self.sae.normalize(out)[0]))
        return out.to(act.dtype)

    def _splice(self, x: Tensor) -> Tensor:
        """SAE forward with h_bias += delta, restored afterwards (the SAE is shared, never left changed)."""
        saved = self.sae.h_bias.clone()
        try:
            self.sae.h_bias.add_(self.delta)
            result = self.sae(x)
        finally:
            self.sae.h_bias.copy_(saved)
        self.last = LatentRecord(result.values, result.indices)
        return result.x_hat

    def _push(self, x: Tensor, amounts: Tensor) -> Tensor:
        """Raw-space change for latent moves `amounts` (bsz, seqlen, n): (amounts @ rows) * scale."""
        if not self.steers:
            return torch.zeros_like(x)
        _, ctx = self.sae.normalize(x)
        return (amounts @ self.rows) * ctx.scale  # (bsz, seqlen, d_in)


def top_latents(record: LatentRecord, n: int) -> tuple[Tensor, Tensor]:
    """The n strongest active latents per position: (values (..., n), indices (..., n))."""
    n = min(n, record.values.shape[-1])
    values, order = record.values.topk(n, dim=-1)
    return values, record.indices.gather(-1, order)
