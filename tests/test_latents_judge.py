"""The steering judge: a bag-of-words classifier on the corpus's own labels, checked on held-out documents."""

from __future__ import annotations

import numpy as np
import pytest

import paths
from latents.judge import cached_judge, load_judge, save_judge, train_judge

MARGIN = 0.25  # held-out accuracy must beat always guessing the majority label by this much


def test_judge_beats_chance_on_the_default_corpus(tmp_path):
    judge = cached_judge(paths.default_corpus_path(), tmp_path)
    assert judge.test_documents > 5000
    assert judge.accuracy >= judge.majority + MARGIN, (judge.accuracy, judge.majority)
    p = judge.proba(["I hate this, it is terrible and awful", "I love it, it is wonderful!"])
    assert p[0, judge.index("negative")] > 0.5 and p[1, judge.index("positive")] > 0.5
    again = cached_judge(paths.default_corpus_path(), tmp_path)  # read back from the cache file
    np.testing.assert_allclose(again.proba(["so bad"]), judge.proba(["so bad"]))


def test_judge_learns_a_planted_word_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    texts, labels = [], []
    for i in range(400):
        label = ["neg", "pos"][i % 2]
        body = list(rng.choice(words, 6)) + (["awful"] if label == "neg" else ["lovely"])
        texts.append(" ".join(rng.permutation(body)))
        labels.append(label)
    judge = train_judge(texts, labels, min_count=2)
    assert judge.accuracy == 1.0 and judge.majority == pytest.approx(0.5, abs=0.1)
    save_judge(judge, tmp_path / "j.npz")
    back = load_judge(tmp_path / "j.npz")
    np.testing.assert_allclose(back.proba(["w1 awful"]), judge.proba(["w1 awful"]))
    assert back.proba(["w1 awful"])[0, back.index("neg")] > 0.9
    with pytest.raises(ValueError, match="label .neutral.: the judge knows neg, pos"):
        back.index("neutral")
