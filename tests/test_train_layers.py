"""--train-layers K end to end: training the top K blocks from the feature store equals training them with the
frozen bottom run at every step, the store is shared by stages and seeds, and NAME@DEPTH models."""
import json
import subprocess
import sys

import pytest
import torch

import train
import w2s
from conftest import ROOT
from core.cli import UserError
from data import load_task
from helpers import without_paths
from models.tokenizer import load_tokenizer
from run import features


@pytest.fixture(scope="module")
def models(tmp_path_factory, save_tiny_gpt):
    d = tmp_path_factory.mktemp("models")
    return save_tiny_gpt(d / "weak", 1, 16), save_tiny_gpt(d / "strong", 3, 32)


def args(shared_data, model, out, *extra):
    return ["--task", "safety", "--data-dir", str(shared_data), "--limit", "24", "--model", model, "--out", str(out),
            "--max-length", "32", "--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--quiet", *extra]


@pytest.mark.parametrize("k", ["0", "2"])
def test_training_from_the_cache_equals_running_the_frozen_bottom_at_every_step_bit_for_bit(
        k, shared_data, models, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "BATCH", 1)  # each text's bottom alone, in the store and at every step alike
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "cache"))
    runs = {}
    for name, extra in [("cached", []), ("every_step", ["--recompute-bottom"])]:
        out = tmp_path / name
        metrics = train.run(train.parse_args(args(shared_data, models[1], out, "--role", "ceiling",
                                                  "--train-layers", k, *extra)))
        runs[name] = (metrics["test"], metrics["best_val_loss"], json.loads((out / "predictions.json").read_text()))
    assert runs["cached"] == runs["every_step"]
    assert (tmp_path / "cache" / "features").is_dir()
    # and it trained: the predictions moved away from the initial head's
    probs = runs["cached"][2]["test"]["probs"]
    assert len({round(p[1], 3) for p in probs}) > 3


def test_the_store_is_computed_once_for_every_stage_and_seed(shared_data, models, tmp_path, monkeypatch):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "cache"))
    computed = []
    compute = features._compute
    monkeypatch.setattr(features, "_compute", lambda m, seqs, *a: computed.append(len(seqs)) or compute(m, seqs, *a))
    w2s.main(["--task", "safety", "--data-dir", str(shared_data), "--limit", "24", "--weak", models[0],
              "--strong", models[1], "--ensemble", "2", "--out", str(tmp_path / "exp"), "--max-length", "32",
              "--epochs", "1", "--batch-size", "8", "--lr", "1e-2", "--train-layers", "0", "--students",
              "naive,logconf", "--seeds", "0", "1", "--n-boot", "20", "--quiet"])
    # one pass per model and seed, over the texts that seed brings and the store has not seen: every stage of a
    # seed after the first of each model (ensemble members, votes' students, ceiling, students) computes nothing
    tok = load_tokenizer(models[0])
    def texts(seed, splits):
        task = load_task("safety", data_dir=str(shared_data), seed=seed, limit=24)
        return {tuple(ids[:32]) for split in splits for ids in tok.encode_batch([r["text"] for r in task.splits[split]])}
    weak = [texts(seed, ["weak_train", "w2s_train", "val", "test"]) for seed in (0, 1)]
    strong = [texts(seed, ["w2s_train", "val", "test"]) for seed in (0, 1)]  # the strong model never sees weak_train
    assert computed == [len(weak[0]), len(strong[0]), len(weak[1] - weak[0]), len(strong[1] - strong[0])], computed
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert sorted(results["seeds"]) == ["0", "1"] and results["config"]["train"]["train_layers"] == "0"


def test_a_depth_cut_is_part_of_the_models_identity_and_trains_on_its_own_depth(shared_data, models, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "cache"))
    m1 = train.run(train.parse_args(args(shared_data, models[1] + "@1", tmp_path / "d1", "--train-layers", "0")))
    m3 = train.run(train.parse_args(args(shared_data, models[1], tmp_path / "d3", "--train-layers", "0")))
    assert m1["inputs"]["model"]["depth"] == 1 and "depth" not in m3["inputs"]["model"]
    assert {k: v for k, v in m1["inputs"]["model"].items() if k != "depth"} == m3["inputs"]["model"]
    assert m1["test"] != m3["test"]
    config = json.loads((tmp_path / "d1" / "config.json").read_text())
    assert config["n_params"] < json.loads((tmp_path / "d3" / "config.json").read_text())["n_params"]


@pytest.mark.parametrize("extra, message", [
    (["--train-layers", "x"], "argument --train-layers: must be all or a whole number of top blocks >= 0"),
    (["--train-layers", "-1"], "argument --train-layers: must be all or a whole number of top blocks >= 0"),
    (["--train-layers", "4"], "argument --train-layers: 4 is more than the 3 blocks the model has"),
    (["--train-layers", "0", "--linear-probe"], "--linear-probe is --train-layers 0"),
    (["--recompute-bottom"], "argument --recompute-bottom: is for --train-layers K"),
    (["--train-layers", "0", "--task", "toxicity"], "argument --train-layers: task toxicity is a generation task"),
    (["--train-layers", "1", "--recompute-bottom", "--task", "toxicity"],
     "argument --recompute-bottom: task toxicity is a generation task"),
    (["--model-at-depth"], None),
])
def test_bad_train_layers_settings_end_in_one_line(extra, message, shared_data, models, tmp_path):
    if message is None:  # a depth beyond the model, written on the model name
        extra, message = [], "depth 7 is more than the 3 blocks it has"
        model = models[1] + "@7"
    else:
        model = models[1]
    r = subprocess.run([sys.executable, "train.py", *args(shared_data, model, tmp_path / "bad", *extra)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) > 0 and not (tmp_path / "bad" / "metrics.json").exists()


def test_weak_train_layers_gives_the_supervisors_their_own_setting(shared_data, models, capsys, tmp_path):
    w2s.main(["--task", "safety", "--data-dir", str(shared_data), "--weak", models[0], "--strong", models[1],
              "--out", str(tmp_path / "exp"),
              "--train-layers", "0", "--weak-train-layers", "all", "--ensemble", "2", "--students", "naive,hard",
              "--print-commands"])
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python train.py")]
    supervisors = [c for c in commands if "--role" not in c]  # weak, members and votes
    assert len(supervisors) == 4 and not any("--train-layers" in c for c in supervisors)  # all: the default
    assert all("--train-layers 0" in c for c in commands if "--role" in c)
    with pytest.raises(UserError, match="argument --weak-train-layers: must be all or a whole number"):
        w2s.main(["--task", "safety", "--weak-train-layers", "some", "--out", str(tmp_path / "bad")])


def test_a_language_model_trains_only_its_top_blocks_and_final_norm(shared_data, models, tmp_path):
    """Generation tasks: --train-layers 1 changes the top block and the final norm of the saved model and nothing
    else (embeddings, tied LM head, the bottom blocks keep their pretrained values)."""
    from safetensors.torch import load_file
    out = tmp_path / "tox"
    train.run(train.parse_args(["--task", "toxicity", "--data-dir", str(shared_data), "--limit", "8", "--model",
                                models[1], "--out", str(out), "--max-length", "48", "--max-new-tokens", "4",
                                "--epochs", "1", "--batch-size", "4", "--lr", "1e-2", "--quiet", "--role", "weak",
                                "--train-layers", "1", "--save-checkpoint"]))
    before = load_file(f"{models[1]}/model.safetensors")
    after = load_file(str(out / "ckpt" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("h.2.", "ln_f.")) for k in changed), changed
    assert any(k.startswith("h.2.") for k in changed) and "ln_f.weight" in changed and "wte.weight" not in changed
