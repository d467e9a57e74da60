"""Steering measured: the same prompts completed at each value of one latent, scored four ways.

For each value (0, the unsteered model, is always included as the baseline):
  latent     the latent's mean activation at the hook on the generated tokens (after the push)
  judge      mean probability of `label` given by an independent text classifier (latents/judge.py)
             to the completions, its shift from the unsteered completions, and on how many prompts it rose
  perplexity of the steered completions under the unsteered model (fluency), and its ratio to the
             unsteered completions' perplexity
  distinct-2 distinct token pairs / token pairs in a completion (1 = no repetition), mean over prompts
A value is "in range" when the judge moved toward the label (shift >= min_shift) while the perplexity
ratio stays within `max_ppl_ratio` and distinct-2 keeps at least `min_distinct2_ratio` of the unsteered
value (a text that repeats itself can have a low perplexity: ". I. I. I." is not fluent), the model's
logits stay finite, and no more completions are empty than unsteered (an empty text has no perplexity,
no repetition, and a judge's guess: it would pass every other test).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from latents.steer_range import push_is_finite
from llama import generate
from sae.steering import Steer, Steering


MAX_SWEEP_STEPS = 100  # each value is one generation over every prompt

# Prompts with no sentiment of their own: where steering toward a label is visible.
NEUTRAL_PROMPTS = ("I think the new phone is", "The weather today is", "My trip to the city was",
                   "The movie I watched last night was", "Our new neighbour is")


@dataclass
class SweepRow:
    value: float
    latent: float          # mean activation of the latent on the generated tokens
    judge: float           # mean P(label) of the completions
    shift: float           # judge - judge at value 0
    moved: int             # prompts whose P(label) is above their unsteered completion's
    perplexity: float      # mean over prompts, under the unsteered model
    ppl_ratio: float       # perplexity / perplexity at value 0
    distinct2: float
    in_range: bool = False
    empty: int = 0         # completions the model ended at once (no token)
    finite: bool = True    # the model's logits stayed finite under the push (on every prompt)
    texts: list[str] = field(default_factory=list)


@dataclass
class SweepSettings:
    mode: str = "direction"
    max_new_tokens: int = 32
    min_shift: float = 0.05
    max_ppl_ratio: float = 3.0
    min_distinct2_ratio: float = 0.5


def evenly_spaced(lo: float, hi: float, steps: int) -> list[float]:
    """`steps` values from lo to hi, both included (lo alone for one step)."""
    return [lo + (hi - lo) * i / max(steps - 1, 1) for i in range(steps)]


def distinct2(tokens: list[int]) -> float:
    """Distinct adjacent token pairs over all adjacent pairs (1.0 for fewer than two tokens)."""
    pairs = list(zip(tokens, tokens[1:]))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


@torch.no_grad()
def _measure(model, sae, prompt: list[int], new: list[int], latent: int, injection) -> tuple[float, float]:
    """(mean latent activation on the generated tokens under `injection`, perplexity of `new` given
    `prompt` under the plain model)."""
    device = model.tok_embeddings.weight.device
    tokens = torch.tensor([prompt + new], device=device)
    seen = {}
    hook = sae.cfg.hook_name

    def record(act):
        out = injection(act) if injection is not None else act
        seen["acts"] = out
        return out

    model(tokens, injections={hook: record}, return_logits=False, taps=(hook,))
    on_new = _latent_values(sae, seen["acts"][0, len(prompt):], latent)
    logp = torch.log_softmax(model(tokens).logits[0, len(prompt) - 1:-1].float(), -1)
    nll = -logp.gather(-1, tokens[0, len(prompt):, None]).mean()
    return float(on_new.mean()), math.exp(float(nll))


def _latent_values(sae, acts: torch.Tensor, latent: int) -> torch.Tensor:
    """(...,) activation of `latent` on raw activations acts (..., d_in): 0 where it is not among the top k."""
    values, indices = sae.encode(acts.to(sae.W_enc.dtype))  # (..., k) each
    return ((indices == latent) * values).sum(-1)


def sweep_latent(loaded, sae, prompts: list[list[int]], latent: int, values: list[float], judge, label: str,
                 settings: SweepSettings = SweepSettings()) -> list[SweepRow]:
    """One row per value (value 0 added first when absent); rows marked in_range as the docstring says."""
    values = sorted(set([0.0] + [float(v) for v in values]))
    column = judge.index(label)
    rows, base = [], None
    for value in values:
        injection = Steering(sae, [Steer(latent, value)], settings.mode) if value != 0 else None
        injections = {sae.cfg.hook_name: injection} if injection is not None else None
        new = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                       injections=injections)
        texts = [loaded.tokenizer.decode(n) for n in new]
        measured = [_measure(loaded.model, sae, p, n, latent, injection) if n else (0.0, float("nan"))
                    for p, n in zip(prompts, new)]
        p_label = judge.proba(texts)[:, column]
        finite = [m[1] for m in measured if math.isfinite(m[1])]
        row = SweepRow(value=value, latent=sum(m[0] for m in measured) / len(measured), judge=float(p_label.mean()),
                       shift=0.0, moved=0, perplexity=sum(finite) / max(len(finite), 1),
                       ppl_ratio=1.0, distinct2=sum(distinct2(n) for n in new) / len(new), texts=texts,
                       empty=sum(not n for n in new),
                       finite=injection is None or all(push_is_finite(loaded.model, p, sae.cfg.hook_name, injection)
                                                          for p in prompts))
        if base is None:
            base = (row, p_label)
        row.shift = row.judge - base[0].judge
        row.moved = int((p_label > base[1]).sum())
        row.ppl_ratio = row.perplexity / base[0].perplexity if base[0].perplexity > 0 else float("inf")
        row.in_range = (value != 0 and row.shift >= settings.min_shift and row.ppl_ratio <= settings.max_ppl_ratio
                        and row.distinct2 >= settings.min_distinct2_ratio * base[0].distinct2
                        and row.finite and row.empty <= base[0].empty)
        rows.append(row)
    return rows


def best_row(rows: list[SweepRow]) -> SweepRow | None:
    """The in-range value that moved the judge on the most prompts (then the largest shift, then the
    smallest value); None when no value is in range."""
    chosen = [r for r in rows if r.in_range]
    return max(chosen, key=lambda r: (r.moved, r.shift, -abs(r.value))) if chosen else None


def sweep_table(rows: list[SweepRow], latent: int, label: str) -> str:
    """The rows as a text table; '*' marks the values in range."""
    lines = [f"latent {latent}: judge = mean P({label!r}) of the completions, shift against value 0; "
             f"perplexity under the unsteered model",
             f"{'value':>8} {'latent':>7} {'judge':>6} {'shift':>7} {'moved':>6} {'ppl':>7} {'x base':>6} "
             f"{'dist-2':>6}"]
    n = len(rows[0].texts) if rows else 0
    for r in rows:
        lines.append(f"{r.value:>8.3g} {r.latent:>7.3f} {r.judge:>6.3f} {r.shift:>+7.3f} {r.moved:>3}/{n:<2} "
                     f"{r.perplexity:>7.2f} {r.ppl_ratio:>6.2f} {r.distinct2:>6.2f}{'  *' if r.in_range else ''}"
                     f"{'' if r.finite else '  logits not finite'}{f'  {r.empty} empty' if r.empty else ''}")
    return "\n".join(lines)


def rows_json(rows: list[SweepRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def choose(sweeps: list[dict]) -> tuple[int, dict] | None:
    """Among sweeps ({"latent", "rows": [SweepRow as dict]}), the (latent, row) in range that moved the
    judge on the most prompts, then by the largest shift; None when no row is in range."""
    rows = [(s["latent"], r) for s in sweeps for r in s["rows"] if r.get("in_range")]
    return max(rows, key=lambda lr: (lr[1]["moved"], lr[1]["shift"], -abs(lr[1]["value"]))) if rows else None
