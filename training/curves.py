"""A page of training curves a person can open: one self-contained HTML file, charts as inline SVG.

No plotting library and no network: every chart is a polyline drawn from the metrics records, with
train and validation series on shared axes and a log scale where a quantity spans decades (the axis
says so). A train record holds the mean of the steps since the one before; the last one of a run
usually covers fewer steps (the run ends between two log steps), so it is merged into the one before
it rather than drawn as a jump of its own.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from atomic import write_text_atomic

# (metric key, title, log scale)
CHARTS = [
    ("mse", "MSE (normalised space)", True),
    ("nmse", "Normalised MSE", True),
    ("fvu", "Fraction of variance unexplained", True),
    ("l0", "L0 (active latents per activation)", False),
    ("dead_fraction", "Dead latents (fraction)", False),
    ("aux_mse", "Aux-k MSE", True),
    ("grad_norm", "Gradient norm (before clipping)", True),
    ("lr", "Learning rate", False),
    ("tokens_per_s", "Activations per second", False),
    ("decoder_cos", "Decoder rows: mean |cosine| off-diagonal", False),
]
# train figures that are means over the steps of a record's window (the others are the state at its step)
WINDOW_MEANS = ("loss", "mse", "nmse", "aux_mse", "fvu", "l0", "grad_norm")
COLOURS = {"train": "#1f77b4", "val": "#d62728"}
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 420, 240, 62, 12, 26, 34


def _series(records: list[dict], key: str) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.setdefault(r.get("split", "train"), []).append((float(r["step"]), float(value)))
    return out


def merge_partial_window(records: list[dict]) -> list[dict]:
    """The records with a last train record whose window (steps since the train record before it) is
    shorter than the window before merged into that one: window means weighted by steps, the activation
    rate over both windows, the state figures of the last step."""
    train = sorted((r for r in records if r.get("split", "train") == "train"), key=lambda r: r["step"])
    if len(train) < 2:
        return records
    a, b = train[-2], train[-1]
    wa, wb = a["step"] - (train[-3]["step"] if len(train) > 2 else 0), b["step"] - a["step"]
    if not 0 < wb < wa:
        return records
    merged = dict(b)
    for key in WINDOW_MEANS:
        if _number(a.get(key)) and _number(b.get(key)):
            merged[key] = (a[key] * wa + b[key] * wb) / (wa + wb)
    ra, rb = a.get("tokens_per_s"), b.get("tokens_per_s")
    if _number(ra) and _number(rb) and ra > 0 and rb > 0:  # the same batch each step: time adds up as w / rate
        merged["tokens_per_s"] = (wa + wb) / (wa / ra + wb / rb)
    return [merged if r is b else r for r in records if r is not a]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def tick_labels(values: list[float]) -> list[str]:
    """Labels of tick values, with as many significant digits as it takes (3 at least) for distinct
    values to read differently: a narrow range such as L0 from 31.94 to 32.0 would read "32" four times."""
    for digits in range(3, 16):
        labels = [f"{v:.{digits}g}" if v != 0 else "0" for v in values]
        if len(set(labels)) == len(set(values)):
            return labels
    return labels


def _chart(title: str, series: dict[str, list[tuple[float, float]]], log: bool) -> str:
    points = [p for s in series.values() for p in s]
    log = log and all(v > 0 for _, v in points)
    fy = (lambda v: math.log10(v)) if log else (lambda v: v)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(fy(p[1]) for p in points), max(fy(p[1]) for p in points)
    x1 = x1 if x1 > x0 else x0 + 1
    if y1 == y0:  # a constant series: centre it in a readable range (0 stays at the bottom)
        pad = 0.1 if log else (abs(y0) * 0.05 or 1.0)
        y0, y1 = (y0, y0 + pad) if y0 == 0 else (y0 - pad, y1 + pad)
    sx = lambda x: PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R)  # noqa: E731
    sy = lambda y: H - PAD_B - (y - y0) / (y1 - y0) * (H - PAD_T - PAD_B)  # noqa: E731
    parts = [f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{W / 2}" y="16" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" '
             f'fill="none" stroke="#999"/>']
    ys = [y0 + (y1 - y0) * i / 4 for i in range(5)]
    for y, label in zip(ys, tick_labels([10 ** y if log else y for y in ys])):  # grid lines with labels
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
                     f'<text x="{PAD_L - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{label}</text>')
    xs = [x0, (x0 + x1) / 2, x1]
    steps = [f"{x:.0f}" for x in xs]  # whole steps unless a run of a step or two makes them repeat
    for x, label in zip(xs, steps if len(set(steps)) == len(xs) else tick_labels(xs)):
        parts.append(f'<text x="{sx(x):.1f}" y="{H - PAD_B + 16}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{(W + PAD_L) / 2}" y="{H - 4}" text-anchor="middle">step</text>')
    if log:
        middle = (PAD_T + H - PAD_B) / 2
        parts.append(f'<text x="10" y="{middle:.1f}" text-anchor="middle" transform="rotate(-90 10 {middle:.1f})">'
                     f'(log scale)</text>')
    for split, pts in series.items():
        coords = " ".join(f"{sx(x):.1f},{sy(fy(v)):.1f}" for x, v in pts)
        colour = COLOURS.get(split, "#555")
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        if len(pts) == 1:
            parts.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(fy(pts[0][1])):.1f}" r="3" fill="{colour}"/>')
    parts.append("</svg>")
    return "".join(parts)


def render_curves(records: list[dict], title: str) -> str:
    """The HTML page for a list of metrics records."""
    records = merge_partial_window(records)
    charts = [_chart(name, series, log) for key, name, log in CHARTS if (series := _series(records, key))]
    legend = " ".join(f'<span style="color:{c}">&#9632; {s}</span>' for s, c in COLOURS.items())
    body = "\n".join(f'<div class="chart">{c}</div>' for c in charts) or "<p>No metrics yet.</p>"
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;font-size:12px;margin:16px}"
            ".chart{display:inline-block;margin:6px}svg text{font-size:11px}</style></head>"
            f"<body><h2>{html.escape(title)}</h2><p>{legend}</p>\n{body}\n</body></html>\n")


def write_curves(records: list[dict], path: Path, title: str = "SAE training curves") -> Path:
    """Write the page atomically; returns its path."""
    path = Path(path)
    write_text_atomic(path, render_curves(records, title))
    return path
