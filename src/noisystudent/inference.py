"""The one inference loop: a model over a source, in batches, with clean eval preprocessing.

Evaluation (`stages/evaluate.py`), labeling the pool (`labels.predict_shard`) and `predict` all
read their logits from `iter_logits`, so preprocessing (resize, normalise), device transfer and
test-time augmentation (flip, shift) are done the same way everywhere. Setting eval mode (or the
noised teacher's partial train mode) stays with the caller.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .data import eval_batches

__all__ = ["iter_logits", "tta_views", "tta_view_count", "mean_view_probs", "inference_batch_size"]


def inference_batch_size(batch_size: int | str, device, image_size: int) -> int:
    """`label.batch_size`, `evaluate.batch_size` or a `--batch-size`, with `auto` resolved: 1,024 for
    small images (<= 64 px) on a CUDA GPU, else 256. Why: at 32 px a batch of 256 is done on an H200
    before the CPU has queued the next one (the eager forward's ~100 kernel launches), so labeling
    ran at 75% of bare inference, at 1,024 at 135% (docs/benchmarks/gpu.md); large images keep the
    GPU busy at 256 already, and need the memory. The size changes speed, not results (eval mode:
    each image's logits are its own, up to the rounding of batched kernels)."""
    if batch_size != "auto":
        return int(batch_size)
    return 1024 if torch.device(device).type == "cuda" and image_size <= 64 else 256


def tta_view_count(hflip: bool, shift: int) -> int:
    """How many forward passes `tta_views` asks for (the label stage's compute counts them)."""
    return (2 if hflip else 1) * (3 if shift > 0 else 1)


def tta_views(x: torch.Tensor, hflip: bool = False, shift: int = 0) -> list[torch.Tensor]:
    """The test-time views of a normalised NCHW batch: the images, their mirrors with `hflip`, and
    with `shift` > 0 each of those moved by `shift` pixels diagonally both ways (up-left and
    down-right, the uncovered border filled by reflection). The first view is always `x` itself.
    Training's random crop taught the model small translations, so averaging its probabilities
    over them smooths its errors; airbench94 (Jordan 2024) scores with flips and translations."""
    views = [x, x.flip(-1)] if hflip else [x]
    if shift <= 0:
        return views
    h, w = x.shape[-2:]
    if shift >= min(h, w):
        raise ValueError(f"shift {shift} must be smaller than the image ({h}x{w})")
    out = []
    for v in views:
        p = F.pad(v, (shift, shift, shift, shift), mode="reflect")
        # output pixel (i, j) = v(i + s, j + s), then v(i - s, j - s)
        out += [v, p[..., 2 * shift:2 * shift + h, 2 * shift:2 * shift + w], p[..., :h, :w]]
    return out


def mean_view_probs(views: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """The probabilities of each image averaged over its test-time views' logits (`iter_logits`): what
    labeling stores, evaluation scores and `predict` returns, so the three agree."""
    from .pseudo import probs_from_logits
    return torch.stack([probs_from_logits(v, temperature) for v in views]).mean(0)


@torch.no_grad()
def iter_logits(model, source, image_size: int, mean, std, *, batch_size: int = 256, device="cpu",
                workers: int = 0, skip_bad: bool = False, start: int = 0, stop: int | None = None,
                ranges: list[tuple[int, int]] | None = None, hflip: bool = False, shift: int = 0,
                on_device: bool = False
                ) -> Iterator[tuple[list[torch.Tensor], np.ndarray]]:
    """Yield (a list of logits, one per test-time view of `tta_views(x, hflip, shift)`: [logits]
    without TTA, the first entry always the plain images', source rows) per batch, as float32 CPU
    tensors, or left on `device` with `on_device` (no host sync per batch: a caller that gathers a
    shard's worth before copying keeps a GPU busy). Rows [start, stop), or each of `ranges` in turn
    through one loader (`eval_batches`). Undecodable images are dropped when `skip_bad`."""
    move = (lambda t: t.float()) if on_device else (lambda t: t.float().cpu())
    for x, idx in eval_batches(source, batch_size, image_size, mean, std, start=start, stop=stop,
                               ranges=ranges, workers=workers, skip_bad=skip_bad, device=device):
        x = x.to(device)
        yield [move(model(v)) for v in tta_views(x, hflip, shift)], idx
