"""Throughput: our training/labeling vs a bare loop on the same model and batch, and vs the machine.

    python benchmarks/throughput.py [--model ns_wrn_28_2] [--steps 30] [--amp off,bf16] [--workers 0,1]

Measures, on CIFAR-10 at 32 px (extracted from ../shared/data if needed; synthetic images if not):
  * bare train step: forward + backward + SGD on tensors already in memory
  * `engine.fit` teacher epoch (labeled batches, un-noised and with RandAugment)
  * `engine.fit` student epoch (joint batches, ratio 3, RandAugment + dropout + stochastic depth)
  * both again with the noise applied per batch on the device (`data.augment_on: device`)
  * bare inference vs the `label` stage's loop (`predict_shards`)
  * model FLOPs (torch's FlopCounterMode) x images/s as a fraction of a measured matmul peak
Prints one table and writes docs/benchmarks/throughput.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("NOISYSTUDENT_PROGRESS", "0")

from noisystudent.config import DataConfig, NoiseConfig, SourceConfig, TrainConfig  # noqa: E402
from noisystudent.data import (ArraySource, LabeledDataset, PseudoDataset, create_source,  # noqa: E402
                               create_train_transform)
from noisystudent.batches import JointBatches, LabeledBatches  # noqa: E402
from noisystudent.distributed import autocast_dtype  # noqa: E402
from noisystudent.engine import fit  # noqa: E402
from noisystudent.models import create_model  # noqa: E402
from noisystudent.labels import predict_shard, predict_shards  # noqa: E402

DEVICE = torch.device("cpu")
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def cifar_images(n: int, decoded: bool = True):
    """n CIFAR-10 train images: decoded into memory (an ArraySource), or with `decoded=False` the
    JPEG files themselves (None without the CIFAR tree)."""
    root = ROOT / "data" / "cifar10"
    tar = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if not (root / "train").is_dir() and tar.is_file():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "xzf", str(tar), "-C", str(root)], check=True)
    if (root / "train").is_dir():
        src = create_source(SourceConfig(kind="imagefolder", root=str(root / "train"), per_class=n // 10), 3)
        return src.cache() if decoded else src
    if not decoded:
        return None
    rng = np.random.default_rng(0)
    return ArraySource("synthetic", [str(i) for i in range(n)], rng.integers(0, 10, n),
                       [str(c) for c in range(10)], 3, images=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype, n=2048, reps=10) -> float:
    n = 8192 if DEVICE.type == "cuda" else n
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def model_flops(model, size=32) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return float(fc.get_total_flops())


def bare_train(name, batch, steps, amp, drop=(0.0, 0.0), *, size=32, chans=3, channels_last=False,
               compiled=False) -> float:
    """Images/s of forward + backward + SGD on one in-memory batch (`compiled`: through torch.compile,
    whose compilation happens in the warm-up steps)."""
    torch.manual_seed(0)
    m = create_model(name, 10, chans, *drop).to(DEVICE).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, chans, size, size, device=DEVICE), torch.randint(0, 10, (batch,), device=DEVICE)
    if channels_last:
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    fm = torch.compile(m) if compiled else m
    dtype = autocast_dtype(amp, DEVICE)

    def step():
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(fm(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t)


@torch.no_grad()
def bare_infer(name, batch, steps) -> float:
    m = create_model(name, 10, 3).to(DEVICE).eval()
    x = torch.randn(batch, 3, 32, 32, device=DEVICE)
    m(x)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        m(x)
    sync()
    return batch * steps / (time.perf_counter() - t)


def ours_train(name, src, batch, steps, amp, workers, noise: NoiseConfig, ratio=0, on_device=False) -> float:
    """img/s of `engine.fit`'s second epoch. on_device: the images as one uint8 tensor on DEVICE and
    the noise applied per batch there (data.augment_on=device), else PIL in DataLoader workers."""
    m, cfg, source = ours_setup(name, src, batch, steps, amp, workers, noise, ratio, on_device)
    with tempfile.TemporaryDirectory() as d:
        res = fit(m, cfg, source, out_dir=d, seed=0, meta={}, device=DEVICE)
    return res.history[-1]["images_per_s"]       # epoch 2: warm (allocator, thread pool, workers)


def ours_setup(name, src, batch, steps, amp, workers, noise: NoiseConfig, ratio=0, on_device=False):
    """(model, TrainConfig, batch source) of one `ours_train` measurement: 2 epochs of `steps` steps."""
    data = DataConfig(image_size=32, in_chans=3, mean=MEAN, std=STD, crop_padding=4, hflip=True, workers=workers)
    cfg = TrainConfig(model=name, epochs=2, batch_size=batch, lr=0.01, warmup_epochs=0, amp=amp, noise=noise)
    m = create_model(name, 10, 3, noise.drop_rate, noise.drop_path_rate)
    lab_src = src.subset(np.arange(min(len(src), steps * batch)))
    n = steps * batch * ratio
    pse_src = src.subset(np.arange(n) % len(src)) if ratio else None
    targets, copies = np.full((n, 10), 0.1, np.float32), np.ones(n, int)
    if on_device:
        from noisystudent.batch_noise import BatchNoise
        from noisystudent.tensor_batches import TensorLabeledBatches, TensorPseudoBatches, decode_all
        bn = BatchNoise.from_config(data, noise if noise.randaugment else None)
        images, _ = decode_all(lab_src, 32, False)
        source = TensorLabeledBatches(images.to(DEVICE), lab_src.labels, bn, MEAN, STD, batch)
        if ratio:
            pimages, _ = decode_all(pse_src, 32, False)
            source = JointBatches(source, TensorPseudoBatches(pimages.to(DEVICE), targets, copies, bn, MEAN, STD,
                                                              batch * ratio))
    else:
        tf = create_train_transform(data, noise)
        lab = LabeledDataset(lab_src, tf)
        source = LabeledBatches(lab, batch, workers)
        if ratio:
            source = JointBatches.of_datasets(lab, PseudoDataset(pse_src, np.arange(n), targets, copies, tf),
                                              batch, ratio, workers)
    return m, cfg, source


def ours_label(name, src, batch, shard=4096, workers=0) -> float:
    """img/s of the label stage's loop (`predict_shards`) over all of `src`, in shards of `shard`
    (files are decoded by `workers` DataLoader processes, as the stage does)."""
    m = create_model(name, 10, 3).to(DEVICE).eval()
    kw = dict(image_size=32, mean=MEAN, std=STD, temperature=1.0, flip_tta=False, batch_size=batch, device=DEVICE,
              workers=workers)
    predict_shard(m, src, 0, batch, **kw)                          # warm-up: cuDNN, allocator, pinned memory
    shards = range(-(-len(src) // shard))
    sync()
    t = time.perf_counter()
    for _ in predict_shards(m, src, shards, shard, **kw):
        pass
    return len(src) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ns_wrn_28_2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--amp", default="off,bf16")
    ap.add_argument("--workers", default="0,1")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    B, S = args.batch, args.steps
    src = cifar_images(min(50000, max(4100, B * S * 3)))          # CIFAR-10's train/ has 50,000
    flops = model_flops(create_model(args.model, 10, 3))
    # the peak of each precision asked for (fp32 always: the label rows run in it); bf16 only when
    # asked, as a CPU without native bf16 takes minutes over its matmuls
    peaks = {a: matmul_peak(torch.bfloat16 if a == "bf16" else torch.float32)
             for a in dict.fromkeys(["off", *args.amp.split(",")])}
    rows = []

    def add(what, amp, workers, ours, bare, mult):
        rows.append({"what": what, "amp": amp, "workers": workers, "ours_img_s": ours, "bare_img_s": bare,
                     "ratio": ours / bare, "flops_frac": ours * flops * mult / peaks[amp]})
        r = rows[-1]
        print(f"{what:<34} {amp:>4} w={workers}  ours {ours:8.1f}/s  bare {bare:8.1f}/s  "
              f"{100 * r['ratio']:5.1f}%  peak {100 * r['flops_frac']:5.1f}%", flush=True)

    bare_train(args.model, B, 5, "off")      # warm-up: thread pool, allocator, lazy inits
    noise = NoiseConfig(randaugment=True, drop_rate=0.3, drop_path_rate=0.2)
    clean = NoiseConfig(randaugment=False, drop_rate=0.0, drop_path_rate=0.0)
    for amp in args.amp.split(","):
        bare = bare_train(args.model, B, S, amp)
        bare_noisy = bare_train(args.model, B * 4, max(3, S // 4), amp, (0.3, 0.2))
        # the on-device path (data.augment_on=device): no workers, the noise runs on DEVICE; measured
        # before the DataLoader rows, so no worker process of theirs shares the CPU with it
        ra = NoiseConfig(True, drop_rate=0.0, drop_path_rate=0.0)
        dev_t = ours_train(args.model, src, B, S, amp, 0, ra, on_device=True)
        dev_s = ours_train(args.model, src, B, max(3, S // 4), amp, 0, noise, ratio=3, on_device=True)
        for w in [int(x) for x in args.workers.split(",")]:
            add("teacher train (crop+flip)", amp, w, ours_train(args.model, src, B, S, amp, w, clean), bare, 3)
            add("teacher train (+RandAugment)", amp, w, ours_train(args.model, src, B, S, amp, w, ra), bare, 3)
            add("student joint (ratio 3, all noise)", amp, w,
                ours_train(args.model, src, B, max(3, S // 4), amp, w, noise, ratio=3), bare_noisy, 3)
        add("teacher train (+RandAugment, device)", amp, 0, dev_t, bare, 3)
        add("student joint (all noise, device)", amp, 0, dev_s, bare_noisy, 3)
    # the label stage's loop over shards of label.shard_size's default (4,096 images; 4 shards on a GPU)
    # at label.batch_size auto's values (256 on the CPU; 1,024 on a GPU, and 256 for comparison),
    # against bare inference of as many batches
    n_label = min((4 if DEVICE.type == "cuda" else 1) * 4096, len(src)) // 1024 * 1024 or len(src)
    # the stage over a pool of JPEG files (as CIFAR's folder is): decoded in workers, one loader
    files, w = cifar_images(n_label, decoded=False), max(int(x) for x in args.workers.split(","))
    for lb in ([256, 1024] if DEVICE.type == "cuda" else [256]):     # a GPU labels faster at larger batches
        bi = bare_infer(args.model, lb, max(1, n_label // lb))
        add(f"label (predict_shards, batch {lb})", "off", 0,
            ours_label(args.model, src.subset(np.arange(n_label)), lb), bi, 1)
        if files is not None:
            add(f"label JPEG files (batch {lb})", "off", w,
                ours_label(args.model, files.subset(np.arange(min(n_label, len(files)))), lb, workers=w), bi, 1)

    meta = {"model": args.model, "model_gflops_per_image_fwd": flops / 1e9, "batch": B,
            "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()}, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
            "device": (torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{os.cpu_count()} CPU cores")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Throughput ({args.model}, CIFAR-10 32 px, batch {B}, {meta['device']}, torch {torch.__version__})",
             "", f"Model: {flops / 1e9:.3f} GFLOP/image forward (training counted as 3x). Measured matmul peak: "
             + ", ".join(f"{'fp32' if a == 'off' else a} {v / 1e9:.0f} GFLOP/s" for a, v in peaks.items()) + ".", "",
             "| what | amp | workers | ours img/s | bare img/s | ours/bare | FLOP/s vs peak |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['amp']} | {r['workers']} | {r['ours_img_s']:.1f} | {r['bare_img_s']:.1f} | "
                     f"{100 * r['ratio']:.1f}% | {100 * r['flops_frac']:.1f}% |")
    lines += ["", "Command: `python benchmarks/throughput.py " + " ".join(sys.argv[1:]) + "`"]
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
