"""Val / test top-1 of every evaluated model in a few run directories (one per seed), as mean ± std.

    python benchmarks/seed_table.py runs/fmnm/fashion-mnist-1k-s{0,1,2}/baseline

Reads each run's eval.json files through RunLayout, so it also works on runs that are unfinished or
were extended by `next_round.py` (no summary.json needed). Prints a markdown table, one row per
(round, role) present in every run, with each seed's val / test beside the mean.

    python benchmarks/seed_table.py RUN_DIRS... --vs student_init

`--vs ROLE` also prints ROLE (its last round) against every other row, paired by seed, with
accuracy.py's rule (does the difference of the means exceed the larger std?).

    python benchmarks/seed_table.py runs/fb/t03_s{0,1,2} --with "threshold 0.7=runs/fb/t07_s0,runs/fb/t07_s1,runs/fb/t07_s2" --vs student

`--with LABEL=DIR,DIR,...` adds the trained rows of round >= 1 of other runs, one run per seed in the
same order (e.g. the same teachers and labels with another `select.threshold`), as "LABEL: <role>";
their round 0 is left out, being the same teacher.

    python benchmarks/seed_table.py runs/tt/s0 runs/tt/s1 runs/tt/s2 --group "cifar=cifar-*" --group "mnist=mnist-*"

`--group NAME=PATTERN[,PATTERN...]` (repeatable; shell-style patterns over class names) also prints
each row's test top-1 over the classes of each group (the mean of their per-class accuracies, from
eval.json; the set's accuracy on those classes when test is balanced), mean ± std over the runs.

    python benchmarks/seed_table.py runs/ti/s0 runs/ti/s1 runs/ti/s2 --labeled-mix --vs student

`--labeled-mix` scores every row as if val and test had the class mix of each run's labeled set:
the per-class accuracies weighted by the labeled set's class shares (a balanced evaluation set
re-weighted to a long-tailed target, in expectation what a val/test drawn like the labeled set
would give). Per-class val accuracy is read from eval.json, or, where an older eval.json lacks it,
computed by evaluating the stage's model.pt on the run's val set with the evaluation's own
test-time views.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from accuracy import comparison_lines, mean_std, paired_stats  # noqa: E402  (this folder: the accuracy table's)
from pool_classes import group_of, parse_groups  # noqa: E402
from noisystudent.layout import RunLayout, role_label  # noqa: E402


def evals(run_dir: Path) -> dict[tuple[int, str], dict]:
    """{(round, role): eval.json} of every training stage that has been evaluated."""
    lay = RunLayout(run_dir)
    out = {}
    for k, role in lay.training_stages():
        f = lay.eval(k, role) / "eval.json"
        if f.is_file():
            out[(k, role)] = json.loads(f.read_text())
    return out


def weighted_top1(per_class: dict, weights: dict[str, float]) -> float:
    """Top-1 under the class mix `weights` (class -> share): per-class accuracies weighted by it,
    renormalised over the classes that have an accuracy (an evaluation set may lack a class)."""
    have = {c: w for c, w in weights.items() if per_class.get(c) is not None}
    if not have:
        raise SystemExit("error: --labeled-mix: no class of the labeled set has a per-class accuracy")
    return sum(w * per_class[c] for c, w in have.items()) / sum(have.values())


class _Mix:
    """Per run directory: its labeled set's class shares, and per-class val accuracy where eval.json
    lacks it (the stage's model evaluated on the run's val set, with the evaluation's own views)."""

    def __init__(self, run_dir: Path):
        from noisystudent.config import load_config
        from noisystudent.stages.common import RunContext
        self.run_dir = run_dir
        self.ctx = RunContext(load_config(run_dir / "config.yaml"), run_dir, "cpu")
        labeled = self.ctx.labeled
        counts = np.bincount(labeled.labels[labeled.labels >= 0], minlength=len(labeled.classes))
        self.weights = {c: n / counts.sum() for c, n in zip(labeled.classes, counts)}
        self._val: dict = {}          # (round, role, views) -> computed per-class val accuracy

    def val_per_class(self, k: int, role: str, e: dict) -> dict | None:
        if (e.get("val") or {}).get("per_class_accuracy") is not None:
            return e["val"]["per_class_accuracy"]
        if self.ctx.val is None:
            return None
        from noisystudent.stages.evaluate import evaluate_source
        from noisystudent.stages.modelfile import load_model
        views = dict(flip_tta=e.get("flip_tta", False), shift_tta=e.get("shift_tta", 0))
        key = (k, role, tuple(views.items()))
        if key not in self._val:        # the table and --vs read the same runs: evaluate a model once
            model, meta = load_model(RunLayout(self.run_dir).model(k, role) / "model.pt", "cpu")
            self._val[key] = evaluate_source(model, meta, self.ctx.val, 256, "cpu", 0, "val",
                                             **views)["per_class_accuracy"]
        return self._val[key]

    def reweighted(self, k: int, role: str, e: dict) -> dict:
        """`e` with test and val top-1 under the labeled set's class mix."""
        out = dict(e, top1=weighted_top1(e["per_class_accuracy"], self.weights))
        val = self.val_per_class(k, role, e)
        out["val"] = dict(e.get("val") or {}, top1=weighted_top1(val, self.weights)) if val is not None else None
        return out


@functools.lru_cache(maxsize=None)      # one per run directory for the table and --vs together
def _mix_of(run_dir: Path) -> _Mix:
    return _Mix(run_dir)


def _evals(run_dir: Path, labeled_mix: bool) -> dict[tuple[int, str], dict]:
    found = evals(run_dir)
    if not labeled_mix:
        return found
    mix = _mix_of(run_dir)
    return {(k, role): mix.reweighted(k, role, e) for (k, role), e in found.items()}


def _common(run_dirs: list[Path], extra: dict[str, list[Path]] | None = None,
            labeled_mix: bool = False) -> tuple[list[dict], list]:
    """Every run's evals (with `extra`'s rows of round >= 1, per seed, as 'LABEL: role'), and the
    (round, role) keys that all of them have, in the first run's order; with `labeled_mix`, their
    top-1s under each run's labeled class mix."""
    per_run = [_evals(d, labeled_mix) for d in run_dirs]
    for label, dirs in (extra or {}).items():
        if len(dirs) != len(run_dirs):
            raise SystemExit(f"error: --with {label}: {len(dirs)} run directories for {len(run_dirs)} seeds")
        for e, d in zip(per_run, dirs):
            e.update({(k, f"{label}: {role_label(role)}"): v for (k, role), v in _evals(d, labeled_mix).items() if k >= 1})
    return per_run, [k for k in per_run[0] if all(k in e for e in per_run)]


def _metrics(e: dict) -> dict:
    return {"top1": e["top1"], "val_top1": (e.get("val") or {}).get("top1")}


def versus(run_dirs: list[Path], role: str, extra: dict[str, list[Path]] | None = None,
           labeled_mix: bool = False) -> list[dict]:
    """`paired_stats` of `role` (its last round) against every other row all runs have."""
    per_run, keys = _common(run_dirs, extra, labeled_mix)
    mine = [k for k in keys if k[1] == role]
    if not mine:
        have = sorted({k[1] for k in keys})
        raise SystemExit(f"error: --vs {role!r}: no run evaluated it in all runs; rows: {', '.join(have)}")
    me = max(mine)
    final = {i: _metrics(e[me]) for i, e in enumerate(per_run)}
    return [paired_stats(final, {i: _metrics(e[k]) for i, e in enumerate(per_run)},
                         f"{k[0]} {role_label(k[1])}") for k in keys if k != me]


def table(run_dirs: list[Path], extra: dict[str, list[Path]] | None = None, labeled_mix: bool = False) -> str:
    per_run, keys = _common(run_dirs, extra, labeled_mix)
    lines = ["| round | role | model | val top-1 (%) | test top-1 (%) | per seed val / test |",
             "|---|---|---|---|---|---|"]
    for k in keys:
        rows = [e[k] for e in per_run]
        val = [r["val"]["top1"] for r in rows if r.get("val")]
        test = [r["top1"] for r in rows]
        seeds = ", ".join(f"{100 * r['val']['top1']:.2f} / {100 * r['top1']:.2f}" if r.get("val") else
                          f"- / {100 * r['top1']:.2f}" for r in rows)
        lines.append(f"| {k[0]} | {role_label(k[1])} | {rows[0].get('model', '?')} | "
                     f"{mean_std(val)} | {mean_std(test)} | {seeds} |")
    return "\n".join(lines)


def group_table(run_dirs: list[Path], groups: dict[str, list[str]], extra: dict[str, list[Path]] | None = None) -> str:
    """Per row, the test top-1 over each group's classes (mean of their per-class accuracies)."""
    per_run, keys = _common(run_dirs, extra)
    names = list(per_run[0][keys[0]]["per_class_accuracy"]) if keys else []
    members = {g: [c for c in names if group_of(c, groups) == g] for g in groups}
    if empty := [g for g, cs in members.items() if not cs]:
        raise SystemExit(f"error: --group {', '.join(empty)}: no class matches; classes: {', '.join(names)}")
    lines = ["| round | role | " + " | ".join(f"{g} ({len(members[g])} classes) test top-1 (%)" for g in groups) + " |",
             "|---|---|" + "---|" * len(groups)]
    for k in keys:
        cells = [mean_std([sum(e[k]["per_class_accuracy"][c] for c in members[g]) / len(members[g]) for e in per_run])
                 for g in groups]
        lines.append(f"| {k[0]} | {role_label(k[1])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--vs", metavar="ROLE", help="also compare this role (e.g. student_init) with every other row")
    ap.add_argument("--with", dest="extra", action="append", default=[], metavar="LABEL=DIR,DIR,...",
                    help="other runs' rows of round >= 1, one run per seed in the same order (repeatable)")
    ap.add_argument("--group", action="append", default=[], metavar="NAME=PATTERN[,PATTERN...]",
                    help="also each row's test top-1 over a group of classes (shell-style patterns; repeatable)")
    ap.add_argument("--labeled-mix", action="store_true",
                    help="score val and test as if they had each run's labeled class mix (per-class accuracies re-weighted)")
    args = ap.parse_args()
    groups = parse_groups(args.group)
    extra = {}
    for spec in args.extra:
        label, sep, dirs = spec.partition("=")
        if not sep or not label or not dirs:
            raise SystemExit(f"error: --with {spec!r}: expected LABEL=DIR,DIR,...")
        extra[label] = [Path(d) for d in dirs.split(",") if d]
    every = list(args.run_dirs) + [d for dirs in extra.values() for d in dirs]
    missing = [str(d) for d in every if not RunLayout(d).round_dir(0).is_dir()]
    if missing:
        raise SystemExit(f"error: not a run directory (no round0/): {', '.join(missing)}")
    if args.labeled_mix:
        print("Top-1 under each run's labeled class mix (per-class accuracies re-weighted):\n")
    print(table(args.run_dirs, extra, args.labeled_mix))
    if args.vs:
        print("\n".join(comparison_lines(versus(args.run_dirs, args.vs, extra, args.labeled_mix), f"`{args.vs}`")))
    if groups:
        print("\n" + group_table(args.run_dirs, groups, extra))


if __name__ == "__main__":
    main()
