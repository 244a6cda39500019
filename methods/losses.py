"""
Training losses for weak-to-strong students, on classification logits (B, C) and target probabilities (B, C)
(hard labels: one-hot rows). Every loss is a mean over the B rows passed in, so with gradient accumulation a
micro-batch's loss weighted by its share of the batch's rows sums to the whole batch's loss.

    name        function                                        keywords      classes   from
    xent        xent_loss(logits, target_probs)                 -             C         -
    logconf     logconf_loss(logits, target_probs, coef,        coef,         2         Burns et al. 2023; openai/weak-to-strong
                             threshold=None)                    threshold
    entropy     entropy_loss(logits, target_probs, coef)        coef          C         EleutherAI/w2s ("entropy")
    product     product_loss(logits, target_probs,              alpha, beta   C         openai/weak-to-strong ("product")
                             alpha=1.0, beta=1.0)
    window      window_loss(logits, target_probs, radius)       radius        C         EleutherAI/w2s ("window")

    LOSSES[name](logits, y, **kwargs)      the same functions by name; pass exactly the keywords of that row
    logconf_threshold(student_probs, target_probs)   logconf's hardening threshold over a whole optimizer batch
    aux_coef(step, total_steps, coef, warmup, schedule)   the weight `coef` of logconf / entropy at a step

The weight of the auxiliary term (logconf, entropy) warms up over training; the three published settings, as flags
(`--aux-coef C --aux-warmup W [--aux-schedule S]` -> aux_coef(step, total_steps, C, W, S); W < 1 is a fraction of the
optimizer steps, W >= 1 a number of optimizer steps):

    --aux-coef 0.75 --aux-warmup 0.2                        ours / the paper: Burns et al.'s appendix describes
                                                            a linear warm-up over the first 20% of training to 0.75
                                                            (their largest students; 0.5 otherwise)
    --aux-coef 0.5 --aux-warmup 0.1 --aux-schedule openai   openai/weak-to-strong's code: logconf_loss_fn() defaults
                                                            aux_coef=0.5, warmup_frac=0.1, weight = coef * step_frac
                                                            during the warm-up (so it reaches only 0.05), then jumps to 0.5
    --aux-coef 0.5 --aux-warmup 200                         EleutherAI/w2s: log_confidence_loss defaults aux_coef=0.5,
                                                            warmup_steps=200 (linear in optimizer steps, HF Trainer's
                                                            global_step); their later LogConfidenceLossConfig default
                                                            is logconf_warmup_steps=100

Sources read (commits as stored by the code index): openai/weak-to-strong weak_to_strong/loss.py @15a0fab,
weak_to_strong/train.py @023e31b; EleutherAI/w2s w2s/loss.py @059b316 and @08cb994, w2s/sft.py @059b316.
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


def _check_binary(name, logits):
    if logits.shape[1] != 2:
        raise ValueError(f"{name} is defined for binary classification, got {logits.shape[1]} classes")


def _check_coef(coef):
    if not 0 <= coef <= 1:
        raise ValueError(f"coef must be in [0, 1], got {coef}")


def xent_loss(logits, target_probs):
    """Cross entropy against soft targets, mean over the batch. float32 so bf16 logits do not lose the loss."""
    _check(logits, target_probs)
    return F.cross_entropy(logits.float(), target_probs.float())


def logconf_threshold(student_probs, target_probs):
    """The hardening threshold of logconf_loss over a whole optimizer batch: the quantile of the student's P(class 0)
    at q = the targets' mean P(class 1) (torch.quantile, linear interpolation), as openai/weak-to-strong computes it
    over its full batch. Pass the rows of every grad-accumulation micro-batch (and, under DDP, all-gathered from every
    rank); the student probabilities are detached. The student's probabilities must exist before the first
    micro-batch's backward: take them from a no-grad forward pass over the batch first (same mode: dropout makes the
    two passes differ), or keep every micro-batch's graph as openai's train loop does."""
    _check(student_probs, target_probs)
    _check_binary("logconf_threshold", student_probs)
    q = target_probs[:, 1].float().mean().clamp(0, 1)  # rows sum to 1 within 1e-3, so the mean can pass 1 by a hair
    return torch.quantile(student_probs.detach().float()[:, 0], q)


def logconf_loss(logits, target_probs, coef, threshold=None):
    """Burns et al.'s auxiliary confidence loss, as openai/weak-to-strong computes it (weak_to_strong/loss.py
    logconf_loss_fn): cross entropy against (1 - coef) * weak labels + coef * the student's own hardened predictions.

    Hardening: rows whose student P(class 0) >= threshold become class 0, the rest class 1, with threshold =
    logconf_threshold(student probabilities, targets), the quantile of P(class 0) at q = the weak labels' mean
    P(class 1). So the hardened predictions keep the weak labels' class balance, and the student cannot lower the loss
    by predicting the majority class everywhere. threshold=None takes it over the rows passed in (openai's code: its
    whole batch of 32); with gradient accumulation or DDP, compute it once with logconf_threshold over the whole
    optimizer batch and pass it to every micro-batch, so the loss equals the one-piece batch's loss. (EleutherAI/w2s
    takes it per Hugging Face micro-batch in w2s/loss.py @059b316, and over a rolling buffer of the last 32
    predictions in @08cb994.) The hardened targets are constants (no gradient through them); coef = 0 is exactly
    xent_loss. The weight schedule of coef is aux_coef's (openai folds it into the loss: step_frac argument)."""
    _check(logits, target_probs)
    _check_binary("logconf_loss", logits)
    _check_coef(coef)
    logits, target_probs = logits.float(), target_probs.float()
    probs = torch.softmax(logits, dim=-1).detach()
    if threshold is None:
        threshold = logconf_threshold(probs, target_probs)
    is_class0 = probs[:, 0] >= threshold
    hardened = torch.stack([is_class0, ~is_class0], dim=1).float()
    return F.cross_entropy(logits, (1 - coef) * target_probs + coef * hardened)


def entropy_loss(logits, target_probs, coef):
    """logconf without hardening: cross entropy against (1 - coef) * targets + coef * the student's own soft
    predictions, detached. Matches EleutherAI/w2s's "entropy" loss (w2s/loss.py log_confidence_loss with
    harden=False, called from w2s/sft.py); theirs takes binary P(class 1) labels and an optional balance_batch
    (default off, not done here), ours any C classes.

    Know what it does: because the predictions are detached, the auxiliary term has zero gradient (d CE(z, q) / dz =
    softmax(z) - q = 0 at q = softmax(z)). The loss value is (1 - coef) * CE(weak) + coef * H(student), but the
    gradient is exactly (1 - coef) times xent_loss's: naive training at a learning rate scaled by (1 - coef), which
    Adam's scale invariance nearly cancels. Entropy minimisation proper would not detach the predictions."""
    _check(logits, target_probs)
    _check_coef(coef)
    logits, target_probs = logits.float(), target_probs.float()
    own = torch.softmax(logits, dim=-1).detach()
    return F.cross_entropy(logits, (1 - coef) * target_probs + coef * own)


def product_loss(logits, target_probs, alpha=1.0, beta=1.0):
    """openai/weak-to-strong's product loss (weak_to_strong/loss.py product_loss_fn, defaults alpha=1, beta=1):
    cross entropy against the target proportional to p_student^beta * p_weak^alpha, normalised over classes and
    detached. No warm-up (their class stores warmup_frac but never uses it) and no eps, as there.

    Deliberate difference: the target is computed in log space, softmax(beta * log_softmax(logits) + alpha *
    log(p_weak)), which is the same quantity but finite where their pow-then-normalise gives 0 / 0 = NaN (a student
    so confident that its float32 probability of every class the weak labels support underflows to 0). Computed in
    float32 (theirs in the logits' dtype). With one-hot weak labels the target is the weak label itself: xent."""
    _check(logits, target_probs)
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    logits, target_probs = logits.float(), target_probs.float()
    # xlogy: 0 * log(0) = 0, so alpha = 0 ignores the weak labels even where they are 0 (pow(0, 0) = 1 in theirs)
    log_target = beta * torch.log_softmax(logits, dim=-1).detach() + torch.xlogy(alpha, target_probs)
    return F.cross_entropy(logits, torch.softmax(log_target, dim=-1))


def window_loss(logits, target_probs, radius):
    """EleutherAI/w2s's confidence window (w2s/loss.py confidence_window_loss, default radius 0.15): cross entropy
    only on the rows where the student's max probability < 0.5 + radius; the sum over those rows is divided by ALL
    B rows, as theirs, so confident rows count as zero and a batch with no row kept gives loss 0 (and zero gradient,
    no error). Their radius="midweak" option is the median over the training set of |weak P(class 1) - 0.5|: compute
    it in the caller. They train weak models and ceilings with radius 0.51 (every row kept: plain xent).
    Theirs takes binary P(class 1) labels; this takes any C classes with the same rule on the max probability (for C
    > 2 the window is no longer centred on the chance level 1/C)."""
    _check(logits, target_probs)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    logits, target_probs = logits.float(), target_probs.float()
    uncertain = torch.softmax(logits, dim=-1).max(dim=-1).values < 0.5 + radius
    return F.cross_entropy(logits[uncertain], target_probs[uncertain], reduction="sum") / logits.shape[0]


LOSSES = {
    "xent": xent_loss,
    "logconf": logconf_loss,
    "entropy": entropy_loss,
    "product": product_loss,
    "window": window_loss,
}

AUX_SCHEDULES = ("linear", "openai")


def aux_coef(step, total_steps, coef, warmup, schedule="linear"):
    """Weight of the auxiliary term (logconf_loss / entropy_loss `coef`) at optimizer step `step` (0-based) of
    `total_steps`. warmup < 1 is a fraction of total_steps, warmup >= 1 a number of optimizer steps (so a warm-up over
    all of training is warmup=total_steps, not 1.0).

    linear  coef * min(1, progress through the warm-up): the paper's linear warm-up (Burns et al. appendix) and
            EleutherAI/w2s's aux_coef * min(1, step / warmup_steps).
    openai  openai/weak-to-strong's code: coef * step / total_steps while step / total_steps <= warmup (while step <=
            warmup for a step count), then coef. It reaches only warmup * coef and then jumps to coef."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 (a fraction < 1 or a number of steps), got {warmup}")
    if schedule not in AUX_SCHEDULES:
        raise ValueError(f"unknown aux schedule {schedule!r}; choose from {AUX_SCHEDULES}")
    step_frac = step / total_steps
    if schedule == "openai":
        in_warmup = step_frac <= warmup if warmup < 1 else step <= warmup
        return float(coef * step_frac if in_warmup else coef)
    if warmup == 0:
        return float(coef)
    progress = step_frac / warmup if warmup < 1 else step / warmup
    return float(coef * progress) if progress < 1 else float(coef)
