"""Where a greedy decoding step's time goes, on the embedded SmolLM2-135M GGUF (one token, KV cache).

    python bench/decode_floor.py [--model-dtype float32|bfloat16|int8|int4] [--threads N] [--steps 64]

Prints, in milliseconds per token, each the best of --repeats:
  - a decoding step of ours (one token through the model with the KV cache, then argmax);
  - the weights streamed once (a sum over every weight matrix, or its packed codes: the memory floor);
  - the step's matrix-vector products alone, on the real weights in forward order, through the same
    modules (so int8/int4 rows time torch's packed kernels: the floor of any eager step built on them);
and, in microseconds, one RMSNorm on its own against the same RMSNorm right after one layer's weights
(14 MB) were streamed (the small operations between products pay for the flushed caches).
bench/llama_forward.py gives the side-by-side ratio against transformers; this says how far below
the step the floor is, and so what any implementation in eager PyTorch can still gain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paths  # noqa: E402
from llama import load_model  # noqa: E402
from llama.loading.precision import MODEL_DTYPES  # noqa: E402
from llama.quant import QuantLinear  # noqa: E402


def best_ms(fn, repeats: int, per: int) -> float:
    """Best wall time of `fn` over `repeats` runs after one warm-up, in ms per unit of `per`."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) / per * 1e3


def as_float_words(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as float32 words (packed int4/int8 codes included): summing them reads each byte
    once at the speed of a float32 stream (a sum over uint8 codes would time a conversion instead)."""
    flat = t.reshape(-1)
    usable = flat.numel() * flat.element_size() // 4 * 4 // flat.element_size()
    return flat[:usable].view(torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model-dtype", default="float32", choices=MODEL_DTYPES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(paths.default_model_path(), dtype=args.model_dtype)
    model, dim = loaded.model, loaded.args.dim
    prompt = torch.tensor([loaded.tokenizer.encode("Once upon a time, in a small village by the sea,")])
    linears = [m for layer in model.layers for m in layer.modules() if isinstance(m, (torch.nn.Linear, QuantLinear))]
    linears.append(model.output)
    activation = model.norm.weight.dtype  # the residual stream's dtype: what each product is handed
    inputs = [torch.ones(1, 1, m.in_features, dtype=activation) for m in linears]
    matrices = [m.packed if isinstance(m, QuantLinear) else m.weight for m in linears]

    def decode() -> None:
        cache = model.new_cache(1, prompt.shape[1] + args.steps)
        token = model(prompt, cache=cache, last_logits_only=True).logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(args.steps - 1):
            token = model(token, cache=cache, last_logits_only=True).logits[:, -1].argmax(-1, keepdim=True)

    def products() -> None:
        for _ in range(args.steps):
            for module, x in zip(linears, inputs):
                module(x)

    words = [as_float_words(w) for w in matrices]

    def stream() -> None:
        for _ in range(args.steps):
            for word in words:
                word.sum()

    norm, x = model.layers[0].ffn_norm, torch.randn(1, 1, dim, dtype=activation)
    layers = [[m.packed if isinstance(m, QuantLinear) else m.weight for m in layer.modules()
               if isinstance(m, (torch.nn.Linear, QuantLinear))] for layer in model.layers]

    def norm_alone() -> None:
        for _ in layers:
            norm(x)

    def norm_after_stream() -> float:
        """Seconds spent in RMSNorms, each run right after one layer's weights were streamed."""
        spent = 0.0
        for weights in layers:
            for weight in weights:
                weight.sum()
            start = time.perf_counter()
            norm(x)
            spent += time.perf_counter() - start
        return spent

    with torch.inference_mode():
        step = best_ms(decode, args.repeats, args.steps)  # includes the prompt's prefill, as generation does
        gemv = best_ms(products, args.repeats, args.steps)
        floor = best_ms(stream, args.repeats, args.steps)
        alone = best_ms(norm_alone, args.repeats, len(layers)) * 1e3
        norm_after_stream()
        after = min(norm_after_stream() for _ in range(args.repeats)) / len(layers) * 1e6
    megabytes = sum(w.numel() * w.element_size() for w in matrices) / 1e6
    print(f"SmolLM2-135M-Instruct GGUF, {args.model_dtype}, {args.threads} threads, best of {args.repeats}, "
          f"{megabytes:.0f} MB of weight matrices")
    print(f"{'decoding step of ours (ms/token)':52s} {step:8.2f}  ({1e3 / step:.1f} tokens/s)")
    print(f"{'matrix-vector products alone (ms/token)':52s} {gemv:8.2f}  ({gemv / step:.0%} of the step; "
          f"at most {1e3 / gemv:.1f} tokens/s with nothing else)")
    print(f"{'weights streamed once, sum (ms/token)':52s} {floor:8.2f}  ({megabytes / floor:.1f} GB/s)")
    label = "RMSNorm alone / right after one layer's weights (us)"
    print(f"{label:52s} {alone:8.1f} / {after:.1f}  "
          f"({after / alone:.1f}x)")


if __name__ == "__main__":
    main()
