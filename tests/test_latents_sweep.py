"""The steering sweep on a tiny model with a planted steering direction: pushing the planted latent
makes the model write the judge's 'negative' word, so the judge moves and the latent rises."""

from __future__ import annotations

import pytest

from latents.sweep import SweepSettings, best_row, distinct2, evenly_spaced, sweep_latent, sweep_table
from sweep_helpers import LATENT, planted as build_planted


@pytest.fixture(scope="module")
def planted():
    return build_planted()


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


def test_evenly_spaced_includes_both_ends():
    assert evenly_spaced(2.0, 20.0, 3) == [2.0, 11.0, 20.0]
    assert evenly_spaced(-1.0, 1.0, 5) == [-1.0, -0.5, 0.0, 0.5, 1.0] and evenly_spaced(4.0, 9.0, 1) == [4.0]
