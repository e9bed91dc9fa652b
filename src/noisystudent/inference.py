"""The one inference loop: a model over a source, in batches, with clean eval preprocessing.

Evaluation (`stages/evaluate.py`), labeling the pool (`labels.predict_shard`) and `predict` all
read their logits from `iter_logits`, so preprocessing (resize, normalise), device transfer and
flip test-time augmentation are done the same way everywhere. Setting eval mode (or the noised
teacher's partial train mode) stays with the caller.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .data import eval_batches

__all__ = ["iter_logits"]


@torch.no_grad()
def iter_logits(model, source, image_size: int, mean, std, *, batch_size: int = 256, device="cpu",
                workers: int = 0, skip_bad: bool = False, start: int = 0, stop: int | None = None,
                hflip: bool = False, on_device: bool = False) -> Iterator[tuple[list[torch.Tensor], np.ndarray]]:
    """Yield ([logits] or, with `hflip`, [logits, logits of the mirrored images], source rows) per
    batch, as float32 CPU tensors, or left on `device` with `on_device` (no host sync per batch: a
    caller that gathers a shard's worth before copying keeps a GPU busy). Undecodable images are
    dropped when `skip_bad`."""
    move = (lambda t: t.float()) if on_device else (lambda t: t.float().cpu())
    for x, idx in eval_batches(source, batch_size, image_size, mean, std, start=start, stop=stop,
                               workers=workers, skip_bad=skip_bad, device=device):
        x = x.to(device)
        views = [move(model(x))]
        if hflip:
            views.append(move(model(x.flip(-1))))
        yield views, idx
