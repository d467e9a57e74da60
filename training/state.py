"""`TrainState`: everything the loop changes that is not a model, optimiser or scheduler tensor.

Checkpointed with them, so a resumed run continues exactly where it stopped: the step (which is also
the data position, see `training.data`), the dead-latent counters, early-stopping bookkeeping and the
random number generators of torch, numpy and Python.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class TrainState:
    """The loop's state. `steps_since_fired[j]` counts the steps since latent j last fired on any rank."""

    d_sae: int
    step: int = 0                    # optimiser steps done; step s reads the batches of step s
    tokens: int = 0                  # activations trained on, all ranks together
    best_val: float = math.inf       # lowest validation MSE so far
    evals_without_improvement: int = 0
    steps_since_fired: torch.Tensor = field(default=None)  # (d_sae,) int64

    def __post_init__(self) -> None:
        if self.steps_since_fired is None:
            self.steps_since_fired = torch.zeros(self.d_sae, dtype=torch.int64)

    def to(self, device: torch.device) -> "TrainState":
        self.steps_since_fired = self.steps_since_fired.to(device)
        return self

    def dead_mask(self, threshold_steps: int) -> torch.Tensor:
        """(d_sae,) bool: latents silent for at least `threshold_steps` steps."""
        return self.steps_since_fired >= threshold_steps

    def record_fired(self, fired: torch.Tensor) -> None:
        """Advance the counters by one step; `fired` (d_sae,) bool must already be OR-ed over ranks."""
        self.steps_since_fired = torch.where(fired, 0, self.steps_since_fired + 1)

    def record_validation(self, val_mse: float, min_delta: float) -> bool:
        """Update the early-stopping bookkeeping; True when this validation is a new best."""
        if val_mse < self.best_val - min_delta:
            self.best_val, self.evals_without_improvement = val_mse, 0
            return True
        self.evals_without_improvement += 1
        return False

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens": self.tokens, "best_val": self.best_val,
                "evals_without_improvement": self.evals_without_improvement,
                "steps_since_fired": self.steps_since_fired.cpu(), "rng": capture_rng()}

    def load_state_dict(self, state: dict) -> None:
        if state["steps_since_fired"].shape != (self.d_sae,):
            raise ValueError(f"checkpoint has {state['steps_since_fired'].numel()} dead-latent counters, "
                             f"the SAE has {self.d_sae} latents")
        device = self.steps_since_fired.device
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.best_val = float(state["best_val"])
        self.evals_without_improvement = int(state["evals_without_improvement"])
        self.steps_since_fired = state["steps_since_fired"].to(device=device, dtype=torch.int64)
        restore_rng(state["rng"])


def capture_rng() -> dict:
    """The states of torch (CPU and CUDA), numpy and Python's `random`, as tensors and plain lists
    (so a checkpoint loads with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "state": list(py_state), "gauss": py_gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
