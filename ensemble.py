"""
The votes of a bootstrap ensemble of weak supervisors (train.py --role weak --ensemble K trains the members, each on
its own resample of weak_train, then calls these): classification votes row by row on the members' class
probabilities; generation votes token by token while the members decode together (decode.py's soft and hard vote).
"""
import numpy as np

import cli
import rundir
from cli import UserError
from metrics import metrics
from generation import supervisor_predictions
from model import GPT


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
    models = [GPT.from_pretrained(rundir.verified(d, "ckpt/model.safetensors").parent).to(rt.device) for d in members]
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
