"""Does a mirror keep the class? Asked of the labeled images by `noisystudent init --data` before it
leaves a recipe's random mirror (`data.hflip`) and flip test-time augmentation on, and by a run whose
config mirrors images (a warning).

A mirror suits photos and clothes and is wrong for digits and letters, where the mirror of a 3 is no 3
at all (on MNIST it cost the noisy student 1.56 +- 0.51 points on val, every seed of 3: TM in
docs/benchmarks/transfer.md). The images can tell which: score each labeled image by its nearest other
labeled image on raw pixels (leave-one-out 1-NN), then score its mirror the same way. Where a mirror
keeps the class the mirrors are matched about as well (CIFAR-10: a ratio of ~1; Fashion-MNIST:
0.57-0.94, clothes are not quite symmetric in pixels); where it changes it, far worse (digits:
0.04-0.54). The ratio is chance-corrected, (mirrored - 1/K) / (plain - 1/K), and read only when
pixels say something at all: on CIFAR-10 1-NN is near chance (~20% for 10 classes), nothing can be
told, and the recipe's setting stays.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["MirrorCheck", "mirror_check", "mirror_check_source", "MIN_ABOVE_CHANCE", "MAX_RATIO"]

# read the ratio only when plain 1-NN beats chance by this much (CIFAR-10: ~0.1; digits, clothes: >= 0.3)
MIN_ABOVE_CHANCE = 0.3
# below this the mirror changes the class (10 draws each of 5-100 labeled images a class: digits and
# MNIST 0.04-0.54, Fashion-MNIST 0.57-0.94; `benchmarks/mirror_check.py`, its table in transfer.md, TM)
MAX_RATIO = 0.5
_SIDE = 32              # images are compared at most this large (1-NN on pixels needs no detail)
_PER_CLASS = 100        # at most this many labeled images a class are read,
_MAX_IMAGES = 2000      # and this many in all (the similarity matrix is N x N)


class MirrorCheck(NamedTuple):
    images: int             # labeled images compared
    accuracy: float         # leave-one-out 1-NN accuracy of the images
    mirrored: float         # the same for their mirrors (matched against the unmirrored images)
    ratio: float            # chance-corrected: (mirrored - 1/K) / (accuracy - 1/K)
    informative: bool       # accuracy beats chance by MIN_ABOVE_CHANCE: the ratio can be read
    keeps_class: bool       # the verdict: False only when informative and ratio < MAX_RATIO

    def describe(self) -> str:
        return (f"1-NN on the pixels of {self.images} labeled images: {self.accuracy:.0%} right, their "
                f"mirrors {self.mirrored:.0%} (chance-corrected ratio {self.ratio:.2f})")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Each image as a zero-mean, unit-length row (so brightness and contrast do not decide a match)."""
    z = x.reshape(len(x), -1).astype(np.float32)
    z -= z.mean(1, keepdims=True)
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-6)


def mirror_check(images: np.ndarray, labels: np.ndarray) -> MirrorCheck:
    """`images` (N, H, W, C) or (N, H, W) of one size, `labels` (N,) ints: is a mirrored image still
    nearest to images of its own class? Pure; O(N^2) memory, so callers keep N to a few thousand."""
    labels = np.asarray(labels)
    if len(images) != len(labels) or len(images) < 2:
        raise ValueError(f"mirror_check needs >= 2 images with one label each, got {len(images)} and {len(labels)}")
    plain, mirrored = _unit_rows(images), _unit_rows(images[:, :, ::-1])
    sim = plain @ plain.T
    np.fill_diagonal(sim, -np.inf)              # leave one out: an image is not its own neighbour
    sim_m = mirrored @ plain.T
    np.fill_diagonal(sim_m, -np.inf)            # nor is its mirror (a symmetric image would match itself)
    acc = float((labels[sim.argmax(1)] == labels).mean())
    acc_m = float((labels[sim_m.argmax(1)] == labels).mean())
    chance = 1.0 / len(np.unique(labels))
    informative = acc - chance >= MIN_ABOVE_CHANCE
    ratio = (acc_m - chance) / (acc - chance) if acc > chance else float("nan")
    return MirrorCheck(len(labels), acc, acc_m, ratio, informative, not (informative and ratio < MAX_RATIO))


def mirror_check_source(source, seed: int = 0, per_class: int = _PER_CLASS) -> MirrorCheck | None:
    """`mirror_check` on up to `per_class` images a class of a labeled source (a seeded draw; at most
    `_MAX_IMAGES` in all), each resized to one square of at most `_SIDE` px; None when a class has
    fewer than 2 images."""
    from PIL import Image
    from .decode import BadImage
    rng = np.random.default_rng(seed)
    labels = np.asarray(source.labels)
    counts = np.bincount(labels)
    if len(counts) < 2 or counts.min() < 2:
        return None
    per_class = max(2, min(per_class, _MAX_IMAGES // len(counts)))
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(len(counts))])
    first = source.load(int(picked[0]))
    side = min(_SIDE, max(first.shape[:2]))
    imgs, ys = [], []
    for i in picked:
        try:
            a = source.load(int(i))
        except BadImage:            # an unreadable image is the run's to report, not this check's
            continue
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        imgs.append(np.asarray(im.resize((side, side), Image.BILINEAR), dtype=np.uint8))
        ys.append(labels[i])
    return mirror_check(np.stack(imgs), np.array(ys)) if len(imgs) >= 2 else None
