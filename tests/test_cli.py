"""The README's entry points run as a new user runs them: `python <script> --help` from the repository root, in a
plain environment (no PYTHONPATH, no test fixtures), exits 0 and documents the flags the README uses."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = {  # flags that the README and the issues name for each script
    "w2s.py": ["--task", "--weak", "--strong", "--ensemble", "--seeds", "--out", "--scorer"],
    "train.py": ["--task", "--role", "--model", "--out", "--data-dir", "--seed", "--device", "--limit",
                 "--weak-labels", "--hard-labels", "--loss", "--linear-probe", "--ensemble", "--vote",
                 "--grad-checkpoint", "--compile", "--max-new-tokens", "--samples", "--top-p", "--loss-on"],
    "eval.py": ["--n-boot"],
    "bench.py": ["--device", "--json", "--quick", "--data-dir", "--compile", "--suite", "--sections", "--memory"],
}


@pytest.mark.parametrize("script", list(FLAGS))
def test_script_help_exits_zero_and_lists_the_readme_flags(script):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:")
    missing = [flag for flag in FLAGS[script] if flag not in r.stdout]
    assert not missing, f"{script} --help does not mention {missing}"
