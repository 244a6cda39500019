"""
The fitted probe's cost (methods/probe.py): one stage's fit on N rows x D features, its 10-penalty path
cross-validated over 5 folds, the refit and the method, timed by part. The target: 4,000 x 576 (SmolLM2-135M's width)
under 2 s on a 2-core CPU. The rows are synthetic: Gaussian features with correlated directions and labels drawn from
a planted logistic model, so the fit has the conditioning of real hidden states (a few directions carry most
variance).

    python -m benchmarks.probe               # 4,000 x 576, 2 classes, 3 rounds, the median
    python -m benchmarks.probe --rows 1000 --classes 4 --threads 1
"""
import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from methods import probe


def synthetic(rows, dim, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim ** 0.5
    scales = torch.logspace(1, -2, dim, dtype=torch.float64)  # a spectrum like a transformer's hidden states
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64) * scales @ mixing + 3.0
    planted = torch.randn(dim, classes, generator=g, dtype=torch.float64)
    logits = (x - x.mean(0)) / x.std(0) @ planted / dim ** 0.5 * 2
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return x.float(), torch.nn.functional.one_hot(labels, classes).double(), [f"row-{i}" for i in range(rows)]


def timed_fit(x, targets, ids, cfg):
    """Seconds of each part of probe.fit_head, run as fit_head runs them."""
    parts, start = {}, time.perf_counter()
    rows = probe.Rows.of(x)
    parts["standardize + rotate"] = time.perf_counter() - start
    t0 = time.perf_counter()
    penalty, cv_loss, _ = probe.choose_penalty(rows, targets, probe.folds_of(ids, cfg.probe_folds))
    parts["cross-validated path"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    params, iterations, grad = probe.solve(rows, targets, penalty)
    parts["refit"] = time.perf_counter() - t0
    parts["total"] = time.perf_counter() - start
    return parts, {"penalty": penalty, "refit_iterations": iterations, "grad": grad}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--rows", type=int, default=4000, help="training rows (default 4000)")
    p.add_argument("--dim", type=int, default=576, help="features per row (default 576, SmolLM2-135M's width)")
    p.add_argument("--classes", type=int, default=2, help="classes (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="fits timed; the median is printed (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's own choice)")
    args = p.parse_args(argv)
    if min(args.rows, args.dim, args.rounds) < 1 or args.classes < 2:
        p.error("--rows, --dim and --rounds must be at least 1 and --classes at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    x, targets, ids = synthetic(args.rows, args.dim, args.classes)
    cfg = SimpleNamespace(probe_folds=probe.FOLDS)
    runs = [timed_fit(x, targets, ids, cfg) for _ in range(args.rounds)]
    print(f"fitted probe: {args.rows} rows x {args.dim} features, {args.classes} classes, {len(probe.PENALTIES)} "
          f"penalties x {probe.FOLDS} folds, {torch.get_num_threads()} threads, median of {args.rounds}")
    for part in runs[0][0]:
        values = [r[0][part] for r in runs]
        print(f"  {part:<22} {statistics.median(values):7.3f} s   (min {min(values):.3f}, max {max(values):.3f})")
    info = runs[0][1]
    print(f"  chosen penalty {info['penalty']:.3g}, refit {info['refit_iterations']} iterations, gradient norm "
          f"{info['grad']:.2e} (tolerance {probe.TOL:g})")
    return runs


if __name__ == "__main__":
    main()
