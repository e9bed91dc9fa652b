"""report.md / report.html / plots/*.png from a tiny finished run, with and without robustness results."""
import json

import pytest
from PIL import Image

from conftest import ROOT, twin_student_overrides
from noisystudent.errors import UserError
from noisystudent.layout import RunLayout

# Two rounds, the no-noise ablation and fine-tuning: every optional kind of model appears. A low
# threshold so an undertrained teacher still selects pseudo-labels. About 2 s on 2 CPU cores.
OVERRIDES = ["rounds=2", "models=[ns_cnn_s]", "data.labeled.per_class=5", "variants=[]",
             "teacher.steps=0", "teacher.warmup_steps=null", "student.steps=0", "student.warmup_steps=null",
             "data.unlabeled.fraction=0.1", "teacher.epochs=2", "teacher.batch_size=16", "student.epochs=1",
             "student.batch_size=16", "student.ratio=2", "select.threshold=0.05", "evaluate.batch_size=128",
             "ablation_no_noise=true", "finetune.enabled=true", "finetune.epochs=1"]
BASE_PLOTS = {"accuracy", "per_class_delta", "confidence", "selection", "training_curves", "confusion", "pool_grid"}
ROBUSTNESS_PLOTS = {"robustness_corruptions", "robustness_fgsm"}
CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog")


def _fake_robustness(clean: float, slope: float) -> dict:
    """Shaped like `noisystudent.robustness.evaluate_robustness` output."""
    acc = {c: {str(s): max(0.0, clean - slope * s * (i + 1)) for s in range(1, 6)} for i, c in enumerate(CORRUPTIONS)}
    errors = {c: [1.0 - acc[c][str(s)] for s in range(1, 6)] for c in CORRUPTIONS}
    return {"num_images": 60, "clean_accuracy": clean, "corruptions": acc, "corruption_error": errors,
            "mean_corruption_error_unnormalized": sum(sum(e) / 5 for e in errors.values()) / len(errors),
            "fgsm": {"0.00392": clean * 0.8, "0.00784": clean * 0.6, "0.01569": clean * 0.3},
            "flip_rate": {"translate": 0.02 + slope, "brightness": 0.01 + slope}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import torch
    from noisystudent.config import load_config
    from noisystudent.pipeline import run
    d = tmp_path_factory.mktemp("report") / "run"
    # One thread: these models are tiny, and on a busy shared CPU extra threads only spin (5x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(load_config(ROOT / "configs" / "digits-demo.yaml", OVERRIDES), run_dir=d, report=False)
        yield d
    finally:
        torch.set_num_threads(threads)


def _check_written(run_dir, files, plots):
    lay = RunLayout(run_dir)
    if files is not None:
        assert set(files) == {lay.report_md, lay.report_html, *(lay.plots / f"{p}.png" for p in plots)}
    assert {p.stem for p in lay.plots.glob("*.png")} == plots               # nothing stale left over
    assert not [p for p in run_dir.rglob("*.tmp")]                           # atomic writes cleaned up
    for p in plots:
        with Image.open(lay.plots / f"{p}.png") as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 300
        assert (lay.plots / f"{p}.png").stat().st_size < 400_000
    md, page = lay.report_md.read_text(), lay.report_html.read_text()
    for p in plots:
        png = lay.rel(lay.plots / f"{p}.png")                                # as the report links it
        assert f"({png})" in md and f'src="{png}"' in page
    return md, page


def test_report_without_then_with_robustness(run_dir):
    from noisystudent.config import load_config
    from noisystudent.pipeline import run
    from noisystudent.report import write_report
    lay = RunLayout(run_dir)

    # 1) no robustness files: no robustness section, no robustness plots
    files = write_report(run_dir)
    md, page = _check_written(run_dir, files, BASE_PLOTS)
    assert "Robustness" not in md and "mCE" not in page
    summary = json.loads(lay.summary.read_text())
    assert {m["which"] for m in summary["models"]} == {"teacher", "student", "student_nonoise", "finetune"}
    assert md.startswith(f"# Noisy Student report: {summary['name']}")
    # The results table: one row per evaluated model, with summary.json's accuracies.
    for m in summary["models"]:
        row = next(line for line in md.splitlines() if line.startswith(f"| {m['round']} | {m['model']} | ")
                   and f" | {_role(m['which'])} | " in line)
        assert f"| {100 * m['top1']:.2f}% | {100 * m['top5']:.2f}% | {m['ece']:.4f} |" in row
        assert f"<td>{100 * m['top1']:.2f}%</td>" in page
    sel = summary["selection"][0]
    assert f"| {sel['selected_unique']} | {sel['selected_with_copies']} |" in md
    assert lay.rel(lay.model(1, "student")) in md and "train time" in md                    # timings table

    # 2) robustness results for the teacher and each student; the summary is rebuilt by rerunning
    #    (every stage is skipped), which adds mCE/mFR relative to the teacher.
    for (k, which), (clean, slope) in {(0, "teacher"): (0.5, 0.08), (1, "student"): (0.55, 0.05),
                                       (2, "student"): (0.6, 0.04), (1, "student_nonoise"): (0.52, 0.07)}.items():
        (lay.eval(k, which) / "robustness.json").write_text(
            json.dumps(_fake_robustness(clean, slope)))
    run(load_config(ROOT / "configs" / "digits-demo.yaml", OVERRIDES), run_dir=run_dir, report=False)
    files = write_report(run_dir)
    md, page = _check_written(run_dir, files, BASE_PLOTS | ROBUSTNESS_PLOTS)
    assert "## Robustness" in md and "<h2>Robustness</h2>" in page
    rob_rows = [line for line in md.split("## Robustness")[1].split("##")[0].splitlines()
                if line.startswith("| ") and "%" in line]
    assert len(rob_rows) == 4                                                # teacher + 3 students
    assert rob_rows[0].startswith("| 0 | ns_cnn_s | teacher | 50.00% |") and "| 100.0% |" in rob_rows[0]
    assert "FGSM ε=1/255" in md and "FGSM ε=4/255" in md

    # 3) robustness gone again (e.g. re-evaluated without it): its stale plots go too. This time
    #    the pipeline itself writes the report at the end of the run.
    for k, role in lay.training_stages():                                    # every evaluated model
        (lay.eval(k, role) / "robustness.json").unlink(missing_ok=True)
    run(load_config(ROOT / "configs" / "digits-demo.yaml", OVERRIDES), run_dir=run_dir, report=True)
    md, _ = _check_written(run_dir, None, BASE_PLOTS)
    assert "Robustness" not in md


def _role(which):
    from noisystudent.report import ROLE_LABEL
    return ROLE_LABEL[which]


def test_missing_summary_is_a_user_error(tmp_path):
    from noisystudent.report import write_report
    with pytest.raises(UserError, match="noisystudent run"):
        write_report(tmp_path)
    assert not RunLayout(tmp_path).report_md.exists()


def test_report_names_the_teacher_as_the_supervised_baseline_only_when_it_is(tmp_path):
    """A recipe that trains its teacher as the compute-matched supervised baseline (and so skips that
    stage) says so under the results; one whose teacher is trained otherwise does not."""
    import yaml
    from noisystudent.config import config_to_dict, load_config
    from noisystudent.report import write_report
    models = [{"round": 0, "which": "teacher", "top1": 0.8}, {"round": 1, "which": "student", "top1": 0.82}]
    scratch = twin_student_overrides(ROOT / "configs" / "fashion-mnist-1k.yaml")   # the teacher's twin
    for i, (over, expected) in enumerate([(scratch, True), ([*scratch, "teacher.steps=1000"], False),
                                          ([], False)]):      # the bundled recipe: its student starts from the teacher
        d = tmp_path / str(i)
        d.mkdir()
        cfg = load_config(ROOT / "configs" / "fashion-mnist-1k.yaml", over)
        RunLayout(d).config.write_text(yaml.safe_dump(config_to_dict(cfg)))
        (d / "summary.json").write_text(json.dumps({"name": "x", "models": models}))
        write_report(d)
        md = RunLayout(d).report_md.read_text()
        assert ("is trained as the compute-matched supervised baseline" in md) == expected


def test_per_class_change_shows_the_largest_moves_not_classes_that_did_not_move():
    """With more classes than a bar chart holds, the largest drops and gains only: a class whose
    accuracy did not change is not among them (100 classes, 2 moved down, 3 up)."""
    from noisystudent.report.plots import largest_moves
    deltas = [(f"c{i}", 0.0) for i in range(95)] + [("a", -100.0), ("b", -25.0), ("x", 10.0), ("y", 50.0), ("z", 5.0)]
    kept, note = largest_moves(deltas, 25)
    assert kept == [("a", -100.0), ("b", -25.0), ("z", 5.0), ("x", 10.0), ("y", 50.0)]
    assert note == "the 5 of 100 classes that moved"
    kept, note = largest_moves([(f"c{i}", float(i - 50)) for i in range(101)], 2)
    assert [v for _, v in kept] == [-50.0, -49.0, 49.0, 50.0] and note == "largest drops and gains of 101 classes"
