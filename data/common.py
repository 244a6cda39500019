"""Shared helpers for the task readers: read CSV/TSV/JSONL files with errors that name file and line,
and fetch source files once into a checked cache (plain HTTPS, or the Hub through hub.hub_file).

A task module (data/<module>.py) implements one function:

    def read(name, data_dir) -> dict(kind="classification" | "generation",
                                     label_names=[...],           # label index = position
                                     examples=[{"id", "text", "label", ("group", "stratum", "unit")...}],
                                     files=[{"path", "sha256"}],  # every source file read
                                     train_filter=None,           # optional: example -> bool, see below
                                     source=None)                 # optional: {"name", ...} of the data set read,
                                                                  # for a task with several (recorded, compared)
    # data_dir: a folder with one sub-folder per task (data_dir/<task>/<file>), or None = download/cache.
    # train_filter, when given, drops examples from weak_train / w2s_train / val only (test keeps all).

Rows that cannot be parsed raise DataError naming file and line; rows that parse but cannot be an
example (empty text, a null score) are dropped by the reader, counted, and reported by `warn_dropped`.
"""
import csv
import gzip
import json
import os
import urllib.request
import warnings
from pathlib import Path

from core import hub
from core.cli import UserError, write_atomic
from core.digests import sha256_file


class DataError(UserError, ValueError):
    """A source file or a split is unusable; the message names the file and line (or task and split)."""


WARNED = set()  # the warnings this process has shown (w2s.py hands them to its workers)


def warn_once(message, stacklevel=3):
    """A data warning, shown once per process however many stages load the same data."""
    if message not in WARNED:
        WARNED.add(message)
        warnings.warn(message, stacklevel=stacklevel + 1)


def file_record(path):
    return {"path": str(path), "sha256": sha256_file(path)}


def cache_dir():
    """Where downloaded source files live: $W2S_CACHE, else ~/.cache/w2s."""
    return Path(os.environ.get("W2S_CACHE") or Path.home() / ".cache" / "w2s")


def local_file(data_dir, task, filename):
    """data_dir/<task>/<filename> when it exists, else None (the caller then downloads)."""
    if data_dir is None:
        return None
    path = Path(data_dir) / task / filename
    return path if path.is_file() else None


def instead_of_download(data_dir, local_name):
    """What to pass instead of a download: names the file and where it was looked for."""
    looked = f" (not found under {data_dir})" if data_dir is not None else ""
    return f"--data-dir DIR with DIR/{local_name}{looked}"


def fetch_url(url, sha256, cache_name, instead="--data-dir DIR"):
    """Path to the file at `url` in the cache (cache_dir()/cache_name), downloaded once by HTTPS GET.
    The bytes must hash to `sha256`: a mismatch is refused and nothing is kept."""
    path = cache_dir() / cache_name
    if path.is_file():
        if sha256_file(path) == sha256:
            return path
        path.unlink()  # a corrupted or stale cache entry: fetch again rather than trust it
    path.parent.mkdir(parents=True, exist_ok=True)

    def download(tmp):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
        except OSError as e:  # URLError, HTTPError, timeouts and refused connections are all OSErrors
            raise hub.OfflineError(f"cannot download {url} ({e}): fetch it yourself and pass {instead} instead.") from None
        got = sha256_file(tmp)
        if got != sha256:
            raise DataError(f"{url} downloaded with sha256 {got}, expected {sha256}: refused, nothing was cached.")
    # atomic: a crash mid-download never leaves a half file under the final name; a temporary name per process
    write_atomic(path, download, tmp_suffix=f".tmp{os.getpid()}")
    return path


def hub_dataset_file(repo_id, filename, instead, revision=None):
    """Path to one file of a Hub dataset repo, through hub.hub_file (cached, offline-aware)."""
    return hub.hub_file(repo_id, filename, revision=revision, repo_type="dataset", instead=instead)


def open_text(path):
    """Text handle for a plain or .gz file; newline='' so the csv module sees embedded newlines."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_table(path, columns, delimiter=","):
    """Rows of a CSV/TSV file with a header, as (line, {column: value}) where line is the 1-based line
    the row starts on. Every column in `columns` must be in the header, and every row must have exactly
    as many fields as the header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    rows = []
    with open_text(path) as f:
        # QUOTE_MINIMAL with doublequote handles both CSV and LegalBench's TSV (fields with tabs or quotes are quoted)
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except UnicodeDecodeError as e:
            raise not_utf8(path, 1, e) from None
        except StopIteration:
            raise DataError(f"{path}:1: empty file, expected a header with columns {columns}.") from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}:1: missing column(s) {missing}; the header has {header}.")
        line = reader.line_num + 1
        try:
            for fields in reader:
                if fields:  # csv yields [] for a blank line
                    if len(fields) != len(header):
                        raise DataError(f"{path}:{line}: {len(fields)} fields, expected {len(header)} ({header}).")
                    rows.append((line, dict(zip(header, fields))))
                line = reader.line_num + 1
        except csv.Error as e:
            raise DataError(f"{path}:{line}: malformed row ({e}).") from None
        except UnicodeDecodeError as e:
            raise not_utf8(path, line, e) from None
    return rows


def not_utf8(path, line, e):
    """The error for a file that is not UTF-8, naming the line that holds the first bad byte. The text reader decodes
    a block ahead of the row it is on, so `line` (where reading stopped) can be lines before it: the raw bytes say."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        line, e = raw.count(b"\n", 0, bad.start) + 1, bad
    except OSError:
        pass
    return DataError(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start]:#04x}); save the file as UTF-8.")


def read_jsonl(path):
    """Objects of a JSONL file (plain or .gz) as (line, object); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    rows, line = [], 0
    with open_text(path) as f:
        lines = enumerate(f, start=1)
        while True:
            try:
                line, text = next(lines)
            except StopIteration:
                break
            except UnicodeDecodeError as e:
                raise not_utf8(path, line + 1, e) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line}: malformed JSON ({e.msg} at column {e.colno}).") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}.")
            rows.append((line, obj))
    return rows


def parse_label(value, mapping, path, line, column):
    """mapping[value], or a DataError naming the file, line, column and the values it accepts."""
    if value not in mapping:
        raise DataError(f"{path}:{line}: unknown {column} value {value!r}, expected one of {list(mapping)}.")
    return mapping[value]


def field(obj, keys, path, line):
    """obj[k0][k1]... for a JSON row, or a DataError naming the file, line and the missing key."""
    value = obj
    for i, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"{path}:{line}: missing key {'.'.join(keys[: i + 1])!r}.")
        value = value[key]
    return value


def warn_dropped(task, dropped):
    """One warning for rows a reader skipped: dropped = {reason: ["file:line", ...]}."""
    dropped = {reason: where for reason, where in dropped.items() if where}
    if dropped:
        parts = [f"{len(where)} with {reason} (e.g. {', '.join(where[:3])})" for reason, where in dropped.items()]
        warn_once(f"{task}: dropped {sum(map(len, dropped.values()))} rows: " + "; ".join(parts) + ".", stacklevel=4)
