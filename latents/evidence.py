"""Turn the statistics of a latent into readable evidence: contexts with their tokens, top sentences
with their text, the histogram, label association and the logit lens, as one JSON-ready dict.

This is what the explanations (offline and LLM) read and what the HTML pages show.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from latents.collect import LatentStats
from latents.logit_lens import LogitLens
from latents.source import CapturedData
from latents.text import TokenBytes, char_span, pieces

TokenText = Callable[[int], str]  # token id -> its text as shown to a person


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def contexts_of(stats: LatentStats, j: int, data: CapturedData, token_bytes: TokenBytes) -> list[dict]:
    """The top token-level contexts of latent j, best first: tokens, activations, the centre. A
    character split across tokens shows whole on the token that completes it ("" on the others)."""
    out = []
    for slot in range(stats["top_tokens.scores"].shape[1]):
        score = float(stats["top_tokens.scores"][j, slot])
        if not math.isfinite(score):
            break
        row, lo = int(stats["top_tokens.row"][j, slot]), int(stats["top_tokens.lo"][j, slot])
        values = stats["top_tokens.values"][j, slot].float()
        valid = torch.nonzero(~torch.isnan(values)).flatten()
        first, stop = row - lo, row - lo + len(valid)
        # A window cut by its width may cut a character: take in the neighbouring tokens of the same
        # sentence that complete it (their values were not kept: shown as 0).
        wider, left = data.widened(first, stop, 3, 3)
        chunks = [token_bytes(t) for t in wider]
        a, b = char_span(chunks, left, left + len(valid))
        ids = wider[a:b]
        shown = [round(float(v), 4) for v in values[valid]]
        shown = [0.0] * (left - a) + shown + [0.0] * (b - left - len(valid))
        sentence = int(stats["top_tokens.sentence"][j, slot])
        out.append({"row": row, "sentence": sentence, "activation": score, "center": lo + left - a,
                    "token_ids": ids, "tokens": pieces(chunks[a:b]), "values": shown})
    return out


def sentences_of(stats: LatentStats, j: int, ranking: str, records: dict[int, dict],
                 label_names: list[str]) -> list[dict]:
    """Top sentences of latent j for `ranking` ("top_mean" or "top_last"), best first."""
    out = []
    for score, ordinal in zip(stats[f"{ranking}.scores"][j].tolist(), stats[f"{ranking}.sentence"][j].tolist()):
        if not math.isfinite(score):
            break
        record = records.get(int(ordinal), {})
        out.append({"sentence": int(ordinal), "value": round(score, 5), "text": record.get("text", ""),
                    "label": _label_text(record.get("label"), label_names)})
    return out


def _label_text(label, names: list[str]):
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(names):
        return names[label]
    return label


def histogram_of(stats: LatentStats, j: int) -> dict:
    """Non-empty span of the latent's activation histogram: edges (n + 1) and counts (n)."""
    counts = stats["hist"][j]
    nonzero = torch.nonzero(counts).flatten()
    if not len(nonzero):
        return {"edges": [], "counts": []}
    a, b = int(nonzero[0]), int(nonzero[-1]) + 1
    edges = stats.bins.edges()[a:b + 1]
    return {"edges": [float(f"{e:.4g}") for e in edges.tolist()], "counts": counts[a:b].tolist()}


def labels_of(stats: LatentStats, j: int) -> list[dict]:
    """Per label: AUROC of the sentence-level (mean) activation against the other labels, and the
    difference of mean activation."""
    if "label_auroc" not in stats.tensors:
        return []
    return [{"label": name, "auroc": _finite(round(float(stats["label_auroc"][j, c]), 4)),
             "mean_diff": _finite(round(float(stats["label_mean_diff"][j, c]), 5))}
            for c, name in enumerate(stats.label_names)]


def lens_of(lens: LogitLens | None, i: int, token_text: TokenText) -> dict:
    """Row i of a logit lens as [token, logit change] pairs."""
    if lens is None:
        return {"promoted": [], "suppressed": []}
    return {"promoted": [[token_text(int(t)), round(float(v), 4)] for t, v in
                         zip(lens.promoted_ids[i], lens.promoted[i])],
            "suppressed": [[token_text(int(t)), round(float(v), 4)] for t, v in
                           zip(lens.suppressed_ids[i], lens.suppressed[i])]}


def build_evidence(stats: LatentStats, data: CapturedData, latents: list[int], token_text: TokenText,
                   token_bytes: TokenBytes, lens: LogitLens | None = None) -> dict[int, dict]:
    """Evidence for each latent in `latents` (lens rows follow the same order); token_text shows a
    token alone (the logit lens), token_bytes gives the bytes that contexts are decoded from."""
    wanted = set()
    for j in latents:
        for ranking in ("top_mean", "top_last"):
            scores, ordinals = stats[f"{ranking}.scores"][j], stats[f"{ranking}.sentence"][j]
            wanted.update(ordinals[torch.isfinite(scores)].tolist())
    records = data.read_sentences(sorted(wanted))
    names = stats.label_names
    out = {}
    for i, j in enumerate(latents):
        out[j] = {"latent": j, "density": float(stats["density"][j]), "mean": float(stats["mean"][j]),
                  "mean_active": float(stats["mean_active"][j]), "max": float(stats["max"][j]),
                  "contexts": contexts_of(stats, j, data, token_bytes),
                  "top_sentences_mean": sentences_of(stats, j, "top_mean", records, names),
                  "top_sentences_last": sentences_of(stats, j, "top_last", records, names),
                  "histogram": histogram_of(stats, j), "labels": labels_of(stats, j),
                  "logit_lens": lens_of(lens, i, token_text)}
    return out

