"""Where and how a process computes: device choice, mixed precision, seeding, and torchrun support.

Backend `gloo` for CPU tensors everywhere (multi-process runs are testable on a laptop) and `nccl` for
CUDA tensors where there is a GPU. The trainer, the label stage and the CLI use these;
`torch.distributed` does the real work, and these are the few lines around it that keep every rank
in step (same seeds, same skips, rank 0's buffers).
"""
from __future__ import annotations

import logging
import os
import random
import sys
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError

__all__ = ["maybe_init_distributed", "shutdown_distributed", "is_main_process", "resolve_device", "device_name_error",
           "cpu_has_native_bf16", "cuda_capability", "autocast_dtype", "seed_everything", "world_info", "progress_enabled",
           "broadcast_", "from_rank0", "any_rank", "all_ranks", "local_world_size"]

log = logging.getLogger("noisystudent")


def maybe_init_distributed() -> bool:
    """Init the default process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    cuda = torch.cuda.is_available()
    if cuda:    # the GPU resolve_device picks for this rank, so NCCL's communicators find it current
        torch.cuda.set_device(_local_gpu())
    # The group starts before the config says which device the run uses, so on a GPU machine it
    # serves both: NCCL for CUDA tensors, gloo for CPU ones (`--device cpu`, barriers, object
    # broadcasts). NCCL alone fails a `--device cpu` run at its first CPU collective.
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
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


def _local_gpu() -> int:
    """This rank's GPU: torchrun's LOCAL_RANK, wrapped onto the GPUs there are (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()


def device_name_error(name: str) -> str | None:
    """Why `name` cannot name a device (None when it can): `auto`, or a torch device string, `cpu`,
    `cuda`, `cuda:N`, `mps`, ... Only the spelling; whether this machine has it is `resolve_device`'s."""
    if name == "auto":
        return None
    try:
        torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return f"{name!r} is not a device; use auto, cpu, cuda or cuda:N"
    return None


def resolve_device(name: str = "auto") -> torch.device:
    """The device `name` means on this machine: `auto` = this rank's GPU (LOCAL_RANK under torchrun)
    when CUDA is visible, else the CPU. A misspelt name, or a GPU this machine does not have, is a
    one-line UserError here, before any stage starts, not a CUDA error in the middle of one."""
    if why := device_name_error(name):
        raise UserError(f"device {why}")
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda") and torch.cuda.is_available():   # under torchrun: GPU LOCAL_RANK
        return torch.device("cuda", _local_gpu())
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = (f"a CPU-only build of torch {torch.__version__}" if torch.version.cuda is None
                     else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no NVIDIA GPU or driver")
            raise UserError(f"device {name!r}: no CUDA GPU is visible here ({build}); use --device auto or cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            which = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise UserError(f"device {name!r}: this machine has {count} CUDA GPU(s) ({which})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r}: no Apple GPU (MPS) is available here; use --device auto or cpu")
    return dev


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose oneDNN kernels run bf16 natively (AVX512-BF16 / AMX). Elsewhere bf16
    autocast is emulated and measured 13-19x slower than fp32 (issue 14)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_warned_bf16 = False


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device; ROCm devices count as (8, 0): bf16 native."""
    if torch.version.hip:
        return (8, 0)
    return torch.cuda.get_device_capability(device)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """`auto` = bf16 where it is native: a CUDA GPU of compute capability >= 8.0 (Ampere, Hopper, ...),
    or a CPU with AVX512-BF16/AMX. On an older GPU with fp16 tensor cores (7.x: V100, T4) fp16, with
    the trainer's gradient scaler: `torch.cuda.is_bf16_supported()` is true there too, but only by
    emulation, without tensor cores. Elsewhere fp32 (emulated bf16 on a CPU is 13-19x slower). A
    forced `bf16` where it is not native runs (it is what was asked) with one warning."""
    global _warned_bf16
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    major = cuda_capability(device)[0] if device.type == "cuda" else 0
    native = major >= 8 if device.type == "cuda" else device.type == "cpu" and cpu_has_native_bf16()
    if amp == "bf16":
        if not native and not _warned_bf16:
            _warned_bf16 = True
            log.warning("amp=bf16 on a %s without native bf16: expect it to run many times slower than "
                        "%s (use amp: auto)", "GPU" if device.type == "cuda" else device.type.upper(),
                        "fp16" if major >= 7 else "fp32")
        return torch.bfloat16
    if native:
        return torch.bfloat16
    return torch.float16 if major >= 7 else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def local_world_size() -> int:
    """How many of the run's processes share this machine (torchrun's LOCAL_WORLD_SIZE; 1 without it):
    what they share (memory for caches, cores for decode workers) is divided by this."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def world_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def progress_enabled() -> bool:
    return os.environ.get("NOISYSTUDENT_PROGRESS", "1") != "0" and sys.stderr.isatty()


def broadcast_(tensors) -> None:
    """Overwrite each tensor in place with rank 0's value."""
    for t in tensors:
        dist.broadcast(t.data, 0)


def from_rank0(obj):
    """Rank 0's `obj` (any picklable value) on every rank. A collective: every rank must call it."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on at least one rank. A collective: every rank must call it."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_ranks(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on every rank (`flag` itself when not distributed). A collective."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    return not any_rank(not flag, device)
