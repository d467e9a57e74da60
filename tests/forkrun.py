"""Run many short command lines of the project's scripts, each in its own process, a few at a time.

    python tests/forkrun.py CASES.json RESULTS.json [--parallel 4]

CASES.json: a list of {"id", "argv": ["capture.py", ...] or ["-m", "module", ...], "cwd",
"timeout"}. RESULTS.json: a list of {"id", "code", "stdout", "stderr", "seconds"}; code is -9 for a
case killed at its timeout.

Every case is a process of its own (its exit code, stdout and stderr are its alone), forked from this
one after the heavy modules (torch, numpy, the scripts' imports) are imported once: a case that fails at
argument validation then takes a fraction of a second instead of the seconds a fresh interpreter spends
importing torch. Nothing is computed with torch before forking (a forked OpenMP pool can hang).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = ("torch", "numpy", "cli", "paths", "startup", "capture", "train", "interpret", "generate", "serve",
           "pipeline", "prebatch", "convert", "llama", "sae.io", "latents.report")


def run_case(argv: list[str]) -> int:
    """In the forked child: run one command line as `python ARGV` would; returns the exit code."""
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runner = lambda: runpy.run_module(argv[1], run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        sys.argv = list(argv)
        runner = lambda: runpy.run_path(argv[0], run_name="__main__")  # noqa: E731
    try:
        runner()
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - printed as the interpreter would
        traceback.print_exc()
        return 1
    return 0


def start(case: dict, folder: Path) -> int:
    out, err = folder / f"{case['id']}.out", folder / f"{case['id']}.err"
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        os.chdir(case.get("cwd", ROOT))
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, path in ((1, out), (2, err)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
        code = run_case(case["argv"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    cases_file, results_file = Path(sys.argv[1]), Path(sys.argv[2])
    parallel = int(sys.argv[sys.argv.index("--parallel") + 1]) if "--parallel" in sys.argv else 4
    sys.path.insert(0, str(ROOT))
    for name in PRELOAD:  # only to save time: a case imports what is missing here itself
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    cases = json.loads(cases_file.read_text())
    folder = Path(tempfile.mkdtemp(prefix="forkrun-"))
    pending, running, results = list(cases), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            case = pending.pop(0)
            running[start(case, folder)] = (case, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for child, (case, began) in running.items():
                if now - began > case.get("timeout", 120):
                    try:
                        os.killpg(child, signal.SIGKILL)  # it and anything it started
                    except ProcessLookupError:  # gone already, to be reaped next
                        pass
            time.sleep(0.02)
            continue
        case, began = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        results[case["id"]] = {"id": case["id"], "code": code, "seconds": round(time.monotonic() - began, 2),
                               "stdout": (folder / f"{case['id']}.out").read_text(errors="replace"),
                               "stderr": (folder / f"{case['id']}.err").read_text(errors="replace")}
    results_file.write_text(json.dumps([results[c["id"]] for c in cases], indent=1))


if __name__ == "__main__":
    main()
