"""`report.md`, `report.html` and `plots/*.png` for a finished (or partly finished) run directory.

Everything here only *reads* the run's files (summary.json, eval/robustness/selection/stage JSON,
metrics.jsonl, label shards) and tolerates missing optional ones: robustness, the no-noise
ablation and fine-tuning appear only when the run produced them. Both documents are rendered from
one list of blocks, so the markdown and the HTML always say the same thing. Every file is written
atomically (temp + rename): a killed `noisystudent report` leaves the previous report intact.
"""
from __future__ import annotations

import functools
import html
import json
import logging
import re
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure  # the OO API: no pyplot, so no global backend/figure state

from .artifacts import atomic_write, read_json
from .errors import UserError

__all__ = ["write_report"]

log = logging.getLogger("noisystudent")

DPI = 110
ROLES = ("teacher", "student", "student_nonoise", "finetune")
ROLE_LABEL = {"teacher": "teacher", "student": "noisy student", "student_nonoise": "student (no noise)",
              "finetune": "fine-tuned"}
MAX_BAR_CLASSES = 50      # beyond this, per-class bar charts show the extremes / lines instead
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False}


# ------------------------------------------------------------------------------------------------
# reading the run directory (every optional file may be missing or unreadable)

def _load(path: Path):
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        log.warning("report: %s is unreadable; leaving it out", path)
        return None


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass                            # one bad line should not hide the rest of the curve
    return rows


def _rounds(run_dir: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in run_dir.glob("round*")
                  if p.is_dir() and (m := re.fullmatch(r"round(\d+)", p.name)))


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def _pct(x, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%" if _num(x) else "—"


def _params(n) -> str:
    return "—" if not _num(n) else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _secs(s) -> str:
    if not _num(s):
        return "—"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


class _Run:
    def __init__(self, run_dir: Path):
        self.dir = run_dir
        try:
            summary = read_json(run_dir / "summary.json")
        except (OSError, json.JSONDecodeError):
            summary = None
        if not isinstance(summary, dict):
            raise UserError(f"{run_dir} has no readable summary.json; run `noisystudent run CONFIG "
                            f"--run-dir {run_dir}` first")
        self.summary = summary
        self.name = summary.get("name") or run_dir.name
        self.classes = [str(c) for c in summary.get("classes") or []]
        self.models = [m for m in summary.get("models") or [] if isinstance(m, dict) and {"which", "round"} <= m.keys()]
        self.rounds = _rounds(run_dir)

    def json(self, k: int, sub: str, name: str):
        return _load(self.dir / f"round{k}" / sub / name)

    def final_student(self) -> dict | None:
        students = [m for m in self.models if m["which"] == "student"]
        return max(students, key=lambda m: m["round"]) if students else None

    @functools.cached_property
    def robust(self) -> list[tuple[str, dict, dict]]:
        """(label, summary row, robustness.json) for every model with a robustness result. The full
        file, not summary.json's digest of it: the per-corruption curves are only there."""
        robs = [(m, self.json(m["round"], f"eval_{m['which']}", "robustness.json")) for m in self.models]
        return [(f"r{m['round']} {_role(m)}", m, r) for m, r in robs if isinstance(r, dict)]


def _role(m: dict) -> str:
    return ROLE_LABEL.get(m["which"], m["which"])


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

def _accuracy(run: _Run):
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
        pts = sorted((m["round"], m["top1"]) for m in run.models if m["which"] in whichs and _num(m.get("top1")))
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


def _per_class_delta(run: _Run):
    final = run.final_student()
    teacher = run.json(0, "eval_teacher", "eval.json")
    student = run.json(final["round"], "eval_student", "eval.json") if final else None
    if not (isinstance(teacher, dict) and isinstance(student, dict)):
        return None
    t, s = teacher.get("per_class_accuracy") or {}, student.get("per_class_accuracy") or {}
    deltas = [(c, 100 * (s[c] - t[c])) for c in t if _num(t[c]) and _num(s.get(c))]
    if not deltas:
        return None
    title = f"Per-class test accuracy change, teacher → round {final['round']} student"
    if len(deltas) > MAX_BAR_CLASSES:     # 1000 bars are unreadable: show the largest moves
        deltas.sort(key=lambda d: d[1])
        half = MAX_BAR_CLASSES // 2
        deltas = deltas[:half] + deltas[-half:]
        title += f" ({half} largest drops and gains)"
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
    for path in sorted(label_dir.glob("part-*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1 << 16, columns=["confidence"]):
            c = np.clip(batch.column(0).to_numpy(zero_copy_only=False).astype(np.float32), 0.0, 1.0)
            counts += np.histogram(c, bins=50, range=(0.0, 1.0))[0]
            total += len(c)
            above += int((c >= threshold).sum()) if _num(threshold) else 0
    return counts, total, above


def _confidence(run: _Run):
    todo = [k for k in run.rounds if any((run.dir / f"round{k}" / "labels").glob("part-*.parquet"))]
    if not todo:
        return None
    fig, axes = _grid(len(todo), 3, 3.6, 2.8, sharex=True)
    edges = np.linspace(0, 1, 51)
    for ax, k in zip(axes, todo):
        sel = run.json(k, "selection", "selection.json") or {}
        thr = sel.get("threshold")
        counts, total, above = _confidence_hist(run.dir / f"round{k}" / "labels", thr)
        # Log counts: confident pools pile up near 1.0 and would flatten everything else.
        ax.stairs(counts, edges, fill=True, alpha=0.6, color="C0", label=f"{total} pool images", baseline=0.5)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)
        if _num(thr):
            ax.axvline(thr, color="C3", ls="--", lw=1.5, label=f"threshold {thr:g}: {above} above")
        _dress(ax, f"round {k}: teacher's pseudo-labels", "confidence (max probability)", "images (log scale)",
               {"fontsize": 7})
    fig.suptitle("Pseudo-label confidence on the unlabeled pool")
    return fig


def _selection(run: _Run):
    sels = [(k, s) for k in run.rounds if isinstance(s := run.json(k, "selection", "selection.json"), dict)
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


def _corruptions(run: _Run):
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
            pts = sorted((int(sv), a) for sv, a in (rob["corruptions"].get(name) or {}).items() if _num(a))
            if _num(rob.get("clean_accuracy")):
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


def _fgsm(run: _Run):
    models = [r for r in run.robust if r[2].get("fgsm")]
    if not models:
        return None
    fig, ax = _axes(6.0, 3.6)
    ticks = set()
    for i, (label, _, rob) in enumerate(models):
        pts = sorted((float(e), a) for e, a in rob["fgsm"].items() if _num(a))
        if _num(rob.get("clean_accuracy")):
            pts = [(0.0, rob["clean_accuracy"])] + pts
        ax.plot([255 * e for e, _ in pts], [100 * a for _, a in pts], "o-", color=f"C{i}", label=label)
        ticks.update(round(255 * e, 2) for e, _ in pts)
    ax.set_xticks(sorted(ticks))
    _dress(ax, "Adversarial robustness: FGSM accuracy vs ε", "FGSM ε (in units of 1/255; 0 = clean)",
           "accuracy (%)", {})
    return fig


def _training_stages(run: _Run) -> list[tuple[int, str]]:
    return [(k, w) for k in run.rounds for w in ROLES if (run.dir / f"round{k}" / w).is_dir()]


def _curves(run: _Run):
    fig, ax = _axes()
    drawn = 0
    for i, (k, which) in enumerate(_training_stages(run)):
        rows = [r for r in _jsonl(run.dir / f"round{k}" / which / "metrics.jsonl")
                if _num(r.get("loss")) and _num(r.get("epoch"))]
        if rows:
            ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], "o-", ms=3, color=f"C{i % 10}",
                    label=f"r{k} {ROLE_LABEL[which]}")
            drawn += 1
    if not drawn:
        return None
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _dress(ax, "Training loss per epoch", "epoch", "training loss (students: labeled + pseudo)",
           {"ncols": 2 if drawn > 6 else 1})
    return fig


PLOTS = [("accuracy", "Test accuracy per round", _accuracy),
         ("per_class_delta", "Per-class accuracy change, teacher → final student", _per_class_delta),
         ("confidence", "Pseudo-label confidence and the selection threshold", _confidence),
         ("selection", "Pseudo-labeled images per class, before and after balancing", _selection),
         ("robustness_corruptions", "Accuracy vs corruption severity", _corruptions),
         ("robustness_fgsm", "FGSM accuracy vs ε", _fgsm),
         ("training_curves", "Training curves", _curves)]


# ------------------------------------------------------------------------------------------------
# tables

def _results_table(run: _Run):
    extras = sorted({n for m in run.models for n in (m.get("extra") or {})})
    head = ["round", "model", "role", "params", "image size", "top-1", "top-5", "ECE", *(f"{n} top-1" for n in extras)]
    rows = [[m["round"], m.get("model", "?"), _role(m), _params(m.get("params")),
             m.get("image_size", "—"), _pct(m.get("top1")), _pct(m.get("top5")),
             f"{m['ece']:.4f}" if _num(m.get("ece")) else "—",
             *(_pct((m.get("extra") or {}).get(n)) for n in extras)] for m in run.models]
    return head, rows


def _selection_table(run: _Run):
    rows = []
    for s in run.summary.get("selection") or []:
        full = run.json(s.get("round", -1), "selection", "selection.json") or {}
        acc = s.get("pseudo_label_accuracy") or full.get("pseudo_label_accuracy") or {}
        above = full.get("counts_after_threshold")
        rows.append([s.get("round"), f"{full['threshold']:g}" if _num(full.get("threshold")) else "—",
                     full.get("rows", "—"), sum(above) if above else "—", s.get("selected_unique", "—"),
                     s.get("selected_with_copies", "—"), _pct((acc.get("before") or {}).get("overall"), 1),
                     _pct((acc.get("after") or {}).get("overall"), 1)])
    head = ["round", "threshold", "pool images", "above threshold", "selected", "with copies",
            "pseudo-label acc. (all)", "pseudo-label acc. (selected)"]
    return head, rows


def _robustness_table(run: _Run):
    models = run.robust
    eps = sorted({e for _, _, rob in models for e in rob.get("fgsm") or {}}, key=float)
    head = ["round", "model", "role", "clean", "mCE (unnormalized)", "mCE vs teacher", "relative mCE", "mFR",
            *(f"FGSM ε={255 * float(e):.3g}/255" for e in eps)]  # keys are eps, e.g. "0.00392"
    rows = []
    for _, m, rob in models:
        vs = m.get("robustness_vs_teacher") or {}
        rows.append([m["round"], m.get("model", "?"), _role(m),
                     _pct(rob.get("clean_accuracy")), _pct(rob.get("mean_corruption_error_unnormalized")),
                     _pct(vs.get("mCE"), 1), _pct(vs.get("relative_mCE"), 1), _pct(vs.get("mFR"), 1),
                     *(_pct((rob.get("fgsm") or {}).get(e)) for e in eps)])
    return head, rows


def _timing_table(run: _Run):
    rows, total = [], 0.0
    for k, which in _training_stages(run):
        info = (run.json(k, which, "stage.json") or {}).get("info") or {}
        if _num(info.get("train_s")):
            total += info["train_s"]
        rows.append([f"round{k}/{which}", info.get("epochs", "—"), _secs(info.get("train_s")),
                     f"{info['images_per_s']:.0f}" if _num(info.get("images_per_s")) else "—",
                     info.get("pseudo_images", "—")])
    if rows:
        rows.append(["**total**", "", _secs(total), "", ""])
    return ["stage", "epochs", "train time", "images/s (last epoch)", "pseudo-labeled images"], rows


# ------------------------------------------------------------------------------------------------
# one document, two renderings

TEXT_COLS = {"round", "model", "role", "stage"}     # left-aligned; every other column is numbers


def _render_md(blocks: list) -> str:
    out = []
    for kind, *a in blocks:
        if kind == "h":
            out.append(f"{'#' * a[0]} {a[1]}\n")
        elif kind == "p":
            out.append(f"{a[0]}\n")
        elif kind == "table":
            head, rows = a
            lines = [head, ["---" if h in TEXT_COLS else "---:" for h in head],
                     *([str(v).replace("|", "\\|") for v in r] for r in rows)]
            out.append("".join("| " + " | ".join(map(str, cells)) + " |\n" for cells in lines))
        elif kind == "img":
            out.append(f"![{a[1]}]({a[0]})\n")
    return "\n".join(out)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #ddd;padding-bottom:.2em}
h2{margin-top:1.8em;border-bottom:1px solid #eee}table{border-collapse:collapse;margin:.8em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 9px;text-align:right}th{background:#f4f4f4}
.l{text-align:left}tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#666;font-size:13px}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}"""


def _inline_html(text: str) -> str:
    """The little markdown the blocks use: `code` and **bold**."""
    t = html.escape(str(text))
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)


def _render_html(blocks: list, title: str) -> str:
    out = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>"]
    for kind, *a in blocks:
        if kind == "h":
            out.append(f"<h{a[0]}>{_inline_html(a[1])}</h{a[0]}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(a[0])}</p>")
        elif kind == "table":
            head, rows = a
            cls = [' class="l"' if h in TEXT_COLS else "" for h in head]
            th = "".join(f"<th{c}>{_inline_html(h)}</th>" for c, h in zip(cls, head))
            trs = "".join("<tr>" + "".join(f"<td{c}>{_inline_html(v)}</td>" for c, v in zip(cls, r)) + "</tr>"
                          for r in rows)
            out.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "img":
            out.append(f"<figure><img src=\"{html.escape(a[0])}\" alt=\"{html.escape(a[1])}\">"
                       f"<figcaption>{html.escape(a[1])}</figcaption></figure>")
    return "\n".join(out) + "\n</body></html>\n"


def write_report(run_dir: Path) -> list[Path]:
    """Write report.md, report.html and plots/*.png into `run_dir`; return the files written."""
    run_dir = Path(run_dir)
    run = _Run(run_dir)
    plots_dir = run_dir / "plots"
    written: list[Path] = []
    images: dict[str, tuple[str, str]] = {}
    with matplotlib.rc_context(STYLE):
        for name, caption, make in PLOTS:
            # A plot failing on an odd file must not cost the rest of the report at the end of a long run.
            try:
                fig = make(run)
            except Exception as e:  # noqa: BLE001
                log.warning("report: plot %s skipped (%s: %s)", name, type(e).__name__, e)
                continue
            if fig is None:
                continue
            path = plots_dir / f"{name}.png"
            with atomic_write(path, "wb") as f:
                fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
            written.append(path)
            images[name] = (f"plots/{name}.png", caption)

    b: list = [("h", 1, f"Noisy Student report: {run.name}"),
               ("p", f"Run directory `{run_dir}`; {len(run.classes)} classes, {run.summary.get('rounds', '?')} "
                     f"round(s). Accuracies are on the test set.")]

    def img(*names):
        return [("img", *images[n]) for n in names if n in images]

    b += [("h", 2, "Results"), ("table", *_results_table(run)) if run.models else ("p", "No evaluated models yet."),
          *img("accuracy", "per_class_delta")]
    if run.summary.get("selection"):
        b += [("h", 2, "Pseudo-label selection"), ("table", *_selection_table(run)),
              ("p", "Pseudo-label accuracy is shown when the pool came with true labels (hidden from training)."),
              *img("confidence", "selection")]
    if run.robust:
        b += [("h", 2, "Robustness"), ("table", *_robustness_table(run)),
              ("p", "mCE and mFR are relative to the round-0 teacher (teacher = 100%); lower is better."),
              *img("robustness_corruptions", "robustness_fgsm")]
    timings = _timing_table(run)
    b += [("h", 2, "Training"), *img("training_curves"), ("h", 3, "Timings"),
          ("table", *timings) if timings[1] else ("p", "No finished training stage yet.")]

    for path, text in ((run_dir / "report.md", _render_md(b)),
                       (run_dir / "report.html", _render_html(b, f"Noisy Student report: {run.name}"))):
        with atomic_write(path, "w") as f:
            f.write(text)
        written.append(path)
    # Plots of an earlier report that this one no longer has (e.g. robustness) would mislead; removed
    # only now, so the previous report.md never points at a missing image.
    for old in plots_dir.glob("*.png") if plots_dir.is_dir() else []:
        if old not in written:
            old.unlink(missing_ok=True)
    log.info("report: %s", run_dir / "report.html")
    return written
