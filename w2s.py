"""
A whole weak-to-strong experiment in one command, resumable, into one run directory.

    python w2s.py                                   # the offline toy demo: no network, a few minutes on a CPU
    python w2s.py --task safety --seeds 0 1 2       # Ye et al. Table 1 for safety (gpt2 -> gpt2-medium)
    python w2s.py --task safety --data-dir ../shared/data --weak random:2x64 --strong random:4x128 --limit 400
    python w2s.py --task legal --data-dir ../shared/data --limit 200 --epochs 1
    python w2s.py --task toxicity                   # generation: gpt-1 -> gpt-2, continuations scored for toxicity
    python w2s.py --task burns                      # Burns et al.'s NLP tasks, one combined PGR table and plot
    python w2s.py --task page --data-dir ../shared/data --train-layers 0 --seeds 0 1 2 3 4 5 6 7 8 9 \\
        --page-file docs/results_page.md     # the results page: each task's depth sweep, its val-chosen pair
    python w2s.py --task safety --print-commands    # the train.py command of every stage, in dependency order
    python w2s.py --task safety --jobs 4            # independent stages in 4 worker processes (one GPU each)
    python w2s.py --task safety --launcher slurm --slurm-gpus 1  # every stage a SLURM job, in order (slurm.py)
    python w2s.py --track tensorboard               # also log every stage's curves and the results (or wandb)

Stages for every seed (each one a train.py run; a finished stage is skipped on rerun; stages.py builds them, this
file runs them, one after another or in --jobs worker processes, slurm.py as SLURM jobs with --launcher slurm):
    weak                 weak model on weak_train ground truth; its predictions on w2s_train are the weak labels
    ensemble/member0..K  bootstrap-resampled weak models, and their hard / soft votes (ensemble/hard, ensemble/soft)
    ceiling              strong model on w2s_train ground truth
    student_<method>     strong model on weak labels, one per --students method (stages.STUDENTS; --students all):
                         naive, logconf, entropy, product, window (losses), hard, soft, learned (the ensemble),
                         selective (cross-fitted, with student_selective/fold0, fold1), genft (LM warm start first)
    prompt_zeroshot,     --prompting zeroshot,gold,weak (or all): the strong model untrained, prompted zero-shot and
    prompt_fewshot_gold, with --shots examples of w2s_train carrying gold or weak labels (prompting.py; rows of the
    prompt_fewshot_weak  same table, on the same test rows and bootstrap, no PGR)
Generation tasks (toxicity) have the students naive, hard and soft (the ensemble's members decode together, token by
token) and contrastive (ConG: the weak model after vs before fine-tuning, weak/contrastive), and score every run's
test continuations into <run>/scores.json (--scorer offline | perspective; default perspective when
PERSPECTIVE_API_KEY is set, else offline). --protocol rtp: RealToxicityPrompts' 25 samples, top-p 0.9, 20 tokens.

One experiment per directory: OUT/experiment.json records everything that changes the numbers; rerunning the same
experiment resumes it (more --seeds are added to it), anything else is refused unless --overwrite. Results:
OUT/results.json, OUT/results.md, OUT/results.png, covering every seed of the experiment.
"""
import concurrent.futures
import dataclasses
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core import cli, hub
from core.cli import UserError
from data import TASKS
from data import common as data_common
from experiment import evaluation, page, report, slurm
from experiment.slurm import SlurmConfig
from experiment.stages import (PER_STAGE, command, model_label, prompting_names, run_stage, select_of, stage_cfg,
                               stages_of_seed, student_names)
from models import checkpoints
from models.tokenizer import load_tokenizer
from run import config, features, job, rundir, runtime, tracking
from run.prompting import PROMPTS, prompt_of

# the real pretrained pair a machine without the Hub can have, and the flags that make a CPU experiment minutes long
OFFLINE_PAIR = f"--weak {config.PACKAGED_MODEL}@4 --strong {config.PACKAGED_MODEL}"
CPU_MINUTES = "--train-layers 0 --limit 300 --max-length 192"
BURNS_TASKS = ("anthropic_hh", "cosmos_qa", "sciq", "boolq", "amazon_polarity")


@dataclass
class W2SConfig:
    task: Literal[tuple(TASKS) + ("burns", "page")] = "toy"  # task; burns = Burns et al.'s NLP tasks, one combined
    # table; page = the results page: every --page-tasks task's depth sweep and its val-chosen pair (experiment/page.py)
    weak: str = ""              # weak model: Hub name, local dir, random:<shape> or toy-<size>; "" = the paper's
    strong: str = ""            # strong model, likewise; "" = the paper's
    ensemble: int = 5           # bootstrap members for the hard / soft vote students; 0 or 1 = no ensemble
    seeds: list[int] = field(default_factory=lambda: [0])  # experiment seeds (splits, inits, batch order)
    out: str = ""               # run directory; "" = runs/<task>
    overwrite: bool = False     # delete the experiment already in --out (its stages and results) before starting
    students: str = "naive,logconf,hard,soft"  # comma-separated students (see STUDENTS in stages.py), or all
    n_boot: int = 1000          # bootstrap resamples for the PGR confidence intervals
    burns_tasks: str = ",".join(BURNS_TASKS)  # --task burns: which of Burns et al.'s tasks to run
    page_tasks: str = ",".join(page.PAGE_TASKS)  # --task page: its tasks, each with page.TASK_SETTINGS' --max-length
    page_file: str = ""         # --task page: where the page goes (its plots beside it); "" = OUT/page.md
    page_limits: str = ""       # --task page: comma-separated TASK=N, that task's --limit (the others keep --limit)
    scorer: Literal["", "offline", "perspective"] = ""  # toxicity scorer; "" = perspective with a key, else offline
    jobs: int = 1               # stages run at once, each in its own worker process (one GPU each, round robin)
    launcher: Literal["local", "slurm"] = "local"  # local: stages in this process (or --jobs workers); slurm: each
    # stage a SLURM job, in dependency order (slurm.py; the --slurm-* flags below)
    print_commands: bool = False  # print every stage's train.py command in dependency order, run nothing
    genft_epochs: int = 1       # the genft student's language-model epochs on w2s_train's texts
    sizes: str = ""             # comma-separated models, smallest first: a sweep of every pair weak < strong
    chain: str = ""             # comma-separated intermediate models: weak -> each -> strong (Burns et al.'s bootstrapping)
    prompting: str = ""         # prompting baselines of the strong model, untrained (stages.PROMPTINGS: zeroshot,
    # gold, weak, or all; prompting.py): rows of the same table, on the same test rows and bootstrap
    shots: int = 8              # --prompting gold / weak: examples of w2s_train in each prompt
    select: Literal["", "best", "final", "objective"] = ""  # the weights every stage predicts with (train.py
    # --select); "" = best for supervisors and ceilings, each student its method's own rule (stages.SELECT)
    weak_train_layers: str = ""  # the supervisors' own --train-layers (weak, its ensemble members; e.g. all for a
    # from-scratch weak model under a probed strong one); "" = --train-layers
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # the --slurm-* flags (their own group, slurm.py)


# ----------------------------------------------------------------------------------------------------------------
# the experiment: what experiment.json records and results.md's header describes

def describe(cfg, base, task, models):
    """What results.md's header says the numbers come from."""
    defaults = config.TrainConfig()
    settings = {k: v for k, v in dataclasses.asdict(base).items()
                if k not in PER_STAGE + config.NOT_COMPARED and v != getattr(defaults, k)}
    summary = task.summary()
    source = {"source": summary["source"]} if task.source else {}
    if task.source and task.source.get("group"):  # e.g. how many policies each split holds
        source["split_groups"] = {name: s[task.source["group"]] for name, s in summary["splits"].items()}
    return {"task": task.name, "kind": task.kind, "label_names": list(task.label_names), **source,
            "splits": {name: len(rows) for name, rows in task.splits.items()}, "models": models,
            "settings": settings | {"ensemble": cfg.ensemble, "students": cfg.students} | w2s_settings(cfg, task.kind)}


def w2s_settings(cfg, kind):
    """The w2s.py flags that change some stages' numbers, where they differ from the defaults: the header names them
    beside train.py's."""
    prompts = prompting_names(cfg)
    genft = "genft" in student_names(cfg, kind) and cfg.genft_epochs != W2SConfig.genft_epochs
    given = {"select": cfg.select, "weak_train_layers": cfg.weak_train_layers, "prompting": ",".join(prompts),
             "shots": cfg.shots if set(prompts) - {"zeroshot"} else None,
             "genft_epochs": cfg.genft_epochs if genft else None}
    return {k: v for k, v in given.items() if v not in ("", None)}


def experiment_record(cfg, base, task, scorer_name, models):
    """Everything that changes the numbers: a rerun into the same directory must match it exactly."""
    settings = {k: v for k, v in config.comparable(base).items() if k not in PER_STAGE}
    students = student_names(cfg, task.kind)
    if "genft" in students:  # w2s.py flags that change a stage's numbers
        settings["genft_epochs"] = cfg.genft_epochs
    if cfg.weak_train_layers:
        settings["weak_train_layers"] = cfg.weak_train_layers
    if base.probe == "fit" and "0" in (base.train_layers, cfg.weak_train_layers):  # some stage's head is fitted
        settings |= {"probe": base.probe, "probe_folds": base.probe_folds}
    prompts = prompting_names(cfg)
    if prompts:  # recorded only when asked for: experiments without prompting keep their identity
        settings["prompting"] = {"baselines": prompts, "shots": cfg.shots if set(prompts) - {"zeroshot"} else 0}
    rules = {select_of(cfg, s) for s in students} | {cfg.select or "best"}
    settings["select"] = rules.pop() if len(rules) == 1 else {"students": {s: select_of(cfg, s) for s in students}}
    settings["numerics"] = runtime.numerics(base)
    return {"task": cfg.task, "models": {role: m["identity"] for role, m in models.items()}, "sweep": bool(cfg.sizes),
            "data": {"files": sorted(f["sha256"] for f in task.files), "limit": base.limit}
            | ({"source": task.source["name"]} if task.source else {}),
            "train": settings, "students": students, "ensemble": cfg.ensemble, "scorer": scorer_name}


# ----------------------------------------------------------------------------------------------------------------
# running stages

def marker(out, stage):
    """What says a stage is done: its metrics.json's (size, mtime), or None."""
    path = out / stage.path / "metrics.json"
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None


def run_stages(stages, out, cfg, scorer):
    """Every stage, each after its inputs. A stage that is (re)done makes every stage downstream of it rerun, so a
    result never rests on inputs older than itself. With --jobs N, independent stages run in N worker processes
    (started once, each pinned to one GPU or to its share of the CPU threads). Returns each stage's wall seconds."""
    redone, done, running, queue = set(), set(), {}, list(stages)
    n, started, seconds = len(stages), 0, {}
    pool = _worker_pool(cfg.jobs) if cfg.jobs > 1 else None
    try:
        while queue or running:
            stage = next((s for s in queue if all(n_ in done for n_ in s.needs)), None)
            if stage is not None and len(running) < cfg.jobs:
                queue.remove(stage)
                started += 1
                stale = [n_ for n_ in stage.needs if n_ in redone]
                if stale and marker(out, stage) is not None:
                    print(f"[{stage.path}] rerunning: its input {stale[0]} was redone", flush=True)
                    rundir.invalidate(out / stage.path)
                before = marker(out, stage)
                print(f"[{started}/{n}] {stage.path} ({stage.cfg.model})", flush=True)
                seconds[stage.path] = time.time()
                if pool is None:
                    run_stage(stage_cfg(stage, out))
                    finish_stage(stage, out, before, redone, done, scorer)
                    seconds[stage.path] = time.time() - seconds[stage.path]
                else:
                    running[stage.path] = (stage, before, pool.submit(run_stage, stage_cfg(stage, out)))
                continue
            if not running:
                raise RuntimeError(f"stages {[s.path for s in queue]} wait for inputs that are never run")
            finished, _ = concurrent.futures.wait([f for _, _, f in running.values()],
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
            for path, (stage, before, future) in list(running.items()):
                if future in finished:
                    del running[path]
                    future.result()  # a worker's error is raised here, as it would be in this process
                    finish_stage(stage, out, before, redone, done, scorer)
                    seconds[path] = time.time() - seconds[path]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return seconds


def finish_stage(stage, out, before, redone, done, scorer):
    if marker(out, stage) != before:
        redone.add(stage.path)
    done.add(stage.path)
    for run in stage.scored:  # generation: test continuations -> <run>/scores.json, skipped when done
        evaluation.score_run(out / run, scorer)


def _worker_pool(jobs):
    """N worker processes, started once (a stage then costs no new interpreter): with GPUs each takes one, round
    robin over the visible ones; on CPU each gets its share of this process's threads."""
    import torch
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked CUDA or OpenMP state
    gpus = worker_gpus()
    slots = context.Queue()
    for k in range(jobs):
        slots.put(gpus[k % len(gpus)] if gpus else None)
    threads = max(1, torch.get_num_threads() // jobs)
    shown = (set(data_common.WARNED), set(cli.NOTED))  # what this process has said once is not said again
    return concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_start,
                                                  initargs=(slots, threads, shown))


def worker_gpus():
    """The GPUs workers take, round robin, as CUDA_VISIBLE_DEVICES names them: only those this process may use."""
    import torch
    gpus = [str(k) for k in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [name.strip() for name in visible.split(",")][:len(gpus)] if gpus and visible else gpus


def _worker_start(slots, threads, shown):
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before the worker's first CUDA call
    import torch
    torch.set_num_threads(threads)
    data_common.WARNED.update(shown[0])
    cli.NOTED.update(shown[1])


# ----------------------------------------------------------------------------------------------------------------
# main

def parse_args(argv=None):
    parser = cli.new_parser(__doc__)
    cli.add_config_flags(parser, W2SConfig, skip=("slurm",), title="experiment")
    cli.add_config_flags(parser, SlurmConfig, title="SLURM (--launcher slurm: every stage a job; slurm.py)")
    cli.add_config_flags(parser, config.TrainConfig, skip=PER_STAGE,
                         title="training (train.py flags, applied to every stage)")
    task = parser.parse_known_args(argv)[0].task
    parser.set_defaults(**config.task_defaults(task))  # flags given on the command line still win
    args = vars(parser.parse_args(argv))
    launch = SlurmConfig(**{f.name: args.pop(f.name) for f in dataclasses.fields(SlurmConfig)})
    cfg = W2SConfig(**{f.name: args.pop(f.name) for f in dataclasses.fields(W2SConfig) if f.name != "slurm"}, slurm=launch)
    first = {"burns": BURNS_TASKS[0], "page": cfg.page_tasks.split(",")[0]}.get(cfg.task, cfg.task)
    base = config.TrainConfig(task=first, **args)
    for flag, ok, why in [("ensemble", cfg.ensemble >= 0, "must be >= 0"), ("jobs", cfg.jobs >= 1, "must be at least 1"),
                          ("shots", cfg.shots >= 1, "must be at least 1 (zero-shot is --prompting zeroshot)"),
                          ("n_boot", cfg.n_boot >= 1, "must be at least 1"),
                          ("seeds", len(set(cfg.seeds)) == len(cfg.seeds) and min(cfg.seeds) >= 0,
                           "must be distinct and >= 0")]:
        if not ok:
            raise UserError(f"argument --{flag.replace('_', '-')}: {why} (got {getattr(cfg, flag)})")
    config.check_config(base)
    if cfg.launcher == "slurm":
        slurm.check(cfg, base)
    prompting_names(cfg)
    if cfg.weak_train_layers not in ("", "all") and not cfg.weak_train_layers.isdigit():
        raise UserError("argument --weak-train-layers: must be all or a whole number of top blocks >= 0 "
                        f"(got {cfg.weak_train_layers})")
    if base.lora_rank and cfg.weak_train_layers not in ("", "all"):
        raise UserError("argument --weak-train-layers: --lora-rank adapts the whole model of every stage, the "
                        f"supervisors' too, so it needs all (got {cfg.weak_train_layers})")
    return cfg, base


def main(argv=None):
    cfg, base = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(cfg.out or f"runs/{cfg.task}")
    if cfg.task == "burns":
        return run_burns(cfg, base, out)
    if cfg.task == "page":
        return run_page(cfg, base, out, argv)
    return run_experiment(cfg, base, out)


def default_models(task_name, kind):
    """The task's own default pair (the toy demo's pretrained GPTs) or the paper's."""
    own = getattr(__import__(TASKS[task_name], fromlist=["_"]), "DEFAULT_MODELS", None)
    return own or {"weak": config.DEFAULT_MODELS[kind]["weak"], "strong": config.DEFAULT_MODELS[kind]["strong"]}


def experiment_models(cfg, base, kind):
    """(models smallest first, chain): --sizes, or the pair --weak / --strong (each defaulting to the task's or the
    paper's model), and the chain's intermediate models."""
    chain = [m for m in cfg.chain.split(",") if m]
    if cfg.sizes:
        if cfg.weak or cfg.strong:
            raise UserError("argument --sizes: give either --sizes or --weak / --strong, not both")
        specs = [m for m in cfg.sizes.split(",") if m]
        if len(specs) < 2:
            raise UserError(f"argument --sizes: a sweep needs at least two models, smallest first (got {cfg.sizes!r})")
    else:
        defaults = default_models(base.task, kind)
        specs = [cfg.weak or defaults["weak"], cfg.strong or defaults["strong"]]
    labels = [model_label(m) for m in specs]
    if cfg.sizes and len(set(labels)) < len(labels):  # a sweep's layout is by model: one directory each
        raise UserError(f"argument --sizes: the models must differ (labels {labels}); give distinct directories")
    if chain and kind == "generation":
        raise UserError("argument --chain: bootstrapping chains are for classification tasks")
    return specs, chain


def model_record(spec, data_dir, quiet):
    source, tokenizer, depth = checkpoints.resolve(spec, data_dir, quiet)
    identity = checkpoints.model_identity(source, tokenizer, depth)  # refuses an unreadable checkpoint before OUT is made
    load_tokenizer(tokenizer)  # and its tokenizer
    return {"spec": spec, "identity": identity}


def experiment_inputs(cfg, base):
    """(task, specs, chain, models): the task, the experiment's model specs and each model's record, with every
    check that can fail on bad input, so that it fails before OUT is touched and leaves no directory."""
    task = job.cached_task(base.task, base.data_dir, cfg.seeds[0], base.limit)
    config.check_for_task(base, task)
    kind = task.kind
    specs, chain = experiment_models(cfg, base, kind)
    if prompting_names(cfg):
        if kind != "classification":
            raise UserError(f"argument --prompting: task {task.name} is a {kind} task; prompting baselines score "
                            "label words of a classification task")
        prompt_of(base.task)
    roles = [model_label(spec) for spec in specs] if cfg.sizes else ["weak", "strong"]  # --weak X --strong X: both
    papers = not (cfg.weak or cfg.strong or cfg.sizes) and specs == [config.DEFAULT_MODELS[kind][r] for r in roles]
    try:
        models = {role: model_record(spec, base.data_dir, base.quiet) for spec, role in zip(specs, roles)}
    except hub.OfflineError as e:
        if not papers:
            raise
        raise hub.OfflineError(f"{e} {' and '.join(specs)} are the paper's models; without the Hub, {OFFLINE_PAIR} "
                               f"run instead (SmolLM2-135M-Instruct from PyPI, its first 4 blocks the weak model; on a "
                               f"CPU in about 15 minutes with {CPU_MINUTES}).") from None
    if papers and kind == "classification" and base.train_layers == "all" and runtime.run_device(base).type == "cpu":
        cli.note_once(f"note: on a CPU the paper's models fine-tuned in full on {len(task.splits['w2s_train']):,} rows "
                      f"take hours; {OFFLINE_PAIR} {CPU_MINUTES} takes about 15 minutes on 2 cores")
    models |= {f"chain {model_label(spec)}": model_record(spec, base.data_dir, base.quiet) for spec in chain}
    return task, specs, chain, models


def run_experiment(cfg, base, out):
    task, specs, chain, models = experiment_inputs(cfg, base)
    kind = task.kind
    # made before any training, so a missing API key or scorer data stops the experiment at once
    scorer = evaluation.toxicity_scorer(cfg.scorer, task, quiet=base.quiet) if kind == "generation" else None
    experiment = experiment_record(cfg, base, task, scorer.name if scorer else None, models)
    missing = [p for p in [out, *out.parents] if not p.exists()]
    created = missing[-1] if missing else None  # the topmost directory this run makes: removed if it fails to start
    with rundir.locked(out, "w2s.py run"):
        started = False
        try:
            seeds = sorted(set(rundir.check_experiment(out, experiment, cfg.overwrite)) | set(cfg.seeds))
            rundir.remove_leftovers(out)
            stages, listing = [], None
            for seed in seeds:
                seed_stages, runs, comparisons = stages_of_seed(cfg, base, kind, seed, specs, chain)
                stages += seed_stages
                listing = listing or (runs, comparisons)
            rundir.write_experiment(out, {"format": 1, "experiment": experiment, "seeds": seeds, "kind": kind,
                                          "data_dir": base.data_dir, "description": describe(cfg, base, task, models),
                                          "sweep": [model_label(s) for s in specs] if cfg.sizes else None,
                                          "runs": listing[0], "students": listing[1]})
            if cfg.print_commands:
                for stage in stages:
                    print(" ".join(command(stage, out)))
                print(" ".join(["python", "eval.py", str(out)] + (["--scorer", scorer.name.split(":")[0]] if scorer else [])))
                return None
            if seeds != sorted(cfg.seeds):
                print(f"this experiment's seeds: {', '.join(map(str, seeds))} (recorded earlier in {out} and asked now)",
                      flush=True)
            started = True
            stage_seconds = (slurm.run_stages if cfg.launcher == "slurm" else run_stages)(stages, out, cfg, scorer)
        except BaseException:
            if not started and created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
        results = evaluation.evaluate_experiment(out, n_boot=cfg.n_boot)
        # the experiment's seeds, not only those asked for now: results cover every one of them
        results["config"] = {"w2s": dataclasses.asdict(cfg) | {"seeds": seeds}, "train": dataclasses.asdict(base),
                             "models": specs,
                             "chain": chain}
        # wall seconds of each stage this invocation ran (or found done): the one part of results.json that varies
        results["timing"] = {"stage_seconds": {k: round(v, 2) for k, v in stage_seconds.items()},
                             "total_seconds": round(sum(stage_seconds.values()), 2)}
        evaluation.write_results(out, results)
        tracking.log_experiment(base, out, results)
    print((out / "results.md").read_text())
    print(f"results: {', '.join(str(p) for p in sorted(out.glob('results*')))}", flush=True)
    return results


def run_burns(cfg, base, out):
    """Every Burns et al. task as its own experiment in OUT/<task>, then one table and plot of PGR per task, naive
    vs logconf (like their Figure 3). A task whose data cannot be had is reported as not run, with the reason."""
    tasks = [t for t in cfg.burns_tasks.split(",") if t]
    unknown = [t for t in tasks if t not in BURNS_TASKS]
    if unknown or not tasks:
        raise UserError(f"argument --burns-tasks: unknown {unknown or 'empty list'}; choose from {', '.join(BURNS_TASKS)}")
    per_task, not_run = {}, {}
    for task in tasks:
        print(f"==== burns task {task}", flush=True)
        try:
            per_task[task] = run_experiment(dataclasses.replace(cfg, task=task, out=str(out / task)),
                                            dataclasses.replace(base, task=task), out / task)
        except Exception as e:  # e.g. offline without local files: say why, go on with the other tasks
            line = cli.error_line(e)
            if line is None:
                raise  # a bug keeps its traceback
            not_run[task] = line
            print(f"==== burns task {task} not run: {line}", flush=True)
    rows = []
    for task, res in per_task.items():
        summary = res["summary"]
        row = {"task": task, "weak": summary["runs"]["weak"]["accuracy"], "ceiling": summary["runs"]["ceiling"]["accuracy"]}
        for student in ("student_naive", "student_logconf"):
            if student in summary["pgr"]:
                row[student] = summary["runs"][student]["accuracy"]
                row[student + "_pgr"] = summary["pgr"][student]["accuracy"]
                if summary["n_seeds"] == 1:  # one seed: its bootstrap CI (or why there is none)
                    entry = next(iter(res["seeds"].values()))["pgr"][student]["accuracy"]
                    row[student + "_pgr"] = dict(row[student + "_pgr"], lo=entry["lo"], hi=entry["hi"],
                                                 text=report.pgr_text(entry))
                    if entry["lo"] is None:  # its nulls say why, as the seed's own entry does
                        row[student + "_pgr"]["reason"] = f"PGR n/a: {entry['reason']}"
        rows.append(row)
    combined = {"tasks": rows, "not_run": not_run, "metric": "accuracy"}
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / "results.json", evaluation.json_safe(combined))
    cli.write_atomic(out / "results.md", report.burns_table(rows, not_run).encode())
    report.burns_plot(rows, out / "results.png")
    print((out / "results.md").read_text())
    written = [out / name for name in ("results.md", "results.json", "results.png") if (out / name).is_file()]
    print(f"results: {', '.join(map(str, written))}", flush=True)
    return combined


def run_page(cfg, base, out, argv):
    """--task page: each --page-tasks task's depth sweep in OUT/<task>/sweep, the pair it picks on val in
    OUT/<task>/<best|whole>, then the page (experiment/page.py), its page.json and a plot per task."""
    tasks = [t for t in cfg.page_tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UserError(f"argument --page-tasks: unknown {unknown or 'empty list'}; choose from {', '.join(TASKS)}")
    limits = page.parse_limits(cfg.page_limits, tasks)
    students = ",".join(dict.fromkeys(["naive"] + [s for s in cfg.students.split(",") if s]))  # naive: the gap
    sections = []
    for task in tasks:
        print(f"==== page task {task}", flush=True)
        t_base = dataclasses.replace(base, task=task, **page.TASK_SETTINGS.get(task, {}),
                                     **({"limit": limits[task]} if task in limits else {}))
        t_cfg = dataclasses.replace(cfg, task=task, weak="", strong="", chain="")
        sweep_cfg = dataclasses.replace(t_cfg, sizes=cfg.sizes or page.DEPTHS, students="naive", ensemble=0,
                                        prompting="")
        sweep = run_experiment(sweep_cfg, t_base, out / task / "sweep")
        val = page.val_accuracies(out / task / "sweep", sweep)
        labels = dict(zip(sweep["sweep"], sweep["config"]["models"]))  # a sweep's labels -> the specs they name
        choice = page.choose_pair(val, sweep["sweep"])
        prompting = cfg.prompting if task in PROMPTS else ""
        pairs = {label: run_experiment(dataclasses.replace(t_cfg, sizes="", weak=labels[w], strong=labels[s],
                                                           students=students, prompting=prompting),
                                       t_base, out / task / label) for label, (w, s) in choice.items()}
        sections.append(page.task_section(task, sweep, val, choice, pairs))
    path = Path(cfg.page_file) if cfg.page_file else out / "page.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    page_command = " ".join(["python w2s.py"] + list(sys.argv[1:] if argv is None else argv))
    machine = features.hardware_kind(runtime.numerics(base))  # what the feature store is keyed by too
    for section in sections:
        page.plot_sweep(section, path.parent / f"{section['task']}_sweep.png")
    rundir.write_json(path.with_suffix(".json"), evaluation.json_safe({"command": page_command, "machine": machine,
                                                                       "tasks": sections}))
    cli.write_atomic(path, page.page_markdown(sections, page_command, machine).encode())
    print(path.read_text())
    print(f"page: {path}, {path.with_suffix('.json')}", flush=True)
    return sections


if __name__ == "__main__":
    cli.main_guard(main)
