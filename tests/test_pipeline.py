"""End-to-end: the whole loop on tiny digits, as a user runs it (CLI subprocesses)."""
import json
import re
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import REL, ROOT, TINY, cli, rel
from noisystudent.layout import RunLayout

# every stage of a 2-round run, in order: the teacher and its eval, then per round labels, selection,
# the student and its eval
STAGES = [rel(p) for p in (REL.model(0, "teacher"), REL.eval(0, "teacher"),
                           *[p for k in (1, 2) for p in (REL.labels(k), REL.selection(k), REL.model(k, "student"),
                                                         REL.eval(k, "student"))])]


def _sets(extra=(), report=False):
    out = [] if report else ["--no-report"]
    for o in [*TINY, *extra]:
        out += ["--set", o]
    return out


def _summary(run_dir):
    return json.loads(RunLayout(run_dir).summary.read_text())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    r = cli("run", "digits-demo", "--run-dir", str(run_dir), *_sets(report=True))
    assert r.returncode == 0, r.stderr
    return run_dir, r


def test_run_writes_every_artifact(reference_run):
    run_dir, r = reference_run
    lay = RunLayout(run_dir)
    for s in STAGES:
        rec = json.loads((run_dir / s / "stage.json").read_text())
        assert rec["status"] == "done" and rec["fingerprint"], s
    for d in (lay.model(0, "teacher"), lay.model(1, "student"), lay.model(2, "student")):
        assert (d / "model.pt").is_file() and (d / "metrics.jsonl").is_file()
        assert not (d / "checkpoint.pt").exists()          # resume state removed when done
    shards = sorted(lay.labels(1).glob("part-*.parquet"))
    table = pq.read_table(shards)
    assert set(table.column_names) >= {"sample_id", "probs", "pred", "confidence", "teacher"}
    # (1,500 - 80 labeled - 200 val) x 0.25
    assert len(table) == 305 and len(set(table.column("sample_id").to_pylist())) == 305
    sel = json.loads((lay.selection(1) / "selection.json").read_text())
    assert sel["threshold"] == 0.3 and sum(sel["counts_selected_with_copies"]) > 0
    # each stage's done line says what it did: steps, score on val, images labeled, images kept
    log_text = (run_dir / "run.log").read_text()
    assert re.search(r"round0/teacher: done in \d+:\d\d: [\d,]+ steps, [\d,]+ img/s", log_text)
    assert re.search(r"round0/eval_teacher: done in \d+:\d\d: val top-1 \d+\.\d\d%", log_text)
    ev = json.loads((lay.eval(0, "teacher") / "eval.json").read_text())      # per class on val too: choices are made there
    assert ev["val"]["num_images"] == 200 and set(ev["val"]["per_class_accuracy"]) == set(ev["per_class_accuracy"])
    assert "round1/labels: done in" in log_text and ": 305 pool images labeled" in log_text
    assert re.search(rf"round1/selection: done in .*: kept {sel['selected_unique']} of 305 pool images", log_text)
    s = _summary(run_dir)
    assert [m["which"] for m in s["models"]] == ["teacher", "student", "student"]
    assert [m["model"] for m in s["models"]] == ["ns_cnn_s", "ns_cnn_s", "ns_cnn_m"]
    assert "teacher" in r.stdout and "student" in r.stdout and "%" in r.stdout   # the results table
    assert lay.config.is_file()
    plots = ("accuracy", "confidence", "selection")                              # plot names
    for f in (lay.report_md, lay.report_html, *(lay.plots / f"{p}.png" for p in plots)):
        assert f.is_file(), f


def test_seed_table_labeled_mix_reweights_and_fills_in_val_per_class(reference_run):
    """benchmarks/seed_table.py --labeled-mix: the labeled set's class shares as weights; a val per-class
    accuracy an older eval.json lacks is computed from the model, the same as the stage wrote."""
    import importlib.util
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("seed_table_mix", ROOT / "benchmarks" / "seed_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run_dir, _ = reference_run
    mix = mod._Mix(run_dir)
    assert sum(mix.weights.values()) == pytest.approx(1.0) and len(mix.weights) == 10
    ev = json.loads((RunLayout(run_dir).eval(0, "teacher") / "eval.json").read_text())
    old = dict(ev, val={k: v for k, v in ev["val"].items() if k != "per_class_accuracy"})
    computed = mix.val_per_class(0, "teacher", old)
    assert computed == pytest.approx(ev["val"]["per_class_accuracy"])
    r = mix.reweighted(0, "teacher", old)
    assert r["val"]["top1"] == pytest.approx(sum(mix.weights[c] * a for c, a in computed.items()))
    assert r["top1"] == pytest.approx(mod.weighted_top1(ev["per_class_accuracy"], mix.weights))
    # a class without a per-class accuracy (no image of it) drops out and the rest is renormalised
    assert mod.weighted_top1({"a": 1.0, "b": None}, {"a": 0.25, "b": 0.75}) == 1.0


def test_rerun_skips_everything(reference_run, tmp_path):
    run_dir, _ = reference_run
    before = {s: (run_dir / s / "stage.json").read_text() for s in STAGES}
    t = time.time()
    r = cli("run", "digits-demo", "--run-dir", str(run_dir), *_sets())
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("done, skipping") == len(STAGES)
    assert before == {s: (run_dir / s / "stage.json").read_text() for s in STAGES}
    assert time.time() - t < 30


def test_changed_stage_config_invalidates_it_and_later_stages(reference_run, tmp_path):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run[0], run_dir)
    lay = RunLayout(run_dir)
    r = cli("run", "digits-demo", "--run-dir", str(run_dir), *_sets(["select.threshold=0.5"]))
    assert r.returncode == 0, r.stderr
    assert f"{lay.rel(lay.selection(1))}: config or inputs changed" in r.stderr
    for s in STAGES[:3]:
        assert f"{s}: done, skipping" in r.stderr
    for s in STAGES[3:]:
        assert f"{s}: done, skipping" not in r.stderr, s
    sel = json.loads((lay.selection(1) / "selection.json").read_text())
    assert sel["threshold"] == 0.5


@pytest.mark.slow       # test_faults' student case kills at random points and checks byte-identical outputs
def test_kill_during_student_then_resume_gives_identical_summary(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    lay = RunLayout(run_dir)
    cmd = [sys.executable, "-m", "noisystudent", "run", "digits-demo", "--run-dir", str(run_dir), *_sets(["student.epochs=6"])]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**__import__("os").environ, "NOISYSTUDENT_PROGRESS": "0"})
    ckpt = lay.model(1, "student") / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "student never checkpointed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not lay.summary.exists()
    r = cli("run", "digits-demo", "--run-dir", str(run_dir), *_sets(["student.epochs=6"]))
    assert r.returncode == 0, r.stderr
    assert f"{lay.rel(lay.model(0, 'teacher'))}: done, skipping" in r.stderr
    hist = [json.loads(line) for line in (lay.model(1, "student") / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5, 6]
    # an uninterrupted run with the same seed
    ref = tmp_path / "ref"
    r2 = cli("run", "digits-demo", "--run-dir", str(ref), *_sets(["student.epochs=6"]))
    assert r2.returncode == 0, r2.stderr
    assert _summary(run_dir) == _summary(ref)


def test_other_experiment_in_same_run_dir_is_refused(reference_run):
    run_dir, _ = reference_run
    r = cli("run", "digits-demo", "--run-dir", str(run_dir), *_sets(["data.labeled.per_class=9"]))
    assert r.returncode == 2
    assert "holds a run with a different data.labeled" in r.stderr and "Traceback" not in r.stderr
