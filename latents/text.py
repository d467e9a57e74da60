"""Text a person can read: token pieces merged into whole characters, explanations shortened at a word.

Byte-level BPE cuts a multi-byte UTF-8 character (an emoji, a curly quote) across tokens; decoding
one token alone gives U+FFFD. Here a token's characters are shown on the token that completes them
(`pieces`), and a token shown alone takes in the neighbours it shares a character with (`span_text`),
so the replacement character appears only where the bytes themselves are not UTF-8.
"""

from __future__ import annotations

import codecs
from typing import Callable, Sequence

TokenBytes = Callable[[int], bytes]  # token id -> its exact bytes (Tokenizer.token_bytes)


def token_bytes_of(tokenizer) -> TokenBytes:
    """The tokenizer's token_bytes, or its token_str encoded for tokenizers that have no byte view."""
    if hasattr(tokenizer, "token_bytes"):
        return tokenizer.token_bytes
    return lambda token_id: tokenizer.token_str(token_id).encode("utf-8")


def pieces(chunks: Sequence[bytes]) -> list[str]:
    """Display text of each token (its bytes in `chunks`), one string per token: a character split
    across tokens shows whole on the token that completes it (the earlier ones show "")."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = [decoder.decode(chunk) for chunk in chunks]
    tail = decoder.decode(b"", final=True)
    if out:
        out[-1] += tail
    return out


def _continues(chunk: bytes) -> bool:
    """Whether `chunk` starts inside a character (a UTF-8 continuation byte)."""
    return bool(chunk) and 0x80 <= chunk[0] <= 0xBF


def _incomplete(data: bytes) -> bool:
    """Whether `data` ends inside a character."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.reason == "unexpected end of data"
    return False


def char_span(chunks: Sequence[bytes], start: int, stop: int) -> tuple[int, int]:
    """[start, stop) widened to whole characters: the neighbours that share a character with it."""
    while 0 < start < len(chunks) and _continues(chunks[start]):
        start -= 1
    while stop < len(chunks) and _incomplete(b"".join(chunks[start:stop])):
        stop += 1
    return start, stop


def span_text(chunks: Sequence[bytes], start: int, stop: int) -> str:
    """Text of tokens [start, stop) with the partial characters at its ends completed from neighbours."""
    a, b = char_span(chunks, start, stop)
    return b"".join(chunks[a:b]).decode("utf-8", errors="replace")


def shorten(text: str, width: int) -> str:
    """`text` cut to at most `width` characters at a word boundary, with an ellipsis when cut."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    cut = text[:max(width - 1, 1)]
    if text[len(cut)] != " ":  # the cut falls inside a word: go back to its start
        space = cut.rfind(" ")
        cut = cut[:space] if space > 0 else text.split(" ")[0]  # a first word longer than width stays whole
    return cut.rstrip(" ,;:") + "\u2026"
