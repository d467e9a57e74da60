"""The hyperparameters a checkpoint's header gives, checked for type and range before a ModelArgs is
built from them. GGUF metadata, Hugging Face config.json and Meta params.json all pass through
`checked_args`, once, where their ModelArgs is built: a header holding "576", 576.0, NaN or 2^62 is
refused in one line naming the file and the key as the file spells it, before anything is allocated.

A size must be a JSON/GGUF integer: 576.0 is refused like "576" (as `--config` files and
settings.check_int refuse it), since a float where a count belongs means the file was not written by
the tool it claims.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llama.model import ModelArgs

# Any width, count or length: 128 times the largest in a released Llama (Llama 3.1's 131072-token
# context), far below what would overflow a size computation.
MAX_SIZE = 1 << 24
_SIZES = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "hidden_dim", "max_seq_len"}
_POSITIVE = {"norm_eps", "rope_theta", "ffn_dim_multiplier"}
_OPTIONAL = {"n_kv_heads", "hidden_dim", "ffn_dim_multiplier", "rope_scaling"}
_SCALING_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor")
_SCALING_SIZE = "original_max_position_embeddings"


def checked_args(source: Path, values: dict[str, tuple[str, Any]]) -> ModelArgs:
    """ModelArgs from {ModelArgs field: (key as the file names it, value)}; absent fields keep ModelArgs'
    defaults. A one-line ValueError naming `source` (and the key) for a value of the wrong type or range."""
    for field, (key, value) in values.items():
        if value is None and field in _OPTIONAL:
            continue
        if field in _SIZES:
            check_size(source, key, value)
        elif field in _POSITIVE:
            check_positive(source, key, value)
        elif field == "rope_scaling":
            _check_scaling(source, key, value)
        elif field == "tie_word_embeddings" and not isinstance(value, bool):
            raise ValueError(f"{source}: {key} must be true or false, got {value!r}")
    try:
        return ModelArgs(**{field: value for field, (_, value) in values.items()})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def check_size(source: Path, key: str, value: Any, lowest: int = 1) -> int:
    """`value` must be an integer (not a bool, not 576.0, not "576") from `lowest` to MAX_SIZE."""
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= MAX_SIZE:
        raise ValueError(f"{source}: {key} must be a whole number from {lowest} to {MAX_SIZE}, got {value!r}")
    return value


def check_positive(source: Path, key: str, value: Any) -> float:
    """`value` must be a finite number > 0 (NaN and infinity, which JSON parsers accept, are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{source}: {key} must be a finite number > 0, got {value!r}")
    return value


def _check_scaling(source: Path, key: str, scaling: Any) -> None:
    if not isinstance(scaling, dict):
        raise ValueError(f"{source}: {key} must be an object of rope scaling settings, got {scaling!r}")
    for name in _SCALING_NUMBERS:
        if name in scaling:
            check_positive(source, f"{key}.{name}", scaling[name])
    if _SCALING_SIZE in scaling:
        check_size(source, f"{key}.{_SCALING_SIZE}", scaling[_SCALING_SIZE])
    if scaling.get("high_freq_factor", math.inf) <= scaling.get("low_freq_factor", 0):
        raise ValueError(f"{source}: {key}.high_freq_factor must exceed low_freq_factor, got "
                         f"{scaling['high_freq_factor']!r} and {scaling['low_freq_factor']!r}")
