"""The reading order for a student, with each step's files and their line counts.

    python scripts/reading_order.py          # the table the README shows
    python scripts/reading_order.py --check  # exit 1 when the core reading path is over its budget

The core (steps marked *) is what a student reads to understand the model, its hook points, the SAE,
its loss, one training step and steering; its budget is CORE_LINES lines in at most CORE_FILES files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE_LINES, CORE_FILES = 900, 7

# (what the step teaches, its files, whether it is part of the core)
STEPS: list[tuple[str, list[str], bool]] = [
    ("the transformer: RMSNorm, rotary, attention, SwiGLU", ["llama/model.py"], True),
    ("hook points: taps and injections", ["llama/hooks.py"], True),
    ("the SAE's formula and decoder upkeep", ["sae/model.py"], True),
    ("the loss: reconstruction and aux-k", ["sae/loss.py"], True),
    ("one training step", ["training/step.py"], True),
    ("steering through latents", ["sae/steering.py"], True),
]


def count_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def table() -> tuple[list[str], int, int]:
    """The printed lines, the core's line count and its file count."""
    lines, core_lines, core_files = [], 0, 0
    for number, (what, files, core) in enumerate(STEPS, 1):
        counts = [(name, count_lines(ROOT / name)) for name in files]
        listed = ", ".join(f"{name} ({n})" for name, n in counts)
        lines.append(f"{number:2d}{'*' if core else ' '} {what}: {listed}")
        if core:
            core_lines += sum(n for _, n in counts)
            core_files += len(counts)
    lines.append(f"core (*): {core_lines} lines in {core_files} files (budget {CORE_LINES} in {CORE_FILES})")
    return lines, core_lines, core_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the core is over its budget")
    args = parser.parse_args(argv)
    lines, core_lines, core_files = table()
    print("\n".join(lines))
    if args.check and (core_lines > CORE_LINES or core_files > CORE_FILES):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
