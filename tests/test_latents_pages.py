"""HTML pages: corpus text containing markup and quotes is shown as text, never run or parsed."""

from __future__ import annotations

from html.parser import HTMLParser

from latents.pages import index_page, latent_page

HOSTILE = "<script>alert('x')</script> \"quoted\" & <img src=x onerror=alert(1)>"


class Collect(HTMLParser):
    """Elements and text of a page, as a browser's parser would see them."""

    def __init__(self):
        super().__init__()
        self.tags, self.text, self.attrs = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [v or "" for _, v in attrs]

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Collect:
    parser = Collect()
    parser.feed(page)
    return parser


def record() -> dict:
    context = {"tokens": ["a", HOSTILE, "\n", "b"], "values": [0.0, 2.0, 1.0, 0.0], "center": 1,
               "activation": 2.0, "token_ids": [1, 2, 3, 4], "row": 0, "sentence": 0}
    sentence = {"sentence": 0, "value": 1.5, "text": HOSTILE, "label": HOSTILE}
    return {"latent": 3, "density": 0.1, "mean": 0.1, "mean_active": 1.0, "max": 2.0,
            "contexts": [context], "top_sentences_mean": [sentence], "top_sentences_last": [sentence],
            "histogram": {"edges": [0.1, 1.0, 10.0], "counts": [3, 4]},
            "labels": [{"label": HOSTILE, "auroc": 0.7, "mean_diff": 0.2}],
            "logit_lens": {"promoted": [[HOSTILE, 1.0]], "suppressed": [["z", -1.0]]},
            "explanations": {"offline": {"common_semantic": HOSTILE, "certainty": 0.5}}, "detection": None}


def test_latent_page_shows_markup_as_text():
    page = latent_page(record())
    parsed = parse(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    text = "".join(parsed.text)
    assert text.count(HOSTILE) >= 5  # token, explanation, label, logit lens, sentences: all as text
    assert "↵" in text  # a newline token is made visible
    assert "svg" in parsed.tags and "rect" in parsed.tags
    assert "activation (log scale)" in text and "tokens" in text and "0.1" in text and "10" in text  # axes
    assert "python generate.py --sweep 3:1:8:5" in text  # a measured steering range from its activations
    assert "http://127.0.0.1:8765/?latent=3&lo=1&hi=8&steps=5&value=2" in parsed.attrs  # the steering page, same range
    assert "tokens per bin" in text and ">4</text>" in page  # the count axis: named, its top count written


def test_line_breaks_are_a_visible_mark_on_one_row():
    rec = record()
    rec["contexts"][0]["tokens"] = ["a", "\r\n", "b\rc", "\u2028d\t"]
    rec["top_sentences_mean"] = [{"sentence": 0, "value": 1.0, "text": "first\nsecond", "label": None}]
    parsed = parse(latent_page(rec))
    text = "".join(parsed.text)
    assert "a↵b↵c↵d⇥" in text and "first↵second" in text
    assert not any(c in text for c in "\r\u2028")


def test_index_shows_markup_as_text_and_runs_only_its_own_script():
    summary = {"latent": 3, "explanation": HOSTILE, "certainty": 0.5, "density": 0.1, "mean_active": 1.0,
               "max": 2.0, "labels": [{"label": HOSTILE, "auroc": 0.7}], "detection": None,
               "page": "pages/3.html"}
    page = index_page([summary], {"fvu": 0.2, "note": HOSTILE}, "../train/curves.html", HOSTILE)
    parsed = parse(page)
    assert parsed.tags.count("script") == 1 and "img" not in parsed.tags  # the sort/filter script only
    text = "".join(parsed.text)
    assert text.count(HOSTILE) >= 4  # title, heading, explanation, label, evaluation value
    assert "../train/curves.html" in parsed.attrs
