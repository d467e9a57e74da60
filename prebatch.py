"""Prebatch captured activations: shuffled fixed-size training batches and their statistics.

    python prebatch.py                                       # runs/capture/<default hook> -> runs/batches/<hook>/
    python prebatch.py --capture runs/capture/blocks.20.hook_resid_post --workers 2

What it does, and the folder it writes, are described in `data.shuffle` and `data.batches`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

import cli
import paths
from data.fileio import disk_full_error
from data.shards import CapturedDataset
from data.shuffle import PrebatchConfig, prebatch

RERUN = "the capture is untouched and the unfinished batches were removed: rerun the same command"


@dataclass
class PrebatchCommand(PrebatchConfig):
    capture: str = field(default="", metadata={"help": "capture folder (default: runs/capture/<default hook>)"})
    out: str = field(default="", metadata={"help": "output folder (default: runs/batches/<hook>)"})


def main() -> None:
    args, _ = cli.parse_config(PrebatchCommand, description=__doc__.split("\n\n")[0])
    capture = Path(args.capture) if args.capture else paths.DEFAULT_CAPTURE_DIR / paths.DEFAULT_HOOK
    if capture.exists() and not capture.is_dir():
        raise NotADirectoryError(f"--capture {capture}: a file, not a capture folder; pass the folder that "
                                 f"holds manifest.json")
    hook = CapturedDataset(capture).hook
    out = Path(args.out) if args.out else paths.DEFAULT_BATCHES_DIR / hook
    cfg = PrebatchConfig(**{f: getattr(args, f) for f in PrebatchConfig.__dataclass_fields__})
    try:
        with tqdm(unit="B", unit_scale=True, desc="prebatch") as bar:
            meta = prebatch(capture, out, cfg, on_progress=bar.update)
    except KeyboardInterrupt:
        print(f"interrupted: {RERUN} to prebatch again", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as err:
        raise disk_full_error(err, out, "--out", f"{RERUN} once there is space") from None
    print(f"{meta['n_train']} train + {meta['n_val']} val batches of {cfg.batch_size} "
          f"(+ {meta['remainders']['train']['rows']} / {meta['remainders']['val']['rows']} remainder rows) "
          f"in {out}", file=sys.stderr)


if __name__ == "__main__":
    cli.run_main(main)
