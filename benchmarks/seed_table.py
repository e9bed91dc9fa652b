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
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from accuracy import comparison_lines, mean_std, paired_stats  # noqa: E402  (this folder: the accuracy table's)
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


def _common(run_dirs: list[Path], extra: dict[str, list[Path]] | None = None) -> tuple[list[dict], list]:
    """Every run's evals (with `extra`'s rows of round >= 1, per seed, as 'LABEL: role'), and the
    (round, role) keys that all of them have, in the first run's order."""
    per_run = [evals(d) for d in run_dirs]
    for label, dirs in (extra or {}).items():
        if len(dirs) != len(run_dirs):
            raise SystemExit(f"error: --with {label}: {len(dirs)} run directories for {len(run_dirs)} seeds")
        for e, d in zip(per_run, dirs):
            e.update({(k, f"{label}: {role_label(role)}"): v for (k, role), v in evals(d).items() if k >= 1})
    return per_run, [k for k in per_run[0] if all(k in e for e in per_run)]


def _metrics(e: dict) -> dict:
    return {"top1": e["top1"], "val_top1": (e.get("val") or {}).get("top1")}


def versus(run_dirs: list[Path], role: str, extra: dict[str, list[Path]] | None = None) -> list[dict]:
    """`paired_stats` of `role` (its last round) against every other row all runs have."""
    per_run, keys = _common(run_dirs, extra)
    mine = [k for k in keys if k[1] == role]
    if not mine:
        have = sorted({k[1] for k in keys})
        raise SystemExit(f"error: --vs {role!r}: no run evaluated it in all runs; rows: {', '.join(have)}")
    me = max(mine)
    final = {i: _metrics(e[me]) for i, e in enumerate(per_run)}
    return [paired_stats(final, {i: _metrics(e[k]) for i, e in enumerate(per_run)},
                         f"{k[0]} {role_label(k[1])}") for k in keys if k != me]


def table(run_dirs: list[Path], extra: dict[str, list[Path]] | None = None) -> str:
    per_run, keys = _common(run_dirs, extra)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--vs", metavar="ROLE", help="also compare this role (e.g. student_init) with every other row")
    ap.add_argument("--with", dest="extra", action="append", default=[], metavar="LABEL=DIR,DIR,...",
                    help="other runs' rows of round >= 1, one run per seed in the same order (repeatable)")
    args = ap.parse_args()
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
    print(table(args.run_dirs, extra))
    if args.vs:
        print("\n".join(comparison_lines(versus(args.run_dirs, args.vs, extra), f"`{args.vs}`")))


if __name__ == "__main__":
    main()
