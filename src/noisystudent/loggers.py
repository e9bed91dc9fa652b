"""Per-epoch metric loggers picked by the config's `logging: [csv, tensorboard]`.

Both are fed the epoch rows `runlog.on_epoch` receives from the trainer (rank 0 only), and both live
in the stage's own folder, so a stage that is redone (its folder cleared) starts them afresh:
  - csv: `<stage>/metrics.csv`, one row per epoch, written with the csv module. It is rewritten whole
    (atomically) from the trainer's history each epoch, so after a kill and resume it holds exactly
    the epochs of the checkpoint, like metrics.jsonl.
  - tensorboard: `<stage>/tensorboard/`, through torch.utils.tensorboard.SummaryWriter (needs the
    `tensorboard` package: pip install 'noisystudent[logging]'); `tensorboard --logdir RUN_DIR` shows
    every stage, each as its own run, with the same tag names so they overlay.
"""
from __future__ import annotations

import atexit
import csv
import importlib.util
from pathlib import Path

from .errors import UserError

__all__ = ["LOGGERS", "configure_loggers", "log_epoch", "close_loggers", "write_csv", "check_available"]

LOGGERS = ("csv", "tensorboard")
_ENABLED: tuple[str, ...] = ()
_WRITERS: dict[Path, object] = {}       # stage folder -> its open SummaryWriter (one event file each)


def check_available(names) -> None:
    """One line at config time when a chosen logger's package is missing."""
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise UserError("config key 'logging': 'tensorboard' needs the tensorboard package: "
                        "pip install 'noisystudent[logging]' (or remove it from logging)")


def configure_loggers(names) -> None:
    """Called when a command claims its run directory (rank 0)."""
    global _ENABLED
    check_available(names)
    close_loggers()
    _ENABLED = tuple(dict.fromkeys(names))


def log_epoch(out_dir, row: dict, history: list) -> None:
    if not _ENABLED or out_dir is None:
        return
    out_dir = Path(out_dir)
    if "csv" in _ENABLED:
        write_csv(out_dir / "metrics.csv", history)
    if "tensorboard" in _ENABLED:
        _tensorboard(out_dir, row)


def write_csv(path: Path, rows: list[dict]) -> None:
    """The rows as a CSV table: `epoch` first, then every other key in the order first seen."""
    from .artifacts import atomic_write
    fields = list(dict.fromkeys(["epoch", *(k for r in rows for k in r)]))
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _tensorboard(out_dir: Path, row: dict) -> None:
    writer = _WRITERS.get(out_dir)
    if writer is None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:         # uninstalled after the config was checked
            check_available(["tensorboard"])
            raise
        writer = _WRITERS[out_dir] = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
    step = int(row["epoch"])
    for k, v in row.items():
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
            writer.add_scalar(f"train/{k}", v, step)
    writer.flush()          # readable while the run goes on, and nothing lost if it is killed


def close_loggers() -> None:
    while _WRITERS:
        _, w = _WRITERS.popitem()
        w.close()


atexit.register(close_loggers)
