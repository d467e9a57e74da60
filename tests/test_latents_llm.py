"""LLM clients against a local HTTP server on 127.0.0.1 that speaks each API's request and response
shapes: OpenAI chat completions and Anthropic Message Batches (create, poll, JSONL results)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from latents.explain import explain_with_llm, parse_explanation
from latents.llm import AnthropicBatchClient, LLMConfig, OpenAIChatClient, parse_batch_line
from latents.scoring import balanced_accuracy, parse_detection, score_detection

KEY = "sk-test-secret-123"
GOOD = 'Step 1: ... Step 4: all fit.\n{"common_semantic": "the word %s", "certainty": 0.9}'


def answer_for(prompt: str, calls: dict) -> str:
    """Scripted model: alpha always answers well, beta is malformed once then fine, gamma never fine."""
    for word in ("alpha", "beta", "gamma"):
        if f"<<{word}>>" in prompt:
            calls[word] = calls.get(word, 0) + 1
            if word == "gamma" or (word == "beta" and calls[word] == 1):
                return "I think it is about greek letters. {not json"
            return GOOD % word
    if "numbered sentences" in prompt:  # detection: claim the sentences that mention "top"
        lines = [line for line in prompt.splitlines() if line[:1].isdigit() and ". " in line]
        return json.dumps({"activating": [int(line.split(".")[0]) for line in lines if "top" in line]})
    if '"common_semantic"' in prompt:  # any other explanation request
        return GOOD % "anything"
    return "?"


class FakeAPI(BaseHTTPRequestHandler):
    server_version = "FakeAPI/1"

    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, code: int, body: str, kind: str = "application/json") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        state["headers"].append(dict(self.headers))
        if self.path == "/v1/chat/completions":
            prompt = body["messages"][0]["content"]
            state["prompts"].append(prompt)
            text = answer_for(prompt, state["calls"])
            self._send(200, json.dumps({"id": "c1", "object": "chat.completion", "model": body["model"],
                                        "choices": [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant", "content": text}}]}))
        elif self.path == "/v1/messages/batches":
            batch_id = f"msgbatch_{len(state['batches'])}"
            state["batches"][batch_id] = {"requests": body["requests"], "polls": 0}
            self._send(200, json.dumps({"id": batch_id, "type": "message_batch",
                                        "processing_status": "in_progress"}))
        else:
            self._send(404, "{}")

    def do_GET(self):
        state = self.server.state
        state["headers"].append(dict(self.headers))
        parts = self.path.strip("/").split("/")  # v1 messages batches <id> [results]
        batch = state["batches"].get(parts[3]) if len(parts) >= 4 else None
        if batch is None:
            return self._send(404, "{}")
        if len(parts) == 4:
            batch["polls"] += 1
            if state["fail_polls"]:
                state["fail_polls"] -= 1
                return self._send(500, '{"type": "error"}')
            ended = batch["polls"] >= 2
            return self._send(200, json.dumps({
                "id": parts[3], "processing_status": "ended" if ended else "in_progress",
                "results_url": f"http://127.0.0.1:{self.server.server_port}/v1/messages/batches/{parts[3]}/results"
                if ended else None}))
        lines = []
        for request in batch["requests"]:
            prompt = request["params"]["messages"][0]["content"]
            state["prompts"].append(prompt)
            if "<<delta>>" in prompt:
                result = {"type": "errored", "error": {"type": "error", "error": {"type": "overloaded_error",
                                                                                   "message": "Overloaded"}}}
            else:
                text = answer_for(prompt, state["calls"])
                result = {"type": "succeeded", "message": {"id": "m", "type": "message", "role": "assistant",
                                                           "content": [{"type": "text", "text": text}]}}
            lines.append(json.dumps({"custom_id": request["custom_id"], "result": result}))
        self._send(200, "\n".join(lines) + "\n", "application/binary")


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    httpd.state = {"prompts": [], "headers": [], "calls": {}, "batches": {}, "fail_polls": 0}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def evidence(word: str, latent: int) -> dict:
    tokens = ["The", " cat", f"{word}", " sat"]
    return {"latent": latent, "contexts": [{"tokens": tokens, "center": 2, "activation": 3.0 - i / 10,
                                            "values": [0, 0, 3.0, 0.1]} for i in range(3)], "labels": []}


def config(server, **kw) -> LLMConfig:
    return LLMConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="local", retries=1,
                     backoff_s=0.01, poll_s=0.01, timeout_s=10, **kw)


def test_openai_client_sends_prompts_parses_retries_and_resumes(server, tmp_path):
    client = OpenAIChatClient(config(server))
    ev = {1: evidence("alpha", 1), 2: evidence("beta", 2), 3: evidence("gamma", 3)}
    report = explain_with_llm(client, ev, tmp_path, attempts=2)
    assert report.results["latent-1"] == {"common_semantic": "the word alpha", "certainty": 0.9}
    assert report.results["latent-2"]["common_semantic"] == "the word beta"  # malformed once, then fine
    assert "latent-3" in report.failures and "latent-3" not in report.results
    assert "no JSON object" in report.failures["latent-3"]
    record = json.loads((tmp_path / "latent-3.json").read_text())
    assert record["ok"] is False and "greek letters" in record["response"]
    assert all("<<alpha>>" in p or "<<beta>>" in p or "<<gamma>>" in p for p in server.state["prompts"])
    assert "The cat<<alpha>> sat" in server.state["prompts"][0]
    sent = len(server.state["prompts"])
    assert sent == 5  # alpha 1 + beta 2 + gamma 2
    again = explain_with_llm(client, ev, tmp_path, attempts=1)  # resumed: only gamma is sent again
    assert sorted(again.skipped) == ["latent-1", "latent-2"]
    assert len(server.state["prompts"]) == sent + 1 and "<<gamma>>" in server.state["prompts"][-1]


def test_saved_answers_are_reused_for_the_same_prompt_only(server, tmp_path):
    """Answers are keyed on the prompt's content, not the latent's number: latent 1 of another SAE (other
    evidence) is asked again, and its new answer replaces the old."""
    client = OpenAIChatClient(config(server))
    explain_with_llm(client, {1: evidence("alpha", 1)}, tmp_path)
    sent = len(server.state["prompts"])
    same = explain_with_llm(client, {1: evidence("alpha", 1)}, tmp_path)
    assert same.skipped == ["latent-1"] and len(server.state["prompts"]) == sent
    other = explain_with_llm(client, {1: evidence("beta", 1)}, tmp_path, attempts=2)
    assert other.skipped == [] and other.results["latent-1"]["common_semantic"] == "the word beta"
    assert "<<beta>>" in server.state["prompts"][-1]


def test_anthropic_batches_create_poll_retrieve_and_report(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", KEY)
    cfg = config(server, provider="anthropic", api_key_env="TEST_ANTHROPIC_KEY", batch_size=2)
    cfg.base_url = f"http://127.0.0.1:{server.server_port}"
    client = AnthropicBatchClient(cfg, journal=tmp_path / "open.json")
    ev = {1: evidence("alpha", 1), 2: evidence("beta", 2), 4: evidence("delta", 4)}
    report = explain_with_llm(client, ev, tmp_path / "explain", attempts=2)
    assert report.results["latent-1"]["common_semantic"] == "the word alpha"
    assert report.results["latent-2"]["common_semantic"] == "the word beta"
    assert "Overloaded" in report.failures["latent-4"]
    created = server.state["batches"]
    assert len(created) == 3  # batches of 2 + 1 requests, then beta and delta resent in one batch
    first = next(iter(created.values()))["requests"][0]
    assert first["custom_id"] == "latent-1" and first["params"]["model"] == "local"
    assert first["params"]["messages"][0]["role"] == "user"
    headers = [h for h in server.state["headers"] if "x-api-key" in {k.lower() for k in h}]
    assert headers and all({k.lower(): v for k, v in h.items()}["anthropic-version"] == "2023-06-01"
                           for h in headers)
    written = "".join(p.read_text() for p in tmp_path.rglob("*.json"))
    assert KEY not in written and KEY not in json.dumps(report.failures)
    assert json.loads((tmp_path / "open.json").read_text()) == {}  # every batch collected


def test_anthropic_open_batch_is_collected_not_paid_twice(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", KEY)
    cfg = config(server, provider="anthropic", api_key_env="TEST_ANTHROPIC_KEY")
    cfg.base_url = f"http://127.0.0.1:{server.server_port}"
    journal = tmp_path / "open.json"
    server.state["fail_polls"] = 2  # polling fails past the retries: the batch stays open
    report = explain_with_llm(AnthropicBatchClient(cfg, journal=journal), {1: evidence("alpha", 1)},
                              tmp_path / "explain", attempts=1)
    assert "HTTP 500" in report.failures["latent-1"]
    assert list(json.loads(journal.read_text())) == ["msgbatch_0"]
    report = explain_with_llm(AnthropicBatchClient(cfg, journal=journal), {1: evidence("alpha", 1)},
                              tmp_path / "explain", attempts=1)
    assert report.results["latent-1"]["common_semantic"] == "the word alpha"
    assert len(server.state["batches"]) == 1  # collected the open batch, created none


def test_missing_key_is_a_one_line_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
        AnthropicBatchClient(LLMConfig(provider="anthropic", api_key_env="NO_SUCH_KEY_VAR"))


def test_detection_scores_balanced_accuracy(server, tmp_path):
    client = OpenAIChatClient(config(server))
    top = {7: [f"top sentence {i}" for i in range(5)]}
    quiet = {7: [f"quiet sentence {i}" for i in range(8)]}
    report = score_detection(client, {7: "sentences that say top"}, top, quiet, tmp_path, n_pos=3, n_neg=4)
    result = report.results["latent-7"]
    assert result["balanced_accuracy"] == 1.0 and len(result["truth"]) == 3
    prompt = server.state["prompts"][-1]
    assert "sentences that say top" in prompt and prompt.count("quiet sentence") == 4


def test_parsers_and_balanced_accuracy():
    assert parse_explanation('x {"a": 1} then {"common_semantic": "dates", "certainty": 0.5}') == \
        {"common_semantic": "dates", "certainty": 0.5}
    for bad in ('{"common_semantic": "", "certainty": 0.5}', '{"common_semantic": "x", "certainty": 7}', "none"):
        with pytest.raises(ValueError):
            parse_explanation(bad)
    assert parse_detection('{"activating": [1, 3]}', 4) == {0, 2}
    with pytest.raises(ValueError):
        parse_detection('{"activating": [9]}', 4)
    assert balanced_accuracy([True, True, False, False], {0}) == 0.75
    cid, reply = parse_batch_line(json.dumps({"custom_id": "x", "result": {"type": "expired"}}))
    assert cid == "x" and reply.text is None and "expired" in reply.error
