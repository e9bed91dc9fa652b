"""A user's own data (issue 16): nothing defaults to the digits demo, in_chans/image_size come from
the images, relative paths resolve from the config file's directory."""
from __future__ import annotations

import json

import pytest

from noisystudent.cli import main
from noisystudent.layout import RunLayout
from own_data import make_own_data

from conftest import ROOT

TINY_RUN = ["--set", "teacher.epochs=1", "--set", "student.epochs=1", "--set", "teacher.batch_size=8",
            "--set", "student.batch_size=4", "--set", "models=[ns_cnn_s, ns_cnn_s]", "--set", "device=cpu"]


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    return root, make_own_data(root)


def _err(capsys):
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("drop, key", [("unlabeled", "data.unlabeled"), ("test", "data.test"),
                                       ("labeled", "data.labeled")])
def test_a_missing_data_section_stops_naming_it(own, tmp_path, capsys, drop, key):
    root, _ = own
    secs = {"labeled": "{kind: imagefolder, root: train}", "unlabeled": "{kind: folder, root: pool}",
            "test": "{kind: imagefolder, root: test}"}
    text = "rounds: 1\ndata:\n" + "".join(f"  {k}: {v}\n" for k, v in secs.items() if k != drop)
    cfg = _write(root / f"no-{drop}.yaml", text)
    rc = main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), *TINY_RUN])
    assert rc == 2
    line = _err(capsys)
    assert f"config key '{key}' is required" in line
    assert not (tmp_path / "r").exists()          # stopped before anything was written


def test_in_chans_and_image_size_come_from_the_images(own, caplog):
    import logging
    from noisystudent.config import load_config
    from noisystudent.stages.common import RunContext
    root, _ = own
    cfg = load_config(_write(root / "infer.yaml", "data:\n  labeled: {kind: imagefolder, root: train}\n"
                             "  unlabeled: {kind: folder, root: pool}\n  test: {kind: imagefolder, root: test}\n"))
    assert cfg.data.in_chans is None and cfg.data.image_size is None
    with caplog.at_level(logging.INFO, logger="noisystudent"):
        ctx = RunContext(cfg, root / "run", "cpu")
    assert ctx.cfg.data.in_chans == 3 and ctx.cfg.data.image_size == 12
    assert ctx.labeled.load(0).shape == (12, 12, 3)
    assert "data.in_chans not set: 3" in caplog.text
    # an explicit in_chans: 1 on colour images is a warning, not silent
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="noisystudent"):
        RunContext(load_config(root / "infer.yaml", ["data.in_chans=1"]), root / "run", "cpu")
    assert "converted to grayscale" in caplog.text


def test_mixed_sizes_need_image_size(tmp_path, capsys):
    from PIL import Image
    make_own_data(tmp_path)
    Image.new("RGB", (20, 14), (200, 40, 40)).save(tmp_path / "train" / "cat" / "big.png")
    cfg = _write(tmp_path / "c.yaml", "data:\n  labeled: {kind: imagefolder, root: train}\n"
                 "  unlabeled: {kind: folder, root: pool}\n  test: {kind: imagefolder, root: test}\n")
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), *TINY_RUN]) == 2
    assert "config key 'data.image_size' is required" in _err(capsys)


def test_relative_roots_resolve_from_the_config_file(own, tmp_path, monkeypatch, capsys):
    from noisystudent.config import load_config
    root, data = own
    sub = root / "cfgs"
    sub.mkdir(exist_ok=True)
    cfg_path = _write(sub / "c.yaml", "data:\n  labeled: {kind: imagefolder, root: ../train}\n"
                      "  unlabeled: {kind: folder, root: ../pool}\n  test: {kind: imagefolder, root: ../nosuch}\n")
    monkeypatch.chdir(tmp_path)                  # anywhere else
    cfg = load_config(cfg_path)
    assert cfg.data.labeled.root == str(data["train"])
    # bundled configs keep their paths (relative to the repository root)
    assert load_config(__import__("noisystudent.cli").cli.resolve_config_path("fashion-mnist-1k")
                       ).data.test.root == "../shared/data/fashion-mnist"
    rc = main(["run", str(cfg_path), "--run-dir", str(tmp_path / "r"),
               *TINY_RUN])
    assert rc == 2
    line = _err(capsys)
    assert str(root / "nosuch") in line and "resolves from that file's directory" in line


def test_one_class_is_refused(tmp_path, capsys):
    make_own_data(tmp_path)
    import shutil
    for c in ("dog", "ship"):
        shutil.rmtree(tmp_path / "train" / c)
        shutil.rmtree(tmp_path / "test" / c)
    cfg = _write(tmp_path / "c.yaml", "data:\n  labeled: {kind: imagefolder, root: train}\n"
                 "  unlabeled: {kind: folder, root: pool}\n  test: {kind: imagefolder, root: test}\n")
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), *TINY_RUN]) == 2
    assert "images of only 1 class (cat); a classifier needs at least 2 classes" in _err(capsys)


def test_own_data_start_to_finish(tmp_path, capsys):
    """The issue's done-when: init, edit only the paths, the whole loop, predict, export (3 formats),
    and a pretrained start from a local weights file."""
    import csv
    import json
    # 32 px: resnet18 (the starter's model) downsamples 32x; on smaller images its last stages see 1x1
    # maps and training turns NaN on some seeds (warned: runwarnings.feature_map_collapse)
    data = make_own_data(tmp_path / "mydata", size=32)
    assert main(["init", str(tmp_path / "proj")]) == 0
    cfg = tmp_path / "proj" / "config.yaml"
    text = cfg.read_text()
    for old, new in (("root: train}", "root: ../mydata/train}"), ("root: unlabeled}", "root: ../mydata/pool}"),
                     ("root: test}", "root: ../mydata/test}")):
        assert old in text
        text = text.replace(old, new)
    cfg.write_text(text)
    run_dir = tmp_path / "run"
    lay = RunLayout(run_dir)
    # the starter counts optimizer steps (5,000 each); a few here
    fast = ["--set", "teacher.steps=6", "--set", "teacher.warmup_steps=1", "--set", "student.steps=3",
            "--set", "student.warmup_steps=1", "--set", "teacher.batch_size=8", "--set", "student.batch_size=4",
            "--set", "device=cpu"]
    assert main(["config", str(cfg)]) == 0
    shown = capsys.readouterr().out
    assert "in_chans: 3" in shown and "image_size: 32" in shown and str(data["pool"]) in shown
    # a misspelt model is named by `config`, before any run (the config is still printed)
    assert main(["config", str(cfg), "--no-data", "--set", "models=[resnet18,resnet19]"]) == 2
    out, err = capsys.readouterr()
    assert "models: [resnet18, resnet19]" in out and "config key 'models[1]': unknown model 'resnet19'" in err
    assert main(["run", str(cfg), "--run-dir", str(run_dir), *fast]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "student" in out and lay.report_html.is_file()
    import re
    assert re.search(r"teacher epoch (\d+)/\1: loss", lay.run_log.read_text())
    page = lay.report_html.read_text()
    assert "top-5" not in page
    assert lay.rel(lay.plots / "confusion.png") in page and lay.rel(lay.plots / "pool_grid.png") in page
    import shutil
    if shutil.which("chromium"):           # the report as a browser shows it: every figure loads, not blank
        import importlib.util
        from conftest import ROOT
        spec = importlib.util.spec_from_file_location("shot", ROOT / "benchmarks" / "report_screenshot.py")
        shot = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shot)
        png = shot.screenshot(lay.report_html, tmp_path / "shot.png", height=2000)
        assert shot.check(lay.report_html, png) == []
    model = lay.model(1, "student") / "model.pt"

    # predict: one row per pool image, top-k = min(5, classes)
    preds = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", str(model), "--data", str(data["pool"]), "--out", str(preds)]) == 0
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == data["pool_images"] and {r["pred_class"] for r in rows} <= {"cat", "dog", "ship"}
    assert "top3_prob" in rows[0] and "top4_prob" not in rows[0]
    from noisystudent import predict
    assert len(predict(model, f"imagefolder:{data['test']}")) == 12
    # arrays: as their files would decode (RGBA over white, gray to RGB); a torch layout or floats stop
    import numpy as np
    from PIL import Image
    from noisystudent.errors import UserError
    rgba = np.zeros((2, 32, 32, 4), np.uint8)
    rgba[:, 8:24, 8:24] = (200, 30, 30, 255)
    for i, a in enumerate(rgba):
        Image.fromarray(a, "RGBA").save(tmp_path / f"rgba{i}.png")
    by_file = predict(model, [str(tmp_path / f"rgba{i}.png") for i in range(2)])
    by_array = predict(model, rgba)
    assert [r["confidence"] for r in by_array] == pytest.approx([r["confidence"] for r in by_file], abs=1e-5)
    assert len(predict(model, rgba[..., 0])) == 2 and len(predict(model, list(rgba[..., :3]))) == 2
    with pytest.raises(UserError, match="channels-first"):
        predict(model, rgba[..., :3].transpose(0, 3, 1, 2))
    with pytest.raises(UserError, match="uint8"):
        predict(model, rgba[..., :3] / 255.0)
    with pytest.raises(UserError, match="one image"):
        predict(model, rgba[0, ..., :3])
    assert len(predict(model, rgba[0, ..., :3][None])) == 1
    # batch size and decode processes change the speed, not the predictions (auto: 256 and none on a CPU)
    other = tmp_path / "preds-b3-w2.csv"
    assert main(["predict", "--checkpoint", str(model), "--data", str(data["pool"]), "--out", str(other),
                 "--batch-size", "3", "--workers", "2"]) == 0
    again = list(csv.DictReader(other.open()))
    assert [r["sample_id"] for r in again] == [r["sample_id"] for r in rows]
    assert [r["pred_class"] for r in again] == [r["pred_class"] for r in rows]
    assert max(abs(float(a["confidence"]) - float(b["confidence"])) for a, b in zip(again, rows)) < 1e-5

    # export: all three formats, each reloaded and compared inside export_model; compare again here
    assert main(["export", "--checkpoint", str(model), "--format", "all"]) == 0
    import numpy as np
    import onnxruntime as ort
    import torch
    from noisystudent.stages.modelfile import load_model
    m, meta = load_model(model)
    x = torch.randn(3, 3, 32, 32)
    ref = m(x).detach()
    ts = torch.jit.load(str(model.with_name("model.torchscript.pt")))(x).detach()
    onx = ort.InferenceSession(str(model.with_name("model.onnx"))).run(None, {"images": x.numpy()})[0]
    assert torch.allclose(ts, ref, atol=1e-5) and np.allclose(onx, ref.numpy(), atol=1e-4)
    assert json.loads(model.with_name("model.safetensors.json").read_text())["classes"] == ["cat", "dog", "ship"]

    # a pretrained start from a local timm weights file (10-class head: re-initialised for 3 classes)
    from safetensors.torch import save_file
    from noisystudent.models import create_model
    torch.manual_seed(1)
    src = create_model("resnet18", 10, 3)
    weights = tmp_path / "proj" / "resnet18-local.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights))
    cfg.write_text(text.replace("  # pretrained_file: weights.safetensors", "  pretrained_file: resnet18-local.safetensors"))
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "warm"), *fast, "--set", "teacher.steps=0", "--set", "teacher.warmup_steps=0",
                 "--set", "teacher.epochs=0"]) == 0
    warm_teacher = RunLayout(tmp_path / "warm").model(0, "teacher")
    info = json.loads((warm_teacher / "stage.json").read_text())["info"]
    assert "classifier re-initialised" in info["warm_start"] and "resnet18-local.safetensors" in info["warm_start"]
    warm, _ = load_model(warm_teacher / "model.pt")
    assert torch.equal(warm.conv1.weight, src.conv1.weight)          # epochs=0: the loaded weights as they are


def test_run_log_epoch_lines_and_sigterm(tmp_path):
    """run.log in the run directory with one line per epoch (not a terminal here); SIGTERM says what
    Ctrl-C says, and the rerun resumes."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    run_dir = tmp_path / "r"
    args = [sys.executable, "-m", "noisystudent", "run", "digits-demo", "--run-dir", str(run_dir),
            "--set", "rounds=1", "--set", "variants=[]", "--set", "teacher.steps=0", "--set", "teacher.warmup_steps=null",
            "--set", "teacher.epochs=400", "--set", "student.steps=0", "--set", "student.warmup_steps=null",
            "--set", "student.epochs=1", "--set", "device=cpu"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:                                  # a failed check must not leave a 400-epoch run behind
        deadline = time.time() + 600      # generous: on a loaded shared CPU start-up alone can take minutes
        log = RunLayout(run_dir).run_log
        while time.time() < deadline and not (log.is_file() and "teacher epoch 2/400" in log.read_text()):
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.2)
        assert log.is_file() and "teacher epoch 2/400" in log.read_text(), "no epoch finished in 10 min"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM): finished work is kept; rerun the same command to resume" in err
    text = log.read_text()
    line = next(ln for ln in text.splitlines() if "teacher epoch 1/400" in ln)
    for part in ("loss ", "lr ", "img/s", "left in the stage", "left in the run"):
        assert part in line, line
    assert "terminated (SIGTERM)" in text.splitlines()[-1]          # the log ends saying why it stopped
    assert (RunLayout(run_dir).model(0, "teacher") / "checkpoint.pt").is_file()


def _own_config(tmp_path, extra: str = ""):
    make_own_data(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  labeled: {kind: imagefolder, root: train}\n  unlabeled: {kind: folder, root: pool}\n"
                   "  test: {kind: imagefolder, root: test}\ndevice: cpu\n" + extra)
    return cfg


@pytest.mark.parametrize("ckpt_classes", [2, 3])
def test_teacher_init_checkpoint(tmp_path, ckpt_classes):
    """teacher.init_checkpoint: the user's own model.pt; a head for another class count is
    re-initialised, one for the same classes is kept (every tensor as saved)."""
    import json
    import torch
    from noisystudent.models import create_model
    from noisystudent.stages.modelfile import load_model, save_model
    torch.manual_seed(5)
    old = create_model("ns_cnn_s", ckpt_classes, 3)
    save_model(tmp_path / "old.pt", old, {"model_name": "ns_cnn_s", "num_classes": ckpt_classes})
    cfg = _own_config(tmp_path, "teacher: {model: ns_cnn_s, epochs: 0, init_checkpoint: old.pt}\n")
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "r")]) == 0
    tdir = RunLayout(tmp_path / "r").model(0, "teacher")
    info = json.loads((tdir / "stage.json").read_text())["info"]
    assert str(tmp_path / "old.pt") in info["warm_start"]
    assert ("classifier re-initialised" in info["warm_start"]) == (ckpt_classes != 3)
    new, meta = load_model(tdir / "model.pt")
    assert meta["classes"] == ["cat", "dog", "ship"] and new.fc.weight.shape[0] == 3
    for k, v in old.state_dict().items():         # epochs=0: the loaded weights as they are
        if not k.startswith("fc."):
            assert torch.equal(new.state_dict()[k], v), k
    assert torch.equal(new.fc.weight, old.fc.weight) == (ckpt_classes == 3)


def _fake_timm_cache(root, model: str):
    """timm's pretrained weights for `model` as huggingface_hub keeps them in its cache (refs/main ->
    snapshots/REV/model.safetensors), with random weights: nothing can be downloaded here."""
    import timm
    import torch
    from safetensors.torch import save_file
    hub_id = timm.create_model(model, pretrained=False).pretrained_cfg["hf_hub_id"]
    torch.manual_seed(7)
    ref = timm.create_model(model, pretrained=False)          # 1000 ImageNet classes
    rev = "0" * 40
    d = root / f"models--{hub_id.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(rev)
    (d / "snapshots" / rev).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(d / "snapshots" / rev / "model.safetensors"))
    return ref


def test_student_pretrained_from_the_local_timm_cache(tmp_path, monkeypatch):
    """student.pretrained: true takes timm's weights from the local cache, offline; the 1000-class
    ImageNet head is re-initialised for the 3 classes."""
    import json
    import torch
    from huggingface_hub import constants
    ref = _fake_timm_cache(tmp_path / "hub", "test_efficientnet")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = _own_config(tmp_path, "models: [ns_cnn_s, test_efficientnet]\nteacher: {epochs: 1, batch_size: 8}\n"
                      "student: {epochs: 0, pretrained: true}\n")
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-report"]) == 0
    sdir = RunLayout(tmp_path / "r").model(1, "student")
    info = json.loads((sdir / "stage.json").read_text())["info"]
    assert "timm:test_efficientnet" in info["warm_start"] and "classifier re-initialised" in info["warm_start"]
    from noisystudent.stages.modelfile import load_model
    student, _ = load_model(sdir / "model.pt")
    assert torch.equal(student.conv_stem.weight, ref.conv_stem.weight)
    assert student.classifier.weight.shape[0] == 3


def test_the_starters_validation_carve_works_as_written(tmp_path):
    """Uncommenting the template's two val lines (and nothing else but the paths) gives a validation
    set of N images per class, disjoint from the labeled images, which keep the rest of train/."""
    from noisystudent.config import load_config
    from noisystudent.stages.common import RunContext
    make_own_data(tmp_path / "mydata", per_class=6)
    assert main(["init", str(tmp_path / "proj")]) == 0
    cfg = tmp_path / "proj" / "config.yaml"
    lines = []
    for line in cfg.read_text().splitlines():
        if line.startswith("  labeled:   {"):
            continue                                        # replaced by the carve's labeled line
        if line.startswith("  # val:") or line.startswith("  # labeled:"):
            line = "  " + line[4:]
        lines.append(line.replace("per_class: 20", "per_class: 2").replace("root: train", "root: ../mydata/train")
                     .replace("root: unlabeled}", "root: ../mydata/pool}").replace("root: test}", "root: ../mydata/test}"))
    cfg.write_text("\n".join(lines) + "\n")
    ctx = RunContext(load_config(cfg), tmp_path / "run")
    lab, val = set(ctx.labeled.ids), set(ctx.val.ids)
    assert len(val) == 2 * 3 and len(lab) == 4 * 3 and not (lab & val)
    ctx.check_disjoint()


@pytest.mark.parametrize("recipe", ["fashion-mnist-1k", "cifar10-4k-fast"])
def test_init_from_a_bundled_recipe_runs_on_your_folders(tmp_path, capsys, recipe):
    """`init --recipe NAME`: the recipe's settings (steps, noise, init from teacher, variants) with the
    three folders as its data and a val set carved from train/; only the roots need editing. An
    unknown recipe is one line naming the ones there are."""
    from noisystudent.config import load_config
    make_own_data(tmp_path / "mydata", per_class=6, size=16)
    assert main(["init", str(tmp_path / "proj"), "--recipe", recipe]) == 0
    cfg_path = tmp_path / "proj" / "config.yaml"
    text = cfg_path.read_text()
    assert f"  # image_size: {load_config(ROOT / 'configs' / f'{recipe}.yaml').data.image_size}   #" in text   # a hint
    for old, new in (("root: train,", "root: ../mydata/train,"), ("root: unlabeled}", "root: ../mydata/pool}"),
                     ("root: test}", "root: ../mydata/test}"), ("per_class: 20}", "per_class: 2}")):
        assert old in text
        text = text.replace(old, new)
    cfg_path.write_text(text)
    bundled, cfg = load_config(ROOT / "configs" / f"{recipe}.yaml"), load_config(cfg_path)
    assert cfg.name == "my-run" and cfg.models == bundled.models and cfg.student == bundled.student
    assert cfg.teacher == bundled.teacher and cfg.variants == bundled.variants
    assert (cfg.data.image_size, cfg.data.in_chans, cfg.data.mean) == (None, None, None)    # read from the images
    assert (cfg.data.hflip, cfg.data.crop_padding) == (bundled.data.hflip, bundled.data.crop_padding)
    run_dir = tmp_path / "run"
    tiny = ["--set", "teacher.steps=4", "--set", "teacher.warmup_steps=1", "--set", "student.steps=2",
            "--set", "student.warmup_steps=1", "--set", "variants=[]", "--set", "device=cpu"]
    assert main(["run", str(cfg_path), "--run-dir", str(run_dir), "--no-report", *tiny]) == 0, capsys.readouterr().err
    summary = json.loads(RunLayout(run_dir).summary.read_text())
    assert {(m["round"], m["which"]) for m in summary["models"]} >= {(0, "teacher"), (1, "student")}
    assert main(["init", str(tmp_path / "other"), "--recipe", "no-such-recipe"]) == 2
    assert "config not found: no-such-recipe (a YAML path, or one of: " in capsys.readouterr().err


def test_predict_and_evaluate_keep_images_as_large_as_the_run_did(tmp_path):
    """`predict` (and `evaluate`) on a model file shrink large images to the run's max_side before
    resizing them to the model's size, as the run's label and eval stages did: the same pixels, so
    the same probabilities (before, a 1,200 px image went straight to the model's size)."""
    import numpy as np
    import torch
    from noisystudent.data.decode import shrink
    from noisystudent.models import create_model
    from noisystudent.prediction import predict
    from noisystudent.stages.modelfile import model_max_side
    meta = {"image_size": 32, "in_chans": 3, "classes": ["a", "b", "c"], "mean": [0.5] * 3, "std": [0.25] * 3,
            "config": {"data": {"image_size": 32}, "finetune": {"enabled": False, "image_size": 300}}}
    assert model_max_side(meta) == 512                              # 4 x max(32, 128)
    assert model_max_side({**meta, "config": {"finetune": {"enabled": True, "image_size": 160}}}) == 640
    assert model_max_side({k: v for k, v in meta.items() if k != "config"}, 300) == 1200   # evaluate --image-size
    torch.manual_seed(0)
    model = create_model("ns_cnn_s", 3).eval()
    rng = np.random.default_rng(0)
    big = [rng.integers(0, 256, (1200, 900, 3), dtype=np.uint8) for _ in range(3)]
    got = predict((model, meta), big, top_k=3)
    want = predict((model, meta), [shrink(a, 512) for a in big], top_k=3)
    assert [r["top_probs"] for r in got] == [r["top_probs"] for r in want]
    direct = predict((model, {**meta, "config": {"data": {"image_size": 300}}}), big, top_k=3)   # max_side 1200
    assert [r["top_probs"] for r in direct] != [r["top_probs"] for r in got]
