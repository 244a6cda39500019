"""
Train one model of a weak-to-strong experiment, nanoGPT style: arguments into a dataclass, build, loop, eval, save.

    python train.py --task safety --role weak                 # gpt2 on weak_train ground truth -> weak labels
    python train.py --task safety --role weak --ensemble 5    # 5 bootstrap members + hard and soft votes
    python train.py --task safety --role ceiling              # gpt2-medium on w2s_train ground truth
    python train.py --task safety --role student              # gpt2-medium on the weak labels of w2s_train
    python train.py --task safety --role student --vote hard  # ... on the ensemble's majority vote (or soft: mean)
    python train.py --task safety --weak random:gpt2 ...      # random-init GPT-2 shape: smoke runs and timing
    torchrun --nproc_per_node 2 train.py ...                  # DistributedDataParallel
    python train.py ... --track tensorboard                   # also log loss, lr, tokens/s, val loss (or wandb)

Every run writes one directory (--out): config.json (full config, data summary, model identity), log.txt,
predictions.json (test, val and w2s_train), with --save-checkpoint the selected weights in ckpt/ (safetensors; with
--lora-rank the adapters merged into them, or with --lora-save adapters the adapters and head alone: lora.py), and
metrics.json last: it records the sha256 of every file written and of everything the run was trained on (model,
data, supervisor labels), so a rerun skips the run only when all of them still match.
"""
# This file reads top to bottom as a run goes: run() -> run_one() -> train_and_save() -> train_loop() and its helpers
# -> finish(). Around it, in run/: the settings and their checks (config.py), the device, precision and DDP
# (runtime.py), what a run trains on (job.py), the optimizer and schedule (optim.py), predictions, logconf's batch
# threshold and the val loss (predict.py), a fitted probe's stage (probe_stage.py).
import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core import cli
from core.cli import UserError
from methods import labels
from methods.losses import LOSSES, aux_coef
from models import checkpoints, lora
from run import config, ensemble, features, predict, probe_stage, rundir, tracking
from run.batching import bucketed_batches, collate, lm_targets
from run.config import TrainConfig, check_config, comparable, default_out, run_seed
from run.generation import supervisor_predictions
from run.job import prepare
from run.optim import make_optimizer, optimizer_step
from run.predict import evaluate_loss, predict_splits
from run.runtime import broadcast_float, cpu_threads, numerics, setup_runtime, wrap_model
from run.students import lm_warm_start, selective_targets
from scoring.metrics import metrics

# ----------------------------------------------------------------------------------------------------------------
# one run

def run(cfg: TrainConfig, force=False):
    """Train one model (or, with --ensemble K, K members and their votes). Returns the metrics dict. A finished run
    with the same settings and inputs is skipped unless `force`."""
    check_config(cfg)
    cfg.out = cfg.out or default_out(cfg)
    with cpu_threads(cfg.threads):
        if cfg.ensemble > 1:
            return ensemble.run_ensemble(cfg, run)
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
        rt.track = tracking.start(cfg, out) if rt.master else tracking.OFF
        try:
            result = train_and_save(cfg, job, rt, out)
            rt.track.finish({k: v for k, v in (result or {}).items() if k not in ("outputs", "inputs")})
            return result
        finally:
            rt.track.finish()  # a run that failed ends its tracked run too (done already otherwise)
            if rt.log_file:
                rt.log_file.close()


def train_and_save(cfg, job, rt, out):
    torch.manual_seed(run_seed(cfg))
    # the whole model is loaded: its store holds every depth (run/features.py); a language model trains its top in place
    on_top = cfg.train_layers != "all" and not job.generation
    model = checkpoints.load(job.model_source, job.n_classes, None if on_top else job.depth)
    if job.generation and cfg.train_layers != "all":
        model = features.freeze_below_top(model, int(cfg.train_layers))
    max_len = min(cfg.max_length, model.config.block_size)
    if max_len < cfg.max_length:  # the model's context is shorter than --max-length: cut rows to it
        cut = (lambda x: (x[0][:max_len], x[1])) if job.generation else (lambda x: x[:max_len])
        job.train_x, job.val_x = [cut(x) for x in job.train_x], [cut(x) for x in job.val_x]
    model.config.grad_checkpoint = cfg.grad_checkpoint
    if cfg.linear_probe:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("score")
    if cfg.lora_rank:
        lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha,
                      torch.bfloat16 if numerics(cfg)["dtype"] == "bf16" else None)
    model.to(rt.device)
    rt.log(f"task {job.task.name} ({job.task.kind}) role {cfg.role} model {cfg.model or job.model_source} "
           f"({model.num_params():,} parameters{f', its first {job.depth} blocks used' if on_top and job.depth else ''}) "
           f"train {len(job.train_x)} val {len(job.val_x)}")
    if cfg.lora_rank:
        rt.log(f"LoRA rank {cfg.lora_rank} alpha {cfg.lora_alpha} on {len(lora.lora_layers(model))} projections: "
               f"training {sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters, the frozen "
               f"projections held in {str(lora.lora_layers(model)[0][2].weight.dtype).removeprefix('torch.')}")
    t0, extra = time.time(), {}
    fitted = on_top and config.fitted_probe(cfg)
    if on_top:
        model = features.train_on_top(cfg, job, rt, model, max_len)
        rt.log(f"{'fitting the head' if fitted else f'training the top {cfg.train_layers} of {model.config.n_layer} blocks and the head'} "
               f"({sum(p.numel() for p in model.parameters()):,} parameters) on "
               f"{'the bottom run at every step' if cfg.recompute_bottom else 'cached features'}")
    if cfg.selective:  # needs the pretrained model's features: before any training
        extra |= selective_targets(cfg, job, rt, model.base[0] if on_top else model, max_len)
        rt.log(f"selective: {extra['n_replaced']} weak labels replaced by the cross-fitted strong labels, "
               f"{extra['n_smoothed']} smoothed over {cfg.knn} neighbours")
    if cfg.genft_epochs:
        extra["genft_final_loss"] = lm_warm_start(model, [r["text"] for r in job.train_rows], cfg, rt, job.tok, max_len)
        rt.log(f"generative fine-tuning on {len(job.train_rows)} unlabeled texts: final LM loss "
               f"{extra['genft_final_loss']}")
    stats = (probe_stage.fit_stage(cfg, job, rt, model) if fitted else train_loop(cfg, job, rt, model)) | extra
    result = finish(cfg, job, rt, model, stats, out, max_len, t0) if rt.master else None
    if rt.ddp:
        torch.distributed.barrier()
    return result


# ----------------------------------------------------------------------------------------------------------------
# the loss of one micro-batch

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
    idx, mask = job.collate(batch_rows, rt.device)
    y = torch.tensor(np.stack(batch_targets), dtype=torch.float32, device=rt.device)
    if mixer is not None:
        y = mixer(y)  # (B, K, C) -> (B, C), differentiable in the member weights
    with rt.autocast:
        logits = model(idx, mask)
    loss = LOSSES[cfg.loss](logits.float(), y, **loss_kwargs(cfg, step, total_steps, threshold))
    return loss, sum(len(s) for s in batch_rows)


# ----------------------------------------------------------------------------------------------------------------
# the training loop

@dataclass
class Plan:
    """How long a run trains: epochs, optimizer steps in all, and the steps between validation evaluations."""
    epochs: int
    total_steps: int
    eval_every: int


def plan_steps(cfg, job, rt):
    if cfg.batch_size % (rt.world * cfg.grad_accum):
        raise UserError(f"argument --batch-size: must be a multiple of world size {rt.world} x --grad-accum "
                        f"{cfg.grad_accum} (got {cfg.batch_size})")
    steps_per_epoch = math.ceil(len(job.train_x) / cfg.batch_size)
    epochs = cfg.epochs or math.ceil(cfg.max_steps / steps_per_epoch)
    total_steps = steps_per_epoch * epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    return Plan(epochs, total_steps, max(1, steps_per_epoch // cfg.evals_per_epoch))


@dataclass
class LoopState:
    """What the loop counts as it goes, and the best evaluation so far (its weights kept in memory on rank 0)."""
    t0: float
    step: int = 0
    tokens_seen: int = 0
    pad_tokens: int = 0
    real_tokens: int = 0
    best: dict = field(default_factory=lambda: {"val_loss": float("inf"), "step": 0, "state": None})
    evals_since_best: int = 0
    last_val_loss: float = float("inf")

    @property
    def padding_fraction(self):
        return self.pad_tokens / max(1, self.pad_tokens + self.real_tokens)


def train_loop(cfg, job, rt, raw_model):
    """The visible loop: bucketed batches, micro-batches, clip, AdamW step, periodic val loss, early stopping with
    the best weights kept in memory. Returns what finish() records."""
    plan = plan_steps(cfg, job, rt)
    mixer, agree = None, None
    if cfg.learned:  # the member weights learn with the student, at their own learning rate
        mixer = labels.MemberWeights(np.shape(job.train_targets[0])[0]).to(rt.device)
        agree = labels.members_agree(np.stack(job.train_targets)) if cfg.agreement_epochs else None
    opt, sched, params = make_optimizer(raw_model, cfg, plan.total_steps, mixer)
    model = wrap_model(raw_model, job, cfg, rt)
    lengths = [len(x[0]) if job.generation else len(x) for x in job.train_x]
    state = LoopState(t0=time.time())
    rt.bar = cli.progress(plan.total_steps, rt.name, quiet=cfg.quiet or not rt.master)
    done = False
    for epoch in range(plan.epochs):
        for batch in bucketed_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch):
            model.train()
            only = agree if epoch < cfg.agreement_epochs else None  # RAVEN's disagreement schedule
            loss = accumulate_gradients(cfg, job, rt, model, raw_model, batch, lengths, state, plan, mixer, only)
            optimizer_step(opt, sched, params, cfg.grad_clip)  # the model's; the member weights are not clipped
            state.step += 1
            if rt.bar is not None:
                rt.bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == plan.total_steps:
                log_step(rt, state, plan, epoch, loss, sched)
            if state.step % plan.eval_every == 0 or state.step >= plan.total_steps:
                done = validate(cfg, job, rt, raw_model, mixer, state, plan.total_steps)
            if done or state.step >= plan.total_steps:
                done = True
                break
        if done:
            break
    if rt.bar is not None:
        rt.bar.close()
        rt.bar = None
    return loop_stats(cfg, job, raw_model, mixer, state)


def accumulate_gradients(cfg, job, rt, model, raw_model, batch, lengths, state, plan, mixer, only=None):
    """Forward and backward of one optimizer batch, this rank's share of it in --grad-accum micro-batches, gradients
    summed as one batch would give them. `only` (N,) bool: the rows that count; the others get zero weight, the loss
    still divided by the whole batch. Returns the last micro-batch's loss (logged at intervals)."""
    split = cfg.grad_accum > 1 or rt.ddp
    threshold = predict.batch_threshold(job, rt, raw_model, batch) if cfg.loss == "logconf" and split else None
    kept = batch if only is None else batch[only[batch]]
    shards = np.array_split(kept[rt.rank::rt.world], cfg.grad_accum)
    for micro, shard in enumerate(shards):
        sync = micro == len(shards) - 1 or not rt.ddp
        # a shard's mean loss counts by its share of the batch (DDP then averages over ranks, hence * world),
        # so uneven shards of a short batch give exactly the one-process gradient; an empty shard still runs
        # one row at weight 0, because every rank must join each gradient all-reduce
        weight = len(shard) * rt.world / len(batch)
        shard = shard if len(shard) else batch[:1]
        with (contextlib.nullcontext() if sync else model.no_sync()):
            loss, ntok = step_loss(cfg, job, rt, model, [job.train_x[i] for i in shard],
                                   [job.train_targets[i] for i in shard], state.step, plan.total_steps, threshold, mixer)
            (loss * weight).backward()
        if not weight:
            continue
        state.tokens_seen += ntok * rt.world
        state.pad_tokens += max(lengths[i] for i in shard) * len(shard) - ntok
        state.real_tokens += ntok
    if mixer is not None and rt.ddp:  # the member weights sit outside DDP: their gradient is averaged here
        for p in mixer.parameters():
            torch.distributed.all_reduce(p.grad)
            p.grad /= rt.world
    return loss


def log_step(rt, state, plan, epoch, loss, sched):
    step, total_steps = state.step, plan.total_steps
    lossf = loss.item()  # the only sync in the step, at log intervals
    if not math.isfinite(lossf):
        raise UserError(f"loss became {lossf} at step {step}: lower --lr, or check the data")
    dt, lr = time.time() - state.t0, sched.get_last_lr()[0]
    if rt.bar is not None:
        rt.bar.set_postfix(epoch=epoch, loss=f"{lossf:.4f}", tok_s=f"{state.tokens_seen / dt:,.0f}")
    rt.log(f"step {step}/{total_steps} epoch {epoch} loss {lossf:.4f} lr {lr:.2e} "
           f"tok/s {state.tokens_seen / dt:,.0f} pad {state.padding_fraction:.1%} "
           f"eta {dt / step * (total_steps - step):.0f}s")
    rt.track.log(step, {"train/loss": lossf, "train/lr": lr, "train/tokens_per_s": state.tokens_seen / dt,
                        "train/padding_fraction": state.padding_fraction, "train/epoch": epoch})


def validate(cfg, job, rt, raw_model, mixer, state, total_steps):
    """Validation loss now (--select objective: the student's own loss at this step); the weights kept when it is
    the best so far. Returns whether to stop early (--patience evaluations without improvement, unless --select
    final)."""
    objective = None
    if cfg.select == "objective":
        kwargs = loss_kwargs(cfg, state.step, total_steps, None)
        objective = lambda logits, y: LOSSES[cfg.loss](logits, y, **kwargs)  # noqa: E731
    val_loss = evaluate_loss(raw_model, job, rt, cfg, mixer, objective) if rt.master else 0.0
    if rt.ddp:  # rank 0's number for every rank: one early-stopping decision, or the next all-reduce hangs
        val_loss = broadcast_float(val_loss, rt.device)
    if not math.isfinite(val_loss):
        raise UserError(f"validation loss became {val_loss} at step {state.step}: lower --lr, or check the data")
    improved = val_loss < state.best["val_loss"]
    rt.log(f"step {state.step} val_loss {val_loss:.4f}{' (best)' if improved else ''}")
    rt.track.log(state.step, {"val/loss": val_loss})
    state.last_val_loss = val_loss
    if improved:
        state.best = {"val_loss": val_loss, "step": state.step,  # only rank 0 predicts, so only it keeps weights;
                      # the trained parameters only: a frozen one (LoRA's base, the blocks below K) never changes
                      "state": {k: p.detach().to("cpu", copy=True) for k, p in raw_model.named_parameters()
                                if p.requires_grad} if rt.master and cfg.select != "final" else None,
                      "member_weights": mixer.weights().tolist() if mixer is not None else None}
        state.evals_since_best = 0
    elif cfg.select != "final":
        state.evals_since_best += 1
        if state.evals_since_best >= cfg.patience:
            rt.log(f"early stop at step {state.step}: no val improvement in {cfg.patience} evals")
            return True
    return False


def loop_stats(cfg, job, raw_model, mixer, state):
    """The selected weights loaded (the best evaluation's, or the last with --select final), and what they are."""
    if state.step == 0:
        raise UserError("the run took no optimizer step: check --epochs, --max-steps and the training data")
    best = state.best
    if best["state"] is not None:
        assert not raw_model.load_state_dict(best["state"], strict=False).unexpected_keys
    selected = best if cfg.select != "final" else {"val_loss": state.last_val_loss, "step": state.step}
    stats = {"best_step": selected["step"], "best_val_loss": selected["val_loss"], "select": cfg.select,
             "steps": state.step, "train_examples": len(job.train_x), "padding_fraction": state.padding_fraction}
    if mixer is not None:  # the mix the selected student was trained on up to its step
        weights = best.get("member_weights") if cfg.select != "final" else None
        weights = weights or mixer.weights().tolist()
        stats["member_weights"] = [round(w, 6) for w in weights]
    return stats


# ----------------------------------------------------------------------------------------------------------------
# the run's outputs

def finish(cfg, job, rt, model, stats, out, max_len, t0):
    """Predict every split with the selected weights, then write config, predictions, checkpoint and, last,
    metrics.json with the sha256 of each of them and of the run's inputs."""
    splits = ["test", "val"] + (["w2s_train"] if not job.generation or cfg.role == "weak" else [])
    predictions = predict_splits(model, job, rt, cfg, max_len, splits)
    written = ["config.json", "predictions.json"]
    if cfg.contrastive:  # ConG: this model (post) against itself before fine-tuning (pre), rebuilt from the same seed
        torch.manual_seed(run_seed(cfg))
        pre = checkpoints.load(job.model_source, depth=job.depth).to(rt.device)
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
    record = {"train": train, "comparable": comparable(cfg), "model": cfg.model or job.model_source,
              "n_params": model.num_params(), "data": job.task.summary(), "inputs": job.inputs,
              "torch": torch.__version__, "argv": sys.argv}
    rundir.write_json(out / "config.json", record)
    rundir.write_json(out / "predictions.json", predictions)
    if cfg.save_checkpoint:  # last use of the model: merging LoRA adapters into it in place is safe here
        base = {"source": job.model_source, "depth": job.depth, "seed": run_seed(cfg), "identity": job.inputs["model"]}
        lora.save_checkpoint(model, out / "ckpt", cfg.lora_save, base)
        written.append("ckpt")
    result |= {"outputs": rundir.outputs_of(out, written), "inputs": job.inputs}
    rundir.write_json(out / "metrics.json", result)  # last: marks the run as done
    return result


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