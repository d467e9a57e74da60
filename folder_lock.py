"""An exclusive lock on a folder, held by one process at a time, that a dead process never leaves behind.

`lock_folder(folder, flag)` takes an exclusive `flock` on `<folder>/.lock` (as git's lock files and
torchtitan's checkpoint folders keep one writer to a folder). The kernel drops it when the process ends,
however it ends, so a lock is never stale; the file names its holder (pid, host, command) for the
refusal. Where fcntl is missing (Windows) the file is created exclusively instead, and one left by a
process that is gone is taken over. `release()` removes the file and the folders made for it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from atomic import FILE_MODE

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"


class CannotLock(ValueError):
    """Another process holds the folder's lock, or no folder can be made there; one line naming the flag."""


@dataclass
class FolderLock:
    """This process's lock on a folder (`fd` open on its lock file), and the folders made to hold it."""

    folder: Path
    fd: int
    made: list[Path]
    pid: int = field(default_factory=os.getpid)

    def release(self) -> None:
        """Give the lock up, removing its file (under flock while still locked, so that no one locks a file
        on its way out; without flock after closing it, as Windows requires), then the folders made for
        it that stayed empty."""
        if os.getpid() != self.pid:  # a forked child closes its copy; the lock stays its parent's
            os.close(self.fd)
            return
        if fcntl is None:
            os.close(self.fd)
        try:
            os.unlink(self.folder / LOCK_NAME)
        except OSError:
            pass
        if fcntl is not None:
            os.close(self.fd)
        _remove_made(self.made)


def _holder_record() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "command": " ".join(["python", *sys.argv])[:200]}).encode()


def _describe(raw: bytes) -> str:
    try:
        who = json.loads(raw.decode())
        return f"pid {who['pid']} on {who['host']}: {who['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet said which"


def _make_folder(folder: Path, flag: str) -> list[Path]:
    """Create `folder` and any missing parents; returns those created, deepest first."""
    if folder.exists() and not folder.is_dir():
        raise CannotLock(f"{flag} {folder}: a file is there, not a folder; choose another {flag}")
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CannotLock(f"{flag} {folder}: cannot write there ({err.strerror}); choose another {flag}") from None
    return missing


def _refuse_busy(folder: Path, flag: str, raw: bytes, after: str = "") -> CannotLock:
    return CannotLock(f"{flag} {folder}: another llama-sae process ({_describe(raw)}) is writing it; wait for "
                         f"it to finish or choose another {flag}{after}")


def _lock_flock(folder: Path, flag: str) -> int:
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 4096, 0)
            os.close(fd)
            raise _refuse_busy(folder, flag, raw) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it between our open and our lock: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_record(), 0)
    return fd


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # signal 0 would be CTRL_C_EVENT on Windows: a lock is stale only once its file goes
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def _lock_exclusive(folder: Path, flag: str) -> int:
    """Without fcntl: create the lock file exclusively; one left by a process that is gone is removed."""
    path = folder / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            raw = path.read_bytes() if path.is_file() else b""
            try:
                who = json.loads(raw.decode())
                stale = who["host"] == socket.gethostname() and not _alive(int(who["pid"]))
            except (ValueError, KeyError, TypeError):
                stale = False
            if not stale:
                raise _refuse_busy(folder, flag, raw, f" (if it has ended, delete {path})") from None
            path.unlink(missing_ok=True)
            continue
        os.write(fd, _holder_record())
        return fd
    raise _refuse_busy(folder, flag, b"")


def lock_folder(folder: Path, flag: str) -> FolderLock:
    """Create `folder` if missing and lock it for this process; CannotLock naming `flag` and the holder
    when another process holds it (and the folders made for it are removed again)."""
    made = _make_folder(folder, flag)
    try:
        fd = (_lock_flock if fcntl is not None else _lock_exclusive)(folder, flag)
    except BaseException:
        _remove_made(made)
        raise
    return FolderLock(folder, fd, made)


def _remove_made(made: list[Path]) -> None:
    """Remove the folders made for a lock (deepest first) while they are empty."""
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:
            break
