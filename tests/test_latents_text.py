"""Readable text: token pieces merged into whole characters, explanations shortened at a word."""

from __future__ import annotations

import pytest

from latents.pages import index_page
from latents.text import char_span, pieces, shorten, span_text


def test_pieces_put_split_characters_on_the_completing_token():
    text = "caf\u00e9 \U0001F600!"
    data = text.encode()
    chunks = [data[:4], data[4:7], data[7:9], data[9:]]       # é, space + emoji start, emoji rest, "!"
    shown = pieces(chunks)
    assert "".join(shown) == text and "\ufffd" not in "".join(shown)
    assert shown == ["caf", "\u00e9 ", "", "\U0001F600!"]
    assert pieces([b"\xff", b"a"]) == ["\ufffd", "a"]            # bytes that are not UTF-8 stay marked


def test_span_text_takes_in_the_neighbours_of_a_partial_character():
    chunks = [b" \xe2\x80", b"\x9cok\xe2", b"\x80\x9d"]          # “ok” split across three tokens
    assert char_span(chunks, 1, 2) == (0, 3)
    assert span_text(chunks, 1, 2) == " \u201cok\u201d"
    assert span_text(chunks, 0, 1) == " \u201cok\u201d"
    assert span_text([b"ab", b"cd"], 1, 2) == "cd"


@pytest.mark.parametrize("width", range(3, 40))
def test_shorten_cuts_only_between_words(width):
    text = "tokens such as \u201c applies\u201d, \u201c appreciated\u201d; in contexts with \u201c to\u201d"
    short = shorten(text, width)
    words = text.split()
    if len(text) <= width:
        assert short == text
        return
    assert short.endswith("\u2026")
    kept = short[:-1].split()
    assert kept and kept[:-1] == words[:len(kept) - 1]
    assert words[len(kept) - 1].startswith(kept[-1]) and len(kept[-1]) >= len(words[len(kept) - 1].rstrip(",;:"))
    assert len(short) <= width or len(kept) == 1


def test_index_label_column_says_the_direction():
    rows = [{"latent": j, "explanation": "x", "certainty": 0.5, "density": 0.1, "mean_active": 1.0,
             "max": 2.0, "labels": [{"label": "negative", "auroc": neg}, {"label": "positive", "auroc": pos}],
             "detection": None, "page": f"pages/{j}.html"} for j, neg, pos in ((1, 0.7, 0.4), (2, 0.55, 0.3))]
    page = index_page(rows, None, None, "t")
    quoted = lambda label: f"&#x27;{label}&#x27;"
    assert f"more in {quoted('negative')}" in page      # latent 1: 0.7 is the furthest from 0.5
    assert f"less in {quoted('positive')}" in page      # latent 2: 0.3, below 0.5: less active there
    assert f"more in {quoted('positive')}" not in page
