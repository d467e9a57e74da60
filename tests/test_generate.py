"""Steering and generate.py: effects of steering on the real model, exactness at value 0, CLI errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import paths
import startup
from generate import GenerateConfig
from llama import generate
from sae.config import SAEConfig
from sae.steering import Steer, Steering, check_steers, parse_steer, unsteered
from settings import SettingError

ROOT = Path(__file__).resolve().parent.parent
HOOK = paths.DEFAULT_HOOK
PROMPTS = ["Today I went to the park and", "The food at the restaurant was"]


def _generate(smol, steering, n=6):
    prompts = [smol.tokenizer.encode(p) for p in PROMPTS]
    injections = {HOOK: steering} if steering is not None else None
    return generate(smol.model, smol.tokenizer, prompts, max_new_tokens=n, injections=injections)


def _promoted_tokens(smol, sae, latent, n=20):
    """Tokens whose logits the latent's decoder direction raises most (direct path through the head)."""
    direction = sae.decoder_direction(latent) * smol.model.norm.weight
    return (smol.model.output.weight @ direction).topk(n).indices


def test_parse_steer():
    assert parse_steer("896:20") == Steer(896, 20.0) and parse_steer("3:-1.5e1") == Steer(3, -15.0)
    for bad, message in [("896", "IDX:VALUE"), ("abc:1", "not an integer"), ("-1:2", ">= 0"),
                         ("5:nan", "finite"), ("5:inf", "finite"), ("5:x", "not a number"), (":3", "IDX:VALUE")]:
        with pytest.raises(ValueError, match=message):
            parse_steer(bad)


def test_a_steer_is_checked_where_it_enters():
    """Steer checks itself, so a steer from --steer text, a request's [latent, value] pair or code is
    checked once, by one function; the error names the field and the value, never a flag."""
    for args, problem in [((-1, 1), "latent index must be >= 0"), ((2.5, 1), "not an integer"),
                          ((True, 1), "not an integer"), ((3, float("nan")), "finite"), ((3, "1"), "not a number")]:
        with pytest.raises(SettingError) as caught:
            Steer(*args)
        assert caught.value.field == "steer" and problem in caught.value.problem
    with pytest.raises(SettingError) as caught:
        parse_steer("-3:1")
    assert (caught.value.field, caught.value.value) == ("steer", "-3:1")  # as it was written
    with pytest.raises(SettingError, match="steer '7:1': latent index out of range"):
        check_steers([Steer(7, 1)], d_sae=7)
    with pytest.raises(SettingError) as caught:
        GenerateConfig(steer=["5:x"])
    assert (caught.value.field, caught.value.value) == ("steer", "5:x")


def test_value_zero_reproduces_unsteered(smol, sae):
    plain = _generate(smol, None)
    assert _generate(smol, Steering(sae, [Steer(7, 0.0)], "direction")) == plain
    spliced = _generate(smol, unsteered(sae, "sae"))
    assert _generate(smol, unsteered(sae, "clamp")) == plain  # the baseline of the other modes: the plain model
    assert _generate(smol, Steering(sae, [Steer(7, 0.0), Steer(9, 0.0)], "sae")) == spliced
    assert torch.count_nonzero(sae.h_bias) == 0  # steering never leaves the SAE changed


@pytest.mark.parametrize("mode", ["sae", "direction", "clamp"])
def test_positive_steer_raises_latent_and_promoted_tokens(smol, sae, mode):
    latent, value = 11, 40.0
    baseline = Steering(sae, [], mode if mode == "sae" else "direction")
    steered = Steering(sae, [Steer(latent, value)], mode)
    promoted = _promoted_tokens(smol, sae, latent)
    prompt = smol.tokenizer.encode(PROMPTS[0])
    new = generate(smol.model, smol.tokenizer, [prompt], max_new_tokens=8, injections={HOOK: steered})[0]
    tokens = torch.tensor([prompt + new])
    activation, logprob = {}, {}
    for name, steering in (("base", baseline), ("steered", steered)):
        out = smol.model(tokens, injections={HOOK: steering}, taps=(HOOK,))  # the tap: before steering
        logits = out.logits  # (1, seqlen, vocab)
        seen = steering.steer(out.taps[HOOK], latents=True)  # what the injection passed on, and its latents
        dense = sae.to_dense((seen.values, seen.indices))
        activation[name] = dense[0, len(prompt):, latent].mean()  # on the generated tokens
        logprob[name] = logits[0, len(prompt) - 1:].log_softmax(-1)[:, promoted].mean()
    assert activation["steered"] > activation["base"] + value / 2
    assert logprob["steered"] > logprob["base"] + 0.5


def test_clamp_sets_the_latent(smol, sae):
    tokens = torch.tensor([smol.tokenizer.encode(PROMPTS[1])])
    acts = smol.model(tokens, taps=(HOOK,), return_logits=False).taps[HOOK]
    latents = sae.to_dense(sae.encode(acts))
    latent = int(latents[0, -1].argmax())  # a latent active on the last token
    clamped = Steering(sae, [Steer(latent, 0.0)], "clamp")(acts)
    # Clamping to 0 removes exactly the latent's share of the reconstruction, error term kept.
    expected = acts - latents[..., latent:latent + 1] * sae.decoder_direction(latent)
    torch.testing.assert_close(clamped, expected, rtol=1e-5, atol=1e-4)


def test_sae_mismatch_errors(smol, sae, tmp_path):
    for change, message in [({"d_in": 64}, "another model"),
                            ({"hook_name": "blocks.40.hook_resid_post"}, "out of range"),
                            ({"model": "other.gguf (gguf, 0123456789abcdef)"}, "was trained on other.gguf")]:
        cfg = SAEConfig(**{**sae.cfg.to_dict(), **change})
        with pytest.raises(ValueError, match=message):
            startup.check_sae_matches(cfg, smol, folder=tmp_path)


def _run(*args, env=None):
    return subprocess.run([sys.executable, "generate.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_cli_errors_are_one_line(sae_dir, tmp_path):
    cases = [["--steer", "896"], ["--steer", "abc:1"], ["--steer", "-3:1"], ["--steer", "5:nan"],
             ["--sae", str(sae_dir), "--steer", "999999:1"], ["--steer", "5:1"], ["--sae", str(tmp_path / "none")],
             ["--sweep", "5:0"], ["--sweep", "5:0:x"], ["--sae", str(sae_dir), "--sweep", "999999:0:1"]]
    procs = [subprocess.Popen([sys.executable, "generate.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "LLAMA_SAE_RUNS": str(tmp_path / "runs")}) for args in cases]
    errors = []
    for args, proc in zip(cases, procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (args, err)
        assert out == "" and err.count("\n") == 1 and err.startswith("error: "), (args, err)
        errors.append(err)
    assert "python pipeline.py" in errors[5]  # no SAE trained yet: says how to get one
    assert "0..511" in errors[4] and "0..511" in errors[9]
    assert "IDX:LO:HI" in errors[7] and "IDX:LO:HI" in errors[8]


def test_cli_compare_and_features(sae_dir, tmp_path):
    result = _run("--sae", str(sae_dir), "--steer", "11:40", "--mode", "sae", "--compare", "--show-features",
                  "--max-new-tokens", "3", "--explanations", str(tmp_path / "none.json"), "Hello there")
    assert result.returncode == 0, result.stderr
    assert "unsteered (SAE spliced)" in result.stdout and "steered 11:+40 (sae)" in result.stdout
    assert "strongest latents at each generated token" in result.stdout and "11:" in result.stdout
