"""Data-parallel training: two Gloo processes under torchrun end with the same weights as one process
reading the same global batches, and with identical weights on both ranks.

This file is also the torchrun worker (`python -m torch.distributed.run ... tests/test_train_ddp.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_helpers import merge_pairs, planted_batches  # noqa: E402

STEPS, BATCH, N_BATCHES = 7, 32, 8  # 4 steps per epoch on 2 ranks: the run crosses an epoch


def config(out: Path):
    from training.config import TrainConfig

    # Aux-k active (latents dead after 2 steps), clipping on, warm-up then cosine: every part of the
    # step that depends on a global quantity is exercised.
    return TrainConfig.of(out=str(out), expansion=4, k=3, max_steps=STEPS, warmup_steps=2, lr=3e-3,
                       grad_clip=0.05, dead_after_tokens=2 * 2 * BATCH, log_every=2, val_every=3,
                       checkpoint_every=0, device="cpu", seed=3)


def worker(out: Path, mode: str) -> None:
    """Run under torchrun: train, and have every rank dump its final weights and dead counters."""
    import train

    rank = int(os.environ["RANK"])
    original_loop = train.train_loop

    def train_loop(trainer, state, **kwargs):
        original_loop(trainer, state, **kwargs)
        torch.save({"sae": trainer.sae.state_dict(), "dead": state.steps_since_fired.cpu()},
                   out / f"rank{rank}.pt")

    train.train_loop = train_loop
    if mode == "bypass":  # the reference design's bug: train without the DDP wrapper's forward
        train.DistributedDataParallel = lambda module, **_: module
    data = planted_batches(N_BATCHES, BATCH, seed=1)
    if mode == "nan":  # poison the batch rank 1 reads at step 3; rank 0's data stays clean
        from training.data import RankShare

        data[RankShare(data, 1, 2, seed=3).index(2)][0, 0] = float("nan")
    train.main(config(out), train_data=data, val_data=planted_batches(4, BATCH, seed=2))


def launch(out: Path, mode: str, expect_ok: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(out), mode]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert (result.returncode == 0) == expect_ok, result.stderr[-3000:]
    return result.stderr


def single_process(out: Path) -> dict:
    import train

    data = merge_pairs(planted_batches(N_BATCHES, BATCH, seed=1), 2)
    val = merge_pairs(planted_batches(4, BATCH, seed=2), 2)
    captured = {}
    original_loop = train.train_loop

    def train_loop(trainer, state, **kwargs):
        original_loop(trainer, state, **kwargs)
        captured.update(sae=trainer.sae.state_dict(), dead=state.steps_since_fired.cpu())

    train.train_loop = train_loop
    try:
        train.main(config(out), train_data=data, val_data=val)
    finally:
        train.train_loop = original_loop
    return captured


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return single_process(tmp_path_factory.mktemp("single"))


def test_two_gloo_ranks_match_one_process(tmp_path, reference):
    launch(tmp_path, "ddp")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, want in reference["sae"].items():
        torch.testing.assert_close(ranks[0]["sae"][name], ranks[1]["sae"][name], atol=0, rtol=0)
        torch.testing.assert_close(ranks[0]["sae"][name], want, atol=1e-5, rtol=1e-5)
    # Dead-latent counters come from the OR of both ranks' fired masks: equal to the global batch's.
    assert torch.equal(ranks[0]["dead"], ranks[1]["dead"])
    assert torch.equal(ranks[0]["dead"], reference["dead"])
    # Rank 0 saved the SAE, carrying the dataset's provenance.
    from sae.io import load_sae

    saved = load_sae(tmp_path / "sae")
    assert saved.cfg.hook_name == "blocks.1.hook_resid_post" and saved.cfg.prepend_bos
    torch.testing.assert_close(saved.W_dec.detach(), ranks[0]["sae"]["W_dec"], atol=0, rtol=0)


def test_bypassing_the_ddp_wrapper_desynchronises_ranks(tmp_path, reference):
    """Negative control: calling the module without DDP's forward (the reference's bug) trains each
    rank on its own gradients, which the test above would catch."""
    launch(tmp_path, "bypass")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    gap = (ranks[0]["sae"]["W_enc"] - ranks[1]["sae"]["W_enc"]).abs().max()
    assert gap > 1e-3


def test_nan_on_one_rank_stops_every_rank_with_its_cause(tmp_path):
    stderr = launch(tmp_path, "nan", expect_ok=False)
    assert "the loss became nan at step 3: training batch" in stderr  # the rank that read it
    assert "at step 3: a training batch on another rank contains NaN" in stderr  # the other one
    assert not (tmp_path / "sae").exists()


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])
