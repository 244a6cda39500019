"""llama.py against transformers' own Llama, Qwen2 and Qwen3 on tiny random checkpoints (fp32, CPU)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from core import hub
from model import CheckpointError
from models import llama
from models.llama import Llama

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = 1e-4
VOCAB, PAD = 101, 100  # PAD: a token id the tests never use as a real token, so HF's pad_token_id search finds only pads
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, pad_token_id=PAD,
              bos_token_id=0, eos_token_id=0)
# One tiny configuration per model_type, each with what sets it apart: Llama 3's rope scaling (with an original
# context short enough that the test positions cross all three frequency bands), Qwen2's q/k/v biases, Qwen3's q/k
# norms with a head_dim that is not hidden_size / heads.
LLAMA3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)
CONFIGS = {
    "llama": ("LlamaConfig", "Llama", dict(rope_theta=500000.0, tie_word_embeddings=True,
                                           rope_scaling=dict(rope_type="llama3", **LLAMA3))),
    "qwen2": ("Qwen2Config", "Qwen2", dict(rope_theta=1000000.0, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3", dict(rope_theta=1000000.0, tie_word_embeddings=False, head_dim=12)),
}


def edit_checkpoint(directory, edit):
    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors")


def hf_model(kind, n_classes=0, seed=0, **overrides):
    config_class, prefix, extra = CONFIGS[kind]
    config = getattr(transformers, config_class)(**{**COMMON, **extra, **overrides}, num_labels=max(n_classes, 2))
    torch.manual_seed(seed)
    model = getattr(transformers, prefix + ("ForSequenceClassification" if n_classes else "ForCausalLM"))(config)
    # Every tensor random and far from the init (std 0.02, zero biases, unit norms): a transposed, swapped or dropped
    # tensor shows, and the norms' weights matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name else 0.0))
    return model.eval()


def tokens(batch, length, seed=1):
    return torch.randint(1, PAD, (batch, length), generator=torch.Generator().manual_seed(seed))


def pad(rows, side):
    """Pad token lists to one length; returns idx and attention_mask."""
    width = max(len(r) for r in rows)
    idx = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        idx[i, sl], mask[i, sl] = torch.tensor(r), 1
    return idx, mask


ROWS = [list(range(1, 41)), list(range(5, 17)), list(range(40, 61))]  # up to 40 tokens: past the llama3 bands


def hf_logits(ref, idx, mask):
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # HF needs explicit positions for left padding
    return ref(idx, attention_mask=mask, position_ids=position_ids).logits


# ---- parity with transformers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_logits_match_transformers_unpadded_and_padded_on_either_side(kind, tmp_path):
    ref = hf_model(kind)
    ref.save_pretrained(tmp_path)
    ours = Llama.from_pretrained(tmp_path).eval()
    assert ours.config.model_type == kind and ours.config.qk_norm == (kind == "qwen3")
    assert ours.config.tie_word_embeddings == (kind != "qwen3")
    idx = tokens(2, 40)
    with torch.no_grad():
        diffs = [(ours(idx)[0] - ref(idx).logits).abs().max().item()]
        for side in ("right", "left"):
            idx, mask = pad(ROWS, side)
            got, want, real = ours(idx, attention_mask=mask)[0], hf_logits(ref, idx, mask), mask.bool()
            diffs.append((got[real] - want[real]).abs().max().item())
    print(f"{kind}: max abs logit diff unpadded / right / left {' / '.join(f'{d:.1e}' for d in diffs)}")
    assert max(diffs) <= TOL


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("side", ["right", "left"])
def test_classify_matches_transformers_for_sequence_classification(kind, side, tmp_path):
    ref = hf_model(kind, n_classes=3)
    ref.save_pretrained(tmp_path)
    ours = Llama.from_pretrained(tmp_path, n_classes=3).eval()
    idx, mask = pad(ROWS, side)
    with torch.no_grad():  # HF takes the rightmost token that is not pad_token_id: the last real one either side
        diff = (ours.classify(idx, mask) - hf_logits(ref, idx, mask)).abs().max().item()
    print(f"{kind} classify {side} padding max abs diff {diff:.1e}")
    assert diff <= TOL


def test_sharded_checkpoint_loads_identically(tmp_path):
    ref = hf_model("qwen3")
    ref.save_pretrained(tmp_path / "one")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / llama.INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (tmp_path / "sharded" / "model.safetensors").exists()
    one, sharded = Llama.from_pretrained(tmp_path / "one"), Llama.from_pretrained(tmp_path / "sharded")
    for (name, a), (_, b) in zip(one.state_dict().items(), sharded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(sharded.lm_head.weight, sharded.embed.weight)  # qwen3 here is untied


def greedy_by_full_recompute(model, idx, mask, n):
    for _ in range(n):
        logits, _ = model(idx, attention_mask=mask)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return idx


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_kv_cache_greedy_equals_full_recompute_and_transformers_generate(kind, tmp_path):
    ref = hf_model(kind)
    ref.save_pretrained(tmp_path)
    ours = Llama.from_pretrained(tmp_path).eval()
    idx, mask = pad([list(range(1, 9)), [7, 3, 99], list(range(50, 62))], "left")
    got = ours.generate(idx, attention_mask=mask, max_new_tokens=12)
    with torch.no_grad():
        assert torch.equal(got, greedy_by_full_recompute(ours, idx, mask, 12))
    expected = ref.generate(idx, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=PAD,
                            eos_token_id=None)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kind, n_classes", [("llama", 0), ("qwen2", 3), ("qwen3", 0)])
def test_save_pretrained_round_trip_loads_in_transformers_with_equal_logits(kind, n_classes, tmp_path):
    hf_model(kind, n_classes).save_pretrained(tmp_path / "hf")
    ours = Llama.from_pretrained(tmp_path / "hf", n_classes=n_classes).eval()
    ours.save_pretrained(tmp_path / "ours")
    again = Llama.from_pretrained(tmp_path / "ours", n_classes=n_classes)
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    auto = transformers.AutoModelForSequenceClassification if n_classes else transformers.AutoModelForCausalLM
    ref = auto.from_pretrained(tmp_path / "ours").eval()
    idx, mask = pad(ROWS, "right")
    with torch.no_grad():
        got = ours.classify(idx, mask) if n_classes else ours(idx, attention_mask=mask)[0][mask.bool()]
        want = hf_logits(ref, idx, mask)
        want = want if n_classes else want[mask.bool()]
    assert (got - want).abs().max().item() <= TOL


def test_random_shapes_build_their_real_sizes():
    # SmolLM2-135M: 134.5M parameters (the issue's count from transformers' GGUF loader, embeddings tied)
    config = llama.random_config("random:smollm2-135m")
    with torch.device("meta"):
        assert round(Llama(config).num_params() / 1e6, 1) == 134.5
        qwen3 = Llama(llama.random_config("random:qwen3-0.6b", n_classes=2))
    assert qwen3.config.head_dim == 128 and qwen3.blocks[0].attn.q_proj.weight.shape == (2048, 1024)
    assert llama.random_shape_names() == list(llama.SHAPES)
    with pytest.raises(CheckpointError, match="unknown random model shape 'nope'"):
        llama.random_config("random:nope")


def test_truncate_keeps_the_first_blocks_and_equals_the_prefix():
    torch.manual_seed(0)
    model = Llama(llama.LlamaConfig(vocab_size=VOCAB, block_size=64, n_layer=3, n_head=4, n_kv_head=2, n_embd=32,
                                    intermediate_size=48)).eval()
    idx, mask = pad(ROWS, "left")
    with torch.no_grad():
        two = model.final_norm(model._run(idx, mask, blocks=slice(0, 2))[0])
        one = model._run(idx, mask, blocks=slice(0, 1))[0]
        three = model._run(None, mask, blocks=slice(1, None), x=one)[0]
        assert torch.equal(three, model.hidden(idx, mask))
        assert torch.equal(model.truncate(2).hidden(idx, mask), two)
    assert len(model.blocks) == model.config.n_layer == 2


def test_grad_checkpoint_gives_the_same_loss_and_gradients():
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = Llama(llama.LlamaConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                        intermediate_size=48, grad_checkpoint=ckpt))
        idx, mask = pad(ROWS, "right")
        _, loss = model(idx, mask, targets=torch.where(mask.bool(), idx, -100))
        loss.backward()
        results.append((loss.item(), model.blocks[0].attn.q_proj.weight.grad.clone()))
    assert results[0][0] == results[1][0] and torch.allclose(results[0][1], results[1][1], atol=1e-6)


def tiny_llama(**kw):
    torch.manual_seed(0)
    return Llama(llama.LlamaConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                   intermediate_size=48, **kw)).eval()


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_either_side_leaves_real_token_outputs_unchanged(side):
    model = tiny_llama(n_classes=2, rope_scaling=LLAMA3)
    idx, mask = pad(ROWS, side)
    with torch.no_grad():
        logits, classes = model(idx, attention_mask=mask)[0], model.classify(idx, mask)
        for i, r in enumerate(ROWS):
            alone = model(torch.tensor([r]))[0]
            assert torch.allclose(logits[i, mask[i].bool()], alone[0], atol=1e-5), f"row {i} changed by {side} padding"
            assert torch.allclose(classes[i], model.classify(torch.tensor([r]))[0], atol=1e-5)
        assert torch.isfinite(logits).all()  # pad queries see themselves: no all-masked row


def test_bf16_keeps_rope_frequencies_in_float32_and_autocast_stays_close():
    model = tiny_llama()
    idx = tokens(2, 40)
    with torch.no_grad():
        fp32 = model(idx)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(idx)[0]
        assert model.to(torch.bfloat16).inv_freq.dtype == torch.float32
        assert torch.equal(model.inv_freq, llama.rope_frequencies(model.config))
    assert (auto.float() - fp32).abs().max() < 0.1 * fp32.abs().max()


def test_tied_lm_head_present_must_equal_the_embedding_and_score_is_reused_when_it_fits(tmp_path):
    hf_model("llama").save_pretrained(tmp_path)
    edit_checkpoint(tmp_path, lambda s: s.update({"lm_head.weight": s["model.embed_tokens.weight"].clone(),
                                                  "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}))
    model = Llama.from_pretrained(tmp_path)  # a tied copy of the embedding and an old RoPE buffer are accepted
    assert model.lm_head.weight is model.embed.weight
    edit_checkpoint(tmp_path, lambda s: s.update({"lm_head.weight": s["lm_head.weight"] + 1}))
    with pytest.raises(CheckpointError, match="tie_word_embeddings true but an lm_head.weight that differs"):
        Llama.from_pretrained(tmp_path)
    hf_model("llama", n_classes=3).save_pretrained(tmp_path / "cls")
    score = load_file(tmp_path / "cls" / "model.safetensors")["score.weight"]
    assert torch.equal(Llama.from_pretrained(tmp_path / "cls", n_classes=3).score.weight, score)
    assert Llama.from_pretrained(tmp_path / "cls", n_classes=2).score.weight.shape == (2, 32)  # fresh head
    assert Llama.from_pretrained(tmp_path / "cls").score is None


@pytest.mark.parametrize("kind", ["llama", "qwen3"])  # tied and untied LM heads
def test_loading_draws_only_the_new_head_from_the_seed_and_every_other_weight_is_the_checkpoints(kind, tmp_path):
    ref = hf_model(kind)
    ref.save_pretrained(tmp_path)
    torch.manual_seed(5)
    model = Llama.from_pretrained(tmp_path, n_classes=3)
    torch.manual_seed(5)
    assert torch.equal(model.score.weight, torch.nn.init.normal_(torch.empty(3, 32), std=0.02))  # the one draw
    assert (model.lm_head.weight is model.embed.weight) == (kind == "llama")
    state = {llama._our_name(k): v for k, v in ref.state_dict().items()}
    assert all(torch.equal(t, state[name]) for name, t in model.state_dict().items() if name != "score.weight")
    assert torch.equal(model.inv_freq, llama.rope_frequencies(model.config))  # a buffer from the config, not garbage


# ---- errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"), r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"),
    (lambda s: s.pop("lm_head.weight"), r"missing tensors \['lm_head.weight'\]"),
    (lambda s: s.update({"model.layers.0.self_attn.extra": torch.zeros(2)}),
     r"unexpected tensors \['model.layers.0.self_attn.extra'\]"),
    (lambda s: s.update({"model.norm.weight": torch.ones(33)}), r"model.norm.weight: checkpoint \(33,\) vs model \(32,\)"),
])
def test_checkpoint_mismatch_raises_one_line_naming_the_tensor_and_file(edit, message, tmp_path):
    hf_model("qwen3").save_pretrained(tmp_path)  # untied: lm_head.weight is a tensor of its own
    edit_checkpoint(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as err:
        Llama.from_pretrained(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(err.value) and "\n" not in str(err.value)


def test_unsupported_model_type_or_feature_raises_naming_the_file(tmp_path):
    hf_model("llama").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for edit, message in [({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
                          ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
                          ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope type 'yarn'")]:
        (tmp_path / "config.json").write_text(json.dumps({**config, **edit}))
        for load in (Llama.from_pretrained, llama.check_checkpoint):
            with pytest.raises(CheckpointError, match=message) as err:
                load(tmp_path)
            assert str(tmp_path / "config.json") in str(err.value) and "\n" not in str(err.value)


def test_hub_repo_resolves_through_hub_file_and_offline_says_so(tmp_path, monkeypatch):
    hf_model("qwen2").save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    calls = []

    def fake_hub_file(repo, name, revision=None, instead=""):  # a Hub cache holding a sharded repo
        calls.append((repo, name, revision))
        if not (tmp_path / "ckpt" / name).exists():
            raise hub.OfflineError(f"'{repo}' file '{name}' is not in the cache")
        return tmp_path / "ckpt" / name
    monkeypatch.setattr(hub, "hub_file", fake_hub_file)
    model = Llama.from_pretrained("Org/tiny-qwen2", revision="abc")
    assert model.config.model_type == "qwen2" and calls[0] == ("Org/tiny-qwen2", "config.json", "abc")
    assert [c[1] for c in calls[1:3]] == ["model.safetensors", llama.INDEX] and len(calls) > 4
    assert all(c[2] == "abc" for c in calls)
    assert torch.equal(model.embed.weight, Llama.from_pretrained(tmp_path / "ckpt").embed.weight)
    monkeypatch.undo()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(hub.OfflineError, match="'Org/absent' file 'config.json' is not in the local Hugging Face cache"):
        Llama.from_pretrained("Org/absent")
    with pytest.raises(CheckpointError, match="not a model directory"):
        Llama.from_pretrained(str(tmp_path / "no-such-dir"))



def test_sharded_checkpoint_errors_name_the_index_or_the_shard(tmp_path):
    hf_model("llama").save_pretrained(tmp_path, max_shard_size="20KB")
    config_file, shards = llama.check_checkpoint(tmp_path)
    assert config_file == tmp_path / "config.json" and len(shards) > 2
    shards[1].write_bytes(shards[1].read_bytes()[:-100])  # truncated
    for load in (Llama.from_pretrained, llama.check_checkpoint):
        with pytest.raises(CheckpointError, match=f"cannot read weights {shards[1]}"):
            load(tmp_path)
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=f"{tmp_path / llama.INDEX} lists shards that are not there: "
                                              f"\\['{shards[1].name}'\\]"):
        Llama.from_pretrained(tmp_path)
