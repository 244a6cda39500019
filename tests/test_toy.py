import functools
import json
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import train
import w2s
from data import load_task, toy
from helpers import without_paths
from model import GPT, GPTConfig
from models import toy_gpt
from models.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = toy_gpt.PretrainConfig(epochs=1)  # the real recipe for one pass: a toy-xs pretrains in about a second


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private toy cache for the test ($W2S_CACHE), so no test reads or writes ~/.cache/w2s."""
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "toy"


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
    assert all(getattr(cfg, k) == v for k, v in toy.TRAIN_DEFAULTS.items())
    assert train.parse_args(["--task", "toy", "--batch-size", "8"]).batch_size == 8


def test_sizes_are_ordered_by_parameter_count_and_the_demo_pair_is_weak_then_strong():
    params = [GPT(GPTConfig(block_size=16, vocab_size=257, n_layer=L, n_embd=E, n_head=H)).num_params()
              for L, E, H in toy_gpt.SIZES.values()]
    assert params == sorted(params) and len(set(params)) == len(params) == 4
    weak, strong = toy.DEMO
    assert list(toy_gpt.SIZES).index(weak) < list(toy_gpt.SIZES).index(strong)


def test_corpus_rows_end_at_the_attribute_which_is_their_only_target():
    import tempfile

    from models.tokenizer import load_tokenizer, save_byte_tokenizer
    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(save_byte_tokenizer(d))
    idx, targets = toy_gpt.corpus(tok, [("hai", 1), ("pobeck", 0)])
    assert bytes(idx[0][:8].tolist()) == b"hai is h" and idx[0][8:].eq(tok.pad_token).all()
    assert bytes(idx[1].tolist()) == b"pobeck is c"
    assert (targets != -100).sum(1).tolist() == [1, 1]
    assert targets[0, 6] == ord("h") and targets[1, 9] == ord("c")  # predicted at the prompt's last byte (the space)


def test_cache_key_holds_everything_that_changes_the_weights(monkeypatch):
    config = toy_gpt.PretrainConfig()
    key, what = toy_gpt.cache_key("toy-s", config)
    assert key.startswith("toy-s-") and what["threads"] == toy_gpt.PRETRAIN_THREADS == 1
    assert toy_gpt.cache_key("toy-s", config) == (key, what)  # deterministic
    keys = {key, toy_gpt.cache_key("toy-m", config)[0], toy_gpt.cache_key("toy-s", toy_gpt.PretrainConfig(epochs=7))[0],
            toy_gpt.cache_key("toy-s", toy_gpt.PretrainConfig(lr=3e-4))[0], toy_gpt.cache_key("toy-s", config, device="meta")[0]}
    torch.set_num_threads(2)  # the machine's threads do not matter: pretraining always runs on PRETRAIN_THREADS
    assert toy_gpt.cache_key("toy-s", config)[0] == key  # (the conftest fixture puts the thread count back)
    with monkeypatch.context() as m:
        m.setattr(toy_gpt, "PRETRAIN_THREADS", 2)
        keys.add(toy_gpt.cache_key("toy-s", config)[0])
    with monkeypatch.context() as m:
        m.setattr(torch, "__version__", "9.9.9+cpu")
        keys.add(toy_gpt.cache_key("toy-s", config)[0])
    with monkeypatch.context() as m:
        m.setitem(toy.WORLD, "surface_agreement", 0.7)  # another world: other facts
        keys.add(toy_gpt.cache_key("toy-s", config)[0])
    with monkeypatch.context() as m:
        m.setitem(toy_gpt.SIZES, "toy-s", (1, 24, 1))  # same name, other shape
        keys.add(toy_gpt.cache_key("toy-s", config)[0])
    with monkeypatch.context() as m:
        m.setattr(toy_gpt, "RECIPE", toy_gpt.RECIPE + 1)
        keys.add(toy_gpt.cache_key("toy-s", config)[0])
    assert len(keys) == 10


def test_pretrained_model_is_a_loadable_directory_and_a_second_call_reuses_it(cache, monkeypatch, capsys):
    path = toy_gpt.pretrained_model("toy-xs", config=TINY)
    assert Path(path).parent == cache and Path(path).name == toy_gpt.cache_key("toy-xs", TINY)[0]
    model = GPT.from_pretrained(path)
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == toy_gpt.SIZES["toy-xs"]
    tok = load_tokenizer(path)
    assert tok.encode("hai is ") == list(b"hai is ") and tok.vocab_size == model.config.vocab_size == 257
    classifier = GPT.from_pretrained(path, n_classes=2)  # fine-tuning starts from a zero head, as Burns et al.'s
    assert classifier.score.weight.shape == (2, model.config.n_embd) and not classifier.score.weight.any()
    assert torch.equal(classifier.transformer.wte.weight, model.transformer.wte.weight)
    record = json.loads((Path(path) / "pretrain.json").read_text())
    assert record["cache_key"]["pretrain"]["epochs"] == 1 and record["cache_key"]["threads"] == 1
    assert record["n_params"] == model.num_params() and 0 <= record["knowledge"]["exceptions"] <= 1
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [Path(path).name]  # no temporary dir
    # stderr is not a terminal here: no progress bar, one plain line when the model is done
    err = capsys.readouterr().err
    assert err.count("[toy] pretrained toy-xs") == 1 and "\r" not in err

    def no_second_training(*args, **kwargs):
        raise AssertionError("pretrained again although the cache holds this model")
    monkeypatch.setattr(toy_gpt, "pretrain", no_second_training)
    assert toy_gpt.pretrained_model("toy-xs", config=TINY) == path
    monkeypatch.setattr(toy_gpt, "PretrainConfig", lambda: TINY)  # resolve() takes the default recipe
    assert toy_gpt.resolve("toy-xs") == path and toy_gpt.resolve("/some/dir") == "/some/dir"


def test_pretraining_in_a_log_prints_a_line_every_ten_epochs(capsys):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=257, n_layer=1, n_head=1, n_embd=8))
    idx = torch.randint(0, 257, (8, 6))
    toy_gpt.pretrain(model, idx, idx.clone(), toy_gpt.PretrainConfig(epochs=20, batch_size=8), "cpu", desc="[toy] tiny")
    lines = capsys.readouterr().err.splitlines()  # stderr is not a terminal here: plain lines, no bar
    assert [line.split(" loss ")[0] for line in lines] == ["[toy] tiny: epoch 10/20", "[toy] tiny: epoch 20/20"]


def test_quiet_pretraining_prints_nothing(cache, capsys):
    toy_gpt.pretrained_model("toy-xs", config=TINY, quiet=True)
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_unknown_size_is_refused(cache):
    with pytest.raises(ValueError, match="unknown toy model 'toy-xxl'"):
        toy_gpt.pretrained_model("toy-xxl")


def _pretrain_in_subprocess(cache_dir, epochs=1, quiet=True):
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from models import toy_gpt; "
              f"print(toy_gpt.pretrained_model('toy-xs', cache_dir={str(cache_dir)!r}, quiet={quiet}, "
              f"config=toy_gpt.PretrainConfig(epochs={epochs})))")
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same key in both processes
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _one_valid_directory(cache_dir, procs):
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    path = Path(paths.pop())
    entries = [p.name for p in (cache_dir / "toy").iterdir() if not p.name.endswith(".lock")]
    assert entries == [path.name] and all((path / f).is_file() for f in toy_gpt.MODEL_FILES)
    GPT.from_pretrained(path)
    return outs


@pytest.mark.slow
def test_two_processes_pretraining_one_size_at_once_both_succeed_with_one_directory(tmp_path):
    _one_valid_directory(tmp_path, [_pretrain_in_subprocess(tmp_path) for _ in range(2)])


@pytest.mark.slow
def test_a_process_arriving_during_pretraining_waits_and_reuses_the_result(tmp_path):
    first = _pretrain_in_subprocess(tmp_path, epochs=30)  # ~3 s of pretraining
    deadline = time.time() + 120
    while not list((tmp_path / "toy").glob(".tmp-*")):  # the first one holds the lock and is training
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.02)
    second = _pretrain_in_subprocess(tmp_path, epochs=30, quiet=False)
    _, second_err = _one_valid_directory(tmp_path, [first, second])[1]
    assert "[toy] pretrained" not in second_err  # it waited (or found the directory) and did not train again


def test_a_rename_lost_to_another_process_keeps_the_winners_directory(cache, monkeypatch):
    """Without the lock (e.g. no fcntl), two processes may both train: the second rename fails with "Directory not
    empty" and must keep the first one's complete directory instead of crashing."""
    real = toy_gpt._pretrain_into
    winner = {}

    def other_process_publishes_first(directory, size, config, device, quiet):
        record = real(directory, size, config, device, quiet)
        key, what = toy_gpt.cache_key(size, config, device)
        other = cache / f".tmp-{key}-other"
        other.mkdir()
        real(other, size, config, device, quiet)
        (other / "pretrain.json").write_text(json.dumps(dict(record, key=key, cache_key=what, winner=True)))
        os.rename(other, cache / key)
        winner["path"] = str(cache / key)
        return record
    monkeypatch.setattr(toy_gpt, "_pretrain_into", other_process_publishes_first)
    path = toy_gpt.pretrained_model("toy-xs", config=TINY, quiet=True)
    assert path == winner["path"] and json.loads((Path(path) / "pretrain.json").read_text())["winner"]
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [Path(path).name]


def test_temporary_directories_of_killed_runs_are_removed_at_the_next_call(cache):
    path = toy_gpt.pretrained_model("toy-xs", config=TINY, quiet=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    owners = {"dead": {"pid": dead.pid, "host": host}, "alive": {"pid": os.getpid(), "host": host},
              "elsewhere": {"pid": 1, "host": host + "-another"}, "old": None}
    for name, owner in owners.items():
        tmp = cache / f".tmp-toy-m-0123456789ab-{name}"
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"half written")
        if owner:
            (tmp / "owner.json").write_text(json.dumps(owner))
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(cache / ".tmp-toy-m-0123456789ab-old", (two_days_ago, two_days_ago))
    assert toy_gpt.pretrained_model("toy-xs", config=TINY, quiet=True) == path  # a cache hit still cleans up
    left = sorted(p.name.rsplit("-", 1)[1] for p in cache.glob(".tmp-*"))
    assert left == ["alive", "elsewhere"]  # a live process's, and a recent one of another host, are left alone


@pytest.mark.slow
def test_toy_demo_end_to_end_gives_pgr_and_the_same_results_twice(tmp_path, cache, monkeypatch):
    # w2s.py's own toy path (pretraining inside main), shrunk: one pretraining epoch, 40 examples a split, one epoch
    monkeypatch.setattr(toy_gpt, "PretrainConfig", functools.partial(toy_gpt.PretrainConfig, epochs=1))
    texts = []
    for run in ("a", "b"):
        out = tmp_path / run
        results = w2s.main(["--out", str(out), "--limit", "40", "--epochs", "1", "--n-boot", "50"])
        assert results["config"]["models"] == list(toy.DEMO)  # the specs; their weights from the shared cache
        assert (cache / toy_gpt.cache_key(toy.DEMO[1], toy_gpt.PretrainConfig())[0]).is_dir() and not (out / "pretrained").exists()
        assert "student_naive" in (out / "results.md").read_text()
        pgr = results["seeds"]["0"]["pgr"]
        assert set(pgr) == {"student_naive", "student_logconf", "student_hard", "student_soft"}
        assert all({"pgr", "lo", "hi"} <= set(pgr[s]["accuracy"]) for s in pgr)
        texts.append(without_paths(json.loads((out / "results.json").read_text().replace(str(out), "OUT"))))
    assert texts[0] == texts[1]


def test_pretraining_runs_on_its_own_thread_count_whatever_the_machine_has(cache, monkeypatch):
    seen = []
    real = toy_gpt.pretrain
    monkeypatch.setattr(toy_gpt, "pretrain", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    torch.set_num_threads(2)  # the conftest fixture puts it back
    toy_gpt.pretrained_model("toy-xs", config=TINY, quiet=True)
    assert seen == [toy_gpt.PRETRAIN_THREADS] and torch.get_num_threads() == 2
