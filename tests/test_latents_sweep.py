"""The steering sweep on a tiny model with a planted steering direction: pushing the planted latent
makes the model write the judge's 'negative' word, so the judge moves and the latent rises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latents.judge import train_judge
from latents.sweep import SweepSettings, best_row, distinct2, sweep_latent, sweep_table
from llama.loading import LoadedModel
from llama.model import ModelArgs, Transformer
from sae import SAEConfig, SparseAutoencoder

HOOK = "blocks.1.hook_resid_post"
DIM, VOCAB, BAD, GOOD, LATENT = 16, 40, 5, 6, 3


class WordTokenizer:
    pad_id, bos_id = 0, 1
    stop_ids = frozenset()  # never stop early: every completion has max_new_tokens tokens

    def token_bytes(self, token_id: int) -> bytes:
        return {BAD: b" awful", GOOD: b" lovely"}.get(token_id, f" w{token_id}".encode())

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode()


@pytest.fixture(scope="module")
def planted():
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=DIM, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB,
                                  multiple_of=16, max_seq_len=64)).eval().requires_grad_(False)
    direction = torch.nn.functional.normalize(torch.randn(DIM), dim=0)
    with torch.no_grad():  # the output head reads the direction (after the final norm) as " awful" alone
        u = torch.nn.functional.normalize(direction * model.norm.weight, dim=0)
        model.output.weight -= (model.output.weight @ u)[:, None] * u
        model.output.weight[BAD] = 0.3 * u
    sae = SparseAutoencoder(SAEConfig(d_in=DIM, d_sae=8, k=2, normalization="none", hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc[:, LATENT] = direction
        sae.W_dec[LATENT] = direction
        sae.b_enc[LATENT] = 0.0
    sae.requires_grad_(False)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice([f"w{i}" for i in range(7, 40)], 5)) + (" awful" if i % 2 else " lovely")
             for i in range(300)]
    judge = train_judge(texts, ["negative" if i % 2 else "positive" for i in range(300)], min_count=2)
    loaded = LoadedModel(model, WordTokenizer(), model.args, "tiny")
    prompts = [rng.integers(7, VOCAB, size=4).tolist() for _ in range(5)]
    return loaded, sae, judge, prompts


def test_sweep_moves_the_judge_and_raises_the_latent(planted):
    loaded, sae, judge, prompts = planted
    rows = sweep_latent(loaded, sae, prompts, LATENT, [2.0, 6.0, 20.0], judge, "negative",
                        SweepSettings(max_new_tokens=8, max_ppl_ratio=1e9, min_distinct2_ratio=0.0))
    assert [r.value for r in rows] == [0.0, 2.0, 6.0, 20.0]
    latent = [r.latent for r in rows]
    assert all(b > a for a, b in zip(latent, latent[1:])), latent     # rises monotonically
    assert rows[0].shift == 0.0 and rows[-1].shift > 0.3 and rows[-1].moved == len(prompts)
    assert all("awful" in t for t in rows[-1].texts)
    assert rows[-1].in_range and best_row(rows) is not None and not rows[0].in_range
    assert rows[0].ppl_ratio == 1.0 and rows[-1].perplexity > 0
    table = sweep_table(rows, LATENT, "negative")
    assert table.count("\n") == len(rows) + 1 and "*" in table.splitlines()[-1]


def test_fluency_and_repetition_bounds_exclude_values(planted):
    loaded, sae, judge, prompts = planted
    for settings in (SweepSettings(max_new_tokens=8, max_ppl_ratio=0.5, min_distinct2_ratio=0.0),
                     SweepSettings(max_new_tokens=8, max_ppl_ratio=1e9)):  # " awful awful ..." repeats itself
        rows = sweep_latent(loaded, sae, prompts, LATENT, [20.0], judge, "negative", settings)
        assert rows[-1].shift > 0.3 and not any(r.in_range for r in rows) and best_row(rows) is None


def test_distinct2_counts_pairs():
    assert distinct2([1, 2, 1, 2, 1]) == pytest.approx(2 / 4)
    assert distinct2([1, 2, 3]) == 1.0 and distinct2([4]) == 1.0
