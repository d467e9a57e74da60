"""A local steering page: type a prompt, pick SAE latents by their explanation, set their values, and
read the unsteered and the steered completion side by side.

    python serve.py                       # the pipeline's SAE; open http://127.0.0.1:8765
    python serve.py --sae runs/my-sae --port 8000 --mode sae

Standard library only (http.server), bound to 127.0.0.1 and so reachable from this machine alone;
requests are answered one at a time. The page calls two JSON endpoints a script can use too:
GET /latents (index and explanation of each explained latent) and POST /generate with
{"prompt": str, "steers": [[latent, value], ...], "mode": str, "max_new_tokens": int}, which returns
{"unsteered": str, "steered": str} or, for a bad request, status 400 and {"error": one line}.
Steering means what it means in generate.py (see docs/generate.md): the same modes, the same VALUE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import cli
import paths
import runtime

MAX_NEW_TOKENS = 256  # per request: one request holds the server


@dataclass
class ServeConfig:
    sae: str = field(default=str(paths.DEFAULT_SAE_DIR), metadata={"help": "SAE folder whose latents are steered"})
    model: str = field(default="", metadata={"help": "GGUF file, Meta or HF folder (default: SmolLM2-135M-Instruct)"})
    explanations: str = field(default=str(paths.DEFAULT_INTERPRET_DIR / "latent_index_meaning.json"),
                              metadata={"help": "interpret.py's latent_index_meaning.json (latents to pick from)"})
    mode: str = field(default="direction", metadata={"help": "steering mode preselected on the page: "
                                                             "direction, sae or clamp"})
    port: int = field(default=8765, metadata={"help": "port on 127.0.0.1"})
    device: str = runtime.device_field()
    model_dtype: str = runtime.model_dtype_field()


class SteeringSession:
    """A loaded model and SAE, answering steering requests (the logic behind the page, no HTTP)."""

    def __init__(self, loaded, sae, explanations: dict[int, str], default_mode: str = "direction"):
        self.loaded, self.sae, self.explanations, self.default_mode = loaded, sae, explanations, default_mode

    def latents(self) -> list[dict]:
        return [{"index": i, "explanation": text} for i, text in sorted(self.explanations.items())]

    def complete(self, request: dict) -> dict:
        """{"prompt", "steers", "mode", "max_new_tokens"} -> {"unsteered", "steered"} texts; ValueError
        (one line) for a bad request."""
        from generate import encode_prompt
        from llama import generate
        from sae.steering import MODES, Steering, check_steers, parse_steer

        prompt, mode = request.get("prompt"), request.get("mode", self.default_mode)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt: give some text to continue")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        max_new = request.get("max_new_tokens", 48)
        if not isinstance(max_new, int) or not 1 <= max_new <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens {max_new!r}: a whole number from 1 to {MAX_NEW_TOKENS}")
        steers = request.get("steers", [])
        if not isinstance(steers, list) or not all(isinstance(s, list) and len(s) == 2 for s in steers):
            raise ValueError("steers: a list of [latent, value] pairs")
        try:
            parsed = [parse_steer(f"{latent}:{value}") for latent, value in steers]
            check_steers(parsed, self.sae.cfg.d_sae)
        except ValueError as err:  # the messages name the command-line flag
            raise ValueError(str(err).replace("--steer ", "steer ", 1)) from None
        cfg, tokenizer = self.sae.cfg, self.loaded.tokenizer
        tokens = encode_prompt(tokenizer, prompt, chat=cfg.chat, bos=cfg.prepend_bos)
        runs = {"unsteered": Steering(self.sae, [], "sae" if mode == "sae" else "direction"),
                "steered": Steering(self.sae, parsed, mode)}
        return {label: tokenizer.decode(generate(self.loaded.model, tokenizer, [tokens], max_new_tokens=max_new,
                                                 injections={cfg.hook_name: steering})[0])
                for label, steering in runs.items()}


def make_handler(session: SteeringSession) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/":
                self._send(200, PAGE.replace("__MODE__", session.default_mode).encode(), "text/html; charset=utf-8")
            elif self.path == "/latents":
                self._json(200, session.latents())
            else:
                self._json(404, {"error": f"{self.path}: not found; the page is at /"})

        def do_POST(self):
            if self.path != "/generate":
                self._json(404, {"error": f"{self.path}: not found; POST to /generate"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length) or b"{}", parse_constant=_refuse_constant)
                if not isinstance(request, dict):
                    raise ValueError("the body must be a JSON object")
                self._json(200, session.complete(request))
            except json.JSONDecodeError as err:
                self._json(400, {"error": f"the body is not JSON ({err.msg})"})
            except ValueError as err:
                self._json(400, {"error": str(err).splitlines()[0]})

        def _json(self, status: int, data) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # one short line per request instead of http.server's
            print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}", flush=True)

    return Handler


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a steering value; use a finite number")


def load_session(cfg: ServeConfig) -> SteeringSession:
    from generate import read_explanations
    from sae.steering import MODES

    if cfg.mode not in MODES:
        raise cli.UsageError(f"--mode {cfg.mode}: choose one of {', '.join(MODES)}")
    if not 0 <= cfg.port <= 65535:
        raise cli.UsageError(f"--port {cfg.port}: must be 0-65535")
    sae_dir = Path(cfg.sae)
    if not (sae_dir / "config.json").is_file():
        raise cli.UsageError(f"--sae {sae_dir}: no trained SAE there; run `python pipeline.py` (or capture.py "
                             f"then train.py), or pass --sae FOLDER")
    device = runtime.resolve_device(cfg.device)
    loaded = runtime.load_model(cfg.model, device=device, model_dtype=cfg.model_dtype)
    sae = runtime.load_sae_for(sae_dir, loaded, device=device)
    return SteeringSession(loaded, sae, read_explanations(Path(cfg.explanations)), cfg.mode)


def main() -> None:
    cfg, _ = cli.parse_config(ServeConfig, __doc__.split("\n\n")[0])
    session = load_session(cfg)
    try:
        server = HTTPServer(("127.0.0.1", cfg.port), make_handler(session))
    except OSError as err:
        raise cli.UsageError(f"--port {cfg.port}: cannot listen there ({err.strerror}); choose another") from None
    print(f"steering page at http://127.0.0.1:{server.server_address[1]}/ ({len(session.explanations)} explained "
          f"latents of {session.sae.cfg.d_sae}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llama-sae steering</title>
<style>
body { font: 15px system-ui, sans-serif; max-width: 70em; margin: 1.5em auto; padding: 0 1em; color: #222; }
textarea { width: 100%; font: inherit; } input[type=number] { width: 6em; }
.row { display: flex; gap: 2em; } .col { flex: 1; }
#latents { max-height: 24em; overflow-y: auto; border: 1px solid #ccc; padding: .5em; }
.out { white-space: pre-wrap; background: #f6f6f6; padding: .7em; min-height: 4em; }
.error { color: #a00; } label { margin-right: 1em; }
</style></head><body>
<h1>Steering</h1>
<p><textarea id="prompt" rows="3">Today I went to the park and</textarea></p>
<p><label>mode <select id="mode"><option>direction</option><option>sae</option><option>clamp</option></select></label>
<label>new tokens <input id="tokens" type="number" min="1" max="256" value="48"></label>
<label>add latent <input id="extra" type="number" min="0" placeholder="index"></label>
<button id="go">Generate</button> <span id="status"></span></p>
<div class="row">
<div class="col"><h3>Latents (a non-zero value steers)</h3><input id="filter" placeholder="filter explanations">
<div id="latents"></div></div>
<div class="col"><h3>Unsteered</h3><div id="unsteered" class="out"></div>
<h3>Steered</h3><div id="steered" class="out"></div></div></div>
<script>
const $ = id => document.getElementById(id);
$("mode").value = "__MODE__";
function addRow(index, explanation) {
  const row = document.createElement("div");
  row.dataset.text = (index + " " + explanation).toLowerCase();
  row.innerHTML = '<input type="number" step="any" value="0" data-latent="' + index + '"> <b>' + index + "</b> ";
  row.appendChild(document.createTextNode(explanation));
  $("latents").appendChild(row);
}
fetch("/latents").then(r => r.json()).then(list => list.forEach(l => addRow(l.index, l.explanation)));
$("filter").oninput = () => { const f = $("filter").value.toLowerCase();
  for (const row of $("latents").children) row.style.display = row.dataset.text.includes(f) ? "" : "none"; };
$("extra").onchange = () => { if ($("extra").value !== "") addRow(Number($("extra").value), "(no explanation)"); };
$("go").onclick = async () => {
  const steers = [...document.querySelectorAll("[data-latent]")]
    .filter(i => Number(i.value) !== 0).map(i => [Number(i.dataset.latent), Number(i.value)]);
  $("status").textContent = "generating..."; $("status").className = "";
  const reply = await fetch("/generate", {method: "POST", body: JSON.stringify({prompt: $("prompt").value,
    steers, mode: $("mode").value, max_new_tokens: Number($("tokens").value)})});
  const data = await reply.json();
  if (!reply.ok) { $("status").textContent = data.error; $("status").className = "error"; return; }
  $("status").textContent = steers.length ? "" : "no latent has a non-zero value: both runs are the same";
  $("unsteered").textContent = data.unsteered; $("steered").textContent = data.steered;
};
</script></body></html>
"""


if __name__ == "__main__":
    cli.run_main(main)
