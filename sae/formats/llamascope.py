"""Llama Scope SAEs (OpenMOSS Language-Model-SAEs), read only: a folder holding `hyperparams.json` and
`checkpoints/final.safetensors`.

hyperparams.json: d_model, d_sae, hook_point_in, hook_point_out, act_fn ("jumprelu" | "topk" | "relu"),
top_k, jump_relu_threshold, norm_activation ("dataset-wise" | "inference"), dataset_average_activation_norm
{"in", "out"}, use_decoder_bias, apply_decoder_bias_to_pre_encoder, sparsity_include_decoder_norm.
Tensors, nn.Linear layout: encoder.weight (d_sae, d), encoder.bias (d_sae,), decoder.weight (d, d_sae),
decoder.bias (d,). The forward of Language-Model-SAEs, with s_in = sqrt(d) / avg_norm_in (s_out likewise):

    x_n   = x * s_in                       (minus decoder.bias if apply_decoder_bias_to_pre_encoder)
    pre   = x_n @ encoder.weight.T + encoder.bias
    score = pre * ||decoder.weight[:, i]||  if sparsity_include_decoder_norm, else pre
    mask  = jumprelu: score > jump_relu_threshold * s_in | topk: TopK_k(ReLU(score)) | relu: score > 0
    x_hat = ((pre * mask) @ decoder.weight.T + decoder.bias) / s_out

The released threshold is stated for unscaled inputs, hence the factor s_in (SAELens reads it so too).
In our terms: dataset_scale with norm_scale = s_in; W_dec and b_pre carry the factor s_in / s_out (1 for an
SAE, whose input and output are the same hook); a JumpReLU threshold per latent of
jump_relu_threshold * s_in / ||decoder column||; TopK ranked by decoder norm is our topk_decnorm.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from sae.config import SAEConfig
from sae.formats import (Converted, Source, bias_through, check_finite_scalar, make_state, read_json,
                         read_tensors, row_norms)

CONFIG_NAME = "hyperparams.json"
WEIGHTS_PATH = "checkpoints/final.safetensors"
_ACTIVATIONS = ("jumprelu", "topk", "relu")


def _scales(src: Source, hook_in: str, hook_out: str, d: int) -> tuple[float, float]:
    """(s_in, s_out): the dataset-wise input and output scale factors (1, 1 for "inference")."""
    mode = src.field("norm_activation", str, "dataset-wise")
    if mode == "inference":  # the scales are already folded into the weights
        return 1.0, 1.0
    if mode != "dataset-wise":
        raise ValueError(f"{src.config_path}: norm_activation {mode!r} is per token or per batch and has "
                         f"no counterpart here (supported: dataset-wise, inference)")
    norms = src.field("dataset_average_activation_norm", dict, {})
    tensor_norms = {name.split(".", 1)[1]: float(t) for name, t in src.tensors.items()
                    if name.startswith("dataset_average_activation_norm.") and t.numel() == 1}
    found = {**tensor_norms, **norms}
    values = []
    for key, hook in (("in", hook_in), ("out", hook_out)):
        value = found.get(key, found.get(hook))
        if value is None:
            raise ValueError(f"{src.config_path}: norm_activation is dataset-wise but "
                             f"dataset_average_activation_norm has no {key!r} value; the file is incomplete")
        values.append(math.sqrt(d) / check_finite_scalar(value, f"dataset_average_activation_norm.{key}",
                                                          src.config_path))
    return values[0], values[1]


def _selection(src: Source, act: str, d_sae: int, s_in: float,
               col_norms: Tensor) -> tuple[str, int, Tensor | None]:
    """(our activation, k, JumpReLU threshold per latent or None) for Llama Scope's act_fn."""
    with_norm = src.field("sparsity_include_decoder_norm", bool, True)
    if act == "topk":
        k = src.positive_int("top_k")
        if k > d_sae:
            raise ValueError(f"{src.config_path}: top_k={k} exceeds d_sae={d_sae}")
        unit = bool((col_norms - 1).abs().max() < 1e-6)
        return ("topk_decnorm" if with_norm and not unit else "topk"), k, None
    if act == "relu":
        return "relu", min(32, d_sae), None
    theta = src.field("jump_relu_threshold", (int, float))
    if not (math.isfinite(theta) and theta >= 0):
        raise ValueError(f"{src.config_path}: jump_relu_threshold must be a number >= 0, got {theta!r}")
    threshold = torch.full((d_sae,), theta * s_in, dtype=torch.float64)  # stated for unscaled inputs
    if with_norm:  # score = pre * n > t  <=>  pre > t / n
        threshold = threshold / col_norms.clamp_min(1e-12)
    return "jumprelu", min(32, d_sae), threshold


def from_llamascope(src: Source) -> Converted:
    """Llama Scope hyperparams + tensors (in `src`) -> our config and state dict."""
    d, d_sae = src.positive_int("d_model"), src.positive_int("d_sae")
    hook_in = src.field("hook_point_in", str)
    hook_out = src.field("hook_point_out", str, hook_in)
    if hook_out != hook_in:
        raise ValueError(f"{src.config_path}: reads {hook_in} but writes {hook_out} (a transcoder); "
                         f"this project's SAEs reconstruct their own input")
    act = src.field("act_fn", str).lower()
    if act not in _ACTIVATIONS:
        raise ValueError(f"{src.config_path}: act_fn {act!r} has no counterpart here "
                         f"(supported: {', '.join(_ACTIVATIONS)})")
    if src.field("use_glu_encoder", bool, False):
        raise ValueError(f"{src.config_path}: GLU encoders have no counterpart here")
    s_in, s_out = _scales(src, hook_in, hook_out, d)
    W_enc = src.tensor("encoder.weight", (d_sae, d)).t()      # (d, d_sae)
    W_dec_base = src.tensor("decoder.weight", (d, d_sae)).t()  # (d_sae, d), one row per latent
    bd = src.tensor("decoder.bias", (d,)) if src.field("use_decoder_bias", bool, True) else torch.zeros(d)
    ratio = s_in / s_out
    W_dec, b_pre = W_dec_base * ratio, bd * ratio             # ours denormalises with 1 / s_in
    b_enc = src.tensor("encoder.bias", (d_sae,)) + bias_through(b_pre, W_enc)  # ours subtracts b_pre first
    if src.field("apply_decoder_bias_to_pre_encoder", bool, True):
        b_enc = b_enc - bias_through(bd, W_enc)
    activation, k, threshold = _selection(src, act, d_sae, s_in, row_norms(W_dec_base))
    notes = [f"dataset-wise scaling: inputs x {s_in:.6g} (norm_scale); outputs / {s_out:.6g}"] \
        if (s_in, s_out) != (1.0, 1.0) else []
    cfg = SAEConfig(d_in=d, d_sae=d_sae, k=k, activation=activation,
                    normalization="dataset_scale" if s_in != 1.0 else "none",
                    hook_name=hook_in, model=str(src.config.get("model_name") or ""))
    state = make_state(cfg, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_pre=b_pre, threshold=threshold,
                       norm_scale=s_in)
    return Converted(cfg, state, notes)


def read(folder: str | Path) -> Converted:
    """Read a Llama Scope SAE folder."""
    folder = Path(folder)
    config = read_json(folder / CONFIG_NAME, f"a Llama Scope SAE folder holds {CONFIG_NAME} and {WEIGHTS_PATH}")
    tensors, _ = read_tensors(folder / WEIGHTS_PATH)
    return from_llamascope(Source(config, folder / CONFIG_NAME, tensors, folder / WEIGHTS_PATH))
