"""model.py against transformers' own GPT-2 / GPT-1 on tiny random checkpoints (fp32, CPU)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from core import hub
from model import GPT, CheckpointError, GPTConfig

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, OpenAIGPTConfig,  # noqa: E402
                          OpenAIGPTLMHeadModel)

TINY = dict(n_positions=64, vocab_size=101, n_layer=2, n_head=2, n_embd=32)
TOL = 1e-4
PAD = 100  # a token id the tests never use as a real token, so HF's pad_token_id search finds only pads


def hf_model(arch, n_classes=0, seed=0):
    torch.manual_seed(seed)
    if arch == "gpt1":
        model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(**TINY))
    else:
        config = GPT2Config(**TINY, bos_token_id=0, eos_token_id=0, pad_token_id=PAD, num_labels=max(n_classes, 2),
                            activation_function="gelu" if arch == "gpt2-exact-gelu" else "gelu_new")
        model = GPT2ForSequenceClassification(config) if n_classes else GPT2LMHeadModel(config)
    # Every tensor random and far from GPT-2's init (std 0.02, zero biases, unit LayerNorms): a transposed, swapped
    # or dropped tensor shows, and activations reach the range where tanh-GELU and exact GELU differ.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if ".ln_" in name and name.endswith("weight") else 0.0))
    return model.eval()


def save_hf(model, directory, layout):
    """transformers' save_pretrained layout, or the Hub's own: no `transformer.` prefix, no lm_head, attn buffers."""
    model.save_pretrained(directory)
    if layout == "hub":
        state = {k.removeprefix("transformer."): v for k, v in load_file(directory / "model.safetensors").items()
                 if k != "lm_head.weight"}
        n = TINY["n_positions"]
        for i in range(TINY["n_layer"]):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            if isinstance(model, GPT2LMHeadModel):
                state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def tokens(batch, length, seed=1):
    return torch.randint(0, PAD, (batch, length), generator=torch.Generator().manual_seed(seed))


def pad(rows, side):
    """Pad token lists to one length; returns idx and attention_mask."""
    width = max(len(r) for r in rows)
    idx = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        idx[i, sl], mask[i, sl] = torch.tensor(r), 1
    return idx, mask


def tiny_gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, vocab_size=101, n_layer=2, n_head=2, n_embd=32, **kw)).eval()


# ---- parity with transformers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt2", "gpt1", "gpt2-exact-gelu"])
@pytest.mark.parametrize("layout", ["transformers", "hub"])
def test_logits_and_loss_match_transformers_for_both_checkpoint_layouts(arch, layout, tmp_path):
    ref = hf_model(arch)
    ours = GPT.from_pretrained(save_hf(ref, tmp_path, layout)).eval()
    # GPT-1's "gelu" is the tanh approximation in transformers (and in OpenAI's original code)
    assert ours.config.pre_ln == (arch != "gpt1")
    assert ours.config.activation == ("gelu" if arch == "gpt2-exact-gelu" else "gelu_new")
    idx = tokens(3, 40)
    with torch.no_grad():
        expected = ref(idx, labels=idx)
        logits, loss = ours(idx, targets=torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1))
    diff = (logits - expected.logits).abs().max().item()
    print(f"{arch} {layout} max abs logit diff {diff:.2e}")
    assert diff <= TOL
    assert abs(loss.item() - expected.loss.item()) <= TOL


@pytest.mark.parametrize("side", ["right", "left"])
def test_classify_matches_gpt2_for_sequence_classification_on_padded_batch(side, tmp_path):
    ref = hf_model("gpt2", n_classes=3)
    ref.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path, n_classes=3).eval()
    idx, mask = pad([t.tolist() for t in tokens(3, 30)][:1] + [list(range(5, 17)), list(range(40, 61))], side)
    with torch.no_grad():
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # HF needs explicit positions for left padding
        expected = ref(idx, attention_mask=mask, position_ids=position_ids).logits
        got = ours.classify(idx, mask)
    diff = (got - expected).abs().max().item()
    print(f"classify {side} padding max abs diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("pre_ln", [True, False])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_either_side_leaves_real_token_outputs_unchanged(pre_ln, side):
    model = tiny_gpt(pre_ln=pre_ln, n_classes=2)
    rows = [list(range(3, 23)), list(range(30, 37))]
    idx, mask = pad(rows, side)
    with torch.no_grad():
        logits, _ = model(idx, attention_mask=mask)
        classes = model.classify(idx, mask)
        for i, r in enumerate(rows):
            alone, _ = model(torch.tensor([r]))
            real = mask[i].bool()
            assert torch.allclose(logits[i, real], alone[0], atol=1e-5), f"row {i} changed by {side} padding"
            assert torch.allclose(classes[i], model.classify(torch.tensor([r]))[0], atol=1e-5)
        # pad queries see themselves, so no all-masked row (torch 2.13's CPU SDPA zeroes those anyway; others NaN)
        assert torch.isfinite(logits).all()


def test_greedy_generate_matches_transformers_on_left_padded_batch(tmp_path):
    ref = hf_model("gpt2")
    ours = GPT.from_pretrained(save_hf(ref, tmp_path, "transformers")).eval()
    idx, mask = pad([list(range(1, 9)), [7, 3, 99], list(range(50, 62))], "left")
    expected = ref.generate(idx, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=PAD,
                            eos_token_id=None)
    got = ours.generate(idx, attention_mask=mask, max_new_tokens=12)
    assert torch.equal(got, expected)


def greedy_by_full_recompute(model, idx, mask, n):
    for _ in range(n):
        logits, _ = model(idx, attention_mask=mask)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return idx


@pytest.mark.parametrize("pre_ln", [True, False])
def test_kv_cache_greedy_equals_full_recompute(pre_ln):
    model = tiny_gpt(pre_ln=pre_ln, )
    idx, mask = pad([list(range(1, 11)), [5, 6], list(range(60, 75))], "left")
    with torch.no_grad():
        assert torch.equal(model.generate(idx, mask, max_new_tokens=20), greedy_by_full_recompute(model, idx, mask, 20))


def test_generate_rows_keep_emitting_eos_and_stop_early():
    model = tiny_gpt()
    idx, mask = pad([list(range(1, 11)), [5, 6], list(range(60, 75))], "left")
    free = model.generate(idx, mask, max_new_tokens=15)
    eos = free[0, idx.size(1) + 2].item()  # row 0 emits this token on its 3rd step
    expected = free.clone()
    for row in expected[:, idx.size(1):]:
        hits = (row == eos).nonzero()
        if len(hits):
            row[hits[0, 0]:] = eos
    assert torch.equal(model.generate(idx, mask, max_new_tokens=15, eos_token=eos), expected)
    # every row done after the first step: the output still has the full width, filled with eos
    first = free[:, idx.size(1)]
    out = model.generate(idx[:1], mask[:1], max_new_tokens=15, eos_token=first[0].item())
    assert out.shape == (1, idx.size(1) + 15) and (out[0, idx.size(1):] == first[0]).all()


def test_sampling_is_seeded_and_top_k_1_or_tiny_top_p_is_greedy():
    model = tiny_gpt()
    idx, mask = pad([list(range(1, 11)), [5, 6]], "left")
    greedy = model.generate(idx, mask, max_new_tokens=10)
    sample = lambda seed, **kw: model.generate(idx, mask, max_new_tokens=10, temperature=1.0,  # noqa: E731
                                                generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    assert not torch.equal(sample(0), greedy)
    assert torch.equal(sample(0, top_k=1), greedy)
    assert torch.equal(sample(3, top_p=1e-6), greedy)


# ---- loading and saving ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_classes", [0, 3])
@pytest.mark.parametrize("pre_ln", [True, False])
def test_save_pretrained_round_trip_is_exact_and_transformers_loads_it(pre_ln, n_classes, tmp_path):
    model = tiny_gpt(pre_ln=pre_ln, n_classes=n_classes)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert "lm_head.weight" not in keys and not any(k.startswith("transformer.") for k in keys)
    again = GPT.from_pretrained(tmp_path, n_classes=n_classes).eval()
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    idx = tokens(2, 20)
    with torch.no_grad():
        if n_classes:
            hf = GPT2ForSequenceClassification if pre_ln else transformers.OpenAIGPTForSequenceClassification
            ref = hf.from_pretrained(tmp_path, pad_token_id=PAD).eval()  # HF needs one for batches
            diff = (ref(idx).logits - model.classify(idx)).abs().max().item()
        else:
            ref = (GPT2LMHeadModel if pre_ln else OpenAIGPTLMHeadModel).from_pretrained(tmp_path).eval()
            diff = (ref(idx).logits - model(idx)[0]).abs().max().item()
    assert diff <= TOL


def test_post_ln_model_with_exact_gelu_refuses_to_save_as_openai_gpt(tmp_path):
    with pytest.raises(ValueError, match="activation='gelu_new', not 'gelu'"):
        tiny_gpt(pre_ln=False, activation="gelu").save_pretrained(tmp_path)


def test_score_head_is_loaded_when_shape_fits_else_freshly_initialised(tmp_path):
    ref = hf_model("gpt2", n_classes=3)
    ref.save_pretrained(tmp_path)
    assert torch.equal(GPT.from_pretrained(tmp_path, n_classes=3).score.weight, ref.score.weight)
    torch.manual_seed(5)
    fresh = GPT.from_pretrained(tmp_path, n_classes=2).score.weight
    torch.manual_seed(5)
    assert fresh.shape == (2, 32) and torch.equal(fresh, GPT.from_pretrained(tmp_path, n_classes=2).score.weight)
    torch.manual_seed(5)  # the new head is the load's one random draw, and the LM head stays tied to wte
    assert torch.equal(fresh, torch.nn.init.normal_(torch.empty(2, 32), std=0.02))
    model = GPT.from_pretrained(tmp_path, n_classes=2)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert GPT.from_pretrained(tmp_path).score is None  # an LM ignores a checkpoint's classification head


def make_hub_cache(cache, repo_id, snapshots, main):
    """A huggingface_hub cache laid out as after a download: refs/main -> snapshots/<commit>/files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for commit, source in snapshots.items():
        (repo / "snapshots" / commit).mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            (repo / "snapshots" / commit / name).write_bytes((source / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main)


def test_hub_names_resolve_through_hub_file_and_honour_revision(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    save_hf(hf_model("gpt2", seed=1), a, "hub")
    save_hf(hf_model("gpt2", seed=2), b, "hub")
    old, new = "1" * 40, "2" * 40
    make_hub_cache(tmp_path / "cache", "openai-community/gpt2", {old: a, new: b}, main=new)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    calls = []
    real_hub_file = hub.hub_file
    monkeypatch.setattr(hub, "hub_file", lambda *args, **kw: calls.append((args, kw)) or real_hub_file(*args, **kw))
    wte = lambda m: m.transformer.wte.weight  # noqa: E731
    expected_b = GPT.from_pretrained(b).transformer.wte.weight
    assert torch.equal(wte(GPT.from_pretrained("gpt2")), expected_b)
    assert torch.equal(wte(GPT.from_pretrained("openai-community/gpt2")), expected_b)
    assert torch.equal(wte(GPT.from_pretrained("gpt2", revision=old)), GPT.from_pretrained(a).transformer.wte.weight)
    assert [c[0] for c in calls[:2]] == [("openai-community/gpt2", "config.json"), ("openai-community/gpt2", "model.safetensors")]
    assert calls[-1][1]["revision"] == old


def test_unknown_model_name_offline_says_so_in_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(hub.OfflineError) as err:
        GPT.from_pretrained("gpt2-medium")
    message = str(err.value)
    assert "openai-community/gpt2-medium" in message and "not in the local Hugging Face cache" in message
    assert "local directory" in message and message.count(". ") == 0 and "\n" not in message
    with pytest.raises(CheckpointError, match="not a model directory"):
        GPT.from_pretrained(str(tmp_path / "no-such-dir"))
    with pytest.raises(CheckpointError, match=r"has no config.json or model.safetensors"):
        GPT.from_pretrained(tmp_path)


def edit_checkpoint(directory, edit):
    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"), r"missing tensors \['transformer.h.1.mlp.c_fc.bias'\]"),
    (lambda s: s.update({"transformer.h.0.attn.extra": torch.zeros(2)}), r"unexpected tensors \['transformer.h.0.attn.extra'\]"),
    (lambda s: s.update({"transformer.ln_f.weight": torch.ones(33)}), r"transformer.ln_f.weight: checkpoint \(33,\) vs model \(32,\)"),
    (lambda s: s.update({"lm_head.weight": torch.zeros(101, 32)}), r"lm_head.weight that differs"),
])
def test_checkpoint_mismatch_raises_naming_the_tensors(edit, message, tmp_path):
    save_hf(hf_model("gpt2"), tmp_path, "transformers")
    edit_checkpoint(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as err:
        GPT.from_pretrained(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(err.value)


def test_truncated_or_corrupt_safetensors_raises_naming_the_file(tmp_path):
    GPT.save_pretrained(tiny_gpt(), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="cannot read weights .*model.safetensors") as err:
        GPT.from_pretrained(tmp_path)
    assert str(weights) in str(err.value)
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        GPT.from_pretrained(tmp_path)


def test_bad_config_raises_naming_the_file(tmp_path):
    GPT.save_pretrained(tiny_gpt(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config.json: model_type 'llama' is not supported"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read model config .*config.json"):
        GPT.from_pretrained(tmp_path)


# ---- model behaviour ----------------------------------------------------------------------------------------------

def test_same_seed_gives_same_weights_and_residual_projections_are_scaled_down():
    a, b = tiny_gpt(), tiny_gpt()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.lm_head.weight is a.transformer.wte.weight
    big = GPT(GPTConfig(n_layer=8, n_head=2, n_embd=256, vocab_size=101, block_size=64))
    std = big.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 * 8)


def test_grad_checkpoint_gives_the_same_loss_and_gradients():
    idx, mask = pad([list(range(1, 21)), list(range(3, 10))], "right")
    targets = torch.where(mask.bool(), idx, -100)
    grads = []
    for flag in (False, True):
        model = tiny_gpt(grad_checkpoint=flag).train()
        loss = model(idx, attention_mask=mask, targets=targets)[1]
        loss.backward()
        grads.append((loss.item(), model.transformer.h[0].attn.c_attn.weight.grad.clone()))
    assert grads[0][0] == grads[1][0] and torch.allclose(grads[0][1], grads[1][1], atol=1e-7)


def test_bad_inputs_raise_clear_errors():
    model = tiny_gpt(n_classes=2)
    idx, mask = pad([list(range(1, 6)), [7, 8]], "right")
    with pytest.raises(ValueError, match="left-padded prompts"):
        model.generate(idx, mask)
    with pytest.raises(ValueError, match="exceeds block_size 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\), expected \(2, 5\)"):
        model(idx, attention_mask=mask[:, :4])
    with pytest.raises(ValueError, match=r"rows \[1\] have no real tokens"):
        model.classify(idx, torch.stack([mask[0], torch.zeros_like(mask[1])]))
    with pytest.raises(ValueError, match="n_classes > 0"):
        tiny_gpt().classify(idx)
