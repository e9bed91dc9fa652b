"""Choose the pseudo-labeled training set from the label stage's Parquet shards, streaming.

`select_from_labels` applies pseudo.py's filtering and balancing to the shards (format: labels.py)
without ever holding every probability vector in memory. Pass 1 reads only the scalar columns and
accumulates per-class counts and 0.01-wide confidence histograms; from these come each class's
target K_c and a threshold that the class's top K_c clear. Pass 2 reads the probabilities of the
rows at or above their class threshold only (about sum(K_c) rows, plus at most one boundary bin
per class), and `balance` picks exactly K_c rows per class from those.

The per-class thresholds are a memory bound, not a change of rule: the result is exactly what
"threshold everything, then balance in memory" gives, whatever the batch size and however the rows
are split into shards (rows are always taken in shard order, then row order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from noisystudent.labels import SCALAR_COLUMNS, LabelDirError, check_shard_schema, list_label_shards
from noisystudent.pseudo import (
    auto_per_class,
    balance,
    class_histograms,
    confidence_mask,
    make_targets,
    per_class_targets,
    thresholds_from_histograms,
)

__all__ = ["LabelDirError", "Selection", "list_label_shards", "select_from_labels"]

# Rows kept between passes are cast to this layout, so shards written with e.g. int64 ids or
# large_string ids still concatenate into one table.
_KEPT_TYPES = {
    "sample_id": pa.string(),
    "pred": pa.int32(),
    "confidence": pa.float32(),
    "true_label": pa.int32(),
}


@dataclass
class Selection:
    """The chosen pseudo-labeled rows and a JSON-serialisable account of how they were chosen.

    table columns: sample_id string, target fixed_size_list<float32>[C], copies int32 (how many
    times the row appears in an epoch), pred int32, confidence float32, true_label int32; rows in
    pool order (shard order, then row order).
    """

    table: pa.Table
    report: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def _numpy(column: pa.Array | pa.ChunkedArray, dtype) -> np.ndarray:
    """A writable copy (Arrow buffers are read-only, and torch.from_numpy warns on those)."""
    return np.array(column.to_numpy(zero_copy_only=False), dtype=dtype)


def _column(batch: pa.RecordBatch, name: str, dtype, path: Path) -> np.ndarray:
    column = batch.column(name)
    if column.null_count:
        raise LabelDirError(f"{path}: column {name} has null values")
    return _numpy(column, dtype)


def _scalars(batch: pa.RecordBatch, num_classes: int, path: Path) -> tuple[torch.Tensor, ...]:
    """(pred int64, confidence float32, true_label int64) of a batch, validated."""
    pred = torch.from_numpy(_column(batch, "pred", np.int64, path))
    confidence = torch.from_numpy(_column(batch, "confidence", np.float32, path))
    true_label = torch.from_numpy(_column(batch, "true_label", np.int64, path))
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise LabelDirError(f"{path}: pred outside [0, {num_classes})")
    if not bool(torch.isfinite(confidence).all()) or bool((confidence < 0).any()):
        raise LabelDirError(f"{path}: confidence has negative or non-finite values")
    return pred, confidence, true_label


# --------------------------------------------------------------------------------------------
# Pass 1: counts and histograms from the scalar columns
# --------------------------------------------------------------------------------------------


@dataclass
class _PoolStats:
    rows: int
    counts_before: torch.Tensor  # per predicted class, all rows
    counts_after_threshold: torch.Tensor  # per predicted class, confidence >= threshold
    histograms: torch.Tensor  # (C, 100) confidence histograms, all rows
    known: torch.Tensor  # per predicted class, rows whose true label is known
    correct: torch.Tensor  # per predicted class, known rows whose pred == true label
    teachers: list[str]


def _without(batch: pa.RecordBatch, excluded: pa.Array | None) -> pa.RecordBatch:
    """`batch` less the rows whose sample_id is in `excluded` (pool images that are copies of
    evaluation images: data/overlap.py); both passes drop them the same way, as if not in the pool."""
    if excluded is None:
        return batch
    return batch.filter(pc.invert(pc.is_in(batch.column("sample_id").cast(pa.string()), value_set=excluded)))


def _scan_pool(shards: list[Path], num_classes: int, threshold: float, batch_rows: int,
               excluded: pa.Array | None = None) -> _PoolStats:
    rows = 0
    counts_before = torch.zeros(num_classes, dtype=torch.long)
    counts_after = torch.zeros(num_classes, dtype=torch.long)
    histograms = torch.zeros(num_classes, 100, dtype=torch.long)
    known = torch.zeros(num_classes, dtype=torch.long)
    correct = torch.zeros(num_classes, dtype=torch.long)
    teachers: set[str] = set()
    for path in shards:
        parquet = pq.ParquetFile(path)
        has_teacher = "teacher" in parquet.schema_arrow.names
        columns = SCALAR_COLUMNS + (["teacher"] if has_teacher else []) + (["sample_id"] if excluded is not None else [])
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            batch = _without(batch, excluded)
            pred, confidence, true_label = _scalars(batch, num_classes, path)
            rows += pred.numel()
            counts_before += torch.bincount(pred, minlength=num_classes)
            passing = confidence_mask(confidence, threshold)
            counts_after += torch.bincount(pred[passing], minlength=num_classes)
            histograms += class_histograms(pred, confidence, num_classes)
            is_known = true_label >= 0
            known += torch.bincount(pred[is_known], minlength=num_classes)
            correct += torch.bincount(pred[is_known & (pred == true_label)], minlength=num_classes)
            if has_teacher:
                teachers.update(t for t in pc.unique(batch.column("teacher")).to_pylist() if t is not None)
    return _PoolStats(rows, counts_before, counts_after, histograms, known, correct, sorted(teachers))


# --------------------------------------------------------------------------------------------
# Pass 2: rows that can still make their class's top K
# --------------------------------------------------------------------------------------------


def _collect_candidates(
    shards: list[Path], num_classes: int, thresholds: torch.Tensor, batch_rows: int, expected_rows: int,
    excluded: pa.Array | None = None,
) -> pa.Table:
    """Rows with confidence >= the threshold of their predicted class, in pool order."""
    kept_schema = pa.schema(
        [
            ("sample_id", _KEPT_TYPES["sample_id"]),
            # float16 is what the label stage stores; holding kept rows at that width halves
            # the memory of float32 (the widening to float32 targets happens per selected row).
            ("probs", pa.list_(pa.float16(), num_classes)),
            *[(name, _KEPT_TYPES[name]) for name in SCALAR_COLUMNS],
        ]
    )
    kept: list[pa.RecordBatch] = []
    rows = 0
    for path in shards:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=kept_schema.names):
            batch = _without(batch, excluded)
            pred, confidence, _ = _scalars(batch, num_classes, path)
            rows += pred.numel()
            # The same float32 comparison the histogram bins use, so every row the histograms
            # counted at or above a class threshold is kept here.
            keep = confidence >= thresholds[pred]
            if not bool(keep.any()):
                continue
            batch = batch.filter(pa.array(keep.numpy()))
            columns = [batch.column(name).cast(kept_schema.field(name).type) for name in kept_schema.names]
            kept.append(pa.RecordBatch.from_arrays(columns, schema=kept_schema))
    if rows != expected_rows:
        raise LabelDirError(
            f"the label shards changed during selection ({expected_rows} rows, then {rows}); rerun it"
        )
    return pa.Table.from_batches(kept, schema=kept_schema)


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def _class_targets(
    per_class: str | int | Sequence[int] | None,
    num_classes: int,
    class_counts: Sequence[int] | torch.Tensor | None,
    pool_size: int,
) -> torch.Tensor | None:
    """K_c per class, or None for "no balancing"."""
    if per_class is None:
        return None
    if isinstance(per_class, str):
        if per_class != "auto":
            raise ValueError(f'per_class must be "auto", an int, a per-class list or None, got {per_class!r}')
        if class_counts is None:
            raise ValueError('per_class="auto" needs class_counts (images per class, whose proportions it gives the pool)')
        if len(class_counts) != num_classes:
            raise ValueError(
                f"class_counts has {len(class_counts)} entries, expected {num_classes}"
            )
        return auto_per_class(class_counts, pool_size)
    if isinstance(per_class, bool):  # bool is an int subclass; True almost surely means a mistake
        raise ValueError(f"per_class must be an int, not {per_class!r}")
    return per_class_targets(per_class, num_classes)


def _accuracy(correct: torch.Tensor, known: torch.Tensor) -> dict:
    """Overall and per-predicted-class accuracy (None where no row has a known label)."""
    total = int(known.sum())
    return {
        "overall": int(correct.sum()) / total if total else None,
        "per_class": [int(c) / int(k) if int(k) else None for c, k in zip(correct, known)],
    }


def _targets_column(probs: pa.Array, pred: torch.Tensor, num_classes: int, soft: bool) -> pa.Array:
    flat = probs.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    probs_tensor = torch.from_numpy(flat.reshape(-1, num_classes))
    targets = make_targets(probs_tensor, soft, pred=pred)
    return pa.FixedSizeListArray.from_arrays(pa.array(targets.reshape(-1).numpy()), num_classes)


def _checked_shards(label_dir: str | Path, num_classes: int, batch_rows: int) -> list[Path]:
    """The label shards of `label_dir`, each checked against the expected schema."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    shards = list_label_shards(label_dir)
    for path in shards:
        check_shard_schema(path, num_classes)
    return shards


def _choose_rows(
    candidates: pa.Table, pred: torch.Tensor, targets: torch.Tensor | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices into `candidates`, copies of each): all rows once without targets, else `balance`."""
    if targets is None:
        return torch.arange(candidates.num_rows), torch.ones(candidates.num_rows, dtype=torch.long)
    confidence = torch.from_numpy(_numpy(candidates.column("confidence"), np.float32))
    generator = torch.Generator().manual_seed(seed)
    return balance(pred, confidence, targets, generator)


def _selected_table(
    chosen: pa.Table, chosen_pred: torch.Tensor, copies: torch.Tensor, num_classes: int, soft: bool
) -> pa.Table:
    """The `Selection.table` of the chosen rows (see `Selection`)."""
    target = _targets_column(chosen.column("probs").combine_chunks(), chosen_pred, num_classes, soft)
    return pa.table(
        {
            "sample_id": chosen.column("sample_id").combine_chunks(),
            "target": target,
            "copies": pa.array(copies.numpy().astype(np.int32)),
            "pred": chosen.column("pred").combine_chunks(),
            "confidence": chosen.column("confidence").combine_chunks(),
            "true_label": chosen.column("true_label").combine_chunks(),
        }
    )


def _selection_report(
    stats: _PoolStats,
    targets: torch.Tensor | None,
    thresholds: torch.Tensor,
    chosen_pred: torch.Tensor,
    copies: torch.Tensor,
    *,
    num_classes: int,
    threshold: float,
    per_class: str | int | Sequence[int] | None,
    soft: bool,
    seed: int,
) -> dict:
    """The `Selection.report` counts and settings (pseudo-label accuracy is added by the caller)."""
    selected_unique = torch.bincount(chosen_pred, minlength=num_classes)
    selected_copies = torch.bincount(chosen_pred, weights=copies.double(), minlength=num_classes).long()
    wanted = targets if targets is not None else torch.ones(num_classes, dtype=torch.long)
    return {
        "rows": stats.rows,
        "num_classes": num_classes,
        "threshold": float(threshold),
        "per_class_mode": "none" if targets is None else ("auto" if per_class == "auto" else "fixed"),
        "per_class_target": None if targets is None else targets.tolist(),
        # Rounded for reading only: the float32 value actually compared is e.g. 0.2899999916.
        "per_class_thresholds": [round(float(t), 6) for t in thresholds],
        "counts_before": stats.counts_before.tolist(),
        "counts_after_threshold": stats.counts_after_threshold.tolist(),
        "counts_selected_unique": selected_unique.tolist(),
        "counts_selected_with_copies": selected_copies.tolist(),
        "selected_unique": int(selected_unique.sum()),
        "selected_with_copies": int(selected_copies.sum()),
        # Classes that wanted rows but had none above the threshold: the student sees no pseudo-
        # labels for them, which the caller should surface.
        "empty_classes": [
            c for c in range(num_classes) if wanted[c] > 0 and stats.counts_after_threshold[c] == 0
        ],
        "soft": soft,
        "seed": int(seed),
        "teachers": stats.teachers,
    }


def _pseudo_label_accuracy(
    stats: _PoolStats, chosen: pa.Table, chosen_pred: torch.Tensor, copies: torch.Tensor, num_classes: int
) -> dict:
    """Accuracy of the pseudo-labels where the true label is known, before and after selection."""
    # After selection every row counts as often as the student will see it (its copies).
    true_label = torch.from_numpy(_numpy(chosen.column("true_label"), np.int64))
    weight = (copies * (true_label >= 0)).double()
    known_after = torch.bincount(chosen_pred, weights=weight, minlength=num_classes)
    is_correct = weight * (chosen_pred == true_label)
    correct_after = torch.bincount(chosen_pred, weights=is_correct, minlength=num_classes)
    return {
        # "Per class" means per *predicted* class: the precision of the labels the student
        # is taught for that class.
        "before": _accuracy(stats.correct, stats.known),
        "after": _accuracy(correct_after, known_after),
    }


def select_from_labels(
    label_dir: str | Path,
    *,
    num_classes: int,
    threshold: float = 0.3,
    per_class: str | int | Sequence[int] | None = "auto",
    class_counts: Sequence[int] | torch.Tensor | None = None,
    soft: bool = True,
    seed: int = 0,
    batch_rows: int = 65536,
    exclude_ids: Sequence[str] = (),
) -> Selection:
    """Filter and balance the teacher's pseudo-labels in `label_dir` into a training set.

    threshold     global confidence threshold (paper: 0.3); rows below it are never used.
    per_class     "auto": K_c = auto_per_class(class_counts, pool_size) where pool_size is
                  the number of rows that pass `threshold` - the confident pool takes the class
                  proportions of `class_counts` (the stage's: pseudo.auto_proportions). int: the
                  same K for every class. sequence: K_c per class. None: no balancing, every row
                  above threshold once.
    soft          soft targets (probabilities) or hard one-hot targets of `pred`.
    seed          seeds the generator that picks which duplicated rows get an extra copy.
    batch_rows    rows per streamed batch; changes memory use only, never the result.
    exclude_ids   sample ids left out as if not in the pool (copies of evaluation images).

    Raises LabelDirError (a ValueError) for a missing/empty directory or mismatched shards.
    """
    shards = _checked_shards(label_dir, num_classes, batch_rows)
    excluded = pa.array(sorted(set(exclude_ids)), pa.string()) if len(exclude_ids) else None
    stats = _scan_pool(shards, num_classes, threshold, batch_rows, excluded)
    confident_pool = int(stats.counts_after_threshold.sum())
    targets = _class_targets(per_class, num_classes, class_counts, confident_pool)
    if targets is None:
        thresholds = torch.full((num_classes,), threshold, dtype=torch.float32)
    else:
        thresholds = thresholds_from_histograms(stats.histograms, targets, threshold)

    candidates = _collect_candidates(shards, num_classes, thresholds, batch_rows, stats.rows, excluded)
    pred = torch.from_numpy(_numpy(candidates.column("pred"), np.int64))
    indices, copies = _choose_rows(candidates, pred, targets, seed)
    chosen = candidates.take(pa.array(indices.numpy()))
    chosen_pred = pred[indices]
    table = _selected_table(chosen, chosen_pred, copies, num_classes, soft)
    report = _selection_report(stats, targets, thresholds, chosen_pred, copies, num_classes=num_classes,
                               threshold=threshold, per_class=per_class, soft=soft, seed=seed)
    if int(stats.known.sum()) > 0:
        report["pseudo_label_accuracy"] = _pseudo_label_accuracy(stats, chosen, chosen_pred, copies, num_classes)
    return Selection(table=table, report=report)
