"""Datasets and loaders: labeled, pseudo-labeled (joint batches), and clean eval iteration.

Determinism: the sampler hands every item its own augmentation seed, a pure function of (stream
seed, rank, position in the epoch); the dataset seeds Python's, NumPy's and torch's RNGs with it
before the transform. So an image's RandAugment/crop/flip/Cutout draws do not depend on which worker
decodes it or on how many workers there are, a run resumed at an epoch boundary replays exactly
what an uninterrupted run would have done, and one DataLoader with persistent workers serves every
epoch of a stage (`EpochLoader`: no worker start-up per epoch).
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..distributed import local_world_size
from .memory import fit_workers_to_shm
from .decode import BadImage
from .sources import ArraySource, Source
from .transforms import to_tensor_batch

__all__ = ["LabeledDataset", "PseudoDataset", "EpochSampler", "EpochLoader", "seed_for", "eval_batches",
           "RangeBatches", "collate_skip_bad", "decode_rows", "resolve_workers", "resolve_decode_workers",
           "AUTO_WORKERS_MAX"]

# `data.workers: auto` on a GPU: this many decode processes at most (8 kept an H200 fed with CIFAR
# JPEGs at 32 px, docs/benchmarks/gpu.md)
AUTO_WORKERS_MAX = 8


def resolve_workers(workers: int | str, device, cpus: int | None = None, local_ranks: int | None = None) -> int:
    """`data.workers` as a process count for the loaders that feed a model. `auto`: none when training
    on the CPU, where a worker takes a core from the model (on 2 cores one loader worker cost the
    teacher 2-20% of its speed in the throughput tables, docs/benchmarks/throughput.md); on a GPU the
    cores this process may use (its share of the machine under torchrun, `LOCAL_WORLD_SIZE`) less one
    for the main process, at most AUTO_WORKERS_MAX: with none, decoding, caching and labeling run on
    one core while the GPU waits. The count changes speed only: every image's noise is seeded by
    itself, and rows come back in order."""
    if workers != "auto":
        return int(workers)
    if torch.device(device).type == "cpu":
        return 0
    return max(0, min(AUTO_WORKERS_MAX, _cpu_share(cpus, local_ranks) - 1))


def resolve_decode_workers(workers: int | str, device, cpus: int | None = None,
                           local_ranks: int | None = None) -> int:
    """`data.workers` as a process count for decoding a whole source once (`Source.cache`), before
    any model runs. `auto` on a CPU: every core of this process's share (at most AUTO_WORKERS_MAX;
    none on one core), because no model competes for them there: on 2 cores, 2 workers cached 41,000
    CIFAR JPEGs 1.7-2.0x faster than none (docs/benchmarks/throughput.md). On a GPU as
    `resolve_workers`. A number is the user's, for both."""
    if workers != "auto" or torch.device(device).type != "cpu":
        return resolve_workers(workers, device, cpus, local_ranks)
    share = _cpu_share(cpus, local_ranks)
    return min(AUTO_WORKERS_MAX, share) if share > 1 else 0


def _cpu_share(cpus: int | None, local_ranks: int | None) -> int:
    """Cores this process may use: its affinity mask (a container's or taskset's limit, not the
    machine's count) divided among torchrun's ranks on this machine."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus // max(1, local_ranks or local_world_size())


def seed_for(*parts) -> int:
    """A 63-bit seed from a tuple of ints/strings, stable across processes and Python versions."""
    import hashlib
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def load_or_skip(source: Source, i: int, skip_bad: bool):
    """Image i, or None when it cannot be decoded and `skip_bad` (the collate drops Nones); without
    `skip_bad` the BadImage propagates (the `fail` policy). Every dataset here loads through this."""
    try:
        return source.load(i)
    except BadImage:
        if skip_bad:
            return None
        raise


@contextlib.contextmanager
def _seeded(key):
    """A dataset key: a plain row, or (row, seed) from `SeededItems`, whose seed is applied to every
    RNG the train transforms draw from (timm's RandAugment: Python's and NumPy's; torchvision's
    crop/flip and Cutout: torch's CPU generator) while the item is made. In the main process
    (workers=0) torch's generator is restored afterwards, so the training step's dropout and
    stochastic depth are not tied to the images; Python's and NumPy's global RNGs are left seeded
    (nothing in a training step draws from them, and restoring NumPy's costs ~110 us an image)."""
    if not isinstance(key, tuple):
        yield int(key)
        return
    i, s = key
    gen = torch.random.default_generator
    saved = gen.get_state() if get_worker_info() is None else None
    random.seed(s)
    np.random.seed(s & 0xFFFFFFFF)
    gen.manual_seed(s)
    try:
        yield int(i)
    finally:
        if saved is not None:
            gen.set_state(saved)


class LabeledDataset(Dataset):
    """(image tensor, class index, row) from a labeled source."""

    def __init__(self, source: Source, transform, skip_bad: bool = False):
        self.source, self.transform, self.skip_bad = source, transform, skip_bad

    def __len__(self):
        return len(self.source)

    def __getitem__(self, key):
        with _seeded(key) as i:
            img = load_or_skip(self.source, i, self.skip_bad)
            return None if img is None else (self.transform(img), int(self.source.labels[i]), i)


class PseudoDataset(Dataset):
    """(image tensor, target vector, row) for selected pool rows; `copies` repeats rows (balancing)."""

    def __init__(self, source: Source, rows: np.ndarray, targets: np.ndarray, copies: np.ndarray, transform):
        self.source, self.transform = source, transform
        self.rows = np.repeat(np.asarray(rows, dtype=np.int64), copies)
        self.targets = torch.from_numpy(np.repeat(np.asarray(targets, dtype=np.float32), copies, axis=0))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        with _seeded(key) as i:
            row = int(self.rows[i])
            img = load_or_skip(self.source, row, True)    # the pool's policy: an unreadable image drops out
            return None if img is None else (self.transform(img), self.targets[i], row)


def collate_skip_bad(batch):
    """Default collate, minus items that came back None (undecodable images under `skip`)."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.utils.data.default_collate(batch)


class EpochSampler(Sampler):
    """`num_samples` indices from back-to-back seeded permutations of range(n).

    Serves both the plain epoch (num_samples == n) and the "infinite" labeled stream of joint batches
    (num_samples > n wraps into a fresh permutation). With `rank/world` it yields this rank's
    interleaved share, the DistributedSampler convention.
    """

    def __init__(self, n: int, num_samples: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.num_samples, self.seed, self.rank, self.world = n, num_samples, seed, rank, world

    def _stream(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        it = self._stream()
        total = self.num_samples * self.world
        for k in range(total):
            i = next(it)
            if k % self.world == self.rank:
                yield i

    def __len__(self):
        return self.num_samples


class SeededItems(Sampler):
    """`EpochSampler`'s order as (row, item seed) pairs; `reset` points it at the next epoch."""

    def __init__(self, n: int):
        self.n = n
        self.reset(0, 0)

    def reset(self, num_samples: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.num_samples, self.seed, self.rank, self.world = num_samples, seed, rank, world

    def __iter__(self):
        order = EpochSampler(self.n, self.num_samples, self.seed, self.rank, self.world)
        for k, i in enumerate(order):
            yield i, seed_for(self.seed, "item", self.rank, k)

    def __len__(self):
        return self.num_samples


class EpochLoader:
    """One DataLoader for all epochs of a stage: workers persist (and prefetch) across epochs
    instead of starting again each epoch; `epoch(...)` re-points the sampler and iterates."""

    def __init__(self, dataset, batch_size: int, workers: int = 0, pin_memory: bool = False):
        self.sampler = SeededItems(len(dataset))
        # each item is a float32 C x S x S tensor; 4 batches per worker wait in shared memory
        tf = getattr(dataset, "transform", None)
        size, chans = getattr(tf, "image_size", 0), getattr(tf, "in_chans", 3)
        workers = fit_workers_to_shm(workers, batch_size * 4 * chans * size * size, 4, "data.workers (training)")
        # its own generator: the iterator's base seed must not come from (and advance) the global
        # torch RNG that dropout and stochastic depth draw from; items carry their own seeds anyway
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 generator=torch.Generator().manual_seed(0),
                                 drop_last=True, collate_fn=collate_skip_bad, pin_memory=pin_memory,
                                 persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)

    def epoch(self, num_samples: int, seed: int, rank: int = 0, world: int = 1):
        self.sampler.reset(num_samples, seed, rank, world)
        return iter(self.loader)


def _eval_item_bytes(source: Source, row: int, image_size: int) -> int:
    """Bytes one image of `source` takes in an eval batch, judged by image `row` (one decode): its
    uint8 pixels, or the float32 input when it is larger (`_EvalDataset`), which bounds any image."""
    most = 4 * source.in_chans * image_size ** 2
    try:
        h, w, c = source.load(row).shape
    except BadImage:
        return most
    return h * w * c if h * w <= 4 * image_size ** 2 else most


class _EvalDataset(Dataset):
    """Image i as uint8 HWC, or, when it has more than 4 x image_size**2 pixels (its uint8 pixels
    then outweigh the float32 input the model takes), already made into that input (1, C, S, S)
    by `to_tensor_batch` on the CPU, right after decoding: a worker then holds, and the loader's
    queue carries, batches of the model's size, not the photos' (labeling 12-MP photos at 224 px
    held 4.0-4.1 GiB with 2 workers, 1.7 GiB since; docs/benchmarks/throughput.md)."""

    def __init__(self, source: Source, skip_bad: bool, image_size: int, mean, std):
        self.source, self.skip_bad = source, skip_bad
        self.image_size, self.mean, self.std = image_size, mean, std

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        img = load_or_skip(self.source, i, self.skip_bad)
        if img is None:
            return None
        if img.shape[0] * img.shape[1] > 4 * self.image_size ** 2:
            img = to_tensor_batch(img[None], self.image_size, self.mean, self.std)
        return img, i

    def collate(self, batch):
        """(images, rows) without the undecodable (None) items, or None when none is left; runs in the
        worker. Same-shape uint8 images are stacked into one uint8 tensor: it reaches the main process
        through shared memory (a list of arrays is pickled), can be pinned by the loader's thread, and
        is resized and normalised on the device. A batch of mixed sizes, or holding converted images,
        is converted here, image by image (what the main process did before, bit for bit)."""
        batch = [b for b in batch if b is not None]
        if not batch:
            return None
        imgs, idx = zip(*batch)
        if _one_shape(imgs):
            return torch.from_numpy(np.stack(imgs)), list(idx)
        return torch.cat([im if isinstance(im, torch.Tensor) else
                          to_tensor_batch(im[None], self.image_size, self.mean, self.std) for im in imgs]), list(idx)


class _DecodeRows(Dataset):
    def __init__(self, source: Source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        try:
            return i, self.source.load(i)
        except BadImage as e:        # handed to the caller, which skips or stops (not a worker traceback)
            return i, e


def _stack_rows(batch):
    """In the worker: (first row, one uint8 stack) when every image of the batch decoded to one
    shape (one array crosses to the main process, not 64), else the (row, image) list itself."""
    imgs = [im for _, im in batch]
    return (batch[0][0], np.stack(imgs)) if _one_shape(imgs) else batch


def _one_shape(imgs) -> bool:
    """All decoded arrays (no tensor, no BadImage) of one shape: stackable into one array."""
    return all(isinstance(im, np.ndarray) for im in imgs) and len({im.shape for im in imgs}) == 1


def decode_rows(source: Source, workers: int = 0, batch_size: int = 64):
    """Yield (row, uint8 HWC image or its BadImage) for every row of `source`, in row order, decoded by
    `workers` DataLoader processes (in this one when 0, or for fewer than 4 batches, where starting
    them costs more than they save). `Source.cache` reads through this: caching a 41,000-image
    CIFAR selection, or a folder of photos, in one process left a GPU machine's other cores idle."""
    rows = _DecodeRows(source)
    if workers <= 0 or len(source) < 4 * batch_size:
        yield from (rows[i] for i in range(len(rows)))
        return
    loader = DataLoader(rows, batch_size=batch_size, num_workers=workers, collate_fn=_stack_rows)
    for batch in loader:
        if isinstance(batch, tuple):
            first, stack = batch
            yield from zip(range(first, first + len(stack)), stack)
        else:
            yield from batch


class RangeBatches(Sampler):
    """Batches of row indices over `ranges` [(start, stop), ...] in order, `batch_size` rows each
    except a range's last: no batch spans two ranges, so a reader of the batches can tell where a
    range ends (the label stage's shards) while one loader serves them all."""

    def __init__(self, ranges: list[tuple[int, int]], batch_size: int):
        self.ranges, self.batch_size = ranges, batch_size

    def __iter__(self):
        for a, b in self.ranges:
            for i in range(a, b, self.batch_size):
                yield list(range(i, min(i + self.batch_size, b)))

    def __len__(self):
        return sum(-(-max(0, b - a) // self.batch_size) for a, b in self.ranges)


def eval_batches(source: Source, batch_size: int, image_size: int, mean, std, *, start: int = 0,
                 stop: int | None = None, ranges: list[tuple[int, int]] | None = None, workers: int = 0,
                 skip_bad: bool = False, device=None) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Yield (normalised NCHW float batch, source row indices) for rows [start, stop), clean; or,
    with `ranges`, for each (start, stop) in it in order, no batch spanning two (`RangeBatches`).

    In-memory arrays take a vectorised path (slice, convert, resize once per batch); files are
    decoded by DataLoader workers, one loader for all the ranges: its workers start once and keep
    decoding the next range while the caller deals with the last one (the label stage used to start
    them again for every shard, and a GPU waited on that). Undecodable files are dropped when
    `skip_bad`, else BadImage. With `device`, each uint8 batch is converted there (`to_tensor_batch`);
    larger or mixed-size images arrive converted by the workers (`_EvalDataset`).
    """
    n = len(source)
    ranges = [(start, stop)] if ranges is None else ranges
    ranges = [(max(0, a), n if b is None else min(b, n)) for a, b in ranges]
    if isinstance(source, ArraySource) and isinstance(source.images, np.ndarray):
        for a0, b0 in ranges:
            for a in range(a0, b0, batch_size):
                b = min(a + batch_size, b0)
                yield to_tensor_batch(source.images[a:b], image_size, mean, std, device), np.arange(a, b)
        return
    batches = RangeBatches(ranges, batch_size)
    if len(batches) == 0:
        return
    # on a GPU the loader's thread pins each batch while the model runs (workers only: without them
    # to_tensor_batch pins, and a thread would only add a hop)
    pin = workers > 0 and device is not None and torch.device(device).type == "cuda"
    dataset = _EvalDataset(source, skip_bad, image_size, mean, std)
    if workers > 0:
        first = next(a for a, b in ranges if b > a)
        workers = fit_workers_to_shm(workers, batch_size * _eval_item_bytes(source, first, image_size), 4,
                                     "data.workers (labeling, evaluation)")
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=dataset.collate, pin_memory=pin,
                        prefetch_factor=4 if workers > 0 else None)
    for item in loader:
        if item is None:
            continue
        imgs, idx = item
        if imgs.dtype == torch.uint8:
            x = to_tensor_batch(imgs, image_size, mean, std, device)
        else:                               # already the model's input (_EvalDataset)
            x = imgs if device is None else imgs.to(device, non_blocking=True)
        yield x, np.asarray(idx)
