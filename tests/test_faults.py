"""Fault injection: SIGKILL a real `noisystudent run` at random points inside each stage, rerun the same
command until it exits 0, and check that nothing was lost, nothing finished was redone, no temp file
is left, and the result is exactly the uninterrupted run's.

How: one uninterrupted reference run (module fixture, timed per stage). For the stage under test, a
copy of the reference run directory loses that stage's folder (and summary.json); the command is then
started, killed from outside while the stage runs (a seeded random point: a random unit of progress
— epoch, label shard — plus a random fraction of one unit's time), started again, ... and finally left
to finish. Every stage after it is still in the copy: it must be skipped, which holds only if the
resumed stage wrote byte-identical outputs (their hashes are in the downstream fingerprints).

The kill points are reproducible in *where* they aim (seeded), not to the microsecond (the OS
schedules the processes). Kills that land after the stage finished do not count; the number that
landed per stage is printed in the terminal summary.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REL, REPORT_LINES, ROOT, TINY, rel
from noisystudent.layout import RunLayout

SEED = 20240611
CORRUPTIONS, SEVERITIES = ["gaussian_noise", "fog"], [1, 3]
FAULT_SETS = [*TINY, "ablation_no_noise=false", "label.shard_size=32", "data.unlabeled.fraction=0.5",
              "finetune.enabled=true", "finetune.epochs=1", "finetune.image_size=10",
              "evaluate.robustness=true", "evaluate.max_images=20",
              f"evaluate.corruptions=[{','.join(CORRUPTIONS)}]", f"evaluate.severities={SEVERITIES}"]
# One thread per process: on a shared 2-core box OpenMP's spinning threads make every process 10x
# slower under contention. All runs here (the reference included) use it, so results are comparable.
ENV = dict(os.environ, NOISYSTUDENT_PROGRESS="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

# name -> (stage folder relative to the run, kills aimed at it, what counts as a unit of progress)
CASES = {
    "teacher": (rel(REL.model(0, "teacher")), 4, "epochs"),
    "labels": (rel(REL.labels(1)), 4, "shards"),
    "selection": (rel(REL.selection(1)), 3, None),
    "student": (rel(REL.model(1, "student")), 3, "epochs"),
    "finetune": (rel(REL.model(1, "finetune")), 3, "epochs"),
    "evaluate": (rel(REL.eval(0, "teacher")), 3, "cache"),
}
KILLS: dict[str, list[str]] = {}


def _cmd(run_dir: Path) -> list[str]:
    out = [sys.executable, "-m", "noisystudent", "run", "digits-demo", "--run-dir", str(run_dir), "--no-report"]
    for o in FAULT_SETS:
        out += ["--set", o]
    return out


def _status(stage_dir: Path) -> str | None:
    try:
        return json.loads((stage_dir / "stage.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def _ino(p: Path):
    try:
        return p.stat().st_ino
    except OSError:
        return None


def _metrics(stage_dir: Path) -> list[str]:
    try:
        return (stage_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []


def _progress(stage_dir: Path, unit: str | None) -> int:
    if unit == "epochs":
        return len(_metrics(stage_dir))
    if unit == "shards":
        return len(list(stage_dir.glob("part-*.parquet")))
    if unit == "cache":         # corrupted copies of the test subset, cached under <run>/cache
        return len(list(RunLayout(stage_dir.parent.parent).cache().rglob("*.npy")))
    return 0


def _temps(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.rglob("*.tmp"))


def _summary(run_dir: Path) -> dict:
    return json.loads(RunLayout(run_dir).summary.read_text())


def _files_state(paths) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, with how long each stage took and how many units of progress it has."""
    run_dir = tmp_path_factory.mktemp("faults-ref") / "run"
    log = run_dir.parent / "stderr.txt"
    t0, started, took = time.monotonic(), {}, {}
    with open(log, "w") as err:
        proc = subprocess.Popen(_cmd(run_dir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            for name, (stage_rel, _, _) in CASES.items():
                st = _status(run_dir / stage_rel)
                if st == "running" and name not in started:
                    started[name] = time.monotonic()
                elif st == "done" and name not in took:
                    took[name] = time.monotonic() - started.get(name, time.monotonic())
            time.sleep(0.002)
    assert proc.returncode == 0, log.read_text()
    units = {name: max(1, _progress(run_dir / stage_rel, unit)) for name, (stage_rel, _, unit) in CASES.items()}
    units["evaluate"] = len(CORRUPTIONS) * len(SEVERITIES)     # the teacher's resolution only
    REPORT_LINES.append(f"fault suite: reference run {time.monotonic() - t0:.1f}s; stage seconds "
                        + ", ".join(f"{n} {took.get(n, 0):.2f}" for n in CASES))
    return run_dir, took, units


def _wait_started(proc, stage_dir: Path, old_ino, deadline: float) -> bool:
    """Until this process wrote the stage's `running` record (a new stage.json: atomic replace)."""
    while time.monotonic() < deadline and proc.poll() is None:
        if _ino(stage_dir / "stage.json") not in (None, old_ino) and _status(stage_dir) == "running":
            return True
        time.sleep(0.001)
    return False


# finetune resumes through the same trainer as teacher and student: `make test-all` runs it
# In `make test-all` only (slow), where a faster test covers the same code: finetune (the engine's
# resume, as the teacher case; its own test checks the frozen layers), selection (one atomic write of
# two files: the atomic-write and rerun pipeline tests), labels (a missing shard is relabeled alone:
# test_distributed's third launch) and evaluate (the corruption cache's reuse and repair:
# test_robustness). `make test` keeps the two training stages, teacher and student.
SLOW_CASES = {"finetune", "selection", "labels", "evaluate"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in CASES])
def test_kill_anywhere_in_stage_then_resume(name, reference, tmp_path):
    ref_dir, took, units = reference
    stage_rel, n_kills, unit = CASES[name]
    run_dir = tmp_path / "run"
    lay = RunLayout(run_dir)
    shutil.copytree(ref_dir, run_dir)
    stage = run_dir / stage_rel

    def fresh():                # the stage (and the summary) as if never run
        shutil.rmtree(stage, ignore_errors=True)
        lay.summary.unlink(missing_ok=True)
        if name == "evaluate":  # corrupted test images are cached: make the stage compute them again
            shutil.rmtree(lay.cache(), ignore_errors=True)
    fresh()
    resets = 0
    rng = random.Random(f"{SEED}-{name}")
    U, unit_s = units[name], max(took.get(name, 0.05), 0.02) / units[name]

    # where to aim, in units of progress (epoch 2.4 = 40% into the third epoch), spread over the stage
    targets = sorted(rng.uniform(0, U) for _ in range(n_kills)) + [rng.uniform(0, U / 2) for _ in range(4)]
    landed: list[str] = []
    snapshots: list[dict] = []
    logs: list[str] = []
    tries = 0
    for attempt, target in enumerate(targets):
        if len(landed) >= n_kills:
            break
        tries += 1
        whole, frac = int(target), target - int(target)     # wait for `whole` units, then `frac` of one
        errf = tmp_path / f"stderr-{attempt}.txt"
        with open(errf, "w") as err:
            proc = subprocess.Popen(_cmd(run_dir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
            try:
                started = _wait_started(proc, stage, _ino(stage / "stage.json"), time.monotonic() + 120)
                while started and proc.poll() is None and _progress(stage, unit) < whole \
                        and _status(stage) == "running":
                    time.sleep(0.001)
                time.sleep(frac * unit_s)
            finally:
                proc.send_signal(signal.SIGKILL)
                rc = proc.wait()
        logs.append(errf.read_text())
        assert rc in (0, -signal.SIGKILL), logs[-1]
        if rc == 0:     # it finished before the kill
            if len(landed) >= 2 or resets >= 2:
                break
            # Too few kills landed to judge a short stage (the OS scheduled this one late): start the
            # stage over from nothing and aim again, rather than failing on timing luck.
            resets += 1
            fresh()
            for seen in (landed, snapshots, logs):
                seen.clear()
            targets += sorted(rng.uniform(0, U) for _ in range(n_kills))
            continue
        assert not lay.summary.exists() or _status(stage) == "done"
        if _status(stage) != "running":
            continue    # landed before this stage started or after it finished: does not count
        done = _progress(stage, unit)
        ckpt = stage / "checkpoint.pt"
        snap = {"metrics": _metrics(stage), "temps": bool(_temps(run_dir)),
                "ckpt_epoch": (torch.load(ckpt, weights_only=True)["epoch"] if ckpt.is_file() else None),
                "files": _files_state(list(stage.glob("part-*.parquet"))
                                      + list(lay.cache().rglob("*.npy")) if name in ("labels", "evaluate")
                                      else [])}
        snapshots.append(snap)
        what = {"epochs": f"after epoch {done}", "shards": f"after {done}/{U} shards",
                "cache": f"after {done}/{U} corruptions"}.get(unit, "")
        extras = [w for w, c in (("model.pt written", (stage / "model.pt").is_file()),
                                 ("checkpoint", snap["ckpt_epoch"] is not None),
                                 ("temp file left", snap["temps"])) if c]
        landed.append(" ".join([what, f"+{frac:.2f}", *(f"[{e}]" for e in extras)]).strip())

    # the same command, until it exits 0
    for _ in range(3):
        final = subprocess.run(_cmd(run_dir), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        logs.append(final.stderr)
        if final.returncode == 0:
            break
    assert final.returncode == 0, final.stderr
    KILLS[name] = landed
    REPORT_LINES.append(f"fault suite: {name:9s} ({stage_rel}): {len(landed)} kill points landed "
                        f"({tries} tries): " + "; ".join(landed))
    print(f"\n{name}: {len(landed)} kills: {landed}")
    assert len(landed) >= 2, f"only {len(landed)} kills landed inside {stage_rel}: {landed}"

    # 1. the result is the uninterrupted run's, stage by stage and in the summary
    assert _summary(run_dir) == _summary(ref_dir)
    ref_rec = json.loads((ref_dir / stage_rel / "stage.json").read_text())
    rec = json.loads((stage / "stage.json").read_text())
    assert rec["status"] == "done" and rec["fingerprint"] == ref_rec["fingerprint"]
    assert rec["outputs"] == ref_rec["outputs"]                    # byte-identical outputs
    # 2. finished stages were skipped, before and after this one (after: only because the outputs match)
    ref_lay = RunLayout(ref_dir)
    stages = sorted({ref_lay.rel(d) for d in ref_lay.stage_dirs()})
    for s in stages:
        if s != stage_rel:
            assert f"{s}: done, skipping" in final.stderr, (s, final.stderr)
    assert f"{stage_rel}: done, skipping" not in final.stderr
    # 3. finished work inside the stage was not redone
    resumed_logs = logs[1:]
    for i, snap in enumerate(snapshots):
        if unit == "epochs":
            rows = _metrics(stage)
            assert [json.loads(r)["epoch"] for r in rows] == list(range(1, len(rows) + 1))
            # epochs finished before the kill keep their rows, timings included: not retrained
            assert rows[:len(snap["metrics"])] == snap["metrics"]
            if snap["ckpt_epoch"] is not None:
                assert any(f"resuming from {stage / 'checkpoint.pt'} after epoch {snap['ckpt_epoch']} of"
                           in text for text in resumed_logs), resumed_logs
        for fname, state in snap["files"].items():    # label shards / corruption cache: same file
            matches = [p for p in [stage / fname, *lay.cache().rglob(fname)] if p.is_file()]
            assert matches and (matches[0].stat().st_ino, matches[0].stat().st_mtime_ns) == state, fname
        if snap["temps"]:
            assert any("temp file(s) an interrupted run left behind" in text for text in resumed_logs)
    # 4. nothing half-written or stale remains
    assert _temps(run_dir) == []
    assert not (stage / "checkpoint.pt").exists()
