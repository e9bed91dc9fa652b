"""Which test-time augmentation should the teacher label with? One trained model of a run, scored
for each TTA setting on the validation split and over the unlabeled pool (how many argmax
pseudo-labels are right, before and after the confidence threshold, where the pool's labels are
known, as in the bundled benchmarks that carve the pool from a labeled set).

    python benchmarks/tta.py cifar10-4k-fast --run-dir runs/fast --round 0 --settings none flip flip+s1 flip+s2
    python benchmarks/tta.py fashion-mnist-1k --run-dir runs/fm --pool-images 5000 --out /tmp/tta.md

A setting is `none`, `flip`, `sN` (shifts of N pixels) or `flip+sN`; each maps to the config keys
`label.flip_tta` / `label.shift_tta` (and `evaluate.*`). Choose on the val and pool columns, never
on test (not read here). The views cost forward passes: `views` x the labeling compute.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("NOISYSTUDENT_PROGRESS", "0")

from noisystudent.cli import resolve_config_path  # noqa: E402
from noisystudent.config import load_config  # noqa: E402
from noisystudent.errors import UserError  # noqa: E402
from noisystudent.inference import tta_view_count  # noqa: E402
from noisystudent.inference import inference_batch_size  # noqa: E402
from noisystudent.labels import predict_shard  # noqa: E402
from noisystudent.pseudo import resolve_threshold  # noqa: E402
from noisystudent.stages.common import RunContext  # noqa: E402
from noisystudent.stages.modelfile import load_model  # noqa: E402
from noisystudent.stages.evaluate import evaluate_source  # noqa: E402


def parse_setting(text: str) -> tuple[bool, int]:
    """'none' | 'flip' | 'sN' | 'flip+sN' -> (flip, shift)."""
    flip, shift = False, 0
    for part in text.split("+"):
        if part == "flip":
            flip = True
        elif part.startswith("s") and part[1:].isdigit() and int(part[1:]) > 0:
            shift = int(part[1:])
        elif part != "none" or text != "none":
            raise UserError(f"TTA setting {text!r}: use none, flip, sN or flip+sN (N pixels > 0)")
    return flip, shift


def pool_scores(labels: np.ndarray, pred: np.ndarray, conf: np.ndarray, threshold: float) -> dict:
    """Argmax pseudo-label accuracy over the pool, and over the images the threshold keeps."""
    known = labels >= 0
    keep = known & (conf >= threshold)
    right = pred == labels
    return {"pool_correct": float(right[known].mean()) if known.any() else float("nan"),
            "kept": int(keep.sum()),
            "kept_correct": float(right[keep].mean()) if keep.any() else float("nan"),
            "mean_conf": float(conf.mean()) if len(conf) else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--round", type=int, default=0, help="whose model labels round ROUND+1 (0: the teacher)")
    ap.add_argument("--settings", nargs="+", default=["none", "flip", "flip+s1", "flip+s2"])
    ap.add_argument("--pool-images", type=int, default=0, help="a seeded random subset of the pool (0 = all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="also write the table to this .md file")
    args = ap.parse_args(argv)
    try:
        settings = [(s, *parse_setting(s)) for s in args.settings]
        cfg = load_config(resolve_config_path(args.config), args.set)
        ctx = RunContext(cfg, args.run_dir, args.device)
        which = "teacher" if args.round == 0 else "student"
        path = ctx.layout.model(args.round, which) / "model.pt"
        if not path.is_file():
            raise UserError(f"{path}: no trained model there (run the loop up to round {args.round} first)")
        model, meta = load_model(path, ctx.device, expect_classes=ctx.classes)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.eval()
    pool = ctx.pool
    if args.pool_images and args.pool_images < len(pool):
        pool = pool.subset(np.sort(np.random.default_rng(cfg.seed).choice(len(pool), args.pool_images, replace=False)))
    dev, workers = ctx.device, ctx.workers
    bs = inference_batch_size(cfg.label.batch_size, dev, meta["image_size"])
    threshold = resolve_threshold(cfg.select.threshold, len(ctx.classes))
    rows = []
    for name, flip, shift in settings:
        t0 = time.perf_counter()
        row = {"setting": name, "views": tta_view_count(flip, shift)}
        if ctx.val is not None:
            rep = evaluate_source(model, meta, ctx.val, bs, dev, workers, "val", flip_tta=flip, shift_tta=shift)
            row.update(val_top1=rep["top1"], val_nll=rep["nll"])
        table = predict_shard(model, pool, 0, len(pool), image_size=meta["image_size"], mean=meta["mean"],
                              std=meta["std"], temperature=cfg.label.temperature, flip_tta=flip,
                              shift_tta=shift, batch_size=bs, device=dev, workers=workers,
                              keep_true_labels=True)
        row.update(pool_scores(table.column("true_label").to_numpy(), table.column("pred").to_numpy(),
                               table.column("confidence").to_numpy(), threshold))
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{name}: {row}", file=sys.stderr, flush=True)
    lines = [f"`python benchmarks/tta.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"{meta['model_name']} ({path}), val {len(ctx.val) if ctx.val is not None else 0} images, "
             f"pool {len(pool)} images, threshold {threshold:g}, torch {torch.__version__}", "",
             "| setting | views | val top-1 (%) | val NLL | pool argmax correct (%) | kept by the threshold | "
             "kept correct (%) | mean confidence | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        val = (f"{100 * r['val_top1']:.2f} | {r['val_nll']:.4f}") if "val_top1" in r else "— | —"
        lines.append(f"| {r['setting']} | {r['views']} | {val} | {100 * r['pool_correct']:.2f} | {r['kept']} | "
                     f"{100 * r['kept_correct']:.2f} | {r['mean_conf']:.3f} | {r['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
