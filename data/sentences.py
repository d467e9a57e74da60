"""Sentence splitting with nltk's Punkt, trained on the corpus itself.

Punkt is unsupervised (Kiss and Strunk 2006): it learns abbreviations, collocations and frequent
sentence starters from raw text, so training it on a sample of the corpus at hand needs no download
(`nltk.sent_tokenize` would fetch a pretrained English model). With too little text to learn from, the
untrained `PunktSentenceTokenizer` is used: it knows no abbreviations, so it splits after nearly every
`.`, `?` or `!` followed by whitespace ("Dr." ends a sentence).

Documents are first cut at blank lines (paragraphs never share a sentence); each sentence is the
stripped substring of the document that Punkt marks, so the text is never rewritten.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from nltk.tokenize.punkt import PunktSentenceTokenizer

MIN_TRAINING_CHARS = 2_000  # below this Punkt learns nothing useful: use the untrained tokenizer
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


class SentenceSplitter:
    """Splits documents into sentences: `split(text) -> list[str]` (no empty strings)."""

    def __init__(self, tokenizer: "PunktSentenceTokenizer", trained: bool):
        self.tokenizer = tokenizer
        self.trained = trained  # False when Punkt fell back to its untrained defaults

    @classmethod
    def train(cls, texts: Iterable[str], max_chars: int = 2_000_000) -> "SentenceSplitter":
        """Train Punkt on the first `max_chars` characters of `texts` (documents in order)."""
        from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTrainer  # nltk takes ~1.5 s to import

        sample = _take_chars(texts, max_chars)
        if len(sample) < MIN_TRAINING_CHARS:
            return cls.untrained()
        trainer = PunktTrainer()
        trainer.INCLUDE_ALL_COLLOCS = True  # learn collocations around any period, not only ordinals
        trainer.train(sample, finalize=True)
        return cls(PunktSentenceTokenizer(trainer.get_params()), trained=True)

    @classmethod
    def untrained(cls) -> "SentenceSplitter":
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        return cls(PunktSentenceTokenizer(), trained=False)

    def split(self, text: str) -> list[str]:
        sentences = []
        for paragraph in _PARAGRAPH_BREAK.split(text):
            for start, end in self.tokenizer.span_tokenize(paragraph):
                sentence = paragraph[start:end].strip()
                if sentence:
                    sentences.append(sentence)
        return sentences


def _take_chars(texts: Iterable[str], max_chars: int) -> str:
    """Join documents with blank lines until `max_chars` characters (documents are never cut)."""
    parts, total = [], 0
    for text in texts:
        if total >= max_chars:
            break
        parts.append(text)
        total += len(text) + 2
    return "\n\n".join(parts)
