"""The paper's resolution fix (after FixRes) on CIFAR-10: train at 24 px, test at 32 px.

    python benchmarks/resolution.py [--epochs 15] [--per-class 400] [--model ns_cnn_m]

Trains a supervised model on CIFAR-10 (400 labels per class by default) at 24 px, then reports test
top-1 (a) at 24 px, the training resolution, (b) at 32 px without fine-tuning (the train/test
resolution discrepancy), (c) at 32 px after the `finetune` stage: a short fine-tune at 32 px without
augmentation, stem + first stage frozen (their BatchNorm statistics included).
Writes docs/benchmarks/resolution.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("NOISYSTUDENT_PROGRESS", "0")

from noisystudent.config import load_config  # noqa: E402
from noisystudent.pipeline import run  # noqa: E402
from noisystudent.stages import RunContext, load_model  # noqa: E402
from noisystudent.stages.evaluate import evaluate_source  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=400)
    ap.add_argument("--model", default="ns_cnn_m")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-resolution"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    args = ap.parse_args()
    data = ROOT / "data" / "cifar10"
    if not (data / "train").is_dir():
        data.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "xzf", str(ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"), "-C", str(data)], check=True)
    cfg = load_config("configs/cifar10-4k.yaml", [
        "rounds=0", f"models=[{args.model}]", "data.image_size=24", f"data.labeled.per_class={args.per_class}",
        f"teacher.epochs={args.epochs}", "teacher.ema_decay=0.0", "finetune.enabled=true", "finetune.image_size=32",
        f"finetune.epochs={args.finetune_epochs}", "finetune.freeze=1", f"data.labeled.root={data / 'train'}",
        f"data.unlabeled.root={data / 'train'}", f"data.test.root={data / 'test'}"])
    t = time.perf_counter()
    summary = run(cfg, run_dir=args.runs, force=True, report=False)
    wall = time.perf_counter() - t
    ctx = RunContext(cfg, args.runs)
    model, meta = load_model(ctx.layout.model(0, "teacher") / "model.pt")
    at32 = evaluate_source(model, meta, ctx.test, 256, "cpu", image_size=32)["top1"]
    by = {m["which"]: m for m in summary["models"]}
    rows = [("train 24 px, test 24 px", by["teacher"]["top1"]), ("train 24 px, test 32 px (no fine-tune)", at32),
            (f"train 24 px, fine-tune {args.finetune_epochs} epochs at 32 px (frozen stem+stage 1), test 32 px",
             by["finetune"]["top1"])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/resolution.py " + " ".join(sys.argv[1:])
    (out / "resolution.json").write_text(json.dumps({"command": cmd, "wall_s": wall, "rows": rows}, indent=2))
    lines = [f"# Resolution fix on CIFAR-10 ({args.per_class}/class labeled, {args.model}, {args.epochs} epochs)", "",
             f"`{cmd}` — {wall / 60:.1f} min on {os.cpu_count()} CPU cores", "", "| setting | test top-1 |", "|---|---|"]
    lines += [f"| {name} | {100 * acc:.2f}% |" for name, acc in rows]
    (out / "resolution.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
