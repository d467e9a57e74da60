"""The steering demo across seeds: does the steer the demo chooses make text more 'negative' on prompts
it was not chosen on, without wrecking fluency?

    python bench/demo_seeds.py                                  # 3 seeds of the default demo (long: 3 trainings)
    python bench/demo_seeds.py --root /tmp/demo -- --sample-fraction 0.03 --epochs 1   # smaller, for a try

Each seed runs `pipeline.py --seed N` in <root>/seed-N (the capture of the first seed is shared: it does
not depend on the seed). The pipeline sweeps the latents most associated with --label on its five
neutral prompts and picks a latent and value; this script then scores that choice on five OTHER neutral
prompts (`generate.py --sweep IDX:V:V:1`): on how many the judge's P(label) is higher for the steered
completion than for the unsteered one, and the steered text's perplexity against the unsteered text's
(under the unsteered model). Target: >= 4 of 5 prompts, perplexity ratio <= 3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT_PROMPTS = ("The book on the table is", "Yesterday the bus to work was", "The new coffee shop downtown is",
                    "My sister's new car is", "The meeting this morning was")


def run(argv: list[str], env: dict) -> None:
    print("+ python " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, check=True)


def demo(root: Path, seed: int, label: str, extra: list[str]) -> dict:
    runs = root / f"seed-{seed}"
    runs.mkdir(parents=True, exist_ok=True)
    first = root / "seed-shared"
    for part in ("capture", "batches"):  # the capture does not depend on the seed: share the first one
        if (first / part).exists() and not (runs / part).exists():
            (runs / part).symlink_to((first / part).resolve())
    env = {**os.environ, "LLAMA_SAE_RUNS": str(runs)}
    run(["pipeline.py", "--runs", str(runs), "--seed", str(seed), "--label", label, *extra], env)
    if not first.exists():
        first.mkdir()
        for part in ("capture", "batches"):
            (first / part).symlink_to((runs / part).resolve())
    report = json.loads((runs / "pipeline.json").read_text())
    chosen = (report.get("steering") or {}).get("chosen")
    if not chosen:
        return {"seed": seed, "latent": None}
    prompts = root / f"seed-{seed}-held-out-prompts.txt"  # beside the run, whose folder is pipeline.py's
    prompts.write_text("\n".join(HELD_OUT_PROMPTS) + "\n")
    out = root / f"seed-{seed}-held-out-sweep.json"
    value = f"{chosen['value']:.4g}"
    run(["generate.py", "--sae", str(runs / "train" / "sae"), "--sweep", f"{chosen['latent']}:{value}:{value}:1",
         "--label", label, "--prompt-file", str(prompts), "--sweep-json", str(out),
         "--max-new-tokens", str(report["config"]["max_new_tokens"])], env)
    row = json.loads(out.read_text())["rows"][-1]
    return {"seed": seed, "latent": chosen["latent"], "value": chosen["value"], "moved": row["moved"],
            "prompts": len(row["texts"]), "shift": row["shift"], "ppl_ratio": row["ppl_ratio"],
            "distinct2": row["distinct2"], "chosen_on": {"moved": chosen["moved"], "shift": chosen["shift"]}}


def passes(moved: int, ppl_ratio: float) -> bool:
    return moved >= 4 and ppl_ratio <= 3.0


def table(results: list[dict], label: str) -> str:
    """One row a seed: the choice, how it did on the five prompts it was chosen on, and on five others."""
    lines = [f"steering toward {label!r}: judge higher than unsteered on how many of 5 prompts",
             f"{'seed':>4} {'latent':>7} {'value':>7} {'chosen on':>9} {'held out':>9} {'shift':>7} {'ppl x':>6} "
             f"{'dist-2':>6}  pass (held out)"]
    for r in results:
        if r["latent"] is None:
            lines.append(f"{r['seed']:>4}       -       -  no value moved the judge within the bounds    no")
            continue
        ok = passes(r["moved"], r["ppl_ratio"])
        lines.append(f"{r['seed']:>4} {r['latent']:>7} {r['value']:>7.3g} {r['chosen_on']['moved']:>7}/5 "
                     f"{r['moved']:>7}/{r['prompts']:<1} {r['shift']:>+7.3f} {r['ppl_ratio']:>6.2f} "
                     f"{r['distinct2']:>6.2f}  {'yes' if ok else 'no'}")
    chosen = [r for r in results if r["latent"] is not None]
    held = sum(passes(r["moved"], r["ppl_ratio"]) for r in chosen)
    own = sum(r["chosen_on"]["moved"] >= 4 for r in chosen)
    lines.append(f"target (judge higher on >= 4 of 5 prompts, perplexity <= 3x): {own} of {len(results)} seeds on "
                 f"the prompts the steer was chosen on, {held} of {len(results)} on the held-out prompts")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(ROOT / "runs" / "demo-seeds"), help="folder for the seeds' runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--label", default="negative")
    parser.add_argument("--table", action="store_true", help="print the table of the last run's demo-seeds.json")
    parser.add_argument("pipeline_args", nargs="*", help="after --: extra pipeline.py flags")
    args = parser.parse_args()
    root = Path(args.root)
    if args.table:
        print(table(json.loads((root / "demo-seeds.json").read_text()), args.label))
        return
    results = [demo(root, seed, args.label, args.pipeline_args) for seed in args.seeds]
    (root / "demo-seeds.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results, args.label))


if __name__ == "__main__":
    main()
