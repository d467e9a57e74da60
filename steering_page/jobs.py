"""A request's JSON checked into a job, against the SAE's size and the server's limits; a one-line
ValueError (or a SettingError from sae.steering, which names the field and its value) otherwise. The
context the prompts must fit is the session's to check: it holds the tokenizer."""

from __future__ import annotations

import math
from typing import NamedTuple

from latents.sweep import NEUTRAL_PROMPTS, SweepSettings, evenly_spaced
from sae.steering import Steer, check_mode, check_steers

MAX_NEW_TOKENS = 256       # per request: a generation holds the model
GENERATE_FIELDS = ("prompt", "steers", "mode", "max_new_tokens")
SWEEP_FIELDS = ("latent", "lo", "hi", "steps", "label", "mode", "max_new_tokens", "prompts", "max_ppl_ratio",
                "min_distinct2_ratio")
MAX_SWEEP_STEPS = 8        # a sweep generates (steps + 1) x prompts completions under the lock
MAX_SWEEP_PROMPTS = 5
MAX_SWEEP_TOKENS = 64


class Job(NamedTuple):
    """A checked /generate request."""

    prompt: str
    steers: list[Steer]
    mode: str
    max_new_tokens: int


class SweepJob(NamedTuple):
    """A checked /sweep request."""

    latent: int
    values: list[float]
    label: str
    prompts: list[str]
    settings: SweepSettings


def generate_job(request: dict, d_sae: int, default_mode: str) -> Job:
    """{"prompt", "steers", "mode", "max_new_tokens"} checked."""
    refuse_unknown(request, GENERATE_FIELDS)
    prompt, mode = request.get("prompt"), request.get("mode", default_mode)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: give some text to continue")
    check_mode(mode)
    max_new = whole(request, "max_new_tokens", 48, 1, MAX_NEW_TOKENS)
    return Job(prompt, steers(request.get("steers", []), d_sae), mode, max_new)


def sweep_job(request: dict, d_sae: int, default_mode: str) -> SweepJob:
    """{"latent", "lo", "hi", "steps", ...} checked. Values: `steps` evenly from lo to hi (0, the
    unsteered baseline, is added by the sweep)."""
    refuse_unknown(request, SWEEP_FIELDS)
    for name, what in (("latent", "the index of the latent to sweep"), ("hi", "the last value to sweep")):
        if name not in request:
            raise ValueError(f"{name}: give {what}")
    latent = whole(request, "latent", None, 0, d_sae - 1)
    lo, hi = finite(request, "lo", 0.0), finite(request, "hi", None)
    steps = whole(request, "steps", 5, 1, MAX_SWEEP_STEPS)
    mode, label = request.get("mode", default_mode), request.get("label", "negative")
    check_mode(mode)
    if not isinstance(label, str) or not label:
        raise ValueError(f"label {label!r}: name one of the corpus's labels, e.g. \"negative\"")
    max_new = whole(request, "max_new_tokens", 32, 1, MAX_SWEEP_TOKENS)
    ratio, distinct = finite(request, "max_ppl_ratio", 3.0), finite(request, "min_distinct2_ratio", 0.5)
    if ratio <= 0 or not 0 <= distinct <= 1:
        raise ValueError(f"max_ppl_ratio {ratio:g} must be > 0, min_distinct2_ratio {distinct:g} from 0 to 1")
    prompts = request.get("prompts", list(NEUTRAL_PROMPTS))
    if (not isinstance(prompts, list) or not 1 <= len(prompts) <= MAX_SWEEP_PROMPTS
            or not all(isinstance(p, str) and p.strip() for p in prompts)):
        raise ValueError(f"prompts: a list of 1 to {MAX_SWEEP_PROMPTS} texts to continue")
    settings = SweepSettings(mode=mode, max_new_tokens=max_new, max_ppl_ratio=ratio, min_distinct2_ratio=distinct)
    return SweepJob(latent, evenly_spaced(lo, hi, steps), label, prompts, settings)


def steers(pairs, d_sae: int) -> list[Steer]:
    """[[latent, value], ...] -> Steers, checked as every steer is (sae.steering.Steer) and against the SAE."""
    if not isinstance(pairs, list) or not all(isinstance(s, list) and len(s) == 2 for s in pairs):
        raise ValueError("steers: a list of [latent, value] pairs")
    if any(isinstance(x, (bool, str)) for pair in pairs for x in pair):
        raise ValueError("steers: latents and values are numbers, e.g. [[11, 40]]")
    checked = [Steer(latent, value) for latent, value in pairs]
    check_steers(checked, d_sae)
    return checked


def refuse_unknown(request: dict, fields: tuple[str, ...]) -> None:
    unknown = sorted(set(request) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; send {', '.join(fields)}")


def whole(request: dict, name: str, default, lo: int, hi: int) -> int:
    """request[name] (or `default`) as a whole number from lo to hi; one-line ValueError otherwise."""
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} {value!r}: a whole number from {lo} to {hi}")
    return value


def finite(request: dict, name: str, default) -> float:
    """request[name] (or `default`) as a finite number; one-line ValueError otherwise."""
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} {value!r}: give a finite number")
    return float(value)
