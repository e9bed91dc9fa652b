"""The loop: teacher -> (label -> select -> noised student) x rounds, with optional fine-tune and
evaluation of every model. This is the only place that sequences stages; each stage reads and
writes files only, so any prefix of the run can be reused and a rerun resumes where it stopped.

The run directory's folders and files are listed, and named, in layout.py (RunLayout).
"""
from __future__ import annotations

import logging
from pathlib import Path

import yaml

from . import runwarnings
from .artifacts import atomic_write, is_run_dir, lock_run_dir, read_json, remove_stale_temps, write_json
from .config import Config, config_to_dict
from .errors import UserError
from .stages.common import RunContext
from .stages.evaluate import evaluate_stage
from .stages.label import label_pool
from .stages.select import select_pseudo_labels
from .stages.train import finetune, train_student, train_teacher
from .variants import variant_names, variant_stage

__all__ = ["run", "build_summary", "format_table", "claim_run_dir", "check_inputs", "check_model_names", "read_run_config"]

log = logging.getLogger("noisystudent")

# Keys that define *which experiment* a run directory holds. Changing any other key invalidates only
# the stages that depend on it; changing these means a different experiment -> a different folder.
IDENTITY_KEYS = ("labeled", "test", "in_chans")


def check_model_names(cfg: Config) -> None:
    """UserError naming the config key of the first model name that is neither timm's nor ours."""
    from .models import check_model_name
    for k in range(cfg.rounds + 1):
        try:
            check_model_name(cfg.model_for_round(k))
        except UserError as e:
            key = (f"models[{min(k, len(cfg.models) - 1)}]" if cfg.models
                   else "teacher.model" if k == 0 else "student.model")
            raise UserError(f"config key '{key}': {e}") from None


def check_inputs(ctx: RunContext) -> None:
    """Find bad input before anything is written: every model name, the labeled and test sets (decoded
    now when data.cache, so a corrupt file or a class missing from the test set is reported before
    hours of training, not after) and the unlabeled pool's listing."""
    cfg = ctx.cfg
    check_model_names(cfg)
    ctx.labeled, ctx.test, ctx.val       # noqa: B018 - built (and cached) for their checks
    if cfg.rounds > 0:
        ctx.pool                # noqa: B018
    ctx.check_disjoint()


def claim_run_dir(ctx: RunContext, force: bool = False) -> None:
    """Refuse to mix two experiments in one folder; check the inputs; sweep what a killed run left
    (temp files); record the resolved config. Nothing is written before the checks pass."""
    path = ctx.layout.config
    new = config_to_dict(ctx.cfg)
    if not force and ctx.run_dir.is_dir() and not is_run_dir(ctx.run_dir) \
            and any(p != ctx.layout.lock for p in ctx.run_dir.iterdir()):
        raise UserError(f"{ctx.run_dir} is not empty and is not a noisystudent run directory (no config.yaml); "
                        "use a new or empty --run-dir (or --force to use this folder anyway)")
    if path.exists() and not force:
        old = read_run_config(path)
        for key in IDENTITY_KEYS:
            if old["data"][key] != new["data"][key]:
                raise UserError(f"{ctx.run_dir} holds a run with a different data.{key}; use another --run-dir "
                                "(or --force to reuse the folder, redoing what changed)")
    check_inputs(ctx)
    if ctx.rank == 0:
        from .runlog import attach_run_log
        lock_run_dir(ctx.run_dir)     # before the sweep: a live run's temp files are not stale
        attach_run_log(ctx.run_dir)
        from .loggers import configure_loggers
        configure_loggers(ctx.cfg.logging)
        from .report.extra import write_environment
        write_environment(ctx.run_dir)
        if n := remove_stale_temps(ctx.run_dir):
            log.info("removed %d temp file(s) an interrupted run left behind", n)
        with atomic_write(path, "w") as f:
            yaml.safe_dump(new, f, sort_keys=False)
        if ctx.cfg.rounds > 0:      # said before the teacher trains, not after it
            runwarnings.emit(ctx.run_dir, "select.threshold",
                             runwarnings.threshold_filters_nothing(ctx.cfg.select.threshold, len(ctx.classes)))
    if ctx.world > 1:       # under torchrun: no rank writes while rank 0 sweeps temp files
        import torch.distributed as dist
        dist.barrier()


def read_run_config(path: Path) -> dict:
    """The run directory's config.yaml, checked enough to compare the experiment's identity keys."""
    from .config import safe_load_yaml
    why = None
    try:
        old = safe_load_yaml(path.read_text(), str(path))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        old, why = None, f"not readable YAML: {str(e).splitlines()[0][:80]}"
    except UserError as e:
        old, why = None, str(e).split(": ", 1)[-1]
    if why is None:
        if not isinstance(old, dict):
            why = "empty" if old is None else f"not a mapping of config sections but a {type(old).__name__}"
        elif not isinstance(old.get("data"), dict):
            why = "its 'data' section is missing or not a mapping"
        elif any(k not in old["data"] for k in IDENTITY_KEYS):
            why = f"its 'data' section lacks {', '.join(k for k in IDENTITY_KEYS if k not in old['data'])}"
    if why is not None:
        raise UserError(f"{path} is damaged ({why}), so it cannot tell which experiment {path.parent} holds; "
                        "restore it, or rerun with --force to reuse the folder (stages whose inputs changed are redone)")
    return old


def run(cfg: Config, run_dir: str | Path | None = None, device: str | None = None, force: bool = False,
        report: bool = True) -> dict:
    """Run (or resume) the whole Noisy Student loop described by `cfg`; returns the summary. The run
    directory is locked while it runs and released when it returns or raises."""
    from .artifacts import release_run_dirs
    try:
        return _run(cfg, run_dir, device, force, report)
    finally:
        release_run_dirs()


def _run(cfg: Config, run_dir, device, force: bool, report: bool) -> dict:
    ctx = RunContext(cfg, run_dir, device)
    claim_run_dir(ctx, force)
    from . import runlog
    runlog.set_plan(cfg, len(ctx.labeled), len(ctx.pool) if cfg.rounds > 0 else 0)
    ft = cfg.finetune.enabled
    train_teacher(ctx)
    evaluate_stage(ctx, 0, "teacher")
    if ft:
        finetune(ctx, 0)
        evaluate_stage(ctx, 0, "finetune")
    for k in range(1, cfg.rounds + 1):
        label_pool(ctx, k)
        select_pseudo_labels(ctx, k)
        train_student(ctx, k)
        evaluate_stage(ctx, k, "student")
        if ctx.rank == 0:
            runwarnings.emit(ctx.run_dir, f"student_worse:round{k}", runwarnings.compare_round(ctx.run_dir, k))
        for v in (variant_names(cfg.variants) if k == cfg.variants_round else []):
            train_student(ctx, k, variant=v)
            evaluate_stage(ctx, k, variant_stage(v))
        if ctx.rank == 0 and k == cfg.variants_round:
            for key, msg in runwarnings.compare_baselines(ctx.run_dir, k, variant_names(cfg.variants)).items():
                runwarnings.emit(ctx.run_dir, key, msg)
        if ft:
            finetune(ctx, k)
            evaluate_stage(ctx, k, "finetune")
    runlog.clear_plan()
    summary = build_summary(ctx)
    if ctx.rank == 0:
        # the run's current warnings, rebuilt from its files (a redone stage's old ones are gone)
        warns = runwarnings.collect(ctx.run_dir, cfg, len(ctx.classes))
        runwarnings.write_warnings(ctx.run_dir, warns)
        if warns:
            log.info("%d warning(s) for this run: %s and the report's Warnings section", len(warns),
                     ctx.layout.warnings)
        write_json(ctx.layout.summary, summary)
        if report:
            from .report import write_report
            write_report(ctx.run_dir)
    return summary


def _read(path: Path):
    return read_json(path) if path.is_file() else None


def build_summary(ctx: RunContext) -> dict:
    """Deterministic digest of a run (accuracies, selection stats, robustness); no timings, so an
    interrupted-and-resumed run has exactly the summary of an uninterrupted one."""
    cfg, lay = ctx.cfg, ctx.layout
    rows, selection = [], []
    for k in range(0, cfg.rounds + 1):
        for which in ("teacher", "student", *(variant_stage(v) for v in variant_names(cfg.variants)), "finetune"):
            ev = _read(lay.eval(k, which) / "eval.json")
            if ev is None:
                continue
            st = _read(lay.model(k, which) / "stage.json") or {}
            row = {"round": k, "which": which, "model": ev["model"], "image_size": ev["image_size"],
                   "params": st.get("info", {}).get("params"), "top1": ev["top1"], "top5": ev["top5"],
                   "ece": ev["ece"], "val_top1": (ev.get("val") or {}).get("top1"),
                   "extra": {n: e["top1"] for n, e in ev.get("extra", {}).items()}}
            rob = _read(lay.eval(k, which) / "robustness.json")
            if rob is not None:
                row["robustness"] = rob
            rows.append(row)
        sel = _read(lay.selection(k) / "selection.json")
        if sel is not None:
            selection.append({"round": k, "selected_unique": sum(sel["counts_selected_unique"]),
                              "selected_with_copies": sum(sel["counts_selected_with_copies"]),
                              "pseudo_label_accuracy": sel.get("pseudo_label_accuracy")})
    # Baselines: the round-0 models (teacher first, then its fine-tune). A model is compared with the
    # one scored on the very same images — a fine-tuned model is evaluated at its own resolution, so
    # it is compared with the fine-tuned teacher, not with the teacher at the training resolution.
    bases = [r["robustness"] for r in rows if r["round"] == 0 and "robustness" in r]
    if bases:
        from .robustness import compare_to_baseline
        for r in rows:
            if "robustness" in r:
                base = next((b for b in bases if b.get("data_sha256") == r["robustness"].get("data_sha256")), None)
                if base is not None:
                    r["robustness_vs_teacher"] = compare_to_baseline(r["robustness"], base)
                r["robustness"] = {k2: r["robustness"][k2] for k2 in
                                   ("clean_accuracy", "mean_corruption_error_unnormalized", "fgsm", "flip_rate")
                                   if k2 in r["robustness"]}
    return {"name": cfg.name, "classes": list(ctx.classes), "rounds": cfg.rounds, "models": rows,
            "selection": selection}


def format_table(summary: dict) -> str:
    """The results table printed at the end of `run`/`demo`."""
    lines = [f"{'round':>5}  {'model':<16} {'role':<20} {'px':>3} {'val':>7} {'test':>7} {'ece':>6}",
             "-" * 70]
    for r in summary["models"]:
        val = f"{100 * r['val_top1']:>6.2f}%" if r.get("val_top1") is not None else f"{'—':>7}"
        lines.append(f"{r['round']:>5}  {r['model']:<16} {r['which']:<20} {r['image_size']:>3} "
                     f"{val} {100 * r['top1']:>6.2f}% {r['ece']:>6.3f}")
    for s in summary["selection"]:
        a = ((s.get("pseudo_label_accuracy") or {}).get("after") or {}).get("overall")
        extra = f", pseudo-label accuracy {100 * a:.1f}%" if isinstance(a, (int, float)) else ""
        lines.append(f"round {s['round']}: {s['selected_unique']} pool images selected "
                     f"({s['selected_with_copies']} with copies){extra}")
    return "\n".join(lines)
