"""The training loop, for every model the method trains: teacher, noisy student, baselines, fine-tune.

Read top to bottom: `Trainer.setup` builds optimizer / LR schedule / EMA and resumes from
`checkpoint.pt`; `train_one_epoch` re-seeds every RNG from (seed, epoch, rank), takes one `Batch` per
optimizer step from the batch source and minimises the step loss on it; `end_epoch` syncs ranks,
refuses non-finite weights, optionally evaluates, and checkpoints atomically (at most every 30 s).

What a step trains on (labeled, joint, pseudo-only) and what it minimises are the caller's: a batch
source and a step loss from `batches.py`. Resuming replays exactly: model/optimizer/EMA come from the
checkpoint, the LR and EMA decay are pure functions of the global step, and all randomness (order,
augmentation, dropout, stochastic depth) is re-seeded at the start of each epoch.

On a GPU nothing syncs the host per step (the loss is read every `_CUDA_CHECK_EVERY` steps), and a
source that makes its batches there (`made_on_device`) has batch k+1 made on a side stream while
step k trains (`prefetch_on_side_stream`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .artifacts import atomic_write, deferred_interrupts, load_checkpoint, save_checkpoint
from .batches import Batch, StepLoss, joint_step_loss
from .cpuload import check_busy_cpu
from .data.loaders import seed_for
from .distributed import (any_rank, autocast_dtype, broadcast_, progress_enabled, resolve_device,
                          seed_everything, world_info)
from .errors import TrainingDiverged
from .runlog import env_flag, env_seconds, interval_due, log_interval_s, on_epoch, plan_skip
from .schedule import create_optimizer, create_scheduler, ema_decay_at, effective_ema_decay, plan_steps

__all__ = ["fit", "Trainer", "FitResult"]

log = logging.getLogger("noisystudent")

# On a GPU the loss is read (a host sync) every this many steps, not every step: a sync per step
# stalls the CPU that queues the next batch's work. A divergence is still caught within this many
# steps, before any checkpoint.
_CUDA_CHECK_EVERY = 50


def checkpoint_interval_s() -> float:
    """Seconds between checkpoints (`NOISYSTUDENT_CHECKPOINT_S`, default 30; 0: every epoch). A small
    labeled set has hundreds of sub-second epochs (the Fashion-MNIST teacher: 688 of 8 steps), and
    rewriting checkpoint.pt and metrics.jsonl after each cost it ~3% of its time; a kill now loses at
    most this much training, replayed exactly on the rerun."""
    return env_seconds("NOISYSTUDENT_CHECKPOINT_S", 30)


def checkpoint_due(now: float, last: float, interval: float, last_epoch: bool) -> bool:
    """Checkpoint after this epoch? Always after the last one; else once `interval` s have passed."""
    return interval_due(now, last, interval, always=last_epoch)


@dataclass
class FitResult:
    model: nn.Module            # the weights to use: EMA when enabled; the best on validation if asked
    history: list               # one metrics dict per epoch
    resumed_from: int           # epochs already done when this call started


class Trainer:
    """One model's training run; see the module docstring. `fit()` is the whole of it."""

    def __init__(self, model: nn.Module, cfg, source, *, out_dir, seed: int, meta: dict,
                 loss: StepLoss | None = None, steps: int | None = None, lr: float | None = None,
                 device: torch.device | None = None, eval_fn: Callable[[nn.Module], dict] | None = None,
                 eval_every: int = 0, best_key: str | None = None, desc: str = "train"):
        self.model, self.cfg, self.source, self.meta, self.desc = model, cfg, source, meta, desc
        self.out_dir, self.seed = Path(out_dir), seed
        self.loss = loss or joint_step_loss(1.0, cfg.label_smoothing)
        self.device = device or resolve_device()
        self.rank, self.world = world_info()
        self.base_lr = (cfg.lr if lr is None else lr) * self.world    # linear scaling with the ranks
        self.per_epoch = source.steps_per_epoch(self.world)
        self.total, self.warmup = plan_steps(cfg, self.per_epoch, steps)
        self.epochs = math.ceil(self.total / self.per_epoch)
        # evaluation: at the end of every epoch that reaches a multiple of eval_every steps, and the last
        self.eval_fn, self.eval_every, self.best_key = eval_fn, eval_every, best_key
        self.ckpt_path = self.out_dir / "checkpoint.pt"
        self.ckpt_every_s = checkpoint_interval_s()
        self.log_every_s = log_interval_s()      # read (and refused if bad) before any training
        self._ckpt_time, self._ckpt_epoch = time.monotonic(), 0    # when, and after how many epochs
        self.check_every = 1 if self.device.type != "cuda" else _CUDA_CHECK_EVERY    # loss reads (syncs)
        # CUDA: make the next batch on a side stream (NOISYSTUDENT_PREFETCH=0 turns it off)
        self.prefetch = env_flag("NOISYSTUDENT_PREFETCH", True)
        self.history: list = []
        self.best: dict | None = None       # {"score", "epoch"} of the weights in best.pt

    # -- setup and resume ------------------------------------------------------------------------
    def setup(self) -> int:
        """Build the optimizer, schedule, EMA and grad scaler; resume; return the first epoch to run."""
        from timm.utils import ModelEmaV3
        cfg, model = self.cfg, self.model
        if self.device.type == "cpu" and self.world == 1:   # ranks of one DDP run on a CPU share it by design
            busy = check_busy_cpu(torch.get_num_threads())
            if busy:
                log.warning("%s: %s", self.desc, busy)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.optimizer = create_optimizer(model, cfg, self.base_lr)
        self.scheduler = create_scheduler(self.optimizer, self.base_lr, self.total, self.warmup)
        self.ema_decay = effective_ema_decay(cfg.ema_decay, self.total)
        self.ema = ModelEmaV3(model, decay=self.ema_decay) if self.ema_decay > 0 else None
        if self.ema is not None and self.ema_decay < cfg.ema_decay and self.rank == 0:
            log.info("%s: EMA decay %.4f (ema_decay=%s capped to 1 - 10/%d steps)", self.desc, self.ema_decay,
                     cfg.ema_decay, self.total)
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16
                                           and self.device.type == "cuda")
        start = self._resume() if self.ckpt_path.is_file() else 0
        self.train_model = model
        if self.world > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.ema is not None:   # DDP synced the model from rank 0; the EMA copy was taken before
                broadcast_(self.ema.module.state_dict().values())
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        return start

    def _resume(self) -> int:
        state = load_checkpoint(self.ckpt_path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history, self.best = list(state["history"]), state.get("best")
        start = int(state["epoch"])
        self._ckpt_epoch = start
        plan_skip(sum(r.get("images_per_s", 0.0) * r.get("epoch_s", 0.0) for r in self.history))
        log.info("%s: resuming from %s after epoch %d of %d", self.desc, self.ckpt_path, start, self.epochs)
        return start

    # -- one epoch -------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> dict:
        """Run epoch `epoch`'s steps; return its sums (loss parts), images and seconds."""
        steps = min(self.per_epoch, self.total - epoch * self.per_epoch)    # the last may be cut short
        self.model.train()
        seed_everything(seed_for(self.seed, epoch, "torch", self.rank))
        pin = self.device.type == "cuda"
        batches = self.source.epoch(self.seed, epoch, steps, self.rank, self.world, pin)
        # Only sources that make batches on the GPU (noise there): a DataLoader's next batch can
        # keep the CPU waiting, and waiting before step k is queued idles the GPU (on an H200 the PIL
        # path's teacher fell from 63% to 44% of the bare loop with the prefetch on, gpu.md).
        if pin and self.prefetch and getattr(self.source, "made_on_device", False):
            batches = prefetch_on_side_stream(batches, self.device)
        # the stage's last bar stays on screen; earlier epochs are cleared (their log line stays)
        bar = tqdm(batches, total=steps, desc=f"{self.desc} {epoch + 1}/{self.epochs}",
                   leave=epoch + 1 == self.epochs, disable=not (progress_enabled() and self.rank == 0))
        t0, n_img, sums = time.perf_counter(), 0, {}
        # Loss sums and the divergence watch stay on the device and are read every `check` steps:
        # a host sync per step (`.item()`, `if tensor`) keeps the CPU from queueing the next batch's
        # noise while the GPU trains, which starved it (issue 15). On the CPU a read is free: every step.
        check = self.check_every
        watch = _DivergenceWatch()
        for i, batch in enumerate(bar):
            step = epoch * self.per_epoch + i
            self.scheduler.step_update(step)
            skip = batch is None            # every image of the batch was undecodable (skip policy)
            if self.world > 1:              # all ranks skip together, or DDP's all-reduce would hang
                skip = any_rank(skip, self.device)
            if not skip:
                loss, parts = self.train_step(batch.to(self.device, non_blocking=pin), step)
                watch.see(loss, i)
                n_img += len(batch)
                for k, v in {"loss": loss, **parts}.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
            if (i + 1) % check == 0 or i + 1 == steps:    # every rank reaches this at the same i
                self._check_loss(watch, epoch)
                if "loss" in sums and not bar.disable:
                    bar.set_postfix(loss=f"{float(loss):.3f}")
        sums = {k: float(v) for k, v in sums.items()}
        for k in ("loss", "loss_labeled", "loss_pseudo"):
            sums.setdefault(k, 0.0)
        return {"sums": sums, "images": n_img, "seconds": time.perf_counter() - t0, "steps": steps}

    def _check_loss(self, watch: "_DivergenceWatch", epoch: int) -> None:
        """Raise TrainingDiverged if any step since the last check had a non-finite loss (the weights
        that step touched are never checkpointed: the last good checkpoint stays)."""
        bad = watch.first_bad()
        diverged = bad is not None
        if self.world > 1:          # all ranks stop together (one rank raising alone hangs the others)
            diverged = any_rank(diverged, self.device)
        if diverged:
            where, value = bad if bad is not None else ("?", "non-finite on another rank")
            raise TrainingDiverged(f"{self.desc}: loss became {value} at epoch {epoch + 1}, step {where}; "
                                   f"{self._last_good(epoch)}")

    def train_step(self, b: Batch, step: int) -> tuple[torch.Tensor, dict]:
        """One optimizer step on batch `b` (already on the device); returns (loss, its parts) as
        detached device tensors: no host sync here (the caller reads them every few steps)."""
        cfg = self.cfg
        x = b.x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else b.x
        ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with ctx:
            logits = self.train_model(x)
        loss, parts = self.loss(logits.float(), b)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.decay = ema_decay_at(step, self.ema_decay)
            self.ema.update(self.model)
        return loss.detach(), {k: torch.as_tensor(v).detach() for k, v in parts.items()}

    # -- end of epoch ------------------------------------------------------------------------------
    def end_epoch(self, epoch: int, stats: dict) -> dict:
        """Sync ranks, refuse non-finite weights, evaluate if due, checkpoint; return the metrics row."""
        sums = stats["sums"]
        if self.world > 1:
            # DDP keeps parameters equal, but each rank's last forward updated its own BatchNorm
            # statistics: take rank 0's (the ones checkpointed), so a resumed run continues exactly
            # like an uninterrupted one on all ranks. Metrics are the mean over ranks.
            broadcast_(self.model.buffers())
            if self.ema is not None:
                broadcast_(self.ema.module.buffers())
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            sums = {k: float(v) / self.world for k, v in zip(keys, t.tolist())}
        # Every step's loss was finite, yet the last update(s) may have pushed weights or BatchNorm
        # statistics to inf/NaN: never checkpoint those over the last good state.
        floats = [v for v in self.model.state_dict().values() if v.is_floating_point()]
        if floats and not bool(torch.stack([torch.isfinite(v).all() for v in floats]).all()):   # one sync
            raise TrainingDiverged(f"{self.desc}: weights became NaN/inf during epoch {epoch + 1}; "
                                   f"{self._last_good(epoch)}")
        steps = stats["steps"]
        row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], "ema_decay": self.ema_decay,
               "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
               "images_per_s": stats["images"] * self.world / max(stats["seconds"], 1e-9),
               "epoch_s": stats["seconds"], "steps": steps}
        row.update({k: v / steps for k, v in sums.items()})
        if self.eval_fn is not None and self.rank == 0 and self._eval_due(epoch):
            row.update(self.eval_fn(self.weights()))
            self._track_best(row, epoch)
        self.history.append(row)
        if self.rank == 0:
            on_epoch(self.desc, row, self.epochs, self.history, self.out_dir, self.log_every_s)
            now = time.monotonic()
            if checkpoint_due(now, self._ckpt_time, self.ckpt_every_s, epoch + 1 == self.epochs):
                self._checkpoint(epoch)
                self._ckpt_time, self._ckpt_epoch = now, epoch + 1
        if self.world > 1:
            dist.barrier()
        return row

    def _eval_due(self, epoch: int) -> bool:
        """Every epoch when eval_every is 0; else each epoch that crosses a multiple of eval_every
        steps, and the last."""
        if not self.eval_every or epoch + 1 == self.epochs:
            return True
        before, after = epoch * self.per_epoch, min(self.total, (epoch + 1) * self.per_epoch)
        return after // self.eval_every > before // self.eval_every

    def _track_best(self, row: dict, epoch: int) -> None:
        """Keep the weights with the highest `best_key` (e.g. val_top1) in best.pt, atomically."""
        if self.best_key is None or row.get(self.best_key) is None:
            return
        if self.best is None or row[self.best_key] > self.best["score"]:
            self.best = {"score": float(row[self.best_key]), "epoch": epoch + 1}
            save_checkpoint(self.out_dir / "best.pt", {"model": self.weights().state_dict(), **self.best})

    def _checkpoint(self, epoch: int) -> None:
        # Ctrl-C/SIGTERM wait for both files: metrics.jsonl is rewritten whole from the checkpoint's
        # history, so after an interrupt the two agree (after a kill -9 between them, the next checkpoint does)
        with deferred_interrupts():
            save_checkpoint(self.ckpt_path, {
                "format": "noisystudent/checkpoint/1", "epoch": epoch + 1, "history": self.history,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "best": self.best, "meta": self.meta})
            with atomic_write(self.out_dir / "metrics.jsonl", "w") as f:
                for r in self.history:
                    f.write(json.dumps(r, sort_keys=True) + "\n")

    def _last_good(self, epochs_done: int) -> str:
        """The end of a divergence message: what is kept on disk and what to do."""
        epochs_done = min(epochs_done, self._ckpt_epoch)       # checkpoints are at most every ckpt_every_s
        kept = (f"the last good checkpoint is kept at {self.ckpt_path} (end of epoch {epochs_done})"
                if epochs_done > 0 and self.ckpt_path.is_file() else
                "no epoch had finished, so there is no checkpoint")
        return (f"{kept} — lower the learning rate or enable grad_clip, then rerun (a changed config "
                "restarts this stage from scratch)")

    # -- the whole run -------------------------------------------------------------------------------
    def weights(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def fit(self) -> FitResult:
        start = self.setup()
        for epoch in range(start, self.epochs):
            self.end_epoch(epoch, self.train_one_epoch(epoch))
        final = self.weights()
        if self.best is not None and (self.out_dir / "best.pt").is_file():
            final.load_state_dict(load_checkpoint(self.out_dir / "best.pt", map_location=self.device)["model"])
            log.info("%s: keeping the weights of epoch %d (%s %.4f)", self.desc, self.best["epoch"],
                     self.best_key, self.best["score"])
        return FitResult(final, self.history, start)


def prefetch_on_side_stream(batches: Iterable[Optional[Batch]], device: torch.device) -> Iterator[Optional[Batch]]:
    """Yield `batches` moved to CUDA `device`, each made (noise, copies, concatenation) on a side
    stream while the default stream trains on the one before: the on-device noise is ~1,000 small
    kernels per batch that would otherwise wait behind the training step (issue 15). The default
    stream waits for a batch's event before using it, and its tensors are marked as used there so
    the allocator does not hand their memory back to the side stream too early."""
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    # Once per epoch, not per batch: the side stream starts after whatever the default stream queued
    # before the epoch (uploads of the source's tensors). Waiting for the default stream before each
    # batch also held batch k+1's noise behind step k-1 and cost the teacher 3-11 points of the bare
    # loop's speed on an H200 (docs/benchmarks/gpu.md).
    side.wait_stream(main)
    it = iter(batches)

    def make():
        with torch.cuda.stream(side):
            b = next(it, _END)
            if b is not None and b is not _END:
                b = b.to(device, non_blocking=True)
        return b, side.record_event()
    nxt = make()
    while nxt[0] is not _END:
        b, ready = nxt
        nxt = make()                    # queue the next batch before this one's training step
        main.wait_event(ready)
        if b is not None:
            for t in (b.x, b.y, b.targets):
                if t is not None:
                    t.record_stream(main)
        yield b


_END = object()


class _DivergenceWatch:
    """The first step (and its loss) whose loss was not finite, kept on the loss's device."""

    def __init__(self):
        self.step = self.value = None

    def see(self, loss: torch.Tensor, i: int) -> None:
        if self.step is None:
            self.step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self.value = torch.zeros((), dtype=loss.dtype, device=loss.device)
        hit = ~torch.isfinite(loss) & (self.step < 0)
        self.step = torch.where(hit, i + 1, self.step)
        self.value = torch.where(hit, loss, self.value)

    def first_bad(self) -> tuple[int, float] | None:
        """(1-based step in the epoch, loss) of the first non-finite loss seen, else None (one sync)."""
        if self.step is None or int(self.step) < 0:
            return None
        return int(self.step), float(self.value)


def fit(model: nn.Module, cfg, source, **kw) -> FitResult:
    """Train `model` with TrainConfig `cfg` on batch source `source` (see `Trainer` for the keywords);
    checkpoints go to out_dir/checkpoint.pt (after an epoch, at most every `checkpoint_interval_s()`
    seconds, and after the last), and a rerun resumes from there."""
    return Trainer(model, cfg, source, **kw).fit()
