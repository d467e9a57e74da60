"""Stopping a run whose loss or gradient became NaN or infinite, with the reason in words."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from training import distributed


class NonFiniteLossError(ValueError):
    """The loss, its gradient or a validation figure became NaN or infinite; the run stops without
    saving that step."""


def raise_if_non_finite(loss: Tensor, norm: Tensor, x: Tensor, *, loss_scaling: bool, step: int,
                        device: torch.device, batch_index: int) -> None:
    """Raise NonFiniteLossError when the global gradient norm is NaN/Inf. The norm is global, so every
    rank takes the same decision. Under fp16 loss scaling an overflowing gradient with a finite loss is
    expected: the scaler skips that update and lowers its scale."""
    loss_value = loss.item()
    if not math.isfinite(norm.item()) and not (loss_scaling and math.isfinite(loss_value)):
        raise NonFiniteLossError(non_finite_cause(x, loss_value, norm, step=step, device=device,
                                                  batch_index=batch_index))


def non_finite_cause(x: Tensor, loss: float, norm: Tensor, *, step: int, device: torch.device,
                     batch_index: int) -> str:
    """What became NaN/Inf at this step, and why. Every rank calls it at the same step (the gradient
    norm is global), so the collective below is safe."""
    local_bad = torch.tensor([not bool(torch.isfinite(x).all())], device=device)
    any_bad = bool(distributed.all_reduce_any(local_bad).item())
    if local_bad.item():
        cause = f"training batch {batch_index} contains NaN or Inf values"
    elif any_bad:
        cause = "a training batch on another rank contains NaN or Inf values"
    else:
        cause = "the optimisation diverged; lower --lr"
    what = f"the loss became {loss}" if not math.isfinite(loss) else f"the gradient norm became {norm.item()}"
    return f"{what} at step {step + 1}: {cause}"
