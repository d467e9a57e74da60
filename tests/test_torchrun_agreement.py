"""torchrun's ranks agree on their settings or all stop in one line naming the flag; a rank whose peer
died stops in one line, not a Gloo traceback; DDP runs print no deprecation warning.

Each rank is started as torchrun starts it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in its
environment), but by the test, so that every rank's stderr is its own and no agent kills the survivors.
This file is also the worker of the dead-peer case (`python tests/test_torchrun_agreement.py OUT`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(argvs: list[list[str]], timeout: int = 180) -> list[tuple[int, str]]:
    """Run one process per argv as the ranks of one group; (exit code, stderr) per rank."""
    port, world = free_port(), len(argvs)
    procs = []
    for rank, argv in enumerate(argvs):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        results.append((proc.returncode, err))
    return results


def one_error_line(code: int, stderr: str) -> str:
    assert code == 2 and "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("flag, rank0, rank1", [("--k", "32", "64"), ("--d-sae", "64", "128"), ("--data", "a", "b")])
def test_train_ranks_given_different_settings_all_stop_naming_the_flag(tmp_path, flag, rank0, rank1):
    base = ["train.py", "--data", str(tmp_path / "batches"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    values = [v if flag != "--data" else str(tmp_path / v) for v in (rank0, rank1)]
    results = launch([base + [flag, value] for value in values])
    want = f"error: torchrun ranks disagree on {flag}: rank 0 has {values[0]}, rank 1 has {values[1]}; give every rank"
    assert [one_error_line(*r).startswith(want) for r in results] == [True, True], results
    assert not (tmp_path / "out").exists()


def test_capture_ranks_given_different_shard_sizes_all_stop_naming_the_flag(tmp_path):
    (tmp_path / "corpus.txt").write_text("Some text to capture.\n")
    base = ["capture.py", "--data", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    results = launch([base + ["--shard-tokens", "64"], base + ["--shard-tokens", "128"]])
    for result in results:
        assert "torchrun ranks disagree on --shard-tokens: rank 0 has 64, rank 1 has 128" in one_error_line(*result)
    assert not (tmp_path / "out").exists()


def test_ranks_with_the_same_settings_pass_the_check(tmp_path):
    """The control: equal command lines go past the comparison (to the data check, which fails alike)."""
    argv = ["train.py", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    for result in launch([argv, argv]):
        line = one_error_line(*result)
        assert "disagree" not in line and "none" in line


def test_a_rank_that_stops_ends_the_others_in_one_line(tmp_path):
    """Rank 1 stops at its third step (a raised error at train_step); rank 0 learns it from its next
    collective and says so in one line. Neither prints torch's DDP FutureWarning."""
    worker = [str(Path(__file__).resolve()), str(tmp_path)]
    (code0, err0), (code1, err1) = launch([worker, worker])
    assert one_error_line(code1, err1) == "error: planted stop at rank 1's third step"
    line = one_error_line(code0, err0)
    assert line.startswith("error: another torchrun rank stopped (its own error is above), so this rank stopped "
                           "too; the checkpoints written so far are intact: rerun with --resume"), err0
    assert "FutureWarning" not in err0 + err1


def worker(out: Path) -> None:
    import cli
    import train
    from train_helpers import planted_batches
    from training.config import TrainConfig

    if os.environ["RANK"] == "1":
        original, calls = train.train_step, []

        def train_step(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise ValueError("planted stop at rank 1's third step")
            return original(*args, **kwargs)

        train.train_step = train_step
    cfg = TrainConfig.of(out=str(out), expansion=4, k=3, max_steps=7, checkpoint_every=0, device="cpu", seed=3)
    cli.run_main(lambda: train.main(cfg, train_data=planted_batches(8, 32, seed=1),
                                    val_data=planted_batches(4, 32, seed=2)))


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
