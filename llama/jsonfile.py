"""The one reader of JSON files, whether the project wrote them (manifests, batches.json, SAE configs) or
a user handed them over (checkpoint configs): every failure is one line naming the file.

Python's json parser recurses once per nesting level, so text nested thousands deep raises RecursionError
from inside the parser; the depth is therefore measured first, without recursion, and refused past
MAX_DEPTH. No file the project reads nests more than a handful of levels.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from pathlib import Path
from typing import Any

MAX_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)  # a JSON string literal, escapes included
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_KINDS = {dict: "a JSON object", list: "a JSON list", str: "a string", bool: "true or false",
          int: "a whole number", float: "a number", type(None): "null"}


def json_depth(text: str) -> int:
    """How deep brackets nest in JSON text (brackets inside strings do not count); linear, no recursion."""
    if text.count("[") + text.count("{") <= 1:
        return int("[" in text or "{" in text)
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0)


def kind_of(value: Any) -> str:
    """What a JSON value is, in words ("a JSON list", "a string"...), for error messages."""
    return next((name for kind, name in _KINDS.items() if isinstance(value, kind)), type(value).__name__)


def parse_json(text: str, source: str | Path, what: str = "", *, expect: type | None = None) -> Any:
    """The value of JSON `text` read from `source`; a one-line ValueError naming it otherwise (invalid,
    nested deeper than MAX_DEPTH, or not of type `expect`). `what` says what to do about it."""
    advice = f"; {what}" if what else ""
    if text.count("[") + text.count("{") > MAX_DEPTH and json_depth(text) > MAX_DEPTH:  # the scan only when it may be
        raise ValueError(f"{source}: JSON nested more than {MAX_DEPTH} levels deep{advice}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not valid JSON ({err.msg}, line {err.lineno}){advice}") from None
    if expect is not None and (not isinstance(value, expect) or (expect is int and isinstance(value, bool))):
        raise ValueError(f"{source}: expected {_KINDS.get(expect, expect.__name__)}, got {kind_of(value)}{advice}")
    return value


def read_json(path: str | Path, what: str = "", *, expect: type | None = None) -> Any:
    """The JSON value in the file `path` (see `parse_json`); one-line errors naming the file when it is
    missing, a folder, not UTF-8 text, not JSON, nested too deep or not of type `expect`."""
    path = Path(path)
    advice = f"; {what}" if what else ""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'a folder, not a file' if path.is_dir() else 'not found'}{advice}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text, so not JSON{advice}") from None
    return parse_json(text, path, what, expect=expect)
