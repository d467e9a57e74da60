"""Fixed units of capture work, and padded batches that waste few tokens.

The sentence records are cut, in corpus order, into chunks of about `chunk_tokens` stored tokens; chunk
`i` becomes shard `i` of every hook. Chunk boundaries depend only on the records, so a resumed or
multi-process capture does exactly the same work as a single uninterrupted run. Within a chunk,
sentences are sorted by length and grouped under a token budget (length-sorted bucketing), which
keeps padding small without changing where any activation is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator


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


def plan_batches(lengths: list[int], batch_tokens: int, max_batch: int = 512) -> list[list[int]]:
    """Group sequence indices into batches of at most `batch_tokens` padded tokens.

    Longest first (stable), so each batch holds sequences of similar length; a sequence longer than
    the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            padded = lengths[batch[0]] * (len(batch) + 1)  # the first is the longest
            if padded <= batch_tokens and len(batch) < max_batch:
                batch.append(i)
                continue
        batches.append([i])
    return batches
