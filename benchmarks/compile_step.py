"""Eager vs `torch.compile` train step of a small net (one thread by default): is compiling worth it?

    python benchmarks/compile_step.py [--model ns_cnn_s] [--size 28] [--chans 1] [--batch 128] [--threads 1] [--steps 30] [--amp bf16]

`throughput.bare_train` (forward + backward + SGD on one in-memory batch, channels-last) twice, eager
and compiled; prints both images/s and their ratio. The trainer's switch is `compile: true`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import bare_train  # noqa: E402  (this folder: the bare loop of the throughput table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ns_cnn_s")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--chans", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--amp", default="bf16", help="off | bf16 | auto (as the config's amp)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = dict(size=args.size, chans=args.chans, channels_last=True)
    eager = bare_train(args.model, args.batch, args.steps, args.amp, **kw)
    comp = bare_train(args.model, args.batch, args.steps, args.amp, compiled=True, **kw)
    print(f"| {args.model} {args.size}px x{args.chans}, batch {args.batch}, amp {args.amp}, {args.threads} thread(s) "
          f"| eager {eager:,.0f} img/s | compiled {comp:,.0f} img/s | {comp / eager:.2f}x |")


if __name__ == "__main__":
    main()
