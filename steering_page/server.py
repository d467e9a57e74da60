"""HTTP for the steering page: the standard library's ThreadingHTTPServer, bound to 127.0.0.1, in front
of a SteeringSession. One page and three JSON endpoints need no framework, and the project installs
nothing beyond torch for them. What a framework would bring is done here, in a few lines each:
  - every connection has its own thread, its request line and headers one deadline in all, and its body
    another, so a client that sends nothing, trickles a byte at a time, or sends fewer bytes than it
    announced stalls only itself, and only that long (at most MAX_CONNECTIONS are open at once);
  - generations run one at a time under the session's lock (torch already uses every core for one);
    each request builds its own steering, and nothing else a request could change is shared;
  - a body needs a Content-Length (411) that is a whole number (400) of at most MAX_BODY_BYTES (413),
    and JSON nested deeper than MAX_JSON_DEPTH is refused (400) before it is parsed;
  - only regular files inside the interpret folder are served, once every symlink is resolved;
  - the Host header must be 127.0.0.1 or localhost (a web page cannot reach the server through a DNS
    name rebound to 127.0.0.1), and a POST from another origin is refused (403): a page open in a
    browser cannot make the server generate.
Every refusal is one line of JSON, {"error": "..."}, with its HTTP status; a SettingError (a steer, a
mode, a label) reads as the command line's would, without the dashes: "steer 512:1: ...".
"""

from __future__ import annotations

import io
import json
import math
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from settings import SettingError
from steering_page.page import interpret_page, steering_page
from steering_page.session import SteeringSession

MAX_BODY_BYTES = 1 << 20   # a prompt longer than any model's context fits well within it
MAX_JSON_DEPTH = 16        # a request is two levels deep; Python's parser recurses per level
READ_TIMEOUT_S = 5.0       # default for the request line and headers together, and for the whole body
MAX_CONNECTIONS = 32


class RequestError(ValueError):
    """A refused request: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


def inside_folder(folder: Path | None, path: str) -> bool:
    """Whether the URL path names a regular file inside `folder` once every symlink is resolved (a link
    out of the folder, a FIFO or a device is not served)."""
    if folder is None:
        return False
    try:
        target = (folder / path.lstrip("/")).resolve()
        return target.is_relative_to(folder.resolve()) and target.is_file()
    except (OSError, ValueError):  # a name the file system refuses (too long, a NUL byte) names no page
        return False


class HeaderDeadline(io.RawIOBase):
    """A connection's socket, read under one deadline for the request line and headers together: a
    timeout per read alone lets a client that trickles a byte at a time hold its thread for ever."""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock, self.timeout = sock, timeout
        self.deadline = time.monotonic() + timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the request line and headers did not arrive within {self.timeout:g} s")
        self.sock.settimeout(min(left, self.timeout))
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.0, one request, every answer JSON except the page itself."""

    server: "SteeringServer"

    def setup(self):
        self.timeout = self.server.read_timeout  # on the socket: a silent client times out, not holds its thread
        super().setup()
        self.rfile.close()  # read through the header deadline instead
        self._reader = HeaderDeadline(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # reads the headers
        self._reader.deadline = math.inf  # the body has its own (_read_body)
        return parsed

    def do_GET(self):
        if not self._host_allowed():
            return
        path = self.path.split("?", 1)[0]  # the page reads its query string (latent, range) itself
        if path == "/":
            self._send(200, steering_page(self.server.session.default_mode), "text/html; charset=utf-8")
        elif path == "/latents":
            self._json(200, self.server.session.latents())
        elif (inside_folder(self.server.session.pages, path)
              and (latent_page := interpret_page(self.server.session.pages, path)) is not None):
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
        except SettingError as err:  # as the command line words one, less the dashes of its flag
            self._error(400, f"{err.field} {err.value}: {err.problem}")
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
