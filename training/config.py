"""`TrainConfig`: every option of `train.py`, its command-line flag, and the named presets.

Layering, lowest to highest: the dataclass defaults, the `--preset`, the `--config` JSON file, the
flags given on the command line. A preset never overrides a value the user set in a file or a flag.
The defaults suit the default demo (about a million activations, d_sae = 16 x 576, k = 32, a few
minutes on a CPU); the measurements behind them are in the README's training section.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cli
import paths
import runtime
from sae.config import ACTIVATIONS, NORMALIZATIONS

SCHEDULES = ("cosine", "linear", "constant")
AUTOCAST = {"none": None, "bf16": "bfloat16", "fp16": "float16"}  # --autocast -> torch dtype name

# The reference design's settings (seeds/002: d 3072, 65536 latents, 8 GPUs, ~7B activations).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "reference": {
        "k": 64, "batch_size": 1024, "lr": 5e-5, "betas": [0.85, 0.9999], "eps": 6.25e-10,
        "weight_decay": 0.01, "schedule": "cosine", "min_lr_ratio": 0.2, "warmup_steps": 0,
        "grad_clip": 0.0, "epochs": 10.0, "normalization": "token_standardize", "aux_gate": True,
        "dead_after_tokens": 80_000 * 8192,  # 80k steps of 8 x 1024 activations
    },
}


def _f(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field whose help text becomes the flag's help."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Options of `train.py`; each field is the flag `--field-name`."""

    # Where things are.
    data: str = _f("", "prebatched activations folder; empty = runs/batches/<default hook>")
    out: str = _f("", "run folder for checkpoints, metrics, curves and the SAE; empty = runs/train")
    preset: str = _f("default", "named settings applied under the file and flags",
                     choices=sorted(PRESETS))
    # The SAE.
    expansion: int = _f(16, "d_sae = expansion x d_in (ignored when --d-sae is given)")
    d_sae: int = _f(0, "number of latents; 0 = expansion x d_in")
    k: int = _f(32, "active latents per activation (TopK)")
    activation: str = _f("topk", "latent activation", choices=list(ACTIVATIONS))
    normalization: str = _f("dataset_scale", "input normalisation saved with the SAE",
                            choices=list(NORMALIZATIONS))
    l1_coeff: float = _f(1e-3, "L1 penalty weight (relu activation only)")
    k_aux: int = _f(0, "dead latents used by the aux-k loss; 0 = min(2048, d_sae / 2)")
    aux_coeff: float = _f(1 / 32, "aux-k loss weight (OpenAI TopK paper, appendix A.2)")
    aux_gate: bool = _f(False, "apply the aux-k loss only when at least k_aux latents are dead "
                               "(the reference's rule, which leaves a floor of dead latents)")
    dead_after_tokens: int = _f(200_000, "a latent that has not fired for this many activations is dead")
    # Optimisation.
    batch_size: int = _f(0, "activations per step per rank; 0 = the prebatched batch size "
                            "(otherwise a divisor or multiple of it)")
    lr: float = _f(3e-3, "peak learning rate (Adam)")
    betas: list[float] = _f([0.9, 0.999], "Adam betas")
    eps: float = _f(1e-8, "Adam epsilon")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay")
    warmup_steps: int = _f(20, "linear warm-up steps")
    schedule: str = _f("cosine", "decay after warm-up", choices=list(SCHEDULES))
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of --lr")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this; 0 = off")
    epochs: float = _f(3.0, "passes over the training batches (fractions allowed)")
    max_steps: int = _f(0, "stop after this many steps; 0 = derived from --epochs")
    # Validation and bookkeeping.
    val_every: int = _f(200, "validate every N steps (and at the end); 0 = never")
    val_batches: int = _f(16, "validation batches per evaluation; 0 = all")
    patience: int = _f(0, "stop after this many validations without improvement; 0 = off")
    min_delta: float = _f(0.0, "smallest drop in validation MSE that counts as an improvement")
    log_every: int = _f(20, "write metrics every N steps")
    checkpoint_every: int = _f(500, "checkpoint every N steps (and at the end); 0 = only at the end")
    keep_checkpoints: int = _f(2, "checkpoints kept (the newest ones)")
    resume: bool = _f(False, "continue from the newest complete checkpoint in the run folder")
    overwrite: bool = _f(False, "start afresh in a run folder that holds an earlier run, deleting its "
                                "checkpoints and metrics")
    seed: int = _f(0, "seed for the initialisation and the batch order")
    device: str = runtime.device_field()
    autocast: str = _f("none", "mixed precision: run the SAE's matmuls in bf16 or fp16 under torch.autocast "
                               "while weights, Adam states and the decoder upkeep stay float32 (fp16 adds "
                               "loss scaling)", choices=list(AUTOCAST))
    wandb_project: str = _f("", "mirror metrics to this Weights & Biases project (needs wandb)")
    tensorboard: bool = _f(False, "mirror metrics to TensorBoard in <out>/tensorboard (needs tensorboard)")

    def __post_init__(self) -> None:
        positive = ("expansion", "k", "log_every", "keep_checkpoints")
        at_least_zero = ("d_sae", "k_aux", "dead_after_tokens", "batch_size", "warmup_steps", "max_steps",
                         "val_every", "val_batches", "patience", "checkpoint_every")
        for name in positive + at_least_zero:
            value = getattr(self, name)
            lowest = 1 if name in positive else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise cli.UsageError(f"--{_flag(name)} must be an integer >= {lowest}, got {value!r}")
        for name in ("lr", "eps", "l1_coeff", "aux_coeff", "weight_decay", "grad_clip", "min_delta",
                     "epochs", "min_lr_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise cli.UsageError(f"--{_flag(name)} must be a finite number >= 0, got {value!r}")
        if self.lr == 0 or self.eps == 0:
            raise cli.UsageError("--lr and --eps must be greater than 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise cli.UsageError(f"--betas takes two numbers in [0, 1), got {self.betas}")
        if self.min_lr_ratio > 1:
            raise cli.UsageError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.resume and self.overwrite:
            raise cli.UsageError("--resume continues the run in --out, --overwrite deletes it: give one")
        if self.epochs == 0 and self.max_steps == 0:
            raise cli.UsageError("give --epochs or --max-steps greater than 0")
        for name, allowed in (("preset", PRESETS), ("activation", ACTIVATIONS),
                              ("normalization", NORMALIZATIONS), ("schedule", SCHEDULES), ("autocast", AUTOCAST)):
            if getattr(self, name) not in allowed:
                raise cli.UsageError(f"--{_flag(name)} must be one of {', '.join(allowed)}, "
                                     f"got {getattr(self, name)!r}")
        if self.d_sae:
            self.sae_width(d_in=0)  # the --k / --k-aux bounds, before any data is read

    def sae_width(self, d_in: int) -> int:
        """d_sae for inputs of width `d_in`: --d-sae, else --expansion x d_in; UsageError naming the flags
        when --k or --k-aux exceeds it."""
        width = self.d_sae or self.expansion * d_in
        source = f"--d-sae {self.d_sae}" if self.d_sae else f"d_sae = --expansion {self.expansion} x d_in {d_in}"
        for name in ("k", "k_aux"):
            if getattr(self, name) > width:
                raise cli.UsageError(f"--{_flag(name)} {getattr(self, name)} must not exceed {source}"
                                     f"{'' if self.d_sae else f' = {width}'}; lower --{_flag(name)} or "
                                     f"raise {'--d-sae' if self.d_sae else '--expansion'}")
        return width

    def dead_steps(self, global_batch: int) -> int:
        """Steps without firing after which a latent counts as dead (--dead-after-tokens in steps)."""
        return max(1, math.ceil(self.dead_after_tokens / global_batch))

    @property
    def data_dir(self) -> Path:
        return Path(self.data) if self.data else paths.DEFAULT_BATCHES_DIR / paths.DEFAULT_HOOK

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else paths.DEFAULT_TRAIN_DIR

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def apply_preset(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """Fill the fields the user did not set (`explicit`) from `cfg.preset`."""
    values = {name: value for name, value in PRESETS[cfg.preset].items() if name not in explicit}
    return dataclasses.replace(cfg, **values)


def parse_train_config(argv: list[str] | None = None, description: str = "") -> TrainConfig:
    """Command line -> TrainConfig: defaults, then --preset, then --config file, then flags."""
    cfg, namespace = cli.parse_config(TrainConfig, description, argv)
    explicit = {f.name for f in dataclasses.fields(TrainConfig) if getattr(namespace, f.name, None) is not None}
    if namespace.config:  # already read and checked by parse_config
        explicit |= set(json.loads(Path(namespace.config).read_text()))
    return apply_preset(cfg, explicit)
