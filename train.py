"""
Train one model of a weak-to-strong experiment, nanoGPT style: arguments into a dataclass, build, loop, eval, save.

    python train.py --task safety --role weak                 # gpt2 on weak_train ground truth -> weak labels
    python train.py --task safety --role weak --ensemble 5    # 5 bootstrap members + hard and soft votes
    python train.py --task safety --role ceiling              # gpt2-medium on w2s_train ground truth
    python train.py --task safety --role student              # gpt2-medium on the weak labels of w2s_train
    python train.py --task safety --role student --vote hard  # ... on the ensemble's majority vote (or soft: mean)
    torchrun --nproc_per_node 2 train.py ...                  # DistributedDataParallel

Every run writes one directory (--out): config.json (full config + data summary), log.txt, predictions.json,
metrics.json (written last: its presence with an equal config means the run is done and a rerun skips it) and,
with --save-checkpoint, the best weights in ckpt/ (safetensors).
"""
import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data import TASKS, load_task
from eval import metrics
from losses import logconf_alpha, logconf_loss, xent_loss
from model import GPT
from tokenizer import load_tokenizer

ROLES = ("weak", "ceiling", "student")
# The paper's models: GPT-2 small supervises GPT-2 medium; for toxicity GPT-1 supervises GPT-2 small.
DEFAULT_MODELS = {"classification": {"weak": "gpt2", "strong": "gpt2-medium"},
                  "generation": {"weak": "openai-gpt", "strong": "gpt2"}}


@dataclass
class TrainConfig:
    task: str = "safety"
    role: str = "weak"               # weak | ceiling | student
    model: str = ""                  # Hub name or local dir; "" = the paper's default for the role
    out: str = ""                    # run directory; "" = runs/<task>/seed<seed>/<role>
    data_dir: str | None = None
    seed: int = 0
    device: str = "auto"             # auto = cuda when available
    limit: int | None = None         # cap every split at this many examples (stratified)
    # students
    weak_labels: str = ""            # predictions.json of the supervisor; "" = <out>/../weak/predictions.json
    vote: str = ""                   # hard | soft: train on that vote of the weak ensemble (<out>/../ensemble/<vote>)
    hard_labels: bool = False        # train on argmax of the weak labels instead of their probabilities
    loss: str = "xent"               # xent | logconf (Burns et al.'s auxiliary confidence loss)
    linear_probe: bool = False       # freeze the backbone, train only the classification head
    # bootstrap ensembles of weak supervisors
    ensemble: int = 1                # K > 1: K members, each on a bootstrap resample of weak_train
    member: int = -1                 # >= 0: this run is ensemble member k (bootstrap resample, own init seed)
    # optimisation (the paper's defaults)
    epochs: int = 3
    batch_size: int = 16
    grad_accum: int = 1              # micro-batches per optimizer step (batch_size is the global batch)
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    max_length: int = 512
    evals_per_epoch: int = 2
    patience: int = 3                # evals without val improvement before stopping
    dtype: str = "auto"              # auto = bf16 autocast on cuda, fp32 on cpu
    compile: bool = False
    grad_checkpoint: bool = False
    save_checkpoint: bool = False
    log_every: int = 20
    max_steps: int = 0               # >0: stop after this many optimizer steps (smoke tests, benchmarks)
    # generation tasks (toxicity)
    loss_on: str = "all"             # all | continuation (mask the prompt tokens out of the LM loss)
    max_new_tokens: int = 20
    samples: int = 1                 # >1: RealToxicityPrompts protocol (e.g. 25 samples, top-p 0.9)
    top_p: float | None = None
    temperature: float = 0.0         # 0 = greedy, as the paper does


# ----------------------------------------------------------------------------------------------------------------
# batching

def bucketed_batches(lengths, batch_size, seed, epoch, shuffle=True):
    """Batches of examples of similar length, so padding stays small: shuffle, sort inside chunks of 50 batches,
    cut into batches, shuffle the batches. Every example appears exactly once per epoch."""
    order = np.arange(len(lengths))
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    lengths = np.asarray(lengths)
    order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in np.array_split(order, max(1, math.ceil(len(order) / chunk)))]) if len(order) else order
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(seqs, pad_token, device, left_pad=False):
    """Pad to the longest row. attention_mask is None when no row is padded (the fast causal SDPA path)."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_token, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if left_pad else slice(0, len(s))
        idx[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    pin = device.type == "cuda"
    idx = (idx.pin_memory() if pin else idx).to(device, non_blocking=True)
    if all(len(s) == T for s in seqs):
        return idx, None
    return idx, (mask.pin_memory() if pin else mask).to(device, non_blocking=True)


def vote(member_probs, how):
    """Combine K weak supervisors' probabilities (K, N, C). soft: mean of probabilities. hard: majority of the
    members' argmax, ties broken toward the class with the higher mean probability; returned one-hot."""
    member_probs = np.asarray(member_probs, dtype=np.float64)
    mean = member_probs.mean(0)
    if how == "soft":
        return mean
    assert how == "hard", how
    C = member_probs.shape[-1]
    counts = np.stack([(member_probs.argmax(-1) == c).sum(0) for c in range(C)], -1).astype(np.float64)
    winner = (counts + 1e-6 * mean).argmax(-1)  # mean prob (< 1) only decides among tied counts
    return np.eye(C)[winner]


# ----------------------------------------------------------------------------------------------------------------
# small file helpers: every output is written atomically, so a killed run never leaves a half-written result

def write_json(path, obj):
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def comparable(cfg_dict):
    # fields that do not change the numbers do not force a rerun
    return {k: v for k, v in cfg_dict.items() if k not in ("out", "log_every", "device", "compile")}


def finished(out, cfg):
    """The run in `out` finished with this same config: its metrics.json exists and its config matches."""
    out = Path(out)
    if not (out / "metrics.json").exists() or not (out / "config.json").exists():
        return False
    return comparable(json.loads((out / "config.json").read_text())["train"]) == comparable(dataclasses.asdict(cfg))


# ----------------------------------------------------------------------------------------------------------------

def run(cfg: TrainConfig):
    """Train one model (or, with --ensemble K, K members and their votes). Returns the metrics dict."""
    if cfg.role not in ROLES:
        raise SystemExit(f"--role must be one of {ROLES}, got {cfg.role!r}")
    name = "ensemble" if cfg.ensemble > 1 else f"student_{cfg.vote}" if cfg.role == "student" and cfg.vote else cfg.role
    cfg.out = cfg.out or f"runs/{cfg.task}/seed{cfg.seed}/{name}"  # w2s.py's run-directory layout
    if cfg.ensemble > 1:
        return run_ensemble(cfg)
    out = Path(cfg.out)
    if finished(out, cfg):
        print(f"[{out}] already done with this config; skipping")
        return json.loads((out / "metrics.json").read_text())

    # ---- distributed setup (torchrun sets RANK / WORLD_SIZE) ----
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if ddp:
        if device.type == "cuda":
            device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    master = rank == 0
    log_file = None
    if master:
        out.mkdir(parents=True, exist_ok=True)
        log_file = open(out / "log.txt", "w")

    def log(msg):
        if master:
            print(f"[{out.name}] {msg}", flush=True)
            log_file.write(msg + "\n")
            log_file.flush()

    # the experiment seed fixes the splits; an ensemble member also gets its own init, order and resample
    run_seed = cfg.seed if cfg.member < 0 else cfg.seed * 1000 + cfg.member + 1
    torch.manual_seed(run_seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    # ---- data ----
    task = load_task(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed, limit=cfg.limit)
    generation = task.kind == "generation"
    strong = cfg.role != "weak"
    model_name = cfg.model or DEFAULT_MODELS[task.kind]["strong" if strong else "weak"]
    tok = load_tokenizer(model_name)
    n_classes = 0 if generation else len(task.label_names)
    train_split = "weak_train" if cfg.role == "weak" else "w2s_train"
    train_rows = list(task.splits[train_split])
    val_rows = list(task.splits["val"])

    if cfg.role == "student":
        # the student never sees ground truth: its train and val targets are the supervisor's predictions
        if cfg.vote not in ("", "hard", "soft") or (cfg.vote and cfg.weak_labels):
            raise SystemExit(f"--vote must be hard or soft, and not given with --weak-labels (got {cfg.vote!r})")
        supervisor = out.parent / "ensemble" / cfg.vote if cfg.vote else out.parent / "weak"
        weak_path = Path(cfg.weak_labels or supervisor / "predictions.json")
        if not weak_path.exists():
            raise SystemExit(f"weak labels not found: {weak_path} (run --role weak first, with --ensemble K for --vote, "
                             "or pass --weak-labels)")
        weak = json.loads(weak_path.read_text())
        train_targets = supervisor_targets(weak, "w2s_train", train_rows, weak_path, generation)
        val_targets = supervisor_targets(weak, "val", val_rows, weak_path, generation)
    else:
        train_targets = gold_targets(train_rows, n_classes, generation)
        val_targets = gold_targets(val_rows, n_classes, generation)
    if cfg.member >= 0:
        # a bootstrap member: resample the training set with replacement, from the member's own seed
        pick = np.random.default_rng(run_seed).integers(0, len(train_rows), len(train_rows))
        train_rows, train_targets = [train_rows[i] for i in pick], [train_targets[i] for i in pick]
    if cfg.hard_labels and not generation:
        train_targets = [np.eye(n_classes)[int(np.argmax(t))] for t in train_targets]

    max_len = cfg.max_length
    if generation:
        train_x = [encode_lm(tok, r["prompt"], t, max_len) for r, t in zip(train_rows, train_targets)]
        val_x = [encode_lm(tok, r["prompt"], t, max_len) for r, t in zip(val_rows, val_targets)]
    else:
        train_x = [ids[:max_len] for ids in tok.encode_batch([r["text"] for r in train_rows])]
        val_x = [ids[:max_len] for ids in tok.encode_batch([r["text"] for r in val_rows])]
    log(f"task {task.name} ({task.kind}) role {cfg.role} model {model_name} train {len(train_x)} ({train_split}) val {len(val_x)}")

    # ---- model ----
    model = GPT.from_pretrained(model_name, n_classes=n_classes)
    if model.config.block_size < max_len:
        max_len = model.config.block_size
        train_x = [x[:max_len] if not generation else (x[0][:max_len], x[1]) for x in train_x]
        val_x = [x[:max_len] if not generation else (x[0][:max_len], x[1]) for x in val_x]
    model.config.grad_checkpoint = cfg.grad_checkpoint
    if cfg.linear_probe:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("score")
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    # nanoGPT: weight decay on matrices only, never on biases and LayerNorm gains
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # fused: one kernel for all parameters, on CUDA and on CPU alike (6x faster than the per-tensor loop on CPU)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    micro_bs = cfg.batch_size // (world * cfg.grad_accum)
    if micro_bs < 1 or cfg.batch_size % (world * cfg.grad_accum):
        raise SystemExit(f"--batch-size {cfg.batch_size} must be a multiple of world size {world} x --grad-accum {cfg.grad_accum}")
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = int(cfg.warmup_frac * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    raw_model = model
    # DDP and torch.compile wrap forward(), so classification goes through a forward() of its own
    model = model if generation else Classifier(model)
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def step_loss(batch_rows, batch_targets, step):
        """Loss of one micro-batch. Classification: soft (or hard, or logconf) cross entropy on the head's logits;
        generation: causal LM loss, padding (and with --loss-on continuation, the prompt) excluded."""
        if generation:
            seqs = [x[0] for x in batch_rows]
            idx, mask = collate(seqs, tok.pad_token, device)
            targets = lm_targets(batch_rows, idx.shape[1], device, cfg.loss_on)
            with autocast:
                _, loss = model(idx, attention_mask=mask, targets=targets)
            return loss, sum(len(s) for s in seqs)
        idx, mask = collate(batch_rows, tok.pad_token, device)
        y = torch.tensor(np.stack(batch_targets), dtype=torch.float32, device=device)
        with autocast:
            logits = model(idx, mask)
        logits = logits.float()
        if cfg.loss == "logconf":
            loss = logconf_loss(logits, y, logconf_alpha(step, total_steps))
        else:
            loss = xent_loss(logits, y)
        return loss, sum(len(s) for s in batch_rows)

    # ---- train: a visible loop, early stopping on val loss, best weights kept in memory ----
    eval_every = max(1, steps_per_epoch // max(1, cfg.evals_per_epoch))
    best = {"val_loss": float("inf"), "step": 0, "state": None}
    evals_since_best, step, t0, tokens_seen, stop = 0, 0, time.time(), 0, False
    pad_tokens = real_tokens = 0
    for epoch in range(cfg.epochs):
        lengths = [len(x[0]) if generation else len(x) for x in train_x]
        batches = bucketed_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch)
        for batch in batches:
            model.train()
            shards = np.array_split(batch[rank::world], cfg.grad_accum)
            for micro, shard in enumerate(shards):
                sync = micro == len(shards) - 1 or not ddp
                # a shard's mean loss counts by its share of the batch (DDP then averages over ranks, hence * world),
                # so uneven shards of a short batch give exactly the one-process gradient; an empty shard still runs
                # one row at weight 0, because every rank must join each gradient all-reduce
                weight = len(shard) * world / len(batch)
                shard = shard if len(shard) else batch[:1]
                with (contextlib.nullcontext() if sync else model.no_sync()):
                    loss, ntok = step_loss([train_x[i] for i in shard], [train_targets[i] for i in shard], step)
                    (loss * weight).backward()
                if not weight:
                    continue
                tokens_seen += ntok * world
                longest = max(lengths[i] for i in shard)
                pad_tokens += longest * len(shard) - ntok
                real_tokens += ntok
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % cfg.log_every == 0 or step == total_steps:
                lossf = loss.item()  # the only sync in the step, at log intervals
                if not math.isfinite(lossf):
                    raise SystemExit(f"loss became {lossf} at step {step}: lower --lr, or check the data")
                dt = time.time() - t0
                log(f"step {step}/{total_steps} epoch {epoch} loss {lossf:.4f} lr {sched.get_last_lr()[0]:.2e} "
                    f"tok/s {tokens_seen / dt:,.0f} pad {pad_tokens / max(1, pad_tokens + real_tokens):.1%} "
                    f"eta {dt / step * (total_steps - step):.0f}s")
            if step % eval_every == 0 or step >= total_steps:
                val_loss = evaluate_loss(raw_model, val_x, val_targets, tok, device, autocast, generation, cfg) \
                    if master else 0.0
                if ddp:  # rank 0's number for every rank: one early-stopping decision, or the next all-reduce hangs
                    val_loss = broadcast_float(val_loss, device)
                if not math.isfinite(val_loss):
                    raise SystemExit(f"validation loss became {val_loss} at step {step}: lower --lr, or check the data")
                improved = val_loss < best["val_loss"]
                log(f"step {step} val_loss {val_loss:.4f}{' (best)' if improved else ''}")
                if improved:
                    best = {"val_loss": val_loss, "step": step,  # only rank 0 predicts, so only it keeps weights
                            "state": {k: v.detach().to("cpu", copy=True) for k, v in raw_model.state_dict().items()}
                            if master else None}
                    evals_since_best = 0
                else:
                    evals_since_best += 1
                    if evals_since_best >= cfg.patience:
                        log(f"early stop at step {step}: no val improvement in {cfg.patience} evals")
                        stop = True
            if stop or step >= total_steps:
                stop = True
                break
        if stop:
            break
    if best["state"] is not None:
        raw_model.load_state_dict(best["state"])

    # ---- predict, evaluate, save (rank 0) ----
    result = None
    if master:
        splits = ["test", "val"] + (["w2s_train"] if cfg.role == "weak" else [])
        predictions = {}
        for split in splits:
            rows = task.splits[split]
            if generation:
                predictions[split] = generate_split(raw_model, tok, rows, device, autocast, cfg, max_len)
            else:
                probs = predict_probs(raw_model, tok, rows, device, autocast, cfg.batch_size, max_len)
                predictions[split] = {"ids": [r["id"] for r in rows], "labels": [r["label"] for r in rows],
                                      "probs": probs.round(6).tolist()}
        result = {"role": cfg.role, "model": model_name, "best_step": best["step"], "best_val_loss": best["val_loss"],
                  "steps": step, "train_examples": len(train_x),
                  "padding_fraction": pad_tokens / max(1, pad_tokens + real_tokens), "train_seconds": time.time() - t0}
        if not generation:
            test = predictions["test"]
            result["test"] = metrics(np.array(test["labels"]), np.array(test["probs"]))
            log("test " + " ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
        config = {"train": dataclasses.asdict(cfg), "model": model_name, "n_params": raw_model.num_params(),
                  "data": task.summary(), "torch": torch.__version__, "argv": sys.argv}
        write_json(out / "config.json", config)
        write_json(out / "predictions.json", predictions)
        if cfg.save_checkpoint:
            raw_model.save_pretrained(out / "ckpt")
        write_json(out / "metrics.json", result)  # last: marks the run as done
        log_file.close()
    if ddp:
        torch.distributed.barrier()
    return result


def broadcast_float(x, device):
    t = torch.tensor([x], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, src=0)
    return t.item()


def run_ensemble(cfg):
    """K weak supervisors, each on a bootstrap resample of weak_train from its own seed; each member's labels are
    kept, and both votes are written from the same members (ensemble/hard, ensemble/soft)."""
    out = Path(cfg.out)
    member_preds = []
    for k in range(cfg.ensemble):
        run(dataclasses.replace(cfg, ensemble=1, member=k, out=str(out / f"member{k}")))
        member_preds.append(json.loads((out / f"member{k}" / "predictions.json").read_text()))
    results = {}
    for how in ("hard", "soft"):
        voted = {}
        for split, first in member_preds[0].items():
            for p in member_preds[1:]:
                if p[split]["ids"] != first["ids"]:
                    raise SystemExit(f"ensemble members disagree on the ids of split {split}")
            probs = vote([p[split]["probs"] for p in member_preds], how)
            voted[split] = {"ids": first["ids"], "labels": first["labels"], "probs": probs.round(6).tolist()}
        d = out / how
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "config.json", {"vote": how, "members": cfg.ensemble, "train": dataclasses.asdict(cfg)})
        write_json(d / "predictions.json", voted)
        test = voted["test"]
        results[how] = {"test": metrics(np.array(test["labels"]), np.array(test["probs"]))}
        write_json(d / "metrics.json", results[how])
    return results


# ----------------------------------------------------------------------------------------------------------------
# targets, encoding, evaluation helpers

def gold_targets(rows, n_classes, generation):
    if generation:
        return [r["continuation"] for r in rows]
    return [np.eye(n_classes)[r["label"]] for r in rows]


def supervisor_targets(weak, split, rows, path, generation):
    """The supervisor's predictions for `rows`, checked to be for exactly these examples."""
    if split not in weak:
        raise SystemExit(f"{path} has no predictions for split '{split}'")
    ids = [r["id"] for r in rows]
    if weak[split]["ids"] != ids:
        raise SystemExit(f"{path}: predictions for '{split}' are for other examples than this task's split "
                         "(different --seed, --limit or data?)")
    if generation:
        return [c[0] if isinstance(c, list) else c for c in weak[split]["continuations"]]
    return [np.asarray(p, dtype=np.float64) for p in weak[split]["probs"]]


def encode_lm(tok, prompt, continuation, max_len):
    """(ids, n_prompt_tokens): prompt and continuation encoded separately so the prompt can be masked."""
    p, c = tok.encode(prompt), tok.encode(continuation)
    return (p + c)[:max_len], len(p)


def lm_targets(batch_rows, T, device, loss_on):
    """Next-token targets aligned with the logits; -100 on padding and, with --loss-on continuation, the prompt."""
    targets = torch.full((len(batch_rows), T), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch_rows):
        ids_t = torch.tensor(ids, dtype=torch.long)
        targets[i, : len(ids) - 1] = ids_t[1:]
        if loss_on == "continuation":
            targets[i, : max(0, n_prompt - 1)] = -100
    return targets.to(device, non_blocking=True)


@torch.no_grad()
def evaluate_loss(model, val_x, val_targets, tok, device, autocast, generation, cfg):
    model.eval()
    total, count = 0.0, 0
    for batch in bucketed_batches([len(x[0]) if generation else len(x) for x in val_x], cfg.batch_size, 0, 0, shuffle=False):
        if generation:
            rows = [val_x[i] for i in batch]
            idx, mask = collate([r[0] for r in rows], tok.pad_token, device)
            targets = lm_targets(rows, idx.shape[1], device, cfg.loss_on)
            with autocast:
                logits, _ = model(idx, attention_mask=mask)
            n = (targets != -100).sum().item()
            total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100, reduction="sum").item()
            count += n
        else:
            idx, mask = collate([val_x[i] for i in batch], tok.pad_token, device)
            y = torch.tensor(np.stack([val_targets[i] for i in batch]), dtype=torch.float32, device=device)
            with autocast:
                logits = model.classify(idx, mask)
            total += xent_loss(logits.float(), y).item() * len(batch)
            count += len(batch)
    return total / max(1, count)


@torch.no_grad()
def predict_probs(model, tok, rows, device, autocast, batch_size, max_len):
    """Class probabilities for `rows`, in their order (batched by length for speed)."""
    model.eval()
    seqs = [ids[:max_len] for ids in tok.encode_batch([r["text"] for r in rows])]
    probs = np.zeros((len(rows), model.config.n_classes))
    for batch in bucketed_batches([len(s) for s in seqs], batch_size * 2, 0, 0, shuffle=False):
        idx, mask = collate([seqs[i] for i in batch], tok.pad_token, device)
        with autocast:
            logits = model.classify(idx, mask)
        probs[batch] = torch.softmax(logits.float(), -1).cpu().numpy()
    return probs


@torch.no_grad()
def generate_split(model, tok, rows, device, autocast, cfg, max_len):
    """Continuations for the prompts of `rows`: greedy by default, or `samples` samples with top-p."""
    model.eval()
    room = max_len - cfg.max_new_tokens
    prompts = [tok.encode(r["prompt"])[-room:] or [tok.pad_token] for r in rows]
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    continuations = [[] for _ in rows]
    for batch in bucketed_batches([len(p) for p in prompts], cfg.batch_size * 2, 0, 0, shuffle=False):
        idx, mask = collate([prompts[i] for i in batch], tok.pad_token, device, left_pad=True)
        if mask is None:
            mask = torch.ones_like(idx)
        for _ in range(cfg.samples):
            with autocast:
                out = model.generate(idx, attention_mask=mask, max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature if cfg.samples == 1 else max(cfg.temperature, 1.0),
                                     top_p=cfg.top_p, eos_token=tok.eot_token, generator=gen)
            for j, i in enumerate(batch):
                new = [t for t in out[j, idx.shape[1]:].tolist() if t != tok.eot_token]
                continuations[i].append(tok.decode(new))
    return {"ids": [r["id"] for r in rows], "labels": [r["label"] for r in rows],
            "prompts": [r["prompt"] for r in rows], "prompt_toxicity": [r.get("prompt_toxicity") for r in rows],
            "continuations": continuations}


# ----------------------------------------------------------------------------------------------------------------

class Classifier(torch.nn.Module):
    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx, attention_mask):
        return self.gpt.classify(idx, attention_mask)


def config_parser(dataclass_type, description):
    """An argparse parser with one --flag per dataclass field (bools get --flag / --no-flag)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(dataclass_type):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            t = str(f.type)
            p.add_argument(flag, type=int if "int" in t else float if "float" in t else str,
                           nargs="+" if t.startswith("list") else None,
                           default=f.default_factory() if t.startswith("list") else f.default)
    return p


def task_defaults(task):
    """A task module may set TRAIN_DEFAULTS (e.g. the toy demo's small models want a larger lr)."""
    if task not in TASKS:
        return {}
    return dict(getattr(importlib.import_module(TASKS[task]), "TRAIN_DEFAULTS", {}))


def parse_args(argv=None):
    parser = config_parser(TrainConfig, __doc__)
    task = parser.parse_known_args(argv)[0].task
    parser.set_defaults(**task_defaults(task))  # flags given on the command line still win
    return TrainConfig(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    run(parse_args())
