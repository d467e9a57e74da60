"""cli.py: dataclass flags (nested ones flat), --config files checked field by field, and run_main's one
line for every user-facing error, chained ones and a full disk included."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import cli
from atomic import disk_full, open_atomic


@dataclass
class Inner:
    k: int = 32
    d_sae: int = 4096
    activation: str = field(default="topk", metadata={"choices": ["topk", "relu"]})

    def __post_init__(self):
        if self.k > self.d_sae:
            raise ValueError(f"--k {self.k} must not exceed --d-sae {self.d_sae}")


@dataclass
class Outer:
    out: str = "runs/x"
    lr: float = 1e-3
    layers: list[int] = field(default_factory=lambda: [1, 2])
    limit: int | None = None
    verbose: bool = False
    sae: Inner = field(default_factory=Inner)


def parse(argv: list[str], tmp_path: Path | None = None, config=None) -> tuple[Outer, set[str]]:
    if config is not None:
        (tmp_path / "c.json").write_text(config if isinstance(config, str) else json.dumps(config))
        argv = [*argv, "--config", str(tmp_path / "c.json")]
    cfg, namespace = cli.parse_config(Outer, "test", argv)
    return cfg, cli.explicit_fields(namespace)


def test_nested_fields_are_flat_flags():
    cfg, explicit = parse(["--k", "8", "--lr", "0.5", "--layers", "3", "4", "--verbose"])
    assert cfg == Outer(lr=0.5, layers=[3, 4], verbose=True, sae=Inner(k=8))
    assert explicit == {"k", "lr", "layers", "verbose"}
    assert parse([])[0] == Outer()  # backwards compatible: defaults untouched


def test_nested_and_flat_config_forms_are_the_same(tmp_path):
    flat, explicit = parse([], tmp_path, {"k": 8, "d_sae": 64, "lr": 1})
    nested, _ = parse([], tmp_path, {"sae": {"k": 8, "d_sae": 64}, "lr": 1})
    assert flat == nested == Outer(lr=1.0, sae=Inner(k=8, d_sae=64)) and explicit == {"k", "d_sae", "lr"}
    assert isinstance(flat.lr, float)
    assert parse(["--k", "16"], tmp_path, {"sae": {"k": 8}})[0].sae.k == 16  # flags override the file


def test_dataclass_checks_run_on_the_nested_config():
    with pytest.raises(ValueError, match="--k 64 must not exceed --d-sae 32"):
        parse(["--k", "64", "--d-sae", "32"])


@pytest.mark.parametrize("config, message", [
    ({"k": "32"}, "field 'k' (--k) must be a whole number, got \"32\" (a string)"),
    ({"k": 3.5}, "field 'k' (--k) must be a whole number, got 3.5 (a number)"),
    ({"k": True}, "field 'k' (--k) must be a whole number, got true (a boolean)"),
    ({"layers": 3}, "field 'layers' (--layers) must be a list of whole numbers, got 3 (a whole number)"),
    ({"layers": ["a"]}, "field 'layers' (--layers) must be a list of whole numbers"),
    ({"lr": "fast"}, "field 'lr' (--lr) must be a number"),
    ({"verbose": "yes"}, "field 'verbose' (--verbose) must be true or false"),
    ({"out": 5}, "field 'out' (--out) must be a string, got 5"),
    ({"limit": "x"}, "field 'limit' (--limit) must be a whole number or null"),
    ({"activation": "gelu"}, "field 'activation' (--activation): 'gelu' is not one of topk, relu"),
    ({"sae": 5}, "field 'sae' must be an object of its fields, got a whole number"),
    ({"sae": {"kk": 1}}, "unknown field(s) kk in sae"),
    ({"nope": 1}, "unknown field(s) nope"),
    ([1, 2], "must be a JSON object of field values, like {\"k\": 32}; got a list"),
    ("{oops", "not valid JSON (Expecting property name enclosed in double quotes, line 1)"),
    ("[" * 100_000, "not valid JSON"),
])
def test_wrong_config_values_name_the_field_and_type(tmp_path, config, message):
    with pytest.raises(cli.UsageError) as info:
        parse([], tmp_path, json.dumps(config) if not isinstance(config, str) else config)
    assert message in str(info.value) and str(info.value).startswith("--config ")
    assert "\n" not in str(info.value)


def test_config_that_is_a_folder_or_missing(tmp_path):
    with pytest.raises(cli.UsageError, match="is a folder; pass a JSON file"):
        cli.parse_config(Outer, "test", ["--config", str(tmp_path)])
    with pytest.raises(cli.UsageError, match="no such file"):
        cli.parse_config(Outer, "test", ["--config", str(tmp_path / "none.json")])


def test_none_is_accepted_where_optional():
    assert cli.build(Outer, {"limit": None}).limit is None


def run(main, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        cli.run_main(main)
    return info.value.code, capsys.readouterr().err


def raiser(err: BaseException):
    def main():
        raise err
    return main


def test_disk_full_says_so_names_the_file_and_flag(tmp_path, capsys):
    cli.parse_config(Outer, "test", ["--out", str(tmp_path / "run")])
    target = tmp_path / "run" / "step-1.pt"
    code, err = run(raiser(OSError(errno.ENOSPC, "No space left on device", str(target))), capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: the disk is full writing {target} (given with --out)")
    assert "nothing already written was lost" in err and "rerun resumes" in err


@pytest.mark.parametrize("make", [
    lambda: OSError("176832 requested and 163840 written"),  # numpy's tofile on a full disk
    lambda: RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing "
                         "file data/0: file write failed"),  # torch.save
])
def test_disk_full_in_other_words_and_chained(capsys, make):
    def main():
        try:
            raise make()
        except Exception:
            raise RuntimeError("unexpected pos 64 vs 0")  # raised while cleaning up, as torch does
    code, err = run(main, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: the disk is full") and "Traceback" not in err


def test_disk_full_is_found_anywhere_in_the_chain():
    quota = OSError(errno.EDQUOT, "Disk quota exceeded", "f.bin")
    try:
        try:
            raise quota
        except OSError:
            raise RuntimeError("unexpected pos 64 vs 0")  # torch's zip writer, while cleaning up
    except RuntimeError as err:
        assert disk_full(err) is quota
    worded = disk_full(RuntimeError("failed writing file data/0: file write failed"))
    assert worded.errno == errno.ENOSPC and "file write failed" in worded.strerror and worded.filename is None
    assert disk_full(PermissionError(errno.EACCES, "Permission denied")) is None and disk_full(None) is None


def test_os_errors_name_the_flag_and_what_to_do(tmp_path, capsys):
    cli.parse_config(Outer, "test", ["--out", str(tmp_path / "run")])
    path = str(tmp_path / "run")
    code, err = run(raiser(IsADirectoryError(errno.EISDIR, "Is a directory", path)), capsys)
    assert code == 2 and err == (f"error: {path} (given with --out): is a folder, and a file is expected there; "
                                 f"pass a file path\n")
    code, err = run(raiser(FileExistsError(errno.EEXIST, "File exists", path)), capsys)
    assert code == 2 and "already exists and is in the way" in err and "(given with --out)" in err
    assert "Errno" not in err


def test_a_user_error_raised_from_another_is_one_line(capsys):
    def main():
        try:
            raise KeyError("x")
        except KeyError as inner:
            raise RuntimeError("wrapped") from ValueError("--k 0: must be at least 1")
    code, err = run(main, capsys)
    assert (code, err) == (2, "error: --k 0: must be at least 1\n")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        cli.run_main(lambda: 1 / 0)


def test_interrupted_says_a_rerun_resumes(capsys):
    code, err = run(raiser(KeyboardInterrupt()), capsys)
    assert code == 130 and "rerun the same command to resume" in err and err.count("\n") == 1


def test_disk_full_inside_the_atomic_writer_names_the_target(tmp_path, capsys):
    target = tmp_path / "acts-00001.bin"

    def main():
        with open_atomic(target, "wb"):
            raise OSError("176832 requested and 163840 written")  # numpy's tofile, errno-less
    code, err = run(main, capsys)
    assert code == 2 and err.startswith(f"error: the disk is full writing {target}:") and not target.exists()


def test_out_of_memory_is_one_line(capsys):
    import torch

    def main():
        torch.empty(1 << 62, dtype=torch.uint8)  # 4 EiB: refused at once
    code, err = run(main, capsys)
    assert code == 2 and err.startswith("error: out of memory (") and err.count("\n") == 1
