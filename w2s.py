"""
A whole weak-to-strong experiment in one command, resumable, into one run directory.

    python w2s.py                                   # the offline toy demo: no network, a few minutes on a CPU
    python w2s.py --task safety --seeds 0 1 2       # Ye et al. Table 1 for safety (gpt2 -> gpt2-medium)
    python w2s.py --task legal --data-dir ../shared/data --limit 200 --epochs 1
    python w2s.py --task toxicity                   # generation: gpt-1 -> gpt-2, continuations scored for toxicity

Stages for every seed (each one a train.py run; a finished stage with the same config is skipped on rerun):
    weak                 weak model on weak_train ground truth; its predictions on w2s_train are the weak labels
    ensemble/member0..K  bootstrap-resampled weak models, and their hard / soft votes (ensemble/hard, ensemble/soft)
    ceiling              strong model on w2s_train ground truth
    student_naive        strong model on the weak labels
    student_logconf      same, with Burns et al.'s auxiliary confidence loss
    student_hard/_soft   strong model on the ensemble's hard / soft votes
Any other train.py flag (--epochs, --batch-size, --lr, --limit, --max-length, ...) applies to every stage.
Results: OUT/results.json, OUT/results.md, OUT/results.png.
"""
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import eval as w2s_eval
import train
from data import load_task


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

    weak_model, strong_model = cfg.weak, cfg.strong
    if cfg.task == "toy" and not (weak_model and strong_model):
        from data import toy  # the toy demo's small GPTs are pretrained here once, then cached in the run dir
        weak_model, strong_model = toy.pretrained_models(out / "pretrained", device=base.device)
    kind = load_task(cfg.task, data_dir=base.data_dir, seed=cfg.seeds[0], limit=base.limit).kind
    weak_model = weak_model or train.DEFAULT_MODELS[kind]["weak"]
    strong_model = strong_model or train.DEFAULT_MODELS[kind]["strong"]

    for seed in cfg.seeds:
        for stage in stages(cfg, dataclasses.replace(base, seed=seed), kind, out / f"seed{seed}", weak_model, strong_model):
            print(f"== seed {seed} stage {Path(stage.out).name} ({stage.model})", flush=True)
            train.run(stage)

    results = w2s_eval.evaluate_experiment(out, n_boot=cfg.n_boot)
    results["config"] = {"w2s": dataclasses.asdict(cfg), "train": dataclasses.asdict(base),
                         "weak_model": weak_model, "strong_model": strong_model}
    w2s_eval.write_results(out, results)
    print((out / "results.md").read_text())
    return results


if __name__ == "__main__":
    main()
