import inspect
import math

import pytest
import torch

from methods import losses
from methods.losses import (LOSSES, aux_coef, entropy_loss, logconf_loss, logconf_threshold, product_loss, window_loss,
                            xent_loss)

# fixed inputs shared by the reference tests: 6 rows, binary and 3-class, soft weak labels, some confident rows
LOGITS2 = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-0.4, 0.2], [-2.5, 1.0], [0.05, -0.05], [1.2, 0.4]], dtype=torch.float64)
WEAK2 = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9], [0.55, 0.45], [0.0, 1.0]], dtype=torch.float64)
LOGITS3 = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.1, 0.3], [-1.0, 2.5, 0.0], [0.0, 0.0, 0.1], [3.0, -2.0, 1.0]],
                       dtype=torch.float64)
WEAK3 = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.1, 0.8]],
                     dtype=torch.float64)


def logits_from_probs(p0s):
    """Logits whose softmax is exactly [p0, 1 - p0] per row."""
    p = torch.tensor([[p0, 1 - p0] for p0 in p0s], dtype=torch.float64)
    return p.log().requires_grad_(True)


def soft_ce(logits, target):
    """Mean over rows of -sum_c target_c log softmax(logits)_c, written out (float64)."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


# ---- references written from the published code (float64, no shared helpers with losses.py) ----

def ref_logconf(logits, weak, coef, threshold=None):
    """openai/weak-to-strong weak_to_strong/loss.py logconf_loss_fn, the coef already scheduled."""
    preds = torch.softmax(logits, dim=-1).detach()
    if threshold is None:
        threshold = torch.quantile(preds[:, 0], weak.mean(dim=0)[1])
    strong = torch.stack([preds[:, 0] >= threshold, preds[:, 0] < threshold], dim=1).to(logits.dtype)
    return soft_ce(logits, weak * (1 - coef) + strong * coef)


def ref_entropy(logits, weak, coef):
    """EleutherAI/w2s w2s/loss.py log_confidence_loss(harden=False)."""
    return soft_ce(logits, weak * (1 - coef) + torch.softmax(logits, dim=-1).detach() * coef)


def ref_product(logits, weak, alpha, beta):
    """openai/weak-to-strong weak_to_strong/loss.py product_loss_fn: pow, multiply, normalise, detach."""
    target = torch.softmax(logits, dim=-1) ** beta * weak ** alpha
    return soft_ce(logits, (target / target.sum(dim=-1, keepdim=True)).detach())


def ref_window(logits, weak, radius):
    """EleutherAI/w2s w2s/loss.py confidence_window_loss: sum over uncertain rows / all rows."""
    uncertain = torch.softmax(logits, dim=-1).max(dim=-1).values < 0.5 + radius
    per_row = -(weak * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
    return per_row[uncertain].sum() / len(logits)


# ---- xent ----

def test_xent_loss_matches_hand_computed_soft_cross_entropy():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # softmax: [0.25, 0.75], [0.5, 0.5]
    targets = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    expected = (-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)) + math.log(2.0)) / 2
    assert xent_loss(logits, targets).item() == pytest.approx(expected, abs=1e-6)


def test_xent_loss_on_one_hot_targets_equals_hard_label_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(xent_loss(logits, one_hot), torch.nn.functional.cross_entropy(logits, labels))


# ---- logconf ----

@pytest.mark.parametrize("coef", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_logconf_matches_openai_logconf_formula_on_fixed_logits(coef):
    assert logconf_loss(LOGITS2, WEAK2, coef).item() == pytest.approx(ref_logconf(LOGITS2, WEAK2, coef).item(), abs=1e-6)


def test_logconf_equals_xent_at_coef_zero():
    torch.manual_seed(0)
    logits = torch.randn(8, 2)
    weak = torch.softmax(torch.randn(8, 2), dim=-1)
    assert logconf_loss(logits, weak, 0.0).item() == xent_loss(logits, weak).item()


def test_logconf_hardens_to_the_weak_labels_class_balance_not_to_argmax():
    # student P(class 0) = 0.9, 0.7, 0.4, 0.2; weak labels put mean P(class 1) = 0.25 on the batch, so the threshold
    # is the 0.25-quantile of P(class 0) = 0.2 + 0.75 * (0.4 - 0.2) = 0.35: rows 0-2 harden to class 0 (row 2 too,
    # although the student's own argmax says class 1) and only row 3 to class 1, keeping the 3:1 balance.
    logits = logits_from_probs([0.9, 0.7, 0.4, 0.2])
    weak = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert logconf_threshold(torch.softmax(logits, -1), weak).item() == pytest.approx(0.35, abs=1e-6)
    hardened_ce = -(math.log(0.9) + math.log(0.7) + math.log(0.4) + math.log(0.8)) / 4
    weak_ce = -(math.log(0.9) + math.log(0.3) + math.log(0.4) + math.log(0.2)) / 4
    assert logconf_loss(logits, weak, 1.0).item() == pytest.approx(hardened_ce, abs=1e-6)
    # cross entropy is linear in the target, so coef mixes the two losses
    assert logconf_loss(logits, weak, 0.75).item() == pytest.approx(0.25 * weak_ce + 0.75 * hardened_ce, abs=1e-6)


def test_logconf_with_balanced_weak_labels_hardens_at_the_median():
    # mean P(class 1) = 0.5 -> threshold = median of P(class 0) = (0.4 + 0.7) / 2: two rows per class
    logits = logits_from_probs([0.9, 0.7, 0.4, 0.2])
    weak = torch.full((4, 2), 0.5, dtype=torch.float64)
    expected = -(math.log(0.9) + math.log(0.7) + math.log(0.6) + math.log(0.8)) / 4
    assert logconf_loss(logits, weak, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_logconf_row_exactly_at_the_threshold_hardens_to_class_0():
    # 3 rows, mean weak P(class 1) = 0.5: the threshold is the median P(class 0) = 0.4 exactly, a row's own value;
    # openai compares P(class 0) >= threshold, so that row hardens to class 0
    logits = logits_from_probs([0.9, 0.4, 0.2])
    weak = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.8)) / 3
    assert logconf_loss(logits, weak, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_logconf_uses_a_passed_threshold_instead_of_the_rows_own_quantile():
    # threshold 0.8 hardens only row 0 (P(class 0) = 0.9) to class 0, although the rows' own quantile would be 0.35
    logits = logits_from_probs([0.9, 0.7, 0.4, 0.2])
    weak = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    expected = -(math.log(0.9) + math.log(0.3) + math.log(0.6) + math.log(0.8)) / 4
    assert logconf_loss(logits, weak, 1.0, threshold=torch.tensor(0.8)).item() == pytest.approx(expected, abs=1e-6)
    assert logconf_loss(logits, weak, 1.0, threshold=0.8).item() == pytest.approx(expected, abs=1e-6)


def test_logconf_gradient_treats_hardened_targets_as_constants():
    logits = logits_from_probs([0.9, 0.7, 0.4, 0.2])
    weak = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    coef = 0.5
    logconf_loss(logits, weak, coef).backward()
    hardened = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    target = (1 - coef) * weak.float() + coef * hardened
    expected = (torch.softmax(logits.detach().float(), -1) - target) / 4  # d mean-CE / d logits
    torch.testing.assert_close(logits.grad.float(), expected, atol=1e-6, rtol=0)


def test_logconf_whole_batch_threshold_makes_grad_accumulation_equal_the_one_piece_batch():
    torch.manual_seed(0)
    logits = torch.randn(10, 2, dtype=torch.float64) * 2
    weak = torch.softmax(torch.randn(10, 2, dtype=torch.float64) * 2, dim=-1)
    coef = 0.75
    whole = logits.clone().requires_grad_(True)
    one_piece = logconf_loss(whole, weak, coef)
    one_piece.backward()

    micro = logits.clone().requires_grad_(True)
    threshold = logconf_threshold(torch.softmax(micro, dim=-1), weak)  # the caller's no-grad pass over all rows
    accumulated, per_micro_threshold = 0.0, 0.0
    for rows in (slice(0, 4), slice(4, 7), slice(7, 10)):  # uneven micro-batches, as train.py's shards can be
        share = len(range(10)[rows]) / 10
        loss = logconf_loss(micro[rows], weak[rows], coef, threshold=threshold) * share
        loss.backward()
        accumulated += loss.item()
        per_micro_threshold += logconf_loss(logits[rows], weak[rows], coef).item() * share
    assert accumulated == pytest.approx(one_piece.item(), abs=1e-6)
    torch.testing.assert_close(micro.grad, whole.grad, atol=1e-6, rtol=0)
    # and the point of passing it: thresholds taken per micro-batch harden other rows, a different loss
    assert abs(per_micro_threshold - one_piece.item()) > 1e-3


# ---- entropy ----

@pytest.mark.parametrize("logits, weak", [(LOGITS2, WEAK2), (LOGITS3, WEAK3)])
@pytest.mark.parametrize("coef", [0.0, 0.5, 0.75])
def test_entropy_loss_matches_eleuther_unhardened_formula(logits, weak, coef):
    assert entropy_loss(logits, weak, coef).item() == pytest.approx(ref_entropy(logits, weak, coef).item(), abs=1e-6)


def test_entropy_loss_gradient_is_the_xent_gradient_scaled_by_one_minus_coef():
    # the detached self-term has zero gradient: documented, and proved here
    a, b = LOGITS3.clone().requires_grad_(True), LOGITS3.clone().requires_grad_(True)
    entropy_loss(a, WEAK3, 0.75).backward()
    xent_loss(b, WEAK3).backward()
    torch.testing.assert_close(a.grad, 0.25 * b.grad, atol=1e-6, rtol=0)


# ---- product ----

@pytest.mark.parametrize("logits, weak", [(LOGITS2, WEAK2), (LOGITS3, WEAK3)])
@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.5, 2.0), (2.0, 0.5), (1.0, 0.0)])
def test_product_loss_matches_openai_product_formula(logits, weak, alpha, beta):
    got = product_loss(logits, weak, alpha=alpha, beta=beta).item()
    assert got == pytest.approx(ref_product(logits, weak, alpha, beta).item(), abs=1e-6)


def test_product_loss_with_beta_zero_and_alpha_one_is_xent():
    assert product_loss(LOGITS3, WEAK3, alpha=1.0, beta=0.0).item() == pytest.approx(xent_loss(LOGITS3, WEAK3).item(), abs=1e-6)


def test_product_loss_with_one_hot_weak_labels_is_xent():
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert product_loss(LOGITS2, one_hot).item() == pytest.approx(xent_loss(LOGITS2, one_hot).item(), abs=1e-6)


def test_product_loss_stays_finite_where_the_pow_formula_gives_nan():
    # float32 student P(class 1) = e^-200 underflows to 0 and the weak label is class 1: pow-normalise is 0 / 0
    logits = torch.tensor([[0.0, -200.0]])
    weak = torch.tensor([[0.0, 1.0]])
    assert torch.isnan(ref_product(logits, weak, 1.0, 1.0))
    assert product_loss(logits, weak).item() == pytest.approx(200.0, abs=1e-3)  # the target is the weak label


def test_product_loss_target_is_detached():
    logits = LOGITS3.clone().requires_grad_(True)
    product_loss(logits, WEAK3, alpha=1.0, beta=1.0).backward()
    p = torch.softmax(LOGITS3, dim=-1)
    target = p * WEAK3 / (p * WEAK3).sum(dim=-1, keepdim=True)
    torch.testing.assert_close(logits.grad, (p - target) / len(p), atol=1e-6, rtol=0)


# ---- window ----

@pytest.mark.parametrize("logits, weak", [(LOGITS2, WEAK2), (LOGITS3, WEAK3)])
@pytest.mark.parametrize("radius", [0.0, 0.1, 0.15, 0.3, 0.51])
def test_window_loss_matches_eleuther_confidence_window_formula(logits, weak, radius):
    assert window_loss(logits, weak, radius).item() == pytest.approx(ref_window(logits, weak, radius).item(), abs=1e-6)


def test_window_loss_sums_the_uncertain_rows_and_divides_by_all_rows():
    # max probs 0.9 (outside the 0.65 window) and 0.6 (inside): the loss is the inside row's CE over 2 rows, not 1
    logits = logits_from_probs([0.9, 0.6])
    weak = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    assert window_loss(logits, weak, 0.15).item() == pytest.approx(-math.log(0.4) / 2, abs=1e-6)
    assert window_loss(logits, weak, 0.51).item() == pytest.approx(xent_loss(logits, weak).item(), abs=1e-6)


def test_window_loss_is_zero_with_zero_gradient_when_no_row_is_kept():
    logits = logits_from_probs([0.9, 0.05, 0.99])
    weak = torch.tensor([[0.0, 1.0]] * 3, dtype=torch.float64)
    loss = window_loss(logits, weak, 0.15)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_window_loss_excludes_a_row_exactly_at_the_window_edge():
    # softmax([0, 0]) = [0.5, 0.5] exactly; with radius 0 the rule max prob < 0.5 keeps nothing
    logits = torch.zeros(2, 2)
    weak = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert window_loss(logits, weak, 0.0).item() == 0.0
    assert window_loss(logits, weak, 1e-6).item() == pytest.approx(math.log(2.0), abs=1e-6)


# ---- LOSSES and the schedule ----

DOCUMENTED_KEYWORDS = {"xent": {}, "logconf": {"coef": 0.5, "threshold": None}, "entropy": {"coef": 0.5},
                       "product": {"alpha": 1.0, "beta": 1.0}, "window": {"radius": 0.15}}


def test_losses_dict_names_each_loss_and_takes_exactly_the_documented_keywords():
    assert set(LOSSES) == set(DOCUMENTED_KEYWORDS)
    for name, fn in LOSSES.items():
        params = list(inspect.signature(fn).parameters)
        assert params[:2] == ["logits", "target_probs"]
        assert set(params[2:]) == set(DOCUMENTED_KEYWORDS[name]), name
        for keyword in DOCUMENTED_KEYWORDS[name]:
            assert keyword in losses.__doc__.split("\n\n")[1], (name, keyword)  # the module docstring's table
        loss = fn(LOGITS2, WEAK2, **DOCUMENTED_KEYWORDS[name])
        assert loss.ndim == 0 and math.isfinite(loss.item())


def test_aux_coef_paper_setting_warms_up_linearly_over_20_percent_to_075():
    assert aux_coef(0, 100, 0.75, 0.2) == 0.0
    assert aux_coef(10, 100, 0.75, 0.2) == pytest.approx(0.375)  # half of the warm-up: half of 0.75
    assert aux_coef(19, 100, 0.75, 0.2) == pytest.approx(0.75 * 19 / 20)
    assert aux_coef(20, 100, 0.75, 0.2) == pytest.approx(0.75)
    assert aux_coef(99, 100, 0.75, 0.2) == pytest.approx(0.75)
    assert aux_coef(0, 100, 0.75, 0.0) == 0.75  # no warm-up


def test_aux_coef_openai_setting_reaches_only_warmup_times_coef_then_jumps():
    # their code: coef = 1.0 if step_frac > warmup_frac else step_frac; coef *= aux_coef
    assert aux_coef(0, 100, 0.5, 0.1, "openai") == 0.0
    assert aux_coef(5, 100, 0.5, 0.1, "openai") == pytest.approx(0.025)
    assert aux_coef(10, 100, 0.5, 0.1, "openai") == pytest.approx(0.05)  # step_frac == warmup_frac: still warming up
    assert aux_coef(11, 100, 0.5, 0.1, "openai") == 0.5
    assert aux_coef(10, 100, 0.5, 10, "openai") == pytest.approx(0.05)  # the warm-up as a step count
    assert aux_coef(11, 100, 0.5, 10, "openai") == 0.5


def test_aux_coef_eleuther_setting_warms_up_linearly_over_200_optimizer_steps():
    # their code: aux_coef * min(1.0, step / warmup_steps), independent of the run's length
    assert aux_coef(0, 1000, 0.5, 200) == 0.0
    assert aux_coef(50, 1000, 0.5, 200) == pytest.approx(0.125)
    assert aux_coef(50, 5000, 0.5, 200) == pytest.approx(0.125)
    assert aux_coef(200, 1000, 0.5, 200) == 0.5
    assert aux_coef(999, 1000, 0.5, 200) == 0.5
    assert aux_coef(1, 1000, 0.5, 1) == 0.5  # warmup 1 is one step, not 100% of training


# ---- errors ----

def test_losses_reject_bad_inputs_with_clear_messages():
    logits = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"target_probs shape \(3,\) != logits shape \(3, 2\)"):
        xent_loss(logits, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"logits must be \(batch, classes\)"):
        window_loss(torch.zeros(2, 3, 2), torch.full((2, 3, 2), 0.5), 0.1)
    for name, kwargs in DOCUMENTED_KEYWORDS.items():
        with pytest.raises(ValueError, match="target_probs row 1 is not a probability distribution"):
            LOSSES[name](logits, torch.tensor([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]]), **kwargs)
        with pytest.raises(ValueError, match="target_probs row 0 is not a probability distribution"):
            LOSSES[name](logits, torch.tensor([[1.5, -0.5], [0.5, 0.5], [0.0, 1.0]]), **kwargs)
    three = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="logconf_loss is defined for binary classification, got 3 classes"):
        logconf_loss(torch.zeros(2, 3), three, 0.5)
    with pytest.raises(ValueError, match="logconf_threshold is defined for binary classification, got 3 classes"):
        logconf_threshold(three, three)
    with pytest.raises(ValueError, match="coef must be in"):
        logconf_loss(logits, torch.full((3, 2), 0.5), 1.5)
    with pytest.raises(ValueError, match="coef must be in"):
        entropy_loss(logits, torch.full((3, 2), 0.5), -0.1)
    with pytest.raises(ValueError, match="alpha and beta must be >= 0"):
        product_loss(logits, torch.full((3, 2), 0.5), alpha=-1.0)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        window_loss(logits, torch.full((3, 2), 0.5), -0.1)
    with pytest.raises(ValueError, match="total_steps must be positive"):
        aux_coef(0, 0, 0.5, 0.1)
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        aux_coef(0, 10, 0.5, -0.1)
    with pytest.raises(ValueError, match="unknown aux schedule 'cosine'"):
        aux_coef(0, 10, 0.5, 0.1, "cosine")
