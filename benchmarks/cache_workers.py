"""`Source.cache` (data.cache: true) in one process vs in DataLoader workers: seconds and img/s.

Decodes the first `--images` images of a source into RAM with `workers` 0 and each of `--workers`,
alternating, `--repeats` times (the first pass may read the files cold from disk: compare the later
ones). The arrays are the same either way (tests/test_cache_budget.py).

    python benchmarks/cache_workers.py --kind imagefolder --root data/cifar10/train --images 41000
    python benchmarks/cache_workers.py --kind folder --root my/photos --images 600 --max-side 896
"""
from __future__ import annotations

import argparse
import time

from noisystudent.config import SourceConfig
from noisystudent.data import create_source


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="imagefolder")
    ap.add_argument("--root", default="data/cifar10/train")
    ap.add_argument("--images", type=int, default=41_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-side", type=int, default=512, help="as a run sets it: 4 x max(image_size, 128)")
    args = ap.parse_args(argv)
    src = create_source(SourceConfig(kind=args.kind, root=args.root), 3)
    src = src.subset(list(range(min(args.images, len(src)))))
    src.max_side = args.max_side
    for _ in range(args.repeats):
        for w in [0, *args.workers]:
            t = time.perf_counter()
            src.cache(workers=w)
            dt = time.perf_counter() - t
            print(f"{args.kind} {args.root}: {len(src):,} images, workers {w}: {dt:.2f} s, {len(src) / dt:,.0f} img/s",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
