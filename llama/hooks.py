"""Named hook points: where a forward pass can be read (taps) or edited (injections).

Names follow TransformerLens, which SAELens and Llama Scope use too, so an SAE trained elsewhere on
`blocks.12.hook_resid_post` means the same tensor here. Inside block L the residual stream flows:

    hook_resid_pre ─► attention_norm ─► ln1.hook_normalized ─► attention ─► hook_attn_out
    hook_resid_mid = hook_resid_pre + hook_attn_out
    hook_resid_mid ─► ffn_norm ─► ln2.hook_normalized ─► feed_forward ─► hook_mlp_out
    hook_resid_post = hook_resid_mid + hook_mlp_out        (= blocks.{L+1}.hook_resid_pre)

plus `hook_embed` (token embeddings, before block 0) and `ln_final.hook_normalized` (the final RMSNorm's
output, the input of the output head). A tap records the activation arriving at a hook *before* that
hook's injection; the injection's return value is what flows on.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Mapping, NamedTuple

import torch

BLOCK_SITES = ("hook_resid_pre", "ln1.hook_normalized", "hook_attn_out", "hook_resid_mid",
               "ln2.hook_normalized", "hook_mlp_out", "hook_resid_post")
EMBED = "hook_embed"
FINAL_NORM = "ln_final.hook_normalized"

Injection = Callable[[torch.Tensor], torch.Tensor]

_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(.+)")


class HookPoint(NamedTuple):
    """A parsed hook name. `layer` is -1 for `hook_embed` and n_layers for the final norm."""

    layer: int
    site: str


class ModelOutput(NamedTuple):
    """What `Transformer.forward` returns."""

    logits: torch.Tensor | None
    """(bsz, seqlen, vocab_size) next-token logits; None when return_logits=False."""
    taps: dict[str, torch.Tensor]
    """hook name -> (bsz, seqlen, dim) activation, as it arrived at the hook (before any injection)."""


def hook_names(n_layers: int) -> list[str]:
    """Every valid hook name for a model with `n_layers` blocks, in forward order."""
    names = [EMBED]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{site}" for site in BLOCK_SITES]
    return names + [FINAL_NORM]


def parse_hook_name(name: str, n_layers: int) -> HookPoint:
    """Validate a hook name; a one-line ValueError lists the valid forms otherwise."""
    if name == EMBED:
        return HookPoint(-1, EMBED)
    if name == FINAL_NORM:
        return HookPoint(n_layers, FINAL_NORM)
    match = _BLOCK_NAME.fullmatch(name) if isinstance(name, str) else None
    if match and match.group(2) in BLOCK_SITES:
        layer = int(match.group(1))
        if layer < n_layers:
            return HookPoint(layer, match.group(2))
        raise ValueError(f"hook {name!r}: layer {layer} out of range, the model has layers 0..{n_layers - 1}")
    raise ValueError(f"unknown hook name {name!r}; valid forms: {EMBED}, {FINAL_NORM}, "
                     f"blocks.{{0..{n_layers - 1}}}.{{{','.join(BLOCK_SITES)}}}")


def block_hook_names(layer: int) -> dict[str, str]:
    """site -> full name for block `layer` (built once per block, not once per forward)."""
    return {site: f"blocks.{layer}.{site}" for site in BLOCK_SITES}


@functools.lru_cache(maxsize=256)
def check_hook_names(taps: tuple[str, ...], injected: tuple[str, ...], n_layers: int) -> int:
    """Validate the names of a forward's taps and injections (one-line ValueError otherwise) and return the
    deepest layer a tap needs (-1: the embeddings only, n_layers: the final norm; -1 without taps).
    Cached: decoding calls forward with the same names at every step, and they are parsed once."""
    for name in injected:
        parse_hook_name(name, n_layers)
    return max((parse_hook_name(name, n_layers).layer for name in taps), default=-1)


class Hooks:
    """The taps and injections of one forward call. Calling it at a hook point records and edits."""

    def __init__(self, taps: tuple[str, ...], injections: Mapping[str, Injection] | None, n_layers: int):
        self.injections = dict(injections or {})
        self.deepest_tap = check_hook_names(taps, tuple(self.injections), n_layers)
        self.taps = frozenset(taps)
        self.recorded: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name in self.taps:
            self.recorded[name] = x
        fn = self.injections.get(name)
        if fn is None:
            return x
        out = fn(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"injection at {name} must return a tensor of shape {tuple(x.shape)}, got {got}")
        return out


def no_hooks(name: str, x: torch.Tensor) -> torch.Tensor:
    """The hook function of a plain forward: nothing recorded, nothing changed."""
    return x
