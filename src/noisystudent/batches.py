"""What one training step sees: batch sources and per-step losses, handed to `engine.fit`.

A *batch source* says how long an epoch is and yields one `Batch` per optimizer step; a *step loss*
turns the model's logits for that batch into the loss. The trainer knows nothing else about the
method, so a new training mode is a new source or loss, not a new branch in the loop:

    teacher / supervised baseline   LabeledBatches     CE (+ label smoothing)
    noisy student (the paper)       JointBatches       CE(labeled) + w * softCE(pseudo), one forward
    two-step ablation, phase 1      PseudoBatches      softCE(pseudo)

Every epoch's order is a pure function of (seed, epoch, rank), so a resumed run replays exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from .data.loaders import EpochLoader, seed_for
from .pseudo import joint_loss

__all__ = ["Batch", "LabeledBatches", "JointBatches", "PseudoBatches", "StepLoss", "joint_step_loss"]


@dataclass
class Batch:
    """One step's images: the first len(y) rows are labeled (class ids `y`), the rest pseudo-labeled
    (target distributions `targets`, or None when there are none)."""
    x: torch.Tensor
    y: torch.Tensor
    targets: Optional[torch.Tensor] = None

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        t = None if self.targets is None else self.targets.to(device, non_blocking=non_blocking)
        return Batch(self.x.to(device, non_blocking=non_blocking), self.y.to(device, non_blocking=non_blocking), t)

    def __len__(self) -> int:
        return len(self.x)


# (logits, batch) -> (scalar loss, {part name: float}); logits are float32
StepLoss = Callable[[torch.Tensor, Batch], "tuple[torch.Tensor, dict]"]


def joint_step_loss(unlabeled_weight: float = 1.0, label_smoothing: float = 0.0) -> StepLoss:
    """The paper's loss on a joint batch: CE on the labeled rows (smoothed), plus `unlabeled_weight`
    times soft cross-entropy on the pseudo-labeled rows. With no pseudo rows it is plain CE."""
    def loss(logits: torch.Tensor, b: Batch):
        ts = b.targets if b.targets is not None else logits.new_zeros((0, logits.shape[1]))
        return joint_loss(logits, len(b.y), b.y, ts, unlabeled_weight, label_smoothing)
    return loss


class _LoaderBatches:
    """`batch_size` images per step and rank from `dataset` through a seeded DataLoader; an epoch is
    one pass over the dataset. `tag` keeps the orders of the labeled and pseudo streams apart."""
    tag = ""
    made_on_device = False      # a batch comes from CPU workers: asking early would stall the GPU

    def __init__(self, dataset, batch_size: int, workers: int = 0):
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        self._loader: EpochLoader | None = None       # built on the first epoch, kept for the rest

    def steps_per_epoch(self, world: int = 1) -> int:
        return max(1, math.ceil(len(self.dataset) / (self.batch_size * world)))

    def epoch(self, seed: int, epoch: int, steps: int, rank: int = 0, world: int = 1,
              pin: bool = False) -> Iterator[Optional[Batch]]:
        if self._loader is None:
            self._loader = EpochLoader(self.dataset, self.batch_size, self.workers, pin)
        for b in self._loader.epoch(steps * self.batch_size, seed_for(seed, epoch, self.tag), rank, world):
            # None: every image of the batch was undecodable (skip policy)
            yield None if b is None else self.batch(b[0], b[1])


class LabeledBatches(_LoaderBatches):
    """Labeled images (class ids); an epoch is one pass over the labeled set."""
    tag = "labeled"

    @staticmethod
    def batch(x, y) -> Batch:
        return Batch(x, y)


class PseudoBatches(_LoaderBatches):
    """Pseudo-labeled images only (target distributions); an epoch is one pass over the
    (class-balanced) selection."""
    tag = "pseudo"

    @staticmethod
    def batch(x, targets) -> Batch:
        return Batch(x, torch.zeros(0, dtype=torch.long), targets)


class JointBatches:
    """The paper's joint batches: each step one labeled batch and one pseudo-labeled batch (ratio x
    as large), concatenated so one forward pass (and BatchNorm) sees both. An epoch is one pass over
    the selection, as the paper counts student epochs over the unlabeled data; the small labeled set
    is cycled as often as that takes. Any two sources (DataLoader or on-device) combine."""

    def __init__(self, labeled, pseudo):
        self.labeled, self.pseudo = labeled, pseudo

    @classmethod
    def of_datasets(cls, labeled, pseudo, batch_size: int, ratio: int, workers: int = 0) -> "JointBatches":
        if ratio < 1 or len(pseudo) == 0:
            raise ValueError("joint batches need ratio >= 1 and a non-empty pseudo-labeled set")
        return cls(LabeledBatches(labeled, batch_size, workers), PseudoBatches(pseudo, batch_size * ratio, workers))

    @property
    def made_on_device(self) -> bool:
        return getattr(self.labeled, "made_on_device", False) and getattr(self.pseudo, "made_on_device", False)

    def steps_per_epoch(self, world: int = 1) -> int:
        return self.pseudo.steps_per_epoch(world)

    def epoch(self, seed: int, epoch: int, steps: int, rank: int = 0, world: int = 1,
              pin: bool = False) -> Iterator[Optional[Batch]]:
        for lb, pb in zip(self.labeled.epoch(seed, epoch, steps, rank, world, pin),
                          self.pseudo.epoch(seed, epoch, steps, rank, world, pin)):
            yield (None if lb is None or pb is None else
                   Batch(torch.cat([lb.x, pb.x.to(lb.x.device)]), lb.y, pb.targets))
