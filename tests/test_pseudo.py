"""Hand-computed checks of the pseudo-label maths in noisystudent.pseudo."""

import math

import pytest
import torch
import torch.nn.functional as F

from noisystudent.pseudo import (
    auto_proportions,
    mix_test_p,
    auto_per_class,
    balance,
    class_histograms,
    confidence_mask,
    joint_loss,
    make_targets,
    probs_from_logits,
    soft_cross_entropy,
    thresholds_from_histograms,
)


# ---------------------------------------------------------------------------- temperature


def test_probs_from_logits_temperature():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert torch.allclose(probs_from_logits(logits), torch.tensor([[0.25, 0.75]]))
    # T=2 halves the logits: weights 1 and sqrt(3).
    s = math.sqrt(3.0)
    expected = torch.tensor([[1 / (1 + s), s / (1 + s)]])
    assert torch.allclose(probs_from_logits(logits, temperature=2.0), expected)
    assert probs_from_logits(logits.half()).dtype == torch.float32


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_probs_from_logits_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        probs_from_logits(torch.zeros(1, 2), temperature=temperature)


# ---------------------------------------------------------------------------- targets, mask


def test_make_targets_soft_renormalises_and_hard_is_one_hot():
    probs = torch.tensor([[1.0, 1.0, 2.0], [0.6, 0.3, 0.1]], dtype=torch.float16)
    soft = make_targets(probs, soft=True)
    assert soft.dtype == torch.float32
    assert torch.allclose(soft[0], torch.tensor([0.25, 0.25, 0.5]))
    assert torch.allclose(soft.sum(1), torch.ones(2))
    hard = make_targets(probs, soft=False)
    assert torch.equal(hard, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    # The teacher's own argmax wins over the (float16-rounded) argmax of probs.
    hard_from_pred = make_targets(probs, soft=False, pred=torch.tensor([1, 0]))
    assert torch.equal(hard_from_pred[0], torch.tensor([0.0, 1.0, 0.0]))


def test_confidence_mask_keeps_at_or_above_threshold():
    confidence = torch.tensor([0.29, 0.3, 0.31, 1.0])
    assert confidence_mask(confidence, 0.3).tolist() == [False, True, True, True]
    # Same answer for a float64 tensor: comparisons always happen in float32.
    assert confidence_mask(confidence.double(), 0.3).tolist() == [False, True, True, True]


# ---------------------------------------------------------------------------- balancing


def test_resolve_threshold_auto_is_the_papers_but_above_chance():
    """auto: the paper's 0.3 wherever it is above 1/K (4 classes on), FEW_CLASSES_THRESHOLD for 2 or
    3 classes, where every pool image's top class is at least 0.3 sure; a number is kept as given."""
    from noisystudent.pseudo import FEW_CLASSES_THRESHOLD, PAPER_THRESHOLD, resolve_threshold
    assert [resolve_threshold("auto", k) for k in (2, 3, 4, 10, 1000)] == [0.9, 0.9, 0.3, 0.3, 0.3]
    assert (PAPER_THRESHOLD, FEW_CLASSES_THRESHOLD) == (0.3, 0.9)
    assert resolve_threshold("auto", 1) == 0.3                     # one class: nothing to be unsure between
    assert resolve_threshold(0.3, 2) == 0.3 and resolve_threshold(0, 10) == 0.0     # yours, as given
    assert isinstance(resolve_threshold(0, 10), float)


def test_auto_per_class_scales_labeled_proportions():
    # 7 * [0.1, 0.3, 0.6] = [0.7, 2.1, 4.2]
    assert auto_per_class([10, 30, 60], 7).tolist() == [1, 2, 4]
    # 2 * [0.25, 0.75] = [0.5, 1.5]: half-up rounding
    assert auto_per_class(torch.tensor([1, 3]), 2).tolist() == [1, 2]
    assert auto_per_class([5, 0], 10).tolist() == [10, 0]
    with pytest.raises(ValueError):
        auto_per_class([0, 0], 10)


def test_auto_proportions_follow_val_where_its_mix_differs():
    # no val: the labeled set's; a val in the same proportions: the labeled set's (same targets, the
    # fingerprint of before); a balanced val under a long-tailed labeled set: val's
    assert auto_proportions([250, 90, 25]) == ([250, 90, 25], "labeled")
    assert auto_proportions([100, 100], [20, 20]) == ([100, 100], "labeled")
    assert auto_proportions([200, 100], [40, 20]) == ([200, 100], "labeled")
    assert auto_proportions([250, 90, 25], [50, 50, 50]) == ([50, 50, 50], "val")
    assert auto_per_class([50, 50, 50], 300).tolist() == [100, 100, 100]
    # a val that a random draw from the labeled mix could give: the labeled set's, the larger sample
    # (chi-square p = 0.51 here: scipy.stats.chisquare([2, 2, 2], [3, 2, 1]) gives the same)
    assert mix_test_p([6, 4, 2], [2, 2, 2]) == pytest.approx(0.513417, abs=1e-6)
    assert auto_proportions([6, 4, 2], [2, 2, 2]) == ([6, 4, 2], "labeled")
    assert auto_proportions([12, 4, 1], [4, 4, 4]) == ([4, 4, 4], "val")       # p = 1.1e-4
    assert mix_test_p([3, 0], [1, 1]) == 0.0          # a val class the labeled set lacks
    # random val draws from a long-tailed mix are taken as chosen at about the test's level (1%)
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([250, 194, 150, 116, 90, 70, 54, 42, 32, 25], dtype=torch.float64)
    chosen = sum(auto_proportions(mix.long().tolist(), torch.bincount(torch.multinomial(
        mix, 200, replacement=True, generator=g), minlength=10).tolist())[1] == "val" for _ in range(400))
    assert chosen <= 12
    # a class val lacks would lose all its pseudo-labels: the labeled set's mix instead
    assert auto_proportions([250, 90, 25], [50, 50, 0]) == ([250, 90, 25], "labeled")
    assert auto_proportions([5, 0], [3, 0]) == ([5, 0], "labeled")
    with pytest.raises(ValueError, match="classes"):
        auto_proportions([1, 2], [1, 2, 3])


def test_balance_hand_example():
    pred = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    confidence = torch.tensor([0.5, 0.9, 0.5, 0.7, 0.4, 0.8, 0.6])
    indices, copies = balance(pred, confidence, 2, torch.Generator().manual_seed(0))
    # class 0: the two most confident (rows 1, 3); class 1: both rows once; class 2: one row twice
    assert indices.tolist() == [1, 3, 4, 5, 6]
    assert copies.tolist() == [1, 1, 1, 1, 2]
    assert indices.dtype == copies.dtype == torch.long


def test_balance_ties_go_to_lower_index_and_empty_classes_get_nothing():
    pred = torch.tensor([0, 0, 0, 0, 1])
    confidence = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.6])
    indices, copies = balance(pred, confidence, torch.tensor([2, 0, 3]), torch.Generator().manual_seed(0))
    # class 0 keeps 0.9 (row 1) and the first of the 0.5 ties (row 0); class 1 wants 0;
    # class 2 has no candidates.
    assert indices.tolist() == [0, 1]
    assert copies.tolist() == [1, 1]


def test_balance_duplicates_short_classes_to_exactly_k():
    pred = torch.zeros(3, dtype=torch.long)
    confidence = torch.tensor([0.9, 0.5, 0.4])

    def run(seed):
        return balance(pred, confidence, 8, torch.Generator().manual_seed(seed))

    indices, copies = run(0)
    assert indices.tolist() == [0, 1, 2]
    # 8 = 3 * 2 + 2: everyone twice, two drawn rows three times
    assert int(copies.sum()) == 8 and sorted(copies.tolist()) == [2, 3, 3]
    assert torch.equal(run(0)[1], copies)
    patterns = {tuple(run(seed)[1].tolist()) for seed in range(20)}
    assert len(patterns) > 1


def test_balance_matches_brute_force_top_k():
    gen = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 4, (200,), generator=gen)
    # Quantised confidences make many ties.
    confidence = torch.randint(30, 40, (200,), generator=gen).float() / 100
    per_class = torch.tensor([5, 10, 60, 0])
    indices, copies = balance(pred, confidence, per_class, torch.Generator().manual_seed(0))
    for c in range(4):
        rows = [i for i in range(200) if pred[i] == c]
        picked = [int(i) for i in indices if pred[i] == c]
        total = sum(int(n) for i, n in zip(indices, copies) if pred[i] == c)
        assert total == (int(per_class[c]) if rows else 0)
        if len(rows) >= per_class[c]:
            expected = sorted(rows, key=lambda i: (-float(confidence[i]), i))[: int(per_class[c])]
            assert picked == sorted(expected)
        else:
            assert picked == rows
    assert torch.equal(indices, indices.sort().values) and len(set(indices.tolist())) == len(indices)


# ---------------------------------------------------------------------------- histograms


def test_class_histograms_use_001_bins():
    pred = torch.tensor([0, 0, 1, 1, 1])
    confidence = torch.tensor([0.3, 0.29, 0.0, 0.999, 1.0])
    hist = class_histograms(pred, confidence, num_classes=2)
    assert hist.shape == (2, 100) and hist.dtype == torch.long
    expected = torch.zeros(2, 100, dtype=torch.long)
    expected[0, 30] = expected[0, 29] = expected[1, 0] = 1
    expected[1, 99] = 2  # 1.0 falls in the last bin
    assert torch.equal(hist, expected)


def test_thresholds_from_histograms():
    pred = torch.tensor([0] * 5 + [1] * 2)
    confidence = torch.tensor([0.95, 0.91, 0.85, 0.62, 0.35, 0.5, 0.4])
    hist = class_histograms(pred, confidence, num_classes=2)
    f32 = lambda *xs: torch.tensor(xs, dtype=torch.float32)  # noqa: E731
    # K=3: class 0 has exactly 3 rows >= 0.85 (and 2 >= 0.86); class 1 is short -> the floor
    assert torch.equal(thresholds_from_histograms(hist, 3, floor=0.3), f32(0.85, 0.3))
    assert torch.equal(thresholds_from_histograms(hist, [5, 1], floor=0.3), f32(0.35, 0.5))
    # never below the floor
    assert torch.equal(thresholds_from_histograms(hist, [5, 1], floor=0.4), f32(0.4, 0.5))


# ---------------------------------------------------------------------------- losses


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 1, 2])
    one_hot = F.one_hot(labels, 3).float()
    assert torch.allclose(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))


def test_joint_loss_equals_manual_computation():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([0, 2])
    targets = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    loss, parts = joint_loss(logits, 2, labels, targets, unlabeled_weight=0.5, label_smoothing=0.1)

    logp = torch.log_softmax(logits.detach(), dim=1)
    # label smoothing 0.1 over 3 classes: 0.9 * NLL(true) + 0.1 * mean_c NLL(c)
    labeled = sum(0.9 * -logp[i, y] + 0.1 * -logp[i].mean() for i, y in enumerate(labels.tolist())) / 2
    pseudo = (-(targets * logp[2:]).sum(1)).mean()
    assert torch.allclose(parts["loss_labeled"], labeled)
    assert torch.allclose(parts["loss_pseudo"], pseudo)
    assert torch.allclose(loss, labeled + 0.5 * pseudo)
    loss.backward()
    assert logits.grad is not None


def test_joint_loss_with_no_pseudo_rows():
    logits = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([1, 0])
    loss, parts = joint_loss(logits, 2, labels, torch.empty(0, 3))
    assert torch.allclose(loss, F.cross_entropy(logits, labels))
    assert float(parts["loss_pseudo"]) == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
