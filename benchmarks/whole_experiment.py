"""
The `experiment` section: the whole safety experiment (w2s.py: ensemble of 5, every student, one seed, real rows)
with random-init models, wall seconds per stage and in total: CUDA at the paper's shapes (random:gpt2 ->
random:gpt2-medium, every w2s_train row, 3 epochs), CPU small (random:2x64 -> random:4x128, 200 rows a split, 1 epoch).

    python bench.py --sections experiment
"""
import contextlib
import sys
import time

from benchmarks.common import skipped_row, value_row


def section_experiment(ctx):
    """the whole safety experiment (w2s.py): ensemble of 5, every student, one seed, random-init models, real rows
    no reference: wall seconds of every stage and of the whole run (CUDA: the paper's shapes, gpt2 -> gpt2-medium)"""
    S, c = "experiment", ctx.cfg
    if ctx.safety is None:
        return [skipped_row(S, f"no safety data under {ctx.args.data_dir}")]
    import w2s
    out = ctx.workdir / "experiment"
    argv = ["--task", "safety", "--data-dir", ctx.args.data_dir, "--weak", f"random:{c['exp_weak']}",
            "--strong", f"random:{c['exp_strong']}", "--ensemble", "5", "--students", "all", "--seeds", "0",
            "--epochs", str(c["exp_epochs"]), "--max-length", str(c["max_length"]), "--out", str(out), "--quiet",
            "--n-boot", "200", "--dtype", c["dtype"]] + (["--limit", str(c["exp_limit"])] if c["exp_limit"] else [])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # its progress beside bench's own, not in the table or --json
        results = w2s.main(argv)
    wall = time.perf_counter() - t0
    rows = [value_row(S, f"{stage} (s)", seconds, None) for stage, seconds in results["timing"]["stage_seconds"].items()]
    splits = results["description"]["splits"]
    return rows + [value_row(S, f"whole experiment, {len(rows)} stages, random:{c['exp_weak']} -> random:"
                                f"{c['exp_strong']}, w2s_train {splits['w2s_train']} rows, {c['exp_epochs']} epoch(s) (s)",
                             wall, None, note=f"every student's PGR computed: {len(results['seeds']['0']['pgr'])}")]
