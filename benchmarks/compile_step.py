"""Eager vs `torch.compile` train step of a small net (one thread by default): is compiling worth it?

    python benchmarks/compile_step.py [--model ns_cnn_s] [--size 28] [--chans 1] [--batch 128] [--threads 1] [--steps 30]

bf16 autocast (fp32 with --fp32), channels-last, SGD-Nesterov, cross-entropy on random data: the
model's forward + backward + optimizer step only (no noise, no data), as the trainer runs it.
Prints the images/s of both and their ratio, and the first two compiled steps' time (compilation).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from noisystudent.models import create_model  # noqa: E402


def images_per_s(args, compiled: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    m = create_model(args.model, 10, args.chans).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    fm = torch.compile(m) if compiled else m
    x = torch.randn(args.batch, args.chans, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.fp32):
            loss = torch.nn.functional.cross_entropy(fm(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    step(), step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.batch * args.steps / (time.perf_counter() - t0), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ns_cnn_s")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--chans", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--fp32", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eager, _ = images_per_s(args, False)
    comp, first = images_per_s(args, True)
    print(f"| {args.model} {args.size}px x{args.chans}, batch {args.batch}, {'fp32' if args.fp32 else 'bf16'}, "
          f"{args.threads} thread(s) | eager {eager:,.0f} img/s | compiled {comp:,.0f} img/s | "
          f"{comp / eager:.2f}x | first 2 compiled steps {first:.1f} s |")


if __name__ == "__main__":
    main()
