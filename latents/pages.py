"""Static HTML pages to browse latents: no server, no external assets, every corpus string escaped.

`index.html`: the evaluation figures, a link to the training curves, and a table of latents that can
be sorted (click a column) and filtered (text box, minimum certainty) with a little inline JS.
`pages/<latent>.html`: one page per latent: explanations, activation histogram (inline SVG), logit
lens, label association, top contexts with each token shaded by its activation, top sentences.
"""

from __future__ import annotations

import math
import os
import re
from html import escape
from pathlib import Path

import paths
from atomic import write_text_atomic

LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x85\u2028\u2029]")  # rows a browser or a terminal would break
STEER_URL = f"http://127.0.0.1:{paths.SERVE_PORT}/"  # serve.py's page; serve.py makes it relative when it serves a page

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{cursor:pointer;background:#f4f4f4;user-select:none}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
.ctx i{font-style:normal;background:rgba(255,120,0,var(--a))}.ctx i.c{outline:1px solid #c40}
.muted{color:#777}h1 small{font-weight:normal;color:#777}"""

SORT_JS = """const t=document.getElementById('latents'),q=document.getElementById('q'),m=document.getElementById('minc'),
md=document.getElementById('mind');
function filter(){const s=q.value.toLowerCase(),c=parseFloat(m.value)||0,d=parseFloat(md.value)||0;
for(const r of t.tBodies[0].rows){r.hidden=!(r.textContent.toLowerCase().includes(s)&&
parseFloat(r.dataset.certainty||0)>=c&&parseFloat(r.dataset.detection||0)>=d);}}
q.addEventListener('input',filter);m.addEventListener('input',filter);md.addEventListener('input',filter);
for(const [i,h] of [...t.tHead.rows[0].cells].entries()){h.addEventListener('click',()=>{
const up=h.dataset.dir!=='asc';h.dataset.dir=up?'asc':'desc';const rows=[...t.tBodies[0].rows];
const key=r=>{const v=r.cells[i].dataset.v;return v===undefined?r.cells[i].textContent:parseFloat(v);};
rows.sort((a,b)=>{const x=key(a),y=key(b);return (x<y?-1:x>y?1:0)*(up?1:-1);});
for(const r of rows)t.tBodies[0].appendChild(r);});}"""


def _page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n{js}</body></html>\n")


def _num(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _cell(x, digits: int = 4) -> str:
    value = x if isinstance(x, (int, float)) and x is not None and math.isfinite(x) else -1e300
    return f"<td class='n' data-v='{value}'>{escape(_num(x, digits))}</td>"


def _write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def token_html(token: str) -> str:
    """A token as text: escaped, with line breaks and tabs made visible (a context stays on one row)."""
    return escape(LINE_BREAK.sub("↵", token).replace("\t", "⇥"))


def _groups(context: dict) -> list[tuple[str, float, bool]]:
    """(text, largest value, holds the centre) per shown piece: a token shown as "" (the first bytes
    of a character that the next token completes) joins the next one."""
    out, value, center = [], 0.0, False
    for i, (token, v) in enumerate(zip(context["tokens"], context["values"])):
        value, center = max(value, v), center or i == context["center"]
        if token or i == len(context["tokens"]) - 1:
            out.append((token, value, center))
            value, center = 0.0, False
    return out


def context_html(context: dict, scale: float) -> str:
    """Tokens of one context; each active one shaded by activation / scale, the centre outlined."""
    parts = []
    for token, value, center in _groups(context):
        alpha = min(1.0, max(0.0, value / scale)) if scale > 0 else 0.0
        cls = " class='c'" if center else ""
        if alpha > 0 or cls:
            parts.append(f"<i{cls} style='--a:{alpha:.2f}' title='{value:.3g}'>{token_html(token)}</i>")
        else:
            parts.append(token_html(token))
    return "".join(parts)


def histogram_svg(hist: dict, width: int = 560, height: int = 160) -> str:
    """Bars over log-spaced bins (edges from the evidence), as inline SVG: x ticks at five bin edges
    (activation, log scale), y axis = tokens per bin (linear count, 0 and its top value written)."""
    counts, edges = hist.get("counts", []), hist.get("edges", [])
    if not counts:
        return "<p class='muted'>never active</p>"
    left, bottom = 44, 34                                 # room for the y label and the x ticks
    plot_w, plot_h = width - left - 4, height - bottom - 8
    top, bar = max(counts), plot_w / len(counts)
    rects = "".join(f"<rect x='{left + i * bar:.1f}' y='{8 + plot_h - c / top * plot_h:.1f}' "
                    f"width='{max(bar - 1, 1):.1f}' height='{c / top * plot_h:.1f}' fill='#e67a00'>"
                    f"<title>{edges[i]:.3g} – {edges[i + 1]:.3g}: {c} tokens</title></rect>"
                    for i, c in enumerate(counts))
    ticks = sorted({round(i * len(counts) / 4) for i in range(5)})
    axis = "".join(f"<line x1='{left + t * bar:.1f}' x2='{left + t * bar:.1f}' y1='{8 + plot_h}' "
                   f"y2='{12 + plot_h}' stroke='#555'/><text x='{left + t * bar:.1f}' y='{24 + plot_h}' "
                   f"font-size='11' text-anchor='middle'>{edges[t]:.3g}</text>" for t in ticks)
    axis += (f"<line x1='{left}' x2='{width - 4}' y1='{8 + plot_h}' y2='{8 + plot_h}' stroke='#555'/>"
             f"<line x1='{left}' x2='{left}' y1='8' y2='{8 + plot_h}' stroke='#555'/>"
             f"<text x='{left - 4}' y='16' font-size='11' text-anchor='end'>{top}</text>"
             f"<text x='{left - 4}' y='{8 + plot_h}' font-size='11' text-anchor='end'>0</text>"
             f"<text x='12' y='{8 + plot_h / 2}' font-size='11' text-anchor='middle' "
             f"transform='rotate(-90 12 {8 + plot_h / 2})'>tokens per bin</text>"
             f"<text x='{left + plot_w / 2}' y='{height - 2}' font-size='11' text-anchor='middle'>"
             f"activation (log scale)</text>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
            f"aria-label='activation histogram'>{rects}{axis}</svg>")


def steer_range(record: dict) -> tuple[float, float] | None:
    """A value range worth sweeping for this latent: half to four times its largest activation (below
    it the push is within what the text already does), None for a latent that never fired."""
    top = float(record.get("max") or 0.0)
    return (float(f"{top / 2:.3g}"), float(f"{4 * top:.3g}")) if top > 0 else None


def steer_hint(record: dict) -> str:
    """The command that measures steering with this latent, and a link that opens the steering page
    (serve.py) with it and the same range."""
    j, span = record["latent"], steer_range(record)
    if span is None:
        return ""
    lo, hi, top = span[0], span[1], float(record["max"])
    link = f"{STEER_URL}?latent={j}&amp;lo={lo:g}&amp;hi={hi:g}&amp;steps=5&amp;value={top:.3g}"
    return (f"<p>Try steering it, measured (judge, perplexity, repetition per value): <code>python generate.py "
            f"--sweep {j}:{lo:g}:{hi:g}:5</code> <span class='muted'>(values in activation units; "
            f"its largest activation in the data is {top:.3g})</span>, or <a href='{link}'>open it on the "
            f"steering page</a> <span class='muted'>(with <code>python serve.py</code> running)</span></p>")


def _explanations_html(record: dict) -> str:
    rows = []
    for name in ("offline", "llm"):
        ex = record.get("explanations", {}).get(name)
        if ex:
            rows.append(f"<tr><th>{name}</th><td>{escape(ex['common_semantic'])}</td>"
                        f"<td class='n'>certainty {_num(ex.get('certainty'), 3)}</td></tr>")
    offline = (record.get("explanations", {}).get("offline") or {}).get("score")
    if offline:
        rows.append(f"<tr><th>offline score</th><td>as a classifier (fires exactly on the tokens it names), on "
                    f"{offline.get('tokens', 0)} held-out tokens: precision {_num(offline['precision'], 3)}, "
                    f"recall {_num(offline['recall'], 3)}</td><td class='n'>F1 {_num(offline['f1'], 3)}</td></tr>")
    score = record.get("detection")
    if score is not None:
        rows.append(f"<tr><th>detection</th><td>balanced accuracy of the LLM explanation</td>"
                    f"<td class='n'>{_num(score, 3)}</td></tr>")
    return f"<table>{''.join(rows)}</table>" if rows else "<p class='muted'>no explanation</p>"


def _lens_html(lens: dict) -> str:
    def column(pairs):
        return "<br>".join(f"<span class='ctx'>{token_html(t)}</span> <span class='muted'>{v:+.3g}</span>"
                           for t, v in pairs)
    return (f"<table><tr><th>promotes</th><th>suppresses</th></tr><tr><td>{column(lens.get('promoted', []))}"
            f"</td><td>{column(lens.get('suppressed', []))}</td></tr></table>")


def _labels_html(labels: list[dict]) -> str:
    if not labels:
        return "<p class='muted'>the corpus has no labels</p>"
    rows = "".join(f"<tr><td>{escape(str(lab['label']))}</td>{_cell(lab['auroc'], 3)}{_cell(lab['mean_diff'], 3)}</tr>"
                   for lab in labels)
    return f"<table><tr><th>label</th><th>AUROC</th><th>mean difference</th></tr>{rows}</table>"


def _sentences_html(items: list[dict], limit: int) -> str:
    rows = "".join(f"<tr>{_cell(s['value'], 3)}<td>{escape(str(s.get('label') or ''))}</td>"
                   f"<td>{token_html(s['text'])}</td></tr>" for s in items[:limit])
    return f"<table>{rows}</table>" if rows else "<p class='muted'>none</p>"


def latent_page(record: dict, *, n_contexts: int = 20, n_sentences: int = 20) -> str:
    """The HTML page of one latent from its record (evidence + explanations)."""
    j = record["latent"]
    contexts = record["contexts"][:n_contexts]
    scale = max([c["activation"] for c in contexts] + [0.0])
    ctx_rows = "".join(f"<tr>{_cell(c['activation'], 3)}<td class='ctx'>{context_html(c, scale)}</td></tr>"
                       for c in contexts)
    body = (f"<p><a href='../index.html'>all latents</a></p><h1>Latent {j} <small>density "
            f"{_num(record['density'], 3)} · mean when active {_num(record['mean_active'], 3)} · max "
            f"{_num(record['max'], 3)}</small></h1><h2>Explanation</h2>{_explanations_html(record)}"
            f"<h2>Activation histogram</h2>{histogram_svg(record['histogram'])}{steer_hint(record)}"
            f"<h2>Logit lens</h2>{_lens_html(record['logit_lens'])}"
            f"<h2>Label association</h2>{_labels_html(record['labels'])}"
            f"<h2>Top contexts</h2><table id='contexts'>{ctx_rows}</table>"
            f"<h2>Top sentences by mean activation</h2>{_sentences_html(record['top_sentences_mean'], n_sentences)}"
            f"<h2>Top sentences by last-token activation</h2>"
            f"{_sentences_html(record['top_sentences_last'], n_sentences)}")
    return _page(f"Latent {j}", body)


def _best_label(labels: list[dict]) -> tuple[str, float | None]:
    """("more in 'x'" or "less in 'x'", AUROC) for the label whose AUROC is furthest from 0.5: below
    0.5 the latent is less active on that label's text than on the others'."""
    known = [lab for lab in labels if lab.get("auroc") is not None]
    if not known:
        return "", None
    best = max(known, key=lambda lab: abs(lab["auroc"] - 0.5))
    direction = "more" if best["auroc"] >= 0.5 else "less"
    return f"{direction} in '{best['label']}'", best["auroc"]


def index_page(summaries: list[dict], evaluation: dict | None, curves_href: str | None, title: str,
               probes: dict | None = None) -> str:
    """The index: evaluation, curves link, sortable / filterable latent table. summaries: one dict per
    latent with latent, explanation, certainty, density, mean_active, max, labels, detection, page."""
    rows = []
    for s in summaries:
        label, auroc = _best_label(s.get("labels", []))
        rows.append(f"<tr data-certainty='{s.get('certainty') or 0}' data-detection='{s.get('detection') or 0}'>"
                    f"<td data-v='{s['latent']}'><a href='{escape(s['page'])}'>{s['latent']}</a></td>"
                    f"<td>{escape(s.get('explanation', ''))}</td>"
                    f"{_cell(s.get('certainty'), 3)}{_cell(s['density'], 3)}{_cell(s['mean_active'], 3)}"
                    f"{_cell(s['max'], 3)}<td>{escape(label)}</td>{_cell(auroc, 3)}{_cell(s.get('precision'), 3)}"
                    f"{_cell(s.get('recall'), 3)}{_cell(s.get('detection'), 3)}</tr>")
    evaluation_html = "<p class='muted'>no evaluation</p>"
    if evaluation:
        evaluation_html = "<table>" + "".join(f"<tr><th>{escape(k)}</th><td class='n'>{escape(_num(v, 5))}</td></tr>"
                                              for k, v in evaluation.items() if not isinstance(v, (dict, list))) + "</table>"
    curves = (f"<a href='{escape(curves_href)}'>training curves</a>" if curves_href
              else "<span class='muted'>no training curves found</span>")
    body = (f"<h1>{escape(title)}</h1><p>{curves}</p><h2>Evaluation on held-out text</h2>{evaluation_html}"
            f"<h2>Label probes</h2>{probes_html(probes)}"
            f"<h2>Latents ({len(summaries)})</h2><p><input id='q' placeholder='filter text' size='40'> "
            f"minimum certainty <input id='minc' type='number' min='0' max='1' step='0.05' value='0'> "
            f"minimum detection <input id='mind' type='number' min='0' max='1' step='0.05' value='0'></p>"
            f"<p class='muted'>precision, recall: the offline explanation as a classifier (the latent fires "
            f"exactly on the tokens it names) on tokens of documents the SAE's training held out; detection: "
            f"the LLM explanation's balanced accuracy where one was scored, else that F1. Click a column to "
            f"sort.</p><table id='latents'><thead><tr><th>latent</th><th>explanation</th><th>certainty</th>"
            f"<th>density</th><th>mean active</th><th>max</th><th>label</th><th>label AUROC</th>"
            f"<th>precision</th><th>recall</th><th>detection</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return _page(title, body, SORT_JS)


def probes_html(probes: dict | None) -> str:
    """The label probes: full probes on the raw activation beside k-sparse probes on SAE latents."""
    labels = (probes or {}).get("labels", {})
    if not labels:
        return "<p class='muted'>no label probes (the corpus has no labels)</p>"
    ks = list(next(iter(labels.values()))["sparse"])
    head = "".join(f"<th>k={escape(k)} latents</th>" for k in ks)
    rows = "".join(f"<tr><td>{escape(name)}</td>{_cell(e['full_mean'], 3)}{_cell(e['full_last'], 3)}"
                   + "".join(_cell(e["sparse"][k]["auroc"], 3) for k in ks) + "</tr>" for name, e in labels.items())
    return (f"<p class='muted'>test AUROC of each label against the others on {probes['test_sentences']} sentences "
            f"of held-out documents (probes trained on {probes['train_sentences']}): logistic regression on the "
            f"raw activation (sentence mean, last token) and on the k latents whose sentence-mean activation "
            f"differs most between the label and the rest on the training documents.</p><table><tr><th>label"
            f"</th><th>full probe, mean</th><th>full probe, last token</th>{head}</tr>{rows}</table>")


def write_site(folder: Path, records: list[dict], summaries: list[dict], evaluation: dict | None,
               curves: Path | None, title: str = "SAE latents", probes: dict | None = None) -> Path:
    """Write index.html and pages/<latent>.html into `folder`; returns the index path."""
    folder = Path(folder)
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    for record in records:
        _write(folder / "pages" / page_name(record["latent"]), latent_page(record))
    href = os.path.relpath(curves, folder) if curves is not None and Path(curves).is_file() else None
    _write(folder / "index.html", index_page(summaries, evaluation, href, title, probes))
    return folder / "index.html"


def page_name(latent: int) -> str:
    return f"{latent}.html"
