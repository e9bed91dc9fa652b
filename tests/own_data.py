"""A tiny RGB data set a new user would bring: an ImageFolder of 3 classes, a flat unlabeled pool and
a test folder, each class a distinct colour (so a few epochs learn it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "ship")
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "ship": (40, 40, 200)}


def _img(rng, cls: str, size: int) -> Image.Image:
    base = np.array(COLOURS[cls], dtype=np.float64)
    a = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def make_own_data(root: Path, per_class: int = 6, test_per_class: int = 4, pool_per_class: int = 6,
                  size: int = 12, seed: int = 0) -> dict:
    """root/train/<class>/*.png, root/test/<class>/*.png, root/pool/*.png (flat, no labels)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _img(rng, c, size).save(d / f"{c}{i}.png")
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    k = 0
    for c in CLASSES:
        for _ in range(pool_per_class):
            _img(rng, c, size).save(pool / f"img{k:03d}.png")
            k += 1
    return {"train": root / "train", "test": root / "test", "pool": pool, "pool_images": k}
