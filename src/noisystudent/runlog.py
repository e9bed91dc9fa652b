"""Logs people read: `run.log` in the run directory (every message of every invocation, appended),
one line per training epoch (loss, lr, images/s, time left in the stage and, under `run`, in the
whole run), whether or not stderr is a terminal, at most one every `NOISYSTUDENT_LOG_S` seconds
(default 10; always the first and last epoch): a 100-image labeled set trains the Fashion-MNIST
teacher in 5,500 one-step epochs, whose lines would bury the log; metrics.jsonl keeps every epoch.
`on_epoch` is the trainer's one hook per epoch: the line, and the rows for the configured
CSV/TensorBoard loggers (loggers.py).

The whole-run ETA counts training images: the teacher's and, per round, the student's (`steps`, or
epochs over the pool, in batches of B labeled + ratio x B pseudo-labeled), plus one student per
variant. Until the selection exists the whole pool stands in for it, so the estimate is an
upper bound early on; labeling and evaluation time is not counted.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .errors import UserError
from .layout import RunLayout

__all__ = ["attach_run_log", "detach_run_log", "note", "epoch_line", "on_epoch", "RunPlan", "set_plan",
           "plan_skip", "fmt_duration", "stage_summary", "env_number", "env_seconds", "env_flag", "log_interval_s", "interval_due", "line_due"]

log = logging.getLogger("noisystudent")
_HANDLER: logging.Handler | None = None
_PLAN: "RunPlan | None" = None
_LAST_LINE: dict[str, float] = {}       # desc -> when its last epoch line was logged (monotonic s)


def env_number(name: str, default: float, unit: str) -> float:
    """A number >= 0 (of `unit`) from the environment variable `name` (a UserError naming it if not)."""
    raw = os.environ.get(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserError(f"{name} must be a number of {unit} >= 0, got {raw!r}")
    return value


def env_seconds(name: str, default: float) -> float:
    return env_number(name, default, "seconds")


def env_flag(name: str, default: bool) -> bool:
    """A 0/1 switch from the environment variable `name` (for A/B measurements); anything else is
    refused with a UserError naming it."""
    v = os.environ.get(name, "").strip()
    if v not in ("", "0", "1"):
        raise UserError(f"{name}={v!r}: allowed values are 0 and 1")
    return default if v == "" else v == "1"


def log_interval_s() -> float:
    """Seconds between epoch lines (`NOISYSTUDENT_LOG_S`, default 10; 0: every epoch)."""
    return env_seconds("NOISYSTUDENT_LOG_S", 10)


def attach_run_log(run_dir: Path) -> Path:
    """Send the `noisystudent` logger to run_dir/run.log too (appending; one handler per process)."""
    global _HANDLER
    path = RunLayout(run_dir).run_log
    if _HANDLER is not None and getattr(_HANDLER, "baseFilename", None) == str(path.resolve()):
        return path
    if _HANDLER is not None:
        log.removeHandler(_HANDLER)
        _HANDLER.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    _HANDLER = logging.FileHandler(path, encoding="utf-8")
    _HANDLER.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(_HANDLER)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return path


def detach_run_log() -> None:
    """Stop sending the logger to the last run's run.log: what a later command in the same process
    logs (an error before it opens its own run directory, say) must not land in that file."""
    global _HANDLER
    if _HANDLER is not None:
        log.removeHandler(_HANDLER)
        _HANDLER.close()
        _HANDLER = None


def note(msg: str, level: int = logging.WARNING) -> None:
    """Write a line to run.log only (for what the CLI already prints to stderr itself)."""
    if _HANDLER is not None:
        _HANDLER.handle(logging.LogRecord("noisystudent", level, __file__, 0, msg, None, None))


def fmt_duration(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def stage_summary(info: dict) -> str:
    """What a finished stage did, for its `done` line in run.log, from the `info` its stage.json
    keeps: a training stage's steps and speed, an evaluation's top-1 (on val when the run has one,
    as every comparison the run makes; test otherwise: the results table shows both at the end),
    how many pool images were labeled, and how many the select stage kept. Unknown keys are left out."""
    parts = []
    if isinstance(info.get("steps"), (int, float)):     # a stage given 0 steps has no speed
        speed = info.get("images_per_s")
        parts.append(f"{int(info['steps']):,} steps" + (f", {speed:,.0f} img/s" if isinstance(speed, (int, float)) else ""))
    if info.get("val_top1") is not None:
        parts.append(f"val top-1 {100 * info['val_top1']:.2f}%")
    elif info.get("top1") is not None:
        parts.append(f"test top-1 {100 * info['top1']:.2f}%")
    if isinstance(info.get("rows"), int) and "pool_size" in info:
        skipped = info.get("skipped_images") or 0
        parts.append(f"{int(info['rows']):,} pool images labeled" + (f", {skipped:,} undecodable skipped" if skipped else ""))
    if isinstance(info.get("selected_unique"), int):
        pool = info.get("pool_rows")
        kept = f"kept {info['selected_unique']:,}" + (f" of {pool:,} pool images ({100 * info['selected_unique'] / pool:.1f}%)"
                                                       if pool else " pool images")
        if info.get("selected_with_copies") not in (None, info["selected_unique"]):
            kept += f", {info['selected_with_copies']:,} with the balancing copies"
        acc = info.get("pseudo_label_accuracy")
        if isinstance(acc, dict) and isinstance(acc.get("after"), dict) and acc["after"].get("overall") is not None:
            kept += f"; {100 * acc['after']['overall']:.1f}% of their pseudo-labels right (the pool's own labels)"
        parts.append(kept)
    return "; ".join(parts)


class RunPlan:
    """Training images the whole run will process, and those done so far (see module docstring)."""

    def __init__(self, total_images: float):
        self.total, self.done, self.t0 = float(total_images), 0.0, time.perf_counter()

    def add(self, images: float) -> None:
        self.done += images

    def left_s(self, images_per_s: float) -> float | None:
        if images_per_s <= 0:
            return None
        return max(0.0, self.total - self.done) / images_per_s


def set_plan(cfg, n_labeled: int, n_pool: int) -> None:
    """Called by `run` before the teacher: plan the whole run's training images."""
    global _PLAN
    import math
    s, t = cfg.student, cfg.teacher
    # as engine.fit counts: `steps` when set, else whole epochs of whole batches; a student step is
    # B labeled + ratio x B pseudo-labeled images (the pool stands in for the selection)
    t_steps = t.steps or math.ceil(n_labeled / t.batch_size) * t.epochs
    s_steps = s.steps or math.ceil(n_pool / (s.batch_size * s.ratio)) * s.epochs
    per_round = s_steps * s.batch_size * (s.ratio + 1)
    from .variants import variant_names
    n_variants = len(variant_names(cfg.variants)) if cfg.rounds else 0   # ablation_no_noise is folded in
    total = t_steps * t.batch_size + (cfg.rounds + n_variants) * per_round
    _PLAN = RunPlan(total) if total > 0 else None


def plan_skip(images: float) -> None:
    """Count a stage's training images as done without timing them: a finished stage that is
    skipped, or the epochs a resumed stage already has, are not left to do in the run's ETA."""
    if _PLAN is not None and images:
        _PLAN.add(float(images))


def clear_plan() -> None:
    global _PLAN
    _PLAN = None
    from .loggers import close_loggers
    close_loggers()


def on_epoch(desc: str, row: dict, epochs: int, history: list, out_dir=None, interval: float | None = None) -> None:
    """Called by the trainer (rank 0) after each epoch, `history` ending with `row`. The line is
    built every epoch (it counts the epoch's images in the run's ETA) and logged when due, at most
    every `interval` s (the trainer reads `log_interval_s()` once, before training; None: read it now)."""
    text = epoch_line(desc, row, epochs, history)
    now = time.monotonic()
    if interval is None:
        interval = log_interval_s()
    if line_due(row["epoch"], epochs, now, _LAST_LINE.get(desc), interval):
        log.info("%s", text)
        _LAST_LINE[desc] = now
    from .loggers import log_epoch
    log_epoch(out_dir, row, history)


def interval_due(now: float, last: float | None, interval: float, always: bool = False) -> bool:
    """The rule of the epoch lines and of the trainer's checkpoints: `always`, the first time
    (`last` None), or once `interval` seconds have passed since `last`."""
    return always or last is None or now - last >= interval


def line_due(epoch: int, epochs: int, now: float, last: float | None, interval: float) -> bool:
    """Log this epoch's line? The first and last epoch of a stage (and of a resumed one) always;
    otherwise once `interval` seconds have passed since the stage's previous line."""
    return interval_due(now, last, interval, always=epoch <= 1 or epoch >= epochs)


def epoch_line(desc: str, row: dict, epochs: int, history: list) -> str:
    """'teacher epoch 3/30: loss 0.812, lr 0.0493, 412 img/s, 0:41 left in the stage, ~12:10 in the run'."""
    done = row["epoch"]
    recent = [h.get("epoch_s", 0.0) for h in history[-3:]]
    left = (epochs - done) * (sum(recent) / max(1, len(recent)))
    ips = row.get("images_per_s", 0.0)
    text = (f"{desc} epoch {done}/{epochs}: loss {row.get('loss', float('nan')):.4f}, lr {row.get('lr', 0):.3g}, "
            f"{ips:.0f} img/s, {row.get('epoch_s', 0):.1f} s, {fmt_duration(left)} left in the stage")
    if _PLAN is not None:
        _PLAN.add(ips * row.get("epoch_s", 0.0))
        seen = sum(h.get("images_per_s", 0.0) * h.get("epoch_s", 0.0) for h in history[-3:])
        run_left = _PLAN.left_s(seen / max(sum(recent), 1e-9))     # the same recent epochs as above
        if run_left is not None:
            text += f", ~{fmt_duration(run_left)} left in the run"
    return text
