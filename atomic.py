"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Write to a temporary name beside the target, then `os.replace` it over the target (atomic on POSIX
and Windows within one filesystem); on any failure the temporary file is removed.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # what open() gives a new file under this process's umask (0644 for umask 022)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)  # one mode for every file written (some writers create theirs 0600)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception):  # named in the one-line error cli.run_main prints (a full disk...)
            err.add_note(f"while writing {path}")
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def open_atomic(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file to write; on success it is flushed to disk (fsync) and renamed over `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
