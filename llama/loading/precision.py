"""Which dtype a model runs in: `--model-dtype` (a name or "auto") resolved for a device and a checkpoint.

"auto" is the checkpoint's own 16-bit type on CUDA (bfloat16 when it is stored in float32), and on a
CPU float32, the reference precision, while the float32 weights take at most half the available
memory, else bfloat16. Whatever the request, a model whose weights cannot fit in the memory
available is refused before anything is read, naming the dtype that would fit; so is a dtype the
device cannot multiply matrices in.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZED = ("int8", "int4")  # linear weights kept quantized (llama/quant.py)
# Every --model-dtype, the one list: the scripts' flag takes its choices from it (startup.model_dtype_field)
# and `resolve`, the entry of every load, refuses anything else; past that the resolved value is trusted.
MODEL_DTYPES = ("auto", *FLOAT_DTYPES, *QUANTIZED)
# bytes per weight as loaded; quantized: the codes plus per-group scales (an estimate for the fit check)
_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.1, "int4": 0.6}
AUTO_CPU_SHARE = 0.5  # auto picks float32 on a CPU while its weights take at most this share of memory
FIT_SHARE = 0.95  # weights above this share of the available memory are refused: nothing left to run


class Precision(NamedTuple):
    """A resolved --model-dtype."""

    dtype: torch.dtype  # the dtype of activations and of the unquantized weights
    quant: str | None   # "int8" / "int4": linear weights kept quantized; None: plain float weights
    note: str           # one line for the log: what was chosen and why (empty when it was asked for)
    name: str           # the --model-dtype it stands for, never "auto": float32, ..., int8 or int4


def resolve(request: str | torch.dtype, device: torch.device | str, *, checkpoint_dtype: torch.dtype | None = None,
            weight_count: int | None = None) -> Precision:
    """--model-dtype -> Precision, checked against the device and, given `weight_count`, its memory.

    checkpoint_dtype: the float type the weights are stored in (None: unknown or block-quantized).
    """
    device = torch.device(device)
    if isinstance(request, torch.dtype):
        name = str(request).removeprefix("torch.")
        if name not in FLOAT_DTYPES:
            raise ValueError(f"model dtype {request}: choose one of {', '.join(FLOAT_DTYPES)}")
        request = name
    if request not in MODEL_DTYPES:
        raise ValueError(f"--model-dtype {request}: choose one of {', '.join(MODEL_DTYPES)}")
    name, note = _auto(device, checkpoint_dtype, weight_count) if request == "auto" else (request, "")
    dtype = FLOAT_DTYPES.get(name, torch.bfloat16)  # quantized weights compute in bfloat16
    check_device_can(dtype, device, flag=f"--model-dtype {request}")
    if weight_count is not None:
        check_fits(name, device, weight_count)
    return Precision(dtype, name if name in QUANTIZED else None, note, name)


def _auto(device: torch.device, checkpoint_dtype: torch.dtype | None, weight_count: int | None) -> tuple[str, str]:
    """The dtype "auto" stands for here, and the one-line reason."""
    if device.type != "cpu":
        if checkpoint_dtype in (torch.bfloat16, torch.float16) and _can_run(checkpoint_dtype, device):
            name = str(checkpoint_dtype).removeprefix("torch.")
            return name, f"{name} (auto): the checkpoint's own 16-bit type, on {device.type}"
        name = "bfloat16" if _can_run(torch.bfloat16, device) else "float16"
        return name, f"{name} (auto): a 16-bit type on {device.type} (the checkpoint stores {_name(checkpoint_dtype)})"
    available = available_memory(device)
    if weight_count is None or available is None:
        return "float32", "float32 (auto): the reference precision (memory not checked)"
    need = weight_count * _BYTES["float32"]
    if need <= AUTO_CPU_SHARE * available:
        return "float32", (f"float32 (auto): the float32 weights ({_gb(need)}) fit comfortably in the "
                           f"{_gb(available)} available")
    return "bfloat16", (f"bfloat16 (auto): float32 weights ({_gb(need)}) would take over "
                        f"{AUTO_CPU_SHARE:.0%} of the {_gb(available)} available")


def check_fits(name: str, device: torch.device, weight_count: int) -> None:
    """One-line ValueError when `weight_count` weights in dtype `name` cannot fit on `device`."""
    available = available_memory(device)
    need = weight_count * _BYTES[name]
    if available is None or need <= FIT_SHARE * available:
        return
    smaller = [other for other in ("bfloat16", "int8", "int4")
               if _BYTES[other] < _BYTES[name] and weight_count * _BYTES[other] <= FIT_SHARE * available]
    advice = (f"use --model-dtype {smaller[0]} ({_gb(weight_count * _BYTES[smaller[0]])})" if smaller
              else "no --model-dtype fits: free memory or use a larger machine")
    raise ValueError(f"--model-dtype {name}: the model's {weight_count / 1e9:.2f}B weights need {_gb(need)} in "
                     f"{name} but {_gb(available)} is available on {device.type}; {advice}")


def check_device_can(dtype: torch.dtype, device: torch.device, *, flag: str) -> None:
    """One-line ValueError when `device` cannot multiply matrices in `dtype`."""
    if not _can_run(dtype, device):
        where = "this CPU" if device.type == "cpu" else f"this {device.type} device"
        raise ValueError(f"{flag}: {where} cannot multiply {_name(dtype)} matrices; use --model-dtype "
                         f"{'float32' if device.type == 'cpu' else 'float16 or float32'}")


def _can_run(dtype: torch.dtype, device: torch.device) -> bool:
    if dtype == torch.float32:
        return True
    if device.type == "cuda" and dtype == torch.bfloat16:
        return torch.cuda.is_bf16_supported()
    try:
        a = torch.ones(4, 4, dtype=dtype, device=device)
        return bool(((a @ a)[0, 0] == 4).item())
    except (RuntimeError, TypeError):
        return False


def available_memory(device: torch.device) -> int | None:
    """Bytes free for weights on `device`: MemAvailable on a CPU, free memory on a CUDA GPU; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def _name(dtype: torch.dtype | None) -> str:
    return "block-quantized weights" if dtype is None else str(dtype).removeprefix("torch.")
