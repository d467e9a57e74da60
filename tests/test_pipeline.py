"""The whole pipeline end to end on a tiny slice of the default corpus, then rerun: stages are skipped,
and the stage times printed say which run each is from."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cli
import pipeline
import records
from pipeline import previous_timings, stage_times_line
from training.config import TrainConfig

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
    assert second["earlier_seconds"]["train"] == report["seconds"]["train"]
    assert f"train skipped (took {report['seconds']['train']:.0f} when it ran)" in log


def test_stage_times_of_reruns_belong_together(tmp_path):
    path = tmp_path / "pipeline.json"
    first = {"seconds": {"capture + prebatch": 285.0, "train": 151.0, "sweep 7": 30.0, "total": 466.0}}
    path.write_text(json.dumps(first))
    last = previous_timings(path)
    assert last == {"capture + prebatch": 285.0, "train": 151.0, "sweep 7": 30.0}
    # a rerun skips capture and train, sweeps again; what it writes keeps the skipped stages' times
    rerun = {"seconds": {"sweep 7": 28.0, "total": 29.0}, "skipped": ["capture + prebatch", "train"],
             "earlier_seconds": {name: last[name] for name in ("capture + prebatch", "train")}}
    path.write_text(json.dumps(rerun))
    assert previous_timings(path) == {"capture + prebatch": 285.0, "train": 151.0, "sweep 7": 28.0}
    line = stage_times_line(rerun["seconds"], rerun["skipped"], rerun["earlier_seconds"])
    assert line == ("stage times (s): capture + prebatch skipped (took 285 when it ran), train skipped (took "
                    "151 when it ran), sweep 7 28; total this run 29 (skipped stages not included)")
    assert stage_times_line({"train": 3.0, "total": 4.0}, [], {}) == "stage times (s): train 3; total this run 4"
    assert "interpret skipped;" in stage_times_line({"total": 1.0}, ["interpret"], {})  # no time known
    (tmp_path / "bad.json").write_text("{")
    assert previous_timings(tmp_path / "bad.json") == {} and previous_timings(tmp_path / "none.json") == {}


def test_a_finished_stage_is_reused_only_with_its_own_settings(tmp_path):
    """The stage's record holds its settings: the same settings reuse the result; a changed one (here the
    SAE's k, nested in TrainConfig) stops the run in one line naming it and the folder to delete; a stage
    cut short before its record is compared with the config it was started with."""
    made = TrainConfig.of(data="d", out=str(tmp_path / "train"), expansion=8, k=64)
    step = pipeline.Stage("train", "train.py", made, tmp_path / "stages", folders=(tmp_path / "train",),
                          outputs=(tmp_path / "train" / "sae",))
    (tmp_path / "train" / "sae").mkdir(parents=True)
    step.stages.mkdir()
    records.write_record(step.record_path, tmp_path, [], settings=pipeline.settings_of(made))
    pipeline.check_unchanged([step], tmp_path)
    again = dataclasses.replace(step, config=TrainConfig.of(data="d", out=str(tmp_path / "train"), expansion=8,
                                                            k=64, resume=True))  # chosen by the pipeline
    pipeline.check_unchanged([again], tmp_path)
    other = dataclasses.replace(step, config=TrainConfig.of(data="d", out=str(tmp_path / "train"), expansion=8, k=32))
    with pytest.raises(cli.UsageError, match=rf"train was made with other settings \(sae\.k 64 -> 32\): to redo "
                                             rf"with the new settings delete {tmp_path / 'train'} \("):
        pipeline.check_unchanged([other], tmp_path)
    step.record_path.unlink()
    cli.save_config(made, step.config_path)  # started, not finished
    with pytest.raises(cli.UsageError, match=r"sae\.k 64 -> 32"):
        pipeline.check_unchanged([other], tmp_path)
    step.config_path.unlink()
    pipeline.check_unchanged([other], tmp_path)  # nothing to compare with
