"""data/: corpus readers, sentence splitting, records, shards, prebatching and statistics.

No model here: shards are synthetic, tokenizers are simple stand-ins, and every result is checked
against an independent reference (numpy, brute force, the raw bytes, nltk's own tokenizer).
"""

from __future__ import annotations

import errno
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import atomic
import cli
import data.fileio
from data.batches import BatchDataset
from data.chunks import iter_chunks, plan_batches
from data.manifest import CaptureBook
from data.prepare import SentenceOptions, chat_prefix, context_prefix, iter_records, write_sentences
from data.sentences import SentenceSplitter
from data.shards import CapturedDataset, ShardData, ShardWriter, read_manifest
from data.shuffle import PrebatchConfig, is_validation, prebatch
from data.text import TextSource, corpus_identity, corpus_files, iter_documents
import prebatch as prebatch_script


# ---------------------------------------------------------------- corpus readers

def test_csv_labels_metadata_and_invalid_utf8(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"sentiment,confidence,text\r\npositive,0.9,Great car\xd1 indeed.\r\n"
                     b"negative,0.5,\r\nnegative,0.7,\"Bad, very bad.\nTwo lines.\"\r\n")
    docs = list(iter_documents(TextSource(path, "text", "sentiment", invalid_text="replace")))
    assert [d.index for d in docs] == [0, 2]  # the empty row is skipped but counted
    assert docs[0].text == "Great car\ufffd indeed."
    assert docs[0].label == "positive" and docs[0].meta == {"confidence": "0.9"}
    assert docs[1].text == "Bad, very bad.\nTwo lines." and docs[1].label == "negative"


def test_missing_column_names_the_file_and_the_flag(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"c\.csv: no column 'text' .*'a', 'b'.*--text-field"):
        list(iter_documents(TextSource(path)))
    with pytest.raises(ValueError, match="--label-field"):
        list(iter_documents(TextSource(path, "a", "stars")))


def test_jsonl_text_and_folder_numbering(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"body": "Second file.", "stars": 4}\n')
    (tmp_path / "a.jsonl").write_text('{"body": "One.", "stars": 5, "id": "x"}\n\n{"body": "Two."}\n')
    (tmp_path / "c.txt").write_text("Para one\nstill one.\n\n\nPara two.\n")
    (tmp_path / "ignored.bin").write_bytes(b"\0")
    docs = list(iter_documents(TextSource(tmp_path, "body", "stars")))
    # a.jsonl has records 0..2 (line 1 blank), b.jsonl follows at 3, c.txt's paragraphs at 4, 5
    assert [(d.index, d.text, d.label) for d in docs] == [
        (0, "One.", "5"), (2, "Two.", None), (3, "Second file.", "4"),
        (4, "Para one\nstill one.", None), (5, "Para two.", None)]
    assert docs[0].meta == {"id": "x"}
    with pytest.raises(ValueError, match=r"a\.jsonl: no field 'text'"):
        list(iter_documents(TextSource(tmp_path / "a.jsonl")))


def test_parquet_reader_and_missing_pyarrow_message(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["Hello.", "", "World."], "label": ["a", "b", "c"]}), path)
    docs = list(iter_documents(TextSource(path, "text", "label")))
    assert [(d.index, d.text, d.label) for d in docs] == [(0, "Hello.", "a"), (2, "World.", "c")]
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)  # import now fails
    with pytest.raises(ValueError, match="needs pyarrow; run `pip install pyarrow`"):
        list(iter_documents(TextSource(path)))


def test_corpus_identity_hashes_the_bytes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"abc")
    identity = corpus_identity(TextSource(path))
    assert identity["files"][0]["sha256"] == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("kind", ["nul", "pdf", "gzip", "utf16", "folder"])
def test_binary_corpus_is_refused_naming_the_file(tmp_path, kind):
    import gzip

    content = {"nul": b"text,label\nfine,a\n\0\0\0\n", "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
               "gzip": gzip.compress(b'{"text": "hi"}\n'), "utf16": "Hello there.\n".encode("utf-16"),
               "folder": b"\0" * 10}[kind]
    name = {"nul": "c.csv", "pdf": "paper.txt", "gzip": "d.jsonl", "utf16": "t.txt", "folder": "b.txt"}[kind]
    path = tmp_path / name
    path.write_bytes(content)
    if kind == "folder":
        (tmp_path / "a.txt").write_text("Readable text.\n")
    source = TextSource(tmp_path if kind == "folder" else path)
    with pytest.raises(ValueError, match=rf"{name}: not a text corpus \(.*\); --data reads"):
        list(iter_documents(source))
    with pytest.raises(ValueError, match="not a text corpus"):
        corpus_files(source.path)


# ---------------------------------------------------------------- sentences

def test_punkt_learns_abbreviations_from_the_corpus():
    # "Dr." is followed by a capitalised name many times: trained Punkt learns it is an abbreviation.
    corpus = [f"Dr. Smith saw patient {i} today. The visit went well." for i in range(300)]
    trained = SentenceSplitter.train(corpus)
    untrained = SentenceSplitter.untrained()
    text = "Dr. Smith arrived. He sat down!\n\nNew paragraph without a stop"
    assert trained.trained and not untrained.trained
    assert trained.split(text) == ["Dr. Smith arrived.", "He sat down!", "New paragraph without a stop"]
    assert untrained.split(text)[:2] == ["Dr.", "Smith arrived."]


def test_punkt_falls_back_when_the_corpus_is_tiny():
    assert not SentenceSplitter.train(["One. Two."]).trained


def test_sentences_are_substrings_of_the_document():
    splitter = SentenceSplitter.untrained()
    text = "  First one.   Second one,\nstill second?  \n\n Third!"
    sentences = splitter.split(text)
    assert sentences == ["First one.", "Second one,\nstill second?", "Third!"]
    assert all(s in text for s in sentences)


# ---------------------------------------------------------------- records

class WordTokenizer:
    """Stand-in tokenizer: one id per whitespace-separated word; a toy chat template."""

    bos_id = 1

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def encode(self, text, *, bos=False, eos=False):
        ids = [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]
        return [self.bos_id] * bos + ids

    def encode_chat(self, messages, add_generation_prompt=True):
        return [self.bos_id, 2, 3] + self.encode(messages[0]["content"]) + [4] + [5] * add_generation_prompt


def test_records_cap_labels_and_limits(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label\n\"Alpha beta gamma delta epsilon. Zeta eta.\",pos\n\"Theta iota.\",neg\n\"Kappa lambda mu.\",pos\n")
    tok = WordTokenizer()
    options = SentenceOptions(max_tokens=3)
    records = list(iter_records(TextSource(path, "text", "label"), tok, options, SentenceSplitter.untrained()))
    assert [(r["doc"], r["sentence"], r["text"], len(r["tokens"]), r.get("truncated", False), r["label"])
            for r in records] == [(0, 0, "Alpha beta gamma delta epsilon.", 3, True, "pos"),
                                  (0, 1, "Zeta eta.", 2, False, "pos"), (1, 0, "Theta iota.", 2, False, "neg"),
                                  (2, 0, "Kappa lambda mu.", 3, False, "pos")]
    assert records[0]["tokens"] == tok.encode("Alpha beta gamma")  # the first max_tokens tokens
    limited = SentenceOptions(max_tokens=3, max_total_tokens=5)
    assert len(list(iter_records(TextSource(path, "text", "label"), tok, limited,
                                 SentenceSplitter.untrained()))) == 2  # stops once 5 tokens are reached
    one_doc = SentenceOptions(max_documents=1)
    assert {r["doc"] for r in iter_records(TextSource(path, "text", "label"), tok, one_doc,
                                           SentenceSplitter.untrained())} == {0}
    summary = write_sentences(tmp_path / "s.jsonl", iter(records))
    assert summary == {"sentences": 4, "tokens": 10, "documents": 3, "truncated": 1, "labels": ["neg", "pos"]}
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records


def test_context_prefix_bos_and_chat():
    tok = WordTokenizer()
    assert context_prefix(tok, SentenceOptions()) == []
    assert context_prefix(tok, SentenceOptions(bos=True)) == [1]
    assert chat_prefix(tok) == [1, 2, 3]  # template opening up to the user's text
    assert context_prefix(tok, SentenceOptions(chat=True, bos=True)) == [1, 2, 3]  # BOS not doubled


# ---------------------------------------------------------------- chunks and batches

def test_plan_batches_respects_the_budget_and_covers_everything():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=500).tolist()
    batches = plan_batches(lengths, batch_tokens=256)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        padded = max(lengths[i] for i in b) * len(b)
        assert padded <= 256 or len(b) == 1
    padding = sum(max(lengths[i] for i in b) * len(b) for b in batches) - sum(lengths)
    assert padding < 0.1 * sum(lengths)  # length sorting keeps padding small
    # two length groups: a batch that is already big enough does not take much shorter sentences
    lengths = [100] * 20 + [10] * 200
    batches = plan_batches(lengths, batch_tokens=8192)
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)


def test_chunks_close_at_the_token_threshold():
    records = [{"tokens": [0] * n} for n in (3, 4, 2, 5, 1)]
    chunks = list(iter_chunks(iter(records), chunk_tokens=6))
    assert [(c.index, c.first_sentence, len(c.records), c.rows) for c in chunks] == [(0, 0, 2, 7), (1, 2, 2, 7),
                                                                                     (2, 4, 1, 1)]
    assert chunks[0].row_offsets() == [0, 3]


# ---------------------------------------------------------------- shards

def make_capture(folder: Path, rows_per_shard: list[int], d: int = 8, dtype=torch.float32, seed: int = 0):
    """A synthetic capture folder written through the real writer; returns all rows as float64."""
    rng = np.random.default_rng(seed)
    book = CaptureBook({"h": folder}, {"model": {"path": "m"}, "dtype": str(dtype).removeprefix("torch."),
                                       "prepend_bos": False, "chat": False, "settings": {}})
    folder.mkdir(parents=True, exist_ok=True)
    book.start({"h": d})
    writer, all_rows, doc = ShardWriter(), [], 0
    for shard, rows in enumerate(rows_per_shard):
        acts = torch.from_numpy(rng.normal(size=(rows, d)).astype(np.float32) * 3 + 1).to(dtype)
        docs = doc + np.arange(rows) // 3  # three tokens per document
        doc = int(docs[-1]) + 1 if rows else doc
        index = np.stack([docs, np.zeros(rows), np.arange(rows) % 3], 1).astype(np.int32)
        tokens = rng.integers(0, 1000, size=rows).astype(np.int32)
        writer.submit(shard, [ShardData(folder, acts, tokens, index)],
                      lambda s, checks, r=rows: book.commit({"shard": s, "name": f"{s:05d}", "rows": r}, checks))
        all_rows.append((acts.float().double().numpy(), tokens, index))
    writer.close()
    book.finalize()
    return all_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shards_round_trip_as_raw_little_endian(tmp_path, dtype):
    expected = make_capture(tmp_path, [5, 0, 7], dtype=dtype)
    ds = CapturedDataset(tmp_path)
    assert len(ds) == 3 and ds.total_rows == 12 and ds.dtype == dtype
    raw = {torch.float32: "<f4", torch.float16: "<f2", torch.bfloat16: "<u2"}[dtype]
    for shard, (acts, tokens, index) in zip(ds, expected):
        assert shard.acts.dtype == dtype
        np.testing.assert_array_equal(shard.acts.double().numpy(), acts)
        np.testing.assert_array_equal(shard.tokens.numpy(), tokens)
        np.testing.assert_array_equal(shard.index.numpy(), index)
        # the files are exactly the little-endian bytes, readable without this project's code
        on_disk = np.fromfile(tmp_path / f"acts-{shard.number:05d}.bin", dtype=raw)
        assert on_disk.tobytes() == shard.acts.contiguous().view(torch.int16 if dtype != torch.float32
                                                                  else torch.int32).numpy().tobytes()
    assert read_manifest(tmp_path)["total_rows"] == 12 and not list(tmp_path.glob("*.tmp"))


def full_disk_at(path: Path) -> None:
    """Make writes to `path` fail as on a full disk: a link to /dev/full (ENOSPC from the kernel)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    path.symlink_to("/dev/full")


def test_disk_full_removes_the_partial_shard_and_keeps_the_manifest(tmp_path):
    make_capture(tmp_path, [4], d=4)
    before = (tmp_path / "manifest.json").read_bytes()
    full_disk_at(tmp_path / "tokens-00001.bin.tmp")  # the shard's second file
    book = CaptureBook({"h": tmp_path}, {})
    writer = ShardWriter()
    writer.submit(1, [ShardData(tmp_path, torch.ones(40000, 4), np.zeros(40000, np.int32),
                                np.zeros((40000, 3), np.int32))], book.commit)
    with pytest.raises(OSError) as err:  # numpy's tofile said "160000 requested and 0 written", no errno
        writer.close()
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir() if "00001" in p.name) == []
    assert (tmp_path / "manifest.json").read_bytes() == before


def test_writable_check_is_safe_when_processes_check_one_folder_together(tmp_path):
    # torchrun ranks check the same output folder at the same moment; a shared probe file name let
    # one rank delete the other's probe and fail with "cannot write there"
    folder = tmp_path / "out"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: data.fileio.check_writable_folder(folder, "--out"), range(400)))
    assert results == [folder] * 400 and list(folder.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="--out .*cannot write there"):
        data.fileio.check_writable_folder(blocker / "sub", "--out")


def test_sampled_checksum_of_the_file_equals_that_of_the_array(tmp_path):
    rng = np.random.default_rng(0)
    for rows in (0, 3, 100_000):  # empty, whole-file, sampled (2.4 MB > 32 blocks of 64 KiB)
        raw = data.fileio.raw_bytes(rng.normal(size=(rows, 6)), "<f4")
        path = tmp_path / f"{rows}.bin"
        with atomic.AtomicFile(path) as out:
            data.fileio.append_array(out.file, raw, "<f4")
        assert path.read_bytes() == raw.tobytes()  # the bytes numpy would write, independently
        check = data.fileio.array_check(raw)
        assert data.fileio.file_check(path) == check and check["bytes"] == raw.nbytes
        if rows:
            damaged = bytearray(path.read_bytes())
            damaged[0] ^= 1  # the first block is always sampled
            path.write_bytes(bytes(damaged))
            assert data.fileio.file_check(path) != check


def test_rerun_forgets_damaged_shards_and_says_so(tmp_path):
    make_capture(tmp_path, [5, 7, 6, 4], d=8)
    with open(tmp_path / "acts-00001.bin", "r+b") as f:
        f.truncate(100)  # truncated
    tokens = bytearray((tmp_path / "tokens-00002.bin").read_bytes())
    tokens[5] ^= 0xFF  # same size, other bytes
    (tmp_path / "tokens-00002.bin").write_bytes(bytes(tokens))
    (tmp_path / "index-00003.bin").unlink()  # missing
    base = {k: v for k, v in read_manifest(tmp_path).items() if k not in ("shards", "total_rows", "complete")}
    book = CaptureBook({"h": tmp_path}, base)
    lines = book.start({"h": 8})
    assert lines == ["shard 00001 is damaged (acts-00001.bin is 100 bytes, the manifest says 224): capturing it again",
                     "shard 00002 is damaged (tokens-00002.bin does not match its checksum): capturing it again",
                     "shard 00003 is damaged (index-00003.bin is missing): capturing it again"]
    assert book.done() == {0}
    assert [e["shard"] for e in read_manifest(tmp_path)["shards"]] == [0]
    assert CaptureBook({"h": tmp_path}, base).start({"h": 8}) == []  # shard 0 is intact


def test_a_manifest_without_checksums_is_verified_by_size(tmp_path):
    make_capture(tmp_path, [5, 7], d=8)
    manifest = read_manifest(tmp_path)
    for entry in manifest["shards"]:
        del entry["files"]  # as written before checksums were recorded
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    acts = bytearray((tmp_path / "acts-00000.bin").read_bytes())
    acts[0] ^= 1  # not detectable without a checksum
    (tmp_path / "acts-00000.bin").write_bytes(bytes(acts))
    with open(tmp_path / "acts-00001.bin", "r+b") as f:
        f.truncate(8)
    base = {k: v for k, v in manifest.items() if k not in ("shards", "total_rows", "complete")}
    book = CaptureBook({"h": tmp_path}, base)
    assert [line[:11] for line in book.start({"h": 8})] == ["shard 00001"]
    assert book.done() == {0}


def test_every_written_file_has_the_usual_permissions(tmp_path):
    from safetensors.torch import save_file

    usual = 0o666 & ~atomic._UMASK
    with atomic.atomic_path(tmp_path / "w.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))  # safetensors creates its files 0600
    atomic.write_json_atomic(tmp_path / "x.json", {"a": 1})
    make_capture(tmp_path / "capture", [20, 30], d=4)
    prebatch(tmp_path / "capture", tmp_path / "batches", PrebatchConfig(batch_size=8, val_fraction=0.3))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 12
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(usual) for p in files}


def test_prebatch_on_a_full_disk_cleans_up_and_says_so(tmp_path, monkeypatch, capsys):

    make_capture(tmp_path / "capture", [50, 30], d=4)
    before = {p.name: p.read_bytes() for p in (tmp_path / "capture").iterdir()}
    out = tmp_path / "batches"
    full_disk_at(tmp_path / "full")  # prebatch clears its folder's *.tmp first: the link lives elsewhere
    real = atomic.temporary_name
    monkeypatch.setattr(atomic, "temporary_name",
                        lambda p: tmp_path / "full" if Path(p).name == "w00000-train-00000.bin" else real(p))
    monkeypatch.setattr("sys.argv", ["prebatch.py", "--capture", str(tmp_path / "capture"), "--out", str(out),
                                     "--batch-size", "8"])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(prebatch_script.main)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]  # (after the progress bar's)
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: the disk is full while writing into --out {out}; the capture is untouched")
    assert "rerun the same command" in lines[0]
    assert list(out.iterdir()) == []  # nothing half-written is left to take space
    assert {p.name: p.read_bytes() for p in (tmp_path / "capture").iterdir()} == before
    monkeypatch.setattr("sys.argv", ["prebatch.py", "--capture", str(tmp_path / "capture"), "--out", str(out),
                                     "--batch-size", "8"])
    with pytest.raises(SystemExit) as exit_info:  # the same command, once there is space
        cli.run_main(prebatch_script.main)
    assert exit_info.value.code == 0 and BatchDataset(out).meta["batch_size"] == 8


@pytest.mark.parametrize("case", ["out-file", "capture-file", "is-dir", "same", "missing", "val-fraction"])
def test_prebatch_command_errors_are_one_line(tmp_path, case, monkeypatch, capsys):

    make_capture(tmp_path / "capture", [10], d=4)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "batches" / "batches.json").mkdir(parents=True)
    capture, out = str(tmp_path / "capture"), str(tmp_path / "out")
    args, expected = {
        "out-file": (["--capture", capture, "--out", str(blocker)], f"--out {blocker}: a file is there, not a folder"),
        "capture-file": (["--capture", str(blocker), "--out", out], f"--capture {blocker}: a file, not a capture"),
        "is-dir": (["--capture", capture, "--out", str(tmp_path / "batches")],
                   "batches.json is a folder where a file goes; remove it or choose another --out"),
        "same": (["--capture", capture, "--out", capture], "must differ from the capture folder"),
        "missing": (["--capture", str(tmp_path / "nothing"), "--out", out], "capture activations there first"),
        "val-fraction": (["--capture", capture, "--out", out, "--val-fraction", "1.5"], "--val-fraction 1.5"),
    }[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr("sys.argv", ["prebatch.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(prebatch_script.main)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------- prebatching and statistics

def row_digests(rows: np.ndarray) -> list[bytes]:
    return sorted(hashlib.sha1(np.ascontiguousarray(r, dtype=np.float32).tobytes()).digest() for r in rows)


@pytest.fixture(scope="module")
def prebatched(tmp_path_factory):
    root = tmp_path_factory.mktemp("prebatch")
    expected = make_capture(root / "capture", [50, 13, 0, 77, 31, 64], d=6)
    cfg = PrebatchConfig(batch_size=16, val_fraction=0.2, window_shards=2, file_mb=1, seed=3)
    progress = []
    meta = prebatch(root / "capture", root / "batches", cfg, on_progress=progress.append)
    return root, expected, cfg, meta, progress


def test_prebatch_keeps_every_activation_exactly_once(prebatched):
    root, expected, cfg, meta, progress = prebatched
    captured = np.concatenate([a for a, _, _ in expected])
    stored = []
    for split in ("train", "val"):
        ds = BatchDataset(root / "batches", split)
        assert len(ds) == meta[f"n_{split}"]
        for i in range(len(ds)):
            assert ds[i].shape == (16, 6) and ds[i].dtype == torch.float32
            stored.append(ds[i].numpy())
        assert len(ds.remainder()) < 16
        stored.append(ds.remainder().numpy())
    stored = np.concatenate(stored)
    assert row_digests(stored) == row_digests(captured)
    assert sum(progress) == captured.size * 4


def test_prebatch_validation_holds_whole_documents_and_batches_are_shuffled(prebatched):
    root, expected, cfg, meta, _ = prebatched
    captured = np.concatenate([a for a, _, _ in expected]).astype(np.float32)
    docs = np.concatenate([i[:, 0] for _, _, i in expected])
    lookup = {r.tobytes(): d for r, d in zip(captured, docs)}
    val_docs = {lookup[r.tobytes()] for i in range(meta["n_val"]) for r in BatchDataset(root / "batches", "val")[i].numpy()}
    train = BatchDataset(root / "batches", "train")
    train_docs = {lookup[r.tobytes()] for i in range(len(train)) for r in train[i].numpy()}
    assert val_docs and not val_docs & train_docs
    assert val_docs <= set(docs[is_validation(docs, cfg.val_fraction, cfg.seed)].tolist())
    first = [lookup[r.tobytes()] for r in train[0].numpy()]
    assert first != sorted(first)  # rows are not in capture order


def test_welford_statistics_equal_numpy(prebatched):
    root, expected, cfg, meta, _ = prebatched
    captured = np.concatenate([a for a, _, _ in expected])
    docs = np.concatenate([i[:, 0] for _, _, i in expected])
    val = is_validation(docs, cfg.val_fraction, cfg.seed)
    stats = json.loads((root / "batches" / "stats.json").read_text())
    for name, rows in (("all", captured), ("train", captured[~val]), ("val", captured[val])):
        s = stats[name]
        assert s["count"] == len(rows)
        np.testing.assert_allclose(s["mean"], rows.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s["var"], rows.var(0), rtol=1e-10)
        np.testing.assert_allclose(s["mean_sq_norm"], (rows ** 2).sum(1).mean(), rtol=1e-12)
    assert BatchDataset(root / "batches").stats == stats["train"]


def test_prebatch_with_workers_gives_the_same_files(prebatched, tmp_path):
    root, _, cfg, meta, _ = prebatched
    cfg2 = PrebatchConfig(**{**cfg.__dict__, "workers": 2})
    meta2 = prebatch(root / "capture", tmp_path, cfg2)
    assert meta2["files"] == meta["files"]
    for entry in meta["files"]["train"] + meta["files"]["val"]:
        assert (tmp_path / entry["name"]).read_bytes() == (root / "batches" / entry["name"]).read_bytes()


def test_batch_files_hold_whole_batches(prebatched):
    root, _, cfg, meta, _ = prebatched
    bytes_per_batch = cfg.batch_size * 6 * 4
    for entry in meta["files"]["train"]:
        size = (root / "batches" / entry["name"]).stat().st_size
        assert size == entry["batches"] * bytes_per_batch
    raw = np.fromfile(root / "batches" / meta["files"]["train"][0]["name"], "<f4").reshape(-1, 16, 6)
    np.testing.assert_array_equal(raw[0], BatchDataset(root / "batches")[0].numpy())
