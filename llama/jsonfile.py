"""The one reader of JSON files, whether the project wrote them (manifests, batches.json, SAE configs) or
a user handed them over (checkpoint configs): every failure is one line naming the file.

Python's json parser recurses once per nesting level, so text nested thousands deep raises RecursionError
from inside the parser; the depth is therefore measured first, without recursion, and refused past
MAX_DEPTH. No file the project reads nests more than a handful of levels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

MAX_DEPTH = 64
_ESCAPE = re.compile(r"\\.", re.DOTALL)  # a backslash and the character it escapes (inside strings only)
_STRING = re.compile(rb'"[^"]*"')  # a string, once its escapes are gone
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')  # every UTF-8 byte but these five
_STEP = bytes.maketrans(b'[{]}"', bytes([2, 2, 0, 0, 1]))  # opening +1, closing -1, a stray quote 0 (minus 1)
_KINDS = {dict: "a JSON object", list: "a JSON list", str: "a string", bool: "true or false",
          int: "a whole number", float: "a number", type(None): "null"}


def json_depth(text: str) -> int:
    """How deep brackets nest in JSON text (brackets inside strings do not count): escapes removed,
    then everything but brackets and quotes, then the strings, then a running sum: linear, no recursion."""
    structure = _ESCAPE.sub("", text).encode("utf-8", "surrogatepass").translate(None, _NOT_STRUCTURE)
    steps = np.frombuffer(_STRING.sub(b"", structure).translate(_STEP), np.int8) - 1
    return max(0, int(np.cumsum(steps, dtype=np.int64).max())) if steps.size else 0


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
