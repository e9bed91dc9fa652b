"""Noise throughput: the per-image PIL path vs the batched per-sample path (issue 15, point 1).

    python benchmarks/noise_throughput.py [--device cpu|cuda] [--batch 256] [--seconds 5] [--threads N]

Both paths turn a uint8 batch into the normalised float batch a training step consumes, with
random crop (reflect padding), flip, RandAugment m5 n2 and Cutout, as configs/cifar10-4k.yaml
(32 px RGB) and configs/fashion-mnist-1k.yaml (28 px grey) set them up:
  * PIL per image: `data.transforms.TrainTransform` on each image in this process (what one
    DataLoader worker does), then stacked;
  * batched: `BatchNoise` on the whole batch, then normalised, on --device; `sparse` runs each op
    on the images that drew it, `dense` runs every op on every image and keeps what was drawn (no
    host syncs, the GPU default); `f64` is PIL-exact geometry, `f32` float32 coordinates; on CUDA,
    `CUDA graph` replays the dense noise as one graph (`GraphedNoise`).
Prints a markdown table of images/s.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from noisystudent.batch_noise import BatchNoise, GraphedNoise, step_generator  # noqa: E402
from noisystudent.data.transforms import TrainTransform  # noqa: E402

CASES = [  # name, size, channels, mean, std, crop padding, hflip, cutout
    ("32x32 RGB (cifar10-4k)", 32, 3, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], 4, True, 0.5),
    ("28x28 grey (fashion-mnist-1k)", 28, 1, [0.2860], [0.3530], 2, True, 0.25),
]


def timed(fn, seconds: float, sync) -> tuple[float, float]:
    """(wall s, process CPU s) per call: one warm-up call, then as many as fit in `seconds` (>= 3).
    CPU seconds are what a shared machine's load does not inflate: images per CPU-second is the
    cost of the noise, images per wall-second what this run got."""
    fn()
    sync()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync()
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--magnitude", type=int, default=5)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--skip-pil", action="store_true", help="batched rows only (e.g. on a GPU machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    rows = []
    for name, size, c, mean, std, pad, flip, cut in CASES:
        imgs = rng.integers(0, 256, (args.batch, size, size, c), dtype=np.uint8)
        if not args.skip_pil:
            tf = TrainTransform(size, c, mean, std, crop_padding=pad, hflip=flip, randaugment=True,
                                ra_magnitude=args.magnitude, ra_layers=args.layers, cutout=cut)
            s, cpu = timed(lambda: torch.stack([tf(a) for a in imgs]), args.seconds, lambda: None)
            rows.append((name, "PIL per image (1 process)", "cpu", args.batch / s, args.batch / cpu))
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous().to(dev)
        m = torch.tensor(mean, device=dev).view(1, -1, 1, 1) * 255
        sd = torch.tensor(std, device=dev).view(1, -1, 1, 1) * 255
        base = BatchNoise(crop_padding=pad, hflip=flip, randaugment=True, ra_magnitude=args.magnitude,
                          ra_layers=args.layers, cutout=cut, fill=tuple(int(round(255 * v)) for v in mean))
        step = iter(range(10**9))
        for dense in (False, True):
            for precise in (True, False):
                noise = dataclasses.replace(base, dense=dense, precise=precise)
                fn = lambda: (noise(x, step_generator(0, next(step))).float() - m) / sd  # noqa: E731
                s, cpu = timed(fn, args.seconds, sync)
                label = f"batched {'dense' if dense else 'sparse'} {'f64' if precise else 'f32'}"
                rows.append((name, label, args.device, args.batch / s, args.batch / cpu))
                if dense and dev.type == "cuda":        # the same noise replayed as one CUDA graph
                    g = GraphedNoise(noise, tuple(x.shape), dev)
                    hw = tuple(x.shape[-2:])
                    draw = lambda: noise.draw(args.batch, hw, step_generator(0, next(step)))  # noqa: E731
                    fn = lambda: (g(x, draw()).float() - m) / sd  # noqa: E731
                    s, cpu = timed(fn, args.seconds, sync)
                    rows.append((name, label + " CUDA graph", args.device, args.batch / s, args.batch / cpu))
    print(f"\nbatch {args.batch}, RandAugment m{args.magnitude} n{args.layers}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, {platform.machine()}"
          + (f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""))
    print("\n| images | path | device | img/s (wall) | img per CPU-second |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:,.0f} | {r[4]:,.0f} |")


if __name__ == "__main__":
    main()
