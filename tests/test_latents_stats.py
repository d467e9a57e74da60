"""The streaming statistics pass against a brute-force recomputation on a small captured dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latents.collect import collect_stats
from latents.histogram import LogBins, auroc_from_histograms
from latents.source import CapturedData
from latents.stats import StatsConfig, dense_encoder
from synthetic_capture import random_corpus, write_captured

D_MODEL, D_SAE, K, TOP_N, CONTEXT = 16, 40, 4, 5, 3


def topk_encoder(seed: int):
    """A random TopK encoder: x (n, d) -> dense (n, d_sae) with k non-zero (ReLU) values per row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D_MODEL, D_SAE, generator=g) / D_MODEL ** 0.5
    b = torch.randn(D_SAE, generator=g) * 0.1

    def encode(x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(x.float() @ w + b)
        values, indices = pre.topk(K, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, indices, values)
    return encode


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    tokens, index, records = random_corpus(rng, 60, vocab=30, min_len=2, max_len=14)
    acts = rng.standard_normal((len(tokens), D_MODEL)).astype(np.float32)
    folder = write_captured(tmp_path_factory.mktemp("cap") / "hook", acts, tokens, index, records,
                            label_names=["negative", "positive"], shard_rows=150)
    return folder, acts, tokens, index, records


@pytest.fixture(scope="module")
def stats(dataset):
    folder = dataset[0]
    cfg = StatsConfig(top_n=TOP_N, context=CONTEXT, n_random_sentences=7, ngram_buckets=1 << 10)
    # Small chunks so that sentences straddle chunk and shard boundaries.
    return collect_stats(CapturedData(folder), dense_encoder(topk_encoder(1)), D_SAE, cfg, rows_per_chunk=37)


def brute_force(dataset):
    folder, acts, tokens, index, records = dataset
    h = topk_encoder(1)(torch.from_numpy(acts)).numpy().astype(np.float64)     # (rows, d_sae)
    starts = np.flatnonzero(index[:, 2] == 0)
    stops = np.append(starts[1:], len(index))
    mean = np.stack([h[a:b].mean(0) for a, b in zip(starts, stops)])           # (n_sentences, d_sae)
    last = np.stack([h[b - 1] for b in stops])
    return h, starts, stops, mean, last


def expected_top(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")[:n]
    order = order[scores[order] > 0]
    return order, scores[order]


def test_density_mean_max_and_histogram(dataset, stats):
    h, *_ = brute_force(dataset)
    np.testing.assert_allclose(stats["density"].numpy(), (h > 0).mean(0))
    np.testing.assert_allclose(stats["mean"].numpy(), h.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["max"].numpy(), h.max(0), rtol=1e-6)
    bins = LogBins()
    edges = bins.edges().numpy()
    for j in range(D_SAE):
        values = h[:, j][h[:, j] > 0].clip(edges[0], edges[-1] * 0.999)
        np.testing.assert_array_equal(stats["hist"][j].numpy(), np.histogram(values, edges)[0])
    dead = set(np.flatnonzero((h > 0).sum(0) == 0))
    assert set(range(D_SAE)) - set(stats.live().tolist()) == dead


def test_top_sentences_match_brute_force(dataset, stats):
    h, starts, stops, mean, last = brute_force(dataset)
    for name, table in (("top_mean", mean), ("top_last", last)):
        for j in range(D_SAE):
            order, values = expected_top(table[:, j], TOP_N)
            got = stats[f"{name}.scores"][j]
            kept = torch.isfinite(got)
            np.testing.assert_allclose(got[kept].numpy(), values, rtol=1e-5)
            np.testing.assert_array_equal(stats[f"{name}.sentence"][j][kept].numpy(), order)


def test_top_token_contexts_match_brute_force(dataset, stats):
    h, starts, stops, *_ = brute_force(dataset)
    sentence_of = np.searchsorted(starts, np.arange(len(h)), side="right") - 1
    for j in range(D_SAE):
        order, values = expected_top(h[:, j], TOP_N)
        got = stats["top_tokens.scores"][j]
        kept = torch.isfinite(got)
        np.testing.assert_allclose(got[kept].numpy(), values, rtol=1e-5)
        np.testing.assert_array_equal(stats["top_tokens.row"][j][kept].numpy(), order)
        for slot, row in enumerate(order):
            a, b = starts[sentence_of[row]], stops[sentence_of[row]]
            window = np.full(2 * CONTEXT + 1, np.nan)
            lo, hi = max(a, row - CONTEXT), min(b, row + CONTEXT + 1)
            window[lo - row + CONTEXT: hi - row + CONTEXT] = h[lo:hi, j]
            np.testing.assert_allclose(stats["top_tokens.values"][j, slot].float().numpy(), window,
                                       rtol=2e-3, atol=1e-4)  # stored as float16
            assert int(stats["top_tokens.lo"][j, slot]) == row - lo
            assert int(stats["top_tokens.sentence"][j, slot]) == sentence_of[row]


def rank_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC, brute force over all pairs."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_label_association_matches_brute_force(dataset, stats):
    _, _, _, _, records = dataset
    _, _, _, mean, _ = brute_force(dataset)
    labels = np.array([["negative", "positive"].index(r["label"]) for r in records])
    binned = LogBins()
    for j in range(D_SAE):
        score = mean[:, j]
        # Binned scores (zero kept apart) reproduce the streaming AUROC exactly ...
        key = np.where(score > 0, binned.index(torch.from_numpy(score).clamp(min=1e-30)).numpy() + 1, 0)
        for c in range(2):
            expected = rank_auroc(key[labels == c], key[labels != c])
            assert stats["label_auroc"][j, c].item() == pytest.approx(expected, abs=1e-9)
            # ... and the raw scores within binning error.
            assert stats["label_auroc"][j, c].item() == pytest.approx(
                rank_auroc(score[labels == c], score[labels != c]), abs=0.05)
            diff = score[labels == c].mean() - score[labels != c].mean()
            assert stats["label_mean_diff"][j, c].item() == pytest.approx(diff, rel=1e-5, abs=1e-7)


def test_auroc_from_histograms_extremes():
    perfect = auroc_from_histograms(torch.tensor([0., 0, 5]), torch.tensor([3., 2, 0]))
    reversed_ = auroc_from_histograms(torch.tensor([4., 0, 0]), torch.tensor([0., 0, 1]))
    assert perfect.item() == 1.0 and reversed_.item() == 0.0


def test_random_sentences_hold_their_mean_activation(dataset, stats):
    _, _, _, mean, _ = brute_force(dataset)
    chosen = stats["random_sentences"].numpy()
    assert len(chosen) == 7 and len(set(chosen)) == 7
    np.testing.assert_allclose(stats["random_mean"].numpy(), mean[chosen], rtol=1e-5, atol=1e-7)


def test_resumed_pass_equals_uninterrupted(dataset, stats, tmp_path):
    folder = dataset[0]
    cfg = StatsConfig(top_n=TOP_N, context=CONTEXT, n_random_sentences=7, ngram_buckets=1 << 10)
    data = CapturedData(folder)
    checkpoint = tmp_path / "partial.safetensors"

    def stop_early(chunks):
        for i, chunk in enumerate(chunks):
            if i == 9:
                raise KeyboardInterrupt
            yield chunk
    with pytest.raises(KeyboardInterrupt):
        collect_stats(data, dense_encoder(topk_encoder(1)), D_SAE, cfg, rows_per_chunk=37, checkpoint=checkpoint,
                      checkpoint_every=4, progress=stop_early)
    assert checkpoint.is_file()
    encoded = []

    def counting_encoder(x):
        encoded.append(len(x))
        return dense_encoder(topk_encoder(1))(x)
    resumed = collect_stats(data, counting_encoder, D_SAE, cfg, rows_per_chunk=37, checkpoint=checkpoint)
    # Each chunk holds at least 37 - 13 rows (sentences are at most 14 long): 4 chunks are not redone.
    assert 0 < sum(encoded) <= len(dataset[2]) - 4 * (37 - 13)
    for name, value in stats.tensors.items():
        torch.testing.assert_close(resumed[name], value, equal_nan=True, msg=name)
    assert not checkpoint.exists()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reader_converts_stored_dtypes(tmp_path, dtype):
    rng = np.random.default_rng(1)
    tokens, index, records = random_corpus(rng, 12, min_len=2, max_len=6)
    acts = rng.standard_normal((len(tokens), D_MODEL)).astype(np.float32)
    folder = write_captured(tmp_path / dtype, acts, tokens, index, records, dtype=dtype, shard_rows=20)
    chunks = list(CapturedData(folder).chunks(7))
    got = torch.cat([c.acts for c in chunks])
    expected = torch.from_numpy(acts).to(getattr(torch, dtype)).float()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(torch.cat([c.tokens for c in chunks]).numpy(), tokens)
    assert all(c.position[0] == 0 for c in chunks)  # every chunk starts a sentence
