"""The results page (w2s.py --task page, experiment/page.py): end to end on a toy shape, the same page on a rerun;
its intervals and beats-naive counts against brute-force computations; the pair chosen on val alone."""
import json
import math
import shutil

import numpy as np
import pytest

import w2s
from core import cli
from experiment import page

PAGE = ["--task", "page", "--page-tasks", "toy", "--sizes", "random:1x16,random:1x32", "--limit", "80",
        "--page-limits", "toy=40", "--epochs", "1",
        "--seeds", "0", "1", "--ensemble", "0", "--students", "logconf", "--n-boot", "50", "--lr", "1e-3", "--quiet"]


@pytest.fixture(scope="module")
def toy_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("page")
    sections = w2s.main(PAGE + ["--out", str(out)])
    return out, sections


@pytest.mark.slow
def test_the_page_runs_end_to_end_on_a_toy_shape_and_a_rerun_prints_the_same_page(toy_page):
    out, sections = toy_page
    text = (out / "page.md").read_text()
    record = json.loads((out / "page.json").read_text())
    assert record["command"].startswith("python w2s.py --task page") and record["tasks"][0]["task"] == "toy"
    section = sections[0]
    assert section["choice"] == {"best": ["random-1x16", "random-1x32"]}  # two models: the only pair
    rows = {r["name"]: r for r in section["pairs"]["best"]["rows"]}
    assert list(rows) == ["weak", "student_naive", "student_logconf", "ceiling"]  # naive is always there: the gap
    assert set(rows["student_logconf"]["seeds"]) == {"0", "1"} and "ci95" in rows["weak"]["seeds"]["0"]
    assert rows["student_logconf"]["beats_naive"][1] == 2
    mean = {name: np.mean([s["accuracy"] for s in r["seeds"].values()]) for name, r in rows.items()}
    gap = mean["ceiling"] - mean["weak"]
    assert rows["student_naive"]["pgr_of_means"] == (pytest.approx((mean["student_naive"] - mean["weak"]) / gap)
                                                     if gap > 0 else None)
    assert section["n_test"] == 40  # --page-limits' toy=40, not --limit's 80
    assert "| student_logconf | weak |" in text and "## toy" in text and (out / "toy" / "sweep" / "seed1").is_dir()
    w2s.main(PAGE + ["--out", str(out)])  # every stage found done: the same numbers, the same page
    assert (out / "page.md").read_text() == text


@pytest.mark.parametrize("text", ["toy=1", "toy=x", "safety=40", "toy=40,toy=50", "toy"])
def test_a_bad_page_limit_ends_in_one_line(text, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main_guard(lambda: w2s.main(["--task", "page", "--page-tasks", "toy", "--page-limits", text]))
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().startswith(f"error: argument --page-limits: {text.split(',')[-1]!r}")


def t_quantile_by_integration(df, p=0.975):
    """The t distribution's p-quantile by bisection on its CDF, integrated numerically (trapezoids)."""
    def cdf(t):
        x = np.linspace(0.0, t, 200_001)
        pdf = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (1 + x * x / df) ** (-(df + 1) / 2)
        return 0.5 + float(np.sum((pdf[1:] + pdf[:-1]) / 2 * np.diff(x)))
    lo, hi = 0.0, 20.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def test_the_95_percent_interval_over_seeds_is_the_t_interval_computed_by_hand():
    for df in (1, 2, 4, 9, 19, 29):
        assert abs(page.T975[df - 1] - t_quantile_by_integration(df)) < 1e-3, df
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 40):
        x = rng.normal(0.7, 0.05, n)
        q = t_quantile_by_integration(n - 1) if n - 1 <= 30 else 1.960
        half = q * math.sqrt(sum((v - x.mean()) ** 2 for v in x) / (n - 1)) / math.sqrt(n)
        got = page.interval95(list(x))
        assert got["n"] == n and abs(got["lo"] - (x.mean() - half)) < 1e-3 and abs(got["hi"] - (x.mean() + half)) < 1e-3
    assert page.interval95([0.5, None, float("nan")]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 1}
    assert page.interval95([None])["mean"] is None


def test_beats_naive_counts_the_seeds_a_loop_counts():
    rng = np.random.default_rng(1)
    per_seed = {str(s): {"runs": {"student_naive": {"accuracy": float(rng.random())},
                                  "student_logconf": {"accuracy": float(rng.random())}}} for s in range(10)}
    per_seed["10"] = {"runs": {"student_naive": {"accuracy": 0.5}}}  # no logconf on this seed: not counted
    wins = 0
    for r in per_seed.values():
        if "student_logconf" in r["runs"] and r["runs"]["student_logconf"]["accuracy"] > r["runs"]["student_naive"]["accuracy"]:
            wins += 1
    assert page.beats_naive(per_seed, "student_logconf") == (wins, 10)


def test_the_pair_rule_best_val_ceiling_and_the_lowest_shallower_supervisor_with_the_whole_model_beside_it():
    models = ["d2", "d4", "d8", "whole"]
    val = {"weak": {"d2": [0.60, 0.62], "d4": [0.55, 0.57], "d8": [0.70, 0.70]},
           "ceiling": {"d4": [0.60, 0.60], "d8": [0.75, 0.77], "whole": [0.70, 0.72]}}
    assert page.choose_pair(val, models) == {"best": ("d4", "d8"), "whole": ("d4", "whole")}
    val["ceiling"]["whole"] = [0.80, 0.80]
    assert page.choose_pair(val, models) == {"best": ("d4", "whole")}  # d8's supervisor is deeper: not a candidate


@pytest.mark.slow
def test_scrambling_the_test_labels_changes_no_choice(toy_page, tmp_path):
    out, sections = toy_page
    sweep_dir = shutil.copytree(out / "toy" / "sweep", tmp_path / "sweep")
    sweep = json.loads((sweep_dir / "results.json").read_text())
    before = page.val_accuracies(sweep_dir, sweep)
    rng = np.random.default_rng(0)
    for path in sweep_dir.glob("seed*/*/*/predictions.json"):
        predictions = json.loads(path.read_text())
        predictions["test"]["labels"] = [int(v) for v in rng.permutation(predictions["test"]["labels"])]
        predictions["test"]["probs"] = rng.dirichlet([1, 1], len(predictions["test"]["probs"])).tolist()
        path.write_text(json.dumps(predictions))
    assert page.val_accuracies(sweep_dir, sweep) == before
    assert page.choose_pair(before, sweep["sweep"]) == {k: tuple(v) for k, v in sections[0]["choice"].items()}


def test_one_seed_has_a_gap_only_where_its_paired_bootstrap_interval_lies_above_0():
    section = {"train_layers": "0", "n_test": 20, "task": "toy"}
    one_seed = page.interval95([0.15])  # lo = hi = 0.15: no interval over seeds to decide with
    for clear, said in ((0, "No honest gap"), (1, "There is a gap to recover")):
        pair = {"gap": one_seed | {"clear": clear, "n_seeds": 1}, "rows": []}
        assert page.evidence(section, pair).startswith(said), clear
    two = page.interval95([0.15, 0.16]) | {"clear": 0, "n_seeds": 2}  # over seeds the t-interval decides
    assert page.evidence(section, {"gap": two, "rows": []}).startswith("There is a gap to recover")
