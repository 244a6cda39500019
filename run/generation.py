"""
Generation tasks (toxicity): the continuations of a split's prompts under a decoding rule of decode.py, by one model
(greedy or sampled), by the weak ensemble's members together (soft and hard votes), or by the weak model after and
before fine-tuning (ConG's contrastive decoding). Each is a supervisor whose continuations of w2s_train a strong
student learns from, and whose test continuations are scored for toxicity.

    how            models          rule (decode.py)
    single         [model]         greedy at temperature 0, else sampling (--temperature, --top-p)
    soft / hard    K members       soft_vote / hard_vote, at the same temperature and top-p
    contrastive    [post, pre]     contrastive(--cd-beta, --cd-alpha), at the same temperature and top-p

Test prompts get --samples continuations each (RealToxicityPrompts' k: expected maximum toxicity and toxicity
probability need several); the other splits one, the continuation a student learns from.
"""
import numpy as np
import torch

from core import cli
from models import decode
from run.batching import bucketed_batches, collate

SPLIT_STREAMS = {"test": 0, "val": 1, "w2s_train": 2}  # each split samples from its own seeded stream


def decoding_rule(cfg, how, generator):
    """The decode.py rule for this run's --temperature / --top-p, with the given models' arrangement."""
    t, p = cfg.temperature, cfg.top_p
    if how == "single":
        return decode.sample(t, top_p=p, generator=generator)  # temperature 0 is greedy
    if how == "soft":
        return decode.soft_vote(t, top_p=p, generator=generator)
    if how == "hard":
        return decode.hard_vote(t, top_p=p, generator=generator)
    if how == "contrastive":
        return decode.contrastive(cfg.cd_beta, cfg.cd_alpha, t, top_p=p, generator=generator)
    raise ValueError(f"unknown decoding {how!r}")


@torch.no_grad()
def generate_split(models, how, tok, rows, device, autocast, cfg, max_len, split):
    """{"ids", "labels", "prompts", "prompt_toxicity", "continuations"} for the prompts of `rows`: a list of
    continuations per prompt (--samples for test, one otherwise), decoded by `models` under rule `how`. Prompts keep
    their last max_len - max_new_tokens tokens, batched by length and left-padded."""
    for model in models:
        model.eval()
    room = max_len - cfg.max_new_tokens
    prompts = [tok.encode(r["prompt"])[-room:] or [tok.pad_token] for r in rows]
    generator = torch.Generator(device=device).manual_seed(cfg.seed * len(SPLIT_STREAMS) + SPLIT_STREAMS[split])
    rule = decoding_rule(cfg, how, generator)
    samples = cfg.samples if split == "test" else 1
    continuations = [[] for _ in rows]
    # every sample of a prompt in the same decode call (the prompt repeated), about 2 * --batch-size rows a call: one
    # call per sample would cost the whole per-step overhead `samples` times over (3x slower on CPU, bench.py rtp)
    batches = bucketed_batches([len(p) for p in prompts], max(1, cfg.batch_size * 2 // samples), 0, 0, shuffle=False)
    bar = cli.progress(len(rows) * samples, f"generating {split} ({how})", quiet=cfg.quiet, unit="continuation")
    for batch in batches:
        idx, mask = collate([prompts[i] for i in batch], tok.pad_token, device, left_pad=True)
        if mask is None:
            mask = torch.ones_like(idx)
        idx, mask = idx.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0)
        with autocast:
            out = decode.decode(models, idx, mask, rule, cfg.max_new_tokens, tok.eot_token)
        for j, i in enumerate(np.repeat(batch, samples)):
            new = [t for t in out[j, idx.shape[1]:].tolist() if t != tok.eot_token]
            continuations[i].append(tok.decode(new))
        if bar is not None:
            bar.update(len(batch) * samples)
    if bar is not None:
        bar.close()
    return {"ids": [r["id"] for r in rows], "labels": [r["label"] for r in rows],
            "prompts": [r["prompt"] for r in rows], "prompt_toxicity": [r.get("prompt_toxicity") for r in rows],
            "continuations": continuations}


def supervisor_predictions(models, how, tok, task, device, autocast, cfg, max_len):
    """A generation supervisor's continuations of every split a student or the evaluation reads."""
    return {split: generate_split(models, how, tok, task.splits[split], device, autocast, cfg, max_len, split)
            for split in ("test", "val", "w2s_train")}
