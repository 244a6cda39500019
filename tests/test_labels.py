import numpy as np
import pytest
import torch

from methods.labels import MemberWeights, cross_fit_halves, hard_labels, knn_smooth, members_agree, selective_labels
from methods.losses import xent_loss


def test_hard_labels_are_one_hot_rows_of_the_argmax():
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(hard_labels(probs), [[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(hard_labels(torch.tensor([[0.4, 0.6]])), [[0, 1]])  # torch in, numpy out


def test_cross_fit_halves_are_disjoint_cover_every_row_and_follow_the_seed():
    a, b = cross_fit_halves(11, seed=3)
    assert len(a) == 5 and len(b) == 6
    assert set(a).isdisjoint(b) and sorted(np.concatenate([a, b])) == list(range(11))
    a2, b2 = cross_fit_halves(11, seed=3)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    assert any(not np.array_equal(a, cross_fit_halves(11, seed=s)[0]) for s in range(4, 8))


def test_selective_labels_replace_exactly_the_confident_rows_with_the_strong_hard_label():
    weak = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5], [0.9, 0.1]])
    strong = np.array([[0.05, 0.95], [0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    targets, replaced = selective_labels(weak, strong, threshold=0.9)
    np.testing.assert_array_equal(replaced, [True, False, True, False])  # 0.9 itself counts as confident
    np.testing.assert_array_equal(targets, [[0.0, 1.0], [0.4, 0.6], [1.0, 0.0], [0.9, 0.1]])
    targets, replaced = selective_labels(weak, strong, threshold=1.0)
    assert not replaced.any()
    np.testing.assert_array_equal(targets, weak)


def test_knn_smooth_averages_each_chosen_row_with_its_nearest_rows_by_cosine():
    # directions: row0 0 deg, row1 ~5.7 deg, row2 90 deg, row3 ~84.3 deg, row4 ~38.7 deg (row0 scaled by 10: cosine)
    features = np.array([[10.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 0.8]])
    probs = np.array([[1.0, 0.0], [0.6, 0.4], [0.0, 1.0], [0.2, 0.8], [0.5, 0.5]])
    out = knn_smooth(probs, features, k=2, rows=[1, 3, 4])
    expected = np.array([
        [1.0, 0.0],    # not in rows: unchanged
        [0.8, 0.2],    # itself + row0 (a row not being smoothed: neighbours come from all rows)
        [0.0, 1.0],
        [0.1, 0.9],    # itself + row2
        [0.55, 0.45],  # itself + row1 as given, not row1 smoothed (that would be 0.65): one simultaneous step
    ])
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(knn_smooth(probs, features, k=2, rows=[1, 3, 4], chunk=1), expected, atol=1e-12)
    mask = np.array([False, True, False, True, True])
    np.testing.assert_allclose(knn_smooth(probs, features, k=2, rows=mask), expected, atol=1e-12)
    np.testing.assert_allclose(knn_smooth(probs, features, k=1, rows=[1, 3, 4]), probs)  # k = 1: itself only
    # k = 3 for row4: itself, row1 (33 deg away), row0 (38.7 deg) -> mean of 0.5, 0.6, 1.0
    np.testing.assert_allclose(knn_smooth(probs, features, k=3, rows=[4])[4], [0.7, 0.3], atol=1e-12)


def test_knn_smooth_counts_the_row_itself_even_among_exact_duplicates():
    features = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # all the same direction: every cosine is 1
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(knn_smooth(probs, features, k=1, rows=[0, 1, 2]), probs)


def test_member_weights_start_uniform_and_mix_member_probabilities():
    mixer = MemberWeights(3)
    torch.testing.assert_close(mixer.weights(), torch.full((3,), 1 / 3))
    with torch.no_grad():
        mixer.logits.copy_(torch.tensor([0.0, np.log(2.0), np.log(5.0)]))  # softmax = 1/8, 2/8, 5/8
    member_probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],
                                 [[0.2, 0.8], [0.6, 0.4], [1.0, 0.0]]])
    expected = torch.tensor([[1 / 8 + 2.5 / 8, 2 / 8 + 2.5 / 8],
                             [0.2 / 8 + 1.2 / 8 + 5 / 8, 0.8 / 8 + 0.8 / 8]])
    torch.testing.assert_close(mixer(member_probs), expected)


def test_member_weights_receive_the_students_loss_gradient_through_the_target():
    mixer = MemberWeights(2)
    member_probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]] * 4)
    student_logits = torch.tensor([[2.0, -2.0]] * 4)  # agrees with member 0
    xent_loss(student_logits, mixer(member_probs)).backward()
    assert mixer.logits.grad is not None
    assert mixer.logits.grad[0] < 0 < mixer.logits.grad[1]  # descent raises member 0's weight


def joint_training(seed, steps=60):
    """Linear student on 8-d features; member 0 = the true rule with 15% of labels flipped, member 1 = random."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    truth = (x @ torch.randn(8, generator=g) > 0).long()
    noisy = torch.where(torch.rand(256, generator=g) < 0.15, 1 - truth, truth)
    random = torch.randint(0, 2, (256,), generator=g)
    soft = lambda y: 0.1 + 0.8 * torch.nn.functional.one_hot(y, 2).float()  # 0.9 / 0.1 confidences
    member_probs = torch.stack([soft(noisy), soft(random)], dim=1)  # (256, 2 members, 2 classes)
    torch.manual_seed(seed)
    student, mixer = torch.nn.Linear(8, 2), MemberWeights(2)
    opt = torch.optim.Adam([*student.parameters(), *mixer.parameters()], lr=0.05)
    for _ in range(steps):
        loss = xent_loss(student(x), mixer(member_probs))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mixer.weights().detach()


def test_joint_training_puts_the_weight_on_the_member_that_follows_the_rule():
    weights = joint_training(seed=0)
    assert weights[0] > 0.8 > 0.2 > weights[1], weights
    torch.testing.assert_close(joint_training(seed=0), weights, rtol=0, atol=0)  # deterministic by seed


def test_labels_reject_bad_inputs_with_clear_messages():
    with pytest.raises(ValueError, match=r"probs must be \(rows, classes\)"):
        hard_labels(np.array([0.3, 0.7]))
    with pytest.raises(ValueError, match="weak_probs row 1 is not a probability distribution"):
        selective_labels(np.array([[1.0, 0.0], [0.7, 0.7]]), np.array([[1.0, 0.0], [0.5, 0.5]]), 0.9)
    with pytest.raises(ValueError, match=r"weak_probs shape \(2, 2\) != strong_probs shape \(2, 3\)"):
        selective_labels(np.full((2, 2), 0.5), np.full((2, 3), 1 / 3), 0.9)
    with pytest.raises(ValueError, match="threshold must be in"):
        selective_labels(np.full((2, 2), 0.5), np.full((2, 2), 0.5), 1.5)
    with pytest.raises(ValueError, match="features must be"):
        knn_smooth(np.full((3, 2), 0.5), np.ones((2, 4)), k=1, rows=[0])
    with pytest.raises(ValueError, match="k must be in"):
        knn_smooth(np.full((3, 2), 0.5), np.ones((3, 4)), k=4, rows=[0])
    with pytest.raises(ValueError, match="all-zero row"):
        knn_smooth(np.full((3, 2), 0.5), np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), k=2, rows=[0])
    with pytest.raises(ValueError, match="at least 2 rows"):
        cross_fit_halves(1, seed=0)
    with pytest.raises(ValueError, match=r"member_probs must be \(batch, 2 members, classes\)"):
        MemberWeights(2)(torch.full((4, 3, 2), 0.5))


def test_members_agree_where_every_members_argmax_is_the_same_class():
    members = np.array([[[0.9, 0.1], [0.6, 0.4], [0.51, 0.49]],   # all class 0
                        [[0.2, 0.8], [0.4, 0.6], [0.1, 0.9]],     # all class 1
                        [[0.9, 0.1], [0.6, 0.4], [0.49, 0.51]],   # the last member says 1
                        [[0.5, 0.5], [0.5, 0.5], [0.4, 0.6]]])    # ties go to class 0, as np.argmax
    assert members_agree(members).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match=r"member_probs must be \(rows, members, classes\)"):
        members_agree(np.full((4, 2), 0.5))

