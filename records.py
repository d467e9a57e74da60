"""Records that say a set of files is complete: written last, naming each file's size and hash and what
the files were made from.

A folder of several files (an SAE, a pipeline stage's outputs) is complete only when its record says so:
`write_record` hashes the files and writes the record atomically after every one of them, and `problems`
checks the files against it. A file up to 64 MiB is hashed whole (sha256); a larger one (activation
shards, a large SAE) by its size and a sha256 of sampled spans (the first and last MiB and 16 spans of
64 KiB between, as the model fingerprint does), so that a rerun verifies gigabytes in a moment and
still sees a truncated, regrown or rewritten file.

`identity(entries)` is a short hash of the files' entries: the same content gives the same identity
wherever it lies, which is what caches and later stages key on (never paths or modification times).

`replaced_folder` writes a whole folder beside the old one and swaps it in with renames (git's lock
files, torchtitan's checkpoint folders): a folder is the old one or the new one, never a mixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from atomic import fsync_quietly, write_json_atomic
from llama import jsonfile

RECORD_NAME = "complete.json"
FULL_HASH_LIMIT = 64 << 20
_SPAN, _ENDS = 1 << 16, 1 << 20
TRANSIENT_SUFFIXES = (".tmp", ".lock")  # files that come and go while a folder is in use


def file_entry(path: Path) -> dict[str, Any]:
    """{"bytes", "sha256"} of a file, or {"bytes", "sha256_sampled"} above FULL_HASH_LIMIT."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            return {"bytes": size, "sha256": digest.hexdigest()}
        for offset in [0, *(size * i // 17 for i in range(1, 17)), size - _ENDS]:
            fh.seek(offset)
            digest.update(fh.read(_ENDS if offset in (0, size - _ENDS) else _SPAN))
    return {"bytes": size, "sha256_sampled": digest.hexdigest()}


def files_under(root: Path, folders: Iterable[Path]) -> list[str]:
    """Every file below `folders` (paths relative to `root`, sorted), records and transients left out."""
    names = []
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file() and path.name != RECORD_NAME and not path.name.endswith(TRANSIENT_SUFFIXES):
                names.append(path.relative_to(root).as_posix())
    return sorted(names)


def entries(root: Path, names: Iterable[str]) -> dict[str, dict]:
    """{name: file_entry} of files named relative to `root`."""
    return {name: file_entry(Path(root) / name) for name in sorted(names)}


def identity(files: dict[str, dict]) -> str:
    """A short hash of the files' entries (names, sizes, hashes): equal content, equal identity."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def write_record(path: Path, root: Path, names: Iterable[str], **made_from: Any) -> dict:
    """Hash the files (named relative to `root`) and write the record to `path` atomically, last;
    `made_from` (settings, the inputs' identities) is stored with them. Returns the record."""
    files = entries(root, names)
    record = {"files": files, "identity": identity(files), **made_from}
    write_json_atomic(path, record)
    return record


def read_record(path: Path) -> dict | None:
    """The record at `path`; None when there is none or it cannot be read (so it proves nothing)."""
    record = read_json(path)
    return record if record is not None and isinstance(record.get("files"), dict) else None


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`; None when there is none or it cannot be read."""
    try:
        data = jsonfile.read_json(path)  # depth-checked: a record nested 100,000 deep is unreadable, not a traceback
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def problems(record: dict, root: Path) -> list[str]:
    """What differs between the files under `root` and `record` (missing, other size, other hash)."""
    found = []
    for name, expected in sorted(record["files"].items()):
        path = Path(root) / name
        if not path.is_file():
            found.append(f"{name} is missing")
            continue
        actual = file_entry(path) if path.stat().st_size == expected.get("bytes") else {}
        if not actual:
            found.append(f"{name} has {path.stat().st_size} bytes, the record says {expected.get('bytes')}")
        elif actual != expected:
            found.append(f"{name} differs from the record (its sha256)")
    return found


# ---- a folder replaced as one ---------------------------------------------------------------------

def _beside(folder: Path, suffix: str) -> Path:
    return folder.with_name(folder.name + suffix)


def recover(folder: Path) -> None:
    """Finish a swap that was cut short: the old folder set aside and no new one in its place comes
    back; an aside copy left after a finished swap is removed."""
    folder, aside = Path(folder), _beside(Path(folder), ".old")
    if not aside.exists():
        return
    if folder.exists():
        shutil.rmtree(aside, ignore_errors=True)
        return
    try:
        os.replace(aside, folder)
    except FileNotFoundError:
        pass  # another reader recovered it first


@contextmanager
def replaced_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `folder` to fill; on success it replaces `folder` (old one renamed
    aside, new one renamed in, old one removed), on failure it is removed and `folder` is untouched."""
    folder = Path(folder)
    recover(folder)
    new, aside = _beside(folder, ".new"), _beside(folder, ".old")
    shutil.rmtree(new, ignore_errors=True)  # left by a writer that was killed
    new.mkdir(parents=True)
    try:
        yield new
        for path in [*new.rglob("*"), new]:
            fsync_quietly(path)
    except BaseException as err:
        shutil.rmtree(new, ignore_errors=True)
        if isinstance(err, Exception):  # named in the one-line error cli.run_main prints (a full disk...)
            err.add_note(f"while writing {folder}")
        raise
    swap(new, folder, aside)


def swap(new: Path, folder: Path, aside: Path) -> None:
    """Rename `folder` to `aside`, `new` to `folder`, then remove `aside` (`recover` completes a swap
    cut short between the renames)."""
    had_old = folder.exists()
    if had_old:
        os.replace(folder, aside)
    try:
        os.replace(new, folder)
    except BaseException:
        if had_old:
            os.replace(aside, folder)
        shutil.rmtree(new, ignore_errors=True)
        raise
    fsync_quietly(folder.parent)
    shutil.rmtree(aside, ignore_errors=True)
