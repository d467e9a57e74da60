"""Detection scoring of explanations: can a model, given only the explanation, tell which sentences
activate the latent?

For each latent the model sees its explanation and a shuffled mix of top-activating sentences and
random sentences on which the latent is zero, and lists the ones it thinks activate. The score is
the balanced accuracy (true-positive rate + true-negative rate) / 2: 0.5 is chance, 1.0 perfect.
"""

from __future__ import annotations

import random
from pathlib import Path

from latents.autointerp import Report, latent_id, run_requests
from latents.prompts import detect_prompt, parse_detection


def balanced_accuracy(truth: list[bool], predicted: set[int]) -> float:
    """(TPR + TNR) / 2 for `truth` (True = activates) and the predicted set of indices."""
    pos = [i for i, t in enumerate(truth) if t]
    neg = [i for i, t in enumerate(truth) if not t]
    tpr = sum(i in predicted for i in pos) / len(pos) if pos else 0.0
    tnr = sum(i not in predicted for i in neg) / len(neg) if neg else 0.0
    return (tpr + tnr) / 2


def detection_sample(latent: int, top: list[str], quiet: list[str], *, n_pos: int = 5, n_neg: int = 5,
                     seed: int = 0) -> tuple[list[str], list[bool]]:
    """Shuffled (sentences, activates?) from top-activating and non-activating sentences, the same
    for the same latent and seed."""
    rng = random.Random(seed * 1_000_003 + latent)
    mixed = [(s, True) for s in top[:n_pos]] + [(s, False) for s in rng.sample(quiet, min(n_neg, len(quiet)))]
    rng.shuffle(mixed)
    return [s for s, _ in mixed], [t for _, t in mixed]


def score_detection(client, explanations: dict[int, str], top: dict[int, list[str]],
                    quiet: dict[int, list[str]], folder: Path, *, n_pos: int = 5, n_neg: int = 5,
                    seed: int = 0, attempts: int = 2) -> Report:
    """Detection scores per latent: explanations {latent: text}, top {latent: top-activating
    sentences}, quiet {latent: sentences where it is zero}. Results keyed by latent_id(latent):
    {"balanced_accuracy", "predicted", "truth"} (0-based positions in the shown list)."""
    prompts, truths, skipped = {}, {}, {}
    for j, explanation in explanations.items():
        sentences, truth = detection_sample(j, top.get(j, []), quiet.get(j, []), n_pos=n_pos,
                                            n_neg=n_neg, seed=seed)
        if not any(truth) or all(truth):
            skipped[latent_id(j)] = "needs both activating and non-activating sentences"
            continue
        prompts[latent_id(j)], truths[latent_id(j)] = detect_prompt(explanation, sentences), truth

    def score(cid: str, text: str) -> dict:
        truth = truths[cid]
        predicted = parse_detection(text, len(truth))
        return {"balanced_accuracy": balanced_accuracy(truth, predicted), "predicted": sorted(predicted),
                "truth": [i for i, t in enumerate(truth) if t]}
    report = run_requests(client, prompts, score, folder, attempts=attempts)
    report.failures.update(skipped)
    return report
