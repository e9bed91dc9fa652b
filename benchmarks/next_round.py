"""One more round on an existing run directory: its last student labels the pool again and a fresh
student trains on the new selection, without redoing (or re-fingerprinting) the earlier rounds.

    python benchmarks/next_round.py fashion-mnist-1k RUN_DIR --round 2 [--set seed=0 ...]

Useful when the earlier rounds came from an older version of the code (their fingerprints would
make `noisystudent run --set rounds=2` redo them): the stages of round K only read round K-1's files.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from noisystudent.artifacts import lock_run_dir, release_run_dirs  # noqa: E402
from noisystudent.cli import resolve_config_path  # noqa: E402
from noisystudent.config import load_config  # noqa: E402
from noisystudent.runlog import attach_run_log  # noqa: E402
from noisystudent.stages.common import RunContext  # noqa: E402
from noisystudent.stages.evaluate import evaluate_stage  # noqa: E402
from noisystudent.stages.label import label_pool  # noqa: E402
from noisystudent.stages.select import select_pseudo_labels  # noqa: E402
from noisystudent.stages.train import train_student  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("run_dir")
    ap.add_argument("--round", type=int, default=2)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    k = args.round
    cfg = load_config(resolve_config_path(args.config), [*args.set, f"rounds={k}", "variants=[]"])
    ctx = RunContext(cfg, args.run_dir)
    lock_run_dir(ctx.run_dir)          # no `noisystudent run` on the same folder meanwhile
    t = time.perf_counter()
    try:                               # the lock goes on an error too, as `noisystudent run` releases it
        attach_run_log(ctx.run_dir)    # progress lines in run.log, as for a normal run
        label_pool(ctx, k)
        select_pseudo_labels(ctx, k)
        train_student(ctx, k)
        evaluate_stage(ctx, k, "student")
    finally:
        release_run_dirs()
    ev = json.loads((ctx.layout.eval(k, "student") / "eval.json").read_text())
    print(f"round {k} student: val {100 * (ev.get('val') or {}).get('top1', float('nan')):.2f}  "
          f"test {100 * ev['top1']:.2f}  ({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
