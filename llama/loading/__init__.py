"""`load_model(path)`: one entry point for every checkpoint format, detected from what the path holds.

    a .gguf file (magic bytes "GGUF")                    -> loading/gguf.py
    a folder with params.json + consolidated.*.pth       -> loading/meta.py
    a folder with config.json + *.safetensors            -> loading/hf.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from llama.loading import hf, meta
from llama.loading.common import build_model, fingerprint
from llama.loading.precision import resolve as resolve_precision
from llama.model import ModelArgs, Transformer

__all__ = ["LoadedModel", "load_model", "detect_format"]


class LoadedModel(NamedTuple):
    """What `load_model` returns."""

    model: Transformer
    """The model, in eval mode, on the requested device and dtype."""
    tokenizer: Any
    """The checkpoint's tokenizer (llama.tokenizers protocol: encode, decode, stop_ids, encode_chat...)."""
    args: ModelArgs
    """The hyperparameters read from the checkpoint."""
    source: str
    """An identity for manifests: file or folder name, format, and a fingerprint of the files."""
    precision_note: str = ""
    """How the dtype was chosen when it was not given exactly ("auto"), for the caller's log."""


def detect_format(path: Path) -> str:
    """'gguf', 'meta' or 'hf'; a one-line error naming the path otherwise."""
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(4) == b"GGUF":
                return "gguf"
        raise ValueError(f"{path}: not a GGUF file; pass a .gguf file, a Meta folder (params.json + "
                         f"consolidated.*.pth) or a Hugging Face folder (config.json + *.safetensors)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if meta.is_meta_folder(path):
        return "meta"
    if hf.is_hf_folder(path):
        return "hf"
    raise ValueError(f"{path}: neither a Meta checkpoint (params.json + consolidated.*.pth) nor a Hugging Face "
                     f"one (config.json + *.safetensors)")


def load_model(path: str | Path, *, device: torch.device | str = "cpu",
               dtype: torch.dtype | str = torch.float32, tokenizer: bool = True) -> LoadedModel:
    """Load a checkpoint and its tokenizer.

    dtype: a torch dtype, or a --model-dtype name ("auto", "float32", "bfloat16", "float16", "int8",
    "int4"; see llama.loading.precision). tokenizer=False skips the tokenizer (LoadedModel.tokenizer is
    then None).
    """
    from llama.tokenizers import load_tokenizer  # imported here: the tokenizer is optional

    path = Path(path)
    precision = resolve_precision(dtype, device)
    dtype = precision.dtype
    kind = detect_format(path)
    if kind == "gguf":
        from llama.loading.gguf import load_gguf
        args, state, gguf = load_gguf(path, dtype, quantized=precision.quant is not None)
        tok = load_tokenizer(path, gguf_metadata=gguf.metadata) if tokenizer else None
        files = [path]
    elif kind == "meta":
        args = meta.model_args(path)
        state = meta.load_state_dict(path)
        tok = load_tokenizer(path) if tokenizer else None
        files = [path / "params.json", *path.glob("consolidated.*.pth")]
    else:
        args = hf.model_args(path)
        state = hf.load_state_dict(path, args)
        tok = load_tokenizer(path) if tokenizer else None
        files = [path / "config.json", *path.glob("*.safetensors")]
    if precision.quant is not None:  # linear weights and embeddings packed as they are read (llama/quant.py)
        from llama.quant_build import build_quantized
        model = build_quantized(args, state, precision.quant, kernel_dtype=dtype, device=device)
    else:
        model = build_model(args, state, device=device, dtype=dtype)
    return LoadedModel(model, tok, args, f"{path.name} ({kind}, {fingerprint(files)})", precision.note)
