"""Labeling at pool scale: throughput and memory of the real label stage on a synthetic tar pool.

For each pool size (a fresh child process per size, so each peak RSS is its own):
  1. generate N 28x28 grayscale PNGs into WebDataset-style tar shards in a temp dir. A few hundred
     distinct digit-like images are encoded once and their bytes reused; tar headers come from a
     template, so generation runs at disk speed (~1 KB per image: 1M images ~ 1 GB of disk);
  2. save an (untrained) ns_cnn_s teacher as the run's round-0 teacher and run `label_pool` — the label stage
     itself: `tar` source index, eval_batches, Parquet shards, stage record;
  3. run `select_from_labels` over the label shards (threshold 0.3, per_class auto). The teacher is
     random, so labels use temperature 0.05 to spread its confidences like a trained model's.

Prints images/s, peak RSS (the process and any DataLoader workers) and the selection time.
Targets: RSS < 2 GB and about flat from 100k to 1M; selection < 60 s at 1M.

    python benchmarks/label_scale.py --sizes 100000 1000000
    python benchmarks/label_scale.py --sizes 100000 --workers 1 --threads 1 --tmpdir /big/disk
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> tuple[float, float]:
    """Peak RSS (MB) of this process, and of the largest finished child (DataLoader workers; a
    forked worker's figure includes pages it shares with this process)."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def _current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _distinct_pngs(n: int, seed: int = 0) -> list[bytes]:
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = Image.new("L", (28, 28), 0)
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 5))):
            pts = [tuple(rng.integers(4, 24, 2).tolist()) for _ in range(3)]
            d.line(pts, fill=int(rng.integers(150, 256)), width=int(rng.integers(2, 4)))
        b = io.BytesIO()
        im.save(b, format="PNG", optimize=True)
        out.append(b.getvalue())
    return out


def _ustar_header(name: bytes, size: int) -> bytes:
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"14000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def generate_pool(root: Path, n: int, per_shard: int, distinct: int = 256) -> float:
    """n images in shards pool-00000.tar ...; returns the seconds it took."""
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    blobs = _distinct_pngs(distinct)
    pads = [b"\0" * (-len(b) % 512) for b in blobs]
    for s in range(0, n, per_shard):
        with open(root / f"pool-{s // per_shard:05d}.tar", "wb", buffering=1 << 22) as f:
            for i in range(s, min(n, s + per_shard)):
                j = (i * 2654435761) % distinct          # scatter the reused images
                f.write(_ustar_header(b"%09d.png" % i, len(blobs[j])))
                f.write(blobs[j])
                f.write(pads[j])
            f.write(b"\0" * 1024)
    return time.perf_counter() - t0


def run_one(n: int, args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from noisystudent.artifacts import write_stage
    from noisystudent.config import load_config
    from noisystudent.models import create_model
    from noisystudent.selection import select_from_labels
    from noisystudent.stages.common import RunContext
    from noisystudent.stages.modelfile import save_model
    from noisystudent.stages.label import label_pool

    tmp = Path(tempfile.mkdtemp(prefix=f"label_scale_{n}_", dir=args.tmpdir))
    try:
        shards = tmp / "pool"
        gen_s = generate_pool(shards, n, args.shard_images)
        disk_mb = sum(p.stat().st_size for p in shards.iterdir()) / 2**20
        cfg = load_config(None, [
            "name=label_scale", "device=cpu",
            "data.labeled={kind: digits, split: train, per_class: 20}",
            f"data.unlabeled={{kind: tar, root: '{shards}'}}",
            "data.test={kind: digits, split: test}",
            "data.image_size=28", "data.in_chans=1", f"data.workers={args.workers}",
            f"label.batch_size={args.batch_size}", f"label.shard_size={args.label_shard}",
            "label.temperature=0.05",
        ])
        ctx = RunContext(cfg, tmp / "run", "cpu")
        _ = ctx.classes                                  # imports + the labeled set (class names)
        rss_base = _current_rss_mb()
        tdir = ctx.layout.model(0, "teacher")
        torch.manual_seed(0)
        model = create_model("ns_cnn_s", len(ctx.classes), 1)
        save_model(tdir / "model.pt", model, ctx.model_meta("ns_cnn_s", 28, cfg.teacher.noise, "teacher"))
        write_stage(tdir, status="done", fingerprint="label_scale", config={}, inputs={},
                    outputs={"model.pt": True})

        t0 = time.perf_counter()
        pool = ctx.pool                                  # the tar index (header scan of every shard)
        index_s = time.perf_counter() - t0
        assert len(pool) == n, (len(pool), n)
        t0 = time.perf_counter()
        res = label_pool(ctx, 1)
        label_s = time.perf_counter() - t0
        rss_label, rss_kids = _rss_mb()
        assert res.record["info"]["rows"] == n, res.record["info"]

        t0 = time.perf_counter()
        sel = select_from_labels(res.dir, num_classes=10, threshold=0.3, per_class="auto",
                                 labeled_class_counts=[20] * 10, soft=True, seed=0)
        select_s = time.perf_counter() - t0
        rss_end, rss_kids = _rss_mb()
        return {"pool": n, "shards": len(list(shards.iterdir())), "disk_mb": round(disk_mb),
                "generate_s": round(gen_s, 1), "index_s": round(index_s, 1),
                "label_s": round(label_s, 1), "images_per_s": round(n / label_s),
                "rss_before_label_mb": round(rss_base),
                "peak_rss_label_mb": round(rss_label), "peak_rss_mb": round(rss_end),
                "peak_rss_workers_mb": round(rss_kids) if args.workers else 0, "select_s": round(select_s, 1),
                "selected_unique": sel.table.num_rows, "workers": args.workers,
                "threads": torch.get_num_threads()}
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--shard-images", type=int, default=10_000, help="images per tar shard")
    ap.add_argument("--label-shard", type=int, default=4096, help="label.shard_size (rows per Parquet part)")
    ap.add_argument("--batch-size", type=int, default=512, help="label.batch_size")
    ap.add_argument("--workers", type=int, default=0, help="data.workers (DataLoader decode processes)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--tmpdir", default=None, help="where to generate the pool (needs ~1 KB per image)")
    ap.add_argument("--keep", action="store_true", help="keep the generated pool and run directory")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("NOISYSTUDENT_PROGRESS", "0")

    if args.one is not None:                            # child: one size, JSON on the last line
        print(json.dumps(run_one(args.one, args)))
        return 0
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--shard-images", str(args.shard_images),
               "--label-shard", str(args.label_shard), "--batch-size", str(args.batch_size),
               "--workers", str(args.workers), "--threads", str(args.threads)]
        if args.tmpdir:
            cmd += ["--tmpdir", args.tmpdir]
        if args.keep:
            cmd.append("--keep")
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-4000:], file=sys.stderr)
            return out.returncode
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = [("pool", "{:>9,}"), ("generate_s", "{:>8.1f}"), ("index_s", "{:>7.1f}"), ("label_s", "{:>8.1f}"),
            ("images_per_s", "{:>8,}"), ("rss_before_label_mb", "{:>8,}"), ("peak_rss_mb", "{:>8,}"),
            ("peak_rss_workers_mb", "{:>8,}"), ("select_s", "{:>8.1f}")]
    heads = ["pool", "gen s", "index s", "label s", "images/s", "RSS0 MB", "peak MB", "wrk MB", "select s"]
    print("\n" + "  ".join(f"{h:>10}" for h in heads))
    for r in rows:
        print("  ".join(f"{fmt.format(r[c]):>10}" for c, fmt in cols))
    ok_rss = all(r["peak_rss_mb"] < 2048 for r in rows)
    ok_sel = all(r["select_s"] < 60 for r in rows)
    print(f"\npeak RSS < 2 GB: {'yes' if ok_rss else 'NO'}; selection < 60 s: {'yes' if ok_sel else 'NO'}")
    if len(rows) > 1:
        print(f"peak RSS growth {rows[0]['pool']:,} -> {rows[-1]['pool']:,}: "
              f"{rows[-1]['peak_rss_mb'] - rows[0]['peak_rss_mb']:+,} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
