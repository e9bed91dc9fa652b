"""Model-facing helpers for robustness evaluation: batched prediction and FGSM.

FGSM (Goodfellow et al., 2015): x_adv = clip(x + eps * sign(grad_x loss(f(x), y)), 0, 1), with eps
and the clip in *pixel* space [0, 1] while the model sees (x - mean) / std. Adversarial images
stay float (not re-quantised to 8 bits).

Our own few lines rather than torchattacks (see docs/robustness.md): no extra dependency,
normalisation explicit in the forward pass, one gradient per batch reused for every eps with a
summed loss (a sample's gradient never shrinks with batch size), eps = 0 equal to clean accuracy
by construction, and every submodule's train/eval flag restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import normalize

__all__ = ["predict", "fgsm_attack", "fgsm_accuracy"]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _stats(mean: Sequence[float] | float, std: Sequence[float] | float, channels: int,
           device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    for what, t in (("mean", m), ("std", s)):
        if t.shape[1] not in (1, channels):
            raise ValueError(f"{what} has {t.shape[1]} values but the images have {channels} channels")
    if torch.any(s <= 0):
        raise ValueError(f"std must be positive, got {std}")
    return m, s


def _to_unit(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    if not batch.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {batch.dtype}")
    return batch.float()


def predict(
    model: nn.Module,
    images: np.ndarray,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Top-1 labels (int64, shape (N,)) for uint8 NHWC `images`, in eval mode, without gradients.

    The model is moved to `device` (in place, as nn.Module.to does)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 NHWC array, got {images.dtype} {images.shape}")
    model.to(device)
    m, s = _stats(mean, std, images.shape[3], device)
    out = np.empty(len(images), dtype=np.int64)
    with _eval_mode(model), torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = _to_unit(torch.from_numpy(images[i:i + batch_size]).to(device).permute(0, 3, 1, 2))
            out[i:i + batch_size] = model(normalize(x, m, s)).argmax(1).cpu().numpy()
    return out


def _gradient_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
                   s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sign(d loss / d x) in pixel space, and the clean logits of the same forward pass."""
    x = x.detach().requires_grad_(True)
    logits = model(normalize(x, m, s))
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)  # only w.r.t. the input: parameters' .grad untouched
    return grad.sign(), logits.detach()


def _check_eps(eps_list: Iterable[float]) -> list[float]:
    eps_list = [float(e) for e in eps_list]
    bad = [e for e in eps_list if not (math.isfinite(e) and e >= 0)]
    if bad:
        raise ValueError(f"eps must be finite and >= 0 (pixel space, e.g. 4/255), got {bad}")
    return eps_list


def fgsm_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
) -> torch.Tensor:
    """FGSM adversarial versions of one batch of float NCHW `images` in [0, 1] (same device as
    the model), clamped to [0, 1]. The model is put in eval mode for the attack and restored."""
    (eps,) = _check_eps([eps])
    x = _to_unit(images)
    m, s = _stats(mean, std, x.shape[1], x.device)
    with _eval_mode(model):
        sign, _ = _gradient_sign(model, x, torch.as_tensor(labels, device=x.device).long(), m, s)
    return (x + eps * sign).clamp_(0.0, 1.0)


def fgsm_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    eps_list: Iterable[float],
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict[float, float]:
    """Top-1 accuracy under FGSM for each eps: {eps: accuracy}.

    `images`: NCHW in pixel space, float in [0, 1] (or uint8, scaled by 1/255 per batch to save
    memory); they may live on the CPU, batches are moved to `device`. eps = 0 gives the clean
    accuracy exactly. The model is moved to `device` and evaluated in eval mode.
    """
    eps_list = _check_eps(eps_list)
    labels = torch.as_tensor(labels).long()
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need N >= 1 NCHW images and N labels, "
                         f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    model.to(device)
    m, s = _stats(mean, std, images.shape[1], device)
    correct = dict.fromkeys(eps_list, 0)
    with _eval_mode(model):
        for i in range(0, len(images), batch_size):
            x = _to_unit(images[i:i + batch_size].to(device))
            y = labels[i:i + batch_size].to(device)
            sign, clean_logits = _gradient_sign(model, x, y, m, s)
            for eps in eps_list:
                if eps == 0:
                    preds = clean_logits.argmax(1)
                else:
                    with torch.no_grad():
                        preds = model(normalize((x + eps * sign).clamp_(0.0, 1.0), m, s)).argmax(1)
                correct[eps] += int((preds == y).sum())
    return {eps: c / len(images) for eps, c in correct.items()}
