"""What the README says of the offline demo holds, run as the README runs it (`python w2s.py --seeds 0 1 2`), with
fine-tuning on 1 thread (the toy task's default); on 2 threads one seed gives the same printed numbers: the toy
models pretrain on a fixed thread count, so only fine-tuning's thread count differs."""
import pytest

import w2s
from data import toy

STUDENTS = ["student_naive", "student_logconf", "student_hard", "student_soft"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return w2s.main(["--seeds", "0", "1", "2", "--out", str(out), "--quiet"])


def assert_readme_claims(seed, r):
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
def test_readme_demo_claims_hold_on_every_seed(demo):
    assert demo["config"]["models"] == list(toy.DEMO) and list(demo["seeds"]) == ["0", "1", "2"]
    for seed, r in demo["seeds"].items():
        assert_readme_claims(seed, r)


@pytest.mark.slow
def test_fine_tuning_on_2_threads_gives_the_printed_numbers_of_1_thread(demo, tmp_path):
    # one seed (a seed's stages do not depend on the others'): every stage's metrics within the table's last digit
    two = w2s.main(["--seeds", "2", "--out", str(tmp_path), "--quiet", "--threads", "2"])["seeds"]["2"]
    one = demo["seeds"]["2"]
    assert_readme_claims("2", two)
    assert two["runs"].keys() == one["runs"].keys()
    for name, run in one["runs"].items():
        for metric in ("accuracy", "balanced_accuracy", "auroc"):
            assert two["runs"][name][metric] == pytest.approx(run[metric], abs=1e-3), (name, metric)


@pytest.mark.slow
def test_every_method_on_the_toy_task_gets_a_pgr_and_its_diagnostics(tmp_path):
    """`python w2s.py --students all` (one seed, an ensemble of 3): one table with every method, each with a PGR and
    its interval, its diagnostics, and the learned member weights beside each member's own accuracy."""
    results = w2s.main(["--students", "all", "--ensemble", "3", "--limit", "300", "--out", str(tmp_path), "--quiet",
                        "--n-boot", "200"])
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
