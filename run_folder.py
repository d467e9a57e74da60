"""One writer per output folder, and no write over what the project did not make.

Every script calls `claim(folder, KIND, flag)` where an output folder enters, before it writes there:
1. the folder's lock (`folder_lock`: one process at a time, never left stale by a dead one);
2. under the lock, the folder's contents: empty, or only entries its kind writes (`Kind.owns`), and no
   record of another kind (a capture's manifest, an SAE's config.json, a run's, ...). Anything else is
   refused in one line, and nothing there is touched.
A claim lasts until the function decorated `@releases_locks` that took it returns (or the process ends);
claiming a folder this process holds already is a no-op. `check_apart` refuses an output folder that is
an input, lies inside one or holds one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from folder_lock import LOCK_NAME, CannotLock, FolderLock, lock_folder

ALWAYS_OWNED = (LOCK_NAME, ".write-test-*")  # the lock, and the probe of data.fileio.check_writable_folder
FOLDER_SUFFIXES = ("tmp", "new", "old")  # of a folder written whole under another name, or set aside


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
SAE = Kind("an SAE", ("config.json", "sae.safetensors", "complete.json"), "config.json", _keys("d_in", "d_sae", "activation"))
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


def _unsuffixed(name: str) -> str:
    """A folder's name without the suffix of one being swapped in or out (records.replaced_folder)."""
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and suffix in FOLDER_SUFFIXES else name


@functools.lru_cache(maxsize=None)
def _pattern(patterns: tuple[str, ...]) -> re.Pattern:
    """One regular expression for a kind's file patterns (a capture folder holds thousands of shards)."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns + ALWAYS_OWNED))


def _owned(name: str, patterns: tuple[str, ...]) -> bool:
    return _pattern(patterns).match(name.removesuffix(".tmp")) is not None


def strangers(folder: Path, kind: Kind) -> list[str]:
    """The entries of `folder` (and of the subfolders its kind owns as kinds) that `kind` does not write,
    as paths relative to `folder` (a folder with a trailing '/')."""
    found = []
    with os.scandir(folder) if Path(folder).is_dir() else contextlib.nullcontext([]) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir():  # a link to a folder is a folder (a run may share another run's capture)
                name = _unsuffixed(entry.name)  # a folder written whole beside its place, or set aside
                kinds = [sub for pattern, sub in kind.folders.items() if fnmatch.fnmatchcase(name, pattern)]
                if not kinds:
                    found.append(entry.name + "/")
                elif kinds[0] is not None:
                    found += [f"{entry.name}/{inner}" for inner in strangers(Path(entry.path), kinds[0])]
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
class Claim:
    """A folder this process holds as `kind`'s output, claimed `count` times."""

    lock: FolderLock
    kind: Kind
    count: int = 1


_held: dict[Path, Claim] = {}
_taken: list[Path] = []  # in claim order; `releases_locks` gives back those its call took


def claim(folder: str | Path, kind: Kind, flag: str) -> None:
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
        return
    try:
        lock = lock_folder(folder, flag)
    except CannotLock as err:
        raise FolderRefused(str(err)) from None
    try:
        check_contents(folder, kind, flag)
    except BaseException:
        lock.release()
        raise
    _held[key] = Claim(lock, kind)
    _taken.append(key)


def release_since(mark: int) -> None:
    """Give back the claims taken after the first `mark` ones."""
    while len(_taken) > mark:
        key = _taken.pop()
        held = _held[key]
        held.count -= 1
        if held.count == 0:
            del _held[key]
            held.lock.release()


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
