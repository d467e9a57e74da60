"""Cost of an SAE in the loop: greedy generation with the SAE spliced in and two latents steered, against
the plain model, side by side in one run (default model, fp32, batch 1, KV cache, same threads).

    python bench/generate.py [--sae runs/train/sae] [--tokens 64] [--repeats 3] [--threads N]

Without a trained SAE one of the default width (16 x d_model, k 32) is initialised at random: the cost
does not depend on the weights. Each figure is the best of --repeats runs after one warm-up; the
overhead is (plain tokens/s) / (steered tokens/s) - 1, to stay under 25%.
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
from llama import generate, load_model  # noqa: E402
from sae.config import SAEConfig  # noqa: E402
from sae.io import load_sae  # noqa: E402
from sae.model import SparseAutoencoder  # noqa: E402
from sae.steering import MODES, Steer, Steering  # noqa: E402

PROMPT = "Today I went to the park and"


def make_sae(folder: str, loaded) -> SparseAutoencoder:
    if folder and Path(folder, "config.json").is_file():
        return load_sae(folder)
    cfg = SAEConfig(d_in=loaded.args.dim, d_sae=16 * loaded.args.dim, k=32, hook_name=paths.DEFAULT_HOOK,
                    model=loaded.source)
    sae = SparseAutoencoder(cfg)
    sae.normalization.set_scale(0.05)
    return sae


def tokens_per_second(loaded, prompt: list[int], injections, n_tokens: int, repeats: int) -> float:
    # A stop token would end a run early: no stop ids here, so every run makes exactly n_tokens.
    tokenizer = _NoStop(loaded.tokenizer)

    def run():
        out = generate(loaded.model, tokenizer, [prompt], max_new_tokens=n_tokens, injections=injections)
        assert len(out[0]) == n_tokens

    run()  # warm-up
    best = min(_timed(run) for _ in range(repeats))
    return n_tokens / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _NoStop:
    def __init__(self, tokenizer):
        self._tokenizer, self.stop_ids, self.pad_id = tokenizer, frozenset(), tokenizer.pad_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sae", default=str(paths.DEFAULT_SAE_DIR))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(paths.default_model_path())
    sae = make_sae(args.sae, loaded)
    prompt = loaded.tokenizer.encode(PROMPT)
    steers = [Steer(3, 8.0), Steer(17, -4.0)]
    print(f"greedy generation, {args.tokens} tokens, batch 1, {args.threads} threads, SAE d_sae={sae.cfg.d_sae} "
          f"k={sae.cfg.k} at {sae.cfg.hook_name}")
    with torch.no_grad():
        plain = tokens_per_second(loaded, prompt, None, args.tokens, args.repeats)
        print(f"  {'plain model':<26} {plain:7.1f} tokens/s")
        for mode in MODES:
            steering = Steering(sae, steers, mode)
            rate = tokens_per_second(loaded, prompt, {sae.cfg.hook_name: steering}, args.tokens, args.repeats)
            print(f"  {'SAE, 2 latents, ' + mode:<26} {rate:7.1f} tokens/s   overhead {plain / rate - 1:+.1%}")


if __name__ == "__main__":
    main()
