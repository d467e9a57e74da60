"""One more pass over the captured activations, for the figures that need documents set aside.

Per sentence (every document): the raw activation averaged over the sentence and at its last token,
and the SAE latents averaged over the sentence (sparse), for the probes (latents/probes.py). Per token
(only the documents `keep_tokens` picks, e.g. those the SAE's training held out): the token id and the
active latents, for scoring explanations (latents/scoring.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from latents.source import CapturedData
from latents.stats import Encoder, sentence_groups
from latents.topn import unique_inverse


@dataclass
class SentenceFeatures:
    """What the probes read, one row per sentence (in capture order)."""
    ordinals: np.ndarray     # (S,) line in sentences.jsonl
    docs: np.ndarray         # (S,) document
    labels: np.ndarray       # (S,) label index, -1 unlabelled
    raw_mean: np.ndarray     # (S, d_model) float32 activation averaged over the sentence's tokens
    raw_last: np.ndarray     # (S, d_model) float32 activation at the sentence's last token
    sent: np.ndarray         # (U,) sentence row of each non-zero sentence-mean latent
    latent: np.ndarray       # (U,) its latent
    value: np.ndarray        # (U,) float32 its mean over the sentence's tokens
    d_sae: int


@dataclass
class TokenActivations:
    """Tokens of the chosen documents and their active latents as (row, latent, value) entries."""
    tokens: np.ndarray       # (n,) token id per row
    row: np.ndarray          # (E,) row into tokens
    latent: np.ndarray       # (E,)
    value: np.ndarray        # (E,) float32 > 0


def collect_heldout(data: CapturedData, encode: Encoder, d_sae: int, keep_tokens: Callable[[np.ndarray], np.ndarray],
                    *, rows_per_chunk: int = 4096, device: torch.device | str = "cpu",
                    progress: Callable[[Iterable], Iterable] = lambda it: it) -> tuple[SentenceFeatures, TokenActivations]:
    """The pass; keep_tokens(docs (n,)) -> (n,) bool: rows whose tokens are kept for explanation scores."""
    table = data.sentences
    parts: dict[str, list] = {k: [] for k in ("ord", "mean", "last", "sent", "latent", "value",
                                                "tokens", "row", "tlatent", "tvalue")}
    n_sent = n_tok = 0
    with torch.no_grad():
        for chunk in progress(data.chunks(rows_per_chunk)):
            acts = chunk.acts.to(device)
            values, indices = encode(acts)                                          # (n, w)
            ordinals, inverse, counts = sentence_groups(chunk.sentence.to(device))
            mean = torch.zeros(len(ordinals), acts.shape[1], device=device).index_add_(0, inverse, acts)
            parts["ord"].append(ordinals.cpu().numpy())
            parts["mean"].append((mean / counts[:, None]).cpu().numpy())
            parts["last"].append(acts[torch.cumsum(counts, 0) - 1].cpu().numpy())
            rows, slot = torch.nonzero(values > 0, as_tuple=True)
            latent, value = indices[rows, slot], values[rows, slot].float()
            key, where = unique_inverse(inverse[rows] * d_sae + latent)
            sums = torch.zeros(len(key), device=device).index_add_(0, where, value)
            local = key // d_sae
            parts["sent"].append((local + n_sent).cpu().numpy())
            parts["latent"].append((key % d_sae).cpu().numpy())
            parts["value"].append((sums / counts[local]).cpu().numpy())
            n_sent += len(ordinals)
            keep = keep_tokens(table.docs[chunk.sentence.numpy()])                   # (n,) bool
            kept = np.flatnonzero(keep)
            renumber = np.cumsum(keep) - 1 + n_tok                                    # row -> kept row
            on = keep[rows.cpu().numpy()]
            parts["tokens"].append(chunk.tokens.numpy()[kept])
            parts["row"].append(renumber[rows.cpu().numpy()[on]])
            parts["tlatent"].append(latent.cpu().numpy()[on])
            parts["tvalue"].append(value.cpu().numpy()[on])
            n_tok += len(kept)
    cat = lambda name, dtype: (np.concatenate(parts[name]).astype(dtype) if parts[name]
                               else np.zeros(0, dtype=dtype))
    ordinals = cat("ord", np.int64)
    d = data.d_model
    features = SentenceFeatures(
        ordinals=ordinals, docs=table.docs[ordinals], labels=table.labels[ordinals].astype(np.int64),
        raw_mean=np.concatenate(parts["mean"]) if parts["mean"] else np.zeros((0, d), np.float32),
        raw_last=np.concatenate(parts["last"]) if parts["last"] else np.zeros((0, d), np.float32),
        sent=cat("sent", np.int64), latent=cat("latent", np.int64), value=cat("value", np.float32), d_sae=d_sae)
    tokens = TokenActivations(tokens=cat("tokens", np.int64), row=cat("row", np.int64),
                              latent=cat("tlatent", np.int64), value=cat("tvalue", np.float32))
    return features, tokens
