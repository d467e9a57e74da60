"""Write a captured dataset in the documented on-disk format from arrays (tests and bench/interpret.py).

It writes the bytes the format describes (data/shards.py, docs/ARCHITECTURE.md) directly with numpy,
so a test that reads them back checks the reader too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from data.shards import FORMAT, VERSION



def _raw(acts: np.ndarray, dtype: str) -> np.ndarray:
    """Activations as the little-endian bytes of the stored dtype (bfloat16: its int16 bit patterns)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32)).bfloat16().view(torch.int16).numpy()
    return np.ascontiguousarray(acts, dtype={"float32": "<f4", "float16": "<f2"}[dtype])


def write_captured(folder: Path, acts: np.ndarray, tokens: np.ndarray, index: np.ndarray,
                   sentences: list[dict], *, label_names: list[str] = (), dtype: str = "float32",
                   prepend_bos: bool = False, shard_rows: int = 1 << 20, hook: str = "blocks.0.hook_resid_post",
                   model: str = "synthetic") -> Path:
    """acts (rows, d_model), tokens (rows,), index (rows, 3) = (doc, sentence, position); sentences:
    one dict per sentence (doc, sentence, text, tokens, label). Shards are cut at sentence starts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    starts = np.flatnonzero(index[:, 2] == 0).tolist() + [len(index)]
    shards, begin = [], 0
    while begin < len(index):
        end = max((s for s in starts if s <= begin + shard_rows), default=begin)
        end = end if end > begin else next(s for s in starts if s > begin)
        name = f"{len(shards):05d}"  # data/shards.py names: {part}-{shard:05d}.bin
        _raw(acts[begin:end], dtype).tofile(folder / f"acts-{name}.bin")
        np.ascontiguousarray(tokens[begin:end], dtype="<i4").tofile(folder / f"tokens-{name}.bin")
        np.ascontiguousarray(index[begin:end], dtype="<i4").tofile(folder / f"index-{name}.bin")
        shards.append({"shard": len(shards), "rows": end - begin})
        begin = end
    with open(folder / "sentences.jsonl", "w", encoding="utf-8") as f:
        for record in sentences:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    manifest = {"format": FORMAT, "version": VERSION, "hook": hook, "d_model": int(acts.shape[1]),
                "model": model, "dtype": dtype, "prepend_bos": prepend_bos, "chat": False,
                "label_field": "sentiment" if label_names else None, "labels": list(label_names),
                "shards": shards, "total_rows": int(len(index)), "complete": True}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def random_corpus(rng: np.random.Generator, n_sentences: int, *, vocab: int = 50, min_len: int = 3,
                  max_len: int = 12, labels: tuple[str, ...] = ("negative", "positive"),
                  sentences_per_doc: int = 3):
    """Random token sentences: (tokens (rows,), index (rows, 3), sentence records); each document
    gets one random label from `labels` (none if empty)."""
    lengths = rng.integers(min_len, max_len + 1, size=n_sentences)
    tokens = rng.integers(0, vocab, size=int(lengths.sum())).astype(np.int32)
    index = np.zeros((len(tokens), 3), dtype=np.int32)
    records, row = [], 0
    doc_labels = rng.integers(0, max(len(labels), 1), size=n_sentences)
    for s, length in enumerate(lengths):
        doc, number = divmod(s, sentences_per_doc)
        index[row:row + length] = np.stack([np.full(length, doc), np.full(length, number),
                                            np.arange(length)], axis=1)
        ids = tokens[row:row + length].tolist()
        records.append({"doc": doc, "sentence": number, "text": " ".join(f"t{i}" for i in ids),
                        "tokens": ids})
        if labels:
            records[-1]["label"] = labels[doc_labels[doc]]
        row += length
    return tokens, index, records
