"""
The `train` section: the training step of train.py's classification loop (soft cross entropy, grad clip, fused AdamW)
on rows of --seq-len random tokens: tokens/s and MFU, ours vs transformers' GPT2ForSequenceClassification at the same
weights; first a logit parity check. Its parity check and timed step also serve the llama-train section.

    python bench.py --sections train
"""
import torch

from benchmarks.common import (PAD, check_row, exact_fp32, mfu, timing_row, train_flops_per_token, transformers,
                               value_row)
from benchmarks.memory import trainer
from run.predict import Classifier


def section_train(ctx):
    """training step of train.py's classification loop (rows of random tokens, no padding: the causal fast path)
    ref: transformers GPT2ForSequenceClassification, same weights, batch, autocast and optimizer"""
    S, c = "train", ctx.cfg
    ours, hf = ctx.ours(c["shape"]), ctx.hf(transformers.GPT2ForSequenceClassification, c["shape"])
    return [classify_parity(S, ours, hf)] + train_step_rows(ctx, S, ours, hf, PAD, "")


def classify_parity(section, ours, hf, pad=PAD):
    """Both models' class logits on padded and unpadded rows, in exact fp32: the same computation, or no bench.
    Tokens are drawn below `pad`, the pad id."""
    ours.eval()
    hf.eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, pad, (4, 16), generator=g)
    mask = torch.ones_like(idx)
    mask[1, 10:], mask[3, 5:] = 0, 0
    idx, mask = idx.masked_fill(mask == 0, pad).to(ours.lm_head.weight.device), mask.to(ours.lm_head.weight.device)
    with torch.no_grad(), exact_fp32():
        diff = (ours.classify(idx, mask) - hf(input_ids=idx, attention_mask=mask).logits).abs().max().item()
    return check_row(section, "parity: class logits max |ours - ref| (fp32)", diff, diff < 1e-4)


def train_step_rows(ctx, S, ours, hf, pad, what):
    """Timing (and MFU) rows of train.py's classification step, ours vs transformers, on B x T random tokens below
    `pad`; what: the model, for the row's label ("" for the GPT-2 shape the suite names in its header)."""
    c, dev = ctx.cfg, ctx.device
    ours.train()
    hf.train()
    step = {"ours": trainer(ctx.compiled(Classifier(ours)), ours, ctx.autocast),
            "ref": trainer(ctx.compiled(lambda i, m: hf(input_ids=i, attention_mask=m).logits, "ref"), hf,
                           ctx.autocast)}
    B, T, n = c["batch_size"], c["seq_len"], c["steps"]
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, pad, (B, T), generator=g).to(dev)
    y = torch.softmax(torch.randn(B, 2, generator=g), -1).to(dev)
    for s in step.values():  # warm-up (and compilation)
        for _ in range(2):
            s(idx, None, y)
    t = ctx.time({k: (lambda s=s: [s(idx, None, y) for _ in range(n)]) for k, s in step.items()})
    label = f"training, {what + ', ' if what else ''}B{B} T{T} {c['dtype']}, {n} steps a round"
    row = timing_row(S, label, t["ours"], t["ref"],
                     work=n * B * T, unit="tokens/s")
    fpt = train_flops_per_token(ours, T, lm_head=False)
    peak = ("no stated peak for a CPU (give --peak-tflops)" if ctx.peak is None and dev.type == "cpu" else
            "unknown GPU: give --peak-tflops" if ctx.peak is None else f"peak {ctx.peak / 1e12:.0f} TFLOP/s")
    return [row, value_row(S, "MFU (median tokens/s)", *(mfu(row[k]["median"], fpt, ctx.peak) for k in ("ours", "ref")),
                           note=f"{fpt / 1e6:,.1f}M train FLOPs/token; {peak}")]
