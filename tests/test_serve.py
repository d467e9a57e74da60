"""serve.py, the local steering page: its answers equal direct generation, concurrent clients get what
sequential ones get, a stalled client stalls nobody else, and every refusal is one line of JSON."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
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

from latents.report import read_latent_facts
from latents.sweep import SweepSettings, rows_json, sweep_latent
from llama import LoadedModel, ModelArgs, Transformer, generate
from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.steering import Steer, Steering
from steering_page import page
from steering_page.server import SteeringServer, json_depth
from steering_page.session import SteeringSession
from sweep_helpers import LATENT, WordTokenizer, planted

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


def raw_request(port: int, data: bytes, *, half_close: bool = False, timeout: float = 30) -> tuple[int, bytes]:
    """Send bytes as they are; the status and body of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
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
    assert status == 200 and "<textarea id=\"prompt\"" in page and 'post("/generate"' in page
    assert 'post("/sweep"' in page and call(server + "/?latent=3&lo=1&hi=8")[1] == page  # the page reads the query
    assert call(server + "/latents") == (200, [
        {"index": 3, "explanation": "negative reviews", "max": None, "labels": {}, "page": None},
        {"index": 11, "explanation": "food words", "max": None, "labels": {}, "page": None}])
    assert call(server + "/nothing")[0] == 404


@pytest.mark.parametrize("body, message", [
    ({"prompt": " "}, "prompt: give some text"),
    ({"prompt": "Hi", "steers": [[512, 1]]}, "steer 512:1: latent index out of range"),
    ({"prompt": "Hi", "steers": [[-1, 1]]}, "latent index must be >= 0"),
    ({"prompt": "Hi", "steers": [5]}, "steers: a list of [latent, value] pairs"),
    ({"prompt": "Hi", "steers": [["3", "1"]]}, "steers: latents and values are numbers"),
    ({"prompt": "Hi", "mode": "push"}, "mode push: choose one of sae, direction, clamp"),
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
    (dict(method="POST /other"), 404, "POST to /generate or /sweep"),
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
    _, shared = tiny
    httpd, url = start(shared.session, read_timeout=600.0)  # the stalled clients are held for the whole test
    port = httpd.server_address[1]
    silent = socket.create_connection(("127.0.0.1", port))  # connects, sends nothing
    partial = socket.create_connection(("127.0.0.1", port))  # announces 100 bytes, sends 10
    partial.sendall(head(port, length="100", body=b'{"prompt":'))
    try:
        assert call(url + "/latents") == (200, [{"index": 5, "explanation": "five", "max": None, "labels": {},
                                                 "page": None}])
        assert call(url + "/generate", {"prompt": "Hello", "max_new_tokens": 2})[0] == 200
        for sock in (silent, partial):  # served while both are still waited for, however long that took
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        silent.close()
        partial.close()
        httpd.shutdown()
        httpd.server_close()


def test_a_body_that_stops_is_408_after_the_read_timeout(tiny):
    _, httpd = tiny
    port = httpd.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as partial:  # announces 100 bytes, sends 10
        partial.sendall(head(port, length="100", body=b'{"prompt":'))
        reply = b""
        while chunk := partial.recv(65536):  # the server gives up on it after its read timeout (1.5 s)
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 408") and b"10 of 100 bytes" in reply


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
    assert served_soon(port), "slots were not freed"
    httpd.shutdown()
    httpd.server_close()


def trickle(port: int, every: float, limit: float) -> float:
    """A client sending a request's headers one byte at a time, every `every` seconds: the seconds until
    the server closes the connection, or `limit` when it never does."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(every)
        sock.sendall(b"GET /latents HTTP/1.0\r\nX-Slow: ")
        while time.monotonic() - started < limit:
            try:
                if not sock.recv(65536):  # closed by the server
                    break
            except TimeoutError:
                try:
                    sock.sendall(b"a")
                except OSError:  # reset by the server
                    break
            except OSError:
                break
    return time.monotonic() - started


def test_clients_trickling_headers_are_cut_off_and_free_their_slots(tiny):
    _, shared = tiny
    httpd, url = start(shared.session, read_timeout=1.0, max_connections=2)
    port = httpd.server_address[1]
    try:
        with ThreadPoolExecutor(2) as pool:  # both slots held by clients that never finish their headers
            held = list(pool.map(lambda _: trickle(port, every=0.1, limit=30.0), range(2)))
        assert all(1.0 <= seconds < 20.0 for seconds in held), held  # the deadline is for all the headers
        assert served_soon(port)  # their slots are free again
    finally:
        httpd.shutdown()
        httpd.server_close()


def served_soon(port: int, within: float = 30.0) -> bool:
    """Whether a GET is answered 200 within `within` seconds: slots are freed as their threads see their
    connections close, just after the client does."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if raw_request(port, head(port, method="GET /latents", length=None))[0] == 200:
            return True
        time.sleep(0.05)
    return False


def test_a_body_shorter_than_announced_is_400(tiny):
    _, httpd = tiny
    port = httpd.server_address[1]
    status, body = raw_request(port, head(port, length="100", body=b"{}"), half_close=True)
    assert status == 400 and b"ended after 2 of the 100 bytes" in body


# A missing SAE, a missing --explanations file and other bad flags: tests/test_bad_inputs.py.


def test_ctrl_c_stops_cleanly(sae_dir, tmp_path):
    # Hang guards only, generous: with both cores busy, startup took 37 s and the exit after Ctrl-C 9 s.
    with open(tmp_path / "stderr.txt", "w+") as err_file:  # a file, not a pipe that could fill unread
        proc = subprocess.Popen([sys.executable, "serve.py", "--sae", str(sae_dir), "--port", "0", "--device", "cpu"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err_file, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 600)
            line = proc.stdout.readline() if ready else ""
            assert "steering page at http://127.0.0.1:" in line, (tmp_path / "stderr.txt").read_text()[-2000:]
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=600)
        finally:
            proc.kill()
        err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 0 and "Traceback" not in err and "stopped" in out


@pytest.fixture(scope="module")
def planted_server(tmp_path_factory):
    """The server on a tiny model with a planted steering direction (tests/sweep_helpers.py), the
    latent's record and page in an interpret folder, and a judge that counts how often it is built."""
    loaded, sae, judge, prompts = planted()
    folder = tmp_path_factory.mktemp("interpret")
    (folder / "pages").mkdir()
    (folder / "pages" / f"{LATENT}.html").write_text(f"<a href='http://127.0.0.1:8765/?latent={LATENT}'>steer</a>")
    (folder / "latents").mkdir()
    (folder / "latents" / f"{LATENT}.json").write_text(json.dumps(
        {"latent": LATENT, "max": 2.5, "labels": [{"label": "negative", "auroc": 0.7, "mean_diff": 0.1}]}))
    built = []
    session = SteeringSession(loaded, sae, {LATENT: "awful", 1: "other"}, judge=lambda: built.append(1) or judge,
                              facts=read_latent_facts(folder, [LATENT, 1]), pages=folder)
    httpd, url = start(session)
    texts = [WordTokenizer().decode(p) for p in prompts]
    yield url, (loaded, sae, judge, prompts), texts, built
    httpd.shutdown()
    httpd.server_close()


SWEEP = {"latent": LATENT, "lo": 2, "hi": 20, "steps": 3, "max_new_tokens": 8, "max_ppl_ratio": 1e9,
         "min_distinct2_ratio": 0}


def test_sweep_endpoint_returns_the_table_of_a_direct_sweep(planted_server):
    url, (loaded, sae, judge, prompts), texts, built = planted_server
    status, reply = call(url + "/sweep", {**SWEEP, "prompts": texts})
    assert status == 200, reply
    rows = reply["rows"]
    assert [r["value"] for r in rows] == [0.0, 2.0, 11.0, 20.0]  # 0, then 3 steps from 2 to 20
    assert all(len(r["texts"]) == len(prompts) for r in rows)
    latent = [r["latent"] for r in rows]
    assert all(b > a for a, b in zip(latent, latent[1:])), latent  # the planted latent rises with the push
    assert rows[-1]["shift"] > 0.3 and rows[-1]["in_range"] and not rows[0]["in_range"]
    assert reply["best"] is not None and reply["label"] == "negative" and reply["judge"]["accuracy"] > 0.9
    direct_rows = sweep_latent(loaded, sae, prompts, LATENT, [2.0, 11.0, 20.0], judge, "negative",
                               SweepSettings(max_new_tokens=8, max_ppl_ratio=1e9, min_distinct2_ratio=0.0))
    assert rows == json.loads(json.dumps(rows_json(direct_rows)))
    # default bounds: " awful awful ..." repeats itself, so no value is in range; the judge was built once
    status, reply = call(url + "/sweep", {"latent": LATENT, "lo": 20, "hi": 20, "steps": 1, "max_new_tokens": 8,
                                          "prompts": texts[:2]})
    assert status == 200 and [r["value"] for r in reply["rows"]] == [0.0, 20.0]
    assert not any(r["in_range"] for r in reply["rows"]) and reply["best"] is None and built == [1]


@pytest.mark.parametrize("body, message", [
    ({"hi": 5}, "latent: give the index"),
    ({"latent": 3}, "hi: give the last value"),
    ({"latent": 8, "hi": 5}, "latent 8: a whole number from 0 to 7"),
    ({"latent": True, "hi": 5}, "latent True"),
    ({"latent": 3, "hi": "5"}, "hi '5': give a finite number"),
    (b'{"latent": 3, "hi": 1e999}', "hi inf: give a finite number"),
    ({"latent": 3, "hi": 5, "steps": 9}, "steps 9: a whole number from 1 to 8"),
    ({"latent": 3, "hi": 5, "max_new_tokens": 65}, "max_new_tokens 65: a whole number from 1 to 64"),
    ({"latent": 3, "hi": 5, "prompts": ["w9"] * 6}, "prompts: a list of 1 to 5 texts"),
    ({"latent": 3, "hi": 5, "prompts": [" "]}, "prompts: a list of 1 to 5 texts"),
    ({"latent": 3, "hi": 5, "label": "happy"}, "label happy: the judge knows negative, positive"),
    ({"latent": 3, "hi": 5, "mode": "push"}, "mode push: choose one of sae, direction, clamp"),
    ({"latent": 3, "hi": 5, "max_ppl_ratio": 0}, "max_ppl_ratio 0 must be > 0"),
    ({"latent": 3, "hi": 5, "prompt": "w9"}, "unknown field(s) 'prompt'"),
    ({"latent": 3, "hi": 5, "prompts": ["w9 " * 60], "max_new_tokens": 8}, "exceed the model's context of 64"),
])
def test_bad_sweeps_get_one_line_and_400(planted_server, body, message):
    url = planted_server[0]
    status, reply = call(url + "/sweep", body)
    assert status == 400 and message in reply["error"] and "\n" not in reply["error"], reply


def test_a_server_without_a_judge_refuses_sweeps(tiny):
    url, httpd = tiny
    status, reply = call(url + "/sweep", {"latent": 5, "hi": 1, "steps": 1, "max_new_tokens": 2})
    assert status == 400 and "no judge for sweeps" in reply["error"]


def test_latent_facts_and_pages_are_served(planted_server):
    url = planted_server[0]
    status, latents = call(url + "/latents")
    assert status == 200 and latents == [
        {"index": 1, "explanation": "other", "max": None, "labels": {}, "page": None},
        {"index": LATENT, "explanation": "awful", "max": 2.5, "labels": {"negative": 0.7},
         "page": f"/pages/{LATENT}.html"}]
    status, page = call(url + latents[1]["page"])
    assert status == 200 and page == f"<a href='/?latent={LATENT}'>steer</a>"  # the link leads to this server
    for path in ("/pages/1.html", "/pages/..%2Flatents%2F3.json", "/pages/../latents/3.json", "/index.html"):
        assert call(url + path)[0] == 404


def test_only_regular_files_inside_the_folder_are_served(tiny, tmp_path):
    _, shared = tiny
    folder, outside = tmp_path / "interpret", tmp_path / "secret.html"
    (folder / "pages").mkdir(parents=True)
    outside.write_text("secret")
    (folder / "pages" / "1.html").write_text("one")
    (folder / "pages" / "2.html").symlink_to(outside)               # a link out of the folder
    (folder / "pages" / "3.html").symlink_to(folder / "pages" / "1.html")  # a link that stays inside
    (folder / "index.html").symlink_to(tmp_path)                    # a link to a folder
    os.mkfifo(folder / "pages" / "4.html")                          # opening it would wait for a writer
    (tmp_path / "linked").symlink_to(folder)                        # the folder itself through a link
    session = SteeringSession(shared.session.loaded, shared.session.sae, {}, pages=tmp_path / "linked")
    httpd, url = start(session)
    port = httpd.server_address[1]
    try:
        got = {name: raw_request(port, head(port, method=f"GET /pages/{name}", length=None), timeout=10)
               for name in ("1.html", "2.html", "3.html", "4.html")}
        assert {name: status for name, (status, _) in got.items()} == {"1.html": 200, "2.html": 404,
                                                                       "3.html": 200, "4.html": 404}
        assert got["1.html"][1] == got["3.html"][1] == b"one"
        assert raw_request(port, head(port, method="GET /index.html", length=None), timeout=10)[0] == 404
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="chromium not installed (bash scripts/setup.sh --test installs Debian's chromium)")
def test_page_orders_latents_and_prefills_from_the_query(planted_server, tmp_path):
    from test_interpret import chromium, console_messages  # a test module: imported where a browser runs

    url = planted_server[0]
    result = chromium(["--virtual-time-budget=10000", "--dump-dom",
                       f"{url}/?latent={LATENT}&lo=1.5&hi=12&steps=4&value=2.5"], tmp_path)
    assert result.returncode == 0 and console_messages(result.stderr) == [], result.stderr[-2000:]
    dom = result.stdout
    rows = re.findall(r'<div data-text="[^"]*" data-index="(\d+)"', dom)
    assert rows == [str(LATENT), "1"]  # ordered "more in 'negative'": the latent with an AUROC first
    assert re.search(f'<div data-text="{LATENT} awful" data-index="{LATENT}" class="hit"><input [^>]*value="2.5"', dom)
    assert f'<a href="/pages/{LATENT}.html" target="_blank">{LATENT}</a>' in dom
    assert "max 2.50 · more in 'negative' (AUROC 0.700)" in dom
    for field, value in (("latent", LATENT), ("lo", 1.5), ("hi", 12), ("steps", 4)):
        assert re.search(f'<input id="s-{field}"[^>]* value="{value}"', dom), field


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="chromium not installed (bash scripts/setup.sh --test installs Debian's chromium)")
def test_sweep_button_shows_the_table_with_the_range_marked(planted_server, tmp_path, monkeypatch):
    from test_interpret import chromium, console_messages  # a test module: imported where a browser runs

    url = planted_server[0]
    click = "start().then(() => { $('s-tokens').value = 6; $('sweep').click(); });"  # as a person would
    monkeypatch.setattr(page, "PAGE", page.PAGE.replace("start();", click))
    result = chromium(["--virtual-time-budget=20000", "--dump-dom", f"{url}/?latent={LATENT}&lo=2&hi=20&steps=3"],
                      tmp_path)
    assert result.returncode == 0 and console_messages(result.stderr) == [], result.stderr[-2000:]
    table = result.stdout[result.stdout.index('<table id="s-table">'):]
    rows = re.findall(r'<tr class="(in|)"><td>([^<]*)</td>', table)
    assert [value for _, value in rows] == ["0.00", "2.00", "11.0", "20.0"]
    # the page's default bounds; the planted push writes " awful" at once, and repeats it at 11 and 20
    status, reply = call(url + "/sweep", {"latent": LATENT, "lo": 2, "hi": 20, "steps": 3, "max_new_tokens": 6})
    assert [mark == "in" for mark, _ in rows] == [r["in_range"] for r in reply["rows"]]
    assert any(mark == "in" for mark, _ in rows)
