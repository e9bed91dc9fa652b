"""Screenshot-check the HTML report in headless Chromium (Debian's `chromium`).

    .venv/bin/python benchmarks/report_screenshot.py [--run-dir RUN] [--out docs/report-screenshot.png]

Without --run-dir it makes a small RGB "own data" set (4 colour/shape classes, an ImageFolder, a flat
unlabeled pool, a test folder), runs `noisystudent init`, edits only the data paths, runs the loop
with few epochs, then renders report.html to a PNG and checks the page is not blank and that every
<img> in it loaded (each figure file exists and is a PNG).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"circle": (210, 60, 60), "square": (60, 170, 60), "triangle": (60, 80, 210), "cross": (200, 170, 40)}


def _shape(rng, name, size=32):
    bg = tuple(int(v) for v in rng.integers(0, 90, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    col = tuple(int(np.clip(c + rng.normal(0, 30), 0, 255)) for c in CLASSES[name])
    a, b = rng.integers(3, 9), rng.integers(size - 9, size - 3)
    if name == "circle":
        d.ellipse([a, a, b, b], fill=col)
    elif name == "square":
        d.rectangle([a, a, b, b], fill=col)
    elif name == "triangle":
        d.polygon([(size // 2, a), (a, b), (b, b)], fill=col)
    else:
        d.rectangle([size // 2 - 3, a, size // 2 + 3, b], fill=col)
        d.rectangle([a, size // 2 - 3, b, size // 2 + 3], fill=col)
    return im


def make_data(root: Path, per_class=30, test_per_class=20, pool_per_class=60, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _shape(rng, c).save(root / split / c / f"{i}.png")
    (root / "pool").mkdir(parents=True, exist_ok=True)
    k = 0
    for c in CLASSES:
        for _ in range(pool_per_class):
            _shape(rng, c).save(root / "pool" / f"{k:04d}.png")
            k += 1


def make_run(work: Path) -> Path:
    make_data(work / "data")
    ns = [sys.executable, "-m", "noisystudent"]
    subprocess.run([*ns, "init", str(work / "proj")], check=True)
    cfg = work / "proj" / "config.yaml"
    text = cfg.read_text()
    for old, new in (("root: train}", "root: ../data/train}"), ("root: unlabeled}", "root: ../data/pool}"),
                     ("root: test}", "root: ../data/test}")):
        text = text.replace(old, new)
    cfg.write_text(text)
    run_dir = work / "run"
    sets = ["teacher.epochs=8", "student.epochs=4", "teacher.batch_size=16", "student.batch_size=8",
            "models=[ns_cnn_s, ns_cnn_m]", "name=own-shapes"]
    subprocess.run([*ns, "run", str(cfg), "--run-dir", str(run_dir), *(a for s in sets for a in ("--set", s))],
                   check=True)
    return run_dir


def screenshot(html: Path, out: Path, width: int = 1250, height: int = 5200) -> Path:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        sys.exit("chromium not found: apt-get install -y chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--screenshot={out.resolve()}",
                    html.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    return out


def check(html: Path, png: Path) -> list[str]:
    problems = []
    for src in re.findall(r'<img src="([^"]+)"', html.read_text()):
        p = html.parent / src
        if not p.is_file():
            problems.append(f"missing figure {src}")
            continue
        with Image.open(p) as im:
            if im.format != "PNG":
                problems.append(f"{src} is not a PNG")
    with Image.open(png) as im:
        a = np.asarray(im.convert("L"), dtype=np.float32)
    if a.std() < 5:
        problems.append(f"screenshot looks blank (pixel std {a.std():.1f})")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "report-screenshot.png"))
    args = ap.parse_args()
    from noisystudent.layout import RunLayout
    run_dir = Path(args.run_dir) if args.run_dir else make_run(Path(tempfile.mkdtemp(prefix="ns_shot_")))
    page = RunLayout(run_dir).report_html
    png = screenshot(page, Path(args.out))
    problems = check(page, png)
    print(f"screenshot: {png} ({Image.open(png).size[0]}x{Image.open(png).size[1]}); run: {run_dir}")
    if problems:
        sys.exit("report check failed: " + "; ".join(problems))
    print("report check: every figure present, page not blank")


if __name__ == "__main__":
    main()
