"""
The settings of one training run (train.py) and their checks, before any data or model is loaded: the TrainConfig
dataclass (its flags: cli.config_parser), check_config and check_for_task (one argparse-style line for nonsense),
the part of a config that changes the numbers (comparable: what a rerun compares), a run's default directory, its
seed, and a task module's own defaults (TRAIN_DEFAULTS). w2s.py builds every stage's config from these.
"""
import dataclasses
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Literal

import torch

from core import cli
from core.cli import UserError
from data import TASKS
from methods.losses import LOSSES
from run import tracking

# The paper's models: GPT-2 small supervises GPT-2 medium; for toxicity GPT-1 supervises GPT-2 small.
DEFAULT_MODELS = {"classification": {"weak": "gpt2", "strong": "gpt2-medium"},
                  "generation": {"weak": "openai-gpt", "strong": "gpt2"}}
PACKAGED_MODEL = "smollm2-135m"  # the real pretrained model a machine without the Hub can have (packaged.py)
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
    track: str = ""                  # wandb or tensorboard: log loss, lr, tokens/s and val loss as the run goes,
    # then its final metrics (tracking.py; pip install -e ".[track]"); "" = off. Changes no number
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
    agreement_epochs: int = 0        # --learned: for the first N epochs only the examples every member gives the same
    # class count; the others get zero weight (RAVEN's disagreement schedule); 0 = all examples from the start
    selective: bool = False          # Selective W2SG (Lang et al. 2025): cross-fitted strong labels where the strong
    # model is confident, kNN-smoothed weak labels elsewhere (trains <out>/fold0 and fold1 first)
    fold: int = -1                   # >= 0: a --selective cross-fitting fold, trained on half `fold` of w2s_train
    confidence: float = 0.9          # --selective: max probability at which the strong label replaces the weak one
    knn: int = 10                    # --selective: neighbours averaged, in the pretrained strong model's features
    genft_epochs: int = 0            # > 0: first train as a language model on w2s_train's texts, no labels, for
    # this many epochs (Burns et al.'s generative fine-tuning warm start)
    linear_probe: bool = False       # freeze the backbone, train only the classification head
    train_layers: str = "all"        # all = full fine-tuning; K >= 0 = only the top K blocks and the head (0: a
    # linear probe) on the frozen bottom's outputs, computed once per text and cached for every stage (features.py);
    # generation tasks: K >= 1 top blocks and the final norm of the language model, its bottom run at every step
    recompute_bottom: bool = False   # --train-layers K: run the frozen bottom at every step instead of reading its
    # cached outputs (the reference the cache equals)
    probe: Literal["fit", "sgd"] = "fit"  # --train-layers 0: fit = the head fitted to convergence (full-batch
    # L-BFGS from zero on standardized features, the L2 penalty by cross-validation on the stage's own training
    # targets: probe.py); sgd = trained like a fine-tuned model (AdamW, --lr, --epochs: the tables before fitted probes)
    probe_folds: int = 5             # --probe fit: folds of the cross-validation that picks the penalty
    lora_rank: int = 0               # > 0: LoRA (lora.py): freeze the model, train rank-R adapters of every attention
    # and MLP projection and, for classification, the head in full; 0 = no LoRA
    lora_alpha: float = 8.0          # --lora-rank: the adapters' update is scaled by alpha / rank (peft's default 8)
    lora_save: Literal["merged", "adapters"] = "merged"  # --lora-rank with --save-checkpoint: ckpt/ holds the
    # adapters merged into the weights (a standard checkpoint), or the adapters and head alone (with the base's name)
    select: Literal["best", "final", "objective"] = "best"  # weights to predict with: lowest val loss against the
    # supervisor's labels (cross entropy), the last step (openai/weak-to-strong's protocol; no early stopping), or
    # lowest val value of the student's own training loss (--loss with its schedule at that step)
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
    check_run_settings(cfg)
    check_decoding(cfg)
    check_student_settings(cfg)


def bad(cfg, flag, why):
    raise UserError(f"argument --{flag.replace('_', '-')}: {why} (got {getattr(cfg, flag)})")


def check_run_settings(cfg):
    """Optimisation, sizes and the device."""
    if cfg.epochs < 1 and not (cfg.epochs == 0 and cfg.max_steps > 0):
        bad(cfg, "epochs", "must be at least 1 (or 0 with --max-steps > 0)")
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
            bad(cfg, flag, why)
    if cfg.track not in ("", *tracking.TRACKERS):
        bad(cfg, "track", f"must be {' or '.join(tracking.TRACKERS)} (or empty: off)")
    if cfg.track and importlib.util.find_spec(cfg.track) is None:
        bad(cfg, "track", f'needs the {cfg.track} package: pip install -e ".[track]"')
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; every rank takes an equal share of each batch
    if cfg.batch_size % (world * cfg.grad_accum):
        bad(cfg, "batch_size", f"must be a multiple of world size {world} x --grad-accum {cfg.grad_accum}")
    if cfg.device != "auto":
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            bad(cfg, "device", "not a device: use auto, cpu, cuda or cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            bad(cfg, "device", "CUDA is not available here: use --device cpu, or auto")


def check_decoding(cfg):
    """Generation tasks' sampling: --protocol rtp sets four flags, and several samples need a temperature."""
    if cfg.protocol == "rtp":
        for k, v in RTP_PROTOCOL.items():
            default = getattr(TrainConfig, k)
            if getattr(cfg, k) not in (default, v):
                bad(cfg, k, f"--protocol rtp sets --{k.replace('_', '-')} {v}; drop one of the two")
            setattr(cfg, k, v)
    if cfg.samples > 1 and cfg.temperature == 0:
        bad(cfg, "temperature", f"0 is greedy decoding, which gives --samples {cfg.samples} identical continuations; "
                                "set a temperature > 0 (RealToxicityPrompts: --protocol rtp)")
    if cfg.samples > 1 and cfg.top_p in (None, 1) and cfg.temperature >= 1:
        cli.note_once(f"note: --samples {cfg.samples} with temperature {cfg.temperature} and no --top-p is pure "
                      "sampling (RealToxicityPrompts uses --top-p 0.9: --protocol rtp)")


def check_student_settings(cfg):
    """The student methods' knobs, and which label sources go together."""
    for flag, ok, why in [("aux_coef", 0 <= cfg.aux_coef <= 1, "must be in [0, 1]"),
                          ("aux_warmup", cfg.aux_warmup >= 0, "must be >= 0"),
                          ("product_alpha", cfg.product_alpha >= 0, "must be >= 0"),
                          ("product_beta", cfg.product_beta >= 0, "must be >= 0"),
                          ("window_radius", cfg.window_radius >= 0, "must be >= 0"),
                          ("member_lr", cfg.member_lr > 0, "must be > 0"),
                          ("agreement_epochs", cfg.agreement_epochs >= 0, "must be >= 0"),
                          ("fold", cfg.fold in (-1, 0, 1), "must be 0 or 1 (or -1: not a fold)"),
                          ("confidence", 0 <= cfg.confidence <= 1, "must be in [0, 1]"),
                          ("knn", cfg.knn >= 1, "must be at least 1"),
                          ("probe_folds", cfg.probe_folds >= 2, "must be at least 2"),
                          ("genft_epochs", cfg.genft_epochs >= 0, "must be >= 0"),
                          ("cd_beta", cfg.cd_beta >= 0, "must be >= 0"),
                          ("cd_alpha", 0 <= cfg.cd_alpha <= 1, "must be in [0, 1]"),
                          ("contrastive", not cfg.contrastive or cfg.role == "weak", "is for --role weak")]:
        if not ok:
            bad(cfg, flag, why)
    if cfg.vote and cfg.weak_labels:
        bad(cfg, "vote", "give either --vote or --weak-labels, not both")
    if cfg.role != "student" and (cfg.vote or cfg.weak_labels or cfg.learned or cfg.selective or cfg.fold >= 0):
        bad(cfg, "role", "--vote, --weak-labels, --learned, --selective and --fold are for --role student")
    if cfg.learned + cfg.selective + bool(cfg.vote) > 1 or (cfg.learned and cfg.fold >= 0):
        bad(cfg, "learned", "--learned, --selective and --vote are different label sources: give one")
    if cfg.loss == "logconf" and cfg.learned:
        bad(cfg, "loss", "logconf's hardening needs fixed targets; --learned mixes them while training")
    check_train_layers(cfg)
    check_lora(cfg)


def check_train_layers(cfg):
    """--train-layers: all, or a number of top blocks; and what training only the top cannot go with."""
    if cfg.train_layers != "all" and not (cfg.train_layers.isdigit() and cfg.train_layers == str(int(cfg.train_layers))):
        bad(cfg, "train_layers", "must be all or a whole number of top blocks >= 0 (0: the head alone)")
    if cfg.train_layers != "all" and (cfg.linear_probe or cfg.genft_epochs):
        bad(cfg, "train_layers", "trains the top of a frozen model: --linear-probe is --train-layers 0, and "
                                 "--genft-epochs fine-tunes the whole model")
    if cfg.recompute_bottom and cfg.train_layers == "all":
        bad(cfg, "recompute_bottom", "is for --train-layers K (nothing is frozen with all)")


def check_lora(cfg):
    """--lora-rank R: its own knobs, and the ways of freezing a model it cannot be combined with."""
    if cfg.lora_rank < 0:
        bad(cfg, "lora_rank", "must be a whole number of adapter dimensions >= 1 (0: no LoRA)")
    if not cfg.lora_rank:
        if cfg.lora_alpha != TrainConfig.lora_alpha or cfg.lora_save != TrainConfig.lora_save:
            bad(cfg, "lora_rank", "must be >= 1 for --lora-alpha and --lora-save (LoRA is off at 0)")
        return
    if not cfg.lora_alpha > 0:
        bad(cfg, "lora_alpha", "must be > 0")
    if cfg.train_layers != "all" or cfg.linear_probe:
        bad(cfg, "lora_rank", "adapts every block of the model: it needs --train-layers all and no --linear-probe "
                              "(--train-layers K trains the top K blocks in full instead)")


# fields that do not change the numbers (or, like paths, are checked by content instead: model, data, supervisor)
NOT_COMPARED = ("out", "data_dir", "weak_labels", "model", "log_every", "device", "compile", "quiet", "track")


def comparable(cfg):
    """The settings a finished stage must match. LoRA's knobs count only with LoRA on, RAVEN's schedule only when
    set, the probe's only for a fitted head, so stages run before they existed (the same numbers) are still found
    done (an SGD probe of --train-layers 0 among them)."""
    off = (("lora_rank", "lora_alpha", "lora_save") if not cfg.lora_rank else ()) + \
        (("agreement_epochs",) if not cfg.agreement_epochs else ()) + \
        (("probe", "probe_folds") if not fitted_probe(cfg) else ())
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_COMPARED + off}


def fitted_probe(cfg):
    """Whether the run's head is fitted (probe.py) rather than trained by SGD."""
    return cfg.train_layers == "0" and cfg.probe == "fit"


def default_out(cfg):
    name = ("ensemble" if cfg.ensemble > 1 else f"student_{cfg.vote}" if cfg.role == "student" and cfg.vote
            else "student_learned" if cfg.learned else "student_selective" if cfg.selective else cfg.role)
    return f"runs/{cfg.task}/seed{cfg.seed}/{name}"  # w2s.py's run-directory layout


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
    if generation and cfg.train_layers == "0":
        raise UserError(f"argument --train-layers: task {task.name} is a generation task, whose language model "
                        "has no head of its own to train alone: give K >= 1 top blocks, or all")
    if generation and cfg.recompute_bottom:
        raise UserError(f"argument --recompute-bottom: task {task.name} is a generation task, whose frozen bottom "
                        "runs at every step already (its features are not stored)")


def run_seed(cfg):
    # the experiment seed fixes the splits; an ensemble member also gets its own init, order and resample
    return cfg.seed if cfg.member < 0 else cfg.seed * 1000 + cfg.member + 1


def task_defaults(task):
    """A task module may set TRAIN_DEFAULTS (e.g. the toy demo's small models want a larger lr)."""
    if task not in TASKS:
        return {}
    return dict(getattr(importlib.import_module(TASKS[task]), "TRAIN_DEFAULTS", {}))


def parse_args(argv=None, description=None):
    """TrainConfig from command-line flags (`description`: the --help text), the task's TRAIN_DEFAULTS applied."""
    parser = cli.config_parser(TrainConfig, description)
    task = parser.parse_known_args(argv)[0].task
    parser.set_defaults(**task_defaults(task))  # flags given on the command line still win
    return TrainConfig(**vars(parser.parse_args(argv)))
