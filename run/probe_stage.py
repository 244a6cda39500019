"""
A train.py stage on a fitted head (--train-layers 0 --probe fit): the stage's features, stored or (--recompute-bottom)
computed now, fitted by methods/probe.py, the head put in place, the fit's record and its warnings logged.
"""
import numpy as np
import torch

from methods.probe import PENALTIES, TOL, fit_head
from run.features import bottom_rows


def stage_features(top, rows, rt):
    """(N, D) float64 features of a stage's rows: the stored ones, or (--recompute-bottom, token rows) the frozen
    bottom run over them now, as the store computes them."""
    if rows and hasattr(rows[0], "x"):
        return torch.stack([r.x for r in rows]).double()
    with torch.no_grad():
        return torch.stack(bottom_rows(top.base[0], rows, 0, rt.device)).double().cpu()


def fit_stage(cfg, job, rt, top):
    """--probe fit for train.py: the head of `top` (features.TopBlocks, K = 0) fitted on the job's training rows and
    targets and put in place (a Linear with a bias, the standardization folded in). Returns what the SGD loop's
    stats would hold, with the fit's record under "probe"."""
    x = stage_features(top, job.train_x, rt)
    weight, bias, record = fit_head(x, job.train_targets, [r["id"] for r in job.train_rows], cfg)
    head = torch.nn.Linear(x.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    top.score = top.base[0].score = head.to(rt.device)
    val_targets = torch.as_tensor(np.asarray(job.val_targets), dtype=torch.float64)
    if cfg.learned:  # the members mixed by the fitted weights
        val_targets = torch.einsum("k,nkc->nc", torch.tensor(record["member_weights"], dtype=torch.float64),
                                   val_targets)
    logits = stage_features(top, job.val_x, rt) @ weight.T + bias
    val_loss = float(-(val_targets * torch.log_softmax(logits, 1)).sum(1).mean())
    rt.log(f"fitted probe ({record['method']}): penalty {record['penalty']:.3g} of {len(PENALTIES)} by "
           f"{record['folds']}-fold cross-validation, {record['refit_iterations']} + {record['iterations']} iterations "
           f"(refit, method), gradient norm "
           f"{record['grad']:.2e}, val loss {val_loss:.4f}")
    if not record["converged"]:
        print(f"[{rt.name}] warning: the fitted probe stopped short of its tolerance (gradient norm {record['grad']:.2e} "
              f"> {TOL:g}{', after ' + str(record['rounds']) + ' refits' if 'rounds' in record else ''}): "
              "its record says so (metrics.json: probe.converged false)", flush=True)
    if record["at_path_end"]:
        print(f"[{rt.name}] note: the fitted probe's penalty {record['penalty']:g} is at the end of the path "
              f"{PENALTIES[0]:g}..{PENALTIES[-1]:g}", flush=True)
    stats = {"best_step": record["iterations"], "best_val_loss": val_loss, "select": "fit",
             "steps": record["iterations"], "train_examples": len(job.train_x), "padding_fraction": 0.0,
             "probe": record}
    return stats | ({"member_weights": record["member_weights"]} if cfg.learned else {})
