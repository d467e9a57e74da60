"""How much of a label the SAE's latents carry, against a probe on the raw activations (the ceiling).

On a split of the documents (train / test), for each label against the others:
  full probe     logistic regression on the raw activation, averaged over the sentence and at its last
                 token (all d_model dimensions);
  k-sparse probe the k latents whose sentence-level (mean) activation differs most between the label
                 and the rest on the training split (|mean difference|), then logistic regression on
                 those k; k = 1 is the best single latent. Selection as SAEBench's sparse probing does it.
All figures are AUROC on the test documents. Features are standardised on the training split; the
regression minimises mean log loss + l2 / 2 * |w|^2 (L-BFGS, float64).
"""

from __future__ import annotations

import numpy as np
import torch

from data.text import uniform_hash
from latents.heldout import SentenceFeatures

PROBE_KS = (1, 2, 5, 20)
L2 = 1e-3


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half): the Mann-Whitney U statistic over both classes."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2                      # average rank of each value
    rank_sum = float(mid_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 200) -> tuple[np.ndarray, float]:
    """(w (d,), b) minimising mean log loss + l2 / 2 * |w|^2 on x (n, d), y (n,) in {0, 1}."""
    xt, yt = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(y, np.float64))
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 / 2 * w.dot(w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().numpy(), float(b.detach())


def probe_auroc(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float | None:
    """Test AUROC of a logistic regression fitted on the standardised training features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    w, b = fit_logistic((train_x - mean) / std, train_y)
    return auroc((test_x - mean) / std @ w + b, test_y.astype(bool))


def latent_columns(f: SentenceFeatures, rows: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """Dense (len(rows), len(latents)) sentence-mean activations of `latents` on sentences `rows`."""
    where_row = np.full(len(f.labels), -1)
    where_row[rows] = np.arange(len(rows))
    where_latent = np.full(f.d_sae, -1)
    where_latent[latents] = np.arange(len(latents))
    keep = (where_row[f.sent] >= 0) & (where_latent[f.latent] >= 0)
    out = np.zeros((len(rows), len(latents)), dtype=np.float64)
    out[where_row[f.sent[keep]], where_latent[f.latent[keep]]] = f.value[keep]
    return out


def mean_differences(f: SentenceFeatures, rows: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """(d_sae,) mean sentence-level activation over the positive sentences among `rows` minus that over
    the others (zeros included)."""
    sign = np.zeros(len(f.labels))
    sign[rows[positive]] = 1.0 / max(int(positive.sum()), 1)
    sign[rows[~positive]] = -1.0 / max(int((~positive).sum()), 1)
    return np.bincount(f.latent, weights=f.value * sign[f.sent], minlength=f.d_sae)


def split_documents(docs: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """(n,) bool, True for sentences of test documents (a seeded per-document coin flip, its own stream)."""
    return uniform_hash(docs, 2 * seed + 2) < test_fraction


def probe_report(f: SentenceFeatures, label_names: list[str], *, test_fraction: float = 0.2, seed: int = 0,
                 ks: tuple[int, ...] = PROBE_KS) -> dict:
    """Per label: test AUROC of the full probes and of the k-sparse probes (with the latents chosen)."""
    labelled = np.flatnonzero(f.labels >= 0)
    is_test = split_documents(f.docs[labelled], test_fraction, seed)
    train, test = labelled[~is_test], labelled[is_test]
    report = {"train_sentences": len(train), "test_sentences": len(test), "test_fraction": test_fraction,
              "labels": {}}
    for c, name in enumerate(label_names):
        ytr, yte = f.labels[train] == c, f.labels[test] == c
        if not (ytr.any() and (~ytr).any() and yte.any() and (~yte).any()):
            continue
        entry = {"full_mean": probe_auroc(f.raw_mean[train], ytr, f.raw_mean[test], yte),
                 "full_last": probe_auroc(f.raw_last[train], ytr, f.raw_last[test], yte), "sparse": {}}
        order = np.argsort(-np.abs(mean_differences(f, train, ytr)), kind="stable")
        for k in ks:
            chosen = order[:k]
            entry["sparse"][str(k)] = {"auroc": probe_auroc(latent_columns(f, train, chosen), ytr,
                                                            latent_columns(f, test, chosen), yte),
                                       "latents": chosen.tolist()}
        report["labels"][name] = entry
    return report
