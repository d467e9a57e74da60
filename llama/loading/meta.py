"""Load a Meta checkpoint folder: `params.json` + `consolidated.00.pth` (+ more model-parallel shards).

The keys already match our module paths. A model saved with N-way model parallelism has N shards
whose weights are slices of the full ones (Megatron style): column-parallel layers (wq, wk, wv, w1,
w3, output) are split along their output rows, row-parallel layers (wo, w2) and the embedding along
their input columns; norms are copied whole into every shard.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterator

import torch

from llama.jsonfile import read_json
from llama.loading.common import check_readable, owned, release_pages, vocabulary_first
from llama.loading.hyperparams import check_positive, checked_args
from llama.model import ModelArgs

# module name (the key's second-to-last part) -> the dimension its shards are concatenated along
_SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
_LLAMA31_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}


def is_meta_folder(folder: Path) -> bool:
    return (folder / "params.json").is_file() or any(folder.glob("consolidated.*.pth"))


def model_args(folder: Path) -> ModelArgs:
    """ModelArgs from params.json. `use_scaled_rope: true` means Llama 3.1 scaling; its factor is read
    from `rope_scaling_factor` (or a full `rope_scaling` dict) when present, else Llama 3.1's 8."""
    path = folder / "params.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a Meta checkpoint folder needs params.json next to its shards")
    params = read_json(path, expect=dict)
    scaling = params.pop("rope_scaling", None)
    factor = params.pop("rope_scaling_factor", None)
    scaled = params.pop("use_scaled_rope", False)
    if not isinstance(scaled, bool):
        raise ValueError(f"{path}: use_scaled_rope must be true or false, got {scaled!r}")
    if scaled and scaling is None:
        scaling = _LLAMA31_SCALING | ({"factor": float(check_positive(path, "rope_scaling_factor", factor))}
                                      if factor is not None else {})
    fields = set(ModelArgs.__dataclass_fields__) - {"rope_scaling"}
    return checked_args(path, {key: (key, value) for key, value in params.items() if key in fields}
                        | {"rope_scaling": ("rope_scaling", scaling)})


def load_shards(folder: Path) -> tuple[list[dict[str, torch.Tensor]], list[Path]]:
    """Every shard, memory-mapped (weights_only: no pickled code runs; nothing is read yet)."""
    paths = sorted(folder.glob("consolidated.*.pth"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no consolidated.*.pth shard next to params.json")
    shards = []
    for path in paths:
        try:
            shards.append(torch.load(path, map_location="cpu", mmap=True, weights_only=True))
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: not a readable PyTorch checkpoint ({message})") from None
    for path, shard in zip(paths, shards):
        _check_tensor_dict(shard, path)
    return shards, paths


def _check_tensor_dict(shard: object, path: Path) -> None:
    """What `torch.load(weights_only=True)` gave must be {name: tensor of a float type}: such a file may
    hold any list, number or None as well."""
    expected = "expected a dict of tensor names to tensors (what a consolidated.NN.pth holds)"
    if not isinstance(shard, dict):
        raise ValueError(f"{path}: holds {_a(shard)}, {expected}")
    for name, tensor in shard.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: key {name!r} is not a tensor name; {expected}")
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: {name} holds {_a(tensor)}; {expected}")
        check_readable(tensor.dtype, path, name)


def _a(value: object) -> str:
    name = type(value).__name__
    return "None" if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def stored_dtype(folder: Path) -> torch.dtype:
    """The float type the weights are stored in (the widest if mixed)."""
    shards, _ = load_shards(folder)
    return max({t.dtype for t in shards[0].values()}, key=lambda d: d.itemsize, default=torch.float32)


def iter_tensors(folder: Path, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time, shards merged, each a fresh tensor in `dtype` (None: as stored).
    The slices' pages are released once copied: neither the files nor two copies are ever resident."""
    shards, paths = load_shards(folder)
    for name in vocabulary_first(shards[0]):
        if any(name not in shard for shard in shards):
            raise ValueError(f"{folder}: tensor {name} is missing from some shards")
        parts = [shard.pop(name) for shard in shards]
        if name == "rope.freqs":  # Llama 2 shards carry a rotary table; we compute ours
            continue
        if len(parts) == 1 or parts[0].dim() < 2:  # one shard, or a norm replicated in every shard
            tensor = owned(parts[0], dtype, borrowed=True)
        else:
            tensor = owned(torch.cat(parts, dim=_split_dim(name, folder)), dtype, borrowed=False)
        for part in parts:  # (again for a part `owned` released already: harmless)
            release_pages(part)
        yield name, tensor


def load_state_dict(folder: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the folder (`iter_tensors`) in one dict."""
    return dict(iter_tensors(folder, dtype))


def _split_dim(name: str, folder: Path) -> int:
    """The dimension model-parallel slices of `name` are concatenated along (see the module docstring)."""
    module = name.split(".")[-2]
    if module not in _SPLIT_DIM:
        raise ValueError(f"{folder}: do not know how tensor {name} is split across shards")
    return _SPLIT_DIM[module]
