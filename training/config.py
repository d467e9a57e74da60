"""`TrainConfig`: every option of `train.py`, its command-line flag, and the named presets.

Layering, lowest to highest: the dataclass defaults, the `--preset`, the `--config` JSON file, the
flags given on the command line. A preset never overrides a value the user set in a file or a flag.
The defaults suit the default demo (about a million activations, d_sae = 16 x 576, k = 32, a few
minutes on a CPU); the measurements behind them are in the README's training section.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cli
import paths
import startup
from sae.config import SAEConfig
from settings import SettingError, check_choice, check_int, check_number, check_seed

SCHEDULES = ("cosine", "linear", "constant")
# b_pre learns at 1/64 of the weights' rate: at full rate its early moves shift every latent's input at once and
# leave latents that never fire again (docs/train.md, "Ours against SAELens and sparsify").
B_PRE_LR_RATIO = 1 / 64
AUTOCAST = {"none": None, "bf16": "bfloat16", "fp16": "float16"}  # --autocast -> torch dtype name

# The reference design's settings (seeds/002: d 3072, 65536 latents, 8 GPUs, ~7B activations).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "reference": {
        "k": 64, "batch_size": 1024, "lr": 5e-5, "betas": [0.85, 0.9999], "eps": 6.25e-10,
        "weight_decay": 0.01, "schedule": "cosine", "min_lr_ratio": 0.2, "warmup_steps": 0,
        "grad_clip": 0.0, "epochs": 10.0, "normalization": "token_standardize", "aux_gate": True,
        "b_pre_lr_ratio": 1.0, "dead_after_tokens": 80_000 * 8192,  # 80k steps of 8 x 1024 activations
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
    # The SAE: SAEConfig's own fields are flags here (--d-sae, --k, --activation, --normalization, --norm-eps,
    # --l1-coeff, --k-aux, --aux-coeff); d_in and the provenance come from the data.
    sae: SAEConfig = field(default_factory=SAEConfig, metadata={"help": "the SAE's shape and activation"})
    expansion: int = _f(16, "d_sae = expansion x d_in (ignored when --d-sae is given)")
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
    b_pre_lr_ratio: float = _f(B_PRE_LR_RATIO, "learning rate of b_pre, the shift of every latent's input, as a "
                                               "fraction of --lr (1 = the same rate as the weights)")
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
    device: str = startup.device_field()
    autocast: str = _f("none", "mixed precision: run the SAE's matmuls in bf16 or fp16 under torch.autocast "
                               "while weights, Adam states and the decoder upkeep stay float32 (fp16 adds "
                               "loss scaling)", choices=list(AUTOCAST))
    wandb_project: str = _f("", "mirror metrics to this Weights & Biases project (needs wandb)")
    tensorboard: bool = _f(False, "mirror metrics to TensorBoard in <out>/tensorboard (needs tensorboard)")

    def __post_init__(self) -> None:
        for name in ("expansion", "log_every", "keep_checkpoints"):
            check_int(name, getattr(self, name), 1)
        for name in ("dead_after_tokens", "batch_size", "warmup_steps", "max_steps", "val_every", "val_batches",
                     "patience", "checkpoint_every"):
            check_int(name, getattr(self, name), 0)
        for name in ("lr", "eps", "weight_decay", "grad_clip", "min_delta", "epochs", "min_lr_ratio", "b_pre_lr_ratio"):
            check_number(name, getattr(self, name))
        for name in ("lr", "eps"):
            if getattr(self, name) == 0:
                raise SettingError(name, 0, "must be greater than 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise SettingError("betas", self.betas, "takes two numbers in [0, 1)")
        for name in ("min_lr_ratio", "b_pre_lr_ratio"):
            if getattr(self, name) > 1:
                raise SettingError(name, getattr(self, name), "must be in [0, 1]")
        if self.resume and self.overwrite:
            raise SettingError("resume", "with --overwrite", "one continues the run in --out, the other deletes it: give one")
        if self.epochs == 0 and self.max_steps == 0:
            raise SettingError("epochs", self.epochs, "must be greater than 0 when --max-steps is 0")
        check_seed("seed", self.seed)
        check_choice("preset", self.preset, PRESETS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("autocast", self.autocast, AUTOCAST)

    def sae_config(self, d_in: int, **provenance: Any) -> SAEConfig:
        """The SAE's config for inputs of width `d_in` (d_sae: --d-sae, else --expansion x d_in), with the
        data's provenance. SAEConfig checks k and k_aux against the width; the message says where the
        width came from."""
        try:
            return self.sae.complete(d_in=d_in, expansion=self.expansion, **provenance)
        except SettingError as err:
            where = "" if self.sae.d_sae else f" (d_sae = --expansion {self.expansion} x d_in {d_in})"
            raise cli.UsageError(f"--{_flag(err.field)} {err.value}: {err.problem}{where}") from None

    @classmethod
    def of(cls, **values: Any) -> "TrainConfig":
        """A TrainConfig from flat field names, as on the command line (`TrainConfig.of(k=8, lr=1e-3)`)."""
        return cli.build(cls, values)

    def flat(self) -> dict[str, Any]:
        """{flag field name: value}, the SAE's fields beside the others (as `of` takes them)."""
        return flatten(self.to_dict())

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


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict (nested "sae", or flat as checkpoints before the nesting wrote it) -> flat."""
    return {**{k: v for k, v in config.items() if k != "sae"}, **config.get("sae", {})}


def apply_preset(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """Fill the fields the user did not set (`explicit`) from `cfg.preset`."""
    values = {name: value for name, value in PRESETS[cfg.preset].items() if name not in explicit}
    return cli.build(TrainConfig, values, base=cfg)


def parse_train_config(argv: list[str] | None = None, description: str = "") -> TrainConfig:
    """Command line -> TrainConfig: defaults, then --preset, then --config file, then flags."""
    cfg, namespace = cli.parse_config(TrainConfig, description, argv)
    return apply_preset(cfg, cli.explicit_fields(namespace))
