"""Report parts added for users' own data: the confusion matrix of the final model, a grid of
pseudo-labelled pool images per class (most and least confident), and the environment the run used
(config, versions, hardware; recorded by the run in environment.json)."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from matplotlib.figure import Figure

from ..layout import RunLayout
import numpy as np

from ..labels import LabelDirError, list_label_shards
from .rundata import RunData, load_optional

__all__ = ["confusion_plot", "pool_grid_plot", "environment", "write_environment", "environment_blocks",
           "EXTRA_PLOTS"]

GRID_CLASSES = 10       # rows of the pool grid (classes with the most pseudo-labels first)
GRID_EACH = 4           # most and least confident images shown per class


def environment() -> dict:
    """Versions and hardware of this process (what `run` records beside the config)."""
    import torch
    import timm
    from importlib.metadata import PackageNotFoundError, version
    try:
        ns = version("noisystudent")
    except PackageNotFoundError:
        ns = "unknown"
    env = {"noisystudent": ns, "python": sys.version.split()[0], "torch": torch.__version__,
           "timm": timm.__version__, "numpy": np.__version__, "platform": platform.platform(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return env


def write_environment(run_dir: Path) -> None:
    from ..artifacts import write_json
    write_json(RunLayout(run_dir).environment, environment())


def _final(run: RunData) -> dict | None:
    return run.final_student() or next((m for m in run.models if m["which"] == "teacher"), None)


def confusion_plot(run: RunData):
    m = _final(run)
    ev = load_optional(run.layout.eval(m["round"], m["which"]) / "eval.json") if m else None
    cm = np.asarray((ev or {}).get("confusion_matrix") or [], dtype=float)
    if cm.ndim != 2 or not cm.size or len(cm) > 100:
        return None
    names = run.classes if len(run.classes) == len(cm) else [str(i) for i in range(len(cm))]
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(11.0, 2.5 + 0.45 * len(cm))
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(100 * rows, cmap="Blues", vmin=0, vmax=100)
    if len(cm) <= 20:
        for i in range(len(cm)):
            for j in range(len(cm)):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if rows[i, j] > 0.5 else "black")
    ticks = range(len(cm)) if len(cm) <= 40 else []
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(ticks, [names[i] for i in ticks])
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix: r{m['round']} {m['which']} on the test set (counts; colour = % of row)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="% of the true class")
    return fig


def _pool_source(run: RunData):
    from ..data import create_source
    cfg = run.config
    return create_source(cfg.data.unlabeled, cfg.data.in_chans or 3, "data.unlabeled")


def pool_grid_plot(run: RunData):
    """Rows = classes; left GRID_EACH columns the pool images the teacher was surest of, right the
    ones it was least sure of (among those it assigned to the class)."""
    import pyarrow.parquet as pq
    k = max((r for r in run.rounds if run.layout.labels(r).is_dir()), default=None)
    if k is None or not run.layout.config.is_file():
        return None
    try:
        parts = list_label_shards(run.layout.labels(k))
    except LabelDirError:
        return None
    cols = ["sample_id", "pred", "confidence"]
    t = {c: np.concatenate([pq.read_table(p, columns=[c]).column(c).to_numpy(zero_copy_only=False)
                            for p in parts]) for c in cols}
    src = _pool_source(run)
    where = {sid: i for i, sid in enumerate(src.ids)}
    counts = np.bincount(t["pred"].astype(int), minlength=len(run.classes))
    shown = [c for c in np.argsort(-counts, kind="stable") if counts[c] > 0][:GRID_CLASSES]
    if not shown:
        return None
    fig = Figure(figsize=(1.1 * 2 * GRID_EACH + 1.5, 1.2 * len(shown) + 0.8), layout="constrained")
    axes = fig.subplots(len(shown), 2 * GRID_EACH, squeeze=False)
    for row, c in zip(axes, shown):
        idx = np.flatnonzero(t["pred"] == c)
        order = idx[np.argsort(-t["confidence"][idx], kind="stable")]
        most, least = list(order[:GRID_EACH]), list(order[max(GRID_EACH, len(order) - GRID_EACH):])
        picks = most + [None] * (GRID_EACH - len(most)) + [None] * (GRID_EACH - len(least)) + least
        for ax, i in zip(row, picks):
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if i is None or t["sample_id"][i] not in where:
                continue
            img = src.load(where[t["sample_id"][i]])
            ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
            ax.set_title(f"{t['confidence'][i]:.2f}", fontsize=7, pad=1)
        row[0].set_ylabel(run.classes[c] if c < len(run.classes) else str(c), rotation=0, ha="right",
                          va="center", fontsize=9)
    fig.suptitle(f"Round {k} pool images per pseudo-label: the {GRID_EACH} most confident (left) and "
                 f"{GRID_EACH} least confident (right); titles = teacher confidence", fontsize=9)
    return fig


def environment_blocks(run: RunData) -> list:
    env = load_optional(run.layout.environment)
    note = "recorded by the run"
    if not isinstance(env, dict):
        env, note = environment(), "of the machine that wrote this report (the run recorded none)"
    rows = [[k, "—" if v is None else str(v)] for k, v in env.items()]
    blocks = [("h", 2, "Config, versions and hardware"), ("p", f"Versions and hardware {note}."),
              ("table", ["what", "value"], rows)]
    cfg = run.layout.config
    if cfg.is_file():
        blocks += [("p", "The resolved config (`config.yaml`; every default filled in):"), ("pre", cfg.read_text())]
    return blocks


EXTRA_PLOTS = [("confusion", "Confusion matrix of the final model on the test set", confusion_plot),
               ("pool_grid", "Pseudo-labelled pool images per class, most and least confident", pool_grid_plot)]

