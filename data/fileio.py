"""Small file helpers shared by the writers: atomic JSON, chunked raw appends, cleanup on failure."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from atomic import open_atomic


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path.tmp`, flush it to disk, then rename over `path` (readers never see half)."""
    with open_atomic(path) as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")


def read_json(path: Path, what: str) -> Any:
    """Load JSON, with a one-line error naming the file when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: damaged JSON ({err.msg}, line {err.lineno}); {what}") from None


def append_array(f, array: np.ndarray, dtype: str) -> None:
    """Append `array` to an open binary file as raw bytes of `dtype` (e.g. '<f4', little-endian)."""
    np.ascontiguousarray(array, dtype=np.dtype(dtype)).tofile(f)


def remove_quietly(path: Path) -> None:
    """Delete a file if it exists (cleanup after a failed write; never raises)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def check_writable_folder(folder: Path, flag: str) -> Path:
    """Create `folder` if needed and prove it is writable, or raise a one-line error naming `flag`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a uniquely named probe: torchrun ranks check the same folder at the same moment
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"{flag} {folder}: cannot write there ({err.strerror}); "
                              f"choose another folder") from None
    return folder
