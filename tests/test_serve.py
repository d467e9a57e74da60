"""serve.py, the local steering page: its answers equal direct generation, concurrent clients get what
sequential ones get, a stalled client stalls nobody else, and every refusal is one line of JSON."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from llama import LoadedModel, ModelArgs, Transformer, generate
from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.steering import Steer, Steering
from serve import SteeringServer, SteeringSession, json_depth

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The food at the restaurant was"


def start(session: SteeringSession, **options) -> tuple[SteeringServer, str]:
    httpd = SteeringServer(session, 0, **options)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture(scope="module")
def server(smol, sae):
    httpd, url = start(SteeringSession(smol, sae, {3: "negative reviews", 11: "food words"}))
    yield url
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def tiny(smol):
    """A tiny random model with the real tokenizer and a random SAE at its last block: fast generations."""
    torch.manual_seed(0)
    args = ModelArgs.debug(vocab_size=smol.args.vocab_size)
    model = Transformer(args).eval().requires_grad_(False)
    cfg = SAEConfig(d_in=args.dim, d_sae=128, k=4, hook_name="blocks.1.hook_resid_post", model="tiny")
    sae = SparseAutoencoder(cfg).requires_grad_(False)
    loaded = LoadedModel(model, smol.tokenizer, args, "tiny")
    httpd, url = start(SteeringSession(loaded, sae, {5: "five"}), read_timeout=1.5)
    yield url, httpd
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


def raw_request(port: int, data: bytes, *, half_close: bool = False) -> tuple[int, bytes]:
    """Send bytes as they are; the status and body of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


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
    ({"prompt": "Hi", "steers": [["3", "1"]]}, "steers: latents and values are numbers"),
    ({"prompt": "Hi", "mode": "push"}, "mode 'push'"),
    ({"prompt": "Hi", "max_new_tokens": 10_000}, "max_new_tokens 10000"),
    ({"prompt": "Hi", "max_new_tokens": True}, "max_new_tokens True"),
    ({"prompt": "Hi", "temperature": 2}, "unknown field(s) 'temperature'"),
    ({"prompt": "word " * 9000, "max_new_tokens": 8}, "exceed the model's context of 8192 tokens"),
    (b'{"prompt": "Hi", "steers": [[3, NaN]]}', "NaN is not a steering value"),
    (b"{not json", "the body is not JSON"),
    (b"[1, 2]", "the body must be a JSON object"),
    (b"\xff\xfe{}", "the body is not UTF-8"),
    (b"[" * 100_000, "nests JSON more than 16 levels"),
    (b'{"prompt": "' + b"[" * 100_000 + b'"}', "exceed the model's context"),  # brackets in a string count not
])
def test_bad_requests_get_one_line_and_400(server, body, message):
    status, reply = call(server + "/generate", body)
    assert status == 400 and message in reply["error"] and "\n" not in reply["error"]


def test_json_depth_ignores_strings_and_stops_early():
    assert json_depth('{"a": [[1]], "b": "[[[[[["}', 2) == 3
    assert json_depth('{"a": "\\"[[[["}', 0) == 1
    assert json_depth("[" * 1000, 16) == 17


def head(port: int, *, host: str | None = "auto", extra: str = "", body: bytes = b"",
         length: str | None = "auto", method: str = "POST /generate") -> bytes:
    lines = [f"{method} HTTP/1.0"]
    if host is not None:
        lines.append(f"Host: {f'127.0.0.1:{port}' if host == 'auto' else host}")
    if length is not None:
        lines.append(f"Content-Length: {len(body) if length == 'auto' else length}")
    return ("\r\n".join(lines + ([extra] if extra else [])) + "\r\n\r\n").encode() + body


GOOD = b'{"prompt": "Hi", "max_new_tokens": 2}'


@pytest.mark.parametrize("case, status, message", [
    (dict(host="evil.example:{port}"), 403, "Host 'evil.example:"),
    (dict(host="127.0.0.1.nip.io"), 403, "this server answers to 127.0.0.1:"),
    (dict(host=None), 403, "no Host header"),
    (dict(extra="Origin: http://evil.example"), 403, "cross-origin requests are refused"),
    (dict(extra="Origin: null"), 403, "cross-origin requests are refused"),
    (dict(extra="Sec-Fetch-Site: cross-site"), 403, "cross-origin requests are refused"),
    (dict(length=None), 411, "no Content-Length"),
    (dict(length=None, extra="Transfer-Encoding: chunked"), 411, "Transfer-Encoding is not supported"),
    (dict(length="-1"), 400, "Content-Length '-1': must be a whole number"),
    (dict(length="12abc"), 400, "Content-Length '12abc'"),
    (dict(length="", extra=""), 400, "Content-Length ''"),
    (dict(length="5", extra="Content-Length: 6"), 400, "conflicting Content-Length"),
    (dict(length="50000000"), 413, "over the limit of 1048576 bytes"),
    (dict(method="PUT /generate"), 501, "Unsupported method"),
    (dict(method="POST /other"), 404, "POST to /generate"),
    (dict(method="NOT A REQUEST"), 400, "Bad request syntax"),
])
def test_http_refusals_are_one_line_json(tiny, case, status, message):
    _, httpd = tiny
    port = httpd.server_address[1]
    if isinstance(case.get("host"), str):
        case = {**case, "host": case["host"].format(port=port)}
    got, body = raw_request(port, head(port, body=GOOD, **case))
    assert got == status, body
    assert body.count(b"\n") == 0 and list(json.loads(body)) == ["error"] and message in json.loads(body)["error"]


def test_own_origins_are_served(tiny):
    _, httpd = tiny
    port = httpd.server_address[1]
    for extra in (f"Origin: http://127.0.0.1:{port}", f"Origin: http://localhost:{port}",
                  "Sec-Fetch-Site: same-origin"):
        assert raw_request(port, head(port, body=GOOD, extra=extra))[0] == 200
    assert raw_request(port, head(port, body=GOOD, host=f"localhost:{port}"))[0] == 200


def test_concurrent_clients_get_the_sequential_completions(tiny):
    url, _ = tiny
    requests = [{"prompt": f"Client {c} asks question {r} about", "steers": [[5 + c, 3.0 * r]],
                 "mode": ("direction", "sae", "clamp")[(c + r) % 3], "max_new_tokens": 4}
                for c in range(8) for r in range(5)]
    sequential = [call(url + "/generate", body) for body in requests]
    assert all(status == 200 for status, _ in sequential)
    assert any(reply["steered"] != reply["unsteered"] for _, reply in sequential)  # steering did something
    with ThreadPoolExecutor(8) as pool:  # 8 clients, 5 requests each
        concurrent = list(pool.map(lambda c: [call(url + "/generate", requests[c * 5 + r]) for r in range(5)],
                                   range(8)))
    assert [reply for client in concurrent for reply in client] == sequential


def test_a_stalled_client_stalls_nobody_else(tiny):
    url, httpd = tiny
    port = httpd.server_address[1]
    silent = socket.create_connection(("127.0.0.1", port))  # connects, sends nothing
    partial = socket.create_connection(("127.0.0.1", port))  # announces 100 bytes, sends 10
    partial.sendall(head(port, length="100", body=b'{"prompt":'))
    try:
        started = time.monotonic()
        assert call(url + "/latents") == (200, [{"index": 5, "explanation": "five"}])
        assert call(url + "/generate", {"prompt": "Hello", "max_new_tokens": 2})[0] == 200
        assert time.monotonic() - started < 1.0
        partial.settimeout(10)
        reply = b""
        while chunk := partial.recv(65536):  # the server gives up on it after its read timeout
            reply += chunk
        assert reply.startswith(b"HTTP/1.0 408") and b"10 of 100 bytes" in reply
    finally:
        silent.close()
        partial.close()


def test_connections_over_the_limit_get_503_and_later_ones_are_served(tiny):
    _, shared = tiny
    httpd, url = start(shared.session, max_connections=2)
    port = httpd.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # silent: each holds a slot
    try:
        time.sleep(0.3)  # accepted by the server loop
        status, body = raw_request(port, head(port, method="GET /latents", length=None))
        assert status == 503 and json.loads(body) == {"error": "too many open connections; retry in a moment"}
    finally:
        for sock in held:
            sock.close()
    for _ in range(50):  # the held slots are freed as their threads see the connections close
        if raw_request(port, head(port, method="GET /latents", length=None))[0] == 200:
            break
        time.sleep(0.1)
    else:
        pytest.fail("slots were not freed")
    httpd.shutdown()
    httpd.server_close()


def test_a_body_shorter_than_announced_is_400(tiny):
    _, httpd = tiny
    port = httpd.server_address[1]
    status, body = raw_request(port, head(port, length="100", body=b"{}"), half_close=True)
    assert status == 400 and b"ended after 2 of the 100 bytes" in body


# A missing SAE, a missing --explanations file and other bad flags: tests/test_bad_inputs.py.


def test_ctrl_c_stops_cleanly(sae_dir):
    proc = subprocess.Popen([sys.executable, "serve.py", "--sae", str(sae_dir), "--port", "0", "--device", "cpu"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()  # printed once the server listens
        assert "steering page at http://127.0.0.1:" in line, proc.stderr.read() if not line else line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err and "stopped" in out
