"""A reorganisation changes no number: the toy demo (one seed) and a toy sweep with a chain and every student give
exactly the results.json numbers recorded in tests/golden_layout.json, which the code before issue 24's refactor
wrote (main at 078e605). Timing, the run directory (helpers.without_paths) and the models' content hashes are left
out (a toy model's pretrain.json records its pretraining seconds); everything else must match to the bit.

The numbers are recorded per kind of CPU (vendor, torch's CPU capability, torch version): fine-tuning is chaotic
enough that AMD EPYC and Intel Xeon float kernels, both AVX-512, give the same weak stage but different students
(measured 2026-12-03; the code at 5667e60 and at 6371535 gives the same numbers on each). On an unrecorded CPU the
test skips, naming its key. Record a new CPU kind, or regenerate when a change is meant to change the numbers (then
on every recorded CPU kind, and say so in the commit):
    W2S_WRITE_GOLDEN=1 python -m pytest -q tests/test_layout_guard.py
"""
import json
import os
from pathlib import Path

import pytest

import w2s
from helpers import without_paths
from run.features import cpu_kind  # the key the numbers are recorded under

GOLDEN = Path(__file__).with_name("golden_layout.json")
# the demo as the README runs it, one seed: toy-s supervises toy-l (their pretraining is shared with test_demo.py)
DEMO = ["--seeds", "0", "--quiet"]
# every pair of three toy GPTs, a chain through the middle one, and every student (an ensemble of 2 for the votes
# and the learned mix), on 100 rows and one epoch so it takes seconds
SWEEP = ["--sizes", "toy-xs,toy-s,toy-l", "--chain", "toy-s", "--students", "all", "--ensemble", "2", "--limit",
         "100", "--epochs", "1", "--n-boot", "50", "--quiet"]


def without_identities(x):
    """x without its "identity" entries (the sha256 of a toy model's files, pretrain.json's seconds included)."""
    if isinstance(x, dict):
        return {k: without_identities(v) for k, v in x.items() if k != "identity"}
    return [without_identities(v) for v in x] if isinstance(x, list) else x


@pytest.mark.slow
def test_demo_and_sweep_give_the_recorded_numbers(tmp_path):
    recorded, kind = json.loads(GOLDEN.read_text()), cpu_kind()
    writing = bool(os.environ.get("W2S_WRITE_GOLDEN"))
    if kind not in recorded and not writing:
        pytest.skip(f"no numbers recorded for this CPU kind ({kind}); record them with W2S_WRITE_GOLDEN=1")
    got = {name: without_identities(without_paths(w2s.main(args + ["--out", str(tmp_path / name)])))
           for name, args in [("demo", DEMO), ("sweep", SWEEP)]}
    if writing:
        GOLDEN.write_text(json.dumps({**recorded, kind: got}, indent=1, sort_keys=True) + "\n")
    expected = without_identities(json.loads(GOLDEN.read_text())[kind])
    for name in expected:  # one experiment, then one seed's entries at a time: a failure names what moved
        assert got[name].keys() == expected[name].keys(), name
        for key in expected[name]:
            assert got[name][key] == expected[name][key], (name, key)
