"""End to end: train.py and w2s.py on real safety rows with tiny random GPTs (seconds, CPU)."""
import json

import pytest

import train
import w2s
from core.cli import UserError
from helpers import kill_w2s_after, nulls_without_reason, ragged_table_rows, without_paths


@pytest.fixture(scope="module")
def models(tmp_path_factory, save_tiny_gpt):
    d = tmp_path_factory.mktemp("models")
    return save_tiny_gpt(d / "weak", 1, 16), save_tiny_gpt(d / "strong", 2, 32)


def w2s_args(shared_data, models, out):
    weak, strong = models
    return ["--task", "safety", "--data-dir", str(shared_data), "--limit", "24", "--weak", weak, "--strong", strong,
            "--ensemble", "2", "--out", str(out), "--max-length", "32", "--epochs", "1", "--batch-size", "8",
            "--n-boot", "50", "--lr", "1e-3"]


def test_train_same_seed_gives_identical_metrics_and_predictions(shared_data, models, tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = train.parse_args(["--task", "safety", "--data-dir", str(shared_data), "--limit", "24", "--role", "weak",
                                "--model", models[0], "--out", str(tmp_path / name), "--max-length", "32",
                                "--epochs", "1", "--batch-size", "8", "--lr", "1e-3"])
        metrics = train.run(cfg)
        runs.append((metrics, json.loads((tmp_path / name / "predictions.json").read_text())))
    (m1, p1), (m2, p2) = runs
    assert m1["test"] == m2["test"] and m1["best_val_loss"] == m2["best_val_loss"]
    assert p1 == p2
    assert set(p1) == {"test", "val", "w2s_train"}  # the weak role labels w2s_train for the student
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["train"]["seed"] == 0 and config["data"]["splits"]["test"]["size"] == 24


def test_train_rerun_with_same_config_is_skipped_and_changed_config_reruns(shared_data, models, tmp_path):
    args = ["--task", "safety", "--data-dir", str(shared_data), "--limit", "16", "--role", "weak", "--model", models[0],
            "--out", str(tmp_path / "w"), "--max-length", "32", "--epochs", "1", "--batch-size", "8"]
    train.run(train.parse_args(args))
    stamp = (tmp_path / "w" / "metrics.json").stat().st_mtime_ns
    train.run(train.parse_args(args))
    assert (tmp_path / "w" / "metrics.json").stat().st_mtime_ns == stamp
    train.run(train.parse_args(args + ["--lr", "1e-4"]))
    assert (tmp_path / "w" / "metrics.json").stat().st_mtime_ns != stamp
    assert json.loads((tmp_path / "w" / "config.json").read_text())["train"]["lr"] == 1e-4


def test_student_refuses_weak_labels_for_other_examples(shared_data, models, tmp_path):
    common = ["--task", "safety", "--data-dir", str(shared_data), "--max-length", "32", "--epochs", "1", "--batch-size", "8"]
    train.run(train.parse_args(common + ["--limit", "16", "--role", "weak", "--model", models[0], "--out", str(tmp_path / "weak")]))
    with pytest.raises(UserError, match="other examples"):
        train.run(train.parse_args(common + ["--limit", "20", "--role", "student", "--model", models[1],
                                             "--out", str(tmp_path / "student")]))
    with pytest.raises(UserError, match="weak labels not found"):
        train.run(train.parse_args(common + ["--limit", "16", "--role", "student", "--model", models[1],
                                             "--out", str(tmp_path / "elsewhere" / "student")]))


def test_student_vote_trains_on_that_vote_of_the_ensemble(shared_data, models, tmp_path, capsys):
    common = ["--task", "safety", "--data-dir", str(shared_data), "--limit", "16", "--max-length", "32",
              "--epochs", "1", "--batch-size", "8", "--lr", "1e-3"]
    student = common + ["--role", "student", "--model", models[1]]
    with pytest.raises(UserError, match=r"weak labels not found: .*ensemble/hard/predictions.json"):
        train.run(train.parse_args(student + ["--vote", "hard", "--out", str(tmp_path / "student_hard")]))
    train.run(train.parse_args(common + ["--role", "weak", "--ensemble", "2", "--model", models[0],
                                         "--out", str(tmp_path / "ensemble")]))
    test_probs = {}
    for name, extra in {"hard": ["--vote", "hard"], "soft": ["--vote", "soft"],
                        "explicit": ["--weak-labels", str(tmp_path / "ensemble" / "hard" / "predictions.json")]}.items():
        train.run(train.parse_args(student + extra + ["--out", str(tmp_path / f"student_{name}")]))
        test_probs[name] = json.loads((tmp_path / f"student_{name}" / "predictions.json").read_text())["test"]["probs"]
    assert test_probs["hard"] == test_probs["explicit"]  # --vote hard reads ensemble/hard beside the run
    assert test_probs["hard"] != test_probs["soft"]  # hard (one-hot) and soft (mean) votes are different targets
    with pytest.raises(SystemExit):  # argparse: invalid choice, with the choices listed
        train.parse_args(student + ["--vote", "medium", "--out", str(tmp_path / "student_medium")])
    assert "invalid choice: 'medium' (choose from '', 'hard', 'soft')" in capsys.readouterr().err


@pytest.mark.slow
def test_w2s_end_to_end_writes_results_and_resumes_after_kill_with_identical_results(shared_data, models, tmp_path):
    full = w2s.main(w2s_args(shared_data, models, tmp_path / "full"))
    for name in ("results.json", "results.md", "results.png"):
        assert (tmp_path / "full" / name).exists(), name
    seed = full["seeds"]["0"] if "seeds" in full else None
    text = (tmp_path / "full" / "results.md").read_text()
    for row in ("weak", "ensemble/hard", "ensemble/soft", "student_naive", "student_logconf", "student_hard",
                "student_soft", "ceiling"):
        assert f"| {row} |" in text
    assert seed is not None and "pgr" in json.dumps(seed).lower()

    # the same command in a subprocess, killed as soon as its first stage has finished, then rerun to the end
    out = tmp_path / "killed"
    kill_w2s_after(w2s_args(shared_data, models, out), out / "seed0" / "weak" / "metrics.json")
    assert not (out / "results.json").exists()
    resumed = w2s.main(w2s_args(shared_data, models, out))
    assert without_paths(resumed) == without_paths(full)
    saved = json.loads((out / "results.json").read_text())
    assert without_paths(saved) == without_paths(json.loads((tmp_path / "full" / "results.json").read_text()))


@pytest.mark.slow
def test_w2s_burns_runs_anthropic_hh_end_to_end_and_reports_tasks_it_cannot_load(shared_data, models, tmp_path):
    weak, strong = models
    out = tmp_path / "burns"
    combined = w2s.main(["--task", "burns", "--burns-tasks", "anthropic_hh,sciq", "--data-dir", str(shared_data),
                         "--limit", "16", "--weak", weak, "--strong", strong, "--ensemble", "0",
                         "--students", "naive,logconf", "--out", str(out), "--max-length", "32", "--epochs", "1",
                         "--batch-size", "8", "--n-boot", "20"])
    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).exists() and (out / "anthropic_hh" / name).exists(), name
    assert [row["task"] for row in combined["tasks"]] == ["anthropic_hh"]
    assert {"weak", "ceiling", "student_naive_pgr", "student_logconf_pgr"} <= set(combined["tasks"][0])
    # sciq has no local copy under shared data and the Hub is unreachable: one sentence, not a crash
    assert "sciq" in combined["not_run"] and "--data-dir" in combined["not_run"]["sciq"]
    table = (out / "results.md").read_text()
    assert "| anthropic_hh |" in table and "| sciq | not run" in table
    for path in (out / "results.json", out / "anthropic_hh" / "results.json"):  # one seed: std n/a, and says why
        assert nulls_without_reason({k: v for k, v in json.loads(path.read_text()).items() if k != "config"}) == []


def test_results_md_opens_with_task_splits_models_seeds_and_changed_settings(shared_data, tmp_path):
    results = w2s.main(["--task", "safety", "--data-dir", str(shared_data), "--limit", "24", "--weak", "random:1x16",
                        "--strong", "random:1x32", "--ensemble", "0", "--students", "naive", "--out", str(tmp_path),
                        "--max-length", "32", "--epochs", "1", "--batch-size", "8", "--n-boot", "20", "--quiet",
                        "--weak-train-layers", "all"])
    head = (tmp_path / "results.md").read_text().split("| Model |")[0]
    assert "Task **safety** (classification; labels safe / unsafe)" in head
    assert "splits of seed 0: weak_train 24, w2s_train 24, val 24, test 24." in head
    assert "Models: weak `random:1x16` (random init); strong `random:1x32` (random init)." in head
    assert "Seeds: 0. Settings that differ from the defaults: limit 24, epochs 1, batch_size 8, max_length 32" in head
    assert "students naive, weak_train_layers all." in head  # w2s.py's own flags too
    models = results["description"]["models"]  # results.json says the models were random-init, by spec
    assert models["weak"]["identity"] == {"random": "random:1x16"} and models["strong"]["spec"] == "random:1x32"


def test_each_row_records_its_checkpoint_rule_per_method_default_or_select(shared_data, tmp_path, monkeypatch):
    """Without --select every student predicts with its method's rule (stages.SELECT) and supervisors and ceilings
    with best; results.json's selection and the Weights column of results.md say so row by row. --select final
    sets every stage's rule, the weak supervisor's too."""
    from experiment import stages
    monkeypatch.setattr(stages, "SELECT", {**stages.SELECT, "naive": "final", "logconf": "objective"})
    args = ["--task", "safety", "--data-dir", str(shared_data), "--limit", "24", "--weak", "random:1x16", "--strong",
            "random:1x32", "--ensemble", "0", "--students", "naive,logconf,entropy", "--max-length", "32", "--epochs",
            "2", "--batch-size", "8", "--n-boot", "20", "--lr", "1e-2", "--quiet"]
    own = w2s.main(args + ["--out", str(tmp_path / "own")])
    assert own["selection"] == {"weak": "best", "ceiling": "best", "student_naive": "final",
                                "student_logconf": "objective", "student_entropy": "best"}
    table = (tmp_path / "own" / "results.md").read_text()
    for row in ("| student_naive | weak | final |", "| student_logconf | weak | best val own loss |",
                "| student_entropy | weak | best val xent |"):
        assert row in table, row
    assert ragged_table_rows(table) == []
    final = w2s.main(args + ["--select", "final", "--out", str(tmp_path / "final")])
    assert set(final["selection"].values()) == {"final"}
    weak = [json.loads((tmp_path / run / "seed0" / "weak" / "metrics.json").read_text()) for run in ("own", "final")]
    assert weak[0]["select"] == "best" and weak[1]["select"] == "final"
