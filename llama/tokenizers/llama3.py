"""The Llama 3 tokenizer: tiktoken BPE over a `tokenizer.model` file of base64 token + rank lines.

The file holds the ordinary tokens (128,000 for Llama 3; the first 100,256 are OpenAI's cl100k
ranks). The 256 special tokens follow them, in the order Meta's Llama 3.1 `tokenizer.py` gives.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Sequence

import tiktoken

from llama.tokenizers import chat
from llama.tokenizers.base import Message, Tokenizer

PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
NUM_SPECIAL_TOKENS = 256
_NAMED_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]
SPECIAL_TOKENS = _NAMED_SPECIALS + [f"<|reserved_special_token_{3 + i}|>"
                                    for i in range(NUM_SPECIAL_TOKENS - len(_NAMED_SPECIALS))]
# tiktoken's regex engine recurses on long runs; Meta's tokenizer.py cuts input into these sizes.
_MAX_ENCODE_CHARS = 400_000
_MAX_SAME_KIND_CHARS = 25_000


def read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file: one `base64(token bytes) rank` pair per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise ValueError(f"{path}: line {number} is not `base64-token rank`; not a tiktoken "
                                 f"tokenizer file") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps; file is corrupt")
    return ranks


class Llama3Tokenizer(Tokenizer):
    """Llama 3 tokenizer over a tiktoken ranks file (Meta's `tokenizer.model`)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        ranks = read_ranks(path)
        n_base = len(ranks)
        self.special_tokens = {token: n_base + i for i, token in enumerate(SPECIAL_TOKENS)}
        self.model = tiktoken.Encoding(name=path.name, pat_str=PATTERN, mergeable_ranks=ranks,
                                       special_tokens=self.special_tokens)
        self.name = f"llama3-tiktoken-{n_base}"
        self.n_words = self.model.n_vocab
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        self.stop_ids = frozenset([self.eos_id, self.special_tokens["<|eot_id|>"],
                                   self.special_tokens["<|eom_id|>"]])
        self.special_ids = frozenset(self.special_tokens.values())
        self.add_bos = True

    def encode(self, text: str, *, bos: bool = False, eos: bool = False,
               allow_special: bool = False) -> list[int]:
        allowed = "all" if allow_special else set()
        ids = [self.bos_id] if bos else []
        for start in range(0, len(text), _MAX_ENCODE_CHARS):
            for chunk in _split_long_runs(text[start:start + _MAX_ENCODE_CHARS]):
                ids += self.model.encode(chunk, allowed_special=allowed, disallowed_special=())
        if eos:
            ids.append(self.eos_id)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        return self.model.decode_single_token_bytes(token_id)

    def decode_bytes(self, ids) -> bytes:
        return self.model.decode_bytes([int(i) for i in ids])

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        return chat.llama3_chat(self, self.special_tokens, messages, add_generation_prompt)


def _split_long_runs(text: str):
    """Cut `text` where a run of only-space or only-non-space characters exceeds the limit."""
    if len(text) <= _MAX_SAME_KIND_CHARS:
        yield text
        return
    start, run, kind = 0, 0, None
    for i, char in enumerate(text):
        space = char.isspace()
        run = run + 1 if space == kind else 1
        kind = space
        if run > _MAX_SAME_KIND_CHARS:
            yield text[start:i]
            start, run = i, 1
    yield text[start:]
