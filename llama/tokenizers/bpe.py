"""Byte-level BPE (GPT-2 style), as stored in GGUF files (`tokenizer.ggml.model == "gpt2"`).

Encoding a text:
  1. special tokens are cut out (user-defined ones always, control ones with `allow_special`);
  2. the pre-tokenizer splits the rest into words with one or more regexes applied in turn
     (llama.cpp's `tokenizer.ggml.pre` names which: SmolLM's "smollm" first isolates every digit,
     then applies GPT-2's regex);
  3. each word's UTF-8 bytes become byte symbols, and the lowest-ranked adjacent pair in the merge
     list is merged, again and again, until no pair has a merge (Sennrich et al. 2016; GPT-2).
Words recur, so step 3 is cached per word.

Byte-level vocabularies spell each byte as a printable character (GPT-2's `bytes_to_unicode`: the
space is "Ġ", the newline "Ċ"); `token_bytes` maps a token back to its raw bytes.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from llama.tokenizers import chat
from llama.tokenizers.base import Message, Tokenizer, split_on_specials
from llama.tokenizers.unicode_regex import compile_pattern

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

# llama.cpp's `tokenizer.ggml.pre` values -> regexes applied in turn (llama-vocab.cpp, regex_exprs).
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(["default", "gpt2", "gpt-2", "mpt", "olmo", "jais"], (GPT2_PATTERN,)),
    **dict.fromkeys(["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"],
                    (r"\p{N}", GPT2_PATTERN)),
    **dict.fromkeys(["llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe", "falcon3"], (LLAMA3_PATTERN,)),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2"], (QWEN2_PATTERN,)),
}

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types (gguf.TokenType)
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|end_of_text|>", "<|end|>")
_CACHE_LIMIT = 200_000  # words; the cache is cleared when it reaches this size


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of each byte: printable Latin-1 bytes spell themselves, the
    other 68 (controls, space, ...) map to U+0100 onwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


_SPELL = {b: c for b, c in bytes_to_unicode().items()}  # str.translate table: latin-1 char -> spelling


class ByteLevelBPE(Tokenizer):
    """Byte-level BPE tokenizer.

    Args:
        tokens: vocabulary, index = token id, byte-level spelling ("Ġthe").
        merges: merge rules in priority order, "left right" strings or (left, right) pairs.
        token_types: llama.cpp token types per id (3 control, 4 user-defined); others are normal.
        pre: llama.cpp pre-tokenizer name (keys of `PRE_TOKENIZERS`), or `patterns` given directly.
        ignore_merges: a word that is itself a token is taken whole (Llama 3's tokenizer.json).
        chat_template: the model's Jinja chat template, read for its default system prompt.
    """

    def __init__(self, tokens: Sequence[str], merges: Iterable[str | Sequence[str]], *,
                 bos_id: int, eos_id: int, pad_id: int | None = None,
                 token_types: Sequence[int] | None = None, pre: str = "gpt2",
                 patterns: Sequence[str] | None = None, ignore_merges: bool = False,
                 chat_template: str | None = None, add_bos: bool = False):
        if patterns is None:
            if pre not in PRE_TOKENIZERS:
                raise ValueError(f"unknown pre-tokenizer {pre!r} (tokenizer.ggml.pre); known: "
                                 f"{', '.join(sorted(PRE_TOKENIZERS))}")
            patterns = PRE_TOKENIZERS[pre]
        self._stages = [compile_pattern(p) for p in patterns]
        self.vocab = {token: index for index, token in enumerate(tokens)}
        self.n_words = len(tokens)
        self.name = f"bpe-{pre}-{self.n_words}"
        self._pieces = list(tokens)
        types = list(token_types) if token_types is not None else [1] * self.n_words
        self._control = {t: i for i, t in enumerate(tokens) if types[i] == CONTROL}
        self._user_defined = {t: i for i, t in enumerate(tokens) if types[i] == USER_DEFINED}
        self._added = {**self._control, **self._user_defined}
        self.special_ids = frozenset(self._control.values())
        self._build_bytes(tokens, types)
        self._build_merges(merges)
        self._ignore_merges = ignore_merges
        self._cache: dict[str, tuple[int, ...]] = {}
        self.bos_id, self.eos_id, self.pad_id = (self._check_id(bos_id), self._check_id(eos_id),
                                                 None if pad_id is None else self._check_id(pad_id))
        self.add_bos = add_bos
        self.stop_ids = frozenset([eos_id, *(self.vocab[t] for t in _END_OF_TURN if t in self._added)])
        self.default_system = chat.default_system_prompt(chat_template)

    def _build_bytes(self, tokens: Sequence[str], types: Sequence[int]) -> None:
        decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._bytes = [
            t.encode() if types[i] in (CONTROL, USER_DEFINED) or not all(c in decoder for c in t)
            else bytes(decoder[c] for c in t)
            for i, t in enumerate(tokens)]
        spelling = bytes_to_unicode()
        if any(spelling[b] not in self.vocab for b in range(0x20, 0x7F)):
            raise ValueError("vocabulary lacks tokens for printable ASCII bytes: not a byte-level BPE vocabulary")
        # Bytes without a token (SmolLM2 has none for 0xC0, 0x04, ...) are dropped, as Hugging Face
        # tokenizers and llama.cpp do.
        self._byte_ids = [self.vocab.get(spelling[b]) for b in range(256)]

    def _build_merges(self, merges: Iterable[str | Sequence[str]]) -> None:
        # (left id, right id) -> (rank, merged id): one dict lookup per candidate pair.
        self._merges: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, merge in enumerate(merges):
            left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
            try:
                pair = (self.vocab[left], self.vocab[right])
                self._merges.setdefault(pair, (rank, self.vocab[left + right]))
            except KeyError:
                raise ValueError(f"merge {rank} ({left!r} {right!r}) names a token missing from the "
                                 f"vocabulary; the tokenizer data is inconsistent") from None

    # -- encoding -------------------------------------------------------------------------------

    def encode(self, text: str, *, bos: bool = False, eos: bool = False,
               allow_special: bool = False) -> list[int]:
        ids = [self.bos_id] if bos else []
        specials = self._added if allow_special else self._user_defined
        for part in split_on_specials(text, specials):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids.extend(self._encode_ordinary(part))
        if eos:
            ids.append(self.eos_id)
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for word in self.pretokenize(text):
            word_ids = cache.get(word)
            if word_ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                word_ids = cache[word] = self._bpe(word)
            ids.extend(word_ids)
        return ids

    def pretokenize(self, text: str) -> list[str]:
        """Split text into words: each regex stage splits every piece into matches and the gaps
        between them (llama.cpp's `unicode_regex_split`)."""
        pieces = [text]
        for pattern in self._stages:
            split: list[str] = []
            for piece in pieces:
                start = 0
                for match in pattern.finditer(piece):
                    if match.start() > start:
                        split.append(piece[start:match.start()])
                    split.append(match.group())
                    start = match.end()
                if start < len(piece):
                    split.append(piece[start:])
            pieces = split
        return pieces

    def _bpe(self, word: str) -> tuple[int, ...]:
        if self._ignore_merges:
            whole = self.vocab.get(word.encode().decode("latin-1").translate(_SPELL))
            if whole is not None:
                return (whole,)
        byte_ids = self._byte_ids
        symbols = [byte_ids[b] for b in word.encode() if byte_ids[b] is not None]  # one per UTF-8 byte
        merges = self._merges
        while len(symbols) > 1:
            best = None
            for pair in zip(symbols, symbols[1:]):
                merge = merges.get(pair)
                if merge is not None and (best is None or merge[0] < best[0]):
                    best, best_pair = merge, pair
            if best is None:
                break
            # Merge every occurrence of the best pair, left to right.
            left, right = best_pair
            merged: list[int] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                    merged.append(best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    # -- decoding and display -------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._bytes
        return b"".join([table[i] for i in ids])

    # -- chat -----------------------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        if "<|im_start|>" in self._added:
            return chat.chatml(self, self._added, messages, add_generation_prompt, self.default_system)
        if "<|start_header_id|>" in self._added:
            return chat.llama3_chat(self, self._added, messages, add_generation_prompt)
        raise ValueError(f"{self.name}: no known chat format for this vocabulary (no <|im_start|> "
                         f"or <|start_header_id|> token)")
