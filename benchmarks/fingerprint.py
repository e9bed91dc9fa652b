"""What fingerprinting a data folder costs at pool scale (issue 17: "cheap enough for 1M files").

Every command lists each data folder and fingerprints it, so that changed data redoes the stages that
read it (docs/reliability.md). This times, on N tiny files in N/1000 folders (a `folder` pool):

  1. listing       `create_source(kind=folder)`: walk the tree, keep the image names, sort;
  2. stat          `Source.fingerprint()` (data.fingerprint: stat): one stat per file;
  3. content cold  `Source.fingerprint(ContentHashes)` (data.fingerprint: content) with no cache: read
                   and hash every file, then save the cache — on the first `--content-n` files only
                   (their bytes come from the disk unless still in the page cache);
  4. the same without a cache file, the files now in the page cache: the CPU cost of hashing;
  5. content warm  with the saved cache (a rerun): one stat per file + a cache lookup.

The files are tiny, so this measures the per-file cost (system calls, Python); reading real images
for the content hash adds their bytes at the hash/disk speed, which is printed too (sha256, in RAM).
Wall and CPU seconds are printed: under `nice -n 19` on a busy machine the wall time is mostly
waiting for a core (and, for a tree larger than the page cache, for the disk).

    nice -n 19 python benchmarks/fingerprint.py                      # 1,000,000 files, content on 100,000
    nice -n 19 python benchmarks/fingerprint.py --n 100000 --content-n 20000
    nice -n 19 python benchmarks/fingerprint.py --dir /big/disk/fp   # keep the tree for the next run
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def make_tree(root: Path, n: int, per_dir: int = 1000) -> float:
    """N distinct ~20-byte `.png` files (the listing goes by extension; nothing here decodes them).
    Returns the seconds it took; an existing tree of the same size is reused."""
    marker = root / f".made-{n}"
    if marker.exists():
        return 0.0
    t = time.perf_counter()
    for d in range((n + per_dir - 1) // per_dir):
        sub = root / f"d{d:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(d * per_dir, min(n, (d + 1) * per_dir)):
            fd = os.open(sub / f"{i:09d}.png", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"not a png %09d\n" % i)
            os.close(fd)
    marker.touch()
    return time.perf_counter() - t


def timed(fn):
    """(result, (wall s, CPU s)). Under `nice -n 19` on a busy machine the wall time is mostly waiting
    for a core; the CPU time (user + system, this process) is what the step costs on an idle one."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - t, time.process_time() - c)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="files in the tree (default 1,000,000)")
    ap.add_argument("--content-n", type=int, default=100_000,
                    help="files the content hash is timed on (a subset of the tree; 0 = skip)")
    ap.add_argument("--dir", help="make (or reuse) the tree here and keep it (default: a temp dir, removed)")
    args = ap.parse_args(argv)

    from noisystudent.config import SourceConfig
    from noisystudent.data import create_source
    from noisystudent.data.contenthash import ContentHashes

    keep = args.dir is not None
    root = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="ns-fp-bench-"))
    rows = []
    try:
        made = make_tree(root / "pool", args.n)
        if made:
            print(f"made {args.n:,} files in {made:.1f} s")
        src, t_list = timed(lambda: create_source(SourceConfig(kind="folder", root=str(root / "pool")), 3))
        assert len(src) == args.n, (len(src), args.n)
        rows.append(("listing", args.n, t_list))
        _, t_stat = timed(src.fingerprint)
        rows.append(("stat fingerprint", args.n, t_stat))
        if args.content_n:
            sub = src.subset(range(min(args.content_n, len(src))))
            cache = root / "content-hashes.npz"
            cache.unlink(missing_ok=True)
            hashes = ContentHashes(cache, racy_ns=0)   # the files are seconds old: store them anyway

            def cold():
                fp = sub.fingerprint(hashes)
                hashes.flush()
                return fp
            fp1, t_cold = timed(cold)
            rows.append(("content, no cache (+ save)", len(sub), t_cold))
            # the same files again, now in the page cache: the cost of hashing without the disk
            _, t_ram = timed(lambda: sub.fingerprint(ContentHashes(None)))
            rows.append(("content, no cache, files in RAM", len(sub), t_ram))
            fp2, t_warm = timed(lambda: sub.fingerprint(ContentHashes(cache)))
            assert fp1 == fp2
            rows.append(("content, cached (load + stat)", len(sub), t_warm))
        buf = os.urandom(256 << 20)
        _, t_sha = timed(lambda: hashlib.sha256(buf).digest())
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)

    # microseconds per file = seconds per million files
    print(f"{'step':<32}{'files':>11}{'wall s':>9}{'CPU s':>8}{'CPU s per 1M files':>20}")
    for name, n, (wall, cpu) in rows:
        print(f"{name:<32}{n:>11,}{wall:>9.2f}{cpu:>8.2f}{1e6 * cpu / n:>20.1f}")
    print(f"sha256 (in RAM): {256 / t_sha[1]:,.0f} MB/s of CPU time — reading real images adds their "
          "bytes at the smaller of this and the disk's speed")
    print(f"load average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
