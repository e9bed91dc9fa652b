"""The report's plots: each function takes the run and returns a matplotlib Figure, or None when the
run has nothing to show for it. The OO API only (no pyplot): no global backend or figure state."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from ..labels import LabelDirError, list_label_shards
from ..layout import role_label
from .rundata import MAX_BAR_CLASSES, RunData, is_num, read_jsonl, training_stages

__all__ = ["PLOTS", "largest_moves"]


def _axes(w: float = 6.4, h: float = 3.8):
    fig = Figure(figsize=(w, h))
    return fig, fig.subplots()


def _dress(ax, title: str, xlabel: str, ylabel: str, legend: dict | None = None, grid: str = "both") -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, axis=grid)
    if legend is not None:
        ax.legend(**{"fontsize": 8, **legend})


# ------------------------------------------------------------------------------------------------
# plots: each returns a Figure, or None when the run has nothing to show for it

def _accuracy(run: RunData):
    if not run.models:
        return None
    fig, ax = _axes()
    # The teacher and the students form one chain (round k's student teaches round k+1).
    # Value labels left of the chain's points and right of the fine-tuned ones, so that values of
    # the same round never overprint each other, whichever is higher.
    groups = [("teacher → noisy students", ("teacher", "student"), "o-", "C0", (-7, 0), "right"),
              ("student without noise", ("student_nonoise",), "s", "C3", (7, 0), "left"),
              ("fine-tuned at test size", ("finetune",), "^--", "C2", (7, 0), "left")]
    for label, whichs, fmt, color, offset, ha in groups:
        pts = sorted((m["round"], m["top1"]) for m in run.models if m["which"] in whichs and is_num(m.get("top1")))
        if not pts:
            continue
        x, y = zip(*pts)
        ax.plot(x, [100 * v for v in y], fmt, color=color, label=label, ms=6)
        for xi, yi in pts:
            ax.annotate(f"{100 * yi:.1f}", (xi, 100 * yi), textcoords="offset points", xytext=offset,
                        ha=ha, va="center", fontsize=8, color=color)
    ax.set_xticks(sorted({m["round"] for m in run.models}))
    ax.margins(x=0.12, y=0.1)
    _dress(ax, f"{run.name}: test accuracy per round", "round (0 = supervised teacher)", "test top-1 accuracy (%)", {})
    return fig


def largest_moves(deltas: list[tuple[str, float]], half: int) -> tuple[list[tuple[str, float]], str]:
    """The `half` largest drops (most negative first) and `half` largest gains (largest last) of
    (class, change) pairs, and what the title says of them; classes that did not move are not moves."""
    ranked = sorted(deltas, key=lambda d: d[1])
    down, up = [d for d in ranked if d[1] < 0], [d for d in ranked if d[1] > 0]
    drops, gains = down[:half], up[-half:] if half else []
    if len(drops) == len(down) and len(gains) == len(up):
        return drops + gains, f"the {len(drops) + len(gains)} of {len(deltas)} classes that moved"
    return drops + gains, f"largest drops and gains of {len(deltas)} classes"


def _per_class_delta(run: RunData):
    final = run.final_student()
    teacher = run.json(run.layout.eval(0, "teacher"), "eval.json")
    student = run.json(run.layout.eval(final["round"], "student"), "eval.json") if final else None
    if not (isinstance(teacher, dict) and isinstance(student, dict)):
        return None
    t, s = teacher.get("per_class_accuracy") or {}, student.get("per_class_accuracy") or {}
    deltas = [(c, 100 * (s[c] - t[c])) for c in t if is_num(t[c]) and is_num(s.get(c))]
    if not deltas:
        return None
    title = f"Per-class test accuracy change, teacher → round {final['round']} student"
    if len(deltas) > MAX_BAR_CLASSES:     # 1000 bars are unreadable: show the largest moves
        deltas, note = largest_moves(deltas, MAX_BAR_CLASSES // 2)
        title += f" ({note})"
        if not deltas:
            return None
    names, vals = zip(*deltas)
    fig, ax = _axes(min(12, max(5, 0.3 * len(vals) + 1.5)), 3.6)
    ax.bar(range(len(vals)), vals, color=["C2" if v >= 0 else "C3" for v in vals])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(vals)), names, rotation=90 if max(map(len, names)) > 3 or len(vals) > 20 else 0,
                  fontsize=8)
    _dress(ax, title, "class", "accuracy change (percentage points)", grid="y")
    return fig


def _grid(n: int, ncols: int, w: float, h: float, **kw):
    """Small multiples: n axes in rows of `ncols` (w x h inches each), spare cells hidden."""
    ncols, nrows = min(n, ncols), -(-n // min(n, ncols))
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _confidence_hist(label_dir: Path, threshold) -> tuple[np.ndarray, int, int]:
    """50-bin histogram of the `confidence` column, one row group batch at a time (pools are big)."""
    counts, total, above = np.zeros(50, dtype=np.int64), 0, 0
    for path in list_label_shards(label_dir):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1 << 16, columns=["confidence"]):
            c = np.clip(batch.column(0).to_numpy(zero_copy_only=False).astype(np.float32), 0.0, 1.0)
            counts += np.histogram(c, bins=50, range=(0.0, 1.0))[0]
            total += len(c)
            above += int((c >= threshold).sum()) if is_num(threshold) else 0
    return counts, total, above


def _has_shards(label_dir: Path) -> bool:
    try:
        return bool(list_label_shards(label_dir))
    except LabelDirError:
        return False


def _confidence(run: RunData):
    todo = [k for k in run.rounds if _has_shards(run.layout.labels(k))]
    if not todo:
        return None
    fig, axes = _grid(len(todo), 3, 3.6, 2.8, sharex=True)
    edges = np.linspace(0, 1, 51)
    for ax, k in zip(axes, todo):
        sel = run.json(run.layout.selection(k), "selection.json") or {}
        thr = sel.get("threshold")
        counts, total, above = _confidence_hist(run.layout.labels(k), thr)
        # Log counts: confident pools pile up near 1.0 and would flatten everything else.
        ax.stairs(counts, edges, fill=True, alpha=0.6, color="C0", label=f"{total} pool images", baseline=0.5)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)
        # plain "1, 10, 100": the default log labels are mathtext, which the report turns off (a `$` in
        # a class name must stay a `$`), so they would read "$\mathdefault{10^{1}}$"
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if is_num(thr):
            ax.axvline(thr, color="C3", ls="--", lw=1.5, label=f"threshold {thr:g}: {above} above")
        _dress(ax, f"round {k}: teacher's pseudo-labels", "confidence (max probability)", "images (log scale)",
               {"fontsize": 7})
    fig.suptitle("Pseudo-label confidence on the unlabeled pool")
    return fig


def _selection(run: RunData):
    sels = [(k, s) for k in run.rounds if isinstance(s := run.json(run.layout.selection(k), "selection.json"), dict)
            and s.get("counts_after_threshold") and s.get("counts_selected_with_copies")]
    if not sels:
        return None
    n = len(sels[0][1]["counts_after_threshold"])
    fig, axes = _grid(len(sels), 1, max(6.0, min(12.0, 0.35 * n)) if n <= MAX_BAR_CLASSES else 8.0, 2.8)
    for ax, (k, s) in zip(axes, sels):
        counts = [np.asarray(s[key] or [], dtype=float) for key in
                  ("counts_after_threshold", "counts_selected_with_copies", "per_class_target")]
        x = np.arange(len(counts[0]))
        names = [str(c) for c in s.get("classes") or run.classes or x]
        labels = ("above threshold (before balancing)", "selected incl. copies (after balancing)")
        if len(x) <= MAX_BAR_CLASSES:
            ax.bar(x - 0.2, counts[0], 0.4, label=labels[0], color="C7")
            ax.bar(x + 0.2, counts[1], 0.4, label=labels[1], color="C0")
            ax.set_xticks(x, names, rotation=90 if max(map(len, names)) > 3 else 0, fontsize=8)
            if len(counts[2]) == len(x):
                ax.plot(x, counts[2], "_", color="k", ms=10, mew=1.5, label="target per class")
            xlabel = "predicted class"
        else:   # too many bars to read: curves over the classes, ranked by their pool count
            order = np.argsort(-counts[0], kind="stable")
            for c, label, style in zip(counts, (*labels, "target per class"), ("C7", "C0", "k--")):
                if len(c) == len(x):
                    ax.plot(x, c[order], style, label=label, lw=1.2)
            xlabel = "predicted classes, ranked by images above threshold"
        _dress(ax, f"round {k}: pseudo-labeled images per predicted class", xlabel, "images", grid="y")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=3, fontsize=8)
    return fig


def _corruptions(run: RunData):
    teacher = next((r for r in run.robust if r[1]["which"] == "teacher"), None)
    final = run.final_student()
    student = next((r for r in run.robust if final is not None and r[1]["which"] == "student"
                    and r[1]["round"] == final["round"]), None)
    pairs = [p for p in (teacher, student) if p is not None and p[2].get("corruptions")]
    names = list(dict.fromkeys(n for _, _, rob in pairs for n in rob["corruptions"]))
    if not names:
        return None
    fig, axes = _grid(len(names), 5, 2.4, 2.2, sharey=True)
    for ax, name in zip(axes, names):
        for (label, _, rob), color in zip(pairs, ("C0", "C1")):
            pts = sorted((int(sv), a) for sv, a in (rob["corruptions"].get(name) or {}).items() if is_num(a))
            if is_num(rob.get("clean_accuracy")):
                pts = [(0, rob["clean_accuracy"])] + pts      # severity 0 = clean images
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", ms=3, color=color, label=label)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xticks(range(0, 6))
        ax.grid(alpha=0.3)
    for ax in axes[-min(5, len(names)):]:
        ax.set_xlabel("severity (0 = clean)")
    for ax in axes[::min(5, len(names))]:
        ax.set_ylabel("accuracy (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
    fig.suptitle("Accuracy under corruptions: teacher vs final student")
    return fig


def _fgsm(run: RunData):
    models = [r for r in run.robust if r[2].get("fgsm")]
    if not models:
        return None
    fig, ax = _axes(6.0, 3.6)
    ticks = set()
    for i, (label, _, rob) in enumerate(models):
        pts = sorted((float(e), a) for e, a in rob["fgsm"].items() if is_num(a))
        if is_num(rob.get("clean_accuracy")):
            pts = [(0.0, rob["clean_accuracy"])] + pts
        ax.plot([255 * e for e, _ in pts], [100 * a for _, a in pts], "o-", color=f"C{i}", label=label)
        ticks.update(round(255 * e, 2) for e, _ in pts)
    ax.set_xticks(sorted(ticks))
    _dress(ax, "Adversarial robustness: FGSM accuracy vs ε", "FGSM ε (in units of 1/255; 0 = clean)",
           "accuracy (%)", {})
    return fig


def _curves(run: RunData):
    """Teachers (labeled CE) and students (labeled + pseudo-labeled loss) on separate axes: the two
    losses are different quantities."""
    groups = {"teacher": [], "student": []}
    for i, (k, which) in enumerate(training_stages(run)):
        rows = [r for r in read_jsonl(run.layout.model(k, which) / "metrics.jsonl")
                if is_num(r.get("loss")) and is_num(r.get("epoch"))]
        if rows:
            groups["teacher" if which == "teacher" else "student"].append((i, k, which, rows))
    panels = [(g, v) for g, v in groups.items() if v]
    if not panels:
        return None
    fig, axes = _grid(len(panels), len(panels), 5.2, 3.6)
    for ax, (g, series) in zip(axes, panels):
        for i, k, which, rows in series:
            ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], "o-", ms=3, color=f"C{i % 10}",
                    label=f"r{k} {role_label(which)}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ylabel = ("cross-entropy, labeled images" if g == "teacher"
                  else "loss: CE(labeled) + w x softCE(pseudo)")
        _dress(ax, f"{g}s: training loss per epoch", "epoch", ylabel, {"ncols": 2 if len(series) > 6 else 1})
    return fig


PLOTS = [("accuracy", "Test accuracy per round", _accuracy),
         ("per_class_delta", "Per-class accuracy change, teacher → final student", _per_class_delta),
         ("confidence", "Pseudo-label confidence and the selection threshold", _confidence),
         ("selection", "Pseudo-labeled images per class, before and after balancing", _selection),
         ("robustness_corruptions", "Accuracy vs corruption severity", _corruptions),
         ("robustness_fgsm", "FGSM accuracy vs ε", _fgsm),
         ("training_curves", "Training curves", _curves)]

