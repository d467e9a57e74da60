"""OpenAI sparse_autoencoder state dicts (the layout of the GPT-2 SAEs), read only.

Keys: pre_bias (d,), encoder.weight (n, d), latent_bias (n,), decoder.weight (d, n), buffers
stats_last_nonzero, latents_activation_frequency, latents_mean_square (dropped), and two non-tensor
entries: activation ("TopK" | "ReLU") and activation_state_dict ({"k": int, "postact_fn": "ReLU"}).
The forward of openai/sparse_autoencoder (model.py):

    TopK only:  x, mu, std = LN(x)        LN: (x - mean) / (std + 1e-5), std with Bessel's correction
    latents = activation((x - pre_bias) @ encoder.weight.T + latent_bias)   TopK: k largest, then ReLU
    recons  = latents @ decoder.weight.T + pre_bias                         TopK: recons * std + mu

i.e. our token_standardize (norm_eps 1e-5) TopK, or a plain ReLU SAE. The released files are torch
pickles: they are read only through torch.load(weights_only=True), which admits tensors, numbers, strings
and dicts and runs no code. A safetensors file with the same tensor names is read too; it names the
activation in its metadata: {"activation": "TopK", "k": "32", "postact_fn": "ReLU"}.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from llama.jsonfile import parse_json
from sae.config import SAEConfig
from sae.formats import Converted, Source, decoder_row_norm_note, make_state, read_tensors
from sae.formats.hook_names import openai_hook_from_path

LAYER_NORM_EPS = 1e-5
_TENSORS = ("pre_bias", "encoder.weight", "latent_bias", "decoder.weight", "decoder.linear.weight")
_BUFFERS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square")


def load_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, non-tensor entries) of a .pt state dict, loaded with weights_only=True (no pickle code)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0][:160]
        raise ValueError(f"{path}: holds Python objects beyond tensors, numbers and strings, which are not "
                         f"unpickled here ({reason}); save its state_dict() or a safetensors file") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{path}: not a readable torch state dict ({reason}); the file is damaged or "
                         f"truncated, fetch it again") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors, {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)}


def _activation_from_metadata(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    if "activation" not in metadata:
        raise ValueError(f"{path}: the safetensors metadata lacks 'activation'; write it when converting, "
                         f"e.g. metadata={{'activation': 'TopK', 'k': '32', 'postact_fn': 'ReLU'}}")
    entries: dict[str, Any] = {"activation": metadata["activation"]}
    if "activation_state_dict" in metadata:
        entries["activation_state_dict"] = parse_json(metadata["activation_state_dict"],
                                                      f"{path}: metadata activation_state_dict", expect=dict)
    else:
        state: dict[str, Any] = {"postact_fn": metadata.get("postact_fn", "ReLU")}
        if "k" in metadata:
            if not metadata["k"].strip().isdigit():
                raise ValueError(f"{path}: metadata k must be a positive integer, got {metadata['k']!r}")
            state["k"] = int(metadata["k"])
        entries["activation_state_dict"] = state
    return entries


def from_openai(src: Source, hook_name: str) -> Converted:
    """OpenAI state dict (tensors and non-tensor entries in `src`) at our hook `hook_name` -> ours."""
    activation = src.field("activation", str, "ReLU")  # OpenAI's own default when the entry is absent
    extra = sorted(set(src.tensors) - set(_TENSORS) - set(_BUFFERS))
    if extra:
        raise ValueError(f"{src.tensors_path}: tensor(s) {', '.join(extra)} have no counterpart here")
    d, n = src.vector_length("pre_bias"), src.vector_length("latent_bias")
    k, notes = min(32, n), []
    if activation == "TopK":
        state = src.field("activation_state_dict", dict)
        k, postact = state.get("k"), state.get("postact_fn", "ReLU")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"{src.config_path}: activation_state_dict k must be an integer in [1, {n}], got {k!r}")
        if postact != "ReLU":
            raise ValueError(f"{src.config_path}: TopK with postact_fn {postact!r} has no counterpart here "
                             f"(our TopK applies ReLU)")
        notes.append("OpenAI's TopK SAEs standardise each token (LayerNorm, eps 1e-5): token_standardize; "
                     "OpenAI multiplies the output back by std, we by std + 1e-5 (a relative 1e-5/std difference)")
    elif activation != "ReLU":
        raise ValueError(f"{src.config_path}: activation {activation!r} has no counterpart here (TopK, ReLU)")
    W_enc = src.tensor("encoder.weight", (n, d)).t()   # nn.Linear(d, n): (n, d) -> ours (d, n)
    if src.has("decoder.weight"):
        W_dec = src.tensor("decoder.weight", (d, n)).t()  # nn.Linear(n, d): (d, n) -> ours (n, d)
    elif src.has("decoder.linear.weight"):  # tied: the decoder is the encoder's transpose
        W_dec = src.tensor("decoder.linear.weight", (n, d))
        notes.append("tied autoencoder: the decoder is the encoder's transpose")
    else:
        W_dec = src.tensor("decoder.weight", (d, n)).t()  # raises the missing-tensor error
    topk = activation == "TopK"
    cfg = SAEConfig(d_in=d, d_sae=n, k=k, activation="topk" if topk else "relu",
                    normalization="token_standardize" if topk else "none", norm_eps=LAYER_NORM_EPS,
                    hook_name=hook_name)
    state = make_state(cfg, W_enc=W_enc, b_enc=src.tensor("latent_bias", (n,)), W_dec=W_dec,
                       b_pre=src.tensor("pre_bias", (d,)))
    return Converted(cfg, state, notes + decoder_row_norm_note(W_dec))


def read(path: str | Path, hook_name: str | None = None) -> Converted:
    """Read an OpenAI SAE file (.pt state dict or .safetensors). The hook comes from `hook_name`, else
    from a release path such as `.../resid_post_mlp/.../20.pt` (blocks.20.hook_resid_post)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; pass an OpenAI SAE file (.pt or .safetensors)")
    hook_name = hook_name or openai_hook_from_path(path)
    if not hook_name:
        raise ValueError(f"{path}: the hook is not in the file or its path (such as "
                         f".../resid_post_mlp/.../20.pt); pass --hook")
    if path.suffix == ".safetensors":
        tensors, metadata = read_tensors(path)
        entries = _activation_from_metadata(metadata, path)
    else:
        tensors, entries = load_state_dict(path)
    return from_openai(Source(entries, path, tensors, path), hook_name)
