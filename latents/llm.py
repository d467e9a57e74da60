"""Language-model APIs, using only the standard library (urllib): clients, and resumable requests.

- `OpenAIChatClient`: any OpenAI-compatible chat-completions endpoint (`{base_url}/chat/completions`):
  llama.cpp's server, vLLM, Ollama (`http://127.0.0.1:11434/v1`) and hosted services.
- `AnthropicBatchClient`: Anthropic's Message Batches API (`{base_url}/v1/messages/batches`): create a
  batch, poll it until it has ended, download the JSONL results, parse them. Open batches are written
  to a journal file so an interrupted run collects them instead of paying for them again.

Both take `{custom_id: prompt}` and return `{custom_id: Reply}`; one failed request never stops the
others. API keys come from environment variables only and never appear in errors or logs.

`run_requests` sends many prompts through a client resumably: each request has an id and a JSON file
`<folder>/<id>.json`: {"ok": true, "result": ..., "response": raw text} once it has succeeded, or
{"ok": false, "error": ..., "response": ...} after its attempts failed. A rerun skips the ids already
ok (nothing is paid twice) and retries the failed ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from atomic import write_text_atomic

ANTHROPIC_VERSION = "2023-06-01"
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


class Reply(NamedTuple):
    """The text of one answer, or why there is none."""
    text: str | None
    error: str | None = None


@dataclass
class LLMConfig:
    """How to reach the model."""
    provider: str = "openai"            # "openai" (chat completions) or "anthropic" (message batches)
    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "default"
    api_key_env: str = ""               # environment variable holding the key ("" = none needed)
    max_tokens: int = 1024
    temperature: float = 0.0
    retries: int = 3                    # extra attempts per request on network errors / 429 / 5xx
    backoff_s: float = 2.0              # first wait; doubles each retry
    timeout_s: float = 120.0
    batch_size: int = 500               # requests per Anthropic batch
    poll_s: float = 30.0                # seconds between batch status checks


class LLMError(RuntimeError):
    """A request that failed after its retries (the message never contains the key)."""


def api_key(cfg: LLMConfig, required: bool) -> str:
    """The key from the environment variable `cfg.api_key_env`; ValueError if required and unset."""
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    if required and not key:
        raise ValueError(f"set the environment variable {cfg.api_key_env or 'ANTHROPIC_API_KEY'} to your API key "
                         "(--llm-api-key-env names the variable)")
    return key


def http_json(url: str, *, headers: dict[str, str], body: dict | None = None, cfg: LLMConfig,
              raw: bool = False):
    """GET (body None) or POST JSON with retries and exponential backoff; parsed JSON or raw text."""
    data = json.dumps(body).encode() if body is not None else None
    wait = cfg.backoff_s
    for attempt in range(cfg.retries + 1):
        request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                         headers={"content-type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
                text = response.read().decode("utf-8")
            return text if raw else json.loads(text)
        except urllib.error.HTTPError as err:
            detail = f"HTTP {err.code} from {url}: {err.read()[:300].decode('utf-8', 'replace')}"
            if err.code not in _RETRY_STATUS or attempt == cfg.retries:
                raise LLMError(detail) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            detail = f"cannot reach {url}: {getattr(err, 'reason', err)}"
            if attempt == cfg.retries:
                raise LLMError(detail) from None
        except json.JSONDecodeError:
            raise LLMError(f"{url} answered with something other than JSON") from None
        time.sleep(wait)
        wait *= 2


class OpenAIChatClient:
    """POST {base_url}/chat/completions, one request per prompt."""

    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg
        key = api_key(cfg, required=False)
        self._headers = {"authorization": f"Bearer {key}"} if key else {}

    def complete(self, prompt: str) -> Reply:
        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature}
        try:
            answer = http_json(self.cfg.base_url.rstrip("/") + "/chat/completions", headers=self._headers,
                               body=body, cfg=self.cfg)
            return Reply(answer["choices"][0]["message"]["content"])
        except LLMError as err:
            return Reply(None, str(err))
        except (KeyError, IndexError, TypeError):
            return Reply(None, "the chat-completions answer has no choices[0].message.content")

    def complete_many(self, prompts: dict[str, str]) -> dict[str, Reply]:
        return {cid: self.complete(prompt) for cid, prompt in prompts.items()}


class AnthropicBatchClient:
    """Anthropic Message Batches: create, poll until ended, retrieve the JSONL results."""

    def __init__(self, cfg: LLMConfig, journal: Path | None = None):
        self.cfg, self.journal = cfg, Path(journal) if journal else None
        self._headers = {"x-api-key": api_key(cfg, required=True), "anthropic-version": ANTHROPIC_VERSION}
        self._url = cfg.base_url.rstrip("/") + "/v1/messages/batches"

    def complete_many(self, prompts: dict[str, str]) -> dict[str, Reply]:
        replies: dict[str, Reply] = {}
        for batch_id, ids in self._open_batches().items():  # paid for already: collect first
            if set(ids) & set(prompts):
                replies.update(self._collect(batch_id))
        todo = [cid for cid in prompts if cid not in replies]
        for start in range(0, len(todo), self.cfg.batch_size):
            chunk = todo[start:start + self.cfg.batch_size]
            try:
                batch_id = self._create({cid: prompts[cid] for cid in chunk})
                replies.update(self._collect(batch_id))
            except LLMError as err:
                replies.update({cid: Reply(None, str(err)) for cid in chunk if cid not in replies})
        return {cid: replies.get(cid, Reply(None, "missing from the batch results")) for cid in prompts}

    def _create(self, prompts: dict[str, str]) -> str:
        requests = [{"custom_id": cid, "params": {"model": self.cfg.model, "max_tokens": self.cfg.max_tokens,
                                                  "temperature": self.cfg.temperature,
                                                  "messages": [{"role": "user", "content": p}]}}
                    for cid, p in prompts.items()]
        batch = http_json(self._url, headers=self._headers, body={"requests": requests}, cfg=self.cfg)
        self._write_journal({**self._open_batches(), batch["id"]: list(prompts)})
        return batch["id"]

    def _collect(self, batch_id: str) -> dict[str, Reply]:
        while True:
            batch = http_json(f"{self._url}/{batch_id}", headers=self._headers, cfg=self.cfg)
            if batch.get("processing_status") == "ended":
                break
            time.sleep(self.cfg.poll_s)
        results_url = batch.get("results_url") or f"{self._url}/{batch_id}/results"
        text = http_json(results_url, headers=self._headers, cfg=self.cfg, raw=True)
        replies = dict(parse_batch_line(line) for line in text.splitlines() if line.strip())
        self._write_journal({b: ids for b, ids in self._open_batches().items() if b != batch_id})
        return replies

    def _open_batches(self) -> dict[str, list[str]]:
        if self.journal is None or not self.journal.is_file():
            return {}
        return json.loads(self.journal.read_text())

    def _write_journal(self, batches: dict[str, list[str]]) -> None:
        if self.journal is None:
            return
        write_text_atomic(self.journal, json.dumps(batches, indent=1))


def parse_batch_line(line: str) -> tuple[str, Reply]:
    """One line of a Message Batches results file -> (custom_id, Reply)."""
    item = json.loads(line)
    result = item.get("result", {})
    if result.get("type") != "succeeded":
        error = result.get("error", {})
        detail = error.get("error", error).get("message", "") if isinstance(error, dict) else str(error)
        return item["custom_id"], Reply(None, f"batch request {result.get('type', 'failed')}: {detail}".rstrip(": "))
    blocks = result.get("message", {}).get("content", [])
    return item["custom_id"], Reply("".join(b.get("text", "") for b in blocks if b.get("type") == "text"))


def make_client(cfg: LLMConfig, journal: Path | None = None):
    """The client for `cfg.provider`."""
    if cfg.provider == "openai":
        return OpenAIChatClient(cfg)
    if cfg.provider == "anthropic":
        return AnthropicBatchClient(cfg, journal)
    raise ValueError(f"--llm-provider {cfg.provider!r}: expected openai or anthropic")


@dataclass
class Report:
    """What a run did: results (new and earlier), ids skipped as done, failures with their reason."""
    results: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def _write(path: Path, record: dict) -> None:
    write_text_atomic(path, json.dumps(record, indent=1, ensure_ascii=False))


def _done(path: Path, prompt: str) -> dict | None:
    """The answer saved for this very prompt (keyed on its content: a latent of another SAE, or the same
    latent with other evidence, is asked again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("ok") and record.get("prompt_sha256") == _sha256(prompt) else None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
        earlier = _done(folder / f"{cid}.json", prompt)
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
                _write(folder / f"{cid}.json", {"ok": False, "error": str(err), "response": reply.text,
                                                "prompt_sha256": _sha256(todo[cid])})
                retry[cid] = todo[cid]
                continue
            report.failures.pop(cid, None)
            report.results[cid] = result
            _write(folder / f"{cid}.json", {"ok": True, "result": result, "response": reply.text,
                                            "prompt_sha256": _sha256(todo[cid])})
        todo = retry
    return report


def latent_id(latent: int) -> str:
    """Request id of a latent (letters, digits, '-' only: valid as an Anthropic custom_id)."""
    return f"latent-{latent}"


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
