"""Decoding large JPEGs (phone photos) for labeling: full decode vs libjpeg's reduced-scale decode.

A pool of camera photos (12 MP, 3-5 MB each) is labeled at a few hundred pixels. `open_image`
keeps at most `max_side` = 4 x max(image_size, 128) pixels per side; since 2026-12-04 a JPEG at least
twice that is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (PIL's `draft`) before the same shrink.

  1. per image, in this process: the decode as it was (open, convert, shrink: `open_image` without
     the draft) against `open_image` now, alternating, median ms; and how far their pixels are apart;
  2. the label stage's loader (`eval_batches`: DataLoader workers decode, resize to `image_size` and
     normalise), img/s and peak memory (PSS of the process and its workers, sampled every 0.1 s),
     with the code on PYTHONPATH: run it once with this
     checkout and once with an older one (`git worktree add /tmp/old <commit>`;
     `PYTHONPATH=/tmp/old/src python benchmarks/big_photo_decode.py --part loader`) for a before/after.

The photos are synthetic but photo-like in decode cost: smooth colour fields upscaled from a small
random image plus Gaussian sensor noise, saved at JPEG quality 90 (~3 MB at 4032x3024); a few
distinct images are written once and copied.

    python benchmarks/big_photo_decode.py --images 64 --workers 2
    python benchmarks/big_photo_decode.py --part loader --images 2560 --batch 256 --consumer-ms 500 --repeats 3
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def photo_jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    a = np.asarray(base, dtype=np.float32) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def decode_full(data: bytes, max_side: int) -> np.ndarray:
    """`open_image` for an RGB JPEG as it was before the draft: full-size decode, then the shrink."""
    from noisystudent.data.decode import _fit
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB") if im.mode != "RGB" else im
        if max(im.size) > max_side:
            im = _fit(im, max_side)
        return np.asarray(im, dtype=np.uint8)


def per_image(sizes, image_sizes, repeats: int) -> None:
    from noisystudent.data import open_image
    print("| photo | image_size (max_side) | full decode ms | open_image ms | speed-up | shape | mean abs diff | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for w, h in sizes:
        data = photo_jpeg(w, h, 0)
        for isz in image_sizes:
            ms = 4 * max(isz, 128)
            full, now = [], []
            for _ in range(repeats):     # alternating, so a slow moment of the machine hits both
                t = time.perf_counter()
                a = decode_full(data, ms)
                full.append(time.perf_counter() - t)
                t = time.perf_counter()
                b = open_image(io.BytesIO(data), 3, max_side=ms)
                now.append(time.perf_counter() - t)
            f, n = statistics.median(full) * 1e3, statistics.median(now) * 1e3
            d = np.abs(a.astype(np.int16) - b.astype(np.int16)) if a.shape == b.shape else None
            print(f"| {w}x{h} ({len(data) / 1e6:.1f} MB) | {isz} ({ms}) | {f:.1f} | {n:.1f} | {f / n:.2f}x | "
                  f"{b.shape[1]}x{b.shape[0]}{'' if d is not None else ' (full: %dx%d)' % (a.shape[1], a.shape[0])} | "
                  f"{d.mean() if d is not None else float('nan'):.2f} | {d.max() if d is not None else -1} |")


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        try:
            with open(f"/proc/{pids[i]}/task/{pids[i]}/children") as f:
                pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


class PeakMemory:
    """Peak PSS (proportional set size: shared pages counted once) of this process and its
    DataLoader workers, sampled every 0.1 s on a thread (Linux /proc)."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_pss_bytes(p) for p in _tree(os.getpid())))
            time.sleep(0.1)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def loader(n: int, size: tuple[int, int], image_size: int, batch: int, workers: int, repeats: int,
           consumer_ms: float) -> None:
    from noisystudent.config import SourceConfig
    from noisystudent.data import create_source, eval_batches
    tmp = Path(tempfile.mkdtemp(prefix="bigphoto-"))
    try:
        folder = tmp / "pool"
        folder.mkdir()
        distinct = [photo_jpeg(*size, seed) for seed in range(4)]
        for i in range(n):
            (folder / f"{i:05d}.jpg").write_bytes(distinct[i % len(distinct)])
        src = create_source(SourceConfig(kind="folder", root=str(folder)), 3)
        src.max_side = 4 * max(image_size, 128)          # as the run context sets it for the pool
        rates, peaks = [], []
        for _ in range(repeats):
            with PeakMemory() as mem:
                t, seen = time.perf_counter(), 0
                for x, idx in eval_batches(src, batch, image_size, [0.5] * 3, [0.5] * 3, workers=workers):
                    seen += len(idx)
                    time.sleep(consumer_ms / 1e3)   # the model's time: the loader's queue fills meanwhile
                rates.append(seen / (time.perf_counter() - t))
            peaks.append(mem.peak / 2 ** 30)
        print(f"loader: {n} photos {size[0]}x{size[1]} -> {image_size} px, batch {batch}, {workers} workers, "
              f"{consumer_ms:g} ms per batch in the consumer: img/s {', '.join(f'{r:.1f}' for r in rates)}; "
              f"peak PSS (process + workers) GiB {', '.join(f'{p:.2f}' for p in peaks)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "decode", "loader"], default="all")
    ap.add_argument("--sizes", nargs="+", default=["4032x3024", "1920x1080", "1024x768"],
                    help="photo sizes WxH for the per-image part")
    ap.add_argument("--image-sizes", nargs="+", type=int, default=[224, 32])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--images", type=int, default=64, help="photos in the loader's pool")
    ap.add_argument("--photo", default="4032x3024", help="their size")
    ap.add_argument("--image-size", type=int, default=224, help="the loader's image_size")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--consumer-ms", type=float, default=0.0,
                    help="sleep per batch in the loop that reads the loader (a stand-in for the model)")
    args = ap.parse_args(argv)
    wh = lambda s: tuple(int(v) for v in s.lower().split("x"))      # noqa: E731
    if args.part in ("all", "decode"):
        per_image([wh(s) for s in args.sizes], args.image_sizes, args.repeats)
    if args.part in ("all", "loader"):
        loader(args.images, wh(args.photo), args.image_size, args.batch, args.workers, max(1, args.repeats // 3),
               args.consumer_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
