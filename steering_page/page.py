"""The HTML the server sends: the steering page itself (one file of HTML and JavaScript that calls the
JSON endpoints), and interpret.py's index.html and latent pages, served beside it."""

from __future__ import annotations

import re
from pathlib import Path

from latents.pages import STEER_URL


def steering_page(default_mode: str) -> bytes:
    """The page, with `default_mode` preselected."""
    return PAGE.replace("__MODE__", default_mode).encode()


def interpret_page(folder: Path | None, path: str) -> bytes | None:
    """interpret.py's index.html or pages/<latent>.html in `folder` for the URL path `path`, None when
    there is none; links to the steering page on the default port become links to this server."""
    if folder is None or not re.fullmatch(r"/index\.html|/pages/[0-9]{1,9}\.html", path):
        return None
    try:
        text = (folder / path[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text.replace(STEER_URL, "/").encode()


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

