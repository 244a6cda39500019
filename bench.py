"""
Speed of our GPT against transformers' GPT-2 at the same config, in one run:

    python bench.py                    # CPU: small random GPT-2-shaped models, ~1-2 minutes on 2 cores
    python bench.py --device cuda      # GPT-2 medium, batch 16, seq 512, bf16 autocast, TF32, fused AdamW
    python bench.py --quick --json     # seconds-long smoke run, machine-readable result
    python bench.py --memory           # peak memory of a training step, GPT-2 small..xl, B16 T512, with/without
                                       # --grad-checkpoint (CPU: estimated on fake tensors, nothing is computed)

1. training step (classifier, soft cross entropy, grad clip, AdamW): tokens/s and MFU
2. greedy generation of left-padded prompts with a KV cache: new tokens/s, and both outputs must be equal
3. one epoch of real safety data (--data-dir): length-bucketed batches vs every row padded to --max-length
4. --memory instead: peak memory of one train.py classification step, split into parameters, gradients, AdamW state
   and activations (torch.distributed._tools.mem_tracker.MemTracker; on CUDA also torch.cuda.max_memory_allocated)

Both sides start from the same random weights (ours saved with save_pretrained, loaded by transformers), run the
same batches with the same optimizer, autocast and flags; warm-up steps are excluded and CUDA is synchronized
around every timing. Timings interleave ours and HF (training and generation: best of a few rounds; epochs:
batch by batch), so a busy machine slows both alike. Needs transformers (the `test` extra).

GPU figures are still to be measured: this file was written and run on a CPU-only machine.
"""
import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import transformers

import train
from data import load_task
from losses import xent_loss
from model import GPT, GPTConfig
from tokenizer import load_tokenizer
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import TorchDispatchMode

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
DEFAULTS = {  # per device; --quick replaces them with the tiny smoke config
    "cpu": dict(shape="cpu-small", batch_size=8, seq_len=128, gen_batch=8, prompt_len=32, new_tokens=32,
                max_length=128, limit=128, steps=3, rounds=3, dtype="fp32"),
    "cuda": dict(shape="gpt2-medium", batch_size=16, seq_len=512, gen_batch=16, prompt_len=64, new_tokens=128,
                 max_length=512, limit=None, steps=10, rounds=3, dtype="bf16"),
    "quick": dict(shape="tiny", batch_size=4, seq_len=32, gen_batch=4, prompt_len=8, new_tokens=8,
                  max_length=32, limit=32, steps=2, rounds=2, dtype="fp32"),
}
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

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(rounds, device, runs):
    """runs: {name: fn}. Calls each fn once per round, interleaved; returns {name: best (lowest) seconds}."""
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def make_optimizer(model):
    # train.py's optimizer: fused AdamW, decay on matrices only
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-5, fused=True), params


def trainer(forward, model, autocast):
    """One optimizer step of train.py's classification loop: forward under autocast, soft cross entropy in fp32,
    backward, grad clip, AdamW."""
    opt, params = make_optimizer(model)

    def step(idx, mask, y):
        with autocast:
            logits = forward(idx, mask)
        xent_loss(logits.float(), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    step.optimizer = opt  # for the memory tracker
    return step


def pad_to(idx, mask, length, pad_token):
    """Right-pad a collated batch to `length` columns (the mask becomes explicit)."""
    if mask is None:
        mask = torch.ones_like(idx)
    extra = length - idx.shape[1]
    return (torch.nn.functional.pad(idx, (0, extra), value=pad_token),
            torch.nn.functional.pad(mask, (0, extra), value=0))


def load_safety(data_dir, limit, max_length):
    """Token ids and one-hot labels of the safety task's w2s_train split, GPT-2 tokenized (the local tokenizer
    files of the shared data when present, else the Hub's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the data loader's notes on dropped duplicate rows
        task = load_task("safety", data_dir=data_dir, seed=0, limit=limit)
    local = Path(data_dir) / "tokenizers" / "gpt2"
    tok = load_tokenizer(local if local.is_dir() else "gpt2")
    rows = task.splits["w2s_train"]
    seqs = [ids[:max_length] for ids in tok.encode_batch([r["text"] for r in rows])]
    return seqs, [np.eye(len(task.label_names))[r["label"]] for r in rows], tok.pad_token


class AssumeValid(TorchDispatchMode):
    """Fake tensors have no values, so a step's host reads cannot run. The classification step's only ones are the
    `if bad.any():` checks (targets are probabilities, every row has a real token): answer them False; any other
    read still raises."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].dtype == torch.bool:
            return False
        return func(*args, **(kwargs or {}))


class StepPeakTracker(MemTracker):
    """MemTracker that keeps only the overall peak. Its own _update_peak_stats also refreshes the peak of every
    tracked module after every op, which grows with depth squared: 16 minutes for the --memory table, 2 with this."""

    def _update_peak_stats(self, peak_state):
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap["Total"]:
                self._peak_mem[dev], self._peak_mem_snap[dev] = snap["Total"], dict(snap)


def step_memory(shape, batch_size, seq_len, grad_checkpoint, dtype, device, fake):
    """Bytes of one steady-state train.py classification step at its peak, by MemTracker category (Parameter,
    Gradient, Optstate, Activation, Temp = backward temporaries, Other = the batch, Total). MemTracker sees every
    tensor the step allocates. fake=True builds and runs everything on FakeTensors (shapes and dtypes, no storage),
    so gpt2-xl costs seconds and no memory. On CUDA also the caching allocator's own peak ("cuda_max_allocated")."""
    autocast = torch.autocast(device, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    with (FakeTensorMode() if fake else contextlib.nullcontext()), torch.device(device), \
            (AssumeValid() if fake else contextlib.nullcontext()):
        model = GPT(GPTConfig(**shape, n_classes=2, grad_checkpoint=grad_checkpoint))
        step = trainer(train.Classifier(model), model, autocast)
        idx = torch.randint(0, model.config.vocab_size, (batch_size, seq_len))
        mask = torch.ones_like(idx)
        mask[0, seq_len // 2:] = 0  # one padded row, so the mask is passed, as in train.py's bucketed batches
        y = torch.full((batch_size, 2), 0.5)
        step(idx, mask, y)  # Adam's state is created by the first step; measure a later one, where it exists
        tracker = StepPeakTracker()
        tracker.track_external(model, step.optimizer, idx, mask, y)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with tracker:
            step(idx, mask, y)
        peak = {getattr(k, "value", k): v for k, v in tracker.get_tracker_snapshot("peak")[idx.device].items()}
        if device == "cuda":
            peak["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    return peak


def memory_rows(shapes, batch_size, seq_len, dtypes, device):
    """step_memory for every shape x dtype, without and with grad checkpointing; CPU runs are fake (a real fp32 gpt2-xl
    step at B16 T512 needs 56 GiB)."""
    rows = []
    for name in shapes:
        for dtype in dtypes:
            for ckpt in (False, True):
                t0 = time.perf_counter()
                row = {"shape": name, "dtype": dtype, "grad_checkpoint": ckpt}
                try:
                    row.update(step_memory(SHAPES[name], batch_size, seq_len, ckpt, dtype, device, device == "cpu"))
                except torch.OutOfMemoryError:
                    row["oom"] = True
                if device == "cuda":
                    torch.cuda.empty_cache()
                rows.append({**row, "seconds": time.perf_counter() - t0})
    return rows


def print_memory(res):
    m = res["memory"]
    print(f"command: {res['command']}\ndevice: {res['device']} | torch {res['torch']} | {m['method']}")
    print(f"peak memory of one training step, GiB (2-class classifier, fused AdamW, B{m['batch_size']} "
          f"T{m['seq_len']}, padding mask)\n")
    cols = ["Parameter", "Gradient", "Optstate", "Activation", "Temp", "Total"]
    cols += ["cuda_max_allocated"] if any("cuda_max_allocated" in r for r in m["rows"]) else []
    names = {"Optstate": "Adam", "Temp": "bwd temp", "Total": "peak", "cuda_max_allocated": "cuda max"}
    print(f"{'model':12s}{'dtype':>6s}{'ckpt':>6s}" + "".join(f"{names.get(c, c.lower()):>11s}" for c in cols))
    for r in m["rows"]:
        cells = ["OOM"] * len(cols) if r.get("oom") else [f"{r[c] / 2**30:.2f}" for c in cols]
        print(f"{r['shape']:12s}{r['dtype']:>6s}{'yes' if r['grad_checkpoint'] else 'no':>6s}"
              + "".join(f"{c:>11s}" for c in cells))
    print("\n" + m["note"])


# ----------------------------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object instead of a table")
    p.add_argument("--quick", action="store_true", help="tiny model, few steps: a smoke run of every part")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent / "shared" / "data"))
    p.add_argument("--shape", choices=list(SHAPES))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="training sequence length (rows of random tokens, no padding)")
    p.add_argument("--gen-batch", type=int)
    p.add_argument("--prompt-len", type=int, help="longest prompt; the others are shorter and left-padded")
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--max-length", type=int, help="epoch part: rows are truncated to it, and padded to it")
    p.add_argument("--limit", type=int, help="epoch part: examples per split (None = all 4115 of w2s_train)")
    p.add_argument("--steps", type=int, help="timed training steps per round")
    p.add_argument("--rounds", type=int, help="timing rounds; the best round counts")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="bf16 = autocast over fp32 weights, as train.py")
    p.add_argument("--compile", choices=["none", "ours", "both"], default="none",
                   help="torch.compile the training forward of ours only (HF stays as users run it) or of both")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: datasheet for known GPUs)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--memory", action="store_true", help="only the peak memory of a training step, per GPT-2 size "
                   "(default B16 T512; --shape, --batch-size, --seq-len, --dtype narrow it)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    cfg = dict(DEFAULTS["quick" if args.quick else args.device])
    cfg.update({k: v for k, v in vars(args).items() if k in cfg and v is not None})
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg["dtype"] == "bf16"
                else contextlib.nullcontext())
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (
        peak_flops(device_name, cfg["dtype"]) if device.type == "cuda" else None)
    B, T, rounds = cfg["batch_size"], cfg["seq_len"], cfg["rounds"]
    res = {"command": " ".join(["python", "bench.py"] + (sys.argv[1:] if argv is None else list(argv))),
           "device": device_name, "torch": torch.__version__, "transformers": transformers.__version__,
           "threads": torch.get_num_threads(), "config": cfg, "compile": args.compile, "peak_flops": peak,
           "timing": "train, generate: best of rounds; epoch: batches interleaved"}

    # ---- --memory: its own part, its own table ----
    if args.memory:
        B, T = args.batch_size or 16, args.seq_len or 512
        dtypes = [args.dtype] if args.dtype else (["bf16"] if device.type == "cuda" else ["fp32", "bf16"])
        t0 = time.perf_counter()
        rows = memory_rows([args.shape] if args.shape else MEMORY_SHAPES, B, T, dtypes, device.type)
        res["memory"] = {
            "batch_size": B, "seq_len": T, "rows": rows, "seconds": time.perf_counter() - t0,
            "method": ("measured: MemTracker on the real step, and torch.cuda.max_memory_allocated"
                       if device.type == "cuda" else "estimated: MemTracker on FakeTensors (nothing computed); "
                       "bf16 = CPU autocast, which casts this model's ops as CUDA autocast does"),
            "note": "The columns are each category at the moment of the step's peak (activation = saved for backward, "
                    "incl. autocast's bf16 weight copies; bwd temp = activation gradients). SDPA gets the padding "
                    "mask: on CPU it runs _scaled_dot_product_flash_attention_for_cpu, which saves q, k, v, output, "
                    "logsumexp and the mask as (B, 1, T, T), never a (B, heads, T, T) matrix; CUDA's memory-efficient "
                    "kernel saves the same. Not counted: kernel workspaces, and the CUDA allocator's cached but "
                    "unused memory (reserved > allocated)."}
        if args.json:
            print(json.dumps(res, indent=1))
        else:
            print_memory(res)
        return res

    # ---- the same random weights on both sides ----
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**SHAPES[cfg["shape"]], n_classes=2))
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        kw = dict(dtype=torch.float32, attn_implementation="sdpa")
        hf_cls = transformers.GPT2ForSequenceClassification.from_pretrained(d, **kw)
        hf_lm = transformers.GPT2LMHeadModel.from_pretrained(d, **kw)
    pad = ours.config.vocab_size - 1  # GPT-2's <|endoftext|>; random tokens below avoid it
    hf_cls.config.pad_token_id = pad  # HF finds each row's last token by comparing input ids with the pad id
    ours, hf_cls, hf_lm = ours.to(device), hf_cls.to(device), hf_lm.to(device)
    res["n_params"] = ours.num_params()

    # ---- parity first: a bench of two different computations would mean nothing ----
    for m in (ours, hf_cls, hf_lm):
        m.eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, pad, (4, 16), generator=g)
    mask = torch.ones_like(idx)
    mask[1, 10:], mask[3, 5:] = 0, 0
    idx = idx.masked_fill(mask == 0, pad).to(device)
    mask = mask.to(device)
    with torch.no_grad():
        diff = ours.classify(idx, mask) - hf_cls(input_ids=idx, attention_mask=mask).logits
    res["parity_max_abs_logit_diff"] = diff.abs().max().item()

    # ---- generation: left-padded prompts of different lengths, greedy, no eos, same new tokens ----
    GB, PL, N = cfg["gen_batch"], cfg["prompt_len"], cfg["new_tokens"]
    lengths = torch.linspace(max(1, PL // 4), PL, GB).long()
    prompts = torch.randint(0, pad, (GB, PL), generator=g)
    gmask = (torch.arange(PL)[None, :] >= PL - lengths[:, None]).long()
    prompts, gmask = prompts.masked_fill(gmask == 0, pad).to(device), gmask.to(device)
    hf_lm.generation_config.eos_token_id = None

    def ours_generate():
        with autocast:
            return ours.generate(prompts, attention_mask=gmask, max_new_tokens=N)

    def hf_generate():
        with autocast:
            return hf_lm.generate(input_ids=prompts, attention_mask=gmask, max_new_tokens=N, do_sample=False,
                                  pad_token_id=pad)
    with torch.no_grad():
        # equality is checked in fp32: bf16 rounding differs between the two and flips near-tied argmaxes
        a = ours.generate(prompts, attention_mask=gmask, max_new_tokens=N)
        b = hf_lm.generate(input_ids=prompts, attention_mask=gmask, max_new_tokens=N, do_sample=False, pad_token_id=pad)
        res["generate_outputs_equal"] = bool(torch.equal(a, b))
        res["generate_tokens_agree"] = (a[:, PL:] == b[:, PL:]).float().mean().item()
        ours_generate(), hf_generate()  # warm-up
        t = best_of(rounds, device, {"ours": ours_generate, "hf": hf_generate})
    res["generate_new_tok_s"] = {k: GB * N / v for k, v in t.items()}
    del hf_lm

    # ---- training step: rows of T random tokens (no padding: the causal fast path), fixed batch ----
    ours.train()
    hf_cls.train()
    ours_fwd, hf_fwd = train.Classifier(ours), (lambda i, m: hf_cls(input_ids=i, attention_mask=m).logits)
    if args.compile in ("ours", "both"):
        ours_fwd = torch.compile(ours_fwd)
    if args.compile == "both":
        hf_fwd = torch.compile(hf_fwd)
    step = {"ours": trainer(ours_fwd, ours, autocast), "hf": trainer(hf_fwd, hf_cls, autocast)}
    idx = torch.randint(0, pad, (B, T), generator=g).to(device)
    y = torch.softmax(torch.randn(B, 2, generator=g), -1).to(device)
    for name in step:  # warm-up (and compilation)
        for _ in range(2):
            step[name](idx, None, y)
    t = best_of(rounds, device, {k: (lambda s=s: [s(idx, None, y) for _ in range(cfg["steps"])])
                                 for k, s in step.items()})
    tps = {k: cfg["steps"] * B * T / v for k, v in t.items()}
    fpt = train_flops_per_token(ours, T, lm_head=False)
    res["train_tok_s"] = tps
    res["train_flops_per_token"] = fpt
    res["train_mfu"] = {k: mfu(v, fpt, peak) for k, v in tps.items()}

    # ---- one epoch of real data: bucketed batches vs every row padded to max_length ----
    if not (Path(args.data_dir) / "safety").is_dir():
        res["epoch"] = f"skipped: safety data not found under {args.data_dir} (--data-dir)"
    else:
        seqs, targets, pad_token = load_safety(args.data_dir, cfg["limit"], cfg["max_length"])
        lengths = [len(s) for s in seqs]
        order = np.random.default_rng(0).permutation(len(seqs))
        plans = {"bucketed": train.bucketed_batches(lengths, B, seed=0, epoch=0),
                 "padded": [order[i:i + B] for i in range(0, len(seqs), B)]}
        res["epoch"] = {"examples": len(seqs), "batch_size": B, "max_length": cfg["max_length"]}
        for plan, batches in plans.items():
            def batch(b):
                idx, mask = train.collate([seqs[i] for i in b], pad_token, device)
                if plan == "padded":
                    idx, mask = pad_to(idx, mask, cfg["max_length"], pad_token)
                return idx, mask, torch.tensor(np.stack([targets[i] for i in b]), dtype=torch.float32, device=device)
            shapes = {}  # one batch per distinct (shape, padded or not): warm-up, where --compile does its recompiles
            for b in batches:
                idx, mask, _ = batch(b)
                shapes.setdefault((*idx.shape, mask is None), b)
            for name in step:
                for b in shapes.values():
                    step[name](*batch(b))
            cells = sum(len(b) * (cfg["max_length"] if plan == "padded" else max(lengths[i] for i in b))
                        for b in batches)
            t = {name: 0.0 for name in step}
            for b in batches:  # ours and HF alternate batch by batch, so a busy machine slows both alike
                for name, s in step.items():
                    t[name] += best_of(1, device, {name: lambda: s(*batch(b))})[name]
            res["epoch"][plan] = {"seconds": t, "padding_fraction": 1 - sum(lengths) / cells, "steps": len(batches)}

    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print_table(res)
    return res


def print_table(res):
    c, ep = res["config"], res["epoch"]
    peak = "n/a (give --peak-tflops)" if res["peak_flops"] is None else f"{res['peak_flops'] / 1e12:.0f} TFLOP/s"
    print(f"command: {res['command']}")
    print(f"device: {res['device']} | torch {res['torch']} | transformers {res['transformers']} | "
          f"threads {res['threads']} | {c['dtype']} | torch.compile: {res['compile']} | {res['timing']}")
    print(f"model: random-init {c['shape']} ({res['n_params'] / 1e6:.1f}M params) with a 2-class head; "
          f"ours vs HF classify: max |logit diff| {res['parity_max_abs_logit_diff']:.1e}")
    print(f"MFU: train FLOPs/token {res['train_flops_per_token'] / 1e6:,.1f}M, peak {peak}\n")

    def row(name, ours, hf, speed=""):
        print(f"{name:44s}{ours:>12s}{hf:>12s}{speed:>15s}")
    row("", "ours", "HF", "ours/HF speed")
    for key, name in (("train_tok_s", f"train step tokens/s (B{c['batch_size']} T{c['seq_len']})"),
                      ("generate_new_tok_s", f"generate new tokens/s (B{c['gen_batch']}, +{c['new_tokens']})")):
        v = res[key]
        row(name, f"{v['ours']:,.0f}", f"{v['hf']:,.0f}", f"{v['ours'] / v['hf']:.2f}x")
        if key == "train_tok_s":
            row("train MFU", *("n/a" if m is None else f"{m:.1%}" for m in res["train_mfu"].values()))
    if isinstance(ep, str):
        print(f"epoch: {ep}")
    else:
        for plan, what in (("bucketed", "length-bucketed"), ("padded", f"padded to {ep['max_length']}")):
            t = ep[plan]["seconds"]
            row(f"epoch s, {what} (pad {ep[plan]['padding_fraction']:.1%})", f"{t['ours']:.2f}", f"{t['hf']:.2f}",
                f"{t['hf'] / t['ours']:.2f}x")
        speedup = ep["padded"]["seconds"]["ours"] / ep["bucketed"]["seconds"]["ours"]
        print(f"\nepoch: {ep['examples']} safety w2s_train rows, batch {ep['batch_size']}, {ep['bucketed']['steps']} "
              f"steps; bucketing is {speedup:.1f}x faster than padding to {ep['max_length']} (ours)")
    eq = "yes" if res["generate_outputs_equal"] else f"NO ({res['generate_tokens_agree']:.1%} of new tokens agree)"
    print(f"generation outputs equal (fp32 greedy, ours vs HF generate): {eq}")


if __name__ == "__main__":
    main()
