"""
The `generate` section: greedy generation of left-padded prompts with a KV cache, new tokens/s, ours (GPT.generate)
vs transformers' GPT2LMHeadModel.generate; both outputs must be equal. Its rows also serve the llama-generate section.

    python bench.py --sections generate
"""
import torch

from benchmarks.common import PAD, check_row, exact_fp32, timing_row, transformers


def section_generate(ctx):
    """greedy generation of left-padded prompts with a KV cache, no eos: every row gets --new-tokens
    ref: transformers GPT2LMHeadModel.generate(do_sample=False), same weights and autocast"""
    c = ctx.cfg
    ours, hf = ctx.ours(c["shape"]).eval(), ctx.hf(transformers.GPT2LMHeadModel, c["shape"]).eval()
    return greedy_rows(ctx, "generate", ours, hf, PAD, "")


def greedy_rows(ctx, S, ours, hf, pad, label):
    """The parity and timing rows of greedy generation, ours vs transformers' generate, for either family."""
    c, dev = ctx.cfg, ctx.device
    hf.generation_config.eos_token_id = None
    GB, PL, N = c["gen_batch"], c["prompt_len"], c["new_tokens"]
    g = torch.Generator().manual_seed(2)
    lengths = torch.linspace(max(1, PL // 4), PL, GB).long()
    prompts = torch.randint(0, pad, (GB, PL), generator=g)
    mask = (torch.arange(PL)[None, :] >= PL - lengths[:, None]).long()
    prompts, mask = prompts.masked_fill(mask == 0, pad).to(dev), mask.to(dev)

    def ours_generate():
        return ours.generate(prompts, attention_mask=mask, max_new_tokens=N)

    def hf_generate():
        return hf.generate(input_ids=prompts, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=pad)
    with torch.no_grad():
        with exact_fp32():  # equality in fp32: bf16 rounding differs between the two and flips near-tied argmaxes
            a, b = ours_generate(), hf_generate()
        with ctx.autocast:
            ours_generate(), hf_generate()  # warm-up
            t = ctx.time({"ours": ours_generate, "ref": hf_generate})
    agree = (a[:, PL:] == b[:, PL:]).float().mean().item()
    return [check_row(S, "parity: greedy outputs equal, share of new tokens that agree (fp32)", agree,
                      torch.equal(a, b)),
            timing_row(S, f"{label}{GB} prompts of {lengths[0]}-{PL} tokens, +{N} new", t["ours"], t["ref"],
                       work=GB * N, unit="tokens/s")]
