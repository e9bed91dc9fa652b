"""Build a data set no bundled recipe was chosen on, in the folder layout `noisystudent init --data`
reads: ROOT/train/<class>/, ROOT/val/<class>/, ROOT/unlabeled/ (flat, no labels) and ROOT/test/<class>/.

Today: CIFAR-10 in grayscale at 28 px (`--gray --size 28`), a harder task than Fashion-MNIST in the
shape of the Fashion-MNIST recipe's images, so `init --data` picks that recipe for it; the draw of
each split is seeded. Example (the transfer check in docs/benchmarks/transfer.md):

    python benchmarks/transfer_set.py --src data/cifar10 --out data/cifar10-gray28 --gray --size 28 \
        --train 100 --val 100 --unlabeled 500
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def build(src: Path, out: Path, gray: bool, size: int, train: int, val: int, unlabeled: int, test: int,
          seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0, "unlabeled": 0, "test": 0}

    def save(f: Path, dest: Path) -> None:
        im = Image.open(f)
        im = im.convert("L" if gray else "RGB")
        if size and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.save(dest)

    for c in sorted(p.name for p in (src / "train").iterdir() if p.is_dir()):
        files = sorted((src / "train" / c).iterdir())
        order = rng.permutation(len(files))
        need = train + val + unlabeled
        if need > len(files):
            sys.exit(f"{src}/train/{c}: {len(files)} images, fewer than train+val+unlabeled = {need}")
        parts = {"train": order[:train], "val": order[train:train + val],
                 "unlabeled": order[train + val:need]}
        for split, idx in parts.items():
            for i in idx:
                f = files[i]
                dest = out / split / f"{c}_{f.stem}.png" if split == "unlabeled" else out / split / c / f"{f.stem}.png"
                save(f, dest)
                counts[split] += 1
        tests = sorted((src / "test" / c).iterdir())
        for f in tests[: test or None]:
            save(f, out / "test" / c / f"{f.stem}.png")
            counts["test"] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="an ImageFolder tree with train/ and test/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gray", action="store_true", help="convert to grayscale")
    ap.add_argument("--size", type=int, default=0, help="resize to SIZE x SIZE (0: keep)")
    ap.add_argument("--train", type=int, default=100, help="labeled images per class")
    ap.add_argument("--val", type=int, default=100, help="validation images per class (0: none)")
    ap.add_argument("--unlabeled", type=int, default=500, help="pool images per class, labels dropped")
    ap.add_argument("--test", type=int, default=0, help="test images per class (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.out.exists():
        sys.exit(f"{a.out} exists: remove it first")
    counts = build(a.src, a.out, a.gray, a.size, a.train, a.val, a.unlabeled, a.test, a.seed)
    print(f"{a.out}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
