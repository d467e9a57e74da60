"""Ours against transformers on the embedded SmolLM2-135M GGUF, side by side in one run (fp32, same threads).

    python bench/llama_forward.py [--threads N] [--repeats 3] [--json results.json]

Measures tokens per second of: a full forward with logits (batch 8 x 128); reading
blocks.20.hook_resid_post only (ours stops after block 20, transformers runs its whole forward with
output_hidden_states); greedy generation of 64 tokens with the KV cache (batch 1); and the time from
a fresh `python` process to the first logits, loading model and tokenizer from the GGUF file.
Each figure is the best of --repeats runs after one warm-up, ours and transformers alternating so that
both see the same machine load; ratios > 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paths  # noqa: E402
from llama import generate, load_model  # noqa: E402

HOOK = "blocks.20.hook_resid_post"
COLD_OURS = """
import time, torch; t0 = time.perf_counter()
from llama import load_model
m = load_model({path!r})
with torch.no_grad(): m.model(torch.tensor([m.tokenizer.encode("Hello, world")]))
"""
COLD_HF = """
import time, torch; t0 = time.perf_counter()
from transformers import AutoTokenizer, LlamaForCausalLM
tok = AutoTokenizer.from_pretrained({folder!r}, gguf_file={name!r})
m = LlamaForCausalLM.from_pretrained({folder!r}, gguf_file={name!r}, dtype=torch.float32).eval()
with torch.no_grad(): m(torch.tensor([tok("Hello, world")["input_ids"]]))
"""


def best_times(ours, theirs, repeats: int) -> tuple[float, float]:
    """Best wall time of each, after a warm-up, the two run alternately so that both see the same load."""
    ours(), theirs()
    times = ([], [])
    for _ in range(repeats):
        for fn, bucket in zip((ours, theirs), times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def cold_starts(ours: str, theirs: str, threads: int, repeats: int) -> tuple[float, float]:
    """Seconds from launching a fresh interpreter to its exit (after the first logits), best of
    `repeats`, ours and theirs alternately."""
    times = ([], [])
    for _ in range(repeats):
        for code, bucket in zip((ours, theirs), times):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import torch; torch.set_num_threads({threads})\n" + code],
                           cwd=ROOT, check=True, capture_output=True)
            bucket.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaForCausalLM

    path = paths.default_model_path()
    ours = load_model(path)
    theirs = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tokens = torch.randint(0, ours.args.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))
    prompt = ours.tokenizer.encode("Once upon a time, in a small village by the sea,")
    no_stop = SimpleNamespace(pad_id=ours.tokenizer.pad_id, stop_ids=())  # always 64 tokens
    ids = torch.tensor([prompt])
    rows = []
    with torch.inference_mode():
        rows.append(("forward + logits, 8 x 128 (tok/s)", tokens.numel(),
                     *best_times(lambda: ours.model(tokens), lambda: theirs(input_ids=tokens), args.repeats)))
        rows.append((f"{HOOK} only, 8 x 128 (tok/s)", tokens.numel(),
                     *best_times(lambda: ours.model(tokens, taps=(HOOK,), return_logits=False),
                                 lambda: theirs(input_ids=tokens, output_hidden_states=True).hidden_states[21],
                                 args.repeats)))
        rows.append(("greedy generation, 64 tokens, batch 1 (tok/s)", 64,
                     *best_times(lambda: generate(ours.model, no_stop, [prompt], max_new_tokens=64),
                                 lambda: theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64,
                                                         min_new_tokens=64, do_sample=False,
                                                         pad_token_id=no_stop.pad_id),
                                 args.repeats)))
    cold = cold_starts(COLD_OURS.format(path=str(path)), COLD_HF.format(folder=str(path.parent), name=path.name),
                       args.threads, args.repeats)
    report(rows, cold, args)


def report(rows, cold, args) -> None:
    print(f"SmolLM2-135M-Instruct GGUF, fp32, {args.threads} threads, best of {args.repeats}")
    print(f"{'':50s} {'ours':>10s} {'transformers':>13s} {'ratio':>7s}")
    results = {}
    for label, count, ours_s, theirs_s in rows:
        print(f"{label:50s} {count / ours_s:10.1f} {count / theirs_s:13.1f} {theirs_s / ours_s:6.2f}x")
        results[label] = {"ours": count / ours_s, "transformers": count / theirs_s, "ratio": theirs_s / ours_s}
    label = "cold start to first logits (s; ratio = theirs/ours)"
    print(f"{label:50s} {cold[0]:10.2f} {cold[1]:13.2f} {cold[1] / cold[0]:6.2f}x")
    results[label] = {"ours": cold[0], "transformers": cold[1], "ratio": cold[1] / cold[0]}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
