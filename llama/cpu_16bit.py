"""16-bit models on CPUs that only emulate 16-bit matrix products: prompts multiplied in float32.

A CPU without native 16-bit matrix units (AVX2; AVX-512 without BF16/FP16) emulates bf16/fp16 products
at a small fraction of its float32 rate, while converting a weight to float32 costs little next to the
product itself. So, on such a CPU, inputs of many rows (prompts, captures) convert the weight, a block
of rows at a time into a reused buffer, and multiply in float32; inputs of few rows (decoding) stay in
16 bits, where reading half the bytes is what counts. README's "Known limits" has the figures.

    cpu_emulates(torch.bfloat16)   # the probe: also what train.py and the benches ask
    upcast_linears(model)          # the loader's swap: every 16-bit nn.Linear on such a CPU -> UpcastLinear
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

# Rows from which converting the weight pays for itself, with a margin; fewer rows keep the 16-bit kernel.
UPCAST_MIN_ROWS = 32
# Weights are converted this many elements (64 MB of float32) at a time into memory reused between calls:
# a fresh float32 copy would cost several times the conversion itself (page faults on new memory).
SCRATCH_ELEMENTS = 1 << 24
_scratch = threading.local()  # one buffer per thread: two threads may run models at once


@functools.cache
def cpu_emulates(dtype: torch.dtype) -> bool:
    """True when this CPU has no native matrix instructions for the 16-bit `dtype`, by oneDNN's own test.

    False for float32 (and any non-16-bit dtype), for a CPU with the instructions, and for a torch build
    without oneDNN's test (torch's own 16-bit kernels are then used, as on a native CPU).
    """
    test = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    try:
        return test is not None and not getattr(torch.ops.mkldnn, test)()
    except (AttributeError, RuntimeError):
        return False


class UpcastLinear(nn.Linear):
    """y = x W^T (no bias) for a 16-bit CPU weight: inputs of UPCAST_MIN_ROWS rows or more are multiplied
    in float32 and rounded back to the input's dtype, as the 16-bit kernel's float32 accumulator would be."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() < UPCAST_MIN_ROWS * x.shape[-1] or self.weight.device.type != "cpu":
            return F.linear(x, self.weight)
        return linear_in_float32(x, self.weight)


def linear_in_float32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x W^T for a 16-bit CPU weight, multiplied in float32 a block of output features at a time, rounded
    to x's dtype."""
    x32 = x.float()
    if torch.is_grad_enabled() and w.requires_grad:  # a gradient must reach w: an ordinary converted copy
        return F.linear(x32, w.float()).to(x.dtype)
    rows = max(1, SCRATCH_ELEMENTS // w.shape[1])
    parts = []
    for start in range(0, w.shape[0], rows):
        block = w[start:start + rows]
        buffer = getattr(_scratch, "buffer", None)
        if buffer is None or buffer.numel() < block.numel():
            with torch.inference_mode(False):  # a normal tensor, writable in and out of inference mode
                buffer = _scratch.buffer = torch.empty(max(block.numel(), min(SCRATCH_ELEMENTS, w.numel())))
        parts.append(F.linear(x32, buffer[:block.numel()].view(block.shape).copy_(block)).to(x.dtype))
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def upcast_linears(model: nn.Module) -> nn.Module:
    """Swap, in place, every plain nn.Linear (no bias) whose weight is 16-bit on a CPU that emulates that
    dtype for an UpcastLinear sharing the same weight (tied weights stay tied). Returns `model`."""
    for name, module in list(model.named_modules()):
        weight = getattr(module, "weight", None)
        if (not name or type(module) is not nn.Linear or module.bias is not None or weight.device.type != "cpu"
                or not cpu_emulates(weight.dtype)):
            continue
        with torch.device("meta"):  # no memory: the weight below replaces the new module's own
            upcast = UpcastLinear(module.in_features, module.out_features, bias=False)
        upcast.weight = weight
        upcast.train(module.training)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, upcast)
    return model
