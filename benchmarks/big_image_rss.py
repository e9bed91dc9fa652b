"""Peak memory of a whole run with one very large image in its data (issue 17 item 9).

The issue measured a 10000x10000 PNG (315 KB on disk) raising a tiny run's peak RSS from 0.95 to
2.57 GB: it was decoded at full size (300 MB RGB, several copies while converting) and cached so.
Now images over 64,000,000 pixels are refused from their header (never decoded; skipped in the pool,
one line elsewhere) and smaller ones are shrunk to 4x the training size as they are loaded.

Each case is `noisystudent run` in a fresh process (3 classes x 6 labeled 8x8 PNGs, 3 x 3 test, a
12-image flat pool; teacher 2 epochs, one round, student 1 epoch); its peak RSS comes from wait4.

    nice -n 19 python benchmarks/big_image_rss.py
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

CLASSES = ("cat", "dog", "fox")


def tiny_data(root: Path, classes=CLASSES) -> Path:
    """3 classes (the dominant colour channel) x 6 labeled and 3 test 8x8 PNGs, a 12-image pool."""
    rng = np.random.default_rng(0)

    def img(c):
        a = rng.integers(0, 60, (8, 8, 3)).astype(np.uint8)
        a[:, :, c % 3] += 150
        return Image.fromarray(a)
    for split, n in (("train", 6), ("test", 3)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img(c).save(root / split / name / f"{i}.png")
    (root / "pool").mkdir()
    for i in range(12):
        img(i % 3).save(root / "pool" / f"{i:03d}.png")
    return root


def config(path: Path, data: Path, top: dict | None = None, **data_keys) -> Path:
    """The run: one round, a few epochs of an 8x8 CNN. `top` overrides top-level keys."""
    cfg = {"name": "big-image", "seed": 0, "rounds": 1, "models": ["ns_cnn_s", "ns_cnn_s"], "device": "cpu",
           "data": {"labeled": {"kind": "imagefolder", "root": str(data / "train")},
                    "unlabeled": {"kind": "folder", "root": str(data / "pool")},
                    "test": {"kind": "imagefolder", "root": str(data / "test")},
                    "image_size": 8, "in_chans": 3, **data_keys},
           "teacher": {"epochs": 2, "batch_size": 6}, "student": {"epochs": 1, "batch_size": 4, "ratio": 2},
           "label": {"shard_size": 8}, "select": {"threshold": 0.0}, **(top or {})}
    path.write_text(yaml.safe_dump(cfg))
    return path


def peak_rss_mb(cfg: Path, run_dir: Path) -> tuple[float, int, str]:
    """(peak RSS in MB of the run's process, its exit code, its last stderr line)."""
    env = dict(os.environ, NOISYSTUDENT_PROGRESS="0", OMP_NUM_THREADS="1")
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "noisystudent", "run", str(cfg), "--run-dir", str(run_dir),
                              "--no-report"], stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = [ln for ln in err.read().splitlines() if ln.strip()]
    return usage.ru_maxrss / 1024, p.returncode, (lines[-1] if lines else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10000, help="the huge image's side (default 10000)")
    ap.add_argument("--allowed-side", type=int, default=7900,
                    help="a large image just under the pixel limit (default 7900: 62.4M pixels)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ns-big-") as tmp:
        tmp = Path(tmp)
        huge, large = tmp / "huge.png", tmp / "large.png"
        Image.new("RGB", (args.side, args.side), (90, 120, 40)).save(huge)
        Image.new("RGB", (args.allowed_side, args.allowed_side), (90, 120, 40)).save(large)
        cases = [("no large image", None, None, {}),
                 (f"{args.side}x{args.side} PNG in the pool", huge, "pool", {}),
                 (f"{args.side}x{args.side} PNG in the labeled set, bad_images=skip", huge, "train/cat",
                  {"bad_images": "skip"}),
                 (f"{args.allowed_side}x{args.allowed_side} PNG in the pool (decoded, shrunk)", large, "pool", {})]
        print(f"huge.png: {huge.stat().st_size / 1024:.0f} KB, large.png: {large.stat().st_size / 1024:.0f} KB")
        print(f"{'case':<58}{'peak RSS MB':>12}{'exit':>6}{'wall s':>8}")
        for i, (name, image, where, keys) in enumerate(cases):
            data = tiny_data(tmp / f"data{i}")
            if image is not None:
                os.link(image, data / where / "big.png")
            t = time.perf_counter()
            rss, rc, last = peak_rss_mb(config(tmp / f"c{i}.yaml", data, **keys), tmp / f"run{i}")
            print(f"{name:<58}{rss:>12.0f}{rc:>6}{time.perf_counter() - t:>8.0f}")
            if rc != 0:
                print(f"    {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
