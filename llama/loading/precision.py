"""Which dtype a model runs in: `--model-dtype` (a name or "auto") resolved for a device.

"auto" is the checkpoint's own 16-bit type on CUDA, and on a CPU float32 (the reference precision)
unless the float32 weights would not fit comfortably in memory, then bfloat16.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZED = ("int8", "int4")


class Precision(NamedTuple):
    """A resolved --model-dtype."""

    dtype: torch.dtype  # the dtype of activations and of the unquantized weights
    quant: str | None   # "int8" / "int4": linear weights kept quantized; None: plain float weights
    note: str           # one line for the log: what was chosen and why (empty when it was asked for)


def resolve(request: str | torch.dtype, device: torch.device | str) -> Precision:
    """--model-dtype -> Precision. A torch.dtype passes through unchanged."""
    if isinstance(request, torch.dtype):
        return Precision(request, None, "")
    if request in FLOAT_DTYPES:
        return Precision(FLOAT_DTYPES[request], None, "")
    if request in QUANTIZED:
        return Precision(torch.bfloat16, request, "")
    if request == "auto":
        return Precision(torch.float32, None, "float32 (auto)")
    raise ValueError(f"--model-dtype {request}: choose one of auto, {', '.join(FLOAT_DTYPES)}, "
                     f"{', '.join(QUANTIZED)}")
