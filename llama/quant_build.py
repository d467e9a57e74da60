"""A Transformer whose linear weights and embedding table stay quantized, built one tensor at a time.

    model = build_quantized(args, items, "int4")   # bf16 kernels; float32 residual stream on a CPU

`items` yields (Meta key, float tensor or Blocks) in any order; each weight is packed as it arrives and
its float form can be dropped by the caller right after, so loading never holds a float copy of the
whole model. Module paths stay Meta's (`layers.3.attention.wq`), so taps and injections are unchanged.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

from llama.loading.common import return_free_memory
from llama.loading.precision import QUANTIZED
from llama.model import ModelArgs, Transformer
from llama.quant import Blocks, CastLinear, QuantEmbedding, QuantLinear, by_rows, int4_group, quantize_int4, \
    quantize_int8


def activation_dtype(device: torch.device, kernel_dtype: torch.dtype) -> torch.dtype:
    """The residual stream's dtype around bf16 kernels: float32 on a CPU (a bf16 stream costs the default
    model some top-1 agreement with float32, and bf16 elementwise ops are slower there without native bf16
    units), the kernels' own dtype on an accelerator."""
    return torch.float32 if device.type == "cpu" else kernel_dtype


EMBEDDING = "tok_embeddings.weight"
OUTPUT = "output.weight"


class QuantBuilder:
    """Receives a checkpoint tensor by tensor (`add`) and packs each into a model built on the meta device.

    `dtype`: norms, embeddings' output and the residual stream (None: `activation_dtype`); `kernel_dtype`:
    the packed kernels' inputs and scales. The output head is the most sensitive weight: it stays a float
    matrix, float32 for int8 (the accurate kind) and `kernel_dtype` for int4 (the fast one): every packed
    form of it costs the default model top-1 agreement with float32 (README, "Known limits").
    `quantize_head=True` packs it anyway (int8 kernel). `quant` is a resolved --model-dtype (int8 / int4).
    """

    def __init__(self, args: ModelArgs, quant: str, *, dtype: torch.dtype | None = None,
                 kernel_dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu", group: int = 64,
                 quantize_head: bool = False):
        with torch.device("meta"):
            self.model = Transformer(args)
        self.quant, self.device, self.group = quant, torch.device(device), group
        self.dtype = dtype or activation_dtype(self.device, kernel_dtype)
        self.quantize_head, self.kernel_dtype = quantize_head, kernel_dtype
        self.linears = {f"{name}.weight" for name, m in self.model.named_modules() if isinstance(m, nn.Linear)}
        self.pending = set(self.model.state_dict())

    def add(self, name: str, value: torch.Tensor | Blocks) -> None:
        """Pack (linear weights, the embedding table) or place (norm weights) one tensor."""
        if name not in self.pending:
            raise ValueError(f"checkpoint tensor {name} is unexpected or repeated for this model")
        expected = tuple(self.model.get_parameter(name).shape)
        if tuple(value.shape) != expected:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(value.shape)}, the model expects {expected}")
        self.pending.discard(name)
        if name == EMBEDDING:
            self._add_embedding(value)
        elif name in self.linears and (name != OUTPUT or self.quantize_head):
            self._set(name.removesuffix(".weight"), self._linear(value, head=name == OUTPUT))
        else:
            self._set_float(name, value)
        return_free_memory()

    def _linear(self, value: torch.Tensor | Blocks, head: bool = False) -> nn.Module:
        kind = "int8" if head else self.quant  # a packed head: 8 bits in both kinds, as llama.cpp's Q4 mixes
        blocks = value if isinstance(value, Blocks) else self._float_blocks(value, kind)
        return QuantLinear.from_blocks(blocks, kind, dtype=self.kernel_dtype, device=self.device, group=self.group)

    def _set_float(self, name: str, value: torch.Tensor | Blocks) -> None:
        value = value.dequantize() if isinstance(value, Blocks) else value
        dtype = self.dtype
        if name == OUTPUT:  # int8: the file's own values (float32); int4: the kernels' dtype, for speed
            dtype = torch.float32 if self.quant == "int8" else self.kernel_dtype
            self._set("output", CastLinear(self.model.args.dim, self.model.args.vocab_size, bias=False,
                                           device="meta"))
        module_name, _, attr = name.rpartition(".")
        setattr(self.model.get_submodule(module_name), attr,
                nn.Parameter(value.to(device=self.device, dtype=dtype), requires_grad=False))

    def _float_blocks(self, weight: torch.Tensor, kind: str) -> Blocks:
        """A float weight's first quantized form: int8 per channel, or int4 groups (packed as they are)."""
        read = weight.__getitem__
        if kind == "int4" and weight.shape[0] % 16 == 0:
            group = int4_group(weight.shape[1], self.group)
            return by_rows(weight.shape[0], read, lambda rows: quantize_int4(rows, group))
        return by_rows(weight.shape[0], read, quantize_int8)

    def _add_embedding(self, value: torch.Tensor | Blocks) -> None:
        # a float table is kept as int8 per row; a GGUF table in its own blocks (exact)
        blocks = value if isinstance(value, Blocks) else self._float_blocks(value, "int8")
        self.model.tok_embeddings = QuantEmbedding(blocks, dtype=self.dtype, device=self.device)
        if self.model.args.tie_word_embeddings:
            self.pending.discard(OUTPUT)
            if self.quantize_head:
                self._set("output", self._linear(blocks, head=True))
            else:
                self._set_float(OUTPUT, blocks)

    def _set(self, path: str, module: nn.Module) -> None:
        parent, _, attr = path.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, attr, module)

    def finish(self) -> Transformer:
        """The model, in eval mode; a one-line ValueError if a tensor never arrived."""
        if self.pending:
            raise ValueError(f"checkpoint does not match the model: missing {sorted(self.pending)[:3]}")
        return self.model.eval()


def build_quantized(args: ModelArgs, items: Iterable[tuple[str, torch.Tensor | Blocks]] | dict, quant: str, *,
                    dtype: torch.dtype | None = None, kernel_dtype: torch.dtype = torch.bfloat16,
                    device: torch.device | str = "cpu", group: int = 64, quantize_head: bool = False) -> Transformer:
    """A quantized Transformer from (Meta key, float tensor or Blocks) pairs, packed as they arrive.
    A dict is emptied as it is read, so that each float tensor can be freed once packed."""
    builder = QuantBuilder(args, quant, dtype=dtype, kernel_dtype=kernel_dtype, device=device, group=group,
                           quantize_head=quantize_head)
    for name, value in (_popping(items) if isinstance(items, dict) else items):
        builder.add(name, value)
        del value
    return builder.finish()


def _popping(state: dict) -> Iterator[tuple[str, torch.Tensor | Blocks]]:
    for name in list(state):
        yield name, state.pop(name)


def quantize_model(model: Transformer, quant: str, *, kernel_dtype: torch.dtype = torch.bfloat16,
                   group: int = 64, quantize_head: bool = False) -> Transformer:
    """A float model's weights quantized, tensor by tensor (each float weight is released as its packed
    form is made when nothing else holds it). Returns a new model; `model` is emptied of its weights."""
    if quant not in QUANTIZED:
        raise ValueError(f"quantize_model: quant {quant!r}: choose one of {', '.join(QUANTIZED)}")
    device, dtype = model.norm.weight.device, model.norm.weight.dtype
    state = model.state_dict()
    if model.args.tie_word_embeddings:
        state.pop(OUTPUT, None)
    for module in model.modules():  # drop the model's own references, so each tensor is freed after packing
        module._parameters.clear()
    return build_quantized(model.args, state, quant, dtype=dtype, kernel_dtype=kernel_dtype, device=device,
                           group=group, quantize_head=quantize_head)
