"""The trainer on one process: exact resume, the NaN guard, schedules, data shares, checkpoints, metrics
and the command line. (Data parallelism: tests/test_train_ddp.py.)"""

from __future__ import annotations

import errno
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cli
import startup
import train
from data.batches import ChunkWriter, write_meta, write_remainder
from sae.io import load_sae
from train_helpers import Batches, merge_pairs, planted_batches
from training.checkpoint import list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from training.config import B_PRE_LR_RATIO, PRESETS, TrainConfig, parse_train_config
from training.curves import render_curves
from training.data import RankShare, Rebatched
from training.metrics import decoder_orthogonality, read_metrics, truncate_metrics
from training.state import TrainState, capture_rng, restore_rng

ROOT = Path(__file__).resolve().parent.parent
TRAIN_KEYS = {"step", "split", "grad_norm", "loss", "mse", "nmse", "aux_mse", "fvu", "l0", "dead_fraction", "lr",
              "tokens_per_s", "decoder_cos", "tokens", "epoch"}


def small_config(out: Path, **overrides) -> TrainConfig:
    values = dict(out=str(out), expansion=4, k=3, lr=3e-3, warmup_steps=2, grad_clip=0.5,
                  dead_after_tokens=128, log_every=2, val_every=4, checkpoint_every=4, device="cpu")
    return TrainConfig.of(**{**values, **overrides})


@pytest.fixture(scope="module")
def data():
    return planted_batches(12, 64, seed=5), planted_batches(3, 64, seed=6)


# ---- resume and the NaN guard ------------------------------------------------------------------

def test_interrupted_and_resumed_run_equals_straight_run(tmp_path, data, monkeypatch):
    train_data, val_data = data
    steps, crash_after = 20, 11  # 12 batches per epoch: the run crosses an epoch; checkpoint at 8
    straight = train.main(small_config(tmp_path / "a", max_steps=steps), train_data=train_data, val_data=val_data)

    real_step = train.train_step

    def crashing_step(trainer, state, x, **kwargs):
        if state.step == crash_after:
            raise RuntimeError("simulated crash")
        return real_step(trainer, state, x, **kwargs)

    monkeypatch.setattr(train, "train_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main(small_config(tmp_path / "b", max_steps=steps), train_data=train_data, val_data=val_data)
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")] == [4, 8]
    monkeypatch.setattr(train, "train_step", real_step)
    resumed = train.main(small_config(tmp_path / "b", max_steps=steps, resume=True),
                         train_data=train_data, val_data=val_data)

    want, got = load_sae(straight).state_dict(), load_sae(resumed).state_dict()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    first = load_checkpoint(list_checkpoints(tmp_path / "a" / "checkpoints")[-1][1])
    second = load_checkpoint(list_checkpoints(tmp_path / "b" / "checkpoints")[-1][1])
    assert torch.equal(first["state"]["steps_since_fired"], second["state"]["steps_since_fired"])
    assert first["optimizer"]["state"][0]["step"] == second["optimizer"]["state"][0]["step"] == steps
    # The metrics after the checkpoint were rewritten once, not duplicated, and match the straight run.
    drop = ("tokens_per_s",)
    a = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    b = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert a == b


def test_nan_in_a_batch_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data):
    train_data, val_data = data
    poisoned = Batches([b.clone() for b in train_data], stats=train_data.stats)
    bad_index = RankShare(poisoned, 0, 1, seed=0).index(5)  # read at step 6 (0-based step 5)
    poisoned[bad_index][7, 3] = float("nan")
    with pytest.raises(train.NonFiniteLossError) as err:
        train.main(small_config(tmp_path, max_steps=10, checkpoint_every=2), train_data=poisoned, val_data=val_data)
    message = str(err.value)
    assert "\n" not in message and "nan at step 6" in message and f"batch {bad_index}" in message
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in kept] == [2, 4] and str(kept[-1][1]) in message
    last = load_checkpoint(kept[-1][1])
    assert all(torch.isfinite(t).all() for t in last["sae"].values())
    assert not (tmp_path / "sae").exists()


def test_early_stopping_ends_the_run_after_patience_runs_out(tmp_path, data):
    train_data, val_data = data
    # min_delta so large that no validation after the first counts as an improvement
    cfg = small_config(tmp_path, max_steps=40, val_every=3, patience=2, min_delta=1e9, checkpoint_every=0)
    folder = train.main(cfg, train_data=train_data, val_data=val_data)
    val_steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "val"]
    assert val_steps == [3, 6, 9]  # best at 3, then two without improvement
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [9]
    assert load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1][1])["state"]["step"] == 9
    assert (folder / "sae.safetensors").is_file()


# ---- schedule, data shares, state, checkpoints, metrics -----------------------------------------

def test_lr_schedule_matches_torch_schedulers():
    cfg = TrainConfig(lr=1e-3, warmup_steps=5, min_lr_ratio=0.1, schedule="cosine")
    total = 45
    assert [train.get_lr(s, cfg, total) for s in range(5)] == pytest.approx([1e-3 * (s + 1) / 6 for s in range(5)])
    for schedule, make in (("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=39, eta_min=1e-4)),
                           ("linear", lambda o: torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.1, total_iters=39))):
        cfg.schedule = schedule
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
        sched = make(opt)
        for s in range(5, total):
            assert train.get_lr(s, cfg, total) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
            opt.step()
            sched.step()
    cfg.schedule = "constant"
    assert train.get_lr(30, cfg, total) == 1e-3


@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0])
def test_b_pre_learns_at_its_fraction_of_the_scheduled_rate(ratio, tmp_path):
    cfg = small_config(tmp_path, b_pre_lr_ratio=ratio, warmup_steps=3)
    batches = planted_batches(4, 32)
    trainer = train.build_trainer(cfg, train.sae_config(cfg, batches), batches, torch.device("cpu"), total_steps=6)
    groups = trainer.optimizer.param_groups
    assert len(groups) == (1 if ratio == 1 else 2)
    assert sum(len(g["params"]) for g in groups) == len(list(trainer.sae.parameters()))
    start = {name: p.detach().clone() for name, p in trainer.sae.named_parameters()}
    state = TrainState(trainer.sae.cfg.d_sae)
    dist = startup.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    for step in range(6):
        assert groups[0]["lr"] == pytest.approx(train.get_lr(step, cfg, 6))
        if ratio != 1:
            assert groups[1]["params"] == [trainer.sae.b_pre]
            assert groups[1]["lr"] == pytest.approx(ratio * train.get_lr(step, cfg, 6))
        train.train_step(trainer, state, batches[step % 4], cfg=cfg, dist=dist, batch_index=step)
    moved = {name for name, p in trainer.sae.named_parameters() if not torch.equal(p, start[name])}
    assert moved == ({"W_enc", "b_enc", "W_dec"} if ratio == 0 else {"W_enc", "b_enc", "W_dec", "b_pre"})


def test_rank_shares_partition_each_epoch_and_match_one_process():
    batches = Batches([torch.full((2, 3), float(i)) for i in range(31)])  # 10 groups of 3, one left over
    shares = [RankShare(batches, r, 3, seed=7) for r in range(3)]
    orders = []
    for epoch in range(2):
        seen = [[shares[r].index(epoch * 10 + s) for s in range(10)] for r in range(3)]
        for r in range(3):
            assert sorted(seen[r]) == list(range(r, 30, 3))  # batch i on rank i % 3, each once per epoch
        assert [[i // 3 for i in row] for row in seen] == [[i // 3 for i in seen[0]]] * 3  # same group per step
        orders.append(seen[0])
    assert orders[0] != orders[1]  # a new order each epoch
    single = RankShare(merge_pairs(batches, 3), 0, 1, seed=7)
    for step in range(20):
        assert torch.equal(single.batch(step), torch.cat([shares[r].batch(step) for r in range(3)]))


def test_rebatched_views_split_and_join_stored_batches():
    batches = [torch.randn(8, 4) for _ in range(6)]
    rows = torch.cat(batches)
    for size in (2, 4, 16, 24):
        view = Rebatched(batches, size, 8)
        assert len(view) == len(rows) // size
        assert torch.equal(torch.cat([view[i] for i in range(len(view))]), rows[:len(view) * size])
    with pytest.raises(ValueError, match="--batch-size 12"):
        Rebatched(batches, 12, 8)


def test_dead_counters_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    state, last_fired = TrainState(d_sae=20), np.full(20, -1)
    for step in range(30):
        fired = torch.rand(20, generator=gen) < 0.15
        state.record_fired(fired)
        last_fired[fired.numpy()] = step
        expected = step - last_fired  # steps since the last firing (or since the start)
        assert state.steps_since_fired.tolist() == expected.tolist()
        assert state.dead_mask(5).tolist() == (expected >= 5).tolist()


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    saved = capture_rng()
    torch.save(saved, tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_checkpoints_keep_the_newest_and_skip_damaged_ones(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"x": torch.full((2,), float(step))}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    (tmp_path / "step-00000004.pt.tmp").write_bytes(b"half written")  # never a complete name
    (tmp_path / "step-00000003.pt").write_bytes(b"\x00" * 100)        # damaged after the fact
    path, payload, skipped = load_latest(tmp_path)
    assert path.name == "step-00000002.pt" and payload["x"].tolist() == [2.0, 2.0]
    assert len(skipped) == 1 and "damaged checkpoint" in skipped[0]


def test_metrics_truncation_and_decoder_orthogonality(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "split": "train", "mse": 1.0 / s}) + "\n" for s in range(1, 6))
                    + '{"step": 6, "spl')  # a torn last line from a crash
    truncate_metrics(path, 3)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]

    w = torch.randn(50, 8)
    unit = w.numpy() / np.linalg.norm(w.numpy(), axis=1, keepdims=True)
    cos = np.abs(unit @ unit.T)
    brute = (cos.sum() - np.trace(cos)) / (50 * 49)
    assert decoder_orthogonality(w, torch.arange(50)) == pytest.approx(brute, rel=1e-5)


def test_curves_page_draws_one_line_per_split_and_metric():
    records = [{"step": s, "split": "train", "mse": 1 / s, "l0": 3.0, "lr": float("nan")} for s in range(1, 9)]
    records += [{"step": 4, "split": "val", "mse": 0.3}, {"step": 8, "split": "val", "mse": 0.2}]
    page = render_curves(records, "t")
    assert page.count("<svg") == 2  # mse and l0; lr has no finite value
    assert page.count("<polyline") == 3  # train mse, val mse, train l0
    first_line = page.split('<polyline points="')[1].split('"')[0]
    assert len(first_line.split()) == 8


# ---- configuration and command line -------------------------------------------------------------

def test_every_field_has_a_flag_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_train_config(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flags = [leaf.flag for leaf in cli.leaves(TrainConfig) if leaf.field.metadata.get("cli") is not False]
    assert {"--k", "--d-sae", "--activation", "--normalization", "--lr"} <= set(flags)  # nested SAE fields, flat
    for flag in flags:
        assert flag in text, flag


def test_preset_file_and_flags_layer_in_order(tmp_path):
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"lr": 2e-4, "epochs": 2}))
    cfg = parse_train_config(["--preset", "reference", "--config", str(config_file), "--k", "16"])
    assert cfg.sae.k == 16 and cfg.lr == 2e-4 and cfg.epochs == 2  # flag and file beat the preset
    assert cfg.sae.normalization == "token_standardize"  # a nested field from the preset
    reference = PRESETS["reference"]
    assert cfg.betas == [0.85, 0.9999] and cfg.eps == 6.25e-10 and cfg.batch_size == 1024
    assert cfg.min_lr_ratio == reference["min_lr_ratio"] == 0.2 and cfg.schedule == "cosine"
    assert cfg.b_pre_lr_ratio == 1.0  # the reference trains b_pre at the weights' rate
    assert parse_train_config([]).sae.k == 32 and parse_train_config(["--betas", "0.8", "0.99"]).betas == [0.8, 0.99]


def run_cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda: train.cli_main(argv))
    return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv, expected", [
    (["--k", "0"], "--k 0: must be an integer >= 1"),
    (["--lr", "-1"], "--lr -1.0: must be a finite number >= 0"),
    (["--betas", "0.9"], "--betas [0.9]: takes two numbers"),
    (["--b-pre-lr-ratio", "2"], "--b-pre-lr-ratio 2.0: must be in [0, 1]"),
    (["--resume", "--overwrite"], "give one"),
    (["--data", "/nonexistent/batches"], "/nonexistent/batches/batches.json: not found"),
])
def test_bad_values_give_one_line_errors(argv, expected, capsys, tmp_path):
    code, err = run_cli(argv + ["--out", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("error: ") and expected in err and "\n" not in err


def test_unknown_choice_is_rejected_by_the_parser(capsys):
    with pytest.raises(cli.UsageError, match="--schedule: invalid choice: 'exponential'"):  # one line, by run_main
        parse_train_config(["--schedule", "exponential"])


@pytest.fixture(scope="module")
def batches_folder(tmp_path_factory, data):
    """A prebatched dataset on disk, in the data package's format."""
    folder = tmp_path_factory.mktemp("batches")
    files = {}
    for split, batches in zip(("train", "val"), data):
        writer = ChunkWriter(folder, split, batch_size=64, d_model=16, batches_per_file=5)
        for b in batches:
            writer.write(b.numpy())
        files[split] = writer.close()
    remainders = {s: write_remainder(folder, s, np.zeros((0, 16), np.float32)) for s in ("train", "val")}
    stats = {s: {**data[0].stats} for s in ("train", "val", "all")}
    meta = {"batch_size": 64, "d_model": 16, "hook": "blocks.3.hook_resid_post", "model": "disk-model",
            "prepend_bos": False, "chat": True, "n_train": 12, "n_val": 3, "files": files,
            "remainders": remainders}
    write_meta(folder, meta, stats)
    return folder


def test_script_trains_end_to_end_and_writes_its_run_folder(tmp_path, batches_folder):
    out = tmp_path / "run"
    argv = ["--data", str(batches_folder), "--out", str(out), "--max-steps", "8", "--expansion", "4", "--k", "3",
            "--log-every", "2", "--val-every", "4", "--lr", "0.002", "--device", "cpu"]
    result = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["lr"] == 0.002 and saved["sae"]["k"] == 3 and saved["max_steps"] == 8  # the SAE's fields nested
    records = read_metrics(out / "metrics.jsonl")
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [2, 4, 6, 8] and TRAIN_KEYS <= set(train_records[0])
    assert [r["step"] for r in records if r["split"] == "val"] == [4, 8]
    assert train_records[-1]["tokens"] == 8 * 64 and train_records[-1]["l0"] == pytest.approx(3.0)
    assert "<polyline" in (out / "curves.html").read_text()
    sae = load_sae(out / "sae")
    assert (sae.cfg.hook_name, sae.cfg.model, sae.cfg.chat, sae.cfg.d_sae) == ("blocks.3.hook_resid_post",
                                                                               "disk-model", True, 64)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))  # renormalised after the last step
    scale = math.sqrt(16 / data_mean_sq_norm(batches_folder))
    assert float(sae.normalization.scale) == pytest.approx(scale, rel=1e-6)
    made_from = json.loads((out / "sae" / "complete.json").read_text())  # the SAE's record, written last
    assert made_from["data"] == load_latest(out / "checkpoints")[1]["data"] and made_from["model"] == "disk-model"


def data_mean_sq_norm(folder: Path) -> float:
    return json.loads((folder / "stats.json").read_text())["train"]["mean_sq_norm"]


def test_nan_data_on_disk_exits_2_with_one_line(tmp_path, batches_folder, capsys):
    poisoned = tmp_path / "batches"
    poisoned.mkdir()
    for f in batches_folder.iterdir():
        (poisoned / f.name).write_bytes(f.read_bytes())
    raw = np.memmap(poisoned / "train-00000.bin", dtype="<f4", mode="r+")
    raw[:] = np.nan  # the first five batches
    raw.flush()
    code, err = run_cli(["--data", str(poisoned), "--out", str(tmp_path / "run"), "--expansion", "2",
                         "--max-steps", "12", "--device", "cpu"], capsys)
    last_line = err.splitlines()[-1]  # after the progress bar's line
    assert code == 2 and re.match(r"error: the loss became nan at step \d+: training batch [0-4] contains NaN", last_line)


def test_refuses_to_mix_runs_and_reports_missing_optional_packages(tmp_path, batches_folder, capsys, monkeypatch):
    argv = ["--data", str(batches_folder), "--out", str(tmp_path), "--expansion", "2", "--max-steps", "2",
            "--device", "cpu"]
    assert train.cli_main(argv) == 0
    code, err = run_cli(argv, capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were absent
    code, err = run_cli(argv + ["--overwrite", "--tensorboard"], capsys)
    assert code == 2 and "pip install tensorboard" in err and "\n" not in err


# ---- nothing lost, nothing half-trusted ---------------------------------------------------------

def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pruning_keeps_the_newest_checkpoints_that_load(tmp_path):
    save_checkpoint(tmp_path, 4, {"x": torch.ones(2)}, keep=2)
    (tmp_path / "step-00000099.pt").write_bytes(b"PK\x03\x04 truncated")  # damaged, newer than any good one
    save_checkpoint(tmp_path, 8, {"x": torch.full((2,), 8.0)}, keep=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8, 99]  # the good one kept, the older one pruned
    path, payload, skipped = load_latest(tmp_path)
    assert path.name == "step-00000008.pt" and payload["x"].tolist() == [8.0, 8.0] and len(skipped) == 1


def test_resume_refuses_a_folder_whose_checkpoints_cannot_be_read(tmp_path, data):
    train_data, val_data = data
    train.main(small_config(tmp_path, max_steps=8), train_data=train_data, val_data=val_data)
    for _, path in list_checkpoints(tmp_path / "checkpoints"):
        path.write_bytes(path.read_bytes()[:200])  # truncated, as by a full disk or a bad copy
    before = folder_bytes(tmp_path)
    with pytest.raises(cli.UsageError) as err:
        train.main(small_config(tmp_path, max_steps=8, resume=True), train_data=train_data, val_data=val_data)
    message = str(err.value)
    assert "step-00000004.pt, step-00000008.pt" in message and "--overwrite" in message and "\n" not in message
    assert folder_bytes(tmp_path) == before


@pytest.mark.parametrize("change, expected", [
    ("k", "--k 3 -> 4"),
    ("width", "width d_in 16 -> 8"),
    ("batch size", "batch size 64 -> 32"),
])
def test_a_refused_resume_changes_nothing_in_the_run_folder(tmp_path, data, change, expected):
    train_data, val_data = data
    train.main(small_config(tmp_path, max_steps=4), train_data=train_data, val_data=val_data)
    before = folder_bytes(tmp_path)
    overrides, other = {}, train_data
    if change == "k":
        overrides = {"k": 4}
    elif change == "width":
        other = planted_batches(12, 64, d=8, seed=5)
    else:
        other = planted_batches(24, 32, seed=5)
    with pytest.raises(cli.UsageError) as err:
        train.main(small_config(tmp_path, max_steps=8, resume=True, **overrides), train_data=other,
                   val_data=val_data)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert folder_bytes(tmp_path) == before


def test_a_checkpoint_from_before_the_b_pre_rate_resumes_only_at_the_rate_it_trained_with(tmp_path, data):
    train_data, val_data = data
    train.main(small_config(tmp_path, max_steps=4, b_pre_lr_ratio=1.0), train_data=train_data, val_data=val_data)
    step, path = list_checkpoints(tmp_path / "checkpoints")[-1]
    payload = load_checkpoint(path)
    assert len(payload["optimizer"]["param_groups"]) == 1  # as checkpoints written before the option
    del payload["config"]["b_pre_lr_ratio"]
    save_checkpoint(tmp_path / "checkpoints", step, payload, keep=2)
    with pytest.raises(cli.UsageError) as err:
        train.main(small_config(tmp_path, max_steps=8, resume=True), train_data=train_data, val_data=val_data)
    assert f"--b-pre-lr-ratio 1.0 -> {B_PRE_LR_RATIO}" in str(err.value)
    resumed = train.main(small_config(tmp_path, max_steps=8, resume=True, b_pre_lr_ratio=1.0),
                         train_data=train_data, val_data=val_data)
    assert load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1][1])["state"]["step"] == 8
    assert resumed.exists()


def test_nan_in_validation_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data):
    train_data, val_data = data
    poisoned = Batches([b.clone() for b in val_data], stats=val_data.stats)
    poisoned[1][5, 2] = float("inf")
    with pytest.raises(train.NonFiniteLossError) as err:
        train.main(small_config(tmp_path, max_steps=12, checkpoint_every=2), train_data=train_data,
                   val_data=poisoned)
    message = str(err.value)
    assert "validation at step 4" in message and "1 validation batch(es) contain NaN or Inf" in message
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in kept] == [2] and str(kept[-1][1]) in message and "\n" not in message
    assert not (tmp_path / "sae").exists()


def file_modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}


def umask_mode() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_every_file_of_the_run_gets_the_same_permissions(tmp_path, data):
    train_data, val_data = data
    train.main(small_config(tmp_path, max_steps=4), train_data=train_data, val_data=val_data)
    modes = {name: mode for name, mode in file_modes(tmp_path).items() if not name.startswith("sae/")}
    assert {"config.json", "metrics.jsonl", "curves.html", "checkpoints/step-00000004.pt"} <= set(modes)
    assert set(modes.values()) == {umask_mode()}, modes


def test_the_saved_sae_gets_the_same_permissions(tmp_path, data):
    train_data, val_data = data
    folder = train.main(small_config(tmp_path, max_steps=2), train_data=train_data, val_data=val_data)
    assert set(file_modes(folder).values()) == {umask_mode()}, file_modes(folder)


class FullDisk:
    """A file that accepts `room` bytes, then fails as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_full_disk_while_checkpointing_says_so_in_one_line_and_loses_nothing(tmp_path, batches_folder,
                                                                               capsys, monkeypatch):
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        return real_save(obj, FullDisk(f, 4096) if len(calls) == 2 else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    argv = ["--data", str(batches_folder), "--out", str(out), "--expansion", "2", "--max-steps", "6",
            "--checkpoint-every", "2", "--device", "cpu"]
    code, err = run_cli(argv, capsys)
    line = err.splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert line.startswith("error: the disk is full") and "nothing was lost" in line and "step-00000002.pt" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002.pt"]  # no .tmp left
    monkeypatch.setattr(torch, "save", real_save)
    assert train.cli_main(argv + ["--resume"]) == 0
    assert load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])["state"]["step"] == 6


def test_k_beyond_the_width_names_the_flags(tmp_path, batches_folder, capsys):
    code, err = run_cli(["--k", "32", "--d-sae", "16", "--out", str(tmp_path)], capsys)
    assert code == 2 and err == "error: --k 32: must not exceed d_sae (16); lower k or raise d_sae"
    code, err = run_cli(["--data", str(batches_folder), "--out", str(tmp_path / "run"), "--k", "40",
                         "--expansion", "2"], capsys)
    assert code == 2 and err.endswith("--k 40: must not exceed d_sae (32); lower k or raise d_sae "
                                      "(d_sae = --expansion 2 x d_in 16)")
    assert not (tmp_path / "run").exists()


def test_mixed_precision_reaches_the_float32_fvu_with_float32_master_weights(tmp_path):
    rows = planted_batches(16, 64, seed=5)  # validation from the same planted dictionary as training
    train_data, val_data = Batches(rows[:12], stats=rows.stats), Batches(rows[12:])
    fvu = {}
    for precision in ("none", "bf16", "fp16"):
        cfg = small_config(tmp_path / precision, max_steps=120, log_every=20, val_every=120, checkpoint_every=0,
                           autocast=precision)
        train.main(cfg, train_data=train_data, val_data=val_data)
        records = read_metrics(tmp_path / precision / "metrics.jsonl")
        fvu[precision] = [r for r in records if r["split"] == "val"][-1]["fvu"]
        payload = load_checkpoint(list_checkpoints(tmp_path / precision / "checkpoints")[-1][1])
        adam = payload["optimizer"]["state"][0]
        assert payload["sae"]["W_enc"].dtype == adam["exp_avg"].dtype == adam["exp_avg_sq"].dtype == torch.float32
    assert fvu["none"] < 0.5  # trained well past predicting the mean, so the comparison means something
    for precision in ("bf16", "fp16"):
        assert abs(fvu[precision] - fvu["none"]) <= 0.02 * fvu["none"], fvu
    assert bool(load_checkpoint(list_checkpoints(tmp_path / "fp16" / "checkpoints")[-1][1])["scaler"])
