"""Turn a dataclass of defaults, an optional Python config file and --key=value overrides into one checked config.

Used by train.py and sample.py. Precedence, lowest first: the dataclass defaults, the config file's top-level
assignments, then the command line. Every problem is collected and reported together, each naming its key, so a
user fixes a config in one pass instead of one traceback at a time.

Config files are plain Python and are run as code: only run config files you trust. Command-line values are
never evaluated; they are converted by the field's declared type.
"""

import dataclasses
import difflib
import errno
import inspect
import os
import re
import sys
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


def parse_overrides(args) -> dict:
    """['--lr=3e-4', '--compile'] -> {'lr': '3e-4', 'compile': 'true'}; values stay strings until converted."""
    overrides, problems = {}, []
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            problems.append(f"unexpected argument '{arg}': overrides look like --key=value")
            continue
        key, sep, value = arg[2:].partition("=")
        # A bare --flag means true; convert() rejects it later for fields that are not bools.
        overrides[key.replace("-", "_")] = value if sep else "true"
    if problems:
        raise UsageError(problems)
    return overrides


def build_config(defaults_cls, config_path: str | None, overrides: dict):
    """Defaults <- config file <- overrides, each key checked against the dataclass fields and converted by type."""
    fields = {f.name: f for f in dataclasses.fields(defaults_cls)}
    hints = typing.get_type_hints(defaults_cls)
    values, problems = {}, []
    sources = []
    if config_path is not None:
        sources.append((read_config_file(config_path), f"in {config_path}", False))
    sources.append((overrides, "on the command line", True))
    for settings, where, from_text in sources:
        for key, raw in settings.items():
            if key not in fields:
                problems.append(f"unknown key '{key}' {where}{suggest(key, fields)}")
                continue
            try:
                values[key] = convert(raw, hints[key], from_text)
            except ValueError:
                problems.append(f"'{key}' {where} must be {_type_name(hints[key])}, got {raw!r}")
    if problems:
        raise UsageError(problems)
    return defaults_cls(**values)


def split_argv(argv, allow_config_file: bool = True):
    """Split argv into (config file or None, override args): the config file is the argument without a leading --."""
    argv = list(sys.argv[1:] if argv is None else argv)
    positional = [a for a in argv if not a.startswith("--")]
    options = [a for a in argv if a.startswith("--")]
    if not allow_config_file and positional:
        raise UsageError(f"unexpected argument '{positional[0]}': options look like --key=value")
    if len(positional) > 1:
        raise UsageError(f"expected at most one config file, got {', '.join(positional)}")
    return (positional[0] if positional else None), options


def ensure_dir(path: str, key: str = "out_dir") -> Path:
    """Create a writable directory or explain why it cannot be."""
    p = Path(path)
    try:
        # Path.exists() raises PermissionError (instead of returning False) inside a folder we may not enter.
        if p.exists() and not p.is_dir():
            raise UsageError(f"{key} '{path}' is a file, not a directory: choose another {key}")
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {key} '{path}': {e.strerror}; choose another {key} or fix its "
                         "permissions") from None
    if not os.access(p, os.W_OK):
        raise UsageError(f"{key} '{path}' is not writable: choose another {key} or fix its permissions")
    return p


def field_help(defaults_cls) -> dict[str, str]:
    """Each field's trailing comment in the dataclass source: the one place a setting is described."""
    comments = {}
    for line in inspect.getsource(defaults_cls).splitlines():
        match = re.match(r"\s+(\w+): .*?  # (.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def help_text(defaults_cls) -> str:
    """One line per setting: name, default and meaning, for --help."""
    comments = field_help(defaults_cls)
    # Strings shown as typed on a command line: no quotes, escapes visible (a newline as \n).
    rows = [(f.name, repr(f.default)[1:-1] if isinstance(f.default, str) else f.default, comments.get(f.name, ""))
            for f in dataclasses.fields(defaults_cls)]
    width = max(len(f"--{name}={default}") for name, default, _ in rows)
    return "\n".join(f"  {f'--{name}={default}':<{width}}  {text}" for name, default, text in rows)


def wants_help(argv) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return any(a in ("-h", "--help") for a in argv)


def run_command(work, argv, doc: str, options_cls, more_help: str = ""):
    """A script's main(): --help prints doc and every option with its default; otherwise work(argv) runs, and a
    UsageError (or a full disk) ends it with one line per problem and exit status 2 instead of a traceback, and
    Ctrl-C with exit status 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        print(doc + "\nOptions (defaults shown):\n" + help_text(options_cls) + more_help)
        return None
    try:
        return work(argv)
    except UsageError as e:
        exit_with(e)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        exit_with(UsageError(f"could not write {e.filename or 'a file'}: {e.strerror}; free some disk space and run "
                             "again"))
