"""The label-shard format, defined once: what the `label` stage writes and `select` reads.

One Parquet file per shard of the pool, `part-NNNNN.parquet` (shard s holds pool rows
[s*shard_size, (s+1)*shard_size)), one row per image: sample_id (the image's stable id), probs
(fixed_size_list<float16>[C], the un-noised teacher's probabilities), pred, confidence, true_label
(-1 = unknown; kept for reports when the pool is a labeled set with its labels hidden) and teacher
(hash of the model.pt that labeled it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .inference import iter_logits, mean_view_probs
from .errors import UserError

__all__ = ["shard_schema", "shard_name", "list_label_shards", "check_shard_schema", "predict_shard",
           "predict_shards", "launch_shard", "finish_shard", "PendingShard",
           "LabelDirError", "SCALAR_COLUMNS"]

_SHARD_NAME = re.compile(r"^part-(\d+)\.parquet$")
SCALAR_COLUMNS = ["pred", "confidence", "true_label"]


def shard_name(s: int) -> str:
    return f"part-{s:05d}.parquet"


def shard_schema(num_classes: int) -> pa.Schema:
    return pa.schema([
        ("sample_id", pa.string()),
        ("probs", pa.list_(pa.float16(), num_classes)),
        ("pred", pa.int32()),
        ("confidence", pa.float32()),
        ("true_label", pa.int32()),
        ("teacher", pa.string()),
    ])


class LabelDirError(UserError, ValueError):
    """The label directory is missing, empty, or holds shards that do not match the schema.

    A ValueError (what callers of this module test for) that is also a UserError, so the CLI
    shows its one-line message instead of a traceback.
    """


def list_label_shards(label_dir: str | Path) -> list[Path]:
    """`part-NNNNN.parquet` files of `label_dir`, ordered by their number (not by name, so
    part-100000 comes after part-99999). Other files are ignored."""
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise LabelDirError(f"label directory {label_dir} does not exist; run the label stage first")
    numbered = []
    for path in label_dir.iterdir():
        match = _SHARD_NAME.match(path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    if not numbered:
        raise LabelDirError(
            f"label directory {label_dir} holds no part-*.parquet shards; run the label stage first"
        )
    return [path for _, path in sorted(numbered)]


def check_shard_schema(path: Path, num_classes: int) -> None:
    """Raise LabelDirError unless `path` has the columns and class count of a label shard."""
    schema = pq.read_schema(path)
    missing = [name for name in ["sample_id", "probs", *SCALAR_COLUMNS] if name not in schema.names]
    if missing:
        raise LabelDirError(f"{path} lacks column(s) {missing}; it was not written by the label stage")
    probs = schema.field("probs").type
    if not (pa.types.is_fixed_size_list(probs) and pa.types.is_floating(probs.value_type)):
        raise LabelDirError(f"{path}: probs must be fixed_size_list<float16>[C], got {probs}")
    if probs.list_size != num_classes:
        raise LabelDirError(
            f"{path}: probs has {probs.list_size} classes but num_classes={num_classes}; "
            "the labels come from a teacher for a different dataset"
        )


@dataclass
class PendingShard:
    """A shard whose predictions are queued on the device: `finish_shard` waits for its copy to the
    host and builds the table. Queuing shard s+1 before finishing shard s keeps a GPU busy while the
    CPU builds and writes shard s (issue 15: the per-shard sync and table left it idle)."""
    probs: torch.Tensor              # (N, C) float32 on the CPU, filled asynchronously from a GPU
    rows: np.ndarray                 # the source rows of the probabilities
    ready: object                    # a CUDA event recorded after the copy, or None (already there)
    source: object
    teacher_hash: str
    keep_true_labels: bool


@torch.no_grad()
def _shard_probs(model, source, ranges, *, image_size: int, mean, std, temperature: float, flip_tta: bool,
                 batch_size: int, device, workers: int = 0, skip_bad: bool = True, shift_tta: int = 0
                 ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """(probabilities left on the device, source rows) per batch over `ranges`, through one loader."""
    for views, idx in iter_logits(model, source, image_size, mean, std, batch_size=batch_size, device=device,
                                  workers=workers, skip_bad=skip_bad, ranges=ranges, hflip=flip_tta,
                                  shift=shift_tta, on_device=True):
        # TTA averages the views' probabilities (after the temperature), not their logits
        yield mean_view_probs(views, temperature), idx


def _queue(model, batches, source, teacher_hash: str, keep_true_labels: bool) -> PendingShard:
    """A shard's batches of probabilities, gathered on the device and copied to the host once."""
    if not batches:
        C = getattr(model, "num_classes", 0)
        return PendingShard(torch.zeros(0, C), np.zeros(0, dtype=np.int64), None, source, teacher_hash,
                            keep_true_labels)
    probs, ready = torch.cat([p for p, _ in batches]), None
    if probs.is_cuda:                # into pinned memory without waiting; the event says when it is there
        host = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
        host.copy_(probs, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        probs = host
    # .cpu(): a no-op after the pinned copy and on the CPU; another device (mps) copies here
    return PendingShard(probs.cpu(), np.concatenate([i for _, i in batches]), ready, source, teacher_hash,
                        keep_true_labels)


def launch_shard(model, source, start: int, stop: int, *, teacher_hash: str = "", keep_true_labels: bool = False,
                 **kw) -> PendingShard:
    """Queue the un-noised predictions of pool rows [start, stop) (see `predict_shard`). Keywords:
    image_size, mean, std, temperature, flip_tta, shift_tta, batch_size, device, workers, skip_bad."""
    return _queue(model, list(_shard_probs(model, source, [(start, stop)], **kw)), source, teacher_hash,
                  keep_true_labels)


def finish_shard(p: PendingShard) -> pa.Table:
    """Wait for a launched shard's probabilities and build its label-shard table."""
    if p.ready is not None:
        p.ready.synchronize()
    probs, rows, source = p.probs, p.rows, p.source
    conf, pred = probs.max(1)
    true = source.labels[rows] if len(rows) and p.keep_true_labels else np.full(len(rows), -1, dtype=np.int64)
    C = probs.shape[1]
    flat = pa.array(probs.to(torch.float16).numpy().reshape(-1), type=pa.float16())
    return pa.table({
        "sample_id": pa.array([source.ids[i] for i in rows], pa.string()),
        "probs": pa.FixedSizeListArray.from_arrays(flat, C),
        "pred": pa.array(pred.numpy().astype(np.int32)),
        "confidence": pa.array(conf.numpy().astype(np.float32)),
        # Kept for reports only (pseudo-label accuracy when the pool is a labeled set with labels hidden).
        "true_label": pa.array(true.astype(np.int32)),
        "teacher": pa.array([p.teacher_hash] * len(rows), pa.string()),
    }, schema=shard_schema(C))


def predict_shard(model, source, start: int, stop: int, **kw) -> pa.Table:
    """The label-shard table of pool rows [start, stop): the un-noised teacher's probabilities (with
    the temperature, averaged over the TTA views), prediction, confidence, ids. Keywords: those of
    `launch_shard`."""
    return finish_shard(launch_shard(model, source, start, stop, **kw))


def predict_shards(model, source, shards, shard_size: int, *, teacher_hash: str = "",
                   keep_true_labels: bool = False, **kw) -> Iterator[tuple[int, pa.Table]]:
    """(s, table) for each shard number in `shards`, in order: the same tables as `predict_shard` per
    shard. One loader reads every shard (its workers start once), and each shard's predictions are
    queued before the previous one's table is built (on a GPU the two overlap; on the CPU it is the
    plain loop). Keywords: those of `launch_shard`."""
    shards = list(shards)
    n = len(source)
    stream = _shard_probs(model, source, [(s * shard_size, min((s + 1) * shard_size, n)) for s in shards], **kw)
    pending = None
    for s, batches in _by_shard(stream, shards, shard_size):
        nxt = (s, _queue(model, batches, source, teacher_hash, keep_true_labels))
        if pending is not None:
            yield pending[0], finish_shard(pending[1])
        pending = nxt
    if pending is not None:
        yield pending[0], finish_shard(pending[1])


def _by_shard(stream, shards: list[int], shard_size: int) -> Iterator[tuple[int, list]]:
    """Group a stream of (probs, rows) batches, read over `shards` in order, into (s, its batches) for
    every s (none for a shard whose images were all skipped). No batch spans two shards, and none is
    empty, so a batch's first row names its shard."""
    it = iter(stream)
    nxt = next(it, None)
    for s in shards:
        group = []
        while nxt is not None and int(nxt[1][0]) // shard_size == s:
            group.append(nxt)
            nxt = next(it, None)
        yield s, group
