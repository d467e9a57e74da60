"""Which trainer makes the better SAE, and how fast: ours, SAELens and sparsify on the same activations.

    python bench/sae_quality.py --batches /work/data/demo/batches/blocks.20.hook_resid_post \\
        --capture /work/data/demo/capture/blocks.20.hook_resid_post --out runs/sae-quality
    python bench/sae_quality.py --contenders ours saelens --frontier-ks 0    # no frontier
    pip install -r bench/requirements-quality.txt                            # the peers and matplotlib

One prebatched capture, one SAE shape (d_sae, k), the same batches in the same order (train.py's seeded
order), the same number of tokens and batch size for every contender:

  ours             train.py's trainer with its defaults and the demo's shape (train.build_trainer and
                   training.step.train_step, the code `python train.py` runs)
  saelens          SAELens' SAETrainer with its TopK SAE and the defaults of its runner config (Adam 3e-4,
                   constant, clip 1, aux-k after 1000 silent steps), fed through its data_provider
  saelens-our-lr   the same with our learning rate and schedule (train.py's get_lr)
  sparsify         sparsify's SparseCoder with its default recipe (sign-SGD under schedule-free, lr
                   5e-3 / sqrt(d_sae / 2^14), no schedule, b_dec at the first batch's mean), stepped as
                   its Trainer.fit steps
  sparsify-our-lr  sparsify's SparseCoder and loss with Adam at our learning rate and schedule

Trainers advance round-robin, one step each per round, in one process, so a busy machine slows them alike;
each trainer's own wall time is accumulated (construction and first steps included, evaluation and the
process's one-time imports excluded).
Every `--eval-every` steps each SAE is brought into our format through the readers convert.py uses (the
peers saved by their own code first) and its held-out FVU measured, for the curves. At the end one
evaluator measures every SAE: held-out FVU and L0 (the prebatched validation split), dead fraction over the
last `--dead-after-tokens` training tokens and on the held-out tokens, CE loss recovered and delta LM loss
with the SAE spliced into the model (latents/evaluate.py), and k-sparse probe AUROC for `--probe-label`
(latents/probes.py). Then the frontier: ours and the best peer at each of `--frontier-ks`. The last line:

  quality: ours fvu A, best peer fvu B (NAME), ratio A/B; time to B: ours S1 s, NAME S2 s, speedup X

Writes results.json, curves.png, frontier.png and index.html (the figures need matplotlib) into --out.
"""

from __future__ import annotations

import base64
import gc
import html
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import cli  # noqa: E402
import paths  # noqa: E402
import startup  # noqa: E402
import train as train_script  # noqa: E402
from atomic import write_json_atomic, write_text_atomic  # noqa: E402
from data.batches import BatchDataset  # noqa: E402
from data.shuffle import DEFAULTS as PREBATCH_DEFAULTS, is_validation  # noqa: E402
from latents.evaluate import evaluate_sae, left_padded_batches  # noqa: E402
from latents.heldout import collect_heldout  # noqa: E402
from latents.probes import probe_report  # noqa: E402
from latents.source import CapturedData  # noqa: E402
from latents.stats import sae_encoder  # noqa: E402
from llama.jsonfile import read_json  # noqa: E402
from sae.formats import hook_names  # noqa: E402
from sae.formats.registry import READERS  # noqa: E402
from sae.formats import to_sae  # noqa: E402
from sae.model import SparseAutoencoder  # noqa: E402
from settings import SettingError, check_int, check_number  # noqa: E402
from training.allocator import keep_freed_memory  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import RankShare  # noqa: E402
from training.state import TrainState  # noqa: E402
from training.step import get_lr, train_step  # noqa: E402

log = logging.getLogger("sae_quality")
CONTENDERS = ("ours", "saelens", "saelens-our-lr", "sparsify", "sparsify-our-lr")
CPU = torch.device("cpu")


@dataclass
class QualityConfig:
    batches: str = field(default="", metadata={"help": "prebatched activations folder; empty = "
                                                       "runs/batches/<default hook>"})
    capture: str = field(default="", metadata={"help": "the captured folder the batches came from (sentences "
                                                       "for the spliced-model loss and the probes); empty = "
                                                       "runs/capture/<the batches' hook>"})
    model: str = field(default="", metadata={"help": "model the SAEs are spliced into (GGUF file, Meta or HF "
                                                     "folder); empty = the default model"})
    out: str = field(default="runs/sae-quality", metadata={"help": "folder for results.json, figures and page"})
    expansion: int = field(default=8, metadata={"help": "d_sae = expansion x d_in (the demo's 8)"})
    d_sae: int = field(default=0, metadata={"help": "number of latents; 0 = expansion x d_in"})
    k: int = field(default=64, metadata={"help": "active latents per activation (the demo's 64)"})
    epochs: float = field(default=3.0, metadata={"help": "passes over the training batches (the demo's 3)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps; 0 = from --epochs"})
    contenders: list[str] = field(default_factory=lambda: list(CONTENDERS),
                                  metadata={"help": "trainers to compare", "choices": list(CONTENDERS)})
    eval_every: int = field(default=20, metadata={"help": "held-out FVU of every SAE every N steps (the curves)"})
    dead_after_tokens: int = field(default=200_000, metadata={"help": "dead fraction over this many last "
                                                                      "training tokens (train.py's default)"})
    eval_sentences: int = field(default=200, metadata={"help": "held-out sentences for the spliced-model loss"})
    eval_batch_size: int = field(default=8, metadata={"help": "sentences per forward pass of the model"})
    probe_label: str = field(default="negative", metadata={"help": "label of the sparse probes (k 1 and 20)"})
    frontier_ks: list[int] = field(default_factory=lambda: [16, 32, 64, 128],
                                   metadata={"help": "k values of the frontier (ours and the best peer); "
                                                     "0 = no frontier"})
    frontier_peer: str = field(default="", metadata={"help": "the frontier's peer; empty = the best peer of "
                                                             "the comparison", "choices": ["", *CONTENDERS[1:]]})
    frontier_only: bool = field(default=False, metadata={"help": "skip the comparison (needs --frontier-peer)"})
    frontier_epochs: float = field(default=0.0, metadata={"help": "epochs of each frontier run; 0 = --epochs"})
    seed: int = field(default=0, metadata={"help": "initialisation and batch order of every contender"})
    ours_config: str = field(default="", metadata={"help": "JSON file of train.py fields (flat, as --config "
                                                           "takes them) applied to ours only: an ablation of "
                                                           "our recipe; the shape, data and seed stay the run's"})
    figures: bool = field(default=True, metadata={"help": "draw the PNGs and the page (needs matplotlib)"})

    def __post_init__(self) -> None:
        for name, lowest in (("expansion", 1), ("d_sae", 0), ("k", 1), ("max_steps", 0), ("eval_every", 1),
                             ("dead_after_tokens", 1), ("eval_sentences", 0), ("eval_batch_size", 1)):
            check_int(name, getattr(self, name), lowest)
        for name in ("epochs", "frontier_epochs"):
            check_number(name, getattr(self, name))
        if self.epochs == 0 and self.max_steps == 0:
            raise SettingError("epochs", self.epochs, "must be greater than 0 when --max-steps is 0")
        if not self.contenders:
            raise SettingError("contenders", self.contenders, f"name at least one of {', '.join(CONTENDERS)}")
        self.frontier_ks = [k for k in self.frontier_ks if k != 0]
        if self.frontier_only and not (self.frontier_peer and self.frontier_ks):
            raise SettingError("frontier_only", True, "needs --frontier-peer and --frontier-ks")
        for k in self.frontier_ks:
            check_int("frontier_ks", k, 1)


# ---- the data --------------------------------------------------------------------------------------

@dataclass
class Data:
    train: BatchDataset
    heldout: torch.Tensor          # (rows, d_in) the validation split, remainder included
    hook: str
    capture: Path | None           # the captured folder, when it exists
    split: dict                    # the prebatching's document split (val_fraction, seed)


def open_data(cfg: QualityConfig) -> Data:
    folder = Path(cfg.batches) if cfg.batches else paths.DEFAULT_BATCHES_DIR / paths.DEFAULT_HOOK
    if not (folder / "batches.json").is_file():
        raise FileNotFoundError(f"--batches {folder}: no batches.json there; prebatch a capture first "
                                f"(capture.py --prebatch, or prebatch.py)")
    train, val = BatchDataset(folder, "train"), BatchDataset(folder, "val")
    heldout = torch.cat([val[i] for i in range(len(val))] + [val.remainder()])
    if len(heldout) == 0:
        raise ValueError(f"--batches {folder}: the validation split is empty; prebatch with a val_fraction > 0")
    hook = str(train.meta.get("hook") or paths.DEFAULT_HOOK)
    capture = Path(cfg.capture) if cfg.capture else paths.DEFAULT_CAPTURE_DIR / hook
    if cfg.capture and not (capture / "manifest.json").is_file():
        raise FileNotFoundError(f"--capture {capture}: no manifest.json there; pass the captured folder of "
                                f"the batches")
    split = {"val_fraction": float(train.meta.get("val_fraction", PREBATCH_DEFAULTS.val_fraction)),
             "seed": int(train.meta.get("seed", PREBATCH_DEFAULTS.seed))}
    return Data(train, heldout, hook, capture if (capture / "manifest.json").is_file() else None, split)


# ---- the contenders: one step at a time, and the SAE in our format --------------------------------

@dataclass
class Contender:
    name: str
    step: Callable[[torch.Tensor, int], None]   # one optimiser step on batch x (its dataset index given)
    export: Callable[[Path], SparseAutoencoder]  # the current SAE in our format (a scratch folder given)
    recipe: str


@dataclass(frozen=True)
class Shape:
    d_in: int
    d_sae: int
    k: int
    total_steps: int
    seed: int


FIXED_BY_THE_RUN = ("data", "out", "d_sae", "expansion", "k", "max_steps", "epochs", "seed", "device",
                    "batch_size", "resume", "overwrite")


def our_config(shape: Shape, cfg: QualityConfig, data: Data, overrides: dict | None = None) -> TrainConfig:
    """train.py's defaults with the compared shape (what `python train.py --d-sae N --k K` would use), and
    `overrides` (train.py fields) on top."""
    return TrainConfig.of(**{"dead_after_tokens": cfg.dead_after_tokens, **(overrides or {})},
                          data=str(data.train.folder), d_sae=shape.d_sae, k=shape.k, max_steps=shape.total_steps,
                          seed=shape.seed, device="cpu")


def ours_overrides(cfg: QualityConfig) -> dict:
    """The fields of --ours-config ({} without one)."""
    if not cfg.ours_config:
        return {}
    overrides = read_json(cfg.ours_config, "--ours-config", expect=dict)
    fixed = sorted(set(overrides) & set(FIXED_BY_THE_RUN))
    if fixed:
        raise cli.UsageError(f"--ours-config {cfg.ours_config}: sets {', '.join(fixed)}, which the comparison "
                             f"fixes for every contender; leave them out")
    return overrides


def make_ours(shape: Shape, cfg: QualityConfig, data: Data) -> Contender:
    overrides = ours_overrides(cfg)
    tcfg = our_config(shape, cfg, data, overrides)
    torch.manual_seed(shape.seed)  # as train.py seeds before building the SAE
    sae_cfg = train_script.sae_config(tcfg, data.train)
    trainer = train_script.build_trainer(tcfg, sae_cfg, data.train, CPU, shape.total_steps)
    state = TrainState(sae_cfg.d_sae)
    dist = startup.DistInfo(rank=0, world_size=1, local_rank=0, device=CPU, backend=None)

    def step(x: torch.Tensor, index: int) -> None:
        train_step(trainer, state, x, cfg=tcfg, dist=dist, batch_index=index)
    return Contender("ours", step, lambda _: trainer.sae,
                     f"train.py defaults: Adam {tcfg.lr:g}, {tcfg.warmup_steps} warm-up steps, {tcfg.schedule} "
                     f"to {tcfg.min_lr_ratio:g} x, clip {tcfg.grad_clip:g}, aux-k 1/32 after "
                     f"{tcfg.dead_after_tokens:,} silent tokens, {sae_cfg.normalization}"
                     + (f"; changed: {overrides}" if overrides else ""))


def our_schedule(optimizer: torch.optim.Optimizer, shape: Shape, cfg: QualityConfig, data: Data):
    """Our learning rate and schedule on a peer's optimiser: train.py's get_lr as a LambdaLR."""
    tcfg = our_config(shape, cfg, data)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = tcfg.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: get_lr(s, tcfg, shape.total_steps) / tcfg.lr)


def make_saelens(shape: Shape, cfg: QualityConfig, data: Data, *, our_lr: bool) -> Contender:
    # sae-lens is an optional contender: imported only when it runs
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    batch = data.train[0].shape[0]
    torch.manual_seed(shape.seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=shape.d_in, d_sae=shape.d_sae, k=shape.k,
                                                dtype="float32", device="cpu"))
    fed: list[torch.Tensor] = []
    provider = iter(lambda: fed.pop(), None)  # the data_provider hands over the batch this round gives
    # lr_end: the runner config's default (lr / 10); a constant schedule never reads it
    trainer = SAETrainer(SAETrainerConfig(total_training_samples=shape.total_steps * batch,
                                          train_batch_size_samples=batch, device="cpu", lr_end=3e-5),
                         sae, provider)
    recipe = (f"SAETrainer defaults: Adam {trainer.cfg.lr:g} {trainer.cfg.lr_scheduler_name}, clip 1, aux-k "
              f"after {trainer.cfg.dead_feature_window} silent steps, decoder init norm 0.1")
    if our_lr:
        trainer.lr_scheduler = our_schedule(trainer.optimizer, shape, cfg, data)
        recipe = "SAELens' SAETrainer and TopK SAE with our learning rate and schedule"

    def step(x: torch.Tensor, index: int) -> None:  # SAETrainer.fit's loop body, without logging
        trainer.maybe_reset_sparsity()
        fed.append(x)
        trainer.step(next(trainer.data_provider))
        trainer.n_training_steps += 1

    def export(folder: Path) -> SparseAutoencoder:
        trainer.sae.save_inference_model(folder)
        return to_sae(READERS["saelens"](folder, None))
    return Contender("saelens-our-lr" if our_lr else "saelens", step, export, recipe)


def make_sparsify(shape: Shape, cfg: QualityConfig, data: Data, *, our_lr: bool) -> Contender:
    # sparsify is an optional contender: imported only when it runs
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(shape.seed)
    sae = SparseCoder(shape.d_in, SparseCoderConfig(num_latents=shape.d_sae, k=shape.k), device="cpu",
                      dtype=torch.float32)
    if our_lr:
        optimizer = torch.optim.Adam(sae.parameters())  # sparsify's "adam" choice, at our rate and schedule
        scheduler = our_schedule(optimizer, shape, cfg, data)
        recipe = "sparsify's SparseCoder and loss with Adam at our learning rate and schedule"
    else:  # sparsify's Trainer defaults: signum, its width-scaled rate, no schedule
        lr = 5e-3 / (shape.d_sae / 2 ** 14) ** 0.5
        optimizer, scheduler = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]),
                                                   momentum=0.95), None
        optimizer.train()
        recipe = f"sparsify Trainer defaults: sign-SGD + schedule-free (momentum 0.95), lr {lr:.3g}, no aux-k"
    started = [False]

    def step(x: torch.Tensor, index: int) -> None:  # sparsify's Trainer.fit step, loss "fvu"
        if not started[0]:  # its first step: b_dec at the batch mean (pre-activations centred)
            sae.b_dec.data = x.mean(0)
            started[0] = True
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=None)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()

    def export(folder: Path) -> SparseAutoencoder:
        if scheduler is None:
            optimizer.eval()  # schedule-free: the averaged weights are the model (as sparsify saves them)
        hookpoint = folder / hook_names.to_sparsify(data.hook)
        sae.save_to_disk(hookpoint)
        if scheduler is None:
            optimizer.train()
        return to_sae(READERS["sparsify"](hookpoint, data.hook))
    return Contender("sparsify-our-lr" if our_lr else "sparsify", step, export, recipe)


def make(name: str, shape: Shape, cfg: QualityConfig, data: Data) -> Contender:
    if name == "ours":
        return make_ours(shape, cfg, data)
    if name.startswith("saelens"):
        return make_saelens(shape, cfg, data, our_lr=name.endswith("our-lr"))
    return make_sparsify(shape, cfg, data, our_lr=name.endswith("our-lr"))


# ---- training, round-robin --------------------------------------------------------------------------

@torch.no_grad()
def reconstruction(sae: SparseAutoencoder, x: torch.Tensor, rows: int = 4096) -> dict:
    """Raw-space FVU (variance around the mean of all rows), L0 and the latents that fired, over x (n, d_in)."""
    sq_err, fired, active = 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool), 0
    for start in range(0, len(x), rows):
        chunk = x[start:start + rows]
        out = sae(chunk)
        sq_err += float((chunk.double() - out.x_hat.double()).pow(2).sum())
        on = out.values > 0
        active += int(on.sum())
        fired[out.indices[on]] = True
    variance = float((x.double() - x.double().mean(0)).pow(2).sum())
    return {"fvu": sq_err / variance, "l0": active / len(x), "fired": fired}


def import_once(names: list[str]) -> None:
    """The process's one-time imports, paid before any clock starts: whichever contender was built first
    would carry them (every torch optimiser's constructor imports torch._dynamo, about 2 s here; sparsify's
    and SAELens' packages load on first use)."""
    import torch._dynamo  # noqa: F401
    if any(name.startswith("saelens") for name in names):
        import sae_lens  # noqa: F401
    if any(name.startswith("sparsify") for name in names):
        import schedulefree  # noqa: F401
        import sparsify  # noqa: F401


def train_round_robin(names: list[str], shape: Shape, cfg: QualityConfig, data: Data,
                      scratch: Path) -> tuple[dict[str, Contender], dict[str, dict]]:
    """Every contender trained on the same batches in the same order; returns them and their runs
    (curve points, step times, build time)."""
    share = RankShare(data.train, 0, 1, shape.seed)  # train.py's order for one process
    import_once(names)
    contenders, runs = {}, {}
    for name in names:
        gc.collect()
        start = time.perf_counter()
        contenders[name] = make(name, shape, cfg, data)
        runs[name] = {"build_s": time.perf_counter() - start, "step_s": [], "curve": [],
                      "recipe": contenders[name].recipe}
    batch = data.train[0].shape[0]
    gc.collect()
    gc.freeze()  # the long-lived objects (torch, the peers' modules) leave the collector: each step's collection stays short
    for step in range(shape.total_steps + 1):
        if step % cfg.eval_every == 0 or step == shape.total_steps:
            for name, c in contenders.items():
                seconds = runs[name]["build_s"] + sum(runs[name]["step_s"])
                fig = reconstruction(c.export(scratch / name), data.heldout)
                runs[name]["curve"].append({"step": step, "tokens": step * batch, "seconds": seconds,
                                            "fvu": fig["fvu"], "l0": fig["l0"]})
            log.info("step %d/%d: held-out FVU %s", step, shape.total_steps,
                     "  ".join(f"{n} {r['curve'][-1]['fvu']:.4f}" for n, r in runs.items()))
        if step == shape.total_steps:
            break
        index = share.index(step)
        x = data.train[index]
        for name, c in contenders.items():
            gc.collect()
            start = time.perf_counter()
            c.step(x, index)
            runs[name]["step_s"].append(time.perf_counter() - start)
    gc.unfreeze()
    for name, run in runs.items():
        run["last_indices"] = [share.index(s) for s in range(shape.total_steps)][-last_window(cfg, batch):]
    return contenders, runs


def last_window(cfg: QualityConfig, batch: int) -> int:
    return max(1, math.ceil(cfg.dead_after_tokens / batch))


def seconds_to(curve: list[dict], target: float) -> float | None:
    """Wall seconds at which the held-out FVU first reaches `target`, linear between curve points;
    None if it never does."""
    for before, point in zip([None] + curve[:-1], curve):
        if point["fvu"] <= target:
            if before is None or before["fvu"] == point["fvu"]:
                return point["seconds"]
            share = (before["fvu"] - target) / (before["fvu"] - point["fvu"])
            return before["seconds"] + share * (point["seconds"] - before["seconds"])
    return None


# ---- the one evaluator ------------------------------------------------------------------------------

def held_out_sentences(data: Data, n: int) -> tuple[list[list[int]], list[int]]:
    """Token lists of up to n sentences of the documents the prebatching held out, and the capture's prefix."""
    captured = CapturedData(data.capture)
    table = captured.sentences
    lines = np.flatnonzero(is_validation(table.docs, data.split["val_fraction"], data.split["seed"]))[:n]
    records = captured.read_sentences(lines.tolist())
    prefix = list(captured.manifest.get("context_prefix") or [])
    sentences = [records[i]["tokens"] for i in sorted(records)]
    return [s for s in sentences if len(s) >= (1 if prefix else 2)], prefix


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, data: Data, run: dict, loaded, cfg: QualityConfig,
             sentences: int) -> dict:
    """Every figure of one SAE, measured the same way for every contender."""
    held = reconstruction(sae, data.heldout)
    last = torch.cat([data.train[i] for i in run["last_indices"]])
    train_fired = reconstruction(sae, last)["fired"]
    steps = run["step_s"]
    figures = {"fvu": held["fvu"], "l0": held["l0"], "dead_train": 1 - float(train_fired.float().mean()),
               "dead_heldout": 1 - float(held["fired"].float().mean()), "dead_train_tokens": len(last),
               "heldout_tokens": len(data.heldout), "step_s_median": statistics.median(steps) if steps else 0.0,
               "step_s_mean": statistics.fmean(steps) if steps else 0.0,
               "seconds": run["build_s"] + sum(steps), "recipe": run["recipe"]}
    if loaded is not None and data.capture is not None and sentences:
        tokens, prefix = held_out_sentences(data, sentences)
        batches = left_padded_batches(tokens, batch_size=cfg.eval_batch_size, prefix=prefix,
                                      pad_id=loaded.tokenizer.pad_id or 0)
        lm = evaluate_sae(loaded.model, sae, data.hook, batches)
        figures.update({"ce_loss_recovered": lm["ce_loss_recovered"], "delta_lm_loss": lm["delta_lm_loss"],
                        "lm_tokens": lm["predicted_tokens"]})
    if data.capture is not None:
        figures.update(probe_figures(sae, data, cfg.probe_label))
    return figures


def probe_figures(sae: SparseAutoencoder, data: Data, label: str) -> dict:
    """k = 1 and k = 20 sparse-probe test AUROC for `label` (SAEBench's selection, latents/probes.py)."""
    captured = CapturedData(data.capture)
    features, _ = collect_heldout(captured, sae_encoder(sae), sae.cfg.d_sae,
                                  lambda docs: np.zeros(len(docs), dtype=bool))
    report = probe_report(features, captured.label_names, ks=(1, 20)) if captured.label_names else {}
    entry = report.get("labels", {}).get(label)
    if entry is None:
        return {}
    return {"probe_k1_auroc": entry["sparse"]["1"]["auroc"], "probe_k20_auroc": entry["sparse"]["20"]["auroc"],
            "probe_full_auroc": entry["full_mean"]}


# ---- the comparison, the frontier, the figures --------------------------------------------------------

def compare(cfg: QualityConfig, data: Data, loaded, names: list[str], k: int, epochs: float,
            scratch: Path, sentences: int) -> dict:
    d_in = data.train[0].shape[-1]
    share = RankShare(data.train, 0, 1, cfg.seed)
    shape = Shape(d_in=d_in, d_sae=cfg.d_sae or cfg.expansion * d_in, k=k,
                  total_steps=share.total_steps(epochs, cfg.max_steps), seed=cfg.seed)
    contenders, runs = train_round_robin(names, shape, cfg, data, scratch)
    rows = {}
    for name, c in contenders.items():
        rows[name] = evaluate(c.export(scratch / name), data, runs[name], loaded, cfg, sentences)
        log.info("%s: %s", name, ", ".join(f"{key} {value:.4g}" for key, value in rows[name].items()
                                           if isinstance(value, float)))
    return {"shape": asdict(shape), "tokens": shape.total_steps * data.train[0].shape[0], "rows": rows,
            "curves": {name: run["curve"] for name, run in runs.items()}}


def best_peer(rows: dict) -> str | None:
    peers = [name for name in rows if name != "ours"]
    return min(peers, key=lambda n: rows[n]["fvu"]) if peers else None


def summary_line(result: dict) -> str:
    rows, curves = result["rows"], result["curves"]
    peer = best_peer(rows)
    if "ours" not in rows or peer is None:
        return "quality: needs ours and at least one peer"
    a, b = rows["ours"]["fvu"], rows[peer]["fvu"]
    # the curve's last point is the same SAE as the row, up to the rounding of an export (schedule-free
    # optimisers swap their averaged weights in and out): a relative 1e-5 absorbs it
    s1, s2 = seconds_to(curves["ours"], b * (1 + 1e-5)), seconds_to(curves[peer], b * (1 + 1e-5))
    ours_s = f"{s1:.1f} s" if s1 is not None else "not reached"
    peer_s = f"{s2:.1f} s" if s2 is not None else "not reached"
    speedup = f"{s2 / s1:.2f}" if s1 and s2 else "n/a"
    return (f"quality: ours fvu {a:.4f}, best peer fvu {b:.4f} ({peer}), ratio {a / b:.3f}; "
            f"time to {b:.4f}: ours {ours_s}, {peer} {peer_s}, speedup {speedup}")


def run_frontier(cfg: QualityConfig, data: Data, loaded, peer: str | None, scratch: Path) -> dict:
    names = ["ours"] + ([peer] if peer else [])
    epochs = cfg.frontier_epochs or cfg.epochs
    points = {name: [] for name in names}
    for k in cfg.frontier_ks:
        result = compare(cfg, data, loaded, names, k, epochs, scratch, cfg.eval_sentences)
        for name in names:
            row = result["rows"][name]
            points[name].append({"k": k, "l0": row["l0"], "fvu": row["fvu"], "dead_train": row["dead_train"],
                                 "ce_loss_recovered": row.get("ce_loss_recovered"), "seconds": row["seconds"]})
    return {"epochs": epochs, "tokens": result["tokens"], "d_sae": result["shape"]["d_sae"], "points": points}


def draw(result: dict, out: Path) -> list[Path]:
    """curves.png (FVU against tokens and against wall seconds) and frontier.png; needs matplotlib."""
    import matplotlib  # optional: imported only when figures are asked for
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    if "main" in result:
        drawn.append(draw_curves(result["main"], out / "curves.png", plt))
    if result.get("frontier"):
        drawn.append(draw_frontier(result["frontier"], out / "frontier.png", plt))
    return drawn


def draw_curves(main: dict, path: Path, plt) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in main["curves"].items():
        points = [p for p in curve if p["step"] > 0]
        for ax, x in zip(axes, ("tokens", "seconds")):
            ax.plot([p[x] for p in points], [p["fvu"] for p in points], marker=".", label=name)
    for ax, label in zip(axes, ("training tokens", "wall seconds (construction included)")):
        ax.set_xlabel(label)
        ax.set_ylabel("held-out FVU (log scale)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    shape = main["shape"]
    axes[0].legend()
    fig.suptitle(f"d_sae {shape['d_sae']}, k {shape['k']}, {main['tokens']:,} tokens, same batches in the same order")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_frontier(frontier: dict, path: Path, plt) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in frontier["points"].items():
        l0 = [p["l0"] for p in points]
        axes[0].plot(l0, [p["fvu"] for p in points], marker="o", label=name)
        axes[1].plot(l0, [p["ce_loss_recovered"] for p in points], marker="o", label=name)
        for p in points:
            axes[0].annotate(f"k={p['k']}", (p["l0"], p["fvu"]), fontsize=7)
    axes[0].set_yscale("log")
    for ax, label in zip(axes, ("held-out FVU (log scale)", "CE loss recovered")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L0 (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"frontier: d_sae {frontier['d_sae']}, {frontier['tokens']:,} tokens per run")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


COLUMNS = (("fvu", "held-out FVU", "{:.4f}"), ("l0", "L0", "{:.1f}"), ("dead_train", "dead (last train tokens)",
           "{:.2%}"), ("dead_heldout", "dead (held-out)", "{:.2%}"), ("ce_loss_recovered", "CE loss recovered",
           "{:.4f}"), ("delta_lm_loss", "delta LM loss", "{:.4f}"), ("probe_k1_auroc", "probe k=1 AUROC",
           "{:.3f}"), ("probe_k20_auroc", "probe k=20 AUROC", "{:.3f}"), ("step_s_median", "s / step (median)",
           "{:.3f}"), ("seconds", "wall s", "{:.1f}"))


def table(rows: dict) -> list[list[str]]:
    """The comparison as text cells: a header row, then one row per contender."""
    out = [["trainer"] + [title for _, title, _ in COLUMNS]]
    for name, row in rows.items():
        out.append([name] + [fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS])
    return out


def write_page(result: dict, images: list[Path], out: Path) -> Path:
    cells = table(result["main"]["rows"])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    pictures = "".join(f'<p><img alt="{p.stem}" src="data:image/png;base64,'
                       f'{base64.b64encode(p.read_bytes()).decode()}"></p>' for p in images)
    recipes = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(r['recipe'])}</li>"
                      for n, r in result["main"]["rows"].items())
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>SAE quality</title><style>"
            f"body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:3px 8px}}"
            f"table{{border-collapse:collapse}}</style></head><body><h1>Which trainer makes the better SAE</h1>"
            f"<p><code>{html.escape(result['line'])}</code></p><table><tr>{head}</tr>{body}</table>"
            f"<ul>{recipes}</ul>{pictures}</body></html>\n")
    write_text_atomic(out / "index.html", page)
    return out / "index.html"


def main(cfg: QualityConfig | None = None) -> dict:
    cfg = cfg or cli.parse_config(QualityConfig, __doc__.split("\n\n")[0])[0]
    keep_freed_memory()  # as train.py sets on a CPU; process-wide, so the peers get it too
    data = open_data(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = None
    if data.capture is not None and cfg.eval_sentences:
        loaded = startup.load_model(cfg.model, device=CPU)
    machine = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    result = {"config": asdict(cfg), "machine": machine}
    with tempfile.TemporaryDirectory(prefix="sae-quality-") as tmp:
        if not cfg.frontier_only:
            result["main"] = compare(cfg, data, loaded, list(dict.fromkeys(cfg.contenders)), cfg.k, cfg.epochs,
                                     Path(tmp), cfg.eval_sentences)
            result["line"] = summary_line(result["main"])
        if cfg.frontier_ks:
            peer = cfg.frontier_peer or best_peer(result["main"]["rows"])
            result["frontier"] = run_frontier(cfg, data, loaded, peer, Path(tmp))
    write_json_atomic(out / "results.json", result)
    if "main" in result:
        print("\n" + "\n".join(" | ".join(row) for row in table(result["main"]["rows"])))
    if cfg.figures:
        images = draw(result, out)
        if "main" in result:
            log.info("page: %s", write_page(result, images, out))
    if "line" in result:
        print(result["line"])
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cli.run_main(main)
