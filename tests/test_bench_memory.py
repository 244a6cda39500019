"""bench.py --memory: the fake-tensor estimate of a training step's memory against the same step run for real,
against a hand count (parameters, AdamW state, the batch) and against autograd's own saved tensors; and grad
checkpointing must lower it. A tiny model with a small vocabulary, so activations are not lost beside the embedding."""
import contextlib

import pytest
import torch

import bench
from benchmarks import memory as bench_memory
from benchmarks.common import SHAPES
from benchmarks.llama_family import LLAMA_SHAPES
from methods.losses import xent_loss
from model import GPT, GPTConfig
from models import lora

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


@pytest.mark.parametrize("dtype, ckpt", [("fp32", False), ("bf16", True)])
def test_lora_estimate_equals_the_real_step_and_counts_only_the_trained_tensors_state(dtype, ckpt):
    real = bench_memory.step_memory(SHAPE, B, T, ckpt, dtype, "cpu", fake=False, lora_rank=4)
    fake = bench_memory.step_memory(SHAPE, B, T, ckpt, dtype, "cpu", fake=True, lora_rank=4)
    assert fake == real
    model = bench_memory.classifier_of_shape(SHAPE, ckpt, lora_rank=4, dtype=dtype)
    trained = [p for p in model.parameters() if p.requires_grad]  # 4 blocks x 4 projections x (A, B) + score
    n_trained = sum(p.numel() for p in trained)
    assert len(trained) == 33
    # the frozen weights too: under bf16 the adapted projections' in bf16 (add_lora's frozen_dtype), 2 bytes each
    projections = sum(p.numel() for _, _, layer in lora.lora_layers(model) for p in (layer.weight, layer.bias)
                      if p is not None)
    assert real["Parameter"] == 4 * model.num_params() - (2 * projections if dtype == "bf16" else 0)
    assert real["Optstate"] == 2 * 4 * n_trained + 4 * len(trained)  # AdamW's state of the trained tensors only
    assert 0 < real["Gradient"] <= 4 * n_trained
    full = bench_memory.step_memory(SHAPE, B, T, ckpt, dtype, "cpu", fake=True)
    assert real["Total"] < full["Total"] and real["Optstate"] < full["Optstate"] / 10


def test_memory_mode_prints_its_table_and_json(capsys):
    res = bench.main(["--memory", "--shape", "tiny", "--batch-size", "2", "--seq-len", "16", "--dtype", "fp32"])
    rows = res["memory"]["rows"]
    assert [(r["shape"], r["dtype"], r["grad_checkpoint"]) for r in rows] == [("tiny", "fp32", False),
                                                                             ("tiny", "fp32", True)]
    n = GPT(GPTConfig(**SHAPES["tiny"], n_classes=2)).num_params()
    assert all(r["Parameter"] == 4 * n for r in rows)
    out = capsys.readouterr().out
    assert "peak memory of one training step" in out and "Adam" in out
    bench.main(["--memory", "--shape", "tiny", "--batch-size", "2", "--seq-len", "16", "--dtype", "fp32", "--json"])
    assert '"memory"' in capsys.readouterr().out
    res = bench.main(["--memory", "--shape", "tiny", "--batch-size", "2", "--seq-len", "16", "--dtype", "fp32",
                      "--lora-rank", "4"])
    assert [(r["lora_rank"], r["grad_checkpoint"]) for r in res["memory"]["rows"]] == [(0, False), (0, True),
                                                                                        (4, False), (4, True)]
    assert "lora" in capsys.readouterr().out


def test_the_7b_shape_has_llama_2_7bs_parameter_count():
    # 6,738,415,616: Llama-2-7B's published count (untied 32000 x 4096 embedding and LM head, 32 blocks of 4096-wide
    # attention and an 11008-wide SwiGLU), built on the meta device
    with torch.device("meta"):
        model = bench_memory.classifier_of_shape(LLAMA_SHAPES["llama2-7b"], False)
    assert model.num_params() - model.score.weight.numel() == 6_738_415_616
