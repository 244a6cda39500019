"""
The command line of every entry point (w2s.py, train.py, eval.py, bench.py), in one place:

    config_parser(TrainConfig, __doc__)   flags from a config dataclass: --help text from each field's comment,
                                          choices from Literal[...] types, defaults shown, no abbreviations
    main_guard(main)                      expected errors -> "error: <one sentence>" on stderr, exit status 2;
                                          a bug keeps its traceback
    progress(total, desc, quiet)          a tqdm bar on a terminal, nothing in logs (the caller prints plain lines)
    read_json(path), write_atomic(path)   a file read with errors that name it; a file written whole or not at all

Standard library only (plus tqdm), so data/, hub.py and model.py can raise UserError without importing anything heavy.
Every bad-input error is a UserError (hub.OfflineError, toxicity.PerspectiveError, data's DataError subclass it), so
main_guard needs to import none of the modules that raise them.
"""
import argparse
import dataclasses
import errno
import inspect
import json
import os
import re
import sys
import types
import typing
import warnings
from pathlib import Path


class UserError(Exception):
    """Bad input or an unusable file: the message is one sentence that says what to do, shown without a traceback."""


# ----------------------------------------------------------------------------------------------------------------
# flags from config dataclasses

def field_comments(cls):
    """{field name: its trailing comment} read from the dataclass source, so the comment next to a field is its
    --help text (one source of truth). Comment-only lines right below a field continue its text; a line
    `# ---- <title>` heads the next group of fields and belongs to none."""
    comments, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*?(?:#\s?(.*))?$", line)
        if m and not line.strip().startswith("#") and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            last = m.group(1)
            comments[last] = (m.group(2) or "").strip()
        elif last and re.match(r"\s+#(?! ----)", line):
            comments[last] += " " + line.strip()[1:].strip()
        else:
            last = None
    return comments


def _arg_type(annotation):
    """(python type, choices, is_list) of a field annotation: int, float | None, Literal["a", "b"], list[int], ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # X | None
        return _arg_type(next(a for a in args if a is not type(None)))
    if origin is typing.Literal:
        return type(args[0]), list(args), False
    if origin is list:  # list[int], list[Literal["a", "b"]]
        kind, choices, _ = _arg_type(args[0])
        return kind, choices, True
    return annotation, None, False


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # "(default: X)" on every flag that has a default worth showing
        text = action.help or ""
        if action.default is not argparse.SUPPRESS and action.option_strings and "default:" not in text:
            shown = action.default if action.default not in (None, "") else "none"
            text += f" (default: {shown})".replace("%", "%%")  # argparse %-formats help strings
        return text


def new_parser(description, epilog=None):
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=_HelpFormatter,
                                   allow_abbrev=False)


def add_config_flags(parser, cls, skip=(), title=None):
    """One --flag per field of dataclass `cls` (bools get --flag / --no-flag), into an argument group when `title`."""
    group = parser.add_argument_group(title) if title else parser
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind, choices, is_list = _arg_type(f.type)
        help_text = comments.get(f.name, "").replace("%", "%%")
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            group.add_argument(flag, type=kind, choices=choices, nargs="+" if is_list else None, default=default,
                               help=help_text, metavar=None if choices else f.name.upper())
    return parser


def config_parser(cls, description, skip=()):
    return add_config_flags(new_parser(description), cls, skip)


def flags_of(cfg, defaults, skip=()):
    """The command-line flags that reproduce `cfg` where it differs from `defaults` (both dataclass instances)."""
    args = []
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        if f.name in skip or value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            args += [flag] + [str(v) for v in value]
        elif value is not None:
            args += [flag, str(value)]
    return args


# ----------------------------------------------------------------------------------------------------------------
# one-line errors

def read_json(path, what="JSON"):
    """json.loads of a file, with errors that name it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid {what} ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None


def write_atomic(path, data, tmp_suffix=".tmp"):
    """Write `data` (bytes, str, or a function that writes the file at the path it is given) to `path`, atomically:
    into path + tmp_suffix beside it, then renamed over it, so a killed process never leaves a half-written file
    under the final name. A failed write removes the temporary file; a disk error names `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + tmp_suffix)
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None  # a full disk names no file: name it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def error_line(e):
    """The one line shown for an expected error, or None when `e` is a bug (which keeps its traceback)."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, (FileNotFoundError, FileExistsError)) and e.filename is None:
        return str(e)  # raised by our own code with a message that names the path
    disk = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)
    if isinstance(e, OSError) and e.filename is not None and (disk or isinstance(
            e, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError))):
        return f"{e.filename}: {e.strerror}"
    if disk:  # a write into an open file (a checkpoint, a log line) names no path
        return f"{e.strerror} while writing this run's files: make room or use --out elsewhere, then rerun"
    return None


def main_guard(main):
    """Run an entry point: expected errors end with `error: <one sentence>` on stderr and exit status 2; warnings
    show as `warning: <sentence>` lines (not file:line and a source line)."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        line = error_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(2)


NOTED = set()  # the notes this process has printed (w2s.py hands them to its workers)


def note_once(line):
    """A note printed once per process: settings are checked again by every stage of a w2s.py run."""
    if line not in NOTED:
        NOTED.add(line)
        print(line, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# progress

def progress(total, desc, quiet=False, unit="step"):
    """A tqdm bar (step, postfix, ETA) when stderr is a terminal and not quiet; otherwise None, and the caller
    prints its plain log lines instead (logs stay readable)."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
