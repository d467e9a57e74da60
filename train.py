"""Train a sparse autoencoder on prebatched activations, on one process or many.

    python train.py                                   # the default demo: runs/batches/<hook> -> runs/train
    python train.py --k 64 --epochs 5 --out runs/k64
    python train.py --preset reference                # the reference design's settings
    python train.py --resume                          # continue the run in runs/train
    torchrun --nproc_per_node 4 train.py ...          # data parallel (NCCL on GPUs, Gloo on CPUs)

`main(cfg)` reads top to bottom: process group, run folder, data, model, optimiser, resume, loop, save.
Each rank reads its own share of the batches (`training.data`); the SAE and its loss sit behind one
DistributedDataParallel wrapper (`training.objective`). After every backward pass (where DDP averages
the gradients) the decoder gradient loses its component along each decoder row, and after every
optimiser step the rows are set back to unit norm.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import cli
from sae.config import SAEConfig
from sae.io import save_sae
from sae.model import SparseAutoencoder
from training import distributed
from training.checkpoint import checkpoint_dir, list_checkpoints, load_latest, save_checkpoint as write_checkpoint
from training.config import TrainConfig, parse_train_config
from training.curves import write_curves
from training.data import RankShare, Rebatched, data_stats, normalized_mean
from training.distributed import DistInfo
from training.metrics import MetricsLogger, decoder_orthogonality, read_metrics, truncate_metrics
from training.objective import SAEObjective, StepOutput
from training.state import TrainState

log = logging.getLogger("train")
ORTHO_ROWS = 2048  # decoder rows sampled for the orthogonality figure (all of them when fewer)
WINDOW_KEYS = ("loss", "mse", "nmse", "aux_mse", "fvu", "l0", "grad_norm")  # averaged between records
RESUME_MUST_MATCH = ("d_sae", "expansion", "k", "activation", "normalization", "batch_size", "seed")


class NonFiniteLossError(ValueError):
    """The loss or its gradient became NaN or infinite; the run stops without saving that step."""


@dataclass
class Run:
    """The objects one training run works with (their states are what a checkpoint holds)."""

    cfg: TrainConfig
    dist: DistInfo
    out: Path
    share: RankShare
    val_data: Sequence[torch.Tensor] | None
    sae: SparseAutoencoder
    objective: SAEObjective                       # unwrapped: checkpoints, evaluation
    model: torch.nn.Module                        # what training calls: the DDP wrapper, or the objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    state: TrainState
    total_steps: int
    global_batch: int                             # activations per step, all ranks
    dead_steps: int                               # silent this many steps = dead
    ortho_rows: torch.Tensor                      # decoder rows sampled for the orthogonality figure
    logger: MetricsLogger | None = None           # rank 0 only
    window: torch.Tensor | None = None            # (len(WINDOW_KEYS),) sums since the last train record
    window_steps: int = 0
    window_seconds: float = 0.0                   # time spent in those steps (validation, checkpoints excluded)


def get_lr(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then cosine/linear/constant
    decay to lr x min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps))
    low = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return cfg.lr - (cfg.lr - low) * progress
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))


def main(cfg: TrainConfig, *, train_data: Sequence[torch.Tensor] | None = None,
         val_data: Sequence[torch.Tensor] | None = None) -> Path:
    """Train an SAE as `cfg` says; returns the folder of the saved SAE. `train_data` / `val_data` (any
    sequences of float32 (batch, d_in) tensors) replace the batches folder `cfg.data` when given."""
    dist = distributed.init_distributed(cfg.device)
    run = None
    try:
        out = cfg.out_dir
        prepare_run_folder(cfg, dist, out)
        torch.manual_seed(cfg.seed)  # the same initial SAE on every rank (DDP also broadcasts rank 0's)

        # Data: this rank's share of the training batches; validation batches, if any.
        train_data, val_data = open_data(cfg, train_data, val_data)
        share = RankShare(train_data, dist.rank, dist.world_size, cfg.seed)
        total_steps = share.total_steps(cfg.epochs, cfg.max_steps)
        global_batch = train_data[0].shape[0] * dist.world_size

        # Model, optimiser, schedule, loop state.
        sae = build_sae(cfg, train_data, dist.device)
        objective = SAEObjective(sae, aux_gate=cfg.aux_gate)
        optimizer = torch.optim.AdamW([p for p in sae.parameters() if p.requires_grad], lr=cfg.lr,
                                      betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: get_lr(s, cfg, total_steps) / cfg.lr)
        state = TrainState(sae.cfg.d_sae).to(dist.device)
        rows = torch.randperm(sae.cfg.d_sae, generator=torch.Generator().manual_seed(cfg.seed))[:ORTHO_ROWS]
        run = Run(cfg=cfg, dist=dist, out=out, share=share, val_data=val_data, sae=sae, objective=objective,
                  model=objective, optimizer=optimizer, scheduler=scheduler, state=state, total_steps=total_steps,
                  global_batch=global_batch, dead_steps=max(1, math.ceil(cfg.dead_after_tokens / global_batch)),
                  ortho_rows=rows.to(dist.device), window=torch.zeros(len(WINDOW_KEYS), device=dist.device))

        # Resume, then wrap for data parallelism (DDP broadcasts rank 0's weights once more).
        if cfg.resume:
            resume(run)
        if dist.distributed:
            run.model = DistributedDataParallel(objective, broadcast_buffers=False,
                                                device_ids=[dist.device] if dist.device.type == "cuda" else None)

        train_loop(run)
        return finish(run)
    finally:
        if run is not None and run.logger is not None:
            run.logger.close()
        distributed.destroy_distributed()


def prepare_run_folder(cfg: TrainConfig, dist: DistInfo, out: Path) -> None:
    """Refuse to mix two runs in one folder; write the resolved config (rank 0)."""
    problem = None
    if dist.is_main:
        previous = list_checkpoints(checkpoint_dir(out)) or (out / "metrics.jsonl").is_file()
        if previous and not cfg.resume and not cfg.overwrite:
            problem = (f"{out} holds an earlier run: pass --resume to continue it, --overwrite to start "
                       f"afresh there, or --out for another folder")
        elif previous and cfg.overwrite and not cfg.resume:
            shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
        if problem is None:
            out.mkdir(parents=True, exist_ok=True)
            cli.save_config(cfg, out / "config.json")
    problem = distributed.broadcast_object(problem)  # every rank stops on rank 0's verdict
    if problem:
        raise cli.UsageError(problem)


def open_data(cfg: TrainConfig, train_data, val_data):
    """The training and validation batch sequences, re-batched to --batch-size when asked."""
    if train_data is None:
        from data.batches import BatchDataset

        train_data = BatchDataset(cfg.data_dir, "train")
        val_data = BatchDataset(cfg.data_dir, "val")
    if len(train_data) == 0:
        raise ValueError(f"{cfg.data_dir}: no training batches; prebatch more activations")
    stored = train_data[0].shape[0]
    if cfg.batch_size and cfg.batch_size != stored:
        train_data = Rebatched(train_data, cfg.batch_size, stored)
        val_data = Rebatched(val_data, cfg.batch_size, stored) if val_data is not None else None
    return train_data, (val_data if val_data is not None and len(val_data) > 0 else None)


def build_sae(cfg: TrainConfig, train_data: Sequence[torch.Tensor], device: torch.device) -> SparseAutoencoder:
    """A fresh SAE whose config carries the dataset's provenance, its normalisation fitted to the data
    statistics and b_pre at the mean of the normalised data."""
    meta = getattr(train_data, "meta", None) or {}
    d_in = train_data[0].shape[-1]
    sae_cfg = SAEConfig(d_in=d_in, d_sae=cfg.d_sae or cfg.expansion * d_in, k=cfg.k, activation=cfg.activation,
                        normalization=cfg.normalization, l1_coeff=cfg.l1_coeff, k_aux=cfg.k_aux or None,
                        aux_coeff=cfg.aux_coeff, hook_name=str(meta.get("hook", "")),
                        model=str(meta.get("model", "")), prepend_bos=bool(meta.get("prepend_bos", False)),
                        chat=bool(meta.get("chat", False)))
    sae = SparseAutoencoder(sae_cfg, device=device)
    stats = data_stats(train_data)
    sae.set_normalization_stats(mean=stats["mean"].float().to(device), mean_sq_norm=stats["mean_sq_norm"])
    sae.init_from_data(normalized_mean(sae, train_data, stats))
    return sae


def resume(run: Run) -> None:
    """Load the newest complete checkpoint (read by rank 0, sent to the others)."""
    found = load_latest(checkpoint_dir(run.out)) if run.dist.is_main else None
    path, payload, skipped = distributed.broadcast_object(found)
    for reason in skipped:
        log.warning("skipping %s", reason)
    if payload is None:
        log.info("no checkpoint in %s: starting from scratch", checkpoint_dir(run.out))
        if run.dist.is_main:
            truncate_metrics(run.out / "metrics.jsonl", 0)
        return
    saved_cfg, world = payload["config"], payload["world_size"]
    changed = [f"--{n.replace('_', '-')} {saved_cfg.get(n)} -> {getattr(run.cfg, n)}"
               for n in RESUME_MUST_MATCH if saved_cfg.get(n) != getattr(run.cfg, n)]
    if changed or world != run.dist.world_size:
        what = ", ".join(changed) or f"{world} processes -> {run.dist.world_size}"
        raise cli.UsageError(f"{path}: cannot resume with a different setup ({what}); "
                             f"use the original settings or another --out")
    run.sae.load_state_dict(payload["sae"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    run.state.load_state_dict(payload["state"])
    if run.dist.is_main:
        truncate_metrics(run.out / "metrics.jsonl", run.state.step)
    log.info("resumed from %s at step %d", path, run.state.step)


def save_checkpoint(run: Run) -> Path | None:
    """Checkpoint the run (rank 0 writes; every rank holds the same state) and refresh the curves."""
    if not run.dist.is_main:
        return None
    payload = {"sae": run.sae.state_dict(), "sae_config": run.sae.cfg.to_dict(),
               "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
               "state": run.state.state_dict(), "config": run.cfg.to_dict(),
               "world_size": run.dist.world_size}
    path = write_checkpoint(checkpoint_dir(run.out), run.state.step, payload, run.cfg.keep_checkpoints)
    write_curves(read_metrics(run.out / "metrics.jsonl"), run.out / "curves.html")
    return path


def train_step(run: Run, x: torch.Tensor) -> tuple[StepOutput, torch.Tensor]:
    """One optimiser step on this rank's batch x (batch, d_in) -> (its losses, the gradient norm before
    clipping); raises NonFiniteLossError on NaN/Inf."""
    out = run.model(x, run.state.dead_mask(run.dead_steps))
    run.optimizer.zero_grad(set_to_none=True)
    out.losses.loss.backward()  # under DDP the gradients are averaged over ranks here
    run.sae.project_decoder_grads()  # after the all-reduce: every rank projects the same gradient
    params = [p for p in run.sae.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, run.cfg.grad_clip or math.inf)
    if not math.isfinite(norm.item()):  # the norm is global: every rank takes the same decision
        raise non_finite_error(run, x, out, norm)
    run.optimizer.step()
    run.scheduler.step()
    run.sae.set_decoder_norm_to_unit_norm()
    run.state.record_fired(distributed.all_reduce_any(out.losses.fired))
    run.state.step += 1
    run.state.tokens += run.global_batch
    return out, norm


def non_finite_error(run: Run, x: torch.Tensor, out: StepOutput, norm: torch.Tensor) -> NonFiniteLossError:
    """The one-line error for a NaN/Inf step, naming the cause and the last good checkpoint. Every rank
    calls it at the same step (the gradient norm is global), so the collective below is safe."""
    step, index = run.state.step + 1, run.share.index(run.state.step)
    local_bad = torch.tensor([not bool(torch.isfinite(x).all())], device=run.dist.device)
    any_bad = bool(distributed.all_reduce_any(local_bad).item())
    if local_bad.item():
        cause = f"training batch {index} contains NaN or Inf values"
    elif any_bad:
        cause = "a training batch on another rank contains NaN or Inf values"
    else:
        cause = "the optimisation diverged; lower --lr"
    loss = out.losses.loss.item()
    what = f"the loss became {loss}" if not math.isfinite(loss) else f"the gradient norm became {norm.item()}"
    kept = list_checkpoints(checkpoint_dir(run.out))
    last = f"the last good checkpoint is {kept[-1][1]}" if kept else "no checkpoint was written yet"
    return NonFiniteLossError(f"{what} at step {step}: {cause}; stopped without saving this step, {last}")


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Validation MSE, normalised MSE, FVU and L0 over up to --val-batches batches, shared over ranks."""
    n = len(run.val_data) if run.cfg.val_batches == 0 else min(run.cfg.val_batches, len(run.val_data))
    sums = torch.zeros(5, dtype=torch.float64, device=run.dist.device)  # mse, nmse, fvu, l0, batches
    for i in range(run.dist.rank, n, run.dist.world_size):
        out = run.objective(run.val_data[i].to(run.dist.device))
        sums += torch.stack([out.losses.mse, out.nmse, out.losses.fvu, out.losses.l0,
                             torch.ones_like(out.nmse)]).double()
    distributed.all_reduce_sum(sums)
    mse, nmse, fvu, l0 = (sums[:4] / sums[4].clamp_min(1)).tolist()
    return {"mse": mse, "nmse": nmse, "fvu": fvu, "l0": l0}


def train_record(run: Run) -> dict:
    """The train metrics of the steps since the last record, averaged over them and over ranks."""
    means = distributed.all_reduce_mean(run.window / run.window_steps).tolist()
    record = dict(zip(WINDOW_KEYS, means))
    record.update(step=run.state.step, split="train", epoch=run.state.step / run.share.steps_per_epoch,
                  tokens=run.state.tokens, lr=get_lr(run.state.step - 1, run.cfg, run.total_steps),
                  dead_fraction=float(run.state.dead_mask(run.dead_steps).float().mean()),
                  tokens_per_s=run.global_batch * run.window_steps / max(run.window_seconds, 1e-9),
                  decoder_cos=decoder_orthogonality(run.sae.W_dec, run.ortho_rows))
    run.window, run.window_steps, run.window_seconds = torch.zeros_like(run.window), 0, 0.0
    return record


def validate(run: Run) -> bool:
    """Evaluate, log, and update early stopping; True when patience has run out."""
    metrics = evaluate(run)
    improved = run.state.record_validation(metrics["mse"], run.cfg.min_delta)
    if run.logger is not None:
        run.logger.log({"step": run.state.step, "split": "val", **metrics})
    log.info("step %d val: mse %.4g fvu %.4g l0 %.1f%s", run.state.step, metrics["mse"], metrics["fvu"],
             metrics["l0"], " (best)" if improved else "")
    return run.cfg.patience > 0 and run.state.evals_without_improvement >= run.cfg.patience


def train_loop(run: Run) -> None:
    """Steps from the state's step to the end (or an early stop)."""
    cfg = run.cfg
    if run.dist.is_main:
        run.logger = MetricsLogger(run.out / "metrics.jsonl", wandb_project=cfg.wandb_project,
                                   tensorboard_dir=run.out / "tensorboard" if cfg.tensorboard else None,
                                   config=cfg.to_dict(), run_name=run.out.name)
    bar = tqdm(total=run.total_steps, initial=run.state.step, disable=not run.dist.is_main,
               desc="train", unit="step", dynamic_ncols=True)
    try:
        with logging_redirect_tqdm():
            while run.state.step < run.total_steps:
                start = time.perf_counter()
                out, grad_norm = train_step(run, run.share.batch(run.state.step).to(run.dist.device,
                                                                                    non_blocking=True))
                losses = out.losses
                run.window += torch.stack([losses.loss, losses.mse, out.nmse, losses.aux_mse, losses.fvu,
                                           losses.l0, grad_norm]).detach()
                run.window_steps += 1
                run.window_seconds += time.perf_counter() - start
                bar.update()
                if end_of_step(run, bar):
                    break
    finally:
        bar.close()  # ends the bar's line before any error message


def end_of_step(run: Run, bar: tqdm) -> bool:
    """Log, validate and checkpoint as scheduled; True when early stopping ends the run."""
    cfg, step = run.cfg, run.state.step
    last = step == run.total_steps
    if step % cfg.log_every == 0 or last:
        record = train_record(run)
        if run.logger is not None:
            run.logger.log(record)
        bar.set_postfix(mse=f"{record['mse']:.4f}", fvu=f"{record['fvu']:.3f}", l0=f"{record['l0']:.1f}",
                        dead=f"{record['dead_fraction']:.3f}")
    stop = run.val_data is not None and cfg.val_every > 0 and (step % cfg.val_every == 0 or last) and validate(run)
    if stop:
        log.info("early stop at step %d: no improvement in %d validations", step, cfg.patience)
    if stop or last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
        save_checkpoint(run)
    return stop


def finish(run: Run) -> Path:
    """Save the SAE and the curves page (rank 0); returns the SAE folder."""
    folder = run.out / "sae"
    if run.dist.is_main:
        save_sae(run.sae, folder)
        page = write_curves(read_metrics(run.out / "metrics.jsonl"), run.out / "curves.html")
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
