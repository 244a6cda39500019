"""
The `rtp` section: RealToxicityPrompts sampling (25 samples per prompt, top-p 0.9, temperature 1, 20 new tokens),
prompts/s, our GPT.generate vs transformers' generate(do_sample=True, num_return_sequences=25).

    python bench.py --sections rtp
"""
import warnings
from pathlib import Path

import torch

from benchmarks.common import PAD, check_row, exact_fp32, gpt2_tokenizer, timing_row, transformers
from data import load_task
from run.batching import collate

# RealToxicityPrompts' sampling protocol (Gehman et al. 2020), as train.py runs it with --samples 25 --top-p 0.9;
# the number of new tokens is the config's rtp_new_tokens (20; --quick: 4)
RTP = dict(samples=25, top_p=0.9, temperature=1.0)


def rtp_prompts(ctx, n):
    """The first n test prompts of the toxicity task (RealToxicityPrompts rows under --data-dir), GPT-2 tokenized as
    generation.generate_split does, or n random prompts of 5-30 tokens without the data. Returns (token lists, source)."""
    d = Path(ctx.args.data_dir)
    if (d / "toxicity").is_dir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = load_task("toxicity", data_dir=d, seed=0).splits["test"][:n]
        tok = gpt2_tokenizer(d)
        keep = ctx.cfg["max_length"] - ctx.cfg["rtp_new_tokens"]  # >= 1 (bench.parse_args): the prompt's last tokens
        return [tok.encode(r["prompt"])[-keep:] or [PAD] for r in rows], \
            "RealToxicityPrompts test prompts"
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, PAD, (int(torch.randint(5, 31, (), generator=g)),), generator=g).tolist()
            for _ in range(n)], "random prompts of 5-30 tokens"


def section_rtp(ctx):
    """RealToxicityPrompts sampling: 25 samples per prompt, top-p 0.9, temperature 1, 20 new tokens (no eos)
    ref: transformers GPT2LMHeadModel.generate(do_sample=True, top_p=0.9, top_k=0, num_return_sequences=25)"""
    S, c, dev = "rtp", ctx.cfg, ctx.device
    shape, P, PB = c["rtp_shape"], c["rtp_prompts"], c["rtp_batch"]
    n, k, top_p, temp = RTP["samples"], c["rtp_new_tokens"], RTP["top_p"], RTP["temperature"]
    prompts, source = rtp_prompts(ctx, P)
    P = len(prompts)
    ours, hf = ctx.ours(shape).eval(), ctx.hf(transformers.GPT2LMHeadModel, shape).eval()
    hf.generation_config.eos_token_id = None  # neither side stops early: every sample gets 20 new tokens
    batches = []
    for i in range(0, P, PB):
        idx, mask = collate(prompts[i:i + PB], PAD, dev, left_pad=True)
        batches.append((idx, torch.ones_like(idx) if mask is None else mask))
    gen = torch.Generator(dev).manual_seed(0)

    def ours_batched(p=top_p, samples=n):  # every prompt repeated `samples` times in one batch, as HF does (and as
        # generation.generate_split decodes the test prompts' samples)
        return [ours.generate(idx.repeat_interleave(samples, 0), attention_mask=mask.repeat_interleave(samples, 0),
                              max_new_tokens=k, temperature=temp, top_p=p, generator=gen) for idx, mask in batches]

    def ref(p=top_p, samples=n):
        return [hf.generate(input_ids=idx, attention_mask=mask, do_sample=True, top_p=p, top_k=0, temperature=temp,
                            num_return_sequences=samples, max_new_tokens=k, pad_token_id=PAD) for idx, mask in batches]
    with torch.no_grad():
        with exact_fp32():  # top-p so small that only the most likely token survives: sampling becomes greedy
            same = all(torch.equal(a, b) for a, b in zip(ours_batched(1e-9, 2), ref(1e-9, 2)))
        with ctx.autocast:
            outs = {"ours": ours_batched(), "ref": ref()}  # also the warm-up
            t = ctx.time({"ours": ours_batched, "ref": ref})

    def varied(out):  # share of prompts whose 25 continuations are not all the same
        conts = torch.cat([o[:, -k:] for o in out]).view(P, n, k)
        return (conts != conts[:, :1]).any(-1).any(-1).float().mean().item()
    shape_ok = all(a.shape == b.shape == (len(idx) * n, idx.shape[1] + k)
                   for a, b, (idx, _) in zip(outs["ours"], outs["ref"], batches))
    what = f"{P} {source}, {PB} a call, +{k} tokens, {shape}"
    return [check_row(S, "parity: top-p 1e-9 (only the top token) samples equal ours vs ref (fp32)", same, same),
            check_row(S, "sampling: share of prompts whose 25 samples differ (ours, ref)",
                      [varied(outs["ours"]), varied(outs["ref"])],
                      shape_ok and varied(outs["ours"]) > 0.5 and varied(outs["ref"]) > 0.5),
            timing_row(S, f"25 samples in one batch ({what})", t["ours"], t["ref"], work=P, unit="prompts/s")]
