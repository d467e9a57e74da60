"""Tokenizers for Llama-family checkpoints, and `load_tokenizer`, which picks the right one.

    GGUF file, tokenizer.ggml.model == "gpt2"      -> ByteLevelBPE (SmolLM2, Llama 3 GGUFs, Qwen)
    tokenizer.model of base64 ranks (Meta Llama 3) -> Llama3Tokenizer (tiktoken)
    tokenizer.model protobuf (Meta Llama 1/2)      -> SentencePieceTokenizer
    Hugging Face tokenizer.json, byte-level BPE    -> ByteLevelBPE
A folder is searched for tokenizer.model, original/tokenizer.model, then tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llama.jsonfile import read_json
from llama.tokenizers.base import Message, Tokenizer
from llama.tokenizers.bpe import GPT2_PATTERN, ByteLevelBPE
from llama.tokenizers.gguf_keys import check_tokenizer_keys
from llama.tokenizers.llama3 import Llama3Tokenizer
from llama.tokenizers.spm import SentencePieceTokenizer
from llama.tokenizers.stream import StreamDecoder

__all__ = ["ByteLevelBPE", "Llama3Tokenizer", "Message", "SentencePieceTokenizer", "StreamDecoder",
           "Tokenizer", "load_tokenizer", "bpe_from_gguf", "bpe_from_tokenizer_json"]

_FOLDER_FILES = ("tokenizer.model", "original/tokenizer.model", "tokenizer.json")


def load_tokenizer(path: str | Path, gguf_metadata: dict[str, Any] | None = None) -> Tokenizer:
    """The tokenizer of a checkpoint: a GGUF file, a `tokenizer.model` / `tokenizer.json` file, or
    a folder holding one. `gguf_metadata` ({key: value}, already read by the model loader) spares
    reading a GGUF file twice."""
    path = Path(path)
    if gguf_metadata is not None:
        return bpe_from_gguf(gguf_metadata, source=path)
    if path.is_dir():
        found = next((path / name for name in _FOLDER_FILES if (path / name).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: no tokenizer in this folder (looked for "
                                    f"{', '.join(_FOLDER_FILES)})")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tokenizer file; pass a GGUF file, a tokenizer.model, "
                                f"a tokenizer.json or a folder holding one")
    with open(path, "rb") as handle:
        head = handle.read(256)
    if head[:4] == b"GGUF":
        return bpe_from_gguf(read_gguf_metadata(path), source=path)
    if path.suffix == ".json":
        return bpe_from_tokenizer_json(path)
    if _looks_like_tiktoken(head):
        return Llama3Tokenizer(path)
    try:
        return SentencePieceTokenizer(path)
    except ValueError:
        raise ValueError(f"{path}: not a recognised tokenizer file (neither GGUF, tiktoken ranks, "
                         f"SentencePiece protobuf nor tokenizer.json)") from None


def _looks_like_tiktoken(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0].split()
    return len(first) == 2 and first[1].isdigit() and all(
        c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=" for c in first[0])


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a GGUF file as Python values (the loader's header-only reader)."""
    from llama.loading.gguf_reader import read_gguf  # here: llama.loading imports this package (a cycle)
    return read_gguf(path).metadata


def bpe_from_gguf(metadata: dict[str, Any], source: Path | str = "GGUF") -> ByteLevelBPE:
    """A byte-level BPE tokenizer from GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys)."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{source}: GGUF tokenizer model {kind!r} is not supported; only byte-level BPE "
                         f"('gpt2') is read from GGUF files (use the checkpoint's tokenizer.model instead)")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id"):
        if key not in metadata:
            raise ValueError(f"{source}: GGUF metadata lacks {key}; the file is incomplete")
    check_tokenizer_keys(metadata, source)
    eos = metadata["tokenizer.ggml.eos_token_id"]
    return ByteLevelBPE(
        metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.merges"],
        token_types=metadata.get("tokenizer.ggml.token_type"),
        bos_id=metadata.get("tokenizer.ggml.bos_token_id", eos), eos_id=eos,
        pad_id=metadata.get("tokenizer.ggml.padding_token_id"),
        pre=metadata.get("tokenizer.ggml.pre", "default"),
        chat_template=metadata.get("tokenizer.chat_template"),
        add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)))


def bpe_from_tokenizer_json(path: Path) -> ByteLevelBPE:
    """A byte-level BPE tokenizer from a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`)."""
    spec = read_json(path, expect=dict)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("decoder")):
        raise ValueError(f"{path}: only byte-level BPE tokenizer.json files are supported "
                         f"(this one is {model.get('type')!r})")
    vocab = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    types = [1] * len(tokens)
    for added in spec.get("added_tokens", []):
        types[added["id"]] = 3 if added.get("special") else 4
    config = _read_json(path.with_name("tokenizer_config.json"))
    special = {key: _token_text(config.get(key)) for key in ("bos_token", "eos_token", "pad_token")}
    ids = {key: vocab.get(text) for key, text in special.items()}
    if ids["eos_token"] is None:
        raise ValueError(f"{path}: no eos_token in tokenizer_config.json next to it")
    return ByteLevelBPE(tokens, model["merges"], token_types=types, patterns=_hf_patterns(spec, path),
                        bos_id=ids["bos_token"] if ids["bos_token"] is not None else ids["eos_token"],
                        eos_id=ids["eos_token"], pad_id=ids["pad_token"],
                        ignore_merges=bool(model.get("ignore_merges")),
                        chat_template=config.get("chat_template"), add_bos=bool(config.get("add_bos_token")))


def _hf_patterns(spec: dict, path: Path) -> list[str]:
    """Regex stages of a tokenizer.json pre-tokenizer (Split / Digits / ByteLevel)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    patterns = []
    for step in steps:
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            patterns.append(step["pattern"]["Regex"])
        elif step.get("type") == "Digits":
            patterns.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif step.get("type") == "ByteLevel":
            if step.get("use_regex", True):
                patterns.append(GPT2_PATTERN)
        else:
            raise ValueError(f"{path}: pre-tokenizer {step.get('type')!r} is not supported")
    return patterns or [GPT2_PATTERN]


def _read_json(path: Path) -> dict:
    return read_json(path, expect=dict) if path.is_file() else {}


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value
