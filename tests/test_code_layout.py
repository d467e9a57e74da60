"""The code's shape, held where a reader would notice it drift: the core's line budget (as
scripts/reading_order.py prints it), no class over 150 lines outside the tokenizers, and the project's
own modules imported at the top of each file, bar a few local imports that each say why."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import reading_order  # noqa: E402  (a script, found through the path above)

PROJECT_PACKAGES = {"llama", "sae", "data", "latents", "training", "steering_page"}
LOCAL_IMPORT_LIMIT = 10
CLASS_LINE_LIMIT = 150


def project_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    names = tracked.stdout.split() if tracked.returncode == 0 else []
    if not names:  # not a git checkout: every Python file below the root
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    return [ROOT / n for n in names if not n.startswith(("tests/", "bench/", ".venv"))]


def project_modules() -> set[str]:
    return PROJECT_PACKAGES | {p.stem for p in ROOT.glob("*.py")}


def test_the_core_fits_its_budget():
    lines, core_lines, core_files = reading_order.table()
    for _, files, _ in reading_order.STEPS:
        for name in files:
            assert (ROOT / name).is_file(), f"reading_order.py names {name}, which does not exist"
    assert core_lines <= reading_order.CORE_LINES and core_files <= reading_order.CORE_FILES, lines[-1]


def test_the_readme_shows_the_reading_order_as_the_script_prints_it():
    lines, _, _ = reading_order.table()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n".join(lines) in readme, "rerun python scripts/reading_order.py and paste its table into the README"


def test_no_class_is_over_the_limit():
    long = []
    for path in project_files():
        if "tokenizers" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > CLASS_LINE_LIMIT:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_own_modules_are_imported_at_the_top_bar_a_few_that_say_why():
    own, local = project_modules(), []
    for path in project_files():
        source = path.read_text(encoding="utf-8")
        text = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    names = [a.name for a in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.level == 0:
                    names = [inner.module or ""]
                else:
                    continue
                if any(n.split(".")[0] in own for n in names):
                    said = "#" in text[inner.lineno - 1] or text[inner.lineno - 2].strip().startswith("#")
                    local.append((f"{path.relative_to(ROOT)}:{inner.lineno}", said))
    assert all(said for _, said in local), [where for where, said in local if not said]
    assert len(local) < LOCAL_IMPORT_LIMIT, [where for where, _ in local]
