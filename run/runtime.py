"""
Where and how one process computes: the device (--device auto resolved), the precision (bf16 autocast on CUDA, fp32
on CPU: numerics(), which a rerun compares), DistributedDataParallel under torchrun (rank, world size, the process
group, rank 0's number broadcast to every rank, the model wrapped for DDP and torch.compile), torch's CPU threads,
and the run's log (log.txt and stdout; with --track also the tracker, tracking.py).
"""
import contextlib
import os
from dataclasses import dataclass

import torch

from run import tracking
from run.predict import Classifier


@dataclass
class Runtime:
    """Where and how this process computes, and where it logs."""
    device: torch.device
    autocast: object
    ddp: bool
    rank: int
    world: int
    log_file: object = None
    name: str = ""
    bar: object = None
    track: tracking.Tracker = tracking.OFF  # where the loop's numbers are also logged (--track)

    @property
    def master(self):
        return self.rank == 0

    def log(self, msg):
        """To log.txt always; to stdout unless a progress bar shows the same."""
        if not self.master:
            return
        self.log_file.write(msg + "\n")
        self.log_file.flush()
        if self.bar is None:
            print(f"[{self.name}] {msg}", flush=True)


def run_device(cfg):
    """--device with auto resolved: cuda when available, else cpu."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)


def numerics(cfg):
    """Where and in what precision the numbers are computed (--device auto and --dtype auto resolved): a stage or an
    experiment resumed on other hardware must not mix them (fp32 on CPU, bf16 autocast and TF32 on CUDA)."""
    device = run_device(cfg)
    bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    return {"device": device.type, "dtype": "bf16" if bf16 else "fp32"}


def setup_runtime(cfg):
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun sets RANK / WORLD_SIZE
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = run_device(cfg)
    if ddp:
        if device.type == "cuda":
            device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    use_bf16 = numerics(cfg)["dtype"] == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    return Runtime(device, autocast, ddp, rank, world)


@contextlib.contextmanager
def cpu_threads(n):
    """torch's CPU threads set to n (0: left as they are) for the block, then put back."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def broadcast_float(x, device):
    t = torch.tensor([x], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, src=0)
    return t.item()


def wrap_model(raw_model, job, cfg, rt):
    """The module the loop calls: DDP and torch.compile wrap forward(), so classification goes through a forward()
    of its own (predict.Classifier)."""
    model = raw_model if job.generation else Classifier(raw_model)
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return model
