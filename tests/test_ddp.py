"""train.py under DistributedDataParallel (2 CPU processes, gloo) and with gradient accumulation must take the same
optimizer step as one process on the same global batch. The batch is uneven on purpose (31 rows: 16 + 15 per rank
or micro-batch), so a per-shard mean that is not weighted by shard size would show."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import train
from model import GPT, GPTConfig
from models.tokenizer import save_byte_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:safety:UserWarning")  # the loader's notes on dropped duplicates
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one optimizer step over all 31 w2s_train rows; a large lr so that the step moves the val loss well past the tolerance
ARGS = ["--task", "safety", "--role", "ceiling", "--limit", "31", "--batch-size", "32", "--max-length", "32",
        "--max-steps", "1", "--lr", "1e-2", "--device", "cpu", "--log-every", "1"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_gpt")
    torch.manual_seed(0)
    GPT(GPTConfig(block_size=64, vocab_size=257, n_layer=2, n_head=2, n_embd=32, n_classes=2)).save_pretrained(d)
    save_byte_tokenizer(d)
    return d


def run_in_process(out, model, data, *extra):
    train.run(train.parse_args(ARGS + ["--model", str(model), "--data-dir", str(data), "--out", str(out), *extra]))
    return read(out)


def read(out):
    m = json.loads((out / "metrics.json").read_text())
    probs = json.loads((out / "predictions.json").read_text())["test"]["probs"]
    return m, torch.tensor(probs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args):
    """train.py ARGS as 2 CPU processes (gloo), started in the background."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "train.py", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONWARNINGS="ignore")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_ddp_two_processes_and_grad_accum_take_the_single_process_step(tiny_model, shared_data, tmp_path):
    ddp_out = tmp_path / "ddp"
    ddp = torchrun([*ARGS, "--model", str(tiny_model), "--data-dir", str(shared_data), "--out", str(ddp_out)])
    # while the two ranks start up, the same step in this process: plain, accumulated, and no step at all (lr 0)
    single, single_probs = run_in_process(tmp_path / "single", tiny_model, shared_data)
    accum, accum_probs = run_in_process(tmp_path / "accum", tiny_model, shared_data, "--grad-accum", "2")
    # (--lr must be > 0: a step of 1e-12 moves nothing measurable)
    before, before_probs = run_in_process(tmp_path / "lr0", tiny_model, shared_data, "--lr", "1e-12")
    log, _ = ddp.communicate(timeout=120)
    assert ddp.returncode == 0, log[-3000:]
    dist, dist_probs = read(ddp_out)

    assert single["train_examples"] == dist["train_examples"] == 31 and single["steps"] == dist["steps"] == 1
    # the step is real: it moves the val loss and the test probabilities far beyond the tolerances below
    assert abs(single["best_val_loss"] - before["best_val_loss"]) > 1e-3
    assert (single_probs - before_probs).abs().max() > 1e-3
    # DDP: gradients all-reduced in another summation order (gloo), so equal to float32 rounding
    assert dist["best_val_loss"] == pytest.approx(single["best_val_loss"], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(dist_probs, single_probs, rtol=0, atol=1e-5)
    # accumulation: two micro-batches of 16 and 15 rows, one optimizer step
    assert accum["best_val_loss"] == pytest.approx(single["best_val_loss"], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(accum_probs, single_probs, rtol=0, atol=1e-5)


def test_grad_accum_over_an_epoch_with_a_short_last_batch_equals_no_accumulation(tiny_model, shared_data, tmp_path):
    # 31 rows in batches of 4: the last batch has 3 rows, so with 4 micro-batches one of them is empty
    epoch = ["--max-steps", "0", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3"]
    plain, plain_probs = run_in_process(tmp_path / "plain", tiny_model, shared_data, *epoch)
    accum, accum_probs = run_in_process(tmp_path / "accum", tiny_model, shared_data, *epoch, "--grad-accum", "4")
    assert plain["steps"] == accum["steps"] == 8
    assert accum["best_val_loss"] == pytest.approx(plain["best_val_loss"], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(accum_probs, plain_probs, rtol=0, atol=1e-5)


def test_logconf_hardens_over_the_whole_batch_under_grad_accum_and_ddp(tiny_model, shared_data, tmp_path):
    # a logconf student's hardening threshold is a quantile over its optimizer batch: split into micro-batches or
    # over two ranks (4 + 4 rows), it must still be taken over all 8 rows, or the steps are not the one-piece steps
    # (hardening per micro-batch moves these test probabilities by 0.1; measured)
    weak = tmp_path / "weak"
    run_in_process(weak, tiny_model, shared_data, "--role", "weak")
    student = ["--role", "student", "--loss", "logconf", "--aux-coef", "0.75", "--aux-warmup", "0",
               "--weak-labels", str(weak / "predictions.json"), "--batch-size", "8", "--max-steps", "4"]
    ddp = torchrun([*ARGS, "--model", str(tiny_model), "--data-dir", str(shared_data), "--out", str(tmp_path / "ddp"),
                    *student])
    single, single_probs = run_in_process(tmp_path / "single", tiny_model, shared_data, *student)
    accum, accum_probs = run_in_process(tmp_path / "accum", tiny_model, shared_data, *student, "--grad-accum", "2")
    xent, xent_probs = run_in_process(tmp_path / "xent", tiny_model, shared_data, *student, "--loss", "xent")
    log, _ = ddp.communicate(timeout=120)
    assert ddp.returncode == 0, log[-3000:]
    dist, dist_probs = read(tmp_path / "ddp")
    assert (single_probs - xent_probs).abs().max() > 1e-3  # the confidence term changes this step
    torch.testing.assert_close(accum_probs, single_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(dist_probs, single_probs, rtol=0, atol=1e-5)
    assert accum["best_val_loss"] == pytest.approx(single["best_val_loss"], rel=1e-5, abs=1e-6)


def test_learned_member_weights_take_the_single_process_step_under_ddp(tiny_model, shared_data, tmp_path):
    # the member weights sit outside the DDP wrapper: without averaging their gradient over ranks, each rank would
    # learn its own mix from half the batch and the two ranks would train on different targets
    ensemble = tmp_path / "ensemble"
    train.run(train.parse_args(ARGS + ["--model", str(tiny_model), "--data-dir", str(shared_data), "--out",
                                       str(ensemble), "--role", "weak", "--ensemble", "2"]))
    student = ["--role", "student", "--learned", "--weak-labels", str(ensemble), "--member-lr", "0.2",
               "--batch-size", "8", "--max-steps", "3", "--select", "final"]
    ddp = torchrun([*ARGS, "--model", str(tiny_model), "--data-dir", str(shared_data), "--out", str(tmp_path / "ddp"),
                    *student])
    single, single_probs = run_in_process(tmp_path / "single", tiny_model, shared_data, *student)
    log, _ = ddp.communicate(timeout=120)
    assert ddp.returncode == 0, log[-3000:]
    dist, dist_probs = read(tmp_path / "ddp")
    assert abs(single["member_weights"][0] - 0.5) > 1e-3  # the mix moved
    assert dist["member_weights"] == pytest.approx(single["member_weights"], abs=1e-5)
    torch.testing.assert_close(dist_probs, single_probs, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_lora_takes_the_single_process_step_under_ddp(tiny_model, shared_data, tmp_path):
    # DDP with frozen parameters: only the adapters and the head are all-reduced, and every one of them gets a
    # gradient at each step (an unused trained parameter would hang DDP's reducer)
    lora = ["--lora-rank", "4", "--lora-alpha", "16", "--max-steps", "2", "--select", "final"]
    ddp = torchrun([*ARGS, "--model", str(tiny_model), "--data-dir", str(shared_data), "--out", str(tmp_path / "ddp"),
                    *lora])
    single, single_probs = run_in_process(tmp_path / "single", tiny_model, shared_data, *lora)
    full, full_probs = run_in_process(tmp_path / "full", tiny_model, shared_data, "--max-steps", "2", "--select", "final")
    log, _ = ddp.communicate(timeout=120)
    assert ddp.returncode == 0, log[-3000:]
    dist, dist_probs = read(tmp_path / "ddp")
    assert (single_probs - full_probs).abs().max() > 1e-3  # LoRA's step is not full fine-tuning's
    torch.testing.assert_close(dist_probs, single_probs, rtol=0, atol=1e-5)
    assert dist["best_val_loss"] == pytest.approx(single["best_val_loss"], rel=1e-5, abs=1e-6)
