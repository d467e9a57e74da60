"""serve.py, the local steering page: its answers equal direct generation, and bad requests get one line."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import HTTPServer
from pathlib import Path

import pytest

from llama import generate
from sae.steering import Steer, Steering
from serve import SteeringSession, make_handler

PROMPT = "The food at the restaurant was"


@pytest.fixture(scope="module")
def server(smol, sae):
    session = SteeringSession(smol, sae, {3: "negative reviews", 11: "food words"})
    httpd = HTTPServer(("127.0.0.1", 0), make_handler(session))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def call(url: str, body: dict | bytes | None = None) -> tuple[int, object]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=120) as reply:
            raw, status = reply.read(), reply.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    return status, (json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode())


def direct(smol, sae, steering: Steering, n: int) -> str:
    tokens = smol.tokenizer.encode(PROMPT)  # the test SAE: no chat template, no BOS
    return smol.tokenizer.decode(generate(smol.model, smol.tokenizer, [tokens], max_new_tokens=n,
                                          injections={sae.cfg.hook_name: steering})[0])


@pytest.mark.parametrize("mode", ["direction", "sae"])
def test_page_completions_equal_direct_generation(server, smol, sae, mode):
    status, reply = call(server + "/generate", {"prompt": PROMPT, "steers": [[11, 40]], "mode": mode,
                                                "max_new_tokens": 8})
    assert status == 200
    assert reply["unsteered"] == direct(smol, sae, Steering(sae, [], mode), 8)
    assert reply["steered"] == direct(smol, sae, Steering(sae, [Steer(11, 40.0)], mode), 8)
    assert reply["steered"] != reply["unsteered"]


def test_page_and_latent_list(server):
    status, page = call(server + "/")
    assert status == 200 and "<textarea id=\"prompt\"" in page and 'fetch("/generate"' in page
    assert call(server + "/latents") == (200, [{"index": 3, "explanation": "negative reviews"},
                                               {"index": 11, "explanation": "food words"}])
    assert call(server + "/nothing")[0] == 404


@pytest.mark.parametrize("body, message", [
    ({"prompt": " "}, "prompt: give some text"),
    ({"prompt": "Hi", "steers": [[512, 1]]}, "steer 512:1: latent index out of range"),
    ({"prompt": "Hi", "steers": [[-1, 1]]}, "latent index must be >= 0"),
    ({"prompt": "Hi", "steers": [5]}, "steers: a list of [latent, value] pairs"),
    ({"prompt": "Hi", "mode": "push"}, "mode 'push'"),
    ({"prompt": "Hi", "max_new_tokens": 10_000}, "max_new_tokens 10000"),
    (b'{"prompt": "Hi", "steers": [[3, NaN]]}', "NaN is not a steering value"),
    (b"{not json", "the body is not JSON"),
])
def test_bad_requests_get_one_line_and_400(server, body, message):
    status, reply = call(server + "/generate", body)
    assert status == 400 and message in reply["error"] and "\n" not in reply["error"]


def test_no_sae_is_one_line_and_exit_2(tmp_path):
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "serve.py", "--sae", str(tmp_path / "none")], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no trained SAE there" in result.stderr and "pipeline.py" in result.stderr
