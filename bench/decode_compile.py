"""Does `torch.compile` pay for itself on a decoding step? The trial behind leaving it out.

    python bench/decode_compile.py [--model-dtype int4] [--tokens 64] [--threads N]

On the embedded model, greedy, batch 1, it times per token:
  - `llama.generate` as it is (eager; KV cache preallocated, views of the filled slots);
  - a static-shape step written out below: attention over every slot of a fixed-size cache under a mask,
    the position a tensor, cache writes by index_copy_, so each step has the same shapes (eager);
  - the same step through `torch.compile(dynamic=False)` (inductor), after its compile time;
and prints how many tokens the compiled step needs to make up for its compile time. The step is a copy
of the model's maths without hooks, kept here only to measure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paths  # noqa: E402
from llama import generate, load_model  # noqa: E402
from llama.loading.precision import MODEL_DTYPES  # noqa: E402
from llama.model import apply_rotary_emb  # noqa: E402


def static_step(model, cache, slots: torch.Tensor):
    """step(token (1, 1), position (1,)) -> logits (1, 1, vocab), every shape fixed by the cache's size."""
    def step(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        h = model.tok_embeddings(token)
        rotation = cache.rotations[position][None]  # (1, 1, 1, head_dim // 2)
        mask = (slots <= position)[None, None, None, :]  # every slot, the unfilled ones masked
        for i, layer in enumerate(model.layers):
            att = layer.attention
            x = layer.attention_norm(h)
            q = att.wq(x).view(1, 1, att.n_heads, att.head_dim)
            k = att.wk(x).view(1, 1, att.n_kv_heads, att.head_dim)
            v = att.wv(x).view(1, 1, att.n_kv_heads, att.head_dim)
            q, k = apply_rotary_emb(q, rotation).transpose(1, 2), apply_rotary_emb(k, rotation).transpose(1, 2)
            cache.k[i].index_copy_(2, position, k)
            cache.v[i].index_copy_(2, position, v.transpose(1, 2))
            out = F.scaled_dot_product_attention(q, cache.k[i], cache.v[i], attn_mask=mask,
                                                 enable_gqa=att.n_heads != att.n_kv_heads)
            h = h + att.wo(out.transpose(1, 2).reshape(1, 1, -1))
            h = h + layer.feed_forward(layer.ffn_norm(h))
        return model.output(model.norm(h))
    return step


def ms_per_token(step, tokens: int) -> float:
    token = torch.tensor([[1]])
    with torch.inference_mode():
        start = time.perf_counter()
        for position in range(tokens):
            token = step(token, torch.tensor([position]))[:, -1].argmax(-1, keepdim=True)
    return (time.perf_counter() - start) / tokens * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dtype", default="int4", choices=MODEL_DTYPES)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(paths.default_model_path(), dtype=args.model_dtype)
    model = loaded.model
    cache = model.new_cache(1, 2 * args.tokens)
    step = static_step(model, cache, torch.arange(cache.max_seqlen))
    stub = type("NoStop", (), {"stop_ids": frozenset(), "pad_id": loaded.tokenizer.pad_id})

    def ours() -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            generate(model, stub, [[1]], max_new_tokens=args.tokens)
        return (time.perf_counter() - start) / args.tokens * 1e3

    eager_generate = min(ours() for _ in range(2))
    eager_static = min(ms_per_token(step, args.tokens) for _ in range(2))
    started = time.perf_counter()
    compiled = torch.compile(step, dynamic=False)
    with torch.inference_mode():
        for position in range(2):  # the first two calls compile (and check that nothing recompiles)
            compiled(torch.tensor([[1]]), torch.tensor([position]))
    compile_s = time.perf_counter() - started
    compiled_ms = min(ms_per_token(compiled, args.tokens) for _ in range(3))
    saved = eager_generate - compiled_ms
    print(f"{args.model_dtype}, {args.threads} threads, ms per token over {args.tokens} tokens:")
    print(f"  llama.generate (eager)          {eager_generate:7.1f}")
    print(f"  static-shape step, eager        {eager_static:7.1f}")
    print(f"  static-shape step, compiled     {compiled_ms:7.1f}  ({eager_generate / compiled_ms:.2f}x), "
          f"after {compile_s:.0f} s of compiling")
    if saved > 0:
        print(f"  the compile pays for itself after {compile_s / saved * 1e3:,.0f} generated tokens")
    else:
        print("  the compiled step is not faster: it never pays for itself")


if __name__ == "__main__":
    main()
