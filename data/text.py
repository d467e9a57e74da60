"""Read a corpus as a stream of documents: plain text, JSONL, CSV, Parquet, or a folder of these.

Each document carries its record number in the corpus (`index`), its text, an optional label and the
remaining columns/fields as metadata. Records are numbered in reading order (rows of a CSV after the
header, lines of a JSONL file, blank-line-separated paragraphs of a text file, across the files of a
folder in sorted path order); empty texts are skipped but still counted, so `index` always points back
at the source record.

Files are decoded with a stated codec (UTF-8 by default; no guess: charset-normalizer 3.5 took cp1252
French for cp1250 and the default corpus for iso8859_10). A record
holding bytes the codec cannot decode is skipped, kept with U+FFFD in their place, or refused, as the
source says; an `Undecodable` tally counts them with their first line numbers, for the caller to report.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from llama.jsonfile import parse_json
from settings import SettingError

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES
INVALID_TEXT = ("skip", "replace", "error")  # what becomes of a record holding undecodable bytes
UNDECODED = re.compile("[\udc80-\udcff]")  # where surrogateescape put the bytes the codec could not decode
FIRST_LINES = 5  # line numbers a report names
HASH_LIMIT = 1 << 30  # files up to 1 GiB are identified by SHA-256, larger ones by size and mtime
SNIFF_BYTES = 8192  # the start of a file that tells text from binary (as git and grep decide)
BINARY_MAGIC = {b"%PDF-": "a PDF", b"PK\x03\x04": "a ZIP archive", b"\x1f\x8b": "gzip-compressed",
                b"\x28\xb5\x2f\xfd": "zstd-compressed"}


@dataclass
class Document:
    """One record of the corpus."""

    index: int                 # record number in the corpus (0-based, empty records counted)
    text: str
    label: str | None = None   # value of the label column/field, as text
    meta: dict = field(default_factory=dict)  # other scalar columns/fields


@dataclass(frozen=True)
class TextSource:
    """Where the text is and which fields to read.

    `text_field` names the JSONL field / CSV or Parquet column holding the text; `label_field`
    optionally names the one holding a label (kept with every sentence and activation). `encoding` is
    a Python codec name; `invalid_text` says what becomes of a record
    holding bytes that codec cannot decode (one of INVALID_TEXT).
    """

    path: Path
    text_field: str = "text"
    label_field: str | None = None
    encoding: str = "utf-8"
    invalid_text: str = "skip"


@dataclass
class Undecodable:
    """The records one reading met that held bytes their file's codec could not decode."""

    records: int = 0     # such records (empty ones not counted)
    read: int = 0        # non-empty records read in all
    first: list[tuple[str, int]] = field(default_factory=list)  # (file, line) of the first few

    def add(self, path: Path, line: int) -> None:
        self.records += 1
        if len(self.first) < FIRST_LINES:
            self.first.append((str(path), line))

    def where(self) -> str:
        """"lines 2, 15 of a.csv" or "a.csv:2, b.txt:7", for one line of text."""
        files = {name for name, _ in self.first}
        if len(files) == 1:
            lines = ", ".join(str(n) for _, n in self.first)
            return f"line{'s' if len(self.first) > 1 else ''} {lines} of {Path(next(iter(files))).name}"
        return ", ".join(f"{Path(name).name}:{n}" for name, n in self.first)

    def as_dict(self) -> dict:
        return {"records": self.records, "read": self.read, "first": [list(f) for f in self.first]}


def check_encoding(field_name: str, value: str) -> str:
    """A text codec Python knows, returned under its canonical name; SettingError otherwise."""
    try:
        info = codecs.lookup(value)
    except LookupError:
        info = None
    if info is None or not info._is_text_encoding:  # the flag str.encode uses to refuse rot13, base64, ...
        raise SettingError(field_name, value, "not a text codec Python knows; name one (utf-8, cp1252, "
                                              "latin-1, ...)")
    return info.name


def undecodable_line(tally: Undecodable, source: TextSource) -> str:
    """One line for the user: how many records held undecodable bytes, where, what became of them, and
    the flags that change it."""
    fate = {"skip": "skipped", "replace": "kept with U+FFFD in their place"}[source.invalid_text]
    return (f"{source.path}: {tally.records:,} of {_records_hold(tally.read)} bytes that are not valid "
            f"{source.encoding} (first at {tally.where()}): {fate}; --invalid-text (skip, replace, error) "
            f"and --encoding (the corpus's codec) change that")


def _records_hold(n: int) -> str:
    return f"{n:,} record holds" if n == 1 else f"{n:,} records hold"


def corpus_files(path: Path) -> list[Path]:
    """The files a source reads: the file itself, or a folder's known files in sorted order. Each is
    checked to hold text (or to be Parquet): a binary file is refused, naming it."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in KNOWN_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: folder holds no {', '.join(KNOWN_SUFFIXES)} files; "
                             f"point --data at a corpus")
    else:
        raise FileNotFoundError(f"{path}: no such file or folder; point --data at a corpus")
    for file in files:
        check_text_file(file)
    return files


def check_text_file(path: Path) -> None:
    """Refuse a file whose first bytes show it is not text (a PDF, an archive, NUL bytes), naming it."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    kind = next((name for magic, name in BINARY_MAGIC.items() if head.startswith(magic)), None)
    if kind is None and b"\0" in head:
        kind = "binary data or UTF-16 text: NUL bytes"
    if kind:
        raise ValueError(f"{path}: not a text corpus ({kind}); --data reads UTF-8 text, JSONL, CSV/TSV or "
                         f"Parquet: extract or convert it first")


def iter_documents(source: TextSource, undecodable: Undecodable | None = None) -> Iterator[Document]:
    """Stream every non-empty document of the source, in a deterministic order. Records holding
    undecodable bytes are counted into `undecodable` and skipped, replaced or refused per the source."""
    tally = Undecodable() if undecodable is None else undecodable
    offset = 0
    for path in corpus_files(source.path):
        codec = codecs.lookup(source.encoding).name
        records = 0  # records in this file, empty ones included
        found = tally.records
        for doc, line in _iter_file(path, source, codec):
            records = doc.index + 1
            if not doc.text.strip():
                continue
            tally.read += 1
            if _undecodable(doc):
                tally.add(path, line)
                if source.invalid_text != "replace":
                    continue
                doc = _replaced(doc)
            if source.invalid_text == "error" and tally.records > found:
                continue  # the rest of the file is only counted, for the message
            doc.index += offset
            yield doc
        if tally.records > found and source.invalid_text == "error":
            raise ValueError(f"{path}: {_records_hold(tally.records - found)} bytes that are not valid {codec} "
                             f"(first at {tally.where()}); set --encoding to the corpus's codec, or "
                             f"--invalid-text skip or replace")
        offset += records


def _open_text(path: Path, codec: str, newline: str | None):
    """Undecodable bytes become lone surrogates (U+DC80..U+DCFF): the record holding them is then known."""
    return open(path, encoding="utf-8-sig" if codec == "utf-8" else codec, errors="surrogateescape",
                newline=newline)


def _undecodable(doc: Document) -> bool:
    values = [doc.text, doc.label or "", *(v for v in doc.meta.values() if isinstance(v, str))]
    return any(UNDECODED.search(v) for v in values)


def _replaced(doc: Document) -> Document:
    def clean(value):
        return UNDECODED.sub("\ufffd", value) if isinstance(value, str) else value
    return Document(doc.index, clean(doc.text), clean(doc.label), {k: clean(v) for k, v in doc.meta.items()})


def _iter_file(path: Path, source: TextSource, codec: str) -> Iterator[tuple[Document, int]]:
    """The documents of one file, numbered from 0 within the file, each with the line it starts on
    (for text, the line of its first undecodable byte)."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, source, codec, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, source, codec)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, source)
    return _read_text(path, codec)


def _read_text(path: Path, codec: str) -> Iterator[tuple[Document, int]]:
    paragraph: list[str] = []
    index = start = 0
    bad = None  # the paragraph's first line holding an undecodable byte
    with _open_text(path, codec, newline=None) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                start = start if paragraph else number
                bad = bad or (number if UNDECODED.search(line) else None)
                paragraph.append(line)
            elif paragraph:
                yield Document(index, "".join(paragraph).strip()), bad or start
                index, paragraph, bad = index + 1, [], None
    if paragraph:
        yield Document(index, "".join(paragraph).strip()), bad or start


def _record(index: int, row: dict, source: TextSource) -> Document:
    label = row.get(source.label_field) if source.label_field else None
    skip = {source.text_field, source.label_field}
    meta = {k: v for k, v in row.items() if k not in skip and isinstance(v, (str, int, float, bool))}
    text = row.get(source.text_field)
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return Document(index, text, None if label is None else str(label), meta)


def _check_columns(path: Path, columns: list[str], source: TextSource, kind: str) -> None:
    for flag, name in (("--text-field", source.text_field), ("--label-field", source.label_field)):
        if name and name not in columns:
            raise ValueError(f"{path}: no {kind} {name!r} (has {', '.join(map(repr, columns))}); "
                             f"set {flag}")


def _read_csv(path: Path, source: TextSource, codec: str, delimiter: str) -> Iterator[tuple[Document, int]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents are fine
    with _open_text(path, codec, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        _check_columns(path, list(reader.fieldnames or []), source, "column")
        end = reader.line_num  # the csv module's line count (\r, \n, \r\n each end a line)
        for index, row in enumerate(reader):
            yield _record(index, row, source), end + 1
            end = reader.line_num


def _read_jsonl(path: Path, source: TextSource, codec: str) -> Iterator[tuple[Document, int]]:
    checked = False  # the first object must have the named fields
    with _open_text(path, codec, newline=None) as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            row = parse_json(line, f"{path}:{index + 1}", "expected one object per line", expect=dict)
            if not checked:
                _check_columns(path, list(row), source, "field")
                checked = True
            yield _record(index, row, source), index + 1


def _read_parquet(path: Path, source: TextSource) -> Iterator[tuple[Document, int]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow; run `pip install pyarrow` "
                         f"or convert the file to CSV/JSONL") from None
    parquet = pq.ParquetFile(path)
    _check_columns(path, parquet.schema_arrow.names, source, "column")
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield _record(index, row, source), index + 1
            index += 1


def uniform_hash(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A seeded pseudo-random number in [0, 1) per integer id (splitmix64 finaliser): (n,) float64.

    Used for choices that must not depend on reading order or on the number of processes: which
    documents a sampled capture keeps, which documents go to the validation split.
    """
    with np.errstate(over="ignore"):
        x = np.asarray(ids).astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def file_identity(path: Path) -> dict:
    """Identify a file for resume checks: resolved path, size, and SHA-256 (or mtime when huge)."""
    path = Path(path).resolve()
    stat = path.stat()
    identity = {"path": str(path), "size": stat.st_size}
    if stat.st_size <= HASH_LIMIT:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        identity["sha256"] = digest.hexdigest()
    else:
        identity["mtime_ns"] = stat.st_mtime_ns
    return identity


def corpus_identity(source: TextSource) -> dict:
    """The source's files and fields, enough to tell whether a rerun reads the same corpus."""
    return {"files": [file_identity(p) for p in corpus_files(source.path)],
            "text_field": source.text_field, "label_field": source.label_field}
