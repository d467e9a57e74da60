"""Save and load an SAE as a small folder: `config.json` (SAEConfig) + `sae.safetensors` (weights).

Tensors: W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_pre (d_in,), h_bias (d_sae,), and
threshold (d_sae,) for JumpReLU, norm_mean (d_in,) for the mean-centred normalisation. Both files are
written to temporary names first and renamed, so a folder never holds a half-written SAE.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sae.config import SAEConfig
from sae.model import SparseAutoencoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "sae.safetensors"
FORMAT_VERSION = 1


def save_sae(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write `sae` into `folder` (created if needed); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in sae.state_dict().items()}
    tmp_weights = folder / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": "llama-sae", "version": str(FORMAT_VERSION)})
    tmp_config = folder / (CONFIG_NAME + ".tmp")
    tmp_config.write_text(json.dumps(sae.cfg.to_dict(), indent=2) + "\n")
    # Weights first, config last: a folder with a config always has matching weights.
    os.replace(tmp_weights, folder / WEIGHTS_NAME)
    os.replace(tmp_config, folder / CONFIG_NAME)
    return folder


def load_config(folder: str | Path) -> SAEConfig:
    """Read `folder/config.json` into an SAEConfig (one-line errors naming the file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such SAE folder; train one with `python train.py` "
                                f"or pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; an SAE folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-save the SAE") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of SAE config fields")
    try:
        return SAEConfig.from_dict(values)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None


def load_sae(folder: str | Path, *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> SparseAutoencoder:
    """Load the SAE saved in `folder` onto `device` (one-line errors for missing or corrupt files)."""
    cfg = load_config(folder)
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the folder has a config but no weights")
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}); re-save the SAE") from None
    sae = SparseAutoencoder(cfg, device="meta", dtype=dtype)
    expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))
        raise ValueError(f"{path}: tensors do not match {CONFIG_NAME} (differing: {diff[:4]}); re-save the SAE")
    sae.load_state_dict({n: t.to(dtype) for n, t in tensors.items()}, assign=True)
    return sae
