"""
bench.py --memory: the peak memory of one train.py classification step (2-class classifier, soft cross entropy,
fused AdamW) by category, MemTracker's Parameter, Gradient, Optstate (Adam), Activation, Temp (backward temporaries)
and Other (the batch), per model size and dtype, without and with --grad-checkpoint.

    python bench.py --memory                 # GPT-2 small..xl, B16 T512
    python bench.py --memory --family llama  # SmolLM2 135M / 360M / 1.7B
    python bench.py --memory --shape gpt2-xl --lora-rank 8  # and each row again with LoRA adapters (lora.py)

On CUDA the real step is measured (and the caching allocator's own peak); on CPU the same code runs on FakeTensors
(shapes and dtypes, no storage), so gpt2-xl costs seconds and no memory. bench.py's speed sections time the very
step measured here (trainer), so it lives in this file and they import it.
"""
import contextlib
import itertools
import json
import platform
import time
import types

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import TorchDispatchMode

from methods.losses import xent_loss
from model import GPT, GPTConfig
from models import lora
from models.llama import Llama, LlamaConfig
from run.config import TrainConfig
from run.optim import make_optimizer, optimizer_step
from run.predict import Classifier


def trainer(forward, model, autocast):
    """One optimizer step of train.py's classification loop: forward under autocast, soft cross entropy in fp32,
    backward, then train.py's optimizer step (optim.py: grad clip, fused AdamW) at a constant learning rate."""
    opt, _, params = make_optimizer(model, TrainConfig(lr=1e-5, weight_decay=0.01), total_steps=1)

    def step(idx, mask, y):
        with autocast:
            logits = forward(idx, mask)
        xent_loss(logits.float(), y).backward()
        optimizer_step(opt, None, params, grad_clip=1.0)
    step.optimizer = opt  # for the memory tracker
    return step


def classifier_of_shape(shape, grad_checkpoint, lora_rank=0, dtype="fp32"):
    """A random-init 2-class classifier of a GPT-2 (SHAPES) or Llama (LLAMA_SHAPES) shape's config fields, with
    train.py's LoRA adapters of `lora_rank` (0: none, every parameter trains; in bf16 their frozen base in bf16)."""
    if "n_kv_head" in shape:
        model = Llama(LlamaConfig(**shape, n_classes=2, grad_checkpoint=grad_checkpoint))
    else:
        model = GPT(GPTConfig(**shape, n_classes=2, grad_checkpoint=grad_checkpoint))
    frozen = torch.bfloat16 if dtype == "bf16" else None  # as train.py under --dtype bf16
    return lora.add_lora(model, lora_rank, TrainConfig.lora_alpha, frozen) if lora_rank else model


class AssumeValid(TorchDispatchMode):
    """Fake tensors have no values, so a step's host reads cannot run. The classification step's only ones are the
    `if bad.any():` checks (targets are probabilities, every row has a real token): answer them False; any other
    read still raises."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].dtype == torch.bool:
            return False
        return func(*args, **(kwargs or {}))


NO_HOOK = types.SimpleNamespace(remove=lambda: None)


class StepPeakTracker(MemTracker):
    """MemTracker that keeps only the overall peak (its own _update_peak_stats also refreshes the peak of every
    tracked module after every op, which grows with depth squared: 16 minutes for the --memory table, 2 with this),
    and that tracks frozen parameters too."""

    def _update_peak_stats(self, peak_state):
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap["Total"]:
                self._peak_mem[dev], self._peak_mem_snap[dev] = snap["Total"], dict(snap)

    def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
        # MemTracker hooks every parameter's gradient, and a frozen one (LoRA's base weights) refuses a hook: mark
        # them hooked already, with handles that remove nothing (they never get a gradient to count)
        for p in module.parameters():
            if not p.requires_grad and p not in self._param_to_grad_hook_handles:
                self._param_to_grad_hook_handles[p] = (NO_HOOK, NO_HOOK)
        return super()._track_module_params_and_buffers(module, install_grad_hooks)


def step_memory(shape, batch_size, seq_len, grad_checkpoint, dtype, device, fake, lora_rank=0):
    """Bytes of one steady-state train.py classification step at its peak, by MemTracker category (Parameter,
    Gradient, Optstate, Activation, Temp = backward temporaries, Other = the batch, Total). MemTracker sees every
    tensor the step allocates. fake=True builds and runs everything on FakeTensors (shapes and dtypes, no storage),
    so gpt2-xl costs seconds and no memory. On CUDA also the caching allocator's own peak ("cuda_max_allocated").
    `lora_rank` > 0: the step trains LoRA adapters and the head only (train.py --lora-rank)."""
    autocast = torch.autocast(device, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    with (FakeTensorMode() if fake else contextlib.nullcontext()), torch.device(device), \
            (AssumeValid() if fake else contextlib.nullcontext()):
        model = classifier_of_shape(shape, grad_checkpoint, lora_rank, dtype)
        step = trainer(Classifier(model), model, autocast)
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


def memory_rows(shapes, batch_size, seq_len, dtypes, device, lora_ranks=(0,)):
    """step_memory for every shape ((name, config fields) pairs) x dtype x LoRA rank (0: full fine-tuning), without
    and with grad checkpointing; CPU runs are fake (a real fp32 gpt2-xl step at B16 T512 needs 56 GiB)."""
    rows = []
    for name, fields in shapes:
        for dtype, rank, ckpt in itertools.product(dtypes, lora_ranks, (False, True)):
            t0 = time.perf_counter()
            row = {"shape": name, "dtype": dtype, "lora_rank": rank, "grad_checkpoint": ckpt}
            try:
                row.update(step_memory(fields, batch_size, seq_len, ckpt, dtype, device,
                                       device == "cpu", rank))
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
    print(f"{'model':12s}{'dtype':>6s}{'lora':>6s}{'ckpt':>6s}" + "".join(f"{names.get(c, c.lower()):>11s}" for c in cols))
    for r in m["rows"]:
        cells = ["OOM"] * len(cols) if r.get("oom") else [f"{r[c] / 2**30:.2f}" for c in cols]
        print(f"{r['shape']:12s}{r['dtype']:>6s}{r['lora_rank'] or '-':>6}{'yes' if r['grad_checkpoint'] else 'no':>6s}"
              + "".join(f"{c:>11s}" for c in cells))
    print("\n" + m["note"])


def memory_main(args, device, command, shapes):
    """bench.py --memory: the table (or --json) of memory_rows for `shapes` ((name, config fields) pairs) at
    --batch-size (16) x --seq-len (512), in --dtype or, when not given, bf16 on CUDA and both fp32 and bf16 on CPU;
    with --lora-rank R each row also with LoRA adapters of rank R (lora column: R; -: full fine-tuning)."""
    B, T = args.batch_size or 16, args.seq_len or 512
    dtypes = [args.dtype] if args.dtype else (["bf16"] if device.type == "cuda" else ["fp32", "bf16"])
    t0 = time.perf_counter()
    rows = memory_rows(shapes, B, T, dtypes, device.type, [0, args.lora_rank] if args.lora_rank else [0])
    res = {"command": command, "torch": torch.__version__,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"}
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
