"""One training loop for teacher (labeled only) and student (joint labeled + pseudo-labeled batches).

Read top to bottom: build optimizer/scheduler/EMA -> resume from `checkpoint.pt` if present ->
for each epoch: seed every RNG from (seed, epoch), draw B labeled + ratio*B pseudo-labeled images
per step, one forward pass over their concatenation (so BatchNorm sees the joint batch, as in the
paper), loss = CE(labeled) + w * softCE(pseudo) -> checkpoint atomically at the end of the epoch.

Resuming replays exactly: model/optimizer/EMA state come from the checkpoint, the LR is a pure
function of the global step, and all randomness (sampling order, RandAugment, dropout, stochastic
depth) is re-seeded from (seed, epoch) at the start of each epoch.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .artifacts import load_checkpoint, save_checkpoint
from .data.loaders import make_loader, seed_for
from .errors import TrainingDiverged
from .pseudo import joint_loss
from .runlog import on_epoch

__all__ = ["fit", "resolve_device", "autocast_dtype", "cpu_has_native_bf16", "seed_everything", "world_info",
           "FitResult", "plan_steps", "effective_ema_decay", "ema_decay_at", "create_scheduler"]

log = logging.getLogger("noisystudent")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda") and torch.cuda.is_available():   # under torchrun: GPU LOCAL_RANK
        rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose oneDNN kernels run bf16 natively (AVX512-BF16 / AMX). Elsewhere bf16
    autocast is emulated and measured 13-19x slower than fp32 (issue 14)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_warned_bf16 = False


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """`auto` = bf16 where it is native (CUDA with bf16, or a CPU with AVX512-BF16/AMX), else fp32.
    A forced `bf16` on a CPU without native support runs (it is what was asked) with one warning."""
    global _warned_bf16
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = device.type == "cpu" and cpu_has_native_bf16()
    if amp == "bf16":
        if not native and not _warned_bf16:
            _warned_bf16 = True
            log.warning("amp=bf16 on a %s without native bf16: expect it to run many times slower than "
                        "fp32 (use amp: auto)", device.type.upper())
        return torch.bfloat16
    return torch.bfloat16 if native else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def world_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _progress_enabled() -> bool:
    return os.environ.get("NOISYSTUDENT_PROGRESS", "1") != "0" and sys.stderr.isatty()


def plan_steps(cfg, steps_per_epoch: int, steps: int | None = None) -> tuple[int, int]:
    """(total optimizer steps, warmup steps). `steps` (explicit) > `cfg.steps` > epochs x steps/epoch.

    Counting in steps makes a recipe transfer across labeled-set sizes: 30 epochs of a 100-image set
    are 60 steps at batch 64 (too few to fit anything), 30 epochs of 60,000 images are 28,000."""
    total = steps if steps else (cfg.steps if cfg.steps > 0 else cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_epochs * steps_per_epoch)
    return max(0, int(total)), max(0, min(int(warmup), max(0, int(total) - 1)))


def create_scheduler(optimizer, base_lr: float, total: int, warmup: int, lr_min_ratio: float = 1e-3):
    """timm's cosine with a linear warmup prefix, sized so the LAST step (index total-1) is at lr_min.

    With `warmup_prefix=True` timm starts the cosine after the warmup and reaches lr_min when
    t - warmup == t_initial; so t_initial = total - warmup - 1. (t_initial = total, as before,
    ended training at 2-7% of the peak LR instead of annealing to the end.)"""
    from timm.scheduler import CosineLRScheduler
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup - 1), lr_min=base_lr * lr_min_ratio,
                             warmup_t=warmup, warmup_lr_init=base_lr * 0.01, warmup_prefix=True,
                             t_in_epochs=False)


def effective_ema_decay(decay: float, total_steps: int) -> float:
    """The EMA decay actually used: the configured one, capped so that the EMA's time constant
    1/(1-decay) is at most a tenth of the run (decay <= 1 - 10/total_steps). A 0.999 EMA averages
    over ~1,000 steps: in a 600-step run it would still hold mostly early, untrained weights."""
    if decay <= 0 or total_steps <= 0:
        return 0.0
    return float(min(decay, max(0.0, 1.0 - 10.0 / total_steps)))


def ema_decay_at(step: int, decay: float) -> float:
    """Decay for update number `step` (0-based): min(decay, (1+step)/(10+step)), the ramp of
    tf.train.ExponentialMovingAverage(num_updates=step) that the official code uses, so the EMA
    follows the fast-moving early weights closely and settles at `decay`."""
    return float(min(decay, (1.0 + step) / (10.0 + step)))


@dataclass
class FitResult:
    model: nn.Module            # the weights to use (EMA when enabled)
    history: list               # one metrics dict per epoch
    resumed_from: int           # epochs already done when this call started


def _build_optimizer(model, cfg, lr):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Weight decay on norms/biases hurts small-data training; timm does the same split.
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def fit(model: nn.Module, cfg, *, labeled_ds, out_dir: str | Path, seed: int, meta: dict,
        pseudo_ds=None, ratio: int = 0, unlabeled_weight: float = 1.0, steps: int | None = None,
        batch_size: int | None = None, lr: float | None = None, workers: int = 0,
        device: torch.device | None = None, eval_fn: Callable[[nn.Module], dict] | None = None,
        desc: str = "train") -> FitResult:
    """Train `model` with TrainConfig `cfg`; checkpoints go to out_dir/checkpoint.pt each epoch.

    `pseudo_ds` switches on joint batches: each step draws `batch_size` labeled and
    `ratio * batch_size` pseudo-labeled images, and an epoch is one pass over `pseudo_ds` (as the
    paper counts student epochs over the unlabeled data). Without it an epoch is one pass over the
    labeled set. The run lasts `steps` optimizer steps when given (else `cfg.steps`, else
    `cfg.epochs` epochs); the last epoch is cut short so the total is exact.
    """
    from timm.utils import ModelEmaV3

    out_dir = Path(out_dir)
    device = device or resolve_device()
    rank, world = world_info()
    base_lr = (cfg.lr if lr is None else lr) * world   # linear scaling with the number of ranks
    B = batch_size or cfg.batch_size
    joint = pseudo_ds is not None and len(pseudo_ds) > 0 and ratio > 0
    per_step = B * ratio * world if joint else B * world
    per_epoch = max(1, math.ceil((len(pseudo_ds) if joint else len(labeled_ds)) / per_step))
    total, warmup = plan_steps(cfg, per_epoch, steps)
    epochs = math.ceil(total / per_epoch)

    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _build_optimizer(model, cfg, base_lr)
    scheduler = create_scheduler(optimizer, base_lr, total, warmup)
    ema_decay = effective_ema_decay(cfg.ema_decay, total)
    ema = ModelEmaV3(model, decay=ema_decay) if ema_decay > 0 else None
    if ema is not None and ema_decay < cfg.ema_decay and rank == 0:
        log.info("%s: EMA decay %.4f (ema_decay=%s capped to 1 - 10/%d steps)", desc, ema_decay, cfg.ema_decay, total)
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp_dtype == torch.float16 and device.type == "cuda"))

    ckpt_path = out_dir / "checkpoint.pt"
    history, start_epoch = [], 0
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history, start_epoch = list(state["history"]), int(state["epoch"])
        log.info("%s: resuming from %s after epoch %d of %d", desc, ckpt_path, start_epoch, epochs)
    resumed_from = start_epoch

    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        if ema is not None:      # DDP synced the model from rank 0; the EMA copy was taken before
            _broadcast_(ema.module.state_dict().values())
    if cfg.compile:
        train_model = torch.compile(train_model)
    pin = device.type == "cuda"

    for epoch in range(start_epoch, epochs):
        steps = min(per_epoch, total - epoch * per_epoch)     # the last epoch may be cut short
        model.train()
        seed_everything(seed_for(seed, epoch, "torch", rank))
        # labeled_ds=None: pseudo-labeled batches only (phase 1 of the two-step ablation)
        lab = (make_loader(labeled_ds, B, steps * B, seed_for(seed, epoch, "labeled"), workers, rank, world, pin)
               if labeled_ds is not None else [()] * steps)
        pse = (make_loader(pseudo_ds, B * ratio, steps * B * ratio, seed_for(seed, epoch, "pseudo"),
                           workers, rank, world, pin) if joint else None)
        batches = zip(lab, pse) if joint else ((b, None) for b in lab)
        t0, n_img, sums = time.perf_counter(), 0, {"loss": 0.0, "loss_labeled": 0.0, "loss_pseudo": 0.0}
        # the stage's last bar stays on screen; earlier epochs are cleared (their log line stays)
        bar = tqdm(batches, total=steps, desc=f"{desc} {epoch + 1}/{epochs}", leave=epoch + 1 == epochs,
                   disable=not (_progress_enabled() and rank == 0))
        for i, (lb, pb) in enumerate(bar):
            global_step = epoch * per_epoch + i
            scheduler.step_update(global_step)
            # every image of a batch was undecodable (skip policy)
            skip = lb is None or (joint and pb is None)
            if world > 1:        # all ranks skip together, or DDP's all-reduce would hang
                skip = _any_rank(skip, device)
            if skip:
                continue
            xl, yl = (lb[0], lb[1]) if lb else (torch.zeros(0, *pb[0].shape[1:]), torch.zeros(0, dtype=torch.long))
            xs, ts = [xl], None
            if pb is not None:
                xs.append(pb[0])
                ts = pb[1].to(device, non_blocking=pin)
            x = torch.cat(xs).to(device, non_blocking=pin)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yl = yl.to(device, non_blocking=pin)
            ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with ctx:
                logits = train_model(x)
            if ts is None:       # supervised step: no pseudo rows
                ts = logits.new_zeros((0, logits.shape[1]), dtype=torch.float32)
            loss, parts = joint_loss(logits.float(), len(yl), yl, ts, unlabeled_weight, cfg.label_smoothing)
            diverged = not torch.isfinite(loss)
            if world > 1:        # all ranks stop together (one rank raising alone hangs the others)
                diverged = _any_rank(diverged, device)
            if diverged:
                raise TrainingDiverged(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                                       f"{_last_good(ckpt_path, epoch)}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.decay = ema_decay_at(global_step, ema_decay)
                ema.update(model)
            n_img += len(x)
            sums["loss"] += loss.item()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        elapsed = time.perf_counter() - t0
        if world > 1:
            # DDP keeps parameters equal, but each rank's last forward updated its own BatchNorm
            # statistics: take rank 0's (the ones checkpointed), so every rank holds the saved state
            # and a resumed run continues exactly like an uninterrupted one on all ranks.
            _broadcast_(model.buffers())
            if ema is not None:
                _broadcast_(ema.module.buffers())
            # metrics are the mean over ranks (rank 0 writes them)
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            sums = {k: float(v) / world for k, v in zip(keys, t.tolist())}
        # The loss of every step was finite, yet the last update(s) may have pushed weights or BatchNorm
        # statistics to inf/NaN: never checkpoint those over the last good state. (After the broadcast
        # above, so every rank sees the same state and they all stop together.)
        if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
            raise TrainingDiverged(f"{desc}: weights became NaN/inf during epoch {epoch + 1}; "
                                   f"{_last_good(ckpt_path, epoch)}")
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "ema_decay": ema_decay,
               "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
               "images_per_s": n_img * world / max(elapsed, 1e-9), "epoch_s": elapsed, "steps": steps}
        row.update({k: v / steps for k, v in sums.items()})
        eval_model = ema.module if ema is not None else model
        if eval_fn is not None and rank == 0:
            row.update(eval_fn(eval_model))
        history.append(row)
        if rank == 0:
            on_epoch(desc, row, epochs, history, out_dir)
            save_checkpoint(ckpt_path, {
                "format": "noisystudent/checkpoint/1", "epoch": epoch + 1, "history": history,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "meta": meta})
            _write_metrics(out_dir / "metrics.jsonl", history)
        if world > 1:
            dist.barrier()
    final = ema.module if ema is not None else model
    return FitResult(final, history, resumed_from)


def _last_good(ckpt_path: Path, epochs_done: int) -> str:
    """The end of a divergence message: what is kept on disk and what to do."""
    kept = (f"the last good checkpoint is kept at {ckpt_path} (end of epoch {epochs_done})"
            if epochs_done > 0 and ckpt_path.is_file() else "no epoch had finished, so there is no checkpoint")
    return (f"{kept} — lower the learning rate or enable grad_clip, then rerun (a changed config "
            "restarts this stage from scratch)")


def _broadcast_(tensors) -> None:
    """Overwrite each tensor in place with rank 0's value."""
    for t in tensors:
        dist.broadcast(t.data, 0)


def _any_rank(flag: bool, device: torch.device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _write_metrics(path: Path, history: list) -> None:
    """Rewrite metrics.jsonl whole (atomically) from the checkpoint's history, so it never
    disagrees with the checkpoint after a kill."""
    import json
    from .artifacts import atomic_write
    with atomic_write(path, "w") as f:
        for row in history:
            f.write(json.dumps(row, sort_keys=True) + "\n")
