"""Shared by the end-to-end tests: kill a w2s.py run mid-way, and compare results.json content across run dirs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kill_w2s_after(args, marker, timeout=120):
    """`python w2s.py ARGS` in a subprocess, SIGKILLed as soon as the file `marker` exists (a stage is done)."""
    # one thread, as the tests' own process (conftest): the stages it finishes must equal the ones trained in-process
    proc = subprocess.Popen([sys.executable, str(ROOT / "w2s.py")] + args, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "first stage did not finish"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def without_paths(results):
    """results.json content without what names the run directory or times its stages, so two directories' results
    compare equal."""
    results = json.loads(json.dumps(results))
    for key in ("config", "out_dir", "timing"):
        results.pop(key, None)
    return results


def write_stage(stage_dir, files):
    """A finished stage as train.py leaves it: `files` {relative path: JSON-able content}, then metrics.json naming
    each file with its sha256 (what eval.py checks before reading)."""
    from run import rundir
    stage_dir = Path(stage_dir)
    for name, content in files.items():
        (stage_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (stage_dir / name).write_text(json.dumps(content))
    (stage_dir / "metrics.json").write_text(json.dumps({"outputs": rundir.outputs_of(stage_dir, list(files))}))


def write_experiment_json(out, seeds, runs, students, kind="classification", description=None):
    """OUT/experiment.json listing `runs` (names = paths = stages, relative to each seed dir) and `students`
    ({name: (supervisor, ceiling)}), as w2s.py writes it."""
    Path(out).mkdir(parents=True, exist_ok=True)
    record = {"format": 1, "experiment": {}, "seeds": list(seeds), "kind": kind, "description": description or {},
              "runs": [{"name": r, "path": r, "stage": r, "table": True} for r in runs],
              "students": [{"name": s, "supervisor": sup, "ceiling": ceil, "trained_on": sup, "method": s}
                           for s, (sup, ceil) in students.items()]}
    (Path(out) / "experiment.json").write_text(json.dumps(record))


def run_script(script, args, env=None, timeout=120, cwd=ROOT):
    """`python SCRIPT ARGS` (from the repository root unless `cwd`), as a user runs it: (exit status, stdout,
    stderr). `env` adds to the environment; torch gets one thread (tiny models on a busy machine: see conftest)."""
    r = subprocess.run([sys.executable, str(ROOT / script)] + [str(a) for a in args], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, env=one_thread_env(env))
    return r.returncode, r.stdout, r.stderr


def one_thread_env(extra=None):
    """The environment for a subprocess that trains tiny models: one OpenMP thread (a second costs 4x on a busy
    2-core machine), plus `extra`."""
    import os
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(extra or {}))


def stage_stamps(out):
    """{stage path relative to OUT: its metrics.json's mtime}: what says which stages a rerun retrained."""
    out = Path(out)
    return {str(p.parent.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("metrics.json")}


def strict_json(text):
    """json.loads that refuses NaN, Infinity and -Infinity (Python's json accepts them; JSON does not)."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def nulls_without_reason(x, path="", explained=False):
    """Where results.json content holds a null (a value, or an item of a list value) that no "reason" explains: the
    dict holding it, or that dict's parent entry (a run's ci95 under the run), must have one, as PGR entries do."""
    found = []
    if isinstance(x, list):
        for i, v in enumerate(x):
            found += nulls_without_reason(v, f"{path}[{i}]", explained)
    elif isinstance(x, dict):
        own = isinstance(x.get("reason"), str) and x["reason"] != ""
        for k, v in x.items():
            if v is None or isinstance(v, list) and None in v:
                found += [] if own or explained else [f"{path}.{k}"]
            else:
                found += nulls_without_reason(v, f"{path}.{k}", own)
    return found


def ragged_table_rows(markdown):
    """The rows of the markdown's tables whose number of cells differs from their table's header row."""
    ragged, width = [], None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        cells = line.strip().strip("|").count("|") + 1
        if width is None:
            width = cells
        elif cells != width:
            ragged.append(line)
    return ragged
