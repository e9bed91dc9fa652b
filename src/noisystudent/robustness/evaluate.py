"""One-call robustness report: clean, ImageNet-C style corruptions, FGSM, ImageNet-P style flip rates.

`evaluate_robustness` scores one model and returns a JSON-serialisable dict; `compare_to_baseline`
adds the baseline-normalised summaries (mCE, relative mCE, mFR). Every random choice (subset,
corruption noise, perturbation noise) is derived from `seed` and each image's index in the full
array, so a teacher and its students evaluated with the same arguments see identical images; the
result records a hash of the evaluated images and labels, and `compare_to_baseline` refuses to
compare results computed on different data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adversarial import fgsm_accuracy, predict
from .corruptions import CORRUPTIONS, SEVERITIES, array_digest, corrupt_dataset, derive_seed
from .metrics import mean_corruption_error, mean_flip_rate, relative_mce, unnormalized_mean_corruption_error
from .perturbations import PERTURBATIONS, flip_rate, perturbation_sequence

__all__ = ["evaluate_robustness", "compare_to_baseline", "eps_key", "subset_indices"]

DEFAULT_FGSM_EPS: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)


def eps_key(eps: float) -> str:
    """The result key of an FGSM eps: 5 decimals, e.g. 1/255 -> "0.00392"."""
    return f"{eps:.5f}"


def subset_indices(n: int, max_images: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset (random, not the first k: datasets are often
    sorted by class)."""
    if max_images is None or max_images >= n:
        return np.arange(n)
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    rng = np.random.default_rng(derive_seed(seed, "subset", n))
    return np.sort(rng.choice(n, size=max_images, replace=False))


def _accuracy(model, images, labels, mean, std, batch_size, device) -> float:
    preds = predict(model, images, mean, std, batch_size=batch_size, device=device)
    return float(np.mean(preds == labels))


def _flip_rate(model, images, indices, kind, length, seed, mean, std, batch_size, device) -> float:
    # Whole sequences per chunk, about batch_size frames, so memory stays bounded.
    chunk = max(1, batch_size // length)
    preds = []
    for start in range(0, len(images), chunk):
        seqs = np.stack([perturbation_sequence(images[i], kind, length,
                                               seed=derive_seed(seed, "perturbation", kind, int(indices[i])))
                         for i in range(start, min(start + chunk, len(images)))])
        frames = seqs.reshape(-1, *images.shape[1:])
        labels = predict(model, frames, mean, std, batch_size=batch_size, device=device)
        preds.append(labels.reshape(len(seqs), length))
    return flip_rate(np.concatenate(preds), kind)


def _checked_arrays(images, labels) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images (NHW gets a channel axis) and their integer labels, or a ValueError."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"images must be a uint8 NHWC array, got {images.dtype} {images.shape}")
    if images.ndim == 3:  # NHW grayscale -> NHW1
        images = images[..., np.newaxis]
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    return images, labels


def _checked_settings(corruptions, severities, perturbations, fgsm_eps) -> tuple[tuple, tuple, tuple, tuple]:
    """The parts to run as tuples (severities int, eps float); unknown names fail here, before the
    slow passes, not after them."""
    corruptions, severities = tuple(corruptions), tuple(int(s) for s in severities)
    perturbations, fgsm_eps = tuple(perturbations), tuple(float(e) for e in fgsm_eps)
    if len({eps_key(e) for e in fgsm_eps}) != len(fgsm_eps):
        raise ValueError(f"fgsm_eps values collide at 5 decimals: {fgsm_eps}")
    for what, given, allowed in (("corruption", corruptions, CORRUPTIONS), ("severity", severities, SEVERITIES),
                                 ("perturbation", perturbations, PERTURBATIONS)):
        unknown = [g for g in given if g not in allowed]
        if unknown:
            raise ValueError(f"unknown {what}(s) {unknown}; allowed: {', '.join(map(str, allowed))}")
    return corruptions, severities, perturbations, fgsm_eps


def _corruption_accuracies(model, images, labels, indices, corruptions, severities, seed, cache_dir,
                           progress, bar, ev) -> dict[str, dict[str, float]]:
    """{corruption: {str(severity): accuracy}}, one bar step per (corruption, severity)."""
    accuracy: dict[str, dict[str, float]] = {}
    for name in corruptions:
        accuracy[name] = {}
        for severity in severities:
            bar.set_postfix_str(f"{name} s{severity}")
            corrupted = corrupt_dataset(images, name, severity, seed, cache_dir,
                                        indices=indices, progress=progress)[(name, severity)]
            accuracy[name][str(severity)] = _accuracy(model, corrupted, labels, **ev)
            bar.update()
    return accuracy


def _fgsm_accuracies(model, images, labels, fgsm_eps, mean, std, batch_size, device) -> dict[str, float]:
    """{eps_key(eps): accuracy under FGSM at eps}."""
    # A uint8 NCHW view: fgsm_accuracy scales each batch, never the whole set, to float.
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    by_eps = fgsm_accuracy(model, pixels, torch.from_numpy(labels), fgsm_eps, mean, std,
                           batch_size=batch_size, device=device)
    return {eps_key(e): acc for e, acc in by_eps.items()}


def _result(images, labels, clean, accuracy, fgsm, flips, settings) -> dict[str, Any]:
    """The JSON-serialisable result of `evaluate_robustness`."""
    errors = {name: [1.0 - accuracy[name][str(s)] for s in settings["severities"]]
              for name in settings["corruptions"]}
    return {
        "num_images": int(len(images)),
        "clean_accuracy": clean,
        "corruptions": accuracy,
        "corruption_error": errors,
        "mean_corruption_error_unnormalized": unnormalized_mean_corruption_error(errors) if errors else None,
        "fgsm": fgsm,
        "flip_rate": flips,
        "data_sha256": array_digest(images, np.asarray(labels, dtype=np.int64)),
        "settings": settings,
    }


def evaluate_robustness(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    fgsm_eps: Sequence[float] = DEFAULT_FGSM_EPS,
    perturbations: Sequence[str] = PERTURBATIONS,
    perturbation_length: int = 10,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` on uint8 NHWC `images` (already at the model's input size) and int `labels`.

    The model gets (x / 255 - mean) / std per channel, runs in eval mode and is moved to `device`.
    Pass empty sequences to skip a part (e.g. `perturbations=()`). Accuracies and error rates are
    fractions in [0, 1]. Keys of "corruptions" are severities as strings, of "fgsm" `eps_key(eps)`.
    """
    images, labels = _checked_arrays(images, labels)
    corruptions, severities, perturbations, fgsm_eps = _checked_settings(
        corruptions, severities, perturbations, fgsm_eps)
    indices = subset_indices(len(images), max_images, seed)
    images, labels = images[indices], labels[indices].astype(np.int64)
    ev = dict(mean=mean, std=std, batch_size=batch_size, device=device)

    total = 1 + len(corruptions) * len(severities) + (1 if fgsm_eps else 0) + len(perturbations)
    with tqdm(total=total, desc="robustness", disable=not progress) as bar:
        bar.set_postfix_str("clean")
        clean = _accuracy(model, images, labels, **ev)
        bar.update()

        accuracy = _corruption_accuracies(model, images, labels, indices, corruptions, severities, seed,
                                          cache_dir, progress, bar, ev)

        fgsm: dict[str, float] = {}
        if fgsm_eps:
            bar.set_postfix_str("fgsm")
            fgsm = _fgsm_accuracies(model, images, labels, fgsm_eps, **ev)
            bar.update()

        flips: dict[str, float] = {}
        for kind in perturbations:
            bar.set_postfix_str(kind)
            flips[kind] = _flip_rate(model, images, indices, kind, perturbation_length, seed, **ev)
            bar.update()

    settings = {
        "corruptions": list(corruptions), "severities": list(severities), "fgsm_eps": list(fgsm_eps),
        "perturbations": list(perturbations), "perturbation_length": int(perturbation_length),
        "seed": int(seed), "max_images": max_images,
    }
    return _result(images, labels, clean, accuracy, fgsm, flips, settings)


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)  # NaN is not valid JSON


def compare_to_baseline(result: Mapping[str, Any], baseline_result: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `result` plus "mCE", "CE", "relative_mCE", "rCE", "mFR" and "FR_ratio" (ratios;
    x100 for the paper's %), normalised by `baseline_result` (an `evaluate_robustness` result, or
    a hand-made dict with "clean_accuracy", "corruption_error" and "flip_rate", e.g. published
    AlexNet errors). Undefined ratios (see `metrics`) are None.
    """
    for key in ("data_sha256", "settings"):
        if key in result and key in baseline_result:
            mine, theirs = result[key], baseline_result[key]
            if key == "settings":  # only the settings that change the images must agree
                keys = ("seed", "severities", "perturbation_length")
                mine, theirs = ({k: s.get(k) for k in keys} for s in (mine, theirs))
            if mine != theirs:
                raise ValueError(f"result and baseline were computed on different data ({key}: "
                                 f"{mine} vs {theirs}); evaluate both with the same images and settings")
    out = dict(result)
    errors = result.get("corruption_error") or {}
    if errors:
        mce, ce = mean_corruption_error(errors, baseline_result["corruption_error"])
        rmce, rce = relative_mce(errors, 1.0 - result["clean_accuracy"],
                                 baseline_result["corruption_error"], 1.0 - baseline_result["clean_accuracy"])
        out.update(mCE=_json_float(mce), CE={k: _json_float(v) for k, v in ce.items()},
                   relative_mCE=_json_float(rmce), rCE={k: _json_float(v) for k, v in rce.items()})
    else:
        out.update(mCE=None, CE={}, relative_mCE=None, rCE={})
    flips = result.get("flip_rate") or {}
    if flips:
        mfr, fr = mean_flip_rate(flips, baseline_result["flip_rate"])
        out.update(mFR=_json_float(mfr), FR_ratio={k: _json_float(v) for k, v in fr.items()})
    else:
        out.update(mFR=None, FR_ratio={})
    return out
