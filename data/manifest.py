"""Bookkeeping of a (possibly multi-process, possibly resumed) capture across its hook folders.

Each hook folder's `manifest.json` lists the committed shards. Rank 0 rewrites it (atomically) after
each of its shards; every other rank records its committed shards in `progress-rank{R}.json`, and
rank 0 merges these at the end and marks the manifest complete. A shard is done when every hook folder
records it, so a crash between two folders' commits only redoes that shard (with identical bytes).
"""

from __future__ import annotations

from pathlib import Path

from data.fileio import read_json, remove_quietly, write_json_atomic
from data.shards import FORMAT, VERSION


class CaptureBook:
    """The manifests of one capture: `done()`, `commit(entry)` (writer thread), `finalize()`."""

    def __init__(self, folders: dict[str, Path], base: dict, rank: int = 0):
        self.folders = folders  # hook name -> folder
        self.rank = rank
        self.base = base        # manifest fields shared by all hooks except "hook" and "d_model"
        self.entries: dict[int, dict] = {}  # shard -> {"shard", "name", "rows", ...} known here

    def start(self, d_models: dict[str, int]) -> None:
        """Load what earlier runs committed; rank 0 (re)writes the manifests as incomplete."""
        self.d_models = d_models
        self.entries = {e["shard"]: e for e in self._committed()}
        if self.rank == 0:
            for hook in self.folders:
                self._write_manifest(hook, complete=False)

    def done(self) -> set[int]:
        return set(self.entries)

    def commit(self, entry: dict) -> None:
        """Record a shard whose files are in place in every hook folder."""
        self.entries[entry["shard"]] = entry
        if self.rank == 0:
            for hook in self.folders:
                self._write_manifest(hook, complete=False)
        else:
            mine = sorted((e for e in self.entries.values() if e.get("rank") == self.rank),
                          key=lambda e: e["shard"])
            for folder in self.folders.values():
                write_json_atomic(folder / f"progress-rank{self.rank}.json", mine)

    def finalize(self) -> int:
        """Rank 0, after every rank finished: merge progress, mark complete; returns total rows."""
        self.entries = {e["shard"]: e for e in self._committed()}
        for hook, folder in self.folders.items():
            self._write_manifest(hook, complete=True)
            for progress in folder.glob("progress-rank*.json"):
                remove_quietly(progress)
        return sum(e["rows"] for e in self.entries.values())

    def _committed(self) -> list[dict]:
        """Entries that every hook folder records (in its manifest or a rank's progress file)."""
        common = None
        for folder in self.folders.values():
            found = {}
            if (folder / "manifest.json").is_file():
                found.update({e["shard"]: e for e in read_json(folder / "manifest.json", "rerun the capture")["shards"]})
            for progress in sorted(folder.glob("progress-rank*.json")):
                found.update({e["shard"]: e for e in read_json(progress, "delete it and rerun")})
            common = found if common is None else {k: v for k, v in common.items() if k in found}
        return list((common or {}).values())

    def _write_manifest(self, hook: str, complete: bool) -> None:
        shards = sorted(self.entries.values(), key=lambda e: e["shard"])
        shards = [{k: v for k, v in e.items() if k != "rank"} for e in shards]
        manifest = {"format": FORMAT, "version": VERSION, "hook": hook, "d_model": self.d_models[hook],
                    **self.base, "shards": shards, "total_rows": sum(e["rows"] for e in shards),
                    "complete": complete}
        write_json_atomic(self.folders[hook] / "manifest.json", manifest)
