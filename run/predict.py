"""
A model's predictions: a run's predictions of every split (predict_splits), class probabilities of rows
(predict_probs), the validation loss that early stopping watches (evaluate_loss), logconf's hardening threshold
over a whole optimizer batch (batch_threshold), and Classifier, the forward() that DDP and torch.compile wrap for classification.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from methods.losses import logconf_threshold, xent_loss
from run.batching import bucketed_batches, collate, lm_targets
from run.features import collate_features
from run.generation import generate_split


@torch.no_grad()
def evaluate_loss(model, job, rt, cfg, mixer=None, objective=None):
    """Val loss: cross entropy against the supervisor's labels (the LM loss for generation), or with `objective`
    (logits, targets) -> loss, that loss over all of val at once (--select objective: the student's own training
    loss, logconf's threshold taken over val)."""
    if objective is not None and not job.generation:
        return objective_loss(model, job, rt, cfg, mixer, objective)
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
            idx, mask = job.collate([val_x[i] for i in batch], rt.device)
            y = torch.tensor(np.stack([job.val_targets[i] for i in batch]), dtype=torch.float32, device=rt.device)
            y = mixer(y) if mixer is not None else y
            with rt.autocast:
                logits = model.classify(idx, mask)
            total += xent_loss(logits.float(), y).item() * len(batch)
            count += len(batch)
    return total / max(1, count)


@torch.no_grad()
def objective_loss(model, job, rt, cfg, mixer, objective):
    model.eval()
    logits, targets = [], []
    for batch in bucketed_batches([len(x) for x in job.val_x], cfg.batch_size, 0, 0, shuffle=False):
        idx, mask = job.collate([job.val_x[i] for i in batch], rt.device)
        y = torch.tensor(np.stack([job.val_targets[i] for i in batch]), dtype=torch.float32, device=rt.device)
        targets.append(mixer(y) if mixer is not None else y)
        with rt.autocast:
            logits.append(model.classify(idx, mask).float())
    return objective(torch.cat(logits), torch.cat(targets)).item()


def predict_splits(model, job, rt, cfg, max_len, splits):
    """A run's predictions.json content: per split, class probabilities with ids and labels, or for generation
    tasks the decoded continuations."""
    predictions = {}
    for split in splits:
        rows = job.task.splits[split]
        if job.generation:
            predictions[split] = generate_split([model], "single", job.tok, rows, rt.device, rt.autocast, cfg, max_len,
                                                split)
        else:
            probs = predict_probs(model, job.tok, rows, rt, cfg.batch_size, max_len,
                                  job.features[split] if job.features else None)
            predictions[split] = {"ids": [r["id"] for r in rows], "labels": [r["label"] for r in rows],
                                  "probs": probs.round(6).tolist()}
    return predictions


@torch.no_grad()
def predict_probs(model, tok, rows, rt, batch_size, max_len, features=None):
    """Class probabilities for `rows`, in their order (batched by length for speed); with --train-layers, from
    the rows' cached `features` (features.py) instead of their tokens."""
    model.eval()
    seqs = features or [ids[:max_len] for ids in tok.encode_batch([r["text"] for r in rows])]
    probs = np.zeros((len(rows), model.config.n_classes))
    for batch in bucketed_batches([len(s) for s in seqs], batch_size * 2, 0, 0, shuffle=False):
        rows_b = [seqs[i] for i in batch]
        idx, mask = collate_features(rows_b, rt.device) if features else collate(rows_b, tok.pad_token, rt.device)
        with rt.autocast:
            logits = model.classify(idx, mask)
        probs[batch] = torch.softmax(logits.float(), -1).cpu().numpy()
    return probs


class Classifier(torch.nn.Module):
    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx, attention_mask):
        return self.gpt.classify(idx, attention_mask)


@torch.no_grad()
def batch_threshold(job, rt, model, batch):
    """logconf's hardening threshold over the whole optimizer batch, every micro-batch and every rank: one no-grad
    forward pass over this rank's rows, gathered from all ranks. Only needed when the batch is split (one piece:
    the loss takes it from its own rows, the same number)."""
    rows = batch[rt.rank::rt.world]
    idx, mask = job.collate([job.train_x[i] for i in rows], rt.device)
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
