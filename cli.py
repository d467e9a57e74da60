"""Command-line plumbing shared by the scripts (capture, train, interpret, generate, serve, pipeline...).

Each script describes its options as a dataclass; `parse_config` builds an argparse parser from the
fields (help text lives in `field(metadata={"help": ...})`), optionally layered over a JSON config
file, and `run_main` turns user errors into one line on stderr and exit code 2.

A field whose type is itself a dataclass is nested: its fields become flags of their own, flat on the
command line (`--k`, not `--sae.k`), and a `--config` file may give them flat (`{"k": 32}`) or nested
(`{"sae": {"k": 32}}`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import types
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, TypeVar

from atomic import disk_full, write_text_atomic
from settings import SettingError

T = TypeVar("T")

# flag -> value of the last parsed command line, so that an OSError's file can be traced to its flag
_last_flags: dict[str, Any] = {}


class UsageError(ValueError):
    """A mistake in what the user asked for; shown as one line, exit code 2."""


class Leaf(NamedTuple):
    """A field that takes a value (not a nested dataclass), with where it sits."""

    path: tuple[str, ...]     # field names from the top dataclass down, e.g. ("sae", "k")
    field: dataclasses.Field
    kind: Any                 # the type, Optional unwrapped: int, list[int], Path...
    optional: bool            # None is allowed

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """Optional[X] / X | None -> (X, True); anything else -> (kind, False)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def leaves(cls: type) -> list[Leaf]:
    """The fields of `cls` that take values, those of nested dataclass fields included, in order."""
    found: list[Leaf] = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        kind, optional = _unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(kind):
            found += [leaf._replace(path=(field.name, *leaf.path)) for leaf in leaves(kind)]
        else:
            found.append(Leaf((field.name,), field, kind, optional))
    names = [leaf.name for leaf in found]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise TypeError(f"{cls.__name__}: nested fields share the flag name(s) {', '.join(clashes)}")
    return found


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--flag-name` per field (nested ones flat); defaults stay None so config files can layer."""
    for leaf in leaves(cls):
        if leaf.field.metadata.get("cli") is False:
            continue
        kind, origin, args = leaf.kind, typing.get_origin(leaf.kind), typing.get_args(leaf.kind)
        help_text = leaf.field.metadata.get("help", "")
        default = _field_default(leaf.field)
        if default not in (None, "", [], ()):
            help_text = f"{help_text} (default: {default})"
        options: dict[str, Any] = {"dest": leaf.name, "default": None, "help": help_text}
        if "choices" in leaf.field.metadata:
            options["choices"] = leaf.field.metadata["choices"]
        if kind is bool:
            options.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        elif origin in (list, tuple):
            options.update(type=args[0] if args and args[0] in (int, float, str, Path) else str, nargs="+")
        elif kind in (int, float, str, Path):
            options["type"] = kind
        else:
            options["type"] = str
        parser.add_argument(leaf.flag, **options)


_EXPECTED = {bool: ("true or false", "booleans"), int: ("a whole number", "whole numbers"),
             float: ("a number", "numbers"), str: ("a string", "strings"), Path: ("a path (a string)", "paths")}


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (list, tuple):
        return f"a list of {_EXPECTED[args[0]][1] if args and args[0] in _EXPECTED else 'values'}"
    return _EXPECTED[kind][0] if kind in _EXPECTED else getattr(kind, "__name__", str(kind))


def _matches(kind: Any, value: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (str, Path):
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, list) and (not args or all(_matches(args[0], item) for item in value))
    return True  # a type the command line does not describe: its dataclass checks it


def _convert(leaf: Leaf, value: Any) -> Any:
    """A JSON value checked against its field's type, as the field holds it (tuple, Path, float)."""
    if value is None and leaf.optional:
        return None
    if not _matches(leaf.kind, value):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise UsageError(f"field {leaf.name!r} ({leaf.flag}) must be {_describe(leaf.kind)}"
                         f"{' or null' if leaf.optional else ''}, got {shown} ({_json_kind(value)})")
    choices = leaf.field.metadata.get("choices")
    if choices and value not in choices:
        raise UsageError(f"field {leaf.name!r} ({leaf.flag}): {value!r} is not one of {', '.join(map(str, choices))}")
    origin = typing.get_origin(leaf.kind)
    if origin is tuple:
        return tuple(value)
    if leaf.kind is Path:
        return Path(value)
    if leaf.kind is float:
        return float(value)
    return value


def _json_kind(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "a whole number"), (float, "a number"), (str, "a string"),
                       (list, "a list"), (dict, "an object"), (type(None), "null")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def read_config_file(cls: type, config_file: str | Path) -> dict[str, Any]:
    """A JSON config file -> {leaf name: value}, flat, each value checked against its field's type.
    Nested dataclass fields may be given flat or as an object of their fields."""
    path = Path(config_file)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path}: is a folder; pass a JSON file of field values") from None
    except PermissionError:
        raise UsageError(f"--config {path}: permission denied; pass a file you can read") from None
    except UnicodeDecodeError:
        raise UsageError(f"--config {path}: not UTF-8 text; pass a JSON file of field values") from None
    except (json.JSONDecodeError, RecursionError) as err:
        detail = f"{err.msg}, line {err.lineno}" if isinstance(err, json.JSONDecodeError) else "nested too deep"
        raise UsageError(f"--config {path}: not valid JSON ({detail})") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path}: must be a JSON object of field values, like {{\"k\": 32}}; "
                         f"got {_json_kind(loaded)}")
    try:
        return _flatten(cls, loaded, ())
    except UsageError as err:
        raise UsageError(f"--config {path}: {err}") from None


def _flatten(cls: type, loaded: dict[str, Any], where: tuple[str, ...]) -> dict[str, Any]:
    by_name = {leaf.name: leaf for leaf in leaves(cls)}
    nested = {f.name: _unwrap_optional(typing.get_type_hints(cls)[f.name])[0] for f in dataclasses.fields(cls)}
    nested = {name: kind for name, kind in nested.items() if dataclasses.is_dataclass(kind)}
    values: dict[str, Any] = {}
    unknown = sorted(set(loaded) - set(by_name) - set(nested))
    if unknown:
        raise UsageError(f"unknown field(s) {', '.join(unknown)}{' in ' + '.'.join(where) if where else ''}")
    for name, value in loaded.items():
        if name in nested:
            if not isinstance(value, dict):
                raise UsageError(f"field {name!r} must be an object of its fields, got {_json_kind(value)}")
            values.update(_flatten(nested[name], value, (*where, name)))
        else:
            values[name] = _convert(by_name[name], value)
    return values


def config_from_args(cls: type[T], namespace: argparse.Namespace, config_file: str | None = None) -> T:
    """Defaults, then the JSON config file, then flags given on the command line."""
    values = read_config_file(cls, config_file) if config_file else {}
    return build(cls, {**values, **_given_flags(cls, namespace)})


def _given_flags(cls: type, namespace: argparse.Namespace) -> dict[str, Any]:
    return {leaf.name: getattr(namespace, leaf.name) for leaf in leaves(cls)
            if getattr(namespace, leaf.name, None) is not None}


def build(cls: type[T], values: dict[str, Any], base: Any = None) -> T:
    """An instance of `cls` from flat {leaf name: value}, over `base` (an instance) or the defaults.
    A nested dataclass is rebuilt only when one of its leaves is given (over the field's default)."""
    hints = typing.get_type_hints(cls)
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        kind, _ = _unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(kind):
            if {leaf.name for leaf in leaves(kind)} & set(values):
                inner = getattr(base, field.name) if base is not None else _field_default(field)
                changes[field.name] = build(kind, values, inner)
        elif field.name in values:
            changes[field.name] = values[field.name]
    try:
        return dataclasses.replace(base, **changes) if base is not None else cls(**changes)
    except SettingError as err:  # the field as the command line spells it
        flag = next((leaf.flag for leaf in leaves(cls) if leaf.name == err.field), None)
        if flag is None:
            raise
        raise as_flag(err, flag) from None


def as_flag(err: SettingError, flag: str | None = None) -> UsageError:
    """A setting's error as the command line words it: `--flag value: problem`."""
    return UsageError(f"{flag or '--' + err.field.replace('_', '-')} {err.value}: {err.problem}")


@contextmanager
def settings_as_flags() -> Iterator[None]:
    """Around checks that run after the config was built (those that need a loaded SAE or model): a
    SettingError they raise is worded as `cli.build` words one."""
    try:
        yield
    except SettingError as err:
        raise as_flag(err) from None


def explicit_fields(namespace: argparse.Namespace) -> set[str]:
    """Names of the (flat) fields the user set, by flag or in the --config file, for parse_config's
    namespace: what a preset must not overwrite."""
    return set(getattr(namespace, "_explicit", set()))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose own complaints (an unknown flag, a missing value) are one-line UsageErrors, which
    `run_main` prints like every other bad input, instead of a usage block and an exit."""

    def error(self, message: str):
        raise UsageError(f"{message}; see --help")


def parse_config(cls: type[T], description: str, argv: list[str] | None = None,
                 extend: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[T, argparse.Namespace]:
    """Parse argv into an instance of the dataclass `cls` (and the raw namespace, for extra flags)."""
    # Defaults are written into each flag's help by add_dataclass_arguments (argparse's own defaults
    # are None so that config files can layer), hence the plain formatter.
    parser = ArgumentParser(description=description)
    parser.add_argument("--config", help="JSON file of field values; flags given here override it")
    add_dataclass_arguments(parser, cls)
    if extend is not None:
        extend(parser)
    namespace = parser.parse_args(argv)
    from_file = read_config_file(cls, namespace.config) if namespace.config else {}
    flags = _given_flags(cls, namespace)
    try:
        config = build(cls, {**from_file, **flags})
    except TypeError as err:  # a required field missing, or a value its dataclass refuses by type
        raise UsageError(str(err).strip().splitlines()[0]) from None
    namespace._explicit = set(from_file) | set(flags)
    _last_flags.clear()
    _last_flags.update({leaf.flag: _value_at(config, leaf.path) for leaf in leaves(cls)})
    return config, namespace


def _value_at(config: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        config = getattr(config, name, None)
    return config


def save_config(config: Any, path: Path) -> None:
    """Write a dataclass as JSON, atomically (temporary file, then rename)."""
    write_text_atomic(path, json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main; user-facing errors become one line on stderr and exit code 2 (a chained
    error included: the line speaks of the error that matters), Ctrl-C one line and exit code 130."""
    try:
        result = main()
    except KeyboardInterrupt:
        print("interrupted: files already written are complete; rerun the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - anything not a user's error is raised again below
        message = user_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)


USER_ERRORS = (UsageError, ValueError, OSError)


def user_message(err: BaseException) -> str | None:
    """The one line to show for a user-facing error, or for an error raised `from` one; None for a bug.

    A full disk is recognised anywhere in the chain (a failed write often surfaces as another error
    raised while cleaning up, or as torch's and numpy's own messages)."""
    if isinstance(err, OSError) and err.errno and err.strerror and err.strerror != os.strerror(err.errno):
        return _os_message(err)  # a script's own message for a system error (it knows what was kept)
    if disk_full(err) is not None:
        return _disk_full_message(list(_chain(err, implicit=True)))
    if isinstance(err, MemoryError) or _OUT_OF_MEMORY.search(str(err)):
        return (f"out of memory ({_first_line(err)[:160]}); ask for less (a smaller batch, fewer tokens) "
                f"or close what else is running")
    for cause in _chain(err, implicit=False):
        if isinstance(cause, OSError) and cause.errno is not None:
            return _os_message(cause)
        if isinstance(cause, USER_ERRORS):
            return _first_line(cause)
    return None


def _chain(err: BaseException | None, *, implicit: bool) -> Iterator[BaseException]:
    """err, then what it was raised from (and, with `implicit`, what it was raised while handling)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or (err.__context__ if implicit else None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# torch's words for a failed allocation, on the CPU and on a GPU
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|CUDA out of memory|MPS backend out of memory")


def _disk_full_message(chain: list[BaseException]) -> str:
    file = _written_file(chain)
    where = f" writing {file}{_flag_hint(file)}" if file else ""
    return (f"the disk is full{where}: free some space, then rerun the same command; nothing already "
            f"written was lost (files are written whole or not at all) and the rerun resumes")


def _written_file(chain: list[BaseException]) -> str | None:
    """The file a failed write was for: the atomic writer's note ("while writing PATH"), else the
    OSError's own file name."""
    for err in chain:
        for note in getattr(err, "__notes__", ()):
            if note.startswith("while writing "):
                return note.removeprefix("while writing ")
    return next((e.filename for e in chain if isinstance(e, OSError) and e.filename), None)


def _os_message(err: OSError) -> str:
    """An OSError from the system (with an errno) as a line that names the file, its flag and what to do."""
    path = err.filename
    if path is None:
        return f"{err.strerror or _first_line(err)}"
    where = f"{path}{_flag_hint(path)}"
    if err.strerror and err.strerror != os.strerror(err.errno):  # a message of the project's own
        return f"{where}: {err.strerror}"
    if isinstance(err, IsADirectoryError):
        return f"{where}: is a folder, and a file is expected there; pass a file path"
    if isinstance(err, FileExistsError):
        return (f"{where}: already exists and is in the way (a file where a folder goes, or the reverse); "
                f"move it away or pass another path")
    if isinstance(err, NotADirectoryError):
        return f"{where}: part of this path is a file, not a folder; pass another path"
    if isinstance(err, PermissionError):
        return f"{where}: permission denied; pass a path you can read and write"
    if isinstance(err, FileNotFoundError):
        return f"{where}: no such file or folder"
    return f"{where}: {err.strerror or _first_line(err)}"


def _flag_hint(path: Any) -> str:
    """' (--flag)' for the flag whose path holds `path` (itself or a folder above it), else ''."""
    try:
        target = Path(path).resolve()
    except (TypeError, ValueError, OSError):
        return ""
    best, depth = "", -1
    for flag, value in _last_flags.items():
        if not isinstance(value, (str, Path)) or not str(value):
            continue
        try:
            given = Path(value).resolve()
        except (ValueError, OSError):
            continue
        if (given == target or given in target.parents) and len(given.parts) > depth:
            best, depth = flag, len(given.parts)
    return f" (given with {best})" if best else ""
