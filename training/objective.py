"""The SAE and its loss as one module, the thing DistributedDataParallel wraps.

DDP synchronises gradients only for work done inside its own `forward`: calling a method of the
wrapped module directly (as the reference design does with `model.module.forward_1d_normalized`) runs
without the reducer and leaves every rank with its own gradients. Putting the whole loss, aux-k
decoding included, behind `SAEObjective.forward` makes "call the wrapper" the only way to train. The
objective is also where the trainer's one choice of kernels (sae/sparse.py) is held.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from sae.loss import LossOutput, sae_loss
from sae.model import SparseAutoencoder
from sae.sparse import EAGER, Kernels


class StepOutput(NamedTuple):
    """One training batch through the objective."""

    losses: LossOutput  # loss (to backpropagate), mse, aux_mse, fvu, l0, fired (d_sae,), l1
    nmse: Tensor        # () normalised MSE: sum((x_n - x_hat_n)^2) / sum(x_n^2), 1 = predicting zero


class SAEObjective(nn.Module):
    """`forward(x, dead_mask)` -> StepOutput for a raw batch x (rows, d_in), computed by `kernels`."""

    def __init__(self, sae: SparseAutoencoder, *, aux_gate: bool, kernels: Kernels = EAGER):
        super().__init__()
        self.sae = sae
        self.aux_gate = aux_gate
        self.kernels = kernels

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> StepOutput:
        losses = sae_loss(self.sae, x, dead_mask=dead_mask, aux_gate_requires_k_aux_dead=self.aux_gate,
                          kernels=self.kernels)
        with torch.no_grad():
            power = self.sae.normalize(x)[0].pow(2).mean().clamp_min(torch.finfo(x.dtype).tiny)
            nmse = losses.mse.detach() / power
        return StepOutput(losses, nmse)
