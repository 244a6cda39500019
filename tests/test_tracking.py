"""--track tensorboard | wandb (tracking.py): the curves train.py logs and the experiment's results land in the
tracker, a sweep is one group, W&B goes offline without a key, and tracking changes no number and no identity."""
import glob
import json
import re
import socket
import time
from pathlib import Path

import pytest

import train
import w2s
from core import cli
from helpers import stage_stamps, without_paths
from run import tracking

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

# a toy pair whose ceiling beats its supervisor clearly enough for a defined PGR with its CI, in a few seconds
PAIR = ["--task", "toy", "--weak", "random:1x8", "--strong", "random:2x32", "--limit", "600", "--epochs", "2",
        "--lr", "3e-3", "--ensemble", "0", "--students", "naive", "--n-boot", "50", "--log-every", "5", "--quiet"]
ALONE = ["--task", "toy", "--role", "weak", "--model", "random:1x16", "--limit", "40", "--epochs", "2", "--lr", "1e-3",
         "--log-every", "1", "--quiet"]


def scalars(logdir):
    """{tag: [(step, value)]} of the TensorBoard event files in `logdir`."""
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def texts(logdir):
    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    events.Reload()
    return {tag.split("/text_summary")[0]: events.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
            for tag in events.Tags()["tensors"]}


def logged_curves(log_txt):
    """(train loss, val loss) as [(step, value)], read from a run's log.txt lines."""
    text = Path(log_txt).read_text()
    train_loss = [(int(s), float(v)) for s, v in re.findall(r"^step (\d+)/\d+ epoch \d+ loss (\S+)", text, re.M)]
    val_loss = [(int(s), float(v)) for s, v in re.findall(r"^step (\d+) val_loss (\S+)", text, re.M)]
    return train_loss, val_loss


@pytest.fixture(scope="module")
def tracked_pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "pair"
    return out, w2s.main(PAIR + ["--out", str(out), "--track", "tensorboard"])


@pytest.mark.slow
def test_tensorboard_holds_each_stages_loss_curve_and_the_experiments_pgr_with_its_ci(tracked_pair):
    out, results = tracked_pair
    board = out / "tensorboard"
    assert sorted(p.parent.relative_to(board).as_posix() for p in board.rglob("events.out.tfevents.*")) == [
        "experiment", "seed0/ceiling", "seed0/student_naive", "seed0/weak"]
    for stage in ("weak", "ceiling", "student_naive"):
        got = scalars(board / "seed0" / stage)
        train_loss, val_loss = logged_curves(out / "seed0" / stage / "log.txt")
        assert len(train_loss) > 1 and [(s, round(v, 4)) for s, v in got["train/loss"]] == train_loss, stage
        assert [(s, round(v, 4)) for s, v in got["val/loss"]] == val_loss, stage
        assert {"train/lr", "train/tokens_per_s"} <= set(got)
        test = json.loads((out / "seed0" / stage / "metrics.json").read_text())["test"]
        assert got["final/test/accuracy"][0][1] == pytest.approx(test["accuracy"], abs=1e-6)
    experiment = scalars(board / "experiment")
    pgr = results["seeds"]["0"]["pgr"]["student_naive"]["accuracy"]
    assert pgr["pgr"] is not None  # these settings give a defined PGR: the number, not its absence, is logged
    for key in ("pgr", "lo", "hi"):
        assert experiment[f"seeds/0/pgr/student_naive/accuracy/{key}"][0][1] == pytest.approx(pgr[key], abs=1e-6)
    diagnostics = results["seeds"]["0"]["diagnostics"]["student_naive"]
    assert experiment["seeds/0/diagnostics/student_naive/agreement"][0][1] == pytest.approx(diagnostics["agreement"])
    assert texts(board / "experiment")["results.md"] == (out / "results.md").read_text()


@pytest.mark.slow
def test_a_rerun_without_track_resumes_the_tracked_experiment_and_retrains_nothing(tracked_pair, capsys):
    out, results = tracked_pair
    before = stage_stamps(out)
    again = w2s.main(PAIR + ["--out", str(out)])
    assert stage_stamps(out) == before
    assert capsys.readouterr().out.count("already done with these settings and inputs; skipping") == 3
    assert without_paths(again) == without_paths(results)
    assert "track" not in json.dumps(json.loads((out / "experiment.json").read_text())["experiment"])


@pytest.mark.slow
def test_a_sweep_is_one_group_and_one_log_dir_with_every_pair(tmp_path, monkeypatch):
    started, real = [], tracking.TRACKERS["tensorboard"]

    def recording(root, where, name, group, config, kind):
        started.append((root, name, group, kind))
        return real(root, where, name, group, config, kind)
    monkeypatch.setitem(tracking.TRACKERS, "tensorboard", recording)
    sizes = ["random:1x16", "random:1x32", "random:2x32"]
    w2s.main(["--task", "toy", "--sizes", ",".join(sizes), "--limit", "40", "--epochs", "1", "--ensemble", "0",
              "--students", "naive", "--n-boot", "50", "--quiet", "--out", str(tmp_path), "--track", "tensorboard"])
    pairs = ["random-1x16__random-1x32", "random-1x16__random-2x32", "random-1x32__random-2x32"]
    stages = [f"seed0/{p}/student_naive" for p in pairs] + ["seed0/random-1x16/weak", "seed0/random-1x32/weak",
                                                            "seed0/random-1x32/ceiling", "seed0/random-2x32/ceiling"]
    assert sorted(name for _, name, _, kind in started if kind == "stage") == sorted(stages)
    assert {(root, group) for root, _, group, _ in started} == {(tmp_path.resolve(), started[0][2])}
    assert started[0][2].startswith(tmp_path.name + "-") and started[-1][1:] == ("experiment", started[0][2], "experiment")
    assert all("train/loss" in scalars(tmp_path / "tensorboard" / stage) for stage in stages)
    experiment = scalars(tmp_path / "tensorboard" / "experiment")
    assert all(f"seeds/0/pgr/{p}/student_naive/accuracy/gap" in experiment for p in pairs)


# ----------------------------------------------------------------------------------------------------------------
# W&B: offline without a key, never the network

@pytest.fixture
def no_wandb_account(monkeypatch, tmp_path_factory):
    """No key anywhere (environment, ~/.netrc), no mode set, W&B's own files in a private home."""
    home = tmp_path_factory.getbasetemp() / "wandb-home"
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_BASE_URL", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    for name in ("CONFIG", "CACHE", "DATA", "ARTIFACT"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(home / name.lower()))


def written_in_full(wandb_file, timeout=20):
    """The run's .wandb file once W&B's service has written it: that happens as the service closes the run's
    stream, just after run.finish() returns (and before the process exits)."""
    deadline = time.time() + timeout
    while b"train/loss" not in wandb_file.read_bytes() and time.time() < deadline:
        time.sleep(0.05)
    return wandb_file.read_bytes()


def test_wandb_is_offline_without_a_key_without_trying_the_network(no_wandb_account, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args}")
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert tracking.wandb_mode() == ("offline", "no W&B API key")


def test_wandb_with_a_key_but_no_server_is_offline_within_seconds(no_wandb_account, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert tracking.wandb_mode() == ("offline", "127.0.0.1 unreachable")
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's own choice wins
    assert tracking.wandb_mode() == ("disabled", "WANDB_MODE")


@pytest.mark.slow
def test_train_py_alone_with_track_wandb_writes_an_offline_run_and_the_same_numbers(tmp_path, no_wandb_account,
                                                                                     capsys):
    train.main(ALONE + ["--out", str(tmp_path / "tracked"), "--track", "wandb"])
    assert "tracking: W&B offline (no W&B API key)" in capsys.readouterr().out
    files = glob.glob(str(tmp_path / "tracked" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    record = written_in_full(Path(files[0]))
    metrics = json.loads((tmp_path / "tracked" / "metrics.json").read_text())
    assert b"train/loss" in record and b"val/loss" in record and b"train/lr" in record
    assert json.dumps(metrics["best_val_loss"]).encode() in record  # the summary, to the last digit
    train.main(ALONE + ["--out", str(tmp_path / "plain")])
    tracked, plain = [json.loads((tmp_path / run / "predictions.json").read_text()) for run in ("tracked", "plain")]
    assert tracked == plain
    train.main(ALONE + ["--out", str(tmp_path / "plain"), "--track", "wandb"])  # done: skipped, not tracked again
    assert "already done" in capsys.readouterr().out and not (tmp_path / "plain" / "wandb").exists()


# ----------------------------------------------------------------------------------------------------------------
# bad input

def refused(main, argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main_guard(lambda: main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("main", [train.main, w2s.main])
def test_an_unknown_tracker_is_one_line_before_any_directory(main, tmp_path, capsys):
    line = refused(main, ["--task", "toy", "--track", "mlflow", "--out", str(tmp_path / "run")], capsys)
    assert line == "error: argument --track: must be wandb or tensorboard (or empty: off) (got mlflow)"
    assert not (tmp_path / "run").exists()


def test_a_tracker_not_installed_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    line = refused(train.main, ["--task", "toy", "--track", "wandb", "--out", str(tmp_path / "run")], capsys)
    assert line == 'error: argument --track: needs the wandb package: pip install -e ".[track]" (got wandb)'
