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
    (["--prompt", "  "], "--prompt   : give some text to continue"),
    (["--max-new-tokens", "100000"], "--max-new-tokens 100000: must leave room for the prompt in the model's "
                                     "context of 8192 tokens"),
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


# the sweep never recommends a push whose completions are empty or whose logits overflow

LENIENT = dict(max_new_tokens=8, max_ppl_ratio=1e9, min_distinct2_ratio=0.0, min_shift=-1.0)  # only the new tests


@pytest.fixture(scope="module")
def planted():
    from sweep_helpers import planted as build

    return build()


def test_a_push_that_overflows_the_model_is_never_in_range(planted):
    from latents.sweep import SweepSettings, best_row, sweep_latent, sweep_table
    from sweep_helpers import LATENT

    loaded, sae, judge, prompts = planted
    rows = sweep_latent(loaded, sae, prompts, LATENT, [2.0, 1e30], judge, "negative", SweepSettings(**LENIENT))
    assert [(r.value, r.finite) for r in rows] == [(0.0, True), (2.0, True), (1e30, False)]
    assert rows[1].in_range and not rows[2].in_range and best_row(rows).value == 2.0
    assert sweep_table(rows, LATENT, "negative").splitlines()[-1].endswith("logits not finite")


def test_a_push_that_empties_the_completions_is_never_in_range(planted, monkeypatch):
    from latents.sweep import SweepSettings, best_row, sweep_latent
    from sweep_helpers import BAD, LATENT

    loaded, sae, judge, prompts = planted
    monkeypatch.setattr(loaded.tokenizer, "stop_ids", frozenset({BAD}))  # the pushed word ends the text
    rows = sweep_latent(loaded, sae, prompts, LATENT, [20.0], judge, "negative", SweepSettings(**LENIENT))
    assert rows[0].empty == 0 and rows[1].empty == len(prompts) and rows[1].finite
    assert not rows[1].in_range and best_row(rows) is None


# generate.py --steer: an overflowing push is refused before any text; a value far beyond the latent's
# largest activation (interpret's statistics for this SAE) gets a note with the range and a --sweep

@pytest.fixture
def offline(smol, monkeypatch):
    """generate.py with the session's model (no second load)."""
    import startup

    monkeypatch.setattr(startup, "load_model", lambda *a, **k: smol)


def _interpret_folder(folder, sae_dir, latent: int, top: float):
    import json

    (folder / "latents").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"sae": str(sae_dir)}))
    (folder / "latents" / f"{latent}.json").write_text(json.dumps({"latent": latent, "max": top}))
    return folder / "latent_index_meaning.json"


@pytest.mark.parametrize("mode", ["direction", "sae", "clamp"])
def test_a_push_that_overflows_the_model_is_refused_before_any_text(offline, sae_dir, tmp_path, capsys, mode):
    cfg = generate.parse_args(["--sae", str(sae_dir), "--steer", "5:1e30", "--mode", mode, "--max-new-tokens", "2",
                               "--explanations", str(_interpret_folder(tmp_path / "i", sae_dir, 5, 2.5)), "Hi"])
    with pytest.raises(cli.UsageError) as caught:
        generate.main(cfg)
    message = str(caught.value)
    assert message.startswith("--steer 5:1e+30: pushing latent 5 by 1e+30 makes the model's logits infinite or NaN")
    assert "its largest activation in interpret's statistics is 2.5" in message and "--sweep 5:0:10:5" in message
    assert capsys.readouterr().out == ""


def test_the_largest_push_that_stays_finite_is_taken(offline, sae_dir, tmp_path, capsys):
    cfg = generate.parse_args(["--sae", str(sae_dir), "--steer", "5:1e3", "--max-new-tokens", "2",
                               "--explanations", str(tmp_path / "none.json"), "Hi"])
    assert generate.main(cfg) == 0


def test_a_value_far_beyond_the_latents_activations_gets_its_range_and_a_sweep(offline, sae_dir, tmp_path, capsys):
    table = _interpret_folder(tmp_path / "i", sae_dir, 5, 2.5)
    run = lambda value, explanations: generate.main(generate.parse_args(
        ["--sae", str(sae_dir), "--steer", f"5:{value}", "--max-new-tokens", "2", "--explanations", str(explanations),
         "Hi"]))
    assert run(20, table) == 0
    err = capsys.readouterr().err
    assert ("note: --steer 5:20 is 8x latent 5's largest activation in interpret's statistics (2.5; useful values "
            "are usually between 0 and 10)") in err and "python generate.py --sweep 5:0:10:5 measures the range" in err
    assert run(-20, table) == 0 and "--sweep 5:0:-10:5" in capsys.readouterr().err
    assert run(10, table) == 0 and "note:" not in capsys.readouterr().err  # within 4x: no note
    other = _interpret_folder(tmp_path / "other", tmp_path / "another-sae", 5, 2.5)  # statistics of another SAE
    assert run(20, other) == 0 and "note:" not in capsys.readouterr().err


def test_an_empty_steered_completion_is_said(capsys):
    from sae.steering import Steer

    class Steered:
        steers = (Steer(5, 3.0),)

    generate.warn_empty({"unsteered": None, "steered 5:+3 (direction)": Steered()},
                        {"unsteered": [[], [7]], "steered 5:+3 (direction)": [[4], []]}, ["a", "b"])
    assert capsys.readouterr().err == ("warning: steered 5:+3 (direction): the completion of prompt(s) 1 is empty "
                                       "(the model ended it at once); a smaller value may give text\n")


def test_the_old_prebatch_entry_point_names_the_script():
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-m", "data.prebatch", "--capture", "x"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "error: `python -m data.prebatch` is now `python prebatch.py` (the same flags; --help lists them)\n"
