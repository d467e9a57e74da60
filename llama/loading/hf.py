"""Load a Hugging Face Llama folder: `config.json` + `*.safetensors`.

Hugging Face rotates the two halves of each head (`rotate_half`), Meta rotates consecutive pairs. Its
converter reorders the rows of wq and wk so the two give the same attention; we undo that reordering,
so the rows of each head go back from [x0, x2, x4, ..., x1, x3, x5, ...] to [x0, x1, x2, x3, ...].
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open

from llama.jsonfile import read_json
from llama.loading.common import check_readable, owned, release_pages, vocabulary_first
from llama.loading.hyperparams import checked_args
from llama.model import ModelArgs

# Hugging Face name -> Meta name; {i} is the layer.
_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attention.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attention.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attention.wv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attention.wo.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.feed_forward.w1.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.feed_forward.w2.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.feed_forward.w3.weight",
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def model_args(folder: Path) -> ModelArgs:
    """ModelArgs from config.json (rope settings in transformers 5's `rope_parameters` or 4's
    `rope_theta` + `rope_scaling`)."""
    path = folder / "config.json"
    config = read_json(path, expect=dict)
    if config.get("model_type") != "llama" or config.get("attention_bias") or config.get("mlp_bias"):
        raise ValueError(f"{path}: model_type {config.get('model_type')!r} (with biases: "
                         f"{bool(config.get('attention_bias') or config.get('mlp_bias'))}) is not a supported Llama")

    def get(key: str, default: Any = ...) -> tuple[str, Any]:
        """(the key, its value)."""
        if key not in config and default is ...:
            raise ValueError(f"{path}: field {key} is missing")
        return key, config.get(key, default)

    rope_key = "rope_parameters" if config.get("rope_parameters") else "rope_scaling"
    rope = config.get(rope_key) or {}
    if not isinstance(rope, dict):
        raise ValueError(f"{path}: {rope_key} must be an object, got {rope!r}")
    rope = dict(rope)
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"{path}: rope type {rope_type!r} is not supported (default or llama3 are)")
    theta = (f"{rope_key}.rope_theta", rope.pop("rope_theta")) if "rope_theta" in rope else get("rope_theta", 10000.0)
    args = checked_args(path, dict(
        dim=get("hidden_size"), n_layers=get("num_hidden_layers"), n_heads=get("num_attention_heads"),
        n_kv_heads=get("num_key_value_heads", None), vocab_size=get("vocab_size"),
        hidden_dim=get("intermediate_size"), norm_eps=get("rms_norm_eps", 1e-6), rope_theta=theta,
        rope_scaling=(rope_key, rope if rope_type == "llama3" else None),
        max_seq_len=get("max_position_embeddings", 8192), tie_word_embeddings=get("tie_word_embeddings", False)))
    if config.get("head_dim") not in (None, args.head_dim):
        raise ValueError(f"{path}: head_dim {config['head_dim']} != hidden_size / num_attention_heads; not supported")
    return args


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rotate-half row order -> interleaved pairs, per head. w: (n_heads * head_dim, dim)."""
    rows, dim = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, dim).transpose(1, 2).reshape(rows, dim)


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files, in the order of model.safetensors.index.json when there is one."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return sorted(folder.glob("*.safetensors"))
    weight_map = read_json(index, "expected a JSON object with a weight_map", expect=dict).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise ValueError(f"{index}: not a valid index (a JSON object with a weight_map of tensor -> file name)")
    names = sorted(set(weight_map.values()))
    if any(Path(name).name != name for name in names):
        raise ValueError(f"{index}: weight_map names a file outside the folder; expected plain file names")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder / missing[0]}: listed in {index.name} but missing; download every shard")
    return [folder / name for name in names]


def stored_dtype(folder: Path) -> torch.dtype:
    """The float type the weights are stored in (read from the file headers only; the widest if mixed)."""
    found = set()
    for file in shard_files(folder):
        with _open(file) as f:
            for name in f.keys():
                code = f.get_slice(name).get_dtype()
                dtype = _DTYPES.get(code)
                if dtype is None:
                    raise ValueError(f"{file}: tensor {name} is stored as {code}, which this loader cannot "
                                     f"read; store the weights as BF16, F16 or F32")
                found.add(dtype)
    return max(found, key=lambda d: d.itemsize) if found else torch.float32


def iter_tensors(folder: Path, args: ModelArgs,
                 dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(Meta name, tensor) one at a time, q/k unpermuted, each a fresh tensor in `dtype` (None: as
    stored). Files are memory-mapped and each tensor's pages are released once copied, so the file
    is never resident next to its copy."""
    heads = {"wq": args.n_heads, "wk": args.n_kv_heads}
    with ExitStack() as stack:
        handles = {file: stack.enter_context(_open(file)) for file in shard_files(folder)}
        where = {name: file for file, f in handles.items() for name in f.keys()
                 if not name.endswith("rotary_emb.inv_freq")}  # a buffer some old exports saved
        for name in vocabulary_first(where, lambda name: _meta_name(name, where[name])):
            file = where[name]
            target = _meta_name(name, file)
            if args.tie_word_embeddings and target == "output.weight":
                continue  # some exports store the tied head twice
            source = handles[file].get_tensor(name)
            check_readable(source.dtype, file, name)
            key = target.split(".")[-2]
            if key in heads:  # a fresh tensor: the file's pages can go
                tensor = owned(unpermute(source, heads[key]), dtype, borrowed=False)
                release_pages(source)
            else:
                tensor = owned(source, dtype, borrowed=True)
            yield target, tensor


def load_state_dict(folder: Path, args: ModelArgs, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the folder (`iter_tensors`) in one dict."""
    return dict(iter_tensors(folder, args, dtype))


def _open(file: Path):
    try:
        return safe_open(file, framework="pt")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: not a readable safetensors file ({err})") from None


def _meta_name(name: str, file: Path) -> str:
    match = _LAYER.fullmatch(name)
    target = _NAMES.get(f"model.layers.{{i}}.{match.group(2)}") if match else _NAMES.get(name)
    if target is None:
        raise ValueError(f"{file}: unexpected tensor {name} for a Llama model")
    return target.format(i=match.group(1)) if match else target
