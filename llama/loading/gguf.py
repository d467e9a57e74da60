"""Load a Llama model from a GGUF file (llama.cpp's format).

llama.cpp's converter permutes wq and wk from the Hugging Face rotate-half layout back to Meta's
interleaved pairs (its `permute` is the inverse of Hugging Face's), so GGUF q/k weights are already
in our layout: only the names change.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import torch

from llama.loading.gguf_blocks import SUPPORTED, to_blocks
from llama.loading.gguf_reader import GGUFFile, load_tensor, load_tensors, raw_bytes, read_gguf, release
from llama.loading.hyperparams import checked_args
from llama.model import ModelArgs, rope_frequencies
from llama.quant import Blocks

# GGUF tensor name -> Meta name; {i} is the layer.
_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.attention_norm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.attention.wq.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.attention.wk.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.attention.wv.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.attention.wo.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.ffn_norm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.feed_forward.w1.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.feed_forward.w2.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.feed_forward.w3.weight",
}
_LAYER = re.compile(r"blk\.(\d+)\.(.+)")
_ROPE_FACTORS = "rope_freqs.weight"  # Llama 3.1 scaling, stored by llama.cpp as per-frequency divisors


def meta_name(gguf_name: str) -> str | None:
    """The Meta checkpoint key of a GGUF tensor name, or None if the model has no such tensor."""
    match = _LAYER.fullmatch(gguf_name)
    if match:
        target = _NAMES.get(f"blk.{{i}}.{match.group(2)}")
        return target.format(i=match.group(1)) if target else None
    return _NAMES.get(gguf_name)


def model_args(gguf: GGUFFile) -> ModelArgs:
    """ModelArgs from the `llama.*` metadata (a one-line ValueError if the file is not a Llama model)."""
    meta, path = gguf.metadata, gguf.path
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not supported, only 'llama'")

    def get(key: str, default: Any = None) -> tuple[str, Any]:
        """(the key as the file spells it, its value)."""
        if f"llama.{key}" not in meta and default is None:
            raise ValueError(f"{path}: metadata llama.{key} is missing; the file is not a complete Llama GGUF")
        return f"llama.{key}", meta.get(f"llama.{key}", default)

    tokens = meta.get("tokenizer.ggml.tokens")
    args = checked_args(path, dict(
        dim=get("embedding_length"), n_layers=get("block_count"), n_heads=get("attention.head_count"),
        n_kv_heads=get("attention.head_count_kv"),
        vocab_size=get("vocab_size", len(tokens) if isinstance(tokens, list) and tokens else None),
        hidden_dim=get("feed_forward_length"), norm_eps=get("attention.layer_norm_rms_epsilon"),
        rope_theta=get("rope.freq_base", 10000.0), max_seq_len=get("context_length"),
        tie_word_embeddings=("output.weight", "output.weight" not in gguf.tensors)))
    if get("rope.dimension_count", args.head_dim)[1] != args.head_dim:
        raise ValueError(f"{path}: partial rotary embeddings (rope.dimension_count) are not supported")
    if _ROPE_FACTORS in gguf.tensors:
        args.rope_scaling = _rope_scaling(gguf, args)
    return args


def _rope_scaling(gguf: GGUFFile, args: ModelArgs) -> dict:
    """Recover Llama 3.1 scaling parameters from llama.cpp's per-frequency divisors: the factor is the
    largest divisor; the other three are Meta's published values, checked against the stored divisors."""
    divisors = load_tensors(gguf, [_ROPE_FACTORS])[_ROPE_FACTORS]
    scaling = {"factor": float(divisors.max()), "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    plain = rope_frequencies(ModelArgs(**{**vars(args), "rope_scaling": None}))
    scaled = rope_frequencies(ModelArgs(**{**vars(args), "rope_scaling": scaling}))
    if not torch.allclose(plain / divisors, scaled, rtol=1e-4):
        raise ValueError(f"{gguf.path}: {_ROPE_FACTORS} does not match Llama 3.1 rope scaling; not supported")
    return scaling


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32, *,
              quantized: bool = False) -> tuple[ModelArgs, dict[str, torch.Tensor] | Iterator, GGUFFile]:
    """Parse a GGUF file once: (args, state dict with Meta names, the parsed file for the tokenizer).

    quantized=True: the state is instead an iterator of (Meta name, Blocks or float tensor), read one
    tensor at a time: 2-D tensors of a type llama/loading/gguf_blocks.py decodes arrive as exact Blocks
    (never as floats), the rest dequantised to float32.
    """
    gguf = read_gguf(path)
    args = model_args(gguf)
    names = {name: meta_name(name) for name in gguf.tensors if name != _ROPE_FACTORS}
    unknown = sorted(name for name, target in names.items() if target is None)
    if unknown:
        raise ValueError(f"{gguf.path}: unexpected tensor {unknown[0]} for a Llama model")
    if quantized:
        return args, _quantized_items(gguf, names), gguf
    tensors = load_tensors(gguf, list(names), dtype)
    return args, {names[name]: tensor for name, tensor in tensors.items()}, gguf


def _quantized_items(gguf: GGUFFile, names: dict[str, str]) -> Iterator[tuple[str, torch.Tensor | Blocks]]:
    for name, target in names.items():
        info = gguf.tensors[name]
        if info.qtype in SUPPORTED and len(info.shape) == 2:
            yield target, to_blocks(raw_bytes(gguf, info), info.qtype, info.shape)
        else:
            yield target, load_tensor(gguf, name)
        release(gguf, info)  # the file's pages of this tensor leave the resident set
