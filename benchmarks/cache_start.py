"""Seconds a run spends caching its labeled, validation and test sets before the teacher starts
(`RunContext` with `data.cache: true`), for each `data.workers` value, alternating, `--repeats` times.

    python benchmarks/cache_start.py --config cifar10-4k-fast --workers 0 auto
"""
from __future__ import annotations

import argparse
import tempfile
import time

from noisystudent.cli import resolve_config_path
from noisystudent.config import load_config
from noisystudent.stages.common import RunContext


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="cifar10-4k-fast")
    ap.add_argument("--workers", nargs="+", default=["0", "auto"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    for _ in range(args.repeats):
        for w in args.workers:
            cfg = load_config(resolve_config_path(args.config), [f"data.workers={w}"])
            with tempfile.TemporaryDirectory() as run_dir:
                t = time.perf_counter()
                ctx = RunContext(cfg, run_dir, args.device)
                n = len(ctx.labeled) + len(ctx.test) + len(ctx.val or [])
                dt = time.perf_counter() - t
            print(f"{args.config} data.workers={w} (caching in {ctx.decode_workers} processes): "
                  f"{n:,} images cached in {dt:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
