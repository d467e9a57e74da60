"""Steering a model through SAE latents: `Steering(sae, steers, mode)` maps an activation to its steered
value (and the latents it then carries), with no state that changes.

Three ways to push latent i by VALUE at the SAE's hook (every position, prompt and generated tokens):

  "sae"        the SAE's reconstruction replaces the activation, with VALUE added to latent i's
               pre-activation (before TopK, so the latent enters the top k; the SAE itself is left
               unchanged). Every later layer sees the steered reconstruction. VALUE is in latent-activation units (normalised
               space); value 0 gives the SAE-spliced model, which differs from the plain model by the
               SAE's reconstruction error.
  "direction"  VALUE times latent i's decoder direction (raw space) is added to the activation; nothing
               else changes (no reconstruction error). Value 0 is exactly the plain model.
  "clamp"      latent i is set to VALUE on every token: the activation gets (VALUE - a_i) times the
               decoder direction, a_i being the latent's current activation; the reconstruction error
               is kept (clamping with the error term, as in Templeton et al. 2024).

In all modes a latent moving by d moves the SAE's reconstruction by d * W_dec[i] in normalised space,
i.e. d * W_dec[i] * scale in raw space (scale: the raw length of one normalised unit, per token for the
per-token normalisations), so the same VALUE means the same push whatever the mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

from sae.model import SparseAutoencoder
from settings import SettingError, check_choice

MODES = ("sae", "direction", "clamp")  # the one list of steering modes (the module docstring says what each does)


def check_mode(mode: str) -> None:
    """SettingError("mode", ...) unless `mode` is one of MODES."""
    check_choice("mode", mode, MODES)


@dataclass(frozen=True)
class Steer:
    """Push latent `latent` by `value` (see the module docstring for what value means per mode).

    The one check of a steer: a latent index >= 0 and a finite value, else SettingError("steer",
    "IDX:VALUE", problem). Whether the index fits an SAE is `check_steers`'s (it needs the SAE)."""

    latent: int
    value: float

    def __post_init__(self):
        if not isinstance(self.latent, Integral) or isinstance(self.latent, bool):
            raise SettingError("steer", self.shown, f"latent index {self.latent!r} is not an integer")
        if self.latent < 0:
            raise SettingError("steer", self.shown, "latent index must be >= 0")
        if not isinstance(self.value, Real) or isinstance(self.value, bool):
            raise SettingError("steer", self.shown, f"value {self.value!r} is not a number")
        if not math.isfinite(self.value):
            raise SettingError("steer", self.shown, "value must be a finite number")
        object.__setattr__(self, "latent", int(self.latent))  # numpy integers and JSON numbers alike
        object.__setattr__(self, "value", float(self.value))

    @property
    def shown(self) -> str:
        """The steer as IDX:VALUE, as --steer spells it."""
        value = f"{self.value:g}" if isinstance(self.value, Real) else str(self.value)
        return f"{self.latent}:{value}"


def parse_steer(text: str) -> Steer:
    """"IDX:VALUE" -> Steer; SettingError("steer", text, problem) otherwise."""
    idx, sep, value = str(text).partition(":")
    if not sep or not idx.strip() or not value.strip():
        raise SettingError("steer", text, "expected IDX:VALUE, e.g. 896:20")
    try:
        latent = int(idx)
    except ValueError:
        raise SettingError("steer", text, f"latent index {idx!r} is not an integer") from None
    try:
        amount = float(value)
    except ValueError:
        raise SettingError("steer", text, f"value {value!r} is not a number") from None
    try:
        return Steer(latent, amount)
    except SettingError as err:  # the steer as it was written, not as it was read
        raise SettingError("steer", text, err.problem) from None


def check_steers(steers: Iterable[Steer], d_sae: int) -> None:
    """SettingError("steer", ...) for a latent index outside an SAE of d_sae latents."""
    for steer in steers:
        if not 0 <= steer.latent < d_sae:
            raise SettingError("steer", steer.shown, f"latent index out of range, the SAE has latents "
                                                     f"0..{d_sae - 1}")


class Steered(NamedTuple):
    """What one steering call did."""

    activation: Tensor     # (..., d_in) what flows on in the model, in the input's dtype
    values: Tensor | None  # (..., k) the SAE's active latents on what flows on (None unless asked for)
    indices: Tensor | None  # (..., k) their indices


class Steering:
    """Push SAE latents at the SAE's hook: `steer(act)` -> Steered, and `steering(act)` -> the steered
    activation, an injection for `model(..., injections={hook: steering})` or `llama.generate`.

    Holds only what the steers precompute (never changed after construction) and never writes to the
    SAE, so one Steering, or several over one SAE, may serve concurrent requests.
    """

    def __init__(self, sae: SparseAutoencoder, steers: Sequence[Steer] = (), mode: str = "sae"):
        check_mode(mode)
        check_steers(steers, sae.cfg.d_sae)
        self.sae, self.mode, self.steers = sae, mode, tuple(steers)
        device, dtype = sae.W_dec.device, sae.W_dec.dtype
        self.push = torch.zeros(sae.cfg.d_sae, device=device, dtype=dtype)  # (d_sae,) pre-activation offsets
        for steer in steers:
            self.push[steer.latent] += steer.value
        self.latents = torch.tensor([s.latent for s in steers], dtype=torch.long, device=device)  # (n,)
        self.values = torch.tensor([s.value for s in steers], dtype=dtype, device=device)  # (n,)
        self.rows = sae.W_dec.detach()[self.latents]  # (n, d_in) normalised-space decoder rows

    def __call__(self, act: Tensor) -> Tensor:
        return self.steer(act).activation

    @torch.no_grad()
    def steer(self, act: Tensor, *, latents: bool = False) -> Steered:
        """act (..., d_in) -> Steered; `latents=True` also encodes what flows on (one more SAE pass in
        "direction" and "clamp" modes, none in "sae" mode)."""
        x = act.to(self.sae.W_dec.dtype)  # the SAE runs in its own dtype
        if self.mode == "sae":
            x_n, ctx = self.sae.normalize(x)
            values, indices = self.sae.select(self.sae.pre_activations(x_n) + self.push)
            out = self.sae.normalization.inverse(self.sae.decode_normalized(values, indices), ctx)
            return Steered(out.to(act.dtype), values, indices)
        if self.mode == "direction":
            out = x + self._move(x, self.values.expand(*x.shape[:-1], -1))
        else:
            values, indices = self.sae.encode(x)  # (..., k)
            # each steered latent's current activation, 0 where it is not among the active ones
            current = ((indices[..., None] == self.latents) * values[..., None]).sum(-2)  # (..., n)
            out = x + self._move(x, self.values - current)
        seen = self.sae.encode(out) if latents else (None, None)
        return Steered(out.to(act.dtype), *seen)

    def _move(self, x: Tensor, amounts: Tensor) -> Tensor:
        """Raw-space change for latent moves `amounts` (..., n): (amounts @ rows) * the raw length of one
        normalised unit (per token for per-token normalisations)."""
        if not self.steers:
            return torch.zeros_like(x)
        return (amounts @ self.rows) * self.sae.normalization.context(x).scale  # (..., d_in)


def unsteered(sae: SparseAutoencoder, mode: str) -> Steering:
    """What a steered run in `mode` is compared against (generate.py --compare, the steering page): in
    "sae" mode the SAE spliced in with nothing pushed, so that the comparison shows the push and not the
    SAE's reconstruction error; in the other modes the plain model ("direction" with no steers changes
    nothing)."""
    return Steering(sae, [], "sae" if mode == "sae" else "direction")

