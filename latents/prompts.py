"""Prompts for LLM explanations and detection scoring, and parsers for their JSON answers.

The explanation prompt is a structured chain of thought (key words and phrases, themes, what is
common, certainty) that ends in JSON {"common_semantic": str, "certainty": float}, as in the
reference design; the detection prompt asks which of a numbered list of sentences a described latent
activates on, ending in JSON {"activating": [numbers]}.
"""

from __future__ import annotations

import json

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

DETECT_TEMPLATE = """A latent (feature) of a language model's sparse autoencoder has been described as:

"{explanation}"

Here are {n} numbered sentences. Some of them make this latent activate and the others do not.

{examples}

Decide for each sentence whether the latent activates on it. End your answer with exactly one JSON \
object on its own line, and nothing after it, listing the numbers of the sentences on which it activates:
{{"activating": [<numbers>]}}"""


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


def detect_prompt(explanation: str, sentences: list[str]) -> str:
    """The detection prompt: the explanation and numbered sentences (numbers start at 1)."""
    examples = "\n".join(f"{i + 1}. {s.replace(chr(10), ' ').strip()}" for i, s in enumerate(sentences))
    return DETECT_TEMPLATE.format(explanation=explanation, n=len(sentences), examples=examples)


def last_json_object(text: str, required: tuple[str, ...]) -> dict | None:
    """The last JSON object in `text` holding all `required` keys (None if there is none)."""
    decoder = json.JSONDecoder()
    start = text.rfind("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            if isinstance(value, dict) and all(key in value for key in required):
                return value
        except json.JSONDecodeError:
            pass
        start = text.rfind("{", 0, start)
    return None


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


def parse_detection(text: str, n: int) -> set[int]:
    """The 0-based indices the model says activate; ValueError for a malformed answer."""
    found = last_json_object(text or "", ("activating",))
    if found is None or not isinstance(found["activating"], list):
        raise ValueError("no JSON object with an activating list in the answer")
    picked = found["activating"]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= n for i in picked):
        raise ValueError(f"activating must list sentence numbers from 1 to {n}")
    return {i - 1 for i in picked}
