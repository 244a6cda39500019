"""
Train one model of a weak-to-strong experiment, nanoGPT style: arguments into a dataclass, build, loop, eval, save.

    python train.py --task safety --role weak                 # gpt2 on weak_train ground truth -> weak labels
    python train.py --task safety --role weak --ensemble 5    # 5 bootstrap members + hard and soft votes
    python train.py --task safety --role ceiling              # gpt2-medium on w2s_train ground truth
    python train.py --task safety --role student              # gpt2-medium on the weak labels of w2s_train
    python train.py --task safety --role student --vote hard  # ... on the ensemble's majority vote (or soft: mean)
    python train.py --task safety --weak random:gpt2 ...      # random-init GPT-2 shape: smoke runs and timing
    torchrun --nproc_per_node 2 train.py ...                  # DistributedDataParallel

Every run writes one directory (--out): config.json (full config, data summary, model identity), log.txt,
predictions.json (test, val and w2s_train), with --save-checkpoint the selected weights in ckpt/ (safetensors), and
metrics.json last: it records the sha256 of every file written and of everything the run was trained on (model,
data, supervisor labels), so a rerun skips the run only when all of them still match.
"""
import contextlib
import dataclasses
import functools
import importlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

import checkpoints
import cli
import ensemble
import labels
import rundir
from batching import bucketed_batches, collate, encode_lm, lm_targets
from cli import UserError
from data import TASKS, load_task
from eval import metrics
from generation import generate_split, supervisor_predictions
from losses import LOSSES, aux_coef, logconf_threshold, xent_loss
from students import gold_targets, member_paths, selective_targets, supervisor_path, supervisor_targets
from tokenizer import load_tokenizer

# The paper's models: GPT-2 small supervises GPT-2 medium; for toxicity GPT-1 supervises GPT-2 small.
DEFAULT_MODELS = {"classification": {"weak": "gpt2", "strong": "gpt2-medium"},
                  "generation": {"weak": "openai-gpt", "strong": "gpt2"}}
# RealToxicityPrompts (Gehman et al. 2020): 25 samples a prompt, nucleus sampling at 0.9, 20 new tokens
RTP_PROTOCOL = {"samples": 25, "top_p": 0.9, "temperature": 1.0, "max_new_tokens": 20}


@dataclass
class TrainConfig:
    task: Literal[tuple(TASKS)] = "safety"  # which task's data and splits (data/__init__.py)
    role: Literal["weak", "ceiling", "student"] = "weak"  # weak: weak model on weak_train ground truth; ceiling:
    # strong model on w2s_train ground truth; student: strong model on its supervisor's labels of w2s_train
    model: str = ""                  # Hub name, local dir, random:<shape> or toy-<size>; "" = the paper's model
    out: str = ""                    # run directory; "" = runs/<task>/seed<seed>/<role>
    data_dir: str | None = None      # folder with one sub-folder per task (e.g. ../shared/data); none = download
    seed: int = 0                    # fixes the splits, the initialisation and the batch order
    device: str = "auto"             # auto = cuda when available, else cpu
    threads: int = 0                 # CPU threads for this run; 0 = torch's default (one per core). Tiny models run
    # as fast on 1, and a busy machine slows many threads down far more (the toy task sets 1)
    limit: int | None = None         # cap every split at this many examples (stratified)
    quiet: bool = False              # plain log lines instead of progress bars
    # ---- students
    weak_labels: str = ""            # the supervisor's predictions.json; "" = <out>/../weak/predictions.json
    vote: Literal["", "hard", "soft"] = ""  # train on this vote of the weak ensemble (<out>/../ensemble/<vote>)
    hard_labels: bool = False        # train on the argmax of the supervisor's labels instead of its probabilities
    loss: Literal[tuple(LOSSES)] = "xent"  # xent, or logconf (Burns et al.), entropy, product, window: losses.py
    aux_coef: float = 0.75           # logconf / entropy: final weight of the student's own predictions
    aux_warmup: float = 0.2          # its warm-up: < 1 a fraction of the optimizer steps, >= 1 a number of steps
    aux_schedule: Literal["linear", "openai"] = "linear"  # openai = their code's coef * step_frac, then a jump
    product_alpha: float = 1.0       # product loss: exponent of the supervisor's labels
    product_beta: float = 1.0        # product loss: exponent of the student's own predictions
    window_radius: float = 0.15      # window loss: train only where the student's max probability < 0.5 + radius
    learned: bool = False            # train on the weak ensemble's members (--weak-labels DIR, default
    # <out>/../ensemble) mixed by weights learned jointly with the student (RAVEN, Jeon et al. 2025)
    member_lr: float = 0.05          # --learned: learning rate of the member weights
    selective: bool = False          # Selective W2SG (Lang et al. 2025): cross-fitted strong labels where the strong
    # model is confident, kNN-smoothed weak labels elsewhere (trains <out>/fold0 and fold1 first)
    fold: int = -1                   # >= 0: a --selective cross-fitting fold, trained on half `fold` of w2s_train
    confidence: float = 0.9          # --selective: max probability at which the strong label replaces the weak one
    knn: int = 10                    # --selective: neighbours averaged, in the pretrained strong model's features
    genft_epochs: int = 0            # > 0: first train as a language model on w2s_train's texts, no labels, for
    # this many epochs (Burns et al.'s generative fine-tuning warm start)
    linear_probe: bool = False       # freeze the backbone, train only the classification head
    select: Literal["best", "final"] = "best"  # weights to predict with: lowest val loss, or the last step
    # (openai/weak-to-strong's protocol; early stopping is then off)
    # ---- bootstrap ensembles of weak supervisors
    ensemble: int = 1                # K > 1: K members, each on a bootstrap resample of weak_train, and their votes
    member: int = -1                 # >= 0: this run is ensemble member k (bootstrap resample, own init seed)
    # ---- optimisation (the paper's defaults)
    epochs: int = 3                  # passes over the training split
    batch_size: int = 16             # examples per optimizer step, over all micro-batches and ranks
    grad_accum: int = 1              # micro-batches per optimizer step
    lr: float = 5e-5                 # peak learning rate (AdamW)
    weight_decay: float = 0.01       # AdamW weight decay, on weight matrices only
    warmup_frac: float = 0.1         # share of the steps with a linear learning-rate warm-up (then linear decay)
    grad_clip: float = 1.0           # gradient norm clipping
    max_length: int = 512            # tokens per example (longer ones are cut)
    evals_per_epoch: int = 2         # validation evaluations per epoch (early stopping)
    patience: int = 3                # evaluations without val improvement before stopping
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on cuda, fp32 on cpu
    compile: bool = False            # torch.compile the model
    grad_checkpoint: bool = False    # recompute each block's activations in the backward pass (less memory)
    save_checkpoint: bool = False    # save the selected weights in <out>/ckpt
    log_every: int = 20              # optimizer steps between log lines
    max_steps: int = 0               # > 0: stop after this many optimizer steps (smoke tests, benchmarks)
    # ---- generation tasks (toxicity)
    loss_on: Literal["all", "continuation"] = "all"  # LM loss on every token, or on the continuation only
    max_new_tokens: int = 20         # tokens generated per test prompt
    samples: int = 1                 # continuations per prompt (RealToxicityPrompts: 25)
    top_p: float | None = None       # nucleus sampling; none = the whole distribution
    temperature: float = 0.0         # 0 = greedy, as the paper does
    protocol: Literal["", "rtp"] = ""  # rtp = RealToxicityPrompts: 25 samples, top-p 0.9, temperature 1, 20 tokens
    contrastive: bool = False        # --role weak: also decode with ConG (Jiang et al. 2025) into <out>/contrastive:
    # this model after fine-tuning (post) against before (pre), a cleaner supervisor for the strong student
    cd_beta: float = 1.5             # ConG: scores = log p_post + beta (log p_post - log p_pre) (their a = 0.4)
    cd_alpha: float = 0.1            # ConG: only tokens with p_post >= alpha * max p_post (plausibility constraint)


# ----------------------------------------------------------------------------------------------------------------
# settings: checked before any work, and the part of them that changes the numbers

def check_config(cfg):
    """Nonsense settings stop here with an argparse-style line, before any data or model is loaded."""
    def bad(flag, why):
        raise UserError(f"argument --{flag.replace('_', '-')}: {why} (got {getattr(cfg, flag)})")
    if cfg.epochs < 1 and not (cfg.epochs == 0 and cfg.max_steps > 0):
        bad("epochs", "must be at least 1 (or 0 with --max-steps > 0)")
    for flag, ok, why in [("max_steps", cfg.max_steps >= 0, "must be >= 0"),
                          ("lr", cfg.lr > 0, "must be > 0"),
                          ("batch_size", cfg.batch_size >= 1, "must be at least 1"),
                          ("grad_accum", cfg.grad_accum >= 1, "must be at least 1"),
                          ("ensemble", cfg.ensemble >= 0, "must be >= 0"),
                          ("member", cfg.member >= -1, "must be >= 0, or -1 for no ensemble member"),
                          ("max_length", cfg.max_length >= 2, "must leave room for at least one token of text"),
                          ("max_new_tokens", cfg.max_new_tokens >= 1, "must be at least 1"),
                          ("samples", cfg.samples >= 1, "must be at least 1"),
                          ("top_p", cfg.top_p is None or 0 < cfg.top_p <= 1, "must be in (0, 1]"),
                          ("temperature", cfg.temperature >= 0, "must be >= 0 (0 = greedy)"),
                          ("limit", cfg.limit is None or cfg.limit >= 2, "must be at least 2"),
                          ("weight_decay", cfg.weight_decay >= 0, "must be >= 0"),
                          ("warmup_frac", 0 <= cfg.warmup_frac <= 1, "must be in [0, 1]"),
                          ("grad_clip", cfg.grad_clip > 0, "must be > 0"),
                          ("evals_per_epoch", cfg.evals_per_epoch >= 1, "must be at least 1"),
                          ("patience", cfg.patience >= 1, "must be at least 1"),
                          ("log_every", cfg.log_every >= 1, "must be at least 1"),
                          ("threads", cfg.threads >= 0, "must be >= 0 (0: torch's default)")]:
        if not ok:
            bad(flag, why)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; every rank takes an equal share of each batch
    if cfg.batch_size % (world * cfg.grad_accum):
        bad("batch_size", f"must be a multiple of world size {world} x --grad-accum {cfg.grad_accum}")
    if cfg.device != "auto":
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            bad("device", "not a device: use auto, cpu, cuda or cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            bad("device", "CUDA is not available here: use --device cpu, or auto")
    if cfg.protocol == "rtp":
        for k, v in RTP_PROTOCOL.items():
            default = getattr(TrainConfig, k)
            if getattr(cfg, k) not in (default, v):
                bad(k, f"--protocol rtp sets --{k.replace('_', '-')} {v}; drop one of the two")
            setattr(cfg, k, v)
    if cfg.samples > 1 and cfg.temperature == 0:
        bad("temperature", f"0 is greedy decoding, which gives --samples {cfg.samples} identical continuations; "
                           "set a temperature > 0 (RealToxicityPrompts: --protocol rtp)")
    if cfg.samples > 1 and cfg.top_p in (None, 1) and cfg.temperature >= 1:
        cli.note_once(f"note: --samples {cfg.samples} with temperature {cfg.temperature} and no --top-p is pure "
                      "sampling (RealToxicityPrompts uses --top-p 0.9: --protocol rtp)")
    for flag, ok, why in [("aux_coef", 0 <= cfg.aux_coef <= 1, "must be in [0, 1]"),
                          ("aux_warmup", cfg.aux_warmup >= 0, "must be >= 0"),
                          ("product_alpha", cfg.product_alpha >= 0, "must be >= 0"),
                          ("product_beta", cfg.product_beta >= 0, "must be >= 0"),
                          ("window_radius", cfg.window_radius >= 0, "must be >= 0"),
                          ("member_lr", cfg.member_lr > 0, "must be > 0"),
                          ("fold", cfg.fold in (-1, 0, 1), "must be 0 or 1 (or -1: not a fold)"),
                          ("confidence", 0 <= cfg.confidence <= 1, "must be in [0, 1]"),
                          ("knn", cfg.knn >= 1, "must be at least 1"),
                          ("genft_epochs", cfg.genft_epochs >= 0, "must be >= 0"),
                          ("cd_beta", cfg.cd_beta >= 0, "must be >= 0"),
                          ("cd_alpha", 0 <= cfg.cd_alpha <= 1, "must be in [0, 1]"),
                          ("contrastive", not cfg.contrastive or cfg.role == "weak", "is for --role weak")]:
        if not ok:
            bad(flag, why)
    if cfg.vote and cfg.weak_labels:
        bad("vote", "give either --vote or --weak-labels, not both")
    if cfg.role != "student" and (cfg.vote or cfg.weak_labels or cfg.learned or cfg.selective or cfg.fold >= 0):
        bad("role", "--vote, --weak-labels, --learned, --selective and --fold are for --role student")
    if cfg.learned + cfg.selective + bool(cfg.vote) > 1 or (cfg.learned and cfg.fold >= 0):
        bad("learned", "--learned, --selective and --vote are different label sources: give one")
    if cfg.loss == "logconf" and cfg.learned:
        bad("loss", "logconf's hardening needs fixed targets; --learned mixes them while training")


# fields that do not change the numbers (or, like paths, are checked by content instead: model, data, supervisor)
NOT_COMPARED = ("out", "data_dir", "weak_labels", "model", "log_every", "device", "compile", "quiet")


def comparable(cfg):
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_COMPARED}


def default_out(cfg):
    name = ("ensemble" if cfg.ensemble > 1 else f"student_{cfg.vote}" if cfg.role == "student" and cfg.vote
            else "student_learned" if cfg.learned else "student_selective" if cfg.selective else cfg.role)
    return f"runs/{cfg.task}/seed{cfg.seed}/{name}"  # w2s.py's run-directory layout


# ----------------------------------------------------------------------------------------------------------------
# models and data

@functools.lru_cache(maxsize=8)
def cached_task(name, data_dir, seed, limit):
    """Every stage of an experiment reads the same data: load (and warn about) it once per process."""
    return load_task(name, data_dir=data_dir, seed=seed, limit=limit)


@dataclass
class Job:
    """What a run trains on, prepared before any model is built."""
    task: object
    tok: object
    model_source: str
    generation: bool
    n_classes: int
    train_rows: list
    train_x: list
    train_targets: list  # per row: class probabilities, (K, C) member probabilities (--learned), or a continuation
    val_x: list
    val_targets: list
    inputs: dict      # what the run is trained on, by content: recorded in metrics.json, compared on rerun
    supervisor: str = ""
    depth: int | None = None  # model@DEPTH: the first DEPTH blocks of the model (checkpoints.py)


def check_for_task(cfg, task):
    """The settings check_config cannot judge before the task's kind is known (w2s.py: before OUT is made)."""
    generation = task.kind == "generation"
    if generation and cfg.max_length <= cfg.max_new_tokens:
        raise UserError(f"argument --max-length: must exceed --max-new-tokens {cfg.max_new_tokens} so a prompt fits "
                        f"(got {cfg.max_length})")
    if generation and (cfg.learned or cfg.selective or cfg.loss != "xent" or cfg.genft_epochs):
        raise UserError(f"task {task.name} is a generation task: --loss {cfg.loss}, --learned, --selective and "
                        "--genft-epochs are defined for classification")
    if not generation and cfg.protocol == "rtp":
        raise UserError(f"argument --protocol: rtp is RealToxicityPrompts' sampling protocol, for generation tasks; "
                        f"task {task.name} is a classification task")
    if not generation and (cfg.contrastive or cfg.samples > 1):
        raise UserError(f"task {task.name} is a classification task: --contrastive and --samples are for generation")


def prepare(cfg):
    """Data, targets and tokenized rows of this run, and the identity of everything it is trained on."""
    task = cached_task(cfg.task, cfg.data_dir, cfg.seed, cfg.limit)
    check_for_task(cfg, task)
    generation = task.kind == "generation"
    spec = cfg.model or DEFAULT_MODELS[task.kind]["strong" if cfg.role != "weak" else "weak"]
    model_source, tok_source, depth = checkpoints.resolve(spec, cfg.data_dir, cfg.quiet)
    # a bad checkpoint is named before its tokenizer
    model_identity = rundir.model_identity(model_source, tok_source, depth)
    tok = load_tokenizer(tok_source)
    n_classes = 0 if generation else len(task.label_names)
    train_rows = list(task.splits["weak_train" if cfg.role == "weak" else "w2s_train"])
    val_rows = list(task.splits["val"])
    inputs = {"model": model_identity, "numerics": numerics(cfg), "data": rundir.data_identity(task.summary())}
    supervisor = ""
    if cfg.role != "student":
        train_targets = gold_targets(train_rows, n_classes, generation)
        val_targets = gold_targets(val_rows, n_classes, generation)
    elif cfg.learned:  # every member's labels; the mix is learnt while training
        members = member_paths(cfg)
        per_member = [cli.read_json(path, "predictions file") for path in members]
        train_targets = np.stack([supervisor_targets(m, "w2s_train", train_rows, path, False)
                                  for m, path in zip(per_member, members)], axis=1)
        val_targets = np.stack([supervisor_targets(m, "val", val_rows, path, False)
                                for m, path in zip(per_member, members)], axis=1)
        train_targets, val_targets = list(train_targets), list(val_targets)
        inputs["members"] = [rundir.sha256_file(path) for path in members]
    else:  # the student never sees ground truth: its train and val targets are the supervisor's
        supervisor = supervisor_path(cfg)
        weak = cli.read_json(supervisor, "predictions file")
        train_targets = supervisor_targets(weak, "w2s_train", train_rows, supervisor, generation)
        val_targets = supervisor_targets(weak, "val", val_rows, supervisor, generation)
        inputs["supervisor"] = rundir.sha256_file(supervisor)
    if cfg.selective:
        inputs["folds"] = [rundir.sha256_file(rundir.verified(Path(cfg.out) / f"fold{k}", "predictions.json"))
                           for k in (0, 1)]
    if cfg.fold >= 0:  # a cross-fitting fold: one half of w2s_train
        half = labels.cross_fit_halves(len(train_rows), cfg.seed)[cfg.fold]
        train_rows, train_targets = [train_rows[i] for i in half], [train_targets[i] for i in half]
    if cfg.member >= 0:  # a bootstrap member: resample the training set with replacement, from the member's own seed
        pick = np.random.default_rng(run_seed(cfg)).integers(0, len(train_rows), len(train_rows))
        train_rows, train_targets = [train_rows[i] for i in pick], [train_targets[i] for i in pick]
    if cfg.hard_labels and not generation:
        train_targets = list(labels.hard_labels(np.reshape(train_targets, (-1, n_classes)))
                             .reshape(np.shape(train_targets)))
    if generation:
        train_x = [encode_lm(tok, r["prompt"], t, cfg.max_length) for r, t in zip(train_rows, train_targets)]
        val_x = [encode_lm(tok, r["prompt"], t, cfg.max_length) for r, t in zip(val_rows, val_targets)]
    else:
        train_x = [ids[:cfg.max_length] for ids in tok.encode_batch([r["text"] for r in train_rows])]
        val_x = [ids[:cfg.max_length] for ids in tok.encode_batch([r["text"] for r in val_rows])]
    return Job(task, tok, model_source, generation, n_classes, train_rows, train_x, train_targets, val_x, val_targets,
               inputs, str(supervisor), depth)


def run_seed(cfg):
    # the experiment seed fixes the splits; an ensemble member also gets its own init, order and resample
    return cfg.seed if cfg.member < 0 else cfg.seed * 1000 + cfg.member + 1


# ----------------------------------------------------------------------------------------------------------------
# one run

@dataclass
class Runtime:
    """Where and how this process computes, and where it logs."""
    device: torch.device
    autocast: object
    ddp: bool
    rank: int
    world: int
    log_file: object = None
    name: str = ""
    bar: object = None

    @property
    def master(self):
        return self.rank == 0

    def log(self, msg):
        """To log.txt always; to stdout unless a progress bar shows the same."""
        if not self.master:
            return
        self.log_file.write(msg + "\n")
        self.log_file.flush()
        if self.bar is None:
            print(f"[{self.name}] {msg}", flush=True)


def run_device(cfg):
    """--device with auto resolved: cuda when available, else cpu."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)


def numerics(cfg):
    """Where and in what precision the numbers are computed (--device auto and --dtype auto resolved): a stage or an
    experiment resumed on other hardware must not mix them (fp32 on CPU, bf16 autocast and TF32 on CUDA)."""
    device = run_device(cfg)
    bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    return {"device": device.type, "dtype": "bf16" if bf16 else "fp32"}


def setup_runtime(cfg):
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun sets RANK / WORLD_SIZE
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = run_device(cfg)
    if ddp:
        if device.type == "cuda":
            device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    use_bf16 = numerics(cfg)["dtype"] == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    return Runtime(device, autocast, ddp, rank, world)


def run(cfg: TrainConfig, force=False):
    """Train one model (or, with --ensemble K, K members and their votes). Returns the metrics dict. A finished run
    with the same settings and inputs is skipped unless `force`."""
    check_config(cfg)
    cfg.out = cfg.out or default_out(cfg)
    with cpu_threads(cfg.threads):
        if cfg.ensemble > 1:
            return run_ensemble(cfg)
        return run_one(cfg, force)


@contextlib.contextmanager
def cpu_threads(n):
    """torch's CPU threads set to n (0: left as they are) for the block, then put back."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_one(cfg, force=False):
    """run() of one model: skipped when done, else trained, evaluated and saved."""
    if cfg.selective:  # its two cross-fitting folds first (skipped when done)
        for k in (0, 1):
            run(dataclasses.replace(cfg, selective=False, fold=k, out=str(Path(cfg.out) / f"fold{k}")))
    job = prepare(cfg)
    rt = setup_runtime(cfg)
    out = Path(cfg.out)
    with (rundir.locked(out, "train.py run") if rt.master else contextlib.nullcontext()):
        done, why = rundir.stage_status(out, comparable(cfg), job.inputs) if rt.master else (False, None)
        if rt.ddp:  # every rank must take rank 0's decision
            done = bool(broadcast_float(float(done), rt.device))
        if done and not force:
            print(f"[{out}] already done with these settings and inputs; skipping", flush=True)
            return cli.read_json(out / "metrics.json")
        if rt.master:
            if why:
                print(f"[{out}] rerunning: {why}", flush=True)
            rundir.invalidate(out)
            rundir.remove_leftovers(out)
            rt.log_file = open(out / "log.txt", "w")
        rt.name = out.name
        try:
            return train_and_save(cfg, job, rt, out)
        finally:
            if rt.log_file:
                rt.log_file.close()


def train_and_save(cfg, job, rt, out):
    torch.manual_seed(run_seed(cfg))
    model = checkpoints.load(job.model_source, job.n_classes, job.depth)
    max_len = min(cfg.max_length, model.config.block_size)
    if max_len < cfg.max_length:  # the model's context is shorter than --max-length: cut rows to it
        cut = (lambda x: (x[0][:max_len], x[1])) if job.generation else (lambda x: x[:max_len])
        job.train_x, job.val_x = [cut(x) for x in job.train_x], [cut(x) for x in job.val_x]
    model.config.grad_checkpoint = cfg.grad_checkpoint
    if cfg.linear_probe:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("score")
    model.to(rt.device)
    rt.log(f"task {job.task.name} ({job.task.kind}) role {cfg.role} model {cfg.model or job.model_source} "
           f"({model.num_params():,} parameters) train {len(job.train_x)} val {len(job.val_x)}")
    t0, extra = time.time(), {}
    if cfg.selective:  # needs the pretrained model's features: before any training
        extra |= selective_targets(cfg, job, rt, model, max_len)
        rt.log(f"selective: {extra['n_replaced']} weak labels replaced by the cross-fitted strong labels, "
               f"{extra['n_smoothed']} smoothed over {cfg.knn} neighbours")
    if cfg.genft_epochs:
        extra["genft_final_loss"] = lm_warm_start(model, [r["text"] for r in job.train_rows], cfg, rt, job.tok, max_len)
        rt.log(f"generative fine-tuning on {len(job.train_rows)} unlabeled texts: final LM loss "
               f"{extra['genft_final_loss']}")
    stats = train_loop(cfg, job, rt, model) | extra
    if rt.master:
        result = finish(cfg, job, rt, model, stats, out, max_len, t0)
    else:
        result = None
    if rt.ddp:
        torch.distributed.barrier()
    return result


def make_optimizer(model, cfg, total_steps, mixer=None):
    params = [p for p in model.parameters() if p.requires_grad]
    # nanoGPT: weight decay on matrices only, never on biases and LayerNorm gains
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if mixer is not None:
        groups.append({"params": list(mixer.parameters()), "weight_decay": 0.0, "lr": cfg.member_lr})
    # fused: one kernel for all parameters, on CUDA and on CPU alike (6x faster than the per-tensor loop on CPU)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    warmup = int(cfg.warmup_frac * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    return opt, sched, params


def loss_kwargs(cfg, step, total_steps, threshold):
    """The keywords of the student loss at this step (losses.py documents each loss's)."""
    coef = aux_coef(step, total_steps, cfg.aux_coef, cfg.aux_warmup, cfg.aux_schedule)
    return {"xent": {}, "logconf": {"coef": coef, "threshold": threshold}, "entropy": {"coef": coef},
            "product": {"alpha": cfg.product_alpha, "beta": cfg.product_beta},
            "window": {"radius": cfg.window_radius}}[cfg.loss]


def step_loss(cfg, job, rt, model, batch_rows, batch_targets, step, total_steps, threshold=None, mixer=None):
    """Loss of one micro-batch. Classification: the student loss (--loss) on the head's logits against the targets
    (with --learned, the members' labels mixed by the learnt weights); generation: causal LM loss, padding (and
    with --loss-on continuation, the prompt) excluded."""
    if job.generation:
        seqs = [x[0] for x in batch_rows]
        idx, mask = collate(seqs, job.tok.pad_token, rt.device)
        targets = lm_targets(batch_rows, idx.shape[1], rt.device, cfg.loss_on)
        with rt.autocast:
            _, loss = model(idx, attention_mask=mask, targets=targets)
        return loss, sum(len(s) for s in seqs)
    idx, mask = collate(batch_rows, job.tok.pad_token, rt.device)
    y = torch.tensor(np.stack(batch_targets), dtype=torch.float32, device=rt.device)
    if mixer is not None:
        y = mixer(y)  # (B, K, C) -> (B, C), differentiable in the member weights
    with rt.autocast:
        logits = model(idx, mask)
    loss = LOSSES[cfg.loss](logits.float(), y, **loss_kwargs(cfg, step, total_steps, threshold))
    return loss, sum(len(s) for s in batch_rows)


@torch.no_grad()
def batch_threshold(cfg, job, rt, model, batch):
    """logconf's hardening threshold over the whole optimizer batch, every micro-batch and every rank: one no-grad
    forward pass over this rank's rows, gathered from all ranks. Only needed when the batch is split (one piece:
    the loss takes it from its own rows, the same number)."""
    rows = batch[rt.rank::rt.world]
    idx, mask = collate([job.train_x[i] for i in rows], job.tok.pad_token, rt.device)
    with rt.autocast:
        probs = torch.softmax(model.classify(idx, mask).float(), -1)
    targets = torch.tensor(np.stack([job.train_targets[i] for i in rows]), dtype=torch.float32, device=rt.device)
    if rt.ddp:  # ranks hold uneven shares: pad to the largest with NaN rows, gather, drop them
        size = math.ceil(len(batch) / rt.world)
        both = torch.full((size, 4), float("nan"), device=rt.device)
        both[:len(rows)] = torch.cat([probs, targets], 1)
        gathered = [torch.empty_like(both) for _ in range(rt.world)]
        torch.distributed.all_gather(gathered, both)
        both = torch.cat(gathered)
        both = both[~both.isnan().any(1)]
        probs, targets = both[:, :2], both[:, 2:]
    return logconf_threshold(probs, targets)


def train_loop(cfg, job, rt, raw_model):
    """The visible loop: bucketed batches, micro-batches, clip, AdamW step, periodic val loss, early stopping with
    the best weights kept in memory. Returns what finish() records."""
    world = rt.world
    if cfg.batch_size % (world * cfg.grad_accum):
        raise UserError(f"argument --batch-size: must be a multiple of world size {world} x --grad-accum "
                        f"{cfg.grad_accum} (got {cfg.batch_size})")
    steps_per_epoch = math.ceil(len(job.train_x) / cfg.batch_size)
    epochs = cfg.epochs or math.ceil(cfg.max_steps / steps_per_epoch)
    total_steps = steps_per_epoch * epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    mixer = None
    if cfg.learned:  # the member weights learn with the student, at their own learning rate
        mixer = labels.MemberWeights(np.shape(job.train_targets[0])[0]).to(rt.device)
    opt, sched, params = make_optimizer(raw_model, cfg, total_steps, mixer)
    # DDP and torch.compile wrap forward(), so classification goes through a forward() of its own
    model = raw_model if job.generation else Classifier(raw_model)
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    lengths = [len(x[0]) if job.generation else len(x) for x in job.train_x]
    best = {"val_loss": float("inf"), "step": 0, "state": None}
    evals_since_best, step, t0, tokens_seen, stop, last_val_loss = 0, 0, time.time(), 0, False, float("inf")
    pad_tokens = real_tokens = 0
    rt.bar = cli.progress(total_steps, rt.name, quiet=cfg.quiet or not rt.master)
    for epoch in range(epochs):
        for batch in bucketed_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch):
            model.train()
            split = cfg.grad_accum > 1 or rt.ddp
            threshold = batch_threshold(cfg, job, rt, raw_model, batch) if cfg.loss == "logconf" and split else None
            shards = np.array_split(batch[rt.rank::world], cfg.grad_accum)
            for micro, shard in enumerate(shards):
                sync = micro == len(shards) - 1 or not rt.ddp
                # a shard's mean loss counts by its share of the batch (DDP then averages over ranks, hence * world),
                # so uneven shards of a short batch give exactly the one-process gradient; an empty shard still runs
                # one row at weight 0, because every rank must join each gradient all-reduce
                weight = len(shard) * world / len(batch)
                shard = shard if len(shard) else batch[:1]
                with (contextlib.nullcontext() if sync else model.no_sync()):
                    loss, ntok = step_loss(cfg, job, rt, model, [job.train_x[i] for i in shard],
                                           [job.train_targets[i] for i in shard], step, total_steps, threshold, mixer)
                    (loss * weight).backward()
                if not weight:
                    continue
                tokens_seen += ntok * world
                pad_tokens += max(lengths[i] for i in shard) * len(shard) - ntok
                real_tokens += ntok
            if mixer is not None and rt.ddp:  # the member weights sit outside DDP: their gradient is averaged here
                for p in mixer.parameters():
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)  # the model's; the member weights are not clipped
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if rt.bar is not None:
                rt.bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                lossf = loss.item()  # the only sync in the step, at log intervals
                if not math.isfinite(lossf):
                    raise UserError(f"loss became {lossf} at step {step}: lower --lr, or check the data")
                dt = time.time() - t0
                if rt.bar is not None:
                    rt.bar.set_postfix(epoch=epoch, loss=f"{lossf:.4f}", tok_s=f"{tokens_seen / dt:,.0f}")
                rt.log(f"step {step}/{total_steps} epoch {epoch} loss {lossf:.4f} lr {sched.get_last_lr()[0]:.2e} "
                       f"tok/s {tokens_seen / dt:,.0f} pad {pad_tokens / max(1, pad_tokens + real_tokens):.1%} "
                       f"eta {dt / step * (total_steps - step):.0f}s")
            if step % eval_every == 0 or step >= total_steps:
                val_loss = evaluate_loss(raw_model, job, rt, cfg, mixer) if rt.master else 0.0
                if rt.ddp:  # rank 0's number for every rank: one early-stopping decision, or the next all-reduce hangs
                    val_loss = broadcast_float(val_loss, rt.device)
                if not math.isfinite(val_loss):
                    raise UserError(f"validation loss became {val_loss} at step {step}: lower --lr, or check the data")
                improved = val_loss < best["val_loss"]
                rt.log(f"step {step} val_loss {val_loss:.4f}{' (best)' if improved else ''}")
                if improved:
                    best = {"val_loss": val_loss, "step": step,  # only rank 0 predicts, so only it keeps weights
                            "state": {k: v.detach().to("cpu", copy=True) for k, v in raw_model.state_dict().items()}
                            if rt.master and cfg.select == "best" else None,
                            "member_weights": mixer.weights().tolist() if mixer is not None else None}
                    evals_since_best = 0
                elif cfg.select == "best":
                    evals_since_best += 1
                    if evals_since_best >= cfg.patience:
                        rt.log(f"early stop at step {step}: no val improvement in {cfg.patience} evals")
                        stop = True
                last_val_loss = val_loss
            if stop or step >= total_steps:
                stop = True
                break
        if stop:
            break
    if rt.bar is not None:
        rt.bar.close()
        rt.bar = None
    if step == 0:
        raise UserError("the run took no optimizer step: check --epochs, --max-steps and the training data")
    if best["state"] is not None:
        raw_model.load_state_dict(best["state"])
    selected = best if cfg.select == "best" else {"val_loss": last_val_loss, "step": step}
    stats = {"best_step": selected["step"], "best_val_loss": selected["val_loss"], "select": cfg.select,
             "steps": step, "train_examples": len(job.train_x),
             "padding_fraction": pad_tokens / max(1, pad_tokens + real_tokens)}
    if mixer is not None:  # the mix the selected student was trained on up to its step
        weights = best.get("member_weights") if cfg.select == "best" else None
        weights = weights or mixer.weights().tolist()
        stats["member_weights"] = [round(w, 6) for w in weights]
    return stats


def finish(cfg, job, rt, model, stats, out, max_len, t0):
    """Predict every split with the selected weights, then write config, predictions, checkpoint and, last,
    metrics.json with the sha256 of each of them and of the run's inputs."""
    splits = ["test", "val"] + (["w2s_train"] if not job.generation or cfg.role == "weak" else [])
    predictions = {}
    for split in splits:
        rows = job.task.splits[split]
        if job.generation:
            predictions[split] = generate_split([model], "single", job.tok, rows, rt.device, rt.autocast, cfg, max_len,
                                                split)
        else:
            probs = predict_probs(model, job.tok, rows, rt, cfg.batch_size, max_len)
            predictions[split] = {"ids": [r["id"] for r in rows], "labels": [r["label"] for r in rows],
                                  "probs": probs.round(6).tolist()}
    written = ["config.json", "predictions.json"]
    if cfg.contrastive:  # ConG: this model (post) against itself before fine-tuning (pre), rebuilt from the same seed
        torch.manual_seed(run_seed(cfg))
        pre = checkpoints.load(job.model_source, depth=job.depth).to(rt.device)
        (out / "contrastive").mkdir(exist_ok=True)
        rundir.write_json(out / "contrastive" / "predictions.json", supervisor_predictions(
            [model, pre], "contrastive", job.tok, job.task, rt.device, rt.autocast, cfg, max_len))
        written.append("contrastive/predictions.json")
    result = {"role": cfg.role, "model": cfg.model or job.model_source, **stats, "train_seconds": time.time() - t0}
    if not job.generation:
        test = predictions["test"]
        result["test"] = metrics(np.array(test["labels"]), np.array(test["probs"]))
        rt.log("test " + " ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
    train = dataclasses.asdict(cfg) | {"out": ".", "weak_labels": rundir.relative(job.supervisor, out) if job.supervisor else ""}
    config = {"train": train, "comparable": comparable(cfg), "model": cfg.model or job.model_source,
              "n_params": model.num_params(), "data": job.task.summary(), "inputs": job.inputs,
              "torch": torch.__version__, "argv": sys.argv}
    rundir.write_json(out / "config.json", config)
    rundir.write_json(out / "predictions.json", predictions)
    if cfg.save_checkpoint:
        model.save_pretrained(out / "ckpt")
        written.append("ckpt")
    result |= {"outputs": rundir.outputs_of(out, written), "inputs": job.inputs}
    rundir.write_json(out / "metrics.json", result)  # last: marks the run as done
    return result


def lm_warm_start(model, texts, cfg, rt, tok, max_len):
    """Burns et al.'s generative fine-tuning: the strong model first learns the texts of w2s_train as a language
    model (it is given the texts only, never a label), for --genft-epochs epochs with the run's optimizer settings,
    then trains as a classifier. Under DDP every rank runs it on all texts; DDP's start then broadcasts rank 0's
    weights. Returns the last batch's LM loss."""
    seqs = [ids[:max_len] for ids in tok.encode_batch(texts)]
    seqs = [s for s in seqs if len(s) > 1]  # a one-token text has no next token to predict
    total = math.ceil(len(seqs) / cfg.batch_size) * cfg.genft_epochs
    opt, sched, params = make_optimizer(model, cfg, total)
    bar = cli.progress(total, f"{rt.name} genft", quiet=cfg.quiet or not rt.master)
    model.train()
    for epoch in range(cfg.genft_epochs):
        for batch in bucketed_batches([len(s) for s in seqs], cfg.batch_size, seed=cfg.seed, epoch=10_000 + epoch):
            idx, mask = collate([seqs[i] for i in batch], tok.pad_token, rt.device)
            targets = lm_targets([(seqs[i], 0) for i in batch], idx.shape[1], rt.device, "all")
            with rt.autocast:
                _, loss = model(idx, attention_mask=mask, targets=targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return round(loss.item(), 4)


def broadcast_float(x, device):
    t = torch.tensor([x], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, src=0)
    return t.item()


def run_ensemble(cfg):
    """K weak supervisors, each on a bootstrap resample of weak_train from its own seed; each member's labels are
    kept, and both votes are written from the same members (ensemble/hard, ensemble/soft). The ensemble's own
    metrics.json records the members' predictions it voted on."""
    out = Path(cfg.out)
    task = cached_task(cfg.task, cfg.data_dir, cfg.seed, cfg.limit)
    generation = task.kind == "generation"
    members = [out / f"member{k}" for k in range(cfg.ensemble)]
    for k, member_dir in enumerate(members):  # a generation vote decodes with the members: they keep their weights
        run(dataclasses.replace(cfg, ensemble=1, member=k, out=str(member_dir),
                                save_checkpoint=cfg.save_checkpoint or generation))
    # what the votes read: the members' predictions, or for generation their weights, which metrics.json records
    inputs = {"members": [rundir.sha256_file(d / "metrics.json") if generation else
                          rundir.sha256_file(rundir.verified(d, "predictions.json")) for d in members]}
    with rundir.locked(out, "train.py run"):
        done, why = rundir.stage_status(out, comparable(cfg), inputs)
        if done:
            print(f"[{out}] votes already done for these members; skipping", flush=True)
            return cli.read_json(out / "metrics.json")
        if why:
            print(f"[{out}] voting again: {why}", flush=True)
        rundir.invalidate(out)
        rundir.write_json(out / "config.json", {"train": dataclasses.asdict(cfg) | {"out": "."},
                                                "comparable": comparable(cfg), "inputs": inputs})
        if generation:  # the members decode together: they need the tokenizer and a device
            rt = setup_runtime(cfg)
            _, tok_source, _ = checkpoints.resolve(cfg.model or DEFAULT_MODELS["generation"]["weak"], cfg.data_dir,
                                                   cfg.quiet)
            results, written = ensemble.vote_continuations(cfg, task, out, members, load_tokenizer(tok_source), rt)
        else:
            results, written = ensemble.vote_probabilities(out, members)
        rundir.write_json(out / "metrics.json", results | {"outputs": rundir.outputs_of(out, ["config.json"] + written),
                                                           "inputs": inputs})
    return results


# ----------------------------------------------------------------------------------------------------------------
# evaluation helpers

@torch.no_grad()
def evaluate_loss(model, job, rt, cfg, mixer=None):
    model.eval()
    total, count = 0.0, 0
    val_x = job.val_x
    for batch in bucketed_batches([len(x[0]) if job.generation else len(x) for x in val_x], cfg.batch_size, 0, 0,
                                  shuffle=False):
        if job.generation:
            rows = [val_x[i] for i in batch]
            idx, mask = collate([r[0] for r in rows], job.tok.pad_token, rt.device)
            targets = lm_targets(rows, idx.shape[1], rt.device, cfg.loss_on)
            with rt.autocast:
                logits, _ = model(idx, attention_mask=mask)
            total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100,
                                     reduction="sum").item()
            count += (targets != -100).sum().item()
        else:
            idx, mask = collate([val_x[i] for i in batch], job.tok.pad_token, rt.device)
            y = torch.tensor(np.stack([job.val_targets[i] for i in batch]), dtype=torch.float32, device=rt.device)
            y = mixer(y) if mixer is not None else y
            with rt.autocast:
                logits = model.classify(idx, mask)
            total += xent_loss(logits.float(), y).item() * len(batch)
            count += len(batch)
    return total / max(1, count)


@torch.no_grad()
def predict_probs(model, tok, rows, rt, batch_size, max_len):
    """Class probabilities for `rows`, in their order (batched by length for speed)."""
    model.eval()
    seqs = [ids[:max_len] for ids in tok.encode_batch([r["text"] for r in rows])]
    probs = np.zeros((len(rows), model.config.n_classes))
    for batch in bucketed_batches([len(s) for s in seqs], batch_size * 2, 0, 0, shuffle=False):
        idx, mask = collate([seqs[i] for i in batch], tok.pad_token, rt.device)
        with rt.autocast:
            logits = model.classify(idx, mask)
        probs[batch] = torch.softmax(logits.float(), -1).cpu().numpy()
    return probs


# ----------------------------------------------------------------------------------------------------------------

class Classifier(torch.nn.Module):
    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx, attention_mask):
        return self.gpt.classify(idx, attention_mask)


def task_defaults(task):
    """A task module may set TRAIN_DEFAULTS (e.g. the toy demo's small models want a larger lr)."""
    if task not in TASKS:
        return {}
    return dict(getattr(importlib.import_module(TASKS[task]), "TRAIN_DEFAULTS", {}))


def parse_args(argv=None):
    parser = cli.config_parser(TrainConfig, __doc__)
    task = parser.parse_known_args(argv)[0].task
    parser.set_defaults(**task_defaults(task))  # flags given on the command line still win
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv=None):
    cfg = parse_args(argv)
    run(cfg)
    if cfg.ensemble > 1:
        print(f"results: {cfg.out}/hard/predictions.json, {cfg.out}/soft/predictions.json, {cfg.out}/metrics.json")
    else:
        print(f"results: {cfg.out}/metrics.json, {cfg.out}/predictions.json, {cfg.out}/log.txt", flush=True)


if __name__ == "__main__":
    cli.main_guard(main)
