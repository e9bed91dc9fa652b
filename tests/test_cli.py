"""The CLI as a user meets it: help texts, one-line errors with exit code 2, train -> evaluate."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REL, TINY, cli, rel
from noisystudent.layout import RunLayout


@pytest.mark.parametrize("cmd", ["run", "demo", "train", "label", "select", "student", "finetune", "evaluate", "report",
                                 "init", "config", "predict", "export"])
def test_every_command_has_help(cmd, capsys):
    """In-process (argparse exits 0 after printing); one subprocess below checks the entry point."""
    from noisystudent.cli import main
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "usage: noisystudent" in capsys.readouterr().out


def test_the_entry_point_prints_help():
    r = cli("--help", real=True)
    assert r.returncode == 0 and "usage: noisystudent" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, fragment", [
    (["run", "no-such-config"], "config not found: no-such-config (a YAML path, or one of: cifar10-4k, cifar10-4k-fast, digits-demo"),
    (["run", "digits-demo", "--set", "teacher.epoch=3"], "unknown config key 'teacher.epoch' (did you mean 'teacher.epochs'?)"),
    (["run", "digits-demo", "--set", "models=[resnet1800]"], "unknown model 'resnet1800'; did you mean: resnet18"),
    (["evaluate"], "evaluate needs --checkpoint MODEL.pt and --data DIR|KIND:PATH[:SPLIT]"),
    (["evaluate", "--checkpoint", "nope.pt", "--data", "digits:test"], "checkpoint not found: nope.pt"),
    (["report", "/nonexistent/run"], "/nonexistent/run"),
])
def test_user_errors_are_one_line(args, fragment, tmp_path):
    if args[0] in ("run",):
        args = [*args, "--run-dir", str(tmp_path / "r")]
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and fragment in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_evaluate_data_takes_a_bare_folder_as_an_imagefolder(tmp_path):
    """`--data DIR` (as predict takes it): evaluate needs labels, and class subfolders are the one
    folder layout that has them; a spec that is neither a folder nor KIND:PATH says both."""
    from noisystudent.cli import parse_source_spec
    from noisystudent.errors import UserError
    (tmp_path / "test" / "cat").mkdir(parents=True)
    spec = parse_source_spec(str(tmp_path / "test"))
    assert (spec.kind, spec.root) == ("imagefolder", str(tmp_path / "test"))
    assert parse_source_spec("idx:data/fmnist:test").split == "test"
    with pytest.raises(UserError, match="'nowhere': not a folder; expected a folder of class subfolders or KIND:PATH"):
        parse_source_spec("nowhere")


def test_train_then_evaluate_checkpoint(tmp_path):
    run_dir = tmp_path / "r"
    lay = RunLayout(run_dir)
    sets = [x for o in TINY for x in ("--set", o)]
    r = cli("train", "digits-demo", "--run-dir", str(run_dir), *sets, "--set", "evaluate.flip_tta=true",
            "--set", "evaluate.shift_tta=1")
    assert r.returncode == 0, r.stderr
    assert "teacher ns_cnn_s: top-1" in r.stdout
    ck = lay.model(0, "teacher") / "model.pt"
    # the stage's test-time views (mirror, +-1 px shifts) given as flags: the stage's numbers exactly
    r = cli("evaluate", "--checkpoint", str(ck), "--data", "digits:test", "--out", str(tmp_path / "e.json"),
            "--flip-tta", "--shift-tta", "1")
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / "e.json").read_text())
    stage_eval = json.loads((lay.eval(0, "teacher") / "eval.json").read_text())
    assert (stage_eval["flip_tta"], stage_eval["shift_tta"]) == (ev["flip_tta"], ev["shift_tta"]) == (True, 1)
    assert ev["top1"] == stage_eval["top1"] and ev["nll"] == stage_eval["nll"] and ev["num_images"] == 297
    assert len(ev["confusion_matrix"]) == 10 and set(ev["per_class_accuracy"]) == {str(i) for i in range(10)}
    assert ev["data"] == "digits:test" and ev["checkpoint"] == str(ck)
    # without --out: a file named after the data beside the checkpoint (two sets, two files)
    r = cli("evaluate", "--checkpoint", str(ck), "--data", "digits:train")
    assert r.returncode == 0, r.stderr
    assert (ck.parent / "eval-digits-train.json").is_file() and "eval-digits-train.json" in r.stdout
    # by default the views the run evaluated with (its config, saved in the model file); --no-flip-tta
    # --shift-tta 0 asks for the image alone
    assert (json.loads((ck.parent / "eval-digits-train.json").read_text())["flip_tta"]) is True
    r = cli("evaluate", "--checkpoint", str(ck), "--data", "digits:test", "--out", str(tmp_path / "d.json"))
    assert r.returncode == 0 and json.loads((tmp_path / "d.json").read_text())["top1"] == stage_eval["top1"]
    r = cli("evaluate", "--checkpoint", str(ck), "--data", "digits:test", "--out", str(tmp_path / "one.json"),
            "--no-flip-tta", "--shift-tta", "0")
    assert r.returncode == 0, r.stderr
    one = json.loads((tmp_path / "one.json").read_text())
    assert (one["flip_tta"], one["shift_tta"]) == (False, 0) and one["nll"] != stage_eval["nll"]
    r = cli("evaluate", "--checkpoint", str(ck), "--data", "digits:test", "--shift-tta", "-1")
    assert r.returncode == 2 and "--shift-tta -1: must be >= 0" in r.stderr
    # --resume with a finished teacher is fine; --resume on an empty dir is a clear error
    r = cli("train", "digits-demo", "--run-dir", str(tmp_path / "empty"), "--resume", *sets)
    assert r.returncode == 2 and "nothing to resume" in r.stderr
    # a stage whose inputs are missing says which
    r = cli("student", "digits-demo", "--run-dir", str(run_dir), "--round", "1", *sets)
    assert r.returncode == 2 and f"needs {rel(REL.selection(1))} to be finished first" in r.stderr
    # a plain rerun skips the finished teacher; --restart trains it again from scratch
    model = lay.model(0, "teacher") / "model.pt"
    before = (model.stat().st_ino, model.stat().st_mtime_ns)
    assert cli("train", "digits-demo", "--run-dir", str(run_dir), *sets).returncode == 0
    assert (model.stat().st_ino, model.stat().st_mtime_ns) == before
    r = cli("train", "digits-demo", "--run-dir", str(run_dir), "--restart", *sets)
    assert r.returncode == 0, r.stderr
    assert (model.stat().st_ino, model.stat().st_mtime_ns) != before
    assert len((lay.model(0, "teacher") / "metrics.jsonl").read_text().splitlines()) == 8   # epochs, not 16


def test_finetune_runs_at_the_new_resolution(tmp_path):
    from noisystudent.config import load_config
    from noisystudent.pipeline import run
    cfg = load_config("configs/digits-demo.yaml", [*TINY, "rounds=1", "ablation_no_noise=false",
                                                  "finetune.enabled=true", "finetune.image_size=12",
                                                  "finetune.epochs=1", "finetune.freeze=1"])
    lay = RunLayout(tmp_path / "r")
    summary = run(cfg, run_dir=lay.root, report=False)
    ft = [m for m in summary["models"] if m["which"] == "finetune"]
    assert [m["round"] for m in ft] == [0, 1] and all(m["image_size"] == 12 for m in ft)
    info = json.loads((lay.model(1, "finetune") / "stage.json").read_text())["info"]
    assert info["image_size"] == 12 and info["frozen_modules"] > 0
    # the fine-tuned file loads into a fresh architecture (frozen BN converted back)
    from noisystudent.stages import load_model
    m, meta = load_model(lay.model(1, "finetune") / "model.pt")
    assert meta["image_size"] == 12


@pytest.mark.parametrize("args, fragment", [
    (["--batch-size", "0"], "argument --batch-size: must be a count >= 1 or 'auto', not '0'"),
    (["--workers", "many"], "argument --workers: must be a count >= 0 or 'auto', not 'many'"),
    (["--workers", "-1"], "argument --workers: must be a count >= 0 or 'auto', not '-1'"),
])
def test_predict_counts_are_a_number_or_auto(args, fragment, capsys):
    from noisystudent.cli import main
    with pytest.raises(SystemExit) as e:
        main(["predict", "--checkpoint", "m.pt", "--data", "d", "--out", "p.csv", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and "Traceback" not in err


def test_a_reader_that_stops_early_is_no_internal_error(tmp_path, monkeypatch, capsys):
    """`noisystudent init DIR | head -1`: the pipe closes while the CLI still prints; the config is
    written whole, the exit is 141 (SIGPIPE's), and no 'internal error' is reported."""
    import sys
    from noisystudent.cli import main

    class ClosedPipe:
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["init", str(tmp_path / "p")]) == 141
    assert "internal error" not in capsys.readouterr().err
    assert (tmp_path / "p" / "config.yaml").read_text().startswith("#")


def test_every_data_file_of_the_package_ships_in_the_wheel():
    """`pip install noisystudent` (a wheel, not this checkout) carries only the .py files and the
    package-data globs of pyproject.toml: the bundled recipes and the starter template must match
    one, or `init --recipe` / `run cifar10-4k-fast` fail after a non-editable install. Checked by
    hand once: `pip wheel .` then `noisystudent init`, `config` and `demo` from that wheel."""
    import fnmatch
    import tomllib
    from pathlib import Path
    import noisystudent
    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["noisystudent"]
    pkg = Path(noisystudent.__file__).parent
    data = [p.relative_to(pkg).as_posix() for p in pkg.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert any(d.startswith("configs/") for d in data) and any(d.startswith("templates/") for d in data)
    assert [d for d in data if not any(fnmatch.fnmatch(d, g) for g in globs)] == []


SPIN_POLICY = "import noisystudent.cli, torch"      # the console script's order: cli first, then whatever imports torch


@pytest.mark.parametrize("user, spin", [(None, "'0'"), ("ACTIVE", "'30000000000'")])
def test_the_command_makes_openmp_threads_sleep_unless_the_user_chose(user, spin):
    # libgomp shows its settings at load (OMP_DISPLAY_ENV); a sleeping wait is a spin count of 0.
    # Unset, libgomp spins 300,000 times after each parallel region, which starves a second run.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **({"OMP_WAIT_POLICY": user} if user else {}))
    r = subprocess.run([sys.executable, "-c", SPIN_POLICY], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    shown = [x.strip() for x in r.stderr.splitlines() if x.strip().startswith("GOMP_SPINCOUNT")]
    if not shown:
        pytest.skip("this torch build uses another OpenMP than libgomp (e.g. macOS/Windows wheels), "
                    "which has no spin count to show")
    assert shown == [f"GOMP_SPINCOUNT = {spin}"]


def test_importing_the_command_line_does_not_import_torch():
    # what lets cli.py choose the wait policy above: torch is not loaded before it
    code = "import sys, noisystudent.cli; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_every_public_name_of_the_package_resolves():
    # the API is imported lazily (above): __all__, the lazy table and the modules must agree
    import noisystudent
    assert set(noisystudent.__all__) == set(noisystudent._API) | {"__version__"}
    for name in noisystudent.__all__:
        assert getattr(noisystudent, name) is not None, name
    assert set(noisystudent.__all__) <= set(dir(noisystudent))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        noisystudent.nothing
