"""GGUF quantized blocks -> `llama.quant.Blocks` (int8 values, float32 group scales and offsets), exactly.

Formats (ggml-quants.c; the gguf package's `gguf.quants` is the reference the tests compare with):
    Q8_0  34 bytes / 32 values: d (f16), q int8[32]               value = d * q
    Q4_0  18 bytes / 32: d, 16 bytes of nibbles                   value = d * (q - 8)
    Q4_1  20 bytes / 32: d, m, 16 bytes of nibbles                value = d * q + m
    Q4_K  144 bytes / 256: d, dmin, 12 bytes of 6-bit sub-scales and mins, 128 bytes of nibbles;
          8 groups of 32                                          value = d * sc * q - dmin * mn
    Q6_K  210 bytes / 256: ql[128] low nibbles, qh[64] 2 high bits, int8 scales[16], d;
          16 groups of 16                                         value = d * sc * (q - 32)
In the 32-value types the low nibbles hold elements 0..15 and the high nibbles 16..31.
"""

from __future__ import annotations

import torch
from gguf.constants import GGMLQuantizationType as T

from llama.quant import Blocks

_NIBBLES = torch.tensor([0, 4], dtype=torch.uint8)


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """(n, 2) uint8 -> (n,) float32."""
    return raw.contiguous().view(torch.float16).float().squeeze(-1)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(..., m) uint8 -> (..., 2m) int8: the m low nibbles, then the m high nibbles."""
    return ((packed[..., None, :] >> _NIBBLES[:, None]) & 0x0F).flatten(-2).to(torch.int8)


def _q8_0(blocks: torch.Tensor):
    return blocks[:, 2:].contiguous().view(torch.int8), _f16(blocks[:, :2])[:, None], None, 32, (-128, 127)


def _q4_0(blocks: torch.Tensor):
    return _nibbles(blocks[:, 2:]) - 8, _f16(blocks[:, :2])[:, None], None, 32, (-8, 7)


def _q4_1(blocks: torch.Tensor):
    return _nibbles(blocks[:, 4:]), _f16(blocks[:, :2])[:, None], _f16(blocks[:, 2:4])[:, None], 32, (0, 15)


def _q4_k(blocks: torch.Tensor):
    d, dmin = _f16(blocks[:, :2])[:, None], _f16(blocks[:, 2:4])[:, None]
    s = blocks[:, 4:16].view(-1, 3, 4)  # 6-bit scales of groups 0-3 | mins of 0-3 | low bits of 4-7
    a, b, c = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)], -1).float()  # (n, 8)
    mn = torch.cat([b & 0x3F, (c >> 4) | ((b >> 2) & 0x30)], -1).float()
    q = _nibbles(blocks[:, 16:].reshape(-1, 4, 32)).flatten(1)  # 4 x 32 bytes: groups 2j (low), 2j+1 (high)
    return q, d * sc, -dmin * mn, 32, (0, 15)


def _q6_k(blocks: torch.Tensor):
    ql, qh = blocks[:, :128].reshape(-1, 2, 64), blocks[:, 128:192].reshape(-1, 2, 32)
    sc = blocks[:, 192:208].contiguous().view(torch.int8).float()  # (n, 16)
    d = _f16(blocks[:, 208:210])[:, None]
    low = ((ql[:, :, None, :] >> _NIBBLES[:, None]) & 0x0F).reshape(-1, 2, 4, 32)  # per half: 4 runs of 32
    high = (qh[:, :, None, :] >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8)[:, None]) & 0x03
    q = (low | (high << 4)).to(torch.int8).flatten(1) - 32
    return q, d * sc, None, 16, (-32, 31)


_DECODERS = {T.Q8_0: (_q8_0, 32, 34), T.Q4_0: (_q4_0, 32, 18), T.Q4_1: (_q4_1, 32, 20),
             T.Q4_K: (_q4_k, 256, 144), T.Q6_K: (_q6_k, 256, 210)}
SUPPORTED = tuple(_DECODERS)


def to_blocks(raw: torch.Tensor, qtype: T, shape: tuple[int, int]) -> Blocks:
    """The raw bytes (uint8) of a (rows, cols) GGUF tensor of a `SUPPORTED` type -> exact Blocks."""
    decode, per_block, n_bytes = _DECODERS[qtype]
    rows, cols = shape
    q, scale, offset, group, levels = decode(raw.view(-1, n_bytes))
    return Blocks(q.reshape(rows, cols), scale.reshape(rows, -1), None if offset is None else offset.reshape(rows, -1),
                  group, levels)
