"""Explanations of latents from their evidence: offline (deterministic, no model, no network) and by an
LLM (its prompt and the parser of its answer).

Offline, for the top token-level contexts of a latent: the activating tokens, the n-grams around them
(the bigram ending on it, the bigram starting on it, the trigram ending on it) and the words of the
surrounding context, each scored against its base rate in the whole captured corpus:

    lift = (share among top contexts) / (share in the corpus),   score = count * log(lift)

Unigram base rates are exact counts; n-gram base rates come from hashed counts (collisions can only
raise a base rate, so lifts are conservative). The label most associated with the latent (largest
|AUROC - 0.5|) is added when it is clear. `certainty` measures how concentrated the evidence is: the
share of top contexts that the best pattern covers, shrunk when there are few contexts.

By an LLM, the prompt is a structured chain of thought (key words and phrases, themes, what is common,
certainty) that ends in JSON {"common_semantic": str, "certainty": float}, as in the reference design.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from latents.collect import LatentStats
from latents.llm import Report, last_json_object, latent_id, run_requests
from latents.stats import ngram_hash
from latents.text import TokenBytes, span_text

MIN_CONTEXTS = 10        # below this many contexts the certainty is scaled down proportionally
LABEL_STRENGTH = 0.3     # 2 * |AUROC - 0.5| from which a label is named in the explanation

EXPLAIN_TEMPLATE = """You are analysing one latent (feature) of a sparse autoencoder trained on the internal \
activations of a language model. Below are the text excerpts on which it activates most strongly. In each \
excerpt the token where it is most active is marked like <<this>>; the number before the excerpt is its \
activation.

{examples}
{extra}
Work through these steps, writing your reasoning:
1. Key words and phrases: which tokens or phrases recur at or around the marked positions?
2. Themes: group the excerpts by topic, grammar, sentiment or style.
3. Common semantic: what single description covers the most excerpts? Be specific.
4. Certainty: what fraction of the excerpts does the description fit, and how clearly?

End your answer with exactly one JSON object on its own line, and nothing after it:
{{"common_semantic": "<one sentence>", "certainty": <number from 0 to 1>}}"""


@dataclass
class BaseRates:
    """Corpus-wide counts that top-context counts are compared with."""
    unigram: torch.Tensor    # (vocab,) token counts
    bigram: torch.Tensor     # (buckets,) hashed bigram counts
    trigram: torch.Tensor    # (buckets,) hashed trigram counts
    total: int               # tokens counted

    @classmethod
    def from_stats(cls, stats: LatentStats) -> "BaseRates":
        return cls(stats["unigram"], stats["bigram"], stats["trigram"], max(int(stats["rows"]), 1))

    def share(self, gram: tuple[int, ...]) -> float:
        """Corpus share of a token or n-gram (at least one occurrence, so lifts stay finite)."""
        if len(gram) == 1:
            count = int(self.unigram[gram[0]]) if gram[0] < len(self.unigram) else 0
        else:
            table = self.bigram if len(gram) == 2 else self.trigram
            count = int(table[ngram_hash([torch.tensor(t) for t in gram], table.numel())])
        return max(count, 1) / self.total


def _ngrams(context: dict) -> dict[str, dict[tuple[int, ...], tuple[int, int]]]:
    """Per kind, the grams of one context and the token span [start, stop) each was read from."""
    ids, c = context["token_ids"], context["center"]
    grams = {"token": {(ids[c],): (c, c + 1)}, "ngram": {}, "context": {}}
    for start, stop in ((c - 1, c + 1), (c - 2, c + 1), (c, c + 2)):
        if start >= 0 and stop <= len(ids):
            grams["ngram"].setdefault(tuple(ids[start:stop]), (start, stop))
    for i, t in enumerate(ids):  # each word once per context
        if i != c:
            grams["context"].setdefault((t,), (i, i + 1))
    return grams


def characteristic(contexts: list[dict], kind: str, rates: BaseRates, token_bytes: TokenBytes,
                   top: int = 5) -> list[dict]:
    """The `top` grams of `kind` ("token", "ngram", "context") most over-represented in `contexts`.
    A gram's text is read where it first occurs, widened to whole characters by its neighbours
    (a byte-level token alone may hold half of a character)."""
    counts, shown = Counter(), {}
    for ctx in contexts:
        for gram, span in _ngrams(ctx)[kind].items():
            counts[gram] += 1
            if gram not in shown:
                shown[gram] = span_text([token_bytes(t) for t in ctx["token_ids"]], *span)
    n = max(len(contexts), 1)
    scored = []
    for gram, count in counts.items():
        lift = (count / n) / rates.share(gram)
        if lift > 1 and (count >= 2 or len(contexts) < 4):
            scored.append((count * math.log(lift), gram, count, lift))
    scored.sort(key=lambda s: (-s[0], s[1]))  # ties broken by token ids: deterministic
    return [{"text": shown[gram], "ids": list(gram), "count": count,
             "share": round(count / n, 3), "lift": round(lift, 2)} for _, gram, count, lift in scored[:top]]


def strongest_label(labels: list[dict]) -> dict | None:
    """The label whose AUROC is furthest from 0.5, with strength 2 * |AUROC - 0.5| in [0, 1]."""
    known = [lab for lab in labels if lab.get("auroc") is not None]
    if not known:
        return None
    # With two labels both are equally far from 0.5: name the one the latent is more active on.
    best = max(known, key=lambda lab: (round(abs(lab["auroc"] - 0.5), 9), lab["auroc"]))
    return {**best, "strength": round(2 * abs(best["auroc"] - 0.5), 3)}


def _quoted(text: str) -> str:
    return "\u201c" + text + "\u201d"  # curly quotes: no escaping of the text itself


def explain_offline(evidence: dict, rates: BaseRates, token_bytes: TokenBytes) -> dict:
    """{"common_semantic", "certainty", "source": "offline", "evidence": {...}} for one latent;
    token_bytes(id) -> the token's bytes (a tokenizer's token_bytes)."""
    contexts = evidence["contexts"]
    found = {kind: characteristic(contexts, kind, rates, token_bytes) for kind in ("token", "ngram", "context")}
    label = strongest_label(evidence.get("labels", []))
    parts = []
    tokens, ngrams, words = found["token"], found["ngram"], found["context"]
    named = tokens[:1] if tokens and tokens[0]["share"] >= 0.5 else tokens[:3]
    if tokens and tokens[0]["share"] >= 0.5:
        parts.append(f"the token {_quoted(tokens[0]['text'])}")
    elif tokens:
        parts.append("tokens such as " + ", ".join(_quoted(t["text"]) for t in named))
    if ngrams and ngrams[0]["share"] >= 0.3:
        parts.append(f"often in {_quoted(ngrams[0]['text'])}")
    if words and words[0]["share"] >= 0.3:
        parts.append("in contexts with " + ", ".join(_quoted(w["text"]) for w in words[:3]))
    if label and label["strength"] >= LABEL_STRENGTH:
        direction = "more" if label["auroc"] > 0.5 else "less"
        parts.append(f"{direction} active on {label['label']} text (AUROC {label['auroc']:.2f})")
    text = "; ".join(parts) if parts else "no clear pattern in the top contexts"
    coverage = max([0.0] + [g[0]["share"] for g in found.values() if g] +
                   [label["strength"] if label else 0.0])
    certainty = round(min(1.0, coverage * min(1.0, len(contexts) / MIN_CONTEXTS)), 3)
    return {"common_semantic": text, "certainty": certainty, "source": "offline",
            "predicts": [t["ids"][0] for t in named],  # the tokens it names: what it predicts the latent fires on
            "evidence": {"tokens": tokens, "ngrams": ngrams, "context_words": words, "label": label,
                         "n_contexts": len(contexts)}}


def marked_context(context: dict) -> str:
    """A context's tokens joined, the most active one marked <<like this>>."""
    tokens = list(context["tokens"])
    c = context["center"]
    tokens[c] = f"<<{tokens[c]}>>"
    return "".join(tokens).replace("\n", " ").strip()


def explain_prompt(evidence: dict, *, max_examples: int = 40) -> str:
    """The explanation prompt for one latent's evidence (top contexts; label association if any)."""
    lines = [f"{i + 1}. ({ctx['activation']:.3g}) {marked_context(ctx)}"
             for i, ctx in enumerate(evidence["contexts"][:max_examples])]
    extra = ""
    strong = [lab for lab in evidence.get("labels", []) if lab.get("auroc") is not None
              and abs(lab["auroc"] - 0.5) >= 0.15]
    if strong:
        extra = "\nLabel association of the sentences (AUROC, 0.5 = none): " + ", ".join(
            f"{lab['label']}: {lab['auroc']:.2f}" for lab in strong) + "\n"
    return EXPLAIN_TEMPLATE.format(examples="\n".join(lines), extra=extra)


def parse_explanation(text: str) -> dict:
    """{"common_semantic": str, "certainty": float in [0, 1]}; ValueError saying what is wrong."""
    found = last_json_object(text or "", ("common_semantic", "certainty"))
    if found is None:
        raise ValueError("no JSON object with common_semantic and certainty in the answer")
    semantic, certainty = found["common_semantic"], found["certainty"]
    if not isinstance(semantic, str) or not semantic.strip():
        raise ValueError("common_semantic is not a non-empty string")
    if isinstance(certainty, bool) or not isinstance(certainty, (int, float)) or not 0 <= certainty <= 1:
        raise ValueError(f"certainty {certainty!r} is not a number from 0 to 1")
    return {"common_semantic": semantic.strip(), "certainty": float(certainty)}


def explain_with_llm(client, evidence: dict[int, dict], folder: Path, *, attempts: int = 2,
                     max_examples: int = 40) -> Report:
    """LLM explanations {"common_semantic", "certainty"} of the latents in `evidence` (with contexts),
    resumable (`latents.llm.run_requests`), keyed by latent_id(latent)."""
    prompts = {latent_id(j): explain_prompt(ev, max_examples=max_examples)
               for j, ev in evidence.items() if ev["contexts"]}
    return run_requests(client, prompts, lambda cid, text: parse_explanation(text), folder, attempts=attempts)
