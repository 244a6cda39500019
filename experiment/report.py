"""
The report of an experiment: results.md's markdown tables and the plots, from the results that evaluation.py computes
(results.json's content), for a pair, a sweep and the Burns driver alike. Nothing here computes a number: metrics.py
does, evaluation.py gathers them; this file only lays them out.

    format_table(results)          results.md of a classification experiment: one row per run, PGR with its interval
                                   (one seed) or mean ± std (several), the gaps PGR divides by, the students'
                                   diagnostics, the learnt member weights; a sweep's model table and PGR grids first
    format_generation_table(...)   the same for a generation (toxicity) experiment, lower is better
    write_report(out_dir, results) results.md and, when matplotlib is importable, results.png (per-run bars),
                                   results_misfit.png (gain vs misfit), results_sweep.png (Burns et al.'s Figure 3)
    burns_table, burns_plot        w2s.py --task burns: one PGR table and bar plot over Burns et al.'s tasks
"""
from pathlib import Path

import numpy as np

from core.cli import write_atomic
from scoring.metrics import seed_summary

# the report's names of the metrics (metrics.py computes them)
TABLE_METRICS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced acc.", "f1": "F1", "f1_weighted": "Weighted F1",
                 "auroc": "AUROC"}
DIAGNOSTIC_NAMES = {"agreement": "Agreement", "agreement_on_supervisor_errors": "Agreement on supervisor errors",
                    "misfit_xent": "Misfit (xent)", "misfit_sq": "Misfit (sq.)", "gain_sq": "Gain (sq.)",
                    "gain_accuracy": "Gain (acc.)"}
TOXICITY_NAMES = {"mean_toxicity": "Mean tox.", "toxic_rate": "Toxic rate",
                  "expected_max_toxicity": "Exp. max tox.", "toxicity_probability": "Tox. prob."}
PROMPT_SUBSETS = {"": "", "_toxic_prompts": "toxic prompts", "_nontoxic_prompts": "non-toxic prompts"}


# ----------------------------------------------------------------------------------------------------------------
# results.md: the tables

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


def gap_table(results, metric_names, titles):
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
            summaries = [seed_summary([e[k]["gap"] for e in by_seed.values()]) for k in metric_names]
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
        source = d.get("source")  # a task with several data sets (legal): the one read, and its policies
        read = f"; data {source['dataset']}, {source['rows']:,} rows" if source else ""
        groups = source.get("group") if source else None
        per_split = f" ({groups}: {', '.join(f'{k} {v}' for k, v in d['split_groups'].items())})" \
            if groups and d.get("split_groups") else ""
        lines.append(f"Task **{d.get('task')}** ({results['kind']}{f'; labels {labels}' if labels else ''}{read}); "
                     f"splits of seed {seeds[0] if seeds else '-'}: {sizes}{per_split}.")
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
    header_row = (["Model", "Supervisor", "Weights"] + [TOXICITY_NAMES[k] for k in headline] +
                  [f"PGR {TOXICITY_NAMES[k]}" for k in headline])
    lines += ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    for name in names:
        row = [name, results["summary"]["pgr"].get(name, {}).get("supervisor", ""), _weights_cell(results, name)]
        row += [_run_cell(results, name, k) for k in headline] + [_pgr_cell(results, name, k) for k in headline]
        lines.append("| " + " | ".join(row) + " |")
    lines += gap_table(results, headline, [TOXICITY_NAMES[k] for k in headline])
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
             "| Student | " + " | ".join(DIAGNOSTIC_NAMES.values()) + " |", "|" + "---|" * (len(DIAGNOSTIC_NAMES) + 1)]
    for name in names:
        if len(seeds) == 1:
            d = results["seeds"][seeds[0]]["diagnostics"][name]
            cells = [_fmt(d[k]) for k in DIAGNOSTIC_NAMES]
        else:
            s = results["summary"]["diagnostics"][name]
            cells = [f"{_fmt(s[k]['mean'])} ± {_fmt(s[k]['std'])}" for k in DIAGNOSTIC_NAMES]
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
            w = seed_summary([ws[k] for ws in per_seed])
            weight = _fmt(w["mean"]) if len(per_seed) == 1 else f"{_fmt(w['mean'])} ± {_fmt(w['std'])}"
            accuracy = _run_cell(results, member, "accuracy") if member in results["summary"]["runs"] else "-"
            lines.append(f"| {member} | {weight} | {accuracy} |")
    return lines


# metrics.json's select -> what results.md says of the weights a run predicts with
WEIGHTS = {"best": "best val xent", "final": "final", "objective": "best val own loss",
           "fit": "fitted probe"}  # fit: --train-layers 0 --probe fit, no checkpoint to choose (probe.py)


def _weights_cell(results, name):
    """The checkpoint rule of a student row (a chain's, a sweep's too); supervisors and ceilings say nothing (theirs
    is best val xent, unless every stage was given another rule: the header says so)."""
    if name not in results["summary"]["pgr"]:
        return ""
    return "/".join(WEIGHTS.get(r, r) for r in results.get("selection", {}).get(name, "").split("/") if r)


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
    header_row = ["Model", "Supervisor", "Weights"] + list(titles.values()) + [f"PGR {v}" for v in titles.values()]
    lines += ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    for name in results["table_rows"]:
        if name not in results["summary"]["runs"]:
            continue
        row = [name, results["summary"]["pgr"].get(name, {}).get("supervisor", ""), _weights_cell(results, name)]
        row += [_run_cell(results, name, k) for k in TABLE_METRICS] + [_pgr_cell(results, name, k) for k in TABLE_METRICS]
        lines.append("| " + " | ".join(row) + " |")
    lines += gap_table(results, list(TABLE_METRICS), list(titles.values()))
    lines += _diagnostics_table(results)
    lines += _member_weights_table(results)
    lines += [""] + [f"- skipped {s}" for s in results.get("skipped", [])]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------------------
# the plots (matplotlib's Figure, no pyplot)

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


def write_report(out_dir, results):
    """OUT/results.md and, when matplotlib is importable, OUT/results.png (and results_misfit.png for
    classification, results_sweep.png for a sweep); each written to a temporary file first and renamed, so a reader
    never sees half a file."""
    out_dir = Path(out_dir)
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


# ----------------------------------------------------------------------------------------------------------------
# the Burns driver (w2s.py --task burns): one table and plot over its tasks

def burns_table(rows, not_run):
    def cell(v):
        if v is None:
            return ""
        if v.get("text"):
            return v["text"]
        if v.get("mean") is None:
            return "n/a"
        return f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if v.get("std") is not None else "")
    lines = ["# Burns et al. tasks: test accuracy and PGR (accuracy), naive vs auxiliary confidence loss", "",
             "PGR = (student - weak) / (ceiling - weak); [95% paired-bootstrap CI] for one seed, ± std over seeds; "
             "n/a where the ceiling is not clearly better than the weak model.", "",
             "| Task | Weak | Ceiling | Naive | PGR naive | Logconf | PGR logconf |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {cell(r['weak'])} | {cell(r['ceiling'])} | {cell(r.get('student_naive'))} | "
                     f"{cell(r.get('student_naive_pgr'))} | {cell(r.get('student_logconf'))} | {cell(r.get('student_logconf_pgr'))} |")
    for task, why in not_run.items():
        lines.append(f"| {task} | not run: {why} | | | | | |")
    return "\n".join(lines) + "\n"


def burns_plot(rows, path):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return  # the table and JSON carry the numbers; the plot is optional ([plot] extra)
    fig = Figure(figsize=(1.6 * max(3, len(rows)) + 2, 3.5))
    ax = fig.subplots()
    x = np.arange(len(rows))
    for k, (student, label) in enumerate((("student_naive_pgr", "naive"), ("student_logconf_pgr", "logconf"))):
        vals = [r.get(student) or {"mean": np.nan} for r in rows]
        means = np.array([v["mean"] if v["mean"] is not None else np.nan for v in vals], dtype=float)
        lo = [m - v["lo"] if v.get("lo") is not None else (v.get("std") or 0) for m, v in zip(means, vals)]
        hi = [v["hi"] - m if v.get("hi") is not None else (v.get("std") or 0) for m, v in zip(means, vals)]
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=np.clip(np.nan_to_num(np.array([lo, hi], dtype=float)), 0, None),
               capsize=3, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [r["task"] for r in rows])
    ax.set_ylabel("PGR (accuracy)")
    ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
