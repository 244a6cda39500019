import numpy as np
import pytest
import torch

import train
from run import batching, ensemble


def test_bucketed_batches_cover_every_example_once_per_epoch():
    lengths = np.random.default_rng(0).integers(1, 200, size=1003)
    batches = batching.bucketed_batches(lengths, 16, seed=3, epoch=0)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(1003))
    assert all(len(b) == 16 for b in batches[:-1] if len(b) != 1003 % 16)


def test_bucketed_batches_are_length_homogeneous_and_pad_less_than_random():
    lengths = np.random.default_rng(1).integers(1, 512, size=4000)

    def padding(batches):
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches) / lengths.sum()

    bucketed = batching.bucketed_batches(lengths, 16, seed=0, epoch=0)
    rng = np.random.default_rng(0)
    random = np.array_split(rng.permutation(len(lengths)), len(lengths) // 16)
    assert padding(bucketed) < 0.05 < padding(random)


def test_bucketed_batches_deterministic_by_seed_and_reshuffled_each_epoch():
    lengths = list(range(500))
    a = batching.bucketed_batches(lengths, 8, seed=0, epoch=0)
    b = batching.bucketed_batches(lengths, 8, seed=0, epoch=0)
    c = batching.bucketed_batches(lengths, 8, seed=0, epoch=1)
    d = batching.bucketed_batches(lengths, 8, seed=1, epoch=0)
    assert all((x == y).all() for x, y in zip(a, b))
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    assert [x.tolist() for x in a] != [x.tolist() for x in d]


def test_soft_vote_is_mean_of_member_probabilities():
    members = [[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.4, 0.6]], [[0.3, 0.7], [0.1, 0.9]]]
    np.testing.assert_allclose(ensemble.vote(members, "soft"), [[0.6, 0.4], [0.7 / 3, 2.3 / 3]])


def test_hard_vote_is_majority_with_ties_broken_by_mean_probability():
    members = [
        [[0.9, 0.1], [0.49, 0.51], [0.6, 0.4]],
        [[0.6, 0.4], [0.45, 0.55], [0.1, 0.9]],
        [[0.3, 0.7], [0.9, 0.1], [0.7, 0.3]],
        [[0.8, 0.2], [0.8, 0.2], [0.45, 0.55]],
    ]
    # row 0: 3 votes class 0; row 1: tie 2-2, mean p1 = 0.34 -> class 0; row 2: tie 2-2, mean p1 = 0.5375 -> class 1
    np.testing.assert_array_equal(ensemble.vote(members, "hard"), [[1, 0], [1, 0], [0, 1]])


def test_collate_pads_and_drops_mask_when_no_row_is_padded():
    idx, mask = batching.collate([[1, 2, 3], [4]], pad_token=0, device=torch.device("cpu"))
    assert idx.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    idx, mask = batching.collate([[1, 2], [4]], pad_token=9, device=torch.device("cpu"), left_pad=True)
    assert idx.tolist() == [[1, 2], [9, 4]] and mask.tolist() == [[1, 1], [0, 1]]
    idx, mask = batching.collate([[1, 2], [3, 4]], pad_token=0, device=torch.device("cpu"))
    assert mask is None


def test_lm_targets_shift_ignore_padding_and_optionally_the_prompt():
    rows = [([5, 6, 7, 8], 2), ([1, 2], 1)]
    t = batching.lm_targets(rows, 4, torch.device("cpu"), "all")
    assert t.tolist() == [[6, 7, 8, -100], [2, -100, -100, -100]]
    t = batching.lm_targets(rows, 4, torch.device("cpu"), "continuation")
    # prompt of row 0 is [5, 6]: the target 7 (first continuation token, predicted at position 1) is kept
    assert t.tolist() == [[-100, 7, 8, -100], [2, -100, -100, -100]]


def test_parse_args_maps_every_flag_and_rejects_unknown_ones():
    cfg = train.parse_args(["--task", "safety", "--role", "student", "--lr", "1e-4", "--limit", "50", "--hard-labels"])
    assert (cfg.role, cfg.lr, cfg.limit, cfg.hard_labels) == ("student", 1e-4, 50, True)
    with pytest.raises(SystemExit):
        train.parse_args(["--no-such-flag", "1"])
