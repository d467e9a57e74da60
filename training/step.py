"""One optimiser step, in nanoGPT's order: loss, backward, decoder-gradient projection, clip, step,
renormalise. Mixed precision is in `training.precision`, the NaN diagnosis in `training.nonfinite`.

The decoder rows stay unit-norm: the gradient loses its component along each row before the step (after
DDP's all-reduce, so every rank projects the same gradient), and the rows are rescaled after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from startup import DistInfo
from sae.model import SparseAutoencoder
from training import distributed
from training.config import TrainConfig
from training.nonfinite import raise_if_non_finite
from training.objective import SAEObjective
from training.precision import autocast
from training.state import TrainState


@dataclass(frozen=True)
class Trainer:
    """The SAE and what updates it, built once and never reassigned. Their state dicts, with the
    `TrainState`, are what a checkpoint holds."""

    sae: SparseAutoencoder
    objective: SAEObjective                      # unwrapped: checkpoints and evaluation call it
    model: nn.Module                             # what training calls: the DDP wrapper, or the objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler                 # fp16 loss scaling; a pass-through when disabled


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


def train_step(trainer: Trainer, state: TrainState, x: Tensor, *, cfg: TrainConfig, dist: DistInfo,
               batch_index: int) -> dict[str, Tensor]:
    """One optimiser step on this rank's batch x (batch, d_in) -> its figures by name (0-dim tensors:
    reading them would wait for the device); raises NonFiniteLossError on NaN/Inf."""
    global_batch = x.shape[0] * dist.world_size
    with autocast(cfg, dist.device):
        out = trainer.model(x, state.dead_mask(cfg.dead_steps(global_batch)))
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(out.losses.loss).backward()  # under DDP the gradients are averaged over ranks here
    trainer.scaler.unscale_(trainer.optimizer)
    trainer.sae.project_decoder_grads()
    params = [p for p in trainer.sae.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
    raise_if_non_finite(out.losses.loss, norm, x, loss_scaling=trainer.scaler.is_enabled(), step=state.step,
                        device=dist.device, batch_index=batch_index)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    trainer.sae.set_decoder_norm_to_unit_norm()

    state.record_fired(distributed.all_reduce_any(out.losses.fired))
    state.step += 1
    state.tokens += global_batch
    losses = out.losses
    return {"loss": losses.loss, "mse": losses.mse, "nmse": out.nmse, "aux_mse": losses.aux_mse,
            "fvu": losses.fvu, "l0": losses.l0, "grad_norm": norm}
