"""Decoding speed against llama.cpp and transformers: greedy, batch 1, one process, the same threads.

    python bench/decode.py [--tokens 64] [--rounds 3] [--threads N] [--prompt-tokens 512] [--no-peers]

Rows: ours in float32, bfloat16, int8 and int4 (`--model-dtype`), transformers in float32, and llama.cpp
through llama-cpp-python on the same GGUF file (bench/requirements-llamacpp.txt; the row is skipped with
a message when it is not installed). The rows are measured in turn, round after round, so that all see
the same machine; each figure is the best round. Printed: tokens/s of 64 greedy tokens after a short
prompt, time to first token of a --prompt-tokens prompt, and the same decoding with a random SAE spliced
in and two latents steered; then the ratios the targets are about (int4 >= 0.6x llama.cpp, int8 >= 0.5x,
bf16 >= 1.5x our float32).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paths  # noqa: E402
from llama import generate, load_model  # noqa: E402
from sae.config import SAEConfig  # noqa: E402
from sae.model import SparseAutoencoder  # noqa: E402
from sae.steering import Steer, Steering  # noqa: E402

PROMPT = "Today I went to the park and"
OURS = ("float32", "bfloat16", "int8", "int4")


class _NoStop:
    """The tokenizer's padding without stop tokens: every run makes exactly the tokens asked for."""

    def __init__(self, tokenizer):
        self.stop_ids, self.pad_id = frozenset(), tokenizer.pad_id


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours(dtype: str, injections_for=None):
    """(decode(prompt, n), the loaded model) for one --model-dtype."""
    loaded = load_model(paths.default_model_path(), dtype=dtype)
    tok = _NoStop(loaded.tokenizer)

    def decode(prompt: list[int], n: int) -> None:
        injections = injections_for(loaded) if injections_for else None
        out = generate(loaded.model, tok, [prompt], max_new_tokens=n, injections=injections)
        assert len(out[0]) == n

    return decode, loaded


def transformers_row():
    import transformers
    path = paths.default_model_path()
    model = transformers.LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=torch.float32).eval()

    def decode(prompt: list[int], n: int) -> None:
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)

    return decode


def llamacpp_row(threads: int):
    # installed in the project's .venv or in a separate .venv-bench (bench/requirements-llamacpp.txt)
    sys.path.extend(str(p) for p in ROOT.glob(".venv-bench/lib/python*/site-packages"))
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(paths.default_model_path()), n_ctx=1024, n_threads=threads, n_batch=512,
                verbose=False)

    def decode(prompt: list[int], n: int) -> None:
        llm.reset()
        made = 0
        for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            made += 1
            if made == n:
                break

    return decode


def steering_injections(loaded):
    """A random SAE of the default width at the default hook, latents 3 and 17 steered."""
    cfg = SAEConfig(d_in=loaded.args.dim, d_sae=16 * loaded.args.dim, k=32, hook_name=paths.DEFAULT_HOOK,
                    model=loaded.source)
    torch.manual_seed(0)
    sae = SparseAutoencoder(cfg)
    sae.normalization.set_scale(0.05)  # a fitted statistic now, not a config field
    steering = Steering(sae, [Steer(3, 8.0), Steer(17, -4.0)], "sae")
    return lambda _loaded: {cfg.hook_name: steering}


def measure(rows: dict, prompt: list[int], n: int, rounds: int) -> dict[str, float]:
    """Best-of-rounds seconds per row, the rows alternating within each round (after one warm-up each)."""
    for decode in rows.values():
        decode(prompt, min(n, 4))
    best = {name: float("inf") for name in rows}
    for round_ in range(rounds):
        this_round = {name: _timed(lambda: decode(prompt, n)) for name, decode in rows.items()}
        best = {name: min(best[name], s) for name, s in this_round.items()}
        print(f"  round {round_ + 1}, {n} tokens after a {len(prompt)}-token prompt: "
              + ", ".join(f"{name} {s:.2f} s" for name, s in this_round.items()), flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--no-peers", action="store_true", help="our rows only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows, loaded = {}, None
    for dtype in OURS:
        rows[f"ours {dtype}"], loaded = ours(dtype)
    if not args.no_peers:
        rows["transformers float32"] = transformers_row()
        cpp = llamacpp_row(args.threads)
        if cpp is None:
            print("llama.cpp row skipped: pip install -r bench/requirements-llamacpp.txt (builds ~10 minutes)")
        else:
            rows["llama.cpp (same GGUF)"] = cpp
    prompt = loaded.tokenizer.encode(PROMPT)
    long_prompt = (loaded.tokenizer.encode(PROMPT * 200))[:args.prompt_tokens]
    print(f"default model, greedy {args.tokens} tokens, batch 1, {args.threads} threads, best of {args.rounds} "
          f"alternating rounds")

    decode = measure(rows, prompt, args.tokens, args.rounds)
    first = measure(rows, long_prompt, 1, args.rounds)
    steer = steering_injections(loaded)
    steered = {f"{name}, SAE + 2 steered": ours(name.split()[1], steer)[0] for name in rows if name.startswith("ours")}
    steered_s = measure(steered, prompt, args.tokens, args.rounds)
    report(decode, first, steered_s, args)


def report(decode: dict, first: dict, steered: dict, args) -> None:
    rate = {name: args.tokens / s for name, s in decode.items()}
    print(f"\n{'row':<34} {'tokens/s':>9} {'first token, ' + str(args.prompt_tokens) + ' prompt':>26}")
    for name in decode:
        print(f"{name:<34} {rate[name]:9.1f} {first[name] * 1000:23.0f} ms")
    for name, s in steered.items():
        print(f"{name:<34} {args.tokens / s:9.1f}   (plain {rate[name.split(',')[0]]:.1f})")
    print()
    cpp = rate.get("llama.cpp (same GGUF)")
    pairs = [("ours int4", cpp, "llama.cpp", 0.6), ("ours int8", cpp, "llama.cpp", 0.5),
             ("ours bfloat16", rate["ours float32"], "ours float32", 1.5),
             ("ours float32", rate.get("transformers float32"), "transformers float32", None)]
    for ours_name, peer, peer_name, target in pairs:
        if peer:
            goal = f"   target >= {target}x: {'met' if rate[ours_name] / peer >= target else 'NOT met'}" if target else ""
            print(f"{ours_name} / {peer_name}: {rate[ours_name] / peer:.2f}x{goal}")


if __name__ == "__main__":
    main()
