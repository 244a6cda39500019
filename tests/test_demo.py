"""What the README says of the offline demo holds, run as the README runs it (`python w2s.py --seeds 0 1 2`), with
fine-tuning on 1 thread (the toy task's default) and on 2: the toy models pretrain on a fixed thread count, and
fine-tuning on either gives the same printed table."""
import pytest

import w2s
from data import toy

STUDENTS = ["student_naive", "student_logconf", "student_hard", "student_soft"]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_readme_demo_claims_hold_on_every_seed(threads, tmp_path):
    results = w2s.main(["--seeds", "0", "1", "2", "--out", str(tmp_path), "--quiet", "--threads", str(threads)])
    assert results["config"]["models"] == list(toy.DEMO) and list(results["seeds"]) == ["0", "1", "2"]
    for seed, r in results["seeds"].items():
        accuracy = {name: run["accuracy"] for name, run in r["runs"].items()}
        pgr = {name: r["pgr"][name]["accuracy"] for name in STUDENTS}
        for name in STUDENTS:
            # every student beats its weak supervisor, with a PGR whose 95% paired-bootstrap interval excludes 0, and
            # none is clearly better than the ceiling; logconf may reach it (Intel Xeon, seed 1: 0.992 vs 0.990, PGR
            # 1.01 [0.98, 1.03]), the others stay below it
            assert accuracy["weak"] < accuracy[name], (seed, name, accuracy)
            assert pgr[name]["lo"] > 0 and pgr[name]["lo"] <= 1, (seed, name, pgr[name])
            if name != "student_logconf":
                assert accuracy[name] < accuracy["ceiling"], (seed, name, accuracy)
        # the confidence loss recovers the most of the gap
        assert max(pgr, key=lambda n: pgr[n]["pgr"]) == "student_logconf", (seed, pgr)


@pytest.mark.slow
def test_every_method_on_the_toy_task_gets_a_pgr_and_its_diagnostics(tmp_path):
    """`python w2s.py --students all` (one seed, an ensemble of 3): one table with every method, each with a PGR and
    its interval, its diagnostics, and the learned member weights beside each member's own accuracy."""
    results = w2s.main(["--students", "all", "--ensemble", "3", "--out", str(tmp_path), "--quiet", "--n-boot", "200"])
    r = results["seeds"]["0"]
    methods = ["naive", "logconf", "entropy", "product", "window", "hard", "soft", "learned", "selective", "genft"]
    assert set(r["pgr"]) == {f"student_{m}" for m in methods}
    table = (tmp_path / "results.md").read_text()
    for name, pgr in r["pgr"].items():
        accuracy = pgr["accuracy"]
        assert accuracy["pgr"] is not None and accuracy["lo"] <= accuracy["pgr"] <= accuracy["hi"], (name, accuracy)
        assert f"| {name} |" in table
        d = r["diagnostics"][name]
        assert 0 <= d["agreement_on_supervisor_errors"] <= 1 and 0 <= d["agreement"] <= 1 and d["misfit_xent"] > 0
        # gain in accuracy is the student's test accuracy minus its supervisor's, as the table shows them
        supervisor = pgr["supervisor"]
        assert d["gain_accuracy"] == pytest.approx(r["runs"][name]["accuracy"] - r["runs"][supervisor]["accuracy"])
    weights = r["member_weights"]["student_learned"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1, abs=1e-4)
    assert "Learned member weights of student_learned" in table and "| ensemble/member2 |" in table
    assert (tmp_path / "results_misfit.png").stat().st_size > 0
