"""
The `epoch` section: one epoch of real safety rows (w2s_train), length-bucketed batches vs every row padded to
--max-length, ours vs transformers' GPT2ForSequenceClassification in the same loop (same batches, step, optimizer).

    python bench.py --sections epoch
"""
import functools

import numpy as np
import torch

from benchmarks.common import pad_to, skipped_row, timing_row, transformers
from benchmarks.memory import trainer
from run.batching import bucketed_batches, collate
from run.predict import Classifier


def section_epoch(ctx):
    """one epoch of real safety rows (w2s_train): length-bucketed batches vs every row padded to --max-length
    ref: transformers GPT2ForSequenceClassification in the same loop (same batches, step and optimizer)"""
    S, c, dev, data = "epoch", ctx.cfg, ctx.device, ctx.safety
    if data is None:
        return [skipped_row(S, f"safety data not found under {ctx.args.data_dir} (--data-dir)")]
    seqs, B, L = data["seqs"], c["batch_size"], c["max_length"]
    lengths = [len(s) for s in seqs]
    order = np.random.default_rng(0).permutation(len(seqs))
    plans = {"bucketed": bucketed_batches(lengths, B, seed=0, epoch=0),
             "padded": [order[i:i + B] for i in range(0, len(seqs), B)]}
    ours, hf = ctx.ours(c["shape"]).train(), ctx.hf(transformers.GPT2ForSequenceClassification, c["shape"]).train()
    step = {"ours": trainer(ctx.compiled(Classifier(ours)), ours, ctx.autocast),
            "ref": trainer(ctx.compiled(lambda i, m: hf(input_ids=i, attention_mask=m).logits, "ref"), hf,
                           ctx.autocast)}

    def batch(b, plan):
        idx, mask = collate([seqs[i] for i in b], data["pad"], dev)
        if plan == "padded":
            idx, mask = pad_to(idx, mask, L, data["pad"])
        return idx, mask, torch.tensor(np.stack([data["targets"][i] for i in b]), dtype=torch.float32, device=dev)

    def epoch(side, plan):
        for b in plans[plan]:
            step[side](*batch(b, plan))
    for plan, batches in plans.items():  # warm-up: one batch per distinct shape, where --compile does its recompiles
        shapes = {}
        for b in batches:
            idx, mask, _ = batch(b, plan)
            shapes.setdefault((*idx.shape, mask is None), b)
        for side in step:
            for b in shapes.values():
                step[side](*batch(b, plan))
    t = ctx.time({f"{side} {plan}": functools.partial(epoch, side, plan) for plan in plans for side in step})
    pad = {plan: 1 - sum(lengths) / sum(len(b) * (L if plan == "padded" else max(lengths[i] for i in b))
                                        for b in batches) for plan, batches in plans.items()}
    n = f"{len(seqs)} rows, B{B}"
    return [timing_row(S, f"epoch, bucketed ({n}, {pad['bucketed']:.0%} padding)", t["ours bucketed"],
                       t["ref bucketed"], unit="s/epoch"),
            timing_row(S, f"epoch, padded to {L} ({pad['padded']:.0%} padding)", t["ours padded"], t["ref padded"],
                       unit="s/epoch"),
            timing_row(S, f"ours bucketed | ref column: ours padded to {L}", t["ours bucketed"], t["ours padded"],
                       unit="s/epoch")]
