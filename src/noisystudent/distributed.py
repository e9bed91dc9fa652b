"""torchrun support: initialise the process group from torchrun's environment variables.

Backend `nccl` on CUDA, `gloo` on CPU (so multi-process runs are testable on a laptop). Everything
else (DDP wrapping, per-rank samplers, rank-0-only writes, sharded labeling) lives where it is used.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["maybe_init_distributed", "shutdown_distributed", "is_main_process"]


def maybe_init_distributed() -> bool:
    """Init the default process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # Rank-0-only stages (select, evaluate with robustness) keep the other ranks at a barrier for as
    # long as they take; the default timeouts (10 min NCCL, 30 min gloo) would kill a healthy run.
    # A crashed rank does not need the timeout: torchrun stops the whole group when one exits.
    minutes = float(os.environ.get("NOISYSTUDENT_DIST_TIMEOUT_MIN", "180"))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
    if dist.get_rank() != 0:        # one copy of the progress log, from rank 0
        logging.getLogger("noisystudent").setLevel(logging.WARNING)
    return True


def shutdown_distributed(barrier: bool = True) -> None:
    """Leave the process group before the interpreter exits. Without it a rank that finishes first
    can tear down while gloo's threads still run, and dies with 'terminate called without an active
    exception' (SIGABRT), failing a run whose work is all done. `barrier` only on success: a failing
    rank must not wait for the others."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if barrier:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
