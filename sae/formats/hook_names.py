"""Hook names across tools: ours (TransformerLens), sparsify's (Hugging Face module paths), OpenAI's.

Our SAEs, SAELens and Llama Scope name activations as TransformerLens does (`blocks.20.hook_resid_post`).
sparsify hooks the *output* of a Hugging Face module, so a hookpoint is a module path inside the base
model: `layers.20` (the output of decoder layer 20) is `blocks.20.hook_resid_post`. OpenAI's
sparse_autoencoder release names a location plus a layer index (`resid_post_mlp`, layer 20).

    ours (TransformerLens)          sparsify (HF module)            OpenAI location
    hook_embed                      embed_tokens                    -
    blocks.L.hook_resid_pre         layers.{L-1} (embed_tokens, L=0) resid_post_mlp of L-1
    blocks.L.ln1.hook_normalized    layers.L.input_layernorm        -
    blocks.L.hook_attn_out          layers.L.self_attn              resid_delta_attn
    blocks.L.hook_resid_mid         -                               resid_post_attn
    blocks.L.ln2.hook_normalized    layers.L.post_attention_layernorm -
    blocks.L.hook_mlp_out           layers.L.mlp                    resid_delta_mlp
    blocks.L.hook_resid_post        layers.L                        resid_post_mlp
    blocks.L.mlp.hook_post          -                               mlp_post_act
    ln_final.hook_normalized        norm                            -

A name with no counterpart raises a one-line ValueError rather than guessing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

EMBED = "hook_embed"
FINAL_NORM = "ln_final.hook_normalized"
# Every per-block site a TransformerLens name may carry (mlp.hook_post is not tapped by our model,
# but SAEs elsewhere are trained on it, so it is named here and refused when checked against a model).
BLOCK_SITES = ("hook_resid_pre", "ln1.hook_normalized", "hook_attn_out", "hook_resid_mid",
               "ln2.hook_normalized", "hook_mlp_out", "hook_resid_post", "mlp.hook_post")

# site -> HF module below `layers.L` whose output is that activation ("" is the layer itself)
_SPARSIFY_SITES = {
    "hook_resid_post": "",
    "hook_attn_out": ".self_attn",
    "hook_mlp_out": ".mlp",
    "ln1.hook_normalized": ".input_layernorm",
    "ln2.hook_normalized": ".post_attention_layernorm",
}
_OPENAI_SITES = {
    "resid_post_mlp": "hook_resid_post",
    "resid_post_attn": "hook_resid_mid",
    "resid_delta_mlp": "hook_mlp_out",
    "resid_delta_attn": "hook_attn_out",
    "mlp_post_act": "mlp.hook_post",
}

_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"(?:model\.)?layers[._](\d+)((?:\.[a-z_]+)?)")


class HookSite(NamedTuple):
    """A parsed TransformerLens hook name; `layer` is None for hook_embed and ln_final."""

    layer: int | None
    site: str


def parse_hook(name: str) -> HookSite:
    """Split a TransformerLens hook name into (layer, site); one-line ValueError if it is not one."""
    if name in (EMBED, FINAL_NORM):
        return HookSite(None, name)
    match = _BLOCK_NAME.fullmatch(name) if isinstance(name, str) else None
    if match and match.group(2) in BLOCK_SITES:
        return HookSite(int(match.group(1)), match.group(2))
    raise ValueError(f"unknown hook name {name!r}; expected {EMBED}, {FINAL_NORM} or "
                     f"blocks.L.SITE with SITE one of {', '.join(BLOCK_SITES)}")


def to_sparsify(name: str) -> str:
    """Our hook name -> sparsify hookpoint (the HF module whose output it is)."""
    layer, site = parse_hook(name)
    if site == EMBED:
        return "embed_tokens"
    if site == FINAL_NORM:
        return "norm"
    if site == "hook_resid_pre":  # the input of block L is the output of block L-1
        return "embed_tokens" if layer == 0 else f"layers.{layer - 1}"
    if site not in _SPARSIFY_SITES:
        raise ValueError(f"hook {name!r} is not the output of any Hugging Face module, so sparsify "
                         f"cannot name it; export an SAE trained on another hook")
    return f"layers.{layer}{_SPARSIFY_SITES[site]}"


def from_sparsify(hookpoint: str) -> str:
    """sparsify hookpoint (`layers.20`, `model.layers.20.mlp`, `embed_tokens`) -> our hook name."""
    point = hookpoint.strip()
    if point in ("embed_tokens", "model.embed_tokens"):
        return EMBED
    if point in ("norm", "model.norm"):
        return FINAL_NORM
    match = _HF_LAYER.fullmatch(point)
    if match:
        layer, module = int(match.group(1)), match.group(2)
        for site, suffix in _SPARSIFY_SITES.items():
            if module == suffix:
                return f"blocks.{layer}.{site}"
    raise ValueError(f"sparsify hookpoint {hookpoint!r} has no TransformerLens name here; known: "
                     f"embed_tokens, norm, layers.L, layers.L.{{self_attn,mlp,input_layernorm,"
                     f"post_attention_layernorm}}")


def from_openai(location: str, layer: int) -> str:
    """OpenAI sparse_autoencoder location + layer index -> our hook name."""
    if location not in _OPENAI_SITES:
        raise ValueError(f"unknown OpenAI location {location!r}; known: {', '.join(_OPENAI_SITES)}")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"OpenAI layer index must be an integer >= 0, got {layer!r}")
    return f"blocks.{layer}.{_OPENAI_SITES[location]}"


def to_openai(name: str) -> tuple[str, int]:
    """Our hook name -> (OpenAI location, layer index)."""
    layer, site = parse_hook(name)
    if site == "hook_resid_pre" and layer:
        return "resid_post_mlp", layer - 1
    for location, ours in _OPENAI_SITES.items():
        if site == ours:
            return location, layer
    raise ValueError(f"hook {name!r} has no OpenAI location; known locations: {', '.join(_OPENAI_SITES)}")


def openai_hook_from_path(path: str | Path) -> str | None:
    """Our hook name from an OpenAI release path such as `.../resid_post_mlp/v5_32k/autoencoders/20.pt`
    (a location folder somewhere above a file named by its layer index); None if the path says neither."""
    path = Path(path)
    if not path.stem.isdigit():
        return None
    location = next((part for part in reversed(path.parent.parts) if part in _OPENAI_SITES), None)
    return from_openai(location, int(path.stem)) if location else None


def check_hook_for_model(name: str, n_layers: int) -> None:
    """Raise a one-line ValueError unless our model (with `n_layers` blocks) can tap hook `name`."""
    layer, site = parse_hook(name)
    if site == "mlp.hook_post":
        raise ValueError(f"hook {name!r} (the MLP's hidden activation) is not tapped by this project's "
                         f"model; only residual-width hooks are")
    if layer is not None and layer >= n_layers:
        raise ValueError(f"hook {name!r}: layer {layer} does not exist, the model has layers 0..{n_layers - 1}")
