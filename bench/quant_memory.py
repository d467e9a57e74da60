"""Peak memory of building an int8 / int4 model of Llama 3 8B's shape tensor by tensor (no checkpoint
needed: each tensor is made at random in bfloat16 as a loader would hand it over, packed, then dropped).

    python bench/quant_memory.py int8|int4 [--layers 32]

Prints the peak resident set (targets: int8 <= 10 GiB, int4 <= 6 GiB) next to the packed model's own
bytes and the bfloat16 model's, so the gap is what loading costs on top of the result.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama.loading.common import vocabulary_first  # noqa: E402
from llama.loading.precision import QUANTIZED  # noqa: E402
from llama.model import ModelArgs  # noqa: E402
from llama.quant_build import QuantBuilder  # noqa: E402

GIB = 1 << 30


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("quant", choices=QUANTIZED)
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args()
    shape = ModelArgs(n_layers=args.layers, n_kv_heads=8)  # Llama 3 8B
    start = time.perf_counter()
    builder = QuantBuilder(shape, args.quant)
    n_params = 0
    shapes = dict(builder.model.named_parameters())  # meta tensors: shapes only
    for name in vocabulary_first(shapes):  # in the loaders' order
        param = shapes[name]
        tensor = torch.empty(param.shape, dtype=torch.bfloat16).uniform_(-0.05, 0.05)
        n_params += tensor.numel()
        builder.add(name, tensor)
        del tensor
    model = builder.finish()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{args.quant}, Llama 3 8B shape ({args.layers} layers, {n_params / 1e9:.2f} B parameters): "
          f"packed model {model_bytes(model) / GIB:.2f} GiB, bfloat16 would be {2 * n_params / GIB:.2f} GiB; "
          f"peak RSS {peak / GIB:.2f} GiB; built in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
