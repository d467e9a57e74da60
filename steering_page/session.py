"""The logic behind the page, no HTTP: a loaded model and SAE answering checked requests (jobs.py)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Callable

from latents.judge import Judge
from latents.sweep import best_row, rows_json, sweep_latent
from llama import generate
from llama.tokenizers.chat import encode_prompt
from sae.steering import Steering, unsteered
from steering_page.jobs import generate_job, sweep_job


class SteeringSession:
    """A loaded model and SAE, answering steering requests.

    `complete` and `sweep` may be called from many threads: requests are checked in parallel,
    generations run one at a time under the session's lock. `facts`: latent -> {"max", "labels", "page"}
    (latents.report.read_latent_facts); `pages`: interpret.py's folder whose index.html and
    pages/ are served; `judge`: a function returning the sweep's judge, called once, at the first sweep."""

    def __init__(self, loaded, sae, explanations: dict[int, str], default_mode: str = "direction", *,
                 facts: dict[int, dict] | None = None, pages: Path | None = None,
                 judge: Callable[[], Judge] | None = None):
        self.loaded, self.sae, self.explanations, self.default_mode = loaded, sae, explanations, default_mode
        self.facts, self.pages, self._make_judge, self._judge = facts or {}, pages, judge, None
        self._lock = threading.Lock()  # the model, its caches and the SAE are shared by all requests

    def latents(self) -> list[dict]:
        """Each explained latent with its largest activation, label AUROCs and page (None when unknown)."""
        out = []
        for i, text in sorted(self.explanations.items()):
            fact = self.facts.get(i, {})
            out.append({"index": i, "explanation": text, "max": fact.get("max"), "labels": fact.get("labels", {}),
                        "page": f"/pages/{i}.html" if fact.get("page") and self.pages else None})
        return out

    def complete(self, request: dict) -> dict:
        """{"prompt", "steers", "mode", "max_new_tokens"} -> {"unsteered", "steered"} texts; ValueError
        (one line) for a bad request."""
        job = generate_job(request, self.sae.cfg.d_sae, self.default_mode)
        tokens = self.encode([job.prompt], job.max_new_tokens)[0]
        runs = {"unsteered": unsteered(self.sae, job.mode), "steered": Steering(self.sae, job.steers, job.mode)}
        with self._lock:
            return {label: self._generate(tokens, steering, job.max_new_tokens) for label, steering in runs.items()}

    def sweep(self, request: dict) -> dict:
        """{"latent", "lo", "hi", "steps", ...} -> the sweep's rows (latents/sweep.py) and the judge's
        held-out accuracy; ValueError (one line) for a bad request, a label the judge lacks included."""
        job = sweep_job(request, self.sae.cfg.d_sae, self.default_mode)
        tokens = self.encode(job.prompts, job.settings.max_new_tokens)
        with self._lock:
            judge = self.judge()
            rows = sweep_latent(self.loaded, self.sae, tokens, job.latent, job.values, judge, job.label,
                                job.settings)
        best = best_row(rows)
        return {"latent": job.latent, "label": job.label, "prompts": job.prompts, "rows": rows_json(rows),
                "best": best.value if best else None, "settings": dataclasses.asdict(job.settings),
                "judge": {"accuracy": judge.accuracy, "majority": judge.majority}}

    def judge(self) -> Judge:
        """The judge, built at the first call (it trains on the corpus once; callers hold the lock)."""
        if self._judge is None:
            if self._make_judge is None:
                raise ValueError("this server has no judge for sweeps; start it with a labelled --judge-corpus")
            self._judge = self._make_judge()
        return self._judge

    def encode(self, prompts: list[str], max_new: int) -> list[list[int]]:
        """The prompts encoded as the SAE's training text was; one line when one does not fit the context."""
        cfg, context = self.sae.cfg, self.loaded.args.max_seq_len
        encoded = [encode_prompt(self.loaded.tokenizer, p, chat=cfg.chat, bos=cfg.prepend_bos) for p in prompts]
        longest = max(len(t) for t in encoded)
        if longest + max_new > context:
            raise ValueError(f"prompt ({longest} tokens) and max_new_tokens ({max_new}) exceed the model's "
                             f"context of {context} tokens; shorten the prompt or ask for fewer tokens")
        return encoded

    def _generate(self, tokens: list[int], steering: Steering, max_new_tokens: int) -> str:
        tokenizer = self.loaded.tokenizer
        out = generate(self.loaded.model, tokenizer, [tokens], max_new_tokens=max_new_tokens,
                       injections={self.sae.cfg.hook_name: steering})
        return tokenizer.decode(out[0])
