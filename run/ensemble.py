"""
A bootstrap ensemble of weak supervisors and its votes (train.py --role weak --ensemble K: run_ensemble trains the
members, each on its own resample of weak_train, then votes): classification votes row by row on the members' class
probabilities; generation votes token by token while the members decode together (decode.py's soft and hard vote).
"""
import dataclasses
from pathlib import Path

import numpy as np

from core import cli, digests
from core.cli import UserError
from models import checkpoints
from models.tokenizer import load_tokenizer
from run import rundir
from run.config import DEFAULT_MODELS, comparable
from run.generation import supervisor_predictions
from run.job import cached_task
from run.runtime import setup_runtime
from scoring.metrics import metrics


def vote(member_probs, how):
    """Combine K weak supervisors' probabilities (K, N, C). soft: mean of probabilities. hard: majority of the
    members' argmax, ties broken toward the class with the higher mean probability; returned one-hot."""
    member_probs = np.asarray(member_probs, dtype=np.float64)
    mean = member_probs.mean(0)
    if how == "soft":
        return mean
    assert how == "hard", how
    C = member_probs.shape[-1]
    counts = np.stack([(member_probs.argmax(-1) == c).sum(0) for c in range(C)], -1).astype(np.float64)
    winner = (counts + 1e-6 * mean).argmax(-1)  # mean prob (< 1) only decides among tied counts
    return np.eye(C)[winner]


def vote_continuations(cfg, task, out, members, tok, rt):
    """Generation: the members decode together, token by token (generation.py): soft = their mean next-token
    probabilities, hard = the token most of them pick. Written to out/hard and out/soft."""
    saved = ["ckpt/config.json" if (d / "ckpt/config.json").is_file() else "ckpt/adapter_config.json" for d in members]
    models = [checkpoints.load(rundir.verified(d, s).parent).to(rt.device) for d, s in zip(members, saved)]
    max_len = min([cfg.max_length] + [m.config.block_size for m in models])
    written = []
    for how in ("hard", "soft"):
        (out / how).mkdir(exist_ok=True)
        rundir.write_json(out / how / "predictions.json",
                          supervisor_predictions(models, how, tok, task, rt.device, rt.autocast, cfg, max_len))
        written.append(f"{how}/predictions.json")
    return {}, written


def vote_probabilities(out, members):
    """Classification: the members' class probabilities, voted row by row (vote). Written to out/hard and out/soft,
    with their test metrics."""
    member_preds = [cli.read_json(d / "predictions.json") for d in members]
    results, written = {}, []
    for how in ("hard", "soft"):
        voted = {}
        for split, first in member_preds[0].items():
            if any(p[split]["ids"] != first["ids"] for p in member_preds[1:]):
                raise UserError(f"ensemble members in {out} disagree on the ids of split {split}: rerun them")
            probs = vote([p[split]["probs"] for p in member_preds], how)
            voted[split] = {"ids": first["ids"], "labels": first["labels"], "probs": probs.round(6).tolist()}
        (out / how).mkdir(parents=True, exist_ok=True)
        rundir.write_json(out / how / "predictions.json", voted)
        test = voted["test"]
        results[how] = {"test": metrics(np.array(test["labels"]), np.array(test["probs"]))}
        written.append(f"{how}/predictions.json")
    return results, written


def vote_inputs(members, generation):
    """What the votes read, by content: the members' predictions, or for generation their weights, which each
    member's metrics.json records."""
    return {"members": [digests.sha256_file(d / "metrics.json") if generation else
                        digests.sha256_file(rundir.verified(d, "predictions.json")) for d in members]}


def run_ensemble(cfg, run):
    """K weak supervisors, each on a bootstrap resample of weak_train from its own seed; each member's labels are
    kept, and both votes are written from the same members (ensemble/hard, ensemble/soft). The ensemble's own
    metrics.json records the members' predictions it voted on. `run`: train.run, which trains (or skips) a member."""
    out = Path(cfg.out)
    task = cached_task(cfg.task, cfg.data_dir, cfg.seed, cfg.limit)
    generation = task.kind == "generation"
    members = [out / f"member{k}" for k in range(cfg.ensemble)]
    for k, member_dir in enumerate(members):  # a generation vote decodes with the members: they keep their weights
        run(dataclasses.replace(cfg, ensemble=1, member=k, out=str(member_dir),
                                save_checkpoint=cfg.save_checkpoint or generation))
    inputs = vote_inputs(members, generation)
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
            results, written = vote_continuations(cfg, task, out, members, load_tokenizer(tok_source), rt)
        else:
            results, written = vote_probabilities(out, members)
        rundir.write_json(out / "metrics.json", results | {"outputs": rundir.outputs_of(out, ["config.json"] + written),
                                                           "inputs": inputs})
    return results
