"""A local steering page: type a prompt, pick SAE latents by their explanation, set their values, and
read the unsteered and the steered completion side by side.

    python serve.py                       # the pipeline's SAE; open http://127.0.0.1:8765
    python serve.py --sae runs/my-sae --port 8000 --mode sae

The page calls JSON endpoints a script can use too: GET /latents (each explained latent's index,
explanation, largest activation "max", label AUROCs "labels" and "page"), POST /generate with {"prompt":
str, "steers": [[latent, value], ...], "mode": str, "max_new_tokens": int}, which returns {"unsteered":
str, "steered": str}, and POST /sweep with {"latent": int, "lo": num, "hi": num, "steps": int, "label": str,
"mode", "max_new_tokens", "prompts", "max_ppl_ratio", "min_distinct2_ratio"} (all but latent and hi
optional), which returns generate.py --sweep's table as {"rows": [...], "best", ...}. Every refusal is
one line of JSON, {"error": "..."}, with its HTTP status. Steering means what it means in generate.py
(see docs/generate.md): the same modes, the same VALUE. The page opens with a latent and a range from
its query string (/?latent=J&lo=A&hi=B&steps=N&value=V, as interpret.py's latent pages link to it), and
interpret.py's index.html and pages/<latent>.html are served beside it.

The server is the standard library's ThreadingHTTPServer, bound to 127.0.0.1: one page and three JSON
endpoints need no framework, and the project installs nothing beyond torch for them. What a framework
would bring is done here, in a few lines each:
  - every connection has its own thread and every read a timeout, so a client that sends nothing, or
    fewer bytes than it announced, stalls only itself (at most MAX_CONNECTIONS are open at once);
  - generations run one at a time under a lock (torch already uses every core for one); each request
    builds its own steering, and nothing else a request could change is shared;
  - a body needs a Content-Length (411) that is a whole number (400) of at most MAX_BODY_BYTES (413),
    and JSON nested deeper than MAX_JSON_DEPTH is refused (400) before it is parsed;
  - the Host header must be 127.0.0.1 or localhost (a web page cannot reach the server through a DNS
    name rebound to 127.0.0.1), and a POST from another origin is refused (403): a page open in a
    browser cannot make the server generate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import cli
import paths
import runtime

MAX_NEW_TOKENS = 256       # per request: a generation holds the model
MAX_BODY_BYTES = 1 << 20   # a prompt longer than any model's context fits well within it
MAX_JSON_DEPTH = 16        # a request is two levels deep; Python's parser recurses per level
READ_TIMEOUT_S = 5.0       # default for the request line and headers, and for the whole body
MAX_CONNECTIONS = 32
REQUEST_FIELDS = ("prompt", "steers", "mode", "max_new_tokens")
SWEEP_FIELDS = ("latent", "lo", "hi", "steps", "label", "mode", "max_new_tokens", "prompts", "max_ppl_ratio",
                "min_distinct2_ratio")
MAX_SWEEP_STEPS = 8        # a sweep generates (steps + 1) x prompts completions under the lock
MAX_SWEEP_PROMPTS = 5
MAX_SWEEP_TOKENS = 64


@dataclass
class ServeConfig:
    sae: str = field(default=str(paths.DEFAULT_SAE_DIR), metadata={"help": "SAE folder whose latents are steered"})
    model: str = field(default="", metadata={"help": "GGUF file, Meta or HF folder (default: SmolLM2-135M-Instruct)"})
    explanations: str = field(default="", metadata={
        "help": "interpret.py's latent_index_meaning.json, the latents to pick from (default: the pipeline's "
                f"{paths.DEFAULT_INTERPRET_DIR / 'latent_index_meaning.json'} when it exists)"})
    mode: str = field(default="direction", metadata={"help": "steering mode preselected on the page: "
                                                             "direction, sae or clamp"})
    judge_corpus: str = field(default="", metadata={"help": "labelled corpus the sweep's judge is trained on "
                                                            "(default: the embedded corpus)"})
    port: int = field(default=paths.SERVE_PORT, metadata={"help": "port on 127.0.0.1 (0: any free one)"})
    device: str = runtime.device_field()
    model_dtype: str = runtime.model_dtype_field()


class RequestError(ValueError):
    """A refused request: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Job(NamedTuple):
    """A checked /generate request."""

    tokens: list[int]  # the prompt, encoded as the SAE's training text was
    steers: list       # sae.steering.Steer
    mode: str
    max_new_tokens: int


class SweepJob(NamedTuple):
    """A checked /sweep request."""

    latent: int
    values: list[float]
    label: str
    prompts: list[str]
    tokens: list[list[int]]  # each prompt, encoded as the SAE's training text was
    settings: object         # latents.sweep.SweepSettings


class SteeringSession:
    """A loaded model and SAE, answering steering requests (the logic behind the page, no HTTP).

    `complete` and `sweep` may be called from many threads: requests are checked in parallel,
    generations run one at a time under the session's lock. `facts`: latent -> {"max", "labels", "page"}
    (latents.report.read_latent_facts); `pages`: interpret.py's folder whose index.html and
    pages/ are served; `judge`: a function returning the sweep's judge, called once, at the first sweep."""

    def __init__(self, loaded, sae, explanations: dict[int, str], default_mode: str = "direction", *,
                 facts: dict[int, dict] | None = None, pages: Path | None = None, judge=None):
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

    def sweep(self, request: dict) -> dict:
        """{"latent", "lo", "hi", "steps", ...} -> the sweep's rows (latents/sweep.py) and the judge's
        held-out accuracy; ValueError (one line) for a bad request."""
        from latents.sweep import best_row, rows_json, sweep_latent

        job = self.check_sweep(request)
        with self._lock:
            judge = self.judge()
            self._label(judge, job.label)
            rows = sweep_latent(self.loaded, self.sae, job.tokens, job.latent, job.values, judge, job.label,
                                job.settings)
        best = best_row(rows)
        return {"latent": job.latent, "label": job.label, "prompts": job.prompts, "rows": rows_json(rows),
                "best": best.value if best else None, "settings": dataclasses.asdict(job.settings),
                "judge": {"accuracy": judge.accuracy, "majority": judge.majority}}

    def judge(self):
        """The judge, built at the first call (it trains on the corpus once; callers hold the lock)."""
        if self._judge is None:
            if self._make_judge is None:
                raise ValueError("this server has no judge for sweeps; start it with a labelled --judge-corpus")
            self._judge = self._make_judge()
        return self._judge

    def page_file(self, path: str) -> bytes | None:
        """interpret.py's index.html or pages/<latent>.html for `path`, None when there is none; links to
        the steering page on the default port become links to this server."""
        from latents.pages import STEER_URL

        if self.pages is None or not re.fullmatch(r"/index\.html|/pages/[0-9]{1,9}\.html", path):
            return None
        try:
            text = (self.pages / path[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        return text.replace(STEER_URL, "/").encode()

    @staticmethod
    def _label(judge, label: str) -> None:
        try:
            judge.index(label)
        except ValueError as err:  # the message names the command-line flag
            raise ValueError(str(err).replace("--label ", "label ", 1)) from None

    def complete(self, request: dict) -> dict:
        """{"prompt", "steers", "mode", "max_new_tokens"} -> {"unsteered", "steered"} texts; ValueError
        (one line) for a bad request."""
        from sae.steering import Steering

        job = self.check(request)
        runs = {"unsteered": Steering(self.sae, [], "sae" if job.mode == "sae" else "direction"),
                "steered": Steering(self.sae, job.steers, job.mode)}
        with self._lock:
            return {label: self._generate(job, steering) for label, steering in runs.items()}

    def _generate(self, job: Job, steering) -> str:
        from llama import generate

        tokenizer = self.loaded.tokenizer
        out = generate(self.loaded.model, tokenizer, [job.tokens], max_new_tokens=job.max_new_tokens,
                       injections={self.sae.cfg.hook_name: steering})
        return tokenizer.decode(out[0])

    def check(self, request: dict) -> Job:
        """The request's fields checked against the SAE and the model's context; one-line ValueError."""
        from sae.steering import MODES

        unknown = sorted(set(request) - set(REQUEST_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; send {', '.join(REQUEST_FIELDS)}")
        prompt, mode = request.get("prompt"), request.get("mode", self.default_mode)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt: give some text to continue")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        max_new = whole(request, "max_new_tokens", 48, 1, MAX_NEW_TOKENS)
        steers = self._steers(request.get("steers", []))
        return Job(self._encode([prompt], max_new)[0], steers, mode, max_new)

    def _encode(self, prompts: list[str], max_new: int) -> list[list[int]]:
        """The prompts encoded as the SAE's training text was; one line when one does not fit the context."""
        from llama.tokenizers.chat import encode_prompt

        cfg, context = self.sae.cfg, self.loaded.args.max_seq_len
        encoded = [encode_prompt(self.loaded.tokenizer, p, chat=cfg.chat, bos=cfg.prepend_bos) for p in prompts]
        longest = max(len(t) for t in encoded)
        if longest + max_new > context:
            raise ValueError(f"prompt ({longest} tokens) and max_new_tokens ({max_new}) exceed the model's "
                             f"context of {context} tokens; shorten the prompt or ask for fewer tokens")
        return encoded

    def check_sweep(self, request: dict) -> SweepJob:
        """A /sweep request's fields checked; one-line ValueError. Values: `steps` evenly from lo to hi
        (0, the unsteered baseline, is always added)."""
        from latents.sweep import NEUTRAL_PROMPTS, SweepSettings, evenly_spaced
        from sae.steering import MODES

        unknown = sorted(set(request) - set(SWEEP_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; send {', '.join(SWEEP_FIELDS)}")
        for name, what in (("latent", "the index of the latent to sweep"), ("hi", "the last value to sweep")):
            if name not in request:
                raise ValueError(f"{name}: give {what}")
        latent = whole(request, "latent", None, 0, self.sae.cfg.d_sae - 1)
        lo, hi = finite(request, "lo", 0.0), finite(request, "hi", None)
        steps = whole(request, "steps", 5, 1, MAX_SWEEP_STEPS)
        mode, label = request.get("mode", self.default_mode), request.get("label", "negative")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        if not isinstance(label, str) or not label:
            raise ValueError(f"label {label!r}: name one of the corpus's labels, e.g. \"negative\"")
        max_new = whole(request, "max_new_tokens", 32, 1, MAX_SWEEP_TOKENS)
        ratio, distinct = finite(request, "max_ppl_ratio", 3.0), finite(request, "min_distinct2_ratio", 0.5)
        if ratio <= 0 or not 0 <= distinct <= 1:
            raise ValueError(f"max_ppl_ratio {ratio:g} must be > 0, min_distinct2_ratio {distinct:g} from 0 to 1")
        prompts = request.get("prompts", list(NEUTRAL_PROMPTS))
        if (not isinstance(prompts, list) or not 1 <= len(prompts) <= MAX_SWEEP_PROMPTS
                or not all(isinstance(p, str) and p.strip() for p in prompts)):
            raise ValueError(f"prompts: a list of 1 to {MAX_SWEEP_PROMPTS} texts to continue")
        settings = SweepSettings(mode=mode, max_new_tokens=max_new, max_ppl_ratio=ratio, min_distinct2_ratio=distinct)
        return SweepJob(latent, evenly_spaced(lo, hi, steps), label, prompts, self._encode(prompts, max_new),
                        settings)

    def _steers(self, steers) -> list:
        from sae.steering import check_steers, parse_steer

        if not isinstance(steers, list) or not all(isinstance(s, list) and len(s) == 2 for s in steers):
            raise ValueError("steers: a list of [latent, value] pairs")
        if any(isinstance(x, (bool, str)) for pair in steers for x in pair):
            raise ValueError("steers: latents and values are numbers, e.g. [[11, 40]]")
        try:
            parsed = [parse_steer(f"{latent}:{value}") for latent, value in steers]
            check_steers(parsed, self.sae.cfg.d_sae)
        except ValueError as err:  # the messages name the command-line flag
            raise ValueError(str(err).replace("--steer ", "steer ", 1)) from None
        return parsed


def whole(request: dict, name: str, default, lo: int, hi: int) -> int:
    """request[name] (or `default`) as a whole number from lo to hi; one-line ValueError otherwise."""
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} {value!r}: a whole number from {lo} to {hi}")
    return value


def finite(request: dict, name: str, default) -> float:
    """request[name] (or `default`) as a finite number; one-line ValueError otherwise."""
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} {value!r}: give a finite number")
    return float(value)


def parse_body(raw: bytes) -> dict:
    """A request body -> its JSON object; RequestError (400) for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not UTF-8 text; send a JSON object") from None
    if json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise RequestError(400, f"the body nests JSON more than {MAX_JSON_DEPTH} levels deep; send a flat "
                                f"object like {{\"prompt\": \"...\", \"steers\": [[11, 40]]}}")
    try:
        request = json.loads(text or "{}", parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"the body is not JSON ({err.msg})") from None
    if not isinstance(request, dict):
        raise RequestError(400, "the body must be a JSON object")
    return request


def json_depth(text: str, stop: int) -> int:
    """How deep brackets nest in JSON text (brackets inside strings do not count), scanning no further
    than the first level past `stop` (0 when there are no more brackets than `stop` in all). Python's json
    parser recurses once per level, so this runs first."""
    if text.count("[") + text.count("{") <= stop:  # the common case, without a Python loop
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop:
                break
        elif char in "]}":
            depth -= 1
    return deepest


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a steering value; use a finite number")


class Handler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.0, one request, every answer JSON except the page itself."""

    server: "SteeringServer"

    def setup(self):
        self.timeout = self.server.read_timeout  # on the socket: a silent client times out, not holds its thread
        super().setup()

    def do_GET(self):
        if not self._host_allowed():
            return
        path = self.path.split("?", 1)[0]  # the page reads its query string (latent, range) itself
        if path == "/":
            page = PAGE.replace("__MODE__", self.server.session.default_mode).encode()
            self._send(200, page, "text/html; charset=utf-8")
        elif path == "/latents":
            self._json(200, self.server.session.latents())
        elif (latent_page := self.server.session.page_file(path)) is not None:
            self._send(200, latent_page, "text/html; charset=utf-8")
        else:
            self._error(404, f"{self.path}: not found; the page is at /")

    def do_POST(self):
        if not (self._host_allowed() and self._origin_allowed()):
            return
        answer = {"/generate": self.server.session.complete, "/sweep": self.server.session.sweep}.get(self.path)
        if answer is None:
            self._error(404, f"{self.path}: not found; POST to /generate or /sweep")
            return
        try:
            reply = answer(parse_body(self._read_body()))
        except RequestError as err:
            self._error(err.status, str(err))
        except ValueError as err:
            self._error(400, _one_line(err))
        except Exception as err:  # a failure of the model, not of the request: say so, keep serving
            self.log_message("generation failed: %s: %s", type(err).__name__, _one_line(err))
            self._error(500, f"generation failed ({type(err).__name__}: {_one_line(err)})")
        else:
            self._json(200, reply)

    def _host_allowed(self) -> bool:
        """DNS rebinding guard: a page of another site reaching 127.0.0.1 under its own name is refused."""
        host = (self.headers.get("Host") or "").strip().lower()
        if host in self.server.hosts:
            return True
        self._error(403, f"Host {host!r}: this server answers to {self.server.origins[0][7:]} only (open "
                         f"{self.server.origins[0]}/)" if host else "no Host header; send Host: 127.0.0.1")
        return False

    def _origin_allowed(self) -> bool:
        """A browser names the page a POST comes from; only this server's own page may generate."""
        origin = self.headers.get("Origin")
        site = self.headers.get("Sec-Fetch-Site", "same-origin")
        if (origin is None or origin.lower() in self.server.origins) and site in ("same-origin", "none"):
            return True
        self._error(403, f"Origin {origin!r}: cross-origin requests are refused; use the page at "
                         f"{self.server.origins[0]}/")
        return False

    def _read_body(self) -> bytes:
        """The body of the announced length, read within the read timeout; RequestError otherwise."""
        length = self._content_length()
        limit = self.server.read_timeout
        deadline, chunks, left = time.monotonic() + limit, [], length
        while left:
            try:
                chunk = self.rfile.read1(left)
            except TimeoutError:
                chunk = None
            if chunk is None or time.monotonic() > deadline:
                raise RequestError(408, f"the body did not arrive within {limit:g} s "
                                        f"({length - left} of {length} bytes)")
            if not chunk:
                raise RequestError(400, f"the body ended after {length - left} of the {length} bytes announced")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(411, "Transfer-Encoding is not supported; send the body with a Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise RequestError(411, "no Content-Length; send the JSON body with its length")
        if len(set(v.strip() for v in values)) > 1:
            raise RequestError(400, "conflicting Content-Length headers; send one")
        text = values[0].strip()
        if not re.fullmatch(r"[0-9]{1,18}", text):
            raise RequestError(400, f"Content-Length {text[:20]!r}: must be a whole number of bytes")
        if int(text) > MAX_BODY_BYTES:
            raise RequestError(413, f"the body ({int(text)} bytes) is over the limit of {MAX_BODY_BYTES} bytes")
        return int(text)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, long headers, an unknown method) as JSON too."""
        self._error(code, message or HTTPStatus(code).phrase)

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True  # the rest of a refused request is not read
        self._json(status, {"error": message})

    def _json(self, status: int, data) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client left; nothing to tell it
            self.close_connection = True

    def log_request(self, code="-", size="-"):  # one short line per request
        print(f"{self.command or '-'} {self.path if self.command else ''} -> {int(code)}", flush=True)

    def log_message(self, format, *args):
        print(f"{self.client_address[0]}: {format % args}", file=sys.stderr, flush=True)


class SteeringServer(ThreadingHTTPServer):
    """The steering session behind an HTTP server on 127.0.0.1 (port 0: any free one); the session may be
    set after the port is bound (connections wait in the listen queue until `serve_forever`)."""

    daemon_threads = True  # Ctrl-C does not wait for clients that are still connected

    def __init__(self, session: SteeringSession | None, port: int = 0, *, read_timeout: float = READ_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS):
        super().__init__(("127.0.0.1", port), Handler)
        self.session, self.read_timeout = session, read_timeout
        port = self.server_address[1]
        self.hosts = {f"{name}{suffix}" for name in ("127.0.0.1", "localhost") for suffix in ("", f":{port}")}
        self.origins = (f"http://127.0.0.1:{port}", f"http://localhost:{port}")
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        if self._slots.acquire(blocking=False):
            super().process_request(request, client_address)
            return
        try:  # too many open connections: a short refusal, no thread
            request.settimeout(1.0)
            request.sendall(b'HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n'
                            b'{"error": "too many open connections; retry in a moment"}')
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Checked(NamedTuple):
    """What check_flags found."""

    sae_dir: Path
    explanations: dict[int, str]
    device: object              # torch.device
    corpus: Path | None         # the judge's corpus; None: sweeps are refused


def check_flags(cfg: ServeConfig) -> Checked:
    """Everything that can be checked before the model is loaded: SAE folder, explanations, device, corpus."""
    from latents.report import read_explanations
    from sae.steering import MODES

    if cfg.mode not in MODES:
        raise cli.UsageError(f"--mode {cfg.mode}: choose one of {', '.join(MODES)}")
    if not 0 <= cfg.port <= 65535:
        raise cli.UsageError(f"--port {cfg.port}: must be 0-65535")
    sae_dir = Path(cfg.sae)
    if not (sae_dir / "config.json").is_file():
        raise cli.UsageError(f"--sae {sae_dir}: no trained SAE there; run `python pipeline.py` (or capture.py "
                             f"then train.py), or pass --sae FOLDER")
    try:  # the pipeline's table when there is one; a file named with --explanations must exist
        explanations = (read_explanations(Path(cfg.explanations)) if cfg.explanations else
                        read_explanations(paths.DEFAULT_INTERPRET_DIR / "latent_index_meaning.json", missing_ok=True))
    except (FileNotFoundError, ValueError) as err:
        raise cli.UsageError(f"--explanations {err}") from None
    if cfg.judge_corpus and not Path(cfg.judge_corpus).exists():
        raise cli.UsageError(f"--judge-corpus {cfg.judge_corpus}: no such file or folder; name a labelled corpus")
    try:
        corpus = Path(cfg.judge_corpus) if cfg.judge_corpus else paths.default_corpus_path()
    except FileNotFoundError:  # the embedded corpus is not installed: steering works, sweeps say why not
        corpus = None
    return Checked(sae_dir, explanations, runtime.resolve_device(cfg.device), corpus)


def load_session(cfg: ServeConfig) -> SteeringSession:
    from latents.report import read_latent_facts
    from latents.judge import cached_judge

    checked = check_flags(cfg)
    loaded = runtime.load_model(cfg.model, device=checked.device, model_dtype=cfg.model_dtype)
    sae = runtime.load_sae_for(checked.sae_dir, loaded, device=checked.device)
    folder = Path(cfg.explanations).parent if cfg.explanations else paths.DEFAULT_INTERPRET_DIR
    judge = (lambda: cached_judge(checked.corpus, paths.RUNS / "judge")) if checked.corpus else None
    return SteeringSession(loaded, sae, checked.explanations, cfg.mode, judge=judge,
                           facts=read_latent_facts(folder, checked.explanations),
                           pages=folder if (folder / "pages").is_dir() else None)


def main() -> None:
    cfg, _ = cli.parse_config(ServeConfig, __doc__.split("\n\n")[0])
    check_flags(cfg)
    try:  # the port before the model: a taken port is said at once, not after loading
        server = SteeringServer(None, cfg.port)
    except OSError as err:
        raise cli.UsageError(f"--port {cfg.port}: cannot listen there ({err.strerror}); choose another") from None
    try:
        server.session = session = load_session(cfg)
        print(f"steering page at {server.origins[0]}/ ({len(session.explanations)} explained latents of "
              f"{session.sae.cfg.d_sae}); Ctrl-C stops it", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llama-sae steering</title>
<style>
body { font: 15px system-ui, sans-serif; max-width: 70em; margin: 1.5em auto; padding: 0 1em; color: #222; }
textarea { width: 100%; font: inherit; } input[type=number] { width: 6em; }
.row { display: flex; gap: 2em; } .col { flex: 1; }
#latents { max-height: 24em; overflow-y: auto; border: 1px solid #ccc; padding: .5em; }
#latents .hit { background: #fff3c4; } .muted { color: #777; }
.out { white-space: pre-wrap; background: #f6f6f6; padding: .7em; min-height: 4em; }
.error { color: #a00; } label { margin-right: 1em; }
table { border-collapse: collapse; } td, th { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: right; }
tr.in { background: #e3f4e3; } td.texts { text-align: left; white-space: pre-wrap; max-width: 30em; }
</style></head><body>
<h1>Steering</h1>
<p><textarea id="prompt" rows="3">Today I went to the park and</textarea></p>
<p><label>mode <select id="mode"><option>direction</option><option>sae</option><option>clamp</option></select></label>
<label>new tokens <input id="tokens" type="number" min="1" max="256" value="48"></label>
<label>add latent <input id="extra" type="number" min="0" placeholder="index"></label>
<button id="go">Generate</button> <span id="status"></span></p>
<div class="row">
<div class="col"><h3>Latents (a non-zero value steers)</h3>
<p><input id="filter" placeholder="filter explanations">
<label>order by <select id="order"><option value="">index</option>
<option value="*">label association (any label)</option></select></label></p>
<div id="latents"></div>
<p class="muted">max: the latent's largest activation in the data; AUROC of its sentence activation for a
label against the others (0.5: no association; below: less active on that label's text).</p></div>
<div class="col"><h3>Unsteered</h3><div id="unsteered" class="out"></div>
<h3>Steered</h3><div id="steered" class="out"></div></div></div>
<h2>Sweep: one latent measured over a range of values</h2>
<p><label>latent <input id="s-latent" type="number" min="0"></label>
<label>from <input id="s-lo" type="number" step="any" value="0"></label>
<label>to <input id="s-hi" type="number" step="any"></label>
<label>steps <input id="s-steps" type="number" min="1" max="8" value="5"></label>
<label>toward label <input id="s-label" value="negative" size="10"></label>
<label>new tokens <input id="s-tokens" type="number" min="1" max="64" value="32"></label>
<button id="sweep">Sweep</button> <span id="s-status"></span></p>
<p class="muted">The same neutral prompts are completed at each value (0 is the unsteered model), in the mode
chosen above. judge: mean probability of the label given to the completions by a word-count classifier
trained on the corpus (not the model); perplexity of the completions under the unsteered model; distinct-2:
1 = no repeated token pairs. Green rows are in range: the judge moved toward the label while fluency stayed
in bound. Click a row to steer with its value.</p>
<table id="s-table"></table><p id="s-note"></p>
<script>
const $ = id => document.getElementById(id);
const query = new URLSearchParams(location.search);
$("mode").value = "__MODE__";
let latents = [];
function fmt(x) { return x === null || x === undefined ? "–" : Number(x).toPrecision(3); }
function association(l, order) {  // order: "", "*" (any label) or "+label" / "-label"
  const names = Object.keys(l.labels);
  if (!names.length) return "";
  const name = order.length > 1 ? order.slice(1)
    : names.reduce((a, b) => Math.abs(l.labels[b] - .5) > Math.abs(l.labels[a] - .5) ? b : a);
  if (!(name in l.labels)) return "";
  return (l.labels[name] >= .5 ? "more" : "less") + " in '" + name + "' (AUROC " + fmt(l.labels[name]) + ")";
}
function addRow(l) {
  const row = document.createElement("div");
  row.dataset.text = (l.index + " " + l.explanation).toLowerCase();
  row.dataset.index = l.index;
  const input = document.createElement("input");
  Object.assign(input, {type: "number", step: "any", defaultValue: "0"});  // the value attribute: shown until edited
  input.dataset.latent = l.index;
  const name = document.createElement(l.page ? "a" : "b");
  name.textContent = l.index;
  if (l.page) { name.href = l.page; name.target = "_blank"; }
  const info = document.createElement("span");
  info.className = "muted";
  const label = association(l, $("order").value);
  info.textContent = " max " + fmt(l.max) + (label ? " · " + label : "");
  row.append(input, " ", name, " ", l.explanation, info);
  $("latents").appendChild(row);
  return row;
}
function orderKey(l) {
  const by = $("order").value, values = Object.values(l.labels);
  if (by === "") return l.index;
  if (by === "*") return values.length ? -Math.max(...values.map(v => Math.abs(v - .5))) : 1;
  const [sign, name] = [by[0] === "-" ? 1 : -1, by.slice(1)];
  return name in l.labels ? sign * l.labels[name] : 2;
}
function render() {
  const kept = {};
  for (const input of document.querySelectorAll("[data-latent]")) kept[input.dataset.latent] = input.value;
  $("latents").replaceChildren();
  for (const l of [...latents].sort((a, b) => orderKey(a) - orderKey(b) || a.index - b.index)) {
    addRow(l).querySelector("input").defaultValue = kept[l.index] || "0";
  }
  $("filter").oninput();
}
function ensure(index) {
  if (!latents.some(l => l.index === index)) {
    latents.push({index, explanation: "(no explanation)", max: null, labels: {}, page: null});
  }
}
async function start() {
  latents = await (await fetch("/latents")).json();
  const names = [...new Set(latents.flatMap(l => Object.keys(l.labels)))].sort();
  for (const name of names) for (const [sign, word] of [["+", "more"], ["-", "less"]]) {
    $("order").add(new Option(word + " in '" + name + "'", sign + name));
  }
  if (names.length) $("order").value = names.includes("negative") ? "+negative" : "*";
  const latent = parseInt(query.get("latent"));
  if (latent >= 0) ensure(latent);
  render();
  if (latent >= 0) prefill(latent);
}
function prefill(latent) {  // from a latent page's link: ?latent=J&lo=..&hi=..&steps=..&value=..
  $("s-latent").defaultValue = latent;  // as the value attribute: what the page was opened with stays in its markup
  for (const key of ["lo", "hi", "steps", "label"]) {
    if (query.get(key) !== null) $("s-" + key).defaultValue = query.get(key);
  }
  const row = document.querySelector('#latents [data-index="' + latent + '"]');
  if (query.get("value") !== null) row.querySelector("input").defaultValue = query.get("value");
  row.className = "hit";
  row.scrollIntoView({block: "nearest"});
}
$("filter").oninput = () => { const f = $("filter").value.toLowerCase();
  for (const row of $("latents").children) row.style.display = row.dataset.text.includes(f) ? "" : "none"; };
$("order").onchange = render;
$("extra").onchange = () => { if ($("extra").value !== "") { ensure(Number($("extra").value)); render(); } };
async function post(path, body, status) {
  $(status).textContent = "working..."; $(status).className = "";
  const reply = await fetch(path, {method: "POST", body: JSON.stringify(body)});
  const data = await reply.json();
  if (!reply.ok) { $(status).textContent = data.error; $(status).className = "error"; return null; }
  $(status).textContent = "";
  return data;
}
$("go").onclick = async () => {
  const steers = [...document.querySelectorAll("[data-latent]")]
    .filter(i => Number(i.value) !== 0).map(i => [Number(i.dataset.latent), Number(i.value)]);
  const data = await post("/generate", {prompt: $("prompt").value, steers, mode: $("mode").value,
    max_new_tokens: Number($("tokens").value)}, "status");
  if (!data) return;
  if (!steers.length) $("status").textContent = "no latent has a non-zero value: both runs are the same";
  $("unsteered").textContent = data.unsteered; $("steered").textContent = data.steered;
};
const COLUMNS = [["value", "value"], ["latent", "latent activation"], ["judge", "judge"], ["shift", "shift"],
  ["moved", "prompts moved"], ["perplexity", "perplexity"], ["ppl_ratio", "x unsteered"], ["distinct2", "distinct-2"]];
$("sweep").onclick = async () => {
  const latent = Number($("s-latent").value);
  const data = await post("/sweep", {latent, lo: Number($("s-lo").value), hi: Number($("s-hi").value),
    steps: Number($("s-steps").value), label: $("s-label").value, mode: $("mode").value,
    max_new_tokens: Number($("s-tokens").value)}, "s-status");
  if (!data) return;
  const table = $("s-table");
  table.replaceChildren();
  const head = table.insertRow();
  for (const [, title] of COLUMNS.concat([[, "in range"], [, "completions"]])) {
    head.appendChild(document.createElement("th")).textContent = title;
  }
  for (const r of data.rows) {
    const row = table.insertRow();
    row.className = r.in_range ? "in" : "";
    for (const [key] of COLUMNS) {
      row.insertCell().textContent = key === "moved" ? r.moved + "/" + r.texts.length : fmt(r[key]);
    }
    row.insertCell().textContent = r.in_range ? "yes" : "";
    const texts = row.insertCell(); texts.className = "texts"; texts.textContent = r.texts.join("\\n---\\n");
    row.onclick = () => {
      ensure(latent); render();
      document.querySelector('[data-latent="' + latent + '"]').value = r.value;
    };
  }
  $("s-note").textContent = "judge: held-out accuracy " + fmt(data.judge.accuracy)
    + " (always guessing the commonest label: "
    + fmt(data.judge.majority) + "). " + (data.best === null ? "No value is in range." : "Suggested: latent "
    + data.latent + " at " + fmt(data.best) + " (moved the judge on the most prompts).");
};
start();
</script></body></html>
"""


if __name__ == "__main__":
    cli.run_main(main)
