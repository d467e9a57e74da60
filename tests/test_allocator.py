"""training/allocator.py: after `keep_freed_memory`, a freed large block stays in the process for the next
allocation (its pages are not handed back to the kernel); without it glibc unmaps it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
sys.path.insert(0, {root!r})
import torch
from training.allocator import keep_freed_memory

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

applied = keep_freed_memory() if sys.argv[1] == "keep" else False
block = torch.ones(64 * 2 ** 18)  # 64 MiB, touched
before = rss_mib()
del block
print(applied, before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_large_block_stays_in_the_process_only_when_asked():
    released = {}
    for mode in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT)), mode], capture_output=True,
                             text=True, check=True).stdout.split()
        released[mode] = (out[0] == "True", float(out[1]))
    assert released["keep"][0], "mallopt was not applied"
    assert released["default"][1] > 48  # glibc unmapped the 64 MiB block on free
    assert released["keep"][1] < 16     # kept for the next step's allocation
