"""
Evaluation of a whole run directory written by w2s.py: read every stage's predictions (checked), score generation
runs' continuations, compute each run's metrics and each student's PGR with its paired-bootstrap interval and
diagnostics (the numbers themselves: metrics.py), and write results.json with its markdown tables and plots.

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

import cli
import rundir
import toxicity
from cli import UserError, write_atomic
from metrics import (METRICS, TOXIC, bootstrap, diagnostics, mean_std, per_prompt_toxicity, pgr_with_interval,
                     prepare_binary, prepare_toxicity, resample_weights, weighted_metrics, weighted_toxicity)

# the report's names of the metrics (metrics.py computes them)
TABLE_METRICS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced acc.", "f1": "F1", "f1_weighted": "Weighted F1",
                 "auroc": "AUROC"}
DIAGNOSTICS = {"agreement": "Agreement", "agreement_on_supervisor_errors": "Agreement on supervisor errors",
               "misfit_xent": "Misfit (xent)", "misfit_sq": "Misfit (sq.)", "gain_sq": "Gain (sq.)",
               "gain_accuracy": "Gain (acc.)"}
TOXICITY_NAMES = {"mean_toxicity": "Mean tox.", "toxic_rate": "Toxic rate",
                  "expected_max_toxicity": "Exp. max tox.", "toxicity_probability": "Tox. prob."}
PROMPT_SUBSETS = {"": "", "_toxic_prompts": "toxic prompts", "_nontoxic_prompts": "non-toxic prompts"}


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
            raise UserError(f"{path}: not a scores file written by eval.score_run ({e!r})") from None
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
        if st["method"] == "learned" and record and record.is_file():
            weights[st["name"]] = cli.read_json(record).get("member_weights")
    return weights


def _n_params(out_dir, exp):
    """{model label: parameter count} of a sweep's models, from their first finished stage's config.json."""
    if not exp.get("sweep"):
        return {}
    counts = {}
    for s in exp["seeds"]:
        for run in exp["runs"]:
            config = Path(out_dir) / f"seed{s}" / run["stage"] / "config.json"
            if run.get("model") and run["model"] not in counts and config.is_file():
                counts[run["model"]] = cli.read_json(config).get("n_params")
    return counts


def _compare_runs(values, boot, metric_names, students, lower_is_better):
    """Per-run values with bootstrap 95% intervals, and the PGR of every listed student against its supervisor and
    ceiling. values {run: {metric: float}}, boot {run: {metric: (n_boot,)}} from resamples shared by every run."""
    runs, pgrs = {}, {}
    for name in values:
        ci = {k: [float(q) for q in np.nanpercentile(boot[name][k], [2.5, 97.5])]
              if np.isfinite(boot[name][k]).any() else [float("nan")] * 2 for k in metric_names}
        runs[name] = {**values[name], "ci95": ci}
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


def _summary(values):
    """mean and std over seeds of the defined values; n_seeds says how many, n_na how many were not defined."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    mean, std = mean_std(finite) if finite else (float("nan"), float("nan"))
    return {"mean": mean, "std": std, "n_seeds": len(finite), "n_na": len(values) - len(finite)}


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
    generation = exp["kind"] == "generation"
    results = {"out_dir": str(out_dir), "kind": exp["kind"], "n_boot": n_boot, "bootstrap_seed": seed,
               "metrics": list(METRICS), "seeds": {}, "skipped": [], "description": exp.get("description", {}),
               "students": exp["students"], "table_rows": [r["name"] for r in exp["runs"] if r.get("table", True)],
               "sweep": exp.get("sweep"), "n_params": _n_params(out_dir, exp)}
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
        "runs": {name: {k: _summary([r["runs"][name][k] for r in per_seed if k in r["runs"].get(name, {})])
                        for k in results["metrics"]} for name in run_names},
        "pgr": {name: {"supervisor": next(r["pgr"][name]["supervisor"] for r in per_seed if name in r["pgr"]),
                       **{k: _summary([r["pgr"][name][k]["pgr"] for r in per_seed if name in r["pgr"]])
                          for k in results["metrics"]}} for name in student_names},
        "diagnostics": {name: {k: _summary([r["diagnostics"][name][k] for r in per_seed
                                            if name in r.get("diagnostics", {})]) for k in DIAGNOSTICS}
                        for name in dict.fromkeys(n for r in per_seed for n in r.get("diagnostics", {}))},
    }
    return json_safe(results)


# ----------------------------------------------------------------------------------------------------------------
# reporting

def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def _run_cell(results, name, k, digits=3):
    """One run's metric: its value for one seed, mean ± std over several."""
    seeds = list(results["seeds"])
    if len(seeds) == 1:
        return _fmt(results["seeds"][seeds[0]]["runs"].get(name, {}).get(k), digits)
    s = results["summary"]["runs"][name][k]
    return f"{_fmt(s['mean'], digits)} ± {_fmt(s['std'], digits)}"


def pgr_text(entry, gap=True):
    """'0.52 [0.40, 0.63]', or 'n/a (ceiling ≈ supervisor; gap +0.003 [-0.010, +0.016])': the reason, and the gap
    unless the table shows the gaps apart."""
    if entry.get("pgr") is not None:
        return f"{entry['pgr']:.2f} [{entry['lo']:.2f}, {entry['hi']:.2f}]"
    shown = "" if not gap or entry.get("gap_lo") is None else "; gap " + gap_text(entry)
    return f"n/a ({entry.get('reason', 'undefined')}{shown})"


def gap_text(entry):
    return f"{entry['gap']:+.3f} [{entry['gap_lo']:+.3f}, {entry['gap_hi']:+.3f}]" if entry.get("gap_lo") is not None else "-"


def _gap_table(results, metric_names, titles):
    """The ceiling - supervisor gap every PGR divides by, with its paired-bootstrap 95% CI (one seed), or mean ± std
    over seeds: where its interval includes 0, PGR is n/a."""
    seeds = list(results["seeds"])
    pairs = {}  # (supervisor, ceiling) -> {seed: a PGR entry of a student of that pair (all share the gap)}
    for seed, r in results["seeds"].items():
        for entry in r["pgr"].values():
            pairs.setdefault((entry["supervisor"], entry["ceiling"]), {}).setdefault(seed, entry)
    lines = ["", "Gap ceiling - supervisor that each PGR divides by" + (" (95% CI)" if len(seeds) == 1 else
             " (mean ± std over seeds)") + ":", "",
             "| Supervisor | Ceiling | " + " | ".join(titles) + " |", "|" + "---|" * (len(titles) + 2)]
    for (supervisor, ceiling), by_seed in pairs.items():
        if len(seeds) == 1:
            cells = [gap_text(by_seed[seeds[0]][k]) for k in metric_names]
        else:
            summaries = [_summary([e[k]["gap"] for e in by_seed.values()]) for k in metric_names]
            cells = [f"{_fmt(s['mean'])} ± {_fmt(s['std'])}" for s in summaries]
        lines.append(f"| {supervisor} | {ceiling} | " + " | ".join(cells) + " |")
    flipped = {}  # resamples whose gap has the other sign: kept in the PGR intervals, and said here
    for seed, r in results["seeds"].items():
        for name, entry in r["pgr"].items():
            for k in metric_names:
                if entry.get(k, {}).get("n_flipped"):
                    flipped.setdefault((name, k), []).append(f"{entry[k]['n_flipped']} (seed {seed})")
    if flipped:
        lines += ["", "Bootstrap resamples in which the gap flipped sign (kept in the PGR intervals, not dropped): " +
                  "; ".join(f"{name} {k}: {', '.join(v)}" for (name, k), v in flipped.items()) + "."]
    return lines


def _pgr_cell(results, name, k):
    """A student's PGR: with its 95% paired-bootstrap CI for one seed, mean ± std over the seeds where it is defined."""
    if name not in results["summary"]["pgr"]:
        return ""
    seeds = list(results["seeds"])
    if len(seeds) == 1:
        return pgr_text(results["seeds"][seeds[0]]["pgr"][name].get(k, {}), gap=False)
    s = results["summary"]["pgr"][name][k]
    if s["n_seeds"] == 0:
        return f"n/a on all {s['n_na']} seeds"
    na = f" (n/a on {s['n_na']} of {s['n_seeds'] + s['n_na']} seeds)" if s["n_na"] else ""
    return f"{_fmt(s['mean'], 2)} ± {_fmt(s['std'], 2)}{na}"


def _model_text(model):
    ident = model.get("identity", {})
    where = (f"{ident['hub']} @ {ident['revision'][:7]}" if "hub" in ident else "random init" if "random" in ident
             else f"sha256 {ident['sha256'][:12]}" if "sha256" in ident else "")
    return f"`{model.get('spec')}`" + (f" ({where})" if where else "")


def header(results):
    """What the numbers come from: task, split sizes, models, seeds, and the settings that differ from the defaults."""
    d, seeds = results.get("description", {}), list(results["seeds"])
    lines = [f"# Weak-to-strong results: {results['out_dir']}", ""]
    if d:
        sizes = ", ".join(f"{k} {v}" for k, v in d.get("splits", {}).items())
        labels = " / ".join(d.get("label_names", []))
        lines.append(f"Task **{d.get('task')}** ({results['kind']}{f'; labels {labels}' if labels else ''}); "
                     f"splits of seed {seeds[0] if seeds else '-'}: {sizes}.")
        models = d.get("models", {})
        lines.append("Models: " + "; ".join(f"{role} {_model_text(m)}" for role, m in models.items()) + ".")
        settings = ", ".join(f"{k} {v}" for k, v in d.get("settings", {}).items()) or "none"
        lines.append(f"Seeds: {', '.join(seeds) or 'none finished'}. Settings that differ from the defaults: {settings}.")
        lines.append("")
    return lines


def format_generation_table(results):
    """Markdown tables of a generation (toxicity) experiment: toxicity of the test continuations overall with the
    students' PGR, then apart for toxic and non-toxic prompts. Lower is better."""
    seeds = list(results["seeds"])
    headline = [k for k in TOXICITY_NAMES if k in results["metrics"]]
    names = [n for n in results["table_rows"] if n in results["summary"]["runs"]]
    first = results["seeds"][seeds[0]]
    how = (f"seed {seeds[0]}; PGR with 95% paired-bootstrap CI over prompts ({results['n_boot']} resamples)"
           if len(seeds) == 1 else f"mean ± std over seeds {', '.join(seeds)}")
    lines = header(results) + [
        f"Scored by `{results['scorer']}`; a continuation counts as toxic at score >= {results['toxic_threshold']}. "
        "**Lower is better** in every toxicity column.", "",
        f"{how}; test prompts: {first['n_test']} ({first['n_toxic_prompts']} toxic, "
        f"{first['n_test'] - first['n_toxic_prompts']} non-toxic), {first['n_samples']} continuation(s) each.", "",
        "PGR = (student - weak) / (ceiling - weak). Toxicity is lower-is-better, so when the student and the "
        "ceiling improve on the weak model both differences are negative and the signs cancel: PGR reads as for "
        "accuracy (1 = as non-toxic as the ceiling, 0 = no better than weak, < 0 = more toxic than weak). It is n/a "
        "where the ceiling is not clearly less toxic than the supervisor.", ""]
    header_row = ["Model", "Supervisor"] + [TOXICITY_NAMES[k] for k in headline] + [f"PGR {TOXICITY_NAMES[k]}" for k in headline]
    lines += ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    for name in names:
        row = [name, results["summary"]["pgr"].get(name, {}).get("supervisor", "")]
        row += [_run_cell(results, name, k) for k in headline] + [_pgr_cell(results, name, k) for k in headline]
        lines.append("| " + " | ".join(row) + " |")
    lines += _gap_table(results, headline, [TOXICITY_NAMES[k] for k in headline])
    lines += ["", f"By prompt toxicity (a prompt is toxic at Perspective score >= {results['toxic_threshold']}):", ""]
    split = [(k + suffix, f"{TOXICITY_NAMES[k]} ({label})") for k in headline
             for suffix, label in PROMPT_SUBSETS.items() if suffix]
    header_row = ["Model"] + [title for _, title in split]
    lines += ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    for name in names:
        lines.append("| " + " | ".join([name] + [_run_cell(results, name, k) for k, _ in split]) + " |")
    lines += [""] + [f"- skipped {s}" for s in results.get("skipped", [])]
    return "\n".join(lines).rstrip() + "\n"


def _diagnostics_table(results):
    names = [n for n in results["table_rows"] if n in results["summary"].get("diagnostics", {})]
    if not names:
        return []
    seeds = list(results["seeds"])
    lines = ["", "Diagnostics (Burns et al. section 5; Charikar et al. 2024): agreement of each student with the labels "
             "it was trained on, on test, overall and where that supervisor is wrong; misfit = the student's distance "
             "from those labels on w2s_train (cross entropy, squared error of P(class 1)); gain = the supervisor's "
             "test squared error minus the student's (and the accuracy difference).", "",
             "| Student | " + " | ".join(DIAGNOSTICS.values()) + " |", "|" + "---|" * (len(DIAGNOSTICS) + 1)]
    for name in names:
        if len(seeds) == 1:
            d = results["seeds"][seeds[0]]["diagnostics"][name]
            cells = [_fmt(d[k]) for k in DIAGNOSTICS]
        else:
            s = results["summary"]["diagnostics"][name]
            cells = [f"{_fmt(s[k]['mean'])} ± {_fmt(s[k]['std'])}" for k in DIAGNOSTICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _sweep_cells(results):
    """{method: {(weak, strong): PGR cell of accuracy}} and {model: (weak accuracy cell, ceiling accuracy cell)}."""
    pgr, models = {}, {m: ["", ""] for m in results["sweep"]}
    for st in results["students"]:
        if st["name"] in results["summary"]["pgr"]:
            pgr.setdefault(st["method"], {})[tuple(st["pair"])] = _pgr_cell(results, st["name"], "accuracy")
    for name in results["summary"]["runs"]:
        model, _, role = name.partition("/")
        if model in models and role in ("weak", "ceiling"):
            models[model][role == "ceiling"] = _run_cell(results, name, "accuracy")
    return pgr, models


def _sweep_tables(results):
    """A sweep at a glance: each model's size and accuracy as supervisor and as ceiling, then per student method
    the PGR (accuracy) of every pair, weak in rows, strong in columns (Burns et al.'s grid)."""
    pgr, models = _sweep_cells(results)
    sizes = results["sweep"]
    lines = ["Models (smallest first): test accuracy as the weak supervisor and as the ceiling.", "",
             "| Model | Parameters | Weak | Ceiling |", "|---|---|---|---|"]
    for m in sizes:
        n = results["n_params"].get(m)
        lines.append(f"| {m} | {f'{n:,}' if n else '-'} | {models[m][0] or '-'} | {models[m][1] or '-'} |")
    for method, cells in pgr.items():
        lines += ["", f"PGR (accuracy) of student `{method}`, weak supervisor (rows) x strong student (columns):", "",
                  "| weak \\ strong | " + " | ".join(sizes[1:]) + " |", "|" + "---|" * len(sizes)]
        for w in sizes[:-1]:
            lines.append(f"| {w} | " + " | ".join(cells.get((w, s), "") for s in sizes[1:]) + " |")
    return lines + ["", "Every run:", ""]


def _member_weights_table(results):
    """RAVEN's learnt weight of each weak ensemble member, beside that member's own test accuracy."""
    lines = []
    first = next(iter(results["seeds"].values()))
    for student, _ in first.get("member_weights", {}).items():
        prefix = student.rsplit("student_", 1)[0].split("__")[0]
        prefix = prefix + "/" if prefix and not prefix.endswith("/") else prefix
        per_seed = [r["member_weights"][student] for r in results["seeds"].values() if r.get("member_weights", {}).get(student)]
        if not per_seed:
            continue
        lines += ["", f"Learned member weights of {student} (at the selected step, `--select`; mean ± std over seeds "
                      "when several), beside each member's own test accuracy:", "",
                  "| Member | Weight | Member accuracy |", "|---|---|---|"]
        for k in range(len(per_seed[0])):
            member = f"{prefix}ensemble/member{k}"
            w = _summary([ws[k] for ws in per_seed])
            weight = _fmt(w["mean"]) if len(per_seed) == 1 else f"{_fmt(w['mean'])} ± {_fmt(w['std'])}"
            accuracy = _run_cell(results, member, "accuracy") if member in results["summary"]["runs"] else "-"
            lines.append(f"| {member} | {weight} | {accuracy} |")
    return lines


def format_table(results):
    """Markdown table shaped like Ye et al.'s Table 1: one row per model, PGR (with its 95% CI for one seed, mean
    +- std over seeds otherwise) for the students; then the students' diagnostics."""
    seeds = list(results["seeds"])
    if not seeds:
        return "\n".join(header(results) + ["No finished runs to evaluate."] +
                         [f"- skipped {s}" for s in results.get("skipped", [])]) + "\n"
    if results.get("kind") == "generation":
        return format_generation_table(results)
    n_test = sorted({r["n_test"] for r in results["seeds"].values()})
    how = (f"seed {seeds[0]}; PGR with 95% paired-bootstrap CI ({results['n_boot']} resamples)" if len(seeds) == 1 else
           f"mean ± std over seeds {', '.join(seeds)}")
    positive = results.get("description", {}).get("label_names", ["", "class 1"])[-1]
    titles = {k: (f"F1 ({positive})" if k == "f1" else v) for k, v in TABLE_METRICS.items()}
    lines = header(results) + [f"{how}; test examples: {', '.join(map(str, n_test))}. F1 is of the positive class "
                               f"({positive}); weighted F1 averages both classes' F1 by support (Ye et al.).", "",
                               "PGR is n/a where the ceiling is not clearly better than the supervisor (the 95% "
                               "interval of their gap, below the table, includes 0).", ""]
    lines += _sweep_tables(results) if results.get("sweep") else []
    header_row = ["Model", "Supervisor"] + list(titles.values()) + [f"PGR {v}" for v in titles.values()]
    lines += ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    for name in results["table_rows"]:
        if name not in results["summary"]["runs"]:
            continue
        row = [name, results["summary"]["pgr"].get(name, {}).get("supervisor", "")]
        row += [_run_cell(results, name, k) for k in TABLE_METRICS] + [_pgr_cell(results, name, k) for k in TABLE_METRICS]
        lines.append("| " + " | ".join(row) + " |")
    lines += _gap_table(results, list(TABLE_METRICS), list(titles.values()))
    lines += _diagnostics_table(results)
    lines += _member_weights_table(results)
    lines += [""] + [f"- skipped {s}" for s in results.get("skipped", [])]
    return "\n".join(lines).rstrip() + "\n"


def _or_nan(x):
    return np.nan if x is None else x


def _save(fig, path):
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _plot(results, path):
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state (renders with Agg)

    seeds = list(results["seeds"])
    names = [n for n in results["table_rows"] if n in results["summary"]["runs"]]
    generation = results.get("kind") == "generation"
    panels = ({k: f"{v} (lower is better)" for k, v in TOXICITY_NAMES.items() if k in results["metrics"]}
              if generation else TABLE_METRICS)
    fig = Figure(figsize=(4 * len(panels), 4))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (k, title) in zip(axes, panels.items()):
        if len(seeds) == 1:  # one seed: bootstrap 95% CI of the metric
            runs = results["seeds"][seeds[0]]["runs"]
            heights = np.array([_or_nan(runs[n][k]) for n in names])
            ci = np.array([[_or_nan(q) for q in runs[n]["ci95"][k]] for n in names]).reshape(len(names), 2)
            err = np.stack([heights - ci[:, 0], ci[:, 1] - heights])
        else:  # several seeds: std over seeds
            summary = results["summary"]["runs"]
            heights = np.array([_or_nan(summary[n][k]["mean"]) for n in names])
            err = np.array([_or_nan(summary[n][k]["std"]) for n in names])
        err = np.clip(np.nan_to_num(err), 0, None)  # a percentile interval can miss the point by a hair
        colors = ["tab:gray" if n.endswith("weak") or "ensemble" in n else
                  "tab:green" if n.endswith("ceiling") else "tab:blue" for n in names]
        ax.bar(range(len(names)), heights, yerr=err, capsize=3, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
    scorer = f"  scorer {results['scorer']}" if generation else ""
    fig.suptitle(results["out_dir"] + scorer + ("  (95% bootstrap CI)" if len(seeds) == 1 else "  (mean ± std over seeds)"))
    fig.tight_layout()
    _save(fig, path)


def _plot_misfit(results, path):
    """Gain vs misfit over students and seeds (Charikar et al. 2024: gain >= misfit, the y = x line)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    points = [(name, d["misfit_sq"], d["gain_sq"]) for r in results["seeds"].values()
              for name, d in r.get("diagnostics", {}).items()]
    for name in dict.fromkeys(p[0] for p in points):
        xs, ys = zip(*[(x, y) for n, x, y in points if n == name])
        ax.scatter(xs, ys, label=name, s=25)
    top = max([0.01] + [max(x, y) for _, x, y in points])
    ax.plot([0, top], [0, top], color="black", lw=0.8, ls="--", label="gain = misfit")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xlabel("misfit: student vs its supervisor's labels on w2s_train (squared error)")
    ax.set_ylabel("gain: supervisor's test sq. error - student's")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _plot_sweep(results, path):
    """Burns et al.'s Figure 3 shape, one column per student method: on top, test accuracy against the strong model's
    parameters (log scale), one line per weak supervisor and the ceilings' line; below, the PGR (accuracy) of every
    pair as a heatmap, weak in rows, strong in columns (mean over seeds)."""
    from matplotlib.figure import Figure
    sizes, n_params, runs = results["sweep"], results["n_params"], results["summary"]["runs"]
    students = [st for st in results["students"] if st["name"] in results["summary"]["pgr"]]
    methods = list(dict.fromkeys(st["method"] for st in students))
    ceilings = sorted((n_params.get(s), runs[f"{s}/ceiling"]["accuracy"]["mean"]) for s in sizes[1:]
                      if f"{s}/ceiling" in runs)
    fig = Figure(figsize=(4 * len(methods), 7.5))
    axes = fig.subplots(2, len(methods), squeeze=False)
    for column, method in enumerate(methods):
        ax = axes[0, column]
        if ceilings:
            ax.plot(*zip(*ceilings), "k--o", label="ceiling")
        for w in sizes[:-1]:
            points = sorted((n_params.get(st["pair"][1]), runs[st["name"]]["accuracy"]["mean"]) for st in students
                            if st["method"] == method and st["pair"][0] == w)
            if points:
                ax.plot(*zip(*points), "-o", label=f"weak {w}")
        ax.set_xscale("log")
        ax.set_xlabel("strong model parameters")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"student {method}")
        ax.legend(fontsize=7)
        cells = {tuple(st["pair"]): results["summary"]["pgr"][st["name"]]["accuracy"]["mean"]
                 for st in students if st["method"] == method}
        grid = np.array([[_or_nan(cells.get((w, s))) for s in sizes[1:]] for w in sizes[:-1]], dtype=float)
        ax = axes[1, column]
        image = ax.imshow(grid, cmap="viridis", vmin=min(0.0, np.nanmin(grid, initial=0.0)),
                          vmax=max(1.0, np.nanmax(grid, initial=1.0)))
        for (i, j), v in np.ndenumerate(grid):
            if (sizes[i], sizes[j + 1]) in cells:
                ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if np.isnan(v) else "white")
        ax.set_xticks(range(len(sizes) - 1), sizes[1:], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(sizes) - 1), sizes[:-1], fontsize=8)
        ax.set_xlabel("strong")
        ax.set_ylabel("weak")
        ax.set_title(f"PGR (accuracy): {method}")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(results["out_dir"] + ("  (mean over seeds)" if len(results["seeds"]) > 1 else ""))
    fig.tight_layout()
    _save(fig, path)


def write_results(out_dir, results):
    """OUT/results.json, OUT/results.md and, when matplotlib is importable, OUT/results.png (and results_misfit.png
    for classification); each written to a temporary file first and renamed, so a reader never sees half a file."""
    out_dir = Path(out_dir)
    write_atomic(out_dir / "results.json", (json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n").encode())
    write_atomic(out_dir / "results.md", format_table(results).encode())
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    if results["seeds"]:
        _plot(results, out_dir / "results.png")
        if results["summary"].get("diagnostics"):
            _plot_misfit(results, out_dir / "results_misfit.png")
        if results.get("sweep"):
            _plot_sweep(results, out_dir / "results_sweep.png")


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
        print(json.dumps(results, indent=2) if args.json else format_table(results))
        # with --json, stdout is the JSON alone (for a pipe); the closing line goes to stderr
        print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}", flush=True,
              file=sys.stderr if args.json else sys.stdout)


if __name__ == "__main__":
    cli.main_guard(main)
