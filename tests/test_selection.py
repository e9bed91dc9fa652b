"""select_from_labels over tiny hand-made label shards, checked against an in-memory selection."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from noisystudent.layout import RunLayout
from noisystudent.pseudo import balance, confidence_mask, make_targets
from noisystudent.selection import select_from_labels

C = 4
# (pred, confidence, true_label) per pool row. With 4 classes a max probability is >= 0.25, and
# spreading the rest evenly over the other classes keeps `pred` the argmax.
CLASS0 = [(0, c, 0) for c in [0.9, 0.8, 0.8, 0.755, 0.75, 0.6, 0.6, 0.55, 0.5, 0.45, 0.35, 0.28]]
CLASS0[1] = (0, 0.8, 1)  # a wrong pseudo-label among the selected
CLASS1 = [(1, 0.7, 1), (1, 0.5, 1), (1, 0.31, -1)]  # short class, one unknown true label
CLASS2 = [(2, 0.95, 2), (2, 0.95, 2), (2, 0.3, 2), (2, 0.29, 2), (2, 0.6, 0), (2, 0.3, 2)]
CLASS3 = [(3, 0.27, -1), (3, 0.28, -1)]  # nothing above the 0.3 threshold
# A fixed interleaving, so shard boundaries cut through every class.
ROWS = [(CLASS0 + CLASS1 + CLASS2 + CLASS3)[i] for i in np.random.default_rng(0).permutation(23)]


def write_shards(directory, sizes, rows=ROWS):
    """Write `rows` as consecutive shards of the given sizes, in the label stage's schema."""
    assert sum(sizes) == len(rows)
    directory.mkdir(parents=True, exist_ok=True)
    start = 0
    for shard, size in enumerate(sizes):
        chunk = rows[start : start + size]
        probs = np.full((size, C), 0.0, dtype=np.float32)
        for i, (pred, conf, _) in enumerate(chunk):
            probs[i, :] = (1 - conf) / (C - 1)
            probs[i, pred] = conf
        table = pa.table(
            {
                "sample_id": [f"s{start + i:03d}" for i in range(size)],
                "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.astype(np.float16).ravel()), C),
                "pred": pa.array([r[0] for r in chunk], pa.int32()),
                "confidence": pa.array([r[1] for r in chunk], pa.float32()),
                "true_label": pa.array([r[2] for r in chunk], pa.int32()),
                "teacher": ["abc123"] * size,
            }
        )
        pq.write_table(table, directory / f"part-{shard:05d}.parquet", row_group_size=4)
        start += size
    return directory


def brute_force(directory, per_class, threshold=0.3, soft=True, seed=0):
    """Threshold and balance the whole pool in memory: what streaming must reproduce."""
    table = pa.concat_tables(pq.read_table(p) for p in sorted(directory.glob("part-*.parquet")))
    pred = torch.tensor(table.column("pred").to_pylist())
    confidence = torch.tensor(table.column("confidence").to_pylist(), dtype=torch.float32)
    rows = torch.nonzero(confidence_mask(confidence, threshold), as_tuple=True)[0]
    picked, copies = balance(pred[rows], confidence[rows], per_class, torch.Generator().manual_seed(seed))
    rows = rows[picked]
    probs = torch.tensor(table.column("probs").to_pylist(), dtype=torch.float32)[rows]
    ids = table.column("sample_id").to_pylist()
    return [ids[i] for i in rows.tolist()], copies.tolist(), make_targets(probs, soft, pred=pred[rows])


def test_selection_matches_in_memory_and_hand_counts(tmp_path):
    label_dir = write_shards(RunLayout(tmp_path).labels(1), [8, 8, 7])
    selection = select_from_labels(label_dir, num_classes=C, per_class=4, batch_rows=3)
    table, report = selection.table, selection.report

    ids, copies, targets = brute_force(label_dir, 4)
    assert table.column("sample_id").to_pylist() == ids
    assert table.column("copies").to_pylist() == copies
    assert torch.allclose(torch.tensor(table.column("target").to_pylist()), targets)

    assert table.schema == pa.schema(
        [
            ("sample_id", pa.string()),
            ("target", pa.list_(pa.float32(), C)),
            ("copies", pa.int32()),
            ("pred", pa.int32()),
            ("confidence", pa.float32()),
            ("true_label", pa.int32()),
        ]
    )
    # Class 0 keeps its 4 most confident (0.75 shares 0.755's bin and is dropped); class 2 keeps
    # 0.95, 0.95, 0.6 and one of its two 0.3s.
    pairs = list(zip(table["pred"].to_pylist(), table["confidence"].to_pylist()))
    by_class = {c: sorted(round(v, 3) for p, v in pairs if p == c) for c in range(C)}
    assert by_class[0] == [0.755, 0.8, 0.8, 0.9]
    assert by_class[2] == [0.3, 0.6, 0.95, 0.95]
    assert report["rows"] == 23
    assert report["per_class_target"] == [4, 4, 4, 4]
    assert report["per_class_thresholds"] == [0.75, 0.3, 0.3, 0.3]
    assert report["counts_before"] == [12, 3, 6, 2]
    assert report["counts_after_threshold"] == [11, 3, 5, 0]
    assert report["counts_selected_unique"] == [4, 3, 4, 0]
    assert report["counts_selected_with_copies"] == [4, 4, 4, 0]
    assert report["empty_classes"] == [3]
    assert report["teachers"] == ["abc123"]
    json.dumps(report)  # serialisable as-is


def test_pseudo_label_accuracy(tmp_path):
    label_dir = write_shards(RunLayout(tmp_path).labels(1), [23])
    selection = select_from_labels(label_dir, num_classes=C, per_class=4)
    accuracy = selection.report["pseudo_label_accuracy"]
    # Before: 20 rows have a known label, 2 of them are wrong (one in class 0, one in class 2).
    assert accuracy["before"]["overall"] == pytest.approx(18 / 20)
    assert accuracy["before"]["per_class"] == pytest.approx([11 / 12, 1.0, 5 / 6, None])
    # After, weighted by copies: class 0 keeps its wrong 0.8, class 2 its wrong 0.6; class 1's
    # known rows are its 4 copies minus those of the unknown 0.31 row.
    table = selection.table
    unknown_copies = table["copies"].to_pylist()[table["true_label"].to_pylist().index(-1)]
    known1 = 4 - unknown_copies
    assert accuracy["after"]["per_class"] == pytest.approx([3 / 4, 1.0, 3 / 4, None])
    assert accuracy["after"]["overall"] == pytest.approx((6 + known1) / (8 + known1))


def test_no_true_labels_means_no_accuracy(tmp_path):
    rows = [(p, c, -1) for p, c, _ in ROWS]
    label_dir = write_shards(RunLayout(tmp_path).labels(1), [23], rows=rows)
    assert "pseudo_label_accuracy" not in select_from_labels(label_dir, num_classes=C, per_class=4).report


def test_result_independent_of_batch_rows_and_shard_split(tmp_path):
    results = []
    for split in ([23], [10, 13], [5, 9, 9]):
        label_dir = write_shards(tmp_path / "-".join(map(str, split)), split)
        for batch_rows in (1, 4, 65536):
            results.append(
                select_from_labels(label_dir, num_classes=C, per_class=4, seed=3, batch_rows=batch_rows)
            )
    for other in results[1:]:
        assert other.table.equals(results[0].table)
        assert other.report == results[0].report


def test_seed_determinism(tmp_path):
    label_dir = write_shards(RunLayout(tmp_path).labels(1), [12, 11])

    def copies(seed):
        selection = select_from_labels(label_dir, num_classes=C, per_class=4, seed=seed)
        return selection.table["copies"].to_pylist()

    assert copies(0) == copies(0)
    # Class 1 (3 rows for 4 slots) gives one of its rows an extra copy, drawn by the seed.
    assert len({tuple(copies(seed)) for seed in range(8)}) > 1


def test_auto_per_class_and_hard_targets(tmp_path):
    label_dir = write_shards(RunLayout(tmp_path).labels(1), [23])
    # 19 rows pass 0.3; labeled proportions [0.5, 0.25, 0.25, 0] -> K = [9.5, 4.75, 4.75, 0] rounded
    selection = select_from_labels(label_dir, num_classes=C, class_counts=[2, 1, 1, 0], soft=False)
    report = selection.report
    assert report["per_class_target"] == [10, 5, 5, 0]
    assert report["counts_selected_with_copies"] == [10, 5, 5, 0]
    assert report["empty_classes"] == []  # class 3 wanted nothing
    targets = torch.tensor(selection.table["target"].to_pylist())
    assert torch.equal(targets, torch.eye(C)[torch.tensor(selection.table["pred"].to_pylist())])
    ids, copies, _ = brute_force(label_dir, torch.tensor([10, 5, 5, 0]), soft=False)
    assert selection.table["sample_id"].to_pylist() == ids and selection.table["copies"].to_pylist() == copies


def test_no_balancing_keeps_everything_above_threshold(tmp_path):
    label_dir = write_shards(RunLayout(tmp_path).labels(1), [23])
    selection = select_from_labels(label_dir, num_classes=C, per_class=None, threshold=0.5, batch_rows=5)
    confidences = [r[1] for r in ROWS if r[1] >= 0.5]
    assert selection.table["confidence"].to_pylist() == pytest.approx(confidences)
    assert set(selection.table["copies"].to_pylist()) == {1}
    assert selection.report["per_class_target"] is None
    assert selection.report["empty_classes"] == [3]


def test_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no part-"):
        select_from_labels(tmp_path / "empty", num_classes=C)
    with pytest.raises(ValueError, match="does not exist"):
        select_from_labels(tmp_path / "missing", num_classes=C)
    label_dir = write_shards(RunLayout(tmp_path).labels(1), [23])
    with pytest.raises(ValueError, match="class_counts"):
        select_from_labels(label_dir, num_classes=C, per_class="auto")
    with pytest.raises(ValueError, match="num_classes=5"):
        select_from_labels(label_dir, num_classes=5, per_class=4)
