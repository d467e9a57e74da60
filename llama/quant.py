"""Weights kept quantized: int8 (per output channel) and int4 (group-wise), multiplied with PyTorch's own
packed kernels (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm[_for_cpu]`).

Every source of weights first becomes `Blocks`, an exact integer form shared by all formats:

    value[n, k] = q[n, k] * scale[n, k // group] + offset[n, k // group]     (offset 0 when None)

GGUF blocks (llama/loading/gguf_blocks.py) and float tensors (`quantize_int8`, `quantize_int4`) both land
there; `QuantLinear.from_blocks` then packs them for the kernel. A block form the kernel can hold as it is
(4-bit values with group 32..256 for int4, per-channel symmetric 8-bit for int8) is packed exactly, with
its scales and zero points rounded to the activation dtype; any other is dequantised a slice of rows at a
time and re-rounded (`exact` on the module says which happened).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import nn

INT4_GROUPS = (32, 64, 128, 256)  # the group sizes the int4 kernels accept
# Inputs of at least this many rows (a prompt) are multiplied in float32 by the unpacked weight on a CPU,
# where the packed kernels are built for few rows: past these counts, unpacking once and a float32 product
# cost less than the kernel's per-row time.
DEQUANTIZE_MIN_ROWS = {"int8": 128, "int4": 256}
_CHUNK_ROWS = 1024  # rows quantized at a time: bounds the float temporaries of a big matrix


class Blocks(NamedTuple):
    """An exact integer form of a (rows, cols) weight: q * scale + offset, group-wise along a row."""

    q: torch.Tensor  # (rows, cols) int8
    scale: torch.Tensor  # (rows, cols // group) float32
    offset: torch.Tensor | None  # (rows, cols // group) float32, or None for symmetric forms
    group: int  # columns sharing one scale (cols for per-channel)
    levels: tuple[int, int]  # the range q may take, e.g. (0, 15) for Q4_1, (-128, 127) for Q8_0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def dequantize(self, rows: slice = slice(None)) -> torch.Tensor:
        """float32 values of `rows`, (n, cols)."""
        q = self.q[rows].float().unflatten(-1, (-1, self.group))  # (n, cols // group, group)
        out = q * self.scale[rows, :, None]
        if self.offset is not None:
            out += self.offset[rows, :, None]
        return out.flatten(-2)


def quantize_int8(weight: torch.Tensor) -> Blocks:
    """Per-output-channel symmetric int8: scale = max|w| / 127 per row (rows, cols) -> Blocks."""
    w = weight.float()
    scale = (w.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)  # (rows, 1); a zero row stays zero
    q = (w / scale).round_().clamp_(-127, 127).to(torch.int8)
    return Blocks(q, scale, None, w.shape[-1], (-127, 127))


def quantize_int4(weight: torch.Tensor, group: int) -> Blocks:
    """Group-wise asymmetric 4-bit (GGUF Q4_1's rule): per group, scale = (max - min) / 15, offset = min."""
    w = weight.float().unflatten(-1, (-1, group))  # (rows, cols // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = ((w - lo[..., None]) / scale[..., None]).round_().clamp_(0, 15).to(torch.int8).flatten(-2)
    return Blocks(q, scale, lo, group, (0, 15))


def by_rows(rows: int, read: Callable[[slice], torch.Tensor], quantize: Callable[[torch.Tensor], Blocks]) -> Blocks:
    """`quantize` (float rows -> Blocks) applied to `read(slice)` a slice of _CHUNK_ROWS rows at a time and
    joined: both quantizers work row by row, so the result is the same, with a float copy of one slice
    in flight instead of several of the whole matrix (an 8B embedding table: 1.5 GB of temporaries, not 6)."""
    parts = [quantize(read(slice(i, i + _CHUNK_ROWS))) for i in range(0, rows, _CHUNK_ROWS)]
    offset = None if parts[0].offset is None else torch.cat([p.offset for p in parts])
    return Blocks(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), offset,
                  parts[0].group, parts[0].levels)


def int8_form(blocks: Blocks) -> tuple[Blocks, bool]:
    """Blocks the int8 kernel takes (per-channel symmetric), and whether they are the input unchanged."""
    if blocks.offset is None and blocks.group == blocks.shape[1] and blocks.levels[0] >= -128 \
            and blocks.levels[1] <= 127:
        return blocks, True
    return by_rows(blocks.shape[0], blocks.dequantize, quantize_int8), False


def int4_group(cols: int, group: int) -> int:
    """The largest int4 kernel group size <= `group` that divides `cols`."""
    fits = [g for g in INT4_GROUPS if g <= group and cols % g == 0]
    if not fits:
        raise ValueError(f"int4: a row of {cols} values splits into no group size of {INT4_GROUPS}; use int8")
    return fits[-1]


def fits_int4(blocks: Blocks) -> bool:
    """Whether the int4 kernel holds `blocks` exactly: 16 levels in groups of a kernel size (GGUF Q4_0,
    Q4_1, Q4_K) and a row count the packing accepts."""
    lo, hi = blocks.levels
    return hi - lo <= 15 and blocks.group in INT4_GROUPS and blocks.shape[0] % 16 == 0


def int4_form(blocks: Blocks, group: int) -> tuple[Blocks, bool]:
    """Blocks whose values fit 4 bits in kernel-sized groups, and whether they are the input unchanged."""
    if fits_int4(blocks):
        return blocks, True
    return by_rows(blocks.shape[0], blocks.dequantize,
                   lambda w: quantize_int4(w, int4_group(w.shape[1], group))), False


def _int4_scales_zeros(blocks: Blocks, dtype: torch.dtype) -> torch.Tensor:
    """The kernel's (cols // group, rows, 2) scales and zero points for value = (q4 - 8) * s + z, where
    q4 = q - lo in 0..15: z = offset + (lo + 8) * scale."""
    lo = blocks.levels[0]
    zero = (lo + 8) * blocks.scale
    if blocks.offset is not None:
        zero = zero + blocks.offset
    return torch.stack([blocks.scale, zero], -1).transpose(0, 1).contiguous().to(dtype)


def _pack_int4(q4: torch.Tensor) -> torch.Tensor:
    """(rows, cols) values 0..15 -> the int4 kernel's packed layout on q4's device."""
    if q4.device.type == "cuda":  # two values a byte, then the CUDA tiling
        tiles = next(t for t in (8, 4, 2) if q4.shape[1] % (t * 16) == 0)
        return torch.ops.aten._convert_weight_to_int4pack((q4[:, ::2] << 4 | q4[:, 1::2]).to(torch.uint8), tiles)
    parts = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4[i:i + _CHUNK_ROWS].int().contiguous(), 2)
             for i in range(0, q4.shape[0], _CHUNK_ROWS)]  # the CPU layout packs each 64 rows apart
    return torch.cat(parts)


class QuantLinear(nn.Module):
    """y = x W^T with W kept as int8 (per-channel scales) or int4 (group-wise scales and zero points).

    x may have any leading shape; it is cast to `dtype` (the activation dtype the scales are stored in).
    `exact`: the packed values are the source's own (scales rounded to `dtype`), not re-rounded ones.
    """

    def __init__(self, in_features: int, out_features: int, kind: str, group: int, exact: bool):
        super().__init__()
        self.in_features, self.out_features, self.kind, self.group, self.exact = \
            in_features, out_features, kind, group, exact

    @classmethod
    def from_blocks(cls, blocks: Blocks, kind: str, *, dtype: torch.dtype, device: torch.device | str = "cpu",
                    group: int = 64) -> "QuantLinear":
        """Pack `blocks` for the `kind` ("int8" / "int4") kernel; `group`: int4 group size when re-rounding.
        Blocks that are already 4-bit stay exact in the int4 kernel for both kinds: re-rounding them to
        per-channel int8 only adds error (the default model's top-1 agreement with float32 drops)."""
        rows, cols = blocks.shape
        if (kind == "int4" and rows % 16 == 0) or fits_int4(blocks):
            form, exact = int4_form(blocks, group)
            module = cls(cols, rows, "int4", form.group, exact)
            q4 = (form.q.to(device) - form.levels[0]).to(torch.uint8)  # 0..15; widened a slice at a time
            module.register_buffer("packed", _pack_int4(q4))
            module.register_buffer("scales_zeros", _int4_scales_zeros(form, dtype).to(device))
            return module
        form, exact = int8_form(blocks)  # int8, or int4 that the kernel cannot shape (rows not a multiple of 16)
        module = cls(cols, rows, "int8", cols, exact)
        module.register_buffer("packed", form.q.to(device))
        module.register_buffer("scales", form.scale[:, 0].to(device=device, dtype=dtype))
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, out_dtype = x.shape[:-1], x.dtype
        x2 = x.reshape(-1, self.in_features)  # (tokens, in_features)
        if x2.shape[0] >= DEQUANTIZE_MIN_ROWS[self.kind] and not x2.is_cuda:
            # a prompt: the CPU kernels are built for few rows; a float32 product with the weight unpacked wins
            return (x2.float() @ self.dequantized(torch.float32).T).view(*lead, self.out_features).to(out_dtype)
        x2 = x2.to(self.dtype)  # the kernel's dtype
        if self.kind == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.packed, self.scales)
        else:
            y = self._kernel_int4(x2)
        return y.view(*lead, self.out_features).to(out_dtype)

    @property
    def dtype(self) -> torch.dtype:
        return (self.scales if self.kind == "int8" else self.scales_zeros).dtype

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (out_features, in_features) in `dtype` (a new tensor on every call), for
        readers such as the logit lens."""
        return self.dequantized(self.dtype)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight the kernel multiplies by, (out_features, in_features) in `dtype`: codes times scales
        (plus zero points for int4), computed in float32 from the stored (kernel-dtype) scales."""
        if self.kind == "int8":
            return (self.packed.float() * self.scales.float()[:, None]).to(dtype)
        block = None if self.packed.is_cuda else cpu_int4_block()
        if block is None or self.out_features % block:  # no cheap unpacking: the kernel times the identity
            eye = torch.eye(self.in_features, dtype=self.dtype, device=self.packed.device)
            return self._kernel_int4(eye).T.to(dtype)
        q4 = _unpack_cpu_int4(self.packed, self.out_features, block)
        scales, zeros = self.scales_zeros.float().unbind(-1)  # (in_features // group, out_features) each
        per_column = (scales.T.repeat_interleave(self.group, dim=1), zeros.T.repeat_interleave(self.group, dim=1))
        return ((q4.float() - 8) * per_column[0] + per_column[1]).to(dtype)

    def _kernel_int4(self, x2: torch.Tensor) -> torch.Tensor:
        if x2.is_cuda:
            return torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group, self.scales_zeros)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scales_zeros)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}, "
                f"group={self.group}, exact={self.exact}")


@functools.cache
def cpu_int4_block() -> int | None:
    """Rows per block of the CPU int4 kernel's packed layout, read off a packed sample once: torch packs
    64 rows a block on CPUs it runs with AVX-512 kernels, 32 elsewhere. None: neither layout (then
    `dequantized` goes through the kernel)."""
    sample = (torch.arange(128)[:, None] * 7 + torch.arange(64) * 3).remainder(16).int()  # (rows, cols) 0..15
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(sample, 2)
    return next((block for block in (32, 64) if torch.equal(_unpack_cpu_int4(packed, 128, block).int(), sample)),
                None)


def _unpack_cpu_int4(packed: torch.Tensor, rows: int, block: int) -> torch.Tensor:
    """The CPU int4 layout's (rows, cols) values 0..15: per block of `block` rows, for each column
    block // 2 bytes, the block's first half in the low nibbles, the second half in the high ones."""
    blocks = packed.view(rows // block, -1, block // 2)  # (row blocks, cols, block // 2)
    return torch.cat([blocks & 15, blocks >> 4], -1).transpose(1, 2).reshape(rows, -1)


class CastLinear(nn.Linear):
    """A float linear layer whose weight may be in another dtype than its input (a bf16 output head in a
    model with a float32 residual stream): x is cast to the weight's dtype and the result back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


class QuantEmbedding(nn.Module):
    """An embedding table kept as Blocks (int8 values, float32 group scales and offsets): a lookup
    dequantises only the gathered rows, exactly, then casts them to `dtype`."""

    def __init__(self, blocks: Blocks, *, dtype: torch.dtype, device: torch.device | str = "cpu"):
        super().__init__()
        self.num_embeddings, self.embedding_dim = blocks.shape
        self.group, self.levels, self.dtype = blocks.group, blocks.levels, dtype
        self.register_buffer("q", blocks.q.to(device))
        self.register_buffer("scale", blocks.scale.to(device))
        self.register_buffer("offset", None if blocks.offset is None else blocks.offset.to(device))

    def blocks(self) -> Blocks:
        return Blocks(self.q, self.scale, self.offset, self.group, self.levels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        flat = tokens.reshape(-1)
        return self.blocks().dequantize(flat).to(self.dtype).view(*tokens.shape, self.embedding_dim)

    @property
    def weight(self) -> torch.Tensor:
        """The whole dequantised table (num_embeddings, embedding_dim) in `dtype` (a new tensor)."""
        return self.blocks().dequantize().to(self.dtype)
