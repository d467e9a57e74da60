"""Incremental decoding for streaming generated tokens to a terminal.

A character such as "é" or an emoji is several UTF-8 bytes, and byte-level tokenizers often split
it across tokens; decoding each token alone prints U+FFFD garbage. `StreamDecoder` keeps the bytes
of an unfinished character until the token that completes it arrives.
"""

from __future__ import annotations

import codecs

from llama.tokenizers.base import Tokenizer


class StreamDecoder:
    """Feed token ids one at a time; get back the text that is complete so far.

        stream = StreamDecoder(tokenizer)
        for token in generated:
            print(stream.feed(token), end="", flush=True)
        print(stream.flush())

    Args:
        skip_special: drop control tokens (e.g. "<|im_end|>") instead of printing their text.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Text completed by this token ("" while a multi-byte character is still unfinished)."""
        token_id = int(token_id)
        if self.skip_special and token_id in self.tokenizer.special_ids:
            return ""
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is left at the end: an unfinished character becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)
