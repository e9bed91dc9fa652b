"""How well `data/nearcopy.py` finds near copies of test images in a pool, on the data on hand.

Two tables:
1. *Found*: each data set's training split as the pool, its test split as the evaluation set: the
   pairs flagged, by score band, and how many of them share their class (a copy always does; two
   different images of one class may too, so this bounds the false pairs from below, not above).
2. *Recall*: test images altered as collections alter them (re-saved as JPEG, enlarged, recoloured,
   turned gray, moved or cropped by a pixel or more) form the pool; the share found again.

`--montage DIR` writes side-by-side pictures of flagged pairs per score band, to judge by eye.
`--phash` prints both tables for ImageHash's perceptual hash too (`pip install ImageHash`; not a
dependency), at several Hamming distances: the library we would have used instead.

    python benchmarks/near_copies.py --cifar data/cifar10 --fashion ../shared/data/fashion-mnist --montage /tmp/nc
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from noisystudent.data.nearcopy import (DETAIL_MIN, describe, evaluation_set, near_copies_of, near_copy_pairs,
                                        source_thumbnails)
from noisystudent.data.sources import ArraySource, read_digits, read_idx, read_imagefolder

BANDS = [(DETAIL_MIN, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01)]


def _jpeg(im: Image.Image, q: int) -> Image.Image:
    b = io.BytesIO()
    im.save(b, "JPEG", quality=q)
    return Image.open(io.BytesIO(b.getvalue())).convert(im.mode)


def alterations(a: np.ndarray) -> dict[str, np.ndarray]:
    """What a collection does to an image it keeps twice (uint8 HWC in, same kind out)."""
    im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    w, h = im.size
    out = {
        "JPEG quality 30": _jpeg(im, 30),
        "JPEG quality 75": _jpeg(im, 75),
        "enlarged 4x (bicubic)": im.resize((4 * w, 4 * h), Image.BICUBIC),
        "enlarged 3x + JPEG 60": _jpeg(im.resize((3 * w, 3 * h), Image.BILINEAR), 60),
        "brightness 1.3, contrast 0.8": ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.3)).enhance(0.8),
        "gray": im.convert("L").convert(im.mode),
        "moved 1 px (edge repeated)": Image.fromarray(np.pad(np.asarray(im), ((1, 0), (1, 0)) + ((0, 0),) * (a.ndim - 2 if im.mode != "L" else 0), mode="edge")[:h, :w]),
        "cropped 1 px a side, resized back": im.crop((1, 1, w - 1, h - 1)).resize((w, h), Image.BICUBIC),
        "cropped 2 px a side, resized back": im.crop((2, 2, w - 2, h - 2)).resize((w, h), Image.BICUBIC),
        "mirrored": im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    }
    res = {}
    for k, v in out.items():
        v = np.asarray(v.convert("L" if a.shape[2] == 1 else "RGB"), dtype=np.uint8)
        res[k] = v[:, :, None] if v.ndim == 2 else v
    return res


def found_table(name: str, pool, test, montage: Path | None) -> None:
    t = time.time()
    found, thresholds = near_copies_of(pool, {"test": test}, workers=0)
    hits, (threshold, share) = found["test"], thresholds["test"]
    took = time.time() - t
    pool_label = dict(zip(pool.ids, pool.labels.tolist()))
    test_label = dict(zip(test.ids, test.labels.tolist()))
    print(f"\n### {name}: {len(pool):,} pool (train) vs {len(test):,} test images ({took:.1f} s, 1 process)\n")
    print(f"{100 * share:.1f}% of the test images match another test image at >= {DETAIL_MIN}: "
          + (f"threshold {threshold:.3f}\n" if threshold is not None else "alike by nature, not searched"))
    if threshold is None:
        return
    print("| score | pool images flagged | test images they copy | same class |")
    print("|---|---|---|---|")
    bands = [(max(lo, threshold), hi) for lo, hi in BANDS if hi > threshold]
    for lo, hi in bands + ([(threshold, 1.01)] if len(bands) > 1 else []):
        sel = [(p, o) for p, (o, s) in hits.items() if lo <= s < hi]
        same = sum(pool_label[p] == test_label[o] for p, o in sel)
        band = f"{lo:.3f}-{min(hi, 1):.2f}" if (lo, hi) != (threshold, 1.01) else f"all >= {lo:.3f}"
        frac = f"{same}/{len(sel)} ({100 * same / len(sel):.1f}%)" if sel else "-"
        print(f"| {band} | {len(sel):,} | {len({o for _, o in sel}):,} | {frac} |")
    if montage:
        montage.mkdir(parents=True, exist_ok=True)
        pool_row, test_row = {k: i for i, k in enumerate(pool.ids)}, {k: i for i, k in enumerate(test.ids)}
        for lo, hi in bands:
            sel = sorted((p, o) for p, (o, s) in hits.items() if lo <= s < hi)
            sel = [sel[i] for i in np.random.default_rng(0).permutation(len(sel))[:30]]
            canvas = Image.new("RGB", (6 * 140, 5 * 72), "white")
            for k, (p, o) in enumerate(sel):
                r, c = divmod(k, 6)
                for j, img in enumerate((test.load(test_row[o]), pool.load(pool_row[p]))):
                    im = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).convert("RGB")
                    canvas.paste(im.resize((64, 64)), (c * 140 + 66 * j, r * 72))
            canvas.save(montage / f"{name.split()[0].lower()}-{lo:.2f}-{min(hi, 1):.2f}.png")


def recall_table(name: str, test, n: int) -> None:
    rows = np.random.default_rng(0).choice(len(test), min(n, len(test)), replace=False)
    print(f"\n### {name}: {len(rows):,} test images altered, each kind searched for among all {len(test):,}\n")
    test_rows, other, (threshold, _) = evaluation_set(test)
    if threshold is None:
        print("not searched: its test images are alike by nature")
        return
    kinds: dict[str, list] = {}
    for r in rows:
        for k, v in alterations(test.load(int(r))).items():
            kinds.setdefault(k, []).append((int(r), v))
    print("| alteration | found again (right image) |")
    print("|---|---|")
    for k, pairs in kinds.items():     # read as a run reads a pool (decoded small, then the thumbnail)
        altered = ArraySource("altered", [str(i) for i in range(len(pairs))], np.zeros(len(pairs), np.int64), None,
                              test.in_chans, images=[v for _, v in pairs])
        thumbs = np.concatenate([t for _, t in source_thumbnails(altered)])
        p, o, _ = near_copy_pairs(describe(thumbs), other, threshold)
        right = sum(int(test_rows[oi]) == pairs[pi][0] for pi, oi in zip(p.tolist(), o.tolist()))
        print(f"| {k} | {right}/{len(pairs)} ({100 * right / len(pairs):.1f}%) |")


def _phash_bits(a: np.ndarray) -> np.ndarray:
    import imagehash
    im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    return np.packbits(imagehash.phash(im).hash.ravel())


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def phash_tables(name: str, pool, test, n: int, distances=(2, 4, 6, 8)) -> None:
    """The found and recall tables for ImageHash's pHash (64 bits; a pair within `d` bits is a copy)."""
    t = time.time()
    hp = np.stack([_phash_bits(pool.load(i)) for i in range(len(pool))])
    ht = np.stack([_phash_bits(test.load(i)) for i in range(len(test))])
    best = np.empty(len(pool), np.int64)
    match = np.empty(len(pool), np.int64)
    for i in range(len(pool)):
        d = _POPCOUNT[np.bitwise_xor(ht, hp[i])].sum(1)
        match[i] = d.argmin()
        best[i] = d[match[i]]
    print(f"\n### {name}, pHash (ImageHash): {len(pool):,} pool vs {len(test):,} test images ({time.time() - t:.1f} s)\n")
    print("| Hamming distance | pool images flagged | test images they copy | same class |")
    print("|---|---|---|---|")
    for dmax in distances:
        m = best <= dmax
        same = int((pool.labels[m] == test.labels[match[m]]).sum())
        print(f"| <= {dmax} | {int(m.sum()):,} | {len(set(match[m].tolist())):,} | "
              f"{same}/{int(m.sum())} ({100 * same / max(1, int(m.sum())):.1f}%) |")
    rows = np.random.default_rng(0).choice(len(test), min(n, len(test)), replace=False)
    kinds: dict[str, list] = {}
    for r in rows:
        for k, v in alterations(test.load(int(r))).items():
            d = _POPCOUNT[np.bitwise_xor(ht, _phash_bits(v))].sum(1)
            kinds.setdefault(k, []).append((d[r], d.min()))
    print(f"\n| alteration ({len(rows):,} test images) | " + " | ".join(f"found at <= {d}" for d in distances) + " |")
    print("|---|" + "---|" * len(distances))
    for k, v in kinds.items():
        cells = [sum(own <= dmax and own == low for own, low in v) for dmax in distances]
        print(f"| {k} | " + " | ".join(f"{c}/{len(v)} ({100 * c / len(v):.1f}%)" for c in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cifar", help="an ImageFolder root with train/ and test/ (the CIFAR-10 JPEG tree)")
    ap.add_argument("--fashion", help="a folder of Fashion-MNIST's IDX files")
    ap.add_argument("--recall", type=int, default=1000, help="test images altered for the recall table")
    ap.add_argument("--montage", type=Path, help="write pictures of flagged pairs here")
    ap.add_argument("--phash", action="store_true", help="the same tables for ImageHash's pHash")
    a = ap.parse_args()
    sets = []
    if a.cifar:
        sets.append(("CIFAR-10", read_imagefolder(str(Path(a.cifar) / "train"), "", 3),
                     read_imagefolder(str(Path(a.cifar) / "test"), "", 3)))
    if a.fashion:
        sets.append(("Fashion-MNIST", read_idx(a.fashion, "train", 1), read_idx(a.fashion, "test", 1)))
    sets.append(("digits (scikit-learn, 8 px)", read_digits("", "train", 1), read_digits("", "test", 1)))
    for name, pool, test in sets:
        found_table(name, pool, test, a.montage)
    for name, _, test in sets:
        recall_table(name, test, a.recall)
    if a.phash:
        for name, pool, test in sets:
            phash_tables(name, pool, test, a.recall)


if __name__ == "__main__":
    main()
