"""
Training losses for weak-to-strong students (Burns et al. 2023), on classification logits (B, C).

    xent_loss(logits, target_probs)              soft-label cross entropy (hard labels: pass one-hot targets)
    logconf_loss(logits, target_probs, alpha)    the auxiliary confidence loss
    logconf_alpha(step, total_steps)             its weight alpha over training
"""
import torch
import torch.nn.functional as F


def _check(logits, target_probs):
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    if target_probs.shape != logits.shape:
        raise ValueError(f"target_probs shape {tuple(target_probs.shape)} != logits shape {tuple(logits.shape)}; "
                         "targets are class probabilities (use one-hot rows for hard labels)")
    # a wrong target here trains silently on garbage, so check the values (one host sync per step)
    bad = (target_probs < 0).any(dim=1) | ((target_probs.sum(dim=1) - 1).abs() > 1e-3)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"target_probs row {row} is not a probability distribution: {target_probs[row].tolist()}")


def xent_loss(logits, target_probs):
    """Cross entropy against soft targets, mean over the batch. float32 so bf16 logits do not lose the loss."""
    _check(logits, target_probs)
    return F.cross_entropy(logits.float(), target_probs.float())


def logconf_loss(logits, target_probs, alpha):
    """Burns et al.'s auxiliary confidence loss (openai/weak-to-strong, weak_to_strong/loss.py logconf_loss_fn):
    cross entropy against (1 - alpha) * weak labels + alpha * the student's own hardened predictions.

    Hardening, exactly as there: threshold = quantile of the student's P(class 0) over the batch at q = the weak
    labels' mean P(class 1) (torch.quantile, linear interpolation); rows with P(class 0) >= threshold become class 0,
    the rest class 1. So the student's hard predictions keep the weak labels' class balance in every batch, and the
    student cannot reduce the loss by simply predicting the majority class. The threshold is taken over the rows
    passed in, so pass the whole batch (their code hardens over the full batch of 32, not per micro-batch).
    The hardened targets are constants (no gradient through them). alpha = 0 is exactly xent_loss."""
    _check(logits, target_probs)
    if logits.shape[1] != 2:
        raise ValueError(f"logconf_loss is defined for binary classification, got {logits.shape[1]} classes")
    logits = logits.float()
    target_probs = target_probs.float()
    probs = torch.softmax(logits, dim=-1).detach()
    threshold = torch.quantile(probs[:, 0], target_probs[:, 1].mean())
    is_class0 = probs[:, 0] >= threshold
    hardened = torch.stack([is_class0, ~is_class0], dim=1).float()
    target = (1 - alpha) * target_probs + alpha * hardened
    return F.cross_entropy(logits, target)


def logconf_alpha(step, total_steps, alpha_max=0.75, warmup_frac=0.2):
    """Weight of the student's own predictions at `step` (0-based) of `total_steps`: linear from 0 to alpha_max over
    the first warmup_frac of training, then alpha_max (Burns et al. appendix: 20% warmup; alpha_max 0.75 for their
    largest students, 0.5 otherwise).

    Deliberately not their code's schedule: openai/weak-to-strong uses alpha = alpha_max * step_frac during warmup
    (step_frac = step / total_steps), which reaches only warmup_frac * alpha_max and then jumps to alpha_max. The
    paper describes a linear warmup to alpha_max; EleutherAI/w2s fixed it the same way."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_frac <= 1:
        raise ValueError(f"warmup_frac must be in [0, 1], got {warmup_frac}")
    step_frac = step / total_steps
    if warmup_frac == 0 or step_frac >= warmup_frac:
        return float(alpha_max)
    return float(alpha_max * step_frac / warmup_frac)
