"""The configuration of a sparse autoencoder: its shape, activation, input normalisation and provenance.

Saved next to the weights as `config.json` (see `sae.io`), so an SAE folder says by itself which model,
hook and preprocessing it belongs to.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sae import activations, normalization

ACTIVATIONS = tuple(activations.ACTIVATIONS)          # names; the functions are in sae/activations.py
NORMALIZATIONS = tuple(normalization.NORMALIZATIONS)  # names; the modules are in sae/normalization.py


@dataclass
class SAEConfig:
    """Shape, activation and preprocessing of a `SparseAutoencoder`: what is chosen, never what is fitted
    (fitted statistics such as dataset_scale's factor are buffers of the SAE). The normalisations are
    described in sae/normalization.py, the activations in sae/activations.py."""

    d_in: int
    d_sae: int
    k: int = 32
    activation: str = "topk"
    normalization: str = "dataset_scale"
    norm_eps: float = 1e-6           # token_standardize: added to the std (OpenAI's and SAELens' LayerNorm: 1e-5)
    l1_coeff: float = 1e-3           # relu: weight of the L1 penalty on the latent activations
    k_aux: int | None = None         # aux-k: dead latents used to model the residual (None: min(2048, d_sae // 2))
    aux_coeff: float = 1.0 / 32.0    # aux-k: loss = mse + aux_coeff * aux_mse (OpenAI TopK paper, A.2)
    hook_name: str = ""              # TransformerLens hook name, e.g. "blocks.20.hook_resid_post"
    model: str = ""                  # identity of the model the SAE was trained on
    prepend_bos: bool = False        # whether the training text started with BOS
    chat: bool = False               # whether the training text was wrapped in the chat template

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SAEConfig.{name} must be a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"SAEConfig.activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"SAEConfig.normalization must be one of {', '.join(NORMALIZATIONS)}, "
                             f"got {self.normalization!r}")
        if self.k > self.d_sae:
            raise ValueError(f"SAEConfig.k ({self.k}) must not exceed d_sae ({self.d_sae})")
        if not (isinstance(self.norm_eps, (int, float)) and math.isfinite(self.norm_eps) and self.norm_eps >= 0):
            raise ValueError(f"SAEConfig.norm_eps must be a finite number >= 0, got {self.norm_eps!r}")
        if self.k_aux is None:
            self.k_aux = max(1, min(2048, self.d_sae // 2))
        if isinstance(self.k_aux, bool) or not isinstance(self.k_aux, int) or not 1 <= self.k_aux <= self.d_sae:
            raise ValueError(f"SAEConfig.k_aux must be an integer in [1, d_sae={self.d_sae}], got {self.k_aux!r}")
        for name in ("l1_coeff", "aux_coeff"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SAEConfig.{name} must be a finite number >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SAEConfig":
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"SAE config has unknown field(s) {', '.join(unknown)}")
        missing = sorted(n for n in ("d_in", "d_sae") if n not in values)
        if missing:
            raise ValueError(f"SAE config lacks the required field(s) {', '.join(missing)}")
        return cls(**values)

    def check_model(self, d_model: int, hook_name: str | None = None) -> None:
        """Raise ValueError unless activations of width `d_model` (at `hook_name`) suit this SAE."""
        if d_model != self.d_in:
            raise ValueError(f"the SAE expects activations of width d_in={self.d_in}, "
                             f"but the model gives {d_model}: use an SAE trained on this model")
        if hook_name is not None and self.hook_name and hook_name != self.hook_name:
            raise ValueError(f"the SAE was trained on {self.hook_name!r}, not {hook_name!r}: "
                             f"pass --hook {self.hook_name} or another SAE")
