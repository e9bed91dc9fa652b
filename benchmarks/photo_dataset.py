"""A small photo-like data set for the user-workflow checks: three colour classes of mixed-size JPEGs.

Writes OUT/train/<class>/ (30 per class), OUT/test/<class>/ (20 per class) and OUT/unlabeled/ (600),
each image 300-2,400 px wide with an aspect ratio of 0.6-1.4: smooth colour fields (a random 8x6
image upscaled, tinted towards its class colour) plus Gaussian sensor noise, JPEG quality 90 (~330 MB
in all). Seeded: the same files every time. Used in docs/benchmarks/throughput.md and
docs/reliability.md ("images that do not fit in memory"):

    python benchmarks/photo_dataset.py /tmp/ph/data
    noisystudent init proj          # then point proj/config.yaml's three folders at /tmp/ph/data
    noisystudent run proj/config.yaml --set data.image_size=64 --set teacher.epochs=10 \\
        --set student.epochs=3 --set data.workers=2 --no-report
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def write(root: Path, labeled: int = 30, test: int = 20, pool: int = 600, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)

    def photo(colour):
        w = int(rng.integers(300, 2400))
        h = int(w * rng.uniform(0.6, 1.4))
        base = rng.integers(0, 256, (6, 8, 3)).astype(np.float32) * 0.5 + np.array(colour) * 0.5
        im = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32)
        im += rng.normal(0, 6, im.shape)
        return Image.fromarray(np.clip(im, 0, 255).astype(np.uint8))

    for split, n in (("train", labeled), ("test", test)):
        for name, colour in COLOURS.items():
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                photo(colour).save(d / f"{i}.jpg", quality=90)
    d = root / "unlabeled"
    d.mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS.values())
    for i in range(pool):
        photo(colours[i % 3]).save(d / f"u{i}.jpg", quality=90)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--pool", type=int, default=600)
    args = ap.parse_args(argv)
    write(args.out, pool=args.pool)
    print(f"written: {args.out}/train, test, unlabeled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
