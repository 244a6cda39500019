"""
Evaluation of a whole run directory written by w2s.py: read every stage's predictions (checked), score generation
runs' continuations, compute each run's metrics and each student's PGR with its paired-bootstrap interval and
diagnostics (the numbers themselves: metrics.py), and write results.json; its markdown tables and plots are
report.py's. The command is eval.py, a thin entry point to this file (`eval` is Python's built-in).

    python eval.py runs/safety                      # prints the table, writes results.json / .md / .png
    python eval.py runs/safety runs/legal --n-boot 2000
    python eval.py runs/safety --json               # print results.json instead of the table

A run directory's experiment.json (written by w2s.py, see rundir.py) lists exactly which runs to evaluate and which
student is compared with which supervisor and ceiling; nothing else in the directory is read. Every predictions.json
is checked against the sha256 its stage recorded, and refused, naming it, when it does not match.
predictions.json = {"test": {"ids": [...], "labels": [...], "probs": [[p0, p1], ...]}, ...other splits}
Generation runs (toxicity) hold "continuations" instead of "probs"; score_run writes their toxicity scores beside them:
scores.json = {"scorer": name, "continuations_sha256": ..., "ids": [...], "prompt_toxicity": [...], "scores": [[...]]}

PGR = (student - supervisor) / (ceiling - supervisor), each student against the supervisor that labelled its data.
It is reported only where the ceiling is clearly better than the supervisor (the paired-bootstrap 95% interval of
their gap excludes 0); elsewhere it is n/a, with the gap, because a ratio over a gap near 0 measures nothing.
"""
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from core import cli
from core.cli import UserError, write_atomic
from experiment import report
from run import rundir
from scoring import toxicity
from scoring.metrics import (DIAGNOSTICS, METRICS, TOXIC, bootstrap, diagnostics, per_prompt_toxicity,
                             pgr_with_interval, prepare_binary, prepare_toxicity, resample_weights, seed_summary,
                             weighted_metrics, weighted_toxicity, why_undefined)

# ----------------------------------------------------------------------------------------------------------------
# scoring generated continuations

def continuations_sha256(test):
    """Fingerprint of a run's test continuations (with their ids): scores.json is valid for exactly these."""
    blob = json.dumps({"ids": test["ids"], "continuations": test["continuations"]}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def toxicity_scorer(scorer, task, quiet=False):
    """The scorer for a generation task's continuations: "offline" | "perspective" | "" (= toxicity.default_scorer()).
    The offline scorer trains on the task's own RealToxicityPrompts files (its data dir or the Hub cache)."""
    scorer = scorer or toxicity.default_scorer()
    if scorer == "offline":
        return toxicity.OfflineScorer(files=[f["path"] for f in task.files])
    return toxicity.load_scorer(scorer, quiet=quiet)


def score_run(run_dir, scorer):
    """Score every test continuation of one generation run into run_dir/scores.json (written atomically). Skipped
    when scores.json already holds this scorer's scores of these very continuations; the Perspective scorer's own
    on-disk cache makes a killed scoring resume where it stopped. Returns the scores.json content."""
    run_dir = Path(run_dir)
    path = run_dir / "predictions.json"
    try:
        test = json.loads(path.read_text())["test"]
        ids, continuations = [str(i) for i in test["ids"]], test["continuations"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not the predictions of a generation run (need 'test' ids and continuations; "
                        f"{e!r})") from None
    rows = [[c] if isinstance(c, str) else c for c in continuations]
    if len(rows) != len(ids) or len({len(r) for r in rows}) > 1 or not all(isinstance(c, str) for r in rows for c in r):
        raise UserError(f"{path}: 'test' must hold one list of continuation strings per id, all equally long "
                        f"({len(ids)} ids, {len(rows)} rows)")
    digest = continuations_sha256(test)
    out = run_dir / "scores.json"
    if out.is_file():
        try:
            saved = json.loads(out.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            print(f"[{run_dir.name}] {out} is not readable JSON: scoring again", flush=True)
            saved = {}
        if saved.get("scorer") == scorer.name and saved.get("continuations_sha256") == digest:
            print(f"[{run_dir.name}] already scored by {scorer.name}; skipping", flush=True)
            return saved
    flat = scorer.score([c for r in rows for c in r])
    n_samples = len(rows[0]) if rows else 0
    scores = [flat[i * n_samples:(i + 1) * n_samples] for i in range(len(rows))]
    result = {"scorer": scorer.name, "threshold": TOXIC, "continuations_sha256": digest, "ids": ids,
              "prompt_toxicity": test.get("prompt_toxicity"), "scores": scores}
    write_atomic(out, (json.dumps(result) + "\n").encode())
    print(f"[{run_dir.name}] scored {len(flat)} continuations with {scorer.name}: mean toxicity "
          f"{np.mean(flat) if flat else float('nan'):.4f}", flush=True)
    return result


# ----------------------------------------------------------------------------------------------------------------
# a whole experiment: exactly the runs its experiment.json lists

def read_experiment(out_dir):
    path = Path(out_dir) / rundir.EXPERIMENT
    if not path.is_file():
        raise UserError(f"{out_dir} has no {rundir.EXPERIMENT}: not a run directory written by w2s.py (eval.py evaluates "
                        "exactly the stages an experiment.json lists)")
    return cli.read_json(path)


def check_stage_configs(out_dir, exp):
    """Every finished stage that eval.py reads was trained with the settings experiment.json implies
    (stages.implied_configs): a stage trained by hand into the run directory with other flags is refused, naming the
    first key that differs, instead of entering the table as if it belonged to the experiment."""
    from experiment import stages
    from run import config  # imports torch: only here, where stages are rebuilt
    defaults = config.comparable(config.TrainConfig())
    for s in exp["seeds"]:
        implied = stages.implied_configs(exp, s)
        if implied is None:  # not written by w2s.py: nothing says what the stages should be
            return
        for stage in dict.fromkeys(r["stage"] for r in exp["runs"]):
            path = Path(out_dir) / f"seed{s}" / stage / "config.json"
            if not (path.parent / "metrics.json").is_file():
                continue  # not finished: skipped, and said so, where its predictions are read
            if stage not in implied:
                raise UserError(f"{Path(out_dir) / rundir.EXPERIMENT} lists the stage seed{s}/{stage}, which its "
                                "settings do not imply: not an experiment.json written by w2s.py")
            saved = cli.read_json(path, "stage config").get("comparable")
            saved = saved if isinstance(saved, dict) else {}
            for k in dict.fromkeys([*implied[stage], *saved]):
                if k not in saved and k in defaults and implied[stage].get(k) == defaults[k]:
                    continue  # a flag newer than the run, at its default: the run trained as it says
                if saved.get(k, "<unset>") != implied[stage].get(k, "<unset>"):
                    raise UserError(f"{path}: key {k} is {_shown(saved.get(k, '<unset>'))}, {rundir.EXPERIMENT} "
                                    f"implies {_shown(implied[stage].get(k, '<unset>'))} (this stage was trained with "
                                    "other settings than its experiment's: rerun w2s.py to redo it)")


def _shown(value):
    return value if isinstance(value, str) else json.dumps(value)


def _reference_order(ref, path, ids, differ):
    """This run's rows in the order of the seed's first run `ref` ({"path", "ids", "pos": id -> row}), whose test ids
    it must share; `differ` says in the error what the two runs do differently ("predict different test examples")."""
    missing, extra = set(ref["ids"]) - set(ids), set(ids) - set(ref["ids"])
    if missing or extra:
        raise UserError(f"{path} and {ref['path']} {differ} ({len(missing)} missing, {len(extra)} extra, e.g. "
                        f"{sorted(missing or extra)[0]!r}); runs of one seed must share the test split (same --seed, "
                        "--limit and data)")
    return np.argsort([ref["pos"][i] for i in ids])


def _verified_predictions(seed_dir, run, skipped):
    """(path, content) of a listed run's predictions.json, checked against the sha256 its stage recorded; None, noted
    in `skipped`, when the stage has not finished."""
    stage = seed_dir / run["stage"]
    if not (stage / "metrics.json").is_file():
        skipped.append(f"{seed_dir.name}/{run['name']}: its stage has not finished (rerun w2s.py to finish it)")
        return None
    path = rundir.verified(stage, os.path.relpath(seed_dir / run["path"] / "predictions.json", stage))
    return path, cli.read_json(path, "predictions file")


def _load_runs(seed_dir, listed, skipped):
    """{run name: {"test": (labels, P(class 1), predicted class 1?), "train": {id: P(class 1)}}}, test rows of every
    run in one example order."""
    runs, ref = {}, None
    for run in listed:
        found = _verified_predictions(seed_dir, run, skipped)
        if found is None:
            continue
        path, predictions = found
        try:
            test = predictions["test"]
            ids, labels, probs = [str(i) for i in test["ids"]], np.asarray(test["labels"]), np.asarray(test["probs"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: not the predictions of a classification run ({e!r})") from None
        if len(ids) != len(labels) or len(ids) != len(probs) or len(set(ids)) != len(ids):
            raise UserError(f"{path}: 'test' must hold unique ids with one label and one probability row each")
        if ref is None:
            ref = {"path": path, "ids": ids, "labels": labels, "pos": {i: k for k, i in enumerate(ids)}}
        else:
            order = _reference_order(ref, path, ids, "predict different test examples")
            labels, probs = labels[order], probs[order]
            if (labels != ref["labels"]).any():
                k = int(np.flatnonzero(labels != ref["labels"])[0])
                raise UserError(f"{path} and {ref['path']} disagree on the label of test id {ref['ids'][k]!r}")
        train = predictions.get("w2s_train")
        runs[run["name"]] = {"test": prepare_binary(labels, probs, f"{path} 'test'"),
                             "train": dict(zip(map(str, train["ids"]), np.asarray(train["probs"])[:, 1]))
                             if train and "probs" in train else None}
    return runs


def _load_scored_runs(seed_dir, listed, scorers, skipped):
    """{run name: (scores (N, S), toxic prompt? (N,))} from each generation run's scores.json, all in one prompt
    order. The scores must be of the run's current (verified) continuations, and every run of the experiment scored
    by one scorer: `scorers` collects {scores.json path: scorer name} over all seeds."""
    runs, ref = {}, None
    for run in listed:
        found = _verified_predictions(seed_dir, run, skipped)
        if found is None:
            continue
        predictions_path, predictions = found
        path = predictions_path.parent / "scores.json"
        if not path.is_file():
            skipped.append(f"{seed_dir.name}/{run['name']}: not scored yet (rerun w2s.py, or eval.py --scorer NAME)")
            continue
        try:
            saved = cli.read_json(path, "scores file")
            ids, scorer, digest = [str(i) for i in saved["ids"]], saved["scorer"], saved["continuations_sha256"]
            scores, prompt_toxicity = saved["scores"], saved["prompt_toxicity"]
        except (KeyError, TypeError) as e:
            raise UserError(f"{path}: not a scores file written by evaluation.score_run ({e!r})") from None
        if continuations_sha256(predictions["test"]) != digest:
            raise UserError(f"{path} scores other continuations than {predictions_path} holds (the run was redone after "
                            f"scoring): delete {path} and rerun w2s.py to score it again")
        scorers[str(path)] = scorer
        if len(set(scorers.values())) > 1:
            by_scorer = {}
            for p, s in scorers.items():
                by_scorer.setdefault(s, p)
            raise UserError("runs scored by different toxicity scorers cannot share one table: " +
                            "; ".join(f"{p} by {s}" for s, p in by_scorer.items()) +
                            ". Score every run with one scorer (rerun w2s.py with --scorer NAME: only the scoring reruns)")
        if len(set(ids)) != len(ids):
            raise UserError(f"{path}: ids are not unique")
        scores, toxic_prompt = prepare_toxicity(scores, prompt_toxicity, str(path))
        if len(ids) != len(scores):
            raise UserError(f"{path}: {len(ids)} ids but {len(scores)} rows of scores")
        if ref is None:
            ref = {"path": path, "ids": ids, "toxic": toxic_prompt, "samples": scores.shape[1],
                   "pos": {i: k for k, i in enumerate(ids)}}
        else:
            order = _reference_order(ref, path, ids, "score different test prompts")
            if scores.shape[1] != ref["samples"]:
                raise UserError(f"{path} has {scores.shape[1]} samples per prompt, {ref['path']} {ref['samples']}: "
                                "runs of one experiment must generate alike (same --samples)")
            scores, toxic_prompt = scores[order], toxic_prompt[order]
            if (toxic_prompt != ref["toxic"]).any():
                k = int(np.flatnonzero(toxic_prompt != ref["toxic"])[0])
                raise UserError(f"{path} and {ref['path']} disagree on whether test prompt {ref['ids'][k]!r} is toxic")
        runs[run["name"]] = (scores, toxic_prompt)
    return runs


def _member_weights(seed_dir, exp):
    """{learned student: [its learnt weight of each ensemble member]}, from the students' metrics.json."""
    weights = {}
    for st in exp["students"]:
        run = next((r for r in exp["runs"] if r["name"] == st["name"]), None)
        record = seed_dir / run["stage"] / "metrics.json" if run else None
        if st["method"] != "learned" or record is None or not record.is_file():
            continue
        learnt = cli.read_json(record).get("member_weights")
        if learnt is not None:  # no null in results.json: a student without them is left out
            weights[st["name"]] = learnt
    return weights


def _selection(out_dir, exp):
    """{run: the weights it predicted with} (metrics.json's select: best, final, objective) of every listed run
    trained by train.py, from its first finished seed; a run whose seeds disagree lists every rule it used."""
    rules = {}
    for s in exp["seeds"]:
        for run in exp["runs"]:
            record = Path(out_dir) / f"seed{s}" / run["stage"] / "metrics.json"
            select = cli.read_json(record).get("select") if record.is_file() else None
            if select and select not in rules.setdefault(run["name"], []):
                rules[run["name"]].append(select)
    return {name: "/".join(r) for name, r in rules.items() if r}


def _n_params(out_dir, exp):
    """{model label: parameter count} of a sweep's models, from their first finished stage's config.json."""
    if not exp.get("sweep"):
        return {}
    counts = {}
    for s in exp["seeds"]:
        for run in exp["runs"]:
            config = Path(out_dir) / f"seed{s}" / run["stage"] / "config.json"
            if run.get("model") and run["model"] not in counts and config.is_file():
                n = cli.read_json(config).get("n_params")
                if n is not None:  # an ensemble's own config.json has none: a later stage of the model says it
                    counts[run["model"]] = n
    return counts


def _compare_runs(values, boot, metric_names, students, lower_is_better):
    """Per-run values with bootstrap 95% intervals, and the PGR of every listed student against its supervisor and
    ceiling. values {run: {metric: float}}, boot {run: {metric: (n_boot,)}} from resamples shared by every run."""
    runs, pgrs = {}, {}
    for name in values:
        ci = {k: [float(q) for q in np.nanpercentile(boot[name][k], [2.5, 97.5])]
              if np.isfinite(boot[name][k]).any() else [float("nan")] * 2 for k in metric_names}
        runs[name] = {**values[name], "ci95": ci}
        undefined = {k: why_undefined(k) if not np.isfinite(values[name][k]) else "no resample defines its interval"
                     for k in metric_names if not np.isfinite([values[name][k], *ci[k]]).all()}
        if undefined:  # nulls in results.json: say why, as PGR entries do
            runs[name]["reason"] = "; ".join(f"{k}: {why}" for k, why in undefined.items())
    for st in students:
        student, supervisor, ceiling = st["name"], st["supervisor"], st["ceiling"]
        if student not in values or supervisor not in values or ceiling not in values:
            continue
        pgrs[student] = {"supervisor": supervisor, "ceiling": ceiling} | {
            k: pgr_with_interval(values[supervisor][k], values[student][k], values[ceiling][k], boot[supervisor][k],
                                 boot[student][k], boot[ceiling][k], lower_is_better) for k in metric_names}
    return runs, pgrs


def _evaluate_classification(runs, students, n_boot, seed):
    n_test = len(next(iter(runs.values()))["test"][0])
    # one set of resamples per seed, shared by every run: the PGR bootstrap is paired
    weights = resample_weights(n_test, n_boot, seed)
    values = {name: {k: float(v[0]) for k, v in weighted_metrics(*r["test"], np.ones((1, n_test))).items()}
              for name, r in runs.items()}
    boot = {name: bootstrap(weighted_metrics, r["test"], weights) for name, r in runs.items()}
    per_run, pgrs = _compare_runs(values, boot, METRICS, students, lower_is_better=False)
    diag = {}
    for st in students:
        student, teacher = runs.get(st["name"]), runs.get(st["trained_on"])
        if st["name"] in pgrs and teacher and student["train"] and teacher["train"]:
            ids = list(teacher["train"])
            y = student["test"][0]
            diag[st["name"]] = diagnostics(y, student["test"][1], teacher["test"][1],
                                           [student["train"][i] for i in ids], [teacher["train"][i] for i in ids])
    return {"n_test": n_test, "runs": per_run, "pgr": pgrs, "diagnostics": diag}


def _evaluate_generation(runs, students, n_boot, seed):
    scores, toxic_prompt = next(iter(runs.values()))
    n_test = len(scores)
    weights = resample_weights(n_test, n_boot, seed)  # resamples of prompts, shared by every run: paired
    values, boot = {}, {}
    for name, (s, toxic) in runs.items():
        per_prompt = per_prompt_toxicity(s)
        values[name] = {k: float(v[0]) for k, v in weighted_toxicity(per_prompt, toxic, np.ones((1, n_test))).items()}
        boot[name] = bootstrap(weighted_toxicity, (per_prompt, toxic), weights)
    metric_names = list(next(iter(values.values())))
    per_run, pgrs = _compare_runs(values, boot, metric_names, students, lower_is_better=True)
    return {"n_test": n_test, "n_toxic_prompts": int(toxic_prompt.sum()), "n_samples": int(scores.shape[1]),
            "runs": per_run, "pgr": pgrs}, metric_names


def json_safe(x):
    """nan/inf -> None (strict JSON), numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def evaluate_experiment(out_dir, n_boot=1000, seed=0):
    """Test metrics of every listed run, PGR of every listed student against its supervisor and ceiling with a 95%
    paired-bootstrap interval (n/a where the gap is not clearly positive), diagnostics, per seed and as mean +- std
    over seeds. JSON-able (undefined numbers are None). Classification runs are judged by their class probabilities;
    generation runs (toxicity) by the toxicity of their scored continuations."""
    out_dir = Path(out_dir)
    exp = read_experiment(out_dir)
    check_stage_configs(out_dir, exp)
    generation = exp["kind"] == "generation"
    results = {"out_dir": str(out_dir), "kind": exp["kind"], "n_boot": n_boot, "bootstrap_seed": seed,
               "metrics": list(METRICS), "seeds": {}, "skipped": [], "description": exp.get("description", {}),
               "students": exp["students"], "table_rows": [r["name"] for r in exp["runs"] if r.get("table", True)],
               "sweep": exp.get("sweep") or [], "n_params": _n_params(out_dir, exp), "selection": _selection(out_dir, exp)}
    scorers, metric_names = {}, {}
    for s in exp["seeds"]:
        seed_dir = out_dir / f"seed{s}"
        if generation:
            scored = _load_scored_runs(seed_dir, exp["runs"], scorers, results["skipped"])
            if scored:
                results["seeds"][str(s)], names = _evaluate_generation(scored, exp["students"], n_boot, seed)
                metric_names |= dict.fromkeys(names)
        else:
            runs = _load_runs(seed_dir, exp["runs"], results["skipped"])
            if runs:
                results["seeds"][str(s)] = _evaluate_classification(runs, exp["students"], n_boot, seed)
                results["seeds"][str(s)]["member_weights"] = _member_weights(seed_dir, exp)
    if generation:
        if not scorers:  # nothing scored yet: results.json's scorer is null, and says why
            results["reason"] = "scorer: no run is scored yet (see skipped)"
        results |= {"metrics": list(metric_names), "scorer": next(iter(scorers.values()), None),
                    "toxic_threshold": TOXIC, "lower_is_better": True,
                    "pgr_note": "toxicity: lower is better, so student - weak and ceiling - weak are both negative "
                                "when the student and the ceiling improve on the weak model; the signs cancel and "
                                "PGR reads as usual (1 = as non-toxic as the ceiling, 0 = no better than weak)"}
    per_seed = list(results["seeds"].values())
    run_names = dict.fromkeys(n for r in per_seed for n in r["runs"])
    student_names = dict.fromkeys(n for r in per_seed for n in r["pgr"])
    results["summary"] = {
        "n_seeds": len(per_seed),
        "seeds": list(results["seeds"]),
        "runs": {name: {k: seed_summary([r["runs"][name][k] for r in per_seed if k in r["runs"].get(name, {})])
                        for k in results["metrics"]} for name in run_names},
        "pgr": {name: {"supervisor": next(r["pgr"][name]["supervisor"] for r in per_seed if name in r["pgr"]),
                       **{k: seed_summary([r["pgr"][name][k]["pgr"] for r in per_seed if name in r["pgr"]])
                          for k in results["metrics"]}} for name in student_names},
        "diagnostics": {name: {k: seed_summary([r["diagnostics"][name][k] for r in per_seed
                                            if name in r.get("diagnostics", {})]) for k in DIAGNOSTICS}
                        for name in dict.fromkeys(n for r in per_seed for n in r.get("diagnostics", {}))},
    }
    return json_safe(results)


def write_results(out_dir, results):
    """OUT/results.json, then the report (report.write_report: results.md and the plots); each written to a
    temporary file first and renamed, so a reader never sees half a file."""
    out_dir = Path(out_dir)
    write_atomic(out_dir / "results.json", (json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n").encode())
    report.write_report(out_dir, results)


def score_experiment(out_dir, scorer_name):
    """Score every finished generation run of an experiment that has no scores.json by this scorer yet."""
    from data import load_task
    exp = read_experiment(out_dir)
    task = load_task(exp["experiment"]["task"], data_dir=exp.get("data_dir"), seed=exp["seeds"][0])
    scorer = toxicity_scorer(scorer_name, task)
    for s in exp["seeds"]:
        for run in exp["runs"]:
            stage = Path(out_dir) / f"seed{s}" / run["stage"]
            if (stage / "metrics.json").is_file():  # its continuations as trained, or refused naming the file
                rundir.verified(stage, str(Path(run["path"]).relative_to(run["stage"]) / "predictions.json"))
                score_run(Path(out_dir) / f"seed{s}" / run["path"], scorer)


@dataclass
class EvalConfig:
    n_boot: int = 1000               # bootstrap resamples for the 95% intervals
    seed: int = 0                    # seed of the bootstrap resamples
    json: bool = False               # print results.json instead of the table (the closing line goes to stderr)
    scorer: Literal["", "offline", "perspective"] = ""  # generation runs: first score the continuations not scored
    # yet with this scorer; "" = score nothing


def main(argv=None):
    parser = cli.config_parser(EvalConfig, __doc__)
    parser.add_argument("out_dirs", nargs="+", help="run directories written by w2s.py")
    args = parser.parse_args(argv)
    if args.n_boot < 1:
        parser.error(f"argument --n-boot: must be at least 1 (got {args.n_boot})")
    for out_dir in map(Path, args.out_dirs):
        if args.scorer:
            score_experiment(out_dir, args.scorer)
        results = evaluate_experiment(out_dir, n_boot=args.n_boot, seed=args.seed)
        previous = out_dir / "results.json"
        if previous.is_file():  # keep the experiment config w2s.py recorded
            config = cli.read_json(previous).get("config")
            if config is not None:
                results["config"] = config
        with rundir.locked(out_dir, "run"):
            write_results(out_dir, results)
        print(json.dumps(results, indent=2) if args.json else report.format_table(results))
        # with --json, stdout is the JSON alone (for a pipe); the closing line goes to stderr
        print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}", flush=True,
              file=sys.stderr if args.json else sys.stdout)


if __name__ == "__main__":
    cli.main_guard(main)
