"""How much of a label the SAE's latents carry, across SAE settings, on one capture: the search behind the
demo's defaults.

    python bench/probe_settings.py --runs runs --settings 16:32 4:32 4:16 32:32 16:64 [--epochs 3]

For each EXPANSION:K, trains an SAE with train.py on <runs>/batches/<hook> (skipped when
<workdir>/eEXPANSIONkK/sae exists, so an interrupted search resumes), then one pass over <runs>/capture
(latents/heldout.py) gives, for --label:
  - the best single latent's AUROC of its sentence-mean activation over all labelled sentences (what the
    interpret table ranks by), and that latent chosen on the probes' training documents, scored on
    their test documents;
  - the probes of latents/probes.py on the same split: full probe on the raw activation (the ceiling)
    and k-sparse probes on the latents, k = 1, 2, 5, 20;
  - the SAE's FVU and dead share on the validation batches (train.py's own figures).
Targets of the demo: best single latent >= 0.65, k=20 sparse probe >= 0.85x the full probe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paths  # noqa: E402
from data.shuffle import DEFAULTS, is_validation  # noqa: E402
from latents.heldout import SentenceFeatures, collect_heldout  # noqa: E402
from latents.probes import auroc, probe_report, split_documents  # noqa: E402
from latents.source import CapturedData  # noqa: E402
from latents.stats import sae_encoder  # noqa: E402
from sae.io import load_sae  # noqa: E402


def train(batches: Path, out: Path, expansion: int, k: int, epochs: int, seed: int) -> float:
    """train.py in a subprocess (its own progress and metrics); seconds taken, 0 when already trained."""
    if (out / "sae" / "config.json").is_file():
        return 0.0
    started = time.perf_counter()
    subprocess.run([sys.executable, "train.py", "--data", str(batches), "--out", str(out), "--expansion",
                    str(expansion), "--k", str(k), "--epochs", str(epochs), "--seed", str(seed), "--resume"],
                   cwd=ROOT, check=True)
    return time.perf_counter() - started


def latent_matrix(f: SentenceFeatures, rows: np.ndarray) -> np.ndarray:
    """Dense (len(rows), d_sae) sentence-mean latents of the sentences `rows` (zeros where silent)."""
    where = {int(r): i for i, r in enumerate(rows)}
    dense = np.zeros((len(rows), f.d_sae), dtype=np.float32)
    for s, j, v in zip(f.sent, f.latent, f.value):
        i = where.get(int(s))
        if i is not None:
            dense[i, j] = v
    return dense


def single_latent(f: SentenceFeatures, label: int, test_fraction: float, seed: int) -> dict:
    """The best latent by AUROC over all labelled sentences, and the one chosen on training documents
    scored on test documents (the same document split as the probes)."""
    labelled = np.flatnonzero(f.labels >= 0)
    dense, positive = latent_matrix(f, labelled), f.labels[labelled] == label
    is_test = split_documents(f.docs[labelled], test_fraction, seed)
    live = np.flatnonzero(dense.any(0))
    everywhere = {int(j): auroc(dense[:, j], positive) for j in live}
    on_train = {int(j): auroc(dense[~is_test, j], positive[~is_test]) for j in live}
    best_all = max(everywhere, key=lambda j: everywhere[j])
    best_train = max(on_train, key=lambda j: on_train[j])
    return {"best_all": {"latent": best_all, "auroc": everywhere[best_all]},
            "chosen_on_train": {"latent": best_train, "train_auroc": on_train[best_train],
                                "test_auroc": auroc(dense[is_test, best_train], positive[is_test])}}


def measure(runs: Path, hook: str, folder: Path, label: str, seed: int) -> dict:
    data = CapturedData(runs / "capture" / hook)
    sae = load_sae(folder / "sae")
    batches = json.loads((runs / "batches" / hook / "batches.json").read_text())
    val_fraction, split_seed = batches.get("val_fraction", DEFAULTS.val_fraction), batches.get("seed", DEFAULTS.seed)
    features, _ = collect_heldout(data, sae_encoder(sae), sae.cfg.d_sae,
                                  lambda docs: is_validation(docs, val_fraction, split_seed))
    names = data.label_names
    if label not in names:
        raise SystemExit(f"error: --label {label}: the capture's labels are {', '.join(names)}")
    report = probe_report(features, names, seed=seed)["labels"][label]
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last_val = next((m for m in reversed(metrics) if m.get("split") == "val"), {})
    last = next((m for m in reversed(metrics) if m.get("split") == "train"), {})
    return {"full_mean": report["full_mean"], "full_last": report["full_last"],
            "sparse": {k: v["auroc"] for k, v in report["sparse"].items()},
            "single": single_latent(features, names.index(label), 0.2, seed),
            "val_fvu": last_val.get("fvu"), "dead_fraction": last.get("dead_fraction")}


def row(setting: str, r: dict) -> str:
    sparse = " ".join(f"{r['sparse'][k]:.3f}" for k in ("1", "2", "5", "20"))
    single = r["single"]
    fvu = f"{r['val_fvu']:.3f}" if r["val_fvu"] is not None else "-"
    dead = f"{r['dead_fraction']:.1%}" if r["dead_fraction"] is not None else "-"
    return (f"{setting:>7} {single['best_all']['auroc']:>6.3f} {single['chosen_on_train']['test_auroc']:>6.3f}  "
            f"{sparse}  {r['full_mean']:.3f} {r['sparse']['20'] / r['full_mean']:>5.2f}x  {fvu:>6} {dead:>6}"
            f"  {r['train_s']:>5.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=str(paths.RUNS), help="a pipeline run folder with capture/ and batches/")
    parser.add_argument("--hook", default=paths.DEFAULT_HOOK)
    parser.add_argument("--settings", nargs="+", default=["16:32", "4:32", "16:64"], help="EXPANSION:K each")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="negative")
    parser.add_argument("--workdir", default="", help="where the SAEs go (default <runs>/probe-settings)")
    args = parser.parse_args()
    runs = Path(args.runs)
    workdir = Path(args.workdir) if args.workdir else runs / "probe-settings"
    results = {}
    for setting in args.settings:
        expansion, k = (int(v) for v in setting.split(":"))
        folder = workdir / f"e{expansion}k{k}"
        seconds = train(runs / "batches" / args.hook, folder, expansion, k, args.epochs, args.seed)
        results[setting] = {**measure(runs, args.hook, folder, args.label, args.seed), "train_s": seconds}
        (workdir / "probe-settings.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{args.label!r} at {args.hook}, {args.epochs} epochs; AUROC on held-out documents unless said")
    print(f"{'exp:k':>7} {'best1':>6} {'best1':>6}  {'sparse k=1 2 5 20':<23}  {'full':>5} {'k20/full':>6}  "
          f"{'fvu':>6} {'dead':>6}  {'train s':>5}")
    print(f"{'':>7} {'(all)':>6} {'(test)':>6}")
    for setting, r in results.items():
        print(row(setting, r))
    print("targets: best single latent >= 0.65; k=20 sparse probe >= 0.85x the full probe")


if __name__ == "__main__":
    main()
