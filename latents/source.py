"""Read a captured dataset (runs/capture/<hook>/) as a stream of chunks made of whole sentences.

The format is data/shards.py's: per shard `acts-NNNNN.bin` (rows, d_model) in the manifest's dtype,
`tokens-NNNNN.bin` int32 (rows,), `index-NNNNN.bin` int32 (rows, 3) = (document, sentence, position in
sentence); `sentences.jsonl` one line per sentence; `manifest.json`. The rows of one sentence are
contiguous and in order, so a chunk can always be cut at a sentence start; shards are read a chunk
at a time with plain reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from data.shards import DTYPES, CapturedDataset, shard_file
from llama.jsonfile import parse_json

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
    docs: np.ndarray         # (n_sentences,) int64 document of each line
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
    """A captured dataset folder (data.shards.CapturedDataset) read as chunks of whole sentences."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.dataset = CapturedDataset(self.folder)
        self.manifest = self.dataset.manifest
        self.d_model = self.dataset.d_model
        self.n_rows = self.dataset.total_rows
        self.hook_name = self.dataset.hook
        self.label_names = [str(n) for n in self.dataset.labels]
        self._table: SentenceTable | None = None
        self._token_maps: list[np.ndarray] | None = None

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
        pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        first_row = 0
        for i, entry in enumerate(self.dataset.shards):
            self.dataset[i]  # checks the shard's files against the manifest
            for start in range(0, entry["rows"], rows_per_chunk):
                piece = self._read(entry["shard"], start, min(entry["rows"], start + rows_per_chunk))
                pending.append(piece)
                a, t, ix = pending[0] if len(pending) == 1 else (torch.cat(p) for p in zip(*pending))
                cut = _last_sentence_start(ix)
                if cut == 0:  # one sentence longer than the chunk: keep gathering
                    pending = [(a, t, ix)]
                    continue
                yield self._chunk(a[:cut], t[:cut], ix[:cut], first_row, table)
                first_row += cut
                pending = [(a[cut:], t[cut:], ix[cut:])] if cut < len(ix) else []
        if pending:
            yield self._chunk(*pending[0], first_row, table)

    def _read(self, shard: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows [start, stop) of a shard: (acts (n, d_model) stored dtype, tokens (n,), index (n, 3)).
        Plain reads, not memory maps, so the pages of finished chunks never count against memory."""
        torch_dtype, raw = DTYPES[self.manifest["dtype"]]
        out = []
        for part, dtype, width in (("acts", raw, self.d_model), ("tokens", "<i4", 1), ("index", "<i4", 3)):
            size = np.dtype(dtype).itemsize * width
            array = np.fromfile(shard_file(self.folder, part, shard), dtype=dtype, count=(stop - start) * width,
                                offset=start * size)
            out.append(torch.from_numpy(array.reshape(stop - start, width) if width > 1 else array))
        if torch_dtype == torch.bfloat16:  # stored as int16 bit patterns
            out[0] = out[0].view(torch.bfloat16)
        return out[0], out[1], out[2]

    def _chunk(self, acts, tokens, index, first_row: int, table: SentenceTable) -> Chunk:
        index = index.numpy()
        return Chunk(acts=acts.float(),
                     tokens=tokens.long(),
                     sentence=torch.from_numpy(table.ordinals(index[:, 0], index[:, 1])),
                     position=torch.from_numpy(index[:, 2].astype(np.int64)),
                     first_row=first_row)

    def tokens(self, start: int, stop: int) -> list[int]:
        """Token ids of global rows [start, stop) (within one shard, as a sentence's rows are)."""
        shard, first = self._locate(start)
        return [int(t) for t in self._token_maps[shard][first:first + stop - start]]

    def widened(self, start: int, stop: int, before: int, after: int) -> tuple[list[int], int]:
        """Token ids of rows [start - b, stop + a) with b <= before and a <= after as large as the
        sentence of rows start .. stop - 1 allows; returns (ids, b)."""
        shard, first = self._locate(start)
        index, rows = self._index_maps[shard], len(self._token_maps[shard])
        last = first + stop - start - 1
        same = lambda i, j: 0 <= i < rows and (index[i, :2] == index[j, :2]).all()
        b = next((n for n in range(before, 0, -1) if same(first - n, first)), 0)
        a = next((n for n in range(after, 0, -1) if same(last + n, last)), 0)
        return [int(t) for t in self._token_maps[shard][first - b:last + 1 + a]], b

    def _locate(self, start: int) -> tuple[int, int]:
        """(shard, row within it) of global row `start`; maps the shards' token and index files once
        (read-only maps: only the touched pages are read)."""
        if self._token_maps is None:
            shards = [self.dataset[i] for i in range(len(self.dataset))]
            self._token_maps = [s.tokens.numpy() for s in shards]
            self._index_maps = [s.index.numpy() for s in shards]
            self._shard_starts = np.cumsum([0] + [s["rows"] for s in self.dataset.shards])
        shard = int(np.searchsorted(self._shard_starts, start, side="right")) - 1
        return shard, start - int(self._shard_starts[shard])


def _last_sentence_start(index: torch.Tensor) -> int:
    """Row offset where the last sentence of `index` (rows, 3) starts (0 if it is all one sentence)."""
    change = (index[1:, 0] != index[:-1, 0]) | (index[1:, 1] != index[:-1, 1])
    starts = torch.nonzero(change).flatten()
    return int(starts[-1]) + 1 if len(starts) else 0


def _label_index(label, names: list[str]) -> int:
    """Index of a sentence's label among the manifest's label names (matched as text; new ones added)."""
    if label is None:
        return -1
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
                    record = parse_json(line.decode("utf-8"), path)
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
                         offsets=np.asarray(offsets, dtype=np.int64), docs=keys_array >> _KEY_SHIFT,
                         label_names=names)
