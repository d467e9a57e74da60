"""How well an offline explanation predicts where its latent fires, on tokens it was not built from.

A token-list explanation ("the token X", "tokens such as X, Y, Z") is a classifier: it predicts that
the latent fires exactly on those tokens. On held-out tokens:

    precision = #(fires and predicted) / #predicted      recall = #(fires and predicted) / #fires

and F1 their harmonic mean. An explanation that names no token predicts nothing and gets no score.
"""

from __future__ import annotations

import numpy as np

from latents.heldout import TokenActivations


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
