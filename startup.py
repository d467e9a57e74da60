"""What every script does the same way: pick the device, join the process group, load the model in the
asked-for precision, and load an SAE checked against that model.

Scripts call these instead of spelling them out; each error is a `cli.UsageError` (or ValueError /
FileNotFoundError) naming the flag, which `cli.run_main` prints as one line with exit code 2.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import cli
import paths
from llama import LoadedModel
from llama import load_model as load_checkpoint
from llama.hooks import parse_hook_name
from llama.loading.precision import MODEL_DTYPES
from sae.io import load_config, load_sae

log = logging.getLogger("startup")

DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps"


def device_field() -> Any:
    """The `--device` field every script's config shares."""
    return field(default="auto", metadata={"help": DEVICE_HELP})


def model_dtype_field() -> Any:
    """The `--model-dtype` field every script that loads a model shares. Its choices are llama's one list
    (llama.loading.precision.MODEL_DTYPES): the command line and config files are checked against it, and
    `llama.load_model` refuses anything else for configs built in Python."""
    return field(default="auto", metadata={
        "help": "precision the model runs in: auto (float32 on a CPU when it fits, else bfloat16; the "
                "checkpoint's 16-bit type on CUDA), float32, bfloat16, float16, int8 or int4 (weights kept "
                "quantized)", "choices": list(MODEL_DTYPES)})


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among `world_size`, its device and the backend in use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def resolve_device(flag: str, local_rank: int = 0) -> torch.device:
    """--device -> a torch.device this machine has; one-line UsageError otherwise.

    "auto" is this rank's CUDA GPU when there is one, else the CPU; "cuda" under torchrun is the
    process's local GPU.
    """
    text = (flag or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", text)
    if not match:
        raise cli.UsageError(f"--device {flag}: not a device; use {DEVICE_HELP}")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise cli.UsageError(f"--device {flag}: no CUDA device is visible here; use --device cpu")
        count = torch.cuda.device_count()
        number = int(index) if index is not None else local_rank % count
        if number >= count:
            raise cli.UsageError(f"--device {flag}: this machine has {count} CUDA device(s), cuda:0 to "
                                 f"cuda:{count - 1}")
        return torch.device("cuda", number)
    if kind == "mps" and not (torch.backends.mps.is_available()):
        raise cli.UsageError(f"--device {flag}: MPS is not available here; use --device cpu")
    if kind == "cpu" and index not in (None, "0"):
        raise cli.UsageError(f"--device {flag}: there is one CPU device; use --device cpu")
    return torch.device(kind)


def init_distributed(device_flag: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), if any.

    NCCL for CUDA, Gloo otherwise. CPU ranks on one machine share its cores instead of each taking all.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_flag, local_rank)
    if world_size == 1:
        return DistInfo(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, device, backend)


def destroy_distributed() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def load_model(model_flag: str, *, device: torch.device, model_dtype: str = "auto",
               tokenizer: bool = True) -> LoadedModel:
    """--model (empty: the embedded default) in --model-dtype on `device` -> llama.LoadedModel.

    The precision chosen for "auto", and why, is logged in one line.
    """
    path = Path(model_flag) if model_flag else paths.default_model_path()
    loaded = load_checkpoint(path, device=device, dtype=model_dtype, tokenizer=tokenizer)
    if loaded.precision_note:
        log.info("model precision: %s", loaded.precision_note)
    return loaded


def load_sae_for(folder: str | Path, loaded, *, device: torch.device, hook: str | None = None,
                 dtype: torch.dtype = torch.float32, flag: str = "--sae"):
    """Load the SAE in `folder` after checking it belongs to `loaded`: width, hook (a real hook of this
    model, and `hook` when given) and model identity. One-line errors name `flag`."""
    sae_cfg = load_config(folder)
    check_sae_matches(sae_cfg, loaded, folder=folder, hook=hook, flag=flag)
    return load_sae(folder, device=device, dtype=dtype)


def check_sae_matches(sae_cfg, loaded, *, folder, hook: str | None = None, flag: str = "--sae") -> None:
    """One-line ValueError unless an SAE with config `sae_cfg` reads activations of `loaded`."""
    if sae_cfg.d_in != loaded.args.dim:
        raise cli.UsageError(f"{flag} {folder}: the SAE reads {sae_cfg.d_in}-dim activations but the model's "
                             f"are {loaded.args.dim}-dim: it was trained on another model")
    if sae_cfg.hook_name:
        try:
            parse_hook_name(sae_cfg.hook_name, loaded.args.n_layers)
        except ValueError as err:
            raise cli.UsageError(f"{flag} {folder}: {err}") from None
    if hook is not None and sae_cfg.hook_name and hook != sae_cfg.hook_name:
        raise cli.UsageError(f"{flag} {folder}: the SAE was trained on {sae_cfg.hook_name!r}, not {hook!r}")
    if sae_cfg.model and not same_model(sae_cfg.model, loaded.source):
        raise cli.UsageError(f"{flag} {folder}: the SAE was trained on {sae_cfg.model}, not on "
                             f"{loaded.source}; pass --model for that model, or an SAE trained on this one")


def same_model(a: str, b: str) -> bool:
    """Equal identities, or equal file fingerprints (a renamed or moved file is the same model)."""
    prints = [re.search(r"\b([0-9a-f]{16})\)$", s) for s in (a, b)]
    return a == b or (all(prints) and prints[0].group(1) == prints[1].group(1))
