"""The whole pipeline end to end on a tiny slice of the default corpus, then rerun: stages are skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--sample-fraction", "0.004", "--expansion", "2", "--k", "16", "--epochs", "1", "--max-latents", "48",
        "--eval-sentences", "8", "--max-new-tokens", "4", "--candidates", "1", "--sweep-steps", "2"]


def _pipeline(runs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "pipeline.py", "--runs", str(runs), *TINY], cwd=ROOT, text=True,
                          capture_output=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_pipeline_end_to_end_and_resume(tmp_path):
    runs = tmp_path / "runs"
    first = _pipeline(runs)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((runs / "pipeline.json").read_text())
    assert 0 < report["evaluation"]["fvu"] < 1.5 and report["evaluation"]["l0"] <= 16
    assert report["latents"] and all(r["auroc"] is not None for r in report["latents"])
    steering = report["steering"]  # the most associated latent swept at 0 and two values
    assert [s["latent"] for s in steering["sweeps"]] == [report["latents"][0]["latent"]]
    assert [r["value"] for r in steering["sweeps"][0]["rows"]][0] == 0 and len(steering["sweeps"][0]["rows"]) == 3
    if steering["chosen"] is not None:  # a tiny SAE may move the judge nowhere within the bounds
        assert steering["command"].startswith("python generate.py") and "unsteered" in steering["output"]
        assert f"steered {steering['chosen']['latent']}:" in steering["output"]
    assert "probes" in report and "labels" in report["probes"]
    for produced in ("train/sae/config.json", "train/sae/sae.safetensors", "interpret/index.html",
                     "interpret/latent_index_meaning.json", "batches/blocks.20.hook_resid_post/batches.json"):
        assert (runs / produced).is_file(), produced

    again = _pipeline(runs)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    for name in ("capture + prebatch", "train", "interpret"):
        assert f"== {name}: already done" in log, name
    second = json.loads((runs / "pipeline.json").read_text())
    assert "capture + prebatch" not in second["seconds"] and "capture + prebatch" in second["earlier_seconds"]
