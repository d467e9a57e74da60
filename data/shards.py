"""Captured activations on disk: the shard format, a background writer, and a reader.

A capture folder (one per hook, e.g. `runs/capture/blocks.20.hook_resid_post/`) holds, per shard NNNNN:

    acts-NNNNN.bin     raw little-endian (rows, d_model) in the stored dtype (float32/float16/bfloat16)
    tokens-NNNNN.bin   int32 (rows,): the token id at each stored position
    index-NNNNN.bin    int32 (rows, 3): (document, sentence in document, position in sentence)

plus `sentences.jsonl` (see data.prepare) and `manifest.json`. Shard files are written under `.tmp`
names and renamed when complete; a shard counts only once the manifest lists it, and the manifest is
itself replaced atomically after the shard's files are in place. The manifest records each file's
size and a sampled checksum, so that a rerun can verify what it did not write itself.
"""

from __future__ import annotations

import queue
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from atomic import AtomicFile
from data.checked import check_manifest
from data.fileio import append_array, array_check, file_check, raw_bytes, read_json
from data.prepare import read_sentences

FORMAT = "llama-sae-activations"
VERSION = 1
# Stored dtype -> (torch dtype, little-endian numpy dtype of the raw bytes). bfloat16 has no numpy
# dtype: its bytes are moved as int16 and viewed back.
DTYPES = {"float32": (torch.float32, "<f4"), "float16": (torch.float16, "<f2"),
          "bfloat16": (torch.bfloat16, "<i2")}
PARTS = ("acts", "tokens", "index")


def shard_file(folder: Path, part: str, shard: int) -> Path:
    return Path(folder) / f"{part}-{shard:05d}.bin"


def to_raw(acts: torch.Tensor) -> np.ndarray:
    """A CPU tensor in a stored dtype as a numpy array of the same bytes."""
    if acts.dtype == torch.bfloat16:
        return acts.view(torch.int16).numpy()
    return acts.numpy()


@dataclass
class ShardData:
    """One shard's content for one hook folder: acts (rows, d) CPU tensor, tokens (rows,), index (rows, 3)."""

    folder: Path
    acts: torch.Tensor
    tokens: np.ndarray
    index: np.ndarray


def write_shard(shard: int, data: ShardData) -> dict:
    """Write the three files of a shard atomically; on failure none of them is left behind.

    Returns {part: {"bytes", "crc32_sampled"}}, what the manifest records to verify the files later.
    """
    arrays = {"acts": raw_bytes(to_raw(data.acts), DTYPES[str(data.acts.dtype).removeprefix("torch.")][1]),
              "tokens": raw_bytes(data.tokens, "<i4"), "index": raw_bytes(data.index, "<i4")}
    with ExitStack() as files:  # every file complete before any is renamed into place
        for part, raw in arrays.items():
            append_array(files.enter_context(AtomicFile(shard_file(data.folder, part, shard))).file, raw, raw.dtype)
    return {part: array_check(raw) for part, raw in arrays.items()}


def check_shard(folder: Path, entry: dict, d_model: int, dtype: str, recorded: dict | None) -> str | None:
    """What is wrong with a committed shard's files (sizes, and checksums when `recorded`), or None."""
    rows = entry["rows"]
    sizes = {"acts": rows * d_model * np.dtype(DTYPES[dtype][1]).itemsize, "tokens": rows * 4, "index": rows * 12}
    for part in PARTS:
        path = shard_file(folder, part, entry["shard"])
        if not path.is_file():
            return f"{path.name} is missing"
        size = path.stat().st_size
        if size != sizes[part]:
            return f"{path.name} is {size} bytes, the manifest says {sizes[part]}"
        if recorded and part in recorded and file_check(path) != recorded[part]:
            return f"{path.name} does not match its checksum"
    return None


class ShardWriter:
    """Writes shards on a background thread so the model never waits for the disk.

    `submit(shard, [ShardData, ...], commit)` queues a shard (one ShardData per hook folder) and
    returns at once unless `max_pending` shards are already waiting (which bounds memory). After the
    files are in place the thread calls `commit(shard, checks)`, checks = [write_shard's result per
    ShardData], e.g. to update the manifests. An error on
    the thread is raised again in the caller at the next `submit` or at `close`.
    """

    def __init__(self, max_pending: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def submit(self, shard: int, parts: list[ShardData], commit: Callable[[int, list[dict]], None]) -> None:
        self._raise_if_failed()
        self._queue.put((shard, parts, commit))
        self._raise_if_failed()

    def close(self) -> None:
        """Wait until every queued shard is written and committed."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain without writing after a failure
            shard, parts, commit = item
            try:
                commit(shard, [write_shard(shard, data) for data in parts])
            except BaseException as err:  # handed to the main thread
                self._error = err

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


@dataclass
class Shard:
    """One shard read back: acts (rows, d_model) in the stored dtype, tokens (rows,), index (rows, 3)."""

    number: int
    acts: torch.Tensor
    tokens: torch.Tensor
    index: torch.Tensor


class CapturedDataset:
    """Reader of a capture folder: shards as memory-mapped tensors, and the sentences.

    `len(ds)` is the number of shards, `ds.total_rows` the number of stored activations; `ds[i]` (or
    iteration) gives `Shard`s whose tensors map the files copy-on-write (nothing read until touched;
    in-place changes never reach the disk). `ds.sentences()` streams sentences.jsonl.
    """

    def __init__(self, folder: str | Path, require_complete: bool = True):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if require_complete and not self.manifest.get("complete"):
            raise ValueError(f"{self.folder}: capture not finished; rerun the same capture.py "
                             f"command to complete it")
        self.hook: str = self.manifest["hook"]
        self.d_model: int = self.manifest["d_model"]
        self.dtype: torch.dtype = DTYPES[self.manifest["dtype"]][0]
        self.shards: list[dict] = self.manifest["shards"]
        self.total_rows: int = sum(s["rows"] for s in self.shards)
        self.labels: list[str] = self.manifest.get("labels", [])

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> Shard:
        entry = self.shards[i]
        number, rows = entry["shard"], entry["rows"]
        raw = DTYPES[self.manifest["dtype"]][1]
        acts = torch.from_numpy(self._map("acts", number, raw, (rows, self.d_model)))
        if self.dtype == torch.bfloat16:
            acts = acts.view(torch.bfloat16)
        tokens = torch.from_numpy(self._map("tokens", number, "<i4", (rows,)))
        index = torch.from_numpy(self._map("index", number, "<i4", (rows, 3)))
        return Shard(number, acts, tokens, index)

    def __iter__(self) -> Iterator[Shard]:
        return (self[i] for i in range(len(self)))

    def sentences(self) -> Iterator[dict]:
        """The sentence records, in order: {"doc", "sentence", "text", "tokens", "label"?, ...}."""
        return read_sentences(self.folder / "sentences.jsonl")

    def _map(self, part: str, number: int, dtype: str, shape: tuple) -> np.ndarray:
        path = shard_file(self.folder, part, number)
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise ValueError(f"{path}: missing or not {expected} bytes as manifest.json says; "
                             f"rerun the capture")
        if expected == 0:
            return np.zeros(shape, dtype=np.dtype(dtype).newbyteorder("="))
        return np.memmap(path, dtype=dtype, mode="c", shape=shape)


def read_manifest(folder: Path) -> dict:
    """Load and check a capture folder's manifest.json."""
    path = Path(folder) / "manifest.json"
    manifest = read_json(path, "capture activations there first (capture.py)", expect=dict)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path}: not a version-{VERSION} {FORMAT} manifest")
    return check_manifest(manifest, path, DTYPES)
