"""Scaling sweeps (every weak x strong pair in one run directory), bootstrapping chains, parallel stages and the
printed stage commands, on the toy task with tiny random-init models (seconds, CPU)."""
import json
import shlex
from pathlib import Path

import pytest

import train
import w2s
from experiment import evaluation as w2s_eval
from helpers import kill_w2s_after, without_paths

SIZES = ["random:1x16", "random:1x32", "random:2x32"]
LABELS = ["random-1x16", "random-1x32", "random-2x32"]
ARGS = ["--task", "toy", "--limit", "40", "--epochs", "1", "--n-boot", "50", "--ensemble", "0", "--students",
        "naive,logconf", "--lr", "1e-3", "--quiet"]


def sweep(out, *extra):
    return ARGS + ["--sizes", ",".join(SIZES), "--out", str(out), *extra]


@pytest.fixture
def trained(monkeypatch):
    """Every real training run, in order: (stage directory, role, model, weak labels it read)."""
    runs, real = [], train.train_and_save

    def recording(cfg, job, rt, out):
        runs.append((Path(out).as_posix(), cfg.role, cfg.model, cfg.weak_labels))
        return real(cfg, job, rt, out)
    monkeypatch.setattr(train, "train_and_save", recording)
    return runs


def test_sweep_trains_each_model_once_and_reports_every_pair(tmp_path, trained, capsys):
    results = w2s.main(sweep(tmp_path))
    printed = capsys.readouterr().out.splitlines()
    counters = [line for line in printed if line.startswith("[") and "/10] seed0/" in line]
    assert counters[0] == "[1/10] seed0/random-1x16/weak (random:1x16)" and len(counters) == 10  # one per stage
    assert printed[-1] == "results: " + ", ".join(str(tmp_path / name) for name in (
        "results.json", "results.md", "results.png", "results_misfit.png", "results_sweep.png"))
    stages = sorted(str(Path(out).relative_to(tmp_path)) for out, *_ in trained)
    pairs = [(LABELS[0], LABELS[1]), (LABELS[0], LABELS[2]), (LABELS[1], LABELS[2])]
    assert stages == sorted(["seed0/random-1x16/weak", "seed0/random-1x32/weak", "seed0/random-1x32/ceiling",
                             "seed0/random-2x32/ceiling"] +
                            [f"seed0/{w}__{s}/student_{m}" for w, s in pairs for m in ("naive", "logconf")])
    assert {tuple(st["pair"]) for st in results["students"]} == set(pairs)
    assert len(results["seeds"]["0"]["pgr"]) == 6  # every pair and student has a PGR entry (a number or n/a)
    assert set(results["n_params"]) == set(LABELS)
    assert results["n_params"][LABELS[0]] < results["n_params"][LABELS[1]] < results["n_params"][LABELS[2]]
    table = (tmp_path / "results.md").read_text()
    assert "PGR (accuracy) of student `naive`" in table and "| random-1x16 | 2" in table
    for plot in ("results.png", "results_sweep.png", "results_misfit.png"):
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG"
    trained.clear()
    assert without_paths(w2s.main(sweep(tmp_path))) == without_paths(results)
    assert trained == []  # a rerun trains nothing


@pytest.mark.slow
def test_sweep_killed_mid_way_resumes_to_the_same_results(tmp_path):
    full = w2s.main(sweep(tmp_path / "full"))
    out = tmp_path / "killed"
    kill_w2s_after(sweep(out), out / "seed0" / LABELS[1] / "weak" / "metrics.json")
    assert not (out / "results.json").exists()
    assert without_paths(w2s.main(sweep(out))) == without_paths(full)


def test_jobs_2_gives_the_same_results_as_jobs_1(tmp_path):
    one = w2s.main(sweep(tmp_path / "one", "--jobs", "1", "--students", "naive"))
    two = w2s.main(sweep(tmp_path / "two", "--jobs", "2", "--students", "naive"))  # 7 stages, 2 worker processes
    assert without_paths(two) == without_paths(one)



def test_workers_take_only_the_gpus_this_process_may_use(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert w2s.worker_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the user's choice: physical GPUs 2 and 3, seen as 0 and 1
    assert w2s.worker_gpus() == ["2", "3"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert w2s.worker_gpus() == []


def test_chain_trains_in_order_each_model_on_the_previous_ones_labels(tmp_path, trained):
    results = w2s.main(ARGS + ["--weak", SIZES[0], "--strong", SIZES[2], "--chain", SIZES[1], "--out", str(tmp_path)])
    order = [str(Path(out).relative_to(tmp_path)) for out, *_ in trained]
    first, second = order.index("seed0/chain/1_random-1x32"), order.index("seed0/chain/2_random-2x32")
    assert order.index("seed0/weak") < first < second
    read = {str(Path(out).relative_to(tmp_path)): (model, Path(labels)) for out, _, model, labels in trained}
    assert read["seed0/chain/1_random-1x32"] == (SIZES[1], tmp_path / "seed0/weak/predictions.json")
    assert read["seed0/chain/2_random-2x32"] == (SIZES[2], tmp_path / "seed0/chain/1_random-1x32/predictions.json")
    chain = "chain:random-1x16>random-1x32>random-2x32"
    entry = results["seeds"]["0"]["pgr"][chain]
    assert entry["supervisor"] == "weak" and entry["ceiling"] == "ceiling"  # PGR against the original weak model
    assert f"| {chain} | weak |" in (tmp_path / "results.md").read_text()


def test_a_chain_inside_a_sweep_starts_from_the_naive_student_it_would_repeat(tmp_path, trained):
    """random-1x16 > random-1x32 > random-2x32: the first step, weak labels -> random-1x32, is exactly the sweep's
    naive student of that pair, so it is read from there, and no configuration is trained twice."""
    results = w2s.main(sweep(tmp_path, "--chain", SIZES[1]))
    trainings = [json.dumps([json.loads((Path(out) / "config.json").read_text())["comparable"],
                             json.loads((Path(out) / "metrics.json").read_text())["inputs"]], sort_keys=True)
                 for out, *_ in trained]
    assert len(trainings) == len(set(trainings)) == 11  # no two runs share settings and inputs
    read = {str(Path(out).relative_to(tmp_path)): Path(labels) for out, _, _, labels in trained}
    naive = f"seed0/{LABELS[0]}__{LABELS[1]}/student_naive"
    assert read[f"seed0/chain/2_{LABELS[2]}"] == tmp_path / naive / "predictions.json"
    assert not (tmp_path / "seed0" / "chain" / f"1_{LABELS[1]}").exists()
    chain = "chain:" + ">".join(LABELS)
    assert results["seeds"]["0"]["pgr"][chain]["supervisor"] == f"{LABELS[0]}/weak"


def test_print_commands_lists_every_stage_once_after_its_inputs_and_they_reproduce_the_run(tmp_path, capsys):
    expected = w2s.main(sweep(tmp_path / "run", "--ensemble", "2", "--students", "naive,hard"))
    capsys.readouterr()
    out = tmp_path / "printed"
    assert w2s.main(sweep(out, "--ensemble", "2", "--students", "naive,hard", "--print-commands")) is None
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.startswith("python ")]
    commands, final = lines[:-1], lines[-1]
    assert final == ["python", "eval.py", str(out)]
    outs = [Path(c[c.index("--out") + 1]) for c in commands]
    assert len(outs) == len(set(outs)) == 4 + 2 * 3 + 2 * 3  # weak x2, members x4, votes x2; ceilings x2; students x6
    assert not (out / "seed0").exists() and (out / "experiment.json").is_file()  # printed, nothing run
    for i, c in enumerate(commands):  # a stage's inputs come from stages printed before it
        if "--weak-labels" in c:
            source = Path(c[c.index("--weak-labels") + 1]).parent
            source = source.parent if source.name in ("hard", "soft") else source
            assert source in outs[:i], (c, source)
        if "--ensemble" in c:
            assert all(outs[i] / f"member{k}" in outs[:i] for k in range(2))
    for c in commands:  # run them as a cluster would, one by one, then evaluate
        train.main(c[2:])
    w2s_eval.main([str(out), "--n-boot", "50"])
    assert without_paths(json.loads((out / "results.json").read_text())) == without_paths(expected)
