"""Capture and prebatching throughput, ours against the plain approach, and peak memory vs corpus size.

    python bench/capture.py                 # a ~400-document slice of the default corpus
    python bench/capture.py --docs 1000 --json runs/bench/capture.json
    python bench/capture.py --skip-memory --skip-plain --repeats 2   # the model-dtype comparison alone

Sides, each in its own subprocess (so peak RSS is the side's own), on the same sentences:
- ours: `capture.capture` end to end after the model is loaded: Punkt, tokenization, length-sorted
  token-budget batches stopping after the tapped block, shards written on a background thread;
- plain: what the reference papers do: transformers' LlamaForCausalLM from the same GGUF, a forward hook
  on the layer, batches of 32 sentences in corpus order (right padding), full forward, and
  `torch.save` of each batch's hidden states;
- prebatching: `data.shuffle` on our capture (windows of 2 shards), in MB/s of activations read;
- memory: peak RSS of capture and of prebatching for the slice and for the slice repeated 4 times;
- model dtype: ours with the model in bfloat16 against float32 (float32 storage both), alternating
  `--repeats` times, capture tokens/s (end to end: the sentences are prepared in both).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paths  # noqa: E402

HOOK = "blocks.20.hook_resid_post"
LAYER = 20
SHARD_TOKENS = 4096  # several shards even for the small slice, so memory vs corpus size is visible
PREBATCH_WINDOW = 2  # shards per prebatching window: the x1 slice already fills a whole window


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_slice(path: Path, docs: int, repeat: int = 1) -> Path:
    """Every k-th row of the default corpus (all labels), `docs` rows, the whole repeated `repeat` times."""
    text = paths.default_corpus_path().read_bytes().decode("utf-8", "replace")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    step = max(1, len(rows) // docs)
    chosen = rows[::step][:docs] * repeat
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return path


def run_ours(corpus: Path, out: Path, model_dtype: str = "float32") -> dict:
    import torch

    import capture
    import cli
    import startup

    loaded = startup.load_model("", device=torch.device("cpu"), model_dtype=model_dtype)
    cfg, _ = cli.parse_config(capture.CaptureConfig, "bench", ["--data", str(corpus), "--out", str(out),
                                                               "--label-field", "sentiment",
                                                               "--shard-tokens", str(SHARD_TOKENS)])
    start = time.perf_counter()
    capture.capture(cfg, loaded=loaded)
    seconds = time.perf_counter() - start
    tokens = json.loads((out / HOOK / "manifest.json").read_text())["total_rows"]
    return {"tokens": tokens, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def run_plain(sentences: Path, out: Path, batch_size: int = 32) -> dict:
    import torch
    import transformers

    model_path = paths.default_model_path()
    model = transformers.LlamaForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name,
                                                          dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    texts = [json.loads(line)["text"] for line in sentences.read_text(encoding="utf-8").splitlines()]
    saved = {}
    model.model.layers[LAYER].register_forward_hook(
        lambda module, args, output: saved.__setitem__("acts", output[0] if isinstance(output, tuple) else output))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    out.mkdir(parents=True, exist_ok=True)
    start, tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=192, add_special_tokens=False)
            model(**batch)
            torch.save({"acts": saved["acts"].clone(), "mask": batch["attention_mask"]}, out / f"batch_{i}.pt")
            tokens += int(batch["attention_mask"].sum())
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def run_prebatch(capture_folder: Path, out: Path) -> dict:
    from data.shuffle import PrebatchConfig, prebatch

    nbytes = sum(p.stat().st_size for p in capture_folder.glob("acts-*.bin"))
    start = time.perf_counter()
    prebatch(capture_folder, out, PrebatchConfig(window_shards=PREBATCH_WINDOW))
    seconds = time.perf_counter() - start
    return {"mb": nbytes / 2**20, "seconds": seconds, "mb_per_s": nbytes / 2**20 / seconds,
            "peak_rss_mb": peak_rss_mb()}


def worker(args: argparse.Namespace) -> None:
    if args.worker == "ours":
        result = run_ours(Path(args.corpus), Path(args.out), args.model_dtype)
    elif args.worker == "plain":
        result = run_plain(Path(args.corpus), Path(args.out))
    else:
        result = run_prebatch(Path(args.corpus), Path(args.out))
    print("RESULT " + json.dumps(result))


def side(kind: str, source: Path, out: Path, model_dtype: str = "float32") -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--corpus", str(source), "--out", str(out),
                           "--model-dtype", model_dtype], capture_output=True, text=True, cwd=ROOT)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{kind} side failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def compare_plain(tmp: Path, ours: dict) -> dict:
    plain = side("plain", tmp / "ours" / HOOK / "sentences.jsonl", tmp / "plain")
    pre = side("prebatch", tmp / "ours" / HOOK, tmp / "batches")
    print(f"  plain  {plain['tokens'] / plain['seconds']:8.0f} tokens/s  ({plain['seconds']:.1f} s, "
          f"peak RSS {plain['peak_rss_mb']:.0f} MB)")
    speedup = (ours["tokens"] / ours["seconds"]) / (plain["tokens"] / plain["seconds"])
    print(f"  ours / plain: {speedup:.2f}x")
    print(f"prebatch: {pre['mb_per_s']:.0f} MB/s ({pre['mb']:.0f} MB in {pre['seconds']:.1f} s, "
          f"peak RSS {pre['peak_rss_mb']:.0f} MB)")
    return {"plain": plain, "prebatch": pre}


def compare_model_dtypes(corpus: Path, tmp: Path, repeats: int) -> dict:
    """Capture with the model in bfloat16 and in float32, alternating; the best run of each."""
    runs = {"bfloat16": [], "float32": []}
    for i in range(repeats):
        for dtype in runs:
            run = side("ours", corpus, tmp / f"dtype-{dtype}-{i}", model_dtype=dtype)
            runs[dtype].append(run)
            print(f"  model {dtype:8s} {run['tokens'] / run['seconds']:8.0f} tokens/s  ({run['seconds']:.1f} s, "
                  f"peak RSS {run['peak_rss_mb']:.0f} MB)", flush=True)
    rate = {d: max(r["tokens"] / r["seconds"] for r in rs) for d, rs in runs.items()}
    print(f"capture with the model in bfloat16 vs float32 (float32 storage, best of {repeats}): "
          f"{rate['bfloat16']:.0f} vs {rate['float32']:.0f} tokens/s = {rate['bfloat16'] / rate['float32']:.2f}x")
    return {"tokens_per_s": rate, "ratio": rate["bfloat16"] / rate["float32"], "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=400, help="documents in the slice")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 4x corpus memory runs")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--skip-plain", action="store_true", help="skip transformers' side and prebatching")
    parser.add_argument("--repeats", type=int, default=1, help="bfloat16 / float32 model pairs (0: skip)")
    parser.add_argument("--model-dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["ours", "plain", "prebatch"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    with TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = make_slice(tmp / "slice.csv", args.docs)
        ours = side("ours", corpus, tmp / "ours")
        figures = {"ours": ours}
        print(f"capture, {ours['tokens']} tokens of {args.docs} documents, {HOOK}")
        print(f"  ours   {ours['tokens'] / ours['seconds']:8.0f} tokens/s  ({ours['seconds']:.1f} s, "
              f"peak RSS {ours['peak_rss_mb']:.0f} MB)", flush=True)
        if not args.skip_plain:
            figures.update(compare_plain(tmp, ours))
        if args.repeats:
            figures["model_dtype"] = compare_model_dtypes(corpus, tmp, args.repeats)
        if not args.skip_memory:
            pre = figures.get("prebatch") or side("prebatch", tmp / "ours" / HOOK, tmp / "batches")
            big = make_slice(tmp / "slice4.csv", args.docs, repeat=4)
            ours4 = side("ours", big, tmp / "ours4")
            pre4 = side("prebatch", tmp / "ours4" / HOOK, tmp / "batches4")
            figures.update({"ours_4x": ours4, "prebatch_4x": pre4})
            print(f"peak RSS, corpus x1 -> x4: capture {ours['peak_rss_mb']:.0f} -> {ours4['peak_rss_mb']:.0f} MB "
                  f"({ours['tokens']} -> {ours4['tokens']} tokens), prebatch {pre['peak_rss_mb']:.0f} -> "
                  f"{pre4['peak_rss_mb']:.0f} MB")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
