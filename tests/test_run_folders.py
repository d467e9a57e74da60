"""One writer per output folder, and no script deletes or overwrites what the project did not write.

A second writer is played by a helper process that holds the folder's lock (`hold`): it claims the
folder as a script would and waits; every test then checks that the script under test is refused in
one line naming the holder's pid, and that every file already there is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import capture
import cli
import convert
import folder_lock
import interpret
import pipeline
import prebatch as prebatch_script
import run_folder
import train
from data.shuffle import PrebatchConfig, prebatch
from sae.config import SAEConfig
from sae.io import save_sae
from sae.model import SparseAutoencoder
from synthetic_capture import random_corpus, write_captured
from train_helpers import planted_batches
from training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
HOLDER = """
import sys, run_folder
run_folder.claim(sys.argv[1], getattr(run_folder, sys.argv[2]), "--out")
print("held", flush=True)
sys.stdin.read()
"""


class hold:
    """A second process that holds `folder`'s lock (claimed as `kind`) until the block ends."""

    def __init__(self, folder: Path, kind: str):
        self.folder, self.kind = folder, kind

    def __enter__(self) -> subprocess.Popen:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(self.folder), self.kind], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout.readline().strip() == "held"
        return self.proc

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def one_line_error(main, argv: list[str], capsys, monkeypatch) -> str:
    """Run a script's main as its command line would; returns its one `error:` line (exit code 2)."""
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        cli.run_main(main)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert stop.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    tokens, index, records = random_corpus(rng, 60)
    acts = rng.standard_normal((len(tokens), 8)).astype(np.float32)
    return write_captured(tmp_path_factory.mktemp("cap") / "capture", acts, tokens, index, records, shard_rows=100)


CFG = PrebatchConfig(batch_size=16, val_fraction=0.2, file_mb=1)


# ---- the lock ----------------------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_ones_lock_never_blocks(tmp_path):
    folder = tmp_path / "out"
    with hold(folder, "BATCHES") as holder:
        with pytest.raises(run_folder.FolderRefused, match=rf"--out {folder}: another llama-sae process "
                                                           rf"\(pid {holder.pid} on "):
            run_folder.claim(folder, run_folder.BATCHES, "--out")
        holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel drops the lock
        holder.wait()
    assert (folder / ".lock").is_file()  # its lock file stays behind, and does not block
    run_folder.claim(folder, run_folder.BATCHES, "--out")
    run_folder.release_since(0)
    assert not (folder / ".lock").exists()


def test_without_fcntl_a_lock_file_of_a_process_that_is_gone_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_lock, "fcntl", None)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        for pid, refused in ((alive.pid, True), (gone.pid, False)):
            folder = tmp_path / str(pid)
            folder.mkdir()
            (folder / ".lock").write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "command": "x"}))
            if refused:
                with pytest.raises(run_folder.FolderRefused, match=f"pid {pid} "):
                    run_folder.claim(folder, run_folder.BATCHES, "--out")
                continue
            run_folder.claim(folder, run_folder.BATCHES, "--out")
            assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
            run_folder.release_since(0)
            assert not (folder / ".lock").exists()
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_that_lets_go_of_its_copy_leaves_the_parents_lock(tmp_path):
    lock = folder_lock.lock_folder(tmp_path / "out", "--out")
    child = os.fork()
    if child == 0:  # the child: what a process forked mid-run does when its copy of the lock is dropped
        lock.release()
        os._exit(0)
    os.waitpid(child, 0)
    assert json.loads((tmp_path / "out" / ".lock").read_text())["pid"] == os.getpid()
    second = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path / "out"), "BATCHES"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert second.returncode != 0 and f"(pid {os.getpid()} " in second.stderr  # still held by the parent
    lock.release()


def test_a_claim_removes_the_folders_it_made_and_a_refusal_leaves_the_folder_as_it_was(tmp_path):
    run_folder.claim(tmp_path / "new" / "a" / "b", run_folder.BATCHES, "--out")
    assert (tmp_path / "new" / "a" / "b" / ".lock").is_file()
    run_folder.release_since(0)
    assert sorted(os.listdir(tmp_path)) == []
    (tmp_path / "cap").mkdir()
    (tmp_path / "cap" / "manifest.json").write_text(json.dumps({"format": "llama-sae-activations"}))
    with pytest.raises(run_folder.FolderRefused, match="holds a capture"):
        run_folder.claim(tmp_path / "cap", run_folder.BATCHES, "--out")
    assert sorted(os.listdir(tmp_path / "cap")) == ["manifest.json"]


# ---- prebatch ----------------------------------------------------------------------------------

def test_prebatch_into_another_capture_or_a_folder_of_ones_own_files_deletes_nothing(tmp_path, capture_dir):
    other = shutil.copytree(capture_dir, tmp_path / "other-capture")
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, data in {"data.bin": b"\x01" * 64, "stats.json": "{}", "notes.json.tmp": "draft",
                       "train-00000.bin": b"\x02" * 64}.items():
        (mine / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    for out, expected in ((other, "holds a capture"), (mine, r"did not write \(data.bin, notes.json.tmp\)")):
        before = snapshot(out)
        with pytest.raises(run_folder.FolderRefused, match=expected):
            prebatch(capture_dir, out, CFG)
        assert snapshot(out) == before


def test_prebatch_inside_its_capture_is_refused_and_a_rerun_redoes_its_own_folder(tmp_path, capture_dir):
    with pytest.raises(run_folder.FolderRefused, match="lies inside --capture"):
        prebatch(capture_dir, capture_dir / "batches", CFG)
    assert not (capture_dir / "batches").exists()
    out = tmp_path / "batches"
    first = prebatch(capture_dir, out, CFG)
    (out / "w00000-train-00000.bin.tmp").write_bytes(b"\x00" * 8)  # left by a killed run
    again = prebatch(capture_dir, out, CFG)
    assert again == first and not (out / "w00000-train-00000.bin.tmp").exists()
    assert not (out / ".lock").exists()


def test_prebatch_while_another_process_writes_the_folder_is_refused(tmp_path, capture_dir):
    out = tmp_path / "batches"
    with hold(out, "BATCHES") as holder:
        with pytest.raises(run_folder.FolderRefused, match=f"pid {holder.pid} "):
            prebatch(capture_dir, out, CFG)
    assert sorted(os.listdir(out)) == [".lock"]  # the holder's, left by its kill


# ---- train -------------------------------------------------------------------------------------

def small_run(out: Path, **overrides):
    return TrainConfig.of(**{"out": str(out), "expansion": 2, "k": 2, "max_steps": 2, "val_every": 0,
                             "device": "cpu", **overrides})


def train_on(cfg, batches: Path | None = None):
    if batches is not None:
        return train.main(cfg)
    return train.main(cfg, train_data=planted_batches(4, 16, seed=1), val_data=None)


def test_two_trainings_into_one_out_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    with hold(out, "TRAIN_RUN") as holder:
        with pytest.raises(cli.UsageError, match=f"--out {out}: another llama-sae process \\(pid {holder.pid} "):
            train_on(small_run(out))
    assert sorted(os.listdir(out)) == [".lock"]
    train_on(small_run(out))  # the holder is gone: the same command runs
    assert (out / "sae" / "config.json").is_file() and not (out / ".lock").exists()


def test_train_refuses_its_data_folder_and_folders_holding_what_it_did_not_write(tmp_path, capture_dir):
    batches = tmp_path / "batches"
    prebatch(capture_dir, batches, CFG)
    before = snapshot(batches)
    with pytest.raises(run_folder.FolderRefused, match="is --data"):
        train_on(small_run(batches, data=str(batches)), batches)
    with pytest.raises(run_folder.FolderRefused, match="lies inside --data"):
        train_on(small_run(batches / "run", data=str(batches)), batches)
    assert snapshot(batches) == before
    sae_folder = tmp_path / "sae"
    (sae_folder).mkdir()
    (sae_folder / "config.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "activation": "topk"}))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    for out, expected in ((sae_folder, "holds an SAE"), (mine, r"did not write \(notes.txt\)")):
        before = snapshot(out)
        with pytest.raises(cli.UsageError, match=expected):
            train_on(small_run(out))
        assert snapshot(out) == before and not (out / ".lock").exists()


def test_train_overwrite_deletes_only_what_the_run_wrote(tmp_path):
    out = tmp_path / "run"
    train_on(small_run(out))
    (out / "checkpoints" / "keep.txt").write_text("mine\n")
    before = snapshot(out)
    with pytest.raises(cli.UsageError, match=r"did not write \(checkpoints/keep.txt\)"):
        train_on(small_run(out, overwrite=True))
    assert snapshot(out) == before
    (out / "checkpoints" / "keep.txt").unlink()
    train_on(small_run(out, overwrite=True))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002.pt"]


# ---- interpret ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sae(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2, hook_name="blocks.0.hook_resid_post"))
    return save_sae(sae, tmp_path_factory.mktemp("tiny") / "sae")


def interpret_into(out: Path, sae: Path, capture: Path, tmp_path: Path):
    cfg = interpret.InterpretConfig(sae=str(sae), capture_dir=str(capture), out=str(out),
                                    model=str(tmp_path / "no-model.gguf"), device="cpu")
    return interpret.interpret(cfg)


def test_interpret_into_an_sae_a_run_or_its_capture_is_refused_and_changes_nothing(tmp_path, tiny_sae, capture_dir):
    sae = shutil.copytree(tiny_sae, tmp_path / "run" / "sae")
    (tmp_path / "run" / "config.json").write_text(json.dumps(small_run(tmp_path / "run").to_dict()))
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    for out, expected in ((sae, "is --sae"), (tmp_path / "run", "holds --sae"), (capture_dir, "is --capture-dir"),
                          (capture_dir / "interpret", "lies inside --capture-dir")):
        before = snapshot(tmp_path / "run"), snapshot(capture_dir)
        with pytest.raises(run_folder.FolderRefused, match=expected):
            interpret_into(out, sae, capture_dir, tmp_path)
        assert (snapshot(tmp_path / "run"), snapshot(capture_dir)) == before
    other_sae = shutil.copytree(tiny_sae, tmp_path / "other-sae")
    other_run = shutil.copytree(tmp_path / "run", tmp_path / "other-run")
    for out, expected in ((other_sae, "holds an SAE"), (other_run, "holds a training run")):
        before = snapshot(out)
        with pytest.raises(run_folder.FolderRefused, match=expected):
            interpret_into(out, sae, capture_dir, tmp_path)
        assert snapshot(out) == before


def test_two_interpretations_into_one_out_the_second_is_refused(tmp_path, tiny_sae, capture_dir):
    out = tmp_path / "interpret"
    with hold(out, "INTERPRETATION") as holder:
        with pytest.raises(run_folder.FolderRefused, match=f"pid {holder.pid} "):
            interpret_into(out, tiny_sae, capture_dir, tmp_path)
    assert sorted(os.listdir(out)) == [".lock"]


# ---- capture -----------------------------------------------------------------------------------

HOOK = "blocks.20.hook_resid_post"


def capture_config(out: Path, corpus: Path, *extra: str):
    cfg, _ = cli.parse_config(capture.CaptureConfig, "", ["--data", str(corpus), "--out", str(out), "--max-tokens",
                                                          "12", "--shard-tokens", "64", "--max-documents", "4",
                                                          "--device", "cpu", *extra])
    return cfg


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("The soup was cold. The waiter never came back.\n\nI loved the garden. It was quiet.\n")
    return path


def test_two_captures_into_one_folder_the_second_is_refused(tmp_path, text, smol):
    with hold(tmp_path / "out" / HOOK, "CAPTURE") as holder:
        with pytest.raises(cli.UsageError, match=f"--out {tmp_path / 'out' / HOOK}: another llama-sae process "
                                                 f"\\(pid {holder.pid} "):
            capture.capture(capture_config(tmp_path / "out", text), loaded=smol)
    assert sorted(os.listdir(tmp_path / "out" / HOOK)) == [".lock"]
    capture.capture(capture_config(tmp_path / "out", text), loaded=smol)
    assert not (tmp_path / "out" / HOOK / ".lock").exists()


def test_capture_refuses_batches_someones_files_and_its_own_corpus_folder(tmp_path, text, smol, capture_dir):
    batches = tmp_path / "b" / HOOK
    prebatch(capture_dir, batches, CFG)
    (tmp_path / "mine" / HOOK).mkdir(parents=True)
    (tmp_path / "mine" / HOOK / "acts.npy").write_bytes(b"\x00" * 16)
    shutil.copytree(capture_dir, tmp_path / "captures" / HOOK)
    corpus = tmp_path / "corpus"
    shutil.copytree(text.parent, corpus)
    cases = ((capture_config(tmp_path / "b", text), "holds prebatched batches"),
             (capture_config(tmp_path / "mine", text), r"did not write \(acts.npy\)"),
             (capture_config(corpus, corpus), "lies inside --data"),
             (capture_config(tmp_path / "c", text, "--prebatch", "--batches-out", str(tmp_path / "captures")),
              "holds a capture"))
    for cfg, expected in cases:
        before = snapshot(tmp_path)
        with pytest.raises(cli.UsageError, match=expected):
            capture.capture(cfg, loaded=smol)
        assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before
    assert not (tmp_path / "c" / HOOK / "manifest.json").exists()  # refused before capturing anything


# ---- convert and the pipeline ------------------------------------------------------------------

def test_convert_overwrite_replaces_only_an_sae_and_never_its_source(tmp_path, tiny_sae):
    src = shutil.copytree(tiny_sae, tmp_path / "src")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}\n')
    (mine / "notes.txt").write_text("mine\n")
    cases = ((src, src, "is SRC"), (src / "export", src, "lies inside SRC"), (mine, src, "not written by this project"))
    for dst, source, expected in cases:
        before = snapshot(tmp_path)
        with pytest.raises(run_folder.FolderRefused, match=expected):
            convert.main(["--from", "ours", "--to", "ours", "--model", "none", "--overwrite", str(source), str(dst)])
        assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before
    earlier = shutil.copytree(tiny_sae, tmp_path / "earlier")
    convert.main(["--from", "ours", "--to", "ours", "--model", "none", "--overwrite", str(src), str(earlier)])
    assert sorted(os.listdir(earlier)) == ["complete.json", "config.json", "sae.safetensors"]


def test_a_pipeline_run_may_share_another_runs_capture_through_links(tmp_path):
    """bench/demo_seeds.py's layout: each seed's --runs links capture/ and batches/ to the first seed's."""
    first = tmp_path / "seed-0"
    for part in ("capture", "batches"):
        (first / part).mkdir(parents=True)
    runs = tmp_path / "seed-1"
    runs.mkdir()
    for part in ("capture", "batches"):
        (runs / part).symlink_to(first / part)
    assert run_folder.strangers(runs, run_folder.PIPELINE) == []
    (tmp_path / "notes.txt").write_text("mine\n")
    (runs / "notes").symlink_to(tmp_path / "notes.txt")  # a link to a file is still someone's file
    assert run_folder.strangers(runs, run_folder.PIPELINE) == ["notes"]


def test_a_second_pipeline_on_one_runs_folder_is_refused_before_any_stage(tmp_path, text, monkeypatch):
    def no_stage(*args, **kwargs):
        raise AssertionError("a stage started")

    monkeypatch.setattr(pipeline, "stage", no_stage)
    runs = tmp_path / "runs"
    with hold(runs, "PIPELINE") as holder:
        with pytest.raises(run_folder.FolderRefused, match=f"--runs {runs}: another llama-sae process \\(pid {holder.pid} "):
            pipeline.cli_main(["--runs", str(runs), "--data", str(text), "--device", "cpu"])
    assert sorted(os.listdir(runs)) == [".lock"]


# ---- the command line, and torchrun -------------------------------------------------------------

def test_a_busy_folder_is_one_line_and_exit_code_2(tmp_path, capture_dir, capsys, monkeypatch):
    out = tmp_path / "batches"
    with hold(out, "BATCHES") as holder:
        line = one_line_error(prebatch_script.main, ["prebatch.py", "--capture", str(capture_dir), "--out", str(out)],
                              capsys, monkeypatch)
    assert line == (f"error: --out {out}: another llama-sae process (pid {holder.pid} on {socket.gethostname()}: "
                    f"python -c {out} BATCHES) is writing it; wait for it to finish or choose another --out")


def test_torchrun_ranks_write_as_one_and_a_refusal_ends_every_rank_in_one_line(tmp_path, capture_dir):
    batches = tmp_path / "batches"
    prebatch(capture_dir, batches, CFG)
    out = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = tmp_path / "logs"  # each rank's stderr in a file of its own (on one pipe their lines interleave)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "--log-dir", str(logs), "--redirects", "2", "train.py", "--data", str(batches), "--out", str(out), "--device", "cpu", "--expansion", "2",
               "--k", "2", "--max-steps", "2", "--val-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with hold(out, "TRAIN_RUN") as holder:
        refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    ranks = [path.read_text() for path in sorted(logs.rglob("stderr.log"))]
    assert refused.returncode != 0 and len(ranks) == 2, refused.stderr[-3000:]
    for err in ranks:  # each rank ends in one line naming the holder, no traceback
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
        assert f"another llama-sae process (pid {holder.pid} " in errors[0]
    ran = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]  # two ranks, one writer: no rank refuses the other
    assert (out / "sae" / "sae.safetensors").is_file() and not (out / ".lock").exists()


def test_a_folder_written_whole_under_a_temporary_name_is_the_runs_own(tmp_path):
    run = tmp_path / "run"
    for aside in ("sae.tmp", "sae.new", "sae.old"):  # an SAE folder renamed into place as one, interrupted
        (run / aside).mkdir(parents=True)
        (run / aside / "sae.safetensors").write_bytes(b"\x00")
        (run / aside / "complete.json").write_text("{}")
    assert run_folder.strangers(run, run_folder.TRAIN_RUN) == []
    (run / "sae.tmp" / "notes.txt").write_text("mine\n")
    (run / "other.tmp").mkdir()
    assert run_folder.strangers(run, run_folder.TRAIN_RUN) == ["other.tmp/", "sae.tmp/notes.txt"]
