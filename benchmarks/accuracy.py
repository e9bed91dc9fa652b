"""Accuracy benchmark: a config end to end, then the paper's ablations as config switches.

    python benchmarks/accuracy.py fashion-mnist-1k [--ablations all|none|a,b,...] [--seeds 0,1]
                                  [--set key=value ...] [--out docs/benchmarks]

Row "baseline" is the config as written (teacher, the noised student of every round and, with
`ablation_no_noise: true`, the round-1 student without noise). Every ablation is one round with a
switch flipped; it reuses the baseline's teacher (and labels/selection when they are unchanged):
the run directory's fingerprints decide what can be reused, so nothing stale is.
Writes docs/benchmarks/<config>.json and .md with the machine and versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("NOISYSTUDENT_PROGRESS", "0")

from noisystudent.cli import resolve_config_path  # noqa: E402
from noisystudent.config import load_config  # noqa: E402
from noisystudent.errors import UserError  # noqa: E402
from noisystudent.pipeline import run  # noqa: E402

# name -> (description, overrides). Overrides apply on top of the config with rounds=1.
ABLATIONS = {
    "no_noise": ("student without any noise", ["student.noise.randaugment=false", "student.noise.drop_rate=0.0",
                                               "student.noise.drop_path_rate=0.0"]),
    "no_randaugment": ("no RandAugment (dropout + SD kept)", ["student.noise.randaugment=false"]),
    "no_dropout_sd": ("no dropout / stochastic depth (RandAugment kept)",
                      ["student.noise.drop_rate=0.0", "student.noise.drop_path_rate=0.0"]),
    "hard_labels": ("hard pseudo-labels", ["student.soft=false"]),
    "ratio_1": ("unlabeled:labeled batch ratio 1", ["student.ratio=1"]),
    "ratio_3": ("unlabeled:labeled batch ratio 3 (the paper's)", ["student.ratio=3"]),
    "init_from_teacher": ("student initialised from the teacher (same size)",
                          ["student.init_from_teacher=true", "models=[{t}, {t}]"]),
    "same_size": ("student the same size as the teacher", ["models=[{t}, {t}]"]),
    "larger_teacher": ("teacher as large as the student", ["models=[{s}, {s}]"]),
    "pool_25": ("25% of the unlabeled pool", ["data.unlabeled.fraction={f25}"]),
    "pool_50": ("50% of the unlabeled pool", ["data.unlabeled.fraction={f50}"]),
    "two_step": ("two-step: pseudo-labels first, then fine-tune on labeled", ["student.mode=two_step"]),
    "ood_soft": ("out-of-domain pool (Fashion-MNIST images for digits), soft labels", ["@ood", "student.soft=true"]),
    "ood_hard": ("out-of-domain pool (Fashion-MNIST images for digits), hard labels", ["@ood", "student.soft=false"]),
}
OOD_POOL = ["data.unlabeled.kind=idx", "data.unlabeled.root=../shared/data/fashion-mnist",
            "data.unlabeled.split=train", "data.unlabeled.per_class=null", "data.unlabeled.subset=draw",
            "data.unlabeled.fraction=0.025"]


def _expand(overrides, cfg):
    t, s = cfg.model_for_round(0), cfg.model_for_round(1)
    frac = cfg.data.unlabeled.fraction
    out = []
    for o in overrides:
        if o == "@ood":
            if cfg.data.labeled.kind != "digits":
                return None      # only meaningful for the digits task
            out += OOD_POOL
            continue
        out.append(o.format(t=t, s=s, f25=round(frac * 0.25, 4), f50=round(frac * 0.5, 4)))
    return out


ABLATION_BASE = ["rounds=1", "ablation_no_noise=false"]


def plan_ablations(path, base_over, names):
    """(name, description, overrides) for every requested ablation that changes something.

    An ablation that the config already is (e.g. `ratio_1` when the config's ratio is 1) would
    only repeat the baseline's student, so it is skipped rather than run and reported twice.
    """
    base_cfg = load_config(path, base_over)
    reference = load_config(path, [*base_over, *ABLATION_BASE])
    plan = []
    for name in names:
        if name not in ABLATIONS:
            raise SystemExit(f"error: unknown ablation {name!r}; allowed: {', '.join(ABLATIONS)}")
        desc, over = ABLATIONS[name]
        over = _expand(over, base_cfg)
        if over is None:
            print(f"skip {name}: does not apply to {Path(path).stem}", flush=True)
            continue
        if load_config(path, [*base_over, *ABLATION_BASE, *over]) == reference:
            print(f"skip {name}: {Path(path).stem} already is this (same config as the baseline)", flush=True)
            continue
        plan.append((name, desc, [*ABLATION_BASE, *over]))
    return plan


def _row(name, desc, summary, run_dir, wall):
    def info(stage):
        p = run_dir / stage / "stage.json"
        return json.loads(p.read_text()).get("info", {}) if p.is_file() else {}
    rows = []
    for m in summary["models"]:
        st = info(f"round{m['round']}/{m['which']}")
        rows.append({"row": name, "description": desc, "round": m["round"], "which": m["which"],
                     "model": m["model"], "top1": m["top1"], "wall_s": wall if m["which"] != "teacher" else None,
                     "train_s": st.get("train_s"), "images_seen": st.get("images_seen")})
    return rows


def run_one(base_cfg_path, overrides, run_dir, reuse_from=None):
    cfg = load_config(base_cfg_path, overrides)
    if reuse_from is not None and not run_dir.exists():
        # Seed with the baseline's round0/round1 inputs; fingerprints decide what is really reused.
        for sub in ("round0", "round1/labels", "round1/selection"):
            if (reuse_from / sub).exists():
                shutil.copytree(reuse_from / sub, run_dir / sub)
    t = time.perf_counter()
    summary = run(cfg, run_dir=run_dir, force=True, report=False)
    return summary, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--ablations", default="all")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    args = ap.parse_args()
    path = resolve_config_path(args.config)
    names = [] if args.ablations == "none" else (list(ABLATIONS) if args.ablations == "all" else args.ablations.split(","))
    rows, t_all = [], time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        base_over = [*args.set, f"seed={seed}"]
        base_dir = Path(args.runs) / f"{Path(path).stem}-s{seed}" / "baseline"
        plan = plan_ablations(path, base_over, names)     # before any training: bad names fail fast
        summary, wall = run_one(path, base_over, base_dir)
        rows += [dict(r, seed=seed) for r in _row("baseline", "config as written", summary, base_dir, wall)]
        print(json.dumps(rows[-1]), flush=True)
        for name, desc, over in plan:
            d = Path(args.runs) / f"{Path(path).stem}-s{seed}" / name
            summary, wall = run_one(path, [*base_over, *over], d, base_dir)
            rows += [dict(r, seed=seed) for r in _row(name, desc, summary, d, wall) if r["which"] != "teacher"]
            print(json.dumps(rows[-1]), flush=True)
    write_tables(Path(args.out), Path(path).stem, rows, time.perf_counter() - t_all, sys.argv[1:])


def write_tables(out: Path, name: str, rows: list, total_s: float, argv: list):
    import numpy as np
    import torch
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": name, "command": "python benchmarks/accuracy.py " + " ".join(argv), "total_s": total_s,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    # mean over seeds per (row, round, which)
    groups = {}
    for r in rows:
        groups.setdefault((r["row"], r["round"], r["which"]), []).append(r)
    lines = [f"# {name}: accuracy table", "",
             f"`{meta['command']}` — {meta['cores']} CPU cores, torch {meta['torch']}, {meta['date']}, "
             f"total {total_s / 60:.1f} min", "",
             "| row | round | model | role | test top-1 | seeds | train s | images seen |", "|---|---|---|---|---|---|---|---|"]
    for (row, rnd, which), rs in groups.items():
        acc = [r["top1"] for r in rs]
        std = f" ± {100 * np.std(acc):.2f}" if len(acc) > 1 else ""
        train_s = rs[0].get("train_s")
        seen = rs[0].get("images_seen")
        lines.append(f"| {row} | {rnd} | {rs[0]['model']} | {which} | {100 * np.mean(acc):.2f}%{std} | {len(rs)} | "
                     f"{train_s:.0f} | {int(seen) if seen else ''} |" if train_s is not None else
                     f"| {row} | {rnd} | {rs[0]['model']} | {which} | {100 * np.mean(acc):.2f}%{std} | {len(rs)} | | |")
    present = [k for k in ABLATIONS if any(r["row"] == k for r in rows)]
    lines += ["", "`train s`: the stage's training time; images seen: labeled + pseudo-labeled images drawn."]
    if present:
        lines += ["", "Ablation rows: " + "; ".join(f"`{k}` = {ABLATIONS[k][0]}" for k in present)]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:      # bad config / override / data: one line, non-zero exit
        raise SystemExit(f"error: {e}") from None
