"""Interpret a trained SAE: what each latent means, how good the SAE is, and pages to browse.

    python interpret.py                       # runs/capture/<hook>, runs/train/sae -> runs/interpret/
    python interpret.py --llm-provider openai --llm-base-url http://127.0.0.1:8080/v1 --llm-model local
    ANTHROPIC_API_KEY=... python interpret.py --llm-provider anthropic --llm-model claude-sonnet-4-5 --detection

Stages, each written under --out (rerunning reuses the statistics and the LLM answers already paid for):
  1. one streaming pass over the captured activations -> stats.safetensors, stats.json
  2. logit lens, evidence and offline explanations    -> latents/<latent>.json, latent_index_meaning.json
  3. optional LLM explanations and detection scores   -> llm/explain/, llm/detect/, llm/failures.json
  4. held-out pass: explanation precision / recall, label probes (full and k-sparse) -> probes.json
  5. evaluation on held-out sentences                 -> evaluation.json
  6. static pages                                     -> index.html, pages/<latent>.html
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import cli
import paths
import run_folder
import startup
from data.shuffle import DEFAULTS, is_validation
from latents.collect import LatentStats, collect_stats, inputs_identity
from latents.evaluate import evaluate_sae, left_padded_batches
from latents.evidence import build_evidence
from latents.explain import BaseRates, explain_offline, explain_with_llm
from latents.heldout import collect_heldout
from latents.llm import LLMConfig, latent_id, make_client
from latents.logit_lens import logit_lens, model_head, sae_directions
from latents.pages import write_site
from latents.probes import probe_report
from latents.report import assemble, remove_unlisted, summaries, write_json, write_records
from latents.scoring import explanation_scores, predicted_tokens, score_detection
from latents.source import CapturedData
from latents.stats import StatsConfig, sae_encoder
from latents.text import token_bytes_of
from llama.jsonfile import read_json
from sae.io import load_config
from settings import check_int, check_seed

log = logging.getLogger("interpret")
LENS_TOP_MAX = 1000  # tokens a latent's page lists; any model's vocabulary is larger


@dataclass
class InterpretConfig:
    sae: str = field(default=str(paths.DEFAULT_SAE_DIR), metadata={"help": "SAE folder (config.json + sae.safetensors)"})
    capture_dir: str = field(default="", metadata={"help": "captured dataset folder (default: runs/capture/<the SAE's hook>)"})
    model: str = field(default="", metadata={"help": "GGUF file, Meta or HF folder (default: SmolLM2-135M-Instruct)"})
    out: str = field(default=str(paths.DEFAULT_INTERPRET_DIR), metadata={"help": "output folder"})
    top_n: int = field(default=50, metadata={"help": "top sentences and contexts kept per latent"})
    context: int = field(default=15, metadata={"help": "tokens either side of a top-activating token"})
    rows_per_chunk: int = field(default=4096, metadata={"help": "activations encoded at a time (memory)"})
    max_latents: int = field(default=0, metadata={"help": "explain and page only the N densest live latents (0 = all)"})
    lens_top: int = field(default=10, metadata={"help": "tokens listed per latent by the logit lens"})
    llm_provider: str = field(default="", metadata={"help": "LLM explanations: openai (chat completions) or "
                                                            "anthropic (message batches); empty = offline only",
                                                    "choices": ["", "openai", "anthropic"]})
    llm_base_url: str = field(default="", metadata={"help": "API base (default: http://127.0.0.1:8080/v1 for "
                                                            "openai, https://api.anthropic.com for anthropic)"})
    llm_model: str = field(default="", metadata={"help": "model name sent to the API"})
    llm_api_key_env: str = field(default="", metadata={"help": "environment variable holding the API key "
                                                               "(default: OPENAI_API_KEY / ANTHROPIC_API_KEY)"})
    llm_max_latents: int = field(default=0, metadata={"help": "send at most N latents to the LLM (0 = all explained)"})
    llm_batch_size: int = field(default=500, metadata={"help": "requests per Anthropic batch"})
    llm_poll_s: float = field(default=30.0, metadata={"help": "seconds between batch status checks"})
    detection: bool = field(default=False, metadata={"help": "score LLM explanations by detection (more requests)"})
    eval_sentences: int = field(default=512, metadata={"help": "held-out sentences for the evaluation (0 = skip)"})
    eval_batch_size: int = field(default=16, metadata={"help": "sentences per forward pass in the evaluation"})
    batches_dir: str = field(default=str(paths.DEFAULT_BATCHES_DIR),
                             metadata={"help": "prebatched folder root: its train/val split picks held-out documents"})
    device: str = startup.device_field()
    model_dtype: str = startup.model_dtype_field()
    seed: int = field(default=0, metadata={"help": "seed of the random sentences (detection negatives) and "
                                                   "of the probes' document split"})
    probe_test_fraction: float = field(default=0.2, metadata={"help": "share of documents the label probes "
                                                                      "are tested on (the rest trains them)"})

    def __post_init__(self):
        check_int("lens_top", self.lens_top, 1, LENS_TOP_MAX)
        check_seed("seed", self.seed)
        for name in ("top_n", "rows_per_chunk", "eval_batch_size", "llm_batch_size"):
            if getattr(self, name) < 1:
                raise cli.UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        for name in ("context", "max_latents", "llm_max_latents", "eval_sentences"):
            if getattr(self, name) < 0:
                raise cli.UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be 0 or more")
        if self.llm_provider and not self.llm_model:
            raise cli.UsageError(f"--llm-provider {self.llm_provider} needs --llm-model")
        if not 0 < self.probe_test_fraction < 1:
            raise cli.UsageError(f"--probe-test-fraction {self.probe_test_fraction}: must be between 0 and 1")
        if self.detection and not self.llm_provider:
            raise cli.UsageError("--detection scores LLM explanations: give --llm-provider too")


def main() -> None:
    cfg, _ = cli.parse_config(InterpretConfig, description=__doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    interpret(cfg)


@run_folder.releases_locks
def interpret(cfg: InterpretConfig) -> dict:
    """Run every stage; returns the evaluation (empty when skipped)."""
    device = startup.resolve_device(cfg.device)
    sae_cfg = load_config(cfg.sae)  # a missing or broken SAE folder is named before the model loads
    out = Path(cfg.out)
    hook = sae_cfg.hook_name or paths.DEFAULT_HOOK
    data = open_capture(cfg, hook, sae_cfg.d_in, sae_cfg.model)
    run_folder.check_apart(out, "--out", {"--sae": cfg.sae, "--capture-dir": data.folder,
                                          "--batches-dir": cfg.batches_dir, "--model": cfg.model})
    run_folder.claim(out, run_folder.INTERPRETATION, "--out")
    loaded = startup.load_model(cfg.model, device=device, model_dtype=cfg.model_dtype)
    sae = startup.load_sae_for(cfg.sae, loaded, device=device).eval()  # the check generate and serve make
    cli.save_config(cfg, out / "config.json")
    stats = statistics(cfg, data, sae, device, out)
    latents = chosen_latents(stats, cfg.max_latents)
    log.info("explaining %d of %d latents (%d never fired in the capture)", len(latents), stats.d_sae,
             stats.d_sae - len(stats.live()))
    records = explain(cfg, data, stats, sae, loaded, latents, out)
    probes = held_out_figures(cfg, data, sae, hook, records, stats.label_names, device, out)
    evaluation = evaluate(cfg, data, sae, loaded, hook, out)
    write_records(out, records)
    index = write_site(out, records, summaries(records), evaluation, Path(cfg.sae).parent / "curves.html",
                       title=f"SAE latents: {hook}", probes=probes)
    remove_unlisted(out, {r["latent"] for r in records})
    log.info("pages: %s", index)
    return evaluation


def open_capture(cfg: InterpretConfig, hook: str, d_in: int, sae_model: str = "") -> CapturedData:
    """The captured dataset the SAE reads (its hook, its width), checked against the SAE."""
    folder = Path(cfg.capture_dir) if cfg.capture_dir else paths.DEFAULT_CAPTURE_DIR / hook
    data = CapturedData(folder)
    if data.d_model != d_in:
        raise cli.UsageError(f"--capture-dir {folder}: activations have d_model {data.d_model} but the SAE "
                             f"expects d_in {d_in}; pass the capture the SAE was trained on")
    if data.hook_name and data.hook_name != hook:
        raise cli.UsageError(f"--capture-dir {folder}: captured at {data.hook_name}, the SAE reads {hook}")
    captured_from = data.manifest.get("model")
    if sae_model and captured_from and sae_model != captured_from:
        log.warning("the SAE was trained on %s but %s was captured from %s", sae_model, folder, captured_from)
    return data


def statistics(cfg: InterpretConfig, data: CapturedData, sae, device, out: Path) -> LatentStats:
    """The statistics pass, reused when stats.safetensors was computed from the same inputs."""
    identity = inputs_identity(Path(cfg.sae), data)
    scfg = StatsConfig(top_n=cfg.top_n, context=cfg.context, seed=cfg.seed)
    path = out / "stats.safetensors"
    if path.is_file():
        stats = LatentStats.load(path)
        if stats.meta.get("identity") == identity and stats.meta.get("config") == scfg.to_dict():
            log.info("statistics: reusing %s", path)
            return stats
    log.info("statistics: one pass over %d activations of %s", data.n_rows, data.folder)
    bar = lambda chunks: tqdm(chunks, desc="statistics", unit="chunk",
                              total=max(1, data.n_rows // cfg.rows_per_chunk))
    stats = collect_stats(data, sae_encoder(sae), sae.cfg.d_sae, scfg, rows_per_chunk=cfg.rows_per_chunk,
                          device=device, checkpoint=out / "stats-partial.safetensors", identity=identity,
                          progress=bar)
    stats.save(path)
    live = stats.live()
    write_json(out / "stats.json", {
        "rows": int(stats["rows"]), "d_sae": stats.d_sae, "live": len(live), "dead": stats.d_sae - len(live),
        "dead_fraction": 1 - len(live) / stats.d_sae, "labels": stats.label_names,
        "density_quantiles": {str(q): float(np.quantile(stats["density"].numpy(), q)) for q in (0.1, 0.5, 0.9, 0.99)}})
    return stats


def chosen_latents(stats: LatentStats, limit: int) -> list[int]:
    """Live latents (the `limit` densest when limit > 0), in index order."""
    live = stats.live()
    if limit and len(live) > limit:
        live = live[torch.argsort(stats["density"][live], descending=True)[:limit]]
    return sorted(live.tolist())


def explain(cfg: InterpretConfig, data: CapturedData, stats: LatentStats, sae, loaded, latents: list[int],
            out: Path) -> list[dict]:
    """Evidence and explanations (offline, then LLM and detection when asked) of `latents`."""
    token_bytes = token_bytes_of(loaded.tokenizer)
    gain, unembed = model_head(loaded.model)
    lens = logit_lens(sae_directions(sae, torch.tensor(latents, dtype=torch.long)), gain, unembed, top=cfg.lens_top)
    evidence = build_evidence(stats, data, latents, loaded.tokenizer.token_str, token_bytes, lens)
    rates = BaseRates.from_stats(stats)
    offline = {j: explain_offline(ev, rates, token_bytes) for j, ev in evidence.items()}
    llm, detection = {}, {}
    if cfg.llm_provider:
        llm, detection = llm_stage(cfg, data, stats, evidence, out / "llm")
    return assemble(evidence, offline, llm, detection)


def llm_stage(cfg: InterpretConfig, data: CapturedData, stats: LatentStats, evidence: dict[int, dict],
              folder: Path) -> tuple[dict, dict]:
    """LLM explanations (and detection scores); failures reported in llm/failures.json."""
    default_url = "http://127.0.0.1:8080/v1" if cfg.llm_provider == "openai" else "https://api.anthropic.com"
    default_key = "OPENAI_API_KEY" if cfg.llm_provider == "openai" else "ANTHROPIC_API_KEY"
    llm_cfg = LLMConfig(provider=cfg.llm_provider, base_url=cfg.llm_base_url or default_url, model=cfg.llm_model,
                        api_key_env=cfg.llm_api_key_env or default_key, batch_size=cfg.llm_batch_size,
                        poll_s=cfg.llm_poll_s)
    folder.mkdir(parents=True, exist_ok=True)
    client = make_client(llm_cfg, journal=folder / "open-batches.json")
    chosen = dict(sorted(evidence.items())[:cfg.llm_max_latents or None])
    report = explain_with_llm(client, chosen, folder / "explain")
    log.info("LLM explanations: %d new, %d reused, %d failed", len(report.results) - len(report.skipped),
             len(report.skipped), len(report.failures))
    llm = {j: report.results[latent_id(j)] for j in chosen if latent_id(j) in report.results}
    failures = {"explain": report.failures}
    detection = {}
    if cfg.detection and llm:
        scores = detect(cfg, client, data, stats, evidence, llm, folder / "detect")
        detection = {j: scores.results[latent_id(j)]["balanced_accuracy"] for j in llm
                     if latent_id(j) in scores.results}
        failures["detect"] = scores.failures
    write_json(folder / "failures.json", failures)
    return llm, detection


def detect(cfg, client, data: CapturedData, stats: LatentStats, evidence, llm, folder: Path):
    """Detection scoring: top sentences vs random sentences on which the latent is zero."""
    ordinals = stats["random_sentences"].tolist()
    texts = data.read_sentences(ordinals)
    quiet = {j: [texts[o]["text"] for i, o in enumerate(ordinals) if float(stats["random_mean"][i, j]) == 0.0]
             for j in llm}
    top = {j: [s["text"] for s in evidence[j]["top_sentences_mean"]] for j in llm}
    return score_detection(client, {j: e["common_semantic"] for j, e in llm.items()}, top, quiet, folder,
                           seed=cfg.seed)


def validation_split(cfg: InterpretConfig, hook: str) -> dict:
    """The prebatching's per-document validation split (val_fraction, seed); its defaults when absent."""
    meta_path = Path(cfg.batches_dir) / hook / "batches.json"
    meta = read_json(meta_path, expect=dict) if meta_path.is_file() else {}
    return {"val_fraction": float(meta.get("val_fraction", DEFAULTS.val_fraction)),
            "seed": int(meta.get("seed", DEFAULTS.seed)),
            "found": meta_path.is_file()}


def held_out_figures(cfg: InterpretConfig, data: CapturedData, sae, hook: str, records: list[dict],
                     label_names: list[str], device, out: Path) -> dict:
    """One pass for the offline explanations' precision and recall on tokens of the documents the SAE's
    training held out (filled into each record), and the label probes (probes.json, returned)."""
    split = validation_split(cfg, hook)
    keep = lambda docs: is_validation(docs, split["val_fraction"], split["seed"])
    bar = lambda chunks: tqdm(chunks, desc="held-out pass", unit="chunk",
                              total=max(1, data.n_rows // cfg.rows_per_chunk))
    features, held = collect_heldout(data, sae_encoder(sae), sae.cfg.d_sae, keep, rows_per_chunk=cfg.rows_per_chunk,
                                     device=device, progress=bar)
    offline = {r["latent"]: r["explanations"].get("offline", {}) for r in records}
    scores = explanation_scores(held, {j: predicted_tokens(ex) for j, ex in offline.items()})
    for r in records:
        if r["latent"] in scores and "offline" in r["explanations"]:
            r["explanations"]["offline"]["score"] = {**scores[r["latent"]], "tokens": len(held.tokens)}
    report = probe_report(features, label_names, test_fraction=cfg.probe_test_fraction, seed=cfg.seed) \
        if label_names else {}
    report["explanation_tokens"] = len(held.tokens)
    write_json(out / "probes.json", report)
    for name, entry in report.get("labels", {}).items():
        log.info("probes for %r (test AUROC): full mean %.3f, full last %.3f, sparse %s", name,
                 entry["full_mean"], entry["full_last"],
                 ", ".join(f"k={k} {v['auroc']:.3f}" for k, v in entry["sparse"].items()))
    return report


def held_out_sentences(cfg: InterpretConfig, data: CapturedData, hook: str) -> tuple[list[list[int]], bool]:
    """Token lists of up to cfg.eval_sentences sentences from documents the prebatching held out for
    validation (its seeded per-document split); the last captured sentences when there is no split."""
    table = data.sentences
    split = validation_split(cfg, hook)
    lines = np.flatnonzero(is_validation(table.docs, split["val_fraction"], split["seed"]))
    held_out = len(lines) > 0
    if not held_out:
        lines = np.arange(len(table.docs))[::-1]
    records = data.read_sentences(lines[:cfg.eval_sentences].tolist())
    return [records[i]["tokens"] for i in sorted(records) if len(records[i]["tokens"]) >= 1], held_out


def evaluate(cfg: InterpretConfig, data: CapturedData, sae, loaded, hook: str, out: Path) -> dict:
    if cfg.eval_sentences == 0:
        return {}
    sentences, held_out = held_out_sentences(cfg, data, hook)
    prefix = list(data.manifest.get("context_prefix") or [])
    if not prefix:  # a single sentence token predicts nothing: drop those
        sentences = [s for s in sentences if len(s) >= 2]
    device = next(sae.parameters()).device
    batches = left_padded_batches(sentences, batch_size=cfg.eval_batch_size, prefix=prefix,
                                  pad_id=loaded.tokenizer.pad_id or 0, device=device)
    bar = lambda b: tqdm(b, desc="evaluation", unit="batch", total=-(-len(sentences) // cfg.eval_batch_size))
    report = {"hook": hook, "sentences": len(sentences), "held_out": held_out,
              **evaluate_sae(loaded.model, sae, hook, batches, progress=bar)}
    write_json(out / "evaluation.json", report)
    log.info("evaluation: FVU %.4f, L0 %.1f, CE loss recovered %.4f, delta LM loss %.4f",
             report["fvu"], report["l0"], report["ce_loss_recovered"], report["delta_lm_loss"])
    return report


if __name__ == "__main__":
    cli.run_main(main)
