"""Issue 16: warnings said once (run.log, warnings.json, the report), the `logging: [csv, tensorboard]`
loggers, and progress bars that stay after a stage."""
from __future__ import annotations

import json
import logging

import pytest

from noisystudent import runwarnings as rw
from noisystudent.cli import main
from noisystudent.layout import RunLayout
from own_data import make_own_data

from conftest import REL, rel


# ------------------------------------------------------------------------------------------------
# the checks, on tiny inputs

def test_threshold_filters_nothing():
    assert "filters nothing" in rw.threshold_filters_nothing(0.3, 3)          # 0.3 <= 1/3
    assert "filters nothing" in rw.threshold_filters_nothing(0.5, 2)          # equal: still keeps everything
    assert rw.threshold_filters_nothing(0.34, 3) is None
    assert rw.threshold_filters_nothing(0.3, 10) is None
    assert rw.threshold_filters_nothing(0.0, 1000) is not None
    for k in (2, 3, 4, 10):                                                  # auto never does
        assert rw.threshold_filters_nothing("auto", k) is None


@pytest.mark.parametrize("losses, rising", [
    ([2.0, 1.5, 1.2, 1.0, 0.9], False),                  # falling
    ([1.0, 1.0, 1.05, 1.0, 1.08], False),                # within the 10% margin
    ([1.0, 0.8, 1.2, 1.5, 2.0], True),                   # ends twice as high
    ([1.0, 3.0, 0.9, 0.8], False),                       # a bump in the middle, ends lower
    ([0.001, 0.001, 0.002, 0.005], False),               # doubles, but by less than 0.01
    ([1.0, 2.0, 3.0], False),                            # 3 epochs: too few to call a trend
    ([1.0, 1.0, float("nan"), 1.5, 1.6], True),          # a non-finite row is ignored
    ([2.0] * 10 + [1.0] * 80 + [2.5] * 10, True),        # the first and last 10% of 100 epochs
    ([2.0] * 10 + [1.0] * 80 + [2.1] * 10, False),
])
def test_loss_rising(losses, rising):
    msg = rw.loss_rising("student r1", losses)
    assert (msg is not None) == rising, msg
    if rising:
        assert "rose from" in msg and "student.lr" in msg


def test_loss_rising_names_the_windows():
    msg = rw.loss_rising("teacher", [1.0] * 10 + [2.0] * 10)
    assert "first 2 epochs" in msg and "last 2 epochs" in msg and "teacher.lr" in msg and "20 epochs" in msg


def test_short_schedule():
    msg = rw.short_schedule("teacher", 60, 100, 64)        # 10 labels per class, 30 epochs at batch 64
    assert "only 60 optimizer steps" in msg and "teacher.steps" in msg
    assert rw.short_schedule("student r1", 2000, 1000, 64) is None
    assert "8 passes over 5000" in rw.short_schedule("student r1", 600, 5000, 64)      # enough steps, too few passes


def test_feature_map_collapse():
    msg = rw.feature_map_collapse("teacher", "resnet18", 12, 32)
    assert "resnet18 downsamples 32x but the images are 12 px" in msg and "data.image_size >= 32" in msg
    assert "for the teacher" in msg
    assert "for the student" in rw.feature_map_collapse("student r1", "resnet18", 16, 32)
    assert rw.feature_map_collapse("teacher", "resnet18", 32, 32) is None       # 1x1 at the last stage only
    assert rw.feature_map_collapse("teacher", "ns_cnn_s", 12, None) is None     # the model does not say


def test_collapse_is_warned_from_the_model(tmp_path):
    """The stage reads the reduction from timm's feature_info: resnet18 on 12 px images warns,
    at 32 px it does not; our small-image models do not."""
    from types import SimpleNamespace
    from noisystudent.models import create_model
    from noisystudent.stages.train import warn_collapse
    for model, size, warned in (("resnet18", 12, True), ("resnet18", 32, False), ("ns_cnn_s", 12, False)):
        ctx = SimpleNamespace(rank=0, run_dir=tmp_path / f"{model}{size}", cfg=SimpleNamespace(
            data=SimpleNamespace(image_size=size)), layout=None)
        into: dict = {}
        warn_collapse("teacher", model, create_model(model, 3, 3), ctx, None, into)
        assert bool(into) == warned, (model, size, into)


def test_student_worse():
    t, s = {"top1": 0.80}, {"top1": 0.75}
    assert "75.00% on test" in rw.student_worse(1, t, s) and "round-0 teacher (80.00%)" in rw.student_worse(1, t, s)
    assert rw.student_worse(1, s, t) is None and rw.student_worse(1, t, dict(t)) is None
    # val decides when both have it, even where test disagrees
    tv, sv = {"top1": 0.80, "val": {"top1": 0.70}}, {"top1": 0.75, "val": {"top1": 0.72}}
    assert rw.student_worse(2, tv, sv) is None
    assert "on val" in rw.student_worse(2, sv, tv) and "round 1's student" in rw.student_worse(2, sv, tv)
    # with the count of images scored: the gap in images, and when it is too few to tell
    t, s = {"top1": 0.3, "val": {"top1": 0.3, "num_images": 10}}, {"top1": 0.5, "val": {"top1": 0.2, "num_images": 10}}
    assert rw.student_worse(1, t, s) == (
        "round 1: the noisy student (20.00% on val) is worse than the round-0 teacher (30.00%; 1 of 10 images, "
        "within noise: fewer than 6 images cannot tell two models apart); train the teacher longer, raise "
        "select.threshold, or give the student more steps")
    t, s = {"top1": 0.80, "num_images": 10000}, {"top1": 0.7994, "num_images": 10000}
    assert "(80.00%; 6 of 10,000 images); train" in rw.student_worse(1, t, s)          # 6: a gap that can tell
    assert "5 of 10,000 images, within noise" in rw.student_worse(1, t, {"top1": 0.7995})


def test_emit_once_and_collect(tmp_path, caplog):
    from types import SimpleNamespace
    from noisystudent.artifacts import write_json, write_stage
    run = tmp_path / "run"
    run.mkdir()
    with caplog.at_level(logging.WARNING, logger="noisystudent"):
        for _ in range(3):
            rw.emit(run, "k", "something is off")
        rw._SEEN.clear()                    # a second invocation of the same run: warnings.json has it
        rw.emit(run, "k", "something is off")
        rw.emit(run, "k2", None)
    assert caplog.text.count("something is off") == 1
    assert rw.read_warnings(run) == [{"key": "k", "message": "something is off"}]
    # collect: config check, a stage's own list, the round comparison; the emitted-only 'k' is gone
    lay = RunLayout(run)
    short, worse = f"short_schedule:{lay.rel(lay.model(1, 'student'))}", f"student_worse:{lay.rel(lay.round_dir(1))}"
    lay.model(1, "student").mkdir(parents=True)
    write_stage(lay.model(1, "student"), status="done", fingerprint="x", config={}, inputs={},
                info={"warnings": {short: "short"}})
    write_json(lay.eval(0, "teacher") / "eval.json", {"top1": 0.9})
    write_json(lay.eval(1, "student") / "eval.json", {"top1": 0.8})
    cfg = SimpleNamespace(rounds=1, select=SimpleNamespace(threshold=0.3))
    items = rw.collect(run, cfg, num_classes=3)
    assert list(items) == ["select.threshold", short, worse]
    assert rw.collect(run, SimpleNamespace(rounds=1, select=SimpleNamespace(threshold=0.5)), 3).keys() \
        == {short, worse}


# ------------------------------------------------------------------------------------------------
# config: the logging key

def test_logging_key_is_validated(tmp_path, monkeypatch):
    from noisystudent.config import load_config
    from noisystudent.errors import UserError
    with pytest.raises(UserError, match=r"config key 'logging\[1\]': 'wandb' is not allowed; choose one of "
                                        r"'csv', 'tensorboard'"):
        load_config(None, ["logging=[csv, wandb]"])
    with pytest.raises(UserError, match="config key 'logging': expected a list"):
        load_config(None, ["logging=csv"])
    import importlib.util
    if importlib.util.find_spec("tensorboard") is not None:      # installed by `make` (the [logging] extra)
        assert load_config(None, ["logging=[csv, tensorboard]"]).logging == ["csv", "tensorboard"]
    # tensorboard not installed: one line at config time
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    with pytest.raises(UserError, match=r"'tensorboard' needs the tensorboard package: pip install "
                                        r"'noisystudent\[logging\]'"):
        load_config(None, ["logging=[tensorboard]"])
    assert load_config(None, ["logging=[csv]"]).logging == ["csv"]


def test_csv_rows(tmp_path):
    from noisystudent.loggers import write_csv
    import csv
    rows = [{"epoch": 1, "loss": 1.5, "lr": 0.1, "amp": "fp32"}, {"epoch": 2, "loss": 1.2, "lr": 0.05, "amp": "fp32",
                                                                    "val_top1": 0.5}]
    write_csv(tmp_path / "m.csv", rows)
    got = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [r["epoch"] for r in got] == ["1", "2"] and got[1]["val_top1"] == "0.5" and got[0]["val_top1"] == ""


# ------------------------------------------------------------------------------------------------
# a real run: warnings once in run.log, warnings.json, the report; CSV + TensorBoard; bars that stay

def _visible_lines(stream: str) -> list[str]:
    """What a terminal shows: each line's text after its last carriage return."""
    return [ln.rsplit("\r", 1)[-1].strip() for ln in stream.split("\n")]


def test_run_warns_once_logs_csv_tensorboard_and_bars_stay(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    import csv
    from noisystudent import engine
    make_own_data(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  labeled: {kind: imagefolder, root: train}\n  unlabeled: {kind: folder, root: pool}\n"
                   "  test: {kind: imagefolder, root: test}\nlogging: [csv, tensorboard]\nmodels: [ns_cnn_s]\n"
                   "device: cpu\nteacher: {epochs: 2, batch_size: 8}\nstudent: {epochs: 1, batch_size: 4}\n"
                   "select: {threshold: 0.3}\n")
    monkeypatch.setattr(engine, "progress_enabled", lambda: True)        # as on a terminal
    run_dir = tmp_path / "r"
    lay = RunLayout(run_dir)
    assert main(["run", str(cfg), "--run-dir", str(run_dir)]) == 0
    shown = _visible_lines(capsys.readouterr().err)
    assert any(ln.startswith("teacher 2/2: 100%") for ln in shown), shown       # the stage's last bar stays
    assert not any(ln.startswith("teacher 1/2") for ln in shown)               # earlier epochs' bars cleared
    assert main(["run", str(cfg), "--run-dir", str(run_dir)]) == 0            # rerun: every stage skipped
    log = lay.run_log.read_text()
    assert log.count("select.threshold=0.3 is <= 1/3 classes") == 1, log
    assert log.count("teacher: only 6 optimizer steps") == 1
    keys = [w["key"] for w in json.loads(lay.warnings.read_text())]
    assert keys[:3] == ["select.threshold", f"short_schedule:{rel(REL.model(0, 'teacher'))}",
                        f"short_schedule:{rel(REL.model(1, 'student'))}"]
    page = lay.report_html.read_text()
    assert "<h2>Warnings</h2>" in page and "filters nothing" in page
    # CSV: one row per epoch per stage
    rows = list(csv.DictReader((lay.model(0, "teacher") / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["loss"]) > 0
    assert len(list(csv.DictReader((lay.model(1, "student") / "metrics.csv").open()))) == 1
    # TensorBoard: the same rows, read back with tensorboard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(lay.model(0, "teacher") / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert loss[1].value == pytest.approx(float(rows[1]["loss"]), rel=1e-6)


def test_run_eta_counts_steps_and_variants():
    """The whole-run plan uses the configured optimizer steps and trains one student per variant."""
    from noisystudent import runlog
    from noisystudent.config import load_config
    from conftest import ROOT
    cfg = load_config(ROOT / "configs" / "fashion-mnist-1k.yaml",
                      ["rounds=2", "variants=[no_noise, supervised]", "teacher.steps=3000", "student.steps=3000"])
    runlog.set_plan(cfg, 1000, 54000)
    try:
        assert runlog._PLAN.total == 3000 * 128 + (2 + 2) * 3000 * 32 * 4
    finally:
        runlog.clear_plan()


def test_run_eta_counts_skipped_and_resumed_work_as_done(tmp_path):
    """A rerun that skips finished stages (a variant added to a finished run) must not count their
    images as still to do: the ETA was 1:41 h for 22 minutes of work before this."""
    from noisystudent import runlog
    from noisystudent.engine import fit
    from noisystudent.batches import LabeledBatches
    from noisystudent.config import DataConfig, NoiseConfig, SourceConfig, TrainConfig
    from noisystudent.data import LabeledDataset, create_source, create_train_transform
    from noisystudent.models import create_model
    runlog._PLAN = runlog.RunPlan(10_000)
    try:
        runlog.plan_skip(2_500)
        assert runlog._PLAN.done == 2_500
        # a resumed training stage counts the epochs its checkpoint already has
        src = create_source(SourceConfig(kind="digits", per_class=4), 1)
        ds = LabeledDataset(src, create_train_transform(DataConfig(image_size=8, in_chans=1, mean=[0.5], std=[0.5])))
        cfg = TrainConfig(epochs=1, batch_size=8, lr=0.01, warmup_epochs=0,
                          noise=NoiseConfig(False, drop_rate=0.0, drop_path_rate=0.0))
        fit(create_model("ns_cnn_s", 10, 1), cfg, LabeledBatches(ds, 8), out_dir=tmp_path, seed=0, meta={})
        runlog._PLAN = runlog.RunPlan(10_000)
        cfg2 = TrainConfig(epochs=2, batch_size=8, lr=0.01, warmup_epochs=0,
                           noise=NoiseConfig(False, drop_rate=0.0, drop_path_rate=0.0))
        before = runlog._PLAN.done
        import noisystudent.engine as engine
        tr = engine.Trainer(create_model("ns_cnn_s", 10, 1), cfg2, LabeledBatches(ds, 8), out_dir=tmp_path, seed=0,
                            meta={})
        tr.setup()                                   # resumes after epoch 1 of a checkpoint with 40 images
        assert runlog._PLAN.done - before == pytest.approx(40, rel=0.01)
    finally:
        runlog.clear_plan()


def test_report_log_axis_labels_are_plain_text(tmp_path):
    """The report draws with mathtext off; the confidence histogram's log axis must still read 1, 10,
    100 (the screenshot showed '$\\mathdefault{10^{1}}$')."""
    import matplotlib
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from noisystudent.artifacts import write_json
    from noisystudent.report.plots import PLOTS
    from noisystudent.report.rundata import STYLE, RunData
    lay = RunLayout(tmp_path)
    write_json(lay.summary, {"name": "t", "classes": ["a", "b"], "models": []})
    lay.labels(1).mkdir(parents=True)
    conf = np.concatenate([np.full(300, 0.99), np.linspace(0.5, 0.9, 20)]).astype(np.float32)
    pq.write_table(pa.table({"confidence": conf}), lay.labels(1) / "part-00000.parquet")
    write_json(lay.selection(1) / "selection.json", {"threshold": 0.6})
    with matplotlib.rc_context({**STYLE, "text.parse_math": False}):
        confidence = {name: draw for name, _, draw in PLOTS}["confidence"]     # as write_report finds it
        fig = confidence(RunData(tmp_path))
        fig.canvas.draw()
        labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels(which="both") if t.get_text()]
    assert labels and not any("$" in t or "mathdefault" in t for t in labels), labels
    assert "100" in labels


def test_no_pseudo_labels_is_a_kept_warning(tmp_path):
    """A selection that kept nothing: the student trains on the labeled images, and says so once, in
    warnings.json too (one key per round, so the round's variants do not repeat it)."""
    cfg = tmp_path / "c.yaml"
    make_own_data(tmp_path)
    cfg.write_text("data:\n  labeled: {kind: imagefolder, root: train}\n  unlabeled: {kind: folder, root: pool}\n"
                   "  test: {kind: imagefolder, root: test}\nmodels: [ns_cnn_s]\ndevice: cpu\n"
                   "teacher: {epochs: 1, batch_size: 8}\n"
                   "student: {epochs: 1, batch_size: 4, noise: {randaugment: false}}\n"   # fast on a busy CPU
                   "select: {threshold: 0.999}\n")
    run_dir = tmp_path / "r"
    assert main(["run", str(cfg), "--run-dir", str(run_dir), "--no-report"]) == 0
    assert RunLayout(run_dir).run_log.read_text().count("round 1: no pool image passed select.threshold=0.999") == 1
    assert f"no_pseudo_labels:{rel(REL.round_dir(1))}" in [w["key"] for w in rw.read_warnings(run_dir)]


def test_auto_threshold_resolves_per_class_count_and_is_its_number(tmp_path):
    """`select.threshold` left at its default, `auto`, on 3 classes: the selection filters at 0.9 (0.3
    would keep every pool image), records the number, and warns of nothing; a rerun that says 0.9
    explicitly is the same selection, so it is skipped, not redone."""
    cfg = tmp_path / "c.yaml"
    make_own_data(tmp_path)                                                  # 3 classes
    cfg.write_text("data:\n  labeled: {kind: imagefolder, root: train}\n  unlabeled: {kind: folder, root: pool}\n"
                   "  test: {kind: imagefolder, root: test}\nmodels: [ns_cnn_s]\ndevice: cpu\n"
                   "teacher: {epochs: 1, batch_size: 8}\nvariants: []\n"
                   "student: {epochs: 1, batch_size: 4, noise: {randaugment: false}}\n")
    run_dir, lay = tmp_path / "r", RunLayout(tmp_path / "r")
    assert main(["run", str(cfg), "--run-dir", str(run_dir), "--no-report"]) == 0
    rec = json.loads((lay.selection(1) / "stage.json").read_text())
    assert rec["config"]["select"]["threshold"] == 0.9
    assert json.loads((lay.selection(1) / "selection.json").read_text())["threshold"] == 0.9
    assert "select.threshold" not in [w["key"] for w in rw.read_warnings(run_dir)]
    assert main(["run", str(cfg), "--run-dir", str(run_dir), "--no-report", "--set", "select.threshold=0.9"]) == 0
    assert json.loads((lay.selection(1) / "stage.json").read_text())["time"] == rec["time"]
    assert "round1/selection: done, skipping" in lay.run_log.read_text()


# ------------------------------------------------------------------------------------------------
# epoch lines: at most one every NOISYSTUDENT_LOG_S seconds, always the first and the last

def test_epoch_line_due_first_last_and_after_the_interval():
    from noisystudent.runlog import line_due
    assert line_due(1, 100, now=5.0, last=4.9, interval=10)            # the first epoch
    assert line_due(7, 100, now=5.0, last=None, interval=10)           # the first line of this process (a resume)
    assert not line_due(7, 100, now=5.0, last=0.0, interval=10)
    assert line_due(8, 100, now=10.0, last=0.0, interval=10)
    assert line_due(100, 100, now=0.1, last=0.0, interval=10)          # the last epoch
    assert line_due(7, 100, now=0.0, last=0.0, interval=0)             # 0: every epoch


def test_on_epoch_logs_sparse_lines_but_keeps_every_row(tmp_path, monkeypatch, caplog):
    """5,500 one-step epochs (a 100-image labeled set) give a handful of lines, not 5,500; the CSV
    logger (like metrics.jsonl) still gets every epoch; a bad interval is a one-line error."""
    from noisystudent import runlog
    from noisystudent.errors import UserError
    from noisystudent.loggers import close_loggers, configure_loggers
    clock = iter(range(0, 10_000, 2))                       # each epoch "takes" 2 s
    monkeypatch.setattr(runlog.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setenv("NOISYSTUDENT_LOG_S", "10")
    configure_loggers(["csv"])
    history = []
    with caplog.at_level(logging.INFO, logger="noisystudent"):
        for e in range(1, 31):
            row = {"epoch": e, "loss": 1.0, "lr": 0.1, "images_per_s": 100.0, "epoch_s": 2.0}
            history.append(row)
            runlog.on_epoch("teacher-t", row, 30, history, out_dir=tmp_path)
    close_loggers()
    logged = [int(r.getMessage().split()[2].split("/")[0]) for r in caplog.records if "teacher-t epoch" in r.getMessage()]
    assert logged == [1, 6, 11, 16, 21, 26, 30]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 31     # header + every epoch
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv("NOISYSTUDENT_LOG_S", bad)
        with pytest.raises(UserError, match="NOISYSTUDENT_LOG_S must be a number of seconds >= 0"):
            runlog.log_interval_s()


def test_baseline_better_names_the_baseline_and_what_to_do(tmp_path):
    """The noisy student below the compute-matched supervised or the no-noise variant trained beside
    it: a warning saying which and what it means (val decides when both have it); other variants,
    ties and wins say nothing; collect() keeps it for the variants the config trains in its round."""
    from types import SimpleNamespace
    from noisystudent.artifacts import write_json
    s, sup = {"top1": 0.80, "val": {"top1": 0.90}}, {"top1": 0.85, "val": {"top1": 0.92}}
    m = rw.baseline_better(1, "supervised", s, sup)
    assert m.startswith("round 1: the noisy student (90.00% on val) is below the compute-matched supervised model")
    assert "(92.00%): the pseudo-labels added nothing here" in m
    assert "the noise did not pay" in rw.baseline_better(1, "no_noise", s, sup)
    assert rw.baseline_better(1, "supervised", sup, s) is None and rw.baseline_better(1, "supervised", s, dict(s)) is None
    assert rw.baseline_better(1, "two_step", s, sup) is None
    assert "on test" in rw.baseline_better(1, "supervised", {"top1": 0.8}, {"top1": 0.85, "val": {"top1": 0.1}})
    assert "(85.00%; 50 of 1,000 images): the pseudo-labels" in rw.baseline_better(
        1, "supervised", {"top1": 0.8, "num_images": 1000}, {"top1": 0.85})
    lay = RunLayout(tmp_path)
    write_json(lay.eval(0, "teacher") / "eval.json", {"top1": 0.7})
    write_json(lay.eval(1, "student") / "eval.json", s)
    write_json(lay.eval(1, "student_supervised") / "eval.json", sup)
    write_json(lay.eval(1, "student_nonoise") / "eval.json", {"top1": 0.5, "val": {"top1": 0.5}})
    cfg = SimpleNamespace(rounds=1, select=SimpleNamespace(threshold=0.5), variants=["no_noise", "supervised"],
                          variants_round=1)
    assert list(rw.collect(tmp_path, cfg, 3)) == ["below_supervised:round1"]
    # a variant the config no longer trains (its old folder still there) is not compared
    assert rw.collect(tmp_path, SimpleNamespace(**{**cfg.__dict__, "variants": ["no_noise"]}), 3) == {}


def test_stage_summary_says_what_a_stage_did():
    from noisystudent.runlog import stage_summary
    assert stage_summary({"steps": 4000, "images_per_s": 502.2, "epochs": 2000}) == "4,000 steps, 502 img/s"
    assert stage_summary({"top1": 0.5065, "val_top1": 0.5144}) == "val top-1 51.44%"
    assert stage_summary({"top1": 0.5065}) == "test top-1 50.65%"          # no val set
    assert stage_summary({"rows": 44750, "pool_size": 44750, "skipped_images": 2}) == \
        "44,750 pool images labeled, 2 undecodable skipped"
    sel = {"selected_unique": 22037, "selected_with_copies": 24990, "pool_rows": 44750,
           "pseudo_label_accuracy": {"after": {"overall": 0.6569}}}
    assert stage_summary(sel) == ("kept 22,037 of 44,750 pool images (49.2%), 24,990 with the balancing copies; "
                                  "65.7% of their pseudo-labels right (the pool's own labels)")
    assert stage_summary({"selected_unique": 5, "selected_with_copies": 5, "pseudo_label_accuracy": None}) == \
        "kept 5 pool images"
    assert stage_summary({"stage_s": 3.0}) == ""
    assert stage_summary({"steps": 0, "images_per_s": None, "top1": None, "val_top1": None}) == "0 steps"
