"""What every checkpoint format shares: building the model tensor by tensor from a stream of
(Meta name, tensor) pairs, releasing the pages of memory-mapped files once copied, the weight count
of a ModelArgs, and file identity.
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from llama.cpu_16bit import upcast_linears
from llama.model import ModelArgs, Transformer

Tensors = Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]
Transform = Callable[[str, torch.Tensor], torch.Tensor]
READABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_PAGE = 4096
_MADV_DONTNEED = 4
# The vocabulary-sized matrices, in Meta's names: the largest tensors. Loaders hand them over first, so a
# transient copy of one (a float32 head made from bf16: 3 GB at 8B) comes while little else is loaded.
VOCABULARY_TENSORS = ("tok_embeddings.weight", "output.weight")


def vocabulary_first(names: Iterable[str], meta_name: Callable[[str], str] = lambda name: name) -> list[str]:
    """`names` with the vocabulary-sized tensors first, the others in their order."""
    return sorted(names, key=lambda name: meta_name(name) not in VOCABULARY_TENSORS)


def build_model(args: ModelArgs, tensors: Tensors, *, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, transform: Transform | None = None) -> Transformer:
    """A Transformer holding `tensors` (Meta key names), in eval mode.

    tensors: a {name: tensor} mapping or an iterable of (name, tensor) pairs, consumed one at a time
    (a lazy stream from `Checkpoint.tensors` keeps at most one tensor in flight). Each is moved to
    `device` and `dtype` (no copy when it is already there), then passed through `transform(name,
    tensor)` when given (e.g. to quantize it); the result becomes the parameter. The model is built on
    the meta device (no memory, no random init), so the weights exist once in memory, never twice.
    16-bit linears on a CPU that only emulates 16-bit products become `llama.cpu_16bit.UpcastLinear`.
    """
    with torch.device("meta"):
        model = Transformer(args)
    expected = dict(model.named_parameters(remove_duplicate=False))
    if args.tie_word_embeddings:
        expected.pop("output.weight")  # tie_weights() below shares the embedding's
    seen = set()
    for name, tensor in (tensors.items() if isinstance(tensors, Mapping) else tensors):
        if args.tie_word_embeddings and name == "output.weight":
            continue  # some exports store the tied head twice
        if name not in expected:
            raise ValueError(f"checkpoint does not match the model: unexpected tensor {name}")
        if tensor.shape != expected[name].shape:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                             f"{tuple(expected[name].shape)}")
        tensor = tensor.to(device=device, dtype=dtype)
        _assign(model, name, transform(name, tensor) if transform is not None else tensor)
        seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:3]}"
                         f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}")
    model.tie_weights()
    upcast_linears(model)  # a speed path, swapped in only for 16-bit weights on a CPU that emulates them
    return model.eval()


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Replace the meta-device parameter `name` by `tensor` (kept as is when already a Parameter)."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if not isinstance(tensor, nn.Parameter):
        tensor = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
    setattr(module, leaf, tensor)


def owned(tensor: torch.Tensor, dtype: torch.dtype | None, *, borrowed: bool) -> torch.Tensor:
    """`tensor` in `dtype` (None: its own) in memory of its own. A `borrowed` tensor (a contiguous view
    of a read-only file mapping) is copied out 16 MB at a time, each piece's file pages released once
    copied, so that not even one whole tensor is resident twice; a fresh one is only converted."""
    if not borrowed:
        return tensor.to(dtype or tensor.dtype)
    out = torch.empty(tensor.shape, dtype=dtype or tensor.dtype)
    step = max(1, (16 << 20) // tensor.element_size())
    for source, target in zip(tensor.reshape(-1).split(step), out.view(-1).split(step)):
        target.copy_(source)
        release_pages(source)
    return out


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages of a tensor that views a read-only (private, never written) file mapping:
    the file stays mapped and reads it again on the next access, but the pages stop counting in this
    process's memory. Without this, copying a 16 GB memory-mapped checkpoint tensor by tensor holds the
    whole file resident next to the copies. A no-op where madvise is unavailable."""
    if tensor.device.type != "cpu" or tensor.numel() == 0 or not sys.platform.startswith("linux"):
        return
    start = -(-tensor.data_ptr() // _PAGE) * _PAGE  # whole pages inside the tensor only
    end = (tensor.data_ptr() + tensor.nbytes) // _PAGE * _PAGE
    if end > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def return_free_memory() -> None:
    """Give the allocator's free heap memory back to the system (glibc's malloc_trim; nothing elsewhere).
    Packing a model tensor by tensor frees many mid-sized temporaries that glibc otherwise keeps resident,
    which raises the peak memory of a large int4 build."""
    trim = getattr(_libc(), "malloc_trim", None) if sys.platform.startswith("linux") else None
    if trim is not None:
        trim(0)


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def check_readable(dtype: torch.dtype, file: Path, name: str) -> None:
    """One-line error for a tensor stored in a type the model cannot be loaded from (int8, float8...)."""
    if dtype not in READABLE_DTYPES:
        raise ValueError(f"{file}: tensor {name} is stored as {str(dtype).removeprefix('torch.')}, which this "
                         f"loader cannot read; store the weights as bfloat16, float16 or float32")


def count_params(args: ModelArgs) -> int:
    """The number of weights of a model with these hyperparameters (a tied output head counted once)."""
    head_dim, hidden = args.head_dim, args.ffn_hidden_dim
    attention = args.dim * head_dim * (2 * args.n_heads + 2 * args.n_kv_heads)  # wq, wo; wk, wv
    layer = attention + 3 * args.dim * hidden + 2 * args.dim  # + SwiGLU + two norms
    embeddings = args.vocab_size * args.dim * (1 if args.tie_word_embeddings else 2)
    return args.n_layers * layer + embeddings + args.dim


def fingerprint(files: Iterable[Path]) -> str:
    """A cheap identity for checkpoint files: names, sizes and a sha256 of sampled chunks
    (the first and last MiB and 16 chunks between), so that multi-GB checkpoints need no full read."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size};".encode())
        with path.open("rb") as fh:
            for offset in [0, *(size * i // 17 for i in range(1, 17)), max(size - (1 << 20), 0)]:
                fh.seek(offset)
                digest.update(fh.read(1 << 20 if offset in (0, max(size - (1 << 20), 0)) else 1 << 16))
    return digest.hexdigest()[:16]
