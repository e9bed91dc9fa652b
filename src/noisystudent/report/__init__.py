"""`report.md`, `report.html` and `plots/*.png` for a finished (or partly finished) run directory.

Everything here only *reads* the run's files (summary.json, eval/robustness/selection/stage JSON,
metrics.jsonl, label shards) and tolerates missing optional ones: robustness, the no-noise
ablation and fine-tuning appear only when the run produced them. Both documents are rendered from
one list of blocks, so the markdown and the HTML always say the same thing. Every file is written
atomically (temp + rename): a killed `noisystudent report` leaves the previous report intact.
"""
from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import matplotlib

from ..artifacts import atomic_write
from ..errors import UserError
from .extra import EXTRA_PLOTS, environment_blocks
from .plots import PLOTS
from ..layout import ROLE_LABEL
from .rundata import DPI, STYLE, RunData, fmt_params, fmt_secs, is_num, pct, role_label, training_stages

__all__ = ["write_report", "ROLE_LABEL"]

log = logging.getLogger("noisystudent")


# ------------------------------------------------------------------------------------------------
# tables

def _results_table(run: RunData):
    extras = sorted({n for m in run.models for n in (m.get("extra") or {})})
    head = ["round", "model", "role", "params", "image size", "top-1", "top-5", "ECE", *(f"{n} top-1" for n in extras)]
    rows = [[m["round"], m.get("model", "?"), role_label(m), fmt_params(m.get("params")),
             m.get("image_size", "—"), pct(m.get("top1")), pct(m.get("top5")),
             f"{m['ece']:.4f}" if is_num(m.get("ece")) else "—",
             *(pct((m.get("extra") or {}).get(n)) for n in extras)] for m in run.models]
    if 0 < len(run.classes) <= 5:       # top-5 of <= 5 classes is 100% by construction: not shown
        head, rows = head[:6] + head[7:], [r[:6] + r[7:] for r in rows]
    return head, rows


def _selection_table(run: RunData):
    rows = []
    for s in run.summary.get("selection") or []:
        full = run.json(run.layout.selection(s.get("round", -1)), "selection.json") or {}
        acc = s.get("pseudo_label_accuracy") or full.get("pseudo_label_accuracy") or {}
        above = full.get("counts_after_threshold")
        rows.append([s.get("round"), f"{full['threshold']:g}" if is_num(full.get("threshold")) else "—",
                     full.get("rows", "—"), sum(above) if above else "—", s.get("selected_unique", "—"),
                     s.get("selected_with_copies", "—"), pct((acc.get("before") or {}).get("overall"), 1),
                     pct((acc.get("after") or {}).get("overall"), 1)])
    head = ["round", "threshold", "pool images", "above threshold", "selected", "with copies",
            "pseudo-label acc. (all)", "pseudo-label acc. (selected)"]
    return head, rows


def _robustness_table(run: RunData):
    models = run.robust
    eps = sorted({e for _, _, rob in models for e in rob.get("fgsm") or {}}, key=float)
    head = ["round", "model", "role", "clean", "mCE (unnormalized)", "mCE vs teacher", "relative mCE", "mFR",
            *(f"FGSM ε={255 * float(e):.3g}/255" for e in eps)]  # keys are eps, e.g. "0.00392"
    rows = []
    for _, m, rob in models:
        vs = m.get("robustness_vs_teacher") or {}
        rows.append([m["round"], m.get("model", "?"), role_label(m),
                     pct(rob.get("clean_accuracy")), pct(rob.get("mean_corruption_error_unnormalized")),
                     pct(vs.get("mCE"), 1), pct(vs.get("relative_mCE"), 1), pct(vs.get("mFR"), 1),
                     *(pct((rob.get("fgsm") or {}).get(e)) for e in eps)])
    return head, rows


def _timing_table(run: RunData):
    rows, total = [], 0.0
    for k, which in training_stages(run):
        info = (run.json(run.layout.model(k, which), "stage.json") or {}).get("info") or {}
        if is_num(info.get("train_s")):
            total += info["train_s"]
        rows.append([run.layout.rel(run.layout.model(k, which)), info.get("epochs", "—"), fmt_secs(info.get("train_s")),
                     f"{info['images_per_s']:.0f}" if is_num(info.get("images_per_s")) else "—",
                     info.get("pseudo_images", "—")])
    if rows:
        rows.append(["**total**", "", fmt_secs(total), "", ""])
    return ["stage", "epochs", "train time", "images/s (last epoch)", "pseudo-labeled images"], rows


# ------------------------------------------------------------------------------------------------
# one document, two renderings

TEXT_COLS = {"round", "model", "role", "stage", "what", "value"}     # left-aligned; every other column is numbers


def _md_text(text) -> str:
    """Markdown renders raw HTML: escape <, > and & (everywhere: a backtick in a name could end a
    `code` span early), so a run name or class name like `<script>` is shown, not run, by whatever
    displays report.md."""
    return html.escape(str(text), quote=False)


def _render_md(blocks: list) -> str:
    out = []
    for kind, *a in blocks:
        if kind == "h":
            out.append(f"{'#' * a[0]} {_md_text(a[1])}\n")
        elif kind == "p":
            out.append(f"{_md_text(a[0])}\n")
        elif kind == "table":
            head, rows = a
            lines = [[_md_text(h) for h in head], ["---" if h in TEXT_COLS else "---:" for h in head],
                     *([_md_text(v).replace("|", "\\|") for v in r] for r in rows)]
            out.append("".join("| " + " | ".join(map(str, cells)) + " |\n" for cells in lines))
        elif kind == "img":
            out.append(f"![{a[1]}]({a[0]})\n")
        elif kind == "ul":
            out.append("".join(f"- {_md_text(item)}\n" for item in a[0]))
        elif kind == "pre":
            out.append(f"```yaml\n{a[0].rstrip()}\n```\n")
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
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in a[0]) + "</ul>")
        elif kind == "pre":
            out.append(f"<details><summary>config.yaml</summary><pre>{html.escape(a[0])}</pre></details>")
        elif kind == "img":
            out.append(f"<figure><img src=\"{html.escape(a[0])}\" alt=\"{html.escape(a[1])}\">"
                       f"<figcaption>{html.escape(a[1])}</figcaption></figure>")
    return "\n".join(out) + "\n</body></html>\n"


def _baseline_note(run: RunData) -> list:
    """Say so when the teacher doubles as the compute-matched supervised baseline (a recipe that does
    not train that baseline twice), so a reader knows which row to compare the students with."""
    if not run.layout.config.is_file() or any(m["which"] == "student_supervised" for m in run.models):
        return []
    from ..variants import supervised_twin_differences
    try:
        if supervised_twin_differences(run.config):
            return []
    except Exception:       # an unreadable config only costs the report this sentence
        return []
    return [("p", "The round-0 teacher is trained as the compute-matched supervised baseline (the student's "
                  "model, optimizer steps, images per step, noise and schedule), so it is that baseline: "
                  "compare the students with it.")]


def _warning_blocks(run_dir: Path) -> list:
    """The run's warnings (warnings.json, written by `run`), first, where they are read. A run made
    before warnings were kept has no file and no section."""
    from ..runwarnings import WARNINGS_FILE, read_warnings
    items = read_warnings(run_dir)
    if items is None:
        return []
    if not items:
        return [("h", 2, "Warnings"), ("p", "None: no check found a problem with this run.")]
    return [("h", 2, "Warnings"), ("p", f"Each was logged once in run.log when found (also in `{WARNINGS_FILE}`):"),
            ("ul", [i["message"] for i in items])]


def _draw_plots(run: RunData, plots_dir: Path) -> dict[str, tuple[str, str]]:
    """Every plot that can be drawn, as plots/<name>.png; {name: (relative path, caption)}."""
    images: dict[str, tuple[str, str]] = {}
    # Class names and the run's name are data: a `$` in them must not be read as mathtext.
    with matplotlib.rc_context({**STYLE, "text.parse_math": False}):
        for name, caption, make in PLOTS + EXTRA_PLOTS:
            # A plot failing on an odd file or name must not cost the rest of the report at the end of a
            # long run: drawing happens in savefig, so both are guarded (atomic_write leaves no file).
            path = plots_dir / f"{name}.png"
            try:
                fig = make(run)
                if fig is None:
                    continue
                with atomic_write(path, "wb") as f:
                    fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
            except UserError:
                raise                       # disk full: the user must hear it
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
                log.warning("report: plot %s skipped (%s: %s)", name, type(e).__name__, first)
                continue
            images[name] = (f"plots/{name}.png", caption)
    return images


def write_report(run_dir: Path) -> list[Path]:
    """Write report.md, report.html and plots/*.png into `run_dir`; return the files written."""
    run_dir = Path(run_dir)
    run = RunData(run_dir)
    plots_dir = run.layout.plots
    images = _draw_plots(run, plots_dir)
    written: list[Path] = [plots_dir / f"{n}.png" for n in images]

    b: list = [("h", 1, f"Noisy Student report: {run.name}"),
               ("p", f"Run directory `{run_dir}`; {len(run.classes)} classes, {run.summary.get('rounds', '?')} "
                     f"round(s). Accuracies are on the test set.")]

    def img(*names):
        return [("img", *images[n]) for n in names if n in images]

    b += _warning_blocks(run_dir)

    b += [("h", 2, "Results"), ("table", *_results_table(run)) if run.models else ("p", "No evaluated models yet."),
          *_baseline_note(run), *img("accuracy", "confusion", "per_class_delta")]
    if run.summary.get("selection"):
        b += [("h", 2, "Pseudo-label selection"), ("table", *_selection_table(run)),
              ("p", "Pseudo-label accuracy is shown when the pool came with true labels (hidden from training)."),
              *img("confidence", "selection", "pool_grid")]
    if run.robust:
        b += [("h", 2, "Robustness"), ("table", *_robustness_table(run)),
              ("p", "mCE and mFR are relative to the round-0 teacher (teacher = 100%); lower is better."),
              *img("robustness_corruptions", "robustness_fgsm")]
    timings = _timing_table(run)
    b += [("h", 2, "Training"), *img("training_curves"), ("h", 3, "Timings"),
          ("table", *timings) if timings[1] else ("p", "No finished training stage yet.")]
    b += environment_blocks(run)

    for path, text in ((run.layout.report_md, _render_md(b)),
                       (run.layout.report_html, _render_html(b, f"Noisy Student report: {run.name}"))):
        with atomic_write(path, "w") as f:
            f.write(text)
        written.append(path)
    # Plots of an earlier report that this one no longer has (e.g. robustness) would mislead; removed
    # only now, so the previous report.md never points at a missing image.
    for old in plots_dir.glob("*.png") if plots_dir.is_dir() else []:
        if old not in written:
            old.unlink(missing_ok=True)
    log.info("report: %s", run.layout.report_html)
    return written
