"""What every tokenizer offers, and the pieces they share.

Tokens are ids into the model's vocabulary. Each tokenizer maps an id to its exact bytes
(`token_bytes`), so text can be rebuilt byte for byte, and streamed without breaking a multi-byte
UTF-8 character that spans two tokens (see `stream.StreamDecoder`).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


class Tokenizer:
    """Base class: subclasses set the attributes below and implement `encode`, `token_bytes`
    and `encode_chat`.

    Attributes:
        name: identity string (format, pre-tokenizer, vocabulary size).
        n_words: vocabulary size, special tokens included.
        bos_id, eos_id: begin/end of text ids; pad_id: padding id or None.
        stop_ids: ids that end a generation (EOS and the chat format's end of turn).
        special_ids: control tokens (never produced from ordinary text).
        add_bos: whether the model's own tokenizer puts BOS in front of a text by default.
    """

    name: str
    n_words: int
    bos_id: int
    eos_id: int
    pad_id: int | None
    stop_ids: frozenset[int]
    special_ids: frozenset[int]
    add_bos: bool

    def encode(self, text: str, *, bos: bool = False, eos: bool = False,
               allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in `text` ("<|im_end|>") are read as
        ordinary characters unless `allow_special`; then they become their special ids."""
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes token `token_id` stands for (special tokens: their text)."""
        raise NotImplementedError

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation in the model's own chat format."""
        raise NotImplementedError

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_str(self, token_id: int) -> str:
        """A token for display: its text, with bytes of an incomplete UTF-8 character as `\\xNN`."""
        return self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.n_words:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.n_words - 1})")
        return token_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def check_messages(messages: Sequence[Message]) -> None:
    """One-line errors for a conversation that is not a list of {"role": str, "content": str}."""
    if isinstance(messages, (str, bytes)) or not messages:
        raise ValueError("a chat must be a non-empty list of {'role': ..., 'content': ...} messages")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"chat message {index} must be {{'role': str, 'content': str}}, got {message!r}")


def split_on_specials(text: str, specials: Mapping[str, int]) -> list[str | int]:
    """Cut `text` at occurrences of the special strings: plain-text pieces and special ids, in order.

    The longest special string wins where two start at the same place.
    """
    if not specials or not text:
        return [text] if text else []
    pattern = _specials_regex(tuple(sorted(specials, key=len, reverse=True)))
    parts: list[str | int] = []
    start = 0
    for match in pattern.finditer(text):
        if match.start() > start:
            parts.append(text[start:match.start()])
        parts.append(specials[match.group()])
        start = match.end()
    if start < len(text):
        parts.append(text[start:])
    return parts


_SPECIALS_CACHE: dict[tuple[str, ...], re.Pattern[str]] = {}


def _specials_regex(strings: tuple[str, ...]) -> re.Pattern[str]:
    pattern = _SPECIALS_CACHE.get(strings)
    if pattern is None:
        pattern = _SPECIALS_CACHE[strings] = re.compile("|".join(map(re.escape, strings)))
    return pattern
