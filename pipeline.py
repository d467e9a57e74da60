"""The whole pipeline in one command: capture -> prebatch -> train -> interpret -> steered generation.

    python pipeline.py                       # the embedded model and corpus, a slice sized for ~15 min on 2 cores
    python pipeline.py --sample-fraction 1 --max-total-tokens 0 --runs runs/full   # the whole corpus

Each stage runs its own script (capture.py, train.py, interpret.py, generate.py) as a subprocess, with
its own config built from the flags below (written to <runs>/stages/ as the JSON the script reads with
--config); every stage's settings are checked before the first starts. A stage is skipped when its
output is already there; an interrupted run picks up where it stopped (capture and train resume from their own checkpoints). At the end the latent most associated
with --label (by AUROC of its sentence-level activation) is steered into --prompt, and the steered and
unsteered completions are printed side by side. A summary goes to <runs>/pipeline.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cli
import paths
import startup
from atomic import write_text_atomic
from capture import CaptureConfig
from generate import GenerateConfig
from interpret import InterpretConfig
from latents.sweep import choose
from latents.text import shorten
from sae.config import SAEConfig
from training.config import TrainConfig

log = logging.getLogger("pipeline")
ROOT = Path(__file__).resolve().parent


def borrowed(cls: type, name: str, **override: Any) -> Any:
    """The field `name` of a stage's config dataclass, its help text and default reused (`default=` to
    give the pipeline its own default): the pipeline's flags mean exactly what the stage's mean."""
    source = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = override.get("default", source.default)
    if default is dataclasses.MISSING:
        return field(default_factory=source.default_factory, metadata=source.metadata)
    return field(default=default, metadata=source.metadata)


@dataclass
class PipelineConfig:
    runs: str = field(default=str(paths.RUNS), metadata={"help": "root folder of the run (capture/, batches/, "
                                                                 "train/, interpret/ inside)"})
    model: str = borrowed(CaptureConfig, "model")
    model_dtype: str = startup.model_dtype_field()
    data: str = borrowed(CaptureConfig, "data")
    label_field: str = borrowed(CaptureConfig, "label_field")
    hook: str = field(default=paths.DEFAULT_HOOK, metadata={"help": "hook point to capture and train on"})
    sample_fraction: float = borrowed(CaptureConfig, "sample_fraction", default=0.12)
    max_total_tokens: int = borrowed(CaptureConfig, "max_total_tokens")
    expansion: int = borrowed(TrainConfig, "expansion", default=8)
    k: int = borrowed(SAEConfig, "k", default=64)
    epochs: float = borrowed(TrainConfig, "epochs")
    max_latents: int = borrowed(InterpretConfig, "max_latents", default=1024)
    eval_sentences: int = borrowed(InterpretConfig, "eval_sentences", default=200)
    label: str = field(default="negative", metadata={"help": "steer toward this label: the latent and value are "
                                                             "chosen by a sweep (generate.py --sweep) among the "
                                                             "latents most associated with it"})
    candidates: int = field(default=3, metadata={"help": "latents swept (the most associated with --label by AUROC)"})
    steer_scale: float = field(default=4.0, metadata={"help": "largest swept value as a multiple of the latent's "
                                                              "largest activation in the data"})
    sweep_steps: int = field(default=4, metadata={"help": "swept values per latent: TOP/STEPS, 2 TOP/STEPS, ..., "
                                                          "TOP (TOP = --steer-scale x its largest activation)"})
    prompt: str = field(default="I think the new phone is", metadata={"help": "prompt of the steering demo"})
    max_new_tokens: int = borrowed(GenerateConfig, "max_new_tokens", default=32)
    seed: int = field(default=0, metadata={"help": "seed of the SAE's training (initialisation, batch order)"})
    device: str = startup.device_field()

    def __post_init__(self):
        for name in ("candidates", "sweep_steps"):
            if getattr(self, name) < 1:
                raise cli.UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if not self.steer_scale > 0:
            raise cli.UsageError(f"--steer-scale {self.steer_scale}: must be > 0")


def stage_configs(cfg: PipelineConfig, folders: dict[str, Path]) -> dict[str, Any]:
    """Each stage's own config, built (and so validated) before the first stage starts."""
    startup.resolve_device(cfg.device)  # a device this machine lacks is refused now, not after a capture
    if cfg.data and not Path(cfg.data).exists():
        raise FileNotFoundError(f"--data {cfg.data}: no such file or folder")
    sae_dir = folders["train"] / "sae"
    model = {"model": cfg.model, "model_dtype": cfg.model_dtype, "device": cfg.device}
    return {
        # BOS first: it takes the first position's massive activation (norm ~25,000 against ~240 at layer
        # 20), and it is never stored, so it cannot dominate the SAE's normalisation or grow sink latents.
        "capture": CaptureConfig(**model, data=cfg.data, label_field=cfg.label_field, hooks=[cfg.hook],
                                 out=str(folders["capture"]), sample_fraction=cfg.sample_fraction,
                                 max_total_tokens=cfg.max_total_tokens, prebatch=True,
                                 batches_out=str(folders["batches"]), bos=True, invalid_text="skip"),
        "train": TrainConfig.of(data=str(folders["batches"] / cfg.hook), out=str(folders["train"]),
                                expansion=cfg.expansion, k=cfg.k, epochs=cfg.epochs, seed=cfg.seed, resume=True,
                                device=cfg.device),
        "interpret": InterpretConfig(**model, sae=str(sae_dir), capture_dir=str(folders["capture"] / cfg.hook),
                                     out=str(folders["interpret"]), max_latents=cfg.max_latents,
                                     eval_sentences=cfg.eval_sentences, batches_dir=str(folders["batches"])),
        "generate": GenerateConfig(**model, sae=str(sae_dir), label=cfg.label, max_new_tokens=cfg.max_new_tokens,
                                   explanations=str(folders["interpret"] / "latent_index_meaning.json")),
    }


def main(cfg: PipelineConfig) -> int:
    runs = Path(cfg.runs)
    folders = {name: runs / name for name in ("capture", "batches", "train", "interpret", "stages")}
    configs = stage_configs(cfg, folders)  # every stage's settings checked before any work
    env = {**os.environ, "LLAMA_SAE_RUNS": str(runs)}  # the scripts' defaults follow this run's folders
    last_ran = previous_timings(runs / "pipeline.json")
    timings: dict[str, float] = {}  # this invocation's stages only: skipped ones are listed apart
    skipped: list[str] = []
    start = time.perf_counter()
    run = functools.partial(stage, timings=timings, skipped=skipped, env=env, stages=folders["stages"])
    run("capture + prebatch", folders["batches"] / cfg.hook / "batches.json", "capture.py", configs["capture"])
    run("train", folders["train"] / "sae" / "config.json", "train.py", configs["train"])
    run("interpret", folders["interpret"] / "latent_index_meaning.json", "interpret.py", configs["interpret"])
    latents = sentiment_latents(folders["interpret"], cfg.label, n=max(cfg.candidates, 5))
    report = summary(folders, latents, cfg.label, runs / "train")
    if latents:
        report["steering"] = steering_demo(cfg, folders, configs["generate"], run, latents[:cfg.candidates])
    else:
        log.info("no latent carries label statistics for %r: skipping the steering demo", cfg.label)
    timings["total"] = round(time.perf_counter() - start, 1)  # this invocation
    earlier = {name: last_ran[name] for name in skipped if name in last_ran}
    report.update(config=dataclasses.asdict(cfg), seconds=timings, skipped=skipped, earlier_seconds=earlier)
    write_text_atomic(runs / "pipeline.json", json.dumps(report, indent=1, default=str) + "\n")
    log.info("%s", stage_times_line(timings, skipped, earlier))
    log.info("summary: %s; pages: %s", runs / "pipeline.json", folders["interpret"] / "index.html")
    return 0


def steering_demo(cfg: PipelineConfig, folders: dict[str, Path], generate: GenerateConfig,
                  run: Callable[..., str], candidates: list[dict]) -> dict:
    """Sweep each candidate latent (generate.py --sweep), choose the latent and value that moved the
    judge toward --label on the most prompts within the fluency bound, and show it on --prompt."""
    sweeps = []
    for row in candidates:
        top = round(cfg.steer_scale * row["max"], 2)
        out = folders["interpret"] / f"sweep-{row['latent']}.json"
        sweep = f"{row['latent']}:{top / cfg.sweep_steps:.4g}:{top:.4g}:{cfg.sweep_steps}"
        run(f"sweep {row['latent']}", None, "generate.py",
            dataclasses.replace(generate, sweep=sweep, sweep_json=str(out)))
        sweeps.append(json.loads(out.read_text()))
    chosen = choose(sweeps)
    if chosen is None:
        print(f"no swept value moved the judge toward {cfg.label!r} within the fluency bound; see the tables above")
        return {"sweeps": sweeps, "chosen": None}
    latent, row = chosen
    steer = f"{latent}:{row['value']:.4g}"
    command = ["generate.py", "--sae", generate.sae, "--steer", steer, "--compare", "--max-new-tokens",
               str(cfg.max_new_tokens), "--explanations", generate.explanations, json.dumps(cfg.prompt)]
    print(f"\nchosen by the sweep: latent {latent} at {row['value']:.4g} (judge {row['shift']:+.3f} toward "
          f"{cfg.label!r} on average, higher on {row['moved']} of {len(row['texts'])} prompts, perplexity "
          f"{row['ppl_ratio']:.2f}x the unsteered)\n    python {' '.join(command)}")
    output = run("steered generation", None, "generate.py",
                 dataclasses.replace(generate, steer=[steer], compare=True, prompts=[cfg.prompt]), capture=True)
    chosen_row = {**row, "latent_activation": row["latent"], "latent": latent}  # the row's "latent" is its mean
    return {"sweeps": sweeps, "chosen": chosen_row, "command": "python " + " ".join(command),
            "prompt": cfg.prompt, "output": output}


def stage(name: str, done: Path | None, script: str, config: Any, *, timings: dict, skipped: list, env: dict,
          stages: Path, capture: bool = False) -> str:
    """Run `script --config <its config as JSON>` unless `done` exists (then its name goes to `skipped`);
    its output streams to the terminal (and is returned if `capture`). A failing stage stops the pipeline
    with a one-line error."""
    config_file = stages / f"{name.replace(' ', '-').replace('+', 'and')}.json"
    if done is not None and done.exists():
        check_unchanged(name, done, config, config_file)
        log.info("== %s: already done (%s), skipped", name, done)
        skipped.append(name)
        return ""
    stages.mkdir(parents=True, exist_ok=True)
    cli.save_config(config, config_file)
    argv = [script, "--config", str(config_file)]
    log.info("== %s: python %s", name, " ".join(argv))
    began = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE if capture else None)
    timings[name] = round(time.perf_counter() - began, 1)
    if capture and result.stdout:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed (exit code {result.returncode}, its error is above); fix it and "
                           f"rerun `python pipeline.py`: finished stages are skipped")
    return result.stdout or ""


def previous_timings(path: Path) -> dict[str, float]:
    """Each stage's time when it last ran, from the previous pipeline.json: its own run's stages, and
    for the stages it skipped the times it carried from the runs before (so a second rerun still
    knows how long the capture took)."""
    try:
        report = json.loads(path.read_text())
        times = {**(report.get("earlier_seconds") or {}), **report["seconds"]}
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return {}
    return {name: value for name, value in times.items() if name != "total" and isinstance(value, (int, float))}


def check_unchanged(name: str, done: Path, config: Any, config_file: Path) -> None:
    """A finished stage is reused only with the settings it was made with (its saved stage config): changed
    flags or defaults stop the run in one line instead of silently reusing a result made otherwise."""
    if not config_file.is_file():
        return  # made before stage configs were kept: nothing to compare with
    before = _flat(json.loads(config_file.read_text()))
    now = _flat(json.loads(json.dumps(dataclasses.asdict(config), default=str)))
    changed = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if changed:
        shown = ", ".join(f"{key} {before.get(key)} -> {now.get(key)}" for key in changed[:3])
        raise cli.UsageError(f"{name}: {done} was made with other settings ({shown}); pass --runs with a new "
                             f"folder, or delete {done.parent} to redo it")


def _flat(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stage_times_line(timings: dict[str, float], skipped: list[str], earlier: dict[str, float]) -> str:
    """One line of stage times in which every figure says which run it is from: the skipped stages (with
    the time they took when they last ran, where known), then this run's stages and its total."""
    done = [f"{name} skipped" + (f" (took {earlier[name]:.0f} when it ran)" if name in earlier else "")
            for name in skipped]
    ran = [f"{name} {seconds:.0f}" for name, seconds in timings.items() if name != "total"]
    return (f"stage times (s): {', '.join(done + ran) or 'none'}; total this run {timings.get('total', 0):.0f}"
            + (" (skipped stages not included)" if skipped else ""))


def sentiment_latents(interpret_dir: Path, label: str, n: int = 5) -> list[dict]:
    """The n explained latents whose activation best separates `label` from the other labels (AUROC)."""
    rows = []
    for path in sorted((interpret_dir / "latents").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        auroc = next((row["auroc"] for row in record.get("labels", []) if row["label"] == label), None)
        if auroc is not None and record.get("max"):
            meaning = record.get("explanations", {})
            text = (meaning.get("llm") or meaning.get("offline") or {}).get("common_semantic", "")
            rows.append({"latent": record["latent"], "auroc": auroc, "max": float(record["max"]),
                         "density": record.get("density"), "explanation": text})
    return sorted(rows, key=lambda r: -r["auroc"])[:n]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def summary(folders: dict[str, Path], latents: list[dict], label: str, train_dir: Path) -> dict:
    """Print and return the SAE's evaluation, the label probes and the latents most associated with `label`."""
    evaluation = read_json(folders["interpret"] / "evaluation.json")
    shown = {k: evaluation[k] for k in ("fvu", "l0", "ce_loss_recovered", "delta_lm_loss") if k in evaluation}
    print("\nSAE evaluation on held-out text: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else
                                                           f"{k} {v}" for k, v in shown.items()))
    dead = dead_latents(train_dir, folders["interpret"], evaluation)
    if dead:
        print(dead)
    probes = read_json(folders["interpret"] / "probes.json")
    entry = probes.get("labels", {}).get(label)
    if entry:
        sparse = ", ".join(f"k={k} {v['auroc']:.3f}" for k, v in entry["sparse"].items())
        print(f"probes for {label!r} (AUROC on {probes['test_sentences']} sentences of held-out documents): full "
              f"probe on the raw activation {entry['full_mean']:.3f} (sentence mean), {entry['full_last']:.3f} "
              f"(last token); k-sparse probes on SAE latents: {sparse}")
    print(f"latents most associated with {label!r} (AUROC of sentence-level activation):")
    for row in latents:
        print(f"  {row['latent']:>6}  AUROC {row['auroc']:.3f}  max {row['max']:.2f}  {shorten(row['explanation'], 70)}")
    return {"evaluation": evaluation, "probes": probes, "label": label, "latents": latents}


def dead_latents(train_dir: Path, interpret_dir: Path, evaluation: dict) -> str:
    """One line: the latents that did not fire over the training data first (the trainer's count, over
    its last dead_after_tokens activations; when training was shorter than that window, the count of
    latents that never fired over the whole capture), then the held-out figure under its own name."""
    last = {}
    if (train_dir / "metrics.jsonl").is_file():
        for line in (train_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            last = record if record.get("split") == "train" else last
    d_sae = read_json(train_dir / "sae" / "config.json").get("d_sae")
    window = read_json(train_dir / "config.json").get("dead_after_tokens") or 0
    stats = read_json(interpret_dir / "stats.json")
    parts = []
    if "dead_fraction" in last and d_sae and last.get("tokens", 0) >= window:
        parts.append(f"dead latents (did not fire over the last {window:,} training activations, the trainer's "
                     f"count): {round(last['dead_fraction'] * d_sae)} of {d_sae} ({last['dead_fraction']:.1%})")
    elif "dead" in stats and stats.get("d_sae"):
        parts.append(f"dead latents (never fired over all {stats['rows']:,} captured activations, the training "
                     f"data included): {stats['dead']} of {stats['d_sae']} ({stats['dead'] / stats['d_sae']:.1%})")
    if "unfired_fraction_held_out" in evaluation:
        parts.append(f"not firing on the {evaluation.get('tokens', 'held-out')} held-out evaluation tokens: "
                     f"{evaluation['unfired_fraction_held_out']:.1%}")
    return "; ".join(parts)


def cli_main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg, _ = cli.parse_config(PipelineConfig, __doc__.split("\n\n")[0], argv)
    try:
        return main(cfg)
    except RuntimeError as err:
        raise cli.UsageError(str(err)) from None


if __name__ == "__main__":
    cli.run_main(cli_main)
