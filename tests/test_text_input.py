"""Corpus bytes the codec cannot decode: found, counted with their first line numbers, and skipped,
replaced or refused as asked; a stated or detected codec decodes a non-UTF-8 corpus; captures record
the choice, say what they did in one line, and store no U+FFFD from the default corpus."""

from __future__ import annotations

import json
import logging

import pytest

import capture
import cli
import pipeline
from data.shards import FORMAT, VERSION, read_manifest
from data.text import TextSource, Undecodable, iter_documents

HOOK = "blocks.20.hook_resid_post"
# rows at lines 2, 3-4 (a quoted newline, bad byte on line 4), 5, 6 (bad label), 7; the header is line 1
CSV = (b"sentiment,text\r\npositive,Fine words.\r\nnegative,\"Two\nlines \x8a\xce_ here.\"\r\n"
       b"positive,Clean again.\r\nnegativ\xe9,Label is bad.\r\nnegative,Last one \x8a\xce.\r\n")
FRENCH = "Le café était fermé ; nous avons mangé une crème brûlée « très » sucrée à côté, déçus. " * 20


def read(path, **options) -> tuple[list, Undecodable]:
    tally = Undecodable()
    return list(iter_documents(TextSource(path, label_field=options.pop("label", None), **options), tally)), tally


def test_undecodable_records_are_skipped_and_counted_with_their_lines(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(CSV)
    docs, tally = read(path, label="sentiment")
    assert [(d.index, d.text, d.label) for d in docs] == [(0, "Fine words.", "positive"),
                                                          (2, "Clean again.", "positive")]
    assert (tally.records, tally.read, tally.first) == (3, 5, [(str(path), 3), (str(path), 6), (str(path), 7)])
    assert tally.where() == "lines 3, 6, 7 of c.csv"


def test_replace_keeps_them_with_one_mark_per_byte_and_error_refuses_naming_lines_and_flags(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(CSV)
    docs, tally = read(path, label="sentiment", invalid_text="replace")
    assert [d.text for d in docs] == ["Fine words.", "Two\nlines \ufffd\ufffd_ here.", "Clean again.",
                                      "Label is bad.", "Last one \ufffd\ufffd."]
    assert docs[3].label == "negativ\ufffd" and tally.records == 3
    with pytest.raises(ValueError, match=r"c\.csv: 3 records hold bytes that are not valid utf-8 \(first at "
                                         r"lines 3, 6, 7 of c\.csv\); set --encoding .* --invalid-text skip"):
        read(path, label="sentiment", invalid_text="error")


def test_text_and_jsonl_name_the_line_of_the_bad_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"Para one.\nstill one \xff.\n\nPara two.\n")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "ok"}\n\n{"text": "bad \xc3("}\n')
    docs, tally = read(tmp_path)
    assert [(d.index, d.text) for d in docs] == [(1, "Para two."), (2, "ok")]
    assert tally.where() == "a.txt:2, b.jsonl:3" and (tally.records, tally.read) == (2, 4)


def test_a_stated_codec_decodes_a_cp1252_corpus(tmp_path):
    path = tmp_path / "fr.txt"
    path.write_bytes(FRENCH.encode("cp1252"))
    docs, tally = read(path, encoding="cp1252")
    assert [d.text for d in docs] == [FRENCH.strip()] and tally.records == 0
    assert read(path)[1].records == 1  # as UTF-8 it is undecodable


@pytest.mark.parametrize("flags, message", [
    (["--encoding", "klingon"], "--encoding klingon: not a text codec"),
    (["--encoding", "rot13"], "--encoding rot13: not a text codec"),
    (["--invalid-text", "drop"], "--invalid-text: invalid choice: 'drop'"),
])
def test_capture_flags_are_checked_where_they_enter(flags, message):
    with pytest.raises(cli.UsageError, match=message):
        cli.parse_config(capture.CaptureConfig, "test", flags)


def test_a_corpus_that_is_all_undecodable_is_refused_naming_the_codec(tmp_path):
    corpus = tmp_path / "fr.txt"
    corpus.write_bytes(FRENCH.encode("cp1252"))
    cfg, _ = cli.parse_config(capture.CaptureConfig, "test", ["--data", str(corpus), "--out", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"fr\.txt: every record holds bytes that are not valid utf-8 \(first at "
                                         r"line 1 of fr\.txt\); set --encoding"):
        capture.check_inputs(cfg)


def test_capture_skips_says_so_in_one_line_and_records_the_choice(tmp_path, smol, caplog):
    corpus = tmp_path / "c.csv"
    corpus.write_bytes(CSV)
    out = tmp_path / "out"
    cfg, _ = cli.parse_config(capture.CaptureConfig, "test", ["--data", str(corpus), "--label-field", "sentiment",
                                                              "--out", str(out), "--max-tokens", "24"])
    with caplog.at_level(logging.WARNING, logger="capture"):
        capture.capture(cfg, loaded=smol)
    said = [r.getMessage() for r in caplog.records if "records hold bytes" in r.getMessage()]
    assert said == [f"{corpus}: 3 of 5 records hold bytes that are not valid utf-8 (first at lines 3, 6, 7 of "
                    f"c.csv): skipped; --invalid-text (skip, replace, error) and --encoding (the corpus's codec) "
                    f"change that"]
    sentences = [json.loads(line) for line in (out / HOOK / "sentences.jsonl").read_text().splitlines()]
    assert [s["text"] for s in sentences] == ["Fine words.", "Clean again."]
    manifest = read_manifest(out / HOOK)
    assert manifest["settings"]["encoding"] == "utf-8" and manifest["settings"]["invalid_text"] == "skip"
    assert manifest["sentences"]["undecodable"]["records"] == 3
    other, _ = cli.parse_config(capture.CaptureConfig, "test", ["--data", str(corpus), "--label-field", "sentiment",
                                                                "--out", str(out), "--max-tokens", "24",
                                                                "--invalid-text", "replace"])
    with pytest.raises(cli.UsageError, match="different invalid_text"):  # never mixed into one capture
        capture.capture(other, loaded=smol)


def test_an_older_capture_resumes_as_it_was_read_with_replacement_only(tmp_path):
    folder = tmp_path / HOOK
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, "hook": HOOK,
                                                      "d_model": 8, "dtype": "float32", "shards": [],
                                                      "settings": {"dtype": "float32"}}))
    settings = {"dtype": "float32", "model_dtype": "float32", "encoding": "utf-8"}
    capture.check_resumable(folder, {**settings, "invalid_text": "replace"})  # as it was read: resumes
    with pytest.raises(cli.UsageError, match="made with different invalid_text;"):
        capture.check_resumable(folder, {**settings, "invalid_text": "skip"})


def test_default_corpus_capture_stores_no_replacement_marks(tmp_path, smol):
    """A slice of the demo corpus, as `python capture.py` reads it: its corrupted records are skipped."""
    cfg, _ = cli.parse_config(capture.CaptureConfig, "test", ["--out", str(tmp_path), "--max-tokens", "24",
                                                              "--sample-fraction", "0.02", "--punkt-chars", "100000",
                                                              "--max-total-tokens", "600"])
    capture.capture(cfg, loaded=smol)
    text = (tmp_path / HOOK / "sentences.jsonl").read_text(encoding="utf-8")
    undecodable = read_manifest(tmp_path / HOOK)["sentences"]["undecodable"]
    assert "\ufffd" not in text and len(text) > 500
    assert undecodable["records"] > 0 and undecodable["first"][0][1] == 2  # the CSV's first row is one


def test_pipeline_capture_skips_undecodable_records(tmp_path):
    cfg = pipeline.PipelineConfig()
    stages = pipeline.stage_configs(cfg, {name: tmp_path / name for name in ("capture", "batches", "train",
                                                                             "interpret")})
    assert stages["capture"].invalid_text == "skip" and stages["capture"].encoding == "utf-8"
