"""The CUDA fast paths against their plain references, on one GPU; every test is marked `cuda` and skips without one.

    python -m pytest -q -m cuda tests/test_cuda.py          # on a GPU machine (~2-3 minutes, most of it compiling)

1. bf16 autocast forward (what train.py runs on CUDA) vs fp32: LM logits within 2% of the fp32 logits' largest
   magnitude at every real position (mean error within 0.5%), class logits within 3% of theirs.
2. SDPA kernels vs the math backend (torch.nn.attention.sdpa_kernel), forward and backward of a training loss: flash
   (causal, no padding), memory-efficient (padding mask), cuDNN where it runs, and torch's default choice. fp32:
   logits within 1e-4 and gradients within 1e-3 of the largest magnitude; bf16: 2% and 5%.
3. torch.compile (inductor) of KV-cache greedy generation equals eager, token for token, on its compiling call and on
   a warm one.
4. a DistributedDataParallel step over NCCL, world size 1 (one process per GPU: one process here), equals the same
   step in a single process without DDP: loss, gradients, and the model after the AdamW step.
5. train.py's own DDP path under torchrun over NCCL (world size 1) equals the same run in one process, and its
   --compile training equals eager (bf16 and fusion rounding).
6. `bench.py --suite --quick --device cuda` runs every section (epoch and recipe need the safety data: W2S_SHARED_DATA
   or ../shared/data) with all of its checks passing.
fp32 references run with TF32 off (train.py and bench.py turn it on)."""
import contextlib
import copy
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also when run as a script (the DDP worker below)
from model import GPT, GPTConfig  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def cuda_gpt(seed, std=None, vocab_size=1024, n_layer=4, n_embd=256, pre_ln=True, n_classes=2):
    """A random GPT on the GPU (head size 64, which every SDPA kernel takes). std: re-draw the weight matrices with
    this std, for sharper attention and larger logit gaps than GPT-2's init (0.02) gives."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=256, vocab_size=vocab_size, n_layer=n_layer, n_head=n_embd // 64, n_embd=n_embd,
                          pre_ln=pre_ln, n_classes=n_classes))
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, std)
    return model.cuda().eval()


def padded_batch(seed, vocab_size, lengths, T):
    """Right-padded rows of the given lengths (T = a multiple of 16, the memory-efficient kernel's mask alignment)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab_size, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return idx.cuda(), mask.cuda()


@pytest.mark.parametrize("pre_ln", [True, False], ids=["gpt2", "gpt1"])
def test_bf16_autocast_forward_matches_fp32(pre_ln):
    model = cuda_gpt(0, pre_ln=pre_ln)
    idx, mask = padded_batch(1, 1024, [64, 50, 64, 9, 33, 64, 1, 40], 64)
    with torch.no_grad():
        logits, _ = model(idx, attention_mask=mask)
        classes = model.classify(idx, mask)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits_bf16, _ = model(idx, attention_mask=mask)
            classes_bf16 = model.classify(idx, mask)
    assert logits_bf16.dtype == classes_bf16.dtype == torch.bfloat16  # the matmuls really ran in bf16
    real = mask.bool()
    scale = logits[real].abs().max()
    err = (logits_bf16.float() - logits)[real].abs()
    # bf16 keeps 8 significant bits (2**-8 = 0.4% relative); the CPU test of the same comparison measures 0.3%
    assert 0 < err.max() <= 0.02 * scale and err.mean() <= 0.005 * scale
    assert (classes_bf16.float() - classes).abs().max() <= 0.03 * classes.abs().max()


def sdpa_case_inputs():
    from torch.nn.attention import SDPBackend
    return [  # (backend or None = torch's own choice, dtype, padded)
        (SDPBackend.FLASH_ATTENTION, torch.bfloat16, False),  # training on unpadded rows: is_causal, no mask
        (SDPBackend.EFFICIENT_ATTENTION, torch.bfloat16, True),  # padded batches, generation: boolean mask
        (SDPBackend.EFFICIENT_ATTENTION, torch.float32, True),
        (SDPBackend.EFFICIENT_ATTENTION, torch.float32, False),
        (SDPBackend.CUDNN_ATTENTION, torch.bfloat16, False),
        (None, torch.bfloat16, False), (None, torch.bfloat16, True), (None, torch.float32, True),
    ]


def forward_backward(model, idx, mask, dtype):
    """LM logits and the gradients of a classification loss (train.py's: soft cross entropy in fp32)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits, _ = model(idx, attention_mask=mask)
        classes = model.classify(idx, mask)
    y = torch.tensor([[0.3, 0.7]], device="cuda").expand(len(idx), 2)
    F.cross_entropy(classes.float(), y).backward()
    return logits.float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend,dtype,padded", sdpa_case_inputs(),
                         ids=lambda v: getattr(v, "name", None) or str(v).replace("torch.", ""))
def test_sdpa_kernel_matches_the_math_backend(backend, dtype, padded):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model = cuda_gpt(2, std=0.08).train()  # dropout is 0: train mode only makes SDPA take its training path
    idx, mask = padded_batch(3, 1024, [64, 47, 64, 5, 64, 30, 64, 17] if padded else [64] * 8, 64)
    mask = mask if padded else None  # no mask: the causal fast path (flash)
    with sdpa_kernel(SDPBackend.MATH):
        ref_logits, ref_grads = forward_backward(model, idx, mask, dtype)
    try:
        with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
            logits, grads = forward_backward(model, idx, mask, dtype)
    except RuntimeError as e:
        if backend == SDPBackend.CUDNN_ATTENTION:  # optional: depends on the cuDNN build and torch version
            pytest.skip(f"cuDNN attention does not run here: {e}")
        raise
    real = torch.ones_like(idx, dtype=torch.bool) if mask is None else mask.bool()
    tol_logits, tol_grads = (1e-4, 1e-3) if dtype == torch.float32 else (0.02, 0.05)
    scale = ref_logits[real].abs().max()
    assert (logits - ref_logits)[real].abs().max() <= tol_logits * scale
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert (g - ref_grads[name]).abs().max() <= tol_grads * ref_grads[name].abs().max() + 1e-12, name


def test_compiled_kv_cache_greedy_generation_equals_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    # std 0.3 and a small vocabulary: large gaps between the top logits, so kernel rounding cannot flip an argmax,
    # and greedy follows the context instead of repeating one token
    model = cuda_gpt(4, std=0.3, vocab_size=257, n_layer=2, n_embd=128, n_classes=0)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 257, (4, 12), generator=g).cuda()
    mask = torch.ones_like(idx)
    mask[0, :5], mask[1, :1], mask[3, :11] = 0, 0, 0  # left padding of different lengths
    with torch.no_grad():
        eager = model.generate(idx, attention_mask=mask, max_new_tokens=10)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    try:
        compiled = torch.compile(model.generate, backend=counter)
        first = compiled(idx, attention_mask=mask, max_new_tokens=10)  # compiles (warm-up)
        second = compiled(idx, attention_mask=mask, max_new_tokens=10)  # the compiled graphs, already built
    finally:
        torch._dynamo.reset()
    assert counter.frame_count >= 1 and counter.op_count > 0  # inductor really compiled the decoding
    assert eager.shape == (4, 22) and len(set(eager[:, 12:].flatten().tolist())) > 10
    assert torch.equal(first, eager) and torch.equal(second, eager)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_step_over_nccl_world_size_1_equals_a_single_process_step(tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(Path(__file__).resolve()), "--ddp-worker", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=os.environ.get(
        "CUDA_VISIBLE_DEVICES", "0").split(",")[0], NCCL_SOCKET_IFNAME="lo", NCCL_IB_DISABLE="1", NCCL_DEBUG="WARN",
               CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONWARNINGS="ignore")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads(out.read_text())
    assert res["backend"] == "nccl" and res["world_size"] == 1
    assert res["allreduced"] >= res["n_params"]  # DDP's NCCL all-reduce carried every gradient
    assert res["step_size"] > 1e-3  # the step is real (lr 1e-2): it moves the weights far past the tolerances below
    assert res["loss_ddp"] == pytest.approx(res["loss_plain"], rel=1e-6)
    assert res["grad_diff"] <= 1e-6 * res["grad_scale"]
    assert res["param_diff"] <= 1e-6 and res["logit_diff"] <= 1e-5


def ddp_worker(out):
    """One rank (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*): train.py's classification step, once through
    DistributedDataParallel over NCCL and once on a plain copy of the same model, deterministic kernels and the math
    attention backend, so the two may differ only by what DDP does."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from methods.losses import xent_loss
    from run import batching, predict

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    torch.manual_seed(0)
    base = GPT(GPTConfig(block_size=64, vocab_size=257, n_layer=2, n_head=2, n_embd=64, n_classes=2))
    plain, wrapped = copy.deepcopy(base).to(device).train(), copy.deepcopy(base).to(device).train()
    ddp = torch.nn.parallel.DistributedDataParallel(predict.Classifier(wrapped), device_ids=[local])  # as train.py
    allreduced = []

    def counting_allreduce(process_group, bucket):
        allreduced.append(bucket.buffer().numel())
        return default_hooks.allreduce_hook(process_group, bucket)
    ddp.register_comm_hook(None, counting_allreduce)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (30, 17, 5, 30, 22, 9, 1, 12)]
    idx, mask = batching.collate(seqs, 256, device)
    y = torch.softmax(torch.randn(len(seqs), 2, generator=g), -1).to(device)
    idx2, mask2 = batching.collate([torch.randint(0, 256, (n,), generator=g).tolist() for n in (20, 7, 31)], 256, device)

    def step(model, forward):
        """train.py's step: fp32 soft cross entropy, backward, clip 1.0, fused AdamW with decay on matrices."""
        params = list(model.parameters())
        opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
                                 {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                lr=1e-2, fused=True)
        loss = xent_loss(forward(idx, mask).float(), y)
        loss.backward()
        grads = [p.grad.detach().clone() for p in params]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item(), grads
    with sdpa_kernel(SDPBackend.MATH):
        loss_plain, grads_plain = step(plain, predict.Classifier(plain))
        loss_ddp, grads_ddp = step(wrapped, ddp)
        with torch.no_grad():
            logit_diff = (plain.classify(idx2, mask2) - wrapped.classify(idx2, mask2)).abs().max().item()
    res = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "allreduced": sum(allreduced),
           "n_params": sum(p.numel() for p in wrapped.parameters()), "loss_plain": loss_plain, "loss_ddp": loss_ddp,
           "grad_diff": max((a - b).abs().max().item() for a, b in zip(grads_plain, grads_ddp)),
           "grad_scale": max(a.abs().max().item() for a in grads_plain),
           "param_diff": max((a - b).abs().max().item() for a, b in zip(plain.parameters(), wrapped.parameters())),
           "step_size": max((a - b.to(device)).abs().max().item() for a, b in zip(plain.parameters(),
                                                                                   base.parameters())),
           "logit_diff": logit_diff}
    Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def train_py_on_cuda(out, model, data, *extra):
    """train.py's own CUDA path (bf16 autocast, TF32, fused AdamW) for a few steps of real safety rows, in process."""
    import train
    args = ["--task", "safety", "--role", "ceiling", "--limit", "31", "--batch-size", "8", "--max-length", "32",
            "--max-steps", "3", "--lr", "1e-3", "--device", "cuda", "--model", str(model), "--data-dir", str(data),
            "--out", str(out), "--quiet", *extra]
    train.run(train.parse_args(args))
    return args


def read_run(out):
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics, torch.tensor(json.loads((out / "predictions.json").read_text())["test"]["probs"])


def test_train_py_under_torchrun_over_nccl_takes_the_single_process_steps(shared_data, save_tiny_gpt, tmp_path):
    """Not a hand-written step: train.py's DDP code (setup_runtime's NCCL init, the val-loss broadcast, the sharded
    batches) under torchrun, world size 1, against the same run in one process."""
    model = save_tiny_gpt(tmp_path / "model", 2, 64)
    args = train_py_on_cuda(tmp_path / "single", model, shared_data)
    single, single_probs = read_run(tmp_path / "single")
    ddp_args = [a if a != str(tmp_path / "single") else str(tmp_path / "ddp") for a in args]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port",
                        str(free_port()), "train.py", *ddp_args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ddp, ddp_probs = read_run(tmp_path / "ddp")
    assert ddp["steps"] == single["steps"] == 3
    assert ddp["best_val_loss"] == pytest.approx(single["best_val_loss"], rel=1e-3)
    torch.testing.assert_close(ddp_probs, single_probs, rtol=0, atol=2e-3)  # bf16 autocast, kernel order


def test_train_py_compiled_training_matches_eager(shared_data, save_tiny_gpt, tmp_path):
    """--compile (what bench.py --compile ours times): the same steps as eager, up to bf16 and fusion rounding."""
    model = save_tiny_gpt(tmp_path / "model", 2, 64)
    train_py_on_cuda(tmp_path / "eager", model, shared_data)
    train_py_on_cuda(tmp_path / "compiled", model, shared_data, "--compile")
    eager, eager_probs = read_run(tmp_path / "eager")
    compiled, compiled_probs = read_run(tmp_path / "compiled")
    assert compiled["best_val_loss"] == pytest.approx(eager["best_val_loss"], rel=1e-2)
    torch.testing.assert_close(compiled_probs, eager_probs, rtol=0, atol=1e-2)


def test_bench_quick_suite_on_cuda(capsys):
    import bench
    data = Path(os.environ.get("W2S_SHARED_DATA", ROOT.parent / "shared" / "data"))
    res = bench.main(["--suite", "--quick", "--device", "cuda", "--json", "--data-dir", str(data)])
    rows = res["rows"]
    assert res["checks_ok"], [r for r in rows if r["kind"] == "check" and not r["ok"]]
    skipped = {r["section"] for r in rows if r["kind"] == "skipped"}
    assert skipped <= ({"epoch", "recipe"} if not (data / "safety").is_dir() else set())
    for r in rows:
        if r["kind"] == "timing":
            assert all(math.isfinite(v) and v > 0 for k in ("ours", "ref", "speedup") for v in r[k]["rounds"])
    capsys.readouterr()


if __name__ == "__main__" and sys.argv[1:2] == ["--ddp-worker"]:
    ddp_worker(sys.argv[2])
