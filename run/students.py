"""
Where a student's targets come from: gold labels (weak model, ceiling), a supervisor's predictions (weak labels, a
vote of the weak ensemble), every ensemble member's labels (--learned), or Selective W2SG's cross-fitted mix
(--selective); and Burns et al.'s generative fine-tuning, a student's warm start on w2s_train's texts (--genft-epochs).
The label transforms themselves are in labels.py; the losses that train on the targets in losses.py.
"""
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from core import cli
from core.cli import UserError
from methods import labels
from run import config, rundir
from run.batching import bucketed_batches, collate, lm_targets
from run.features import Features
from run.optim import make_optimizer, optimizer_step


def gold_targets(rows, n_classes, generation):
    if generation:
        return [r["continuation"] for r in rows]
    return [np.eye(n_classes)[r["label"]] for r in rows]


def supervisor_targets(weak, split, rows, path, generation):
    """The supervisor's predictions for `rows`, checked to be for exactly these examples."""
    if split not in weak:
        raise UserError(f"{path} has no predictions for split '{split}'")
    ids = [r["id"] for r in rows]
    if weak[split]["ids"] != ids:
        raise UserError(f"{path}: predictions for '{split}' are for other examples than this task's split "
                        "(different --seed, --limit or data?)")
    if generation:
        return [c[0] if isinstance(c, list) else c for c in weak[split]["continuations"]]
    return [np.asarray(p, dtype=np.float64) for p in weak[split]["probs"]]


def supervisor_path(cfg):
    """The predictions.json a student learns from, checked against the sha256 its own stage recorded (when it comes
    from a finished run), so a tampered or truncated file is refused here, not trained on."""
    out = Path(cfg.out)
    path = Path(cfg.weak_labels or (out.parent / "ensemble" / cfg.vote if cfg.vote else out.parent / "weak") /
                "predictions.json")
    if cfg.fold >= 0 and not cfg.weak_labels:  # a fold of <stage>/fold<k>: the stage's supervisor
        path = out.parent.parent / "weak" / "predictions.json"
    if not path.is_file() and (cfg.weak_labels or cfg.fold >= 0 or not hasattr(cfg, "task")):
        raise UserError(f"weak labels not found: {path} (run --role weak first, with --ensemble K for --vote, or pass "
                        "--weak-labels)")
    if not path.is_file():
        raise UserError(f"weak labels not found: {path}; make them first: {weak_command(cfg, path)} (or every stage "
                        f"at once: python w2s.py --task {cfg.task}{split_flags(cfg, '--seeds')}{data_flag(cfg)})")
    for stage in (path.parent, path.parent.parent):  # weak/predictions.json, ensemble/hard/predictions.json
        record = stage / "metrics.json"
        if record.is_file() and str(path.relative_to(stage)) in cli.read_json(record).get("outputs", {}):
            return rundir.verified(stage, str(path.relative_to(stage)))
    return path


def weak_command(cfg, path):
    """The train.py command that writes `path`, the weak labels a student of `cfg` reads by default: the same data,
    seed and limit (the splits), the supervisor's directory."""
    stage = path.parent.parent if cfg.vote else path.parent  # ensemble/hard/predictions.json: the ensemble's
    flags = ["--task", cfg.task, "--role", "weak"] + (["--ensemble", "5"] if cfg.vote else [])
    default = Path(config.default_out(dataclasses.replace(cfg, role="weak", vote="", ensemble=5 if cfg.vote else 1)))
    flags += [] if stage == default else ["--out", str(stage)]
    return "python train.py " + " ".join(flags) + split_flags(cfg) + data_flag(cfg)


def split_flags(cfg, seed_flag="--seed"):
    """The flags that fix the splits, where they are not the defaults."""
    return (f" {seed_flag} {cfg.seed}" if cfg.seed else "") + (f" --limit {cfg.limit}" if cfg.limit else "")


def data_flag(cfg):
    return f" --data-dir {cfg.data_dir}" if cfg.data_dir else ""


def member_paths(cfg):
    """--learned: every member's verified predictions.json in the ensemble directory."""
    ensemble = Path(cfg.weak_labels or Path(cfg.out).parent / "ensemble")
    members = sorted((d for d in ensemble.glob("member*") if d.name[len("member"):].isdigit()),
                     key=lambda d: int(d.name[len("member"):]))
    if len(members) < 2:
        raise UserError(f"--learned needs a weak ensemble of at least 2 members in {ensemble} (run --role weak "
                        "--ensemble K first, or pass its directory as --weak-labels)")
    return [rundir.verified(d, "predictions.json") for d in members]


@torch.no_grad()
def features(model, tok, texts, rt, batch_size, max_len):
    """(N, n_embd): the hidden state of each text's last real token, what the classification head reads."""
    model.eval()
    seqs = [ids[:max_len] for ids in tok.encode_batch(texts)]
    out = np.zeros((len(seqs), model.config.n_embd))
    for batch in bucketed_batches([len(s) for s in seqs], batch_size * 2, 0, 0, shuffle=False):
        idx, mask = collate([seqs[i] for i in batch], tok.pad_token, rt.device)
        with rt.autocast:
            h = model.hidden(idx, mask)
        last = torch.tensor([len(seqs[i]) - 1 for i in batch], device=rt.device)  # right padding
        out[batch] = h[torch.arange(len(batch), device=rt.device), last].float().cpu().numpy()
    return out


def selective_targets(cfg, job, rt, model, max_len):
    """Selective W2SG's labels (labels.py states the simplifications): each half of w2s_train is labelled by the
    fold model trained on the other half's weak labels; where it is confident (max probability >= --confidence) its
    hard label replaces the weak one, and the remaining weak labels are averaged over their --knn nearest neighbours
    in the pretrained strong model's features (this model, before any training; under --train-layers 0 they are the
    stored features the head trains on)."""
    n = len(job.train_rows)
    halves = labels.cross_fit_halves(n, cfg.seed)
    ids = [r["id"] for r in job.train_rows]
    strong = np.zeros((n, job.n_classes))
    for k in (0, 1):  # fold k trained on half k, so it labels the other half
        fold = cli.read_json(Path(cfg.out) / f"fold{k}" / "predictions.json", "predictions file")["w2s_train"]
        pos = {i: j for j, i in enumerate(fold["ids"])}
        other = halves[1 - k]
        strong[other] = np.asarray(fold["probs"])[[pos[ids[i]] for i in other]]
    targets, replaced = labels.selective_labels(np.stack(job.train_targets), strong, cfg.confidence)
    if (~replaced).any():
        if all(isinstance(x, Features) and x.x.dim() == 1 for x in job.train_x):  # K = 0: the head's own inputs
            feats = torch.stack([x.x for x in job.train_x]).double().numpy()
        else:
            feats = features(model, job.tok, [r["text"] for r in job.train_rows], rt, cfg.batch_size, max_len)
        targets = labels.knn_smooth(targets, feats, min(cfg.knn, n), rows=~replaced)
    job.train_targets = list(targets)
    return {"n_replaced": int(replaced.sum()), "n_smoothed": int((~replaced).sum())}


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
            optimizer_step(opt, sched, params, cfg.grad_clip)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return round(loss.item(), 4)
