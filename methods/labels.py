"""
Label transforms for weak-to-strong students: what a student trains on, made from weak (and strong) predictions.
Pure functions on (N, C) class-probability arrays (numpy, or anything np.asarray takes); they return numpy.

    hard_labels(probs)                                    one-hot argmax rows
    cross_fit_halves(n, seed)                             two disjoint halves of range(n), for cross-fitting
    selective_labels(weak_probs, strong_probs, threshold) -> (targets, replaced): the strong model's own hard label
                                                          where it is confident, the weak label elsewhere
    knn_smooth(probs, features, k, rows)                  each row in `rows` -> mean of its k nearest neighbours' probs
    MemberWeights(n_members)                              learned weights over a weak ensemble (torch.nn.Module)
    members_agree(member_probs)                           rows whose members all give the same argmax class

Selective W2SG (Lang, Huang & Li 2025, arXiv 2511.14166, "Selective Weak-to-Strong Generalization"), simplified and
cross-fitted. The paper trains a binary classifier P(IK) ("I know") to pick the questions the strong model can
answer, trains on the strong model's self-generated labels there, and refines the remaining weak labels with graph
smoothing. Here, with the simplifications stated:
  1. cross_fit_halves splits the student's training set into halves A and B; a strong model trained on A's weak
     labels labels B and vice versa, so its confidence on a row never comes from having fit that row's weak label.
  2. selective_labels replaces P(IK) by the strong model's own max class probability >= threshold: no separate
     classifier, no labelled data to train one, and calibration is the strong model's.
  3. knn_smooth stands in for the graph smoothing: one averaging step over a k-nearest-neighbour graph (cosine
     similarity of `features`, uniform weights, the row itself included), applied to the rows that kept weak labels.
     Only the abstract of the paper could be read here, so its graph construction and smoothing operator (edge
     weights, iterations, what is smoothed) may differ; this is the simplest instance of the idea, not their formula.
  Typical use: targets, replaced = selective_labels(weak, strong_crossfit, 0.9);
               targets = knn_smooth(targets, features, k=10, rows=~replaced)

Learned ensemble weights (RAVEN, Jeon, Sobotka, Choi & Brbic 2025, "Weak-to-Strong Generalization under Distribution
Shifts", code mlbio-epfl/raven @f959c17 rw2s/vision/ensemble.py): the student's target is a learned convex
combination of K weak members' predictions, trained jointly with the student on the student's loss. Their
disagreement schedule (EnsembleDisagreementSchedule there) is --agreement-epochs N: for the first N epochs an example
on which the members' argmax classes differ gets zero weight (members_agree is the mask; the loss is still divided by
the whole batch, as their loss * weight then mean). Their own variants not done here: weights per example
(ensemble_weights_per_n_samples), entropy or random initial weights, and resetting the weights every epoch.
"""
import numpy as np
import torch


def _probs(name, probs):
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"{name} must be (rows, classes), got shape {probs.shape}")
    bad = (probs < 0).any(axis=1) | (np.abs(probs.sum(axis=1) - 1) > 1e-3)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} row {row} is not a probability distribution: {probs[row].tolist()}")
    return probs


def hard_labels(probs):
    """One-hot rows of the argmax (ties: the lowest class index, as np.argmax)."""
    probs = _probs("probs", probs)
    return np.eye(probs.shape[1])[probs.argmax(axis=1)]


def cross_fit_halves(n, seed):
    """Two disjoint sorted index arrays covering range(n), a random split by `seed` (sizes n // 2 and n - n // 2)."""
    if n < 2:
        raise ValueError(f"need at least 2 rows to split into halves, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def selective_labels(weak_probs, strong_probs, threshold):
    """Returns (targets, replaced): rows whose strong max probability >= threshold take the strong model's own hard
    label (one-hot argmax), the others keep the weak probabilities; `replaced` is the boolean mask of the first.
    strong_probs should be cross-fitted (see the module docstring)."""
    weak_probs, strong_probs = _probs("weak_probs", weak_probs), _probs("strong_probs", strong_probs)
    if weak_probs.shape != strong_probs.shape:
        raise ValueError(f"weak_probs shape {weak_probs.shape} != strong_probs shape {strong_probs.shape}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    replaced = strong_probs.max(axis=1) >= threshold
    targets = np.where(replaced[:, None], hard_labels(strong_probs), weak_probs)
    return targets, replaced


def knn_smooth(probs, features, k, rows, chunk=1024):
    """probs with each row in `rows` (indices or a boolean mask) replaced by the mean of the probs of its k nearest
    neighbours by cosine similarity of `features` (N, D), the row itself always one of them (k = 1: unchanged).

    Neighbours come from ALL rows, with the probs as given (one simultaneous step: the result does not depend on
    the order of `rows`). Restricting them to the trusted rows would turn the smoothing into label propagation
    from the strong model's confident rows into exactly the rows where it is not confident, i.e. back towards the
    strong model's own guesses; using all rows smooths the weak labels with their neighbours' labels, weak or strong.
    Similarities are computed `chunk` rows at a time ((chunk, N) floats), never as an (N, N) matrix."""
    probs = _probs("probs", probs)
    features = np.asarray(features, dtype=np.float64)
    n = len(probs)
    if features.ndim != 2 or len(features) != n:
        raise ValueError(f"features must be (rows, dim) with {n} rows, got shape {features.shape}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    rows = np.arange(n)[rows]  # indices or a boolean mask -> indices
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    if (norms == 0).any():  # every row can be a neighbour
        raise ValueError("features has an all-zero row: its cosine similarity is undefined")
    unit = features / norms
    out = probs.copy()
    for start in range(0, len(rows), chunk):  # (chunk, N) similarities at a time, not (N, N)
        idx = rows[start:start + chunk]
        sim = unit[idx] @ unit.T
        sim[np.arange(len(idx)), idx] = np.inf  # the row itself is always a neighbour, even among exact duplicates
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        out[idx] = probs[nearest].mean(axis=1)
    return out


class MemberWeights(torch.nn.Module):
    """One learnable logit per weak ensemble member; weights() = softmax(logits), starting uniform.
    forward(member_probs (B, K, C)) -> mixed targets (B, C) = sum_k w_k p_k, NOT detached with respect to the
    weights: train it jointly with the student on the student's loss, e.g.
        opt = torch.optim.Adam([*student.parameters(), *mixer.parameters()])
        loss = xent_loss(student(x), mixer(member_probs)); loss.backward(); opt.step()

    With cross entropy the loss is linear in the weights (CE(q, sum_k w_k p_k) = sum_k w_k CE(q, p_k)), so the
    gradient moves weight towards the members the student fits best: a member whose labels follow a learnable rule
    wins over a random one. The flip side: a trivially fittable member (one that always says the same class) can
    win too, and with no other term the weights tend to one vertex of the simplex.
    Deliberate difference from RAVEN's code: they keep the weights on the simplex directly (an SGD step, then clamp
    at 1e-6 and renormalise), with their own optimizer; a softmax over logits is the same family without the
    projection, and lets one optimizer hold both."""

    def __init__(self, n_members):
        super().__init__()
        if n_members < 1:
            raise ValueError(f"need at least one member, got {n_members}")
        self.logits = torch.nn.Parameter(torch.zeros(n_members))

    def weights(self):
        return torch.softmax(self.logits, dim=0)

    def forward(self, member_probs):
        if member_probs.ndim != 3 or member_probs.shape[1] != len(self.logits):
            raise ValueError(f"member_probs must be (batch, {len(self.logits)} members, classes), "
                             f"got shape {tuple(member_probs.shape)}")
        return torch.einsum("k,bkc->bc", self.weights().to(member_probs.dtype), member_probs)


def members_agree(member_probs):
    """(N,) bool: the rows of member_probs (N, K members, C) on which every member's argmax class is the same."""
    member_probs = np.asarray(member_probs)
    if member_probs.ndim != 3:
        raise ValueError(f"member_probs must be (rows, members, classes), got shape {member_probs.shape}")
    votes = member_probs.argmax(axis=2)
    return (votes == votes[:, :1]).all(axis=1)

