"""Capture a model's activations at one or more hooks over a corpus, sentence by sentence.

    python capture.py                                  # default model, corpus and hook
    python capture.py --hooks blocks.10.hook_resid_post blocks.20.hook_resid_post --dtype bfloat16
    python capture.py --data reviews.jsonl --text-field body --label-field stars --prebatch
    torchrun --nproc_per_node 2 capture.py ...         # split the corpus across processes

Pipeline: corpus -> Punkt sentences -> tokens (capped, no BOS stored) -> sentences.jsonl; then the
records are cut into fixed chunks, each chunk is run in length-sorted padded batches, and its
activations become one shard per hook, written on a background thread. Rerunning the same command
first checks every committed shard against the manifest (sizes and sampled checksums), captures again
what is missing or damaged, resumes after that, and produces byte-identical files.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed
from tqdm import tqdm

import cli
import paths
import ranks
import run_folder
import startup
from atomic import atomic_path
from data.chunks import capture_chunk, chunk_arrays, iter_chunks
from data.fileio import check_no_folders_in_the_way, check_writable_folder, disk_full_error, file_check
from data.manifest import CaptureBook
from data.shuffle import PrebatchConfig, prebatch
from data.prepare import (SentenceOptions, context_prefix, iter_records, read_sentences,
                          write_sentences)
from data.sentences import SentenceSplitter
from data.shards import DTYPES, ShardData, ShardWriter, read_manifest
from data.text import (INVALID_TEXT, TextSource, Undecodable, check_encoding, corpus_identity, iter_documents,
                       undecodable_line)
from llama.hooks import parse_hook_name
from llama.loading import open_checkpoint
from settings import check_choice
from startup import DistInfo

log = logging.getLogger("capture")
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
SHARD_BYTES = 128 << 20  # automatic shard size: activations per hook per shard
RESUME = "the shards committed so far are kept: rerun the same command to resume"


@dataclass
class CaptureConfig:
    model: str = field(default="", metadata={"help": "GGUF file, Meta or HF folder (default: SmolLM2-135M-Instruct)"})
    data: str = field(default="", metadata={"help": "corpus: .txt/.jsonl/.csv/.tsv/.parquet file or a folder "
                                                    "(default: the embedded sentiment CSV)"})
    text_field: str = field(default="text", metadata={"help": "JSONL field / CSV or Parquet column with the text"})
    encoding: str = field(default="utf-8", metadata={"help": "the corpus's codec: utf-8, cp1252, latin-1, ..."})
    invalid_text: str = field(default="skip", metadata={"help": "a record holding bytes the codec cannot decode "
                                                               "is skipped, kept with U+FFFD (replace) or refused "
                                                               "(error); either way they are counted in one line",
                                                       "choices": list(INVALID_TEXT)})
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
    device: str = startup.device_field()
    model_dtype: str = startup.model_dtype_field()
    prebatch: bool = field(default=False, metadata={"help": "prebatch each hook's shards after capture"})
    batches_out: str = field(default=str(paths.DEFAULT_BATCHES_DIR),
                             metadata={"help": "with --prebatch: output folder (each hook gets <batches-out>/<hook>/)"})

    def __post_init__(self):
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)
        if self.dtype not in DTYPES:
            raise cli.UsageError(f"--dtype {self.dtype}: expected one of {', '.join(DTYPES)}")
        if self.batch_tokens < 1 or self.shard_tokens < 0:
            raise cli.UsageError("--batch-tokens must be positive and --shard-tokens 0 (auto) or positive")
        self.sentence_options()  # checks --max-tokens, --sample-fraction, ... before anything runs
        check_choice("invalid_text", self.invalid_text, INVALID_TEXT)
        self.encoding = check_encoding("encoding", self.encoding)

    def sentence_options(self) -> SentenceOptions:
        return SentenceOptions(max_tokens=self.max_tokens, bos=self.bos, chat=self.chat,
                               max_documents=self.max_documents, sample_fraction=self.sample_fraction,
                               max_total_tokens=self.max_total_tokens, punkt_chars=self.punkt_chars)


def main() -> None:
    cfg, _ = cli.parse_config(CaptureConfig, description=__doc__.split("\n\n")[0])
    info = startup.init_distributed(cfg.device)
    if info.is_main:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with ranks.stop_with_peers(RESUME):
            ranks.check_same_settings(cfg, info)
            capture(cfg, info)
    except KeyboardInterrupt:
        print(f"interrupted: {RESUME}", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as err:
        raise disk_full_error(err, Path(cfg.out), "--out", "nothing committed was lost: free space and rerun "
                              "the same command to resume") from None
    finally:
        startup.destroy_distributed()


def resolve_source(cfg: CaptureConfig) -> TextSource:
    if cfg.data:
        return TextSource(Path(cfg.data), cfg.text_field, cfg.label_field or None, cfg.encoding, cfg.invalid_text)
    return TextSource(paths.default_corpus_path(), cfg.text_field, cfg.label_field or "sentiment", cfg.encoding,
                      cfg.invalid_text)


@run_folder.releases_locks
def capture(cfg: CaptureConfig, dist: DistInfo | None = None, loaded=None) -> dict[str, Path]:
    """Capture every hook of `cfg`; returns hook -> capture folder. `loaded` reuses a loaded model
    (which then decides the device); `dist` is this process's place (default: a single process)."""
    source, options = check_inputs(cfg, loaded)
    if dist is None:
        device = next(loaded.model.parameters()).device if loaded else startup.resolve_device(cfg.device)
        dist = DistInfo(0, 1, 0, device, None)
    if loaded is None:
        loaded = startup.load_model(cfg.model, device=dist.device, model_dtype=cfg.model_dtype)
    for hook in cfg.hooks:
        parse_hook_name(hook, loaded.args.n_layers)
    folders = {h: check_writable_folder(Path(cfg.out) / h, "--out") for h in cfg.hooks}
    for folder in folders.values():
        check_no_folders_in_the_way(folder, "--out")
    claim_folders(cfg, folders, source, dist)
    prefix = context_prefix(loaded.tokenizer, options)
    settings = capture_settings(cfg, source, loaded, prefix)
    for folder in folders.values():
        check_resumable(folder, settings)

    summary = prepare_sentences(folders, source, loaded.tokenizer, options, dist)
    book = open_book(cfg, folders, settings, summary, loaded.args.dim, dist)
    run_capture(cfg, loaded.model, folders=folders, book=book, prefix=prefix, total_tokens=summary["tokens"],
                dist=dist)
    barrier(dist)
    if dist.is_main:
        total = book.finalize()
        log.info("captured %d activations per hook into %s", total, ", ".join(map(str, folders.values())))
        if cfg.prebatch:
            run_prebatch(cfg, folders)
    return folders


def check_inputs(cfg: CaptureConfig, loaded=None) -> tuple[TextSource, SentenceOptions]:
    """Fail fast, before loading the model: hook names, limits, output folders and a readable corpus."""
    if not cfg.hooks or len(set(cfg.hooks)) != len(cfg.hooks):
        raise cli.UsageError(f"--hooks {' '.join(cfg.hooks)}: give one or more distinct hook names")
    check_hook_forms(cfg.hooks, cfg.model, loaded)
    options = cfg.sentence_options()
    check_writable_folder(Path(cfg.out), "--out")
    if cfg.prebatch:
        check_writable_folder(Path(cfg.batches_out), "--batches-out")
    source = resolve_source(cfg)
    if source.invalid_text == "error":
        for _ in iter_documents(source):  # undecodable bytes refused now, not after the model loads
            pass
    undecodable = Undecodable()
    if next(iter_documents(source, undecodable), None) is None:  # also checks the named columns/fields
        if undecodable.records:
            raise ValueError(f"{source.path}: every record holds bytes that are not valid {source.encoding} (first "
                             f"at {undecodable.where()}); set --encoding to the corpus's codec (cp1252, "
                             f"latin-1, ...), or --invalid-text replace")
        raise ValueError(f"{source.path}: the corpus holds no text (field/column {source.text_field!r}); "
                         f"check --data and --text-field")
    return source, options


def check_hook_forms(hooks: list[str], model_flag: str, loaded=None) -> None:
    """Hook names of a valid form; the layer range is checked once the model is loaded. A wrong name's
    message lists the model's own layers, read from its header when it is not loaded yet."""
    for hook in hooks:
        try:
            parse_hook_name(hook, loaded.args.n_layers if loaded else 1 << 30)
        except ValueError:
            n_layers = loaded.args.n_layers if loaded else header_layers(model_flag)
            if n_layers:
                parse_hook_name(hook, n_layers)  # raises, naming the model's layer range
            raise cli.UsageError(f"--hooks {hook}: not a hook name; valid forms: hook_embed, "
                                 f"ln_final.hook_normalized, blocks.<layer>.<site>") from None


def claim_folders(cfg: CaptureConfig, folders: dict[str, Path], source: TextSource, dist: DistInfo) -> None:
    """Rank 0 claims every folder the capture writes (each hook's, and with --prebatch each hook's batches
    folder) before any rank writes there; a refusal ends every rank."""
    problem = None
    if dist.is_main:
        inputs = {"--data": source.path, "--model": cfg.model}
        try:
            for hook, folder in folders.items():
                run_folder.check_apart(folder, "--out", inputs)
                run_folder.claim(folder, run_folder.CAPTURE, "--out")
                if cfg.prebatch:
                    batches = Path(cfg.batches_out) / hook
                    run_folder.check_apart(batches, "--batches-out", {**inputs, "--out": folder})
                    run_folder.claim(batches, run_folder.BATCHES, "--batches-out")
        except run_folder.FolderRefused as err:
            problem = str(err)
    if dist.distributed:
        box = [problem]
        torch.distributed.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise cli.UsageError(problem)


def header_layers(model_flag: str) -> int | None:
    """The model's number of layers from its header alone (config.json, params.json, GGUF metadata),
    for a message before the model loads; None when it cannot be read (loading will say why)."""
    try:
        return open_checkpoint(Path(model_flag) if model_flag else paths.default_model_path()).args.n_layers
    except Exception:  # any unreadable header: the message falls back to the forms alone
        return None


def capture_settings(cfg: CaptureConfig, source: TextSource, loaded, prefix: list[int]) -> dict:
    """Everything that determines the stored bytes; a resume must match it exactly."""
    keys = ("dtype", "bos", "chat", "max_tokens", "max_documents", "sample_fraction", "max_total_tokens", "batch_tokens",
            "shard_tokens", "punkt_chars", "encoding", "invalid_text")
    return {"model": loaded.source, "model_dtype": resolved_model_dtype(loaded), "corpus": corpus_identity(source),
            "context_prefix": prefix, **{k: getattr(cfg, k) for k in keys}}


def resolved_model_dtype(loaded) -> str:
    """The dtype the model runs in as loaded (int8 and int4 included), never "auto"; for a LoadedModel
    assembled by hand, its float weights' dtype."""
    return loaded.model_dtype or str(loaded.model.norm.weight.dtype).removeprefix("torch.")


def check_resumable(folder: Path, settings: dict) -> None:
    """Refuse to continue a capture made with other settings (mixing them would corrupt it)."""
    if not (folder / "manifest.json").is_file():
        return
    previous = {"model_dtype": "float32", "encoding": "utf-8", "invalid_text": "replace",  # as older ones read
                **read_manifest(folder).get("settings", {})}
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    if changed:
        raise cli.UsageError(f"{folder} holds a capture made with different {', '.join(changed)}; "
                             f"rerun with the same arguments, or choose another --out")


def prepare_sentences(folders: dict[str, Path], source: TextSource, tokenizer, options: SentenceOptions,
                      dist: DistInfo) -> dict:
    """Write sentences.jsonl into every hook folder (rank 0), unless an earlier run already did."""
    first = next(iter(folders.values()))
    summary = None
    if dist.is_main:
        summary = _existing_summary(folders)
        if summary is None:
            started = time.time()
            splitter = SentenceSplitter.train((d.text for d in iter_documents(source)), options.punkt_chars)
            undecodable = Undecodable()
            records = tqdm(iter_records(source, tokenizer, options, splitter, undecodable), unit=" sentences",
                           desc="sentences", leave=False)
            summary = write_sentences(first / "sentences.jsonl", records)
            summary["punkt_trained"] = splitter.trained
            summary["undecodable"] = undecodable.as_dict()
            if undecodable.records:
                log.warning(undecodable_line(undecodable, source))
            if summary["sentences"] == 0:
                raise ValueError(f"{source.path}: no text found (field/column {source.text_field!r}); "
                                 f"check --data and --text-field")
            summary["file"] = file_check(first / "sentences.jsonl")
            for folder in list(folders.values())[1:]:
                with atomic_path(folder / "sentences.jsonl") as tmp:
                    shutil.copyfile(first / "sentences.jsonl", tmp)
            log.info("%d sentences, %d tokens from %d documents (%.1f s, Punkt %s)", summary["sentences"],
                     summary["tokens"], summary["documents"], time.time() - started,
                     "trained on the corpus" if splitter.trained else "untrained")
    if dist.distributed:
        box = [summary]
        torch.distributed.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary


def _existing_summary(folders: dict[str, Path]) -> dict | None:
    """The sentence summary of an earlier run with the same settings, if its files are all there and
    intact (a damaged sentences.jsonl is written again, with the same bytes)."""
    summaries = []
    for folder in folders.values():
        path = folder / "sentences.jsonl"
        if not (folder / "manifest.json").is_file() or not path.is_file():
            return None
        summary = read_manifest(folder).get("sentences")
        if summary and "file" in summary and file_check(path) != summary["file"]:
            log.warning("%s is damaged: writing it again", path)
            return None
        summaries.append(summary)
    return summaries[0] if summaries[0] and all(s == summaries[0] for s in summaries) else None


def open_book(cfg: CaptureConfig, folders: dict[str, Path], settings: dict, summary: dict, d_model: int,
              dist: DistInfo) -> CaptureBook:
    """The capture's manifests. Rank 0 first verifies what earlier runs committed (one line per damaged
    shard, which is then captured again); the other ranks read the result."""
    base = {"model": settings["model"], "dtype": cfg.dtype, "prepend_bos": cfg.bos, "chat": cfg.chat,
            "context_prefix": settings["context_prefix"], "max_tokens": cfg.max_tokens,
            "corpus": settings["corpus"], "label_field": settings["corpus"]["label_field"],
            "labels": summary["labels"], "sentences": summary, "settings": settings}
    book = CaptureBook(folders, base, dist.rank)
    d_models = {h: d_model for h in cfg.hooks}
    if dist.is_main:
        for line in book.start(d_models):
            log.warning(line)
        for folder in folders.values():
            cli.save_config(cfg, folder / "capture_config.json")
    barrier(dist)
    if not dist.is_main:
        book.start(d_models)
    return book


def run_capture(cfg: CaptureConfig, model, *, folders: dict[str, Path], book: CaptureBook, prefix: list[int],
                total_tokens: int, dist: DistInfo) -> None:
    """This rank's chunks (every world_size-th one), skipping those already committed."""
    storage = DTYPES[cfg.dtype][0]
    d_model = next(iter(book.d_models.values()))
    shard_tokens = cfg.shard_tokens or max(1, SHARD_BYTES // (d_model * storage.itemsize))
    done, world = book.done(), dist.world_size
    records = read_sentences(next(iter(folders.values())) / "sentences.jsonl")
    writer = ShardWriter(max_pending=2)
    bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, disable=not dist.is_main,
               desc="capture", smoothing=0.1)
    try:
        for chunk in iter_chunks(records, shard_tokens):
            if chunk.index in done:
                bar.update(chunk.rows)  # committed by an earlier run
            if chunk.index % world != dist.rank or chunk.index in done:
                continue
            acts = capture_chunk(model, chunk, prefix=prefix, hooks=cfg.hooks, batch_tokens=cfg.batch_tokens,
                                 storage=storage, device=dist.device, on_batch=lambda n: bar.update(n * world))
            tokens, index = chunk_arrays(chunk)
            parts = [ShardData(folders[h], acts[h], tokens, index) for h in cfg.hooks]
            entry = {"shard": chunk.index, "name": f"{chunk.index:05d}", "rows": chunk.rows,
                     "first_sentence": chunk.first_sentence, "sentences": len(chunk.records), "rank": dist.rank}
            writer.submit(chunk.index, parts, lambda _, checks, e=entry: book.commit(e, checks))
    finally:
        bar.close()
        writer.close()


def run_prebatch(cfg: CaptureConfig, folders: dict[str, Path]) -> None:
    for hook, folder in folders.items():
        target = Path(cfg.batches_out) / hook
        try:
            with tqdm(unit="B", unit_scale=True, desc=f"prebatch {hook}") as bar:
                result = prebatch(folder, target, PrebatchConfig(), on_progress=bar.update,
                                  out_flag="--batches-out")
        except OSError as err:
            raise disk_full_error(err, target, "--batches-out", "the capture is complete and kept: free "
                                  "space and rerun the same command to prebatch it") from None
        log.info("prebatched %s: %d train + %d val batches into %s", hook, result["n_train"],
                 result["n_val"], target)


def barrier(dist: DistInfo) -> None:
    if dist.distributed:
        torch.distributed.barrier()


if __name__ == "__main__":
    cli.run_main(main)
