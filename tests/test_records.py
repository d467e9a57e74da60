"""Folders are complete only when a record written last says so: SAE folders (written whole, then swapped
in), the pipeline's stages (redone when their outputs are damaged or what they read has changed, and a
changed setting's advice works when followed), with faults injected at named points."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli
import pipeline
import records
from sae import SAEConfig, SparseAutoencoder
from sae.io import load_sae, save_sae


def make_sae(seed: int) -> SparseAutoencoder:
    torch.manual_seed(seed)
    return SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2, normalization="none"))


def same_weights(a: SparseAutoencoder, b: SparseAutoencoder) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- records ---------------------------------------------------------------------------------------

def test_a_record_names_sizes_and_hashes_and_sees_every_change(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB: sampled below
    monkeypatch.setattr(records, "FULL_HASH_LIMIT", 1 << 20)
    record = records.write_record(tmp_path / "rec.json", tmp_path, ["a.bin", "big.bin"], made="here")
    assert record["files"]["a.bin"] == {"bytes": 1000, "sha256": hashlib.sha256(b"x" * 1000).hexdigest()}
    assert set(record["files"]["big.bin"]) == {"bytes", "sha256_sampled"}
    assert records.read_record(tmp_path / "rec.json") == record and record["made"] == "here"
    assert records.problems(record, tmp_path) == []
    with open(tmp_path / "big.bin", "r+b") as fh:  # a byte of the first MiB, a sampled span
        fh.write(b"\xff")
    (tmp_path / "a.bin").write_bytes(b"y" * 1000)
    assert records.problems(record, tmp_path) == ["a.bin differs from the record (its sha256)",
                                                  "big.bin differs from the record (its sha256)"]
    (tmp_path / "a.bin").write_bytes(b"x" * 999)
    (tmp_path / "big.bin").unlink()
    assert records.problems(record, tmp_path) == ["a.bin has 999 bytes, the record says 1000", "big.bin is missing"]
    moved = tmp_path / "moved"  # identity is of content, not of the place
    moved.mkdir()
    (moved / "a.bin").write_bytes(b"x" * 1000)
    assert records.identity(records.entries(moved, ["a.bin"])) == records.identity({"a.bin": record["files"]["a.bin"]})
    (tmp_path / "rec.json").write_text("{")
    assert records.read_record(tmp_path / "rec.json") is None


# ---- SAE folders -----------------------------------------------------------------------------------

def test_a_save_killed_between_weights_and_config_leaves_the_old_sae(tmp_path, monkeypatch):
    """Fault injected where the config is written, after the new weights: the folder still holds the old
    SAE whole (not new weights under the old config), and no partial folder is left behind."""
    folder = tmp_path / "sae"
    old, new = make_sae(0), make_sae(1)
    save_sae(old, folder)

    def killed(self):
        raise RuntimeError("killed while writing config.json")
    with monkeypatch.context() as m:
        m.setattr(SAEConfig, "to_dict", killed)
        with pytest.raises(RuntimeError, match="killed"):
            save_sae(new, folder)
    assert same_weights(load_sae(folder), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    save_sae(new, folder)
    assert same_weights(load_sae(folder), new)


def test_a_swap_cut_short_between_its_renames_is_recovered(tmp_path):
    """The state a kill between `folder -> folder.old` and `folder.new -> folder` leaves: a reader finds
    the old SAE (renamed back), and the next save replaces it."""
    folder = tmp_path / "sae"
    old, new = make_sae(0), make_sae(1)
    save_sae(old, folder)
    save_sae(new, tmp_path / "sae.new")
    os.replace(folder, tmp_path / "sae.old")
    assert same_weights(load_sae(folder), old)
    save_sae(new, folder)
    assert same_weights(load_sae(folder), new) and sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_saving_never_replaces_a_folder_holding_other_files(tmp_path):
    folder = save_sae(make_sae(0), tmp_path / "sae")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"sae: holds files that are not an SAE's \(notes\.txt\)"):
        save_sae(make_sae(1), folder)
    assert (folder / "notes.txt").read_text() == "mine" and same_weights(load_sae(folder), make_sae(0))


def test_a_damaged_sae_file_is_refused_in_one_line(tmp_path):
    folder = save_sae(make_sae(0), tmp_path / "sae")
    data = bytearray((folder / "sae.safetensors").read_bytes())
    data[-3] ^= 0xFF  # a weight's byte: the file still parses, with other numbers
    (folder / "sae.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        load_sae(folder)
    assert "\n" not in str(err.value) and re.search(r"sae: the SAE folder is damaged \(sae\.safetensors differs",
                                                    str(err.value))


# ---- pipeline stages -------------------------------------------------------------------------------

class FakeScripts:
    """Stands in for the stage scripts behind subprocess.run, keeping their contracts: capture writes its
    folders; train resumes only a run made with the same k and data (exit 2 otherwise, as train.py does)
    and --overwrite starts afresh; interpret writes latent_index_meaning.json, then index.html, naming
    the SAE it read. `kill` names a script killed before its last write."""

    def __init__(self):
        self.ran: list[str] = []
        self.kill = ""
        self.activations = "captured"  # what a capture writes (another model file at the same path: other)

    def __call__(self, argv, **kwargs):
        script, config = argv[1], json.loads(Path(argv[3]).read_text())
        self.ran.append(script)
        ok = getattr(self, script.removesuffix(".py"))(config)
        return subprocess.CompletedProcess(argv, 0 if ok else -9 if self.kill == script else 2, stdout="")

    def capture(self, c) -> bool:
        made = json.dumps({"sample_fraction": c["sample_fraction"], "activations": self.activations})
        for root, name in ((c["out"], "manifest.json"), (c["batches_out"], "batches.json")):
            folder = Path(root) / c["hooks"][0]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(made)
        return True

    def train(self, c) -> bool:  # killed (`kill`): after its checkpoint, before the SAE
        out, data = Path(c["out"]), (Path(c["data"]) / "batches.json").read_text()
        made = {"k": c["sae"]["k"], "data": data}
        checkpoint = out / "checkpoint.json"
        if checkpoint.exists() and c["overwrite"]:
            checkpoint.unlink()
        if checkpoint.exists() and (not c["resume"] or json.loads(checkpoint.read_text()) != made):
            return False
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(json.dumps(made))
        if self.kill == "train.py":
            return False
        (out / "sae").mkdir(exist_ok=True)
        (out / "sae" / "sae.safetensors").write_text(json.dumps(made))
        (out / "sae" / "config.json").write_text(json.dumps({"k": made["k"]}))
        return True

    def interpret(self, c) -> bool:
        out = Path(c["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "latent_index_meaning.json").write_text(json.dumps({"max_latents": c["max_latents"]}))
        if self.kill == "interpret.py":
            return False
        (out / "index.html").write_text((Path(c["sae"]) / "sae.safetensors").read_text())
        return True


@pytest.fixture
def scripts(monkeypatch):
    fake = FakeScripts()
    monkeypatch.setattr(pipeline.subprocess, "run", fake)
    return fake


def run_pipeline(runs: Path, **flags) -> None:
    pipeline.main(pipeline.PipelineConfig(runs=str(runs), device="cpu", **flags))


def test_interpret_killed_while_writing_its_pages_is_redone(tmp_path, scripts, caplog):
    runs = tmp_path / "runs"
    scripts.kill = "interpret.py"
    with pytest.raises(RuntimeError, match="interpret failed"):
        run_pipeline(runs)
    assert (runs / "interpret" / "latent_index_meaning.json").exists()
    scripts.kill, scripts.ran = "", []
    run_pipeline(runs)
    assert scripts.ran == ["interpret.py"]
    assert (runs / "interpret" / "index.html").is_file()
    scripts.ran = []
    run_pipeline(runs)
    assert scripts.ran == []


def test_a_damaged_output_is_redone_with_the_stages_after_it(tmp_path, scripts, caplog):
    runs = tmp_path / "runs"
    run_pipeline(runs)
    (runs / "interpret" / "index.html").unlink()
    scripts.ran = []
    with caplog.at_level("INFO"):
        run_pipeline(runs)
    assert scripts.ran == ["interpret.py"]
    assert "== interpret: redone: its outputs changed since it ran (interpret/index.html is missing)" in caplog.text
    (runs / "train" / "sae" / "sae.safetensors").write_text("damaged")  # train resumes and saves it again
    scripts.ran = []
    run_pipeline(runs)
    assert scripts.ran == ["train.py"]  # the SAE is the same again: interpret stays done


@pytest.mark.parametrize("flags,redone", [
    ({"k": 32}, ["train.py", "interpret.py"]),
    ({"sample_fraction": 0.5}, ["capture.py", "train.py", "interpret.py"]),
    ({"max_latents": 10}, ["interpret.py"]),
    ({"k": 32, "max_latents": 10}, ["train.py", "interpret.py"]),
], ids=["train", "capture", "interpret", "two-stages"])
def test_a_changed_setting_names_what_to_delete_and_that_advice_works(tmp_path, scripts, flags, redone):
    runs = tmp_path / "runs"
    run_pipeline(runs)
    scripts.ran = []
    with pytest.raises(cli.UsageError) as err:
        run_pipeline(runs, **flags)
    assert scripts.ran == [] and "\n" not in str(err.value)
    for folder in re.search(r"delete (.+?)(?: \(| to redo)", str(err.value)).group(1).split(" and "):
        shutil.rmtree(folder)  # exactly what the message says
    run_pipeline(runs, **flags)
    assert scripts.ran == redone
    made = json.loads((runs / "train" / "sae" / "sae.safetensors").read_text())
    assert (runs / "interpret" / "index.html").read_text() == json.dumps(made)  # the pages show the new SAE
    assert made["k"] == flags.get("k", 64)
    scripts.ran = []
    run_pipeline(runs, **flags)
    assert scripts.ran == []


def test_a_recapture_retrains_and_reinterprets(tmp_path, scripts, caplog):
    """Stage records carry the identities of what each stage read: a recapture with other activations
    (with the same settings: another model file at the same path) redoes training from scratch and the
    interpretation."""
    runs = tmp_path / "runs"
    run_pipeline(runs)
    shutil.rmtree(runs / "capture")
    shutil.rmtree(runs / "batches")
    scripts.ran, scripts.activations = [], "other"
    with caplog.at_level("INFO"):
        run_pipeline(runs)
    assert scripts.ran == ["capture.py", "train.py", "interpret.py"]
    assert "== train: redone: capture + prebatch changed since it ran" in caplog.text
    assert json.loads((runs / "stages" / "train.json").read_text())["overwrite"] is True


def test_a_stage_that_wrote_nothing_is_not_recorded_done(tmp_path, scripts, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setattr(scripts, "capture", lambda c: True)
    with pytest.raises(RuntimeError, match=r"capture \+ prebatch finished without writing .*capture/"):
        run_pipeline(runs)
    assert not (runs / "stages" / "capture-and-prebatch.done.json").exists()


def test_a_training_cut_short_then_given_other_data_starts_over(tmp_path, scripts, caplog):
    """Training killed after a checkpoint; then the capture is deleted and made again with other
    activations: the checkpoint is for the old data, so training starts over (--overwrite) instead of
    failing to resume."""
    runs = tmp_path / "runs"
    scripts.kill = "train.py"
    with pytest.raises(RuntimeError, match="train failed"):
        run_pipeline(runs)
    shutil.rmtree(runs / "capture")
    shutil.rmtree(runs / "batches")
    scripts.kill, scripts.ran, scripts.activations = "", [], "other"
    with caplog.at_level("INFO"):
        run_pipeline(runs)
    assert scripts.ran == ["capture.py", "train.py", "interpret.py"]
    assert "== train: redone: what it reads has changed since it was started" in caplog.text
    assert not list((runs / "stages").glob("*.started.json"))
