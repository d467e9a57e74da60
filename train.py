"""Train a sparse autoencoder on prebatched activations, on one process or many.

    python train.py                                   # the default demo: runs/batches/<hook> -> runs/train
    python train.py --k 64 --epochs 5 --out runs/k64
    python train.py --preset reference                # the reference design's settings
    python train.py --resume                          # continue the run in runs/train
    python train.py --autocast bf16                   # bf16 matmuls, float32 weights and Adam states
    torchrun --nproc_per_node 4 train.py ...          # data parallel (NCCL on GPUs, Gloo on CPUs)

`train(cfg, ...)` reads top to bottom: data, every check of the run folder (nothing is written until all
have passed), model, optimiser, resume, run folder, loop, save. One optimiser step is `training.step`
(loss, backward, decoder-gradient projection, clip, step, renormalise). What a checkpoint restores lives
in `TrainState` and the state dicts of the SAE, the optimiser, the schedule and the loss scaler; the rest
are locals. Each rank reads its own share of the batches (`training.data`); the SAE and its loss sit
behind one DistributedDataParallel wrapper (`training.objective`), which computes the SAE through the
sparse kernels where they apply (`sae.sparse.kernels_for`).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import cli
import ranks
import run_folder
import startup
from atomic import disk_full
from data.batches import BatchDataset
from sae.config import SAEConfig
from sae.io import save_sae
from sae.model import SparseAutoencoder
from sae.sparse import kernels_for
from startup import DistInfo
from training import distributed
from training.allocator import keep_freed_memory
from training.checkpoint import checkpoint_dir, list_checkpoints, load_latest, loads
from training.checkpoint import save_checkpoint as write_checkpoint
from training.config import TrainConfig, flatten, parse_train_config
from training.curves import write_curves
from training.data import RankShare, Rebatched, data_identity, data_stats, identity_mismatch, normalized_mean
from training.metrics import MetricsLogger, decoder_orthogonality, read_metrics, require_mirrors, truncate_metrics
from training.nonfinite import NonFiniteLossError
from training.objective import SAEObjective
from training.precision import autocast, grad_scaler, native_autocast
from training.state import TrainState
from training.step import Trainer, get_lr, train_step

log = logging.getLogger("train")
ORTHO_ROWS = 2048  # decoder rows sampled for the orthogonality figure (all of them when fewer)
RESUME_MUST_MATCH = ("d_sae", "expansion", "k", "activation", "normalization", "batch_size", "seed", "b_pre_lr_ratio")
SAVED_BEFORE_THE_OPTION = {"b_pre_lr_ratio": 1.0}  # what a checkpoint that predates a field trained with


class DiskFullError(OSError):
    """The disk filled up while the run wrote a file; what was written before is intact."""


@run_folder.releases_locks
def main(cfg: TrainConfig, *, train_data: Sequence[Tensor] | None = None,
         val_data: Sequence[Tensor] | None = None) -> Path:
    """Train an SAE as `cfg` says; returns the folder of the saved SAE. `train_data` / `val_data` (any
    sequences of float32 (batch, d_in) tensors) replace the batches folder `cfg.data` when given."""
    dist = startup.init_distributed(cfg.device)
    try:
        with ranks.stop_with_peers("the checkpoints written so far are intact: rerun with --resume to go on"):
            ranks.check_same_settings(cfg, dist)
            return train(cfg, dist, train_data, val_data)
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"{err}; stopped without saving this step, {last_good(cfg.out_dir)}") from None
    except Exception as err:
        full = disk_full(err)
        if full is None:
            raise
        raise DiskFullError(errno.ENOSPC, disk_full_message(full, cfg.out_dir)) from None
    finally:
        startup.destroy_distributed()


def train(cfg: TrainConfig, dist: DistInfo, train_data, val_data) -> Path:
    """The run on this rank, top to bottom; see `main`."""
    out = cfg.out_dir
    require_mirrors(wandb_project=cfg.wandb_project if dist.is_main else "", tensorboard=cfg.tensorboard)
    train_data, val_data = open_data(cfg, train_data, val_data)
    identity = data_identity(train_data)
    sae_cfg = sae_config(cfg, train_data)
    checkpoint = read_run_folder(cfg, dist, out, identity)  # every check; nothing is written before it
    share = RankShare(train_data, dist.rank, dist.world_size, cfg.seed)
    total_steps = share.total_steps(cfg.epochs, cfg.max_steps)

    if not native_autocast(cfg, dist.device):
        log.warning("--autocast %s: this CPU has no %s matrix instructions, so torch emulates them at a small "
                    "fraction of float32's speed; --autocast none will be much faster", cfg.autocast, cfg.autocast)
    if dist.device.type == "cpu":
        keep_freed_memory()  # each step's large tensors reuse the last step's pages (training/allocator.py)
    torch.manual_seed(cfg.seed)  # the same initial SAE on every rank (DDP also broadcasts rank 0's)
    trainer = build_trainer(cfg, sae_cfg, train_data, dist.device, total_steps)
    state = TrainState(sae_cfg.d_sae).to(dist.device)
    if checkpoint is not None:
        restore(trainer, state, checkpoint)
    prepare_run_folder(cfg, dist, out, resumed_step=state.step)
    if dist.distributed:  # after the resume: DDP broadcasts rank 0's weights once more
        # forward_sync_buffers=False: the buffers (the fitted normalisation) are equal on every rank; the
        # deprecated broadcast_buffers=False meant the same and made torch warn on every run
        trainer = replace(trainer, model=DistributedDataParallel(
            trainer.objective, forward_sync_buffers=False,
            device_ids=[dist.device] if dist.device.type == "cuda" else None))

    train_loop(trainer, state, cfg=cfg, dist=dist, out=out, share=share, val_data=val_data,
               total_steps=total_steps, identity=identity)
    return finish(trainer.sae, dist, out, identity)


def open_data(cfg: TrainConfig, train_data, val_data):
    """The training and validation batch sequences, re-batched to --batch-size when asked."""
    if train_data is None:
        run_folder.check_apart(cfg.out_dir, "--out", {"--data": cfg.data_dir})
        train_data = BatchDataset(cfg.data_dir, "train")
        val_data = BatchDataset(cfg.data_dir, "val")
    if len(train_data) == 0:
        raise ValueError(f"{cfg.data_dir}: no training batches; prebatch more activations")
    stored = train_data[0].shape[0]
    if cfg.batch_size and cfg.batch_size != stored:
        train_data = Rebatched(train_data, cfg.batch_size, stored)
        val_data = Rebatched(val_data, cfg.batch_size, stored) if val_data is not None else None
    return train_data, (val_data if val_data is not None and len(val_data) > 0 else None)


def sae_config(cfg: TrainConfig, train_data: Sequence[Tensor]) -> SAEConfig:
    """The SAE's config: its shape from the flags and the data's width, its provenance from the data."""
    meta = getattr(train_data, "meta", None) or {}
    d_in = train_data[0].shape[-1]
    return cfg.sae_config(d_in, hook_name=str(meta.get("hook", "")), model=str(meta.get("model", "")),
                          prepend_bos=bool(meta.get("prepend_bos", False)), chat=bool(meta.get("chat", False)))


def read_run_folder(cfg: TrainConfig, dist: DistInfo, out: Path, identity: dict) -> dict | None:
    """Check that the run folder may be used as asked, writing nothing; returns the checkpoint to resume
    from (None: a fresh start). Rank 0 reads the folder; every rank takes its verdict."""
    found = inspect_run_folder(cfg, out) if dist.is_main else None
    problem, path, payload, skipped = distributed.broadcast_object(found)
    if problem:
        raise cli.UsageError(problem)
    for reason in skipped:
        log.warning("skipping %s", reason)
    if payload is None:
        if cfg.resume:
            log.info("no checkpoint in %s: starting from scratch", checkpoint_dir(out))
        return None
    saved_cfg, world, now = flatten(payload["config"]), payload["world_size"], cfg.flat()
    saved = {n: saved_cfg.get(n, SAVED_BEFORE_THE_OPTION.get(n)) for n in RESUME_MUST_MATCH}
    changed = [f"--{n.replace('_', '-')} {saved[n]} -> {now[n]}" for n in RESUME_MUST_MATCH if saved[n] != now[n]]
    if changed or world != dist.world_size:
        what = ", ".join(changed) or f"{world} processes -> {dist.world_size}"
        raise cli.UsageError(f"{path}: cannot resume with a different setup ({what}); "
                             f"use the original settings or another --out")
    other_data = identity_mismatch(payload.get("data", identity), identity)  # older checkpoints: unchecked
    if other_data:
        raise cli.UsageError(f"--data {cfg.data_dir}: {path} was trained on other data ({other_data}); "
                             f"resume with the original --data and --batch-size, or start afresh with "
                             f"--overwrite or another --out")
    log.info("resuming from %s at step %d", path, payload["state"]["step"])
    return payload


def inspect_run_folder(cfg: TrainConfig, out: Path) -> tuple[str | None, Path | None, dict | None, list[str]]:
    """(problem or None, checkpoint path, its payload, why newer ones were skipped), from rank 0's view,
    which first claims the folder for the run (every rank's writer)."""
    try:
        run_folder.claim(out, run_folder.TRAIN_RUN, "--out")
    except run_folder.FolderRefused as err:
        return str(err), None, None, []
    stored = list_checkpoints(checkpoint_dir(out))
    previous = bool(stored) or (out / "metrics.jsonl").is_file()
    if previous and not cfg.resume and not cfg.overwrite:
        return (f"{out} holds an earlier run: pass --resume to continue it, --overwrite to start afresh "
                f"there, or --out for another folder"), None, None, []
    if not cfg.resume:
        return None, None, None, []
    path, payload, skipped = load_latest(checkpoint_dir(out))
    if payload is None and stored:
        names = ", ".join(p.name for _, p in stored)
        return (f"--resume: no checkpoint in {checkpoint_dir(out)} can be read ({names}); pass --overwrite "
                f"instead to start afresh there, deleting them"), None, None, skipped
    return None, path, payload, skipped


def build_trainer(cfg: TrainConfig, sae_cfg: SAEConfig, train_data: Sequence[Tensor], device: torch.device,
                  total_steps: int) -> Trainer:
    """A fresh SAE (normalisation fitted to the data statistics, b_pre at the mean of the normalised
    data), its objective, AdamW, the learning-rate schedule and the loss scaler."""
    sae = SparseAutoencoder(sae_cfg, device=device)
    stats = data_stats(train_data)
    sae.set_normalization_stats(mean=stats["mean"].float().to(device), mean_sq_norm=stats["mean_sq_norm"])
    sae.init_from_data(normalized_mean(sae, train_data, stats))
    kernels = kernels_for(sae, autocast=cfg.autocast != "none")  # the one choice of fast or eager path
    objective = SAEObjective(sae, aux_gate=cfg.aux_gate, kernels=kernels)
    # fused: one kernel per step over all parameters, where the single-tensor loop makes ~10 passes and temporaries
    optimizer = torch.optim.AdamW(parameter_groups(sae, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: get_lr(s, cfg, total_steps) / cfg.lr)
    scaler = grad_scaler(cfg, device)
    return Trainer(sae, objective, objective, optimizer, scheduler, scaler)


def parameter_groups(sae: SparseAutoencoder, cfg: TrainConfig) -> list[dict]:
    """The optimiser's groups: the trained parameters at --lr, b_pre in a group of its own at
    --b-pre-lr-ratio x --lr (one group when the ratio is 1, as checkpoints before the option have)."""
    trained = [(name, p) for name, p in sae.named_parameters() if p.requires_grad]
    if cfg.b_pre_lr_ratio == 1:
        return [{"params": [p for _, p in trained]}]
    return [{"params": [p for name, p in trained if name != "b_pre"]},
            {"params": [sae.b_pre], "lr": cfg.lr * cfg.b_pre_lr_ratio}]


def restore(trainer: Trainer, state: TrainState, payload: dict) -> None:
    """Load a checkpoint's states into a freshly built trainer and loop state."""
    trainer.sae.load_state_dict(payload["sae"])  # the fitted normalisation included: it is state
    trainer.optimizer.load_state_dict(payload["optimizer"])
    trainer.scheduler.load_state_dict(payload["scheduler"])
    if trainer.scaler.is_enabled() and payload.get("scaler"):
        trainer.scaler.load_state_dict(payload["scaler"])
    state.load_state_dict(payload["state"])


def prepare_run_folder(cfg: TrainConfig, dist: DistInfo, out: Path, resumed_step: int) -> None:
    """The first writes of the run (rank 0): --overwrite's deletions, config.json, and on resume the
    metrics after the checkpoint dropped (they were written after it)."""
    if not dist.is_main:
        return
    if cfg.overwrite:
        shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cli.save_config(cfg, out / "config.json")
    if cfg.resume:
        truncate_metrics(out / "metrics.jsonl", resumed_step)


def last_good(out: Path) -> str:
    """'the last good checkpoint is <path>', or that none was written, for messages that stop a run."""
    good = [path for _, path in reversed(list_checkpoints(checkpoint_dir(out))) if loads(path)]
    return f"the last good checkpoint is {good[0]}" if good else "no checkpoint was written yet"


def disk_full_message(err: OSError, out: Path) -> str:
    """One line for ENOSPC: what was being written, that nothing was lost, and how to go on."""
    where = last_good(out)
    then = "rerun with --resume to continue from it" if "no checkpoint" not in where else "rerun"
    return (f"the disk is full (writing {err.filename or out}); nothing was lost: every file is written "
            f"under a temporary name first, and {where}; free some space, then {then}")


def rank_means(sums: dict[str, Tensor], steps: int) -> dict[str, float]:
    """Per-step figures summed over `steps` steps -> their means over the steps and the ranks, by name."""
    names = list(sums)  # the same names in the same order on every rank: one step's figures
    means = distributed.all_reduce_mean(torch.stack([sums[n] for n in names]).float() / steps)
    return dict(zip(names, means.tolist()))


def sum_over_ranks(sums: dict[str, Tensor]) -> dict[str, float]:
    """Sums by name, added over ranks (in one all-reduce)."""
    names = list(sums)
    totals = distributed.all_reduce_sum(torch.stack([sums[n] for n in names]).double())
    return dict(zip(names, totals.tolist()))


@torch.no_grad()
def evaluate(objective: SAEObjective, val_data: Sequence[Tensor], *, cfg: TrainConfig,
             dist: DistInfo) -> dict[str, float]:
    """Validation MSE, normalised MSE, FVU and L0 over up to --val-batches batches, shared over ranks,
    and `bad_batches`: how many held NaN or Inf."""
    n = len(val_data) if cfg.val_batches == 0 else min(cfg.val_batches, len(val_data))
    zero = torch.zeros((), dtype=torch.float64, device=dist.device)
    sums = dict.fromkeys(("mse", "nmse", "fvu", "l0", "bad_batches", "batches"), zero)
    for i in range(dist.rank, n, dist.world_size):
        x = val_data[i].to(dist.device)
        with autocast(cfg, dist.device):
            out = objective(x)
        batch = {"mse": out.losses.mse, "nmse": out.nmse, "fvu": out.losses.fvu, "l0": out.losses.l0,
                 "bad_batches": (~torch.isfinite(x)).any(), "batches": 1}
        sums = {name: sums[name] + batch[name] for name in sums}
    totals = sum_over_ranks(sums)
    batches = max(1.0, totals.pop("batches"))
    return {name: (value if name == "bad_batches" else value / batches) for name, value in totals.items()}


def validate(objective: SAEObjective, state: TrainState, val_data: Sequence[Tensor], *, cfg: TrainConfig,
             dist: DistInfo, logger: MetricsLogger | None) -> bool:
    """Evaluate, log, and update early stopping; True when patience has run out. NaN or Inf in a figure
    stops the run like a NaN in training (NonFiniteLossError)."""
    metrics = evaluate(objective, val_data, cfg=cfg, dist=dist)
    bad = metrics.pop("bad_batches")
    if not all(math.isfinite(v) for v in metrics.values()):
        cause = (f"{bad:.0f} validation batch(es) contain NaN or Inf values" if bad else
                 "the SAE's reconstruction of clean data is not finite")
        raise NonFiniteLossError(f"validation at step {state.step} gave mse {metrics['mse']}: {cause}")
    improved = state.record_validation(metrics["mse"], cfg.min_delta)
    if logger is not None:
        logger.log({"step": state.step, "split": "val", **metrics})
    log.info("step %d val: mse %.4g fvu %.4g l0 %.1f%s", state.step, metrics["mse"], metrics["fvu"],
             metrics["l0"], " (best)" if improved else "")
    return cfg.patience > 0 and state.evals_without_improvement >= cfg.patience


def save_checkpoint(trainer: Trainer, state: TrainState, *, cfg: TrainConfig, dist: DistInfo, out: Path,
                    identity: dict) -> Path | None:
    """Checkpoint the run (rank 0 writes; every rank holds the same state) and refresh the curves."""
    if not dist.is_main:
        return None
    payload = {"sae": trainer.sae.state_dict(), "sae_config": trainer.sae.cfg.to_dict(),
               "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
               "scaler": trainer.scaler.state_dict(), "state": state.state_dict(), "config": cfg.to_dict(),
               "world_size": dist.world_size, "data": identity}
    path = write_checkpoint(checkpoint_dir(out), state.step, payload, cfg.keep_checkpoints)
    write_curves(read_metrics(out / "metrics.jsonl"), out / "curves.html")
    return path


def train_record(trainer: Trainer, state: TrainState, means: dict[str, float], *, cfg: TrainConfig,
                 share: RankShare, total_steps: int, global_batch: int, seconds: float, steps: int) -> dict:
    """The train record of the steps since the last one: their mean figures and where the run stands."""
    rows = torch.randperm(trainer.sae.cfg.d_sae, generator=torch.Generator().manual_seed(cfg.seed))[:ORTHO_ROWS]
    return {"step": state.step, "split": "train", **means, "epoch": state.step / share.steps_per_epoch,
            "tokens": state.tokens, "lr": get_lr(state.step - 1, cfg, total_steps),
            "dead_fraction": float(state.dead_mask(cfg.dead_steps(global_batch)).float().mean()),
            "tokens_per_s": global_batch * steps / max(seconds, 1e-9),
            "decoder_cos": decoder_orthogonality(trainer.sae.W_dec, rows.to(trainer.sae.W_dec.device))}


def train_loop(trainer: Trainer, state: TrainState, *, cfg: TrainConfig, dist: DistInfo, out: Path,
               share: RankShare, val_data: Sequence[Tensor] | None, total_steps: int, identity: dict) -> None:
    """Steps from `state.step` to `total_steps` (or an early stop), logging, validating and checkpointing
    as scheduled."""
    logger = open_logger(cfg, dist, out)
    bar = tqdm(total=total_steps, initial=state.step, disable=not dist.is_main, desc="train", unit="step",
               dynamic_ncols=True)
    sums, steps, seconds = {}, 0, 0.0  # per-step figures since the last train record, by name
    try:
        with logging_redirect_tqdm():
            while state.step < total_steps:
                start, index = time.perf_counter(), share.index(state.step)
                x = share.batches[index].to(dist.device, non_blocking=True)
                figures = train_step(trainer, state, x, cfg=cfg, dist=dist, batch_index=index)
                sums = {name: sums.get(name, 0) + value.detach() for name, value in figures.items()}
                steps, seconds = steps + 1, seconds + time.perf_counter() - start
                bar.update()
                last = state.step == total_steps
                if state.step % cfg.log_every == 0 or last:
                    record = train_record(trainer, state, rank_means(sums, steps), cfg=cfg, share=share,
                                          total_steps=total_steps, global_batch=x.shape[0] * dist.world_size,
                                          seconds=seconds, steps=steps)
                    sums, steps, seconds = {}, 0, 0.0
                    report(record, logger, bar)
                stop = (val_data is not None and cfg.val_every > 0 and (state.step % cfg.val_every == 0 or last)
                        and validate(trainer.objective, state, val_data, cfg=cfg, dist=dist, logger=logger))
                if stop or last or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
                    save_checkpoint(trainer, state, cfg=cfg, dist=dist, out=out, identity=identity)
                if stop:
                    log.info("early stop at step %d: no improvement in %d validations", state.step, cfg.patience)
                    break
    finally:
        bar.close()  # ends the bar's line before any error message
        if logger is not None:
            logger.close()


def open_logger(cfg: TrainConfig, dist: DistInfo, out: Path) -> MetricsLogger | None:
    """The metrics file and its mirrors (rank 0 only)."""
    if not dist.is_main:
        return None
    return MetricsLogger(out / "metrics.jsonl", wandb_project=cfg.wandb_project,
                         tensorboard_dir=out / "tensorboard" if cfg.tensorboard else None,
                         config=cfg.to_dict(), run_name=out.name)


def report(record: dict, logger: MetricsLogger | None, bar: tqdm) -> None:
    """Write a train record and show its main figures on the progress bar."""
    if logger is not None:
        logger.log(record)
    bar.set_postfix(mse=f"{record['mse']:.4f}", fvu=f"{record['fvu']:.3f}", l0=f"{record['l0']:.1f}",
                    dead=f"{record['dead_fraction']:.3f}")


def finish(sae: SparseAutoencoder, dist: DistInfo, out: Path, identity: dict) -> Path:
    """Save the SAE (its record names the data's identity) and the curves page (rank 0); returns the
    SAE folder."""
    folder = out / "sae"
    if dist.is_main:
        save_sae(sae, folder, data=identity)
        page = write_curves(read_metrics(out / "metrics.jsonl"), out / "curves.html")
        log.info("saved the SAE to %s; curves in %s", folder, page)
    distributed.barrier()
    return folder


def cli_main(argv: list[str] | None = None) -> int:
    cfg = parse_train_config(argv, description=__doc__.split("\n\n")[0])
    rank0 = os.environ.get("RANK", "0") == "0"  # torchrun's; only rank 0 reports progress
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(message)s")
    main(cfg)
    return 0


if __name__ == "__main__":
    cli.run_main(cli_main)
