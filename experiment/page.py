"""
The results page (`python w2s.py --task page`): for each task of --page-tasks, a depth sweep of fitted probes, the
weak/strong pair it picks on val alone, that pair's whole experiment over every seed, then one markdown page, its
JSON and one plot per task. w2s.py runs the experiments (run_page); everything here reads what they wrote.

    the sweep     every model of --sizes (default: SmolLM2-135M cut at 2, 4, 8, 16 blocks and whole) trained on gold
                  as a supervisor (weak_train) and as a ceiling (w2s_train), with the naive student of every pair
    the pair      the rule, applied to val accuracy only (choose_pair): strong = the model whose ceiling has the
                  highest mean val accuracy over seeds; weak = of the shallower models, the supervisor with the
                  lowest mean val accuracy (the largest val gap). When the best strong model is not the whole model,
                  the whole model's experiment with the same weak supervisor runs too.
    the numbers   each figure is the mean over seeds with a 95% t-interval (interval95); each seed's paired-bootstrap
                  intervals stay in page.json; each student's count of seeds on which its test accuracy beats the
                  naive student's (beats_naive).

Nothing here reads a test label to choose anything: val_accuracies reads the val split of the sweep's predictions.
"""
import json
import math
from pathlib import Path

import numpy as np

from core.cli import UserError, write_atomic

PAGE_TASKS = ("safety", "legal", "cosmos_qa", "anthropic_hh")
DEPTHS = "smollm2-135m@2,smollm2-135m@4,smollm2-135m@8,smollm2-135m@16,smollm2-135m"
# each task's --max-length (its texts' length in SmolLM2 tokens, as the tables before this page used)
TASK_SETTINGS = {"safety": {"max_length": 128}, "legal": {"max_length": 192}, "cosmos_qa": {"max_length": 256},
                 "anthropic_hh": {"max_length": 256}}
# Student's t quantile t_{0.975, df} for df = 1..30; beyond, the normal's 1.960 is within 0.04 of it
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
LITERATURE = ("Burns et al. 2023 report naive PGR of about 0.1-0.2 where the gap is small and the auxiliary confidence "
              "loss (logconf) above naive; Ye et al. 2024 report safety PGR 0.17-0.18 (GPT-2 small -> medium).")


def interval95(values):
    """{mean, lo, hi, n} of the defined values: the mean with its 95% t-interval over seeds (lo = hi = mean for one
    seed, None for none)."""
    x = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    if len(x) == 1:
        return {"mean": float(x[0]), "lo": float(x[0]), "hi": float(x[0]), "n": 1}
    half = (T975[len(x) - 2] if len(x) - 1 <= len(T975) else 1.960) * x.std(ddof=1) / math.sqrt(len(x))
    return {"mean": float(x.mean()), "lo": float(x.mean() - half), "hi": float(x.mean() + half), "n": len(x)}


def beats_naive(per_seed, student, naive="student_naive", metric="accuracy"):
    """(seeds on which `student`'s test metric is above naive's, seeds with both)."""
    both = [r for r in per_seed.values() if student in r["runs"] and naive in r["runs"]]
    return sum(r["runs"][student][metric] > r["runs"][naive][metric] for r in both), len(both)


def parse_limits(text, tasks):
    """--page-limits "legal=300,cosmos_qa=500" -> {"legal": 300, "cosmos_qa": 500}, each a task of the page."""
    limits = {}
    for item in (i for i in text.split(",") if i):
        task, _, n = item.partition("=")
        if task not in tasks or not n.isdigit() or int(n) < 2 or task in limits:
            raise UserError(f"argument --page-limits: {item!r} is not TASK=N with TASK one of --page-tasks "
                            f"({', '.join(tasks)}), once each, and N at least 2")
        limits[task] = int(n)
    return limits


# ----------------------------------------------------------------------------------------------------------------
# the pair, from val

def val_accuracies(sweep_dir, sweep):
    """{"weak": {model: [val accuracy by seed]}, "ceiling": {...}} of a sweep's gold-trained stages, from the val
    split of their predictions.json (written and checked by the sweep that just ran)."""
    acc = {"weak": {}, "ceiling": {}}
    for seed in sweep["seeds"]:
        for name in sweep["seeds"][seed]["runs"]:
            model, _, role = name.rpartition("/")
            if role in acc and "__" not in model:
                val = json.loads((Path(sweep_dir) / f"seed{seed}" / name / "predictions.json").read_text())["val"]
                right = np.argmax(np.array(val["probs"]), 1) == np.array(val["labels"])
                acc[role].setdefault(model, []).append(float(right.mean()))
    return acc


def choose_pair(val, models):
    """{"best": (weak, strong)[, "whole": (weak, models[-1])]} by the rule of this file's docstring; `models` in
    sweep order, smallest first."""
    mean = {role: {m: float(np.mean(v)) for m, v in by.items()} for role, by in val.items()}
    strong = max((m for m in models if m in mean["ceiling"]), key=lambda m: (mean["ceiling"][m], models.index(m)))
    shallower = [m for m in models[:models.index(strong)] if m in mean["weak"]]
    weak = min(shallower, key=lambda m: (mean["weak"][m], models.index(m)))
    return {"best": (weak, strong)} | ({"whole": (weak, models[-1])} if strong != models[-1] else {})


# ----------------------------------------------------------------------------------------------------------------
# one task's section

def sweep_rows(sweep, val):
    """Per model: its supervisor's and its ceiling's val mean and test interval over seeds."""
    rows = []
    for model in sweep["sweep"]:
        row = {"model": model}
        for role in ("weak", "ceiling"):
            test = [s["runs"][f"{model}/{role}"]["accuracy"] for s in sweep["seeds"].values()
                    if f"{model}/{role}" in s["runs"]]
            if test:
                row[role] = {"val": float(np.mean(val[role][model])), "test": interval95(test)}
        rows.append(row)
    return rows


def pair_rows(results):
    """Per row of the pair's table: test accuracy over seeds, the PGR's interval over the seeds where it is defined,
    beats-naive counts, and each seed's own numbers with their paired-bootstrap intervals."""
    rows, per_seed = [], results["seeds"]
    for name in results["table_rows"]:
        seeds = {s: r["runs"][name] for s, r in per_seed.items() if name in r["runs"]}
        row = {"name": name, "accuracy": interval95([r["accuracy"] for r in seeds.values()]),
               "seeds": {s: {"accuracy": r["accuracy"], "ci95": r["ci95"]["accuracy"]} for s, r in seeds.items()}}
        pgrs = {s: r["pgr"][name]["accuracy"] for s, r in per_seed.items() if name in r.get("pgr", {})}
        if pgrs:
            row["pgr"] = interval95([p["pgr"] if p.get("lo") is not None else None for p in pgrs.values()])
            row["pgr"]["n_na"] = sum(p.get("lo") is None for p in pgrs.values())
            row["supervisor"] = next(iter(per_seed.values()))["pgr"][name]["supervisor"]
            for s, p in pgrs.items():
                row["seeds"][s]["pgr"] = {k: p.get(k) for k in ("pgr", "lo", "hi", "gap", "gap_lo", "gap_hi")}
            if name != "student_naive":
                row["beats_naive"] = beats_naive(per_seed, name)
        rows.append(row)
    means = {r["name"]: r["accuracy"]["mean"] for r in rows}
    for row in rows:  # every seed counts here, not only those whose own gap is clear
        if row.get("supervisor") in means and "ceiling" in means:
            gap = means["ceiling"] - means[row["supervisor"]]
            row["pgr_of_means"] = (means[row["name"]] - means[row["supervisor"]]) / gap if gap > 0 else None
    return rows


def gap_of(results):
    """The ceiling minus the weak supervisor's test accuracy, over seeds, and on how many seeds its paired-bootstrap
    interval lies above 0."""
    gaps = [r["pgr"]["student_naive"]["accuracy"] for r in results["seeds"].values()
            if "student_naive" in r.get("pgr", {})]
    return interval95([g["gap"] for g in gaps]) | {"clear": sum(g["gap_lo"] > 0 for g in gaps), "n_seeds": len(gaps)}


def task_section(task, sweep, val, choice, pairs):
    return {"task": task, "train_layers": sweep["config"]["train"]["train_layers"],
            "n_test": next(iter(sweep["seeds"].values()))["n_test"],
            "sweep": sweep_rows(sweep, val), "choice": {k: list(v) for k, v in choice.items()},
            "val": val, "pairs": {label: {"models": list(choice[label]), "gap": gap_of(res), "rows": pair_rows(res)}
                                  for label, res in pairs.items()}}


# ----------------------------------------------------------------------------------------------------------------
# the page

def _ci(v, digits=3):
    if not v or v.get("mean") is None:
        return "n/a"
    return f"{v['mean']:.{digits}f}" + (f" [{v['lo']:.{digits}f}, {v['hi']:.{digits}f}]" if v["n"] > 1 else "")


def evidence(section, pair):
    """What one pair's table is evidence of, and what it is not, in sentences the numbers decide."""
    gap, rows = pair["gap"], {r["name"]: r for r in pair["rows"]}
    # over seeds the t-interval decides; one seed has none (lo = hi = its gap): its paired bootstrap decides
    if gap["n"] > 1 and gap["lo"] > 0 or gap["n"] == 1 and gap["clear"] == 1:
        said = [f"There is a gap to recover: the ceiling beats its weak supervisor by {_ci(gap)} over {gap['n']} "
                f"seeds (its paired-bootstrap interval above 0 on {gap['clear']} of them), so a PGR here measures "
                "how much of it a student recovers."]
    else:
        said = [f"No honest gap: the ceiling minus the weak supervisor is {_ci(gap)}, an interval that does not lie "
                "above 0, so no PGR here is evidence of weak-to-strong generalization; the rows say only how close "
                "each student lands to its supervisor."]
    naive, logconf = rows.get("student_naive"), rows.get("student_logconf")
    if naive and naive.get("pgr"):
        said.append(f"Naive PGR {_ci(naive['pgr'], 2)}" + (f"; logconf {_ci(logconf['pgr'], 2)}, above naive's "
                    f"accuracy on {logconf['beats_naive'][0]} of {logconf['beats_naive'][1]} seeds" if logconf and
                    logconf.get("pgr") else "") + f". {LITERATURE}")
    trained = ("linear probes on frozen features, not full fine-tuning" if section["train_layers"] == "0" else
               f"--train-layers {section['train_layers']}")
    said.append(f"What it is not: a result of other training ({trained}) or of the papers' GPT-2 pairs; each seed "
                f"is one test split of {section['n_test']:,} {section['task']} rows.")
    return " ".join(said)


def task_markdown(section, plot_name):
    what = "fitted probes" if section["train_layers"] == "0" else f"--train-layers {section['train_layers']}"
    lines = [f"## {section['task']}", "", f"The sweep (each model trained on gold, {what}; val: mean over seeds, "
             "test: mean [95% t-interval] over seeds):", "", "| model | supervisor val | supervisor test | ceiling val | ceiling test |",
             "|---|---|---|---|---|"]
    for row in section["sweep"]:
        cells = [f"{row[r]['val']:.3f} | {_ci(row[r]['test'])}" if r in row else " | " for r in ("weak", "ceiling")]
        lines.append(f"| {row['model']} | {cells[0]} | {cells[1]} |")
    lines += ["", f"![{section['task']} depth sweep]({plot_name})", ""]
    for label, pair in section["pairs"].items():
        weak, strong = pair["models"]
        why = "the best val ceiling" if label == "best" else "the whole model, beside the best val depth"
        lines += [f"### {weak} -> {strong} ({why})", "",
                  "| row | supervisor | test accuracy | PGR (accuracy) | PGR of the means | beats naive |",
                  "|---|---|---|---|---|---|"]
        for r in pair["rows"]:
            pgr = _ci(r.get("pgr"), 2) + (f" (n/a on {r['pgr']['n_na']})" if r.get("pgr", {}).get("n_na") else "")
            beats = f"{r['beats_naive'][0]} of {r['beats_naive'][1]}" if "beats_naive" in r else ""
            of_means = "" if "pgr" not in r else "n/a" if r.get("pgr_of_means") is None else f"{r['pgr_of_means']:.2f}"
            lines.append(f"| {r['name']} | {r.get('supervisor', '')} | {_ci(r['accuracy'])} | "
                         f"{pgr if 'pgr' in r else ''} | {of_means} | {beats} |")
        lines += ["", evidence(section, pair), ""]
    return lines


def page_markdown(sections, command, machine):
    lines = ["# Results", "", f"Every number on this page is the output of `{command}` ({machine}); a rerun prints "
             "the same page. Per seed, the paired-bootstrap intervals of every figure are in page.json.", "",
             "The pair of each task is chosen on val only: strong = the model whose gold-trained ceiling has the "
             "highest mean val accuracy; weak = of the shallower models, the supervisor with the lowest mean val "
             "accuracy. Test accuracy and PGR: mean [95% t-interval] over seeds. A seed's PGR is n/a where its own "
             "ceiling is not clearly above its supervisor (paired bootstrap), so the PGR column averages the seeds "
             "with a clear gap, a choice made on test that leans high; PGR of the means, (student - supervisor) / "
             "(ceiling - supervisor) of the mean accuracies over every seed, makes no such choice. Beats naive: "
             "seeds on which the student's test accuracy is above the naive student's.", "",
             "Not on this page yet: full fine-tuning under the paper's protocol (3 epochs, lr 5e-5, batch 16, early "
             "stopping on val) for safety and legal, which waits for a GPU (none was lent to the sessions that built "
             "it), and the weak supervisors other than a shallower depth (a from-scratch small model, a probe on few "
             "gold rows, a bag-of-words classifier).", ""]
    for section in sections:
        lines += task_markdown(section, f"{section['task']}_sweep.png")
    return "\n".join(lines).rstrip() + "\n"


def plot_sweep(section, path):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return  # the table and page.json carry the numbers ([plot] extra)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    models = [r["model"] for r in section["sweep"]]
    for k, (role, label) in enumerate((("weak", "supervisor (weak_train)"), ("ceiling", "ceiling (w2s_train)"))):
        x = [i + (k - 0.5) * 0.1 for i, r in enumerate(section["sweep"]) if role in r]
        t = [r[role]["test"] for r in section["sweep"] if role in r]
        mean = np.array([v["mean"] for v in t])
        err = np.array([[v["mean"] - v["lo"] for v in t], [v["hi"] - v["mean"] for v in t]])
        ax.errorbar(x, mean, yerr=err, fmt="-o", capsize=3, label=label)
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (95% interval)")
    ax.set_title(f"{section['task']}: fitted probes by depth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
