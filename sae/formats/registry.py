"""Every SAE file format by name: which can be read, which written, and the check that an SAE fits a model.

Every conversion goes through our `Converted` (and so our SparseAutoencoder's terms), so any readable
format can be written as any writable one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sae.formats import Converted, from_sae, hook_names, llamascope, openai, saelens, sparsify, to_sae
from sae.io import load_sae, save_sae


def _read_ours(path: Path, hook: str | None) -> Converted:
    return from_sae(load_sae(path))


def _write_ours(conv: Converted, folder: Path) -> tuple[Path, list[str]]:
    return save_sae(to_sae(conv), folder), []


# name -> read(path, hook the caller names or None) -> Converted
READERS: dict[str, Callable[[Path, str | None], Converted]] = {
    "ours": _read_ours,
    "saelens": lambda path, hook: saelens.read(path),
    "sparsify": sparsify.read,
    "llamascope": lambda path, hook: llamascope.read(path),
    "openai": openai.read,
}
# name -> write(converted, folder) -> (the folder written, notes on what was folded)
WRITERS: dict[str, Callable[[Converted, Path], tuple[Path, list[str]]]] = {
    "ours": _write_ours,
    "saelens": saelens.write,
    "sparsify": sparsify.write,
}


def check_fits_model(conv: Converted, width: int, n_layers: int, model_name: str) -> None:
    """One-line ValueError unless the SAE reads activations of `width` at a hook the model has."""
    if conv.cfg.d_in != width:
        raise ValueError(f"the SAE reads activations of width {conv.cfg.d_in}, but {model_name} has width "
                         f"{width}; pass --model with the model it was trained on, or --model none")
    if conv.cfg.hook_name:
        hook_names.check_hook_for_model(conv.cfg.hook_name, n_layers)
