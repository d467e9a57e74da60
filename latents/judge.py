"""An independent judge of steered text: a bag-of-words classifier trained on the corpus's own labels.

It reads only the text (lower-cased words and word pairs, present or not), never the model or the SAE,
so it can tell whether steering a latent moved what the model writes toward a label. Multinomial
logistic regression (L-BFGS on mean log loss + l2 / 2 * |W|^2), trained on 80% of the documents and
scored on the other 20% (a seeded per-document split): `Judge.accuracy` against `Judge.majority`, the
share of the most common label there (what always guessing it would score).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atomic import atomic_path
from data.text import TextSource, file_identity, iter_documents, uniform_hash
from settings import SettingError

WORD = re.compile(r"[a-z0-9']+|[!?]")


def terms(text: str) -> set[str]:
    """The judge's features of a text: its words and adjacent word pairs (lower case)."""
    words = WORD.findall(text.lower())
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def _design(texts: list[set[str]], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The known terms of each text as (term ids (nnz,), text of each (nnz,)): the non-zeros of the
    (n, len(vocab)) 0/1 matrix X, so X @ W and X.T @ G are a gather and a bincount."""
    ids = [[vocab[t] for t in found if t in vocab] for found in texts]
    rows = np.repeat(np.arange(len(ids)), [len(i) for i in ids])
    return np.fromiter((t for i in ids for t in i), dtype=np.int64, count=len(rows)), rows


def _scores(x: tuple[np.ndarray, np.ndarray], n: int, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(n, n_labels) X @ weight + bias."""
    columns = [np.bincount(x[1], weight[x[0], c], minlength=n) for c in range(weight.shape[1])]
    return np.stack(columns, 1).reshape(n, -1) + bias


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@dataclass
class Judge:
    labels: list[str]
    vocab: dict[str, int]
    weight: np.ndarray      # (len(vocab), n_labels)
    bias: np.ndarray        # (n_labels,)
    accuracy: float         # on the held-out documents
    majority: float         # share of the held-out documents' most common label
    test_documents: int

    def proba(self, texts: list[str]) -> np.ndarray:
        """(n, n_labels) probability of each label for each text."""
        x = _design([terms(t) for t in texts], self.vocab)
        return _softmax(_scores(x, len(texts), self.weight, self.bias))

    def index(self, label: str) -> int:
        """The column of `label` in `proba`; SettingError("label", ...) for a label the judge does not know."""
        if label not in self.labels:
            raise SettingError("label", label, f"the judge knows {', '.join(self.labels)}")
        return self.labels.index(label)


def _fit(x: tuple[np.ndarray, np.ndarray], n_terms: int, y: np.ndarray, n_labels: int, l2: float,
         steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias minimising mean cross-entropy + l2 / 2 * |W|^2; gradients in numpy, L-BFGS
    steps from torch."""
    w = torch.zeros(n_terms, n_labels, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_labels, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    n, onehot = len(y), np.eye(n_labels)[y]

    def closure():
        weight, bias = w.detach().numpy(), b.detach().numpy()
        p = _softmax(_scores(x, n, weight, bias))
        loss = -np.log(p[np.arange(n), y] + 1e-300).mean() + l2 / 2 * (weight ** 2).sum()
        g = (p - onehot) / n                                                    # (n, n_labels) d loss / d scores
        grad = np.stack([np.bincount(x[0], g[x[1], c], minlength=n_terms) for c in range(n_labels)], 1)
        w.grad, b.grad = torch.from_numpy(grad + l2 * weight), torch.from_numpy(g.sum(0))
        return torch.tensor(loss)

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def train_judge(texts: list[str], labels: list[str], *, test_fraction: float = 0.2, seed: int = 0,
                min_count: int = 3, l2: float = 1e-4, steps: int = 50) -> Judge:
    """Fit on a seeded per-document share of (texts, labels); accuracy on the rest."""
    names = sorted(set(labels))
    y = np.array([names.index(label) for label in labels], dtype=np.int64)
    test = uniform_hash(np.arange(len(texts)), 2 * seed + 4) < test_fraction
    found = [terms(t) for t in texts]
    counts = Counter(t for i, f in enumerate(found) if not test[i] for t in f)
    vocab = {t: i for i, t in enumerate(sorted(t for t, c in counts.items() if c >= min_count))}
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    w, b = _fit(_design([found[i] for i in train_rows], vocab), len(vocab), y[train_rows], len(names), l2, steps)
    judge = Judge(names, vocab, w, b, 0.0, 0.0, len(test_rows))
    guess = _scores(_design([found[i] for i in test_rows], vocab), len(test_rows), w, b).argmax(1)
    truth = y[test_rows]
    judge.accuracy = float((guess == truth).mean()) if len(truth) else 0.0
    judge.majority = float(np.bincount(truth, minlength=len(names)).max() / max(len(truth), 1))
    return judge


def corpus_judge(path: str | Path, label_field: str = "sentiment", **kwargs) -> Judge:
    """A judge trained on a labelled corpus (CSV / JSONL / text folder as data/text.py reads it)."""
    docs = [d for d in iter_documents(TextSource(Path(path), label_field=label_field)) if d.label]
    if len({d.label for d in docs}) < 2:
        raise ValueError(f"{path}: the judge needs at least two labels in {label_field!r}")
    return train_judge([d.text for d in docs], [d.label for d in docs], **kwargs)


def save_judge(judge: Judge, path: Path) -> None:
    """The judge as one .npz file (weights, bias, vocabulary, labels, held-out figures), written atomically."""
    meta = {"labels": judge.labels, "accuracy": judge.accuracy, "majority": judge.majority,
            "test_documents": judge.test_documents}
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, weight=judge.weight, bias=judge.bias, terms=np.array(sorted(judge.vocab, key=judge.vocab.get)),
                     meta=np.array(json.dumps(meta)))


def load_judge(path: Path) -> Judge:
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        vocab = {str(t): i for i, t in enumerate(z["terms"].tolist())}
        return Judge(meta["labels"], vocab, z["weight"], z["bias"], meta["accuracy"], meta["majority"],
                     meta["test_documents"])


def cached_judge(corpus: str | Path, folder: Path, label_field: str = "sentiment") -> Judge:
    """The judge of `corpus`, trained once and kept in `folder` (retrained when the corpus file changes)."""
    identity = {"corpus": file_identity(Path(corpus)) if Path(corpus).is_file() else str(corpus),
                "label_field": label_field, "version": 1}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(folder) / f"judge-{key}.npz"
    if path.is_file():
        return load_judge(path)
    judge = corpus_judge(corpus, label_field)
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_judge(judge, path)
    return judge
