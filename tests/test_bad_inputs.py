"""Bad inputs to every script, as a careless user types them: each ends in exit code 2 and exactly one
`error:` line on stderr, never a traceback, and leaves every file that was there before byte-identical.

The table runs each command line as a process of its own (tests/forkrun.py: forked from one Python that
has imported torch once, four at a time) against a small world built once: a corpus, its capture, its
prebatched batches and a random SAE. Each case has its own folder of pre-existing files (an earlier
`out/`, the files the case names); its hashes are compared before and after. Disk-full cases write into
a 96 KiB tmpfs mounted in their folder (root only; skipped with the reason otherwise).

A row marked xfail(strict=True) is a known failure in a file owned elsewhere: it turns into an error
when the fix lands, and the mark goes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import safetensors.torch
import torch

import capture
import cli
from data.shuffle import PrebatchConfig, prebatch
from llama.tokenizers.bpe import bytes_to_unicode
from test_loader_checks import ARRAY, HF_CONFIG, LLAMA, META_PARAMS, STRING, U32, U64, gguf_bytes, gguf_string

ROOT = Path(__file__).resolve().parent.parent
HOOK = "blocks.20.hook_resid_post"
TMPFS_SIZE = "96k"  # sentences.jsonl fits, the first shard or checkpoint does not
SENTENCES = ["The soup was cold and the waiter never came back.", "I loved the quiet garden behind the hotel.",
             "Prices went up again this spring.", "Our train left ten minutes late but arrived on time.",
             "The new phone feels solid in the hand.", "Nobody answered the phone at the clinic."]
CORPUS = "\n\n".join(" ".join(SENTENCES[(i + j) % 6] for j in range(3)) for i in range(24)) + "\n"
PDF = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\nstream\n\x00\x01\x02\x9c\xff\n"
       b"endstream\n%%EOF\n")


@dataclass
class Case:
    id: str
    argv: list[str]                  # after `python`; {case}, {world}, {corpus}, {capture}, {captures},
    expect: str = ""                 # {batches}, {sae}, {full} (tmpfs) and {busy} (a taken port) are filled in
    forbid: tuple[str, ...] = ()     # text the error line must not hold
    files: dict[str, bytes | str] = field(default_factory=dict)  # written into the case folder first
    copy: dict[str, str] = field(default_factory=dict)           # case-relative path <- world template
    no_new: str = ""                 # a case-relative folder that must not gain files
    tmpfs: bool = False
    timeout: int = 90
    xfail: str = ""                  # owner and the failure seen today


def cap(*extra: str, out: str = "{case}/out") -> list[str]:
    return ["capture.py", "--data", "{corpus}", "--out", out, "--device", "cpu", "--max-tokens", "24",
            "--shard-tokens", "64", *extra]


def pb(*extra: str) -> list[str]:
    return ["prebatch.py", *extra]


def tr(*extra: str) -> list[str]:
    return ["train.py", "--data", "{batches}", "--out", "{case}/out", "--device", "cpu", *extra]


def interp(*extra: str) -> list[str]:
    return ["interpret.py", "--sae", "{sae}", "--capture-dir", "{capture}", "--out", "{case}/out", *extra]


def gen(*extra: str) -> list[str]:
    return ["generate.py", *extra]


def serve(*extra: str) -> list[str]:
    return ["serve.py", "--sae", "{sae}", *extra]


def conv(*extra: str) -> list[str]:
    return ["convert.py", *extra]


def pipe(*extra: str) -> list[str]:
    return ["pipeline.py", "--runs", "{case}/runs", "--data", "{corpus}", "--device", "cpu", *extra]


def config(text: str) -> dict[str, str]:
    return {"c.json": text}


DEEP_JSON = "[" * 100_000 + "]" * 100_000
BYTE_TOKENS = list(bytes_to_unicode().values())  # a byte-level BPE vocabulary of the 256 bytes alone
DEEP_GGUF_ARRAY = gguf_string("deep") + struct.pack("<I", ARRAY) + struct.pack("<IQ", ARRAY, 1) * 20_000


def bad_gguf(metadata: dict | None = None, **kwargs) -> bytes:
    """A Llama GGUF header (tests/test_loader_checks.py writes it byte by byte) with `metadata` changed."""
    return gguf_bytes(metadata={**LLAMA, **(metadata or {})}, **kwargs)


def hf_files(**config: object) -> dict[str, bytes | str]:
    weights = safetensors.torch.save({"model.norm.weight": torch.ones(64)})
    return {"hf/config.json": json.dumps({**HF_CONFIG, **config}), "hf/model.safetensors": weights}


def meta_files(shard: object) -> dict[str, bytes | str]:
    buffer = io.BytesIO()
    torch.save(shard, buffer)
    return {"meta/params.json": json.dumps(META_PARAMS), "meta/consolidated.00.pth": buffer.getvalue()}


def int32_sae_files() -> dict[str, bytes | str]:
    """An SAE folder (tests/fixtures/sae_v2/dataset_scale) whose encoder is stored as int32."""
    folder = ROOT / "tests" / "fixtures" / "sae_v2" / "dataset_scale"
    tensors = safetensors.torch.load_file(str(folder / "sae.safetensors"))
    tensors["W_enc"] = tensors["W_enc"].to(torch.int32)
    return {"sae/config.json": (folder / "config.json").read_text(),
            "sae/sae.safetensors": safetensors.torch.save(tensors, metadata={"format": "llama-sae", "version": "2"})}


C = "{case}/c.json"
CASES = [
    # capture.py
    Case("capture-device-cuda", cap("--device", "cuda"), "--device cuda", timeout=15),
    Case("capture-device-mps", cap("--device", "mps"), "--device mps", timeout=15),
    Case("capture-device-invalid", cap("--device", "tpu9"), "--device tpu9"),
    Case("capture-hook-form", cap("--hooks", "blocks.5.hook_bogus"), "blocks.5.hook_bogus", forbid=("1073741823",)),
    Case("capture-hook-layer", cap("--hooks", "blocks.99.hook_resid_post"), "blocks.99", forbid=("1073741823",)),
    Case("capture-hooks-twice", cap("--hooks", HOOK, HOOK), "distinct hook names"),
    Case("capture-max-tokens-0", cap("--max-tokens", "0"), "--max-tokens 0"),
    Case("capture-sample-fraction", cap("--sample-fraction", "2"), "--sample-fraction 2"),
    Case("capture-batch-tokens-0", cap("--batch-tokens", "0"), "--batch-tokens"),
    Case("capture-max-documents", cap("--max-documents", "-1"), "--max-documents"),
    Case("capture-dtype", cap("--dtype", "int3"), "--dtype"),
    Case("capture-data-missing", ["capture.py", "--data", "{case}/none.txt", "--out", "{case}/out"], "none.txt"),
    Case("capture-data-empty", ["capture.py", "--data", "{case}/empty.txt", "--out", "{case}/out"], "no text",
         files={"empty.txt": "\n\n"}),
    Case("capture-data-empty-folder", ["capture.py", "--data", "{case}/corpus", "--out", "{case}/out"],
         "corpus", files={"corpus/notes.bin": b"\x00"}),
    Case("capture-data-nul-bytes", ["capture.py", "--data", "{case}/bin.txt", "--out", "{case}/out", "--device", "cpu"],
         "bin.txt", files={"bin.txt": b"hello\x00\x00\x01\x02 world\x00" * 200}, timeout=15),
    Case("capture-data-pdf", ["capture.py", "--data", "{case}/paper.txt", "--out", "{case}/out", "--device", "cpu"],
         "paper.txt", files={"paper.txt": PDF * 20}, timeout=15),
    Case("capture-text-field", ["capture.py", "--data", "{case}/c.jsonl", "--out", "{case}/out"], "--text-field",
         files={"c.jsonl": '{"body": "some text"}\n'}),
    Case("capture-out-is-file", cap(out="{case}/out.txt"), "out.txt", files={"out.txt": "keep me\n"}),
    Case("capture-config-string-for-int", cap("--config", C),
         "field 'max_tokens' (--max-tokens) must be a whole number",
         files=config('{"max_tokens": "24"}')),
    Case("capture-config-int-for-list", cap("--config", C), "field 'hooks' (--hooks) must be a list of strings",
         files=config('{"hooks": 20}')),
    Case("capture-config-list", cap("--config", C), "must be a JSON object", files=config("[1, 2]")),
    Case("capture-config-folder", cap("--config", "{case}"), "is a folder"),
    Case("capture-config-unknown", cap("--config", C), "unknown field(s) max_tokns", files=config('{"max_tokns": 5}')),
    Case("capture-changed-settings", cap("--max-tokens", "12", "--batch-tokens", "256", out="{case}/capture"),
         "different max_tokens;",
         copy={"capture": "{captures}"}),
    Case("capture-disk-full", cap("--batch-tokens", "256", out="{full}/capture"), "the disk is full", tmpfs=True),
    # prebatch.py
    Case("prebatch-capture-missing", pb("--capture", "{case}/none", "--out", "{case}/b"), "none"),
    Case("prebatch-not-a-capture", pb("--capture", "{case}/out", "--out", "{case}/b"), "out"),
    Case("prebatch-batch-size-0", pb("--capture", "{capture}", "--out", "{case}/b", "--batch-size", "0"),
         "--batch-size"),
    Case("prebatch-val-fraction", pb("--capture", "{capture}", "--out", "{case}/b", "--val-fraction", "1.5"),
         "--val-fraction 1.5"),
    Case("prebatch-workers", pb("--capture", "{capture}", "--out", "{case}/b", "--workers", "-1"), "--workers"),
    Case("prebatch-out-is-capture", pb("--capture", "{capture}", "--out", "{capture}"), "must differ"),
    Case("prebatch-config-type", pb("--capture", "{capture}", "--out", "{case}/b", "--config", C),
         "field 'batch_size' (--batch-size) must be a whole number, got [1]", files=config('{"batch_size": [1]}')),
    Case("prebatch-disk-full", pb("--capture", "{capture}", "--out", "{full}/b", "--batch-size", "16",
                                  "--file-mb", "1"), "the disk is full", tmpfs=True),
    # train.py
    Case("train-k-0", tr("--k", "0"), "--k 0: must be an integer >= 1"),
    Case("train-k-over-d-sae", tr("--k", "64", "--d-sae", "32"), "--k 64: must not exceed d_sae (32)",
         forbid=("SAEConfig",)),
    Case("train-data-missing", tr("--data", "{case}/none"), "none"),
    Case("train-data-is-capture", tr("--data", "{capture}"), "prebatch the captured activations first"),
    Case("train-lr", tr("--lr", "-1"), "--lr"),
    Case("train-betas", tr("--betas", "0.9"), "--betas"),
    Case("train-resume-and-overwrite", tr("--resume", "--overwrite"), "--resume"),
    Case("train-epochs-0", tr("--epochs", "0"), "--epochs"),
    Case("train-schedule", tr("--schedule", "warm"), "--schedule"),
    Case("train-device-cuda", tr("--device", "cuda"), "cuda"),
    Case("train-config-string-for-int", tr("--config", C), "field 'k' (--k) must be a whole number, got \"32\"",
         files=config('{"k": "32"}')),
    Case("train-config-number-for-list", tr("--config", C), "field 'betas' (--betas) must be a list of numbers",
         files=config('{"betas": 0.9}')),
    Case("train-config-list", tr("--config", C), "must be a JSON object", files=config("[]")),
    Case("train-config-folder", tr("--config", "{case}/out"), "is a folder"),
    Case("train-out-is-file", tr("--out", "{case}/out.txt", "--max-steps", "2"), "out.txt",
         files={"out.txt": "keep me\n"}),
    Case("train-disk-full", tr("--out", "{full}/run", "--max-steps", "4", "--expansion", "1"), "the disk is full",
         tmpfs=True),
    # interpret.py
    Case("interpret-sae-missing", interp("--sae", "{case}/none"), "none"),
    Case("interpret-sae-not-an-sae", interp("--sae", "{case}/notsae"), "notsae", files={"notsae/notes.txt": "x"}),
    Case("interpret-device-cuda", interp("--device", "cuda"), "--device cuda"),
    Case("interpret-top-n-0", interp("--top-n", "0"), "--top-n"),
    Case("interpret-capture-missing", interp("--capture-dir", "{case}/none"), "none"),
    Case("interpret-llm-provider", interp("--llm-provider", "oracle"), "--llm-provider"),
    Case("interpret-config-type", interp("--config", C), "field 'top_n' (--top-n) must be a whole number",
         files=config('{"top_n": "5"}')),
    Case("interpret-out-is-file", interp("--out", "{case}/out.txt", "--device", "cpu"), "out.txt",
         files={"out.txt": "keep me\n"}),
    Case("interpret-disk-full", interp("--out", "{full}/i", "--device", "cpu", "--eval-sentences", "0"),
         "the disk is full writing ", tmpfs=True, timeout=150),
    # generate.py
    Case("generate-device-cuda", gen("--device", "cuda", "Hi"), "--device cuda"),
    Case("generate-device-mps", gen("--device", "mps", "Hi"), "--device mps"),
    Case("generate-device-invalid", gen("--device", "tpu9", "Hi"), "--device tpu9"),
    Case("generate-max-new-tokens-huge", gen("--device", "cpu", "--max-new-tokens", "10000", "Hi"),
         "--max-new-tokens", timeout=40),
    Case("generate-max-new-tokens-0", gen("--max-new-tokens", "0", "Hi"), "--max-new-tokens 0"),
    Case("generate-temperature", gen("--temperature", "-1", "Hi"), "--temperature"),
    Case("generate-top-p", gen("--top-p", "0", "Hi"), "--top-p"),
    Case("generate-steer-form", gen("--sae", "{sae}", "--steer", "abc", "Hi"), "--steer abc"),
    Case("generate-steer-range", gen("--sae", "{sae}", "--steer", "99999:1", "Hi"), "out of range"),
    Case("generate-sae-missing", gen("--sae", "{case}/none", "--steer", "1:1", "Hi"), "none"),
    Case("generate-prompt-file-missing", gen("--prompt-file", "{case}/none.txt"), "--prompt-file"),
    Case("generate-prompt-file-binary", gen("--prompt-file", "{case}/p.txt"), "not UTF-8",
         files={"p.txt": b"\xff\xfe\x00\x9c"}),
    Case("generate-prompt-too-long", gen("--device", "cpu", "--max-new-tokens", "2", "--prompt-file", "{case}/p.txt"),
         "context", files={"p.txt": "word " * 8500}, timeout=40),
    Case("generate-mode", gen("--sae", "{sae}", "--mode", "push", "--steer", "1:1", "Hi"), "--mode"),
    Case("generate-model-missing", gen("--model", "{case}/none.gguf", "Hi"), "none.gguf"),
    Case("generate-model-dtype", gen("--model-dtype", "int3", "Hi"), "--model-dtype"),
    Case("generate-empty-prompt", gen("  "), "empty prompt"),
    Case("generate-config-type", gen("--config", C, "Hi"), "field 'max_new_tokens' (--max-new-tokens) must be a whole",
         files=config('{"max_new_tokens": "5"}')),
    # serve.py
    Case("serve-device-cuda", serve("--device", "cuda"), "--device cuda"),
    Case("serve-device-mps", serve("--device", "mps"), "--device mps"),
    Case("serve-device-invalid", serve("--device", "tpu9"), "--device tpu9"),
    Case("serve-port", serve("--port", "70000"), "--port 70000"),
    Case("serve-mode", serve("--mode", "push"), "--mode push"),
    Case("serve-sae-missing", serve("--sae", "{case}/none"), "no trained SAE there"),
    Case("serve-explanations-missing", serve("--explanations", "{case}/missing.json"), "--explanations"),
    Case("serve-judge-corpus-missing", serve("--judge-corpus", "{case}/none.csv"), "--judge-corpus"),
    Case("serve-explanations-not-a-table", serve("--explanations", "{case}/e.json"), "not a latent explanation table",
         files={"e.json": "[1, 2]"}),
    Case("serve-config-type", serve("--config", C), "field 'port' (--port) must be a whole number",
         files=config('{"port": "80"}')),
    Case("serve-port-taken", serve("--device", "cpu", "--port", "{busy}"), "cannot listen there"),
    # convert.py
    Case("convert-no-format", conv("{sae}", "{case}/dst"), "--from"),
    Case("convert-src-missing", conv("--from", "ours", "--to", "saelens", "{case}/none", "{case}/dst"), "none"),
    Case("convert-dst-not-empty", conv("--from", "ours", "--to", "saelens", "{sae}", "{case}/out"), "--overwrite"),
    Case("convert-hook", conv("--from", "ours", "--to", "saelens", "--hook", "blocks.x", "{sae}", "{case}/dst"),
         "blocks.x"),
    Case("convert-src-garbage", conv("--from", "ours", "--to", "saelens", "{case}/junk", "{case}/dst"), "junk",
         files={"junk/config.json": "not json", "junk/sae.safetensors": b"\x00" * 64}),
    Case("convert-to-read-only-format", conv("--from", "ours", "--to", "llamascope", "{sae}", "{case}/dst"), "--to"),
    # pipeline.py: every stage's settings are checked before the first stage runs
    Case("pipeline-k-0", pipe("--k", "0"), "--k", no_new="runs", timeout=15),
    Case("pipeline-expansion-0", pipe("--expansion", "0"), "--expansion", no_new="runs", timeout=15),
    Case("pipeline-sample-fraction", pipe("--sample-fraction", "2"), "--sample-fraction", no_new="runs", timeout=15),
    Case("pipeline-device", pipe("--device", "tpu9"), "--device", no_new="runs", timeout=15),
    Case("pipeline-data-missing", pipe("--data", "{case}/none.txt"), "none.txt", no_new="runs", timeout=15),
    Case("pipeline-config-type", pipe("--config", C), "field 'k' (--k) must be a whole number",
         files=config('{"k": "8"}'), no_new="runs"),
    # numbers checked for range where they enter (seeds, temperature, sizes, steering values)
    Case("generate-temperature-tiny", gen("--temperature", "1e-300", "Hi"),
         "--temperature 1e-300: must be 0 (greedy) or at least 0.001"),
    Case("generate-seed-huge", gen("--seed", "18446744073709551616", "Hi"),
         "--seed 18446744073709551616: must be an integer from 0 to 4294967295"),
    Case("generate-steer-overflow", gen("--sae", "{sae}", "--device", "cpu", "--max-new-tokens", "2", "--steer",
                                        "5:1e30", "Hi"), "--steer 5:1e+30: pushing latent 5 by 1e+30", timeout=60),
    Case("generate-sweep-steps", gen("--sweep", "5:0:1:1000000000"), "--sweep 5:0:1:1000000000: "),
    Case("prebatch-seed-huge", pb("--capture", "{capture}", "--out", "{case}/b", "--seed", "18446744073709551616"),
         "--seed 18446744073709551616: must be an integer from 0 to 4294967295"),
    Case("train-seed-negative", tr("--seed", "-1"), "--seed -1: must be an integer from 0 to 4294967295"),
    Case("interpret-lens-top-huge", interp("--lens-top", "1000000000"), "--lens-top 1000000000: must be an integer"),
    Case("interpret-seed-huge", interp("--seed", "4294967296"), "--seed 4294967296: must be an integer from 0"),
    Case("pipeline-steer-scale-huge", pipe("--steer-scale", "1e308"), "--steer-scale 1e+308: must be a finite number",
         no_new="runs", timeout=15),
    Case("pipeline-max-new-tokens-0", pipe("--max-new-tokens", "0"), "--max-new-tokens 0: must be an integer >= 1",
         no_new="runs", timeout=15),
    Case("pipeline-seed-huge", pipe("--seed", "18446744073709551616"), "--seed 18446744073709551616: must be",
         no_new="runs", timeout=15),
    Case("pipeline-sweep-steps-huge", pipe("--sweep-steps", "1000000"), "--sweep-steps 1000000: must be an integer",
         no_new="runs", timeout=15),
    Case("pipeline-max-new-tokens-huge", pipe("--max-new-tokens", "100000"), "--max-new-tokens 100000: must leave room",
         no_new="runs", timeout=15),
    Case("pipeline-prompt-empty", pipe("--prompt", " "), "--prompt  : give some text", no_new="runs", timeout=15),
    # output folders: one writer each, and nothing written over what the project did not write there
    # (run/config.json: a training run's record)
    Case("prebatch-out-is-another-capture", pb("--capture", "{capture}", "--out", "{case}/other"), "holds a capture",
         copy={"other": "{capture}"}),
    Case("prebatch-out-holds-others-files", pb("--capture", "{capture}", "--out", "{case}/mine"), "did not write",
         files={"mine/data.bin": b"\x01" * 8, "mine/stats.json": "{}", "mine/draft.json.tmp": "draft"}),
    Case("prebatch-out-inside-capture", pb("--capture", "{capture}", "--out", "{capture}/b"), "lies inside --capture"),
    Case("interpret-out-is-its-sae", interp("--sae", "{case}/sae", "--out", "{case}/sae"), "is --sae",
         copy={"sae": "{sae}"}),
    Case("interpret-out-is-another-sae", interp("--out", "{case}/other", "--device", "cpu"), "holds an SAE",
         copy={"other": "{sae}"}),
    Case("interpret-out-is-a-run", interp("--out", "{case}/run", "--device", "cpu"), "holds a training run",
         files={"run/config.json": '{"data": "b", "out": "run", "epochs": 1.0, "resume": false}', "run/metrics.jsonl": ""}),
    Case("interpret-out-holds-others-files", interp("--device", "cpu"), "did not write (previous-run.txt)"),
    Case("train-out-is-data", tr("--out", "{batches}"), "is --data"),
    Case("train-out-holds-others-files", tr("--max-steps", "2"), "did not write (previous-run.txt)"),
    Case("train-out-is-an-sae", tr("--out", "{case}/sae", "--max-steps", "2"), "holds an SAE", copy={"sae": "{sae}"}),
    Case("train-overwrite-keeps-others-files", tr("--out", "{case}/run", "--overwrite", "--max-steps", "2"),
         "did not write (checkpoints/keep.txt)", files={"run/config.json": '{"data": "b", "out": "run", "epochs": 1.0, "resume": false}', "run/checkpoints/keep.txt": "x"}),
    Case("capture-out-holds-batches", cap(out="{case}/b"), "holds prebatched batches", copy={f"b/{HOOK}": "{batches}"}),
    Case("capture-out-inside-data", ["capture.py", "--data", "{case}/corpus", "--out", "{case}/corpus/caps", "--device",
                                     "cpu", "--max-tokens", "24"], "lies inside --data",
         files={"corpus/c.txt": CORPUS}),
    Case("capture-batches-out-holds-a-capture", cap("--prebatch", "--batches-out", "{case}/caps"), "holds a capture",
         copy={f"caps/{HOOK}": "{capture}"}),
    Case("convert-dst-is-src", conv("--from", "ours", "--to", "ours", "--model", "none", "--overwrite", "{case}/s",
                                    "{case}/s"), "is SRC", copy={"s": "{sae}"}),
    Case("convert-overwrite-others-files", conv("--from", "ours", "--to", "ours", "--model", "none", "--overwrite",
                                                "{sae}", "{case}/out"), "did not write (previous-run.txt)"),
    # loaders: the files a script reads, checked for type and range before use (tests/test_loader_checks.py)
    Case("loader-gguf-alignment-0", gen("--model", "{case}/m.gguf", "Hi"), "m.gguf: general.alignment must be a "
         "power of two, got 0", files={"m.gguf": bad_gguf(metadata={"general.alignment": (U32, 0)})}),
    Case("loader-gguf-alignment-string", gen("--model", "{case}/m.gguf", "Hi"), "general.alignment",
         files={"m.gguf": bad_gguf(metadata={"general.alignment": (STRING, "32")})}),
    Case("loader-gguf-deep-array", gen("--model", "{case}/m.gguf", "Hi"), "nests arrays more than",
         files={"m.gguf": bad_gguf(raw_metadata=DEEP_GGUF_ARRAY, extra_kv=1)}),
    Case("loader-gguf-dims-wrap", gen("--model", "{case}/m.gguf", "Hi"), "ends past the end of the file",
         files={"m.gguf": bad_gguf(tensors=[("output_norm.weight", (1 << 32, 1 << 32), 0)], data=b"\0" * 64)}),
    Case("loader-gguf-width-2-62", gen("--model", "{case}/m.gguf", "Hi"), "llama.embedding_length must be a whole",
         files={"m.gguf": bad_gguf(metadata={"llama.embedding_length": (U64, 1 << 62)})}),
    Case("loader-gguf-eos-string", gen("--model", "{case}/m.gguf", "Hi"), "tokenizer.ggml.eos_token_id must be a token",
         files={"m.gguf": bad_gguf(metadata={"tokenizer.ggml.model": (STRING, "gpt2"),
                                             "tokenizer.ggml.tokens": (ARRAY, (STRING, BYTE_TOKENS)),
                                             "tokenizer.ggml.merges": (ARRAY, (STRING, [])),
                                             "tokenizer.ggml.eos_token_id": (STRING, "2")})}),
    Case("loader-hf-width-string", gen("--model", "{case}/hf", "Hi"), "hidden_size must be a whole number",
         files=hf_files(hidden_size="576")),
    Case("loader-hf-width-float", gen("--model", "{case}/hf", "Hi"), "got 576.0", files=hf_files(hidden_size=576.0)),
    Case("loader-hf-eps-nan", gen("--model", "{case}/hf", "Hi"), "rms_norm_eps must be a finite number",
         files=hf_files(rms_norm_eps=float("nan"))),
    Case("loader-hf-config-deep", gen("--model", "{case}/hf", "Hi"), "config.json: JSON nested more than",
         files={**hf_files(), "hf/config.json": DEEP_JSON}),
    Case("loader-meta-pth-list", gen("--model", "{case}/meta", "Hi"), "consolidated.00.pth: holds a list",
         files=meta_files([1, 2])),
    Case("loader-meta-pth-int", gen("--model", "{case}/meta", "Hi"), "consolidated.00.pth: holds an int",
         files=meta_files(7)),
    Case("loader-sae-config-deep", conv("--from", "ours", "--to", "saelens", "{case}/sae", "{case}/dst"),
         "config.json: JSON nested more than", files={"sae/config.json": DEEP_JSON, "sae/sae.safetensors": b"\0"}),
    Case("loader-sae-int32-weights", conv("--from", "ours", "--to", "saelens", "{case}/sae", "{case}/dst"),
         "tensor W_enc is stored as I32", files=int32_sae_files()),
    Case("loader-manifest-deep", pb("--capture", "{case}/cap", "--out", "{case}/b"), "manifest.json: JSON nested",
         files={"cap/manifest.json": DEEP_JSON}),
    Case("loader-manifest-dtype", pb("--capture", "{case}/cap", "--out", "{case}/b"), "dtype must be one of",
         files={"cap/manifest.json": json.dumps({"format": "llama-sae-activations", "version": 1, "hook": HOOK,
                                                 "d_model": 576, "dtype": "int3", "shards": []})}),
    Case("loader-batches-deep", tr("--data", "{case}/b"), "batches.json: JSON nested", files={"b/batches.json": DEEP_JSON}),
    Case("loader-batches-size-string", tr("--data", "{case}/b"), "batch_size must be a whole number >= 1, got '32'",
         files={"b/batches.json": json.dumps({"format": "llama-sae-batches", "version": 1, "batch_size": "32"})}),
    Case("loader-corpus-line-deep", ["capture.py", "--data", "{case}/c.jsonl", "--out", "{case}/out"],
         "c.jsonl:2: JSON nested more than", files={"c.jsonl": '{"text": "fine"}\n' + DEEP_JSON + "\n"}),
    # text input: the codec and what becomes of bytes it cannot decode
    Case("capture-encoding-unknown", cap("--encoding", "klingon"), "--encoding klingon: not a text codec"),
    Case("capture-invalid-text-error", ["capture.py", "--data", "{case}/c.csv", "--out", "{case}/out", "--device",
                                        "cpu", "--invalid-text", "error"],
         "c.csv: 1 record holds bytes that are not valid utf-8 (first at line 3 of c.csv)",
         files={"c.csv": b"text\r\nfine\r\nbad \xff byte\r\n"}),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def can_mount_tmpfs(probe: Path) -> str:
    """'' when a tmpfs can be mounted here, else why not."""
    if os.geteuid() != 0:
        return "disk-full cases mount a small tmpfs, which needs root"
    if not shutil.which("mount"):
        return "disk-full cases mount a small tmpfs, and there is no mount command here"
    probe.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(probe)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        return f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})"
    subprocess.run(["umount", str(probe)], check=True)
    return ""


@pytest.fixture(scope="module")
def world(tmp_path_factory, smol, sae_dir) -> Path:
    """A corpus, its capture and batches, and an SAE: the read-only inputs every case may use."""
    root = tmp_path_factory.mktemp("world")
    (root / "corpus.txt").write_text(CORPUS)
    cfg, _ = cli.parse_config(capture.CaptureConfig, "", ["--data", str(root / "corpus.txt"), "--out",
                                                          str(root / "capture"), "--max-tokens", "24",
                                                          "--shard-tokens", "64", "--batch-tokens", "256"])
    capture.capture(cfg, loaded=smol)
    prebatch(root / "capture" / HOOK, root / "batches" / HOOK, PrebatchConfig(batch_size=32, val_fraction=0.2,
                                                                             file_mb=1))
    shutil.copytree(sae_dir, root / "sae")
    (root / "runs").mkdir()  # LLAMA_SAE_RUNS of every case: the scripts' defaults point here
    return root


@pytest.fixture(scope="module")
def results(world, tmp_path_factory):
    """Run every case (four at a time); case id -> (result, files before, files after, new files)."""
    cases_root = tmp_path_factory.mktemp("cases")
    no_tmpfs = can_mount_tmpfs(cases_root / "probe")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    mounts, runnable, before = [], [], {}
    try:
        for case in CASES:
            if case.tmpfs and no_tmpfs:
                continue
            folder = cases_root / case.id
            fill = _filler(world, folder, busy.getsockname()[1])
            _prepare(case, folder, fill)
            if case.tmpfs:
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(folder / "full")],
                               check=True)
                mounts.append(folder / "full")
            before[case.id] = snapshot(folder)
            runnable.append({"id": case.id, "argv": [a.format(**fill) for a in case.argv], "cwd": str(ROOT),
                             "timeout": case.timeout})
        world_before = snapshot(world)
        (cases_root / "cases.json").write_text(json.dumps(runnable))
        env = {**os.environ, "LLAMA_SAE_RUNS": str(world / "runs"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        subprocess.run([sys.executable, str(ROOT / "tests" / "forkrun.py"), str(cases_root / "cases.json"),
                        str(cases_root / "results.json"), "--parallel", "4"], env=env, check=True, timeout=900)
        done = {r["id"]: r for r in json.loads((cases_root / "results.json").read_text())}
        after = {case_id: snapshot(cases_root / case_id) for case_id in done}
    finally:
        busy.close()
        for mount in mounts:
            subprocess.run(["umount", "-l", str(mount)])
    return {"cases": done, "before": before, "after": after, "world": (world_before, snapshot(world)),
            "skipped": no_tmpfs}


def _filler(world: Path, folder: Path, busy: int) -> dict[str, str]:
    return {"case": str(folder), "world": str(world), "corpus": str(world / "corpus.txt"),
            "captures": str(world / "capture"), "capture": str(world / "capture" / HOOK),
            "batches": str(world / "batches" / HOOK), "sae": str(world / "sae"), "full": str(folder / "full"),
            "busy": str(busy)}


def _prepare(case: Case, folder: Path, fill: dict[str, str]) -> None:
    """The case's pre-existing files: an earlier run's out/, the files and copies it names."""
    (folder / "out").mkdir(parents=True)
    (folder / "out" / "previous-run.txt").write_text("an earlier run's output\n")
    (folder / "full").mkdir()
    for name, content in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
    for name, source in case.copy.items():
        shutil.copytree(source.format(**fill), folder / name)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                                if c.xfail else []) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(results, case):
    if case.id not in results["cases"]:
        pytest.skip(results["skipped"])
    result = results["cases"][case.id]
    stderr = result["stderr"]
    error_lines = [line for line in stderr.splitlines() if "error:" in line]
    report = f"exit {result['code']} after {result['seconds']} s; stderr tail:\n{stderr[-1500:]}"
    assert "Traceback" not in stderr, report
    assert result["code"] == 2, report
    assert len(error_lines) == 1, report
    line = error_lines[0]
    assert case.expect in line, report
    assert not any(text in line for text in case.forbid), report
    before, after = results["before"][case.id], results["after"][case.id]
    assert {name: after.get(name) for name in before} == before, "a pre-existing file changed or vanished"
    if case.no_new:
        assert not [name for name in set(after) - set(before) if name.startswith(case.no_new + "/")], \
            f"files written under {case.no_new}/ before the error"


def test_the_shared_inputs_are_untouched(results):
    world_before, world_after = results["world"]
    assert world_after == world_before


def test_the_table_is_wide_enough():
    scripts = {c.argv[1] if c.argv[0] == "-m" else c.argv[0] for c in CASES}
    assert len(CASES) >= 60 and scripts == {"capture.py", "prebatch.py", "train.py", "interpret.py",
                                            "generate.py", "serve.py", "convert.py", "pipeline.py"}
