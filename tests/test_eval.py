import json
import math

import numpy as np
import pytest

import eval as w2s_eval
from eval import evaluate_experiment, mean_std, metrics, pgr, pgr_ci, write_results

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
    for point, lo, hi in (small, large):
        assert lo < point < hi
    assert (large[2] - large[1]) < 0.6 * (small[2] - small[1])  # ~1/sqrt(10) expected
    assert pgr_ci(*pgr_problem(200), "accuracy", n_boot=300) == small
    assert pgr_ci(*pgr_problem(200), "accuracy", n_boot=300, seed=1) != small


def test_pgr_ci_resamples_weak_student_and_ceiling_together():
    # a student identical to the ceiling recovers the whole gap in every paired resample: a zero-width interval
    # (resampling the three independently would spread it widely)
    y, weak, _, ceiling = pgr_problem(300)
    assert pgr_ci(y, weak, ceiling, ceiling, "f1", n_boot=200) == (1.0, 1.0, 1.0)


def test_pgr_ci_point_is_pgr_of_the_test_set_metrics():
    y, weak, student, ceiling = pgr_problem(300)
    point, _, _ = pgr_ci(y, weak, student, ceiling, "auroc", n_boot=50)
    expected = pgr(metrics(y, weak)["auroc"], metrics(y, student)["auroc"], metrics(y, ceiling)["auroc"])
    assert point == pytest.approx(expected)


def test_pgr_ci_with_ceiling_equal_to_weak_raises():
    y, weak, student, _ = pgr_problem(100)
    with pytest.raises(ValueError, match="no performance gap to recover"):
        pgr_ci(y, weak, student, weak, "accuracy", n_boot=50)


def test_pgr_ci_gives_nan_interval_when_too_many_resamples_are_degenerate():
    # weak and ceiling differ on one example of 50: about (49/50)^50 = 36% of resamples miss it, and have no PGR
    y = np.ones(50, dtype=int)
    weak = np.full(50, 0.9)
    ceiling = weak.copy()
    weak[0] = 0.1
    student = np.full(50, 0.9)
    with pytest.warns(UserWarning, match=r"bootstrap resamples have ceiling == weak.*reported as nan"):
        point, lo, hi = pgr_ci(y, weak, student, ceiling, "accuracy", n_boot=200)
    assert point == pytest.approx(1.0) and math.isnan(lo) and math.isnan(hi)


# ----------------------------------------------------------------------------------------------------------------
# a whole experiment directory

def write_predictions(path, ids, labels, probs):
    path.mkdir(parents=True, exist_ok=True)
    test = {"ids": list(ids), "labels": [int(v) for v in labels], "probs": np.asarray(probs).tolist()}
    (path / "predictions.json").write_text(json.dumps({"test": test, "val": test}))


def probs_with_n_right(y, n_right):
    """Hard probabilities, right on exactly the first n_right examples."""
    right = np.arange(len(y)) < n_right
    p1 = np.where(right == (y == 1), 0.9, 0.1)
    return np.stack([1 - p1, p1], axis=1)


N_RIGHT = {  # per seed, out of 20 test examples
    0: {"weak": 12, "ensemble/member0": 11, "ensemble/member1": 12, "ensemble/hard": 14, "ensemble/soft": 13,
        "ceiling": 20, "student_naive": 16, "student_hard": 17, "student_soft": 16},
    1: {"weak": 10, "ensemble/member0": 10, "ensemble/member1": 11, "ensemble/hard": 12, "ensemble/soft": 12,
        "ceiling": 18, "student_naive": 12, "student_hard": 15, "student_soft": 15},
}


def write_experiment(out):
    y = np.array([1, 0] * 10)
    ids = [f"ex{i}" for i in range(20)]
    for seed, runs in N_RIGHT.items():
        for name, n_right in runs.items():
            probs = probs_with_n_right(y, n_right)
            order = np.arange(20)[::-1] if name == "student_naive" else np.arange(20)  # ids aligned by id, not row
            write_predictions(out / f"seed{seed}" / name, [ids[i] for i in order], y[order], probs[order])


def test_evaluate_experiment_and_write_results_on_a_synthetic_run_directory(tmp_path):
    write_experiment(tmp_path)
    results = evaluate_experiment(tmp_path, n_boot=200)
    seed0 = results["seeds"]["0"]
    assert seed0["n_test"] == 20
    assert set(seed0["runs"]) == set(N_RIGHT[0])
    assert seed0["runs"]["weak"]["accuracy"] == pytest.approx(12 / 20)
    assert seed0["runs"]["student_naive"]["accuracy"] == pytest.approx(16 / 20)
    # each student against its own supervisor; student_logconf has no run and is skipped
    assert set(seed0["pgr"]) == {"student_naive", "student_hard", "student_soft"}
    naive = seed0["pgr"]["student_naive"]
    assert naive["supervisor"] == "weak"
    assert naive["accuracy"]["pgr"] == pytest.approx((16 - 12) / (20 - 12))
    assert naive["accuracy"]["lo"] <= naive["accuracy"]["pgr"] <= naive["accuracy"]["hi"]
    assert seed0["pgr"]["student_hard"]["accuracy"]["pgr"] == pytest.approx((17 - 14) / (20 - 14))
    assert seed0["pgr"]["student_soft"]["supervisor"] == "ensemble/soft"
    assert seed0["pgr"]["student_soft"]["accuracy"]["pgr"] == pytest.approx((16 - 13) / (20 - 13))
    # across seeds: seed 1 naive PGR = (12 - 10) / (18 - 10)
    summary = results["summary"]["pgr"]["student_naive"]["accuracy"]
    assert summary["mean"] == pytest.approx((0.5 + 0.25) / 2)
    assert summary["std"] == pytest.approx(np.std([0.5, 0.25], ddof=1))
    assert summary["n_seeds"] == 2
    assert results["summary"]["runs"]["ceiling"]["accuracy"]["mean"] == pytest.approx((1.0 + 0.9) / 2)
    assert results["skipped"] == []

    write_results(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text()) == results  # strict JSON, nothing lost
    table = (tmp_path / "results.md").read_text()
    for row in ("| weak |", "| ensemble/hard |", "| ensemble/soft |", "| student_naive | weak |",
                "| student_hard | ensemble/hard |", "| ceiling |"):
        assert row in table
    assert "student_logconf" not in table
    assert "0.38 ± 0.18" in table  # student_naive accuracy PGR over the two seeds
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_single_seed_table_shows_pgr_with_its_interval(tmp_path, capsys):
    write_experiment(tmp_path)
    for d in (tmp_path / "seed1").rglob("predictions.json"):
        d.unlink()
    w2s_eval.main([str(tmp_path), "--n-boot", "100"])
    printed = capsys.readouterr().out
    p = json.loads((tmp_path / "results.json").read_text())["seeds"]["0"]["pgr"]["student_naive"]["accuracy"]
    assert "| student_naive | weak | 0.800 |" in printed
    assert f"0.50 [{p['lo']:.2f}, {p['hi']:.2f}]" in printed


def test_evaluate_experiment_rejects_runs_on_different_test_examples(tmp_path):
    y = np.array([1, 0, 1, 0])
    write_predictions(tmp_path / "seed0" / "weak", ["a", "b", "c", "d"], y, probs_with_n_right(y, 2))
    write_predictions(tmp_path / "seed0" / "ceiling", ["a", "b", "c", "e"], y, probs_with_n_right(y, 4))
    with pytest.raises(ValueError, match=r"ceiling/predictions.json and .*weak/predictions.json predict different "
                                         r"test examples \(1 missing, 1 extra"):
        evaluate_experiment(tmp_path, n_boot=10)


def test_evaluate_experiment_rejects_disagreeing_labels_and_empty_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no seed<S>/ directories"):
        evaluate_experiment(tmp_path)
    y = np.array([1, 0, 1, 0])
    write_predictions(tmp_path / "seed0" / "weak", ["a", "b", "c", "d"], y, probs_with_n_right(y, 2))
    write_predictions(tmp_path / "seed0" / "ceiling", ["a", "b", "c", "d"], 1 - y, probs_with_n_right(y, 4))
    with pytest.raises(ValueError, match="disagree on the label of test id 'a'"):
        evaluate_experiment(tmp_path, n_boot=10)


def test_generation_runs_are_skipped_with_a_note(tmp_path):
    run = tmp_path / "seed0" / "weak"
    run.mkdir(parents=True)
    (run / "predictions.json").write_text(json.dumps({"test": {"ids": ["a"], "labels": [1], "continuations": [["x"]]}}))
    results = evaluate_experiment(tmp_path, n_boot=10)
    assert results["seeds"] == {}
    assert "no class probabilities" in results["skipped"][0]
    write_results(tmp_path, results)
    assert "No classification runs" in (tmp_path / "results.md").read_text()
