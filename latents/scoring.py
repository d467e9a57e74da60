"""How good an explanation is: how well an offline one predicts held-out tokens, and whether an LLM,
given only the explanation, can tell which sentences activate the latent (detection).

Held-out tokens: a token-list explanation ("the token X", "tokens such as X, Y, Z") is a classifier:
it predicts that the latent fires exactly on those tokens. On tokens it was not built from:

    precision = #(fires and predicted) / #predicted      recall = #(fires and predicted) / #fires

and F1 their harmonic mean. An explanation that names no token predicts nothing and gets no score.

Detection: for each latent the model sees its explanation and a shuffled mix of top-activating
sentences and random sentences on which the latent is zero, and answers with JSON {"activating":
[numbers]}. The score is the balanced accuracy (true-positive rate + true-negative rate) / 2: 0.5 is
chance, 1.0 perfect.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from latents.heldout import TokenActivations
from latents.llm import Report, last_json_object, latent_id, run_requests

DETECT_TEMPLATE = """A latent (feature) of a language model's sparse autoencoder has been described as:

"{explanation}"

Here are {n} numbered sentences. Some of them make this latent activate and the others do not.

{examples}

Decide for each sentence whether the latent activates on it. End your answer with exactly one JSON \
object on its own line, and nothing after it, listing the numbers of the sentences on which it activates:
{{"activating": [<numbers>]}}"""


def predicted_tokens(offline: dict) -> list[int]:
    """Token ids an offline explanation names (what its text lists as "the token" / "tokens such as")."""
    return [int(i) for i in offline.get("predicts", [])]


def explanation_scores(held: TokenActivations, predicts: dict[int, list[int]]) -> dict[int, dict]:
    """latent -> {precision, recall, f1, fired, predicted, hits} over the tokens of `held`; latents
    whose explanation names no token are left out."""
    vocab = int(max([held.tokens.max(initial=0)] + [max(ids) for ids in predicts.values() if ids])) + 1
    token_counts = np.bincount(held.tokens, minlength=vocab)                   # (vocab,) held-out tokens
    latents = np.array(sorted(j for j, ids in predicts.items() if ids), dtype=np.int64)
    fired = np.bincount(held.latent, minlength=int(latents.max(initial=-1)) + 1)
    pairs = np.array([j * vocab + t for j in latents for t in set(predicts[int(j)])], dtype=np.int64)
    entry_keys = held.latent * vocab + held.tokens[held.row]                    # (E,) latent, token fired on
    hit = np.isin(entry_keys, pairs)
    hits = np.bincount(held.latent[hit], minlength=len(fired))
    out = {}
    for j in latents.tolist():
        predicted = int(token_counts[list(set(predicts[j]))].sum())
        f = int(fired[j]) if j < len(fired) else 0
        h = int(hits[j]) if j < len(hits) else 0
        precision = h / predicted if predicted else None
        recall = h / f if f else None
        f1 = 2 * h / (predicted + f) if predicted + f else None
        out[j] = {"precision": precision, "recall": recall, "f1": f1, "fired": f, "predicted": predicted,
                  "hits": h}
    return out


def detect_prompt(explanation: str, sentences: list[str]) -> str:
    """The detection prompt: the explanation and numbered sentences (numbers start at 1)."""
    examples = "\n".join(f"{i + 1}. {s.replace(chr(10), ' ').strip()}" for i, s in enumerate(sentences))
    return DETECT_TEMPLATE.format(explanation=explanation, n=len(sentences), examples=examples)


def parse_detection(text: str, n: int) -> set[int]:
    """The 0-based indices the model says activate; ValueError for a malformed answer."""
    found = last_json_object(text or "", ("activating",))
    if found is None or not isinstance(found["activating"], list):
        raise ValueError("no JSON object with an activating list in the answer")
    picked = found["activating"]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= n for i in picked):
        raise ValueError(f"activating must list sentence numbers from 1 to {n}")
    return {i - 1 for i in picked}


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
