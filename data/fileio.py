"""Small file helpers shared by the writers: JSON reads, raw appends, sampled checksums, cleanup,
and the one-line messages for an unwritable folder or a full disk."""

from __future__ import annotations

import errno
import os
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from atomic import disk_full
from llama.jsonfile import read_json  # noqa: F401  (data/'s JSON reads go through the project's one reader)

# A sampled checksum reads SAMPLE_BLOCKS blocks of SAMPLE_BYTES spread over a file (the whole file when
# it is smaller): about 2 MiB per file, so verifying a capture of many GB takes seconds, and it still
# catches a truncated, zero-filled or overwritten file wherever the damage covers a sampled block.
SAMPLE_BLOCKS = 32
SAMPLE_BYTES = 1 << 16


def raw_bytes(array: np.ndarray, dtype: str) -> np.ndarray:
    """`array` as a contiguous array of `dtype` (e.g. '<f4', little-endian): the bytes that go to disk."""
    return np.ascontiguousarray(array, dtype=np.dtype(dtype))


def append_array(f, array: np.ndarray, dtype: str) -> None:
    """Append `array` to an open binary file as raw bytes of `dtype`.

    A plain `write` (not numpy's `tofile`, whose short write loses errno): a full disk raises
    OSError(ENOSPC).
    """
    raw = raw_bytes(array, dtype)
    if raw.size:
        f.write(memoryview(raw.reshape(-1)).cast("B"))


def _sample_spans(size: int) -> list[tuple[int, int]]:
    if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
        return [(0, size)]
    step = (size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
    return [(round(i * step), SAMPLE_BYTES) for i in range(SAMPLE_BLOCKS)]


def _sampled_crc32(read: Callable[[int, int], bytes], size: int) -> int:
    crc = zlib.crc32(size.to_bytes(8, "little"))
    for start, length in _sample_spans(size):
        crc = zlib.crc32(read(start, length), crc)
    return crc


def array_check(raw: np.ndarray) -> dict:
    """{"bytes", "crc32_sampled"} of the bytes `raw` (from `raw_bytes`) puts on disk."""
    data = memoryview(raw.reshape(-1)).cast("B") if raw.size else memoryview(b"")
    return {"bytes": len(data), "crc32_sampled": _sampled_crc32(lambda s, n: data[s:s + n], len(data))}


def file_check(path: Path) -> dict:
    """{"bytes", "crc32_sampled"} of a file, comparable with `array_check` of what was written."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size

        def read(start: int, length: int) -> bytes:
            f.seek(start)
            return f.read(length)

        return {"bytes": size, "crc32_sampled": _sampled_crc32(read, size)}


def remove_quietly(path: Path) -> None:
    """Delete a file if it exists (cleanup after a failed write; never raises)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def check_writable_folder(folder: Path, flag: str) -> Path:
    """Create `folder` if needed and prove it is writable, or raise a one-line error naming `flag`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{flag} {folder}: a file is there, not a folder; choose another {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a uniquely named probe: torchrun ranks check the same folder at the same moment
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"{flag} {folder}: cannot write there ({err.strerror}); "
                              f"choose another {flag}") from None
    return folder


class DiskFull(OSError):
    """A full disk, explained in one line (where, and what a rerun does)."""


def disk_full_error(err: OSError, folder: Path, flag: str, after: str) -> OSError:
    """One line for a full disk (as `atomic.disk_full` recognises it): where, and what a rerun does
    (`after`). Other errors, and a full disk explained already, pass through."""
    if isinstance(err, DiskFull) or disk_full(err) is None:
        return err
    return DiskFull(errno.ENOSPC, f"the disk is full while writing into {flag} {folder}; {after}")


def check_no_folders_in_the_way(folder: Path, flag: str) -> None:
    """Refuse a folder where a writer will put a file (renaming a file over it fails with EISDIR)."""
    for child in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if child.suffix in (".bin", ".json", ".jsonl", ".tmp") and child.is_dir():
            raise IsADirectoryError(f"{flag} {folder}: {child.name} is a folder where a file goes; remove it "
                                    f"or choose another {flag}")
