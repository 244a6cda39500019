"""
Evaluation of weak-to-strong experiments: classification metrics, performance gap recovered (PGR) with paired
bootstrap confidence intervals, and the results of a whole run directory written by w2s.py.

    python eval.py runs/safety                      # prints the table, writes results.json / .md / .png
    python eval.py runs/safety runs/legal --n-boot 2000
    python eval.py runs/safety --json               # print results.json instead of the table

Run directory layout (any run may be missing; it is then skipped):
    OUT/seed{S}/{weak, ceiling, student_naive, student_logconf, student_hard, student_soft}/predictions.json
    OUT/seed{S}/ensemble/{member0..K-1, hard, soft}/predictions.json
predictions.json = {"test": {"ids": [...], "labels": [...], "probs": [[p0, p1], ...]}, ...other splits}

PGR = (student - supervisor) / (ceiling - supervisor), each student against the supervisor that labelled its data.
"""
import argparse
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np

METRICS = ("accuracy", "balanced_accuracy", "f1", "f1_weighted", "auroc")
# each student is compared with the supervisor whose predictions it was trained on
SUPERVISORS = {"student_naive": "weak", "student_logconf": "weak",
               "student_hard": "ensemble/hard", "student_soft": "ensemble/soft"}
TABLE_ROWS = ("weak", "ensemble/hard", "ensemble/soft", "student_naive", "student_logconf", "student_hard",
              "student_soft", "ceiling")
TABLE_METRICS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced acc.", "f1": "F1", "auroc": "AUROC"}
# above this share of bootstrap resamples with an undefined PGR the interval would describe a cherry-picked subset
MAX_DROPPED_FRAC = 0.1
BOOT_CHUNK = 256  # bootstrap resamples evaluated at once; bounds memory at BOOT_CHUNK x N floats per temporary


# ----------------------------------------------------------------------------------------------------------------
# metrics

def _prepare(y_true, probs, source):
    """(labels 0/1, P(class 1), predicted class 1?) from probs (N, 2) or (N,), checked; `source` names the data."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"{source}: labels must be a non-empty 1-D sequence, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{source}: labels must be 0 or 1 (binary task), got values {sorted(set(y.tolist()))[:5]}")
    if p.shape not in ((len(y),), (len(y), 2)):
        raise ValueError(f"{source}: probs must have shape ({len(y)},) or ({len(y)}, 2) to match the labels, "
                         f"got {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        row = int(np.flatnonzero((~(np.isfinite(p) & (p >= 0) & (p <= 1))).reshape(len(y), -1).any(1))[0])
        raise ValueError(f"{source}: probs row {row} is not a probability: {p[row].tolist()}")
    if p.ndim == 2:
        off = np.abs(p.sum(1) - 1) > 1e-3
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise ValueError(f"{source}: probs row {row} does not sum to 1: {p[row].tolist()}")
        return y.astype(np.int64), p[:, 1], p[:, 1] > p[:, 0]  # argmax; a tie goes to class 0
    return y.astype(np.int64), p, p > 0.5


def _weighted_metrics(y, p1, pred, weights):
    """Every metric for each row of `weights` (R, N), a weight being how often an example counts: the test set
    itself is a row of ones, a bootstrap resample its multiplicities. One code path for both, so an interval is
    an interval of exactly the reported number. Returns {metric: (R,) array}."""
    pos, neg = y == 1, y == 0
    tp, fn = weights @ (pos & pred), weights @ (pos & ~pred)
    fp, tn = weights @ (neg & pred), weights @ (neg & ~pred)
    n_pos, n_neg = tp + fn, tn + fp
    total = n_pos + n_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        # sklearn's balanced accuracy: mean recall over the classes present in y_true
        balanced = np.nanmean(np.stack([tp / n_pos, tn / n_neg]), axis=0)
        # F1 of a class with no true and no predicted members is 0 (sklearn's zero_division default)
        f1_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_neg = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
        # AUROC = P(score of a random positive > score of a random negative), ties count one half; computed over
        # groups of equal scores so that tied scores are handled exactly
        order = np.argsort(p1, kind="stable")
        scores = p1[order]
        starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
        w_sorted = weights[:, order]
        pos_per_score = np.add.reduceat(w_sorted * pos[order], starts, axis=1)
        neg_per_score = np.add.reduceat(w_sorted * neg[order], starts, axis=1)
        neg_below = np.cumsum(neg_per_score, axis=1) - neg_per_score
        wins = (pos_per_score * (neg_below + 0.5 * neg_per_score)).sum(1)
        # with only one class present there is no positive-negative pair to rank: AUROC is undefined (nan)
        auroc = np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)
    return {"accuracy": (tp + tn) / total, "balanced_accuracy": balanced, "f1": f1_pos,
            "f1_weighted": (f1_pos * n_pos + f1_neg * n_neg) / total, "auroc": auroc}


def metrics(y_true, probs):
    """accuracy, balanced_accuracy, f1 (positive class 1), f1_weighted (support-weighted over both classes, as
    sklearn's average="weighted"), auroc (nan when y_true holds one class only). probs: (N, 2) or P(class 1) (N,)."""
    y, p1, pred = _prepare(y_true, probs, "metrics()")
    values = _weighted_metrics(y, p1, pred, np.ones((1, len(y))))
    return {k: float(v[0]) for k, v in values.items()}


def _resample_weights(n, n_boot, seed):
    """(n_boot, n) multiplicities of n examples drawn with replacement, n_boot times; deterministic by seed."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    rows = np.arange(n_boot)[:, None] * n
    return np.bincount((idx + rows).ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _bootstrap_metrics(prepared, weights):
    parts = [_weighted_metrics(*prepared, weights[i:i + BOOT_CHUNK]) for i in range(0, len(weights), BOOT_CHUNK)]
    return {k: np.concatenate([part[k] for part in parts]) for k in METRICS}


# ----------------------------------------------------------------------------------------------------------------
# performance gap recovered

def pgr(weak, student, ceiling):
    """(student - weak) / (ceiling - weak): 0 = the student only matches its supervisor, 1 = it matches the strong
    model trained on ground truth. nan in, nan out."""
    if ceiling == weak:
        raise ValueError(f"PGR is undefined: the ceiling ({ceiling}) equals the weak supervisor ({weak}), so there is "
                         "no performance gap to recover")
    return float((student - weak) / (ceiling - weak))


def _pgr_interval(weak_boot, student_boot, ceiling_boot, what):
    """95% percentile interval of the PGR over paired bootstrap resamples, and how many were dropped: resamples where
    the ceiling equals the weak supervisor (or a metric is undefined) have no PGR."""
    valid = np.isfinite(weak_boot) & np.isfinite(student_boot) & np.isfinite(ceiling_boot) & (ceiling_boot != weak_boot)
    dropped = int((~valid).sum())
    if dropped > MAX_DROPPED_FRAC * len(valid):
        warnings.warn(f"{what}: {dropped} of {len(valid)} bootstrap resamples have ceiling == weak or an undefined "
                      f"metric (more than {MAX_DROPPED_FRAC:.0%}); the PGR interval is reported as nan")
        return float("nan"), float("nan"), dropped
    values = (student_boot[valid] - weak_boot[valid]) / (ceiling_boot[valid] - weak_boot[valid])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi), dropped


def pgr_ci(y_true, weak_probs, student_probs, ceiling_probs, metric, n_boot=1000, seed=0):
    """(point, lo, hi): PGR of `metric` on the test set and its 95% percentile interval from a paired bootstrap
    (each resample of test examples is applied to weak, student and ceiling together). Deterministic by seed."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
    values, boot = {}, {}
    weights = _resample_weights(len(y_true), n_boot, seed)
    for name, probs in (("weak", weak_probs), ("student", student_probs), ("ceiling", ceiling_probs)):
        prepared = _prepare(y_true, probs, f"pgr_ci() {name}_probs")
        values[name] = float(_weighted_metrics(*prepared, np.ones((1, len(y_true))))[metric][0])
        boot[name] = _bootstrap_metrics(prepared, weights)[metric]
    point = pgr(values["weak"], values["student"], values["ceiling"])
    lo, hi, _ = _pgr_interval(boot["weak"], boot["student"], boot["ceiling"], f"PGR of {metric}")
    return point, lo, hi


def mean_std(values):
    """Mean and sample standard deviation (ddof=1; nan for a single value, which has no spread to estimate)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_std of no values")
    std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return float(values.mean()), std


# ----------------------------------------------------------------------------------------------------------------
# a whole experiment

def _run_names(seed_dir):
    """Runs of one seed in table order; ensemble members by number."""
    members = [d.name for d in (seed_dir / "ensemble").glob("member*") if re.fullmatch(r"member\d+", d.name)]
    members = sorted(members, key=lambda m: int(m[len("member"):]))
    names = ["weak"] + [f"ensemble/{m}" for m in members] + ["ensemble/hard", "ensemble/soft", "ceiling"]
    return names + list(SUPERVISORS)


def _load_runs(seed_dir, skipped):
    """{run name: (labels, P(class 1), predicted class 1?)} on the test split, all in one example order."""
    runs, ref = {}, None
    for name in _run_names(seed_dir):
        path = seed_dir / name / "predictions.json"
        if not path.is_file():
            continue
        try:
            test = json.loads(path.read_text())["test"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{path}: not a predictions file with a 'test' split ({e!r})") from None
        if "probs" not in test:  # generation runs (toxicity) keep continuations, scored elsewhere
            skipped.append(f"{path}: no class probabilities in 'test' (a generation run); not evaluated here")
            continue
        ids = [str(i) for i in test.get("ids", [])]
        if len(ids) != len(test.get("labels", [])) or len(ids) != len(test["probs"]):
            raise ValueError(f"{path}: 'test' has {len(ids)} ids, {len(test.get('labels', []))} labels and "
                             f"{len(test['probs'])} probs; they must be equally long")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: 'test' ids are not unique")
        labels, probs = np.asarray(test["labels"]), np.asarray(test["probs"], dtype=np.float64)
        if ref is None:
            ref = {"path": path, "ids": ids, "labels": labels, "pos": {i: k for k, i in enumerate(ids)}}
        else:
            missing, extra = set(ref["ids"]) - set(ids), set(ids) - set(ref["ids"])
            if missing or extra:
                raise ValueError(f"{path} and {ref['path']} predict different test examples ({len(missing)} missing, "
                                 f"{len(extra)} extra, e.g. {sorted(missing or extra)[0]!r}); runs of one seed must "
                                 "share the test split (same --seed, --limit and data)")
            order = np.argsort([ref["pos"][i] for i in ids])  # this run's rows in the reference order
            labels, probs = labels[order], probs[order]
            if (labels != ref["labels"]).any():
                k = int(np.flatnonzero(labels != ref["labels"])[0])
                raise ValueError(f"{path} and {ref['path']} disagree on the label of test id {ref['ids'][k]!r}")
        runs[name] = _prepare(labels, probs, f"{path} 'test'")
    return runs


def _summary(values):
    """mean and std over seeds of the defined values; n_seeds says how many."""
    finite = [v for v in values if np.isfinite(v)]
    mean, std = mean_std(finite) if finite else (float("nan"), float("nan"))
    return {"mean": mean, "std": std, "n_seeds": len(finite)}


def _json_safe(x):
    """nan/inf -> None (strict JSON), numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def evaluate_experiment(out_dir, n_boot=1000, seed=0):
    """Test metrics of every run, PGR of every student against its supervisor with a 95% paired-bootstrap interval,
    per seed and as mean +- std over seeds. JSON-able (undefined numbers are None)."""
    out_dir = Path(out_dir)
    seed_dirs = sorted((d for d in out_dir.glob("seed*") if d.is_dir() and re.fullmatch(r"seed\d+", d.name)),
                       key=lambda d: int(d.name[len("seed"):]))
    if not seed_dirs:
        raise FileNotFoundError(f"{out_dir}: no seed<S>/ directories (expected {out_dir}/seed0/weak/predictions.json)")
    results = {"out_dir": str(out_dir), "n_boot": n_boot, "bootstrap_seed": seed, "metrics": list(METRICS),
               "seeds": {}, "skipped": []}
    for seed_dir in seed_dirs:
        runs = _load_runs(seed_dir, results["skipped"])
        if not runs:
            continue
        n_test = len(next(iter(runs.values()))[0])
        # one set of resamples per seed, shared by every run: the PGR bootstrap is paired
        weights = _resample_weights(n_test, n_boot, seed)
        values = {name: {k: float(v[0]) for k, v in _weighted_metrics(*r, np.ones((1, n_test))).items()}
                  for name, r in runs.items()}
        boot = {name: _bootstrap_metrics(r, weights) for name, r in runs.items()}
        seed_result = {"n_test": n_test, "runs": {}, "pgr": {}}
        for name in runs:
            ci = {k: [float(q) for q in np.nanpercentile(boot[name][k], [2.5, 97.5])]
                  if np.isfinite(boot[name][k]).any() else [float("nan")] * 2 for k in METRICS}
            seed_result["runs"][name] = {**values[name], "ci95": ci}
        for student, supervisor in SUPERVISORS.items():
            if student not in runs or supervisor not in runs or "ceiling" not in runs:
                continue
            entry = {"supervisor": supervisor}
            for k in METRICS:
                w, s, c = values[supervisor][k], values[student][k], values["ceiling"][k]
                try:
                    point = pgr(w, s, c)
                except ValueError as e:
                    entry[k] = {"pgr": float("nan"), "lo": float("nan"), "hi": float("nan"), "note": str(e)}
                    continue
                lo, hi, dropped = _pgr_interval(boot[supervisor][k], boot[student][k], boot["ceiling"][k],
                                                f"{seed_dir.name} {student} PGR of {k}")
                entry[k] = {"pgr": point, "lo": lo, "hi": hi, "n_dropped": dropped}
            seed_result["pgr"][student] = entry
        results["seeds"][seed_dir.name[len("seed"):]] = seed_result

    per_seed = list(results["seeds"].values())
    run_names = [n for r in per_seed for n in r["runs"]]
    student_names = [n for r in per_seed for n in r["pgr"]]
    results["summary"] = {
        "n_seeds": len(per_seed),
        "runs": {name: {k: _summary([r["runs"][name][k] for r in per_seed if name in r["runs"]]) for k in METRICS}
                 for name in dict.fromkeys(run_names)},
        "pgr": {name: {"supervisor": SUPERVISORS[name],
                       **{k: _summary([r["pgr"][name][k]["pgr"] for r in per_seed if name in r["pgr"]]) for k in METRICS}}
                for name in dict.fromkeys(student_names)},
    }
    return _json_safe(results)


# ----------------------------------------------------------------------------------------------------------------
# reporting

def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(results):
    """Markdown table shaped like Ye et al.'s Table 1: one row per model, PGR (with its 95% CI for one seed, mean
    +- std over seeds otherwise) for the students."""
    seeds = list(results["seeds"])
    single = len(seeds) == 1
    lines = [f"# Weak-to-strong results: {results['out_dir']}", ""]
    if not seeds:
        return "\n".join(lines + ["No classification runs with test predictions found."] +
                         [f"- skipped {s}" for s in results.get("skipped", [])]) + "\n"
    n_test = sorted({r["n_test"] for r in results["seeds"].values()})
    how = (f"seed {seeds[0]}; PGR with 95% paired-bootstrap CI ({results['n_boot']} resamples)" if single else
           f"mean ± std over seeds {', '.join(seeds)}")
    lines += [f"{how}; test examples: {', '.join(map(str, n_test))}", ""]
    header = ["Model", "Supervisor"] + list(TABLE_METRICS.values()) + [f"PGR {v}" for v in TABLE_METRICS.values()]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in TABLE_ROWS:
        if name not in results["summary"]["runs"]:
            continue
        row = [name, SUPERVISORS.get(name, "")]
        for k in TABLE_METRICS:
            if single:
                row.append(_fmt(results["seeds"][seeds[0]]["runs"][name][k]))
            else:
                s = results["summary"]["runs"][name][k]
                row.append(f"{_fmt(s['mean'])} ± {_fmt(s['std'])}")
        for k in TABLE_METRICS:
            if name not in results["summary"]["pgr"]:
                row.append("")
            elif single:
                p = results["seeds"][seeds[0]]["pgr"][name][k]
                row.append(f"{_fmt(p['pgr'], 2)} [{_fmt(p['lo'], 2)}, {_fmt(p['hi'], 2)}]")
            else:
                s = results["summary"]["pgr"][name][k]
                row.append(f"{_fmt(s['mean'], 2)} ± {_fmt(s['std'], 2)}")
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"- skipped {s}" for s in results.get("skipped", [])]
    return "\n".join(lines).rstrip() + "\n"


def _write_atomic(path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _or_nan(x):
    return np.nan if x is None else x


def _plot(results, path):
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state (renders with Agg)

    seeds = list(results["seeds"])
    names = [n for n in TABLE_ROWS if n in results["summary"]["runs"]]
    fig = Figure(figsize=(4 * len(TABLE_METRICS), 4))
    axes = fig.subplots(1, len(TABLE_METRICS), sharey=True)
    for ax, (k, title) in zip(axes, TABLE_METRICS.items()):
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
        colors = ["tab:gray" if n == "weak" or n.startswith("ensemble") else
                  "tab:green" if n == "ceiling" else "tab:blue" for n in names]
        ax.bar(range(len(names)), heights, yerr=err, capsize=3, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
    fig.suptitle(results["out_dir"] + ("  (95% bootstrap CI)" if len(seeds) == 1 else "  (mean ± std over seeds)"))
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)


def write_results(out_dir, results):
    """OUT/results.json, OUT/results.md and, when matplotlib is importable, OUT/results.png; each written to a
    temporary file first and renamed, so a reader never sees half a file."""
    out_dir = Path(out_dir)
    _write_atomic(out_dir / "results.json", (json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n").encode())
    _write_atomic(out_dir / "results.md", format_table(results).encode())
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    if results["seeds"]:
        _plot(results, out_dir / "results.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", nargs="+", help="run directories written by w2s.py")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    parser.add_argument("--json", action="store_true", help="print results.json instead of the table")
    args = parser.parse_args(argv)
    for out_dir in map(Path, args.out_dirs):
        results = evaluate_experiment(out_dir, n_boot=args.n_boot, seed=args.seed)
        previous = out_dir / "results.json"
        if previous.is_file():  # keep the experiment config w2s.py recorded
            config = json.loads(previous.read_text()).get("config")
            if config is not None:
                results["config"] = config
        write_results(out_dir, results)
        print(json.dumps(results, indent=2) if args.json else format_table(results))


if __name__ == "__main__":
    main()
