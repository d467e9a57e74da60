"""Benchmark of the latent statistics pass: activations/s, and peak memory as the dataset grows.

    python bench/interpret.py                  # d_model 576, d_sae 9216, k 32, 32768 rows and 4x that

Writes a synthetic captured dataset in the documented format (random activations, sentences of 5 to
40 tokens), then in separate subprocesses (so each peak RSS is its own):
  - encode only: the SAE's encoder over every chunk, nothing kept (the floor for any analysis);
  - statistics: the full pass (density, histograms, top sentences / contexts, labels, n-grams);
  - statistics over the same data repeated 4 times: peak RSS must stay about the same (bounded).
There is no peer implementation of the streaming statistics to time against (the reference design
keeps per-sentence argmax latents only); the encode-only run is the yardstick, printed as a ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic capture writer is a test helper

from latents.collect import collect_stats  # noqa: E402
from latents.source import CapturedData  # noqa: E402
from latents.stats import StatsConfig, sae_encoder  # noqa: E402
from sae import SAEConfig, SparseAutoencoder  # noqa: E402
from synthetic_capture import random_corpus, write_captured  # noqa: E402


def make_dataset(folder: Path, rows: int, d_model: int, repeat: int, seed: int = 0) -> int:
    """A captured dataset of about `rows` rows, its sentences written `repeat` times; rows written."""
    rng = np.random.default_rng(seed)
    tokens, index, records = random_corpus(rng, max(1, rows // 22), vocab=49152, min_len=5, max_len=40)
    acts = (rng.standard_normal((len(tokens), d_model), dtype=np.float32) * 0.5).astype(np.float32)
    n_docs = int(index[:, 0].max()) + 1
    all_index = [index + np.array([k * n_docs, 0, 0], dtype=np.int32) for k in range(repeat)]
    all_records = [{**r, "doc": r["doc"] + k * n_docs} for k in range(repeat) for r in records]
    write_captured(folder, np.concatenate([acts] * repeat), np.concatenate([tokens] * repeat),
                   np.concatenate(all_index), all_records, label_names=["negative", "positive"],
                   shard_rows=1 << 14)
    return len(tokens) * repeat


def worker(args) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    sae = SparseAutoencoder(SAEConfig(d_in=args.d_model, d_sae=args.d_sae, k=args.k, normalization="none")).eval()
    data = CapturedData(args.folder)
    encode = sae_encoder(sae)
    start = time.perf_counter()
    if args.mode == "encode":
        with torch.no_grad():
            for chunk in data.chunks(args.rows_per_chunk):
                encode(chunk.acts)
    else:
        collect_stats(data, encode, args.d_sae, StatsConfig(top_n=args.top_n), rows_per_chunk=args.rows_per_chunk)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"mode": args.mode, "rows": data.n_rows, "seconds": seconds, "rows_per_s": data.n_rows / seconds,
            "peak_rss_mib": peak_mib}


def run_worker(args, folder: Path, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--folder", str(folder),
           "--d-model", str(args.d_model), "--d-sae", str(args.d_sae), "--k", str(args.k),
           "--top-n", str(args.top_n), "--rows-per-chunk", str(args.rows_per_chunk), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32768)
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=9216)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--top-n", type=int, default=50)
    parser.add_argument("--rows-per-chunk", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="stats", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        one, four = Path(tmp) / "x1", Path(tmp) / "x4"
        make_dataset(one, args.rows, args.d_model, 1)
        make_dataset(four, args.rows, args.d_model, 4)
        enc = run_worker(args, one, "encode")
        stats1 = run_worker(args, one, "stats")
        stats4 = run_worker(args, four, "stats")
    print(f"d_model {args.d_model}, d_sae {args.d_sae}, k {args.k}, top-n {args.top_n}, "
          f"{args.threads} threads, chunks of {args.rows_per_chunk} rows")
    for r in (enc, stats1, stats4):
        print(f"  {r['mode']:7s} {r['rows']:>8d} rows  {r['seconds']:7.1f} s  {r['rows_per_s']:9.0f} activations/s"
              f"  peak RSS {r['peak_rss_mib']:7.0f} MiB")
    print(f"statistics pass / encode only (throughput): {stats1['rows_per_s'] / enc['rows_per_s']:.2f}")
    print(f"peak RSS, 4x the data / 1x: {stats4['peak_rss_mib'] / stats1['peak_rss_mib']:.2f} (bounded if ~1)")


if __name__ == "__main__":
    main()
