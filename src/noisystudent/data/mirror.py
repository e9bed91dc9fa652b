"""Does a mirror keep the class? Asked of the labeled images by `noisystudent init --data` before it
leaves a recipe's random mirror (`data.hflip`) and flip test-time augmentation on, and by a run whose
config mirrors images (a warning).

A mirror suits photos and clothes and is wrong for digits and letters, where the mirror of a 3 is no 3
at all (on MNIST it cost the noisy student 1.56 +- 0.51 points on val, every seed of 3: TM in
docs/benchmarks/transfer.md). The images can tell which: score each labeled image by its nearest other
labeled image (leave-one-out 1-NN), then score its mirror the same way. Where a mirror keeps the class
the mirrors are matched about as well (Fashion-MNIST: a chance-corrected ratio of 0.57-0.94 on
pixels, clothes are not quite symmetric); where it changes it, far worse (digits: 0.04-0.54). Two
ways of comparing give an opinion each: raw pixels, and gradient-orientation histograms (HOG-like),
which see strokes through the textured, colour-flipped backgrounds of MNIST-M-like digits where
pixels are near chance. An opinion counts only where its 1-NN beats chance by MIN_ABOVE_CHANCE (on
photos, CIFAR-10, both are near chance: nothing can be told and the recipe's setting stays), and
the mirror goes off only when every opinion that counts says it changes the class.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["MirrorCheck", "Opinion", "mirror_check", "keeps_class", "mirror_check_source", "MIN_ABOVE_CHANCE", "MAX_RATIO"]

# read the ratio only when plain 1-NN beats chance by this much (CIFAR-10: ~0.1; digits, clothes: >= 0.3)
MIN_ABOVE_CHANCE = 0.3
# below this the mirror changes the class (10 draws each of 5-100 labeled images a class: digits,
# MNIST and MNIST-M-like 0.03-0.54, Fashion-MNIST 0.43-0.94; `benchmarks/mirror_check.py`, its table
# in transfer.md, TM / TMM)
MAX_RATIO = 0.5
_SIDE = 32              # images are compared at most this large (1-NN on pixels needs no detail)
_PER_CLASS = 100        # at most this many labeled images a class are read,
_MAX_IMAGES = 2000      # and this many in all (the similarity matrix is N x N)


class Opinion(NamedTuple):
    """What one way of comparing images says: leave-one-out 1-NN accuracy of the labeled images and of
    their mirrors (matched against the unmirrored images), and the chance-corrected ratio."""
    feature: str            # "pixels" or "gradients"
    accuracy: float
    mirrored: float
    ratio: float            # (mirrored - 1/K) / (accuracy - 1/K); nan at or below chance
    informative: bool       # accuracy beats chance by MIN_ABOVE_CHANCE: the ratio can be read

    def describe(self) -> str:
        return (f"1-NN on {self.feature}: {self.accuracy:.0%} right, mirrored {self.mirrored:.0%}, "
                f"ratio {self.ratio:.2f}")


class MirrorCheck(NamedTuple):
    images: int                     # labeled images compared
    opinions: tuple[Opinion, ...]   # raw pixels; gradient histograms (speak on digits over textures)
    keeps_class: bool               # False only when some opinion is informative and every informative
                                    # one has ratio < MAX_RATIO

    def describe(self) -> str:
        said = [o for o in self.opinions if o.informative] or list(self.opinions)
        return f"{self.images} labeled images; " + "; ".join(o.describe() for o in said)


def _unit_rows(z: np.ndarray) -> np.ndarray:
    """Each row zero-mean and unit-length (so brightness and contrast do not decide a match)."""
    z = z.reshape(len(z), -1).astype(np.float32)
    z -= z.mean(1, keepdims=True)
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-6)


def _gradient_histograms(images: np.ndarray, cells: int = 4, bins: int = 9) -> np.ndarray:
    """HOG-like rows: the grayscale image's gradient orientations (unsigned, `bins` bins) weighted by
    magnitude, in `cells` x `cells` cells. Strokes' directions survive a textured background and a
    colour or polarity change that defeat raw pixels (MNIST-M-like digits: 1-NN 33-52% vs 11-26%)."""
    g = images.astype(np.float32)
    g = g.mean(-1) if g.ndim == 4 else g
    gy, gx = np.gradient(g, axis=(1, 2))
    mag = np.hypot(gx, gy)
    b = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) * (bins / np.pi)).astype(np.int64), bins - 1)
    n, h, w = g.shape
    ci = np.minimum(np.arange(h) * cells // h, cells - 1)       # each pixel's cell row / column
    cj = np.minimum(np.arange(w) * cells // w, cells - 1)
    index = (ci[:, None] * cells + cj[None, :])[None] * bins + b    # (n, h, w): cell * bins + bin
    out = np.zeros((n, cells * cells * bins), np.float32)
    np.add.at(out, (np.repeat(np.arange(n), h * w), index.reshape(-1)), mag.reshape(-1))
    return out


def _opinion(feature: str, plain: np.ndarray, mirrored: np.ndarray, labels: np.ndarray) -> Opinion:
    plain, mirrored = _unit_rows(plain), _unit_rows(mirrored)
    sim = plain @ plain.T
    np.fill_diagonal(sim, -np.inf)              # leave one out: an image is not its own neighbour
    sim_m = mirrored @ plain.T
    np.fill_diagonal(sim_m, -np.inf)            # nor is its mirror (a symmetric image would match itself)
    acc = float((labels[sim.argmax(1)] == labels).mean())
    acc_m = float((labels[sim_m.argmax(1)] == labels).mean())
    chance = 1.0 / len(np.unique(labels))
    ratio = (acc_m - chance) / (acc - chance) if acc > chance else float("nan")
    return Opinion(feature, acc, acc_m, ratio, acc - chance >= MIN_ABOVE_CHANCE)


def mirror_check(images: np.ndarray, labels: np.ndarray) -> MirrorCheck:
    """`images` (N, H, W, C) or (N, H, W) of one size, `labels` (N,) ints: is a mirrored image still
    nearest to images of its own class, on raw pixels and on gradient histograms? Pure; O(N^2)
    memory, so callers keep N to a few thousand."""
    labels = np.asarray(labels)
    if len(images) != len(labels) or len(images) < 2:
        raise ValueError(f"mirror_check needs >= 2 images with one label each, got {len(images)} and {len(labels)}")
    mirrored = images[:, :, ::-1]
    opinions = (_opinion("pixels", images, mirrored, labels),
                _opinion("gradients", _gradient_histograms(images), _gradient_histograms(mirrored), labels))
    return MirrorCheck(len(labels), opinions, keeps_class(opinions))


def keeps_class(opinions) -> bool:
    """The verdict: a mirror changes the class only when some opinion can tell (informative) and every
    one that can says so (ratio < MAX_RATIO); one alone can be fooled (gradients on clothes: a ratio
    of 0.43 on one Fashion-MNIST draw, where pixels said 0.57+)."""
    said = [o for o in opinions if o.informative]
    return not said or any(o.ratio >= MAX_RATIO for o in said)


def mirror_check_source(source, seed: int = 0, per_class: int = _PER_CLASS) -> MirrorCheck | None:
    """`mirror_check` on up to `per_class` images a class of a labeled source (a seeded draw; at most
    `_MAX_IMAGES` in all), each read once and resized to one square of at most `_SIDE` px; None when
    a class has fewer than 2 images or fewer than 2 could be read (unreadable ones are skipped)."""
    from PIL import Image
    from .decode import BadImage
    rng = np.random.default_rng(seed)
    labels = np.asarray(source.labels)
    counts = np.bincount(labels)
    if len(counts) < 2 or counts.min() < 2:
        return None
    per_class = max(2, min(per_class, _MAX_IMAGES // len(counts)))
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(len(counts))])
    arrays, ys = [], []
    for i in picked:
        try:
            a = source.load(int(i))
        except BadImage:            # an unreadable image is the run's to report, not this check's
            continue
        arrays.append(a[..., 0] if a.shape[-1] == 1 else a)
        ys.append(labels[i])
    if len(arrays) < 2:
        return None
    side = min(_SIDE, max(arrays[0].shape[:2]))     # one square for all (1-NN compares whole images)
    imgs = [np.asarray(Image.fromarray(a).resize((side, side), Image.BILINEAR), dtype=np.uint8) for a in arrays]
    return mirror_check(np.stack(imgs), np.array(ys))
