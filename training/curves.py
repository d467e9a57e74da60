"""A page of training curves a person can open: one self-contained HTML file, charts as inline SVG.

No plotting library and no network: every chart is a polyline drawn from the metrics records, with
train and validation series on shared axes and a log scale where a quantity spans decades.
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
COLOURS = {"train": "#1f77b4", "val": "#d62728"}
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 420, 240, 62, 12, 26, 34


def _series(records: list[dict], key: str) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.setdefault(r.get("split", "train"), []).append((float(r["step"]), float(value)))
    return out


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value != 0 else "0"


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
    for i in range(5):  # horizontal grid lines with labels
        y = y0 + (y1 - y0) * i / 4
        label = _fmt(10 ** y if log else y)
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
                     f'<text x="{PAD_L - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{label}</text>')
    for x in (x0, (x0 + x1) / 2, x1):
        parts.append(f'<text x="{sx(x):.1f}" y="{H - PAD_B + 16}" text-anchor="middle">{x:.0f}</text>')
    parts.append(f'<text x="{(W + PAD_L) / 2}" y="{H - 4}" text-anchor="middle">step</text>')
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
