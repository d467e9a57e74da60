"""The whole pipeline in one command: capture -> prebatch -> train -> interpret -> steered generation.

    python pipeline.py                       # the embedded model and corpus, a slice sized for ~15 min on 2 cores
    python pipeline.py --sample-fraction 1 --max-total-tokens 0 --runs runs/full   # the whole corpus

Each stage runs its own script (capture.py, train.py, interpret.py, generate.py) as a subprocess, with
its own config built from the flags below (written to <runs>/stages/ as the JSON the script reads with
--config); every stage's settings are checked before the first starts. A stage is skipped when its
record says it is done (<runs>/stages/<stage>.done.json, written last: its outputs' sizes and hashes, its
settings, the identities of what it read); a stage whose outputs were damaged is run again, one that reads
a stage whose outputs have changed (a recapture, a new SAE) is redone, and a changed setting stops the run
in one line naming the folders to delete. An interrupted run picks up where it stopped (capture and train
resume from their own checkpoints, or start over when what they read has changed since). At the end the
latent most associated with --label (by AUROC of its sentence-level activation) is steered into --prompt,
and the steered and unsteered completions are printed side by side. A summary goes to <runs>/pipeline.json.
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
import records
import run_folder
import startup
from atomic import write_json_atomic, write_text_atomic
from capture import CaptureConfig
from generate import GenerateConfig
from interpret import InterpretConfig
from latents.sweep import MAX_SWEEP_STEPS, choose
from latents.text import shorten
from llama import jsonfile
from llama.loading import open_checkpoint
from sae.config import SAEConfig
from settings import SettingError, check_int, check_number
from training.config import TrainConfig

log = logging.getLogger("pipeline")
ROOT = Path(__file__).resolve().parent
# The sweep's largest value is --steer-scale x the latent's largest activation: far beyond ~10 the text
# is gibberish, and near 1e308 the value is no longer a finite number.
MAX_STEER_SCALE = 100.0


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
        check_int("candidates", self.candidates, 1)
        check_int("sweep_steps", self.sweep_steps, 1, MAX_SWEEP_STEPS)
        check_number("steer_scale", self.steer_scale, 0, MAX_STEER_SCALE)
        if self.steer_scale == 0:
            raise SettingError("steer_scale", 0, "must be greater than 0")
        if not self.prompt.strip():
            raise SettingError("prompt", self.prompt, "give some text to continue")


def stage_configs(cfg: PipelineConfig, folders: dict[str, Path]) -> dict[str, Any]:
    """Each stage's own config, built (and so validated) before the first stage starts."""
    startup.resolve_device(cfg.device)  # a device this machine lacks is refused now, not after a capture
    if cfg.data and not Path(cfg.data).exists():
        raise FileNotFoundError(f"--data {cfg.data}: no such file or folder")
    with cli.settings_as_flags():  # a stage's field is the pipeline flag of the same name
        context = model_context(cfg.model)
        if context and cfg.max_new_tokens >= context:  # the demo's prompts take a few tokens more
            raise SettingError("max_new_tokens", cfg.max_new_tokens, f"must leave room for the prompt in the "
                                                                     f"model's context of {context} tokens")
        return _stage_configs(cfg, folders)


def model_context(model_flag: str) -> int | None:
    """The model's context length from its header alone; None when it cannot be read (the capture says why)."""
    try:
        return open_checkpoint(Path(model_flag) if model_flag else paths.default_model_path()).args.max_seq_len
    except Exception:  # noqa: BLE001 - any unreadable header: the capture stage reports it
        return None


def _stage_configs(cfg: PipelineConfig, folders: dict[str, Path]) -> dict[str, Any]:
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


@run_folder.releases_locks
def main(cfg: PipelineConfig) -> int:
    runs = Path(cfg.runs)
    folders = {name: runs / name for name in ("capture", "batches", "train", "interpret", "stages", "steering")}
    configs = stage_configs(cfg, folders)  # every stage's settings checked before any work
    run_folder.claim(runs, run_folder.PIPELINE, "--runs")  # one pipeline per --runs; its stages lock their own
    env = {**os.environ, "LLAMA_SAE_RUNS": str(runs)}  # the scripts' defaults follow this run's folders
    last_ran = previous_timings(runs / "pipeline.json")
    timings: dict[str, float] = {}  # this invocation's stages only: skipped ones are listed apart
    skipped: list[str] = []
    start = time.perf_counter()
    run = functools.partial(run_script, timings=timings, env=env, stages=folders["stages"])
    recorded = recorded_stages(cfg, folders, configs)
    check_unchanged(recorded, runs)  # a changed setting stops the run before any stage runs
    identities: dict[str, str] = {}
    for step in recorded:
        identities[step.name] = stage(step, runs, identities, run=run, skipped=skipped)
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


@dataclass(frozen=True)
class Stage:
    """A stage that is done only when its record says so: `<runs>/stages/<name>.done.json`, written after
    the script has finished, with the sizes and hashes of its outputs, its settings and the identities of
    the stages it read (records.py)."""
    name: str
    script: str
    config: Any
    stages: Path
    """The folder of the stage configs and records."""
    folders: tuple[Path, ...]
    """Everything it writes: deleting these redoes it (with new settings)."""
    outputs: tuple[Path, ...]
    """What later stages read: checked against the record on a rerun; their hash is the stage's identity."""
    after: tuple[str, ...] = ()
    """The stages it reads: when one of them changed, it is redone."""
    fresh: Callable[[Any], Any] | None = None
    """Its config for starting over when a stage it reads changed (None: the script redoes it as it is)."""

    @property
    def record_path(self) -> Path:
        return self.config_path.with_suffix(".done.json")

    @property
    def started_path(self) -> Path:
        """The identities of what it read, written before it starts (for a run cut short)."""
        return self.config_path.with_suffix(".started.json")

    @property
    def config_path(self) -> Path:
        return config_file(self.stages, self.name)


def config_file(stages: Path, name: str) -> Path:
    """Where a stage's config is written for its script to read."""
    return stages / f"{name.replace(' ', '-').replace('+', 'and')}.json"


def recorded_stages(cfg: PipelineConfig, folders: dict[str, Path], configs: dict[str, Any]) -> list[Stage]:
    """capture + prebatch -> train -> interpret, each with what it writes and what it reads."""
    hook, stages = cfg.hook, folders["stages"]
    return [
        Stage("capture + prebatch", "capture.py", configs["capture"], stages,
              folders=(folders["capture"], folders["batches"]),
              outputs=(folders["capture"] / hook, folders["batches"] / hook)),
        # other data: the checkpoints in train/ are for the old data, so the run starts over
        Stage("train", "train.py", configs["train"], stages, folders=(folders["train"],),
              outputs=(folders["train"] / "sae",), after=("capture + prebatch",),
              fresh=lambda c: dataclasses.replace(c, resume=False, overwrite=True)),
        Stage("interpret", "interpret.py", configs["interpret"], stages, folders=(folders["interpret"],),
              outputs=(folders["interpret"],), after=("capture + prebatch", "train")),
    ]


def steering_demo(cfg: PipelineConfig, folders: dict[str, Path], generate: GenerateConfig,
                  run: Callable[..., str], candidates: list[dict]) -> dict:
    """Sweep each candidate latent (generate.py --sweep), choose the latent and value that moved the
    judge toward --label on the most prompts within the fluency bound, and show it on --prompt."""
    sweeps = []
    folders["steering"].mkdir(parents=True, exist_ok=True)
    for row in candidates:
        top = round(cfg.steer_scale * row["max"], 2)
        out = folders["steering"] / f"sweep-{row['latent']}.json"  # not in interpret/: its record lists that
        sweep = f"{row['latent']}:{top / cfg.sweep_steps:.4g}:{top:.4g}:{cfg.sweep_steps}"
        run(f"sweep {row['latent']}", "generate.py",
            dataclasses.replace(generate, sweep=sweep, sweep_json=str(out)))
        sweeps.append(jsonfile.read_json(out, expect=dict))
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
    output = run("steered generation", "generate.py",
                 dataclasses.replace(generate, steer=[steer], compare=True, prompts=[cfg.prompt]), capture=True)
    chosen_row = {**row, "latent_activation": row["latent"], "latent": latent}  # the row's "latent" is its mean
    return {"sweeps": sweeps, "chosen": chosen_row, "command": "python " + " ".join(command),
            "prompt": cfg.prompt, "output": output}


def stage(step: Stage, runs: Path, identities: dict[str, str], *, run: Callable[..., str],
          skipped: list) -> str:
    """Run `step` unless its record shows it done from the current inputs with intact outputs (then its
    name goes to `skipped`); write its record after it ran. Returns its identity."""
    record = records.read_record(step.record_path)
    action, why = verdict(step, record, runs, {name: identities[name] for name in step.after})
    if action == "skip":
        log.info("== %s: already done (%s), skipped", step.name, step.record_path)
        skipped.append(step.name)
        return record["identity"]
    if why:
        log.info("== %s: redone: %s", step.name, why)
    step.record_path.unlink(missing_ok=True)  # not done until the new record is written
    inputs = {name: identities[name] for name in step.after}
    step.stages.mkdir(parents=True, exist_ok=True)
    write_json_atomic(step.started_path, {"inputs": inputs})
    config = step.fresh(step.config) if action == "fresh" and step.fresh else step.config
    run(step.name, step.script, config)
    names = records.files_under(runs, step.outputs)
    if not names:  # a record of nothing would prove nothing
        raise RuntimeError(f"{step.name} finished without writing {' or '.join(map(str, step.outputs))}; "
                           f"see its output above")
    made = records.write_record(step.record_path, runs, names, stage=step.name, settings=settings_of(step.config),
                                inputs=inputs)
    step.started_path.unlink()
    return made["identity"]


def verdict(step: Stage, record: dict | None, runs: Path, inputs: dict[str, str]) -> tuple[str, str]:
    """("skip", ""), ("run", why) or ("fresh", why): run the stage's script as configured (it resumes
    its own work), or start over because a stage it reads has changed."""
    if record is None:  # never finished: its script resumes, unless what it reads changed since it started
        started = records.read_json(step.started_path) or {}
        if "inputs" in started and started["inputs"] != inputs and any(f.exists() for f in step.folders):
            return "fresh", "what it reads has changed since it was started"
        return "run", ""
    if not any(folder.exists() for folder in step.folders):
        return "run", "its outputs were deleted"
    changed = [name for name in step.after if (record.get("inputs") or {}).get(name) != inputs[name]]
    if changed:
        return "fresh", f"{' and '.join(changed)} changed since it ran"
    damaged = records.problems(record, runs)
    if damaged:
        return "run", f"its outputs changed since it ran ({'; '.join(damaged[:3])})"
    return "skip", ""


def run_script(name: str, script: str, config: Any, *, timings: dict, env: dict, stages: Path,
               capture: bool = False) -> str:
    """Run `script --config <its config as JSON>`; its output streams to the terminal (and is returned if
    `capture`). A failing stage stops the pipeline with a one-line error."""
    path = config_file(stages, name)
    stages.mkdir(parents=True, exist_ok=True)
    cli.save_config(config, path)
    argv = [script, "--config", str(path)]
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
        report = jsonfile.read_json(path, expect=dict)
        times = {**(report.get("earlier_seconds") or {}), **report["seconds"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {name: value for name, value in times.items() if name != "total" and isinstance(value, (int, float))}


def check_unchanged(steps: list[Stage], runs: Path) -> None:
    """A stage's results are reused only with the settings they were made with (its record's, or for a
    stage cut short the config it was started with): changed flags or defaults stop the run in one line
    that names them and the folders to delete to redo those stages (the stages after them are then redone
    too, since what they read has changed)."""
    changed, delete = [], []
    for step in steps:
        present = [folder for folder in step.folders if folder.exists()]
        record = records.read_record(step.record_path)
        before = record.get("settings") if record else _saved_settings(step.config_path)
        if not present or before is None:
            continue
        now = settings_of(step.config)
        keys = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
        if keys:
            shown = ", ".join(f"{key} {before.get(key)} -> {now.get(key)}" for key in keys[:3])
            changed.append(f"{step.name} was made with other settings ({shown})")
            delete += present
    if changed:
        raise cli.UsageError(f"{'; '.join(changed)}: to redo with the new settings delete "
                             f"{' and '.join(str(folder) for folder in delete)} (the stages after are redone), "
                             f"or pass --runs with a new folder")


def settings_of(config: Any) -> dict:
    """A stage config's settings, flat, as JSON holds them; without resume and overwrite, which the
    pipeline chooses itself."""
    flat = _flat(json.loads(json.dumps(dataclasses.asdict(config), default=str)))
    return {key: value for key, value in flat.items() if key not in ("resume", "overwrite")}


def _saved_settings(config_file: Path) -> dict | None:
    try:
        saved = jsonfile.read_json(config_file)
    except (OSError, ValueError):
        return None
    flat = _flat(saved) if isinstance(saved, dict) else {}
    return {key: value for key, value in flat.items() if key not in ("resume", "overwrite")}


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
        record = jsonfile.read_json(path, "rerun interpret.py", expect=dict)
        auroc = next((row["auroc"] for row in record.get("labels", []) if row["label"] == label), None)
        if auroc is not None and record.get("max"):
            meaning = record.get("explanations", {})
            text = (meaning.get("llm") or meaning.get("offline") or {}).get("common_semantic", "")
            rows.append({"latent": record["latent"], "auroc": auroc, "max": float(record["max"]),
                         "density": record.get("density"), "explanation": text})
    return sorted(rows, key=lambda r: -r["auroc"])[:n]


def read_json(path: Path) -> dict:
    return jsonfile.read_json(path, expect=dict) if path.is_file() else {}


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
            record = jsonfile.parse_json(line, train_dir / "metrics.jsonl") if line.strip() else {}
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
