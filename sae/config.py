"""The configuration of a sparse autoencoder: its shape, activation, input normalisation and provenance.

Saved next to the weights as `config.json` (see `sae.io`), so an SAE folder says by itself which model,
hook and preprocessing it belongs to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sae.activations import ACTIVATIONS
from sae.normalization import NORMALIZATIONS
from settings import SettingError, check_choice, check_int, check_number


def _f(default: Any, help: str, **extra: Any) -> Any:
    """A field whose help text a command line can show (train.py's flags are these fields)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class SAEConfig:
    """Shape, activation and preprocessing of a `SparseAutoencoder`: what is chosen, never what is fitted
    (fitted statistics such as dataset_scale's factor are buffers of the SAE). The normalisations are
    described in sae/normalization.py, the activations in sae/activations.py.

    A config with d_in or d_sae 0 is a template (train.py's options before it has seen the data);
    `complete` fills them in, and a SparseAutoencoder needs a complete config."""

    d_in: int = _f(0, "activation width; 0 = taken from the data", cli=False)
    d_sae: int = _f(0, "number of latents; 0 = expansion x d_in")
    k: int = _f(32, "active latents per activation (TopK)")
    activation: str = _f("topk", "latent activation", choices=list(ACTIVATIONS))
    normalization: str = _f("dataset_scale", "input normalisation saved with the SAE", choices=list(NORMALIZATIONS))
    norm_eps: float = _f(1e-6, "token_standardize: added to each token's std (OpenAI's and SAELens' LayerNorm: 1e-5)")
    l1_coeff: float = _f(1e-3, "L1 penalty weight (relu activation only)")
    k_aux: int = _f(0, "dead latents the aux-k loss decodes; 0 = min(2048, d_sae / 2)")
    aux_coeff: float = _f(1.0 / 32.0, "aux-k loss weight: loss = mse + aux_coeff x aux_mse (OpenAI TopK paper, A.2)")
    hook_name: str = _f("", "TransformerLens hook name the SAE reads, e.g. blocks.20.hook_resid_post", cli=False)
    model: str = _f("", "identity of the model the SAE was trained on", cli=False)
    prepend_bos: bool = _f(False, "whether the training text started with BOS", cli=False)
    chat: bool = _f(False, "whether the training text was wrapped in the chat template", cli=False)

    def __post_init__(self) -> None:
        if self.k_aux is None:  # format-1 configs wrote null for "derived"
            self.k_aux = 0
        for name, lowest in (("d_in", 0), ("d_sae", 0), ("k", 1), ("k_aux", 0)):
            check_int(name, getattr(self, name), lowest)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        for name in ("norm_eps", "l1_coeff", "aux_coeff"):
            check_number(name, getattr(self, name))
        if self.d_sae:
            if self.k > self.d_sae:
                raise SettingError("k", self.k, f"must not exceed d_sae ({self.d_sae}); lower k or raise d_sae")
            if self.k_aux == 0:
                self.k_aux = max(1, min(2048, self.d_sae // 2))
            if self.k_aux > self.d_sae:
                raise SettingError("k_aux", self.k_aux, f"must not exceed d_sae ({self.d_sae}); lower k_aux or "
                                                        f"raise d_sae")

    @property
    def is_complete(self) -> bool:
        return self.d_in > 0 and self.d_sae > 0

    def complete(self, *, d_in: int, expansion: int = 16, **provenance: Any) -> "SAEConfig":
        """This template for activations of width d_in (d_sae = expansion x d_in unless set), with
        provenance (hook_name, model, prepend_bos, chat) filled in."""
        return dataclasses.replace(self, d_in=d_in, d_sae=self.d_sae or expansion * d_in, **provenance)

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
        cfg = cls(**values)
        if not cfg.is_complete:
            raise ValueError(f"SAE config needs d_in and d_sae greater than 0, got {cfg.d_in} and {cfg.d_sae}")
        return cfg
