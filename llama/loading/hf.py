"""Load a Hugging Face Llama folder: `config.json` + `*.safetensors`.

Hugging Face rotates the two halves of each head (`rotate_half`), Meta rotates consecutive pairs. Its
converter reorders the rows of wq and wk so the two give the same attention; we undo that reordering,
so the rows of each head go back from [x0, x2, x4, ..., x1, x3, x5, ...] to [x0, x1, x2, x3, ...].
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

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


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def model_args(folder: Path) -> ModelArgs:
    """ModelArgs from config.json (rope settings in transformers 5's `rope_parameters` or 4's
    `rope_theta` + `rope_scaling`)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if config.get("model_type") != "llama" or config.get("attention_bias") or config.get("mlp_bias"):
        raise ValueError(f"{path}: model_type {config.get('model_type')!r} (with biases: "
                         f"{bool(config.get('attention_bias') or config.get('mlp_bias'))}) is not a supported Llama")
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"{path}: rope type {rope_type!r} is not supported (default or llama3 are)")
    theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
    try:
        args = ModelArgs(dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
                         n_heads=config["num_attention_heads"],
                         n_kv_heads=config.get("num_key_value_heads"), vocab_size=config["vocab_size"],
                         hidden_dim=config["intermediate_size"], norm_eps=config.get("rms_norm_eps", 1e-6),
                         rope_theta=theta, rope_scaling=rope if rope_type == "llama3" else None,
                         max_seq_len=config.get("max_position_embeddings", 8192),
                         tie_word_embeddings=config.get("tie_word_embeddings", False))
    except KeyError as err:
        raise ValueError(f"{path}: field {err.args[0]} is missing") from None
    if config.get("head_dim", args.head_dim) != args.head_dim:
        raise ValueError(f"{path}: head_dim {config['head_dim']} != hidden_size / num_attention_heads; not supported")
    return args


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rotate-half row order -> interleaved pairs, per head. w: (n_heads * head_dim, dim)."""
    rows, dim = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, dim).transpose(1, 2).reshape(rows, dim)


def load_state_dict(folder: Path, args: ModelArgs) -> dict[str, torch.Tensor]:
    """Every *.safetensors file in the folder, renamed to Meta keys, q/k unpermuted."""
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            tensors = load_file(file)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{file}: not a readable safetensors file ({err})") from None
        for name, tensor in tensors.items():
            if not name.endswith("rotary_emb.inv_freq"):  # a buffer some old exports saved
                state[_meta_name(name, file)] = tensor
    for i in range(args.n_layers):
        for key, n_heads in (("wq", args.n_heads), ("wk", args.n_kv_heads)):
            name = f"layers.{i}.attention.{key}.weight"
            if name in state:
                state[name] = unpermute(state[name], n_heads)
    if args.tie_word_embeddings:
        state.pop("output.weight", None)  # some exports store the tied head twice
    return state


def _meta_name(name: str, file: Path) -> str:
    match = _LAYER.fullmatch(name)
    target = _NAMES.get(f"model.layers.{{i}}.{match.group(2)}") if match else _NAMES.get(name)
    if target is None:
        raise ValueError(f"{file}: unexpected tensor {name} for a Llama model")
    return target.format(i=match.group(1)) if match else target
