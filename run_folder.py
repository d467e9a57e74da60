"""One writer per output folder, and no write over what the project did not make.

Every script calls `claim(folder, KIND, flag)` where an output folder enters, before it writes there:
1. the folder's lock: an exclusive `flock` on `<folder>/.lock` (git's lock files and torchtitan's
   checkpoint folders do the same job). The kernel drops it when the process ends, however it ends, so
   a lock is never left stale; the file names the holder (pid, host, command) for the refusal. Where
   fcntl is missing, the file is created exclusively instead, and one whose process is gone is removed.
2. under the lock, the folder's contents: empty, or only entries its kind writes (`Kind.owns`), and no
   record of another kind (a capture's manifest, an SAE's config.json, a run's, ...). Anything else is
   refused in one line, and nothing there is touched.
A claim lasts until the function decorated `@releases_locks` that took it returns (or the process ends);
claiming a folder this process holds already is a no-op. `check_apart` refuses an output folder that is
an input, lies inside one or holds one.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from atomic import FILE_MODE

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"
ALWAYS_OWNED = (LOCK_NAME, ".write-test-*")  # the lock, and the probe of data.fileio.check_writable_folder


class FolderRefused(ValueError):
    """An output folder that another process is writing, or that holds what this script did not write."""


@dataclass(frozen=True)
class Kind:
    """A kind of folder the project writes: the entries it owns (shell patterns; `name.tmp` is owned with
    `name`), the subfolders it owns whole or as a kind of their own, and the record that marks it."""

    name: str                                       # in messages: "a capture"
    owns: tuple[str, ...]
    record: str = ""                                # the JSON file that says the folder is of this kind
    is_record: Callable[[Any], bool] = lambda data: False
    folders: dict[str, "Kind | None"] = field(default_factory=dict)  # pattern -> kind, None: owned whole

    def marks(self, folder: Path) -> bool:
        """Whether `folder` holds this kind's record."""
        path = folder / self.record
        if not self.record or not path.is_file():
            return False
        try:
            return bool(self.is_record(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            return False


def _keys(*names: str) -> Callable[[Any], bool]:
    return lambda data: isinstance(data, dict) and set(names) <= set(data)


CAPTURE = Kind("a capture", ("manifest.json", "sentences.jsonl", "capture_config.json", "progress-rank*.json",
                             "acts-*.bin", "tokens-*.bin", "index-*.bin"),
               "manifest.json", lambda d: isinstance(d, dict) and d.get("format") == "llama-sae-activations")
BATCHES = Kind("prebatched batches", ("batches.json", "stats.json", "train-*.bin", "val-*.bin", "w*-train-*.bin",
                                      "w*-val-*.bin", "rest-*.bin"),
               "batches.json", lambda d: isinstance(d, dict) and d.get("format") == "llama-sae-batches")
SAE = Kind("an SAE", ("config.json", "sae.safetensors"), "config.json", _keys("d_in", "d_sae", "activation"))
CHECKPOINTS = Kind("checkpoints", ("step-*.pt",))
TRAIN_RUN = Kind("a training run", ("config.json", "metrics.jsonl", "curves.html"), "config.json",
                 _keys("data", "out", "epochs", "resume"),
                 {"checkpoints": CHECKPOINTS, "sae": SAE, "tensorboard": None})
INTERPRETATION = Kind("an interpretation", ("config.json", "stats.safetensors", "stats-partial.safetensors",
                                            "stats.json", "probes.json", "evaluation.json", "index.html",
                                            "latent_index_meaning.json", "sweep-*.json"),
                      "config.json", _keys("sae", "capture_dir", "top_n"),
                      {"latents": None, "pages": None, "llm": None})
SAELENS = Kind("a SAELens SAE", ("cfg.json", "sae_weights.safetensors"))
SPARSIFY = Kind("a sparsify SAE", ("cfg.json", "sae.safetensors", "config.json"))
SPARSIFY.folders["*"] = SPARSIFY  # a run folder holds one folder per hookpoint
PIPELINE = Kind("a pipeline run", ("pipeline.json",), folders={"*": None})  # its stages check their own folders
KINDS = (CAPTURE, BATCHES, SAE, TRAIN_RUN, INTERPRETATION)  # recognised by their records


def _owned(name: str, patterns: tuple[str, ...]) -> bool:
    name = name.removesuffix(".tmp")
    return any(fnmatch.fnmatchcase(name, p) for p in patterns + ALWAYS_OWNED)


def strangers(folder: Path, kind: Kind) -> list[str]:
    """The entries of `folder` (and of the subfolders its kind owns as kinds) that `kind` does not write,
    as paths relative to `folder` (a folder with a trailing '/')."""
    found = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        if entry.is_dir() and not entry.is_symlink():
            name = entry.name.removesuffix(".tmp")  # a folder written whole under a temporary name
            kinds = [sub for pattern, sub in kind.folders.items() if fnmatch.fnmatchcase(name, pattern)]
            if not kinds:
                found.append(entry.name + "/")
            elif kinds[0] is not None:
                found += [f"{entry.name}/{inner}" for inner in strangers(entry, kinds[0])]
        elif not _owned(entry.name, kind.owns):
            found.append(entry.name)
    return found


def recognise(folder: Path) -> Kind | None:
    """The kind whose record `folder` holds, if any."""
    return next((kind for kind in KINDS if kind.marks(folder)), None)


def check_contents(folder: Path, kind: Kind, flag: str) -> None:
    """Refuse `folder` as `kind`'s output unless it is empty or holds only what `kind` writes."""
    folder = Path(folder)
    other = recognise(folder)
    if other is not None and other is not kind:
        raise FolderRefused(f"{flag} {folder}: holds {other.name} ({other.record}), which this command must not "
                            f"write over; choose another {flag}")
    if kind.record and (folder / kind.record).is_file() and not kind.marks(folder):
        raise FolderRefused(f"{flag} {folder}: its {kind.record} was not written by this project; move it away "
                            f"or choose another {flag}")
    found = strangers(folder, kind)
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise FolderRefused(f"{flag} {folder}: holds files this command did not write ({shown}); it writes "
                            f"{kind.name} only into an empty folder or one of its own: move them away or "
                            f"choose another {flag}")


def check_apart(out: str | Path, flag: str, inputs: dict[str, str | Path]) -> None:
    """Refuse an output folder that is one of `inputs` (flag -> path), lies inside one or holds one
    (symlinks resolved)."""
    target = Path(out).resolve()
    for in_flag, given in inputs.items():
        if not given:
            continue
        source = Path(given).resolve()
        how = ("is" if target == source else "lies inside" if source in target.parents else
               "holds" if target in source.parents else None)
        if how:
            noun = in_flag.strip("-").split("-")[0]  # --capture-dir: the capture folder
            raise FolderRefused(f"{flag} {out}: {how} {in_flag} {given}; an output folder must differ from the "
                                f"{noun} folder, and neither hold it nor lie inside it: choose another {flag}")


@dataclass
class FolderLock:
    """This process's lock on a folder (`fd` open on its lock file), and the folders made to hold it."""

    folder: Path
    fd: int
    made: list[Path]
    kind: Kind
    count: int = 1

    def release(self) -> None:
        """Give the lock up, removing its file (under flock while still locked, so that no one locks a file
        on its way out; without flock after closing it, as Windows requires), then the folders made for
        it that stayed empty."""
        if fcntl is None:
            os.close(self.fd)
        try:
            os.unlink(self.folder / LOCK_NAME)
        except OSError:
            pass
        if fcntl is not None:
            os.close(self.fd)
        _remove_made(self.made)


_held: dict[Path, FolderLock] = {}
_taken: list[Path] = []  # in claim order; `releases_locks` gives back those its call took


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
        raise FolderRefused(f"{flag} {folder}: a file is there, not a folder; choose another {flag}")
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FolderRefused(f"{flag} {folder}: cannot write there ({err.strerror}); choose another {flag}") from None
    return missing


def _refuse_busy(folder: Path, flag: str, raw: bytes, after: str = "") -> FolderRefused:
    return FolderRefused(f"{flag} {folder}: another llama-sae process ({_describe(raw)}) is writing it; wait for "
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


def claim(folder: str | Path, kind: Kind, flag: str) -> FolderLock:
    """Lock `folder` (created if missing) for this process and check it may hold `kind`'s output; a
    FolderRefused (one line naming `flag`) otherwise, with the folder as it was."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _held:
        if _held[key].kind is not kind:
            raise FolderRefused(f"{flag} {folder}: this command writes {_held[key].kind.name} there already; "
                                f"choose another {flag}")
        _held[key].count += 1
        _taken.append(key)
        return _held[key]
    made = _make_folder(folder, flag)
    try:
        fd = (_lock_flock if fcntl is not None else _lock_exclusive)(folder, flag)
    except BaseException:
        _remove_made(made)
        raise
    lock = FolderLock(folder, fd, made, kind)
    try:
        check_contents(folder, kind, flag)
    except BaseException:
        lock.release()
        raise
    _held[key] = lock
    _taken.append(key)
    return lock


def _remove_made(made: list[Path]) -> None:
    """Remove the folders a claim made (deepest first) while they are empty."""
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:
            break


def release_since(mark: int) -> None:
    """Give back the claims taken after the first `mark` ones."""
    while len(_taken) > mark:
        key = _taken.pop()
        lock = _held[key]
        lock.count -= 1
        if lock.count == 0:
            del _held[key]
            lock.release()


def releases_locks(fn: Callable) -> Callable:
    """Decorate a function that claims folders: the claims it takes are given back when it returns or
    raises."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        mark = len(_taken)
        try:
            return fn(*args, **kwargs)
        finally:
            release_since(mark)
    return wrapper
