"""Capture a model's activations at one or more hooks over a corpus, sentence by sentence.

    python capture.py                                  # default model, corpus and hook
    python capture.py --hooks blocks.10.hook_resid_post blocks.20.hook_resid_post --dtype bfloat16
    python capture.py --data reviews.jsonl --text-field body --label-field stars --prebatch
    torchrun --nproc_per_node 2 capture.py ...         # split the corpus across processes

Pipeline: corpus -> Punkt sentences -> tokens (capped, no BOS stored) -> sentences.jsonl; then the
records are cut into fixed chunks, each chunk is run in length-sorted padded batches, and its
activations become one shard per hook, written on a background thread. Rerunning the same command
resumes after the last committed shard and produces byte-identical files.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import cli
import paths
import runtime
from data.chunks import capture_chunk, chunk_arrays, iter_chunks
from data.fileio import check_writable_folder
from data.manifest import CaptureBook
from data.prepare import (SentenceOptions, context_prefix, iter_records, read_sentences,
                          write_sentences)
from data.sentences import SentenceSplitter
from data.shards import DTYPES, ShardData, ShardWriter, read_manifest
from data.text import TextSource, corpus_identity, iter_documents

log = logging.getLogger("capture")
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
SHARD_BYTES = 128 << 20  # automatic shard size: activations per hook per shard


@dataclass
class CaptureConfig:
    model: str = field(default="", metadata={"help": "GGUF file, Meta or HF folder (default: SmolLM2-135M-Instruct)"})
    data: str = field(default="", metadata={"help": "corpus: .txt/.jsonl/.csv/.tsv/.parquet file or a folder "
                                                    "(default: the embedded sentiment CSV)"})
    text_field: str = field(default="text", metadata={"help": "JSONL field / CSV or Parquet column with the text"})
    label_field: str = field(default="", metadata={"help": "field/column with a label kept with each sentence "
                                                           "(default: 'sentiment' for the default corpus)"})
    hooks: list[str] = field(default_factory=lambda: [paths.DEFAULT_HOOK],
                             metadata={"help": "hook names to capture, one dataset each"})
    out: str = field(default=str(paths.DEFAULT_CAPTURE_DIR), metadata={"help": "output folder; each hook "
                                                                               "gets <out>/<hook>/"})
    max_tokens: int = field(default=192, metadata={"help": "cap on a sentence's tokens (longer ones are cut)"})
    max_documents: int = field(default=0, metadata={"help": "read at most this many documents (0 = all)"})
    sample_fraction: float = field(default=1.0, metadata={"help": "keep each document with this probability "
                                                                  "(a fixed hash of its number): a slice "
                                                                  "that spans the whole corpus"})
    max_total_tokens: int = field(default=0, metadata={"help": "stop after this many stored tokens (0 = all)"})
    batch_tokens: int = field(default=8192, metadata={"help": "padded tokens per forward pass"})
    shard_tokens: int = field(default=0, metadata={"help": "stored tokens per shard, the unit of resume "
                                                         "(0 = about 128 MiB of activations per shard)"})
    dtype: str = field(default="float32", metadata={"help": "storage dtype",
                                                    "choices": list(DTYPES) + list(DTYPE_ALIASES)})
    bos: bool = field(default=False, metadata={"help": "feed BOS before each sentence (never stored); recommended "
                                                       "for SAE training: without it each sentence's first token "
                                                       "is the attention sink, with a norm ~100x the others'"})
    chat: bool = field(default=False, metadata={"help": "wrap each sentence as a user message in the chat "
                                                        "template; only the sentence's tokens are stored"})
    punkt_chars: int = field(default=2_000_000, metadata={"help": "corpus characters to train Punkt on"})
    device: str = runtime.device_field()
    model_dtype: str = runtime.model_dtype_field()
    prebatch: bool = field(default=False, metadata={"help": "prebatch each hook's shards after capture"})
    batches_out: str = field(default=str(paths.DEFAULT_BATCHES_DIR),
                             metadata={"help": "with --prebatch: output folder (each hook gets <batches-out>/<hook>/)"})

    def __post_init__(self):
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)
        if self.dtype not in DTYPES:
            raise cli.UsageError(f"--dtype {self.dtype}: expected one of {', '.join(DTYPES)}")
        if self.batch_tokens < 1 or self.shard_tokens < 0:
            raise cli.UsageError("--batch-tokens must be positive and --shard-tokens 0 (auto) or positive")


def main() -> None:
    cfg, _ = cli.parse_config(CaptureConfig, description=__doc__.split("\n\n")[0])
    rank, world, device = setup_distributed(cfg.device)
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        capture(cfg, rank, world, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(requested: str) -> tuple[int, int, torch.device]:
    """Rank, world size and device; a process group when launched by torchrun (nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":  # share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return rank, world, device


def resolve_source(cfg: CaptureConfig) -> TextSource:
    if cfg.data:
        return TextSource(Path(cfg.data), cfg.text_field, cfg.label_field or None)
    return TextSource(paths.default_corpus_path(), cfg.text_field, cfg.label_field or "sentiment")


def capture(cfg: CaptureConfig, rank: int = 0, world: int = 1, device: torch.device | None = None,
            loaded=None) -> dict[str, Path]:
    """Capture every hook of `cfg`; returns hook -> capture folder. `loaded` reuses a loaded model."""
    from llama import load_model
    from llama.hooks import parse_hook_name

    source, options = check_inputs(cfg)
    check_writable_folder(Path(cfg.out), "--out")
    if loaded is None:
        loaded = load_model(Path(cfg.model) if cfg.model else paths.default_model_path(),
                            device=device or "cpu")
    for hook in cfg.hooks:
        parse_hook_name(hook, loaded.args.n_layers)
    folders = {h: check_writable_folder(Path(cfg.out) / h, "--out") for h in cfg.hooks}
    prefix = context_prefix(loaded.tokenizer, options)
    settings = capture_settings(cfg, source, loaded.source, prefix)
    for folder in folders.values():
        check_resumable(folder, settings)

    summary = prepare_sentences(folders, source, loaded.tokenizer, options, rank, world)
    base = {"model": settings["model"], "dtype": cfg.dtype, "prepend_bos": cfg.bos, "chat": cfg.chat,
            "context_prefix": prefix, "max_tokens": cfg.max_tokens, "corpus": settings["corpus"],
            "label_field": source.label_field, "labels": summary["labels"], "sentences": summary,
            "settings": settings}
    book = CaptureBook(folders, base, rank)
    d_models = {h: loaded.args.dim for h in cfg.hooks}
    if rank == 0:
        book.start(d_models)
        for folder in folders.values():
            cli.save_config(cfg, folder / "capture_config.json")
    barrier(world)
    if rank != 0:
        book.start(d_models)
    device = next(loaded.model.parameters()).device
    run_capture(cfg, loaded.model, loaded.args.dim, prefix, folders, book, summary, rank, world, device)
    barrier(world)
    if rank == 0:
        total = book.finalize()
        log.info("captured %d activations per hook into %s", total, ", ".join(map(str, folders.values())))
        if cfg.prebatch:
            run_prebatch(cfg, folders)
    return folders


def check_inputs(cfg: CaptureConfig) -> tuple[TextSource, SentenceOptions]:
    """Fail fast, before loading the model: hook name forms, limits, and a readable corpus."""
    from llama.hooks import parse_hook_name

    if not cfg.hooks or len(set(cfg.hooks)) != len(cfg.hooks):
        raise cli.UsageError(f"--hooks {' '.join(cfg.hooks)}: give one or more distinct hook names")
    for hook in cfg.hooks:
        parse_hook_name(hook, 1 << 30)  # the form only; the layer range is checked once loaded
    options = SentenceOptions(max_tokens=cfg.max_tokens, bos=cfg.bos, chat=cfg.chat,
                              max_documents=cfg.max_documents, sample_fraction=cfg.sample_fraction,
                              max_total_tokens=cfg.max_total_tokens, punkt_chars=cfg.punkt_chars)
    source = resolve_source(cfg)
    if next(iter_documents(source), None) is None:  # also checks the named columns/fields
        raise ValueError(f"{source.path}: the corpus holds no text (field/column {source.text_field!r}); "
                         f"check --data and --text-field")
    return source, options


def capture_settings(cfg: CaptureConfig, source: TextSource, model: str, prefix: list[int]) -> dict:
    """Everything that determines the stored bytes; a resume must match it exactly."""
    keys = ("dtype", "bos", "chat", "max_tokens", "max_documents", "sample_fraction", "max_total_tokens", "batch_tokens",
            "shard_tokens", "punkt_chars")
    return {"model": model, "corpus": corpus_identity(source), "context_prefix": prefix,
            **{k: getattr(cfg, k) for k in keys}}


def check_resumable(folder: Path, settings: dict) -> None:
    """Refuse to continue a capture made with other settings (mixing them would corrupt it)."""
    if not (folder / "manifest.json").is_file():
        return
    previous = read_manifest(folder).get("settings", {})
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    if changed:
        raise cli.UsageError(f"{folder} holds a capture made with different {', '.join(changed)}; "
                             f"rerun with the same arguments, or choose another --out")


def prepare_sentences(folders: dict[str, Path], source: TextSource, tokenizer, options: SentenceOptions,
                      rank: int, world: int) -> dict:
    """Write sentences.jsonl into every hook folder (rank 0), unless an earlier run already did."""
    first = next(iter(folders.values()))
    summary = None
    if rank == 0:
        summary = _existing_summary(folders)
        if summary is None:
            started = time.time()
            splitter = SentenceSplitter.train((d.text for d in iter_documents(source)), options.punkt_chars)
            records = tqdm(iter_records(source, tokenizer, options, splitter), unit=" sentences",
                           desc="sentences", leave=False)
            summary = write_sentences(first / "sentences.jsonl", records)
            summary["punkt_trained"] = splitter.trained
            if summary["sentences"] == 0:
                raise ValueError(f"{source.path}: no text found (field/column {source.text_field!r}); "
                                 f"check --data and --text-field")
            for folder in list(folders.values())[1:]:
                shutil.copyfile(first / "sentences.jsonl", folder / "sentences.jsonl.tmp")
                os.replace(folder / "sentences.jsonl.tmp", folder / "sentences.jsonl")
            log.info("%d sentences, %d tokens from %d documents (%.1f s, Punkt %s)", summary["sentences"],
                     summary["tokens"], summary["documents"], time.time() - started,
                     "trained on the corpus" if splitter.trained else "untrained")
    if world > 1:
        box = [summary]
        dist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary


def _existing_summary(folders: dict[str, Path]) -> dict | None:
    """The sentence summary of an earlier run with the same settings, if its files are all there."""
    summaries = []
    for folder in folders.values():
        if not (folder / "manifest.json").is_file() or not (folder / "sentences.jsonl").is_file():
            return None
        summaries.append(read_manifest(folder).get("sentences"))
    return summaries[0] if summaries[0] and all(s == summaries[0] for s in summaries) else None


def run_capture(cfg: CaptureConfig, model, d_model: int, prefix: list[int], folders: dict[str, Path],
                book: CaptureBook, summary: dict, rank: int, world: int, device: torch.device) -> None:
    """This rank's chunks (every world-th one), skipping those already committed."""
    storage = DTYPES[cfg.dtype][0]
    shard_tokens = cfg.shard_tokens or max(1, SHARD_BYTES // (d_model * storage.itemsize))
    done = book.done()
    records = read_sentences(next(iter(folders.values())) / "sentences.jsonl")
    writer = ShardWriter(max_pending=2)
    bar = tqdm(total=summary["tokens"], unit="tok", unit_scale=True, disable=rank != 0,
               desc="capture", smoothing=0.1)
    try:
        for chunk in iter_chunks(records, shard_tokens):
            if chunk.index in done:
                bar.update(chunk.rows)  # committed by an earlier run
            if chunk.index % world != rank or chunk.index in done:
                continue
            acts = capture_chunk(model, chunk, prefix, cfg.hooks, cfg.batch_tokens, storage, device,
                                 on_batch=lambda n: bar.update(n * world))
            tokens, index = chunk_arrays(chunk)
            parts = [ShardData(folders[h], acts[h], tokens, index) for h in cfg.hooks]
            entry = {"shard": chunk.index, "name": f"{chunk.index:05d}", "rows": chunk.rows,
                     "first_sentence": chunk.first_sentence, "sentences": len(chunk.records), "rank": rank}
            writer.submit(chunk.index, parts, lambda _, e=entry: book.commit(e))
    finally:
        bar.close()
        writer.close()


def run_prebatch(cfg: CaptureConfig, folders: dict[str, Path]) -> None:
    from data.prebatch import PrebatchConfig, prebatch

    for hook, folder in folders.items():
        target = Path(cfg.batches_out) / hook
        with tqdm(unit="B", unit_scale=True, desc=f"prebatch {hook}") as bar:
            result = prebatch(folder, target, PrebatchConfig(), on_progress=bar.update)
        log.info("prebatched %s: %d train + %d val batches into %s", hook, result["n_train"],
                 result["n_val"], target)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


if __name__ == "__main__":
    cli.run_main(main)
