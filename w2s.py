"""
A whole weak-to-strong experiment in one command, resumable, into one run directory.

    python w2s.py                                   # the offline toy demo: no network, ~1 minute on a CPU
    python w2s.py --task safety --seeds 0 1 2       # Ye et al. Table 1 for safety (gpt2 -> gpt2-medium)
    python w2s.py --task legal --data-dir ../shared/data --limit 200 --epochs 1
    python w2s.py --task toxicity                   # generation: gpt-1 -> gpt-2, continuations scored for toxicity
    python w2s.py --task burns                      # Burns et al.'s NLP tasks, one combined PGR table and plot

Stages for every seed (each one a train.py run; a finished stage with the same config is skipped on rerun):
    weak                 weak model on weak_train ground truth; its predictions on w2s_train are the weak labels
    ensemble/member0..K  bootstrap-resampled weak models, and their hard / soft votes (ensemble/hard, ensemble/soft)
    ceiling              strong model on w2s_train ground truth
    student_naive        strong model on the weak labels
    student_logconf      same, with Burns et al.'s auxiliary confidence loss
    student_hard/_soft   strong model on the ensemble's hard / soft votes
Generation tasks (toxicity) run weak, ceiling and student_naive, and score each run's test continuations into
<run>/scores.json (--scorer offline | perspective; default perspective when PERSPECTIVE_API_KEY is set, else offline).
Any other train.py flag (--epochs, --batch-size, --lr, --limit, --max-length, ...) applies to every stage.
Results: OUT/results.json, OUT/results.md, OUT/results.png.
"""
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import eval as w2s_eval
import hub
import toxicity
import train
from data import load_task


BURNS_TASKS = ("anthropic_hh", "cosmos_qa", "sciq", "boolq", "amazon_polarity")


@dataclass
class W2SConfig:
    task: str = "toy"
    weak: str = ""              # weak model (name or dir); "" = the paper's default for the task
    strong: str = ""            # strong model; "" = the paper's default for the task
    ensemble: int = 5           # bootstrap members for the hard / soft vote students; 0 or 1 = no ensemble
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = ""               # "" = runs/<task>
    students: str = "naive,logconf,hard,soft"
    n_boot: int = 1000          # bootstrap resamples for the PGR confidence intervals
    burns_tasks: str = ",".join(BURNS_TASKS)  # --task burns: which of Burns et al.'s tasks to run
    scorer: str = ""            # generation tasks: toxicity scorer, offline | perspective; "" = toxicity.default_scorer()


def stages(cfg, base, kind, seed_dir, weak_model, strong_model):
    """The train.py configs of one seed, in order."""
    seed_dir = Path(seed_dir)
    students = [s for s in cfg.students.split(",") if s]
    ensemble = cfg.ensemble if kind == "classification" else 1  # votes are for class probabilities
    weak_labels = {"naive": "weak", "logconf": "weak", "hard": "ensemble/hard", "soft": "ensemble/soft"}
    out = [dataclasses.replace(base, role="weak", model=weak_model, out=str(seed_dir / "weak"))]
    if ensemble > 1:
        out.append(dataclasses.replace(base, role="weak", model=weak_model, ensemble=ensemble, out=str(seed_dir / "ensemble")))
    out.append(dataclasses.replace(base, role="ceiling", model=strong_model, out=str(seed_dir / "ceiling")))
    for s in students:
        if s not in weak_labels:
            raise SystemExit(f"unknown student {s!r}; choose from {list(weak_labels)}")
        if kind == "generation" and s != "naive":
            continue  # logconf and votes are defined for classification only
        if s in ("hard", "soft") and ensemble <= 1:
            continue
        out.append(dataclasses.replace(
            base, role="student", model=strong_model, loss="logconf" if s == "logconf" else "xent",
            weak_labels=str(seed_dir / weak_labels[s] / "predictions.json"), out=str(seed_dir / f"student_{s}")))
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = train.config_parser(W2SConfig, __doc__)
    cfg_args, rest = parser.parse_known_args(argv)
    cfg = W2SConfig(**vars(cfg_args))
    base = train.parse_args(["--task", cfg.task] + rest)  # every other flag is a train.py flag for all stages
    out = Path(cfg.out or f"runs/{cfg.task}")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.task == "burns":
        return run_burns(cfg, argv, out)

    weak_model, strong_model = cfg.weak, cfg.strong
    if cfg.task == "toy" and not (weak_model and strong_model):
        from data import toy  # the toy demo's small GPTs are pretrained here once, then cached in the run dir
        weak_model, strong_model = toy.pretrained_models(out / "pretrained", device=base.device)
    task = load_task(cfg.task, data_dir=base.data_dir, seed=cfg.seeds[0], limit=base.limit)
    kind = task.kind
    # made before any training, so a missing API key or scorer data stops the experiment at once
    scorer = w2s_eval.toxicity_scorer(cfg.scorer, task) if kind == "generation" else None
    weak_model = weak_model or train.DEFAULT_MODELS[kind]["weak"]
    strong_model = strong_model or train.DEFAULT_MODELS[kind]["strong"]

    for seed in cfg.seeds:
        for stage in stages(cfg, dataclasses.replace(base, seed=seed), kind, out / f"seed{seed}", weak_model, strong_model):
            print(f"== seed {seed} stage {Path(stage.out).name} ({stage.model})", flush=True)
            train.run(stage)
            if scorer is not None:  # the scoring stage: test continuations -> <run>/scores.json, skipped when done
                w2s_eval.score_run(stage.out, scorer)

    results = w2s_eval.evaluate_experiment(out, n_boot=cfg.n_boot)
    results["config"] = {"w2s": dataclasses.asdict(cfg), "train": dataclasses.asdict(base),
                         "weak_model": weak_model, "strong_model": strong_model}
    w2s_eval.write_results(out, results)
    print((out / "results.md").read_text())
    return results


def run_burns(cfg, argv, out):
    """Every Burns et al. task as its own experiment in OUT/<task>, then one table and plot of PGR per task, naive
    vs logconf (like their Figure 3). A task whose data cannot be had is reported as not run, with the reason."""
    tasks = [t for t in cfg.burns_tasks.split(",") if t]
    unknown = [t for t in tasks if t not in BURNS_TASKS]
    if unknown:
        raise SystemExit(f"--burns-tasks: unknown {unknown}; choose from {list(BURNS_TASKS)}")
    per_task, not_run = {}, {}
    for task in tasks:
        print(f"==== burns task {task}", flush=True)
        try:
            per_task[task] = main(argv + ["--task", task, "--out", str(out / task)])
        except Exception as e:  # e.g. offline without local files: say why, go on with the other tasks
            not_run[task] = f"{type(e).__name__}: {e}"
            print(f"==== burns task {task} not run: {not_run[task]}", flush=True)
    rows = []
    for task, res in per_task.items():
        summary = res["summary"]
        row = {"task": task, "weak": summary["runs"]["weak"]["accuracy"], "ceiling": summary["runs"]["ceiling"]["accuracy"]}
        for student in ("student_naive", "student_logconf"):
            if student in summary["runs"]:
                row[student] = summary["runs"][student]["accuracy"]
                row[student + "_pgr"] = summary["pgr"][student]["accuracy"]
                if summary["n_seeds"] == 1:  # one seed: its bootstrap CI; several: mean +- std over seeds
                    seed = next(iter(res["seeds"].values()))["pgr"][student]["accuracy"]
                    row[student + "_pgr"] = dict(row[student + "_pgr"], lo=seed["lo"], hi=seed["hi"])
        rows.append(row)
    combined = {"tasks": rows, "not_run": not_run, "metric": "accuracy"}
    train.write_json(out / "results.json", combined)
    (out / "results.md").write_text(burns_table(rows, not_run))
    burns_plot(rows, out / "results.png")
    print((out / "results.md").read_text())
    return combined


def burns_table(rows, not_run):
    def cell(v):
        if v is None:
            return ""
        if v.get("mean") is None:
            return "n/a"
        text = f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if v.get("std") is not None else "")
        return text + (f" [{v['lo']:.2f}, {v['hi']:.2f}]" if v.get("lo") is not None else "")
    lines = ["# Burns et al. tasks: test accuracy and PGR (accuracy), naive vs auxiliary confidence loss", "",
             "PGR = (student - weak) / (ceiling - weak); [95% paired-bootstrap CI] for one seed, ± std over seeds.", "",
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
    import numpy as np
    fig = Figure(figsize=(1.6 * max(3, len(rows)) + 2, 3.5))
    ax = fig.subplots()
    x = np.arange(len(rows))
    for k, (student, label) in enumerate((("student_naive_pgr", "naive"), ("student_logconf_pgr", "logconf"))):
        vals = [r.get(student) or {"mean": np.nan} for r in rows]
        means = np.array([v["mean"] if v["mean"] is not None else np.nan for v in vals], dtype=float)
        lo = [m - v["lo"] if v.get("lo") is not None else (v.get("std") or 0) for m, v in zip(means, vals)]
        hi = [v["hi"] - m if v.get("hi") is not None else (v.get("std") or 0) for m, v in zip(means, vals)]
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=np.nan_to_num(np.array([lo, hi], dtype=float)), capsize=3, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [r["task"] for r in rows])
    ax.set_ylabel("PGR (accuracy)")
    ax.legend()
    fig.tight_layout()
    tmp = Path(str(path) + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


if __name__ == "__main__":
    try:
        main()
    except (hub.OfflineError, toxicity.PerspectiveError) as e:  # one sentence saying what to pass instead, no trace
        raise SystemExit(f"error: {e}") from None
