"""torchrun support: initialise the process group from torchrun's environment variables.

Backend `nccl` on CUDA, `gloo` on CPU (so multi-process runs are testable on a laptop). Everything
else (DDP wrapping, per-rank samplers, rank-0-only writes, sharded labeling) lives where it is used.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["maybe_init_distributed", "is_main_process"]


def maybe_init_distributed() -> bool:
    """Init the default process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
