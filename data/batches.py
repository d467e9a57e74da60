"""The prebatched training set: fixed-size shuffled batches on disk, and its reader.

Layout of a batches folder (one per hook, e.g. `runs/batches/blocks.20.hook_resid_post/`):

    batches.json          format, batch_size, d_model, hook, model, prepend_bos, chat, n_train, n_val,
                          files {"train": [{"name", "batches"}], "val": [...]}, remainders, source manifest
    stats.json            {"train": S, "val": S, "all": S}, S = {"count", "mean", "var", "mean_sq_norm"}
    train-00000.bin ...   raw little-endian float32, a whole number of (batch_size, d_model) batches
    val-00000.bin ...     same, for the held-out split
    train-remainder.bin   the last rows that did not fill a batch (fewer than batch_size), so that every
    val-remainder.bin     captured activation is stored exactly once

A chunk file holds many batches (a billion rows is a few hundred files, not a million). `batches.json`
is written last: a folder without it is incomplete. Nothing is parsed on read: batch `i` is a slice of
a memory map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from atomic import AtomicFile, write_json_atomic
from data.checked import SPLITS, check_batches_meta, check_stats
from data.fileio import append_array, read_json

FORMAT = "llama-sae-batches"
VERSION = 1
DTYPE = "<f4"  # little-endian float32 on disk, whatever the host


def chunk_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


def remainder_name(split: str) -> str:
    return f"{split}-remainder.bin"


class BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset over one split of a batches folder: `ds[i]` is a float32 (batch_size, d_model).

    Batches are read from memory maps (no parsing) and copied into a fresh tensor, which the caller
    may modify in place without affecting the file or later reads. Safe to use with DataLoader
    workers (maps are opened lazily in each process). Attributes: `meta` (batches.json), `stats` (the
    training split's statistics, the normalisation constants for both splits), `split_stats`,
    `batch_size`, `d_model`, and `remainder()` for the rows that did not fill a batch.
    """

    def __init__(self, folder: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        self.folder = Path(folder)
        self.split = split
        self.meta = read_meta(self.folder)
        stats_path = self.folder / "stats.json"
        all_stats = check_stats(read_json(stats_path, "rerun the prebatching step", expect=dict), stats_path,
                                self.meta["d_model"])
        self.stats: dict = all_stats["train"]
        self.split_stats: dict = all_stats[split]
        self.batch_size: int = self.meta["batch_size"]
        self.d_model: int = self.meta["d_model"]
        self._files = [(self.folder / f["name"], f["batches"]) for f in self.meta["files"][split]]
        # Batch i lives in file j = searchsorted(_starts, i) at position i - _starts[j].
        counts = np.array([n for _, n in self._files], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._maps: dict[int, np.memmap] = {}
        for path, n in self._files:
            expected = n * self.batch_size * self.d_model * 4
            if not path.is_file() or path.stat().st_size != expected:
                raise ValueError(f"{path}: missing or not {expected} bytes as batches.json says; "
                                 f"rerun the prebatching step")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> torch.Tensor:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range for {len(self)} batches")
        file_index = int(np.searchsorted(self._starts, i, side="right")) - 1
        batch = self._map(file_index)[i - self._starts[file_index]]  # (batch_size, d_model)
        return torch.from_numpy(np.array(batch, dtype=np.float32))  # a copy, native byte order

    def remainder(self) -> torch.Tensor:
        """The split's leftover rows (fewer than batch_size), float32 (rows, d_model); may be empty."""
        info = self.meta["remainders"][self.split]
        if info["rows"] == 0:
            return torch.zeros(0, self.d_model)
        data = np.fromfile(self.folder / info["name"], dtype=DTYPE)
        return torch.from_numpy(data.astype(np.float32).reshape(info["rows"], self.d_model))

    def _map(self, file_index: int) -> np.memmap:
        if file_index not in self._maps:
            path, n = self._files[file_index]
            self._maps[file_index] = np.memmap(path, dtype=DTYPE, mode="r",
                                               shape=(n, self.batch_size, self.d_model))
        return self._maps[file_index]

    def __getstate__(self) -> dict:  # DataLoader workers reopen their own maps
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state


def read_meta(folder: Path) -> dict:
    """Load and check `batches.json`."""
    path = Path(folder) / "batches.json"
    meta = read_json(path, "prebatch the captured activations first (prebatch.py, or capture.py --prebatch)",
                     expect=dict)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: not a version-{VERSION} {FORMAT} file; rerun the prebatching step")
    return check_batches_meta(meta, path)


@dataclass
class ChunkWriter:
    """Appends (batch_size, d_model) batches of one split to chunk files of `batches_per_file` each.

    Each chunk is written under a `.tmp` name and renamed once full (or at `close`), so a finished
    name always holds whole batches. `prefix` lets parallel workers write side by side; the final
    names are assigned once every window is done.
    """

    folder: Path
    split: str
    batch_size: int
    d_model: int
    batches_per_file: int
    prefix: str = ""
    files: list[dict] = field(default_factory=list)  # [{"name", "batches"}] of closed chunks
    _handle: object = None
    _in_chunk: int = 0

    def write(self, batch: np.ndarray) -> None:
        """Append one batch, shape (batch_size, d_model)."""
        assert batch.shape == (self.batch_size, self.d_model), batch.shape
        if self._handle is None:
            self._handle = AtomicFile(Path(self.folder) / self._name())
        try:
            append_array(self._handle.file, batch, DTYPE)
        except BaseException:
            self.abort()
            raise
        self._in_chunk += 1
        if self._in_chunk == self.batches_per_file:
            self._finish_chunk()

    def close(self) -> list[dict]:
        """Finish the current chunk; returns the list of chunk files with their batch counts."""
        if self._handle is not None:
            self._finish_chunk()
        return self.files

    def abort(self) -> None:
        """Drop the unfinished chunk (after an error)."""
        if self._handle is not None:
            self._handle.abort()
            self._handle = None

    def _name(self) -> str:
        return f"{self.prefix}{chunk_name(self.split, len(self.files))}"

    def _finish_chunk(self) -> None:
        handle, self._handle = self._handle, None
        final = handle.commit()
        self.files.append({"name": final.name, "batches": self._in_chunk})
        self._in_chunk = 0


def write_remainder(folder: Path, split: str, rows: np.ndarray) -> dict:
    """Store the split's leftover rows (fewer than a batch); returns {"name", "rows"}."""
    path = Path(folder) / remainder_name(split)
    with AtomicFile(path) as out:
        append_array(out.file, rows, DTYPE)
    return {"name": path.name, "rows": int(rows.shape[0])}


def write_meta(folder: Path, meta: dict, stats: dict) -> None:
    """Write stats.json, then batches.json last (its presence marks the folder complete)."""
    write_json_atomic(Path(folder) / "stats.json", stats)
    write_json_atomic(Path(folder) / "batches.json", {"format": FORMAT, "version": VERSION, **meta})
