"""Shared by the end-to-end tests: kill a w2s.py run mid-way, and compare results.json content across run dirs."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kill_w2s_after(args, marker, timeout=120):
    """`python w2s.py ARGS` in a subprocess, SIGKILLed as soon as the file `marker` exists (a stage is done)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "w2s.py")] + args, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "first stage did not finish"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def without_paths(results):
    """results.json content without what names the run directory, so two directories' results compare equal."""
    results = json.loads(json.dumps(results))
    results.pop("config", None)
    results.pop("out_dir", None)
    return results
