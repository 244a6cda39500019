"""bench.py --memory: the fake-tensor estimate of a training step's memory against the same step run for real,
against a hand count (parameters, AdamW state, the batch) and against autograd's own saved tensors; and grad
checkpointing must lower it. A tiny model with a small vocabulary, so activations are not lost beside the embedding."""
import contextlib

import pytest
import torch

import bench
import bench_memory
from losses import xent_loss
from model import GPT, GPTConfig

SHAPE = dict(n_layer=4, n_head=4, n_embd=64, vocab_size=256, block_size=64)
B, T = 4, 32


@pytest.mark.parametrize("dtype, ckpt", [("fp32", False), ("bf16", True)])
def test_fake_estimate_equals_the_real_step(dtype, ckpt):
    # the same code on real tensors (it runs) and on fake ones (nothing computed): every category, byte for byte
    real = bench_memory.step_memory(SHAPE, B, T, ckpt, dtype, "cpu", fake=False)
    fake = bench_memory.step_memory(SHAPE, B, T, ckpt, dtype, "cpu", fake=True)
    assert fake == real
    assert real["Activation"] > 0 and real["Total"] == sum(v for k, v in real.items() if k != "Total")


def test_parameters_adam_state_and_batch_match_a_hand_count():
    est = bench_memory.step_memory(SHAPE, B, T, False, "fp32", "cpu", fake=True)
    params = list(GPT(GPTConfig(**SHAPE, n_classes=2)).parameters())  # 4 blocks x 12 + wte, wpe, ln_f x2, score
    n = sum(p.numel() for p in params)
    assert len(params) == 53
    assert est["Parameter"] == 4 * n  # fp32 weights, also under bf16 autocast
    assert est["Optstate"] == 2 * 4 * n + 4 * len(params)  # exp_avg, exp_avg_sq, and fused AdamW's fp32 step tensor
    assert est["Other"] == 8 * B * T * 2 + 4 * B * 2  # idx and mask (int64), targets (fp32)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_activations_are_what_autograd_saves(dtype):
    # independent of MemTracker: the bytes of every non-parameter storage autograd saves for backward in the forward
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, n_classes=2))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    idx = torch.randint(0, SHAPE["vocab_size"], (B, T))
    mask = torch.ones_like(idx)
    mask[0, T // 2:] = 0
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast:
            logits = model.classify(idx, mask)
        xent_loss(logits.float(), torch.full((B, 2), 0.5))
    est = bench_memory.step_memory(SHAPE, B, T, False, dtype, "cpu", fake=True)
    # the peak comes early in backward, when the last layers' saved tensors may already be freed
    assert 0.9 * sum(saved.values()) <= est["Activation"] <= 1.02 * sum(saved.values())


def test_grad_checkpoint_lowers_the_activation_peak():
    plain = bench_memory.step_memory(SHAPE, B, T, False, "fp32", "cpu", fake=True)
    ckpt = bench_memory.step_memory(SHAPE, B, T, True, "fp32", "cpu", fake=True)
    # checkpointing keeps each block's input (and recomputes one block at a time in backward)
    assert ckpt["Activation"] < 0.5 * plain["Activation"]
    assert ckpt["Total"] < plain["Total"]
    assert ckpt["Parameter"] == plain["Parameter"] and ckpt["Optstate"] == plain["Optstate"]


def test_memory_mode_prints_its_table_and_json(capsys):
    res = bench.main(["--memory", "--shape", "tiny", "--batch-size", "2", "--seq-len", "16", "--dtype", "fp32"])
    rows = res["memory"]["rows"]
    assert [(r["shape"], r["dtype"], r["grad_checkpoint"]) for r in rows] == [("tiny", "fp32", False),
                                                                             ("tiny", "fp32", True)]
    n = GPT(GPTConfig(**bench.SHAPES["tiny"], n_classes=2)).num_params()
    assert all(r["Parameter"] == 4 * n for r in rows)
    out = capsys.readouterr().out
    assert "peak memory of one training step" in out and "Adam" in out
    bench.main(["--memory", "--shape", "tiny", "--batch-size", "2", "--seq-len", "16", "--dtype", "fp32", "--json"])
    assert '"memory"' in capsys.readouterr().out
