"""Issue 14, "trustworthy results": each promise a run directory makes, proved on real safety rows with tiny models.

One experiment (weak, a 2-member ensemble, ceiling, naive and hard students) is trained once per module; each test
works on its own copy of it. In-process where only the outcome matters; subprocesses where exit status, stderr,
locking or a kill do.
"""
import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import train
import w2s
from core import cli
from experiment import evaluation as w2s_eval
from experiment import stages as stage_graph
from helpers import ROOT, nulls_without_reason, one_thread_env, run_script, stage_stamps, strict_json, without_paths
from models import checkpoints
from run import config, job, rundir

STAGES = {"seed0/weak", "seed0/ensemble/member0", "seed0/ensemble/member1", "seed0/ensemble", "seed0/ceiling",
          "seed0/student_naive", "seed0/student_hard"}


def args_of(data, weak, strong, out, *extra):
    return ["--task", "safety", "--data-dir", str(data), "--limit", "24", "--weak", str(weak), "--strong", str(strong),
            "--ensemble", "2", "--students", "naive,hard", "--out", str(out), "--max-length", "32", "--epochs", "1",
            "--batch-size", "8", "--n-boot", "50", "--lr", "1e-3", "--quiet", *map(str, extra)]


@pytest.fixture(scope="module")
def models(tmp_path_factory, save_tiny_gpt):
    d = tmp_path_factory.mktemp("models")
    return save_tiny_gpt(d / "weak", 1, 16), save_tiny_gpt(d / "strong", 2, 32)


@pytest.fixture(scope="module")
def base(tmp_path_factory, models):
    """The experiment every test copies: (its directory, its results.json content)."""
    from conftest import SHARED_DATA
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("base") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every test (conftest.one_thread): reruns must reproduce it bit for bit
    try:
        w2s.main(args_of(SHARED_DATA, *models, out))
    finally:
        torch.set_num_threads(threads)
    assert stage_stamps(out).keys() == STAGES
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture
def run(base, models, shared_data, tmp_path):
    """A fresh copy of the base experiment and the arguments that made it (with --out the copy)."""
    out = tmp_path / "run"
    shutil.copytree(base[0], out)
    return out, args_of(shared_data, *models, out)


def guarded(main, argv, capsys):
    """`main(argv)` as its script's __main__ runs it (cli.main_guard): (exit status, stderr lines). Data warnings
    are not counted here (test_data_warnings_print_once_per_run counts them)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli.main_guard(lambda: main(argv))
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


# ----------------------------------------------------------------------------------------------------------------
# one experiment per directory

def test_changed_flag_is_refused_naming_the_key_and_nothing_is_retrained(run, capsys):
    out, args = run
    stamps, experiment = stage_stamps(out), (out / "experiment.json").read_bytes()
    code, err = guarded(w2s.main, args + ["--epochs", "2", "--lr", "2e-3"], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and "train.epochs 1 -> 2" in err[0] and "train.lr 0.001 -> 0.002" in err[0]
    assert "--out DIR" in err[0] and "--overwrite" in err[0]
    assert stage_stamps(out) == stamps and (out / "experiment.json").read_bytes() == experiment


@pytest.mark.parametrize("flags, keys", [
    (["--genft-epochs", "2"], ["train.genft_epochs 1 -> 2"]),
    (["--aux-coef", "0.5"], ["train.aux_coef 0.75 -> 0.5"]),
    (["--ensemble", "3"], ["ensemble 2 -> 3"]),
    (["--students", "naive,genft"], ["students"]),
    (["--limit", "30"], ["data.limit 24 -> 30", "train.limit 24 -> 30"]),
    (["--strong", "random:1x16"], ["models.strong.sha256", "models.strong.random"]),
    (["--select", "final"], ["train.select best -> final"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v[0].startswith("--") else None)
def test_each_number_changing_flag_is_part_of_the_experiment(shared_data, models, tmp_path, capsys, flags, keys):
    """--print-commands records the experiment without training: enough to see what a rerun compares."""
    out = tmp_path / "run"
    argv = args_of(shared_data, *models, out, "--students", "naive,logconf,hard,genft", "--print-commands")
    w2s.main(argv)
    code, err = guarded(w2s.main, argv + flags, capsys)
    assert code == 2 and len(err) == 1 and all(k in err[0] for k in keys), err


def test_an_experiment_resumed_on_other_hardware_is_refused_naming_device_and_precision(shared_data, models, tmp_path,
                                                                                        capsys, monkeypatch):
    """Started on a CPU (fp32), resumed where CUDA is found (bf16 autocast, TF32): its stages would mix numerics."""
    argv = args_of(shared_data, *models, tmp_path / "run", "--print-commands")
    w2s.main(argv)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    code, err = guarded(w2s.main, argv, capsys)
    assert code == 2 and len(err) == 1, err
    assert "train.numerics.device cpu -> cuda" in err[0] and "train.numerics.dtype fp32 -> bf16" in err[0], err


@pytest.mark.parametrize("flags", [
    ["--task", "safety", "--students", "all", "--ensemble", "3", "--aux-coef", "0.5", "--select", "final",
     "--genft-epochs", "2", "--hard-labels", "--epochs", "0", "--max-steps", "5", "--no-save-checkpoint"],
    ["--task", "toxicity", "--protocol", "rtp", "--loss-on", "continuation"],
], ids=["safety", "toxicity"])
def test_printed_stage_commands_train_exactly_what_the_in_process_stage_trains(shared_data, flags):
    """--print-commands gives each stage as `python train.py <flags>`: those flags must give back the stage's whole
    config, or a cluster run would train (and record) something else than the experiment says."""
    cfg, base = w2s.parse_args(["--data-dir", str(shared_data), "--limit", "24", "--weak", "random:1x16", "--strong",
                                "random:2x32"] + flags)
    kind = job.cached_task(base.task, base.data_dir, 0, base.limit).kind
    stages = stage_graph.stages_of_seed(cfg, base, kind, 0, ["random:1x16", "random:2x32"])[0]
    assert len(stages) >= 3
    for stage in stages:
        command = stage_graph.command(stage, Path("/runs/x"))
        assert command[1].endswith("train.py")
        assert train.parse_args(command[2:]) == stage_graph.stage_cfg(stage, Path("/runs/x")), stage.path


def test_overwrite_deletes_the_old_stages_and_records_the_new_experiment(run, capsys):
    out, args = run
    new = args + ["--epochs", "2", "--ensemble", "0", "--students", "naive", "--overwrite"]
    w2s.main(new)
    assert "--overwrite: deleting the experiment in" in capsys.readouterr().out
    # the old ensemble and hard student are gone, not left to be mistaken for this experiment's
    assert stage_stamps(out).keys() == {"seed0/weak", "seed0/ceiling", "seed0/student_naive"}
    record = json.loads((out / "experiment.json").read_text())
    assert record["experiment"]["train"]["epochs"] == 2 and record["experiment"]["ensemble"] == 0
    assert [r["name"] for r in record["runs"]] == ["weak", "student_naive", "ceiling"]
    for stage in ("weak", "ceiling", "student_naive"):
        assert json.loads((out / "seed0" / stage / "config.json").read_text())["train"]["epochs"] == 2
    # --overwrite asks for a clean start even when the experiment is the same: everything is trained again
    stamps = stage_stamps(out)
    w2s.main(new)
    assert all(stage_stamps(out)[s] != t for s, t in stamps.items())


def test_added_seed_resumes_seed0_and_results_cover_both_seeds(run):
    out, args = run
    stamps = stage_stamps(out)
    results = w2s.main(args + ["--seeds", "0", "1"])
    after = stage_stamps(out)
    assert {s: after[s] for s in stamps} == stamps  # seed 0 not retrained
    assert {s.replace("seed0", "seed1") for s in STAGES} <= after.keys()
    assert sorted(results["seeds"]) == ["0", "1"] and results["summary"]["n_seeds"] == 2
    assert json.loads((out / "experiment.json").read_text())["seeds"] == [0, 1]
    # asking for one seed again resumes the whole experiment: its results still cover both
    results = w2s.main(args + ["--seeds", "1"])
    assert stage_stamps(out) == after and sorted(results["seeds"]) == ["0", "1"]
    recorded = json.loads((out / "results.json").read_text())["config"]["w2s"]["seeds"]
    assert recorded == [0, 1]  # the recorded config says what the results cover, not what was asked last


def test_copied_run_directory_resumes_with_nothing_retrained_and_identical_results(base, run):
    out, args = run
    stamps = stage_stamps(out)
    away = base[0].with_name("run.away")  # the original is out of reach: nothing may be read from its path
    base[0].rename(away)
    try:
        results = w2s.main(args)
    finally:
        away.rename(base[0])
    assert stage_stamps(out) == stamps
    assert without_paths(results) == without_paths(base[1])


def test_a_random_init_model_is_identified_by_its_tokenizer_files_not_their_place(tmp_path):
    def tokenizer_dir(name, merges):
        d = tmp_path / name
        d.mkdir()
        (d / "vocab.json").write_text('{"a": 0}')
        (d / "merges.txt").write_text(merges)
        return d
    here, copy, other = tokenizer_dir("a", "#v\n"), tokenizer_dir("b", "#v\n"), tokenizer_dir("c", "#v\na b\n")
    identity = checkpoints.model_identity("random:gpt2", str(here))
    assert identity == checkpoints.model_identity("random:gpt2", str(copy))
    assert identity != checkpoints.model_identity("random:gpt2", str(other))
    assert checkpoints.model_identity("random:2x64", "bytes") == {"random": "random:2x64"}


@pytest.mark.parametrize("given", ["--weak", "--strong"])
def test_toy_task_honours_one_given_model_and_records_the_models_used(tmp_path, given):
    """--weak alone (or --strong alone) replaces only that model; the other stays the demo's pretrained one."""
    from data import toy
    out = tmp_path / "run"
    w2s.main(["--task", "toy", given, "random:1x16", "--out", str(out), "--print-commands", "--quiet"])
    models = json.loads((out / "experiment.json").read_text())["description"]["models"]
    mine, other = ("weak", "strong") if given == "--weak" else ("strong", "weak")
    assert models[mine] == {"spec": "random:1x16", "identity": {"random": "random:1x16"}}
    assert models[other]["spec"] == toy.DEMO[0 if other == "weak" else 1] and "sha256" in models[other]["identity"]


# ----------------------------------------------------------------------------------------------------------------
# content-checked stages

def swap_probabilities(path):
    predictions = json.loads(path.read_text())
    for split in predictions.values():
        split["probs"] = [p[::-1] for p in split["probs"]]
    path.write_text(json.dumps(predictions))


def truncate(path):
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("tamper", [swap_probabilities, truncate], ids=["swapped", "truncated"])
def test_tampered_weak_labels_retrain_the_weak_stage_and_its_students_only(base, run, capsys, tamper):
    out, args = run
    stamps = stage_stamps(out)
    tamper(out / "seed0" / "weak" / "predictions.json")
    capsys.readouterr()
    results = w2s.main(args)
    log = capsys.readouterr().out
    after = stage_stamps(out)
    retrained = {s for s in stamps if after[s] != stamps[s]}
    assert retrained == {"seed0/weak", "seed0/student_naive"}  # not the ensemble, its student, or the ceiling
    line = next(line for line in log.splitlines() if "rerunning: predictions.json" in line)
    assert str(out / "seed0" / "weak") in line and "modified or truncated" in line
    assert "[seed0/student_naive] rerunning: its input seed0/weak was redone" in log
    assert without_paths(results) == without_paths(base[1])


@pytest.mark.parametrize("tampered, downstream", [
    ("ensemble/member0/predictions.json", {"seed0/ensemble/member0", "seed0/ensemble", "seed0/student_hard"}),
    ("ensemble/hard/predictions.json", {"seed0/ensemble", "seed0/student_hard"}),
    ("ceiling/config.json", {"seed0/ceiling"}),
])
def test_a_tampered_file_retrains_its_stage_and_exactly_the_stages_downstream(base, run, tampered, downstream):
    out, args = run
    stamps = stage_stamps(out)
    truncate(out / "seed0" / tampered)
    results = w2s.main(args)
    after = stage_stamps(out)
    assert {s for s in stamps if after[s] != stamps[s]} == downstream
    assert without_paths(results) == without_paths(base[1])


def test_eval_refuses_a_tampered_predictions_file_naming_it(run, capsys):
    out, _ = run
    swap_probabilities(out / "seed0" / "student_naive" / "predictions.json")
    results = (out / "results.json").read_bytes()
    line = assert_refused(w2s_eval.main, [str(out), "--n-boot", "20"], capsys, out)
    assert str(out / "seed0" / "student_naive" / "predictions.json") in line and "sha256" in line
    assert (out / "results.json").read_bytes() == results  # the old results stand, not overwritten with tampered ones


def test_eval_refuses_a_stage_retrained_by_hand_with_other_settings_naming_the_key(run, models, capsys):
    out, args = run
    w2s_eval.main([str(out), "--n-boot", "20"])  # as w2s.py trained it: evaluated
    cfg, base_cfg = w2s.parse_args(args)
    naive = next(s for s in stage_graph.stages_of_seed(cfg, base_cfg, "classification", 0, list(models))[0]
                 if s.path == "seed0/student_naive")
    # what a user may do after --print-commands: one stage's train.py run with a flag of its own, files all consistent
    train.run(dataclasses.replace(stage_graph.stage_cfg(naive, out), epochs=2))
    results = (out / "results.json").read_bytes()
    line = assert_refused(w2s_eval.main, [str(out), "--n-boot", "20"], capsys, out)
    assert line == (f"error: {out / 'seed0' / 'student_naive' / 'config.json'}: key epochs is 2, experiment.json "
                    "implies 1 (this stage was trained with other settings than its experiment's: rerun w2s.py to "
                    "redo it)")
    assert (out / "results.json").read_bytes() == results


def test_eval_refuses_a_stage_config_edited_by_hand_naming_the_key(run, capsys):
    out, _ = run
    path = out / "seed0" / "ensemble" / "member1" / "config.json"
    record = json.loads(path.read_text())
    record["comparable"].pop("select")  # as an older w2s wrote it, before the flag: at its default, accepted
    path.write_text(json.dumps(record))
    w2s_eval.main([str(out), "--n-boot", "20"])
    record["comparable"]["member"] = 0
    path.write_text(json.dumps(record))
    line = assert_refused(w2s_eval.main, [str(out), "--n-boot", "20"], capsys, out)
    assert line.startswith(f"error: {path}: key member is 0, experiment.json implies 1 ")


@pytest.mark.parametrize("flags", [
    ["--task", "safety", "--weak", "random:1x16", "--strong", "random:2x32", "--students", "all", "--ensemble", "3",
     "--aux-coef", "0.5", "--member-lr", "0.1", "--genft-epochs", "2", "--weak-train-layers", "all", "--train-layers",
     "1", "--hard-labels", "--seeds", "0", "3"],
    ["--task", "toy", "--sizes", "random:1x16,random:1x32,random:2x32", "--chain", "random:1x32", "--students",
     "naive,logconf,soft", "--ensemble", "2", "--knn", "5"],
    ["--task", "toy", "--weak", "random:1x16", "--strong", "random:2x32", "--chain", "random:1x32"],
], ids=["pair", "sweep", "pair-chain"])
def test_experiment_json_implies_the_config_of_every_stage_w2s_trains(shared_data, tmp_path, flags):
    """eval.py's rebuild of the stage configs from experiment.json alone equals the stages w2s.py runs."""
    argv = flags + ["--data-dir", str(shared_data), "--limit", "24", "--out", str(tmp_path / "run")]
    assert w2s.main(argv + ["--print-commands"]) is None  # writes experiment.json, trains nothing
    exp = json.loads((tmp_path / "run" / "experiment.json").read_text())
    cfg, base_cfg = w2s.parse_args(argv)
    specs, chain = w2s.experiment_models(cfg, base_cfg, exp["kind"])
    for seed in exp["seeds"]:
        trained = {s.path: config.comparable(s.cfg) for s in stage_graph.stages_of_seed(cfg, base_cfg, exp["kind"],
                                                                                        seed, specs, chain)[0]}
        assert {f"seed{seed}/{path}": c for path, c in stage_graph.implied_configs(exp, seed).items()} == trained


# ----------------------------------------------------------------------------------------------------------------
# settings and inputs refused before any work, in one line, leaving no directory

@pytest.fixture
def no_training(monkeypatch, tmp_path):
    """Bad-input runs start from an empty tmp_path, where the default --out (runs/<task>) would be made, and may
    not start a single stage."""
    monkeypatch.chdir(tmp_path)

    def refuse(*a, **k):
        raise AssertionError("a stage started")
    monkeypatch.setattr(train, "run", refuse)
    return tmp_path


def assert_refused(main, argv, capsys, where, argparse_error=False):
    code, err = guarded(main, argv, capsys)
    assert code == 2, err
    if argparse_error:  # argparse's usage line(s), then one error line
        assert err[0].startswith("usage:") and ": error: " in err[-1]
    else:
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not any("Traceback" in line for line in err)
    assert not (where / "runs").exists(), list(where.iterdir())
    return err[-1]


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "argument --epochs: must be at least 1"),
    (["--epochs", "-1"], "argument --epochs: must be at least 1"),
    (["--lr", "0"], "argument --lr: must be > 0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["--top-p", "1.5"], "argument --top-p: must be in (0, 1]"),
    (["--temperature", "-1"], "argument --temperature: must be >= 0"),
    (["--limit", "1"], "argument --limit: must be at least 2"),
    (["--ensemble", "-1"], "argument --ensemble: must be >= 0"),
    (["--grad-accum", "0"], "argument --grad-accum: must be at least 1"),
    (["--max-length", "1"], "argument --max-length: must leave room"),
    (["--samples", "0"], "argument --samples: must be at least 1"),
    (["--seeds", "0", "0"], "argument --seeds: must be distinct"),
    (["--n-boot", "0"], "argument --n-boot: must be at least 1"),
    (["--students", "naive,bogus"], "argument --students: unknown ['bogus']"),
    (["--grad-accum", "3"], "argument --batch-size: must be a multiple of world size 1 x --grad-accum 3 (got 8)"),
    (["--device", "foo"], "argument --device: not a device"),
    pytest.param(["--device", "cuda"], "argument --device: CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_nonsense_setting_is_refused_before_any_work(shared_data, models, no_training, capsys, flags, message):
    argv = args_of(shared_data, *models, "runs/safety") + flags
    line = assert_refused(w2s.main, argv, capsys, no_training)
    assert message in line, line


def bad_csv(tmp_path, content):
    (tmp_path / "data" / "safety").mkdir(parents=True)
    (tmp_path / "data" / "safety" / "safety.csv").write_bytes(content)
    return tmp_path / "data"


def broken_model(tmp_path, save_tiny_gpt, how):
    d = Path(save_tiny_gpt(tmp_path / "models" / how, 1, 16))
    if how == "truncated":
        truncate(d / "model.safetensors")
    elif how == "no_config":
        (d / "config.json").unlink()
    elif how == "garbage_config":
        (d / "config.json").write_text("{'n_layer': 1,")
    elif how == "no_tokenizer":
        (d / "vocab.json").unlink()
    return d


def rare_unsafe_csv(tmp_path):
    """90 safe prompts and 10 unsafe ones: every split holds both classes, but not when cut to 3 examples each."""
    rows = ["prompt,is_safe"] + [f"safe prompt {i},True" for i in range(90)] + [f"bad prompt {i},False" for i in range(10)]
    return bad_csv(tmp_path, ("\n".join(rows) + "\n").encode())


BAD_INPUTS = {  # name: (what to change in a good command line, what the one error line must say)
    "unknown task": (lambda t, s: {"--task": "sefety"}, "invalid choice: 'sefety'"),
    "missing model dir": (lambda t, s: {"--weak": t / "no" / "such" / "model"}, "no/such/model is not a model directory"),
    "hub model offline": (lambda t, s: {"--strong": "gpt2-xl"}, "is not in the local Hugging Face cache"),
    "truncated safetensors": (lambda t, s: {"--strong": broken_model(t, s, "truncated")},
                              "truncated/model.safetensors (corrupt or truncated"),
    "model without config.json": (lambda t, s: {"--weak": broken_model(t, s, "no_config")}, "no_config has no config.json"),
    "garbage config.json": (lambda t, s: {"--weak": broken_model(t, s, "garbage_config")},
                            "garbage_config/config.json"),
    "model without tokenizer": (lambda t, s: {"--strong": broken_model(t, s, "no_tokenizer")},
                                "no_tokenizer holds no tokenizer"),
    "generation prompt does not fit": (lambda t, s: {"--task": "toxicity", "--max-length": 10},
                                       "argument --max-length: must exceed --max-new-tokens 20"),
    "limit leaves a split one class": (lambda t, s: {"--data-dir": rare_unsafe_csv(t), "--limit": 3},
                                       "split 'weak_train' has no example of class ['unsafe'] with --limit 3"),
    "csv missing column": (lambda t, s: {"--data-dir": bad_csv(t, b"prompt,safe\nhi,True\n")},
                           "safety.csv:1: missing column(s) ['is_safe']"),
    "bad label": (lambda t, s: {"--data-dir": bad_csv(t, b"prompt,is_safe\nhi,True\nho,maybe\n")},
                  "safety.csv:3: unknown is_safe value 'maybe'"),
    "empty csv": (lambda t, s: {"--data-dir": bad_csv(t, b"")}, "safety.csv:1: empty file"),
    "non-utf8 csv": (lambda t, s: {"--data-dir": bad_csv(t, b"prompt,is_safe\nhi,True\nh\xffo,False\n")},
                     "safety.csv:3: not UTF-8"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_ends_in_one_line_and_exit_2_leaving_no_run_directory(shared_data, models, save_tiny_gpt,
                                                                        no_training, capsys, name):
    change, message = BAD_INPUTS[name]
    changes = change(no_training, save_tiny_gpt)
    argv = args_of(shared_data, *models, "x")
    argv = argv[:argv.index("--out")] + argv[argv.index("--out") + 2:]  # the default --out: runs/safety
    for flag, value in changes.items():
        argv[argv.index(flag) + 1] = str(value)
    line = assert_refused(w2s.main, argv, capsys, no_training, argparse_error=name == "unknown task")
    assert message in line, line
    assert not (no_training / "runs").exists()


def test_eval_on_a_missing_run_directory_is_one_line(tmp_path, capsys):
    line = assert_refused(w2s_eval.main, [str(tmp_path / "runs" / "safety")], capsys, tmp_path)
    assert str(tmp_path / "runs" / "safety") in line and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script, argv, message", [
    ("w2s.py", ["--task", "safety", "--epochs", "0"], "error: argument --epochs: must be at least 1"),
    ("train.py", ["--task", "safety", "--lr", "0"], "error: argument --lr: must be > 0"),
    ("eval.py", ["{tmp}/runs/safety"], "error: {tmp}/runs/safety"),
    pytest.param("bench.py", ["--device", "cuda"], "error: argument --device: cuda, but no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")),
])
def test_entry_points_end_expected_errors_with_exit_2_and_one_line(tmp_path, script, argv, message):
    code, out, err = run_script(script, [a.format(tmp=tmp_path) for a in argv], cwd=tmp_path)
    assert code == 2 and err.splitlines() == [err.strip()] and err.startswith(message.format(tmp=tmp_path)), err
    assert list(tmp_path.iterdir()) == []


def test_a_bug_keeps_its_traceback():
    def buggy():
        return {}["missing"]  # not bad input: a KeyError in our own code
    with pytest.raises(KeyError):
        cli.main_guard(buggy)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_data_warnings_print_once_per_run(shared_data, tmp_path, jobs):
    """Two seeds load the data twice and every stage asks for it, in this process or in --jobs workers;
    PYTHONWARNINGS=always turns off Python's own once-per-location deduplication, so the count is w2s's doing
    (data.common.warn_once, told by w2s.py what it has already shown)."""
    code, out, err = run_script("w2s.py", [
        "--task", "safety", "--data-dir", shared_data, "--limit", "24", "--weak", "random:1x16", "--strong",
        "random:1x16", "--ensemble", "0", "--students", "naive", "--seeds", "0", "1", "--out", tmp_path / "run",
        "--max-length", "32", "--epochs", "1", "--batch-size", "8", "--n-boot", "20", "--quiet", "--jobs", jobs],
        env={"PYTHONWARNINGS": "always::UserWarning"})
    assert code == 0, err
    assert err.count("safety: removed") == 1 and err.count("safety: dropped") == 1, err
    assert "Traceback" not in err


def test_out_that_is_a_file_ends_in_one_line(shared_data, models, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    code, err = guarded(w2s.main, args_of(shared_data, *models, afile), capsys)
    assert code == 2 and err == [f"error: {afile} exists and is not a directory: give --out a directory (new or a "
                                 "run's)"] and afile.read_text() == "mine"


def test_a_full_disk_ends_in_one_line_naming_the_file_and_keeps_what_was_written(run, capsys, monkeypatch):
    out, args = run
    experiment = (out / "experiment.json").read_bytes()

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write into an open file: no path
    monkeypatch.setattr(Path, "write_text", full)
    code, err = guarded(w2s.main, args, capsys)
    assert code == 2 and err == [f"error: {out / 'experiment.json'}: No space left on device"], err
    assert (out / "experiment.json").read_bytes() == experiment and not list(out.rglob("*.tmp"))
    # a write that names no file at all (a checkpoint, a log line) still ends in one line with the way out
    assert cli.error_line(OSError(errno.ENOSPC, "No space left on device")).startswith(
        "No space left on device while writing this run's files")


# ----------------------------------------------------------------------------------------------------------------
# honest PGR

def test_pgr_is_na_with_the_gap_when_the_ceiling_equals_the_supervisor(shared_data, models, tmp_path):
    """Weak and strong are the same checkpoint with the same seed and (almost) no learning: the ceiling predicts
    exactly what the weak supervisor does, so there is no gap to recover."""
    same = models[0]
    out = tmp_path / "run"
    argv = args_of(shared_data, same, same, out, "--ensemble", "0", "--students", "naive", "--lr", "1e-12")
    results = w2s.main(argv)
    saved = strict_json((out / "results.json").read_text())
    assert saved["summary"]["pgr"]["student_naive"]["accuracy"]["mean"] is None
    for k in w2s_eval.METRICS:
        entry = saved["seeds"]["0"]["pgr"]["student_naive"][k]
        assert entry["pgr"] is None and entry["lo"] is None and entry["reason"], (k, entry)
        if k != "auroc" or entry["gap_lo"] is not None:
            assert entry["gap"] == 0 and entry["gap_lo"] == entry["gap_hi"] == 0, (k, entry)
    assert results["seeds"]["0"]["pgr"]["student_naive"]["accuracy"]["pgr"] is None
    table = (out / "results.md").read_text().splitlines()
    row = next(line for line in table if line.startswith("| student_naive |"))
    assert "n/a (ceiling no better than supervisor)" in row, row
    gap = next(line for line in table if line.startswith("| weak | ceiling |"))  # the gaps, below the table
    assert gap.startswith("| weak | ceiling | +0.000 [+0.000, +0.000] |"), gap
    models = json.loads((out / "experiment.json").read_text())["description"]["models"]
    assert models.keys() == {"weak", "strong"} and models["weak"] == models["strong"]  # one checkpoint, both roles


# ----------------------------------------------------------------------------------------------------------------
# one run per directory; leftovers of killed runs; strict JSON

def test_second_concurrent_run_is_refused_at_once_naming_the_first_ones_pid(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "run", lambda *a, **k: pytest.fail("the second run started a stage"))
    out = tmp_path / "run"
    argv = ["--task", "safety", "--data-dir", shared_data, "--limit", "24", "--weak", "random:1x16", "--strong",
            "random:1x16", "--ensemble", "0", "--students", "naive", "--out", out, "--max-length", "32",
            "--epochs", "100000", "--patience", "100000", "--batch-size", "8", "--quiet"]
    first = subprocess.Popen([sys.executable, str(ROOT / "w2s.py")] + list(map(str, argv)), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=one_thread_env())
    try:
        deadline = time.time() + 120
        while not (out / "seed0" / "weak").is_dir():  # made by the first stage, under the run's lock
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.05)
        t0 = time.time()
        code, err = guarded(w2s.main, list(map(str, argv)), capsys)
        assert time.time() - t0 < 30  # at once: it does not wait for the first run
        assert first.poll() is None  # the first run still holds the directory
        assert code == 2 and err == [
            f"error: {out} is in use by another w2s.py run (pid {first.pid}): wait for it to finish, or use --out DIR"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with rundir.locked(out):  # the kernel released the killed run's lock: the directory is not stuck
        pass


def test_leftovers_of_a_killed_run_are_removed_at_the_next_start(run, capsys):
    out, args = run
    stamps = stage_stamps(out)
    orphan = out / "results.png.tmp.png"  # atomic writes (x.png.tmp.png, x.json.tmp), killed half way
    orphan.write_bytes(b"half")
    half = out / "seed0" / "weak" / "predictions.json.tmp"
    half.write_text('{"test": {"ids": [')
    mine = [out / "draft.tmp", out / "notes" / "plot.tmp.png"]  # not names our writes use: never touched
    mine[1].parent.mkdir()
    for f in mine:
        f.write_text("the user's")
    w2s.main(args)
    assert not orphan.exists() and not half.exists() and all(f.exists() for f in mine)
    assert "removed 2 leftover temporary file(s) of a killed run" in capsys.readouterr().out
    assert stage_stamps(out) == stamps  # leftovers are not outputs: nothing is retrained


def test_files_in_a_directory_that_holds_no_run_are_never_removed(shared_data, models, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    files = [out / "results.json.tmp", out / "draft.tmp", out / "figure.png.tmp"]
    for f in files:
        f.write_text("the user's")
    w2s.main(args_of(shared_data, *models, out, "--print-commands"))
    assert all(f.read_text() == "the user's" for f in files)


def test_every_null_in_a_single_seed_results_json_says_why(base):
    results = json.loads((base[0] / "results.json").read_text())
    # the recorded flags are the one exception: a null there is the flag's own value ("none" in --help)
    config = results.pop("config")
    assert config["train"]["top_p"] is None and results["summary"]["runs"]["weak"]["accuracy"]["std"] is None
    assert nulls_without_reason(results) == []


def test_every_json_file_a_run_writes_is_strict_json(base):
    files = sorted(base[0].rglob("*.json"))
    assert {"experiment.json", "results.json", "metrics.json", "config.json", "predictions.json"} <= {p.name for p in files}
    for path in files:
        strict_json(path.read_text())
