"""Accuracy benchmark: a config end to end over seeds, its student variants, and the paper's ablations.

    python benchmarks/accuracy.py fashion-mnist-1k [--seeds 0,1,2] [--ablations all|none|a,b,...]
                                  [--variants no_noise,supervised] [--set key=value ...] [--out docs/benchmarks]
                                  [--jobs 3]

Per seed (`seed=N`: weight init, augmentation AND the labeled draw — sources inherit the run's seed):
  * "baseline": the config as written, plus the variants (`--variants`, default the config's own:
    e.g. the no-noise student and the compute-matched supervised baseline), trained beside the noisy
    student of the config's `variants_round` on the same selection for the same number of optimizer
    steps (noisystudent.variants). A recipe whose teacher is trained as the compute-matched supervised
    baseline (`variants.supervised_twin_differences` empty) reports the teacher in that row instead of
    training it twice;
  * every ablation: one round with a switch flipped, in its own run directory seeded with the
    baseline's teacher (fingerprints decide what is really reused), its student held to the baseline
    student's step count (`student.steps`), so every row costs the same compute.
Prints val and test accuracy as mean ± std over seeds and writes docs/benchmarks/<config>.{md,json}.
Before any training it times the bare train step of the config's teacher on one thread and prints it
with the table (`machine_speed`): instances of one CPU kind differ ~1.5x, so a wall time needs it.
Choose recipes on the val column; the test column is for the chosen setting's report.

`--jobs N` runs the seeds as N processes at once, each with cores/N threads (OMP_NUM_THREADS), logs
in <runs>/<config>-s<seed>.log, then combines their tables: on a 2-core CPU three one-thread
processes finish three seeds sooner than one two-thread process does them in a row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(1, str(ROOT / "benchmarks"))   # throughput.py, for machine_speed (also when imported by tests)
os.environ.setdefault("NOISYSTUDENT_PROGRESS", "0")

from noisystudent.cli import resolve_config_path  # noqa: E402
from noisystudent.config import load_config  # noqa: E402
from noisystudent.inference import tta_view_count  # noqa: E402
from noisystudent.layout import RunLayout  # noqa: E402
from noisystudent.errors import UserError  # noqa: E402
from noisystudent.pipeline import run  # noqa: E402
from noisystudent.variants import VARIANTS, supervised_twin_differences, variant_names  # noqa: E402

# name -> (description, overrides). Overrides apply on top of the config with rounds=1; "@variant:X"
# rows are not separate runs but round-1 variants of the baseline run.
ABLATIONS = {
    **{name: (desc, [f"@variant:{name}"]) for name, (desc, _) in VARIANTS.items()},
    "hard_labels": ("hard pseudo-labels", ["student.soft=false"]),
    "noised_teacher": ("the teacher labels the pool with its dropout/stochastic depth on", ["label.noised_teacher=true"]),
    "ratio_1": ("unlabeled:labeled batch ratio 1", ["student.ratio=1"]),
    "ratio_3": ("unlabeled:labeled batch ratio 3 (the paper's)", ["student.ratio=3"]),
    "init_from_teacher": ("student initialised from the teacher (same size)",
                          ["student.init_from_teacher=true", "models=[{t}, {t}]"]),
    "same_size": ("student the same size as the teacher", ["models=[{t}, {t}]"]),
    "larger_teacher": ("teacher as large as the student", ["models=[{s}, {s}]"]),
    "pool_25": ("25% of the unlabeled pool", ["data.unlabeled.fraction={f25}"]),
    "pool_50": ("50% of the unlabeled pool", ["data.unlabeled.fraction={f50}"]),
    "ood_soft": ("out-of-domain pool (Fashion-MNIST images for digits), soft labels", ["@ood", "student.soft=true"]),
    "ood_hard": ("out-of-domain pool (Fashion-MNIST images for digits), hard labels", ["@ood", "student.soft=false"]),
}
OOD_POOL = ["data.unlabeled={kind: idx, root: ../shared/data/fashion-mnist, split: train, fraction: 0.025}"]
ABLATION_BASE = ["rounds=1", "ablation_no_noise=false", "variants=[]"]


def _expand(overrides, cfg):
    t, s = cfg.model_for_round(0), cfg.model_for_round(1)
    frac = cfg.data.unlabeled.fraction
    out = []
    for o in overrides:
        if o == "@ood":
            if cfg.data.labeled.kind != "digits":
                return None      # only meaningful for the digits task
            out += OOD_POOL
            continue
        out.append(o.format(t=t, s=s, f25=round(frac * 0.25, 4), f50=round(frac * 0.5, 4)))
    return out


def plan_ablations(path, base_over, names):
    """(name, description, overrides) for every requested ablation that changes something.

    An ablation that the config already is (e.g. `ratio_1` when the config's ratio is 1) would
    only repeat the baseline's student, so it is skipped rather than run and reported twice.
    Variant rows (overrides "@variant:X") are planned as-is: they run inside the baseline.
    """
    base_cfg = load_config(path, base_over)
    reference = load_config(path, [*base_over, *ABLATION_BASE])
    plan = []
    for name in names:
        if name not in ABLATIONS:
            raise SystemExit(f"error: unknown ablation {name!r}; allowed: {', '.join(ABLATIONS)}")
        desc, over = ABLATIONS[name]
        if over[0].startswith("@variant:"):
            plan.append((name, desc, over))
            continue
        over = _expand(over, base_cfg)
        if over is None:
            print(f"skip {name}: does not apply to {Path(path).stem}", flush=True)
            continue
        if load_config(path, [*base_over, *ABLATION_BASE, *over]) == reference:
            print(f"skip {name}: {Path(path).stem} already is this (same config as the baseline)", flush=True)
            continue
        plan.append((name, desc, [*ABLATION_BASE, *over]))
    return plan


_FLOPS: dict = {}
LOOP_ROLES = ("teacher", "student", "finetune")      # the loop's own models (the comparison variants are not)


def forward_flops(model_name: str, in_chans: int, size: int) -> float:
    """Forward FLOPs of one image (torch's FlopCounterMode: a multiply-add counts 2)."""
    key = (model_name, in_chans, size)
    if key not in _FLOPS:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
        from noisystudent.models import create_model
        m = create_model(model_name, 10, in_chans).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(torch.zeros(1, in_chans, size, size))
        _FLOPS[key] = float(fc.get_total_flops())
    return _FLOPS[key]


def _info(stage_dir: Path) -> dict:
    p = stage_dir / "stage.json"
    return json.loads(p.read_text()).get("info", {}) if p.is_file() else {}


def _rows(name, summary, run_dir, wall, keep=lambda m: True, cfg=None):
    rows = []
    for m in summary["models"]:
        if not keep(m):
            continue
        st = _info(RunLayout(run_dir).model(m["round"], m["which"]))
        pflop = None
        if cfg is not None and st.get("images_seen"):      # training: backward = 2 x forward
            pflop = 3 * forward_flops(m["model"], cfg.data.in_chans, cfg.data.image_size) * st["images_seen"] / 1e15
        rows.append({"row": name if m["which"] in ("teacher", "student") or name != "baseline" else m["which"],
                     "round": m["round"], "which": m["which"], "model": m["model"], "top1": m["top1"],
                     "val_top1": m.get("val_top1"), "steps": st.get("steps"), "train_s": st.get("train_s"),
                     "images_seen": st.get("images_seen"), "train_pflop": pflop, "wall_s": wall})
    return rows


def with_supervised_twin(rows: list, cfg, trained: list) -> list:
    """`rows` plus the compute-matched supervised row taken from the teacher's, when the recipe skips
    the `supervised` stage because its teacher already is that baseline (same model, steps, images per
    step, noise and schedule: `variants.supervised_twin_differences`). The row says so."""
    if "supervised" in trained or supervised_twin_differences(cfg):
        return rows
    teacher = next((r for r in rows if r["which"] == "teacher"), None)
    if teacher is None:
        return rows
    twin = dict(teacher, row="student_supervised", round=cfg.variants_round, which="student_supervised",
                twin_of="teacher")
    return [*rows, twin]


def loop_compute(run_dir: Path, cfg) -> dict:
    """The loop's own compute (the comparison variants excluded): the teacher's and each round's
    noisy student's training, plus every labeling pass over the pool (x2 with flip TTA)."""
    size, chans = cfg.data.image_size, cfg.data.in_chans
    lay = RunLayout(run_dir)
    train = 0.0
    label = 0.0
    for k in range(cfg.rounds + 1):
        which = "teacher" if k == 0 else "student"
        st = _info(lay.model(k, which))
        train += 3 * forward_flops(cfg.model_for_round(k), chans, size) * (st.get("images_seen") or 0)
        if k >= 1:
            lab = _info(lay.labels(k))
            views = tta_view_count(cfg.label.flip_tta, cfg.label.shift_tta)
            label += views * forward_flops(cfg.model_for_round(k - 1), chans, size) * (lab.get("rows") or 0)
    # wall: every stage of the loop (teacher, labels, selection, students, their evaluations), not the variants'
    loop = {d for k in lay.rounds() for d in (lay.labels(k), lay.selection(k),
                                              *(lay.model(k, r) for r in LOOP_ROLES),
                                              *(lay.eval(k, r) for r in LOOP_ROLES))}
    loop_s = sum(_info(d).get("stage_s") or 0.0 for d in lay.stage_dirs() if d in loop)
    return {"train_pflop": train / 1e15, "label_pflop": label / 1e15, "total_pflop": (train + label) / 1e15,
            "loop_s": loop_s}


def run_one(path, overrides, run_dir, reuse_from=None):
    cfg = load_config(path, overrides)
    if reuse_from is not None and not run_dir.exists():
        # Seed with the baseline's round 0 and round 1's labels and selection; fingerprints decide what
        # is really reused.
        src, dst = RunLayout(reuse_from), RunLayout(run_dir)
        for a, b in ((src.round_dir(0), dst.round_dir(0)), (src.labels(1), dst.labels(1)),
                     (src.selection(1), dst.selection(1))):
            if a.exists():
                shutil.copytree(a, b)
    t = time.perf_counter()
    summary = run(cfg, run_dir=run_dir, force=True, report=False)
    return summary, time.perf_counter() - t


def student_steps(run_dir: Path) -> int | None:
    return _info(RunLayout(run_dir).model(1, "student")).get("steps")


def variant_entries(declared: list, chosen: list[str] | None, extra: list[str]) -> list:
    """The `variants` entries the baseline run trains: the config's own entries (built-in names and
    `{name: {changes}}` mappings, kept whole so that a config's own variants keep their changes), only
    those named in `--variants` when it is given (a name the config does not declare must be a
    built-in), then the built-ins that the planned ablations run as variants."""
    by_name = dict(zip(variant_names(declared), declared))
    names = list(by_name) if chosen is None else chosen
    unknown = [n for n in names if n not in by_name and n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: --variants: {', '.join(unknown)} is neither declared in the config's `variants` "
                         f"nor built in; built in: {', '.join(VARIANTS)}; declared: {', '.join(by_name) or 'none'}")
    return [by_name.get(n, n) for n in dict.fromkeys([*names, *extra])]


def variants_override(entries: list) -> str:
    """`variants=[...]` as a --set override that round-trips every entry (YAML flow style)."""
    return "variants=" + yaml.safe_dump(list(entries), default_flow_style=True, width=10**6).strip()


def seed_jobs(argv: list[str], seeds: list[int], jobs: int, out: Path, cores: int | None = None) -> list[dict]:
    """One child command per seed for `--jobs`: this script with `--seeds "<s>,"`, its output table in
    `out/seed<s>` (combined afterwards; `out` is under --runs) and cores/jobs threads, the rest of `argv` unchanged."""
    keep, skip = [], False
    for a in argv:                                     # drop --seeds/--jobs/--out and their values
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag in ("--seeds", "--jobs", "--out"):
            skip = "=" not in a
            continue
        keep.append(a)
    threads = max(1, (cores or os.cpu_count() or 1) // jobs)
    return [{"seed": s, "out": out / f"seed{s}",
             "cmd": [sys.executable, str(Path(__file__).resolve()), *keep, "--seeds", f"{s},",
                     "--out", str(out / f"seed{s}")],
             "env": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                     "NOISYSTUDENT_BENCH_CHILD": "1"}} for s in seeds]


def run_seed_jobs(jobs_plan: list[dict], jobs: int, log_dir: Path, stem: str) -> None:
    """Run the children, at most `jobs` at once; exit non-zero naming the seeds that failed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(jobs_plan), [], []
    while pending or running:
        while pending and len(running) < jobs:
            j = pending.pop(0)
            log = log_dir / f"{stem}-s{j['seed']}.log"
            print(f"seed {j['seed']}: started, log {log}", flush=True)
            with open(log, "w") as f:
                running.append((j, log, subprocess.Popen(j["cmd"], env={**os.environ, **j["env"]},
                                                         stdout=f, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for item in [r for r in running if r[2].poll() is not None]:
            running.remove(item)
            j, log, proc = item
            print(f"seed {j['seed']}: {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}", flush=True)
            if proc.returncode:
                failed.append(f"seed {j['seed']} (see {log})")
    if failed:
        raise SystemExit("error: " + ", ".join(failed) + " failed; the other seeds' tables are in their --out folders")


def combine(parts: list[dict], out: Path, name: str, total_s: float, wall_label: str = "total wall") -> None:
    """One table from the JSON outputs of per-seed runs (`--combine`, or `--jobs`' children)."""
    write_tables(out, name, [r for p in parts for r in p["rows"]], total_s, sys.argv[1:],
                 [c for p in parts for c in p.get("loops", [])], wall_label)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--ablations", default="none")
    ap.add_argument("--variants", default=None,
                    help="variants trained inside the baseline run, in the config's variants_round, by name: "
                         "built-ins or the config's own (default: the config's own `variants`, kept whole; '' for none)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, or a count: '3' = 0,1,2; '2,' = seed 2 only")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    ap.add_argument("--name", default="", help="table name (default: the config's)")
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="write the tables from these outputs of earlier runs (e.g. one per seed, run in "
                         "parallel) instead of training")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run as this many processes at once, "
                    "each with cores/jobs threads; their tables are combined (default 1: in a row)")
    args = ap.parse_args()
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be >= 1, got {args.jobs}")
    path = resolve_config_path(args.config)
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        # the parts may have run one after another or side by side: their sum is all that is known
        combine(parts, Path(args.out), args.name or Path(path).stem, sum(p["meta"]["total_s"] for p in parts),
                "sum of the combined runs' wall times")
        return
    # '3' = seeds 0,1,2 (a count); '2,' or '0,2' = exactly those seeds
    seeds = list(range(int(args.seeds))) if "," not in args.seeds and int(args.seeds) > 1 else \
        [int(s) for s in args.seeds.split(",") if s]
    if not os.environ.get("NOISYSTUDENT_BENCH_CHILD"):     # once, on an idle machine, before any training
        _SPEED.update(machine_speed(load_config(path, args.set)))
        print(f"machine speed: bare train step ({_SPEED['bare_what']}): {_SPEED['bare_img_s']:,.0f} img/s", flush=True)
    if args.jobs > 1 and len(seeds) > 1:
        stem, t0 = args.name or Path(path).stem, time.perf_counter()
        plan = seed_jobs(sys.argv[1:], seeds, args.jobs, Path(args.runs) / f"{stem}-tables")
        run_seed_jobs(plan, args.jobs, Path(args.runs), stem)
        parts = [json.loads((j["out"] / f"{stem}.json").read_text()) for j in plan]
        combine(parts, Path(args.out), stem, time.perf_counter() - t0)
        return
    names = [] if args.ablations == "none" else (list(ABLATIONS) if args.ablations == "all" else args.ablations.split(","))
    chosen = None if args.variants is None else [v for v in args.variants.split(",") if v]
    declared = load_config(path, args.set).variants      # the config's own (the seed does not change them)
    rows, loops, t_all = [], [], time.perf_counter()
    for seed in seeds:
        base_over = [*args.set, f"seed={seed}"]
        plan = plan_ablations(path, base_over, names)     # before any training: bad names fail fast
        entries = variant_entries(declared, chosen, [o[0].split(":", 1)[1] for _, _, o in plan
                                                     if o[0].startswith("@variant:")])
        in_run = variant_names(entries)
        base_dir = Path(args.runs) / f"{Path(path).stem}-s{seed}" / "baseline"
        over = [*base_over, variants_override(entries)]
        summary, wall = run_one(path, over, base_dir)
        cfg = load_config(path, over)
        rows += [dict(r, seed=seed) for r in with_supervised_twin(
            _rows("baseline", summary, base_dir, wall, cfg=cfg), cfg, in_run)]
        compute = loop_compute(base_dir, cfg)
        loops.append(dict(compute, seed=seed, wall_s=wall))
        print(f"seed {seed}: the loop spent {compute['total_pflop']:.3f} PFLOP (training "
              f"{compute['train_pflop']:.3f}, labeling {compute['label_pflop']:.3f}); run wall {wall / 60:.1f} min "
              f"(with the variants), the loop's stages {compute['loop_s'] / 60:.1f} min", flush=True)
        steps = student_steps(base_dir)
        for name, desc, over in plan:
            if over[0].startswith("@variant:"):
                continue
            d = Path(args.runs) / f"{Path(path).stem}-s{seed}" / name
            summary, wall = run_one(path, [*base_over, *over, f"student.steps={steps}"], d, base_dir)
            rows += [dict(r, seed=seed) for r in _rows(name, summary, d, wall, lambda m: m["which"] != "teacher",
                                                       load_config(path, [*base_over, *over]))]
            print(json.dumps(rows[-1]), flush=True)
    write_tables(Path(args.out), args.name or Path(path).stem, rows, time.perf_counter() - t_all, sys.argv[1:],
                 loops)


_SPEED: dict = {}     # machine_speed() of this bench, measured before any training (parent process only)


def machine_speed(cfg) -> dict:
    """The bare train step of the config's teacher (its model, image size, batch, amp, memory format)
    on the device the runs use (`cfg.device`; on a CPU with one thread), in images/s, best of 2:
    forward + backward + SGD on one in-memory batch (throughput.bare_train). Two machines of the same
    CPU kind can differ ~1.5x (Intel Xeon model 167: 1,478 vs 2,284 img/s for ns_cnn_s at 28 px); a
    wall time means little without it."""
    import torch
    from noisystudent.distributed import resolve_device
    import throughput
    t, d = cfg.train_for_round(0), cfg.data
    dev = resolve_device(cfg.device)
    threads, saved = torch.get_num_threads(), throughput.DEVICE
    torch.set_num_threads(1)
    throughput.DEVICE = dev
    try:
        rate = max(throughput.bare_train(cfg.model_for_round(0), t.batch_size, 20, t.amp, size=d.image_size,
                                         chans=d.in_chans, channels_last=t.channels_last) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
        throughput.DEVICE = saved
    where = "1 CPU thread" if dev.type == "cpu" else (torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev))
    return {"bare_img_s": rate, "bare_what": f"{cfg.model_for_round(0)} {d.image_size} px x{d.in_chans}, batch "
            f"{t.batch_size}, amp {t.amp}, {'channels-last' if t.channels_last else 'NCHW'}, {where}"}


def machine() -> dict:
    import torch
    from noisystudent.distributed import cpu_has_native_bf16
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((l.split(":", 1)[1].strip() for l in flags.splitlines() if l.startswith("Model name")), "")
    except OSError:
        flags, model = "", ""
    return {"cpu": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "native_bf16": cpu_has_native_bf16(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(), **_SPEED}


def mean_std(values) -> str:
    """Fractions as '87.36 ± 0.23' (percent, sample std); one value alone; '—' for none."""
    import numpy as np
    v = [x for x in values if x is not None]
    if not v:
        return "—"
    return f"{100 * np.mean(v):.2f}" + (f" ± {100 * np.std(v, ddof=1):.2f}" if len(v) > 1 else "")


def paired_stats(final: dict, other: dict, label: str) -> dict:
    """`final` against `other` ({seed: {"val_top1": f, "top1": f}} each), per metric over the seeds
    both have: the difference of the means, the paired difference per seed (mean ± std: seeds share
    the labeled draw, so this is the sharper test), the seeds won, and whether the difference of the
    means exceeds the larger of the two rows' std's (issue 13's criterion)."""
    import numpy as np

    def sd(v):                      # sample std; undefined for one seed
        return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")

    seeds = sorted(set(final) & set(other))
    row = {"vs": label, "seeds": len(seeds)}
    for metric in ("val_top1", "top1"):
        pair = [(final[s].get(metric), other[s].get(metric)) for s in seeds]
        if not pair or any(x is None for p in pair for x in p):
            continue
        a, b = (100 * np.array(v) for v in zip(*pair))          # points
        d = a - b
        larger = max(sd(a), sd(b))
        row[metric] = {"delta": float(d.mean()), "paired_std": sd(d) if len(d) > 1 else None,
                       "larger_std": larger, "wins": int((d > 0).sum()),
                       "holds": bool(len(d) > 1 and d.mean() > larger)}
    return row


def comparisons(rows: list) -> list[dict]:
    """The final noisy student (the baseline's last round) against each other row of the baseline run
    (teacher, variants): `paired_stats` per row."""
    students = [r for r in rows if r["row"] == "baseline" and r["which"] == "student"]
    if not students:
        return []
    last = max(r["round"] for r in students)
    final = {r["seed"]: r for r in students if r["round"] == last}
    others: dict = {}               # which -> {seed: row}: the teacher and the baseline run's variants
    for r in rows:
        if r["which"] == "teacher" and r["row"] == "baseline" or r["which"].startswith("student_"):
            others.setdefault(r["which"], {})[r["seed"]] = r
    return [paired_stats(final, by_seed, which) for which, by_seed in others.items() if set(final) & set(by_seed)]


def comparison_lines(comp: list, who: str = "The final noisy student") -> list[str]:
    """Markdown table of `paired_stats` rows ([] when none has a metric)."""
    if not comp or all("val_top1" not in c and "top1" not in c for c in comp):
        return []
    lines = ["", f"{who} against each row (points; paired = the per-seed difference, mean "
             "± std; 'holds' = the difference of the means exceeds the larger of the two rows' std's):", "",
             "| vs | val Δ | val paired | val larger std | holds (val) | test Δ | test paired | test larger std "
             "| holds (test) | seeds won (val / test) |", "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(c, m, key):
        if m not in c:
            return "—"
        v = c[m][key]
        if key == "holds":
            return "yes" if v else "no"
        return "—" if v is None or v != v else f"{v:+.2f}" if key == "delta" else f"{v:.2f}"

    for c in comp:
        paired = {m: (f"{c[m]['delta']:+.2f} ± {c[m]['paired_std']:.2f}" if m in c and c[m]["paired_std"] is not None
                      else "—") for m in ("val_top1", "top1")}
        wins = " / ".join(f"{c[m]['wins']}/{c['seeds']}" if m in c else "—" for m in ("val_top1", "top1"))
        lines.append(f"| {c['vs']} | {cell(c, 'val_top1', 'delta')} | {paired['val_top1']} | "
                     f"{cell(c, 'val_top1', 'larger_std')} | {cell(c, 'val_top1', 'holds')} | {cell(c, 'top1', 'delta')} | "
                     f"{paired['top1']} | {cell(c, 'top1', 'larger_std')} | {cell(c, 'top1', 'holds')} | {wins} |")
    return lines


def write_tables(out: Path, name: str, rows: list, total_s: float, argv: list, loops: list | None = None,
                 wall_label: str = "total wall"):
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": name, "command": "python benchmarks/accuracy.py " + " ".join(argv), "total_s": total_s,
            "date": time.strftime("%Y-%m-%d"), **machine()}
    loops = loops or []
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "loops": loops}, indent=2))
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["row"], r["round"], r["which"]), []).append(r)
    lines = [f"# {name}: accuracy table", "",
             f"`{meta['command']}`", "",
             f"{meta['cpu']}, {meta['cores']} cores (AVX512-BF16: {meta['avx512_bf16']}, "
             f"AMX-BF16: {meta.get('amx_bf16', 'not recorded')}, native bf16: "
             f"{meta['native_bf16']}), GPU: {meta['gpu']}, torch {meta['torch']}, {meta['date']}, "
             f"{wall_label} {total_s / 60:.1f} min" + (f"; machine speed (bare train step, {meta['bare_what']}): "
                                                        f"{meta['bare_img_s']:,.0f} img/s" if "bare_img_s" in meta else ""), "",
             "| row | round | model | role | val top-1 (%) | test top-1 (%) | seeds | steps | train s | PFLOP |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (row, rnd, which), rs in groups.items():
        train_s = [r["train_s"] for r in rs if r.get("train_s") is not None]
        pf = [r["train_pflop"] for r in rs if r.get("train_pflop") is not None]
        lines.append(f"| {row} | {rnd} | {rs[0]['model']} | {which} | {mean_std([r['val_top1'] for r in rs])} | "
                     f"{mean_std([r['top1'] for r in rs])} | {len(rs)} | {rs[0].get('steps') or ''} | "
                     f"{f'{sum(train_s) / len(train_s):.0f}' if train_s else ''} | "
                     f"{f'{sum(pf) / len(pf):.3f}' if pf else ''} |")
    lines += ["", "mean ± sample std over seeds; a seed changes the labeled draw, the initialisation and the "
              "augmentation. `steps`: optimizer steps (every student row of a seed trains the same count); "
              "`train s`: mean training time of the stage; `PFLOP`: its training compute (forward FLOPs x "
              "images seen x 3: backward counted as 2 x forward)."]
    lines += comparison_lines(comparisons(rows))
    for c in loops:
        lines.append(f"\nSeed {c['seed']}: the loop (teacher, labeling, each round's noisy student; not the "
                     f"comparison variants) spent **{c['total_pflop']:.3f} PFLOP** (training {c['train_pflop']:.3f}, "
                     f"labeling {c['label_pflop']:.3f}) in {c.get('loop_s', 0) / 60:.1f} min of stage wall time; the run "
                     f"with the variants took {c['wall_s'] / 60:.1f} min.")
    if any(r.get("twin_of") == "teacher" for r in rows):
        lines += ["", "`student_supervised` (the compute-matched supervised baseline) is the round-0 teacher's "
                  "row: the teacher is trained as that baseline (the student's model, optimizer steps, images "
                  "per step, noise and schedule; `noisystudent.variants.supervised_twin_differences` is empty), "
                  "so the run does not train it twice."]
    present = [k for k in ABLATIONS if any(r["row"] == k or r["which"].endswith(k) for r in rows)]
    if present:
        lines += ["", "Rows: " + "; ".join(f"`{k}` = {ABLATIONS[k][0]}" for k in present)]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:      # bad config / override / data: one line, non-zero exit
        raise SystemExit(f"error: {e}") from None
