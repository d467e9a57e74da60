"""Bookkeeping of a (possibly multi-process, possibly resumed) capture across its hook folders.

Each hook folder's `manifest.json` lists the committed shards, each with its files' sizes and sampled
checksums. Rank 0 rewrites it (atomically) after each of its shards; every other rank records its
committed shards in `progress-rank{R}.json`, and rank 0 merges these at the end and marks the manifest
complete. A shard is done when every hook folder records it, so a crash between two folders' commits
only redoes that shard (with identical bytes). When a capture starts again, rank 0 first checks every
committed shard's files against the manifests and forgets those that were damaged since, so that they
are captured again.
"""

from __future__ import annotations

from pathlib import Path

from atomic import write_json_atomic
from data.checked import check_shard_entries
from data.fileio import read_json, remove_quietly
from data.shards import FORMAT, VERSION, check_shard, read_manifest


class CaptureBook:
    """The manifests of one capture: `start`, `done()`, `commit(entry, checks)` (writer thread), `finalize()`.

    An entry is {"shard", "name", "rows", ..., "files": {hook: {part: {"bytes", "crc32_sampled"}}}};
    each hook's manifest holds its own `files`.
    """

    def __init__(self, folders: dict[str, Path], base: dict, rank: int = 0):
        self.folders = folders  # hook name -> folder
        self.rank = rank
        self.base = base        # manifest fields shared by all hooks except "hook" and "d_model"
        self.entries: dict[int, dict] = {}  # shard -> entry, known here

    def start(self, d_models: dict[str, int]) -> list[str]:
        """Load what earlier runs committed. Rank 0 verifies it, forgets damaged shards and (re)writes the
        manifests as incomplete; returns one line per damaged shard."""
        self.d_models = d_models
        self.entries = {e["shard"]: e for e in self._committed()}
        if self.rank != 0:
            return []
        damaged = []
        for number in sorted(self.entries):
            problems = self._problems(self.entries[number])
            if problems:
                del self.entries[number]
                damaged.append(f"shard {number:05d} is damaged ({'; '.join(problems)}): capturing it again")
        for hook, folder in self.folders.items():
            self._write_manifest(hook, complete=False)  # now holds what the progress files held
            for progress in folder.glob("progress-rank*.json"):
                remove_quietly(progress)
        return damaged

    def done(self) -> set[int]:
        return set(self.entries)

    def commit(self, entry: dict, checks: list[dict] | None = None) -> None:
        """Record a shard whose files are in place in every hook folder (`checks`: one per hook, in order)."""
        if checks is not None:
            entry = {**entry, "files": dict(zip(self.folders, checks))}
        self.entries[entry["shard"]] = entry
        if self.rank == 0:
            for hook in self.folders:
                self._write_manifest(hook, complete=False)
        else:
            mine = sorted((e for e in self.entries.values() if e.get("rank") == self.rank),
                          key=lambda e: e["shard"])
            for hook, folder in self.folders.items():
                write_json_atomic(folder / f"progress-rank{self.rank}.json",
                                  [{**self._for_hook(e, hook), "rank": self.rank} for e in mine])

    def finalize(self) -> int:
        """Rank 0, after every rank finished: merge progress, mark complete; returns total rows."""
        self.entries = {e["shard"]: e for e in self._committed()}
        for hook, folder in self.folders.items():
            self._write_manifest(hook, complete=True)
            for progress in folder.glob("progress-rank*.json"):
                remove_quietly(progress)
        return sum(e["rows"] for e in self.entries.values())

    def _problems(self, entry: dict) -> list[str]:
        """What is wrong with a shard's files in each hook folder (sizes; checksums where recorded)."""
        problems = []
        for hook, folder in self.folders.items():
            recorded = entry.get("files", {}).get(hook)
            problem = check_shard(folder, entry, self.d_models[hook], self.base["dtype"], recorded)
            if problem:
                problems.append(f"{hook}/{problem}" if len(self.folders) > 1 else problem)
        return problems

    def _committed(self) -> list[dict]:
        """Entries that every hook folder records (in its manifest or a rank's progress file)."""
        common = None
        for hook, folder in self.folders.items():
            found = {}
            if (folder / "manifest.json").is_file():
                found.update({e["shard"]: e for e in read_manifest(folder)["shards"]})
            for progress in sorted(folder.glob("progress-rank*.json")):
                entries = check_shard_entries(read_json(progress, "delete it and rerun"), progress)
                found.update({e["shard"]: e for e in entries})
            found = {k: _lift(e, hook) for k, e in found.items()}
            if common is None:
                common = found
            else:  # a shard counts when every folder has it; gather each folder's file checks
                common = {k: {**e, "files": {**e.get("files", {}), **found[k].get("files", {})}}
                          for k, e in common.items() if k in found}
        return list((common or {}).values())

    @staticmethod
    def _for_hook(entry: dict, hook: str) -> dict:
        """The entry as `hook`'s manifest stores it: its own files' checks, no rank."""
        stored = {k: v for k, v in entry.items() if k not in ("rank", "files")}
        if hook in entry.get("files", {}):
            stored["files"] = entry["files"][hook]
        return stored

    def _write_manifest(self, hook: str, complete: bool) -> None:
        shards = [self._for_hook(e, hook) for _, e in sorted(self.entries.items())]
        manifest = {"format": FORMAT, "version": VERSION, "hook": hook, "d_model": self.d_models[hook],
                    **self.base, "shards": shards, "total_rows": sum(e["rows"] for e in shards),
                    "complete": complete}
        write_json_atomic(self.folders[hook] / "manifest.json", manifest)


def _lift(stored: dict, hook: str) -> dict:
    """A stored entry (files of one hook) back into the book's form (files by hook)."""
    return {**stored, "files": {hook: stored["files"]}} if "files" in stored else dict(stored)
