"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Write to a temporary name beside the target, flush it to disk, then `os.replace` it over the target
(atomic on POSIX and Windows within one filesystem); on any failure the temporary file is removed.
Every file gets the permissions a plain `open()` would give it (0644 under the usual umask), whatever
created the temporary file (safetensors, for one, creates its files 0600).

`disk_full(err)` recognises a full disk behind any error a write raised: the one test for it that
every script uses.
"""

from __future__ import annotations

import errno
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import, while no other thread creates files
FILE_MODE = 0o666 & ~_UMASK

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over the quota, past the size limit
# numpy's tofile and torch.save report a short write in words, without an errno
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written|file write failed|No space left on device")


def disk_full(err: BaseException | None) -> OSError | None:
    """The OSError saying the disk is full (ENOSPC, EDQUOT or EFBIG) anywhere in `err`'s chain (what it
    was raised from, and what it was raised while handling: torch.save's zip writer raises a RuntimeError
    while handling the OSError), else None. A short write that the chain reports only in words (numpy,
    torch) gives a new OSError(ENOSPC) with that message (and the file name, where it had one)."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in _FULL:
            return e
    worded = next((e for e in chain if _SHORT_WRITE.search(str(e))), None)
    if worded is None:
        return None
    return OSError(errno.ENOSPC, str(worded).strip().splitlines()[0], getattr(worded, "filename", None))


def temporary_name(path: str | Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_quietly(path: Path) -> None:
    """Flush a file or folder to disk (a folder: make a rename in it durable); a no-op where it cannot
    be opened (folders on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Give `tmp` the usual permissions, flush it to disk and rename it over `path`."""
    os.chmod(tmp, FILE_MODE)
    _fsync(tmp)
    os.replace(tmp, path)
    fsync_quietly(path.parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception):  # named in the one-line error cli.run_main prints (a full disk...)
            err.add_note(f"while writing {path}")
        raise


@contextmanager
def open_atomic(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file to write; on success it is flushed to disk and renamed over `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    with open_atomic(path) as f:
        f.write(text)


def write_json_atomic(path: str | Path, data: Any, indent: int = 1, **options: Any) -> None:
    """Write `data` as JSON (UTF-8, a final newline) to `path` atomically; `options` go to json.dumps."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False, **options) + "\n")


class AtomicFile:
    """A file written over many calls (`.file`), that appears under its name only at `commit()`.

    `abort()` (or an exception inside a `with` block) removes what was written.
    """

    def __init__(self, path: str | Path, mode: str = "wb"):
        self.path = Path(path)
        self.tmp = temporary_name(self.path)
        self.file: IO = open(self.tmp, mode)

    def commit(self) -> Path:
        try:
            self.file.close()
            commit(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        try:
            self.file.close()  # may fail again flushing what is buffered (a full disk): nothing to keep
        except OSError:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()
