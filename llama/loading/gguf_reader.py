"""A small, fast reader for GGUF files (llama.cpp's format) and dequantisation to torch tensors.

Layout (little-endian): magic "GGUF", version (u32), tensor count (u64), metadata count (u64); the
metadata key/value pairs; one info record per tensor (name, dims, type, offset); padding to
`general.alignment`; the tensor data. The header is parsed once with `struct` (gguf.GGUFReader builds
numpy views of every token and merge string, which takes seconds), and the data is memory-mapped.
Q4_1 and Q8_0 (the default model's types), F32, F16 and BF16 are converted here with vectorised torch
ops; every other type goes through the gguf package's reference `gguf.quants.dequantize`.

Like llama.cpp's gguf.cpp, the header is checked before anything is allocated from it: each count
against the bytes left, array nesting against MAX_ARRAY_DEPTH (arrays are read recursively),
`general.alignment` a power of two, at most 4 dimensions a tensor, each tensor's offset aligned and
its bytes (computed with Python integers, which cannot wrap) inside the file, and no name twice.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
MAX_ARRAY_DEPTH = 8  # arrays of arrays in the metadata (read recursively), far deeper than writers nest them
_MAX_DIMS = 4  # GGML_MAX_DIMS


class TensorInfo(NamedTuple):
    name: str
    shape: tuple[int, ...]  # PyTorch order (rows first); GGUF stores dims fastest-first
    qtype: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    n_bytes: int


class GGUFFile(NamedTuple):
    path: Path
    metadata: dict[str, Any]  # key -> int / float / bool / str / list
    tensors: dict[str, TensorInfo]
    data: np.memmap  # the whole file, uint8, copy-on-write (never written back)


class _Cursor:
    """Sequential reads from the header bytes."""

    _U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF header; the file is incomplete, download it again")

    def unpack(self, fmt: str | struct.Struct) -> Any:
        packer = fmt if isinstance(fmt, struct.Struct) else struct.Struct(fmt)
        self._need(packer.size)
        (value,) = packer.unpack_from(self.buf, self.pos)
        self.pos += packer.size
        return value

    def string(self) -> str:
        n = self.unpack(self._U64)
        self._need(n)
        self.pos += n
        return str(self.buf[self.pos - n:self.pos], "utf-8", "replace")

    def strings(self, count: int) -> list[str]:
        """`count` strings in a row (token and merge lists): the hot loop of header parsing."""
        buf, pos, size, unpack = self.buf, self.pos, len(self.buf), self._U64.unpack_from
        out = []
        for _ in range(count):
            if pos + 8 > size:
                break
            (n,) = unpack(buf, pos)
            out.append(str(buf[pos + 8:pos + 8 + n], "utf-8", "replace"))
            pos += 8 + n
        self.pos = pos
        self._need(0 if len(out) == count else size + 1)  # ran out of bytes: truncated
        return out

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        """The value of metadata `key`, of GGUF type `vtype`, nested `depth` arrays deep."""
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth == MAX_ARRAY_DEPTH:
                raise ValueError(f"{self.path}: metadata {key} nests arrays more than {MAX_ARRAY_DEPTH} deep; "
                                 f"the file is corrupt")
            item_type, count = self.unpack(self._U32), self.unpack(self._U64)
            if item_type in (_STRING, _ARRAY):  # each item takes 8 or 12 bytes at least
                self._need(count * (8 if item_type == _STRING else 12))
            if item_type == _STRING:
                return self.strings(count)
            if item_type in _NUMPY:  # numbers: one numpy read, not `count` struct calls
                dtype = np.dtype(_NUMPY[item_type])
                self._need(count * dtype.itemsize)
                values = np.frombuffer(self.buf[self.pos:self.pos + count * dtype.itemsize], dtype=dtype).tolist()
                self.pos += count * dtype.itemsize
                return values
            return [self.value(item_type, key, depth + 1) for _ in range(count)]
        if vtype not in _SCALARS:
            raise ValueError(f"{self.path}: unknown GGUF metadata type {vtype}; the file is corrupt")
        return self.unpack(_SCALARS[vtype])


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse the header of a GGUF file and memory-map its data. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    data = np.memmap(path, dtype=np.uint8, mode="c") if path.stat().st_size else np.zeros(0, np.uint8)
    if bytes(data[:4]) != _MAGIC:
        raise ValueError(f"{path}: not a GGUF file (bad magic bytes)")
    cursor = _Cursor(memoryview(data), path)
    cursor.pos = 4
    version = cursor.unpack("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3 are); re-convert the model")
    n_tensors, n_kv = cursor.unpack("<Q"), cursor.unpack("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = cursor.string()
        if key in metadata:
            raise ValueError(f"{path}: metadata {key} appears twice; the file is corrupt")
        metadata[key] = cursor.value(cursor.unpack("<I"), key)
    infos = [_tensor_info(cursor) for _ in range(n_tensors)]
    alignment = metadata.get("general.alignment", 32)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
        raise ValueError(f"{path}: general.alignment must be a power of two, got {alignment!r}; the file is corrupt")
    start = -(-cursor.pos // alignment) * alignment  # data begins at the next aligned offset
    tensors = {}
    for name, shape, qtype, offset in infos:
        if name in tensors:
            raise ValueError(f"{path}: tensor {name} appears twice; the file is corrupt")
        if offset % alignment:
            raise ValueError(f"{path}: tensor {name} is at offset {offset}, not a multiple of {alignment} "
                             f"(general.alignment); the file is corrupt")
        info = TensorInfo(name, shape, qtype, start + offset, _byte_size(shape, qtype, path))
        if info.offset + info.n_bytes > len(data):
            raise ValueError(f"{path}: truncated: tensor {name} ({info.n_bytes} bytes at {info.offset}) ends past "
                             f"the end of the file ({len(data)} bytes); download it again")
        tensors[name] = info
    return GGUFFile(path, metadata, tensors, data)


def _tensor_info(cursor: _Cursor) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
    name = cursor.string()
    n_dims = cursor.unpack("<I")
    if n_dims > _MAX_DIMS:
        raise ValueError(f"{cursor.path}: tensor {name} has {n_dims} dimensions, GGUF allows {_MAX_DIMS}; "
                         f"the file is corrupt")
    dims = [cursor.unpack("<Q") for _ in range(n_dims)]
    try:
        qtype = GGMLQuantizationType(cursor.unpack("<I"))
    except ValueError:
        raise ValueError(f"{cursor.path}: tensor {name} has an unknown type; the file is corrupt or too new") from None
    return name, tuple(reversed(dims)), qtype, cursor.unpack("<Q")


def _byte_size(shape: tuple[int, ...], qtype: GGMLQuantizationType, path: Path) -> int:
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    if shape and shape[-1] % block:
        raise ValueError(f"{path}: a {qtype.name} row of {shape[-1]} values is not a whole number of blocks")
    return math.prod(shape) // block * block_bytes  # Python integers: a 2^64 product cannot wrap to 0


def load_tensors(gguf: GGUFFile, names: list[str], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Dequantise tensors to `dtype`, each shaped `TensorInfo.shape`. They share one buffer allocated
    up front: filling hundreds of separate fresh allocations costs seconds of page faults."""
    infos = [gguf.tensors[name] for name in names]
    sizes = [math.prod(info.shape) for info in infos]
    flat = torch.empty(sum(sizes), dtype=dtype)
    tensors = {}
    for info, out in zip(infos, flat.split(sizes)):
        _dequantize_into(gguf, info, out)
        tensors[info.name] = out.view(info.shape)
    return tensors


def load_tensor(gguf: GGUFFile, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantise one tensor to `dtype`, shape `TensorInfo.shape`."""
    return load_tensors(gguf, [name], dtype)[name]


def raw_bytes(gguf: GGUFFile, info: TensorInfo) -> torch.Tensor:
    """The stored bytes of one tensor: a uint8 view of the mapped file, no copy."""
    return torch.from_numpy(np.asarray(gguf.data[info.offset:info.offset + info.n_bytes]))


def release(gguf: GGUFFile, info: TensorInfo) -> None:
    """Drop the file's pages of one tensor from this process's memory (they are re-read if touched
    again): loading tensor by tensor then keeps the resident set to what was built from them."""
    mapping = getattr(gguf.data, "_mmap", None)
    if mapping is None or not hasattr(mapping, "madvise"):
        return
    start = info.offset - gguf.data.offset  # offset of the tensor within the mapping
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, (start + info.n_bytes) // page * page  # whole pages inside the tensor
    if hi > lo:
        mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _dequantize_into(gguf: GGUFFile, info: TensorInfo, out: torch.Tensor) -> None:
    """Write the values of one tensor into `out`, a flat tensor of its size."""
    raw = raw_bytes(gguf, info)
    if info.qtype in _PLAIN:
        out.copy_(raw.view(_PLAIN[info.qtype]))
    elif info.qtype in _QUANTIZED:
        scratch = out if out.dtype == torch.float32 else torch.empty(out.shape)
        _QUANTIZED[info.qtype](raw, scratch.view(-1, 32))
        out.copy_(scratch)
    else:  # the gguf package's reference implementation (numpy), for every other type
        out.copy_(torch.from_numpy(dequantize(raw.numpy(), info.qtype)).flatten())


def _q8_0(raw: torch.Tensor, out: torch.Tensor) -> None:
    """Blocks of 34 bytes: scale d (f16), 32 int8 values q. Value = d * q. out: (n_blocks, 32) float32."""
    blocks = raw.view(-1, 34)
    d = blocks[:, :2].contiguous().view(torch.float16).float()  # (n_blocks, 1)
    out.copy_(blocks[:, 2:].contiguous().view(torch.int8))
    out.mul_(d)


def _q4_1(raw: torch.Tensor, out: torch.Tensor) -> None:
    """Blocks of 20 bytes: scale d and minimum m (f16 each), 16 bytes of 4-bit q. Value = d * q + m.
    The low nibbles hold elements 0..15 of the block, the high nibbles elements 16..31.
    out: (n_blocks, 32) float32."""
    blocks = raw.view(-1, 20)
    dm = blocks[:, :4].contiguous().view(torch.float16).float()  # (n_blocks, 2)
    packed = blocks[:, 4:]  # (n_blocks, 16) uint8
    out[:, :16] = packed & 0x0F
    out[:, 16:] = packed >> 4
    torch.addcmul(dm[:, 1:], out, dm[:, :1], out=out)  # one pass: q * d + m


_PLAIN = {GGMLQuantizationType.F32: torch.float32, GGMLQuantizationType.F16: torch.float16,
          GGMLQuantizationType.BF16: torch.bfloat16}
_QUANTIZED = {GGMLQuantizationType.Q8_0: _q8_0, GGMLQuantizationType.Q4_1: _q4_1}
