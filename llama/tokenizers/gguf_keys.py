"""The tokenizer keys of GGUF metadata (llama.cpp's `tokenizer.ggml.*`), checked for type and range
before a tokenizer is built from them: a file may hold any GGUF type under any key, and a string where
a token id belongs, or an id past the vocabulary, is refused in one line naming the file and the key."""

from __future__ import annotations

from itertools import repeat
from pathlib import Path
from typing import Any

_IDS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id")
_TEXTS = ("tokenizer.ggml.pre", "tokenizer.chat_template")


def check_tokenizer_keys(metadata: dict[str, Any], source: Path | str) -> None:
    """Tokens a list of strings, merges a list of "left right" strings, token types one whole number per
    token, special ids inside the vocabulary, the pre-tokenizer and chat template strings, add_bos_token
    true or false. Absent optional keys pass; the caller says which keys are required."""

    def refuse(key: str, expected: str, value: Any) -> None:
        shown = repr(value) if not isinstance(value, list) or len(value) <= 4 else f"[{value[0]!r}, ...]"
        raise ValueError(f"{source}: GGUF metadata {key} must be {expected}, got {shown}")

    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or set(map(type, tokens)) != {str}:  # map: C speed, 100k+ items
        refuse("tokenizer.ggml.tokens", "a list of strings", tokens)
    merges = metadata.get("tokenizer.ggml.merges")
    if not isinstance(merges, list):
        refuse("tokenizer.ggml.merges", 'a list of "left right" strings', merges)
    if set(map(type, merges)) - {str} or set(map(str.count, merges, repeat(" "))) - {1}:
        bad = next(m for m in merges if not isinstance(m, str) or m.count(" ") != 1)
        refuse("tokenizer.ggml.merges", 'a list of "left right" strings (one space each)', bad)
    types = metadata.get("tokenizer.ggml.token_type")
    if types is not None:
        if not isinstance(types, list) or set(map(type, types)) - {int}:
            refuse("tokenizer.ggml.token_type", "a list of whole numbers", types)
        if len(types) != len(tokens):
            raise ValueError(f"{source}: GGUF metadata tokenizer.ggml.token_type has {len(types)} types for "
                             f"{len(tokens)} tokens")
    for key in _IDS:
        value = metadata.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value < len(tokens)):
            refuse(key, f"a token id from 0 to {len(tokens) - 1}", value)
    for key in _TEXTS:
        if metadata.get(key) is not None and not isinstance(metadata[key], str):
            refuse(key, "a string", metadata[key])
    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None and not isinstance(add_bos, bool):
        refuse("tokenizer.ggml.add_bos_token", "true or false", add_bos)
