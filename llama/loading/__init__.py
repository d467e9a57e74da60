"""`load_model(path)`: one entry point for every checkpoint format, detected from what the path holds.

    a .gguf file (magic bytes "GGUF")                    -> loading/gguf.py
    a folder with params.json + consolidated.*.pth       -> loading/meta.py
    a folder with config.json + *.safetensors            -> loading/hf.py

Loading streams: `open_checkpoint(path)` reads the hyperparameters and headers only (so that a model
that cannot fit is refused before anything is read), `Checkpoint.tensors(dtype)` yields (Meta name,
tensor) pairs one at a time, and `build_model` assigns them to a model built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch

from llama.loading import hf, meta
from llama.loading.common import Transform, build_model, count_params, fingerprint
from llama.loading.precision import resolve as resolve_precision
from llama.model import ModelArgs, Transformer
from llama.quant_build import build_quantized
from llama.tokenizers import load_tokenizer

__all__ = ["Checkpoint", "LoadedModel", "build_model", "detect_format", "iter_checkpoint", "load_model",
           "open_checkpoint"]


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
    model_dtype: str = ""
    """The dtype as resolved, never "auto": float32, bfloat16, float16, int8 or int4, for manifests
    (empty in a LoadedModel assembled by hand)."""


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


@dataclass
class Checkpoint:
    """An opened checkpoint: what it holds, read from its headers; the weights stay on disk until
    `tensors()` streams them."""

    path: Path
    format: str  # "gguf", "meta" or "hf"
    args: ModelArgs
    stored_dtype: torch.dtype | None  # the float type of the weights on disk; None: GGUF block-quantized
    files: list[Path]
    gguf: Any = None  # the parsed GGUF file (its metadata holds the tokenizer), for format "gguf"

    @property
    def n_params(self) -> int:
        return count_params(self.args)

    @property
    def source(self) -> str:
        """An identity for manifests: name, format and a fingerprint of the files."""
        return f"{self.path.name} ({self.format}, {fingerprint(self.files)})"

    def tensors(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(Meta name, tensor) pairs, lazily, each a CPU tensor the caller owns, in `dtype` (None: as
        stored; float32 for GGUF quantized types), q/k in Meta's layout, model-parallel shards merged.
        Safetensors and .pth files are memory-mapped, each tensor copied out then its pages released,
        so at most one tensor is in flight. GGUF tensors are views of one buffer allocated up front."""
        if self.format == "hf":
            return hf.iter_tensors(self.path, self.args, dtype)
        if self.format == "meta":
            return meta.iter_tensors(self.path, dtype)
        from llama.loading.gguf import load_gguf  # here: the gguf package is needed for GGUF files only
        _, state, _ = load_gguf(self.path, dtype or self.stored_dtype or torch.float32)
        return iter(state.items())


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Detect the format and read hyperparameters and stored dtype, not the weights."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "gguf":
        from llama.loading.gguf import model_args  # here: the gguf package is needed for GGUF files only
        from llama.loading.gguf_reader import read_gguf  # here: likewise (it reads through the gguf package)
        gguf = read_gguf(path)
        return Checkpoint(path, kind, model_args(gguf), _gguf_dtype(gguf), [path], gguf)
    if kind == "meta":
        return Checkpoint(path, kind, meta.model_args(path), meta.stored_dtype(path),
                          [path / "params.json", *sorted(path.glob("consolidated.*.pth"))])
    return Checkpoint(path, kind, hf.model_args(path), hf.stored_dtype(path),
                      [path / "config.json", *hf.shard_files(path)])


def iter_checkpoint(path: str | Path, dtype: torch.dtype | None = None
                    ) -> tuple[ModelArgs, str, Iterator[tuple[str, torch.Tensor]]]:
    """(args, format, stream of (Meta name, tensor)): `open_checkpoint(path)` then its `tensors(dtype)`."""
    ckpt = open_checkpoint(path)
    return ckpt.args, ckpt.format, ckpt.tensors(dtype)


def _gguf_dtype(gguf) -> torch.dtype | None:
    """float32 / float16 / bfloat16 when every matrix is stored so, else None (block-quantized)."""
    names = {info.qtype.name for info in gguf.tensors.values() if len(info.shape) > 1}
    plain = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    return plain[names.pop()] if len(names) == 1 and next(iter(names)) in plain else None


def load_model(path: str | Path, *, device: torch.device | str = "cpu",
               dtype: torch.dtype | str = torch.float32, tokenizer: bool = True,
               transform: Transform | None = None) -> LoadedModel:
    """Load a checkpoint and its tokenizer.

    dtype: a torch dtype, or a --model-dtype name ("auto", "float32", "bfloat16", "float16", "int8",
    "int4"; see llama.loading.precision). A model that cannot fit in memory in that dtype is refused
    before any weight is read. tokenizer=False skips the tokenizer (LoadedModel.tokenizer is then None).
    transform: see `build_model`.
    """
    ckpt = open_checkpoint(path)
    precision = resolve_precision(dtype, device, checkpoint_dtype=ckpt.stored_dtype, weight_count=ckpt.n_params)
    tok = None
    if tokenizer:  # before the weights: a missing tokenizer should not cost a long load first
        tok = load_tokenizer(ckpt.path, gguf_metadata=ckpt.gguf.metadata if ckpt.gguf is not None else None)
    if precision.quant is not None:  # linear weights and embeddings packed as they are read (llama/quant.py)
        model = build_quantized(ckpt.args, quantizable_tensors(ckpt), precision.quant, kernel_dtype=precision.dtype,
                                device=device)
    else:
        model = build_model(ckpt.args, ckpt.tensors(precision.dtype), device=device, dtype=precision.dtype,
                            transform=transform)
    return LoadedModel(model, tok, ckpt.args, ckpt.source, precision.note, precision.name)


def quantizable_tensors(ckpt: Checkpoint) -> Iterator[tuple[str, Any]]:
    """What the quantized builder reads, one tensor at a time: a GGUF file's blocks as they are stored
    (exact, never dequantised to a float model), other checkpoints' tensors in their stored dtype (the
    builder converts each as it packs it: no float32 copy of a 16-bit tensor in flight)."""
    if ckpt.format == "gguf":
        from llama.loading.gguf import load_gguf  # here: the gguf package is needed for GGUF files only
        return load_gguf(ckpt.path, quantized=True)[1]
    return ckpt.tensors()
