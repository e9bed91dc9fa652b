"""Batch sources over images decoded once into one uint8 tensor, noised as a batch on the device.

The CPU path (`batches.LabeledBatches` & co.) decodes, resizes and augments every image in DataLoader
workers with PIL, every epoch. On a GPU those workers are the bottleneck (issue 15: the student ran
at 31% of a bare loop on an H200 with ten cores busy on PIL). Here a source that fits in memory is
decoded once, at the training size, into one (N, C, H, W) uint8 tensor kept on the training device;
each step indexes its rows there and `batch_noise.BatchNoise` applies crop / flip / RandAugment /
Cutout to the whole batch, each image with its own draws (the same ops, magnitudes and
probabilities as the PIL path), before normalising.

Same contract as `batches.py`: `steps_per_epoch(world)` and `epoch(seed, epoch, steps, rank, world,
pin)` yielding one `Batch` per step. The order is `EpochSampler`'s (so rank shares and the cycling
of a small labeled set are the CPU path's), and each step's noise comes from a generator seeded by
(seed, epoch, step, rank): a resumed run replays any step exactly, on CPU and GPU alike.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch

from .batch_noise import BatchNoise, GraphedNoise, step_generator
from .batches import Batch
from .data.loaders import EpochSampler, load_or_skip, seed_for
from .data.transforms import normalize, resize_for_training
from .data.sources import Source

__all__ = ["decode_all", "TensorLabeledBatches", "TensorPseudoBatches"]


def decode_all(source: Source, image_size: int, skip_bad: bool) -> tuple[torch.Tensor, np.ndarray]:
    """(uint8 (N, C, S, S) tensor, the source rows it holds): every image decoded once and resized
    to the training size as the CPU path does (PIL bilinear); undecodable rows are dropped when
    `skip_bad`, else BadImage propagates (the `fail` policy)."""
    images = getattr(source, "images", None)
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:3] == (image_size, image_size):
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous(), np.arange(len(source))
    out, rows = [], []
    for i in range(len(source)):
        arr = load_or_skip(source, i, skip_bad)
        if arr is None:
            continue
        out.append(resize_for_training(arr, image_size))
        rows.append(i)
    if not out:
        return torch.zeros(0, source.in_chans, image_size, image_size, dtype=torch.uint8), np.zeros(0, np.int64)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous(), np.asarray(rows, np.int64)


class _TensorRows:
    """Rows of a decoded uint8 tensor -> noised, normalised float batches on the tensor's device."""

    def __init__(self, images: torch.Tensor, noise: BatchNoise, mean, std, batch_size: int, tag: str):
        self.images, self.noise, self.batch_size, self.tag = images, noise, batch_size, tag
        self.mean, self.std = list(mean), list(std)
        # On CUDA the dense noise is replayed as a CUDA graph, one per batch shape: eager, its ~1,100
        # small kernels per batch cost the host ~17 ms (H200, 2 RandAugment layers, batch 128), more
        # than a small model's whole training step (docs/benchmarks/gpu.md).
        self.graphs: dict = {}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def made_on_device(self) -> bool:
        """Making a batch only queues GPU work (never waits on the CPU): the trainer may make the
        next one on a side stream ahead of time (`engine.prefetch_on_side_stream`)."""
        return self.images.is_cuda

    def steps_per_epoch(self, world: int = 1) -> int:
        return max(1, math.ceil(len(self) / (self.batch_size * world)))

    def rows(self, seed: int, epoch: int, steps: int, rank: int, world: int) -> Iterator[torch.Tensor]:
        """Each step's row indices, on the images' device: the epoch's order crosses the bus once,
        not once per step (a per-step copy from pageable memory is a host sync on CUDA)."""
        order = torch.tensor(list(EpochSampler(len(self), steps * self.batch_size, seed_for(seed, epoch, self.tag),
                                               rank, world)), dtype=torch.long).to(self.images.device)
        for i in range(steps):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]

    def noised(self, rows: torch.Tensor, seed: int, epoch: int, step: int, rank: int) -> torch.Tensor:
        g = step_generator(seed_for(seed, epoch, self.tag), step, rank)
        x = self.images[rows]
        d = self.noise.draw(x.shape[0], tuple(x.shape[-2:]), g)
        graph = self._graph(x)
        x = graph(x, d) if graph is not None else self.noise.apply(x, d)
        return normalize(x.float().div_(255.0), self.mean, self.std)    # a new tensor: the graph's
                                                                        # output buffer may be reused

    def _graph(self, x: torch.Tensor) -> Optional[GraphedNoise]:
        """The CUDA graph of the noise for x's shape, captured on first use; None off CUDA or when
        the noise is forced sparse (it needs host syncs, which a graph cannot hold)."""
        if not x.is_cuda or self.noise.dense is False:
            return None
        key = tuple(x.shape)
        if key not in self.graphs:
            self.graphs[key] = GraphedNoise(self.noise, key, x.device)
        return self.graphs[key]


class TensorLabeledBatches(_TensorRows):
    """`LabeledBatches` over a decoded tensor: batch_size labeled images per step and rank."""

    def __init__(self, images, labels, noise: BatchNoise, mean, std, batch_size: int):
        super().__init__(images, noise, mean, std, batch_size, "labeled")
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(images.device)

    def epoch(self, seed: int, epoch: int, steps: int, rank: int = 0, world: int = 1,
              pin: bool = False) -> Iterator[Optional[Batch]]:
        for i, rows in enumerate(self.rows(seed, epoch, steps, rank, world)):
            yield Batch(self.noised(rows, seed, epoch, i, rank), self.labels[rows])


class TensorPseudoBatches(_TensorRows):
    """`PseudoBatches` over a decoded tensor; `copies` repeats rows (class balancing) by index only."""

    def __init__(self, images, targets, copies, noise: BatchNoise, mean, std, batch_size: int):
        super().__init__(images, noise, mean, std, batch_size, "pseudo")
        self.index = torch.from_numpy(np.repeat(np.arange(len(images)),
                                                np.asarray(copies, dtype=np.int64))).to(images.device)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32)).to(images.device)
        self.labels_none = torch.zeros(0, dtype=torch.long, device=images.device)

    def __len__(self) -> int:
        return len(self.index)

    def epoch(self, seed: int, epoch: int, steps: int, rank: int = 0, world: int = 1,
              pin: bool = False) -> Iterator[Optional[Batch]]:
        for i, rows in enumerate(self.rows(seed, epoch, steps, rank, world)):
            src = self.index[rows]
            yield Batch(self.noised(src, seed, epoch, i, rank), self.labels_none, self.targets[src])
