"""The toxicity weak-to-strong pipeline: LM loss, fine-tuning, scoring stage, toxicity metrics and PGR, and w2s.py
end to end on real RealToxicityPrompts rows with tiny random GPTs and the offline scorer (CPU, seconds)."""
import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train
import w2s
from core import cli
from core.cli import UserError
from experiment import evaluation as w2s_eval
from helpers import kill_w2s_after, ragged_table_rows, without_paths, write_experiment_json, write_stage
from model import GPT
from models.tokenizer import load_tokenizer
from run import batching, config, job
from scoring import metrics as w2s_metrics

ROOT = Path(__file__).resolve().parents[1]
RTP_ROWS_PER_FILE = 300  # real rows from each RTP file: enough for every split, and the offline scorer trains in ~2 s


@pytest.fixture(scope="module")
def env(tmp_path_factory, save_tiny_gpt):
    """Tiny weak / strong GPTs, and a private cache for the offline scorer's model (inherited by subprocesses)."""
    d = tmp_path_factory.mktemp("toxicity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("W2S_CACHE", str(d / "cache"))
        yield {"weak": save_tiny_gpt(d / "weak", 1, 16), "strong": save_tiny_gpt(d / "strong", 2, 32, seed=1),
               "dir": d}


@pytest.fixture
def rtp_dir(shared_data, tmp_path_factory):
    """A data dir holding the first real rows of each RealToxicityPrompts file, byte for byte."""
    d = tmp_path_factory.getbasetemp() / "rtp_sample"
    if not d.exists():
        (d / "toxicity").mkdir(parents=True)
        for path in sorted((shared_data / "toxicity").glob("*.jsonl")):
            lines = path.read_bytes().splitlines(keepends=True)[:RTP_ROWS_PER_FILE]
            (d / "toxicity" / path.name).write_bytes(b"".join(lines))
    return d


class CountingScorer:
    """Stands in for a toxicity scorer: score = share of 'x' in the text; counts the texts it was asked to score."""

    def __init__(self, name):
        self.name, self.scored = name, 0

    def score(self, texts):
        self.scored += len(texts)
        return [t.count("x") / len(t) if t else 0.0 for t in texts]


# ----------------------------------------------------------------------------------------------------------------
# LM loss and fine-tuning


def test_lm_loss_equals_hand_computation_with_padding_and_prompt_masking(env):
    tok = load_tokenizer(env["weak"])
    model = GPT.from_pretrained(env["strong"]).eval()
    rows = [batching.encode_lm(tok, "Hello there,", " friend.", 64), batching.encode_lm(tok, "No", " way out of here", 64),
            batching.encode_lm(tok, "A much longer prompt", "!", 64)]
    assert rows[0] == (list(b"Hello there, friend."), len("Hello there,"))
    idx, mask = batching.collate([ids for ids, _ in rows], tok.pad_token, torch.device("cpu"))
    assert mask is not None and (mask.sum(1) == torch.tensor([len(ids) for ids, _ in rows])).all()
    for loss_on in ("all", "continuation"):
        targets = batching.lm_targets(rows, idx.shape[1], torch.device("cpu"), loss_on)
        with torch.no_grad():
            _, loss = model(idx, attention_mask=mask, targets=targets)
            # by hand: each row alone and unpadded; token t + 1 predicted from position t, the prompt's own tokens
            # left out with --loss-on continuation (the first continuation token is predicted by the last prompt one)
            total, count = 0.0, 0
            for ids, n_prompt in rows:
                logp = F.log_softmax(model(torch.tensor([ids]))[0][0].double(), -1)
                first = n_prompt - 1 if loss_on == "continuation" else 0
                for t in range(first, len(ids) - 1):
                    total -= logp[t, ids[t + 1]].item()
                    count += 1
        assert count == (sum(len(ids) - 1 for ids, _ in rows) if loss_on == "all" else
                         sum(len(ids) - n for ids, n in rows))
        assert loss.item() == pytest.approx(total / count, abs=1e-5), loss_on


def test_fine_tuning_lowers_validation_loss_on_real_rtp_rows(env, rtp_dir, tmp_path):
    cfg = train.parse_args(["--task", "toxicity", "--data-dir", str(rtp_dir), "--limit", "32", "--role", "ceiling",
                            "--model", env["strong"], "--out", str(tmp_path / "ceiling"), "--epochs", "1",
                            "--batch-size", "8", "--lr", "1e-3", "--max-new-tokens", "4", "--evals-per-epoch", "2"])
    metrics = train.run(cfg)
    val_losses = [float(line.split()[3]) for line in (tmp_path / "ceiling" / "log.txt").read_text().splitlines()
                  if line.startswith("step ") and " val_loss " in line]
    assert len(val_losses) >= 2
    assert metrics["best_val_loss"] == pytest.approx(min(val_losses), abs=1e-4)  # the log keeps 4 decimals
    assert metrics["best_val_loss"] < val_losses[0] - 0.02  # random init starts near ln(257) = 5.55 nats
    test = json.loads((tmp_path / "ceiling" / "predictions.json").read_text())["test"]
    assert len(test["continuations"]) == len(test["ids"]) == 32 and all(len(c) == 1 for c in test["continuations"])


# ----------------------------------------------------------------------------------------------------------------
# toxicity metrics, scoring stage, PGR


def test_toxicity_metrics_match_hand_computed_values_with_samples():
    prompt_toxicity = [0.9, 0.1, 0.5, 0.2]  # prompts 0 and 2 are toxic (>= 0.5)
    scores = [[0.8, 0.2], [0.1, 0.3], [0.4, 0.6], [0.0, 0.5]]  # 0.5 counts as toxic
    m = w2s_metrics.toxicity_metrics(scores, prompt_toxicity)
    expected = {"mean_toxicity": 2.9 / 8, "toxic_rate": 3 / 8, "expected_max_toxicity": 2.2 / 4,
                "toxicity_probability": 3 / 4,
                "mean_toxicity_toxic_prompts": 2.0 / 4, "toxic_rate_toxic_prompts": 2 / 4,
                "expected_max_toxicity_toxic_prompts": 1.4 / 2, "toxicity_probability_toxic_prompts": 1.0,
                "mean_toxicity_nontoxic_prompts": 0.9 / 4, "toxic_rate_nontoxic_prompts": 1 / 4,
                "expected_max_toxicity_nontoxic_prompts": 0.8 / 2, "toxicity_probability_nontoxic_prompts": 1 / 2}
    assert m == pytest.approx(expected, abs=1e-12)
    # one sample per prompt: no expected maximum / probability, and no toxic prompts gives nan for that subset
    one = w2s_metrics.toxicity_metrics([0.2, 0.7], [0.1, 0.3])
    assert set(one) == {"mean_toxicity", "toxic_rate", "mean_toxicity_toxic_prompts", "toxic_rate_toxic_prompts",
                        "mean_toxicity_nontoxic_prompts", "toxic_rate_nontoxic_prompts"}
    assert one["mean_toxicity"] == pytest.approx(0.45) and one["toxic_rate"] == 0.5
    assert math.isnan(one["mean_toxicity_toxic_prompts"])
    with pytest.raises(ValueError, match="every row equally long"):
        w2s_metrics.toxicity_metrics([[0.1, 0.2], [0.3]], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"scores of prompt row 1 are not all in \[0, 1\]"):
        w2s_metrics.toxicity_metrics([[0.1], [1.5]], [0.1, 0.2])
    with pytest.raises(ValueError, match="prompt_toxicity row 0 is not a number"):
        w2s_metrics.toxicity_metrics([[0.1]], [None])


def write_generation_run(run_dir, ids, prompt_toxicity, continuations):
    test = {"ids": ids, "labels": [int(p >= 0.5) for p in prompt_toxicity], "prompts": ["p"] * len(ids),
            "prompt_toxicity": prompt_toxicity, "continuations": continuations}
    write_stage(run_dir, {"predictions.json": {"test": test}})


def list_runs(out):
    write_experiment_json(out, [0], ["weak", "student_naive", "ceiling"], {"student_naive": ("weak", "ceiling")},
                          kind="generation")


def test_score_run_writes_scores_once_and_rescores_for_another_scorer_or_new_continuations(tmp_path):
    run = tmp_path / "weak"
    write_generation_run(run, ["a", "b"], [0.9, 0.1], [["xx", "ab"], ["", "xaaa"]])
    scorer = CountingScorer("fake:v1")
    saved = w2s_eval.score_run(run, scorer)
    assert saved["scores"] == [[1.0, 0.0], [0.0, 0.25]] and saved["scorer"] == "fake:v1" and scorer.scored == 4
    assert json.loads((run / "scores.json").read_text()) == saved
    w2s_eval.score_run(run, scorer)
    assert scorer.scored == 4  # same scorer, same continuations: skipped
    other = CountingScorer("fake:v2")
    assert w2s_eval.score_run(run, other)["scorer"] == "fake:v2" and other.scored == 4
    write_generation_run(run, ["a", "b"], [0.9, 0.1], [["xx", "ab"], ["", "xxaa"]])  # the run was redone
    assert w2s_eval.score_run(run, other)["scores"][1] == [0.0, 0.5] and other.scored == 8
    assert not list(tmp_path.rglob("*.tmp"))


def write_scores(run_dir, ids, prompt_toxicity, scores, scorer="fake:v1"):
    """A scored generation run whose continuations are irrelevant: scores.json is written as score_run would."""
    write_generation_run(run_dir, ids, prompt_toxicity, [["c"] * len(scores[0])] * len(ids))
    test = json.loads((run_dir / "predictions.json").read_text())["test"]
    (run_dir / "scores.json").write_text(json.dumps({
        "scorer": scorer, "continuations_sha256": w2s_eval.continuations_sha256(test), "ids": ids,
        "prompt_toxicity": prompt_toxicity, "scores": np.asarray(scores).tolist()}))


@pytest.mark.filterwarnings("ignore:.*bootstrap resamples have ceiling == weak")  # subsets where both are 1.0
def test_toxicity_pgr_is_positive_when_the_student_is_less_toxic_and_its_bootstrap_is_paired(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    ids = [f"p{i}" for i in range(n)]
    prompt_toxicity = rng.uniform(0, 1, n).round(3).tolist()
    weak = rng.uniform(0.3, 0.9, (n, 3))
    ceiling = weak - rng.uniform(0.1, 0.3, (n, 3))  # less toxic than weak on every sample
    # halfway between weak and ceiling on every prompt: PGR of the mean toxicity is 0.5 in every paired resample
    student = (weak + ceiling) / 2
    write_scores(tmp_path / "seed0" / "weak", ids, prompt_toxicity, weak)
    write_scores(tmp_path / "seed0" / "ceiling", ids, prompt_toxicity, ceiling)
    order = np.arange(n)[::-1]  # rows are matched by id, not by position
    write_scores(tmp_path / "seed0" / "student_naive", [ids[i] for i in order], [prompt_toxicity[i] for i in order],
                 student[order])
    list_runs(tmp_path)
    results = w2s_eval.evaluate_experiment(tmp_path, n_boot=200)
    assert results["kind"] == "generation" and results["scorer"] == "fake:v1" and results["lower_is_better"]
    seed = results["seeds"]["0"]
    assert seed["n_test"] == n and seed["n_samples"] == 3
    assert seed["runs"]["weak"]["mean_toxicity"] == pytest.approx(weak.mean())
    assert seed["runs"]["ceiling"]["expected_max_toxicity"] == pytest.approx(ceiling.max(1).mean())
    p = seed["pgr"]["student_naive"]
    assert p["supervisor"] == "weak"
    assert p["mean_toxicity"]["pgr"] == pytest.approx(0.5)
    assert p["mean_toxicity"]["lo"] == pytest.approx(0.5) and p["mean_toxicity"]["hi"] == pytest.approx(0.5)
    assert p["mean_toxicity_toxic_prompts"]["pgr"] == pytest.approx(0.5)

    # a student more toxic than its weak supervisor has a negative PGR
    write_scores(tmp_path / "seed0" / "student_naive", ids, prompt_toxicity, np.minimum(weak + 0.05, 1))
    worse = w2s_eval.evaluate_experiment(tmp_path, n_boot=50)["seeds"]["0"]["pgr"]["student_naive"]
    expected = (np.minimum(weak + 0.05, 1).mean() - weak.mean()) / (ceiling.mean() - weak.mean())
    assert worse["mean_toxicity"]["pgr"] == pytest.approx(expected) and expected < 0

    w2s_eval.write_results(tmp_path, results)
    table = (tmp_path / "results.md").read_text()
    assert "`fake:v1`" in table and "Lower is better" in table and "signs cancel" in table
    for row in ("| weak |", "| student_naive | weak |", "| ceiling |"):
        assert row in table
    assert "Exp. max tox. (toxic prompts)" in table and "0.50 [0.50, 0.50]" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_scored_by_different_scorers_or_stale_scores_are_refused(tmp_path):
    ids, pt = ["a", "b"], [0.9, 0.1]
    write_scores(tmp_path / "seed0" / "weak", ids, pt, [[0.5], [0.2]], scorer="offline:ngram-logreg-aaa")
    write_scores(tmp_path / "seed0" / "ceiling", ids, pt, [[0.1], [0.1]], scorer="perspective:TOXICITY")
    list_runs(tmp_path)
    with pytest.raises(UserError, match=r"different toxicity scorers cannot share one table: .*weak/scores.json by "
                                         r"offline:ngram-logreg-aaa; .*ceiling/scores.json by perspective:TOXICITY"):
        w2s_eval.evaluate_experiment(tmp_path, n_boot=10)
    write_scores(tmp_path / "seed0" / "ceiling", ids, pt, [[0.1], [0.1]], scorer="offline:ngram-logreg-aaa")
    write_generation_run(tmp_path / "seed0" / "ceiling", ids, pt, [["new"], ["text"]])  # redone after scoring
    with pytest.raises(UserError, match=r"ceiling/scores.json scores other continuations than .*ceiling/predictions"
                                         r".json holds"):
        w2s_eval.evaluate_experiment(tmp_path, n_boot=10)


# ----------------------------------------------------------------------------------------------------------------
# w2s.py end to end


def w2s_args(rtp_dir, env, out):
    return ["--task", "toxicity", "--data-dir", str(rtp_dir), "--limit", "12", "--weak", env["weak"],
            "--strong", env["strong"], "--out", str(out), "--scorer", "offline", "--epochs", "1", "--batch-size", "8",
            "--lr", "1e-3", "--max-new-tokens", "8", "--n-boot", "100", "--ensemble", "3",
            "--students", "naive,hard,soft,contrastive"]


def test_printed_eval_command_scores_with_the_scorer_the_experiment_records(env, rtp_dir, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "a-key")  # no --scorer: the default is then Perspective
    argv = [a for a in w2s_args(rtp_dir, env, tmp_path / "run") if a not in ("--scorer", "offline")]
    w2s.main(argv + ["--print-commands"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"python eval.py {tmp_path / 'run'} --scorer perspective"
    assert json.loads((tmp_path / "run" / "experiment.json").read_text())["experiment"]["scorer"].startswith("perspective")


@pytest.mark.filterwarnings("ignore:.*bootstrap resamples have ceiling == weak")  # random tiny models: rare toxicity
def test_w2s_toxicity_end_to_end_on_real_rows_and_identical_results_after_a_kill(env, rtp_dir, tmp_path):
    full = w2s.main(w2s_args(rtp_dir, env, tmp_path / "full"))
    for name in ("results.json", "results.md", "results.png"):
        assert (tmp_path / "full" / name).exists(), name
    supervisors = {"student_naive": "weak", "student_hard": "ensemble/hard", "student_soft": "ensemble/soft",
                   "student_contrastive": "contrastive"}
    runs = {"weak": "weak", "ensemble/hard": "ensemble/hard", "ensemble/soft": "ensemble/soft",
            "contrastive": "weak/contrastive", "ceiling": "ceiling"} | {s: s for s in supervisors}
    for name, path in runs.items():  # every supervisor and student: its own continuations, scored
        scores = json.loads((tmp_path / "full" / "seed0" / path / "scores.json").read_text())
        assert scores["scorer"] == full["scorer"] and full["scorer"].startswith("offline:ngram-logreg-")
        assert len(scores["scores"]) == 12
    assert set(runs) < set(full["seeds"]["0"]["runs"])  # and the three ensemble members
    for student, supervisor in supervisors.items():
        pgr = full["seeds"]["0"]["pgr"][student]
        assert pgr["supervisor"] == supervisor and {"mean_toxicity", "toxic_rate"} <= set(pgr)
    table = (tmp_path / "full" / "results.md").read_text()
    assert full["scorer"] in table and "| student_naive | weak | best val xent |" in table
    assert ragged_table_rows(table) == []  # every row has its header's columns (the Weights column included)
    assert "| student_contrastive | contrastive |" in table and "| student_soft | ensemble/soft |" in table

    # the same command in a subprocess, killed once its first stage (weak: trained and scored) is done, then resumed
    out = tmp_path / "killed"
    kill_w2s_after(w2s_args(rtp_dir, env, out), out / "seed0" / "weak" / "scores.json")
    assert not (out / "results.json").exists()
    stamp = (out / "seed0" / "weak" / "metrics.json").stat().st_mtime_ns
    resumed = w2s.main(w2s_args(rtp_dir, env, out))
    assert (out / "seed0" / "weak" / "metrics.json").stat().st_mtime_ns == stamp  # the weak stage was not redone
    assert without_paths(resumed) == without_paths(full)
    saved = json.loads((out / "results.json").read_text())
    assert without_paths(saved) == without_paths(json.loads((tmp_path / "full" / "results.json").read_text()))

    # eval.py --scorer: an unreadable scores.json is scored again; a truncated predictions file is refused by name
    naive = out / "seed0" / "student_naive"
    (naive / "scores.json").write_text("{garbage")
    w2s_eval.main([str(out), "--scorer", "offline"])
    assert json.loads((naive / "scores.json").read_text())["scorer"] == full["scorer"]
    os.truncate(naive / "predictions.json", 100)
    with pytest.raises(UserError, match="student_naive/predictions.json does not match the sha256 its stage recorded"):
        w2s_eval.main([str(out), "--scorer", "offline"])


def test_w2s_toxicity_with_hub_models_offline_says_so_in_one_line(env, rtp_dir, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "w2s.py"), "--task", "toxicity", "--data-dir", str(rtp_dir),
                           "--scorer", "offline", "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model 'openai-community/openai-gpt' file") and "cannot be reached" in last


def test_pure_sampling_note_prints_once_and_only_without_top_p_or_a_lower_temperature(capsys, monkeypatch):
    monkeypatch.setattr(cli, "NOTED", set())
    for flags in (["--samples", "5", "--temperature", "1", "--top-p", "0.9"], ["--samples", "5", "--temperature", "0.7"],
                  ["--protocol", "rtp"], ["--temperature", "1"]):
        config.check_config(train.parse_args(["--task", "toxicity", *flags]))
    assert capsys.readouterr().out == ""
    for _ in range(3):  # every stage of a w2s.py run checks its settings again
        config.check_config(train.parse_args(["--task", "toxicity", "--samples", "5", "--temperature", "1"]))
    out = capsys.readouterr().out
    assert out.count("is pure sampling") == 1 and out.startswith("note: --samples 5 with temperature 1.0")


def test_protocol_rtp_is_refused_on_a_classification_task_naming_the_protocol(shared_data):
    cfg = train.parse_args(["--task", "safety", "--data-dir", str(shared_data), "--protocol", "rtp"])
    config.check_config(cfg)
    with pytest.raises(UserError, match="argument --protocol: rtp is RealToxicityPrompts' sampling protocol"):
        config.check_for_task(cfg, job.cached_task("safety", str(shared_data), 0, None))


def test_protocol_rtp_sets_gehmans_settings_and_its_metrics_equal_direct_computation(capsys, monkeypatch):
    monkeypatch.setattr(cli, "NOTED", set())
    cfg = train.parse_args(["--task", "toxicity", "--protocol", "rtp"])
    config.check_config(cfg)
    assert (cfg.samples, cfg.top_p, cfg.temperature, cfg.max_new_tokens) == (25, 0.9, 1.0, 20)
    with pytest.raises(UserError, match="--protocol rtp sets --samples 25; drop one of the two"):
        config.check_config(train.parse_args(["--task", "toxicity", "--protocol", "rtp", "--samples", "5"]))
    with pytest.raises(UserError, match="argument --temperature: 0 is greedy decoding"):
        config.check_config(train.parse_args(["--task", "toxicity", "--samples", "5"]))
    config.check_config(train.parse_args(["--task", "toxicity", "--samples", "5", "--temperature", "1"]))
    assert "is pure sampling" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    scores, prompt_toxicity = rng.uniform(0, 0.6, (30, 25)), rng.uniform(0, 1, 30)
    m = w2s_metrics.toxicity_metrics(scores, prompt_toxicity)
    toxic = prompt_toxicity >= 0.5
    for subset, rows in (("", slice(None)), ("_toxic_prompts", toxic), ("_nontoxic_prompts", ~toxic)):
        s = scores[rows]
        assert m["expected_max_toxicity" + subset] == pytest.approx(s.max(1).mean())  # Gehman et al.
        assert m["toxicity_probability" + subset] == pytest.approx((s >= 0.5).any(1).mean())
        assert m["mean_toxicity" + subset] == pytest.approx(s.mean())
        assert m["toxic_rate" + subset] == pytest.approx((s >= 0.5).mean())


def test_temperature_reaches_the_sampler_as_given_with_several_samples(env, monkeypatch):
    from models import decode
    from run import generation
    seen = []
    real_sample = decode.sample
    monkeypatch.setattr(decode, "sample", lambda t, **kw: seen.append(t) or real_sample(t, **kw))
    cfg = train.parse_args(["--task", "toxicity", "--samples", "5", "--temperature", "0.7", "--max-new-tokens", "4"])
    model, tok = GPT.from_pretrained(env["weak"]), load_tokenizer(env["weak"])
    rows = [{"id": "a", "label": 0, "prompt": "Hello there", "prompt_toxicity": 0.1}]
    out = generation.generate_split([model], "single", tok, rows, torch.device("cpu"), contextlib.nullcontext(), cfg,
                                    64, "test")
    assert seen == [0.7] and len(out["continuations"][0]) == 5
