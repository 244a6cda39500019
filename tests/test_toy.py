import functools
import json
from collections import defaultdict

import pytest

import train
import w2s
from data import load_task, toy
from model import GPT
from tokenizer import load_tokenizer

# the same code paths as the demo, at a size that pretrains in about a second
TINY = dict(weak_layers=1, weak_embd=16, weak_heads=1, strong_layers=1, strong_embd=32, strong_heads=2, epochs=1)


def test_world_is_deterministic_and_its_labels_follow_the_root_table():
    facts = toy.world()
    assert facts == toy.world()
    assert facts != toy.world(seed=toy.WORLD["seed"] + 1)
    names = [n for n, _ in facts]
    assert len(names) == len(set(names)) == toy.WORLD["names"]
    assert all(3 <= len(n) <= 6 and set(n) <= set(toy.WORLD["letters"]) for n in names)
    labels_of_root = defaultdict(set)
    for name, label in facts:
        labels_of_root[name[:2]].add(label)
    assert all(len(labels) == 1 for labels in labels_of_root.values())  # the attribute is a function of the root
    agreement = sum(toy.surface_label(n) == y for n, y in facts) / len(facts)
    assert 0.70 < agreement < 0.80  # the first letter alone gets ~3/4 right: what a weak model can pick up


def test_toy_task_splits_hold_every_name_once_with_its_world_label():
    task = load_task("toy", seed=0)
    label_of = {toy.PROMPT.format(name=n): y for n, y in toy.world()}
    seen = [ex for split in task.splits.values() for ex in split]
    assert len(seen) == len({ex["text"] for ex in seen}) == len(label_of)
    assert all(label_of[ex["text"]] == ex["label"] and ex["text"].endswith(" is ") for ex in seen)
    assert task.kind == "classification" and task.label_names == ["cold", "hot"]
    assert len(task.splits["test"]) == 600


def test_toy_train_defaults_apply_and_the_command_line_wins():
    cfg = train.parse_args(["--task", "toy"])
    assert (cfg.batch_size, cfg.max_length, cfg.lr) == (32, 16, 5e-5)
    assert train.parse_args(["--task", "toy", "--batch-size", "8"]).batch_size == 8


def test_pretraining_writes_loadable_checkpoints_once_and_refuses_another_config(tmp_path, monkeypatch):
    config = toy.PretrainConfig(**TINY)
    weak_dir, strong_dir = toy.pretrained_models(tmp_path / "pretrained", device="cpu", config=config)
    weak, strong = GPT.from_pretrained(weak_dir), GPT.from_pretrained(strong_dir)
    assert (weak.config.n_layer, weak.config.n_embd, strong.config.n_embd) == (1, 16, 32)
    tok = load_tokenizer(strong_dir)
    assert tok.encode("hai is ") == list(b"hai is ") and tok.vocab_size == strong.config.vocab_size == 257
    record = json.loads((tmp_path / "pretrained" / "pretrain.json").read_text())
    assert record["pretrain"]["epochs"] == 1 and record["world"]["seed"] == toy.WORLD["seed"]
    assert 0 <= record["strong"]["knows"]["accuracy"] <= 1
    assert [p.name for p in tmp_path.iterdir()] == ["pretrained"]  # the temporary directory was renamed away

    def no_second_training(*args, **kwargs):
        raise AssertionError("pretrained again although the cache holds this config")
    monkeypatch.setattr(toy, "pretrain", no_second_training)
    assert toy.pretrained_models(tmp_path / "pretrained", device="cpu", config=config) == (weak_dir, strong_dir)
    with pytest.raises(ValueError, match="pretrained with another config"):
        toy.pretrained_models(tmp_path / "pretrained", config=toy.PretrainConfig(**{**TINY, "epochs": 2}))
    (tmp_path / "other").mkdir()
    with pytest.raises(FileExistsError, match="has no pretrain.json"):
        toy.pretrained_models(tmp_path / "other", config=config)


def test_toy_demo_end_to_end_gives_pgr_and_the_same_results_twice(tmp_path, monkeypatch):
    # w2s.py's own toy path (pretraining inside main), shrunk: tiny models, 40 examples a split, one epoch
    monkeypatch.setattr(toy, "PretrainConfig", functools.partial(toy.PretrainConfig, **TINY))
    texts = []
    for run in ("a", "b"):
        out = tmp_path / run
        results = w2s.main(["--out", str(out), "--limit", "40", "--epochs", "1", "--n-boot", "50"])
        assert (out / "pretrained" / "strong" / "model.safetensors").is_file()
        assert "student_naive" in (out / "results.md").read_text()
        pgr = results["seeds"]["0"]["pgr"]
        assert set(pgr) == {"student_naive", "student_logconf", "student_hard", "student_soft"}
        assert all({"pgr", "lo", "hi"} <= set(pgr[s]["accuracy"]) for s in pgr)
        texts.append((out / "results.json").read_text().replace(str(out), "OUT"))
    assert texts[0] == texts[1]
