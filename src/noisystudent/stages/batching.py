"""Which batch source a training stage gets: `data.augment_on`.

  cpu     each image decoded, resized and noised with PIL in DataLoader workers (`batches.py`);
          streams any source, however large.
  device  the images decoded once, at the training size, into one uint8 tensor on the training
          device, and noised a batch at a time there (`tensor_batches.py`): the GPU stops waiting
          for CPU workers. Needs the decoded set to fit (`decoded_bytes`).
  auto    device on a GPU when the images fit in a quarter of its free memory, else cpu.

Both give the same noise (ops, magnitudes, probabilities), not the same random draws.
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from ..batches import LabeledBatches, PseudoBatches
from ..data import ArraySource, LabeledDataset, PseudoDataset, cache_if_fits, create_train_transform, default_mean_std
from ..data.transforms import resize_for_training
from ..errors import UserError
from .common import RunContext

__all__ = ["use_device_noise", "labeled_source", "selected_pool", "pseudo_source", "at_training_size"]

CPU_TENSOR_BUDGET = 4 << 30       # bytes of decoded images `device` may hold in RAM on a CPU


def use_device_noise(ctx: RunContext, n_images: int) -> bool:
    d = ctx.cfg.data
    if d.augment_on == "cpu" or (d.augment_on == "auto" and ctx.device.type != "cuda"):
        return False
    need = n_images * d.image_size * d.image_size * d.in_chans          # uint8 (N, C, S, S)
    budget = torch.cuda.mem_get_info(ctx.device)[0] // 4 if ctx.device.type == "cuda" else CPU_TENSOR_BUDGET
    # Under torchrun every rank takes the same path (each reads its own GPU's free memory): ranks on
    # different paths would noise differently and could count different steps per epoch.
    if ctx.agree(need <= budget):
        return True
    if d.augment_on == "device":
        where = (f"{budget / 2**30:.1f} GiB is available" if need > budget else
                 "another process of this run has not that much GPU memory free")
        raise UserError(f"config key 'data.augment_on': 'device' needs {need / 2**30:.1f} GiB for the decoded "
                        f"images but {where}; use 'cpu' or 'auto'")
    return False


def at_training_size(src, image_size: int):
    """`src`'s in-memory images resized once to image_size x image_size, exactly as the training
    transform's first step resizes them (PIL bilinear; `TrainTransform`), whose own resize is then a
    no-op: the same batches, bit for bit, without a resize per image per step. That resize was
    most of a step's CPU work for photos, which are cached at up to 4x image_size a side. Done only
    where it shrinks the set (images larger than the size); files, and sets already at the size
    or smaller (upscaled per step, cheaply), are returned as they are."""
    if not isinstance(src, ArraySource):
        return src
    imgs = src.images
    if isinstance(imgs, np.ndarray):
        if imgs.shape[1:3] == (image_size, image_size) or imgs.shape[1] * imgs.shape[2] <= image_size ** 2:
            return src
    elif sum(im.shape[0] * im.shape[1] for im in imgs) <= len(imgs) * image_size ** 2:
        return src
    return ArraySource(src.name, list(src.ids), src.labels, src.classes, src.in_chans, list(src.skipped),
                       images=np.stack([resize_for_training(a, image_size) for a in imgs]))


def _noise(ctx: RunContext, noise_cfg):
    from ..batch_noise import BatchNoise
    return BatchNoise.from_config(ctx.cfg.data, noise_cfg)


def _mean_std(ctx: RunContext):
    return default_mean_std(ctx.cfg.data.in_chans, ctx.cfg.data.mean, ctx.cfg.data.std)


def labeled_source(ctx: RunContext, noise_cfg, batch_size: int):
    """(batch source of the labeled images, number of images) with `noise_cfg` applied."""
    skip = ctx.policy("labeled") == "skip"
    if use_device_noise(ctx, len(ctx.labeled)):
        from ..tensor_batches import TensorLabeledBatches, decode_all
        images, rows = decode_all(ctx.labeled, ctx.cfg.data.image_size, skip)
        mean, std = _mean_std(ctx)
        return TensorLabeledBatches(images.to(ctx.device), ctx.labeled.labels[rows], _noise(ctx, noise_cfg),
                                    mean, std, batch_size), len(rows)
    ds = LabeledDataset(at_training_size(ctx.labeled, ctx.cfg.data.image_size), create_train_transform(ctx.cfg.data, noise_cfg),
                        skip_bad=skip)
    return LabeledBatches(ds, batch_size, ctx.workers), len(ds)


def selected_pool(ctx: RunContext, sel_path):
    """(pool subset, targets, copies) of the selection: the chosen images, their target
    distributions and how often each appears per epoch (class balancing)."""
    table = pq.read_table(sel_path)
    ids = table.column("sample_id").to_pylist()
    targets = np.asarray(table.column("target").to_pylist(), dtype=np.float32)
    copies = table.column("copies").to_numpy()
    pool = ctx.pool
    id2row = {sid: i for i, sid in enumerate(pool.ids)}
    missing = [s for s in ids if s not in id2row]
    if missing:
        raise UserError(f"{sel_path}: {len(missing)} selected ids are not in the unlabeled pool "
                        f"(e.g. {missing[0]}); the pool changed since labeling — rerun `noisystudent run`")
    sub = pool.subset([id2row[s] for s in ids])
    if ctx.cfg.data.cache and not isinstance(sub, ArraySource) and len(sub):
        # decoded once when it fits; undecodable rows drop out here
        sub = cache_if_fits(sub, "skip", "the selected pool images (data.unlabeled)", ctx.decode_workers, ctx.agree)
    if isinstance(sub, ArraySource) and len(sub.ids) < len(ids):
        keep = {sid: i for i, sid in enumerate(ids)}
        pos = np.asarray([keep[s] for s in sub.ids], dtype=np.int64)
        targets, copies = targets[pos], copies[pos]
    return sub, targets, copies


def pseudo_source(ctx: RunContext, noise_cfg, selection, batch_size: int):
    """Batch source of the selected pseudo-labeled images (`selection` from `selected_pool`)."""
    sub, targets, copies = selection
    if use_device_noise(ctx, len(sub)):
        from ..tensor_batches import TensorPseudoBatches, decode_all
        images, rows = decode_all(sub, ctx.cfg.data.image_size, skip_bad=True)
        mean, std = _mean_std(ctx)
        return TensorPseudoBatches(images.to(ctx.device), targets[rows], copies[rows], _noise(ctx, noise_cfg),
                                   mean, std, batch_size)
    ds = PseudoDataset(at_training_size(sub, ctx.cfg.data.image_size), np.arange(len(sub)), targets, copies,
                       create_train_transform(ctx.cfg.data, noise_cfg))
    return PseudoBatches(ds, batch_size, ctx.workers)
