"""Student methods inside train.py (the losses and label transforms themselves are tested in test_losses.py and
test_labels.py): generative fine-tuning never sees a label, --select final predicts with the last weights and --select
objective with the lowest val value of the student's own loss, the
selective student replaces exactly the confident weak labels, the learned student writes its member weights."""
import json

import numpy as np
import pytest
import torch

import train
from core.cli import UserError
from helpers import write_stage
from methods import labels
from model import GPT
from run import job, students

COMMON = ["--task", "safety", "--limit", "24", "--max-length", "32", "--epochs", "2", "--batch-size", "8",
          "--lr", "1e-3", "--quiet"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, save_tiny_gpt):
    d = tmp_path_factory.mktemp("models")
    return save_tiny_gpt(d / "weak", 1, 16), save_tiny_gpt(d / "strong", 2, 32)


def run(shared_data, out, *args):
    return train.run(train.parse_args(COMMON + ["--data-dir", str(shared_data), "--out", str(out), *args]))


@pytest.fixture
def weak_labels(shared_data, models, tmp_path):
    run(shared_data, tmp_path / "weak", "--role", "weak", "--model", models[0])
    return tmp_path / "weak" / "predictions.json"


def test_genft_learns_the_texts_and_never_sees_a_label(shared_data, models, weak_labels, tmp_path, monkeypatch):
    # two students on opposite weak labels: after the language-model phase their weights must be identical
    flipped = json.loads(weak_labels.read_text())
    for split in flipped.values():
        split["probs"] = [p[::-1] for p in split["probs"]]
    (tmp_path / "flipped.json").write_text(json.dumps(flipped))
    after_lm = []

    def stop_after_warm_start(cfg, job, rt, model):
        after_lm.append({k: v.clone() for k, v in model.state_dict().items()})
        raise KeyboardInterrupt  # the classification phase is not what this test is about
    monkeypatch.setattr(train, "train_loop", stop_after_warm_start)
    for i, labels_file in enumerate((weak_labels, tmp_path / "flipped.json")):
        with pytest.raises(KeyboardInterrupt):
            run(shared_data, tmp_path / f"genft{i}", "--role", "student", "--model", models[1], "--genft-epochs", "2",
                "--weak-labels", str(labels_file))
    pretrained = GPT.from_pretrained(models[1], n_classes=2).state_dict()
    assert all(torch.equal(after_lm[0][k], after_lm[1][k]) for k in pretrained)
    assert not torch.equal(after_lm[0]["transformer.wte.weight"], pretrained["transformer.wte.weight"])


def test_select_final_predicts_with_the_last_weights(shared_data, models, weak_labels, tmp_path, monkeypatch):
    # val loss made to rise at every evaluation: "best" keeps the first evaluation's weights, "final" the last ones
    losses = iter(np.arange(1, 100, dtype=float))
    monkeypatch.setattr(train, "evaluate_loss", lambda *a, **k: next(losses))
    base = ["--role", "ceiling", "--model", models[1], "--patience", "100"]
    best = run(shared_data, tmp_path / "best", *base)
    final = run(shared_data, tmp_path / "final", *base, "--select", "final")
    assert best["best_step"] < best["steps"] == final["steps"] == final["best_step"]
    assert final["select"] == "final" and best["select"] == "best"
    # the same weights as "best" when the last evaluation is the best one
    losses = iter(np.arange(100, 1, -1, dtype=float))
    run(shared_data, tmp_path / "last_is_best", *base)
    probs = {name: json.loads((tmp_path / name / "predictions.json").read_text())["test"]["probs"]
             for name in ("best", "final", "last_is_best")}
    assert probs["final"] == probs["last_is_best"] != probs["best"]


def test_select_objective_keeps_the_step_where_the_students_own_loss_on_val_is_lowest(
        shared_data, models, weak_labels, tmp_path):
    """--select objective with logconf: the recorded val loss is logconf's (its coefficient at the selected step,
    its threshold over val) of the kept weights' val predictions against the weak labels, and differs from the
    cross entropy --select best records."""
    from methods.losses import LOSSES, aux_coef
    base = ["--role", "student", "--model", models[1], "--weak-labels", str(weak_labels), "--loss", "logconf",
            "--patience", "100"]
    metrics = run(shared_data, tmp_path / "objective", *base, "--select", "objective")
    cfg = train.parse_args(COMMON + ["--data-dir", str(shared_data), "--out", str(tmp_path / "objective"), *base])
    prepared = job.prepare(cfg)
    val = json.loads((tmp_path / "objective" / "predictions.json").read_text())["val"]
    targets = torch.tensor(np.stack(prepared.val_targets), dtype=torch.float32)
    assert val["ids"] == [r["id"] for r in prepared.task.splits["val"]]
    coef = aux_coef(metrics["best_step"], train.plan_steps(cfg, prepared, type("R", (), {"world": 1})()).total_steps,
                    cfg.aux_coef, cfg.aux_warmup, cfg.aux_schedule)
    expected = LOSSES["logconf"](torch.log(torch.tensor(val["probs"])), targets, coef=coef).item()
    assert metrics["select"] == "objective"
    assert abs(metrics["best_val_loss"] - expected) < 1e-4
    best = run(shared_data, tmp_path / "best", *base)
    assert abs(best["best_val_loss"] - expected) > 1e-3  # the cross entropy is another number


def test_selective_student_replaces_exactly_the_confident_weak_labels(shared_data, models, weak_labels, tmp_path):
    out = tmp_path / "student_selective"
    base = ["--role", "student", "--model", models[1], "--weak-labels", str(weak_labels), "--selective", "--knn", "3"]
    # the threshold: the median confidence of the folds' cross-fitted labels, so about half are replaced
    with pytest.raises(UserError, match="fold0 has not finished"):  # no folds yet: prepare() cannot read them ...
        job.prepare(train.parse_args(COMMON + ["--data-dir", str(shared_data), "--out", str(out), *base]))
    for k in (0, 1):  # ... so train them first, as run() would
        run(shared_data, out / f"fold{k}", "--role", "student", "--model", models[1], "--weak-labels", str(weak_labels),
            "--fold", str(k))
    rows = json.loads(weak_labels.read_text())["w2s_train"]
    halves = labels.cross_fit_halves(len(rows["ids"]), 0)
    strong = np.zeros((len(rows["ids"]), 2))
    for k in (0, 1):
        fold = json.loads((out / f"fold{k}" / "predictions.json").read_text())["w2s_train"]
        assert fold["ids"] == rows["ids"]
        strong[halves[1 - k]] = np.asarray(fold["probs"])[halves[1 - k]]  # each half labelled by the other fold
    confidence = float(np.median(strong.max(1)))
    metrics = run(shared_data, out, *base, "--confidence", str(confidence))
    assert metrics["n_replaced"] == int((strong.max(1) >= confidence).sum()) > 0
    assert metrics["n_replaced"] + metrics["n_smoothed"] == len(rows["ids"])


def test_selective_under_train_layers_0_smooths_over_the_stored_features_without_running_the_model(
        shared_data, models, weak_labels, tmp_path, monkeypatch):
    base = ["--role", "student", "--model", models[1], "--weak-labels", str(weak_labels), "--train-layers", "0"]
    for out in ("stored", "recomputed"):
        for k in (0, 1):
            run(shared_data, tmp_path / out / f"fold{k}", *base, "--fold", str(k))
    selective = [*base, "--selective", "--knn", "3", "--confidence", "1.0"]  # nothing replaced: every row smoothed
    with monkeypatch.context() as m:
        m.setattr(students, "features", lambda *a, **k: pytest.fail("selective ran the model for its kNN features"))
        stored = run(shared_data, tmp_path / "stored", *selective)
    recomputed = run(shared_data, tmp_path / "recomputed", *selective, "--recompute-bottom")  # runs the model
    assert stored["n_smoothed"] == recomputed["n_smoothed"] == 24
    probs = [json.loads((tmp_path / out / "predictions.json").read_text())["test"]["probs"]
             for out in ("stored", "recomputed")]
    assert np.allclose(*probs, atol=1e-5)


def test_learned_student_writes_its_member_weights(shared_data, models, tmp_path):
    run(shared_data, tmp_path / "ensemble", "--role", "weak", "--model", models[0], "--ensemble", "3")
    metrics = run(shared_data, tmp_path / "student_learned", "--role", "student", "--model", models[1], "--learned",
                  "--member-lr", "0.5")
    weights = metrics["member_weights"]
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-5 and weights != [1 / 3] * 3
    with pytest.raises(UserError, match="--learned needs a weak ensemble of at least 2 members"):
        run(shared_data, tmp_path / "elsewhere" / "student_learned", "--role", "student", "--model", models[1],
            "--learned")


def test_agreement_epochs_give_the_examples_the_members_disagree_on_no_gradient(shared_data, models, tmp_path,
                                                                                  monkeypatch):
    """RAVEN's disagreement schedule: while it lasts, other labels on the rows the members disagree on change nothing
    (they get no gradient, neither the student's nor the member weights'); once it ends they count."""
    run(shared_data, tmp_path / "ensemble", "--role", "weak", "--model", models[0], "--ensemble", "3")
    for k in range(3):  # tiny members all predict one class: random labels of w2s_train instead, so some disagree
        member = tmp_path / "ensemble" / f"member{k}"
        predictions = json.loads((member / "predictions.json").read_text())
        p1 = np.random.default_rng(k).uniform(size=len(predictions["w2s_train"]["ids"]))
        predictions["w2s_train"]["probs"] = np.stack([1 - p1, p1], 1).tolist()
        write_stage(member, {"predictions.json": predictions})
    real_prepare, disagreeing = train.prepare, []

    def other_labels_where_members_disagree(cfg):
        prepared = real_prepare(cfg)
        if cfg.out.endswith("_changed"):  # each member's own class made certain: other targets, the same votes
            disagree = ~labels.members_agree(np.stack(prepared.train_targets))
            disagreeing.append((int(disagree.sum()), len(disagree)))
            prepared.train_targets = [np.eye(2)[t.argmax(1)] if d else t
                                      for t, d in zip(prepared.train_targets, disagree)]
        return prepared
    monkeypatch.setattr(train, "prepare", other_labels_where_members_disagree)

    def test_probs(name, epochs):
        run(shared_data, tmp_path / name, "--role", "student", "--model", models[1], "--learned", "--member-lr",
            "0.5", "--weak-labels", str(tmp_path / "ensemble"), "--agreement-epochs", epochs, "--select", "final")
        return json.loads((tmp_path / name / "predictions.json").read_text())["test"]["probs"]
    assert test_probs("whole_same", "2") == test_probs("whole_changed", "2")  # both epochs of COMMON's 2
    assert test_probs("first_same", "1") != test_probs("first_changed", "1")  # the second epoch trains on them
    assert all(0 < n < total for n, total in disagreeing)
    with pytest.raises(UserError, match=r"argument --agreement-epochs: must be >= 0 \(got -1\)"):
        run(shared_data, tmp_path / "bad", "--role", "student", "--model", models[1], "--learned",
            "--agreement-epochs", "-1")

