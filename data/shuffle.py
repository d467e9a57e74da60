"""Captured shards to shuffled fixed-size training batches, with Welford statistics, in one pass.

The command line is `prebatch.py` at the top level (or `capture.py --prebatch`); this module is the
library: `prebatch(capture, out, PrebatchConfig(...))`.

How rows are mixed, with memory bounded by a few shards:
1. the shards are visited in a seeded random order, in windows of `window_shards` consecutive ones;
2. each window's rows are split into train / validation by document (a seeded hash of the document
   number, so no text is in both), shuffled, and cut into full batches;
3. the rows left over in each window (fewer than a batch per split) are carried over and batched with
   later leftovers; the final leftovers are stored as `<split>-remainder.bin`, so every captured
   activation lands exactly once in train or val.
Windows are independent tasks: worker processes change the speed, never the result. Statistics
(per-dimension mean and variance, mean squared norm) are accumulated in float64 per window and merged
in window order (Chan's parallel Welford update).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import run_folder
from data.batches import SPLITS, ChunkWriter, chunk_name, write_meta, write_remainder
from data.fileio import check_no_folders_in_the_way, check_writable_folder, remove_quietly
from data.running_stats import RunningStats
from data.shards import CapturedDataset
from data.text import uniform_hash
from settings import check_seed


@dataclass
class PrebatchConfig:
    batch_size: int = field(default=1024, metadata={"help": "activations per batch"})
    val_fraction: float = field(default=0.02, metadata={"help": "share of documents held out for validation"})
    window_shards: int = field(default=4, metadata={"help": "shards mixed together (memory: about 3x this "
                                                            "many shards as float32)"})
    file_mb: int = field(default=256, metadata={"help": "approximate size of each chunk file in MiB"})
    seed: int = field(default=0, metadata={"help": "seed of the shard order, the split and the shuffles"})
    workers: int = field(default=0, metadata={"help": "worker processes (0 = in this process)"})

    def __post_init__(self):
        if self.batch_size < 1 or self.window_shards < 1 or self.file_mb < 1 or self.workers < 0:
            raise ValueError("--batch-size, --window-shards and --file-mb must be positive, --workers >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        check_seed("seed", self.seed)


DEFAULTS = PrebatchConfig()  # what a folder prebatched with the default settings used (e.g. its split)


def is_validation(docs: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded per-document coin flip: (rows,) bool, True for rows of held-out documents."""
    return uniform_hash(docs, 2 * seed + 1) < fraction  # odd seeds: never the sampling stream (seed 0)


@dataclass
class WindowResult:
    """What one window produced: chunk files per split, leftover rows per split, statistics."""

    files: dict[str, list[dict]]
    leftovers: dict[str, np.ndarray]
    stats: dict[str, RunningStats]
    bytes_read: int


def process_window(capture: Path, out: Path, window: int, shards: list[int], cfg: PrebatchConfig) -> WindowResult:
    """Read a window of shards, split, shuffle, write its full batches; return the rest."""
    ds = CapturedDataset(capture)
    rng = np.random.default_rng([cfg.seed, window])
    acts, docs, nbytes = [], [], 0
    for i in shards:
        shard = ds[i]
        acts.append(shard.acts.float().numpy())  # (rows, d) float32
        docs.append(shard.index[:, 0].numpy())
        nbytes += shard.acts.numel() * shard.acts.element_size()
    rows = np.concatenate(acts) if acts else np.zeros((0, ds.d_model), np.float32)
    val = is_validation(np.concatenate(docs), cfg.val_fraction, cfg.seed)
    result = WindowResult({}, {}, {}, nbytes)
    per_file = batches_per_file(cfg, ds.d_model)
    for split, mask in (("train", ~val), ("val", val)):
        part = rows[rng.permutation(np.flatnonzero(mask))]  # the split's rows, shuffled: one copy
        stats = RunningStats(ds.d_model)
        stats.update(part)
        full = len(part) // cfg.batch_size * cfg.batch_size
        writer = ChunkWriter(out, split, cfg.batch_size, ds.d_model, per_file, prefix=f"w{window:05d}-")
        for start in range(0, full, cfg.batch_size):
            writer.write(part[start:start + cfg.batch_size])
        result.files[split] = writer.close()
        result.leftovers[split] = part[full:].copy()  # a view would keep the whole window alive
        result.stats[split] = stats
    return result


def batches_per_file(cfg: PrebatchConfig, d_model: int) -> int:
    return max(1, (cfg.file_mb << 20) // (cfg.batch_size * d_model * 4))


def _window_task(args: tuple) -> WindowResult:
    return process_window(*args)


@run_folder.releases_locks
def prebatch(capture: str | Path, out: str | Path, cfg: PrebatchConfig,
             on_progress: Callable[[int], None] | None = None, out_flag: str = "--out") -> dict:
    """Prebatch a capture folder into `out`; returns the batches.json content. On failure `out` is left
    without batches (an unfinished folder is useless) and the capture is untouched."""
    capture, out = Path(capture), Path(out)
    ds = CapturedDataset(capture)
    run_folder.check_apart(out, out_flag, {"--capture": capture})
    check_writable_folder(out, out_flag)
    check_no_folders_in_the_way(out, out_flag)
    run_folder.claim(out, run_folder.BATCHES, out_flag)  # refuses a folder holding what it did not write
    _clear(out)
    try:
        return _run(capture, out, ds, cfg, on_progress)
    except BaseException:
        _clear(out)  # an unfinished folder is useless: give its space back (the capture is untouched)
        raise


def _run(capture: Path, out: Path, ds: CapturedDataset, cfg: PrebatchConfig,
         on_progress: Callable[[int], None] | None) -> dict:
    order = np.random.default_rng(cfg.seed).permutation(len(ds)).tolist()
    tasks = [(capture, out, w, order[s:s + cfg.window_shards], cfg)
             for w, s in enumerate(range(0, len(order), cfg.window_shards))]
    merger = _Merger(out, cfg, ds.d_model)
    if cfg.workers:
        with multiprocessing.get_context("spawn").Pool(cfg.workers) as pool:
            results = pool.imap(_window_task, tasks)  # in window order: deterministic
            for result in results:
                merger.add(result)
                if on_progress:
                    on_progress(result.bytes_read)
    else:
        for task in tasks:
            result = process_window(*task)
            merger.add(result)
            if on_progress:
                on_progress(result.bytes_read)
    return merger.finish(ds)


class _Merger:
    """Collects window results: batches the leftovers, then names files and writes the metadata."""

    def __init__(self, out: Path, cfg: PrebatchConfig, d_model: int):
        self.out, self.cfg, self.d_model = out, cfg, d_model
        self.rng = np.random.default_rng([cfg.seed, 1 << 32])  # distinct from every window's stream
        self.files = {s: [] for s in SPLITS}
        self.carry = {s: np.zeros((0, d_model), np.float32) for s in SPLITS}
        self.stats = {s: RunningStats(d_model) for s in SPLITS}
        per_file = batches_per_file(cfg, d_model)
        self.writers = {s: ChunkWriter(out, s, cfg.batch_size, d_model, per_file, prefix="rest-")
                        for s in SPLITS}

    def add(self, result: WindowResult) -> None:
        for split in SPLITS:
            self.files[split] += result.files[split]
            self.stats[split].merge(result.stats[split])
            carry = np.concatenate([self.carry[split], result.leftovers[split]])
            while len(carry) >= self.cfg.batch_size:
                self.writers[split].write(carry[:self.cfg.batch_size])
                carry = carry[self.cfg.batch_size:]
            self.carry[split] = carry

    def finish(self, ds: CapturedDataset) -> dict:
        files, remainders = {}, {}
        for split in SPLITS:
            files[split] = self._rename(split, self.files[split] + self.writers[split].close())
            rest = self.carry[split][self.rng.permutation(len(self.carry[split]))]
            remainders[split] = write_remainder(self.out, split, rest)
        everything = RunningStats(self.d_model)
        for split in SPLITS:
            everything.merge(self.stats[split])
        m = ds.manifest
        meta = {"batch_size": self.cfg.batch_size, "d_model": self.d_model, "dtype": "float32",
                "hook": m["hook"], "model": m["model"], "prepend_bos": m["prepend_bos"], "chat": m["chat"],
                "n_train": sum(f["batches"] for f in files["train"]),
                "n_val": sum(f["batches"] for f in files["val"]),
                "rows": {s: self.stats[s].count for s in SPLITS}, "files": files, "remainders": remainders,
                "val_fraction": self.cfg.val_fraction, "seed": self.cfg.seed,
                "window_shards": self.cfg.window_shards, "source": {"folder": str(ds.folder.resolve()), **m}}
        write_meta(self.out, meta, {"train": self.stats["train"].to_dict(), "val": self.stats["val"].to_dict(),
                                    "all": everything.to_dict()})
        return meta

    def _rename(self, split: str, files: list[dict]) -> list[dict]:
        """Give the chunk files their final sequential names: <split>-00000.bin, ..."""
        renamed = []
        for number, entry in enumerate(files):
            name = chunk_name(split, number)
            (self.out / entry["name"]).replace(self.out / name)
            renamed.append({"name": name, "batches": entry["batches"]})
        return renamed


def _clear(out: Path) -> None:
    """Remove an earlier prebatching's files (batches.json first: the folder is incomplete from now); the
    claim has made sure that the folder holds no others."""
    remove_quietly(out / "batches.json")
    for pattern in ("*.bin", "*.bin.tmp", "stats.json", "*.json.tmp"):
        for path in out.glob(pattern):
            remove_quietly(path)
