"""decode.py: one KV-cache loop for one model or several, and its rules (greedy, sampling, soft and hard votes,
contrastive), on tiny random GPTs and hand-set logits (CPU, fp32)."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from models.decode import contrastive, decode, greedy, hard_vote, sample, soft_vote

PAD = 100


def tiny(seed, vocab_size=101):
    """A random GPT with weights of std 0.3 (not 0.02): greedy then follows the context instead of repeating a token."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def tuned(model, seed):
    """A stand-in for `model` after fine-tuning: the same weights, nudged."""
    post = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in post.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return post


def left_pad(rows):
    width = max(len(r) for r in rows)
    idx = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return idx, mask


ROWS = [list(range(1, 11)), [5, 6], list(range(60, 75)), [42]]


def seeded(seed):
    return torch.Generator().manual_seed(seed)


class FixedLogits:
    """A stub with the per-step interface decode uses: the same next-token logits for every row at every step."""

    def __init__(self, logits):
        self.logits = torch.as_tensor(logits, dtype=torch.float32)
        self.config = SimpleNamespace(vocab_size=len(self.logits), block_size=64)

    def next_token_logits(self, idx, attention_mask, cache):
        return self.logits.expand(idx.size(0), -1).clone(), cache + [idx]


# ---- votes ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature, top_p", [(0.0, None), (0.7, None), (1.0, 0.9)],
                         ids=["greedy", "temperature-0.7", "top-p-0.9"])
def test_soft_vote_of_identical_members_equals_single_model_decoding(temperature, top_p):
    model = tiny(0)
    idx, mask = left_pad(ROWS)
    single = model.generate(idx, mask, max_new_tokens=12, temperature=temperature, top_p=top_p, generator=seeded(3))
    voted = decode([model, model, model], idx, mask, soft_vote(temperature, top_p, seeded(3)), max_new_tokens=12)
    assert torch.equal(voted, single)


def test_hard_vote_of_identical_members_equals_greedy_decoding():
    model = tiny(0)
    idx, mask = left_pad(ROWS)
    assert torch.equal(decode([model] * 3, idx, mask, hard_vote(), 12), model.generate(idx, mask, max_new_tokens=12))


def test_hard_vote_tie_goes_to_the_token_with_higher_mean_probability():
    # two members, one vote each for tokens 0 and 1; the first is surer of its token (mean p 0.55 vs 0.30).
    # Row 1 is row 0 with tokens 0 and 1 swapped, so the winner is not just the lower token id.
    a = torch.tensor([[3.0, 1.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 1.5, 0.0, 0.0], [1.5, 1.0, 0.0, 0.0]])
    mean = (F.softmax(a, -1) + F.softmax(b, -1)) / 2
    assert mean[0, 0] > mean[0, 1] + 0.2
    assert hard_vote()([a, b]).tolist() == [0, 1]
    assert hard_vote()([b, a]).tolist() == [0, 1]  # member order does not matter
    # probabilities, not logits: the mean logit favours token 1 (0.5 vs -8), the mean probability token 0 (0.47 vs 0.18)
    sure, spread = torch.tensor([[4.0, 0.0, 0.0, 0.0]]), torch.tensor([[-20.0, 1.0, 0.99, 0.99]])
    assert hard_vote()([sure, spread]).tolist() == [0]
    # votes come first: two lukewarm votes for token 2 beat one confident vote for token 0 of higher mean probability
    lukewarm = torch.tensor([[0.0, 0.0, 0.3, 0.0]])
    confident = torch.tensor([[9.0, 0.0, 0.0, 0.0]])
    assert (F.softmax(confident, -1)[0, 0] + 2 * F.softmax(lukewarm, -1)[0, 0]) / 3 > 0.4
    assert hard_vote()([lukewarm, confident, lukewarm]).tolist() == [2]


# ---- contrastive -----------------------------------------------------------------------------------------------------

def test_contrastive_with_beta_0_equals_greedy_decoding_from_post():
    pre = tiny(0)
    post = tuned(pre, 1)
    idx, mask = left_pad(ROWS)
    out = decode([post, pre], idx, mask, contrastive(beta=0.0), max_new_tokens=15)
    assert torch.equal(out, post.generate(idx, mask, max_new_tokens=15))
    # not vacuous: at the default beta the contrast with pre changes the continuations
    assert not torch.equal(decode([post, pre], idx, mask, contrastive(), max_new_tokens=15), out)


def test_contrastive_picks_the_argmax_of_the_published_scores_on_the_plausible_tokens():
    # ConG / contrastive decoding, written out: log p_post + beta (log p_post - log p_pre) where p_post >= alpha max
    g = seeded(3)
    logits_post, logits_pre = torch.randn(512, 50, generator=g) * 3, torch.randn(512, 50, generator=g) * 3
    p_post, p_pre = F.softmax(logits_post, -1), F.softmax(logits_pre, -1)
    for beta, alpha in ((1.5, 0.1), (1.0, 0.3), (4.0, 0.05)):
        scores = p_post.log() + beta * (p_post.log() - p_pre.log())
        scores[p_post < alpha * p_post.amax(-1, keepdim=True)] = float("-inf")
        tokens = contrastive(beta=beta, alpha=alpha)([logits_post, logits_pre])
        assert torch.equal(tokens, scores.argmax(-1)), (beta, alpha)
        assert (tokens != p_post.argmax(-1)).float().mean() > 0.1  # not vacuous: the contrast re-ranks


def test_contrastive_never_emits_a_token_outside_the_plausibility_set():
    # post: p = [0.50, 0.30, 0.04, 0.10, 0.06]; with alpha 0.1 the plausible tokens have p >= 0.05: all but token 2.
    # pre gives token 2 almost no probability, so the contrast alone would pick it (score 12.7, the others <= -0.7).
    post = FixedLogits(torch.tensor([0.50, 0.30, 0.04, 0.10, 0.06]).log())
    pre = FixedLogits(torch.tensor([0.50, 0.30, 1e-6, 0.10, 0.10 - 1e-6]).log())
    idx = torch.zeros(200, 3, dtype=torch.long)
    run = lambda rule: decode([post, pre], idx, None, rule, max_new_tokens=5)[:, 3:]  # noqa: E731
    assert (run(contrastive()) == 0).all()
    assert set(run(contrastive(temperature=1.0, generator=seeded(0))).flatten().tolist()) == {0, 1, 3, 4}
    assert (run(contrastive(temperature=2.0, top_p=0.95, generator=seeded(1))) != 2).all()
    assert (run(contrastive(alpha=0.0)) == 2).all()  # without the constraint

    # the same on random logits: every sampled token has p_post >= alpha * max p_post
    g = seeded(2)
    logits_post, logits_pre = torch.randn(512, 50, generator=g) * 3, torch.randn(512, 50, generator=g) * 3
    p_post = F.softmax(logits_post, -1)
    for alpha in (0.1, 0.5):
        tokens = contrastive(alpha=alpha, temperature=1.0, generator=g)([logits_post, logits_pre])
        assert (p_post.gather(1, tokens[:, None])[:, 0] >= alpha * p_post.amax(-1)).all()


# ---- every rule ------------------------------------------------------------------------------------------------------

def members(name):
    if name == "greedy":
        return [tiny(0)]
    if name == "contrastive":
        pre = tiny(0)
        return [tuned(pre, 1), pre]
    return [tiny(0), tiny(1), tiny(2)]


RULES = {"greedy": greedy, "soft_vote": soft_vote, "hard_vote": hard_vote, "contrastive": contrastive}


@pytest.mark.parametrize("name", RULES)
def test_left_padded_batch_gives_each_row_the_continuation_it_gets_alone(name):
    models = members(name)
    idx, mask = left_pad(ROWS)
    batch = decode(models, idx, mask, RULES[name](), max_new_tokens=12)
    for i, row in enumerate(ROWS):
        alone = decode(models, torch.tensor([row]), None, RULES[name](), max_new_tokens=12)
        assert batch[i, idx.size(1):].tolist() == alone[0, len(row):].tolist(), f"row {i}"


@pytest.mark.parametrize("name", ["sample", "soft_vote", "hard_vote", "contrastive"])
def test_temperature_reaches_the_sampler_unchanged(name):
    # 20,000 draws at temperature 0.7 from hand-set logits follow softmax(logits / 0.7), not softmax(logits)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).expand(20_000, -1)
    g = seeded(0)
    rule, k = {"sample": (sample(0.7, generator=g), 1),
               "soft_vote": (soft_vote(0.7, generator=g), 3),  # identical members: their mean is the one model
               "hard_vote": (hard_vote(0.7, generator=g), 1),  # one member: its own draw wins
               "contrastive": (contrastive(beta=0.0, alpha=0.0, temperature=0.7, generator=g), 2)}[name]
    freq = torch.bincount(rule([logits] * k), minlength=5) / len(logits)
    at_07, at_1 = F.softmax(logits[0] / 0.7, -1), F.softmax(logits[0], -1)
    assert (freq - at_07).abs().max() < 0.015  # 0.015 is more than 4 standard errors
    assert (at_1 - at_07).abs().max() > 0.1


def test_generate_draws_with_the_temperature_given():
    # a seeded reference draw from softmax(logits / 0.7) of the prompt's last position gives the same first tokens
    model = tiny(0)
    idx, mask = left_pad(ROWS * 8)
    first = model.generate(idx, mask, max_new_tokens=1, temperature=0.7, generator=seeded(5))[:, -1]
    with torch.no_grad():
        logits = model(idx, attention_mask=mask)[0][:, -1]
    draw = lambda t: torch.multinomial(F.softmax(logits / t, -1), 1, generator=seeded(5))[:, 0]  # noqa: E731
    assert torch.equal(first, draw(0.7))
    assert not torch.equal(first, draw(1.0))


def test_bad_inputs_raise_clear_errors():
    idx = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"share a vocabulary, got vocab sizes \[101, 257\]"):
        decode([tiny(0), tiny(1, vocab_size=257)], idx, None, soft_vote())
    for n in (1, 3):
        with pytest.raises(ValueError, match=rf"contrastive decodes with two models \[post, pre\], got {n}"):
            decode([tiny(0)] * n, idx, None, contrastive())
    with pytest.raises(ValueError, match="greedy decodes with one model, got 2"):
        decode([tiny(0)] * 2, idx, None, greedy())
    for build in (lambda **kw: sample(**kw), soft_vote, hard_vote, contrastive):
        with pytest.raises(ValueError, match=r"temperature must be >= 0 \(0 = greedy\), got -0.5"):
            build(temperature=-0.5)
        for top_p in (0.0, -0.1, 1.5):
            with pytest.raises(ValueError, match=rf"top_p must be in \(0, 1\], got {top_p}"):
                build(temperature=1.0, top_p=top_p)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        tiny(0).generate(idx, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        sample(1.0, top_k=0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        contrastive(alpha=1.5)
    with pytest.raises(ValueError, match="beta must be >= 0, got -1"):
        contrastive(beta=-1)
    with pytest.raises(ValueError, match="exceeds block_size 64"):
        decode([tiny(0), tiny(1)], idx, None, soft_vote(), max_new_tokens=62)
    with pytest.raises(ValueError, match="left-padded prompts"):
        decode([tiny(0)], idx, torch.tensor([[1, 1, 0]]), greedy())
