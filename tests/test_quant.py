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
    exactly (4-bit Q4_0 / Q4_1 / Q4_K in the int4 kernel, for both kinds), else the re-rounded weight
    the layer reports (Q8_0, Q6_K: per-channel int8, or int4 groups)."""
    shape = (64, 512)
    blocks = to_blocks(torch.from_numpy(random_blocks(qtype, shape)), qtype, shape)
    exact = qtype in (T.Q4_0, T.Q4_1, T.Q4_K)
    layer = _kernel_check(blocks, kind, exact)
    assert layer.kind == ("int4" if exact else kind)
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


@pytest.mark.parametrize("rows", [64, 48])  # 48: not whole blocks of the CPU int4 layout (kernel fallback)
@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_1], ids=lambda t: t.name)
def test_prompt_rows_use_the_unpacked_weight_with_the_kernels_result(qtype, rows):
    """A prompt (at least DEQUANTIZE_MIN_ROWS rows) is multiplied in float32 by the unpacked weight; that
    weight is what the kernel multiplies by (the kernel applied to the identity, to its bf16 output
    rounding), so the prompt and the one-row paths agree within bf16 rounding of the inputs."""
    from llama import quant
    shape = (rows, 256)
    blocks = to_blocks(torch.from_numpy(random_blocks(qtype, shape)), qtype, shape)
    for kind in ("int8", "int4"):
        layer = QuantLinear.from_blocks(blocks, kind, dtype=torch.bfloat16)
        eye = torch.eye(shape[1], dtype=torch.bfloat16)
        by_kernel = torch.cat([layer(eye[i:i + 8]) for i in range(0, shape[1], 8)]).T.float()  # few rows a call
        unpacked = layer.dequantized(torch.float32)
        torch.testing.assert_close(unpacked, by_kernel, rtol=2 ** -8, atol=1e-6)
        x = torch.randn(quant.DEQUANTIZE_MIN_ROWS[layer.kind], shape[1], generator=torch.Generator().manual_seed(3))
        prompt = layer(x)  # float32 input, the unpacked path
        assert prompt.dtype == torch.float32
        one_row = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])  # the kernel path, bf16 inside
        ref = x.double() @ unpacked.double().T
        assert (prompt.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
        assert (one_row.double() - ref).abs().max() <= 2e-2 * ref.abs().max()


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


# ---- the default model, quantized -------------------------------------------------------------------

N_SEQ, SEQ_LEN = 8, 256  # 2,048 positions of corpus text
HOOK = "blocks.20.hook_resid_post"


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request, gguf_path):
    from llama import load_model
    return load_model(gguf_path, dtype=request.param, tokenizer=False)


@pytest.fixture(scope="module")
def corpus_tokens(smol):
    """(N_SEQ, SEQ_LEN) tokens of corpus texts, every 97th row (all three labels)."""
    import csv

    import paths
    ids = []
    with open(paths.default_corpus_path(), newline="", encoding="utf-8", errors="replace") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            if i % 97 == 0:
                ids += smol.tokenizer.encode(row["text"] + "\n")
            if len(ids) >= N_SEQ * SEQ_LEN:
                break
    return torch.tensor(ids[:N_SEQ * SEQ_LEN]).view(N_SEQ, SEQ_LEN)


@pytest.fixture(scope="module")
def float_top1(smol, corpus_tokens):
    with torch.no_grad():
        return smol.model(corpus_tokens).logits.argmax(-1)


@pytest.mark.slow
def test_quantized_model_agrees_with_float32(quantized, corpus_tokens, float_top1):
    """Top-1 next token equals float32's at >= 97% of 2,048 positions for int8, >= 95% for int4 (both
    keep the Q4_1 default model's linears exactly; the bf16 kernel inputs and int4's bf16 head cost the
    rest)."""
    with torch.no_grad():
        top1 = quantized.model(corpus_tokens).logits.argmax(-1)
    agreement = float((top1 == float_top1).float().mean())
    kind = "int8" if quantized.model.output.weight.dtype == torch.float32 else "int4"
    print(f"{kind}: top-1 agreement {agreement:.4f}")
    assert agreement >= (0.97 if kind == "int8" else 0.95)


def test_quantized_model_holds_packed_weights(quantized):
    model = quantized.model
    assert quantized.model_dtype == ("int8" if model.output.weight.dtype == torch.float32 else "int4")  # manifests
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 7 * model.args.n_layers and all(m.exact and m.kind == "int4" for m in linears)
    assert isinstance(model.tok_embeddings, QuantEmbedding)
    assert model.output.weight.dtype in (torch.float32, torch.bfloat16)  # the head stays float (QuantBuilder)
    assert not any(p.is_floating_point() and p.numel() > model.args.dim for p in model.parameters()
                   if p is not model.output.weight)


def _latent_on(model, sae, tokens, latent, value, n_prompt):
    """The latent's mean activation on the generated part of `tokens` with the SAE spliced in and `latent`
    pushed by `value` (read from the splice itself)."""
    from sae.steering import Steer, Steering

    steering = Steering(sae, [Steer(latent, value)], "sae")  # the one place this file uses the steering API
    with torch.no_grad():  # the tap is what arrives at the hook; steer() says what the splice passed on
        arriving = model(tokens, injections={HOOK: steering}, taps=(HOOK,)).taps[HOOK]
    seen = steering.steer(arriving, latents=True)
    dense = sae.to_dense((seen.values.float(), seen.indices))
    return float(dense[0, n_prompt:, latent].mean()), steering


def test_sae_splice_and_steering_on_the_quantized_model(quantized, smol, sae):
    """32 greedy tokens with the SAE spliced in and a latent steered; on them the quantized model moves the
    latent as the float32 one does (within 10%), and the SAE stays float32."""
    from llama import generate

    latent, value = 11, 40.0
    prompt = smol.tokenizer.encode("Today I went to the park and")
    _, steering = _latent_on(quantized.model, sae, torch.tensor([prompt]), latent, value, 0)
    new = generate(quantized.model, smol.tokenizer, [prompt], max_new_tokens=32, injections={HOOK: steering})[0]
    assert len(new) == 32 and sae.W_dec.dtype == torch.float32
    tokens = torch.tensor([prompt + new])
    moved, _ = _latent_on(quantized.model, sae, tokens, latent, value, len(prompt))
    unsteered, _ = _latent_on(quantized.model, sae, tokens, latent, 0.0, len(prompt))
    moved_float, _ = _latent_on(smol.model, sae, tokens, latent, value, len(prompt))
    assert moved > unsteered + value / 2
    assert abs(moved - moved_float) <= 0.1 * moved_float


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantize_model_from_float_weights(kind):
    """A float model quantized on load (per-channel int8 / int4 groups of 64): every linear packed, logits
    close to the float model's, module paths unchanged (taps still work)."""
    from llama import ModelArgs, Transformer
    from llama.quant_build import quantize_model

    torch.manual_seed(0)
    model = Transformer(ModelArgs.debug()).eval()
    for p in model.parameters():
        p.data.mul_(0.2)  # a tame random model, so that logits are not dominated by a few huge values
    tokens = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        expected = model(tokens).logits
        packed = quantize_model(model, kind)
        out = packed(tokens, taps=("blocks.1.hook_resid_post",))
    assert sum(isinstance(m, QuantLinear) for m in packed.modules()) == 7 * 2
    assert isinstance(packed.tok_embeddings, QuantEmbedding)
    assert out.taps["blocks.1.hook_resid_post"].shape == (2, 12, 64)
    error = (out.logits - expected).norm() / expected.norm()
    assert error < (0.02 if kind == "int8" else 0.1), error
