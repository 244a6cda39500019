"""
Decoding: one batched KV-cache loop over one model or several that share a vocabulary, and the rules that turn each
step's next-token logits into tokens. `GPT.generate` is the one-model case of this loop.

    decode([model], idx, mask, greedy())                                # = model.generate(idx, mask)
    decode([model], idx, mask, sample(0.7, top_p=0.9, generator=g))     # = model.generate(..., temperature=0.7, ...)
    decode(members, idx, mask, soft_vote(), eos_token=eot)              # K weak models average their probabilities
    decode(members, idx, mask, hard_vote(1.0, generator=g))             # K weak models vote, token by token
    decode([post, pre], idx, mask, contrastive())                       # ConG: the weak model after vs before tuning

A rule is a plain function, rule(logits) -> next tokens (B,), where `logits` holds one (B, V) float32 tensor per model,
in the order the models were given. A new rule is a few lines; nothing is registered anywhere.

Why a file beside model.py: the loop and its rules work on several models at once, so they are functions, not GPT
methods, and inside model.py they would have to sit after the class, past the checkpoint code, far from `generate`.
Here the loop and every rule read top to bottom in one place. A model only needs `config.vocab_size`,
`config.block_size` and `next_token_logits(idx, attention_mask, cache)` (model.py), so tests can pass stubs.
"""
import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def decode(models, idx, attention_mask, rule, max_new_tokens=20, eos_token=None):
    """Continue left-padded prompts (B, T) with every model's KV cache; returns prompt + new tokens
    (B, T + max_new_tokens). Rows that emitted eos_token keep emitting it; when all rows are done the rest is filled
    with eos_token."""
    if not models:
        raise ValueError("decode needs at least one model")
    vocab_sizes = [m.config.vocab_size for m in models]
    if len(set(vocab_sizes)) > 1:
        raise ValueError(f"decode needs models that share a vocabulary, got vocab sizes {vocab_sizes}")
    B, T = idx.shape
    block_size = min(m.config.block_size for m in models)
    if T + max_new_tokens > block_size:
        raise ValueError(f"prompt length {T} + max_new_tokens {max_new_tokens} exceeds block_size {block_size}")
    mask = torch.ones_like(idx) if attention_mask is None else attention_mask.to(torch.long)
    if not mask[:, -1].all():
        raise ValueError("decode expects left-padded prompts: attention_mask[:, -1] must be 1 for every row")
    out, new, caches = idx, idx, [[] for _ in models]  # the first step feeds the whole prompt (prefill)
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    for step in range(max_new_tokens):
        logits = []
        for i, model in enumerate(models):
            step_logits, caches[i] = model.next_token_logits(new, mask, caches[i])
            logits.append(step_logits)
        new = rule(logits)
        if eos_token is not None:
            new = torch.where(done, eos_token, new)
            done = done | (new == eos_token)
        out = torch.cat([out, new[:, None]], dim=1)
        new, mask = new[:, None], torch.cat([mask, torch.ones_like(new[:, None])], dim=1)
        if eos_token is not None and done.all():
            return F.pad(out, (0, max_new_tokens - step - 1), value=eos_token)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rules: each builder checks its settings once and returns rule(logits) -> tokens (B,).
# Temperature 0 means the argmax everywhere, as in generate.

def greedy():
    """One model's most likely next token."""
    def rule(logits):
        return _one(logits, "greedy").argmax(dim=-1)
    return rule


def sample(temperature=1.0, top_k=None, top_p=None, generator=None):
    """One model: a draw from softmax(logits / temperature), cut to the top_k tokens and then to the smallest set of
    tokens whose probability reaches top_p (nucleus). Temperature 0 is greedy."""
    _check_sampling(temperature, top_k, top_p)

    def rule(logits):
        return _pick(_one(logits, "sample"), temperature, top_k, top_p, generator)
    return rule


def soft_vote(temperature=0.0, top_p=None, generator=None):
    """An ensemble by averaging: the mean of the members' next-token probabilities (each softmax(logits / temperature)
    when sampling), then its argmax (temperature 0) or a draw from it cut to top_p."""
    _check_sampling(temperature, None, top_p)

    def rule(logits):
        mean = _mean_probs(logits, temperature)
        if temperature == 0:
            return mean.argmax(dim=-1)
        return _pick(mean.log(), 1.0, None, top_p, generator)  # softmax(log mean) is the mean again
    return rule


def hard_vote(temperature=0.0, top_k=None, top_p=None, generator=None):
    """An ensemble by majority: each member picks its token (its argmax, or its own draw as `sample` makes it when
    temperature > 0); the token most members pick wins, a tie going to the tied token with the higher mean probability
    across members (softmax(logits / temperature), temperature 1 when greedy)."""
    _check_sampling(temperature, top_k, top_p)

    def rule(logits):
        picks = torch.stack([_pick(l, temperature, top_k, top_p, generator) for l in logits], dim=1)  # (B, K)
        votes = torch.zeros_like(logits[0]).scatter_add_(1, picks, torch.ones_like(picks, dtype=logits[0].dtype))
        mean = _mean_probs(logits, temperature)
        # probabilities lie in [0, 1], so -1 drops every token with fewer than the most votes
        return mean.masked_fill(votes < votes.amax(dim=-1, keepdim=True), -1.0).argmax(dim=-1)
    return rule


def contrastive(beta=1.5, alpha=0.1, temperature=0.0, top_p=None, generator=None):
    """ConG (Jiang et al. 2025, "Contrastive Weak-to-Strong Generalization", arXiv 2510.07884), built on contrastive
    decoding (Li et al. 2023): two models, [post, pre] = the weak model after fine-tuning and before. Per token

        scores = log p_post + beta * (log p_post - log p_pre)   where p_post >= alpha * max p_post, else -inf

    (the plausibility constraint: the contrast may only re-rank tokens post itself finds plausible), then the argmax
    (temperature 0) or a draw from softmax(scores / temperature) cut to top_p.

    Defaults from ConG. The paper writes the step distribution as softmax(F), F = (1 - a) log(p_post / p_pre)
    + a log p_post on the plausible set: F = a * scores with beta = (1 - a) / a. Its code
    (github.com/jianghoucheng/ConG, LLaMA-Factory/experiments/launch_parallel_cd.sh) runs a = 0.4, so beta = 1.5
    (run_parallel_cd.py's own default a = 0.5 would be beta = 1), with relative_top = 0.1 as the plausibility
    threshold, our alpha (Li et al.'s value too). The argmax is the same in both forms. Their generate call passes
    temperature 0.8, top_p 0.95 and a repetition penalty of 1.2 (not here): softmax(F / 0.8) = softmax(scores / 2.0),
    so temperature=2.0, top_p=0.95 gives their sampling distribution, without the penalty."""
    _check_sampling(temperature, None, top_p)
    if beta < 0:
        raise ValueError(f"contrastive: beta must be >= 0, got {beta}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"contrastive: alpha must be in [0, 1], got {alpha}")
    log_alpha = math.log(alpha) if alpha > 0 else float("-inf")

    def rule(logits):
        if len(logits) != 2:
            raise ValueError(f"contrastive decodes with two models [post, pre], got {len(logits)}")
        logp_post, logp_pre = logits[0].log_softmax(dim=-1), logits[1].log_softmax(dim=-1)
        scores = logp_post + beta * (logp_post - logp_pre)
        plausible = logp_post >= logp_post.amax(dim=-1, keepdim=True) + log_alpha  # never empty: post's argmax is in
        return _pick(scores.masked_fill(~plausible, float("-inf")), temperature, None, top_p, generator)
    return rule


# ----------------------------------------------------------------------------------------------------------------
# The pieces the rules share

def _pick(logits, temperature, top_k, top_p, generator):
    """The argmax (temperature 0), or a draw from softmax(logits / temperature) cut to top_k, then to top_p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # drop a token once the more likely ones already cover top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _mean_probs(logits, temperature):
    """The members' mean next-token distribution, each softmax(logits / temperature) (temperature 1 when greedy)."""
    return torch.stack([F.softmax(l / (temperature or 1.0), dim=-1) for l in logits]).mean(dim=0)


def _one(logits, name):
    if len(logits) != 1:
        raise ValueError(f"{name} decodes with one model, got {len(logits)}: for several use soft_vote, hard_vote or "
                         "contrastive")
    return logits[0]


def _check_sampling(temperature, top_k, top_p):
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
