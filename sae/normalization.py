"""How an SAE maps the model's raw activations into the space it works in, and back.

Each normalisation is a small module: `forward(x) -> (x_n, ctx)` and `inverse(x_n, ctx) -> x`, where
`ctx` (a NormContext) holds the shift and the raw-space length of one normalised unit (a scalar, or one
value per token). Statistics fitted on the training data are buffers, so `state_dict()` holds them
and a saved or checkpointed SAE needs nothing else.

  "dataset_scale"           x_n = x * s, one scalar s fitted so that E||x_n||^2 = d_in (SAELens'
                            `expected_average_only_in`, Llama Scope). Linear: every latent has one
                            direction in raw space. The default.
  "token_standardize"       x_n = (x - mean(x)) / (std(x) + eps) over each token's features (the
                            reference design), undone with that token's mean and std.
  "mean_centred_unit_norm"  x_n = (x - m) / ||x - m|| with a fitted dataset mean m, undone with each
                            token's norm.
  "none"                    x_n = x.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

NORM_FLOOR = 1e-6  # smallest token norm mean_centred_unit_norm divides by (an all-mean token has norm 0)


class NormContext(NamedTuple):
    """What maps a row back to raw space: x = x_n * scale + shift (per token for per-token normalisations)."""

    shift: Tensor | None   # (..., 1) or (d_in,) or None
    scale: Tensor | float  # (..., 1) or () tensor, or 1.0: the raw-space length of one normalised unit


class Normalization(nn.Module):
    """x (..., d_in) <-> x_n (..., d_in). Subclasses override `context` (and `fit` if they have
    statistics); `forward` and `inverse` follow from it."""

    linear = True  # the same map for every token (a latent then has one raw-space direction)

    def context(self, x: Tensor | None = None) -> NormContext:
        """The map of raw rows `x` (only per-token normalisations need them)."""
        return NormContext(None, 1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, NormContext]:
        """Raw x -> (x_n, the context that maps it back)."""
        ctx = self.context(x)
        centred = x - ctx.shift if ctx.shift is not None else x
        return (centred if _is_one(ctx.scale) else centred / ctx.scale), ctx

    def inverse(self, x_n: Tensor, ctx: NormContext) -> Tensor:
        """x_n -> raw space, with the context `forward` returned for the same rows."""
        out = x_n if _is_one(ctx.scale) else x_n * ctx.scale
        return out + ctx.shift if ctx.shift is not None else out

    def fit(self, *, mean: Tensor | None, mean_sq_norm: float | None) -> None:
        """Fit dataset statistics from the raw data's mean vector and mean squared norm."""


class Identity(Normalization):
    """"none": the SAE reads the raw activations."""


class DatasetScale(Normalization):
    """x_n = x * scale, one scalar for the whole dataset."""

    def __init__(self, d_in: int, **kw):
        super().__init__()
        self.d_in = d_in
        # Both directions are kept, each rounded once from the float64 fit, so that x -> x_n and back
        # are single multiplications (what format-1 SAE folders computed, bit for bit).
        self.register_buffer("scale", torch.ones((), **kw))
        self.register_buffer("unscale", torch.ones((), **kw))

    def context(self, x: Tensor | None = None) -> NormContext:
        return NormContext(None, self.unscale)

    def forward(self, x: Tensor) -> tuple[Tensor, NormContext]:
        return x * self.scale, NormContext(None, self.unscale)  # a multiplication, not x / unscale

    @torch.no_grad()
    def fit(self, *, mean: Tensor | None, mean_sq_norm: float | None) -> None:
        if mean_sq_norm is None or not mean_sq_norm > 0:
            raise ValueError(f"dataset_scale needs the mean squared norm of the data (> 0), got {mean_sq_norm!r}")
        self.set_scale(math.sqrt(self.d_in / float(mean_sq_norm)))

    @torch.no_grad()
    def set_scale(self, scale: float) -> None:
        """Set x_n = x * scale (a positive finite float, kept in float64 until stored)."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"dataset_scale: the scale must be a positive finite number, got {scale!r}")
        self.scale.fill_(scale)
        self.unscale.fill_(1.0 / scale)


class TokenStandardize(Normalization):
    """Each token standardised over its own features; undone with that token's mean and std."""

    linear = False

    def __init__(self, d_in: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def context(self, x: Tensor | None = None) -> NormContext:
        x = _needs_input(x, "token_standardize")
        return NormContext(x.mean(-1, keepdim=True), x.std(-1, keepdim=True) + self.eps)  # (..., 1) each


class MeanCentredUnitNorm(Normalization):
    """(x - mean) / ||x - mean|| with a fitted dataset mean; undone with each token's norm."""

    linear = False

    def __init__(self, d_in: int, **kw):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_in, **kw))

    def context(self, x: Tensor | None = None) -> NormContext:
        norm = (_needs_input(x, "mean_centred_unit_norm") - self.mean).norm(dim=-1, keepdim=True)
        return NormContext(self.mean, norm.clamp_min(NORM_FLOOR))  # (d_in,), (..., 1)

    @torch.no_grad()
    def fit(self, *, mean: Tensor | None, mean_sq_norm: float | None) -> None:
        if mean is None:
            raise ValueError("mean_centred_unit_norm needs the dataset mean vector")
        self.mean.copy_(mean)


def _is_one(scale: Tensor | float) -> bool:
    return isinstance(scale, float) and scale == 1.0


def _needs_input(x: Tensor | None, name: str) -> Tensor:
    if x is None:
        raise ValueError(f"{name} is a per-token normalisation: mapping latents back to raw space needs "
                         f"the raw input they came from")
    return x


NORMALIZATIONS: dict[str, type[Normalization]] = {
    "dataset_scale": DatasetScale,
    "token_standardize": TokenStandardize,
    "mean_centred_unit_norm": MeanCentredUnitNorm,
    "none": Identity,
}


def make_normalization(name: str, d_in: int, *, eps: float = 1e-6, device=None,
                       dtype: torch.dtype = torch.float32) -> Normalization:
    """The normalisation module called `name` for activations of width d_in."""
    if name == "none":
        return Identity()
    if name == "token_standardize":
        return TokenStandardize(d_in, eps)
    return NORMALIZATIONS[name](d_in, device=device, dtype=dtype)
