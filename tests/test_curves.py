"""The training curves page: tick labels that read differently, no cliff from a short last log window,
log axes that say so."""

from __future__ import annotations

import re

import pytest

from training.curves import merge_partial_window, render_curves, tick_labels


def chart(page: str, title: str) -> str:
    return next(svg for svg in page.split("<svg")[1:] if title in svg)


def y_labels(svg: str) -> list[str]:
    return re.findall(r'<text x="[^"]*" y="[^"]*" text-anchor="end">([^<]*)</text>', svg)


def polyline(svg: str) -> list[tuple[float, float]]:
    points = re.search(r'<polyline points="([^"]*)"', svg).group(1)
    return [tuple(map(float, p.split(","))) for p in points.split()]


def test_l0_ticks_are_distinct_on_a_narrow_range():
    values = [31.94, 31.96, 31.99, 32.0]
    page = render_curves([{"step": 10 * (i + 1), "split": "train", "l0": v} for i, v in enumerate(values)], "t")
    labels = y_labels(chart(page, "L0"))
    assert len(labels) == 5 and len(set(labels)) == 5, labels
    for i, label in enumerate(labels):  # each label reads as its tick: 31.94 + i * 0.015, within half a step
        assert float(label) == pytest.approx(31.94 + i * 0.015, abs=0.0075)


def test_tick_labels_keep_three_digits_when_they_suffice():
    assert tick_labels([0.0, 0.25, 0.5]) == ["0", "0.25", "0.5"]
    assert tick_labels([1000.0, 1000.5, 1001.0]) == ["1000", "1000.5", "1001"]
    assert tick_labels([2.0, 2.0001]) == ["2", "2.0001"]


def test_short_last_window_is_merged_not_drawn_as_a_cliff():
    records = [{"step": s, "split": "train", "fvu": 0.1, "lr": 1.0, "tokens_per_s": 100.0} for s in range(20, 441, 20)]
    records.append({"step": 441, "split": "train", "fvu": 0.9, "lr": 0.5, "tokens_per_s": 50.0})
    records.append({"step": 441, "split": "val", "fvu": 0.2})
    merged = merge_partial_window(records)
    train = [r for r in merged if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(20, 421, 20)) + [441]  # the record at 440 is folded in
    assert train[-1]["fvu"] == pytest.approx((0.1 * 20 + 0.9 * 1) / 21)  # mean over the 21 steps
    assert train[-1]["lr"] == 0.5  # the state at the last step
    assert train[-1]["tokens_per_s"] == pytest.approx(21 / (20 / 100 + 1 / 50))  # 21 steps over their time
    assert merged[-1] == {"step": 441, "split": "val", "fvu": 0.2}
    line = polyline(chart(render_curves(records, "t"), "variance unexplained"))
    assert len(line) == 22  # train: 21 windows drawn; val is its own single point
    assert merge_partial_window(records[:-2]) == records[:-2]  # equal windows: nothing merged


def test_log_axes_say_so():
    records = [{"step": s, "split": "train", "mse": 10.0 ** -s, "l0": 8.0 + s, "fvu": 0.5 - 0.1 * s}
               for s in range(1, 6)]  # fvu reaches 0: no log scale possible there
    page = render_curves(records, "t")
    assert "(log scale)" in chart(page, "MSE (normalised")
    assert "(log scale)" not in chart(page, "L0") and "(log scale)" not in chart(page, "variance unexplained")
