"""
Run directories whose numbers can be trusted: one experiment per directory, content-checked stages, one run at a time.

    OUT/experiment.json   what the experiment is (everything that changes its numbers), its seeds, and the runs and
                          student comparisons eval.py evaluates; a rerun with another experiment is refused
    OUT/.lock             an OS lock held by the run using OUT (released when its process ends, even on kill -9)
    <stage>/metrics.json  written last: the sha256 of every file the stage wrote ("outputs") and of everything it was
                          trained on ("inputs": model, data, supervisor labels). A stage is finished only when both
                          still match; a tampered or truncated file makes it, and every stage downstream, rerun.

Paths are recorded relative to the run directory, so a copied or moved run resumes with nothing retrained.
"""
import fcntl
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from core.cli import UserError, read_json, write_atomic
from core.digests import sha256_file

EXPERIMENT = "experiment.json"
# the temporary names of our atomic writes (x.json.tmp, x.md.tmp, x.png.tmp, x.png.tmp.png): only ever left behind
# by a killed run, and only looked for in a run directory
LEFTOVER = re.compile(r".+\.(json|md|png)\.tmp(\.png)?")


# ----------------------------------------------------------------------------------------------------------------
# what a stage saw

def data_identity(summary):
    """What data a stage saw, from Task.summary(): source files by content, each split by its example ids, and for a
    task with several data sets the one read (legal: LegalBench or PolicyQA)."""
    identity = {"task": summary["task"], "files": sorted(f["sha256"] for f in summary["files"]),
                "splits": {name: s["ids_sha256"] for name, s in summary["splits"].items()}}
    return identity | ({"source": summary["source"]["name"]} if summary.get("source") else {})


# ----------------------------------------------------------------------------------------------------------------
# stages

def relative(path, start):
    """`path` relative to `start` when it lies inside the run directory tree, so the record survives a move."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:
        return str(path)


def outputs_of(out, names):
    """{relative path: sha256} of the files a stage wrote; a directory stands for every file under it."""
    out, digests = Path(out), {}
    for name in names:
        path = out / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            digests[str(f.relative_to(out))] = sha256_file(f)
    return digests


def stage_status(out, config, inputs):
    """(finished?, why not) for the stage in `out`: metrics.json exists, its config equals `config`, every output
    still has its recorded sha256, and it was trained on exactly `inputs`. `why` is None for a stage never run."""
    out = Path(out)
    if not (out / "metrics.json").is_file():
        return False, None
    try:
        metrics = json.loads((out / "metrics.json").read_text())
        saved = json.loads((out / "config.json").read_text())["comparable"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, "its metrics.json or config.json is unreadable"
    if saved != config:
        return False, "its settings changed: " + diff(saved, config)
    for name, digest in metrics.get("outputs", {}).items():
        path = out / name
        if not path.is_file():
            return False, f"{name} is missing"
        if sha256_file(path) != digest:
            return False, f"{name} was modified or truncated after the stage finished (sha256 differs)"
    if not metrics.get("outputs"):
        return False, "its metrics.json records no outputs (written by an older w2s)"
    if metrics.get("inputs") != inputs:
        return False, "what it was trained on changed: " + diff(metrics.get("inputs") or {}, inputs)
    return True, None


def verified(stage_dir, name):
    """Path of output `name` of a finished stage, after checking it against the sha256 the stage recorded."""
    stage_dir = Path(stage_dir)
    if not (stage_dir / "metrics.json").is_file():
        raise UserError(f"{stage_dir} has not finished (no metrics.json): run that stage first")
    metrics = read_json(stage_dir / "metrics.json")
    digest = metrics.get("outputs", {}).get(name)
    path = stage_dir / name
    if digest is None:
        raise UserError(f"{path} is not an output recorded in {stage_dir / 'metrics.json'}")
    if not path.is_file() or sha256_file(path) != digest:
        raise UserError(f"{path} does not match the sha256 its stage recorded (modified or truncated after training): "
                        "rerun w2s.py to redo that stage")
    return path


def invalidate(out):
    """Make a stage unfinished before it is (re)run, so a killed rerun never passes for the old result."""
    (Path(out) / "metrics.json").unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# experiments

def flatten(d, prefix=""):
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat |= flatten(v, f"{prefix}{k}.")
        else:
            flat[prefix + k] = v
    return flat


def _short(v):
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


def diff(old, new):
    """'key old -> new' for every key that differs between two nested dicts."""
    a, b = flatten(old), flatten(new)
    keys = [k for k in dict.fromkeys(list(a) + list(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    return ", ".join(f"{k} {_short(a.get(k, '<unset>'))} -> {_short(b.get(k, '<unset>'))}" for k in keys)


def owned(out):
    """What a w2s run puts in OUT (everything --overwrite may delete; W&B's offline runs, maybe not synced yet, stay)."""
    out = Path(out)
    return [p for p in out.iterdir() if re.fullmatch(r"seed\d+", p.name) and p.is_dir()
            or p.name in (EXPERIMENT, "results.json", "results.md", "results.png", "tensorboard")
            or p.name.startswith("results_")]


def check_experiment(out, experiment, overwrite):
    """The seeds already recorded for this same experiment in OUT ([] when new). Another experiment in OUT is
    refused, naming every key that differs. `overwrite` deletes the experiment in OUT (its stages and results)
    first, whichever it is: --overwrite always means a clean start."""
    out = Path(out)
    path = out / EXPERIMENT
    if path.is_file():
        old = read_json(path)
        if old.get("experiment") == experiment:
            if not overwrite:
                return list(old.get("seeds", []))
            why = "the same experiment, trained again from scratch"
        else:
            why = "holds another experiment: " + diff(old.get("experiment") or {}, experiment)
    elif out.is_dir() and owned(out):
        why = "holds runs without an experiment.json (written by an older w2s)"
    else:
        return []
    if not overwrite:
        raise UserError(f"{out} {why}. Use --out DIR for a new experiment, or --overwrite to delete this one first.")
    print(f"--overwrite: deleting the experiment in {out} ({why})", flush=True)
    for p in owned(out):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return []


def write_experiment(out, record):
    write_json(Path(out) / EXPERIMENT, record)


def write_json(path, obj):
    """Strict JSON (NaN or Infinity is a bug here, never a result), written atomically."""
    write_atomic(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# one run per directory

@contextmanager
def locked(directory, what="run"):
    """Hold an OS lock on directory/.lock for the block; a second run on the same directory stops at once, naming the
    holder's pid. The kernel drops the lock when the process dies, so a killed run never leaves it stuck."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} exists and is not a directory: give --out a directory (new or a run's)")
    directory.mkdir(parents=True, exist_ok=True)
    f = open(directory / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise UserError(f"{directory} is in use by another {what} (pid {pid}): wait for it to finish, or use --out DIR")
    try:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()


def remove_leftovers(directory):
    """Delete the temporary files of killed runs: only names our atomic writes use, and only in a directory that
    already holds a run (experiment.json, or a stage's config.json), so nobody else's files are touched."""
    directory, removed = Path(directory), []
    if not any((directory / name).is_file() for name in (EXPERIMENT, "config.json")):
        return removed
    for root, _, files in os.walk(directory):
        for name in files:
            if LEFTOVER.fullmatch(name):
                (Path(root) / name).unlink(missing_ok=True)
                removed.append(Path(root) / name)
    if removed:
        print(f"removed {len(removed)} leftover temporary file(s) of a killed run, e.g. {removed[0]}", flush=True)
    return removed
