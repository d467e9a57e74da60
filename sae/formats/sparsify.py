"""EleutherAI sparsify's SAE folder: one folder per hookpoint (named after it, e.g. `layers.20/`) holding
`cfg.json` and `sae.safetensors`.

cfg.json: activation ("topk" | "groupmax"), expansion_factor, normalize_decoder, num_latents (0: d_in x
expansion_factor), k, multi_topk, skip_connection, transcode, d_in. Tensors: encoder.weight (M, d_in),
encoder.bias (M,), W_dec (M, d_in), b_dec (d_in,), and W_skip (d_in, d_in) with a skip connection.
sparsify's forward has no input normalisation:

    top_acts, top_indices = TopK_k(ReLU((x - b_dec) @ encoder.weight.T + encoder.bias))
    x_hat = sum of top_acts * W_dec[top_indices] + b_dec

which is our TopK with normalisation "none". multi_topk and normalize_decoder only steer training.
A run folder holding several hookpoint folders is read by naming the hookpoint folder itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from sae.config import SAEConfig
from sae.formats import (Converted, Source, decoder_row_norm_note, fold_decoder_norms, fold_for_export,
                         make_state, read_json, read_tensors, unfold_uniform_decoder_norm, write_json,
                         write_tensors)
from sae.formats import hook_names

CONFIG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"


def from_sparsify(src: Source, hook_name: str) -> Converted:
    """sparsify cfg.json + tensors (in `src`) for the SAE at our hook `hook_name` -> our config and state."""
    activation = src.field("activation", str, "topk")
    if activation != "topk":
        raise ValueError(f"{src.config_path}: activation {activation!r} has no counterpart here (only topk)")
    for flag in ("transcode", "skip_connection", "signed"):
        if src.field(flag, bool, False):
            raise ValueError(f"{src.config_path}: {flag} SAEs have no counterpart here; "
                             f"this project's SAEs are plain autoencoders")
    if src.has("W_skip"):
        raise ValueError(f"{src.tensors_path}: W_skip (a skip connection) has no counterpart here")
    d_in = src.positive_int("d_in")
    d_sae = src.field("num_latents", int, 0) or d_in * src.positive_int("expansion_factor")
    k = src.positive_int("k")
    if k > d_sae:
        raise ValueError(f"{src.config_path}: k={k} exceeds the number of latents {d_sae}")
    extra = sorted(set(src.tensors) - {"encoder.weight", "encoder.bias", "W_dec", "b_dec"})
    if extra:
        raise ValueError(f"{src.tensors_path}: tensor(s) {', '.join(extra)} have no counterpart here")
    w = {"W_enc": src.tensor("encoder.weight", (d_sae, d_in)).t(),  # nn.Linear (out, in) -> ours (in, out)
         "W_dec": src.tensor("W_dec", (d_sae, d_in)), "b_dec": src.tensor("b_dec", (d_in,))}
    notes = []
    norm_scale = unfold_uniform_decoder_norm(w, "b_dec")
    if norm_scale is not None:
        notes.append(f"every decoder row has norm {1 / norm_scale:.6g} (a folded input scale): read as "
                     f"dataset_scale with norm_scale {norm_scale:.6g} and unit decoder rows, same outputs")
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k, activation="topk",
                    normalization="dataset_scale" if norm_scale else "none",
                    hook_name=hook_name, model=_model_name(src.config_path))
    state = make_state(cfg, W_enc=w["W_enc"], b_enc=src.tensor("encoder.bias", (d_sae,)), W_dec=w["W_dec"],
                       b_pre=w["b_dec"], norm_scale=norm_scale or 1.0)
    return Converted(cfg, state, notes + decoder_row_norm_note(w["W_dec"]))


def _model_name(config_path: Path) -> str:
    # sparsify writes the run's training config (with the model name) next to the hookpoint folders.
    run_config = config_path.parent.parent / "config.json"
    try:
        model = read_json(run_config, "sparsify's run config").get("model", "")
    except (OSError, ValueError):
        return ""
    return model if isinstance(model, str) else ""


def to_sparsify(conv: Converted) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
    """Our SAE -> (sparsify cfg.json dict, tensors, notes)."""
    cfg = conv.cfg
    if cfg.activation not in ("topk", "topk_decnorm"):
        raise ValueError(f"sparsify's SAEs are TopK; a {cfg.activation} SAE has no counterpart there")
    if cfg.normalization in ("token_standardize", "mean_centred_unit_norm"):
        raise ValueError(f"sparsify has no input normalisation, and {cfg.normalization} is per token "
                         f"so it cannot be folded into the weights")
    w, notes = fold_for_export(conv)
    if cfg.activation == "topk_decnorm":
        fold_decoder_norms(w)
        notes.append("topk_decnorm: decoder row norms are folded into the encoder, so plain TopK ranks "
                     "the same latents (values are multiplied by the row norms, 1 for a trained SAE)")
    norms = w["W_dec"].norm(dim=-1)
    config = {"activation": "topk", "expansion_factor": max(1, cfg.d_sae // cfg.d_in),
              "normalize_decoder": bool((norms - 1).abs().max() < 1e-4), "num_latents": cfg.d_sae,
              "k": cfg.k, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": cfg.d_in}
    tensors = {"encoder.weight": w["W_enc"].t(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_pre"]}
    return config, tensors, notes


def _hook_folder(path: Path) -> Path:
    """The hookpoint folder: `path` itself if it holds cfg.json, else its only subfolder that does."""
    if (path / CONFIG_NAME).is_file() or not path.is_dir():
        return path
    found = sorted(p for p in path.iterdir() if (p / CONFIG_NAME).is_file())
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{path}: holds SAEs for several hookpoints ({', '.join(p.name for p in found)}); "
                         f"pass one of those folders")
    return path


def read(path: str | Path, hook_name: str | None = None) -> Converted:
    """Read a sparsify hookpoint folder (or a run folder with one). The hook comes from the folder's
    name (`layers.20` -> blocks.20.hook_resid_post) unless `hook_name` is given."""
    folder = _hook_folder(Path(path))
    config = read_json(folder / CONFIG_NAME, "a sparsify SAE folder holds cfg.json and sae.safetensors")
    if not hook_name:
        try:
            hook_name = hook_names.from_sparsify(folder.name)
        except ValueError:
            raise ValueError(f"{folder}: the folder name is not a sparsify hookpoint (such as layers.20), "
                             f"so the hook is unknown; pass --hook") from None
    tensors, _ = read_tensors(folder / WEIGHTS_NAME)
    return from_sparsify(Source(config, folder / CONFIG_NAME, tensors, folder / WEIGHTS_NAME), hook_name)


def write(conv: Converted, folder: str | Path) -> tuple[Path, list[str]]:
    """Write a sparsify hookpoint folder. sparsify names it after the hookpoint, so unless `folder` is
    already named so, the SAE goes into `folder/<hookpoint>/` (as in a sparsify run folder)."""
    config, tensors, notes = to_sparsify(conv)
    folder = Path(folder)
    if conv.cfg.hook_name:
        hookpoint = hook_names.to_sparsify(conv.cfg.hook_name)
        if folder.name != hookpoint:
            folder = folder / hookpoint
    else:
        notes.append("the SAE names no hook; sparsify expects the folder to be named after its hookpoint")
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / WEIGHTS_NAME, tensors)
    write_json(folder / CONFIG_NAME, config)
    return folder, notes
