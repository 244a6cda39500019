"""The frozen bottom's outputs (features.py): what --train-layers K trains on, and the store that caches them."""
from types import SimpleNamespace

import pytest
import torch

from model import GPT, CheckpointError, GPTConfig
from models import llama
from models.llama import Llama, LlamaConfig
from run import features
from run.batching import collate

CPU = SimpleNamespace(device=torch.device("cpu"), autocast=torch.autocast("cpu", enabled=False))
NUMERICS = {"device": "cpu", "dtype": "fp32"}


def tiny_gpt(seed=0, n_layer=4):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=64, vocab_size=257, n_layer=n_layer, n_head=2, n_embd=32, n_classes=2)).eval()


def tiny_llama(seed=0, n_layer=4):
    torch.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=257, block_size=64, n_layer=n_layer, n_head=4, n_kv_head=2, n_embd=32,
                             intermediate_size=48, n_classes=2)).eval()


def texts(n=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (int(t),), generator=g).tolist() for t in torch.randint(2, 20, (n,), generator=g)]


@torch.no_grad()
@pytest.mark.parametrize("build", [tiny_gpt, tiny_llama])
def test_truncated_model_equals_full_models_hidden_state_at_that_depth_then_final_norm(build, monkeypatch):
    seqs = texts()
    idx, mask = collate(seqs, 0, CPU.device)
    monkeypatch.setattr(features, "BATCH", 1)
    every_depth = features.bottom_rows(build(), seqs, 0, CPU.device, every_depth=True)
    last = mask.sum(1) - 1
    for depth in range(1, 5):
        truncated = build().truncate(depth)
        assert truncated.config.n_layer == depth == len(truncated.blocks)
        expect = truncated.hidden(idx, mask)[torch.arange(len(seqs)), last]  # padded: equal up to rounding
        assert torch.allclose(torch.stack(every_depth[depth - 1]), expect, atol=1e-5, rtol=0)
        for i, s in enumerate(seqs):  # each text alone: bit for bit
            assert torch.equal(every_depth[depth - 1][i], truncated.hidden(torch.tensor([s]))[0, -1])


@pytest.mark.parametrize("build", [tiny_gpt, tiny_llama])
def test_truncate_outside_the_models_depth_is_one_clear_error(build):
    for depth in (0, 5):
        with pytest.raises(CheckpointError, match=f"depth {depth} is outside 1..4, the blocks this model has"):
            build().truncate(depth)


@torch.no_grad()
@pytest.mark.parametrize("k", [0, 2])
def test_a_texts_features_depend_on_its_batch_only_in_the_last_bits_and_not_at_all_one_at_a_time(k, monkeypatch):
    seqs = texts() * 2
    model = tiny_gpt()
    together = features.bottom_rows(model, seqs, k, CPU.device)
    monkeypatch.setattr(features, "BATCH", 1)
    alone = features.bottom_rows(model, seqs, k, CPU.device)
    assert max((a - b).abs().max().item() for a, b in zip(together, alone)) < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(alone, features.bottom_rows(model, seqs[::-1], k, CPU.device)[::-1]))


def test_store_is_reused_and_a_text_is_computed_once(monkeypatch, tmp_path):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path))
    seqs, identity = texts(), {"random": "test-store"}
    calls = []
    compute = features._compute
    monkeypatch.setattr(features, "_compute", lambda m, s, *a: calls.append(len(s)) or compute(m, s, *a))
    first = features.cached_features(tiny_gpt(), seqs + seqs[:5], 0, 3, identity, NUMERICS, CPU, quiet=True)
    assert calls == [len(set(map(tuple, seqs)))]
    # another depth of the same model was filled by the same pass; more texts compute only the new ones
    again = features.cached_features(tiny_gpt(), seqs, 0, 2, identity, NUMERICS, CPU, quiet=True)
    assert calls == [len(set(map(tuple, seqs)))]
    more = texts(5, seed=9)
    features.cached_features(tiny_gpt(), seqs + more, 0, 3, identity, NUMERICS, CPU, quiet=True)
    assert calls[1:] == [5]
    assert [len(f) for f in first] == [len(s) for s in seqs + seqs[:5]] and all(f.x.shape == (32,) for f in again)
    # other numerics or another model are other stores
    features.cached_features(tiny_gpt(), seqs[:2], 0, 3, identity, {"device": "cpu", "dtype": "bf16"}, CPU, True)
    assert calls[2:] == [2]


def test_a_tampered_store_is_found_and_recomputed(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path))
    seqs, identity = texts(), {"random": "test-tamper"}
    good = features.cached_features(tiny_gpt(), seqs, 2, 4, identity, NUMERICS, CPU, quiet=True)
    data = features.store_dir(identity, NUMERICS, "block2") / "features.safetensors"
    raw = bytearray(data.read_bytes())
    raw[-7] ^= 0xFF  # one flipped bit in the last tensor
    data.write_bytes(bytes(raw))
    again = features.cached_features(tiny_gpt(), seqs, 2, 4, identity, NUMERICS, CPU, quiet=True)
    assert "is damaged (sha256 differs from the one recorded): recomputing it" in capsys.readouterr().out
    assert all(torch.equal(a.x, b.x) for a, b in zip(good, again))
    assert good[0].x.shape == (len(seqs[0]), 32)


@pytest.mark.parametrize("build", [tiny_gpt, tiny_llama])
def test_top_blocks_train_only_the_top_and_equal_the_full_model_on_cached_features(build, monkeypatch, tmp_path):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path))
    model = build()
    seqs = texts(8)
    idx, mask = collate(seqs, 0, CPU.device)
    expect = model.classify(idx, mask)
    monkeypatch.setattr(features, "BATCH", 1)
    for k in (0, 2):
        feats = features.cached_features(model, seqs, k, 4, {"random": f"top{k}"}, NUMERICS, CPU, quiet=True)
        top = features.TopBlocks(model, k)
        x, m = features.collate_features(feats, CPU.device)
        assert torch.allclose(top(x, m), expect, atol=1e-5)
        assert torch.equal(top(x, m), features.TopBlocks(model, k, bottom_every_step=True)(idx, mask))
        assert all(p.requires_grad for p in top.parameters())
        assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("transformer.h.0"))
    top2 = features.TopBlocks(model, 2)
    assert {id(p) for p in top2.parameters()} == {id(p) for m in [*model.blocks[2:], model.norm, model.score]
                                                  for p in m.parameters()}


def test_a_store_written_on_another_cpu_kind_is_not_read_and_hits_and_misses_are_logged(monkeypatch, tmp_path):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path))
    seqs, identity, lines = texts(), {"random": "test-cpu-kind"}, []
    n = len(set(map(tuple, seqs)))
    computed = []
    compute = features._compute
    monkeypatch.setattr(features, "_compute", lambda m, s, *a: computed.append(len(s)) or compute(m, s, *a))

    def run(kind, rows):
        monkeypatch.setattr(features, "cpu_kind", lambda: kind)
        return features.cached_features(tiny_gpt(), rows, 0, 3, identity, NUMERICS, CPU, quiet=True, log=lines.append)
    run("GenuineIntel AVX512 torch 2.13.0+cpu", seqs + seqs[:3])  # a repeated text is one miss
    here = run("AuthenticAMD AVX512 torch 2.13.0+cpu", seqs)  # the Intel store is not this one's
    assert computed == [n, n]
    again = run("AuthenticAMD AVX512 torch 2.13.0+cpu", seqs + texts(4, seed=9))
    assert computed == [n, n, 4] and all(torch.equal(a.x, b.x) for a, b in zip(here, again))
    assert [line.split(": ", 1)[1] for line in lines] == [f"{n} texts, 0 hits, {n} misses"] * 2 + [
        f"{n + 4} texts, {n} hits, 4 misses"]
    assert lines[0].split(":")[0] != lines[1].split(":")[0] == lines[2].split(":")[0]  # another directory
    assert features.hardware_kind(NUMERICS) == "AuthenticAMD AVX512 torch 2.13.0+cpu"


def tiny_qwen(seed=0):  # biases on q, k, v and RMSNorm of each head's q and k: the packed trunk's other branches
    torch.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=257, block_size=64, n_layer=4, n_head=4, n_kv_head=2, n_embd=32,
                             intermediate_size=48, attention_bias=True, qk_norm=True, n_classes=2)).eval()


BF16 = SimpleNamespace(device=torch.device("cpu"), autocast=torch.autocast("cpu", dtype=torch.bfloat16))


@torch.no_grad()
@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen])
def test_packed_bf16_trunk_equals_autocast_over_fp32_weights_text_by_text(build, monkeypatch):
    model, seqs = build(), texts() * 2
    with BF16.autocast:
        assert features.packed(model, CPU.device) is model
        packed = {k: features.bottom_rows(model, seqs, k, CPU.device, every_depth=not k) for k in (0, 2)}
        monkeypatch.setattr(features, "packed", lambda *a: None)  # the per-length path, autocast at every call
        expect = {k: features.bottom_rows(model, seqs, k, CPU.device, every_depth=not k) for k in (0, 2)}
    pairs = [(a, b) for d in range(4) for a, b in zip(packed[0][d], expect[0][d])] + list(zip(packed[2], expect[2]))
    assert all(a.dtype == torch.float32 and a.shape == b.shape for a, b in pairs)
    scale = max(b.abs().max().item() for _, b in pairs)
    assert max((a - b).abs().max().item() for a, b in pairs) <= 1e-3 * scale  # bf16 itself moves them ~1e-2
    assert features.packed(model, CPU.device) is None  # fp32: the per-length path, numbers as before


@torch.no_grad()
def test_a_packed_texts_features_depend_on_its_pack_only_in_the_last_bits_and_not_at_all_alone(monkeypatch):
    model, seqs = tiny_llama(), texts() * 2
    with BF16.autocast:
        together = features.bottom_rows(model, seqs, 2, CPU.device)
        monkeypatch.setattr(features, "TOKENS", 1)  # every text a pack of its own
        alone = features.bottom_rows(model, seqs, 2, CPU.device)
        reversed_ = features.bottom_rows(model, seqs[::-1], 2, CPU.device)[::-1]
    assert max((a - b).abs().max().item() for a, b in zip(together, alone)) <= 1e-3 * max(a.abs().max() for a in alone)
    assert all(torch.equal(a, b) for a, b in zip(alone, reversed_))


@pytest.mark.parametrize("k", [0, 2])
def test_bf16_top_blocks_on_stored_packed_features_equal_the_bottom_run_at_every_step(k, monkeypatch, tmp_path):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path))
    monkeypatch.setattr(features, "TOKENS", 1)
    model, seqs = tiny_llama(), texts(8)
    idx, mask = collate(seqs, 0, CPU.device)
    feats = features.cached_features(model, seqs, k, 4, {"random": "bf16"}, {"device": "cpu", "dtype": "bf16"},
                                     BF16, quiet=True)
    x, m = features.collate_features(feats, CPU.device)
    with BF16.autocast:
        assert torch.equal(features.TopBlocks(model, k)(x, m),
                           features.TopBlocks(model, k, bottom_every_step=True)(idx, mask))


@torch.no_grad()
def test_the_frozen_bf16_weights_are_cast_once_and_again_when_a_weight_changes():
    model = tiny_llama()
    first = llama.frozen_weights(model, 4, torch.bfloat16)
    assert llama.frozen_weights(model, 4, torch.bfloat16) is first
    model.blocks[1].mlp.up_proj.weight.mul_(2)
    again = llama.frozen_weights(model, 4, torch.bfloat16)
    assert again is not first and torch.equal(again[1][4][48:], (model.blocks[1].mlp.up_proj.weight).bfloat16())
