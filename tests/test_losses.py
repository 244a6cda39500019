import math

import pytest
import torch

from losses import logconf_alpha, logconf_loss, xent_loss


def logits_from_probs(p0s):
    """Logits whose softmax is exactly [p0, 1 - p0] per row."""
    p = torch.tensor([[p0, 1 - p0] for p0 in p0s], dtype=torch.float64)
    return p.log().requires_grad_(True)


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


def test_logconf_equals_xent_at_alpha_zero():
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
    hardened_ce = -(math.log(0.9) + math.log(0.7) + math.log(0.4) + math.log(0.8)) / 4
    weak_ce = -(math.log(0.9) + math.log(0.3) + math.log(0.4) + math.log(0.2)) / 4
    assert logconf_loss(logits, weak, 1.0).item() == pytest.approx(hardened_ce, abs=1e-6)
    # cross entropy is linear in the target, so alpha mixes the two losses
    assert logconf_loss(logits, weak, 0.75).item() == pytest.approx(0.25 * weak_ce + 0.75 * hardened_ce, abs=1e-6)


def test_logconf_with_balanced_weak_labels_hardens_at_the_median():
    # mean P(class 1) = 0.5 -> threshold = median of P(class 0) = (0.4 + 0.7) / 2: two rows per class
    logits = logits_from_probs([0.9, 0.7, 0.4, 0.2])
    weak = torch.full((4, 2), 0.5, dtype=torch.float64)
    expected = -(math.log(0.9) + math.log(0.7) + math.log(0.6) + math.log(0.8)) / 4
    assert logconf_loss(logits, weak, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_logconf_gradient_treats_hardened_targets_as_constants():
    logits = logits_from_probs([0.9, 0.7, 0.4, 0.2])
    weak = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    alpha = 0.5
    logconf_loss(logits, weak, alpha).backward()
    hardened = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    target = (1 - alpha) * weak.float() + alpha * hardened
    expected = (torch.softmax(logits.detach().float(), -1) - target) / 4  # d mean-CE / d logits
    torch.testing.assert_close(logits.grad.float(), expected, atol=1e-6, rtol=0)


def test_logconf_alpha_warms_up_linearly_to_alpha_max_then_stays():
    assert logconf_alpha(0, 100) == 0.0
    assert logconf_alpha(10, 100) == pytest.approx(0.375)  # half of the 20% warmup: half of 0.75
    assert logconf_alpha(20, 100) == pytest.approx(0.75)
    assert logconf_alpha(99, 100) == pytest.approx(0.75)
    assert logconf_alpha(5, 100, alpha_max=0.5, warmup_frac=0.1) == pytest.approx(0.25)
    assert logconf_alpha(0, 100, warmup_frac=0.0) == 0.75


def test_losses_reject_bad_targets_with_clear_messages():
    logits = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"target_probs shape \(3,\) != logits shape \(3, 2\)"):
        xent_loss(logits, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="target_probs row 1 is not a probability distribution"):
        xent_loss(logits, torch.tensor([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="binary classification, got 3 classes"):
        logconf_loss(torch.zeros(2, 3), torch.full((2, 3), 1 / 3), 0.5)
    with pytest.raises(ValueError, match="total_steps must be positive"):
        logconf_alpha(0, 0)
