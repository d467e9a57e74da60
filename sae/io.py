"""Save and load an SAE as a small folder: `config.json` (SAEConfig) + `sae.safetensors` (weights).

Tensors (format 2): W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_pre (d_in,), h_bias
(d_sae,), threshold (d_sae,) for JumpReLU, and the normalisation's fitted statistics:
`normalization.scale` / `normalization.unscale` () for dataset_scale, `normalization.mean` (d_in,) for
the mean-centred one. The folder is written whole beside the old one, its record `complete.json` (each
file's size and hash, and the data and model it was trained on) last, then swapped in by renames
(records.replaced_folder): a folder holds the old SAE or the new one, never new weights with an old
config. Loading checks the files against the record; folders written before records load unchecked.

Format 1 (before the normalisation became a module) kept dataset_scale's factor as `norm_scale` in
config.json and the mean as a `norm_mean` tensor; such folders load through `upgrade_format_1`, with
bit-identical outputs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import records
from atomic import FILE_MODE
from llama.jsonfile import read_json
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "sae.safetensors"
FORMAT_VERSION = 2
SAE_FILES = (CONFIG_NAME, WEIGHTS_NAME, records.RECORD_NAME)
_FLOAT_CODES = ("F32", "F16", "BF16", "F64")  # safetensors' names of the dtypes an SAE may be stored in


def save_sae(sae: SparseAutoencoder, folder: str | Path, **made_from) -> Path:
    """Write `sae` as `folder` (replacing one that is there); `made_from` (e.g. the data's identity)
    goes into its record. Returns the folder."""
    folder = Path(folder)
    records.recover(folder)
    others = sorted(p.name for p in folder.iterdir() if p.name not in SAE_FILES  # a writer's .lock may be there
                    and not p.name.endswith(records.TRANSIENT_SUFFIXES)) if folder.is_dir() else []
    if others:  # the whole folder is replaced: never take other files with it
        raise ValueError(f"{folder}: holds files that are not an SAE's ({', '.join(others[:3])}); save the SAE "
                         f"to another folder, or move them away")
    tensors = {name: t.detach().contiguous().cpu() for name, t in sae.state_dict().items()}
    with records.replaced_folder(folder) as new:
        save_file(tensors, str(new / WEIGHTS_NAME), metadata={"format": "llama-sae", "version": str(FORMAT_VERSION)})
        os.chmod(new / WEIGHTS_NAME, FILE_MODE)  # safetensors creates its files 0600
        (new / CONFIG_NAME).write_text(json.dumps(sae.cfg.to_dict(), indent=2) + "\n")
        records.write_record(new / records.RECORD_NAME, new, [WEIGHTS_NAME, CONFIG_NAME], model=sae.cfg.model,
                             **made_from)
    return folder


def check_complete(folder: Path) -> None:
    """One-line error unless the folder's files match its record (a folder without one predates records)."""
    record_path = folder / records.RECORD_NAME
    if not record_path.exists():
        return
    record = records.read_record(record_path)
    found = ["its record is unreadable"] if record is None else records.problems(record, folder)
    if found:
        raise ValueError(f"{folder}: the SAE folder is damaged ({'; '.join(found[:3])}); re-save the SAE "
                         f"(rerun train.py --resume, or convert it again)")


def load_config(folder: str | Path) -> SAEConfig:
    """Read `folder/config.json` into an SAEConfig (one-line errors naming the file)."""
    folder = Path(folder)
    records.recover(folder)  # a save cut short between its two renames leaves the old folder aside
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such SAE folder; train one with `python train.py` "
                                f"or pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; an SAE folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    values = read_json(path, "re-save the SAE", expect=dict)
    values.pop("norm_scale", None)  # format 1: a fitted number, now a buffer (see upgrade_format_1)
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
    check_complete(Path(folder))
    try:
        with safe_open(str(path), "pt") as fh:  # the header first: dtypes are checked before any tensor is read
            version = (fh.metadata() or {}).get("version", "1")
            stored = {name: fh.get_slice(name).get_dtype() for name in fh.keys()}
            not_float = sorted(name for name, code in stored.items() if code not in _FLOAT_CODES)
            if not not_float:
                tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}); re-save the SAE") from None
    if not_float:
        raise ValueError(f"{path}: tensor {not_float[0]} is stored as {stored[not_float[0]]}, but an SAE's "
                         f"tensors are floating point ({', '.join(_FLOAT_CODES)}); re-save the SAE")
    if version == "1":
        config_path = Path(folder) / CONFIG_NAME
        try:
            tensors = upgrade_format_1(tensors, cfg, read_json(config_path))
        except ValueError as err:
            raise ValueError(f"{config_path}: {err}; re-save the SAE") from None
    sae = SparseAutoencoder(cfg, device="meta", dtype=dtype)
    expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))
        raise ValueError(f"{path}: tensors do not match {CONFIG_NAME} (differing: {diff[:4]}); re-save the SAE")
    sae.load_state_dict({n: t.to(dtype) for n, t in tensors.items()}, assign=True)
    return sae


def upgrade_format_1(tensors: dict[str, torch.Tensor], cfg: SAEConfig, config: dict) -> dict[str, torch.Tensor]:
    """A format-1 state dict in format 2's names: dataset_scale's `norm_scale` (config.json) becomes the
    `normalization.scale` / `.unscale` buffers, each rounded once from the float64 number as format 1
    rounded it when multiplying; `norm_mean` becomes `normalization.mean`."""
    tensors = dict(tensors)
    device = next(iter(tensors.values())).device if tensors else "cpu"
    if "norm_mean" in tensors:
        tensors["normalization.mean"] = tensors.pop("norm_mean")
    if cfg.normalization == "dataset_scale":
        scale = config.get("norm_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"norm_scale must be a positive finite number, got {scale!r}")
        scale = float(scale)
        tensors["normalization.scale"] = torch.tensor(scale, device=device)
        tensors["normalization.unscale"] = torch.tensor(1.0 / scale, device=device)
    return tensors
