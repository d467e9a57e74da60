"""Compile pre-tokenizer regexes written in the `\\p{L}` dialect with Python's standard `re`.

Tokenizer patterns (GPT-2, Llama 3, llama.cpp's pre-tokenizers) use Unicode property classes such as
`\\p{L}` (letters) and `\\p{N}` (numbers), which the standard library's `re` lacks. We expand each one
into an explicit character class built from `unicodedata`, once per process. `\\s` and `\\S` are also
expanded, to Unicode's White_Space property: Python's `\\s` adds U+001C..U+001F, which the Rust and
Oniguruma engines behind tiktoken and Hugging Face tokenizers do not count as space.
"""

from __future__ import annotations

import functools
import re
import unicodedata

# Unicode White_Space (PropList.txt), what `\s` means to Rust's regex and to Oniguruma.
_WHITE_SPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


@functools.cache
def _category_ranges() -> dict[str, list[tuple[int, int]]]:
    """Code point ranges per general category ("Lu", "Nd", ...), from this Python's Unicode tables."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    # Planes 4..13 hold no assigned characters; skipping them makes this pass ~0.1 s.
    for cp in (*range(0x40000), *range(0xE0000, 0x110000)):
        spans = ranges.setdefault(unicodedata.category(chr(cp)), [])
        if spans and spans[-1][1] == cp - 1:
            spans[-1] = (spans[-1][0], cp)
        else:
            spans.append((cp, cp))
    return ranges


@functools.cache
def property_class_body(name: str) -> str:
    """The inside of a character class for `\\p{name}`: a category ("Lu") or a major class ("L")."""
    table = _category_ranges()
    spans = sorted(s for cat, cat_spans in table.items() if cat == name or cat[0] == name for s in cat_spans)
    if not spans:
        raise ValueError(f"unknown Unicode property \\p{{{name}}} in a tokenizer pattern")
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in spans)


def translate(pattern: str) -> str:
    """Rewrite `\\p{X}`, `\\P{X}`, `\\s` and `\\S` into classes Python's `re` understands."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in "pP" and pattern.startswith("{", i + 2):
                end = pattern.index("}", i)
                body = property_class_body(pattern[i + 3:end])
                if nxt == "P" and in_class:
                    raise ValueError(f"\\P{{...}} inside a character class is not supported: {pattern!r}")
                out.append(body if in_class else f"[{'^' if nxt == 'P' else ''}{body}]")
                i = end + 1
                continue
            if nxt == "s":
                out.append(_WHITE_SPACE if in_class else f"[{_WHITE_SPACE}]")
            elif nxt == "S":
                if in_class:
                    raise ValueError(f"\\S inside a character class is not supported: {pattern!r}")
                out.append(f"[^{_WHITE_SPACE}]")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
            out.append(char)
            # A "]" or "^]" right after "[" is a literal, not the end of the class.
            if pattern.startswith("^", i + 1):
                out.append("^")
                i += 1
            if pattern.startswith("]", i + 1):
                out.append("\\]")
                i += 1
        elif char == "]" and in_class:
            in_class = False
            out.append(char)
        else:
            out.append(char)
        i += 1
    return "".join(out)


@functools.cache
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """`re.compile` of a `\\p{...}`-dialect pattern (cached: every tokenizer of a kind shares one)."""
    try:
        return re.compile(translate(pattern))
    except re.error as err:
        raise ValueError(f"tokenizer pattern {pattern!r} does not compile: {err}") from None
