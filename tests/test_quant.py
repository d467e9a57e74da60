"""Quantized weights: GGUF blocks decode exactly (against the gguf package's reference dequantisation), the
packed int8/int4 products equal the dequantised float32 product within the kernels' rounding, and the
default model runs quantized (agreement with float32, SAE splice and steering)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T

from llama.loading.gguf_blocks import SUPPORTED, to_blocks
from llama.quant import QuantEmbedding, QuantLinear, quantize_int4, quantize_int8

# f16 fields (byte offsets within a block) that random bytes must not turn into inf/NaN
_F16_FIELDS = {T.Q8_0: (0,), T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q4_K: (0, 2), T.Q6_K: (208,)}


def random_blocks(qtype: T, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Random raw bytes of a (rows, cols) tensor of `qtype`, with small finite f16 scales."""
    per_block, n_bytes = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(shape[0] * shape[1] // per_block, n_bytes), dtype=np.uint8)
    for at in _F16_FIELDS[qtype]:
        raw[:, at:at + 2] = rng.uniform(-0.02, 0.02, size=(len(raw), 1)).astype(np.float16).view(np.uint8)
    return raw


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_gguf_blocks_decode_exactly(qtype):
    shape = (32, 512)
    raw = random_blocks(qtype, shape)
    reference = torch.from_numpy(quants.dequantize(raw.reshape(-1), qtype)).reshape(shape)
    blocks = to_blocks(torch.from_numpy(raw), qtype, shape)
    torch.testing.assert_close(blocks.dequantize(), reference, rtol=1e-6, atol=1e-7)  # float32 rounding only
    assert blocks.levels[0] <= int(blocks.q.min()) and int(blocks.q.max()) <= blocks.levels[1]


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_1])
def test_gguf_round_trip_to_layout_values(qtype):
    """gguf's own quantizer -> our Blocks -> the same values the reference dequantiser gives, bit for bit."""
    weight = np.random.default_rng(1).normal(0, 0.05, size=(48, 256)).astype(np.float32)
    raw = quants.quantize(weight, qtype)
    reference = quants.dequantize(raw, qtype)
    blocks = to_blocks(torch.from_numpy(raw.reshape(-1).copy()), qtype, weight.shape)
    values = blocks.dequantize()
    # value = d * q (+ m), each product rounded once in float32, as in the reference
    assert torch.equal(values, torch.from_numpy(reference))


def _kernel_check(blocks, kind, exact_expected, x_dtype=torch.float32, tol=1e-5):
    layer = QuantLinear.from_blocks(blocks, kind, dtype=x_dtype)
    assert layer.exact == exact_expected
    x = torch.randn(3, blocks.shape[1], generator=torch.Generator().manual_seed(0))
    target = blocks.dequantize() if exact_expected else layer.weight.float()
    reference = x.to(x_dtype).double() @ target.double().T
    y = layer(x.to(x_dtype)).double()
    scale = reference.abs().max()
    assert (y - reference).abs().max() <= tol * scale, (y - reference).abs().max() / scale
    return layer


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_packed_matmul_equals_dequantised_product(qtype, kind):
    """float32 activations: the kernel's result equals x @ W^T in float64 to float32 accumulation
    rounding (1e-5 of the largest output), where W is the source's values when the format is kept
    exactly (int4 from Q4_0 / Q4_1 / Q4_K), else the re-rounded weight the layer reports."""
    shape = (64, 512)
    blocks = to_blocks(torch.from_numpy(random_blocks(qtype, shape)), qtype, shape)
    exact = kind == "int4" and qtype in (T.Q4_0, T.Q4_1, T.Q4_K)
    layer = _kernel_check(blocks, kind, exact)
    if not exact:  # re-rounded: still within the new format's step of the source values
        step = blocks.dequantize().abs().amax(-1, keepdim=True) / (127 if kind == "int8" else 7)
        assert ((layer.weight.float() - blocks.dequantize()).abs() <= step).all()


def test_bf16_activations_round_only_scales_and_inputs():
    """bf16 (the quantized models' activation dtype): within bf16 rounding (2^-8) of the float32 product."""
    shape = (64, 512)
    blocks = to_blocks(torch.from_numpy(random_blocks(T.Q4_1, shape)), T.Q4_1, shape)
    for kind in ("int8", "int4"):
        layer = QuantLinear.from_blocks(blocks, kind, dtype=torch.bfloat16)
        x = torch.randn(2, shape[1], generator=torch.Generator().manual_seed(0))
        ref32 = QuantLinear.from_blocks(blocks, kind, dtype=torch.float32)(x)
        torch.testing.assert_close(layer(x.bfloat16()).float(), ref32, rtol=0, atol=2e-2 * float(ref32.abs().max()))


def test_float_quantizers_bound_their_error():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    b8 = quantize_int8(w)
    assert ((b8.dequantize() - w).abs() <= b8.scale / 2 + 1e-6).all()
    b4 = quantize_int4(w, 64)
    step = b4.scale.repeat_interleave(64, -1)
    assert ((b4.dequantize() - w).abs() <= step / 2 + 1e-6).all()
    _kernel_check(b8, "int8", True)
    _kernel_check(b4, "int4", True)


def test_quantized_embedding_gathers_exact_rows():
    shape = (96, 256)
    blocks = to_blocks(torch.from_numpy(random_blocks(T.Q8_0, shape)), T.Q8_0, shape)
    table = QuantEmbedding(blocks, dtype=torch.float32)
    tokens = torch.tensor([[5, 0, 95], [7, 7, 1]])
    assert torch.equal(table(tokens), blocks.dequantize()[tokens])
