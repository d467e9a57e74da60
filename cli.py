"""Command-line plumbing shared by the four scripts (capture, train, interpret, generate).

Each script describes its options as a dataclass; `parse_config` builds an argparse parser from the
fields (help text lives in `field(metadata={"help": ...})`), optionally layered over a JSON config
file, and `run_main` turns user errors into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

from atomic import write_text_atomic

T = TypeVar("T")


class UsageError(ValueError):
    """A mistake in what the user asked for; shown as one line, exit code 2."""


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    kind = hints[field.name]
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        kind = args[0]  # Optional[X] -> X
        origin = typing.get_origin(kind)
        args = list(typing.get_args(kind))
    return kind, origin, args


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--flag-name` per dataclass field; defaults stay None so config files can layer."""
    for field in dataclasses.fields(cls):
        if field.metadata.get("cli") is False:
            continue
        kind, origin, args = _field_type(cls, field)
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        if default not in (None, "", [], ()):
            help_text = f"{help_text} (default: {default})"
        options: dict[str, Any] = {"dest": field.name, "default": None, "help": help_text}
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        if kind is bool:
            options.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        elif origin in (list, tuple):
            options.update(type=args[0] if args else str, nargs="+")
        elif kind in (int, float, str, Path):
            options["type"] = kind
        else:
            options["type"] = str
        parser.add_argument(flag, **options)


def config_from_args(cls: type[T], namespace: argparse.Namespace, config_file: str | None = None) -> T:
    """Defaults, then the JSON config file, then flags given on the command line."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if config_file:
        path = Path(config_file)
        try:
            loaded = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"--config {path}: no such file") from None
        except json.JSONDecodeError as err:
            raise UsageError(f"--config {path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise UsageError(f"--config {path}: unknown field(s) {', '.join(unknown)}")
        values.update(loaded)
    for name in names:
        given = getattr(namespace, name, None)
        if given is not None:
            values[name] = given
    return cls(**values)


def parse_config(cls: type[T], description: str, argv: list[str] | None = None,
                 extend: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[T, argparse.Namespace]:
    """Parse argv into an instance of the dataclass `cls` (and the raw namespace, for extra flags)."""
    # Defaults are written into each flag's help by add_dataclass_arguments (argparse's own defaults
    # are None so that config files can layer), hence the plain formatter.
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="JSON file of field values; flags given here override it")
    add_dataclass_arguments(parser, cls)
    if extend is not None:
        extend(parser)
    namespace = parser.parse_args(argv)
    try:
        return config_from_args(cls, namespace, namespace.config), namespace
    except TypeError as err:  # a config file value of the wrong kind
        raise UsageError(str(err)) from None


def save_config(config: Any, path: Path) -> None:
    """Write a dataclass as JSON, atomically (temporary file, then rename)."""
    write_text_atomic(path, json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main; user-facing errors become one line on stderr and exit code 2."""
    try:
        result = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # disk full, unwritable folder, ...
        print(f"error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)
