"""
The `llama-train` and `llama-generate` sections (--family llama): models/llama.py against transformers' Llama on the
same weights, saved by our save_pretrained. llama-train: the train section's step for a random-init --llama-shape
(smollm2-135m; CPU: its first 2 blocks) vs LlamaForSequenceClassification, first a class-logit parity check;
llama-generate: the generate section for the full --llama-shape vs LlamaForCausalLM.generate, outputs must be equal.

    python bench.py --sections llama-train llama-generate
    python bench.py --family llama           # these two and the trunk section (benchmarks/trunk.py)
"""
import torch

from benchmarks.common import transformers
from benchmarks.generate import greedy_rows
from benchmarks.train_step import classify_parity, train_step_rows
from models import llama
from models.llama import Llama, LlamaConfig

# Random-init rows use llama.SHAPES (and a tiny one for --quick); both sides load the weights our save_pretrained
# writes in the Hub layout.

# llama2-7b: a 7B shape for --memory (meta-llama/Llama-2-7b-hf's config.json, written from memory of that file)
LLAMA_SHAPES = {"tiny": dict(llama.SHAPES["smollm2-135m"], n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                             intermediate_size=128), **llama.SHAPES,
                "llama2-7b": dict(n_layer=32, n_embd=4096, n_head=32, n_kv_head=32, intermediate_size=11008,
                                  vocab_size=32000, block_size=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
                                  tie_word_embeddings=False)}


def llama_pad(shape):
    """The pad id of random-token rows: the last id of the vocabulary; random tokens are drawn below it."""
    return LLAMA_SHAPES[shape]["vocab_size"] - 1


def llama_label(shape, layers):
    n = LLAMA_SHAPES[shape]["n_layer"]
    return f"{shape} shape" + (f", its first {layers} of {n} blocks" if layers and layers < n else "")


def llama_weights(ctx, shape, layers=None):
    """Random weights of a Llama shape (its first `layers` blocks), saved once per run in the Hub layout."""
    key = f"llama-{shape}-{layers or 'all'}"
    if key not in ctx._weights:
        fields = dict(LLAMA_SHAPES[shape])
        fields["n_layer"] = min(layers or fields["n_layer"], fields["n_layer"])
        torch.manual_seed(0)
        Llama(LlamaConfig(**fields, n_classes=2)).save_pretrained(ctx.workdir / key)
        ctx._weights[key] = ctx.workdir / key
    return ctx._weights[key]


def llama_pair(ctx, hf_cls, shape, layers=None, n_classes=2):
    """(ours, transformers' hf_cls) on the same saved weights, on the device."""
    path = llama_weights(ctx, shape, layers)
    ours = Llama.from_pretrained(path, n_classes=n_classes).to(ctx.device)
    hf = hf_cls.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    hf.config.pad_token_id = llama_pad(shape)  # where HF's classifier finds each row's last token
    return ours, hf.to(ctx.device)

def section_llama_train(ctx):
    """Llama: training step of train.py's classification loop (rows of random tokens, no padding)
    ref: transformers LlamaForSequenceClassification, same weights (ours saved in the Hub layout), batch, optimizer"""
    S, shape, layers = "llama-train", ctx.cfg["llama_shape"], ctx.cfg["llama_layers"]
    ours, hf = llama_pair(ctx, transformers.LlamaForSequenceClassification, shape, layers)
    parity = classify_parity(S, ours, hf, pad=llama_pad(shape))
    return [parity] + train_step_rows(ctx, S, ours, hf, llama_pad(shape), llama_label(shape, layers))


def section_llama_generate(ctx):
    """Llama: greedy generation of left-padded prompts with a KV cache, no eos: every row gets --new-tokens
    ref: transformers LlamaForCausalLM.generate(do_sample=False), same weights and autocast"""
    shape = ctx.cfg["llama_shape"]
    ours, hf = llama_pair(ctx, transformers.LlamaForCausalLM, shape, n_classes=0)
    return greedy_rows(ctx, "llama-generate", ours.eval(), hf.eval(), llama_pad(shape), f"{llama_label(shape, None)}: ")
