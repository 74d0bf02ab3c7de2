"""Settings and the command line: one parser for every script, and typed, checked settings.

Every script's command line has one shape: positional arguments (a config file, run folders, grid specs) and
--key=value options. parse_args splits it; build_config turns a dataclass of defaults, an optional Python config file
and the options into one checked config. Precedence, lowest first: the dataclass defaults, the config file's
top-level assignments, then the command line. Every problem is collected and reported together, each naming its key,
so a user fixes a command in one pass instead of one traceback at a time. run_command is every script's main(): its
--help, and one line per problem instead of a traceback.

Config files are plain Python and are run as code: only run config files you trust. Command-line values are
never evaluated; they are converted by the field's declared type.
"""

import dataclasses
import difflib
import errno
import gc
import inspect
import os
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

REPO_ROOT = Path(__file__).resolve().parent


class UsageError(Exception):
    """A mistake the user can fix: one line per problem, no traceback."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def exit_with(err: UsageError) -> typing.NoReturn:
    """Print each problem on its own line and exit with status 2 (the usual status for a usage error)."""
    for line in err.problems:
        print(f"error: {line}", file=sys.stderr)
    raise SystemExit(2)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp, from_text: bool = True) -> Any:
    """Convert `value` to type `tp`: command-line text when from_text, else a Python value from a config file.

    Raises ValueError when it does not fit. Ints accept integral floats (5e3) and, from text, strings like '5e3';
    bools accept, from text, true/false/yes/no/on/off/1/0. In a config file a string is only a string: '4' is no int.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return convert(value, option, from_text)
            except ValueError:
                pass
        raise ValueError
    if isinstance(value, str) and not from_text and tp is not str and origin is not Literal:
        raise ValueError
    if origin is Literal:
        for allowed in typing.get_args(tp):
            if value == allowed or (isinstance(value, str) and value.lower() == str(allowed).lower()):
                return allowed
        raise ValueError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        number = float(value) if isinstance(value, (str, float)) else None  # float() raises ValueError itself
        if number is None or not number.is_integer():
            raise ValueError
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    raise AssertionError(f"configurator cannot convert to field type {tp!r}")


def suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_config_file(path: str) -> dict:
    """Run a config file into an empty namespace and return its top-level values.

    Names starting with '_' and imported modules, functions and classes are not settings and are skipped, so a
    config may `import math` or `from config.baseline import *`.
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file '{path}' not found (configs live in config/, e.g. config/baseline.py)")
    try:
        source = file.read_text(encoding="utf-8")
        code = compile(source, str(file), "exec")
    except (SyntaxError, UnicodeDecodeError) as e:
        where = f" line {e.lineno}" if getattr(e, "lineno", None) else ""
        raise UsageError(f"config file '{path}'{where} does not parse: {getattr(e, 'msg', e)}") from None
    # `from config.baseline import *` needs the repository root importable, whatever the working directory.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    namespace: dict = {"__file__": str(file), "__name__": "__config__"}
    try:
        exec(code, namespace)
    except Exception as e:  # a config is user code: report its error on one line, naming the file
        raise UsageError(f"config file '{path}' failed to run: {type(e).__name__}: {e}") from None
    return {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))
    }


def parse_args(argv=None) -> tuple[list[str], dict]:
    """Split a command line into its positional arguments and its --key=value options, values still text.

    Dashes in a key become underscores. A bare --key has the value None: true for a bool setting, and for any other
    setting a missing value, which build_config reports."""
    argv = sys.argv[1:] if argv is None else list(argv)
    positional, options, problems = [], {}, []
    for arg in argv:
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        key, sep, value = arg[2:].partition("=")
        if not key:
            problems.append(f"unexpected argument '{arg}': options look like --key=value")
            continue
        options[key.replace("-", "_")] = value if sep else None
    if problems:
        raise UsageError(problems)
    return positional, options


def as_args(options: dict) -> list[str]:
    """parse_args's options written back as command-line arguments, for a script that passes them on."""
    return [f"--{key}" if value is None else f"--{key}={value}" for key, value in options.items()]


def refuse_positional(positional: list[str]) -> None:
    """For scripts that take options only."""
    if positional:
        raise UsageError(f"unexpected argument '{positional[0]}': options look like --key=value")


def split_options(options: dict, *defaults_classes) -> tuple[list[dict], list[str]]:
    """Share the options out among dataclasses by field name (bench.py and tune.py take their own options and any
    train.py setting). Returns one dict per class, and a problem for each key none of them has, with a suggestion,
    for the caller to report with the rest."""
    names = [{f.name for f in dataclasses.fields(cls)} for cls in defaults_classes]
    known = set().union(*names)
    unknown = [f"unknown key '{key}' on the command line{suggest(key, known)}" for key in options if key not in known]
    return [{key: value for key, value in options.items() if key in fields} for fields in names], unknown


def build_config(defaults_cls, config_path: str | None, overrides: dict, where: str = "on the command line",
                 given: set | None = None):
    """Defaults <- config file <- overrides, each key checked against the dataclass fields and converted by type.
    given, if passed, receives the keys the config file or the overrides set (whatever their value): a setting that
    can come from elsewhere (a run from a trained model takes its shape from the checkpoint) yields to those only."""
    fields = {f.name: f for f in dataclasses.fields(defaults_cls)}
    hints = typing.get_type_hints(defaults_cls)
    values, problems = {}, []
    sources = []
    if config_path is not None:
        sources.append((read_config_file(config_path), f"in {config_path}", False))
    sources.append((overrides, where, True))
    for settings, place, from_text in sources:
        for key, raw in settings.items():
            if key not in fields:
                problems.append(f"unknown key '{key}' {place}{suggest(key, fields)}")
            elif raw is None and from_text:  # a bare --key: true, if the setting can be
                try:
                    values[key] = convert(True, hints[key], from_text=False)
                except ValueError:
                    problems.append(f"'{key}' {place} needs a value: write --{key}=VALUE")
            else:
                try:
                    values[key] = convert(raw, hints[key], from_text)
                except ValueError:
                    problems.append(f"'{key}' {place} must be {_type_name(hints[key])}, got {raw!r}")
    if problems:
        raise UsageError(problems)
    if given is not None:
        given.update(values)
    return defaults_cls(**values)


def field_help(defaults_cls) -> dict[str, str]:
    """Each field's trailing comment in the dataclass source (and its base classes'): the one place a setting is
    described."""
    comments = {}
    for cls in reversed(defaults_cls.__mro__[:-1]):  # a subclass's comment wins over its base's
        for line in inspect.getsource(cls).splitlines():
            match = re.match(r"\s+(\w+): .*?  # (.*)$", line)
            if match:
                comments[match.group(1)] = match.group(2)
    return comments


def describe(defaults_cls) -> list[tuple[str, str, str]]:
    """(name, default as typed on a command line, meaning) for each setting: what --help prints, and what README.md's
    tables of settings say (a test holds them to it). The meaning is the field's comment, then its choices if it has
    a fixed set."""
    comments = field_help(defaults_cls)
    hints = typing.get_type_hints(defaults_cls)
    rows = []
    for f in dataclasses.fields(defaults_cls):
        # Strings shown as typed on a command line: no quotes, escapes visible (a newline as \n).
        default = repr(f.default)[1:-1] if isinstance(f.default, str) else str(f.default).lower() \
            if isinstance(f.default, bool) else str(f.default)
        choices = _choices(hints[f.name])
        rows.append((f.name, default, comments.get(f.name, "") + (f" ({' | '.join(choices)})" if choices else "")))
    return rows


def _choices(tp) -> list[str]:
    """The values a Literal setting may take (true and false for a bool within a union); none for the others."""
    if typing.get_origin(tp) is Literal:
        return [str(a) for a in typing.get_args(tp)]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [c for part in typing.get_args(tp) for c in (["true", "false"] if part is bool else _choices(part))]
    return []


def help_text(defaults_cls, columns: int = 120, option_width: int = 32) -> str:
    """Each setting's --name=default and its meaning, for --help: the meanings in a column no wider than columns
    allows, wrapped to fit. An option wider than option_width (a long default, such as a URL) sits on a line of its
    own, so that it does not push the column of meanings past the terminal's edge."""
    rows = [(f"--{name}={default}", text) for name, default, text in describe(defaults_cls)]
    width = max((len(option) for option, _ in rows if len(option) <= option_width), default=0)
    indent = " " * (width + 4)
    lines = []
    for option, text in rows:
        meaning = textwrap.wrap(text, columns - len(indent), break_long_words=False, break_on_hyphens=False)
        first = f"  {option:<{width}}  {meaning.pop(0) if meaning and len(option) <= width else ''}"
        lines += [first.rstrip()] + [indent + line for line in meaning]
    return "\n".join(lines)


# What to do about each fault of a disk or a folder, for its one-line message (files.write_atomic's too).
DISK_FIXES = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some space within your quota",
              errno.EROFS: "choose a folder on a writable disk", errno.EACCES: "fix the folder's permissions",
              errno.EPERM: "fix the folder's permissions",
              errno.EIO: "check the disk (an I/O error is a fault of the disk or its file system)"}


def run_command(work, argv, doc: str, options_cls, more_help: str = ""):
    """A script's main(): --help prints doc and every option with its default; otherwise work(argv) runs, and a
    UsageError (or a full disk) ends it with one line per problem and exit status 2 instead of a traceback, and
    Ctrl-C with exit status 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(doc + "\nOptions (defaults shown):\n" + help_text(options_cls) + more_help)
        return None
    try:
        return work(argv)
    except UsageError as e:
        exit_with(e)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:  # the machine's fault, where no write_atomic named the file and what is kept
        if e.errno not in DISK_FIXES:
            raise
        exit_with(UsageError(f"{e.filename or 'a file'}: {e.strerror}; {DISK_FIXES[e.errno]}, then run the same "
                             "command again"))
    finally:
        if "RANK" in os.environ:  # one of torchrun's processes (a collection costs ~0.1 s: not for every command)
            # The DistributedDataParallel model sits in reference cycles after training, holding the processes'
            # connections: freed now, while Python is whole, not during its shutdown, where gloo's threads can abort
            # the process ("terminate called without an active exception").
            gc.collect()
