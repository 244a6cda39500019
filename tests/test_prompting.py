"""Prompting baselines (prompting.py): label-word scores equal the model's own log-probabilities, a model that spells
one label word gives that class, the shots carry gold or weak label words, the query is never cut for the context,
and the stage is skipped or redone like train.py's."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from core import cli
from models import checkpoints
from models.tokenizer import byte_tokenizer
from run import job, prompting

COMMON = ["--task", "safety", "--limit", "24", "--max-length", "64", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, save_tiny_gpt):
    return save_tiny_gpt(tmp_path_factory.mktemp("models") / "strong", 2, 32)


def run(shared_data, model, out, *args):
    return prompting.run(prompting.parse_args(COMMON + ["--data-dir", str(shared_data), "--model", model,
                                                        "--out", str(out), *args]))


def task_of(shared_data):
    return job.cached_task("safety", str(shared_data), 0, 24)


def write_weak_labels(path, task, flip=()):
    """A supervisor's predictions.json for w2s_train: it says the gold label, except at the rows `flip`."""
    rows = task.splits["w2s_train"]
    labels = [r["label"] ^ (i in flip) for i, r in enumerate(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"w2s_train": {"ids": [r["id"] for r in rows], "labels": [r["label"] for r in rows],
                                              "probs": [[0.9, 0.1] if y == 0 else [0.2, 0.8] for y in labels]}}))
    return labels


class Bigram(nn.Module):
    """A language model whose next token depends on the current one only, through a table that spells `word`
    after the answer cue: it strongly prefers that label word."""

    def __init__(self, word):
        super().__init__()
        self.config = type("Config", (), {"block_size": 1024})()
        self.lm_head = nn.Linear(257, 257, bias=False)
        nn.init.zeros_(self.lm_head.weight)
        text = ":" + word  # the cue ends in ":"
        for cur, nxt in zip(text.encode(), text[1:].encode()):
            self.lm_head.weight.data[nxt, cur] = 30.0

    def hidden(self, idx, attention_mask=None):
        return nn.functional.one_hot(idx, 257).float()


def test_scores_are_the_models_log_probabilities_of_the_label_tokens(tiny):
    # batched, padded and bucketed scores equal each prompt's own unpadded forward pass, multi-token words summed
    model = checkpoints.load(tiny).eval()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, n).tolist() for n in (5, 17, 9, 30, 2)]
    for label_ids in ([[115, 97], [117, 110, 115]], [[115], [117]]):  # multi-token, and the one-pass path
        scores = prompting.label_log_probs(model, prompts, label_ids, 256, batch_size=2)
        for i, p in enumerate(prompts):
            for c, ids in enumerate(label_ids):
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([p + ids]))[0][0].double(), -1)
                want = sum(logp[len(p) - 1 + t, tok].item() for t, tok in enumerate(ids))
                assert scores[i, c] == pytest.approx(want, abs=1e-4)


def test_scores_are_stored_read_back_without_the_model_and_a_tampered_store_is_recomputed(shared_data, tiny, tmp_path,
                                                                                          capsys):
    model, tok = checkpoints.load(tiny).eval(), byte_tokenizer()
    task = task_of(shared_data)
    rows, pool = task.splits["test"], task.splits["w2s_train"]
    shots = prompting.shots_for(rows, pool, [r["label"] for r in pool], 2, 0)
    calls = []
    hidden = model.hidden
    model.hidden = lambda idx, mask=None: calls.append(len(idx)) or hidden(idx, mask)
    store = tmp_path / "model" / "prompt-scores"

    def probs(n, **kw):
        calls.clear()
        return prompting.label_probs(model, tok, rows[:n], "safety", shots[:n], batch_size=4, max_len=64, **kw)

    want = probs(24)  # byte-level label words are several tokens: one sequence per prompt and class
    first = probs(16, store=store)
    assert np.allclose(first, want[:16], atol=1e-6) and sum(calls) == 2 * 16  # other batches: the last bits move
    assert np.array_equal(probs(16, store=store), first) and calls == []  # read back, the model never runs
    assert np.allclose(probs(24, store=store), want, atol=1e-6) and sum(calls) == 2 * 8  # only the new prompts run
    data = store / "features.safetensors"
    data.write_bytes(data.read_bytes()[:-8] + b"\0" * 8)
    capsys.readouterr()
    assert np.allclose(probs(24, store=store), want, atol=1e-6) and sum(calls) == 2 * 24
    assert "is damaged (sha256 differs from the one recorded): recomputing it" in capsys.readouterr().out


@pytest.mark.parametrize("word,cls", [(" unsafe", 1), (" safe", 0)])
def test_a_model_that_spells_a_label_word_gives_its_class(shared_data, word, cls):
    rows = task_of(shared_data).splits["test"]
    probs = prompting.label_probs(Bigram(word), byte_tokenizer(), rows, "safety", max_len=1024)
    assert probs.shape == (len(rows), 2)
    assert (probs[:, cls] > 0.999).all()


def test_shots_carry_gold_or_weak_label_words_and_the_same_texts(shared_data, tmp_path):
    task = task_of(shared_data)
    pool, rows = task.splits["w2s_train"], task.splits["test"][:5]
    gold = [r["label"] for r in pool]
    weak = [1 - y for y in gold]
    words = prompting.PROMPTS["safety"][1]
    by_gold = prompting.shots_for(rows, pool, gold, 3, seed=0)
    by_weak = prompting.shots_for(rows, pool, weak, 3, seed=0)
    text_of = {r["text"]: y for r, y in zip(pool, gold)}
    for row, g, w in zip(rows, by_gold, by_weak):
        assert len(g) == 3 and len({t for t, _ in g}) == 3 and [t for t, _ in g] == [t for t, _ in w]
        for shots, flip in ((g, 0), (w, 1)):
            context, query = prompting.prompt_texts("safety", row["text"], shots)
            assert context.startswith(prompting.PROMPTS["safety"][0]) and query == row["text"] + prompting.CUE
            assert context.count(prompting.CUE) == 3
            for text, _ in shots:
                assert text + prompting.CUE + words[text_of[text] ^ flip] + prompting.SHOT_END in context
    assert prompting.shots_for(rows, pool, gold, 3, seed=1) != by_gold  # the seed chooses them
    assert prompting.shots_for(rows[::-1], pool, gold, 3, seed=0) == by_gold[::-1]  # by the query's id, not its place


def test_the_context_is_cut_from_the_left_and_never_the_query(shared_data):
    tok, task = byte_tokenizer(), task_of(shared_data)
    pool, rows = task.splits["w2s_train"], [r for r in task.splits["test"] if len(r["text"]) < 40][:3]
    shots = prompting.shots_for(rows, pool, [r["label"] for r in pool], 4, seed=0)
    longest = len(" unsafe")
    prompts, label_ids = prompting.prompt_ids(tok, "safety", rows, shots, max_len=64)
    for p, row, s in zip(prompts, rows, shots):
        context, query = (tok.encode(t) for t in prompting.prompt_texts("safety", row["text"], s))
        assert len(p) == 64 - longest  # filled to the limit, room left for the longest label word
        assert p[-len(query):] == query  # the whole query
        assert context[-(len(p) - len(query)):] == p[:-len(query)]  # the context's newest tokens
    assert label_ids == [tok.encode(" safe"), tok.encode(" unsafe")]
    long_row = {"id": "x", "text": "a" * 200, "label": 0}  # a query longer than the context keeps its cue
    (p,), _ = prompting.prompt_ids(tok, "safety", [long_row], [[]], max_len=64)
    assert p[-len(prompting.CUE):] == tok.encode(prompting.CUE) and len(p) == 64 - longest


def test_stage_has_predictions_for_every_row_and_is_skipped_or_redone(shared_data, tiny, tmp_path, capsys):
    task = task_of(shared_data)
    weak_file = tmp_path / "seed0" / "weak" / "predictions.json"
    weak = write_weak_labels(weak_file, task, flip={0, 1, 2})
    out = tmp_path / "seed0" / "prompt_weak"  # default weak labels: ../weak/predictions.json
    result = run(shared_data, tiny, out, "--shots", "2", "--shot-labels", "weak")
    predictions = json.loads((out / "predictions.json").read_text())
    for split in ("test", "val"):
        rows, got = task.splits[split], predictions[split]
        assert got["ids"] == [r["id"] for r in rows] and got["labels"] == [r["label"] for r in rows]
        assert np.allclose(np.sum(got["probs"], 1), 1, atol=1e-5)
    assert set(result["test"]) >= {"accuracy", "auroc"} and "supervisor" in result["inputs"]
    example = json.loads((out / "config.json").read_text())["example_prompt"]
    shots = prompting.shots_for(task.splits["test"][:1], task.splits["w2s_train"], weak, 2, 0)[0]
    assert example == "".join(prompting.prompt_texts("safety", task.splits["test"][0]["text"], shots))
    stamp = (out / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    run(shared_data, tiny, out, "--shots", "2", "--shot-labels", "weak")
    assert "already done" in capsys.readouterr().out and (out / "metrics.json").stat().st_mtime_ns == stamp
    write_weak_labels(weak_file, task, flip={0, 1})
    run(shared_data, tiny, out, "--shots", "2", "--shot-labels", "weak")
    assert "rerunning: what it was trained on changed: supervisor" in capsys.readouterr().out
    assert (out / "metrics.json").stat().st_mtime_ns != stamp


def guarded(argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli.main_guard(lambda: prompting.main(argv))
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("args,says", [
    (["--shots", "-1"], "error: argument --shots: must be >= 0"),
    (["--shot-labels", "weak"], "error: argument --shot-labels: weak labels go into the shots"),
    (["--weak-labels", "w.json"], "error: argument --weak-labels: is read only with --shot-labels weak"),
    (["--shots", "2", "--shot-labels", "weak"], "error: weak labels not found"),
    (["--device", "gpu0"], "error: argument --device: not a device"),
    (["--max-length", "8"], "error: argument --max-length: 8 tokens leave no room"),
])
def test_bad_values_give_one_line(shared_data, tiny, tmp_path, capsys, args, says):
    code, err = guarded(COMMON + ["--data-dir", str(shared_data), "--model", tiny, "--out", str(tmp_path / "p"), *args],
                        capsys)
    assert code == 2 and len(err) == 1 and says in err[0], err


# ----------------------------------------------------------------------------------------------------------------
# prompting rows in w2s.py's table

W2S = ["--task", "safety", "--limit", "40", "--max-length", "32", "--epochs", "1", "--students", "naive",
       "--ensemble", "0", "--shots", "2", "--quiet"]


def test_w2s_prompting_rows_are_stages_of_the_table_and_equal_prompting_py(shared_data, tiny, tmp_path, capsys):
    import subprocess
    import sys

    import w2s
    out = tmp_path / "exp"
    args = W2S + ["--data-dir", str(shared_data), "--weak", tiny, "--strong", tiny, "--prompting", "all",
                  "--out", str(out)]
    results = w2s.main(args)
    rows = results["table_rows"]
    assert rows.index("weak") < rows.index("prompt_zeroshot") < rows.index("prompt_fewshot_gold") \
        < rows.index("prompt_fewshot_weak") < rows.index("student_naive")
    runs = results["seeds"]["0"]["runs"]
    n_test = results["seeds"]["0"]["n_test"]
    for name in ("prompt_zeroshot", "prompt_fewshot_gold", "prompt_fewshot_weak"):
        assert 0 <= runs[name]["accuracy"] <= 1 and len(runs[name]["ci95"]["accuracy"]) == 2
        test = json.loads((out / "seed0" / name / "predictions.json").read_text())["test"]
        assert len(test["probs"]) == n_test and np.allclose(np.sum(test["probs"], 1), 1)
    # the weak few-shot stage read the weak stage's labels, checked by content
    record = json.loads((out / "seed0" / "prompt_fewshot_weak" / "config.json").read_text())
    from core.digests import sha256_file
    assert record["inputs"]["supervisor"] == sha256_file(out / "seed0" / "weak" / "predictions.json")
    # --print-commands prints a `python -m run.prompting` command that reproduces the stage's predictions on its own
    capsys.readouterr()
    w2s.main(args + ["--print-commands"])
    line = next(l for l in capsys.readouterr().out.splitlines() if "prompt_fewshot_weak" in l and "run.prompting" in l)
    alone = tmp_path / "alone"
    cmd = line.split()[1:]
    cmd[cmd.index("--out") + 1] = str(alone)
    subprocess.run([sys.executable, *cmd], check=True, capture_output=True, cwd=Path(prompting.__file__).parents[1])
    assert json.loads((alone / "predictions.json").read_text())["test"] == \
        json.loads((out / "seed0" / "prompt_fewshot_weak" / "predictions.json").read_text())["test"]


@pytest.mark.parametrize("args, says", [
    (["--prompting", "sevenshot"], "argument --prompting: unknown ['sevenshot']"),
    (["--prompting", "gold", "--shots", "0"], "argument --shots: must be at least 1"),
    (["--task", "toy", "--prompting", "zeroshot"], "task 'toy' has no prompt"),
])
def test_w2s_prompting_bad_values_give_one_line(shared_data, tmp_path, capsys, args, says):
    import w2s
    with pytest.raises(SystemExit) as e:
        cli.main_guard(lambda: w2s.main(["--task", "safety", "--data-dir", str(shared_data),
                                          "--out", str(tmp_path / "x"), *args]))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code != 0 and says in err[-1] and not (tmp_path / "x").exists()
