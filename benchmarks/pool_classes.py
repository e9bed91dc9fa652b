r"""What the select stage kept of a pool whose file names carry each image's class, which the run never
reads (`benchmarks/transfer_set.py` names pool images `<class>_<stem>.png`): how many images of
classes the labeled set does not have (`--other`) the teacher was sure enough of to keep, and
how many of the kept images of the labeled classes carry their true class as pseudo-label.

    python benchmarks/pool_classes.py runs/tx/s0 runs/tx/s1 runs/tx/s2 --other airplane,automobile,ship,truck

One row per run directory (round `--round`, default 1), then the mean ± std over them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def class_of(sample_id: str) -> str:
    """The class a file name carries: `cat_0001.png` (a flat pool) or `cat/0001.png` (a class tree)."""
    name = sample_id.replace("\\", "/")
    return name.split("/")[0] if "/" in name else name.split("_")[0]


def pool_classes(run_dir: Path, other: set[str], k: int = 1) -> dict:
    """Counts for round `k` of `run_dir`: the pool (every labeled row of `roundK/labels`), the kept
    images (`roundK/selection`, unique and with the balancing copies), the share of `other` among
    each, the teacher's mean confidence on both kinds, and the share of kept labeled-class images
    whose pseudo-label (argmax) is the class in their name."""
    labels = sorted((run_dir / f"round{k}" / "labels").glob("part-*.parquet"))
    sel_path = run_dir / f"round{k}" / "selection" / "selection.parquet"
    if not labels or not sel_path.exists():
        raise FileNotFoundError(f"{run_dir}: round {k} has no labels or no selection yet")
    classes = json.loads((run_dir / f"round{k}" / "selection" / "selection.json").read_text())["classes"]
    ids, conf = [], []
    for p in labels:
        t = pq.read_table(p, columns=["sample_id", "confidence"])
        ids += t.column("sample_id").to_pylist()
        conf.append(t.column("confidence").to_numpy())
    conf = np.concatenate(conf)
    is_other = np.array([class_of(s) in other for s in ids])
    sel = pq.read_table(sel_path, columns=["sample_id", "copies", "pred"])
    sids = sel.column("sample_id").to_pylist()
    copies = sel.column("copies").to_numpy()
    pred = sel.column("pred").to_numpy()
    kept_other = np.array([class_of(s) in other for s in sids], dtype=bool)
    right = np.array([classes[p] == class_of(s) for s, p in zip(sids, pred)], dtype=bool)
    inside = ~kept_other
    return {
        "run": str(run_dir), "pool": len(ids), "pool_other": int(is_other.sum()),
        "kept": len(sids), "kept_other": int(kept_other.sum()),
        "kept_with_copies": int(copies.sum()), "kept_other_with_copies": int(copies[kept_other].sum()),
        "confidence_other": float(conf[is_other].mean()) if is_other.any() else None,
        "confidence_labeled_classes": float(conf[~is_other].mean()) if (~is_other).any() else None,
        "right_of_labeled_classes": float(right[inside].mean()) if inside.any() else None,
        # which labeled class the kept images of other classes were given (unique images)
        "other_as": {classes[c]: int(n) for c, n in zip(*np.unique(pred[kept_other], return_counts=True))},
    }


def _pct(a: int, b: int) -> str:
    return f"{a:,} of {b:,} ({100 * a / b:.1f}%)" if b else "-"


def table(rows: list[dict]) -> str:
    out = ["| run | other classes in the pool | kept (unique): other classes | kept with copies: other classes "
           "| teacher's mean confidence: other / labeled classes | kept labeled-class images labeled right "
           "| kept other-class images labeled as |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        conf = (f"{r['confidence_other']:.3f} / {r['confidence_labeled_classes']:.3f}"
                if r["confidence_other"] is not None and r["confidence_labeled_classes"] is not None else "-")
        right = f"{100 * r['right_of_labeled_classes']:.1f}%" if r["right_of_labeled_classes"] is not None else "-"
        total = sum(r["other_as"].values())
        as_ = ", ".join(f"{c} {100 * n / total:.0f}%" for c, n in sorted(r["other_as"].items(), key=lambda x: -x[1])) or "-"
        out.append(f"| {r['run']} | {_pct(r['pool_other'], r['pool'])} | {_pct(r['kept_other'], r['kept'])} "
                   f"| {_pct(r['kept_other_with_copies'], r['kept_with_copies'])} | {conf} | {right} | {as_} |")
    if len(rows) > 1:
        def ms(vals):
            v = np.array(vals, dtype=float)
            return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}%"
        out.append(f"| mean ± std | {ms([100 * r['pool_other'] / r['pool'] for r in rows])} "
                   f"| {ms([100 * r['kept_other'] / r['kept'] for r in rows])} "
                   f"| {ms([100 * r['kept_other_with_copies'] / r['kept_with_copies'] for r in rows])} | "
                   f"| {ms([100 * r['right_of_labeled_classes'] for r in rows if r['right_of_labeled_classes'] is not None])} | |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run directories")
    ap.add_argument("--other", required=True, help="comma-separated classes the labeled set does not have")
    ap.add_argument("--round", type=int, default=1)
    a = ap.parse_args()
    try:
        rows = [pool_classes(r, {c for c in a.other.split(",") if c}, a.round) for r in a.runs]
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"pool_classes: {e}")
    print(table(rows))


if __name__ == "__main__":
    main()
