"""
The optimizer and its schedule, as every training loop here uses them (train.py's classifier and language-model
loops, bench.py's timed steps): fused AdamW with weight decay on weight matrices only (nanoGPT), a linear warm-up
then linear decay to 0, and one optimizer step as gradient clipping, AdamW step, schedule step and zeroed gradients.
"""
import torch


def make_optimizer(model, cfg, total_steps, mixer=None):
    """(AdamW, its schedule, the model's trained parameters) over `total_steps` steps. cfg: anything with lr,
    weight_decay and warmup_frac (a TrainConfig), and member_lr when `mixer` (--learned's member weights) is given."""
    params = [p for p in model.parameters() if p.requires_grad]
    # nanoGPT: weight decay on matrices only, never on biases and LayerNorm gains
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if mixer is not None:
        groups.append({"params": list(mixer.parameters()), "weight_decay": 0.0, "lr": cfg.member_lr})
    # fused: one kernel for all parameters, on CUDA and on CPU alike (6x faster than the per-tensor loop on CPU)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    return opt, lr_schedule(opt, total_steps, cfg.warmup_frac), params


def lr_schedule(opt, total_steps, warmup_frac):
    """Linear warm-up over warmup_frac of the steps, then linear decay to 0 at total_steps."""
    warmup = int(warmup_frac * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)))


def optimizer_step(opt, sched, params, grad_clip):
    """One step from accumulated gradients: clip `params`' gradient norm, step AdamW and the schedule (none: a
    constant learning rate), zero the gradients."""
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
