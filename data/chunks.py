"""Fixed units of capture work, padded batches that waste few tokens, and running a chunk.

The sentence records are cut, in corpus order, into chunks of about `chunk_tokens` stored tokens; chunk
`i` becomes shard `i` of every hook. Chunk boundaries depend only on the records, so a resumed or
multi-process capture does exactly the same work as a single uninterrupted run. Within a chunk,
sentences are sorted by length and grouped under a token budget (length-sorted bucketing), which
keeps padding small without changing where any activation is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch


@dataclass
class Chunk:
    """A run of consecutive sentence records; `first_sentence` is the first one's line number."""

    index: int
    first_sentence: int
    records: list[dict]

    @property
    def rows(self) -> int:
        return sum(len(r["tokens"]) for r in self.records)

    def row_offsets(self) -> list[int]:
        """Row in the shard where each record's first token is stored (records in corpus order)."""
        offsets, total = [], 0
        for r in self.records:
            offsets.append(total)
            total += len(r["tokens"])
        return offsets


def iter_chunks(records: Iterable[dict], chunk_tokens: int) -> Iterator[Chunk]:
    """Group records into chunks; a chunk closes once it holds at least `chunk_tokens` tokens."""
    if chunk_tokens < 1:
        raise ValueError(f"--shard-tokens {chunk_tokens}: must be at least 1")
    index, first, current, tokens = 0, 0, [], 0
    for number, record in enumerate(records):
        current.append(record)
        tokens += len(record["tokens"])
        if tokens >= chunk_tokens:
            yield Chunk(index, first, current)
            index, first, current, tokens = index + 1, number + 1, [], 0
    if current:
        yield Chunk(index, first, current)


def plan_batches(lengths: list[int], batch_tokens: int, max_batch: int = 512,
                 similar: float = 0.8) -> list[list[int]]:
    """Group sequence indices into batches of at most `batch_tokens` padded tokens.

    Longest first (stable). A sequence joins the current batch if it fits the budget and is at least
    `similar` times as long as the batch's longest, or while the batch is still small (under an eighth
    of the budget: tiny batches cost more in per-forward overhead than they save in padding). A
    sequence longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            longest = lengths[batch[0]]
            fits = longest * (len(batch) + 1) <= batch_tokens and len(batch) < max_batch
            alike = lengths[i] >= similar * longest or longest * len(batch) < batch_tokens // 8
            if fits and alike:
                batch.append(i)
                continue
        batches.append([i])
    return batches


@torch.inference_mode()
def capture_chunk(model, chunk: Chunk, *, prefix: list[int], hooks: list[str], batch_tokens: int,
                  storage: torch.dtype, device: torch.device,
                  on_batch: Callable[[int], None] = lambda n: None) -> dict[str, torch.Tensor]:
    """Run a chunk's sentences through `model`; returns hook -> (rows, d) CPU tensor in `storage` dtype.

    Each sequence is `prefix + tokens`, left-padded within its batch; only the sentence's own token
    positions are kept, and rows come back in corpus order (record by record). The storage dtype is the
    capture's own, whatever the model computes in (a bfloat16 model's taps may be stored as float32,
    a float32 model's as bfloat16). `on_batch(n)` is told how many tokens each batch stored.
    """
    lengths = [len(prefix) + len(r["tokens"]) for r in chunk.records]
    offsets = chunk.row_offsets()
    out: dict[str, torch.Tensor] = {}
    for batch in plan_batches(lengths, batch_tokens):
        seqlen = max(lengths[i] for i in batch)
        tokens = torch.zeros(len(batch), seqlen, dtype=torch.long)
        keep = torch.zeros(len(batch), seqlen, dtype=torch.bool)  # positions to store
        mask = torch.zeros(len(batch), seqlen, dtype=torch.bool)  # real tokens (left padding)
        rows = []
        for b, i in enumerate(batch):
            ids = prefix + chunk.records[i]["tokens"]
            tokens[b, seqlen - len(ids):] = torch.tensor(ids)
            mask[b, seqlen - len(ids):] = True
            keep[b, seqlen - len(chunk.records[i]["tokens"]):] = True
            rows.append(torch.arange(offsets[i], offsets[i] + len(chunk.records[i]["tokens"])))
        taps = model(tokens.to(device), attention_mask=mask.to(device), taps=tuple(hooks),
                     return_logits=False).taps
        destination = torch.cat(rows)  # row of each kept position, in (b, position) order
        for hook in hooks:
            values = taps[hook][keep.to(device)].to(storage).cpu()  # (kept, d)
            if hook not in out:
                out[hook] = torch.empty(chunk.rows, values.shape[-1], dtype=storage)
            out[hook][destination] = values
        on_batch(int(keep.sum()))
    return out


def chunk_arrays(chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (rows,) and (document, sentence, position) (rows, 3) of a chunk, int32."""
    tokens = np.concatenate([np.asarray(r["tokens"], dtype=np.int32) for r in chunk.records])
    index = np.empty((len(tokens), 3), dtype=np.int32)
    for r, start in zip(chunk.records, chunk.row_offsets()):
        n = len(r["tokens"])
        index[start:start + n] = np.stack([np.full(n, r["doc"]), np.full(n, r["sentence"]), np.arange(n)], 1)
    return tokens, index
