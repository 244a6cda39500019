import json
import math

import numpy as np
import pytest

from core.cli import UserError
from experiment import evaluation as w2s_eval
from experiment import report
from experiment.evaluation import evaluate_experiment, write_results
from helpers import nulls_without_reason, write_experiment_json, write_stage
from scoring import metrics as w2s_metrics
from scoring.metrics import mean_std, metrics, pgr, pgr_ci

# 10 examples, confusion matrix TP=3 FN=1 FP=2 TN=4 at threshold 0.5, with tied scores across the classes
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P1 = np.array([0.9, 0.8, 0.6, 0.3, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1])


def test_metrics_match_hand_computed_confusion_matrix():
    m = metrics(Y, np.stack([1 - P1, P1], axis=1))
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    f1_negative = 2 * 4 / (2 * 4 + 2 + 1)
    assert m["f1_weighted"] == pytest.approx((6 / 9 * 4 + f1_negative * 6) / 10)
    # positive-negative pairs ranked right: 0.9 beats 6; 0.8 beats 5 and ties 1; 0.6 beats 4; 0.3 beats 2, ties 1
    assert m["auroc"] == pytest.approx((6 + 5.5 + 4 + 2.5) / 24)


def test_metrics_accept_prob_of_class_1_vector():
    assert metrics(Y, P1) == metrics(Y, np.stack([1 - P1, P1], axis=1))


def test_metrics_predict_class_0_on_a_probability_tie():
    for probs in ([[0.5, 0.5], [0.5, 0.5]], [0.5, 0.5]):  # like argmax: a tie goes to the first class
        m = metrics([0, 1], probs)
        assert m["accuracy"] == 0.5 and m["f1"] == 0.0


def test_auroc_is_nan_when_only_one_class_is_present():
    m = metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert math.isnan(m["auroc"])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["balanced_accuracy"] == pytest.approx(2 / 3)


def test_metrics_reject_bad_input_with_clear_messages():
    with pytest.raises(ValueError, match=r"probs must have shape \(3,\) or \(3, 2\).*got \(2, 2\)"):
        metrics([0, 1, 1], [[0.5, 0.5], [0.1, 0.9]])
    with pytest.raises(ValueError, match="probs row 1 is not a probability"):
        metrics([0, 1], [0.3, 1.2])
    with pytest.raises(ValueError, match="probs row 0 does not sum to 1"):
        metrics([0, 1], [[0.3, 0.3], [0.1, 0.9]])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics([0, 2], [0.3, 0.9])


def test_pgr_formula_and_degenerate_ceiling():
    assert pgr(0.6, 0.7, 0.8) == pytest.approx(0.5)
    assert pgr(0.6, 0.55, 0.8) == pytest.approx(-0.25)
    assert pgr(0.6, 0.9, 0.8) == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"ceiling \(0.7\) equals the weak supervisor \(0.7\)"):
        pgr(0.7, 0.8, 0.7)


def test_mean_std_is_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)


def synthetic_probs(y, accuracy, rng):
    """Probabilities that are right on a random `accuracy` share of the examples, with varied confidence."""
    right = rng.random(len(y)) < accuracy
    confidence = 0.5 + 0.5 * rng.random(len(y))
    p1 = np.where(right == (y == 1), confidence, 1 - confidence)
    return np.stack([1 - p1, p1], axis=1)


def pgr_problem(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, synthetic_probs(y, 0.65, rng), synthetic_probs(y, 0.75, rng), synthetic_probs(y, 0.9, rng)


def test_pgr_ci_contains_point_narrows_with_more_examples_and_is_deterministic():
    small = pgr_ci(*pgr_problem(200), "accuracy", n_boot=300)
    large = pgr_ci(*pgr_problem(2000), "accuracy", n_boot=300)
    for entry in (small, large):
        assert entry["lo"] < entry["pgr"] < entry["hi"] and entry["gap_lo"] > 0
    assert (large["hi"] - large["lo"]) < 0.6 * (small["hi"] - small["lo"])  # ~1/sqrt(10) expected
    assert pgr_ci(*pgr_problem(200), "accuracy", n_boot=300) == small
    assert pgr_ci(*pgr_problem(200), "accuracy", n_boot=300, seed=1) != small


def test_pgr_ci_resamples_weak_student_and_ceiling_together():
    # a student identical to the ceiling recovers the whole gap in every paired resample: a zero-width interval
    # (resampling the three independently would spread it widely)
    y, weak, _, ceiling = pgr_problem(300)
    entry = pgr_ci(y, weak, ceiling, ceiling, "f1", n_boot=200)
    assert (entry["pgr"], entry["lo"], entry["hi"]) == (1.0, 1.0, 1.0)


def test_pgr_ci_point_is_pgr_of_the_test_set_metrics():
    y, weak, student, ceiling = pgr_problem(300)
    entry = pgr_ci(y, weak, student, ceiling, "auroc", n_boot=50)
    expected = pgr(metrics(y, weak)["auroc"], metrics(y, student)["auroc"], metrics(y, ceiling)["auroc"])
    assert entry["pgr"] == pytest.approx(expected)
    assert entry["gap"] == pytest.approx(metrics(y, ceiling)["auroc"] - metrics(y, weak)["auroc"])


def test_pgr_is_na_with_the_gap_when_the_ceiling_is_not_clearly_better_than_the_supervisor():
    y, weak, student, _ = pgr_problem(100)
    same = pgr_ci(y, weak, student, weak, "accuracy", n_boot=50)  # ceiling == supervisor: gap exactly 0
    assert same["pgr"] is None and same["reason"] == "ceiling no better than supervisor" and same["gap"] == 0
    # ceiling and weak differ on one example of 50: a real gap of 0.02 whose interval includes 0 (a third of the
    # resamples miss that example); the ratio would be 1.0 [nan, nan] or worse, and is reported as n/a instead
    y = np.ones(50, dtype=int)
    weak = np.full(50, 0.9)
    ceiling = weak.copy()
    weak[0] = 0.1
    entry = pgr_ci(y, weak, np.full(50, 0.9), ceiling, "accuracy", n_boot=200)
    assert entry["pgr"] is None and entry["reason"] == "ceiling ≈ supervisor"
    assert entry["gap"] == pytest.approx(0.02) and entry["gap_lo"] == 0 and entry["gap_hi"] > 0
    assert report.pgr_text(entry) == f"n/a (ceiling ≈ supervisor; gap +0.020 [+0.000, {entry['gap_hi']:+.3f}])"
    worse = pgr_ci(y, ceiling, np.full(50, 0.9), weak, "accuracy", n_boot=200)  # a ceiling worse than its supervisor
    assert worse["pgr"] is None and worse["reason"] == "ceiling no better than supervisor"


def test_pgr_interval_always_contains_its_point_and_counts_resamples_whose_gap_flips():
    # a small clear gap with a heavy-tailed ratio: percentile intervals of a ratio can miss its point estimate
    rng = np.random.default_rng(3)
    n_boot = 2000
    weak = rng.normal(0.60, 0.01, n_boot)
    ceiling, student = weak + rng.normal(0.06, 0.02, n_boot), weak + rng.normal(0.01, 0.02, n_boot)
    ceiling[:20] = weak[:20] - 0.01  # 1% of the resamples flip the gap's sign: kept and counted
    entry = w2s_metrics.pgr_with_interval(0.60, 0.61, 0.66, weak, student, ceiling)
    assert entry["gap_lo"] > 0 and entry["lo"] <= entry["pgr"] <= entry["hi"]
    assert entry["n_flipped"] >= 20 and entry["n_zero_gap"] == 0
    results = {"seeds": {"0": {"pgr": {"student_naive": {"supervisor": "weak", "ceiling": "ceiling", "accuracy": entry}}}}}
    assert report.gap_table(results, ["accuracy"], ["Accuracy"])[-1] == (  # and results.md says how many
        "Bootstrap resamples in which the gap flipped sign (kept in the PGR intervals, not dropped): "
        f"student_naive accuracy: {entry['n_flipped']} (seed 0).")
    point_outside = w2s_metrics.pgr_with_interval(0.60, 0.90, 0.70, weak, weak + 0.001, weak + 0.10)
    assert point_outside["pgr"] == pytest.approx(3.0) and point_outside["hi"] == pytest.approx(3.0)


def test_diagnostics_equal_direct_computation_on_a_hand_made_example():
    y = np.array([1, 1, 0, 0, 1])
    supervisor = np.array([0.9, 0.2, 0.3, 0.8, 0.4])  # predicts 1 0 0 1 0: wrong on rows 1, 3, 4
    student = np.array([0.8, 0.7, 0.4, 0.7, 0.9])     # predicts 1 1 0 1 1: right on rows 0, 1, 2, 4
    train_sup, train_student = np.array([0.9, 0.1, 0.5]), np.array([0.7, 0.2, 0.5])
    d = w2s_metrics.diagnostics(y, student, supervisor, train_student, train_sup)
    assert d["agreement"] == pytest.approx(3 / 5)  # rows 0, 2, 3
    assert d["agreement_on_supervisor_errors"] == pytest.approx(1 / 3)  # of rows 1, 3, 4: row 3
    assert d["misfit_sq"] == pytest.approx(((0.2 ** 2) + (0.1 ** 2) + 0) / 3)
    xent = -np.mean([0.9 * np.log(0.7) + 0.1 * np.log(0.3), 0.1 * np.log(0.2) + 0.9 * np.log(0.8), np.log(0.5)])
    assert d["misfit_xent"] == pytest.approx(xent)
    sq = lambda p: np.mean((p - y) ** 2)  # noqa: E731
    assert d["gain_sq"] == pytest.approx(sq(supervisor) - sq(student))
    assert d["gain_accuracy"] == pytest.approx(4 / 5 - 2 / 5)


# ----------------------------------------------------------------------------------------------------------------
# a whole experiment directory

def write_predictions(path, ids, labels, probs):
    test = {"ids": list(ids), "labels": [int(v) for v in labels], "probs": np.asarray(probs).tolist()}
    write_stage(path, {"predictions.json": {"test": test, "val": test}})


def probs_with_n_right(y, n_right):
    """Hard probabilities, right on exactly the first n_right examples."""
    right = np.arange(len(y)) < n_right
    p1 = np.where(right == (y == 1), 0.9, 0.1)
    return np.stack([1 - p1, p1], axis=1)


N_RIGHT = {  # per seed, out of 40 test examples
    0: {"weak": 24, "ensemble/member0": 22, "ensemble/member1": 24, "ensemble/hard": 28, "ensemble/soft": 26,
        "ceiling": 40, "student_naive": 32, "student_hard": 34, "student_soft": 32},
    1: {"weak": 20, "ensemble/member0": 20, "ensemble/member1": 22, "ensemble/hard": 24, "ensemble/soft": 24,
        "ceiling": 36, "student_naive": 24, "student_hard": 30, "student_soft": 30},
}
STUDENTS = {"student_naive": ("weak", "ceiling"), "student_logconf": ("weak", "ceiling"),
            "student_hard": ("ensemble/hard", "ceiling"), "student_soft": ("ensemble/soft", "ceiling")}
RUNS = ["weak", "ensemble/member0", "ensemble/member1", "ensemble/hard", "ensemble/soft", "student_naive",
        "student_logconf", "student_hard", "student_soft", "ceiling"]


def write_experiment(out, seeds=(0, 1)):
    y = np.array([1, 0] * 20)
    ids = [f"ex{i}" for i in range(40)]
    for seed in seeds:
        for name, n_right in N_RIGHT[seed].items():
            probs = probs_with_n_right(y, n_right)
            order = np.arange(40)[::-1] if name == "student_naive" else np.arange(40)  # ids aligned by id, not row
            write_predictions(out / f"seed{seed}" / name, [ids[i] for i in order], y[order], probs[order])
    write_experiment_json(out, seeds, RUNS, STUDENTS, description={"label_names": ["no", "yes"]})


def test_evaluate_experiment_and_write_results_on_a_synthetic_run_directory(tmp_path):
    write_experiment(tmp_path)
    results = evaluate_experiment(tmp_path, n_boot=200)
    seed0 = results["seeds"]["0"]
    assert seed0["n_test"] == 40
    assert set(seed0["runs"]) == set(N_RIGHT[0])
    assert seed0["runs"]["weak"]["accuracy"] == pytest.approx(24 / 40)
    assert seed0["runs"]["student_naive"]["accuracy"] == pytest.approx(32 / 40)
    # each student against its own supervisor; student_logconf has no run and is noted as not finished
    assert set(seed0["pgr"]) == {"student_naive", "student_hard", "student_soft"}
    naive = seed0["pgr"]["student_naive"]
    assert naive["supervisor"] == "weak"
    assert naive["accuracy"]["pgr"] == pytest.approx((32 - 24) / (40 - 24))
    assert naive["accuracy"]["lo"] <= naive["accuracy"]["pgr"] <= naive["accuracy"]["hi"]
    assert seed0["pgr"]["student_hard"]["accuracy"]["pgr"] == pytest.approx((34 - 28) / (40 - 28))
    assert seed0["pgr"]["student_soft"]["supervisor"] == "ensemble/soft"
    assert seed0["pgr"]["student_soft"]["accuracy"]["pgr"] == pytest.approx((32 - 26) / (40 - 26))
    # across seeds: seed 1 naive PGR = (24 - 20) / (36 - 20)
    summary = results["summary"]["pgr"]["student_naive"]["accuracy"]
    assert summary["mean"] == pytest.approx((0.5 + 0.25) / 2)
    assert summary["std"] == pytest.approx(np.std([0.5, 0.25], ddof=1))
    assert summary["n_seeds"] == 2 and summary["n_na"] == 0
    assert results["summary"]["runs"]["ceiling"]["accuracy"]["mean"] == pytest.approx((1.0 + 0.9) / 2)
    assert results["skipped"] == ["seed0/student_logconf: its stage has not finished (rerun w2s.py to finish it)",
                                  "seed1/student_logconf: its stage has not finished (rerun w2s.py to finish it)"]

    write_results(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text()) == results  # strict JSON, nothing lost
    table = (tmp_path / "results.md").read_text()
    for row in ("| weak |", "| ensemble/hard |", "| ensemble/soft |", "| student_naive | weak |",
                "| student_hard | ensemble/hard |", "| ceiling |", "F1 (yes)"):
        assert row in table
    assert "| student_logconf |" not in table
    assert "0.38 ± 0.18" in table  # student_naive accuracy PGR over the two seeds
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_eval_json_prints_json_alone_on_stdout(tmp_path, capsys):
    write_experiment(tmp_path, seeds=(0,))
    w2s_eval.main([str(tmp_path), "--n-boot", "100", "--json"])
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads((tmp_path / "results.json").read_text())  # a pipe gets exactly the JSON
    assert err.strip().endswith(f"results: {tmp_path / 'results.md'}, {tmp_path / 'results.json'}")


def test_single_seed_table_shows_pgr_with_its_interval(tmp_path, capsys):
    write_experiment(tmp_path, seeds=(0,))
    w2s_eval.main([str(tmp_path), "--n-boot", "100"])
    printed = capsys.readouterr().out
    p = json.loads((tmp_path / "results.json").read_text())["seeds"]["0"]["pgr"]["student_naive"]["accuracy"]
    assert "| student_naive | weak |  | 0.800 |" in printed
    assert f"0.50 [{p['lo']:.2f}, {p['hi']:.2f}]" in printed


def test_eval_reads_only_the_runs_experiment_json_lists(tmp_path):
    write_experiment(tmp_path, seeds=(0,))
    y = np.array([1, 0] * 20)
    ids = [f"ex{i}" for i in range(40)]
    write_predictions(tmp_path / "seed0" / "student_stray", ids, y, probs_with_n_right(y, 40))  # not listed
    write_predictions(tmp_path / "seed7" / "weak", ids, y, probs_with_n_right(y, 40))  # a seed not listed
    results = evaluate_experiment(tmp_path, n_boot=20)
    assert list(results["seeds"]) == ["0"] and "student_stray" not in results["seeds"]["0"]["runs"]
    (tmp_path / "experiment.json").unlink()
    with pytest.raises(UserError, match="has no experiment.json: not a run directory written by w2s.py"):
        evaluate_experiment(tmp_path)


def test_eval_refuses_a_predictions_file_that_does_not_match_its_recorded_hash(tmp_path):
    write_experiment(tmp_path, seeds=(0,))
    path = tmp_path / "seed0" / "weak" / "predictions.json"
    saved = json.loads(path.read_text())
    saved["test"]["probs"][0] = saved["test"]["probs"][0][::-1]  # one swapped probability
    path.write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"seed0/weak/predictions.json does not match the sha256 its stage recorded"):
        evaluate_experiment(tmp_path, n_boot=10)
    path.write_text(path.read_text()[:100])  # truncated
    with pytest.raises(UserError, match="does not match the sha256"):
        evaluate_experiment(tmp_path, n_boot=10)


def test_evaluate_experiment_rejects_runs_on_different_test_examples(tmp_path):
    y = np.array([1, 0, 1, 0])
    write_predictions(tmp_path / "seed0" / "weak", ["a", "b", "c", "d"], y, probs_with_n_right(y, 2))
    write_predictions(tmp_path / "seed0" / "ceiling", ["a", "b", "c", "e"], y, probs_with_n_right(y, 4))
    write_experiment_json(tmp_path, [0], ["weak", "ceiling"], {})
    with pytest.raises(UserError, match=r"ceiling/predictions.json and .*weak/predictions.json predict different "
                                        r"test examples \(1 missing, 1 extra"):
        evaluate_experiment(tmp_path, n_boot=10)


def test_evaluate_experiment_rejects_disagreeing_labels(tmp_path):
    y = np.array([1, 0, 1, 0])
    write_predictions(tmp_path / "seed0" / "weak", ["a", "b", "c", "d"], y, probs_with_n_right(y, 2))
    write_predictions(tmp_path / "seed0" / "ceiling", ["a", "b", "c", "d"], 1 - y, probs_with_n_right(y, 4))
    write_experiment_json(tmp_path, [0], ["weak", "ceiling"], {})
    with pytest.raises(UserError, match="disagree on the label of test id 'a'"):
        evaluate_experiment(tmp_path, n_boot=10)


def test_every_null_in_a_single_seed_results_json_says_why(tmp_path):
    # one seed (no std), test labels of one class (no AUROC), a supervisor without test errors (no agreement on its
    # errors) and a ceiling no better than it (no PGR): each null of results.json carries its reason
    y = np.ones(40, dtype=int)
    ids = [f"ex{i}" for i in range(40)]
    train = {"ids": ids, "probs": probs_with_n_right(y, 35).tolist()}
    for name, n_right in {"weak": 40, "ceiling": 40, "student_naive": 30}.items():
        test = {"ids": ids, "labels": y.tolist(), "probs": probs_with_n_right(y, n_right).tolist()}
        write_stage(tmp_path / "seed0" / name, {"predictions.json": {"test": test, "w2s_train": train}})
    write_experiment_json(tmp_path, [0], ["weak", "student_naive", "ceiling"], {"student_naive": ("weak", "ceiling")})
    write_results(tmp_path, evaluate_experiment(tmp_path, n_boot=50))
    results = json.loads((tmp_path / "results.json").read_text())
    seed0 = results["seeds"]["0"]
    assert seed0["runs"]["weak"]["auroc"] is None and seed0["runs"]["weak"]["ci95"]["auroc"] == [None, None]
    assert seed0["runs"]["weak"]["reason"] == "auroc: AUROC needs both classes among the test labels"
    assert seed0["diagnostics"]["student_naive"]["agreement_on_supervisor_errors"] is None
    assert seed0["pgr"]["student_naive"]["accuracy"]["pgr"] is None
    assert results["summary"]["runs"]["weak"]["accuracy"]["std"] is None
    assert results["sweep"] == [] and nulls_without_reason(results) == []


def test_table_says_na_with_the_gap_when_the_ceiling_equals_the_supervisor(tmp_path):
    y = np.array([1, 0] * 20)
    ids = [f"ex{i}" for i in range(40)]
    for name, n_right in {"weak": 30, "ceiling": 30, "student_naive": 34}.items():
        write_predictions(tmp_path / "seed0" / name, ids, y, probs_with_n_right(y, n_right))
    write_experiment_json(tmp_path, [0], ["weak", "student_naive", "ceiling"], {"student_naive": ("weak", "ceiling")})
    results = evaluate_experiment(tmp_path, n_boot=50)
    entry = results["seeds"]["0"]["pgr"]["student_naive"]["accuracy"]
    assert entry["pgr"] is None and entry["reason"] == "ceiling no better than supervisor" and entry["gap"] == 0
    assert "n/a (ceiling no better than supervisor" in report.format_table(results)
