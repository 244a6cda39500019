"""
Fitted linear probes: `--train-layers 0` with `--probe fit` (the default). The head is fitted to convergence on the
frozen features instead of trained by SGD from a random draw, so a table measures what the features hold and not
the optimizer's luck. Every stage is fitted the same way:

  1. the features are standardized by the stage's own training rows (mean and std per feature; a constant feature
     is only centred);
  2. the head, logits = z W^T + b, minimizes  mean_i CE(softmax(z_i W^T + b), t_i) + penalty / 2 ||W||^2  (the bias
     is not penalized) from W = 0, b = 0, by full-batch L-BFGS in float64 until the gradient's Euclidean norm is <= TOL;
  3. the penalty is chosen by FOLDS-fold cross-validation over PENALTIES on the stage's own training targets t (gold
     for the weak model, its ensemble members and the ceiling; the supervisor's labels for a student, so no gold
     label reaches a student's fit or its penalty): each fold's path runs from the largest penalty down, warm-started,
     and is scored by the held-out cross entropy against t; folds are dealt by a hash of the row ids, so a bootstrap
     member's copies of one row share a fold; the lowest mean held-out loss wins (ties: the larger penalty), the path
     stopping once PATIENCE penalties in a row score worse than the best, and the fit is redone from zero on every
     training row;
  4. a student's method (METHODS) then fits at that penalty, starting from step 3's head;
  5. the standardization is folded into the head (W / std, b - W mean / std): prediction needs nothing else.
No random number is drawn, so the head does not depend on the seed's draw; the run's record holds the path with its
held-out losses, the chosen penalty, the iterations and the final gradient, and a fit that stops short of TOL says so.

The methods, and what the fit guarantees where the loss is not convex:
  xent      the convex problem above: its unique optimum (W; b up to a shift common to all classes, kept at sum 0).
  entropy   EleutherAI's entropy loss detaches the student's own predictions, so its gradient is (1 - coef) times
            xent's: its stationary point is exactly xent's at penalty / (1 - coef), solved directly (coef 1: W = 0).
  logconf   a continuation over the auxiliary weight: the weights the SGD schedule (--aux-coef, --aux-warmup,
            --aux-schedule) reaches at 10 evenly spaced points of the run it replaces, each solved to a fixed point
            (hardened predictions recomputed from the head, threshold over every training row, refit warm-started,
            until the hardened labels stop changing) and warm-started from the last.
  product   a fixed point of the target p_student^beta p_weak^alpha: recomputed from the head, refit, until the
            head is the optimum of its own target.
  window    a fixed point of the window's rows (max probability < 0.5 + radius): recomputed from the head, refit on
            those rows (the sum divided by all rows, as the loss does), until the rows stop changing.
  learned   RAVEN's objective is linear in the member weights, so its joint optimum puts all weight on one member:
            every member's labels fitted, the one with the lowest penalized training loss wins (weights one-hot).
For logconf, product and window the fit is a head where SGD's gradient of the method's loss vanishes (the parts
that loss detaches frozen at the head's own values): a stationary point of SGD's dynamics, not the global optimum
of a convex objective, and which one is found depends on the path (stated above). A fixed point not reached in
ROUNDS refits is reported, and the last head is kept.
"""
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from methods.losses import aux_coef, logconf_threshold

PENALTIES = tuple(float(p) for p in np.logspace(1, -4, 10))  # largest first: each fold's path is warm-started
FOLDS = 5
PATIENCE = 2        # the penalty path stops after this many penalties in a row worse than the best (choose_penalty)
TOL = 1e-6          # the Euclidean norm of the (mean) objective's gradient at most this
MAX_ITER = 2000     # L-BFGS iterations of one solve
HISTORY = 20        # L-BFGS pairs kept
ROUNDS = 100        # refits of a fixed-point method
CONTINUATION = 10   # points of the SGD run whose auxiliary weights logconf's continuation visits


# ----------------------------------------------------------------------------------------------------------------
# the rows a stage fits on

@dataclass
class Rows:
    """A stage's training features as the solver sees them: standardized by their own mean and std, then rotated
    onto the eigenvectors of their covariance, which leaves the penalty ||W||^2 and the optimum unchanged but makes
    the features uncorrelated, so a diagonal preconditioner (their variances, `scale`) fits L-BFGS's problem."""
    z: torch.Tensor       # (N, D) float64
    zt: torch.Tensor      # z.T, contiguous: the gradient's matrix-vector product reads it row by row
    scale: torch.Tensor   # (D,) each rotated feature's mean square
    mean: torch.Tensor
    std: torch.Tensor
    basis: torch.Tensor   # (D, D): z = (x - mean) / std @ basis

    @classmethod
    def of(cls, x):
        x = x.double()
        mean, std = x.mean(0), x.std(0)
        std = torch.where(std > 1e-12 * float(std.max()), std, torch.ones_like(std))  # a constant feature: centred
        z = (x - mean) / std
        scale, basis = torch.linalg.eigh(z.T @ z / len(z))
        z = z @ basis
        return cls(z, z.T.contiguous(), scale.clamp(min=0), mean, std, basis)

    def subset(self, rows):
        z = self.z[rows]
        return Rows(z, z.T.contiguous(), self.scale, self.mean, self.std, self.basis)

    def head(self, params, c):
        """(weight (C, D), bias (C)) on the raw features: the rotation and standardization folded in."""
        if c == 2:  # the logit difference, split evenly between the two classes
            W, b = torch.stack([-params[:-1], params[:-1]]) / 2, torch.stack([-params[-1], params[-1]]) / 2
        else:
            W, b = params[:-c].view(c, -1), params[-c:]
        W = W @ self.basis.T / self.std
        return W, b - W @ self.mean


def logits_of(params, z, c):
    """(N, C) logits of the flat `params`: for two classes [w (D), b] with the logit difference z w + b split evenly
    (logits -(z w + b) / 2, (z w + b) / 2, the sum-zero head the multinomial optimum is); else W (C, D) row-major,
    then b (C)."""
    if c == 2:
        half = 0.5 * (torch.mv(z, params[:-1]) + params[-1])
        return torch.stack([-half, half], 1)
    return z @ params[:-c].view(c, -1).T + params[-c:]


def n_params(c, d):
    return d + 1 if c == 2 else c * d + c


# ----------------------------------------------------------------------------------------------------------------
# one convex solve

def objective(params, rows, t, penalty, weight=None):
    """(loss, gradient) of  sum_i weight_i CE(z_i W^T + b, t_i) / N + penalty / 2 ||W||^2  at the flat `params`
    (logits_of), in closed form. Two classes: the logit difference s = z w + b, ||W||^2 = ||w||^2 / 2, and the
    matrix-vector products that make this the cheapest form (a (N, D) x (D, 2) product runs 4x slower on CPU)."""
    z, n, c = rows.z, len(rows.z), t.shape[1]
    if c == 2:
        s = torch.mv(z, params[:-1]) + params[-1]
        ce = torch.nn.functional.softplus(s) - t[:, 1] * s  # -t1 log sigmoid(s) - t0 log sigmoid(-s)
        residual = torch.sigmoid(s) - t[:, 1]
    else:
        logp = torch.log_softmax(logits_of(params, z, c), dim=1)
        ce, residual = -(t * logp).sum(1), logp.exp() - t  # d CE / d logits, for targets that sum to 1
    if weight is not None:
        ce, residual = ce * weight, residual * (weight if c == 2 else weight[:, None])
    if c == 2:
        w = params[:-1]
        loss = ce.sum() / n + 0.25 * penalty * (w @ w)
        return float(loss), torch.cat([torch.mv(rows.zt, residual) / n + 0.5 * penalty * w, residual.sum(0, True) / n])
    W = params[:-c].view(c, -1)
    loss = ce.sum() / n + 0.5 * penalty * (W * W).sum()
    return float(loss), torch.cat([(residual.T @ z / n + penalty * W).reshape(-1), residual.sum(0) / n])


def solve(rows, t, penalty, init=None, weight=None):
    """The penalized cross entropy's optimum on `rows`, from `init` (default zero), by L-BFGS with a backtracking
    line search, preconditioned by the loss's curvature bound (1/4 of each rotated feature's mean square, plus the
    penalty): (params, iterations, the gradient's norm at the end)."""
    c, d = t.shape[1], rows.z.shape[1]
    x = torch.zeros(n_params(c, d), dtype=torch.float64) if init is None else init.clone()
    if c == 2:  # the logit difference's curvature: 1/4 of each feature's mean square; its penalty is penalty / 2
        h0 = torch.cat([0.25 * rows.scale + 0.5 * penalty, torch.tensor([0.25], dtype=torch.float64)])
    else:
        h0 = torch.cat([(0.25 * rows.scale + penalty).repeat(c), torch.full((c,), 0.25, dtype=torch.float64)])
    f, g = objective(x, rows, t, penalty, weight)
    history = []
    for iteration in range(MAX_ITER + 1):
        if float(g.norm()) <= TOL or iteration == MAX_ITER:
            break
        direction = -_two_loop(g, history, h0)
        slope = float(g @ direction)
        if slope >= 0:  # curvature pairs gone stale: restart from the preconditioned gradient
            history, direction = [], -g / h0
            slope = float(g @ direction)
        step = 1.0
        while True:
            f_new, g_new = objective(x + step * direction, rows, t, penalty, weight)
            if f_new <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        if f_new > f:  # no step lowers the loss: rounding has the last word (reported by the gradient)
            break
        s, y = step * direction, g_new - g
        if float(s @ y) > 1e-12 * float(s @ s):
            history = (history + [(s.numpy(), y.numpy(), 1 / float(s @ y))])[-HISTORY:]
        x, f, g = x + s, f_new, g_new
    return x, iteration, float(g.norm())


def _two_loop(g, history, h0):
    """L-BFGS's two-loop recursion: the inverse-Hessian estimate times g, its start diag(h0)^-1 scaled by the last
    pair's curvature. In numpy: the vectors are short, and torch's per-call overhead was most of a solve's time."""
    g, h0 = g.numpy(), h0.numpy()
    q, alphas = g.copy(), []
    for s, y, rho in reversed(history):
        a = rho * (s @ q)
        q -= a * y
        alphas.append(a)
    r = q / h0
    if history:
        s, y, _ = history[-1]
        r *= (s @ y) / (y @ (y / h0))
    for (s, y, rho), a in zip(history, reversed(alphas)):
        r += (a - rho * (y @ r)) * s
    return torch.from_numpy(r)


def cross_entropy(params, rows, t):
    """The mean cross entropy against t of the head `params` on `rows` (no penalty)."""
    return objective(params, rows, t, 0.0)[0]


# ----------------------------------------------------------------------------------------------------------------
# folds and the penalty

def folds_of(ids, k):
    """A fold per row, 0..k-1: the distinct ids in the order of their sha256, dealt round robin, so every copy of a
    row is in its fold and no random draw is involved."""
    order = sorted(set(ids), key=lambda i: hashlib.sha256(str(i).encode()).hexdigest())
    fold_of = {i: j % k for j, i in enumerate(order)}
    return np.array([fold_of[i] for i in ids])


def choose_penalty(rows, t, folds, penalties=PENALTIES, patience=PATIENCE):
    """k-fold cross-validation over `penalties`, every fold's path warm-started and the folds in step: (the penalty
    with the lowest mean held-out cross entropy, ties to the larger; the mean held-out loss of each penalty visited;
    each fold's). The path stops once `patience` penalties in a row have scored worse than the best so far (None: the
    whole path); the smallest penalties cost most iterations and, past the best, are never chosen where the mean
    held-out loss rises monotonically from its minimum, as it does in every fit we have looked at."""
    splits = []
    for f in range(folds.max() + 1):
        train, held = torch.from_numpy(folds != f), torch.from_numpy(folds == f)
        splits.append((rows.subset(train), t[train], rows.subset(held), t[held]))
    params, mean, per_fold = [None] * len(splits), [], []
    for penalty in penalties:
        losses = []
        for k, (train_rows, train_t, held_rows, held_t) in enumerate(splits):
            params[k] = solve(train_rows, train_t, penalty, params[k])[0]
            losses.append(cross_entropy(params[k], held_rows, held_t))
        per_fold.append(losses)
        mean.append(float(np.mean(losses)))
        best = min(range(len(mean)), key=lambda i: (mean[i], -penalties[i]))
        if patience is not None and len(mean) - 1 - best >= patience:
            break
    return penalties[best], mean, [list(fold) for fold in zip(*per_fold)]


# ----------------------------------------------------------------------------------------------------------------
# the methods: each (rows, t, penalty, start, **settings) -> (params, record); the record's "grad" is the norm of
# SGD's gradient of the method's own loss at the head, "converged" whether it is within TOL

def fit_xent(rows, t, penalty, start, **_):
    params, iterations, grad = solve(rows, t, penalty, start)
    return params, {"iterations": iterations, "grad": grad, "converged": grad <= TOL}


def fit_entropy(rows, t, penalty, start, coef, **_):
    if coef >= 1:  # the loss's gradient is 0 everywhere: only the penalty acts
        return torch.zeros_like(start), {"iterations": 0, "grad": 0.0, "converged": True}
    return fit_xent(rows, t, penalty / (1 - coef), start)


def fixed_point(rows, t, penalty, start, targets_of, weight_of=lambda params: None):
    """Refit on the targets (and row weights) the head itself makes until they stop changing: (params, record). When
    they come back to a state already refitted on, the refits cycle (the window's rows crossing its edge back and
    forth, as SGD's do): it stops there, keeps the head of the cycle whose own gradient is smallest, and says so."""
    params, iterations, seen, heads = start, 0, {}, []
    for rounds in range(1, ROUNDS + 1):
        targets, weight = targets_of(params), weight_of(params)
        key = hashlib.sha256(targets.numpy().tobytes() + (b"" if weight is None else weight.numpy().tobytes())).digest()
        if key in seen:
            break
        seen[key] = len(heads)
        if heads:  # the last head's gradient on the state it makes (0 up to TOL: a fixed point)
            heads[-1] = (heads[-1][0], _gradient(heads[-1][0], rows, targets, penalty, weight))
        params, n_iter, _ = solve(rows, targets, penalty, params, weight)
        iterations += n_iter
        heads.append((params, None))
    grad = _gradient(params, rows, targets_of(params), penalty, weight_of(params))
    heads[-1] = (params, grad)
    cycle = len(heads) - seen[key] if key in seen and seen[key] < len(heads) - 1 else 0
    if cycle:
        params, grad = min(heads[seen[key]:], key=lambda h: h[1])
    return params, {"iterations": iterations, "rounds": rounds, "grad": grad, "converged": grad <= TOL} | \
        ({"cycle": cycle} if cycle else {})


def _gradient(params, rows, targets, penalty, weight):
    return float(objective(params, rows, targets, penalty, weight)[1].norm())


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def fit_logconf(rows, t, penalty, start, coefs, **_):
    """logconf's continuation: at each auxiliary weight of `coefs` (increasing), the fixed point of its hardened
    targets, warm-started from the last."""
    params, record = start, {"iterations": 0, "rounds": 0, "converged": True}
    for coef in coefs:
        def targets_of(p, coef=coef):
            probs = torch.softmax(logits_of(p, rows.z, t.shape[1]), 1)
            is_class0 = probs[:, 0] >= logconf_threshold(probs, t)
            return (1 - coef) * t + coef * torch.stack([is_class0, ~is_class0], 1).double()
        params, step = fixed_point(rows, t, penalty, params, targets_of)
        record = step | {"iterations": record["iterations"] + step["iterations"],
                         "rounds": record["rounds"] + step["rounds"],
                         "converged": record["converged"] and step["converged"]}
    return params, record | {"continuation": list(coefs)}


def fit_product(rows, t, penalty, start, alpha, beta, **_):
    def targets_of(p):
        return torch.softmax(beta * torch.log_softmax(logits_of(p, rows.z, t.shape[1]), 1) + torch.xlogy(alpha, t), 1)
    return fixed_point(rows, t, penalty, start, targets_of)


def fit_window(rows, t, penalty, start, radius, **_):
    def weight_of(p):
        return (torch.softmax(logits_of(p, rows.z, t.shape[1]), 1).max(1).values < 0.5 + radius).double()
    return fixed_point(rows, t, penalty, start, lambda p: t, weight_of)


METHODS = {"xent": fit_xent, "entropy": fit_entropy, "logconf": fit_logconf, "product": fit_product,
           "window": fit_window}


def fit_learned(rows, members, penalty, start):
    """RAVEN's member weights at the joint optimum: each member's labels (members (N, K, C)) fitted, the member
    whose penalized training loss is lowest taken whole. (params, record with the one-hot member weights)."""
    fits = [fit_xent(rows, members[:, k], penalty, start) for k in range(members.shape[1])]
    values = [objective(params, rows, members[:, k], penalty)[0] for k, (params, _) in enumerate(fits)]
    best = int(np.argmin(values))
    params, record = fits[best]
    return params, record | {"member_weights": [float(k == best) for k in range(len(fits))],
                             "member_objectives": values}


# ----------------------------------------------------------------------------------------------------------------
# a stage's fit

def continuation(cfg, n_rows):
    """The auxiliary weights logconf's continuation visits: the schedule's at CONTINUATION + 1 evenly spaced steps of
    the SGD run this fit replaces (its epochs and batches over n_rows), consecutive repeats dropped."""
    steps_per_epoch = -(-n_rows // cfg.batch_size)
    total = steps_per_epoch * (cfg.epochs or -(-cfg.max_steps // steps_per_epoch))
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    coefs = [aux_coef(round(j * (total - 1) / CONTINUATION), total, cfg.aux_coef, cfg.aux_warmup, cfg.aux_schedule)
             for j in range(CONTINUATION + 1)]
    return [c for i, c in enumerate(coefs) if i == 0 or c != coefs[i - 1]]


def fit_head(x, targets, ids, cfg):
    """The fitted head of one stage: x (N, D) features, targets (N, C) (or (N, K, C) members, --learned), ids (N,)
    the rows' ids. Returns (weight (C, D), bias (C), both float64 on the raw features, the record)."""
    rows = Rows.of(x)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    t = targets.mean(1) if cfg.learned else targets  # the penalty is chosen on the uniform mix (the soft vote)
    penalty, cv_loss, _ = choose_penalty(rows, t, folds_of(ids, cfg.probe_folds))
    start, refit_iterations, _ = solve(rows, t, penalty)
    record = {"penalties": list(PENALTIES), "cv_loss": cv_loss, "penalty": penalty, "folds": cfg.probe_folds,
              "patience": PATIENCE, "at_path_end": penalty in (PENALTIES[0], PENALTIES[-1]), "tol": TOL,
              "refit_iterations": refit_iterations}
    if cfg.learned:
        params, fit = fit_learned(rows, targets, penalty, start)
    else:
        settings = {"coef": cfg.aux_coef, "coefs": continuation(cfg, len(t)), "alpha": cfg.product_alpha,
                    "beta": cfg.product_beta, "radius": cfg.window_radius}
        params, fit = METHODS[cfg.loss](rows, t, penalty, start, **settings)
    return (*rows.head(params, t.shape[1]), record | {"method": "learned" if cfg.learned else cfg.loss} | fit)
