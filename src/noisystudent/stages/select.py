"""The `select` stage: filter low-confidence pseudo-labels and balance classes (pure logic lives in
`selection.py`/`pseudo.py`; this only reads the labels folder and writes the selection), leaving out
pool images that are copies or near copies of evaluation images (`data/overlap.py`, `data/nearcopy.py`)."""
from __future__ import annotations

import pyarrow.parquet as pq

from .. import runwarnings
from ..artifacts import atomic_write, read_stage, write_json
from ..config import config_hash, config_to_dict
from ..data import seed_for
from ..pseudo import auto_proportions, resolve_threshold
from ..selection import select_from_labels
from .common import RunContext, StageResult, class_counts, run_stage

__all__ = ["select_pseudo_labels"]


def select_pseudo_labels(ctx: RunContext, k: int) -> StageResult:
    cfg = ctx.cfg
    label_dir = ctx.layout.labels(k)
    # the number, not 'auto': what the filter used is on record, and an explicit 0.3 and an 'auto'
    # that resolves to it are one selection (a finished one is not redone)
    threshold = resolve_threshold(cfg.select.threshold, len(ctx.classes))
    config = {"select": {**config_to_dict(cfg.select), "threshold": threshold}, "soft": cfg.student.soft,
              "seed": cfg.seed, "labeled_counts": class_counts(ctx.labeled.labels, len(ctx.classes))}
    # per_class auto gives the pool the validation set's class mix where it was chosen, not drawn (a
    # balanced val under a long-tailed labeled set: the paper's fixed count per class), else the
    # labeled set's (pseudo.auto_proportions); only a val mix that is used is in the fingerprint
    proportions, basis = config["labeled_counts"], "labeled"
    if cfg.select.per_class == "auto" and ctx.val is not None:
        proportions, basis = auto_proportions(proportions, class_counts(ctx.val.labels, len(ctx.classes)))
        if basis == "val":
            config["val_counts"] = proportions
    # pool images that are copies of validation or test images are left out (data/overlap.py); only
    # a pool that has some puts them in the fingerprint, so a run made before the check is not redone
    copies = ctx.pool_copies
    exact = set().union(*copies.values())
    # ... and near copies (re-encoded, resized, recoloured: data/nearcopy.py) unless select.near_copies
    # is off; an exact copy is counted as such only
    nc = ctx.pool_near_copies if cfg.select.near_copies else {"found": {}, "thresholds": {}}
    near = {n: {p: v for p, v in d.items() if p not in exact} for n, d in nc["found"].items()}
    near, thresholds = {n: d for n, d in near.items() if d}, nc["thresholds"]
    dropped = sorted(exact.union(*near.values()))
    if dropped:
        config["pool_copies"] = {"counts": {n: len(v) for n, v in copies.items()}, "ids": config_hash(dropped)}
        if near:
            config["pool_copies"]["near_counts"] = {n: len(d) for n, d in near.items()}

    def body(d):
        per_class = None if cfg.select.per_class == "none" else cfg.select.per_class
        sel = select_from_labels(label_dir, num_classes=len(ctx.classes), threshold=threshold,
                                 per_class=per_class, class_counts=proportions,
                                 soft=cfg.student.soft, seed=seed_for(cfg.seed, "select", k), exclude_ids=dropped)
        # undecodable pool images the label stage skipped (data.bad_images=skip), reported here too
        skipped = (read_stage(label_dir) or {}).get("info", {}).get("skipped_images", 0)
        report = dict(sel.report, classes=list(ctx.classes), pool_skipped_images=skipped)
        if report["per_class_mode"] == "auto":
            report["per_class_proportions"] = basis        # "val" or "labeled": whose class mix
        warnings: dict = {}
        if copies:
            report["pool_copies"] = {n: {"count": len(v), "examples": v[:5]} for n, v in copies.items()}
            runwarnings.emit(ctx.run_dir, "pool_copies", runwarnings.pool_copies(copies), into=warnings)
        if near:      # every pair is in the run's cache/near-copies.json
            report["pool_near_copies"] = {n: {"count": len(d), "threshold": thresholds[n][0],
                                              "examples": [[p, *d[p]] for p in sorted(d)[:5]]} for n, d in near.items()}
            runwarnings.emit(ctx.run_dir, "pool_near_copies", runwarnings.pool_near_copies(near), into=warnings)
        unsearched = {n: share for n, (t, share) in thresholds.items() if t is None}
        if unsearched:     # images alike by nature (nearcopy.copy_threshold): only exact copies were looked for
            report["near_copies_not_searched"] = {n: {"share_alike": v} for n, v in unsearched.items()}
        if ctx.rank == 0:
            with atomic_write(d / "selection.parquet") as f:
                pq.write_table(sel.table, f)
            write_json(d / "selection.json", report)
        return ["selection.parquet", "selection.json"], {
            "selected_unique": sel.table.num_rows, "selected_with_copies": int(sum(report["counts_selected_with_copies"])),
            "pool_rows": report.get("rows"),
            "pseudo_label_accuracy": report.get("pseudo_label_accuracy"),
            **({"pool_copies_dropped": len(dropped), "warnings": warnings} if dropped else {})}

    return run_stage(ctx, ctx.layout.selection(k), config, {"labels": label_dir}, body, rank0_only=True)
