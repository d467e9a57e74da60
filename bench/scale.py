"""Real Llama 3 shapes on this machine, one table: the 8B shape in bf16 from Hugging Face and Meta folders
(load time and peak RSS, capture of blocks.16.hook_resid_post, greedy decoding), and the 1B shape's
forward against transformers on the same weights in float32 and bf16, and its capture in bf16 vs float32.

    python bench/scale.py --workdir /tmp/scale [--tokens 512] [--new-tokens 8] [--skip-8b] [--json out.json]
    python bench/scale.py --big 3b ...      # the 3B shape in place of the 8B one (a machine with less memory)

The random checkpoints are written by bench/make_checkpoint.py into --workdir (the 8B one is 16 GB: one
format at a time, deleted after its run if this run wrote it) unless they are there already. Each 8B figure comes from a fresh
subprocess (its peak RSS is VmHWM from /proc/self/status: the load's, then the capture's, the load
included). 1B timings are the best of --repeats after a warm-up, ours and transformers alternating.
Targets: 8B loads and captures in bf16 with peak RSS <= 17 GiB; the 1B forward >= 1.0x transformers in
each dtype; bf16 capture >= 1.6x float32 capture.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import make_checkpoint  # noqa: E402

HOOK_8B, HOOK_1B = "blocks.16.hook_resid_post", "blocks.8.hook_resid_post"
GIB = 2 ** 30


def peak_rss() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def worker(model: str, tokens: int, new_tokens: int) -> dict:
    """In a fresh process: load in bf16, capture HOOK_8B over `tokens` tokens, decode `new_tokens` greedily."""
    from llama import generate, load_model

    started = time.perf_counter()
    loaded = load_model(model, dtype="bfloat16", tokenizer=False)
    out = {"load_s": time.perf_counter() - started, "load_peak_gib": peak_rss() / GIB,
           "weights_gib": sum(p.nbytes for p in loaded.model.parameters()) / GIB}
    ids = torch.randint(0, loaded.args.vocab_size, (max(1, tokens // 128), min(tokens, 128)),
                        generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        started = time.perf_counter()
        acts = [loaded.model(row[None], taps=(HOOK_8B,), return_logits=False).taps[HOOK_8B] for row in ids]
        out["capture_tok_s"] = ids.numel() / (time.perf_counter() - started)
    out["capture_finite"] = all(bool(torch.isfinite(a).all()) for a in acts)
    out["capture_peak_gib"] = peak_rss() / GIB
    stub, prompt = SimpleNamespace(pad_id=None, stop_ids=set()), [ids[0, :16].tolist()]
    prefill = once(lambda: generate(loaded.model, stub, prompt, max_new_tokens=1))  # prompt + one step
    total = once(lambda: generate(loaded.model, stub, prompt, max_new_tokens=new_tokens + 1))
    out["decode_s_per_token"] = (total - prefill) / new_tokens
    out["peak_gib"] = peak_rss() / GIB
    return out


def run_big(shape: str, fmt: str, workdir: Path, tokens: int, new_tokens: int) -> dict:
    """The big shape in a fresh process; its checkpoint is deleted afterwards if this run wrote it."""
    folder = workdir / f"{shape}-{fmt}"
    written = not folder.exists()
    if written:
        started = time.perf_counter()
        write = make_checkpoint.write_hf if fmt == "hf" else make_checkpoint.write_meta
        write(folder, make_checkpoint.llama3_args(shape))
        print(f"wrote {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", str(folder), "--tokens", str(tokens),
                               "--new-tokens", str(new_tokens)], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if written:
            shutil.rmtree(folder, ignore_errors=True)


def once(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_1b(workdir: Path, repeats: int, seqlen: int) -> dict:
    """Forward with logits, ours vs transformers, float32 and bf16; our capture in bf16 vs float32."""
    import transformers
    from llama import load_model

    folder = workdir / "1b-hf"
    if not folder.exists():
        make_checkpoint.write_hf(folder, make_checkpoint.llama3_args("1b"))
    ids = torch.randint(0, 128256, (1, seqlen), generator=torch.Generator().manual_seed(0))
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        ours = load_model(folder, dtype=name, tokenizer=False).model
        theirs = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
        with torch.inference_mode():
            ours(ids), theirs(input_ids=ids)  # warm-up
            t_ours, t_theirs = [], []
            for _ in range(repeats):  # alternating: both see the same machine load
                t_ours.append(once(lambda: ours(ids)))
                t_theirs.append(once(lambda: theirs(input_ids=ids)))
            capture = min(once(lambda: ours(ids, taps=(HOOK_1B,), return_logits=False)) for _ in range(repeats))
        out[name] = {"forward_tok_s": seqlen / min(t_ours), "transformers_tok_s": seqlen / min(t_theirs),
                     "ratio": min(t_theirs) / min(t_ours), "capture_tok_s": seqlen / capture}
        del ours, theirs
    out["capture_bf16_over_float32"] = out["bfloat16"]["capture_tok_s"] / out["float32"]["capture_tok_s"]
    return out


def print_table(results: dict) -> None:
    print("\nscale bench (random weights of real Llama 3 shapes)")
    for key, r in results.items():
        if key == "1b":
            continue
        shape, fmt = key.split("_")
        label = f"{shape.upper()} bf16 {fmt}"
        if "error" in r:
            print(f"  {label:<12} error: {r['error']}")
            continue
        print(f"  {label:<12} load {r['load_s']:.0f} s, peak {r['load_peak_gib']:.2f} GiB (weights "
              f"{r['weights_gib']:.2f}, {r['load_peak_gib'] / r['weights_gib']:.3f}x) | capture {r['capture_tok_s']:.1f} tok/s, peak {r['capture_peak_gib']:.2f} GiB"
              f" (target <= 17) | decode {r['decode_s_per_token']:.2f} s/token")
    one = results.get("1b")
    if one:
        for name in ("float32", "bfloat16"):
            r = one[name]
            print(f"  1B {name:<9} forward {r['forward_tok_s']:.0f} tok/s vs transformers {r['transformers_tok_s']:.0f}"
                  f" = {r['ratio']:.2f}x (target >= 1.0) | capture {r['capture_tok_s']:.0f} tok/s")
        print(f"  1B capture bf16 / float32 = {one['capture_bf16_over_float32']:.2f}x (target >= 1.6)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/llama-sae-scale")
    parser.add_argument("--tokens", type=int, default=512, help="tokens captured from the 8B shape")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens decoded greedily by the 8B shape")
    parser.add_argument("--seqlen", type=int, default=128, help="tokens per 1B forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", default="8b", choices=sorted(make_checkpoint.SHAPES),
                        help="the shape loaded, captured and decoded in a fresh process")
    parser.add_argument("--skip-8b", action="store_true", help="skip the --big shape")
    parser.add_argument("--skip-1b", action="store_true")
    parser.add_argument("--json", default="")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    cfg = parser.parse_args()
    if cfg.worker:
        print(json.dumps(worker(cfg.worker, cfg.tokens, cfg.new_tokens)))
        return
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    if not cfg.skip_1b:
        results["1b"] = run_1b(workdir, cfg.repeats, cfg.seqlen)
        print_table(results)
    if not cfg.skip_8b:
        free = shutil.disk_usage(workdir).free
        if free < 20e9:
            raise SystemExit(f"error: --workdir {workdir}: {free / 1e9:.0f} GB free; the 8B checkpoint needs 17 GB")
        for fmt in ("hf", "meta"):
            results[f"{cfg.big}_{fmt}"] = run_big(cfg.big, fmt, workdir, cfg.tokens, cfg.new_tokens)
            print_table(results)
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(results, indent=2))
    print_table(results)


if __name__ == "__main__":
    main()
