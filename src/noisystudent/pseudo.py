"""Pseudo-label maths: from teacher logits to student targets, filtering, balancing and the loss.

Noisy Student (Xie et al., CVPR 2020, section 3 and appendix A) turns teacher predictions on the
unlabeled pool into targets in four pure steps: `probs_from_logits` (softmax at a temperature; the
teacher runs without noise), `confidence_mask` (drop rows whose max probability is below a
threshold, paper: 0.3), `balance` (each class gets its labeled-set share: the most confident rows
of over-full classes, duplicates of short ones) and `make_targets` (soft, the paper's default, or
one-hot). `joint_loss` is the student's loss on labeled and pseudo-labeled rows together.
`class_histograms` + `thresholds_from_histograms` turn "top K per class" into per-class
thresholds, so that selection.py can stream pools too big for memory.

Every confidence comparison happens in float32, the dtype the label shards store, so a threshold
of 0.3 means the same in the histogram, the mask and the streaming pass (mixing float32 and
float64 comparisons would put boundary rows on different sides in different places). Nothing here
reads files or touches global random state: randomness comes from an explicit `torch.Generator`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "per_class_targets",
    "probs_from_logits",
    "make_targets",
    "confidence_mask",
    "resolve_threshold",
    "PAPER_THRESHOLD",
    "FEW_CLASSES_THRESHOLD",
    "auto_per_class",
    "auto_proportions",
    "mix_test_p",
    "MIX_TEST_P",
    "balance",
    "class_histograms",
    "thresholds_from_histograms",
    "soft_cross_entropy",
    "joint_loss",
    "pseudo_weight",
]


# --------------------------------------------------------------------------------------------
# Teacher outputs -> targets
# --------------------------------------------------------------------------------------------


def probs_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of `logits / temperature` over the last dimension, in float32.

    temperature > 1 flattens the distribution (softer targets), < 1 sharpens it. Computed in
    float32 even for half-precision logits, because the softmax of fp16 logits loses the small
    probabilities that soft targets exist to carry.
    """
    # `not (t > 0)` also rejects NaN, which `t <= 0` would let through.
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return torch.softmax(logits.float() / temperature, dim=-1)


def make_targets(probs: torch.Tensor, soft: bool, *, pred: torch.Tensor | None = None) -> torch.Tensor:
    """Training targets (N, C) in float32 from probabilities (N, C).

    soft=True:  the probabilities renormalised to sum to 1. Stored probabilities are float16, whose
                rounding leaves row sums slightly off 1; renormalising keeps the soft
                cross-entropy on the same scale as a true distribution.
    soft=False: one-hot of the predicted class. Pass `pred` (the argmax computed by the teacher
                from full-precision probabilities) when you have it: the argmax of float16 probs
                can flip between two near-tied classes, and a hard target must agree with the
                class the row was balanced under.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, C), got shape {tuple(probs.shape)}")
    probs = probs.float()
    if soft:
        # clamp: an all-zero row (impossible for a softmax, possible for corrupt input) must not
        # turn into NaN targets.
        return probs / probs.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    classes = probs.argmax(dim=1) if pred is None else pred.long()
    return F.one_hot(classes, num_classes=probs.shape[1]).float()


def confidence_mask(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask of rows with `confidence >= threshold` (paper default threshold: 0.3).

    Compared in float32 (see the module docstring), so a stored confidence of 0.3 passes 0.3.
    """
    return confidence.float() >= torch.tensor(threshold, dtype=torch.float32)


PAPER_THRESHOLD = 0.3
# With 2 or 3 classes the paper's 0.3 is at or below chance (1/K): every pool image's top class is at
# least that sure, so the filter keeps everything. Measured on two classes (CIFAR-10 automobile vs
# truck, 28 px grayscale, 3 seeds; docs/benchmarks/transfer.md): 0.3 / 0.7 / 0.9 kept 97 / 78 / 44% of
# the pool, 88 / 93 / 98% correctly labeled, and the noisy student reached 87.33 / 88.53 / 89.40% val
# (every seed better at 0.9), level on test (90.02 / 90.08 / 90.03). Three classes (+ ship): 0.3 / 0.9
# level on val (88.31 / 88.36), 89.21 / 89.69 on test.
FEW_CLASSES_THRESHOLD = 0.9


def resolve_threshold(threshold: float | str, num_classes: int) -> float:
    """`select.threshold` as the number the filter uses: a number is kept as given; "auto" is the
    paper's 0.3, or FEW_CLASSES_THRESHOLD where 0.3 <= 1/num_classes (2 or 3 classes), where 0.3
    would keep every pool image. At four classes (0.3 just above chance) 0.9 was measured level with
    0.3 on val, so 0.3 stays there (docs/benchmarks/transfer.md, "Four classes")."""
    if threshold != "auto":
        return float(threshold)
    few = num_classes >= 2 and PAPER_THRESHOLD <= 1.0 / num_classes
    return FEW_CLASSES_THRESHOLD if few else PAPER_THRESHOLD


# --------------------------------------------------------------------------------------------
# Class balancing
# --------------------------------------------------------------------------------------------


MIX_TEST_P = 0.01     # auto_proportions: below this p-value val's class mix is taken as chosen, not drawn


def auto_proportions(labeled_counts: Sequence[int], val_counts: Sequence[int] | None = None) -> tuple[list[int], str]:
    """The images per class whose proportions `per_class: auto` gives the confident pool, and whose
    they are: ("val" or "labeled").

    The validation set's when its class mix was chosen, not drawn: settings are chosen on val, so its
    mix is the one the user cares about. On a long-tailed labeled set with a balanced val, the paper's
    fixed count per class (what that val gives) beat the labeled set's mix on val on every seed
    (docs/benchmarks/transfer.md, TI). "Chosen" means that a random draw from the labeled set's mix
    would rarely look like it: Pearson's chi-square test of val's counts against that mix gives p <
    MIX_TEST_P. Otherwise (val drawn at random from data like the labeled set's) both estimate one mix
    and the labeled set's, the larger sample, is the better guess. The labeled set's too when there is
    no val, when val has no image of a class the labeled set has (that class's pseudo-labels would all
    be dropped), and so when the mixes are the same (balanced runs keep their selection)."""
    labeled = [int(n) for n in labeled_counts]
    if val_counts is None:
        return labeled, "labeled"
    val = [int(n) for n in val_counts]
    if len(val) != len(labeled):
        raise ValueError(f"val_counts has {len(val)} classes, labeled_counts {len(labeled)}")
    if any(v == 0 and n > 0 for v, n in zip(val, labeled)):
        return labeled, "labeled"
    # the same mix gives chi-square 0, p = 1: the labeled set's, so balanced runs keep their selection
    return (val, "val") if mix_test_p(labeled, val) < MIX_TEST_P else (labeled, "labeled")


def mix_test_p(labeled_counts: Sequence[int], val_counts: Sequence[int]) -> float:
    """p-value of Pearson's chi-square test that `val_counts` were drawn from the class mix of
    `labeled_counts` (K - 1 degrees of freedom over the K classes the labeled set has; a val image of
    a class the labeled set lacks gives 0). The survival function of chi-square is the regularised
    upper incomplete gamma function Q(df / 2, x / 2), torch.special.gammaincc."""
    total_l, total_v = sum(labeled_counts), sum(val_counts)
    stat, df = 0.0, -1
    for n, v in zip(labeled_counts, val_counts):
        if n == 0:
            if v > 0:
                return 0.0
            continue
        expected = total_v * n / total_l
        stat += (v - expected) ** 2 / expected
        df += 1
    if df < 1:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def auto_per_class(labeled_class_counts: Sequence[int] | torch.Tensor, pool_size: int) -> torch.Tensor:
    """Per-class targets K_c that give the pool the class proportions of `labeled_class_counts`
    (the select stage passes `auto_proportions`'s: the validation set's where it was chosen).

    Definition: K_c = round(pool_size * n_c / N_labeled), where n_c is the number of
    images of class c and N_labeled their total; rounding is half-up (floor(x + 1/2)), done in
    exact integer arithmetic so the result never depends on float rounding. Because each class
    is rounded separately, sum(K_c) can differ from pool_size by up to C/2.

    On a balanced labeled set this is the paper's "same number of images per class"
    (ImageNet: 1.3M labeled / 1000 classes -> equal K for all classes); on an imbalanced one it
    keeps that imbalance.
    """
    counts = torch.as_tensor(labeled_class_counts, dtype=torch.long)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError("labeled_class_counts must be a non-empty 1-D sequence of counts")
    if (counts < 0).any():
        raise ValueError("labeled_class_counts must be >= 0")
    total = int(counts.sum())
    if total == 0:
        raise ValueError("labeled_class_counts sum to 0: cannot derive class proportions")
    if pool_size < 0:
        raise ValueError(f"pool_size must be >= 0, got {pool_size}")
    # floor(pool * n / N + 1/2) == (2 * pool * n + N) // (2 * N), all integers.
    return (2 * pool_size * counts + total) // (2 * total)


def per_class_targets(per_class: int | Sequence[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class targets K_c: an int applies to every class; a sequence/tensor gives one per class."""
    if isinstance(per_class, int):
        targets = torch.full((num_classes,), per_class, dtype=torch.long)
    else:
        targets = torch.as_tensor(per_class, dtype=torch.long)
        if targets.shape != (num_classes,):
            raise ValueError(f"per_class must have {num_classes} entries, got shape {tuple(targets.shape)}")
    if (targets < 0).any():
        raise ValueError("per-class targets must be >= 0")
    return targets


def _balance_targets(
    pred: torch.Tensor, confidence: torch.Tensor, per_class: int | Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """K_c per class for `balance`, after checking pred (long) and confidence agree with it."""
    if pred.shape != confidence.shape or pred.dim() != 1:
        raise ValueError("pred and confidence must be 1-D tensors of the same length")
    if isinstance(per_class, int):
        num_classes = int(pred.max()) + 1 if pred.numel() else 0
    else:
        num_classes = len(per_class)
    targets = per_class_targets(per_class, num_classes)
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"pred values must lie in [0, {num_classes})")
    return targets


def _balance_class(
    rows: torch.Tensor, confidence: torch.Tensor, k: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, copies) that give one class exactly k > 0 examples from its n > 0 `rows`."""
    n = rows.numel()
    if n >= k:
        # A stable sort on descending confidence keeps equal confidences in ascending row
        # order, which is exactly the "lower index wins ties" rule.
        order = torch.sort(confidence[rows], descending=True, stable=True).indices
        return rows[order[:k]], torch.ones(k, dtype=torch.long)
    count = torch.full((n,), k // n, dtype=torch.long)
    extra = torch.randperm(n, generator=generator)[: k % n]
    count[extra] += 1
    return rows, count


def balance(
    pred: torch.Tensor,
    confidence: torch.Tensor,
    per_class: int | Sequence[int] | torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose rows and copy counts so every class c contributes exactly K_c examples.

    pred (N,) are class ids, confidence (N,) the teacher's max probabilities of the candidate rows
    (already thresholded). per_class is K for every class, or a per-class sequence/tensor K_c
    (then its length fixes the number of classes).

    For each class c, with n_c candidates:
      * n_c >= K_c: keep the K_c most confident rows, one copy each. Ties are broken by the lower
        row index, so the choice is deterministic and independent of sort implementation.
      * 0 < n_c < K_c: keep every row with K_c // n_c copies; K_c % n_c of them, drawn with
        `generator`, get one extra copy. Drawing (rather than e.g. favouring the most confident)
        keeps the duplicated set an unbiased sample of the class.
      * n_c == 0: nothing can be selected; the caller reports such classes.

    Returns (indices, copies): unique row indices sorted ascending (so output order is pool order)
    and the copy count (>= 1) of each. Classes are processed in increasing id, and only short
    classes consume the generator, so the same inputs and generator state give the same result.
    """
    pred = pred.long()
    targets = _balance_targets(pred, confidence, per_class)
    confidence = confidence.float()

    chosen: list[torch.Tensor] = []
    copies: list[torch.Tensor] = []
    for c in range(targets.numel()):
        k = int(targets[c])
        rows = torch.nonzero(pred == c, as_tuple=True)[0]  # ascending row indices
        if k == 0 or rows.numel() == 0:
            continue
        class_rows, class_copies = _balance_class(rows, confidence, k, generator)
        chosen.append(class_rows)
        copies.append(class_copies)

    if not chosen:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    indices = torch.cat(chosen)
    counts = torch.cat(copies)
    order = torch.argsort(indices)
    return indices[order], counts[order]


# --------------------------------------------------------------------------------------------
# Streaming-friendly top-K: per-class histograms -> per-class thresholds
# --------------------------------------------------------------------------------------------


def _bin_edges(bins: int) -> torch.Tensor:
    """Lower edges 0, 1/bins, ..., (bins-1)/bins as float32 - the single source of both binning
    and thresholds, so "count in bins >= b" equals "count with confidence >= edge[b]" exactly."""
    return (torch.arange(bins, dtype=torch.float64) / bins).float()


def class_histograms(
    pred: torch.Tensor, confidence: torch.Tensor, num_classes: int, bins: int = 100
) -> torch.Tensor:
    """(num_classes, bins) counts of confidence per predicted class, bins 1/bins wide.

    Bin b holds confidences in [b/bins, (b+1)/bins); 1.0 goes to the last bin. With the default
    100 bins these are the paper's 0.01-wide bins. Histograms from several batches simply add up,
    which is what lets selection.py build them in one streaming pass.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    pred = pred.long()
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"pred values must lie in [0, {num_classes})")
    edges = _bin_edges(bins)
    # right=True: a confidence equal to an edge belongs to the bin starting at that edge.
    bin_index = torch.searchsorted(edges, confidence.float().contiguous(), right=True) - 1
    bin_index = bin_index.clamp_(0, bins - 1)
    flat = torch.bincount(pred * bins + bin_index, minlength=num_classes * bins)
    return flat.view(num_classes, bins)


def thresholds_from_histograms(
    hist: torch.Tensor, per_class: int | Sequence[int] | torch.Tensor, floor: float
) -> torch.Tensor:
    """Per-class confidence thresholds (C,) float32 that keep at least the top K_c of each class.

    For class c: the highest bin lower edge e such that (rows with confidence >= e) >= K_c,
    raised to `floor` (the global threshold) if below it. When even the floor cannot give K_c rows
    (a short class) the threshold is the floor, so every candidate is kept for duplication.
    K_c == 0 gives the top bin's lower edge (nothing will be selected; the threshold only keeps
    the second pass from holding many rows of that class).

    Keeping rows with confidence >= threshold_c is then a superset of the class's top K_c among
    rows >= floor, larger by at most the rows in one boundary bin.
    """
    num_classes, bins = hist.shape
    targets = per_class_targets(per_class, num_classes)
    edges = _bin_edges(bins)
    # tail[c, b] = rows of class c with confidence >= edges[b] (reverse cumulative sum).
    tail = hist.flip(1).cumsum(1).flip(1)
    # tail is non-increasing in b, so "tail >= K" holds for a prefix of bins; its length - 1 is
    # the highest qualifying bin, and a length of 0 means the class is short everywhere.
    qualifying = (tail >= targets[:, None]).sum(1)
    edge = torch.where(qualifying > 0, edges[(qualifying - 1).clamp_min(0)], torch.zeros(()))
    return edge.clamp_min(torch.tensor(floor, dtype=torch.float32))


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over the batch of -sum_c t_c * log_softmax(logits)_c; 0 for an empty batch.

    Computed in float32: under mixed precision, fp16/bf16 log-probabilities of rare classes are
    too coarse for soft targets. An empty batch returns a 0 that is still attached to `logits`,
    so `.backward()` works whatever the batch held.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * log_probs).sum(dim=-1).mean()


def joint_loss(
    logits: torch.Tensor,
    num_labeled: int,
    labels: torch.Tensor,
    targets: torch.Tensor,
    unlabeled_weight: float = 1.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Noisy Student's joint objective for one forward pass over concat(labeled, pseudo).

        loss = CE(logits[:L], labels; label_smoothing)          (mean over the L labeled rows)
             + unlabeled_weight * softCE(logits[L:], targets)    (mean over the pseudo rows)

    Each part is a mean over its own rows and the two means are summed, as in the paper's
    joint training (labeled and pseudo-labeled batches are averaged separately and added,
    Algorithm 1 step 3). So the balance between the two is set by `unlabeled_weight`, not by how
    many rows of each happen to be in the batch (the paper uses larger unlabeled batches).
    A part with 0 rows contributes 0 (e.g. a batch with no pseudo rows).

    Returns (loss, parts) with parts = {"loss_labeled", "loss_pseudo"}, detached tensors: call
    `.item()` only when logging, since each call syncs the GPU.
    """
    if not 0 <= num_labeled <= logits.shape[0]:
        raise ValueError(f"num_labeled={num_labeled} outside [0, {logits.shape[0]}]")
    if labels.shape != (num_labeled,):
        raise ValueError(f"labels must have shape ({num_labeled},), got {tuple(labels.shape)}")
    labeled_logits, pseudo_logits = logits[:num_labeled], logits[num_labeled:]

    if num_labeled > 0:
        loss_labeled = F.cross_entropy(labeled_logits.float(), labels.long(), label_smoothing=label_smoothing)
    else:
        loss_labeled = logits.float().sum() * 0.0
    loss_pseudo = soft_cross_entropy(pseudo_logits, targets)

    loss = loss_labeled + unlabeled_weight * loss_pseudo
    return loss, {"loss_labeled": loss_labeled.detach(), "loss_pseudo": loss_pseudo.detach()}


def pseudo_weight(weighting: str, unlabeled_weight: float, ratio: int) -> float:
    """The factor on the pseudo-label term of `joint_loss`.

    "mean":      CE_l + w * CE_u, each a mean over its own rows: the two halves weigh the same
                 whatever the batch ratio.
    "per_image": CE_l + w * ratio * CE_u, the official code's loss (both means over B labeled
                 rows' worth): with w=1 every image of the joint batch weighs the same.
    """
    if weighting == "mean":
        return float(unlabeled_weight)
    if weighting == "per_image":
        return float(unlabeled_weight) * ratio
    raise ValueError(f"unknown loss weighting {weighting!r}; allowed: mean, per_image")
