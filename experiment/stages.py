"""
The stage graph of one seed: which train.py runs an experiment is made of, what each reads, where each goes in the run
directory, which runs eval.py evaluates and which student is compared with which supervisor and ceiling. w2s.py
runs the stages (its scheduler and worker pool); nothing here trains or reads a file.

    weak, ensemble/member0..K, ensemble    a supervisor (weak_stages): the weak model, its members, their votes
    ceiling                                a strong model on ground truth
    student_<method>                       a strong model on a supervisor's labels (student_stage; STUDENTS below)
    chain/1_<label>, ...                   Burns et al.'s bootstrapping, weak -> chain -> strong (chain_stages)
    prompt_zeroshot, prompt_fewshot_gold,  the strong model prompted, untrained (prompting.py; --prompting):
    prompt_fewshot_weak                    zero-shot, and with --shots examples carrying gold or weak labels

A pair has the flat layout (seed0/weak, seed0/ceiling, seed0/student_naive); a sweep (--sizes) puts each model's own
stages under its label and each pair's students under <weak>__<strong> (Layout), so every model trains once.
"""
import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import train
from core import cli
from core.cli import UserError
from run import config, ensemble, job, prompting, rundir

ROOT = Path(__file__).resolve().parents[1]
# student name -> (the run it is compared with for PGR, train.py settings of its own); losses.py and labels.py
# hold the methods, train.py --help their flags
STUDENTS = {
    "naive": ("weak", {}),                           # cross entropy on the weak labels
    "logconf": ("weak", {"loss": "logconf"}),        # Burns et al.'s auxiliary confidence loss
    "entropy": ("weak", {"loss": "entropy"}),        # logconf without hardening (EleutherAI/w2s)
    "product": ("weak", {"loss": "product"}),        # openai/weak-to-strong's product loss
    "window": ("weak", {"loss": "window"}),          # EleutherAI/w2s's confidence window
    "hard": ("ensemble/hard", {}),                   # the bootstrap ensemble's majority vote
    "soft": ("ensemble/soft", {}),                   # its mean probabilities
    "learned": ("ensemble/soft", {"learned": True}),  # its members mixed by learned weights (RAVEN); PGR against
    #                                                  the uniform mix of the same members
    "selective": ("weak", {"selective": True}),      # Selective W2SG, cross-fitted (labels.py)
    "genft": ("weak", {}),                           # generative fine-tuning on w2s_train's texts first (Burns et al.)
    "contrastive": ("contrastive", {}),              # generation: ConG's contrastive decoding of the weak model
    #                                                  (weak/contrastive, written by the weak stage)
}
# the weights each student predicts with when w2s.py --select is not given (train.py --select): best = lowest val
# cross entropy against its supervisor's labels, final = the last step, objective = lowest val value of its own loss.
# best for every method, from the measurement in the README (toy and safety, 3 seeds): logconf loses PGR with final
# or objective on both tasks, product on toy (on safety its best has the lower mean and the wider spread), the other
# methods' means move by <= 0.04; no rule is ahead for every method
SELECT = {s: "best" for s in STUDENTS}
ENSEMBLE_STUDENTS = ("hard", "soft", "learned")
PROMPTINGS = ("zeroshot", "gold", "weak")  # --prompting: the strong model zero-shot, few-shot with gold / weak labels
GENERATION_STUDENTS = ("naive", "hard", "soft", "contrastive")  # votes decode token by token (generation.py)
CLASSIFICATION_STUDENTS = tuple(s for s in STUDENTS if s != "contrastive")
# train.py flags that w2s.py sets per stage; every other train.py flag applies to every stage as given
PER_STAGE = ("task", "role", "model", "out", "seed", "weak_labels", "vote", "member", "ensemble", "loss", "learned",
             "selective", "fold", "genft_epochs", "select")
# train.py flags that only some students read: other stages keep the defaults, so changing one reruns only those
KNOBS = {"aux_coef": ("logconf", "entropy"), "aux_warmup": ("logconf", "entropy"), "aux_schedule": ("logconf", "entropy"),
         "product_alpha": ("product",), "product_beta": ("product",), "window_radius": ("window",),
         "member_lr": ("learned",), "agreement_epochs": ("learned",), "confidence": ("selective",), "knn": ("selective",)}


@dataclass
class Stage:
    path: str                   # the stage's directory, relative to OUT (e.g. seed0/student_naive)
    cfg: config.TrainConfig
    needs: list                 # paths of the stages whose outputs it reads
    scored: list = field(default_factory=list)  # generation: its runs whose test continuations get scores.json


@dataclass
class Layout:
    """Where one seed's stages go, relative to OUT: a pair's flat layout (weak/, ceiling/, student_naive/), or a
    sweep's by model (<label>/weak, <label>/ensemble, <label>/ceiling) and by pair (<weak>__<strong>/student_naive)."""
    seed_dir: str               # seed0
    label: dict                 # model spec -> its short, path-safe name (model_label)
    sweep: bool

    def at(self, model):
        """The directory prefix of a model's own stages: "<label>/" in a sweep, "" for a pair."""
        return f"{self.label[model]}/" if self.sweep else ""

    def pair(self, weak, strong):
        """The directory prefix of a pair's students: "<weak>__<strong>/" in a sweep, "" for a pair."""
        return f"{self.label[weak]}__{self.label[strong]}/" if self.sweep else ""


@dataclass
class Graph:
    """One seed's stages in dependency order, the runs eval.py evaluates and the student comparisons, named relative
    to the seed directory (what experiment.json lists)."""
    layout: Layout
    generation: bool            # generation stages have their runs' continuations scored
    stages: list = field(default_factory=list)
    runs: list = field(default_factory=list)
    comparisons: list = field(default_factory=list)

    def add(self, path, cfg, needs=(), run=True, table=True, extra_runs=(), model=None):
        """A stage; its own run (and `extra_runs`: {name: path} of runs it writes below itself) for eval.py."""
        seed_dir = self.layout.seed_dir
        written = ({path: path} if run else {}) | dict(extra_runs)
        self.stages.append(Stage(f"{seed_dir}/{path}", dataclasses.replace(cfg, out=""), [f"{seed_dir}/{n}" for n in needs],
                                 [f"{seed_dir}/{p}" for p in written.values()] if self.generation else []))
        self.runs.extend({"name": name, "path": p, "stage": path, "table": table,
                          "model": self.layout.label.get(model, model)} for name, p in written.items())


def stages_of_seed(cfg, base, kind, seed, models, chain=()):
    """The stages of one seed in dependency order, the runs eval.py evaluates and the student comparisons (named
    relative to the seed directory). `models` are model specs, smallest first: one pair [weak, strong] (flat layout:
    weak/, ceiling/, student_naive/), or a sweep, where every model but the largest supervises (<label>/weak,
    <label>/ensemble), every model but the smallest has a ceiling (<label>/ceiling), and every pair weak < strong has
    its students (<weak>__<strong>/student_naive, ...), each model trained once and reused by every pair. `chain`:
    intermediate models for Burns et al.'s bootstrapping, weak -> chain[0] -> ... -> strong (chain/1_<label>, ...)."""
    students = student_names(cfg, kind)
    knobs = dataclasses.asdict(base)
    base = dataclasses.replace(base, seed=seed, **{k: getattr(config.TrainConfig, k) for k in KNOBS})
    ensemble = cfg.ensemble if set(ENSEMBLE_STUDENTS) & set(students) else 0
    layout = Layout(f"seed{seed}", {m: model_label(m) for m in list(models) + list(chain)}, bool(cfg.sizes))
    graph = Graph(layout, kind == "generation")
    base = dataclasses.replace(base, select=cfg.select or "best")  # supervisors and ceilings; students: their own
    supervising = dataclasses.replace(base, train_layers=cfg.weak_train_layers or base.train_layers)  # its own
    for weak in models[:-1]:  # every model but the largest supervises
        weak_stages(graph, supervising, weak, ensemble, "contrastive" in students)
    for strong in models[1:]:  # every model but the smallest has a ceiling
        graph.add(f"{layout.at(strong)}ceiling", dataclasses.replace(base, role="ceiling", model=strong), model=strong)
    for i, weak in enumerate(models):
        for strong in models[i + 1:]:
            for s in students:
                student_stage(graph, base, weak, strong, s, student_settings(s, knobs, cfg))
    if chain:
        chain_stages(graph, dataclasses.replace(base, select=select_of(cfg, "naive")), models, chain,
                     "naive" in students)  # each step is a naive student
    for how in prompting_names(cfg):  # the strongest model, untrained; weak shots from the weakest
        prompt_stage(graph, base, models[0], models[-1], how, cfg.shots)
    if not layout.sweep:  # a pair's table reads supervisors, prompting, then students, then the ceiling
        order = (["weak", "ensemble/hard", "ensemble/soft", "contrastive"] + [prompt_run(h) for h in PROMPTINGS] +
                 [f"student_{s}" for s in students])
        graph.runs.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order) + (r["name"] == "ceiling"))
    return graph.stages, graph.runs, graph.comparisons


def weak_stages(graph, base, weak, ensemble, contrastive):
    """A supervisor's stages: the weak model (writing ConG's weak/contrastive too when `contrastive`), and with
    `ensemble` > 1 its bootstrap members and their hard and soft votes."""
    at = graph.layout.at(weak)
    graph.add(f"{at}weak", dataclasses.replace(base, role="weak", model=weak, contrastive=contrastive),
              extra_runs={f"{at}contrastive": f"{at}weak/contrastive"} if contrastive else {}, model=weak)
    if ensemble <= 1:
        return
    for k in range(ensemble):  # a generation vote decodes with the members: they keep their weights
        graph.add(f"{at}ensemble/member{k}", dataclasses.replace(
            base, role="weak", model=weak, member=k, save_checkpoint=base.save_checkpoint or graph.generation),
            table=False, model=weak)
    graph.add(f"{at}ensemble", dataclasses.replace(base, role="weak", model=weak, ensemble=ensemble),
              needs=[f"{at}ensemble/member{k}" for k in range(ensemble)], run=False, model=weak,
              extra_runs={f"{at}ensemble/{how}": f"{at}ensemble/{how}" for how in ("hard", "soft")})


def student_settings(s, knobs, cfg):
    """train.py settings of student `s`: its method's own (STUDENTS), the flags only it reads (KNOBS) as given, and
    its checkpoint rule (--select, else SELECT)."""
    settings = STUDENTS[s][1] | {k: knobs[k] for k, users in KNOBS.items() if s in users} | {"select": select_of(cfg, s)}
    return settings | ({"genft_epochs": cfg.genft_epochs} if s == "genft" else {})


def select_of(cfg, student):
    """The checkpoint rule of a student: --select as given, else the method's own (SELECT)."""
    return cfg.select or SELECT[student]


def student_stage(graph, base, weak, strong, s, settings):
    """Student `s` of the pair weak < strong (after its cross-fitting folds, for selective), and its comparison:
    PGR against the supervisor that labelled its data and the strong model's ceiling."""
    layout = graph.layout
    at_weak, at_pair = layout.at(weak), layout.pair(weak, strong)
    supervisor = STUDENTS[s][0]
    source = "weak/contrastive" if s == "contrastive" else supervisor
    labels = (f"{layout.seed_dir}/{at_weak}ensemble" if s == "learned" else
              f"{layout.seed_dir}/{at_weak}{source}/predictions.json")
    student = dataclasses.replace(base, role="student", model=strong, weak_labels=labels, **settings)
    needs = [at_weak + ("ensemble" if supervisor.startswith("ensemble/") else "weak" if s == "contrastive"
                        else supervisor)]
    if s == "selective":  # its cross-fitting folds are stages of their own
        for k in (0, 1):
            graph.add(f"{at_pair}student_selective/fold{k}", dataclasses.replace(student, selective=False, fold=k),
                      needs, run=False, model=strong)
        needs = [f"{at_pair}student_selective/fold{k}" for k in (0, 1)]
    graph.add(f"{at_pair}student_{s}", student, needs, model=strong)
    graph.comparisons.append({"name": f"{at_pair}student_{s}", "supervisor": at_weak + supervisor,
                              "ceiling": f"{layout.at(strong)}ceiling", "trained_on": at_weak + supervisor,
                              "method": s, "pair": [layout.label[weak], layout.label[strong]]})


def chain_stages(graph, base, models, chain, naive):
    """Burns et al.'s bootstrapping: the weak model's labels train chain[0], whose predictions on w2s_train train
    chain[1], ..., and finally the strong model; its row is compared (PGR) with the original weak model and the
    strong ceiling. In a sweep that has the naive student weak -> chain[0] (`naive`), that student is the first step
    (the same training), so it is not trained twice."""
    layout = graph.layout
    label, at = layout.label, layout.at
    path = [models[0], *chain, models[-1]]
    previous = trained_on = f"{at(path[0])}weak"
    name = "chain:" + ">".join(label[m] for m in path)
    for i, model in enumerate(path[1:], start=1):
        stage, last = f"chain/{i}_{label[model]}", i == len(path) - 1
        if i == 1 and not last and layout.sweep and naive and model in models[1:]:
            trained_on, previous = previous, f"{layout.pair(path[0], model)}student_naive"
            continue
        graph.add(stage, dataclasses.replace(base, role="student", model=model,
                                             weak_labels=f"{layout.seed_dir}/{previous}/predictions.json"),
                  [previous], model=model, run=not last, extra_runs={name: stage} if last else {})
        trained_on, previous = previous, stage
    graph.comparisons.append({"name": name, "supervisor": f"{at(path[0])}weak", "ceiling": f"{at(path[-1])}ceiling",
                              "trained_on": trained_on, "method": "chain", "pair": [label[path[0]], label[path[-1]]]})


def prompt_run(how):
    return "prompt_zeroshot" if how == "zeroshot" else f"prompt_fewshot_{how}"


def prompt_stage(graph, base, weak, strong, how, shots):
    """A prompting baseline of the strong model (prompting.py): zero-shot, or `shots` examples of w2s_train in each
    prompt carrying gold labels or the weak supervisor's. Each shot gets as many tokens as a training text."""
    layout = graph.layout
    cfg = prompting.PromptConfig(
        task=base.task, model=strong, shots=0 if how == "zeroshot" else shots, shot_labels="weak" if how == "weak"
        else "gold", data_dir=base.data_dir, seed=base.seed, limit=base.limit, batch_size=base.batch_size,
        max_length=(1 + (how != "zeroshot") * shots) * base.max_length, device=base.device, dtype=base.dtype,
        threads=base.threads, quiet=base.quiet, val=False,
        weak_labels=f"{layout.seed_dir}/{layout.at(weak)}weak/predictions.json" if how == "weak" else "")
    graph.add(f"{layout.at(strong)}{prompt_run(how)}", cfg, needs=[f"{layout.at(weak)}weak"] if how == "weak" else (),
              model=strong)


def prompting_names(cfg):
    """The prompting baselines of --prompting (all = every one)."""
    names = list(PROMPTINGS) if cfg.prompting == "all" else [h for h in cfg.prompting.split(",") if h]
    unknown = [h for h in names if h not in PROMPTINGS]
    if unknown:
        raise UserError(f"argument --prompting: unknown {unknown}; choose from all, {', '.join(PROMPTINGS)}")
    return names


def model_label(spec):
    """A short, path-safe name for a model in a sweep's layout and tables: toy-s, gpt2-medium, random-2x64, a
    directory's own name."""
    local = Path(spec).expanduser()
    name = local.name if local.is_dir() else spec
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def student_names(cfg, kind):
    """The students of --students (all = every one) that apply: generation tasks have their own, and the
    ensemble students need --ensemble > 1."""
    names = list(STUDENTS) if cfg.students == "all" else [s for s in cfg.students.split(",") if s]
    unknown = [s for s in names if s not in STUDENTS]
    if unknown or not names:
        raise UserError(f"argument --students: unknown {unknown or 'empty list'}; choose from all, {', '.join(STUDENTS)}")
    names = [s for s in names if s in (GENERATION_STUDENTS if kind == "generation" else CLASSIFICATION_STUDENTS)]
    if cfg.ensemble <= 1:
        names = [s for s in names if s not in ENSEMBLE_STUDENTS]
    return names


def implied_configs(exp, seed):
    """{stage path relative to the seed directory: its comparable config} as an experiment.json (w2s.py's record of
    the experiment, its runs and their models' labels) implies them: the stages rebuilt by stages_of_seed from the
    settings it records, so eval.py can refuse a stage trained otherwise. Model specs only name directories here
    (their content is the record's identity), so the models' labels stand in for them. None when experiment.json was
    not written by w2s.py (nothing to rebuild from)."""
    record, runs = exp.get("experiment", {}), {r["name"]: r.get("model") for r in exp.get("runs", [])}
    if not {"task", "train", "students", "ensemble", "models"} <= set(record) or not (exp.get("sweep") or runs.get("weak")):
        return None
    fields = {f.name for f in dataclasses.fields(config.TrainConfig)}
    base = config.TrainConfig(task=record["task"], **{k: v for k, v in record["train"].items()
                                                      if k in fields and k not in PER_STAGE} |
                              {"probe": record["train"].get("probe", "sgd")})  # absent: every probe before fitted ones
    labels = exp.get("sweep") or [runs["weak"], runs["ceiling"]]
    chain = [role.removeprefix("chain ") for role in record["models"] if role.startswith("chain ")]
    # the w2s.py flags stages_of_seed reads (w2s.W2SConfig's names), as the record keeps them
    flags = argparse.Namespace(students=",".join(record["students"]), ensemble=record["ensemble"],
                               sizes=",".join(labels) if exp.get("sweep") else "",
                               genft_epochs=record["train"].get("genft_epochs", 1),
                               weak_train_layers=record["train"].get("weak_train_layers", ""),
                               select=select if isinstance(select := record["train"].get("select", ""), str) else "",
                               prompting=",".join(record["train"].get("prompting", {}).get("baselines", [])),
                               shots=record["train"].get("prompting", {}).get("shots", 0))
    stages = stages_of_seed(flags, base, exp["kind"], seed, labels, chain)[0]
    return {stage.path.split("/", 1)[1]: (prompting.comparable if isinstance(stage.cfg, prompting.PromptConfig)
                                          else config.comparable)(stage.cfg) for stage in stages}


def stage_cfg(stage, out):
    """The train.py config of a stage with its paths under OUT."""
    cfg = dataclasses.replace(stage.cfg, out=str(out / stage.path))
    if cfg.weak_labels:
        cfg.weak_labels = str(out / cfg.weak_labels)
    return cfg


def run_stage(cfg):
    """Run one stage's config: a prompting baseline (prompting.py) or a training run (train.py)."""
    return prompting.run(cfg) if isinstance(cfg, prompting.PromptConfig) else train.run(cfg)


def stage_done(cfg):
    """(done?, why not) of a stage's config, checked by content as its own script checks it before running (settings,
    outputs' and inputs' sha256: rundir.stage_status), with nothing trained: what --launcher slurm submits by."""
    out = Path(cfg.out)
    if not (out / "metrics.json").is_file():
        return False, None
    if isinstance(cfg, prompting.PromptConfig):
        return rundir.stage_status(out, prompting.comparable(cfg), prompting.prepare(cfg).inputs)
    if cfg.ensemble > 1:  # the votes of members that are stages of their own
        generation = job.cached_task(cfg.task, cfg.data_dir, cfg.seed, cfg.limit).kind == "generation"
        members = [out / f"member{k}" for k in range(cfg.ensemble)]
        return rundir.stage_status(out, config.comparable(cfg), ensemble.vote_inputs(members, generation))
    return rundir.stage_status(out, config.comparable(cfg), job.prepare(cfg).inputs)


def command(stage, out, python="python"):
    """The train.py (or python -m run.prompting) command line that runs `stage` on its own (what --print-commands
    prints)."""
    cfg = stage_cfg(stage, out)
    if isinstance(cfg, prompting.PromptConfig):
        script, head = prompting, [python, "-m", "run.prompting"]
        if Path.cwd() != ROOT:  # -m finds run/ from the root only
            head = ["env", f"PYTHONPATH={ROOT}"] + head
    else:
        script, head = train, [python, "train.py" if Path.cwd() == ROOT else str(ROOT / "train.py")]
    defaults = script.parse_args(["--task", cfg.task])  # the task's own defaults apply to train.py's flags
    return head + ["--task", cfg.task] + cli.flags_of(cfg, defaults, skip=("task",))
