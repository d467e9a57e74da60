"""SAELens' SAE folder: `cfg.json` + `sae_weights.safetensors` (the v6 layout; older flat configs are read).

Tensors: W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,), and threshold (d_sae,)
for JumpReLU. SAELens' inference forward (v6), as mirrored here:

    x_in  = normalize(x) - b_dec * apply_b_dec_to_input
    pre   = x_in @ W_enc + b_enc                   (topk + rescale_acts_by_decoder_norm: pre * ||W_dec[i]||)
    acts  = standard: ReLU(pre) | topk: ReLU(TopK_k(pre)) | jumprelu: ReLU(pre) * (pre > threshold)
    x_hat = denormalize(acts @ W_dec + b_dec)      (rescale: (acts / ||W_dec[i]||) @ W_dec)

Only normalize_activations = "layer_norm" acts at inference: `expected_average_only_in` is folded into the
weights by SAELens when training ends, and an inference SAE treats it as the identity (so do we).
Architectures mapped: standard <-> relu, topk <-> topk, jumprelu <-> jumprelu; others are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from sae.config import SAEConfig
from sae.formats import (Converted, Source, decoder_row_norm_note, fold_decoder_norms, fold_for_export,
                         bias_through, make_state, read_json, read_tensors, unfold_uniform_decoder_norm,
                         write_json, write_tensors)

CONFIG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
LAYOUT_VERSION = "6.0.0"  # written as metadata.sae_lens_version: SAELens reads configs older than 6 as flat
LAYER_NORM_EPS = 1e-5     # SAELens' layer_norm: (x - mean) / (std + 1e-5), undone with std alone
_ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
_IGNORED_TENSORS = ("scaling_factor", "finetuning_scaling_factor")  # legacy, accepted when all ones


def _major_version(version: Any) -> int:
    head = str(version or "0").split(".")[0]
    return int(head) if head.isdigit() else 0


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """One flat dict of the fields we use, from a v6 config (metadata nested) or an older flat one."""
    meta = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    flat = {**config, **{k: v for k, v in meta.items() if k not in config}}
    if _major_version(config.get("sae_lens_version") or meta.get("sae_lens_version")) >= 6:
        return flat
    # Before 6.0: hook_point, activation_fn_str, activation_fn_kwargs.k and a boolean normalisation flag.
    flat.setdefault("hook_name", flat.get("hook_point"))
    flat.setdefault("hook_head_index", flat.get("hook_point_head_index"))
    activation = flat.get("activation_fn", flat.get("activation_fn_str", "relu"))
    kwargs = flat.get("activation_fn_kwargs") or {}
    if "architecture" not in flat:
        flat["architecture"] = "topk" if activation == "topk" else "standard"
    if flat["architecture"] == "topk" and "k" not in flat and isinstance(kwargs, dict):
        flat["k"] = kwargs.get("k")
    if isinstance(flat.get("normalize_activations"), bool):
        flat["normalize_activations"] = "expected_average_only_in" if flat["normalize_activations"] else "none"
    return flat


def _normalization(src: Source, flat: dict[str, Any], notes: list[str]) -> tuple[str, float]:
    kind = flat.get("normalize_activations") or "none"
    if kind == "none":
        return "none", 1e-6
    if kind == "expected_average_only_in":
        notes.append("normalize_activations is expected_average_only_in, which SAELens' inference SAEs "
                     "apply as the identity (the scale is folded in when training ends); read as none")
        return "none", 1e-6
    if kind == "layer_norm":
        notes.append("layer_norm maps to token_standardize with norm_eps 1e-5; SAELens multiplies the "
                     "output back by std, we by std + 1e-5 (a relative 1e-5/std difference)")
        return "token_standardize", LAYER_NORM_EPS
    raise ValueError(f"{src.config_path}: normalize_activations {kind!r} has no counterpart here "
                     f"(supported: none, expected_average_only_in, layer_norm)")


def _activation(src: Source, flat: dict[str, Any], d_sae: int) -> tuple[str, int | None]:
    """(our activation, k or None) for the SAELens architecture, refusing what we lack."""
    arch = flat.get("architecture", "standard")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"{src.config_path}: SAELens architecture {arch!r} has no counterpart here "
                         f"(supported: {', '.join(_ARCHITECTURES)})")
    if (flat.get("reshape_activations") or "none") != "none" or flat.get("hook_head_index") is not None:
        raise ValueError(f"{src.config_path}: per-head (hook_z) SAEs have no counterpart here; "
                         f"this project's SAEs read residual-width activations")
    activation = _ARCHITECTURES[arch]
    if activation != "topk":
        return activation, None
    k = flat.get("k")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
        raise ValueError(f"{src.config_path}: a topk SAE needs k in [1, d_sae={d_sae}], got {k!r}")
    return activation, k


def _weights(src: Source, flat: dict[str, Any], activation: str, d_in: int, d_sae: int,
             notes: list[str]) -> dict[str, Tensor]:
    """W_enc, b_enc, W_dec, b_dec with SAELens' input bias and decoder-norm options folded in."""
    extra = sorted(set(src.tensors) - {"W_enc", "b_enc", "W_dec", "b_dec", "threshold", *_IGNORED_TENSORS})
    if extra:
        raise ValueError(f"{src.tensors_path}: tensor(s) {', '.join(extra)} have no counterpart here")
    for name in _IGNORED_TENSORS:
        if src.has(name) and not bool((src.tensor(name, (d_sae,)) == 1).all()):
            raise ValueError(f"{src.tensors_path}: a {name} other than 1 (legacy SAELens) is not supported")
    w = {"W_enc": src.tensor("W_enc", (d_in, d_sae)), "b_enc": src.tensor("b_enc", (d_sae,)),
         "W_dec": src.tensor("W_dec", (d_sae, d_in)), "b_dec": src.tensor("b_dec", (d_in,))}
    if flat.get("apply_b_dec_to_input", True) is False:  # x @ W + b_enc == (x - b_dec) @ W + b_enc'
        w["b_enc"] = w["b_enc"] + bias_through(w["b_dec"], w["W_enc"])
        notes.append("apply_b_dec_to_input is false: b_dec @ W_enc is folded into b_enc")
    if activation == "topk" and flat.get("rescale_acts_by_decoder_norm"):
        fold_decoder_norms(w)
        notes.append("rescale_acts_by_decoder_norm: decoder row norms are folded into the encoder "
                     "(same latents and reconstruction as SAELens)")
    return w


def from_saelens(src: Source) -> Converted:
    """SAELens config + tensors (in `src`) -> our config and state dict."""
    flat, notes = flatten_config(src.config), []
    d_in, d_sae = src.positive_int("d_in"), src.positive_int("d_sae")
    activation, k = _activation(src, flat, d_sae)
    normalization, eps = _normalization(src, flat, notes)
    w = _weights(src, flat, activation, d_in, d_sae, notes)
    norm_scale = unfold_uniform_decoder_norm(w, "b_dec") if normalization == "none" else None
    if norm_scale is not None:
        normalization = "dataset_scale"
        notes.append(f"every decoder row has norm {1 / norm_scale:.6g} (a folded input scale): read as "
                     f"dataset_scale with norm_scale {norm_scale:.6g} and unit decoder rows, same outputs")
    threshold = None
    if activation == "jumprelu":
        # SAELens applies ReLU before the threshold mask, so a negative threshold acts as 0.
        threshold = src.tensor("threshold", (d_sae,)).clamp_min(0)
    notes += decoder_row_norm_note(w["W_dec"])
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k or min(32, d_sae), activation=activation,
                    normalization=normalization, norm_eps=eps,
                    hook_name=str(flat.get("hook_name") or ""), model=str(flat.get("model_name") or ""),
                    prepend_bos=bool(flat.get("prepend_bos", True)))
    state = make_state(cfg, W_enc=w["W_enc"], b_enc=w["b_enc"], W_dec=w["W_dec"], b_pre=w["b_dec"],
                       threshold=threshold, norm_scale=norm_scale or 1.0)
    return Converted(cfg, state, notes)


def to_saelens(conv: Converted) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
    """Our SAE -> (SAELens v6 cfg.json dict, tensors, notes)."""
    cfg = conv.cfg
    if cfg.activation == "batchtopk":
        raise ValueError("BatchTopK selects latents across a batch, which SAELens' inference SAEs do not; "
                         "convert it to JumpReLU first (sae.activations.jumprelu_thresholds)")
    if cfg.normalization == "mean_centred_unit_norm":
        raise ValueError("mean_centred_unit_norm normalisation has no SAELens counterpart")
    w, notes = fold_for_export(conv)
    normalize = "none"
    if cfg.normalization == "token_standardize":
        normalize = "layer_norm"
        if cfg.norm_eps != LAYER_NORM_EPS:
            notes.append(f"token_standardize (std + {cfg.norm_eps:g}) is written as SAELens' layer_norm "
                         f"(std + 1e-5): outputs differ by a relative ~1e-5/std of each token")
    arch = {"topk": "topk", "topk_decnorm": "topk", "relu": "standard", "jumprelu": "jumprelu"}[cfg.activation]
    if cfg.activation == "topk_decnorm":
        fold_decoder_norms(w)
        notes.append("topk_decnorm: decoder row norms are folded into the encoder, so plain TopK ranks "
                     "the same latents (values are multiplied by the row norms, 1 for a trained SAE)")
    tensors = {"W_enc": w["W_enc"], "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_pre"]}
    if cfg.activation == "jumprelu":
        if bool((w["threshold"] < 0).any()):
            raise ValueError("negative JumpReLU thresholds have no SAELens counterpart (it applies ReLU first)")
        tensors["threshold"] = w["threshold"]
    config: dict[str, Any] = {
        "architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": normalize, "reshape_activations": "none",
        "metadata": {"model_name": cfg.model or None, "hook_name": cfg.hook_name or None,
                     "hook_head_index": None, "prepend_bos": cfg.prepend_bos,
                     "sae_lens_version": LAYOUT_VERSION, "sae_lens_training_version": None},
    }
    if arch == "topk":
        config.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    return config, tensors, notes


def read(folder: str | Path) -> Converted:
    """Read a SAELens SAE folder."""
    folder = Path(folder)
    config = read_json(folder / CONFIG_NAME, "a SAELens SAE folder holds cfg.json and sae_weights.safetensors")
    tensors, _ = read_tensors(folder / WEIGHTS_NAME)
    return from_saelens(Source(config, folder / CONFIG_NAME, tensors, folder / WEIGHTS_NAME))


def write(conv: Converted, folder: str | Path) -> tuple[Path, list[str]]:
    """Write a SAELens SAE folder (weights first, config last); returns the folder and the notes."""
    folder = Path(folder)
    config, tensors, notes = to_saelens(conv)
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / WEIGHTS_NAME, tensors)
    write_json(folder / CONFIG_NAME, config)
    return folder, notes
