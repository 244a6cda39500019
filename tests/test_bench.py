"""bench.py: its FLOPs / MFU arithmetic against a hand computation, and a smoke run showing that
both sides of every comparison compute the same thing. No timing is asserted."""
import pytest
import torch

import bench
from model import GPT, GPTConfig


def gpt2_medium(n_classes):
    with torch.device("meta"):  # shapes only: no 1.4 GB of weights
        return GPT(GPTConfig(n_layer=24, n_head=16, n_embd=1024, n_classes=n_classes))


def test_train_flops_per_token_of_gpt2_medium_match_hand_computation():
    # GPT-2 medium by hand: wte 50257*1024 = 51,463,168; wpe 1024*1024 = 1,048,576; per layer 2 LayerNorms 2*2048,
    # c_attn 1024*3072+3072, attn c_proj 1024*1024+1024, c_fc 1024*4096+4096, mlp c_proj 4096*1024+1024
    # = 12,596,224, times 24 = 302,309,376; ln_f 2048. Total 354,823,168 (transformers' count for gpt2-medium).
    lm = gpt2_medium(0)
    assert lm.num_params() == 354_823_168
    # 6 * (params without wpe) + 12 * n_layer * n_embd * seq = 6 * 353,774,592 + 12 * 24 * 1024 * 512
    assert bench.train_flops_per_token(lm, 512, lm_head=True) == 2_122_647_552 + 150_994_944
    # a classifier never runs the (tied) lm_head: 6 * 51,463,168 fewer, plus its 2-class head 6 * 2048
    cls = gpt2_medium(2)
    assert bench.train_flops_per_token(cls, 512, lm_head=False) == 2_273_642_496 - 308_779_008 + 12_288


def test_mfu_and_datasheet_peaks():
    # 200k tokens/s at 1,964,875,776 FLOPs/token on an H100 SXM (989 TFLOP/s bf16 dense) = 3.9298e14 / 9.89e14
    assert bench.mfu(200_000, 1_964_875_776, 989e12) == pytest.approx(0.397346, abs=1e-6)
    assert bench.mfu(200_000, 1_964_875_776, None) is None  # unknown peak: MFU n/a, never a made-up number
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert bench.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", "fp32") == 495e12  # TF32 tensor cores
    assert bench.peak_flops("NVIDIA H200", "bf16") == 989e12
    assert bench.peak_flops("NVIDIA GeForce GTX 1080", "bf16") is None


def test_quick_bench_compares_equal_computations(shared_data, capsys):
    n = torch.get_num_threads()
    try:
        res = bench.main(["--quick", "--json", "--threads", "1", "--data-dir", str(shared_data)])
    finally:
        torch.set_num_threads(n)
    assert res["parity_max_abs_logit_diff"] < 1e-5  # ours and transformers: same weights, same logits
    assert res["generate_outputs_equal"]  # greedy continuations of left-padded prompts, token for token
    ep = res["epoch"]
    assert ep["examples"] == 32 and ep["bucketed"]["steps"] == ep["padded"]["steps"] == 8
    assert ep["bucketed"]["padding_fraction"] < ep["padded"]["padding_fraction"]
    assert '"generate_new_tok_s"' in capsys.readouterr().out  # --json printed the result
