"""The label stage's loader alone (no model): one DataLoader for all shards vs one per shard.

The label stage reads the pool in shards of `label.shard_size` rows. Until 2026-12-04 it built a
DataLoader per shard, so its decode workers started again for every shard; now one loader reads
every shard (`eval_batches(ranges=...)`). This times both over a synthetic tar pool (28x28 PNGs, as
`label_scale.py` writes them), decode + collate + normalise only, alternating the two modes
`--repeats` times per worker count, and prints img/s.

    python benchmarks/label_loader.py --images 50000 --workers 0 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_scale import generate_pool  # noqa: E402

from noisystudent.config import SourceConfig  # noqa: E402
from noisystudent.data import create_source, eval_batches  # noqa: E402


def timed(src, ranges, batch: int, workers: int, one_loader: bool) -> float:
    """img/s of reading `ranges` of `src` through one loader, or through one loader per range."""
    t, n = time.perf_counter(), 0
    runs = [ranges] if one_loader else [[r] for r in ranges]
    for rs in runs:
        for _, idx in eval_batches(src, batch, 28, [0.5], [0.5], ranges=rs, workers=workers):
            n += len(idx)
    return n / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--shard", type=int, default=4096, help="label.shard_size")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="label_loader_") as tmp:
        generate_pool(Path(tmp), args.images, 10_000)
        src = create_source(SourceConfig(kind="tar", root=tmp), 1)
        S = args.shard
        ranges = [(s * S, min((s + 1) * S, len(src))) for s in range(-(-len(src) // S))]
        print(f"{len(src):,} images, {len(ranges)} shards of {S:,}, batch {args.batch}")
        print("| workers | a loader per shard, img/s | one loader, img/s | one/per-shard |")
        print("|---|---|---|---|")
        for w in args.workers:
            per, one = [], []
            for _ in range(args.repeats):
                per.append(timed(src, ranges, args.batch, w, one_loader=False))
                one.append(timed(src, ranges, args.batch, w, one_loader=True))
            ratio = sorted(o / p for o, p in zip(one, per))[len(one) // 2]
            print(f"| {w} | {min(per):,.0f}-{max(per):,.0f} | {min(one):,.0f}-{max(one):,.0f} | {ratio:.2f}x |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
