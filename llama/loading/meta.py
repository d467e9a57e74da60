"""Load a Meta checkpoint folder: `params.json` + `consolidated.00.pth` (+ more model-parallel shards).

The keys already match our module paths. A model saved with N-way model parallelism has N shards
whose weights are slices of the full ones (Megatron style): column-parallel layers (wq, wk, wv, w1,
w3, output) are split along their output rows, row-parallel layers (wo, w2) and the embedding along
their input columns; norms are copied whole into every shard.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

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
    try:
        params = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    scaling = params.pop("rope_scaling", None)
    factor = params.pop("rope_scaling_factor", None)
    if params.pop("use_scaled_rope", False) and scaling is None:
        scaling = _LLAMA31_SCALING | ({"factor": float(factor)} if factor is not None else {})
    fields = set(ModelArgs.__dataclass_fields__)
    try:
        return ModelArgs(**{k: v for k, v in params.items() if k in fields}, rope_scaling=scaling)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All shards, memory-mapped (weights_only: no pickled code runs), merged into full tensors."""
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise FileNotFoundError(f"{folder}: no consolidated.*.pth shard next to params.json")
    loaded = []
    for shard in shards:
        try:
            loaded.append(torch.load(shard, map_location="cpu", mmap=True, weights_only=True))
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{shard}: not a readable PyTorch checkpoint ({message})") from None
    state = loaded[0] if len(loaded) == 1 else merge_shards(loaded, shards)
    state.pop("rope.freqs", None)  # Llama 2 shards carry a rotary table; we compute ours
    return state


def merge_shards(shards: list[dict[str, torch.Tensor]], paths: list[Path]) -> dict[str, torch.Tensor]:
    """Concatenate model-parallel slices into full tensors (see the module docstring)."""
    merged = {}
    for name in shards[0]:
        if any(name not in shard for shard in shards):
            raise ValueError(f"{paths[0].parent}: tensor {name} is missing from some shards")
        parts = [shard[name] for shard in shards]
        if parts[0].dim() < 2:  # norms: replicated
            merged[name] = parts[0]
            continue
        module = name.split(".")[-2]
        if module not in _SPLIT_DIM:
            raise ValueError(f"{paths[0].parent}: do not know how tensor {name} is split across shards")
        merged[name] = torch.cat(parts, dim=_SPLIT_DIM[module])
    return merged
