"""Tasks and their splits.

    task = load_task("safety", data_dir="../shared/data", seed=0)
    task.splits["weak_train"][0]   # {"id": ..., "text": ..., "label": 0 or 1}

load_task: the task module reads its source files (data/common.py describes the protocol) -> validate
-> split -> limit -> Task. Splits are a pure function of (examples, seed): the test set is held out first
(20%, stratified by label), val is 10% of the rest (at most 500), and the remainder is halved into
weak_train (the weak supervisor's training data) and w2s_train (the strong student's, labelled by the weak
model). Examples sharing a "group" always land in the same split; groups are stratified by their labels, or by the
"stratum" their examples share when the reader gives one (PolicyQA: a policy's size band). --limit keeps whole
"unit"s (default: whole groups).
"""
import hashlib
import importlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from data.common import DataError, warn_once

TASKS = {
    "safety": "data.safety",
    "legal": "data.legal",
    "toxicity": "data.toxicity",
    "anthropic_hh": "data.burns",
    "cosmos_qa": "data.burns",
    "sciq": "data.burns",
    "boolq": "data.burns",
    "amazon_polarity": "data.burns",
    "toy": "data.toy",
}
SPLITS = ("weak_train", "w2s_train", "val", "test")
TEST_FRAC = 0.2
VAL_FRAC = 0.1
VAL_MAX = 500


@dataclass
class Task:
    name: str
    kind: str                 # "classification" | "generation"
    label_names: list
    splits: dict              # split name -> list of examples
    files: list               # [{"path", "sha256"}] of every source file read
    seed: int = 0
    limit: int | None = None
    dropped: dict = field(default_factory=dict)  # what validation removed, by reason
    source: dict | None = None  # which data set a task with several sources read (legal: LegalBench or PolicyQA)

    def summary(self):
        """JSON-able record of exactly which data a run saw (train.py stores it with every run)."""
        splits = {}
        for name, examples in self.splits.items():
            counts = Counter(ex["label"] for ex in examples)
            ids = "\n".join(sorted(ex["id"] for ex in examples))
            splits[name] = {
                "size": len(examples),
                "label_counts": {label: counts[i] for i, label in enumerate(self.label_names)},
                "ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
            }
            if self.source and self.source.get("group"):  # e.g. how many policies the split holds
                splits[name][self.source["group"]] = len({ex["group"] for ex in examples})
        summary = {"task": self.name, "kind": self.kind, "label_names": list(self.label_names), "seed": self.seed,
                   "limit": self.limit, "splits": splits, "dropped": dict(self.dropped), "files": list(self.files)}
        return summary | ({"source": dict(self.source)} if self.source else {})


def load_task(name, data_dir=None, seed=0, limit=None):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}.")
    module = importlib.import_module(TASKS[name])  # lazy: a broken task module only breaks its own tasks
    source = module.read(name, data_dir)
    examples, dropped = validate(name, source["examples"], source["label_names"])
    splits = split(examples, seed, source.get("train_filter"))
    if limit is not None:
        rng = np.random.default_rng([seed, 1])  # its own stream: the split does not depend on limit
        splits = {s: take_stratified(members, limit, rng) for s, members in splits.items()}
    for s in SPLITS:
        if not splits[s]:
            raise DataError(f"task {name!r}: split {s!r} is empty after splitting {len(examples)} examples"
                            f"{f' with --limit {limit}' if limit is not None else ''}.")
    for s in SPLITS:
        present = {ex["label"] for ex in splits[s]}
        if source["kind"] == "classification" and len(present) < len(source["label_names"]):
            missing = [n for i, n in enumerate(source["label_names"]) if i not in present]
            raise DataError(f"task {name!r}: split {s!r} has no example of class {missing}"
                            f"{f' with --limit {limit}: use a larger --limit' if limit is not None else ''}.")
    return Task(name, source["kind"], list(source["label_names"]), splits, source["files"], seed, limit, dropped,
                source.get("source"))


def validate(name, examples, label_names):
    """Check every example against the protocol; remove duplicated texts (reported in one warning).
    A text seen with two different labels is ambiguous, so every copy of it is removed."""
    seen_ids = set()
    for ex in examples:
        where = f"task {name!r}, example {ex.get('id')!r}"
        if not isinstance(ex.get("id"), str) or ex["id"] in seen_ids:
            raise DataError(f"{where}: missing or duplicated id.")
        seen_ids.add(ex["id"])
        if not isinstance(ex.get("text"), str) or not ex["text"].strip():
            raise DataError(f"{where}: empty text.")
        if not isinstance(ex.get("label"), int) or not 0 <= ex["label"] < len(label_names):
            raise DataError(f"{where}: label {ex.get('label')!r} is not in 0..{len(label_names) - 1} {label_names}.")
    labels_of = {}
    for ex in examples:
        labels_of.setdefault(ex["text"], set()).add(ex["label"])
    first_id, kept, repeats, conflicting = {}, [], [], []
    for ex in examples:
        if len(labels_of[ex["text"]]) > 1:
            conflicting.append(ex["id"])
        elif ex["text"] in first_id:
            repeats.append(f"{ex['id']} repeats {first_id[ex['text']]}")
        else:
            first_id[ex["text"]] = ex["id"]
            kept.append(ex)
    if repeats or conflicting:
        parts = [f"{len(repeats)} repeated texts (first copy kept; e.g. {', '.join(repeats[:2])})"] if repeats else []
        if conflicting:
            parts.append(f"{len(conflicting)} examples whose text appears with different labels "
                         f"(all copies removed; e.g. {', '.join(conflicting[:2])})")
        warn_once(f"{name}: removed " + " and ".join(parts) + ".", stacklevel=3)
    return kept, {"repeated_text": len(repeats), "conflicting_labels": len(conflicting)}


def split(examples, seed, train_filter=None):
    """Deterministic, stratified, group-aware splits; each split keeps the source order."""
    rng = np.random.default_rng(seed)
    test, rest = take_stratified_fraction(examples, TEST_FRAC, rng)
    if train_filter is not None:
        rest = [ex for ex in rest if train_filter(ex)]
    val_frac = min(VAL_FRAC, VAL_MAX / max(len(rest), 1))
    val, rest = take_stratified_fraction(rest, val_frac, rng)
    weak_train, w2s_train = take_stratified_fraction(rest, 0.5, rng)
    return {"weak_train": weak_train, "w2s_train": w2s_train, "val": val, "test": test}


def units_by_stratum(examples, unit="group"):
    """Sets of examples that must stay together (one per `unit` key: "group", or "unit" falling back to "group";
    else one per example), bucketed by their sorted label tuple so that stratifying over units also stratifies over
    labels, or for groups by the "stratum" the reader gave them."""
    units = {}
    for i, ex in enumerate(examples):
        units.setdefault(ex.get(unit, ex.get("group", ("row", i))), []).append(i)
    strata = {}
    for members in units.values():
        first = examples[members[0]]
        key = first["stratum"] if unit == "group" and "stratum" in first else \
            tuple(sorted(examples[i]["label"] for i in members))
        strata.setdefault(key, []).append(members)
    return [strata[key] for key in sorted(strata)]


def take_stratified_fraction(examples, frac, rng, unit="group"):
    """(taken, rest): about frac of the units of each stratum (largest-remainder rounding, so the total is
    round(frac * units)), chosen at random."""
    strata = units_by_stratum(examples, unit)
    exact = np.array([frac * len(units) for units in strata])
    counts = np.floor(exact).astype(int)
    short = int(round(frac * sum(len(units) for units in strata))) - counts.sum()
    for s in np.argsort(-(exact - counts), kind="stable")[:max(short, 0)]:
        counts[s] += 1
    taken = set()
    for units, k in zip(strata, counts):
        for u in rng.permutation(len(units))[:k]:
            taken.update(units[u])
    return ([ex for i, ex in enumerate(examples) if i in taken],
            [ex for i, ex in enumerate(examples) if i not in taken])


def take_stratified(examples, limit, rng):
    """At most `limit` examples with the label mix of `examples` (whole units only)."""
    if len(examples) <= limit:
        return examples
    taken, _ = take_stratified_fraction(examples, limit / len(examples), rng, unit="unit")
    while len(taken) > limit:  # only with uneven unit sizes: drop whole trailing units until it fits
        last = taken[-1].get("unit", taken[-1].get("group"))
        taken = taken[:-1] if last is None else [ex for ex in taken if ex.get("unit", ex.get("group")) != last]
    return taken
