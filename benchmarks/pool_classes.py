r"""What the select stage kept of a pool whose file names carry each image's class, which the run never
reads (`benchmarks/transfer_set.py` names pool images `<class>_<stem>.png`): how many images of
classes the labeled set does not have (`--other`) the teacher was sure enough of to keep, and
how many of the kept images of the labeled classes carry their true class as pseudo-label.

    python benchmarks/pool_classes.py runs/tx/s0 runs/tx/s1 runs/tx/s2 --other airplane,automobile,ship,truck

One row per run directory (round `--round`, default 1), then the mean ± std over them.

    python benchmarks/pool_classes.py runs/tt/s0 runs/tt/s1 runs/tt/s2 \
        --group "cifar=cifar-*" --group "fashion=fashion-*" --group "mnist=mnist-*"

`--group NAME=PATTERN[,PATTERN...]` (repeatable; shell-style patterns over class names) instead
tells, per group of classes, what became of its pool images: the share kept, the share of the
selection (with copies) that they are, how often their pseudo-label is their class, and the
teacher's mean confidence on them.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def class_of(sample_id: str) -> str:
    """The class a file name carries: `cat_0001.png` (a flat pool) or `cat/0001.png` (a class tree)."""
    name = sample_id.replace("\\", "/")
    return name.split("/")[0] if "/" in name else name.split("_")[0]


def _read(run_dir: Path, k: int):
    """Round `k`'s class names, the pool's ids and teacher confidences (every row of `roundK/labels`)
    and the selection's sample_id, copies and pred columns."""
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
    return classes, ids, np.concatenate(conf), pq.read_table(sel_path, columns=["sample_id", "copies", "pred"])


def parse_groups(specs: list[str]) -> dict[str, list[str]]:
    """`--group NAME=PATTERN[,PATTERN...]` flags as {NAME: [PATTERN, ...]}, in the given order."""
    groups = {}
    for spec in specs:
        name, sep, pats = spec.partition("=")
        patterns = [q for q in pats.split(",") if q]
        if not sep or not name or not patterns:
            raise SystemExit(f"error: --group {spec!r}: expected NAME=PATTERN[,PATTERN...]")
        if name in groups:
            raise SystemExit(f"error: --group {name!r} given twice")
        groups[name] = patterns
    return groups


def group_of(cls: str, groups: dict[str, list[str]]) -> str | None:
    """The first group with a pattern that matches class name `cls` (None: no group)."""
    return next((g for g, pats in groups.items() if any(fnmatch.fnmatchcase(cls, q) for q in pats)), None)


def pool_groups(run_dir: Path, groups: dict[str, list[str]], k: int = 1) -> dict:
    """Per group of classes (by the class in each pool image's file name), for round `k`: pool images,
    those kept (unique; with copies), kept ones whose pseudo-label is their class (counted with
    copies, as the student sees them), and the teacher's mean confidence on the group's pool images."""
    classes, ids, conf, sel = _read(run_dir, k)
    pool_group = np.array([group_of(class_of(s), groups) for s in ids], dtype=object)
    sids = sel.column("sample_id").to_pylist()
    copies = sel.column("copies").to_numpy()
    right = np.array([classes[p] == class_of(s) for s, p in zip(sids, sel.column("pred").to_numpy())])
    kept_group = np.array([group_of(class_of(s), groups) for s in sids], dtype=object)
    out = {"run": str(run_dir), "kept_with_copies": int(copies.sum()), "groups": {}}
    for g in groups:
        mine, kept = pool_group == g, kept_group == g
        out["groups"][g] = {
            "pool": int(mine.sum()), "kept": int(kept.sum()), "kept_with_copies": int(copies[kept].sum()),
            "right_with_copies": int(copies[kept & right].sum()),
            "confidence": float(conf[mine].mean()) if mine.any() else None,
        }
    return out


def group_table(rows: list[dict]) -> str:
    """Per group, the mean over runs (± std with several): kept share of its pool images, its share of
    the selection with copies, pseudo-labels right (with copies), the teacher's mean confidence."""
    def ms(vals, digits=1):
        v = np.array([x for x in vals if x is not None], dtype=float)
        if not len(v):
            return "-"
        return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else "")
    out = ["| group | pool images kept (%) | share of the selection, with copies (%) | copies per kept image "
           "| pseudo-labels right, with copies (%) | teacher's mean confidence |", "|---|---|---|---|---|---|"]
    for g in rows[0]["groups"]:
        per = [r["groups"][g] for r in rows]
        out.append(f"| {g} | {ms([100 * x['kept'] / x['pool'] if x['pool'] else None for x in per])} "
                   f"| {ms([100 * x['kept_with_copies'] / r['kept_with_copies'] if r['kept_with_copies'] else None for x, r in zip(per, rows)])} "
                   f"| {ms([x['kept_with_copies'] / x['kept'] if x['kept'] else None for x in per], 2)} "
                   f"| {ms([100 * x['right_with_copies'] / x['kept_with_copies'] if x['kept_with_copies'] else None for x in per])} "
                   f"| {ms([x['confidence'] for x in per], 3)} |")
    return "\n".join(out)


def pool_classes(run_dir: Path, other: set[str], k: int = 1) -> dict:
    """Counts for round `k` of `run_dir`: the pool (every labeled row of `roundK/labels`), the kept
    images (`roundK/selection`, unique and with the balancing copies), the share of `other` among
    each, the teacher's mean confidence on both kinds, and the share of kept labeled-class images
    whose pseudo-label (argmax) is the class in their name."""
    classes, ids, conf, sel = _read(run_dir, k)
    is_other = np.array([class_of(s) in other for s in ids])
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
    ap.add_argument("--other", help="comma-separated classes the labeled set does not have")
    ap.add_argument("--group", action="append", default=[], metavar="NAME=PATTERN[,PATTERN...]",
                    help="a group of labeled classes (shell-style patterns over class names; repeatable): "
                         "a table per group instead")
    ap.add_argument("--round", type=int, default=1)
    a = ap.parse_args()
    if bool(a.other) == bool(a.group):
        sys.exit("pool_classes: give --other or --group (one of them)")
    try:
        if a.group:
            groups = parse_groups(a.group)
            print(group_table([pool_groups(r, groups, a.round) for r in a.runs]))
        else:
            print(table([pool_classes(r, {c for c in a.other.split(",") if c}, a.round) for r in a.runs]))
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"pool_classes: {e}")


if __name__ == "__main__":
    main()
