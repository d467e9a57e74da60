"""Read a captured dataset (runs/capture/<hook>/) as a stream of chunks made of whole sentences.

The format (docs/ARCHITECTURE.md, data/): per shard `acts-NNNNN.bin` raw little-endian (rows, d_model)
in the manifest's dtype, `tokens-NNNNN.bin` int32 (rows,), `index-NNNNN.bin` int32 (rows, 3) =
(document, sentence, position in sentence); `sentences.jsonl` one line per sentence; `manifest.json`.
The rows of one sentence are contiguous and in order, so a chunk can always be cut at a sentence start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

_NUMPY_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "int32": "<i4"}
_KEY_SHIFT = 24  # sentence key = document << 24 | sentence number (a document holds < 16M sentences)


def sentence_key(doc: np.ndarray | int, sentence: np.ndarray | int) -> np.ndarray | int:
    """One int64 per (document, sentence) pair, ordered like the pairs."""
    return (np.int64(doc) << _KEY_SHIFT) | np.int64(sentence)


class Chunk(NamedTuple):
    """Consecutive rows of the captured dataset holding only whole sentences."""
    acts: torch.Tensor       # (n, d_model) float32, raw activations
    tokens: torch.Tensor     # (n,) int64 token ids
    sentence: torch.Tensor   # (n,) int64 global sentence ordinal (line in sentences.jsonl)
    position: torch.Tensor   # (n,) int64 position of the token in its sentence
    first_row: int           # global row number of acts[0]


@dataclass
class SentenceTable:
    """What the statistics need from sentences.jsonl, without holding the text in memory."""
    keys: np.ndarray         # (n_sentences,) int64 sorted keys (see sentence_key)
    order: np.ndarray        # (n_sentences,) int64 line number of each sorted key
    labels: np.ndarray       # (n_sentences,) int16 label index per line, -1 when unlabelled
    offsets: np.ndarray      # (n_sentences,) int64 byte offset of each line, for random access
    label_names: list[str]

    def ordinals(self, doc: np.ndarray, sentence: np.ndarray) -> np.ndarray:
        """Line numbers of (document, sentence) pairs; ValueError when a pair is missing."""
        keys = sentence_key(doc.astype(np.int64), sentence.astype(np.int64))
        where = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        if len(keys) and not np.array_equal(self.keys[where], keys):
            raise ValueError("sentences.jsonl lacks sentences that the activation shards refer to; "
                             "the capture folder is incomplete: rerun capture.py")
        return self.order[where]


class CapturedData:
    """Memory-mapped view of a captured dataset folder (nothing is read until iterated)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest_path = self.folder / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: not found; run capture.py first (or pass --capture-dir)")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path}: damaged JSON ({err.msg}); rerun capture.py") from None
        self.d_model = int(self.manifest["d_model"])
        self.dtype = str(self.manifest.get("dtype", "float32"))
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"{manifest_path}: unsupported dtype {self.dtype!r} (float32, float16, bfloat16)")
        self.shards = [(s["name"], int(s["rows"])) for s in self.manifest["shards"]]
        self.n_rows = sum(rows for _, rows in self.shards)
        self.hook_name = self.manifest.get("hook") or self.manifest.get("hook_name")
        self.label_names = [str(n) for n in (self.manifest.get("label_names") or [])]
        self._table: SentenceTable | None = None

    # -- files ------------------------------------------------------------------------------------
    def _file(self, kind: str, name: str) -> Path:
        # Shard names may be given as "00000" or as "acts-00000.bin".
        stem = name.split("-")[-1].split(".")[0]
        return self.folder / f"{kind}-{stem}.bin"

    def _map(self, kind: str, name: str, rows: int, width: int, dtype: str) -> np.memmap:
        path = self._file(kind, name)
        expected = rows * width * np.dtype(dtype).itemsize
        if not path.is_file() or path.stat().st_size < expected:
            raise ValueError(f"{path}: missing or shorter than the {rows} rows the manifest lists; "
                             "rerun capture.py")
        shape = (rows, width) if width > 1 else (rows,)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def shard_arrays(self, name: str, rows: int) -> tuple[np.memmap, np.memmap, np.memmap]:
        """(acts (rows, d_model), tokens (rows,), index (rows, 3)) of one shard, memory-mapped."""
        acts = self._map("acts", name, rows, self.d_model, _NUMPY_DTYPES[self.dtype])
        tokens = self._map("tokens", name, rows, 1, "<i4")
        index = self._map("index", name, rows, 3, "<i4")
        return acts, tokens, index

    def _to_float32(self, acts: np.ndarray) -> torch.Tensor:
        if self.dtype == "bfloat16":  # numpy has no bfloat16: the top 16 bits of a float32
            bits = torch.from_numpy(np.ascontiguousarray(acts).astype(np.int32) << 16)
            return bits.view(torch.float32)
        return torch.from_numpy(np.array(acts, dtype=np.float32))  # a copy: memmaps are read-only

    # -- sentences ----------------------------------------------------------------------------------
    @property
    def sentences(self) -> SentenceTable:
        """Keys, labels and byte offsets of sentences.jsonl (read once, streaming)."""
        if self._table is None:
            self._table = read_sentence_table(self.folder / "sentences.jsonl", self.label_names)
            self.label_names = self._table.label_names
        return self._table

    def read_sentences(self, ordinals: list[int]) -> dict[int, dict]:
        """The sentences.jsonl records at the given line numbers."""
        table, out = self.sentences, {}
        with open(self.folder / "sentences.jsonl", "rb") as f:
            for i in sorted(set(int(o) for o in ordinals)):
                f.seek(int(table.offsets[i]))
                out[i] = json.loads(f.readline())
        return out

    # -- streaming ----------------------------------------------------------------------------------
    def chunks(self, rows_per_chunk: int = 4096) -> Iterator[Chunk]:
        """Yield chunks of about `rows_per_chunk` rows, each cut at a sentence boundary."""
        table = self.sentences
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        first_row = row = 0
        for name, rows in self.shards:
            acts, tokens, index = self.shard_arrays(name, rows)
            for start in range(0, rows, rows_per_chunk):
                stop = min(rows, start + rows_per_chunk)
                pending.append((acts[start:stop], tokens[start:stop], index[start:stop]))
                row += stop - start
                a, t, ix = pending[0] if len(pending) == 1 else (np.concatenate(p) for p in zip(*pending))
                cut = _last_sentence_start(ix)
                if cut == 0:  # one sentence longer than the chunk: keep gathering
                    pending = [(a, t, ix)]
                    continue
                yield self._chunk(a[:cut], t[:cut], ix[:cut], first_row, table)
                first_row += cut
                pending = [(a[cut:], t[cut:], ix[cut:])] if cut < len(ix) else []
        if pending:
            a, t, ix = pending[0]
            yield self._chunk(a, t, ix, first_row, table)

    def _chunk(self, acts, tokens, index, first_row: int, table: SentenceTable) -> Chunk:
        index = np.asarray(index)
        return Chunk(acts=self._to_float32(acts),
                     tokens=torch.from_numpy(np.asarray(tokens, dtype=np.int64)),
                     sentence=torch.from_numpy(table.ordinals(index[:, 0], index[:, 1])),
                     position=torch.from_numpy(index[:, 2].astype(np.int64)),
                     first_row=first_row)

    def all_tokens(self) -> np.ndarray:
        """(n_rows,) int32 token ids of every row, in order (4 bytes a row)."""
        parts = [self.shard_arrays(name, rows)[1] for name, rows in self.shards]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _last_sentence_start(index: np.ndarray) -> int:
    """Row offset where the last sentence of `index` (rows, 3) starts (0 if it is all one sentence)."""
    change = (index[1:, 0] != index[:-1, 0]) | (index[1:, 1] != index[:-1, 1])
    starts = np.flatnonzero(change)
    return int(starts[-1]) + 1 if len(starts) else 0


def _label_index(label, names: list[str]) -> int:
    if label is None:
        return -1
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label)
    text = str(label)
    if text not in names:
        names.append(text)
    return names.index(text)


def read_sentence_table(path: Path, label_names: list[str]) -> SentenceTable:
    """Stream sentences.jsonl into sorted keys, label indices and line offsets."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; the capture folder is incomplete: rerun capture.py")
    names = list(label_names)
    keys, labels, offsets = [], [], []
    offset = 0
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    keys.append(sentence_key(int(record["doc"]), int(record["sentence"])))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise ValueError(f"{path}: line {line_number} is not a sentence record "
                                     "(doc, sentence, text, tokens); rerun capture.py") from None
                labels.append(_label_index(record.get("label"), names))
                offsets.append(offset)
            offset += len(line)
    keys_array = np.asarray(keys, dtype=np.int64)
    order = np.argsort(keys_array, kind="stable")
    return SentenceTable(keys=keys_array[order], order=order.astype(np.int64),
                         labels=np.asarray(labels, dtype=np.int16),
                         offsets=np.asarray(offsets, dtype=np.int64), label_names=names)
