"""
Train one model of a weak-to-strong experiment, nanoGPT style: arguments into a dataclass, build, loop, eval, save.

    python train.py --task safety --role weak                 # gpt2 on weak_train ground truth -> weak labels
    python train.py --task safety --role weak --ensemble 5    # 5 bootstrap members + hard and soft votes
    python train.py --task safety --role ceiling              # gpt2-medium on w2s_train ground truth
    python train.py --task safety --role student              # gpt2-medium on the weak labels of w2s_train
    python train.py --task safety --role student --vote hard  # ... on the ensemble's majority vote (or soft: mean)
    python train.py --task safety --weak random:gpt2 ...      # random-init GPT-2 shape: smoke runs and timing
    torchrun --nproc_per_node 2 train.py ...                  # DistributedDataParallel

Every run writes one directory (--out): config.json (full config, data summary, model identity), log.txt,
predictions.json (test, val and w2s_train), with --save-checkpoint the selected weights in ckpt/ (safetensors), and
metrics.json last: it records the sha256 of every file written and of everything the run was trained on (model,
data, supervisor labels), so a rerun skips the run only when all of them still match.
"""
import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import cli
import config
import ensemble
import labels
import rundir
from batching import bucketed_batches, collate, lm_targets
from cli import UserError
from config import DEFAULT_MODELS, TrainConfig, check_config, comparable, default_out, run_seed
from generation import generate_split, supervisor_predictions
from job import cached_task, prepare, resolve_model
from losses import LOSSES, aux_coef, logconf_threshold
from metrics import metrics
from model import GPT
from predict import Classifier, evaluate_loss, predict_probs
from runtime import broadcast_float, cpu_threads, setup_runtime
from students import selective_targets
from tokenizer import load_tokenizer


# ----------------------------------------------------------------------------------------------------------------
# one run

def run(cfg: TrainConfig, force=False):
    """Train one model (or, with --ensemble K, K members and their votes). Returns the metrics dict. A finished run
    with the same settings and inputs is skipped unless `force`."""
    check_config(cfg)
    cfg.out = cfg.out or default_out(cfg)
    with cpu_threads(cfg.threads):
        if cfg.ensemble > 1:
            return run_ensemble(cfg)
        return run_one(cfg, force)




def run_one(cfg, force=False):
    """run() of one model: skipped when done, else trained, evaluated and saved."""
    if cfg.selective:  # its two cross-fitting folds first (skipped when done)
        for k in (0, 1):
            run(dataclasses.replace(cfg, selective=False, fold=k, out=str(Path(cfg.out) / f"fold{k}")))
    job = prepare(cfg)
    rt = setup_runtime(cfg)
    out = Path(cfg.out)
    with (rundir.locked(out, "train.py run") if rt.master else contextlib.nullcontext()):
        done, why = rundir.stage_status(out, comparable(cfg), job.inputs) if rt.master else (False, None)
        if rt.ddp:  # every rank must take rank 0's decision
            done = bool(broadcast_float(float(done), rt.device))
        if done and not force:
            print(f"[{out}] already done with these settings and inputs; skipping", flush=True)
            return cli.read_json(out / "metrics.json")
        if rt.master:
            if why:
                print(f"[{out}] rerunning: {why}", flush=True)
            rundir.invalidate(out)
            rundir.remove_leftovers(out)
            rt.log_file = open(out / "log.txt", "w")
        rt.name = out.name
        try:
            return train_and_save(cfg, job, rt, out)
        finally:
            if rt.log_file:
                rt.log_file.close()


def train_and_save(cfg, job, rt, out):
    torch.manual_seed(run_seed(cfg))
    model = GPT.from_pretrained(job.model_source, n_classes=job.n_classes)
    max_len = min(cfg.max_length, model.config.block_size)
    if max_len < cfg.max_length:  # the model's context is shorter than --max-length: cut rows to it
        cut = (lambda x: (x[0][:max_len], x[1])) if job.generation else (lambda x: x[:max_len])
        job.train_x, job.val_x = [cut(x) for x in job.train_x], [cut(x) for x in job.val_x]
    model.config.grad_checkpoint = cfg.grad_checkpoint
    if cfg.linear_probe:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("score")
    model.to(rt.device)
    rt.log(f"task {job.task.name} ({job.task.kind}) role {cfg.role} model {cfg.model or job.model_source} "
           f"({model.num_params():,} parameters) train {len(job.train_x)} val {len(job.val_x)}")
    t0, extra = time.time(), {}
    if cfg.selective:  # needs the pretrained model's features: before any training
        extra |= selective_targets(cfg, job, rt, model, max_len)
        rt.log(f"selective: {extra['n_replaced']} weak labels replaced by the cross-fitted strong labels, "
               f"{extra['n_smoothed']} smoothed over {cfg.knn} neighbours")
    if cfg.genft_epochs:
        extra["genft_final_loss"] = lm_warm_start(model, [r["text"] for r in job.train_rows], cfg, rt, job.tok, max_len)
        rt.log(f"generative fine-tuning on {len(job.train_rows)} unlabeled texts: final LM loss "
               f"{extra['genft_final_loss']}")
    stats = train_loop(cfg, job, rt, model) | extra
    if rt.master:
        result = finish(cfg, job, rt, model, stats, out, max_len, t0)
    else:
        result = None
    if rt.ddp:
        torch.distributed.barrier()
    return result


def make_optimizer(model, cfg, total_steps, mixer=None):
    params = [p for p in model.parameters() if p.requires_grad]
    # nanoGPT: weight decay on matrices only, never on biases and LayerNorm gains
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if mixer is not None:
        groups.append({"params": list(mixer.parameters()), "weight_decay": 0.0, "lr": cfg.member_lr})
    # fused: one kernel for all parameters, on CUDA and on CPU alike (6x faster than the per-tensor loop on CPU)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    warmup = int(cfg.warmup_frac * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    return opt, sched, params


def loss_kwargs(cfg, step, total_steps, threshold):
    """The keywords of the student loss at this step (losses.py documents each loss's)."""
    coef = aux_coef(step, total_steps, cfg.aux_coef, cfg.aux_warmup, cfg.aux_schedule)
    return {"xent": {}, "logconf": {"coef": coef, "threshold": threshold}, "entropy": {"coef": coef},
            "product": {"alpha": cfg.product_alpha, "beta": cfg.product_beta},
            "window": {"radius": cfg.window_radius}}[cfg.loss]


def step_loss(cfg, job, rt, model, batch_rows, batch_targets, step, total_steps, threshold=None, mixer=None):
    """Loss of one micro-batch. Classification: the student loss (--loss) on the head's logits against the targets
    (with --learned, the members' labels mixed by the learnt weights); generation: causal LM loss, padding (and
    with --loss-on continuation, the prompt) excluded."""
    if job.generation:
        seqs = [x[0] for x in batch_rows]
        idx, mask = collate(seqs, job.tok.pad_token, rt.device)
        targets = lm_targets(batch_rows, idx.shape[1], rt.device, cfg.loss_on)
        with rt.autocast:
            _, loss = model(idx, attention_mask=mask, targets=targets)
        return loss, sum(len(s) for s in seqs)
    idx, mask = collate(batch_rows, job.tok.pad_token, rt.device)
    y = torch.tensor(np.stack(batch_targets), dtype=torch.float32, device=rt.device)
    if mixer is not None:
        y = mixer(y)  # (B, K, C) -> (B, C), differentiable in the member weights
    with rt.autocast:
        logits = model(idx, mask)
    loss = LOSSES[cfg.loss](logits.float(), y, **loss_kwargs(cfg, step, total_steps, threshold))
    return loss, sum(len(s) for s in batch_rows)


@torch.no_grad()
def batch_threshold(cfg, job, rt, model, batch):
    """logconf's hardening threshold over the whole optimizer batch, every micro-batch and every rank: one no-grad
    forward pass over this rank's rows, gathered from all ranks. Only needed when the batch is split (one piece:
    the loss takes it from its own rows, the same number)."""
    rows = batch[rt.rank::rt.world]
    idx, mask = collate([job.train_x[i] for i in rows], job.tok.pad_token, rt.device)
    with rt.autocast:
        probs = torch.softmax(model.classify(idx, mask).float(), -1)
    targets = torch.tensor(np.stack([job.train_targets[i] for i in rows]), dtype=torch.float32, device=rt.device)
    if rt.ddp:  # ranks hold uneven shares: pad to the largest with NaN rows, gather, drop them
        size = math.ceil(len(batch) / rt.world)
        both = torch.full((size, 4), float("nan"), device=rt.device)
        both[:len(rows)] = torch.cat([probs, targets], 1)
        gathered = [torch.empty_like(both) for _ in range(rt.world)]
        torch.distributed.all_gather(gathered, both)
        both = torch.cat(gathered)
        both = both[~both.isnan().any(1)]
        probs, targets = both[:, :2], both[:, 2:]
    return logconf_threshold(probs, targets)


def train_loop(cfg, job, rt, raw_model):
    """The visible loop: bucketed batches, micro-batches, clip, AdamW step, periodic val loss, early stopping with
    the best weights kept in memory. Returns what finish() records."""
    world = rt.world
    if cfg.batch_size % (world * cfg.grad_accum):
        raise UserError(f"argument --batch-size: must be a multiple of world size {world} x --grad-accum "
                        f"{cfg.grad_accum} (got {cfg.batch_size})")
    steps_per_epoch = math.ceil(len(job.train_x) / cfg.batch_size)
    epochs = cfg.epochs or math.ceil(cfg.max_steps / steps_per_epoch)
    total_steps = steps_per_epoch * epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    mixer = None
    if cfg.learned:  # the member weights learn with the student, at their own learning rate
        mixer = labels.MemberWeights(np.shape(job.train_targets[0])[0]).to(rt.device)
    opt, sched, params = make_optimizer(raw_model, cfg, total_steps, mixer)
    # DDP and torch.compile wrap forward(), so classification goes through a forward() of its own
    model = raw_model if job.generation else Classifier(raw_model)
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    lengths = [len(x[0]) if job.generation else len(x) for x in job.train_x]
    best = {"val_loss": float("inf"), "step": 0, "state": None}
    evals_since_best, step, t0, tokens_seen, stop, last_val_loss = 0, 0, time.time(), 0, False, float("inf")
    pad_tokens = real_tokens = 0
    rt.bar = cli.progress(total_steps, rt.name, quiet=cfg.quiet or not rt.master)
    for epoch in range(epochs):
        for batch in bucketed_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch):
            model.train()
            split = cfg.grad_accum > 1 or rt.ddp
            threshold = batch_threshold(cfg, job, rt, raw_model, batch) if cfg.loss == "logconf" and split else None
            shards = np.array_split(batch[rt.rank::world], cfg.grad_accum)
            for micro, shard in enumerate(shards):
                sync = micro == len(shards) - 1 or not rt.ddp
                # a shard's mean loss counts by its share of the batch (DDP then averages over ranks, hence * world),
                # so uneven shards of a short batch give exactly the one-process gradient; an empty shard still runs
                # one row at weight 0, because every rank must join each gradient all-reduce
                weight = len(shard) * world / len(batch)
                shard = shard if len(shard) else batch[:1]
                with (contextlib.nullcontext() if sync else model.no_sync()):
                    loss, ntok = step_loss(cfg, job, rt, model, [job.train_x[i] for i in shard],
                                           [job.train_targets[i] for i in shard], step, total_steps, threshold, mixer)
                    (loss * weight).backward()
                if not weight:
                    continue
                tokens_seen += ntok * world
                pad_tokens += max(lengths[i] for i in shard) * len(shard) - ntok
                real_tokens += ntok
            if mixer is not None and rt.ddp:  # the member weights sit outside DDP: their gradient is averaged here
                for p in mixer.parameters():
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)  # the model's; the member weights are not clipped
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if rt.bar is not None:
                rt.bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                lossf = loss.item()  # the only sync in the step, at log intervals
                if not math.isfinite(lossf):
                    raise UserError(f"loss became {lossf} at step {step}: lower --lr, or check the data")
                dt = time.time() - t0
                if rt.bar is not None:
                    rt.bar.set_postfix(epoch=epoch, loss=f"{lossf:.4f}", tok_s=f"{tokens_seen / dt:,.0f}")
                rt.log(f"step {step}/{total_steps} epoch {epoch} loss {lossf:.4f} lr {sched.get_last_lr()[0]:.2e} "
                       f"tok/s {tokens_seen / dt:,.0f} pad {pad_tokens / max(1, pad_tokens + real_tokens):.1%} "
                       f"eta {dt / step * (total_steps - step):.0f}s")
            if step % eval_every == 0 or step >= total_steps:
                val_loss = evaluate_loss(raw_model, job, rt, cfg, mixer) if rt.master else 0.0
                if rt.ddp:  # rank 0's number for every rank: one early-stopping decision, or the next all-reduce hangs
                    val_loss = broadcast_float(val_loss, rt.device)
                if not math.isfinite(val_loss):
                    raise UserError(f"validation loss became {val_loss} at step {step}: lower --lr, or check the data")
                improved = val_loss < best["val_loss"]
                rt.log(f"step {step} val_loss {val_loss:.4f}{' (best)' if improved else ''}")
                if improved:
                    best = {"val_loss": val_loss, "step": step,  # only rank 0 predicts, so only it keeps weights
                            "state": {k: v.detach().to("cpu", copy=True) for k, v in raw_model.state_dict().items()}
                            if rt.master and cfg.select == "best" else None,
                            "member_weights": mixer.weights().tolist() if mixer is not None else None}
                    evals_since_best = 0
                elif cfg.select == "best":
                    evals_since_best += 1
                    if evals_since_best >= cfg.patience:
                        rt.log(f"early stop at step {step}: no val improvement in {cfg.patience} evals")
                        stop = True
                last_val_loss = val_loss
            if stop or step >= total_steps:
                stop = True
                break
        if stop:
            break
    if rt.bar is not None:
        rt.bar.close()
        rt.bar = None
    if step == 0:
        raise UserError("the run took no optimizer step: check --epochs, --max-steps and the training data")
    if best["state"] is not None:
        raw_model.load_state_dict(best["state"])
    selected = best if cfg.select == "best" else {"val_loss": last_val_loss, "step": step}
    stats = {"best_step": selected["step"], "best_val_loss": selected["val_loss"], "select": cfg.select,
             "steps": step, "train_examples": len(job.train_x),
             "padding_fraction": pad_tokens / max(1, pad_tokens + real_tokens)}
    if mixer is not None:  # the mix the selected student was trained on up to its step
        weights = best.get("member_weights") if cfg.select == "best" else None
        weights = weights or mixer.weights().tolist()
        stats["member_weights"] = [round(w, 6) for w in weights]
    return stats


def finish(cfg, job, rt, model, stats, out, max_len, t0):
    """Predict every split with the selected weights, then write config, predictions, checkpoint and, last,
    metrics.json with the sha256 of each of them and of the run's inputs."""
    splits = ["test", "val"] + (["w2s_train"] if not job.generation or cfg.role == "weak" else [])
    predictions = {}
    for split in splits:
        rows = job.task.splits[split]
        if job.generation:
            predictions[split] = generate_split([model], "single", job.tok, rows, rt.device, rt.autocast, cfg, max_len,
                                                split)
        else:
            probs = predict_probs(model, job.tok, rows, rt, cfg.batch_size, max_len)
            predictions[split] = {"ids": [r["id"] for r in rows], "labels": [r["label"] for r in rows],
                                  "probs": probs.round(6).tolist()}
    written = ["config.json", "predictions.json"]
    if cfg.contrastive:  # ConG: this model (post) against itself before fine-tuning (pre), rebuilt from the same seed
        torch.manual_seed(run_seed(cfg))
        pre = GPT.from_pretrained(job.model_source).to(rt.device)
        (out / "contrastive").mkdir(exist_ok=True)
        rundir.write_json(out / "contrastive" / "predictions.json", supervisor_predictions(
            [model, pre], "contrastive", job.tok, job.task, rt.device, rt.autocast, cfg, max_len))
        written.append("contrastive/predictions.json")
    result = {"role": cfg.role, "model": cfg.model or job.model_source, **stats, "train_seconds": time.time() - t0}
    if not job.generation:
        test = predictions["test"]
        result["test"] = metrics(np.array(test["labels"]), np.array(test["probs"]))
        rt.log("test " + " ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
    train = dataclasses.asdict(cfg) | {"out": ".", "weak_labels": rundir.relative(job.supervisor, out) if job.supervisor else ""}
    config = {"train": train, "comparable": comparable(cfg), "model": cfg.model or job.model_source,
              "n_params": model.num_params(), "data": job.task.summary(), "inputs": job.inputs,
              "torch": torch.__version__, "argv": sys.argv}
    rundir.write_json(out / "config.json", config)
    rundir.write_json(out / "predictions.json", predictions)
    if cfg.save_checkpoint:
        model.save_pretrained(out / "ckpt")
        written.append("ckpt")
    result |= {"outputs": rundir.outputs_of(out, written), "inputs": job.inputs}
    rundir.write_json(out / "metrics.json", result)  # last: marks the run as done
    return result


def lm_warm_start(model, texts, cfg, rt, tok, max_len):
    """Burns et al.'s generative fine-tuning: the strong model first learns the texts of w2s_train as a language
    model (it is given the texts only, never a label), for --genft-epochs epochs with the run's optimizer settings,
    then trains as a classifier. Under DDP every rank runs it on all texts; DDP's start then broadcasts rank 0's
    weights. Returns the last batch's LM loss."""
    seqs = [ids[:max_len] for ids in tok.encode_batch(texts)]
    seqs = [s for s in seqs if len(s) > 1]  # a one-token text has no next token to predict
    total = math.ceil(len(seqs) / cfg.batch_size) * cfg.genft_epochs
    opt, sched, params = make_optimizer(model, cfg, total)
    bar = cli.progress(total, f"{rt.name} genft", quiet=cfg.quiet or not rt.master)
    model.train()
    for epoch in range(cfg.genft_epochs):
        for batch in bucketed_batches([len(s) for s in seqs], cfg.batch_size, seed=cfg.seed, epoch=10_000 + epoch):
            idx, mask = collate([seqs[i] for i in batch], tok.pad_token, rt.device)
            targets = lm_targets([(seqs[i], 0) for i in batch], idx.shape[1], rt.device, "all")
            with rt.autocast:
                _, loss = model(idx, attention_mask=mask, targets=targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return round(loss.item(), 4)




def run_ensemble(cfg):
    """K weak supervisors, each on a bootstrap resample of weak_train from its own seed; each member's labels are
    kept, and both votes are written from the same members (ensemble/hard, ensemble/soft). The ensemble's own
    metrics.json records the members' predictions it voted on."""
    out = Path(cfg.out)
    task = cached_task(cfg.task, cfg.data_dir, cfg.seed, cfg.limit)
    generation = task.kind == "generation"
    members = [out / f"member{k}" for k in range(cfg.ensemble)]
    for k, member_dir in enumerate(members):  # a generation vote decodes with the members: they keep their weights
        run(dataclasses.replace(cfg, ensemble=1, member=k, out=str(member_dir),
                                save_checkpoint=cfg.save_checkpoint or generation))
    # what the votes read: the members' predictions, or for generation their weights, which metrics.json records
    inputs = {"members": [rundir.sha256_file(d / "metrics.json") if generation else
                          rundir.sha256_file(rundir.verified(d, "predictions.json")) for d in members]}
    with rundir.locked(out, "train.py run"):
        done, why = rundir.stage_status(out, comparable(cfg), inputs)
        if done:
            print(f"[{out}] votes already done for these members; skipping", flush=True)
            return cli.read_json(out / "metrics.json")
        if why:
            print(f"[{out}] voting again: {why}", flush=True)
        rundir.invalidate(out)
        rundir.write_json(out / "config.json", {"train": dataclasses.asdict(cfg) | {"out": "."},
                                                "comparable": comparable(cfg), "inputs": inputs})
        if generation:  # the members decode together: they need the tokenizer and a device
            rt = setup_runtime(cfg)
            _, tok_source = resolve_model(cfg.model or DEFAULT_MODELS["generation"]["weak"], cfg.data_dir, cfg.quiet)
            results, written = ensemble.vote_continuations(cfg, task, out, members, load_tokenizer(tok_source), rt)
        else:
            results, written = ensemble.vote_probabilities(out, members)
        rundir.write_json(out / "metrics.json", results | {"outputs": rundir.outputs_of(out, ["config.json"] + written),
                                                           "inputs": inputs})
    return results




def parse_args(argv=None):
    return config.parse_args(argv, __doc__)


def main(argv=None):
    cfg = parse_args(argv)
    run(cfg)
    if cfg.ensemble > 1:
        print(f"results: {cfg.out}/hard/predictions.json, {cfg.out}/soft/predictions.json, {cfg.out}/metrics.json")
    else:
        print(f"results: {cfg.out}/metrics.json, {cfg.out}/predictions.json, {cfg.out}/log.txt", flush=True)


if __name__ == "__main__":
    cli.main_guard(main)