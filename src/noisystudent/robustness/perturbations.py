"""ImageNet-P style perturbation sequences and the flip rate (Hendrycks & Dietterich, ICLR 2019).

A perturbation sequence is a short "video" of one image under a slowly changing perturbation; the
flip rate measures how often a model's prediction changes between frames. Step sizes follow
Hendrycks' CIFAR-10-P generator (small images are this project's common case). Noise frames are
independent draws, so `flip_rate` compares each with the first (clean) frame; other kinds compare
consecutive frames (ImageNet-P `flip_prob`, difficulty 1).

Not byte-identical to the published ImageNet-P videos (MP4, 30 steps): compare models measured
here, not published mFR numbers. Step sizes and framing details: docs/robustness.md.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PERTURBATIONS", "NOISE_PERTURBATIONS", "perturbation_sequence", "flip_rate"]

PERTURBATIONS: tuple[str, ...] = ("translate", "gaussian_noise", "brightness", "rotate", "scale")
# Kinds whose frames are independent draws around the clean image, not a temporal progression.
NOISE_PERTURBATIONS: frozenset[str] = frozenset({"gaussian_noise"})

_TRANSLATE_PX = 1.0
_ROTATE_DEG = 1.0
_SCALE_STEP = 0.02
_BRIGHTNESS_STEP = 0.015
_NOISE_SIGMA = 0.02


def _check_kind(kind: str) -> None:
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; allowed: {', '.join(PERTURBATIONS)}")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # Rounded, not truncated as CIFAR-P does: truncation darkens every frame by half a level on
    # average and makes the unperturbed brightness frame differ from the clean image.
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _affine(image: np.ndarray, angle: float = 0.0, scale: float = 1.0, dx: float = 0.0) -> np.ndarray:
    """Rotate/scale about the image centre, then shift right by dx; bilinear, black fill."""
    import cv2

    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, scale)
    matrix[0, 2] += dx
    out = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(image.shape)  # cv2 drops a trailing channel axis of size 1


def _brightness(image: np.ndarray, delta: float) -> np.ndarray:
    x = image.astype(np.float64) / 255.0
    if image.shape[2] == 1:  # for gray pixels the HSV value is the pixel itself
        x = np.clip(x + delta, 0, 1)
    else:
        import skimage.color as skcolor

        hsv = skcolor.rgb2hsv(x)
        hsv[..., 2] = np.clip(hsv[..., 2] + delta, 0, 1)
        x = skcolor.hsv2rgb(hsv)
    return _to_uint8(x)


def perturbation_sequence(image: np.ndarray, kind: str, length: int = 10, seed: int = 0) -> np.ndarray:
    """Return `length` frames (T, *image.shape), uint8, of `image` (HW, HW1 or HW3 uint8).

    `seed` only matters for noise kinds; the geometric and brightness sequences are deterministic.
    """
    _check_kind(kind)
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"length must be an int >= 2 (a sequence needs two frames), got {length!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        raise ValueError(f"image must be uint8 HW, HWx1 or HWx3, got {image.dtype} {image.shape}")
    hwc = image.reshape(*image.shape[:2], -1)

    if kind in NOISE_PERTURBATIONS:
        rng = np.random.default_rng(seed)
        x = hwc / 255.0
        frames = [hwc] + [_to_uint8(x + _NOISE_SIGMA * rng.standard_normal(x.shape)) for _ in range(length - 1)]
    else:
        offsets = np.arange(length) - (length - 1) // 2  # centred: the clean image is in the middle
        if kind == "translate":
            frames = [_affine(hwc, dx=_TRANSLATE_PX * o) for o in offsets]
        elif kind == "rotate":
            frames = [_affine(hwc, angle=_ROTATE_DEG * o) for o in offsets]
        elif kind == "scale":
            frames = [_affine(hwc, scale=1.0 + _SCALE_STEP * o) for o in offsets]
        else:  # brightness
            frames = [_brightness(hwc, _BRIGHTNESS_STEP * o) for o in offsets]
    return np.stack(frames).reshape(length, *image.shape)


def flip_rate(preds: np.ndarray, kind: str) -> float:
    """Fraction of frame comparisons whose top-1 prediction differs; `preds` is (N, T) labels.

    Noise kinds compare frame t with frame 0; the others compare frame t with frame t-1.
    """
    _check_kind(kind)
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[0] < 1 or preds.shape[1] < 2:
        raise ValueError(f"preds must have shape (N >= 1, T >= 2), got {preds.shape}")
    reference = preds[:, :1] if kind in NOISE_PERTURBATIONS else preds[:, :-1]
    # Every sequence has T-1 comparisons, so the overall mean equals ImageNet-P's mean of
    # per-sequence means.
    return float(np.mean(preds[:, 1:] != reference))
