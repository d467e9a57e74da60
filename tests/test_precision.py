"""Reduced precision and streaming loads.

Tiny random models written by bench/make_checkpoint.py as bf16 and fp16 Hugging Face and Meta
checkpoints load in float32, bfloat16 and float16 with transformers' logits in the same dtype on the
same weights; taps in bf16 stay close to float32; the default model in bf16 predicts the float32
model's next token; --model-dtype resolves per device and memory, refusing what cannot fit in one
line; a load's peak memory stays near the weights' own size.

Tolerances. bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.4%), fp16 11 bits (0.05%). Two
implementations rounding at different places differ by a few roundoffs per layer, so the relative
error of the logits (norm of the difference over the norm) is bounded at 5% for bf16 and 1% for fp16,
and, sharper, ours must be about as close to the float32 logits as transformers' own (at most 1.5x
its error plus a roundoff): both round in the same dtype, neither may do worse than the other.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from llama import ModelArgs, cpu_16bit, load_model
from llama.loading import build_model, hf, iter_checkpoint, open_checkpoint, precision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import make_checkpoint  # noqa: E402

transformers = pytest.importorskip("transformers")

SCALING = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
ARGS = ModelArgs.debug(vocab_size=512, rope_scaling=SCALING, rope_theta=500000.0)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REL_BOUND = {"float32": 1e-5, "bfloat16": 5e-2, "float16": 1e-2}
ROUNDOFF = {"float32": 2 ** -24, "bfloat16": 2 ** -8, "float16": 2 ** -11}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{(format, stored dtype): folder}: the same random model in each."""
    root = tmp_path_factory.mktemp("precision")
    out = {}
    for stored in ("bfloat16", "float16"):
        out["hf", stored] = make_checkpoint.write_hf(root / f"hf-{stored}", ARGS, dtype=DTYPES[stored],
                                                     tokenizer=False, shard_bytes=60_000)
        out["meta", stored] = make_checkpoint.write_meta(root / f"meta-{stored}", ARGS, dtype=DTYPES[stored],
                                                         tokenizer=False)
    return out


def tokens():
    return torch.randint(0, ARGS.vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def reference_logits(folder: Path, dtype: torch.dtype) -> torch.Tensor:
    model = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    with torch.no_grad():
        return model(input_ids=tokens()).logits.float()


@pytest.mark.parametrize("stored", ["bfloat16", "float16"])
@pytest.mark.parametrize("fmt", ["hf", "meta"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_logits_equal_transformers_in_each_dtype(folders, fmt, stored, dtype):
    hf_folder = folders["hf", stored]  # transformers reads the HF copy of the same weights
    loaded = load_model(folders[fmt, stored], dtype=dtype, tokenizer=False)
    assert loaded.model.layers[0].attention.wq.weight.dtype == DTYPES[dtype]
    assert loaded.model.freqs.dtype == torch.float32  # rotation speeds are never rounded
    with torch.no_grad():
        ours = loaded.model(tokens()).logits.float()
    theirs = reference_logits(hf_folder, DTYPES[dtype])
    assert torch.isfinite(ours).all()
    assert rel(ours, theirs) < REL_BOUND[dtype], rel(ours, theirs)
    if dtype != "float32":
        exact = reference_logits(hf_folder, torch.float32)
        assert rel(ours, exact) <= 1.5 * rel(theirs, exact) + ROUNDOFF[dtype], (rel(ours, exact), rel(theirs, exact))


def test_taps_in_bf16_match_float32(folders):
    """Every block's residual stream in bf16 within 3% (relative norm) of float32's: a few bf16 roundoffs."""
    taps = [f"blocks.{i}.hook_resid_post" for i in range(ARGS.n_layers)] + ["blocks.0.hook_attn_out"]
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model(folders["hf", "bfloat16"], dtype=dtype, tokenizer=False).model
        with torch.no_grad():
            out[dtype] = model(tokens(), taps=taps, return_logits=False).taps
    for name in taps:
        assert out["bfloat16"][name].dtype == torch.bfloat16
        assert rel(out["bfloat16"][name], out["float32"][name]) < 3e-2, name


def test_stream_is_lazy_and_build_model_applies_transform(folders):
    """iter_checkpoint yields one owned tensor at a time in the asked dtype; build_model passes each
    through `transform` once and gives the same model as load_model."""
    args, fmt, stream = iter_checkpoint(folders["hf", "bfloat16"], dtype=torch.float16)
    assert (args.dim, fmt) == (ARGS.dim, "hf")
    name, first = next(stream)
    assert first.dtype == torch.float16 and name == "tok_embeddings.weight"
    seen = []

    def transform(name, tensor):
        seen.append(name)
        return tensor * 1

    model = build_model(args, [(name, first), *stream], dtype=torch.float16, transform=transform)
    expected = load_model(folders["hf", "bfloat16"], dtype="float16", tokenizer=False).model
    assert sorted(seen) == sorted(n for n, _ in expected.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(tokens()).logits, expected(tokens()).logits, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_vocabulary_tensors_come_first(folders, fmt):
    """The largest tensors (embeddings, head) are handed over first, whatever the file order, so that a
    transient copy of one comes while little else is loaded; every tensor still comes exactly once."""
    _, _, stream = iter_checkpoint(folders[fmt, "bfloat16"])
    names = [name for name, _ in stream]
    assert set(names[:2]) == {"tok_embeddings.weight", "output.weight"}
    expected = load_model(folders[fmt, "bfloat16"], tokenizer=False).model.state_dict()
    assert sorted(names) == sorted(expected)


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_quantized_load_streams_the_stored_tensors(folders, fmt, kind):
    """--model-dtype int8/int4 on a bf16 checkpoint packs each tensor as stored, as it arrives: the same
    model as quantizing the float32 model after loading it (bf16 values are exact in float32)."""
    from llama.quant_build import quantize_model
    streamed = load_model(folders[fmt, "bfloat16"], dtype=kind, tokenizer=False).model
    after = quantize_model(load_model(folders[fmt, "bfloat16"], dtype="float32", tokenizer=False).model, kind)
    with torch.no_grad():
        torch.testing.assert_close(streamed(tokens()).logits, after(tokens()).logits, rtol=0, atol=0)


def test_hf_and_meta_copies_are_the_same_model(folders):
    logits = []
    for fmt in ("hf", "meta"):
        with torch.no_grad():
            logits.append(load_model(folders[fmt, "bfloat16"], dtype="float32", tokenizer=False).model(tokens()).logits)
    torch.testing.assert_close(*logits, rtol=1e-5, atol=1e-5)


# -- --model-dtype resolution ------------------------------------------------------------------------

def test_auto_on_cpu_follows_memory(monkeypatch):
    monkeypatch.setattr(precision, "available_memory", lambda device: 100e9)
    chosen = precision.resolve("auto", "cpu", checkpoint_dtype=torch.bfloat16, weight_count=1_000_000_000)
    assert chosen.dtype == torch.float32 and "float32 (auto)" in chosen.note
    monkeypatch.setattr(precision, "available_memory", lambda device: 6e9)
    chosen = precision.resolve("auto", "cpu", checkpoint_dtype=torch.bfloat16, weight_count=1_000_000_000)
    assert chosen.dtype == torch.bfloat16 and "bfloat16 (auto)" in chosen.note and "\n" not in chosen.note
    assert precision.resolve("int8", "cpu").quant == "int8"
    assert chosen.name == "bfloat16" and precision.resolve(torch.float16, "cpu").name == "float16"  # never "auto"


def test_a_model_that_cannot_fit_is_refused_before_loading(monkeypatch, folders):
    monkeypatch.setattr(precision, "available_memory", lambda device: 6e9)
    with pytest.raises(ValueError) as err:
        precision.resolve("float32", "cpu", weight_count=8_030_000_000)
    message = str(err.value)
    assert "\n" not in message and "32.1 GB" in message and "6.0 GB" in message
    assert "--model-dtype int4 (4.8 GB)" in message  # bf16 (16 GB) and int8 (8.8 GB) do not fit in 6 GB either
    monkeypatch.setattr(precision, "available_memory", lambda device: 20e9)
    with pytest.raises(ValueError, match=r"use --model-dtype bfloat16 \(16\.1 GB\)"):
        precision.resolve("float32", "cpu", weight_count=8_030_000_000)
    monkeypatch.setattr(precision, "available_memory", lambda device: 1000)  # the tiny model's 0.3 MB
    monkeypatch.setattr(hf, "iter_tensors", None)  # refused before any weight is read
    with pytest.raises(ValueError, match="no --model-dtype fits"):
        load_model(folders["hf", "bfloat16"], dtype="float32", tokenizer=False)


def test_a_dtype_the_device_cannot_multiply_is_one_line(monkeypatch):
    monkeypatch.setattr(precision, "_can_run", lambda dtype, device: dtype == torch.float32)
    with pytest.raises(ValueError, match=r"^--model-dtype float16: this CPU cannot multiply float16 matrices; "
                                         r"use --model-dtype float32$"):
        precision.resolve("float16", "cpu")
    with pytest.raises(ValueError, match="--model-dtype bogus: choose one of auto"):
        precision.resolve("bogus", "cpu")


def test_unreadable_stored_dtype_is_one_line(tmp_path):
    from safetensors.torch import save_file
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(__import__("json").dumps(make_checkpoint.hf_config(ARGS, torch.bfloat16)))
    save_file({"model.embed_tokens.weight": torch.zeros(ARGS.vocab_size, ARGS.dim, dtype=torch.int8)},
              hf / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor model\.embed_tokens\.weight is stored as I8, "
                                         r"which this loader cannot read"):
        open_checkpoint(hf)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "params.json").write_text(__import__("json").dumps(make_checkpoint.meta_params(ARGS)))
    torch.save({"tok_embeddings.weight": torch.zeros(4, 4, dtype=torch.int8)}, meta / "consolidated.00.pth")
    with pytest.raises(ValueError, match=r"consolidated\.00\.pth: tensor tok_embeddings\.weight is stored as int8"):
        load_model(meta, tokenizer=False)


# -- memory ------------------------------------------------------------------------------------------

PEAK_SCRIPT = """
import re, sys, torch
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
from llama import load_model
before = hwm()
model = load_model(sys.argv[1], dtype=sys.argv[2], tokenizer=False).model
print(before, hwm(), sum(p.nbytes for p in model.parameters()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_peak_memory_of_a_load_is_the_weights_once(tmp_path, fmt):
    """A 200 MB model: the peak RSS a load adds is at most 1.15x its weights (+ 40 MB of allocator slack);
    reading whole files, or converting a loaded copy, would add 2x."""
    args = ModelArgs.debug(dim=1024, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=32000, hidden_dim=2816)
    write = make_checkpoint.write_hf if fmt == "hf" else make_checkpoint.write_meta
    folder = write(tmp_path / fmt, args, tokenizer=False)
    for dtype in ("bfloat16", "float32"):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(folder), dtype], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout
        before, peak, weights = map(int, out.split())
        assert peak - before <= 1.15 * weights + 40e6, (dtype, (peak - before) / 1e6, weights / 1e6)


# -- the default model ---------------------------------------------------------------------------------

def corpus_text_tokens(tokenizer, n_rows: int, seqlen: int) -> torch.Tensor:
    """(n_rows, seqlen) tokens of the default corpus's sentences, all three labels, packed end to end."""
    import paths
    lines = paths.default_corpus_path().read_bytes().decode("utf-8", "replace").split("\r\n")[1:]
    ids = []
    for line in lines[::7]:
        ids += tokenizer.encode(line.split(",", 2)[-1] + "\n")
        if len(ids) >= n_rows * seqlen:
            break
    return torch.tensor(ids[:n_rows * seqlen]).view(n_rows, seqlen)


@pytest.mark.slow
def test_default_model_bf16_predicts_the_float32_next_token(smol, gguf_path):
    """Top-1 agreement of the bf16 and float32 default model over 2,048 positions of corpus text.

    Measured on this model: 96.1% of all positions (97.9% when the head's output is kept in float32),
    short of the 99% aimed at: a tenth of the positions have a float32 top-2 margin under 0.1 logit,
    below the noise bf16 leaves after 30 layers and bf16 logits' own resolution (1/8 at |logit| 16-32).
    Where the float32 model is not at a near tie (margin >= 1 logit) the two must agree on 99%.
    """
    tokens = corpus_text_tokens(smol.tokenizer, 16, 128)
    bf16 = load_model(gguf_path, dtype="bfloat16", tokenizer=False).model
    with torch.no_grad():
        exact = smol.model(tokens).logits
        rounded = bf16(tokens).logits.argmax(-1)
    same = exact.argmax(-1) == rounded
    top2 = exact.topk(2, dim=-1).values
    clear = top2[..., 0] - top2[..., 1] >= 1.0
    agreement, clear_agreement = float(same.float().mean()), float(same[clear].float().mean())
    print(f"bf16 top-1 agreement with float32: {agreement:.4f} over {tokens.numel()} positions, "
          f"{clear_agreement:.4f} over the {int(clear.sum())} with a margin >= 1 logit")
    assert agreement >= 0.95
    assert clear_agreement >= 0.99


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("emulated", [True, False])
def test_half_linear_matches_float32_product_either_way(dtype, emulated, monkeypatch):
    """The 16-bit product, in 16 bits or (on CPUs that emulate them, enough rows) in float32 then rounded,
    is the float32 product of the same 16-bit numbers within one rounding of the output (plus the
    accumulation-order noise of a 16-bit kernel). Decoding-sized inputs keep the 16-bit kernel."""
    monkeypatch.setattr(cpu_16bit, "cpu_emulates", lambda d: emulated)
    monkeypatch.setattr(cpu_16bit, "SCRATCH_ELEMENTS", 256 * 40)  # the weight converted in 3 blocks of rows
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(256, 96, bias=False)).to(dtype).requires_grad_(False)  # a loaded model's
    linear = cpu_16bit.upcast_linears(plain)[0]
    assert isinstance(linear, cpu_16bit.UpcastLinear) == emulated
    for rows in (1, cpu_16bit.UPCAST_MIN_ROWS, 3 * cpu_16bit.UPCAST_MIN_ROWS):
        x = torch.randn(rows, 256).to(dtype)
        exact = x.double() @ linear.weight.double().T
        got = linear(x)
        assert got.dtype == dtype and got.shape == (rows, 96)
        err = ((got.double() - exact).abs() / (exact.abs() + 1e-3)).max().item()
        assert err <= 4 * ROUNDOFF[str(dtype).removeprefix("torch.")], (rows, err)
    calls = []
    monkeypatch.setattr(cpu_16bit.F, "linear", lambda x, w, b=None: calls.append(x.dtype) or x @ w.T)
    linear(torch.randn(1, 256).to(dtype)), linear(torch.randn(2, 32, 256).to(dtype))
    assert calls == [dtype] + ([torch.float32] * 3 if emulated else [dtype])  # 96 rows in blocks of 40


def test_float32_products_work_in_every_autograd_mode(monkeypatch):
    """The reused buffer is made outside inference mode (a forward under torch.inference_mode, then one
    under no_grad, must both work), and a weight that requires grad still gets its gradient."""
    monkeypatch.setattr(cpu_16bit, "_scratch", cpu_16bit.threading.local())
    linear = cpu_16bit.UpcastLinear(64, 48, bias=False).to(torch.bfloat16)
    x = torch.randn(40, 64).to(torch.bfloat16)
    with torch.inference_mode():
        first = linear(x)
    with torch.no_grad():
        torch.testing.assert_close(linear(x), first, rtol=0, atol=0)
    linear(x).float().sum().backward()
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("emulated", [True, False])
def test_loader_swaps_in_float32_products_only_for_emulated_16_bit(folders, emulated, monkeypatch):
    """Every linear of a 16-bit model becomes an UpcastLinear exactly when the CPU emulates that dtype;
    float32 and quantized models never do. Swapped or not, the logits are the same model's."""
    monkeypatch.setattr(cpu_16bit, "cpu_emulates", lambda d: emulated and d != torch.float32)
    n_linears = 7 * ARGS.n_layers + 1
    for dtype in ("float32", "bfloat16", "float16", "int8"):
        model = load_model(folders["hf", "bfloat16"], dtype=dtype, tokenizer=False).model
        upcast = [m for m in model.modules() if isinstance(m, cpu_16bit.UpcastLinear)]
        assert len(upcast) == (n_linears if emulated and dtype in ("bfloat16", "float16") else 0), dtype
        assert not model.training
    with torch.no_grad():
        logits = load_model(folders["hf", "bfloat16"], dtype="bfloat16", tokenizer=False).model(tokens()).logits
    assert rel(logits, reference_logits(folders["hf", "bfloat16"], torch.float32)) < REL_BOUND["bfloat16"]
