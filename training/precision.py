"""Mixed precision for `train.py --autocast`: the autocast region and the fp16 loss scaler.

Parameters, Adam states and the decoder upkeep stay float32; only the SAE's matmuls run in bf16/fp16.
fp16's narrow range needs loss scaling (GradScaler); bf16 does not, and float32 needs neither.
"""

from __future__ import annotations

import torch

from llama.cpu_16bit import cpu_emulates
from training.config import AUTOCAST, TrainConfig


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """The --autocast region: matmuls in bf16/fp16, parameters and what the optimiser sees in float32."""
    dtype = AUTOCAST[cfg.autocast]
    return torch.autocast(device.type, dtype=getattr(torch, dtype or "bfloat16"), enabled=dtype is not None)


def grad_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler:
    """fp16's loss scaler; a pass-through for bf16 and float32."""
    return torch.amp.GradScaler(device.type, enabled=cfg.autocast == "fp16")


def native_autocast(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether --autocast's dtype is multiplied in hardware: always off the CPU; on a CPU, unless the
    project's one probe (`llama.cpu_16bit.cpu_emulates`) says it is emulated."""
    dtype = AUTOCAST[cfg.autocast]
    return dtype is None or device.type != "cpu" or not cpu_emulates(getattr(torch, dtype))
