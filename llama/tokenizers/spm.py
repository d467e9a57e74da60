"""SentencePiece tokenizer (Llama 1 and 2 `tokenizer.model`, a protobuf), through the
`sentencepiece` library; chat in Llama 2's `[INST]` format."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import sentencepiece

from llama.tokenizers import chat
from llama.tokenizers.base import Message, Tokenizer, split_on_specials


class SentencePieceTokenizer(Tokenizer):
    """Wraps `sentencepiece.SentencePieceProcessor`.

    `encode` never adds SentencePiece's own BOS/EOS: ask with `bos=`/`eos=`. Control pieces ("<s>")
    in the text are parsed only with `allow_special` (SentencePiece itself never parses them).
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        self.model = sentencepiece.SentencePieceProcessor()
        try:
            self.model.Load(str(path))
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{path}: not a SentencePiece model ({str(err).strip().splitlines()[0]})") from None
        self.n_words = self.model.vocab_size()
        self.name = f"spm-{self.n_words}"
        self.bos_id, self.eos_id = self.model.bos_id(), self.model.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(f"{path}: the SentencePiece model defines no BOS/EOS piece")
        self.pad_id = self.model.pad_id() if self.model.pad_id() >= 0 else None
        self.stop_ids = frozenset([self.eos_id])
        self.special_ids = frozenset(i for i in range(self.n_words) if self.model.IsControl(i))
        self._control = {self.model.IdToPiece(i): i for i in self.special_ids}
        self.add_bos = True
        self._bytes = [self._piece_bytes(i) for i in range(self.n_words)]

    def _piece_bytes(self, token_id: int) -> bytes:
        piece = self.model.IdToPiece(token_id)
        if self.model.IsByte(token_id):  # "<0xE2>"
            return bytes([int(piece[3:5], 16)])
        if self.model.IsControl(token_id):  # "<s>", "</s>": SentencePiece decodes them to nothing
            return b""
        if self.model.IsUnknown(token_id):
            return " \u2047 ".encode()  # what SentencePiece decodes <unk> to
        return piece.replace("\u2581", " ").encode()

    def encode(self, text: str, *, bos: bool = False, eos: bool = False,
               allow_special: bool = False) -> list[int]:
        ids = [self.bos_id] if bos else []
        for part in split_on_specials(text, self._control if allow_special else {}):
            ids += [part] if isinstance(part, int) else self.model.EncodeAsIds(part)
        if eos:
            ids.append(self.eos_id)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """Bytes of a token in running text: "▁the" is " the" (the leading space that SentencePiece
        drops at the start of a text is kept here, since streamed tokens follow a prompt)."""
        return self._bytes[token_id]

    def decode(self, ids) -> str:
        return self.model.DecodeIds([int(i) for i in ids])

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        return chat.llama2_chat(self, messages, add_generation_prompt)
