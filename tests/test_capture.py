"""capture.py on the real SmolLM2-135M: stored activations against transformers, what is (not) stored,
labels, resuming after a kill, refusing changed settings, one-line errors, and torchrun.

A corpus of a few dozen rows of the default CSV (mixed labels, one invalid UTF-8 byte) is captured
in-process with the session's model; subprocesses are used only where a process must be killed or
launched by torchrun.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import atomic
import capture
import cli
import paths
from llama import cpu_16bit
from data.shards import CapturedDataset, read_manifest

ROOT = Path(__file__).resolve().parent.parent
HOOK = "blocks.20.hook_resid_post"
SMALL = ["--max-tokens", "24", "--shard-tokens", "64", "--batch-tokens", "256"]


def small_corpus(path: Path, per_label: int = 8) -> Path:
    """The default CSV's header and its first `per_label` unquoted rows of each label, raw bytes kept."""
    lines = paths.default_corpus_path().read_bytes().split(b"\r\n")
    chosen = []
    for label in (b"negative", b"neutral", b"positive"):
        rows = [x for x in lines[1:] if x.startswith(label + b",") and b'"' not in x]
        chosen += rows[:per_label]
    chosen.append(b"positive,0.9,The seats are comfortable. Every ride feels calm! Would you buy one? I would.")
    chosen.append(b"neutral,0.5," + b"word " * 40)  # one long sentence: cut at --max-tokens
    path.write_bytes(b"\r\n".join([lines[0]] + chosen) + b"\r\n")
    return path


def config(tmp: Path, corpus: Path, *extra: str) -> capture.CaptureConfig:
    cfg, _ = cli.parse_config(capture.CaptureConfig, "test",
                              ["--data", str(corpus), "--label-field", "sentiment", "--out", str(tmp), *SMALL, *extra])
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("corpus") / "small.csv")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, smol) -> Path:
    """An uninterrupted in-process capture of the small corpus."""
    out = tmp_path_factory.mktemp("reference")
    capture.capture(config(out, corpus), loaded=smol)
    return out / HOOK


def assert_rows_close(stored: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    """Each row's largest difference within `tol` of the row's norm.

    float32 rounding scales with the values: a few positions (the first token of a sentence above all,
    the attention sink) carry residual norms near 2e4 on this model, and a few dimensions stay large
    all along, so batched vs unbatched matmuls (or other thread counts) differ by up to ~1e-2 absolute;
    relative to the row's norm that is at most ~5e-5 in our runs, and a padding leak would be >1e-2.
    """
    error = (stored - expected).abs().max(dim=1).values / expected.norm(dim=1)
    assert float(error.max()) < tol, f"row {int(error.argmax())}: relative error {float(error.max()):.2e}"


def sentences(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "sentences.jsonl").read_text().splitlines()]


def test_stored_activations_equal_transformers_hidden_states(reference, hf_smol):
    ds = CapturedDataset(reference)
    records = sentences(reference)
    acts = torch.cat([s.acts for s in ds])
    index = torch.cat([s.index for s in ds]).long()
    starts = {(r["doc"], r["sentence"]): i for i, r in enumerate(records)}
    rows_of = {}
    for row, (doc, sent, pos) in enumerate(index.tolist()):
        rows_of.setdefault(starts[(doc, sent)], []).append((pos, row))
    lengths = [len(r["tokens"]) for r in records]
    picks = sorted({0, len(records) - 1, int(np.argmax(lengths)), int(np.argmin(lengths)), len(records) // 2})
    for i in picks:  # each sentence alone, no BOS, through transformers
        ids = torch.tensor([records[i]["tokens"]])
        expected = hf_smol(input_ids=ids, output_hidden_states=True).hidden_states[21][0]  # after block 20
        stored = acts[[row for _, row in sorted(rows_of[i])]]
        assert [pos for pos, _ in sorted(rows_of[i])] == list(range(len(records[i]["tokens"])))
        assert_rows_close(stored, expected)


def test_no_padding_or_bos_is_stored(reference, smol):
    ds = CapturedDataset(reference)
    records = sentences(reference)
    tokens = np.concatenate([s.tokens.numpy() for s in ds])
    expected = np.concatenate([r["tokens"] for r in records])
    assert ds.total_rows == len(expected) == read_manifest(reference)["sentences"]["tokens"]
    np.testing.assert_array_equal(tokens, expected)  # exactly the sentences' own tokens, in order
    assert smol.tokenizer.bos_id not in set(tokens.tolist())
    index = np.concatenate([s.index.numpy() for s in ds])
    expected_index = [(r["doc"], r["sentence"], p) for r in records for p in range(len(r["tokens"]))]
    np.testing.assert_array_equal(index, np.array(expected_index))


def test_sentence_split_cap_and_labels_travel(reference, corpus):
    records = sentences(reference)
    manifest = read_manifest(reference)
    rows = list(csv.DictReader(io.StringIO(corpus.read_bytes().decode("utf-8", "replace"))))
    assert manifest["labels"] == ["negative", "neutral", "positive"]
    assert manifest["complete"] and manifest["hook"] == HOOK and manifest["d_model"] == 576
    assert all(r["label"] == rows[r["doc"]]["sentiment"] for r in records)
    assert all(r["text"] in rows[r["doc"]]["text"] for r in records)
    repeated = [r for r in records if r["doc"] == len(rows) - 2]
    assert [r["text"] for r in repeated] == ["The seats are comfortable.", "Every ride feels calm!",
                                             "Would you buy one?", "I would."]  # Punkt's split
    long = [r for r in records if r["doc"] == len(rows) - 1]
    assert len(long) == 1 and len(long[0]["tokens"]) == 24 and long[0]["truncated"]
    assert max(len(r["tokens"]) for r in records) == 24


def test_bos_is_fed_but_never_stored(tmp_path, corpus, smol, hf_smol, reference):
    capture.capture(config(tmp_path, corpus, "--bos", "--max-documents", "3"), loaded=smol)
    folder = tmp_path / HOOK
    ds = CapturedDataset(folder)
    records = sentences(folder)
    assert read_manifest(folder)["prepend_bos"] is True
    assert ds.total_rows == sum(len(r["tokens"]) for r in records)
    tokens = torch.cat([s.tokens for s in ds])
    assert smol.tokenizer.bos_id not in tokens.tolist()
    first = records[0]
    ids = torch.tensor([[smol.tokenizer.bos_id] + first["tokens"]])
    expected = hf_smol(input_ids=ids, output_hidden_states=True).hidden_states[21][0, 1:]
    assert_rows_close(ds[0].acts[:len(first["tokens"])], expected)


def test_chat_mode_stores_only_the_users_text(tmp_path, corpus, smol, hf_smol):
    capture.capture(config(tmp_path, corpus, "--chat", "--max-documents", "2"), loaded=smol)
    folder = tmp_path / HOOK
    manifest = read_manifest(folder)
    prefix = manifest["context_prefix"]
    rendered = smol.tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
    assert manifest["chat"] and prefix == rendered[:len(prefix)] and len(prefix) > 3
    record = sentences(folder)[0]
    ids = torch.tensor([prefix + record["tokens"]])
    expected = hf_smol(input_ids=ids, output_hidden_states=True).hidden_states[21][0, len(prefix):]
    assert_rows_close(CapturedDataset(folder)[0].acts[:len(record["tokens"])], expected)


def run_script(log: Path, *args: str) -> subprocess.Popen:
    """Start `python args...` in the project root; its output goes to `log` (a pipe could fill up)."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def test_killed_capture_resumes_to_identical_bytes(tmp_path, corpus, smol, gguf_path, reference):
    proc = run_script(tmp_path / "log.txt", "capture.py", "--model", str(gguf_path), "--data", str(corpus),
                      "--label-field", "sentiment", "--out", str(tmp_path), *SMALL)
    manifest = tmp_path / HOOK / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and json.loads(manifest.read_text())["shards"]:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-2000:]
    partial = json.loads(manifest.read_text())
    assert not partial["complete"] and 0 < len(partial["shards"]) < len(read_manifest(reference)["shards"])
    kept = {e["name"]: os.stat(tmp_path / HOOK / f"acts-{e['name']}.bin").st_mtime_ns for e in partial["shards"]}

    capture.capture(config(tmp_path, corpus), loaded=smol)  # the same arguments: resumes
    names = sorted(p.name for p in reference.iterdir() if p.suffix in (".bin", ".jsonl"))
    assert names == sorted(p.name for p in (tmp_path / HOOK).iterdir() if p.suffix in (".bin", ".jsonl"))
    for name in names:
        assert (tmp_path / HOOK / name).read_bytes() == (reference / name).read_bytes(), name
    for name, mtime in kept.items():  # committed shards were not redone
        assert os.stat(tmp_path / HOOK / f"acts-{name}.bin").st_mtime_ns == mtime
    assert read_manifest(tmp_path / HOOK)["shards"] == read_manifest(reference)["shards"]


def test_refuses_to_resume_with_other_settings(reference, corpus, smol):
    with pytest.raises(cli.UsageError, match=r"different dtype.*same arguments"):
        capture.capture(config(reference.parent, corpus, "--dtype", "fp16"), loaded=smol)


def test_manifest_records_the_model_dtype_as_loaded(tmp_path, corpus, smol):
    """A quantized model's float norm weights do not speak for it: the capture records the dtype the model
    was loaded in (LoadedModel.model_dtype, set by llama.load_model; here an int4 label on the session's
    model, so that no int4 model need be built), and a resume with a float32 model is refused in one line."""
    int4 = smol._replace(model_dtype="int4")
    capture.capture(config(tmp_path, corpus, "--max-documents", "2"), loaded=int4)
    assert read_manifest(tmp_path / HOOK)["settings"]["model_dtype"] == "int4"
    with pytest.raises(cli.UsageError, match=r"^[^\n]*holds a capture made with different model_dtype; rerun with "
                                             r"the same arguments[^\n]*$"):
        capture.capture(config(tmp_path, corpus, "--max-documents", "2"), loaded=smol)
    capture.capture(config(tmp_path, corpus, "--max-documents", "2"), loaded=int4)  # the same settings resume


def test_unknown_hook_out_of_range_layer(tmp_path, corpus, smol):
    with pytest.raises(ValueError, match="layer 99 out of range"):
        capture.capture(config(tmp_path, corpus, "--hooks", "blocks.99.hook_resid_post"), loaded=smol)
    assert not (tmp_path / "blocks.99.hook_resid_post").exists()


@pytest.mark.parametrize("case", ["hook", "column", "empty", "folder", "dtype", "binary", "is-dir", "out-file",
                                  "batches-out"])
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, corpus, case, monkeypatch, capsys, smol):
    empty = tmp_path / "empty.csv"
    empty.write_text("sentiment,confidence,text\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "binary.txt").write_bytes(b"%not quite text\0\0\1\2")
    (tmp_path / "out" / HOOK / "manifest.json").mkdir(parents=True)
    args = {"hook": ["--data", str(corpus), "--hooks", "blocks.1.hook_nothing"],
            "column": ["--data", str(corpus), "--text-field", "body"],
            "empty": ["--data", str(empty)],
            "folder": ["--data", str(corpus), "--out", str(blocker / "sub")],
            "dtype": ["--dtype", "fp8"],
            "binary": ["--data", str(tmp_path / "binary.txt")],
            "is-dir": ["--data", str(corpus)],
            "out-file": ["--data", str(corpus), "--out", str(blocker)],
            "batches-out": ["--data", str(corpus), "--prebatch", "--batches-out", str(blocker)]}[case]
    # every one of these but is-dir is caught before the model loads (is-dir: the session's model)
    monkeypatch.setattr(capture.startup, "load_model", lambda *a, **k: smol)
    monkeypatch.setattr(sys, "argv", ["capture.py", "--out", str(tmp_path / "out"), *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(capture.main)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    if case != "dtype":  # argparse's own errors come after its usage line
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
    expected = {"hook": "unknown hook name 'blocks.1.hook_nothing'; valid forms: hook_embed, ln_final.hook_normalized, "
                        "blocks.{0..29}.{",  # the model's own layers, read from its header
                "column": "no column 'body'", "empty": "holds no text", "folder": "--out",
                "dtype": "invalid choice: 'fp8'", "binary": "binary.txt: not a text corpus (binary data or UTF-16",
                "is-dir": f"--out {tmp_path / 'out' / HOOK}: manifest.json is a folder where a file goes",
                "out-file": f"--out {blocker}: a file is there, not a folder",
                "batches-out": f"--batches-out {blocker}: a file is there, not a folder"}[case]
    assert expected in lines[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_build_the_same_dataset(tmp_path, corpus, gguf_path, reference):
    log = tmp_path / "log.txt"
    proc = run_script(log, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                      "capture.py", "--model", str(gguf_path), "--data", str(corpus), "--label-field",
                      "sentiment", "--out", str(tmp_path), *SMALL)
    if proc.wait(timeout=300) != 0:  # the ranks' own one-line errors first: torchrun's report buries them
        output = log.read_text()
        pytest.fail("\n".join([line for line in output.splitlines() if line.startswith("error:")] + [output[-1500:]]))
    folder = tmp_path / HOOK

    def shards(manifest: dict) -> list[dict]:  # all but the acts' checksums (float rounding may differ)
        return [{**e, "files": {k: v for k, v in e["files"].items() if k != "acts"}} for e in manifest["shards"]]

    assert shards(read_manifest(folder)) == shards(read_manifest(reference))
    assert not list(folder.glob("progress-rank*.json"))
    ours, ref = CapturedDataset(folder), CapturedDataset(reference)
    for a, b in zip(ours, ref):
        assert_rows_close(a.acts, b.acts)  # ranks run on 1 thread each: float rounding may differ
        assert torch.equal(a.index, b.index) and torch.equal(a.tokens, b.tokens)
    assert (folder / "sentences.jsonl").read_bytes() == (reference / "sentences.jsonl").read_bytes()


def test_several_hooks_one_pass_and_prebatch(tmp_path, corpus, smol, hf_smol):
    hooks = ["blocks.5.hook_resid_post", HOOK]
    cfg = config(tmp_path / "cap", corpus, "--hooks", *hooks, "--max-documents", "3", "--prebatch",
                 "--batches-out", str(tmp_path / "batches"))
    capture.capture(cfg, loaded=smol)
    early, late = (CapturedDataset(tmp_path / "cap" / h) for h in hooks)
    assert early.total_rows == late.total_rows > 0 and early.hook == hooks[0]
    assert torch.equal(early[0].index, late[0].index) and torch.equal(early[0].tokens, late[0].tokens)
    record = sentences(tmp_path / "cap" / hooks[0])[0]
    assert record == sentences(tmp_path / "cap" / HOOK)[0]
    hidden = hf_smol(input_ids=torch.tensor([record["tokens"]]), output_hidden_states=True).hidden_states
    n = len(record["tokens"])
    assert_rows_close(early[0].acts[:n], hidden[6][0])
    assert_rows_close(late[0].acts[:n], hidden[21][0])
    from data.batches import BatchDataset
    for hook in hooks:
        train = BatchDataset(tmp_path / "batches" / hook)
        rows = sum(train.meta["rows"].values())
        assert rows == early.total_rows and train.meta["hook"] == hook


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """capture.py's main in this process (the session's model): exit code and stderr's error lines."""
    monkeypatch.setattr(sys, "argv", ["capture.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(capture.main)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exit_info.value.code, [line for line in err.splitlines() if line.startswith(("error:", "interrupted"))]


def assert_same_files(folder: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.iterdir() if p.suffix in (".bin", ".jsonl"))
    assert names == sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".jsonl"))
    for name in names:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    assert read_manifest(folder)["shards"] == read_manifest(reference)["shards"]


def test_rerun_recaptures_a_truncated_or_altered_shard(tmp_path, corpus, smol, reference, caplog):
    shutil.copytree(reference, tmp_path / HOOK)
    with open(tmp_path / HOOK / "acts-00001.bin", "r+b") as f:
        f.truncate(1000)
    tokens = bytearray((tmp_path / HOOK / "tokens-00003.bin").read_bytes())
    tokens[0] ^= 1
    (tmp_path / HOOK / "tokens-00003.bin").write_bytes(bytes(tokens))
    kept = os.stat(tmp_path / HOOK / "acts-00000.bin").st_mtime_ns
    with caplog.at_level(logging.INFO, logger="capture"):
        capture.capture(config(tmp_path, corpus), loaded=smol)  # the same command again
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert damaged == [f"shard 00001 is damaged (acts-00001.bin is 1000 bytes, the manifest says "
                       f"{read_manifest(reference)['shards'][1]['rows'] * 576 * 4}): capturing it again",
                       "shard 00003 is damaged (tokens-00003.bin does not match its checksum): capturing it again"]
    assert_same_files(tmp_path / HOOK, reference)
    assert read_manifest(tmp_path / HOOK)["complete"]
    assert os.stat(tmp_path / HOOK / "acts-00000.bin").st_mtime_ns == kept  # intact shards are not redone
    usual = oct(0o666 & ~atomic._UMASK)
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / HOOK).iterdir()} == {usual}


def test_disk_full_is_one_line_and_the_same_command_resumes(tmp_path, corpus, smol, reference, monkeypatch, capsys):
    monkeypatch.setattr(capture.startup, "load_model", lambda *a, **k: smol)
    args = ["--data", str(corpus), "--label-field", "sentiment", "--out", str(tmp_path), *SMALL]
    (tmp_path / HOOK).mkdir()
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    (tmp_path / HOOK / "acts-00002.bin.tmp").symlink_to("/dev/full")  # ENOSPC from the kernel, for shard 2
    code, lines = run_main(monkeypatch, capsys, *args)
    assert code == 2 and lines == [f"error: the disk is full while writing into --out {tmp_path}; nothing committed was "
                                   f"lost: free space and rerun the same command to resume"]
    assert [e["shard"] for e in read_manifest(tmp_path / HOOK)["shards"]] == [0, 1]
    assert not list((tmp_path / HOOK).glob("*00002*"))
    code, lines = run_main(monkeypatch, capsys, *args)
    assert code == 0 and lines == []
    assert_same_files(tmp_path / HOOK, reference)


def test_interrupted_capture_says_a_rerun_resumes(tmp_path, corpus, smol, monkeypatch, capsys):
    monkeypatch.setattr(capture.startup, "load_model", lambda *a, **k: smol)
    real, calls = capture.capture_chunk, []

    def interrupted(*args, **kwargs):  # Ctrl-C while the third chunk runs
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(capture, "capture_chunk", interrupted)
    code, lines = run_main(monkeypatch, capsys, "--data", str(corpus), "--label-field", "sentiment", "--out",
                           str(tmp_path), *SMALL)
    assert code == 130 and lines == ["interrupted: the shards committed so far are kept: rerun the same command "
                                     "to resume"]
    assert [e["shard"] for e in read_manifest(tmp_path / HOOK)["shards"]] == [0, 1]


@pytest.fixture(scope="module")
def smol_bf16(gguf_path):
    from llama import load_model

    return load_model(gguf_path, dtype="bfloat16")


@pytest.mark.parametrize("model_dtype, storage", [("bfloat16", "float32"), ("float32", "bfloat16")])
def test_stored_dtype_is_the_captures_not_the_models(tmp_path, corpus, smol, smol_bf16, model_dtype, storage,
                                                     monkeypatch):
    # one product path for the batched capture and the one-sentence reference (a CPU that emulates bf16
    # multiplies 32+ rows in float32: rounding differently at each layer would blur the comparison)
    monkeypatch.setattr(cpu_16bit, "UPCAST_MIN_ROWS", 1)
    loaded = smol_bf16 if model_dtype == "bfloat16" else smol
    assert next(loaded.model.parameters()).dtype == getattr(torch, model_dtype)
    capture.capture(config(tmp_path, corpus, "--dtype", storage, "--max-documents", "4"), loaded=loaded)
    folder = tmp_path / HOOK
    ds = CapturedDataset(folder)
    assert ds.dtype == getattr(torch, storage) and read_manifest(folder)["settings"]["model_dtype"] == model_dtype
    record = sentences(folder)[0]
    n = len(record["tokens"])
    taps = loaded.model(torch.tensor([record["tokens"]]), taps=(HOOK,), return_logits=False).taps[HOOK][0]
    stored = ds[0].acts[:n]
    # the model's own activation converted once to the storage dtype: within one bfloat16 rounding (2^-8
    # relative, at most twice that for a bfloat16 model batched differently) of the unbatched forward
    assert_rows_close(stored.float(), taps.float(), tol=8e-3)
    if model_dtype == "bfloat16":  # float32 storage holds the bfloat16 values themselves, not a recomputation
        assert torch.equal(stored.to(torch.bfloat16).float(), stored)
    bytes_per_value = {"float32": 4, "bfloat16": 2}[storage]
    assert (folder / "acts-00000.bin").stat().st_size == ds.shards[0]["rows"] * 576 * bytes_per_value
