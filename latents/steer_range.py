"""How far a steering value may go: the push must leave the model's logits finite, and interpret.py's
statistics say how large the latent's own activations are, the scale a useful value is on.

A push of 1e30 overflows the next RMSNorm (1e30 squared is beyond float32): the logits become zeros or
NaN, argmax picks token 0, which is end-of-text in the SmolLM2 vocabulary: an empty completion with
nothing to say why. `push_is_finite` finds that before anything is printed. A value a few times the
latent's largest activation already gives degenerate text; `far_beyond_note` says so, with the sweep that
measures the range (generate.py --sweep, latents/sweep.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from latents.report import read_latent_facts
from sae.steering import Steer

FAR_BEYOND = 4.0  # x the latent's largest activation: pipeline.py's sweep stops there (--steer-scale)


@torch.no_grad()
def push_is_finite(model, prompt: list[int], hook: str, injection) -> bool:
    """Whether the activation `injection` leaves at `hook` has a finite float32 sum of squares (what the
    next RMSNorm computes; past it, the norm turns the activation into zeros or NaN) and the model's logits
    on `prompt` (token ids) stay finite."""
    sums_ok = []

    def watched(act):
        out = injection(act)
        sums_ok.append(bool(torch.isfinite(out.float().pow(2).sum(-1)).all()))
        return out

    tokens = torch.tensor([prompt], device=model.norm.weight.device)
    logits = model(tokens, injections={hook: watched}).logits
    return all(sums_ok) and bool(torch.isfinite(logits).all())


def largest_activation(interpret_dir: Path, sae_dir: Path, latent: int) -> float | None:
    """The latent's largest activation in the statistics interpret.py wrote to `interpret_dir` for the SAE
    in `sae_dir`; None when it has not run on that SAE or did not describe that latent."""
    try:
        made_for = json.loads((Path(interpret_dir) / "config.json").read_text(encoding="utf-8"))["sae"]
        if Path(made_for).resolve() != Path(sae_dir).resolve():
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    top = read_latent_facts(interpret_dir, [latent]).get(latent, {}).get("max")
    return float(top) if top else None


def sweep_hint(steer: Steer, top: float) -> str:
    """The --sweep that measures values for the steered latent, 0 to FAR_BEYOND x its largest activation
    `top`, with the sign of the steer."""
    high = FAR_BEYOND * top if steer.value >= 0 else -FAR_BEYOND * top
    return f"python generate.py --sweep {steer.latent}:0:{high:.3g}:5"


def far_beyond_note(steer: Steer, top: float | None) -> str | None:
    """A note when |value| is over FAR_BEYOND x the latent's largest activation `top` (None: unknown)."""
    if not top or abs(steer.value) <= FAR_BEYOND * top:
        return None
    return (f"note: --steer {steer.shown} is {abs(steer.value) / top:.0f}x latent {steer.latent}'s largest "
            f"activation in interpret's statistics ({top:.3g}; useful values are usually between 0 and "
            f"{FAR_BEYOND * top:.3g}), so the text may degenerate; {sweep_hint(steer, top)} measures the range")


def nonfinite_problem(steer: Steer, top: float | None) -> str:
    """The SettingError problem for a push whose logits are not finite."""
    scale = (f"its largest activation in interpret's statistics is {top:.3g}, and {sweep_hint(steer, top)} "
             f"measures useful values" if top else "interpret.py reports its largest activation, the scale "
             "of useful values")
    return (f"pushing latent {steer.latent} by {steer.value:g} makes the model's logits infinite or NaN (the "
            f"activations overflow), so the completion would be empty or garbage; {scale}")
