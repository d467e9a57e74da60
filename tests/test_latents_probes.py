"""Probes and explanation scores against brute-force computations on small cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

from latents.heldout import SentenceFeatures, TokenActivations
from latents.probes import L2, auroc, fit_logistic, latent_columns, probe_report, split_documents
from latents.scoring import explanation_scores


def brute_auroc(scores, positive) -> float:
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)) / (len(pos) * len(neg))


def reference_fit(x, y):
    """The same objective minimised by scipy (an independent optimiser)."""
    def loss(p):
        z = x @ p[:-1] + p[-1]
        return np.mean(np.logaddexp(0, z) - y * z) + L2 / 2 * p[:-1] @ p[:-1]
    return minimize(loss, np.zeros(x.shape[1] + 1), method="BFGS", options={"gtol": 1e-10}).x


def small_features(rng, n_sent=120, d_sae=30, d_model=6) -> tuple[SentenceFeatures, np.ndarray]:
    labels = rng.integers(0, 3, size=n_sent)
    dense = np.where(rng.random((n_sent, d_sae)) < 0.2, rng.random((n_sent, d_sae)), 0.0)
    dense[:, 4] += (labels == 1) * 0.8 * rng.random(n_sent)          # a latent that carries label 1
    dense[:, 9] = np.round(dense[:, 9], 1)                             # ties
    sent, latent = np.nonzero(dense)
    raw = rng.normal(size=(n_sent, d_model)) + (labels == 1)[:, None] * 0.5
    f = SentenceFeatures(ordinals=np.arange(n_sent), docs=np.arange(n_sent) // 2, labels=labels,
                         raw_mean=raw.astype(np.float32), raw_last=(raw * 2).astype(np.float32),
                         sent=sent, latent=latent, value=dense[sent, latent].astype(np.float32), d_sae=d_sae)
    return f, dense


def test_auroc_equals_pairwise_count():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=60), 1)
    positive = rng.random(60) < 0.4
    assert auroc(scores, positive) == pytest.approx(brute_auroc(scores, positive), abs=1e-12)
    assert auroc(scores, np.ones(60, bool)) is None


def test_logistic_fit_matches_an_independent_optimiser():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 4))
    y = (x[:, 0] + rng.normal(size=80) > 0).astype(float)
    w, b = fit_logistic(x, y)
    np.testing.assert_allclose(np.append(w, b), reference_fit(x, y), atol=1e-5)


def test_sparse_probes_equal_a_brute_force_computation():
    rng = np.random.default_rng(2)
    f, dense = small_features(rng)
    report = probe_report(f, ["a", "b", "c"], test_fraction=0.3, seed=0, ks=(1, 2, 5))
    test = split_documents(f.docs, 0.3, 0)
    for c, name in enumerate("abc"):
        tr, te = ~test, test
        ytr, yte = f.labels[tr] == c, f.labels[te] == c
        diffs = [abs(dense[tr][ytr, j].mean() - dense[tr][~ytr, j].mean()) for j in range(f.d_sae)]
        order = sorted(range(f.d_sae), key=lambda j: -diffs[j])
        for k in (1, 2, 5):
            chosen = order[:k]
            got = report["labels"][name]["sparse"][str(k)]
            assert got["latents"] == chosen
            xtr, xte = dense[tr][:, chosen], dense[te][:, chosen]
            mean, std = xtr.mean(0), xtr.std(0) + 1e-6
            p = reference_fit((xtr - mean) / std, ytr.astype(float))
            expected = brute_auroc((xte - mean) / std @ p[:-1] + p[-1], yte)
            assert got["auroc"] == pytest.approx(expected, abs=1e-6)
        raw = f.raw_mean.astype(np.float64)
        mean, std = raw[tr].mean(0), raw[tr].std(0) + 1e-6
        p = reference_fit((raw[tr] - mean) / std, ytr.astype(float))
        expected = brute_auroc((raw[te] - mean) / std @ p[:-1] + p[-1], yte)
        assert report["labels"][name]["full_mean"] == pytest.approx(expected, abs=1e-6)
    assert report["labels"]["b"]["sparse"]["1"]["latents"] == [4]
    np.testing.assert_allclose(latent_columns(f, np.arange(10), np.array([4, 9])), dense[:10][:, [4, 9]], rtol=1e-6)


def test_explanation_score_equals_a_direct_count():
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 12, size=400)
    fires = {j: rng.random(400) < 0.1 for j in range(5)}
    fires[2] |= tokens == 7                                              # latent 2 fires on token 7
    row = np.concatenate([np.flatnonzero(fires[j]) for j in range(5)])
    latent = np.concatenate([np.full(int(fires[j].sum()), j) for j in range(5)])
    held = TokenActivations(tokens=tokens, row=row, latent=latent, value=np.ones(len(row), np.float32))
    predicts = {2: [7], 3: [1, 2, 2], 4: []}
    scores = explanation_scores(held, predicts)
    assert set(scores) == {2, 3}
    for j, ids in predicts.items():
        if not ids:
            continue
        predicted = np.isin(tokens, ids)
        hits = int((predicted & fires[j]).sum())
        assert scores[j]["hits"] == hits and scores[j]["predicted"] == int(predicted.sum())
        assert scores[j]["fired"] == int(fires[j].sum())
        assert scores[j]["precision"] == pytest.approx(hits / predicted.sum())
        assert scores[j]["recall"] == pytest.approx(hits / fires[j].sum())
    assert scores[2]["precision"] == 1.0  # it fires on every token 7
