"""
Speed of w2s against transformers, in one run. Every comparison first checks that both sides compute the same thing.

    python bench.py                    # our model vs transformers' GPT-2: train step, greedy generation, safety epoch
    python bench.py --suite            # every gpt2 speed figure: the above, plus the paper's Trainer recipe,
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

--memory is a tool of its own (benchmarks/memory.py: MemTracker on FakeTensors or the real step), with its own table.

Sections (each a file of benchmarks/, listed in SECTIONS; --suite runs all of --family's, gpt2 by default):
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
  --family llama (models/llama.py against transformers' Llama on the same weights, saved by our save_pretrained):
  llama-train     the train section's step for a random-init --llama-shape (smollm2-135m; CPU: its first 2 blocks)
            vs LlamaForSequenceClassification; first a class-logit parity check
  llama-generate  the generate section for the full --llama-shape vs LlamaForCausalLM.generate; outputs must be equal
  trunk     the frozen trunk's forward pass (no grad: what --train-layers 0 computes and caches) of --trunk-model
            (the real pretrained smollm2-135m) over real safety rows in its own tokenizer, fp32 and bf16 autocast:
            tokens/s ours vs transformers' LlamaModel, in run/features.py's batches (texts of one length, unpadded)
            and in padded batches of 64; first a parity check of the features (fp32)

Timing: ours and the reference alternate (ours, ref, ours, ref, ...) for --rounds rounds after a warm-up, so a busy
machine slows both alike; each figure is the median with [min-max] over rounds, and the speed-up is the median of
the per-round ratios. CUDA is synchronized around every timed run. Both sides start from the same random weights
(ours saved with save_pretrained, loaded by transformers). Needs the `bench` extra (transformers, accelerate).
"""
import json
import os
import sys
import tempfile
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from benchmarks import memory as bench_memory
from benchmarks.common import FAMILIES, SHAPES, Context, print_suite, transformers
from benchmarks.epoch import section_epoch
from benchmarks.generate import section_generate
from benchmarks.llama_family import LLAMA_SHAPES, section_llama_generate, section_llama_train
from benchmarks.recipe import section_recipe
from benchmarks.rtp import section_rtp
from benchmarks.train_step import section_train
from benchmarks.trunk import section_trunk
from benchmarks.whole_experiment import section_experiment
from core import cli
from core.cli import UserError

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
# --memory's sizes of each family, when --shape / --llama-shape does not name one
MEMORY_SHAPES = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
LLAMA_MEMORY_SHAPES = ["smollm2-135m", "smollm2-360m", "smollm2-1.7b"]


def memory_shape(name):
    """The config fields of a --memory row's shape, of either family (a Llama shape has n_kv_head)."""
    return SHAPES[name] if name in SHAPES else LLAMA_SHAPES[name]


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
# the function (in a file of benchmarks/) and list it here.
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
    suite: bool = False              # every section of --family (gpt2: train, generate, epoch, recipe, rtp, experiment)
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
    if not args.memory and "rtp" in family_sections(args) and cfg["max_length"] <= cfg["rtp_new_tokens"]:
        raise UserError(f"argument --max-length: {cfg['max_length']} leaves no room for a prompt before the rtp "
                        f"section's {cfg['rtp_new_tokens']} new tokens (--rtp-new-tokens)")
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

if __name__ == "__main__":  # exit 1 when a parity check failed: its timings compare different computations
    cli.main_guard(lambda: sys.exit(0 if main().get("checks_ok", True) else 1))
