"""Corpus to sentence records: split, tokenize, cap, and write `sentences.jsonl`.

A record is one sentence: `{"doc", "sentence", "text", "tokens", "label"?, "meta"?, "truncated"?}`,
where `doc` is the document's record number in the corpus, `sentence` the sentence's number within
the document, and `tokens` the ids whose activations are stored (no BOS, no template tokens): the
sentence's own tokens, cut to the first `max_tokens`.

What the model reads for a sentence is `context_prefix + tokens`: the prefix is `[bos]` with `bos`,
the chat template's opening up to the user's text with `chat`, or nothing. Tokens after the text (the
end of the user turn) cannot change the stored activations under causal attention, so they are not run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from atomic import open_atomic
from data.sentences import SentenceSplitter
from data.text import TextSource, Undecodable, iter_documents, uniform_hash
from llama.jsonfile import parse_json


@dataclass(frozen=True)
class SentenceOptions:
    """How documents become stored token sequences."""

    max_tokens: int = 192          # cap on a sentence's stored tokens (longer ones are cut)
    bos: bool = False              # feed BOS before each sentence (never stored)
    chat: bool = False             # wrap each sentence as a user message in the chat template
    max_documents: int = 0         # 0 = all
    sample_fraction: float = 1.0   # keep each document with this probability (seeded by its number)
    max_total_tokens: int = 0      # 0 = all; stop after the sentence that reaches it
    punkt_chars: int = 2_000_000   # characters of the corpus Punkt is trained on

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"--max-tokens {self.max_tokens}: must be at least 1")
        if self.max_documents < 0 or self.max_total_tokens < 0:
            raise ValueError("--max-documents / --max-total-tokens: must be 0 (no limit) or positive")
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ValueError(f"--sample-fraction {self.sample_fraction}: must be in (0, 1]")


def context_prefix(tokenizer, options: SentenceOptions) -> list[int]:
    """Token ids fed before every sentence; their activations are never stored."""
    prefix = chat_prefix(tokenizer) if options.chat else []
    if options.bos and prefix[:1] != [tokenizer.bos_id]:
        prefix = [tokenizer.bos_id] + prefix
    return prefix


def chat_prefix(tokenizer) -> list[int]:
    """The chat template's tokens before a user message's text (system turn and user header).

    Found as the common prefix of two rendered conversations that differ only in the user's text.
    """
    first = tokenizer.encode_chat([{"role": "user", "content": "Alpha"}], add_generation_prompt=True)
    second = tokenizer.encode_chat([{"role": "user", "content": "Omega"}], add_generation_prompt=True)
    n = 0
    while n < min(len(first), len(second)) and first[n] == second[n]:
        n += 1
    if n == 0:
        raise ValueError("the tokenizer's chat template does not start the same for every message; "
                         "capture without --chat")
    return first[:n]


def iter_records(source: TextSource, tokenizer, options: SentenceOptions, splitter: SentenceSplitter,
                 undecodable: Undecodable | None = None) -> Iterator[dict]:
    """Sentence records of the corpus, in order, within the document and token limits; records with
    undecodable bytes are counted into `undecodable` (see data/text.py)."""
    total_tokens, n_docs = 0, 0
    for doc in iter_documents(source, undecodable):
        if options.sample_fraction < 1.0 and uniform_hash([doc.index], 0)[0] >= options.sample_fraction:
            continue
        if options.max_documents and n_docs >= options.max_documents:
            return
        n_docs += 1
        for number, text in enumerate(splitter.split(doc.text)):
            tokens = tokenizer.encode(text, bos=False)
            if not tokens:
                continue
            record = {"doc": doc.index, "sentence": number, "text": text,
                      "tokens": tokens[:options.max_tokens]}
            if len(tokens) > options.max_tokens:
                record["truncated"] = True
            if doc.label is not None:
                record["label"] = doc.label
            if doc.meta:
                record["meta"] = doc.meta
            yield record
            total_tokens += len(record["tokens"])
            if options.max_total_tokens and total_tokens >= options.max_total_tokens:
                return


def write_sentences(path: Path, records: Iterator[dict]) -> dict:
    """Write records as JSON lines, atomically; returns a summary.

    Summary: {"sentences", "tokens", "documents", "truncated", "labels": sorted distinct labels}.
    """
    summary = {"sentences": 0, "tokens": 0, "documents": 0, "truncated": 0}
    labels, last_doc = set(), None
    with open_atomic(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            summary["sentences"] += 1
            summary["tokens"] += len(record["tokens"])
            summary["truncated"] += int(record.get("truncated", False))
            summary["documents"] += int(record["doc"] != last_doc)
            last_doc = record["doc"]
            if "label" in record:
                labels.add(record["label"])
    summary["labels"] = sorted(labels)
    return summary


def read_sentences(path: Path) -> Iterator[dict]:
    """Stream the records of a `sentences.jsonl` file."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            yield parse_json(line, f"{path} line {number}", "rerun capture.py")
