"""interpret.py end to end on a tiny model and a captured dataset with a planted latent: the latent is
found with the right contexts, LLM explanations flow through a local server, pages escape corpus
text and load in headless Chromium without console errors."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

import cli
import interpret
import records
import startup
from data.fileio import file_check
from data.shards import PARTS, shard_file
from data.shuffle import is_validation
from latents.collect import capture_identity
from latents.source import CapturedData
from llama.loading import LoadedModel
from llama.model import ModelArgs, Transformer
from sae import SAEConfig, SparseAutoencoder
from sae.io import load_sae, save_sae
from synthetic_capture import write_captured
from test_latents_llm import FakeAPI

ROOT = Path(__file__).resolve().parent.parent
HOOK = "blocks.1.hook_resid_post"
DIM, VOCAB, PLANTED_TOKEN, PLANTED_LATENT = 16, 40, 7, 5
COMPLETES = 6  # the planted token holds " " and half of an emoji's bytes; this token the other half
EMOJI = "\U0001F600"
HOSTILE = 'He said "<script>alert(1)</script>" & left \'quietly\''


class StubTokenizer:
    """What interpret.py needs from a tokenizer (texts are synthetic): a byte-level vocabulary in
    which the planted token and the next one split a 4-byte character between them."""
    pad_id = 0

    def token_bytes(self, token_id: int) -> bytes:
        split = (" " + EMOJI).encode()
        special = {3: b" <b>", PLANTED_TOKEN: split[:3], COMPLETES: split[3:]}
        return special.get(token_id, f" w{token_id}".encode())

    def token_str(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")


def capture(model, sentences: list[list[int]], direction: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Activations at HOOK per sentence, with `direction` * 10 added where the planted token is."""
    acts, index = [], []
    for s, ids in enumerate(sentences):
        with torch.no_grad():
            a = model(torch.tensor([ids]), taps=(HOOK,), return_logits=False).taps[HOOK][0]
        a = a + 10.0 * direction * (torch.tensor(ids) == PLANTED_TOKEN)[:, None]
        acts.append(a.numpy())
        index.append(np.stack([np.full(len(ids), s // 2), np.full(len(ids), s % 2), np.arange(len(ids))], 1))
    return np.concatenate(acts), np.concatenate(index)


def write_capture(folder: Path, model, sentences: list[list[int]], direction: torch.Tensor) -> None:
    acts, index = capture(model, sentences, direction)
    table = [{"doc": int(i // 2), "sentence": int(i % 2), "tokens": ids,
              "text": HOSTILE if i == 0 else " ".join(f"w{t}" for t in ids),
              "label": "positive" if PLANTED_TOKEN in ids else "negative"} for i, ids in enumerate(sentences)]
    tokens = np.concatenate([np.array(s) for s in sentences])
    write_captured(folder, acts, tokens, index, table, label_names=["negative", "positive"], hook=HOOK,
                   shard_rows=200)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("interp")
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=DIM, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB,
                                  multiple_of=16, max_seq_len=64)).eval()
    rng = np.random.default_rng(0)
    sentences = [rng.integers(8, VOCAB, size=int(rng.integers(4, 14))).tolist() for _ in range(80)]
    for s in sentences[::3]:  # the planted token (and the rest of its character) in a third of the sentences
        at = int(rng.integers(0, len(s)))
        s[at:at + 1] = [PLANTED_TOKEN, COMPLETES]
    direction = torch.nn.functional.normalize(torch.randn(DIM), dim=0)
    write_capture(root / "capture", model, sentences, direction)
    sae = SparseAutoencoder(SAEConfig(d_in=DIM, d_sae=24, k=3, normalization="none", hook_name=HOOK))
    with torch.no_grad():  # the planted latent reads the planted direction, with a threshold
        sae.W_enc[:, PLANTED_LATENT] = 3 * direction
        sae.W_dec[PLANTED_LATENT] = direction
        sae.b_enc[PLANTED_LATENT] = -15.0
    save_sae(sae, root / "train" / "sae")
    (root / "train" / "curves.html").write_text("<!DOCTYPE html><title>curves</title>")
    (root / "batches" / HOOK).mkdir(parents=True)  # the prebatching's document split: half held out
    (root / "batches" / HOOK / "batches.json").write_text('{"val_fraction": 0.5, "seed": 0}')
    return root, model, sentences


@pytest.fixture(scope="module")
def run(setup):
    root, model, sentences = setup
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    httpd.state = {"prompts": [], "headers": [], "calls": {}, "batches": {}, "fail_polls": 0}
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    loaded = LoadedModel(model, StubTokenizer(), model.args, "stub")
    cfg = interpret.InterpretConfig(
        sae=str(root / "train" / "sae"), capture_dir=str(root / "capture"), out=str(root / "out"),
        top_n=10, context=4, rows_per_chunk=64, eval_sentences=30, eval_batch_size=8,
        batches_dir=str(root / "batches"), llm_provider="openai", llm_model="local", detection=True,
        llm_base_url=f"http://127.0.0.1:{httpd.server_port}/v1", llm_max_latents=3)
    original = startup.load_checkpoint
    startup.load_checkpoint = lambda *a, **k: loaded  # what startup.load_model reads a checkpoint with
    try:
        evaluation = interpret.interpret(cfg)
    finally:
        startup.load_checkpoint = original
        httpd.shutdown()
        httpd.server_close()
    return root / "out", evaluation, sentences, httpd.state


def test_planted_latent_is_found_with_its_contexts(run):
    out, _, sentences, _ = run
    record = json.loads((out / "latents" / f"{PLANTED_LATENT}.json").read_text())
    planted_rows = sum(s.count(PLANTED_TOKEN) for s in sentences)
    total_rows = sum(len(s) for s in sentences)
    assert record["density"] == pytest.approx(planted_rows / total_rows)
    assert len(record["contexts"]) == min(10, planted_rows)
    for ctx in record["contexts"]:
        assert ctx["token_ids"][ctx["center"]] == PLANTED_TOKEN
        # the split character shows whole on the token that completes it
        assert ctx["tokens"][ctx["center"]] == " " and ctx["tokens"][ctx["center"] + 1] == EMOJI
        assert ctx["values"][ctx["center"]] == pytest.approx(ctx["activation"], rel=1e-2)
    offline = record["explanations"]["offline"]
    assert f"\u201c {EMOJI}\u201d" in offline["common_semantic"] and offline["certainty"] >= 0.9
    score = offline["score"]  # it fires exactly on the token its explanation names: a perfect classifier
    assert score["precision"] == score["recall"] == 1.0 and score["fired"] > 0
    probes = json.loads((out / "probes.json").read_text())["labels"]["positive"]
    assert probes["sparse"]["1"]["latents"] == [PLANTED_LATENT] and probes["sparse"]["1"]["auroc"] == 1.0
    positive = next(lab for lab in record["labels"] if lab["label"] == "positive")
    assert positive["auroc"] == pytest.approx(1.0) and positive["mean_diff"] > 0
    index = json.loads((out / "latent_index_meaning.json").read_text())
    assert index[str(PLANTED_LATENT)]["common_semantic"]


def test_outputs_evaluation_and_llm_results(run):
    out, evaluation, _, state = run
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved == pytest.approx(evaluation) and 0 <= saved["unfired_fraction_held_out"] <= 1
    docs = np.arange(40)  # two sentences per document
    held_out = 2 * int(is_validation(docs, 0.5, 0).sum())
    assert saved["held_out"] is True and saved["sentences"] == min(30, held_out) > 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] > 0 and stats["live"] + stats["dead"] == 24
    assert len(list((out / "llm" / "explain").glob("latent-*.json"))) == 3
    assert json.loads((out / "config.json").read_text())["top_n"] == 10
    assert any("numbered sentences" in p for p in state["prompts"])  # detection requests were sent


def test_pages_escape_corpus_text(run):
    out = run[0]
    pages = [p.read_text() for p in (out / "pages").glob("*.html")]
    assert pages and not any("<script>alert" in p for p in pages)
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in p and "&quot;" in p for p in pages)
    assert all("<b>" not in p for p in pages)  # a token that looks like a tag stays text
    # multi-byte characters split across tokens show whole: no replacement character anywhere
    shown = pages + [(out / "index.html").read_text(), (out / "latent_index_meaning.json").read_text()]
    shown += [p.read_text() for p in (out / "latents").glob("*.json")]
    assert not any("\ufffd" in text for text in shown)
    assert EMOJI in (out / "pages" / f"{PLANTED_LATENT}.html").read_text()
    index = (out / "index.html").read_text()
    assert "href='../train/curves.html'" in index and "ce_loss_recovered" in index


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp}",
             "--enable-logging=stderr", "--v=0", "--window-size=1200,1600"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=60)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="chromium not installed (bash scripts/setup.sh --test installs Debian's chromium)")
def test_pages_load_in_chromium_without_console_errors(run, tmp_path):
    out = run[0]
    control = tmp_path / "control.html"
    control.write_text("<!DOCTYPE html><p>x</p><script>throw new Error('planted')</script>")
    assert console_messages(chromium(["--dump-dom", control.as_uri()], tmp_path / "p0").stderr)  # detector works
    latent_page = out / "pages" / f"{PLANTED_LATENT}.html"
    for page, expected in ((out / "index.html", "Evaluation on held-out text"),
                           (latent_page, f"Latent {PLANTED_LATENT}")):
        result = chromium(["--dump-dom", page.as_uri()], tmp_path / page.stem)
        assert result.returncode == 0, result.stderr[-2000:]
        assert console_messages(result.stderr) == []
        assert expected in result.stdout
    dom = chromium(["--dump-dom", (out / "index.html").as_uri()], tmp_path / "i2").stdout
    assert len(re.findall(r"<tr data-certainty", dom)) >= 3  # the table rows were rendered
    shot = tmp_path / "latent.png"
    result = chromium([f"--screenshot={shot}", latent_page.as_uri()], tmp_path / "shot")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    assert console_messages(result.stderr) == []


def test_statistics_are_reused_by_content_not_by_path(setup, tmp_path, caplog):
    """The statistics cache follows the SAE's and the capture's content: a recapture into the same folder
    with other activations (same rows, same sentences) is not reused; a moved SAE folder is."""
    root, model, sentences = setup
    shutil.copytree(root / "capture", tmp_path / "capture")
    sae = load_sae(root / "train" / "sae")
    cfg = interpret.InterpretConfig(sae=str(root / "train" / "sae"), capture_dir=str(tmp_path / "capture"),
                                    out=str(tmp_path / "out"), top_n=10, context=4, rows_per_chunk=64)
    (tmp_path / "out").mkdir()
    first = interpret.statistics(cfg, CapturedData(tmp_path / "capture"), sae, "cpu", tmp_path / "out")
    torch.manual_seed(1)
    write_capture(tmp_path / "capture", model, sentences, torch.nn.functional.normalize(torch.randn(DIM), dim=0))
    with caplog.at_level("INFO"):
        recaptured = interpret.statistics(cfg, CapturedData(tmp_path / "capture"), sae, "cpu", tmp_path / "out")
    assert "statistics: one pass" in caplog.text and not torch.equal(recaptured["max"], first["max"])
    shutil.copytree(root / "train" / "sae", tmp_path / "moved")
    moved = dataclasses.replace(cfg, sae=str(tmp_path / "moved"))
    caplog.clear()
    with caplog.at_level("INFO"):
        again = interpret.statistics(moved, CapturedData(tmp_path / "capture"), sae, "cpu", tmp_path / "out")
    assert "statistics: reusing" in caplog.text and torch.equal(again["max"], recaptured["max"])


def with_checks(folder: Path) -> None:
    """Add what a real capture's manifest records of each shard file: its size and sampled CRC-32."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["shards"]:
        entry["files"] = {part: file_check(shard_file(folder, part, entry["shard"])) for part in PARTS}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_capture_with_checked_shards_is_identified_by_its_manifest(setup, tmp_path, monkeypatch):
    """Shard files the manifest records checks for are not read again: their checks stand for them, and a
    recapture changes them."""
    root, model, sentences = setup
    shutil.copytree(root / "capture", tmp_path / "capture")
    before = capture_identity(CapturedData(tmp_path / "capture"))  # no checks recorded: the shards hashed
    with_checks(tmp_path / "capture")
    read = []
    original = records.file_entry
    monkeypatch.setattr(records, "file_entry", lambda path: read.append(path.name) or original(path))
    checked = capture_identity(CapturedData(tmp_path / "capture"))
    assert sorted(read) == ["manifest.json", "sentences.jsonl"] and checked != before
    torch.manual_seed(1)
    write_capture(tmp_path / "capture", model, sentences, torch.nn.functional.normalize(torch.randn(DIM), dim=0))
    with_checks(tmp_path / "capture")
    assert capture_identity(CapturedData(tmp_path / "capture")) != checked


def test_an_sae_trained_on_another_model_is_refused(setup, tmp_path, monkeypatch):
    """interpret makes the check generate and serve make: the SAE's recorded model must be this one."""
    root, model, _ = setup
    sae = load_sae(root / "train" / "sae")
    sae.cfg = SAEConfig.from_dict({**sae.cfg.to_dict(), "model": "other.gguf (gguf, 0123456789abcdef)"})
    save_sae(sae, tmp_path / "sae")
    loaded = LoadedModel(model, StubTokenizer(), model.args, "stub.gguf (gguf, fedcba9876543210)")
    monkeypatch.setattr(startup, "load_checkpoint", lambda *a, **k: loaded)
    cfg = interpret.InterpretConfig(sae=str(tmp_path / "sae"), capture_dir=str(root / "capture"),
                                    out=str(tmp_path / "out"), top_n=10, context=4, rows_per_chunk=64,
                                    eval_sentences=0, batches_dir=str(root / "batches"))
    with pytest.raises(cli.UsageError, match=r"--sae .*: the SAE was trained on other\.gguf .*, not on stub\.gguf"):
        interpret.interpret(cfg)
    assert not (tmp_path / "out").exists()


def test_a_rerun_leaves_no_latent_of_an_earlier_run(setup, tmp_path, monkeypatch):
    """Records and pages of latents this run did not explain (an earlier run's, of another SAE) are removed:
    whatever reads latents/*.json (the pipeline's steering demo) sees this run's SAE only."""
    root, model, _ = setup
    out = tmp_path / "out"
    for name in ("latents/999.json", "pages/999.html"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("{}")
    monkeypatch.setattr(startup, "load_checkpoint", lambda *a, **k: LoadedModel(model, StubTokenizer(), model.args,
                                                                                 "stub"))
    interpret.interpret(interpret.InterpretConfig(sae=str(root / "train" / "sae"), capture_dir=str(root / "capture"),
                                                  out=str(out), top_n=10, context=4, rows_per_chunk=64,
                                                  eval_sentences=0, batches_dir=str(root / "batches")))
    assert (out / "latents" / f"{PLANTED_LATENT}.json").is_file() and (out / "pages" / f"{PLANTED_LATENT}.html").is_file()
    assert not (out / "latents" / "999.json").exists() and not (out / "pages" / "999.html").exists()


def test_cli_help_and_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        cli.parse_config(interpret.InterpretConfig, "interpret", ["--help"])
    assert done.value.code == 0 and "--llm-provider" in capsys.readouterr().out
    bad = subprocess.run([sys.executable, "interpret.py", "--top-n", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --top-n 0: must be at least 1"
    with pytest.raises(FileNotFoundError, match="nope"):  # run_main turns it into "error: ..." + exit 2
        interpret.interpret(interpret.InterpretConfig(sae=str(tmp_path / "nope"), out=str(tmp_path / "out")))
