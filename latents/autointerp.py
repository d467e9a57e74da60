"""Resumable LLM requests: send prompts, parse answers, retry malformed ones, keep every result.

Each request has an id and a JSON file `<folder>/<id>.json`: {"ok": true, "result": ..., "response":
raw text} once it has succeeded, or {"ok": false, "error": ..., "response": ...} after its attempts
failed. A rerun skips the ids already ok (nothing is paid twice) and retries the failed ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from atomic import write_text_atomic
from latents.prompts import explain_prompt, parse_explanation


@dataclass
class Report:
    """What a run did: results (new and earlier), ids skipped as done, failures with their reason."""
    results: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def _write(path: Path, record: dict) -> None:
    write_text_atomic(path, json.dumps(record, indent=1, ensure_ascii=False))


def _done(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("ok") else None


def run_requests(client, prompts: dict[str, str], parse: Callable[[str, str], Any], folder: Path, *,
                 attempts: int = 2) -> Report:
    """Send `prompts` ({id: prompt}) through `client.complete_many` (all at once: one batch where the
    API batches), parse each answer with `parse(id, text)` (ValueError = malformed), and resend the
    malformed or failed ones, up to `attempts` sends in all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = Report()
    todo = {}
    for cid, prompt in prompts.items():
        earlier = _done(folder / f"{cid}.json")
        if earlier is not None:
            report.results[cid] = earlier["result"]
            report.skipped.append(cid)
        else:
            todo[cid] = prompt
    for _ in range(attempts):
        if not todo:
            break
        replies, retry = client.complete_many(todo), {}
        for cid, reply in replies.items():
            try:
                if reply.text is None:
                    raise ValueError(reply.error or "no answer")
                result = parse(cid, reply.text)
            except ValueError as err:
                report.failures[cid] = str(err)
                _write(folder / f"{cid}.json", {"ok": False, "error": str(err), "response": reply.text})
                retry[cid] = todo[cid]
                continue
            report.failures.pop(cid, None)
            report.results[cid] = result
            _write(folder / f"{cid}.json", {"ok": True, "result": result, "response": reply.text})
        todo = retry
    return report


def latent_id(latent: int) -> str:
    """Request id of a latent (letters, digits, '-' only: valid as an Anthropic custom_id)."""
    return f"latent-{latent}"


def explain_with_llm(client, evidence: dict[int, dict], folder: Path, *, attempts: int = 2,
                     max_examples: int = 40) -> Report:
    """LLM explanations {"common_semantic", "certainty"} of the latents in `evidence` (with contexts)."""
    prompts = {latent_id(j): explain_prompt(ev, max_examples=max_examples)
               for j, ev in evidence.items() if ev["contexts"]}
    return run_requests(client, prompts, lambda cid, text: parse_explanation(text), folder, attempts=attempts)
