"""LoRA (lora.py) on every model family: exactly the base model before the first step, gradients only in the adapters
and the head, merged weights equal to the adapters, adapters saved alone and reloaded, one-line errors for bad
settings; and train.py with --lora-rank end to end on the toy task."""
import itertools
import json
import types

import pytest
import torch

import train
import w2s
from core.cli import UserError
from helpers import run_script
from model import GPT, GPTConfig
from models import checkpoints, lora
from models.llama import Llama, LlamaConfig
from run import config, rundir
from run.job import prepare
from run.optim import make_optimizer, optimizer_step
from run.predict import predict_probs
from run.runtime import setup_runtime

VOCAB = 101
FAMILIES = {
    "gpt2": lambda n_classes: GPT(GPTConfig(block_size=64, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32,
                                            n_classes=n_classes)),
    "gpt1": lambda n_classes: GPT(GPTConfig(block_size=64, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32,
                                            pre_ln=False, n_classes=n_classes)),
    "llama": lambda n_classes: Llama(LlamaConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                                                 n_embd=32, intermediate_size=48, n_classes=n_classes)),
    "qwen3": lambda n_classes: Llama(LlamaConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                                                 n_embd=32, intermediate_size=48, head_dim=12, qk_norm=True,
                                                 attention_bias=True, o_proj_bias=True, tie_word_embeddings=False,
                                                 model_type="qwen3", n_classes=n_classes)),
}
PER_BLOCK = {"gpt2": 4, "gpt1": 4, "llama": 7, "qwen3": 7}  # c_attn c_proj c_fc c_proj; q k v o gate up down


def base_model(family, n_classes=2, seed=0):
    torch.manual_seed(seed)
    return FAMILIES[family](n_classes).eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(idx)
    mask[1, 8:] = 0  # one right-padded row
    return idx, mask


def trained(model, steps=3, lr=1e-2):
    """A few AdamW steps on a classification loss, so every B is far from zero."""
    cfg = types.SimpleNamespace(lr=lr, weight_decay=0.0, warmup_frac=0.0)
    opt, _, params = make_optimizer(model, cfg, steps)
    idx, mask = batch()
    for _ in range(steps):
        model.classify(idx, mask).logsumexp(-1).mean().backward()
        optimizer_step(opt, None, params, grad_clip=1.0)
    return model.eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_zero_b_adapters_give_exactly_the_base_models_logits(family):
    base = base_model(family)
    adapted = lora.add_lora(base_model(family), 4, 8.0)
    idx, mask = batch()
    assert len(lora.lora_layers(adapted)) == PER_BLOCK[family] * 2
    assert torch.equal(adapted.classify(idx, mask), base.classify(idx, mask))
    assert torch.equal(adapted(idx, mask)[0], base(idx, mask)[0])
    # A is random (kaiming-uniform), B zero, as peft
    layer = lora.lora_layers(adapted)[0][2]
    assert layer.lora_A.abs().min() > 0 and not layer.lora_B.any() and layer.scale == 2.0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_reach_only_the_adapters_and_the_head(family):
    model = lora.add_lora(base_model(family), 4, 8.0).train()
    idx, mask = batch()
    model.classify(idx, mask).logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        if "lora_" in name or name == "score.weight":
            assert p.requires_grad and p.grad is not None, name
        else:  # embeddings, norms, biases, the frozen projections, the LM head
            assert not p.requires_grad and p.grad is None, name
    # at B = 0 the gradient of A is zero and that of B is not: B moves first
    assert all(layer.lora_B.grad.abs().max() > 0 for _, _, layer in lora.lora_layers(model))
    assert model.score.weight.grad.abs().max() > 0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_merged_weights_equal_the_adapters_after_training_and_save_as_a_standard_checkpoint(family, tmp_path):
    model = trained(lora.add_lora(base_model(family), 4, 8.0))
    idx, mask = batch(seed=2)
    with torch.no_grad():
        adapted, base = model.classify(idx, mask), base_model(family).classify(idx, mask)
        merged_model = lora.merge(model)
        merged = merged_model.classify(idx, mask)
    assert (adapted - base).abs().max() > 1e-3  # the steps moved the model
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)
    assert not lora.lora_layers(merged_model)
    assert merged_model.state_dict().keys() == base_model(family).state_dict().keys()
    lora.save_checkpoint(merged_model, tmp_path / "ckpt", "merged", base=None)
    reloaded = checkpoints.load(tmp_path / "ckpt", n_classes=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.classify(idx, mask), merged, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "qwen3"])
def test_a_frozen_base_held_in_bf16_takes_the_fp32_base_steps_under_autocast_to_the_bit(family):
    """train.py under --dtype bf16: autocast runs every projection on bf16-rounded weights, so holding the frozen ones
    in bf16 (add_lora's frozen_dtype) changes no logit and no step, and halves those weights' bytes."""
    models = []
    for frozen in (None, torch.bfloat16):
        torch.manual_seed(3)  # the adapters' A draws alike
        model = lora.add_lora(base_model(family), 4, 8.0, frozen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            models.append(trained(model.train()))
    fp32, bf16 = models
    idx, mask = batch(seed=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fp32.classify(idx, mask), bf16.classify(idx, mask))
    for (name, a), (_, b) in zip(fp32.named_parameters(), bf16.named_parameters()):
        assert torch.equal(a.to(b.dtype), b) and (b.dtype == torch.bfloat16) == (
            "lora_" not in name and any(f".{t}." in name for t in lora.TARGETS)), name
    frozen_bytes = [sum(layer.weight.nbytes for _, _, layer in lora.lora_layers(m)) for m in models]
    assert frozen_bytes[1] * 2 == frozen_bytes[0]
    # merged: the bf16-held weights plus the update, back in the model's fp32
    merged = lora.merge(bf16)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(merged.classify(idx, mask), fp32.classify(idx, mask), rtol=0, atol=0.05)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adapters_saved_alone_and_reloaded_reproduce_the_logits(family, tmp_path):
    base_dir = tmp_path / "base"
    base_model(family, n_classes=0).save_pretrained(base_dir)
    torch.manual_seed(5)
    model = trained(lora.add_lora(checkpoints.load(base_dir, n_classes=2), 4, 8.0))
    identity = checkpoints.model_identity(base_dir)
    base = {"source": str(base_dir), "depth": None, "seed": 5, "identity": identity}
    lora.save_checkpoint(model, tmp_path / "ckpt", "adapters", base)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["adapter_config.json", "adapters.safetensors"]
    idx, mask = batch(seed=3)
    reloaded = checkpoints.load(tmp_path / "ckpt").eval()  # the base from its directory, then the adapters
    with torch.no_grad():
        assert torch.equal(reloaded.classify(idx, mask), model.classify(idx, mask))
    # onto a base model built by hand, too
    by_hand = lora.load_adapters(checkpoints.load(base_dir, n_classes=2), tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(by_hand.classify(idx, mask), model.classify(idx, mask))
    # adapters on a base that changed since training are refused
    base_model(family, n_classes=0, seed=9).save_pretrained(base_dir)
    with pytest.raises(UserError, match="not the one the adapters were trained on"):
        checkpoints.load(tmp_path / "ckpt")
    # and tensors that are not what the config says are refused
    meta = json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())
    (tmp_path / "ckpt" / "adapter_config.json").write_text(json.dumps(meta | {"rank": 2}))
    with pytest.raises(UserError, match="do not fit"):
        lora.load_adapters(base_model(family), tmp_path / "ckpt")


def test_grad_checkpointing_gives_the_same_adapter_gradients():
    grads = []
    for ckpt in (False, True):
        model = lora.add_lora(base_model("llama"), 4, 8.0).train()
        model.config.grad_checkpoint = ckpt
        with torch.no_grad():  # nonzero B, so A gets a gradient too
            for _, _, layer in lora.lora_layers(model):
                layer.lora_B.normal_(generator=torch.Generator().manual_seed(0))
        idx, mask = batch()
        model.classify(idx, mask).logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rank, alpha, match", [(0, 8.0, "rank must be"), (-2, 8.0, "rank must be"),
                                                (4, 0.0, "alpha must be"), (4, -1.0, "alpha must be"),
                                                (33, 8.0, "narrowest projection")])
def test_bad_rank_or_alpha_is_one_line(rank, alpha, match):
    with pytest.raises(UserError, match=match):
        lora.add_lora(base_model("gpt2"), rank, alpha)


@pytest.mark.parametrize("flags, match", [
    (["--lora-rank", "-1"], "--lora-rank: must be a whole number"),
    (["--lora-rank", "4", "--lora-alpha", "0"], "--lora-alpha: must be > 0"),
    (["--lora-alpha", "16"], "--lora-rank: must be >= 1 for --lora-alpha"),
    (["--lora-save", "adapters"], "--lora-rank: must be >= 1 for --lora-alpha and --lora-save"),
    (["--lora-rank", "4", "--train-layers", "2"], "needs --train-layers all"),
    (["--lora-rank", "4", "--linear-probe"], "no --linear-probe"),
])
def test_bad_lora_settings_are_refused_before_any_work(flags, match):
    with pytest.raises(UserError, match=match):
        config.check_config(train.parse_args(["--task", "toy", *flags]))


def test_w2s_refuses_lora_with_probed_supervisors_and_a_rank_is_part_of_the_experiment():
    with pytest.raises(UserError, match="--weak-train-layers: --lora-rank"):
        w2s.parse_args(["--lora-rank", "4", "--weak-train-layers", "0"])
    task = types.SimpleNamespace(kind="classification", files=[], source=None)
    models = {"weak": {"identity": {}}, "strong": {"identity": {}}}
    records = [w2s.experiment_record(*w2s.parse_args(["--lora-rank", r]), task, "", models)["train"] for r in "48"]
    assert records[0]["lora_rank"] == 4 and records[1]["lora_rank"] == 8 and records[0] != records[1]


def test_a_bad_flag_is_one_line_from_the_command_line():
    rc, out, err = run_script("train.py", ["--task", "toy", "--lora-rank", "4", "--train-layers", "0"])
    assert rc == 2 and err.strip().count("\n") == 0 and "--lora-rank" in err and "Traceback" not in err


def test_train_py_with_lora_trains_only_adapters_and_head_and_saves_either_checkpoint(tmp_path, save_tiny_gpt):
    source = save_tiny_gpt(tmp_path / "pretrained", 2, 32)
    args = ["--task", "toy", "--role", "ceiling", "--model", source, "--limit", "60", "--epochs", "1",
            "--batch-size", "16", "--lr", "1e-2", "--lora-rank", "4", "--save-checkpoint", "--quiet"]
    merged = train.run(train.parse_args(args + ["--out", str(tmp_path / "merged")]))
    adapters = train.run(train.parse_args(args + ["--out", str(tmp_path / "adapters"), "--lora-save", "adapters"]))
    assert merged["test"] == adapters["test"] and merged["steps"] == 4
    recorded = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert recorded["train"]["lora_rank"] == 4 and recorded["comparable"]["lora_alpha"] == 8.0
    # the merged checkpoint differs from the pretrained model in the adapted projections' weights and the head only
    pretrained = checkpoints.load(source, n_classes=2).state_dict()
    after = checkpoints.load(tmp_path / "merged" / "ckpt", n_classes=2).state_dict()
    changed = sorted({k.split(".")[-2] for k in pretrained if not torch.equal(pretrained[k], after[k])})
    assert changed == ["c_attn", "c_fc", "c_proj", "score"], changed
    # the adapters checkpoint predicts what the run predicted
    cfg = train.parse_args(args)
    job = prepare(cfg)
    model = checkpoints.load(tmp_path / "adapters" / "ckpt").eval()
    probs = predict_probs(model, job.tok, job.task.splits["test"], setup_runtime(cfg), 16, cfg.max_length)
    assert probs.round(6).tolist() == json.loads((tmp_path / "adapters" / "predictions.json").read_text())["test"]["probs"]
    # another rank is another run: a rerun with it does not count the finished one as done
    inputs = adapters["inputs"]
    done, why = rundir.stage_status(tmp_path / "adapters", config.comparable(train.parse_args(
        args + ["--lora-rank", "8", "--lora-save", "adapters"])), inputs)
    assert not done and "lora_rank" in why


def test_train_py_with_lora_under_bf16_holds_the_base_in_bf16_and_its_adapters_predict_what_the_run_did(
        tmp_path, save_tiny_gpt):
    source = save_tiny_gpt(tmp_path / "pretrained", 2, 32)
    args = ["--task", "toy", "--role", "ceiling", "--model", source, "--limit", "60", "--epochs", "1", "--batch-size",
            "16", "--lr", "1e-2", "--lora-rank", "4", "--dtype", "bf16", "--save-checkpoint", "--quiet"]
    train.run(train.parse_args(args + ["--out", str(tmp_path / "merged")]))
    train.run(train.parse_args(args + ["--out", str(tmp_path / "adapters"), "--lora-save", "adapters"]))
    assert "the frozen projections held in bfloat16" in (tmp_path / "adapters" / "log.txt").read_text()
    merged = checkpoints.load(tmp_path / "merged" / "ckpt", n_classes=2)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}  # back in the model's own dtype
    # the reloaded adapters sit on the fp32 base, which autocast rounds as the run's bf16-held base: the same bits
    cfg = train.parse_args(args)
    job = prepare(cfg)
    model = checkpoints.load(tmp_path / "adapters" / "ckpt").eval()
    probs = predict_probs(model, job.tok, job.task.splits["test"], setup_runtime(cfg), 16, cfg.max_length)
    assert probs.round(6).tolist() == json.loads((tmp_path / "adapters" / "predictions.json").read_text())["test"]["probs"]


def test_the_best_evaluation_keeps_only_the_trained_parameters_and_restores_them_exactly(tmp_path, save_tiny_gpt,
                                                                                          monkeypatch):
    """--select best keeps a copy of the weights at the best evaluation: under LoRA only the adapters and the head
    (the frozen base never changes), and the run ends with every parameter as it was at that evaluation."""
    source = save_tiny_gpt(tmp_path / "pretrained", 2, 32)
    losses, seen, kept = itertools.chain([1.0, 0.5], itertools.repeat(0.9)), [], {}
    real_validate, real_finish = train.validate, train.finish

    def scripted_loss(model, *a, **k):  # the second evaluation is the best
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return next(losses)

    def validate(cfg, job, rt, raw_model, mixer, state, total_steps):
        stop = real_validate(cfg, job, rt, raw_model, mixer, state, total_steps)
        kept.update(state.best["state"] or {})
        return stop

    def finish(cfg, job, rt, model, *a):
        kept["final"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return real_finish(cfg, job, rt, model, *a)
    monkeypatch.setattr(train, "evaluate_loss", scripted_loss)
    monkeypatch.setattr(train, "validate", validate)
    monkeypatch.setattr(train, "finish", finish)
    train.run(train.parse_args(["--task", "toy", "--role", "ceiling", "--model", source, "--limit", "60",
                                "--epochs", "2", "--batch-size", "8", "--evals-per-epoch", "3", "--patience", "10", "--lr", "1e-2",
                                "--lora-rank", "4", "--quiet", "--out", str(tmp_path / "run")]))
    final = kept.pop("final")
    assert len(seen) >= 4 and kept and all("lora_" in n or n.startswith("score") for n in kept)
    assert all(torch.equal(final[n], seen[1][n]) for n in final)  # every parameter as at the best evaluation
    assert any(not torch.equal(seen[1][n], seen[-1][n]) for n in kept)  # and not as at the last one
