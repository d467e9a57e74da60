"""Typed checks of the JSON records data/ reads back: a capture's manifest.json, a batches folder's
batches.json and stats.json. The project writes these files itself, but a reader trusts them with
sizes, counts and file names, so a damaged or hand-edited one is refused in one line naming the file
and the field (`shards[0].rows`) before any of its values is used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

SPLITS = ("train", "val")


def _fail(source: Path, key: str, expected: str, value: Any) -> None:
    raise ValueError(f"{source}: {key} must be {expected}, got {value!r}")


def whole(source: Path, key: str, value: Any, lowest: int = 0) -> int:
    """An integer >= lowest (not a bool, not 4.0, not "4")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        _fail(source, key, f"a whole number >= {lowest}", value)
    return value


def finite(value: Any, lowest: float = -math.inf) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= lowest


def obj(source: Path, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        _fail(source, key, "an object", value)
    return value


def objects(source: Path, key: str, value: Any) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        _fail(source, key, "a list of objects", value)
    return value


def file_name(source: Path, key: str, value: Any) -> str:
    """A plain file name: the record may only point inside its own folder."""
    if not isinstance(value, str) or not value or Path(value).name != value or value in (".", ".."):
        _fail(source, key, "a file name in the folder", value)
    return value


def check_manifest(manifest: dict, source: Path, dtypes: Iterable[str]) -> dict:
    """The fields of a capture manifest that readers use (data/shards.py), typed."""
    if not isinstance(manifest.get("hook"), str):
        _fail(source, "hook", "a string", manifest.get("hook"))
    whole(source, "d_model", manifest.get("d_model"), 1)
    if manifest.get("dtype") not in tuple(dtypes):
        _fail(source, "dtype", f"one of {', '.join(dtypes)}", manifest.get("dtype"))
    check_shard_entries(manifest.get("shards"), source, "shards")
    labels = manifest.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        _fail(source, "labels", "a list of strings", labels)
    prefix = manifest.get("context_prefix") or []
    if not isinstance(prefix, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                               for t in prefix):
        _fail(source, "context_prefix", "a list of token ids", prefix)
    return manifest


def check_shard_entries(entries: Any, source: Path, key: str = "") -> list[dict]:
    """A list of committed shards, each with a `shard` number and its `rows` (a manifest's `shards`, or
    a whole progress file)."""
    for i, entry in enumerate(objects(source, key or "the file", entries)):
        whole(source, f"{key}[{i}].shard", entry.get("shard"))
        whole(source, f"{key}[{i}].rows", entry.get("rows"))
    return entries


def check_batches_meta(meta: dict, source: Path) -> dict:
    """The fields of batches.json that readers use (data/batches.py), typed."""
    whole(source, "batch_size", meta.get("batch_size"), 1)
    whole(source, "d_model", meta.get("d_model"), 1)
    files = obj(source, "files", meta.get("files"))
    remainders = obj(source, "remainders", meta.get("remainders"))
    for split in SPLITS:
        for i, entry in enumerate(objects(source, f"files.{split}", files.get(split))):
            file_name(source, f"files.{split}[{i}].name", entry.get("name"))
            whole(source, f"files.{split}[{i}].batches", entry.get("batches"))
        remainder = obj(source, f"remainders.{split}", remainders.get(split))
        file_name(source, f"remainders.{split}.name", remainder.get("name"))
        whole(source, f"remainders.{split}.rows", remainder.get("rows"))
    return meta


def check_stats(stats: dict, source: Path, d_model: int) -> dict:
    """stats.json's per-split statistics: a count, a finite mean of d_model numbers and a finite
    mean squared norm (the normalisation a trainer derives from them)."""
    for split in SPLITS:
        record = obj(source, split, stats.get(split))
        whole(source, f"{split}.count", record.get("count"))
        mean = record.get("mean")
        if not isinstance(mean, list) or len(mean) != d_model or not all(finite(v) for v in mean):
            _fail(source, f"{split}.mean", f"a list of {d_model} finite numbers (d_model)", _short(mean))
        if not finite(record.get("mean_sq_norm"), 0):
            _fail(source, f"{split}.mean_sq_norm", "a finite number >= 0", record.get("mean_sq_norm"))
    return stats


def _short(value: Any) -> Any:
    """A long list shown by its first items (an error line stays short)."""
    return value[:4] + ["..."] if isinstance(value, list) and len(value) > 4 else value
