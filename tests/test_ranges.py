"""Numbers are checked for range where they enter: seeds, temperature, the logit lens's size, steering
values and the sweep's steps. Each bound is held against what the library behind it accepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cli
import generate
from data.shuffle import PrebatchConfig
from data.text import uniform_hash
from generate import GenerateConfig
from interpret import InterpretConfig
from llama.generation import sample
from pipeline import PipelineConfig
from settings import SEED_MAX, SettingError, check_number, check_seed
from training.config import TrainConfig

SEEDED = {  # each config that takes a seed, built as its script builds it
    "generate": lambda seed: GenerateConfig(seed=seed),
    "interpret": lambda seed: InterpretConfig(seed=seed),
    "train": lambda seed: TrainConfig.of(seed=seed),
    "prebatch": lambda seed: PrebatchConfig(seed=seed),
}


def test_the_largest_seed_works_in_every_generator_that_takes_one():
    torch.manual_seed(SEED_MAX)
    torch.Generator().manual_seed(SEED_MAX)
    np.random.default_rng([SEED_MAX, 1 << 32]).random()
    for stream in (1, 2, 4):  # the split, the probes' split and the judge's split (2 seed + stream)
        assert uniform_hash(np.arange(5), 2 * SEED_MAX + stream).shape == (5,)


def test_seeds_beyond_the_range_fail_in_the_libraries_themselves():
    """The reference for the bound: what the generators refuse (the tracebacks users saw)."""
    with pytest.raises((ValueError, RuntimeError, OverflowError)):
        torch.manual_seed(2**64)
    with pytest.raises(ValueError):
        np.random.default_rng(-1)


@pytest.mark.parametrize("script", sorted(SEEDED))
@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 2**64])
def test_a_seed_out_of_range_is_refused_with_the_range(script, seed):
    with pytest.raises((SettingError, cli.UsageError), match=f"seed {seed}: must be an integer from 0 to {SEED_MAX}"):
        SEEDED[script](seed)


@pytest.mark.parametrize("script", sorted(SEEDED))
def test_the_seeds_at_the_ends_of_the_range_are_taken(script):
    assert SEEDED[script](0).seed == 0 and SEEDED[script](SEED_MAX).seed == SEED_MAX


def test_the_seed_flag_is_named_in_the_message():
    with pytest.raises(cli.UsageError, match=r"^--seed 18446744073709551616: must be an integer from 0 to 4294967295"):
        generate.parse_args(["--seed", str(2**64), "Hi"])


def test_check_number_and_check_seed_bounds():
    check_number("x", 5.0, 0.0, 5.0)
    with pytest.raises(SettingError, match="must be a finite number from 0 to 5"):
        check_number("x", 5.5, 0.0, 5.0)
    for bad in (True, 1.5, "3"):
        with pytest.raises(SettingError):
            check_seed("seed", bad)


# temperature: 0 is greedy; a positive one must keep logits / temperature finite

@pytest.mark.parametrize("temperature", [1e-300, 1e-6, 5e-4])
def test_a_temperature_too_small_to_sample_with_is_refused(temperature):
    with pytest.raises(SettingError, match="0 .greedy. or"):
        GenerateConfig(temperature=temperature)


def test_the_smallest_temperature_samples_finite_probabilities():
    """At the lowest temperature allowed, logits far larger than a model gives still sample: the draw
    equals greedy's, and the tiny temperature that used to be accepted fails inside torch."""
    smallest = GenerateConfig(temperature=1e-3).temperature
    logits = torch.tensor([[3000.0, 2999.0, -3000.0], [-10.0, 40.0, 39.99]])
    generator = torch.Generator().manual_seed(0)
    assert sample(logits, smallest, generator=generator).tolist() == logits.argmax(-1).tolist()
    with pytest.raises(RuntimeError):
        sample(logits, 1e-300, generator=generator)


@pytest.mark.parametrize("sweep", ["5:0:1:0", "5:0:1:101", "5:0:1:1000000000"])
def test_a_sweep_of_too_many_steps_is_refused_before_it_allocates_them(sweep):
    with pytest.raises(cli.UsageError, match=f"--sweep {sweep}: .*STEPS from 1 to 100"):
        generate.parse_args(["--sweep", sweep])
    assert len(generate.parse_sweep("5:0:1:100")[1]) == 100


# interpret.py --lens-top

def test_lens_top_beyond_any_vocabulary_is_refused_by_its_flag():
    with pytest.raises(cli.UsageError, match=r"^--lens-top 1000000000: must be an integer from 1 to 1000"):
        cli.parse_config(InterpretConfig, "", ["--lens-top", "1000000000"])
    assert InterpretConfig(lens_top=1000).lens_top == 1000


# pipeline.py: the settings of every stage before the first runs, worded as the pipeline's flags

@pytest.mark.parametrize("argv, expect", [
    (["--steer-scale", "1e308"], "--steer-scale 1e+308: must be a finite number from"),
    (["--steer-scale", "0"], "--steer-scale 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be an integer >= 1"),
    (["--seed", str(2**64)], f"--seed {2**64}: must be an integer from 0 to {SEED_MAX}"),
    (["--sweep-steps", "1000000"], "--sweep-steps 1000000: must be an integer from 1 to 100"),
])
def test_the_pipeline_refuses_every_stage_setting_before_running_one(tmp_path, monkeypatch, argv, expect):
    import pipeline

    started = []
    monkeypatch.setattr(pipeline, "stage", lambda *a, **k: started.append(a))  # a stage that ran
    with pytest.raises(cli.UsageError) as caught:
        pipeline.cli_main(["--runs", str(tmp_path / "runs"), "--device", "cpu", *argv])
    assert str(caught.value).startswith(expect) and not started
    assert not (tmp_path / "runs").exists()


def test_the_pipeline_keeps_its_defaults():
    cfg = PipelineConfig()
    assert cfg.steer_scale == 4.0 and cfg.sweep_steps == 4
