"""Where a training step's time goes on a GPU: the bare loop vs ours, with and without the side-stream
prefetch, the on-device noise alone, and labeling vs bare inference.

    python benchmarks/gpu_profile.py --device cuda --batch 256 --steps 40 [--out DIR]

For each of the teacher (labeled batches, RandAugment on the device) and the student (joint batches,
ratio 3, all noise) it prints: ms per step of the bare loop and of `Trainer.train_one_epoch` (warm; the
side-stream prefetch off, on, and on without waiting for the default stream), the noise's own host and
GPU time per batch, and labeling (the stage's shard loop, in memory and from JPEG files) against bare
inference. With --profile, the
top ops by GPU and by CPU time of the teacher's step and of labeling, last. Writes profile.txt.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402

from noisystudent.config import NoiseConfig  # noqa: E402
from noisystudent.engine import Trainer  # noqa: E402

LINES: list[str] = []


def say(msg: str = "") -> None:
    print(msg, flush=True)
    LINES.append(msg)


def top(prof, key: str, n: int = 12) -> str:
    ka = prof.key_averages()
    if key == "gpu":
        key = "self_device_time_total" if ka and hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
    return ka.table(sort_by=key, row_limit=n, max_name_column_width=60)


def profiled(fn):
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tp.DEVICE.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        tp.sync()
    return prof


def guarded(fn, *a):
    """Run one section; a failure is printed and the next section still runs (one lent GPU call)."""
    try:
        return fn(*a)
    except Exception:  # noqa: BLE001
        import traceback
        say("SECTION FAILED: " + traceback.format_exc())


def trainer_epochs(what, setup, steps, prefetch: str, profile: bool):
    """ms/step of a warm epoch of `Trainer.train_one_epoch` (epoch 2), and its profile (epoch 3).
    prefetch: "1" the side stream (the default), "0" off (NOISYSTUDENT_PREFETCH)."""
    os.environ["NOISYSTUDENT_PREFETCH"] = prefetch
    m, cfg, source = setup()
    cfg.epochs = 3
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(m, cfg, source, out_dir=d, seed=0, meta={}, device=tp.DEVICE)
        t.setup()
        t.train_one_epoch(0)
        tp.sync()
        st = t.train_one_epoch(1)
        ms = 1e3 * st["seconds"] / st["steps"]
        say(f"{what:<40} prefetch={prefetch:<6} {ms:7.2f} ms/step  {st['images'] / st['seconds']:9.0f} img/s")
        if profile:
            prof = profiled(lambda: t.train_one_epoch(2))
            say(top(prof, "gpu"))
            say(top(prof, "self_cpu_time_total"))
    os.environ.pop("NOISYSTUDENT_PREFETCH")
    return ms


def bare_ms(name, batch, steps, amp, drop=(0.0, 0.0)):
    ips = tp.bare_train(name, batch, steps, amp, drop)
    return 1e3 * batch / ips


def noise_alone(src, batch, steps):
    """Host ms per `noised()` call (no sync) and GPU ms per batch (CUDA events) of the graphed noise."""
    from noisystudent.batch_noise import BatchNoise
    from noisystudent.tensor_batches import TensorLabeledBatches, decode_all
    data = tp.DataConfig(image_size=32, in_chans=3, mean=tp.MEAN, std=tp.STD, crop_padding=4, hflip=True)
    bn = BatchNoise.from_config(data, NoiseConfig(True, drop_rate=0.0, drop_path_rate=0.0, cutout=0.5))
    images, _ = decode_all(src.subset(np.arange(min(len(src), batch * steps))), 32, False)
    lb = TensorLabeledBatches(images.to(tp.DEVICE), np.zeros(len(images), int), bn, tp.MEAN, tp.STD, batch)
    for _ in lb.epoch(0, 0, 3):
        pass
    tp.sync()
    cuda = tp.DEVICE.type == "cuda"
    a, b = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else (None, None)
    t = time.perf_counter()
    a and a.record()
    for _ in lb.epoch(0, 1, steps):
        pass
    b and b.record()
    host = 1e3 * (time.perf_counter() - t) / steps
    tp.sync()
    gpu = a.elapsed_time(b) / steps if cuda else float("nan")
    say(f"noise alone, batch {batch:<5} host {host:6.2f} ms/batch   GPU (events) {gpu:6.2f} ms/batch")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ns_wrn_28_2")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="runs/gpu_profile")
    ap.add_argument("--workers", type=int, default=8, help="decode workers of the JPEG-file labeling row")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each timing (median)")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler tables (at the end)")
    ap.add_argument("--amp", default="bf16", choices=["bf16", "off"],
                    help="off for a dry run on a CPU without native bf16 (there bf16 runs 13-19x slower)")
    args = ap.parse_args()
    tp.DEVICE = torch.device(args.device)
    B, S, M = args.batch, args.steps, args.model
    src = tp.cifar_images(min(50000, max(4100, B * S * 3)))   # CIFAR-10 train has 50,000
    name = torch.cuda.get_device_name(0) if tp.DEVICE.type == "cuda" else "CPU (a dry run of the script)"
    A = args.amp
    say(f"# {name}, torch {torch.__version__}, {M}, batch {B}, amp {A}")
    tp.bare_train(M, B, 5, A)
    ra = NoiseConfig(True, drop_rate=0.0, drop_path_rate=0.0)
    noise = NoiseConfig(randaugment=True, drop_rate=0.3, drop_path_rate=0.2)
    # timings first, in one clean process: a torch.profiler session leaves the process slower
    # (CUPTI), so the profiles (--profile) come last
    def train_rows(what, batch, steps, drop, setup):
        """Bare, ours and ours without prefetch, interleaved `--repeats` times: the ratio's median
        (a GPU's clocks and a short timing vary by several percent from one measurement to the next)."""
        ms = {"bare": [], "1": [], "0": []}
        for _ in range(args.repeats):
            ms["bare"].append(bare_ms(M, batch, steps, A, drop))
            say(f"{what:<40} bare          {ms['bare'][-1]:7.2f} ms/step")
            for pf in ("1", "0"):
                ms[pf].append(trainer_epochs(what, setup, steps, pf, False))
        bare = statistics.median(ms["bare"])
        for pf in ("1", "0"):
            r = [100 * b / o for b, o in zip(ms["bare"], ms[pf])]
            say(f"{what:<40} prefetch={pf}  ours/bare median {100 * bare / statistics.median(ms[pf]):5.1f}% "
                f"(each: {', '.join(f'{x:.1f}' for x in r)})")

    S4 = max(3, S // 4)
    teacher = lambda: tp.ours_setup(M, src, B, S, A, 0, ra, on_device=True)  # noqa: E731
    student = lambda: tp.ours_setup(M, src, B, S4, A, 0, noise, ratio=3, on_device=True)  # noqa: E731
    guarded(train_rows, "teacher (+RandAugment, device)", B, S, (0.0, 0.0), teacher)
    guarded(train_rows, "student joint (all noise, device)", 4 * B, S4, (0.3, 0.2), student)
    guarded(noise_alone, src, B, S)
    guarded(noise_alone, src, 4 * B, S4)

    def label_rows():
        n = min(8 * 4096, len(src) // 1024 * 1024)
        files = tp.cifar_images(n, decoded=False)      # the stage on a JPEG pool: decode workers, one loader
        for bs in (256, 1024):
            r = []
            for _ in range(args.repeats):
                bare = tp.bare_infer(M, bs, n // bs)
                ours = tp.ours_label(M, src.subset(np.arange(n)), bs)
                r.append(100 * ours / bare)
                say(f"label {n} images, batch {bs:<5} ours {ours:9.0f} img/s  bare {bare:9.0f} img/s  {r[-1]:5.1f}%")
            say(f"label {n} images, batch {bs:<5} ours/bare median {statistics.median(r):5.1f}%")
            if files is not None:
                fl = tp.ours_label(M, files.subset(np.arange(min(n, len(files)))), bs, workers=args.workers)
                say(f"label {n} JPEG files, batch {bs:<5} workers {args.workers}: {fl:9.0f} img/s "
                    f"({100 * fl / bare:5.1f}% of the last bare inference)")
    guarded(label_rows)
    if args.profile:
        guarded(trainer_epochs, "teacher (+RandAugment, device)", teacher, S, "1", True)
        guarded(lambda: say(top(profiled(lambda: tp.ours_label(M, src.subset(np.arange(4096)), 256)),
                                "self_cpu_time_total")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.txt").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
