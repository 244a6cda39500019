"""
What bench.py's sections share: the random-init GPT-2 shapes, the interleaved timing (ours and the reference alternate
for --rounds rounds; the median with [min-max]), the table rows every section returns, the safety rows, the Context
the sections are run with, and the printed table (or --json). No section of its own: every `python bench.py` run
(e.g. `python bench.py --sections train`) goes through it.
"""
import contextlib
import functools
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from data import load_task
from model import GPT, GPTConfig
from models.tokenizer import load_tokenizer

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
PAD = 50256  # GPT-2's <|endoftext|>, the pad token of train.py's GPT-2 tokenizer; the sections' random tokens avoid it
# Dense (no sparsity) peak tensor FLOP/s from the vendors' datasheets, matched against torch.cuda.get_device_name
PEAK_FLOPS = [  # (name contains, dtype) -> FLOP/s
    (("H100", "PCIe"), "bf16", 756e12), (("H100",), "bf16", 989e12), (("H200",), "bf16", 989e12),
    (("A100",), "bf16", 312e12), (("H100", "PCIe"), "fp32", 378e12), (("H100",), "fp32", 495e12),  # TF32
    (("H200",), "fp32", 495e12), (("A100",), "fp32", 156e12),
]
# the sections of each --family, in the suite's order (bench.py's SECTIONS maps each name to its function)
FAMILIES = {"gpt2": ["train", "generate", "epoch", "recipe", "rtp", "experiment"],
            "llama": ["llama-train", "llama-generate", "trunk"]}


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
# pieces shared by the sections (the training step they time, trainer, is benchmarks/memory.py's: --memory
# measures it)

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


# ----------------------------------------------------------------------------------------------------------------
# the table

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
