"""Bad input gets one clear line (exit code != 0, no traceback) and leaves no partial artifact.

Most cases run the CLI in a subprocess, as a user meets them, on tiny generated image folders
(3 classes, 8x8 PNGs) with a tiny YAML config. Disk-full, divergence after a good epoch
are checked in-process, where the fault can be injected.
"""
from __future__ import annotations

import errno
import json
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import cli

from noisystudent.errors import UserError
from noisystudent.layout import RunLayout

CLASSES = ["cat", "dog", "fox"]
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------
# fixtures: image folders and a config

def _img(c: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 60, (8, 8, 3)).astype(np.uint8)
    a[:, :, c] += 150                       # the class is the dominant channel
    im = Image.fromarray(a)
    return im if mode == "RGB" else im.convert(mode)


def make_data(root: Path, *, train: int = 6, test: int = 3, pool: int = 12, test_classes=CLASSES) -> Path:
    for split, n, classes in (("train", train, CLASSES), ("test", test, test_classes)):
        for c, name in enumerate(CLASSES):
            if name not in classes:
                continue
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _img(c, 100 * c + i + (0 if split == "train" else 50)).save(d / f"{i}.png")
    (root / "pool").mkdir(parents=True, exist_ok=True)
    for i in range(pool):
        _img(i % 3, 1000 + i).save(root / "pool" / f"{i:03d}.png")
    return root


def write_cfg(path: Path, data: Path, **sections) -> Path:
    """configs/digits-demo.yaml's shape, on image folders: 3-channel 8x8, one round, a few epochs."""
    cfg = {
        "name": "tiny-folders", "seed": 0, "rounds": 1, "models": ["ns_cnn_s", "ns_cnn_s"],
        "data": {"labeled": {"kind": "imagefolder", "root": str(data / "train")},
                 "unlabeled": {"kind": "folder", "root": str(data / "pool")},
                 "test": {"kind": "imagefolder", "root": str(data / "test")},
                 "image_size": 8, "in_chans": 3, "crop_padding": 1},
        "teacher": {"epochs": 2, "batch_size": 6, "lr": 0.05},
        "student": {"epochs": 1, "batch_size": 4, "ratio": 2, "lr": 0.05},
        "label": {"shard_size": 8},
        "select": {"threshold": 0.0},
    }
    for key, value in sections.items():       # e.g. data__bad_images="skip"
        node, parts = cfg, key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def truncate(p: Path) -> None:
    """Keep the first half of an image file (a copy cut short by a full disk or a killed download)."""
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def run(cfg: Path, run_dir: Path, *sets: str):
    args = ["run", str(cfg), "--run-dir", str(run_dir), "--no-report"]
    for s in sets:
        args += ["--set", s]
    return cli(*args, env=THREADS)


def assert_one_line_error(r, fragment: str) -> str:
    """Exit code != 0, exactly one `error:` line holding `fragment`, and no traceback."""
    assert r.returncode != 0, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in r.stderr and '  File "' not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == errors[0]       # the last thing said
    return errors[0]


def assert_no_partial(run_dir: Path) -> None:
    """No temp file, no summary, and every stage marked done has its outputs intact."""
    if not run_dir.exists():
        return
    assert sorted(run_dir.rglob("*.tmp")) == []
    assert not RunLayout(run_dir).summary.exists()
    for rec_path in [d / "stage.json" for d in RunLayout(run_dir).stage_dirs()]:
        rec = json.loads(rec_path.read_text())
        if rec["status"] == "done":
            assert all((rec_path.parent / f).is_file() for f in rec["outputs"]), rec_path


def stage_info(stage: Path) -> dict:
    """The stage record of the stage folder `stage` (a RunLayout path)."""
    return json.loads((stage / "stage.json").read_text())


# ------------------------------------------------------------------------------------------------
# image files

def test_corrupt_pool_images_are_skipped_and_counted(data, tmp_path):
    truncate(data / "pool" / "003.png")
    (data / "pool" / "007.png").write_bytes(b"this is not a PNG")
    r = run(write_cfg(tmp_path / "c.yaml", data), tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "skipped 2 undecodable pool image(s) of 12" in r.stderr
    lay = RunLayout(tmp_path / "run")
    info = stage_info(lay.labels(1))["info"]
    assert info["skipped_images"] == 2 and info["rows"] == 10
    sel = json.loads((lay.selection(1) / "selection.json").read_text())
    assert sel["pool_skipped_images"] == 2


@pytest.mark.parametrize("split", ["train", "test"])
def test_corrupt_labeled_or_test_image_fails_before_anything_is_written(data, tmp_path, split):
    truncate(data / split / "dog" / "1.png")
    r = run(write_cfg(tmp_path / "c.yaml", data), tmp_path / "run")
    line = assert_one_line_error(r, f"{data / split / 'dog' / '1.png'}: cannot decode image")
    assert "set data.bad_images=skip" in line
    assert not (tmp_path / "run").exists()


def test_corrupt_labeled_image_with_skip_policy_trains_on_the_rest(data, tmp_path):
    (data / "train" / "dog" / "1.png").write_bytes(b"\x89PNG garbage")
    r = run(write_cfg(tmp_path / "c.yaml", data, data__bad_images="skip"), tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert RunLayout(tmp_path / "run").summary.is_file()


def test_corrupt_pool_image_with_fail_policy_stops_with_one_line(data, tmp_path):
    truncate(data / "pool" / "005.png")
    run_dir = tmp_path / "run"
    r = run(write_cfg(tmp_path / "c.yaml", data, data__bad_images="fail"), run_dir)
    assert_one_line_error(r, f"{data / 'pool' / '005.png'}: cannot decode image")
    assert r.returncode == 2
    assert_no_partial(run_dir)
    lay = RunLayout(run_dir)
    assert stage_info(lay.model(0, "teacher"))["status"] == "done"     # finished work is kept
    assert stage_info(lay.labels(1))["status"] == "running"


def test_non_image_files_are_ignored(data, tmp_path):
    for d in (data / "train" / "cat", data / "test" / "fox", data / "pool"):
        (d / "notes.txt").write_text("not an image")
        (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (d / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble resource fork")    # macOS tar junk
        (d / ".ipynb_checkpoints").mkdir()
        (d / ".ipynb_checkpoints" / "x.png").write_bytes(b"junk")
    (data / "train" / "README.md").write_text("a file next to the class folders")
    # `fail`: any of those files, if read, would stop the run
    r = run(write_cfg(tmp_path / "c.yaml", data, data__bad_images="fail"), tmp_path / "run")
    assert r.returncode == 0, r.stderr
    info = stage_info(RunLayout(tmp_path / "run").labels(1))["info"]
    assert info["pool_size"] == 12 and info["skipped_images"] == 0


def test_photos_of_every_kind_are_read_and_unreadable_ones_named_once(data, tmp_path):
    """A user's folder of phone photos: JPEG saved as .jfif, an iPhone's HEIC (pillow-heif, the
    `heif` extra `make` installs), a portrait shot stored sideways with its EXIF orientation tag, and a
    camera raw file no decoder reads (left out with one warning, not in silence)."""
    pytest.importorskip("pillow_heif", reason="HEIC needs the optional pillow-heif (`make` installs the heif extra)")
    exif = Image.Exif()
    exif[0x0112] = 6
    _img(0, 7).save(data / "train" / "cat" / "w.jfif", quality=95)
    _img(1, 8).save(data / "pool" / "phone.heic", quality=95)
    _img(2, 9).transpose(Image.Transpose.ROTATE_90).save(data / "pool" / "portrait.jpg", exif=exif, quality=95)
    (data / "pool" / "IMG_0001.CR2").write_bytes(b"II*\0 raw sensor data")
    r = run(write_cfg(tmp_path / "c.yaml", data, data__bad_images="fail"), tmp_path / "run")
    assert r.returncode == 0, r.stderr
    info = stage_info(RunLayout(tmp_path / "run").labels(1))["info"]
    assert info["pool_size"] == 14 and info["skipped_images"] == 0
    warned = [ln for ln in r.stderr.splitlines() if "left out" in ln]
    assert len(warned) == 1 and "1 photo(s) left out, no installed decoder reads them (.cr2: 1)" in warned[0], warned


def _save_mode(im: Image.Image, mode: str, path: Path) -> None:
    if mode == "I;16":      # 16-bit grayscale PNG
        Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257).save(path)
    else:
        im.convert(mode).save(path)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    from noisystudent.data import open_image
    a = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000           # 0 .. 63000
    Image.fromarray(a).save(tmp_path / "g16.png")
    for chans in (1, 3):
        out = open_image(tmp_path / "g16.png", chans)
        assert out.shape == (8, 8, chans) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[:, :, 0], np.rint(a / 257.0).astype(np.uint8))


def test_transparent_pixels_are_laid_over_white_whatever_colour_they_hold(tmp_path):
    """Two icons alike to the eye, one saved with black under its transparent pixels and one with
    white (PIL's convert("RGB") would keep those colours), decode the same: over white."""
    from noisystudent.data import open_image
    rgb = np.zeros((6, 6, 4), np.uint8)
    rgb[..., 0], rgb[..., 3] = 200, 0
    rgb[2:4, 2:4, 3] = 255                          # an opaque red square on a transparent field
    black, white = rgb.copy(), rgb.copy()
    black[rgb[..., 3] == 0, :3] = 0
    white[rgb[..., 3] == 0, :3] = 255
    half = white.copy()
    half[0, 0] = (0, 0, 0, 128)                     # half see-through black over white: mid gray
    for name, a in (("black", black), ("white", white), ("half", half)):
        Image.fromarray(a, "RGBA").save(tmp_path / f"{name}.png")
    Image.fromarray(black[..., [0, 3]], "LA").save(tmp_path / "la.png")
    a, b = open_image(tmp_path / "black.png", 3), open_image(tmp_path / "white.png", 3)
    np.testing.assert_array_equal(a, b)
    assert (a[0, 0] == 255).all() and tuple(a[2, 2]) == (200, 0, 0)
    assert abs(int(open_image(tmp_path / "half.png", 3)[0, 0, 0]) - 127) <= 1
    la = open_image(tmp_path / "la.png", 1)
    assert la[0, 0, 0] == 255 and la[2, 2, 0] == 200 and open_image(tmp_path / "black.png", 1)[0, 0, 0] == 255
    # a palette image with a transparent colour (GIF-style) too: index 0 (black) is see-through
    pal = Image.fromarray((rgb[..., 3] == 255).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 200, 0, 0])
    pal.save(tmp_path / "p.gif", transparency=0)
    g = open_image(tmp_path / "p.gif", 3)
    assert (g[0, 0] == 255).all() and tuple(g[2, 2]) == (200, 0, 0)
    # an opaque RGBA image decodes as its RGB
    opaque = black.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(open_image(tmp_path / "opaque.png", 3), opaque[..., :3])
    # an array decodes as its file would (predict on arrays): every mode, to either channel count
    from noisystudent.data.decode import from_array
    from noisystudent.errors import UserError
    for f, a in (("black.png", black), ("half.png", half), ("la.png", black[..., [0, 3]]), ("opaque.png", opaque)):
        for chans in (1, 3):
            np.testing.assert_array_equal(from_array(a, chans), open_image(tmp_path / f, chans))
    with pytest.raises(UserError, match=r"transpose\(1, 2, 0\)"):
        from_array(black[..., :3].transpose(2, 0, 1), 3)
    with pytest.raises(UserError, match="float32"):
        from_array(black.astype(np.float32), 3)


def test_grayscale_rgb_and_palette_images_mix(data, tmp_path):
    for i, mode in enumerate(["L", "RGBA", "P", "LA", "1", "I;16"]):
        for split in ("train", "test"):
            _save_mode(_img(1, 7 + i), mode, data / split / "dog" / f"m{i}.png")
        _save_mode(_img(2, 70 + i), mode, data / "pool" / f"m{i}.png")
    for chans in (3, 1):
        run_dir = tmp_path / f"run{chans}"
        r = run(write_cfg(tmp_path / f"c{chans}.yaml", data, data__in_chans=chans), run_dir)
        assert r.returncode == 0, r.stderr
        assert stage_info(RunLayout(run_dir).labels(1))["info"]["skipped_images"] == 0


@pytest.mark.parametrize("case, fragment", [
    ("empty_class", "class folder has no image files"),
    ("no_classes", "no class folders found"),
    ("empty_pool", "no image files found"),
    ("only_junk_class", "class folder has no image files"),
])
def test_empty_folders(data, tmp_path, case, fragment):
    if case == "empty_class":
        (data / "train" / "emu").mkdir()
    elif case == "no_classes":
        for d in (data / "train").iterdir():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    elif case == "empty_pool":
        for f in (data / "pool").iterdir():
            f.unlink()
    else:
        (data / "train" / "emu").mkdir()
        (data / "train" / "emu" / "readme.txt").write_text("images go here")
    r = run(write_cfg(tmp_path / "c.yaml", data), tmp_path / "run")
    assert_one_line_error(r, fragment)
    assert not (tmp_path / "run").exists()


def test_labeled_class_missing_from_test_set(tmp_path):
    data = make_data(tmp_path / "data", test_classes=["cat", "dog"])
    r = run(write_cfg(tmp_path / "c.yaml", data), tmp_path / "run")
    assert_one_line_error(r, "class lists differ between data.labeled and data.test: ['fox'] missing from data.test")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# configuration

@pytest.mark.parametrize("sets, fragment", [
    (["teacher.epoch=3"], "unknown config key 'teacher.epoch' (did you mean 'teacher.epochs'?)"),
    (["augment.magnitude=3"], "unknown config key 'augment'"),
    (["teacher.epochs=ten"], "config key 'teacher.epochs': expected an integer, got 'ten'"),
    (["student.soft=maybe"], "config key 'student.soft': expected true or false, got 'maybe'"),
    (["data.bad_images=ignore"], "config key 'data.bad_images': 'ignore' is not allowed; choose one of 'auto', 'skip', 'fail'"),
    (["select.threshold=1.5"], "config key 'select.threshold': must be in [0, 1)"),
    (["models=[ns_cnn_s, resnet_999]"], "config key 'models[1]': unknown model 'resnet_999'"),
    (["models=[]", "teacher.model=ns_cnn_xl"], "config key 'teacher.model': unknown model 'ns_cnn_xl'; did you mean"),
])
def test_bad_config_values(data, tmp_path, sets, fragment):
    r = run(write_cfg(tmp_path / "c.yaml", data), tmp_path / "run", *sets)
    assert_one_line_error(r, fragment)
    assert r.returncode == 2
    assert not (tmp_path / "run").exists()


def test_unknown_key_in_yaml_file(data, tmp_path):
    cfg = write_cfg(tmp_path / "c.yaml", data)
    cfg.write_text(cfg.read_text() + "studnet: {epochs: 3}\n")
    r = run(cfg, tmp_path / "run")
    assert_one_line_error(r, "unknown config key 'studnet' (did you mean 'student'?)")


# ------------------------------------------------------------------------------------------------
# run directories and checkpoints (one finished tiny run, shared)

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("finished")
    data = make_data(base / "data")
    cfg = write_cfg(base / "c.yaml", data)
    run_dir = base / "run"
    r = run(cfg, run_dir)
    assert r.returncode == 0, r.stderr
    return base, data, cfg, run_dir


def _snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_run_directory_of_another_experiment_is_refused_untouched(finished, tmp_path):
    base, data, cfg, run_dir = finished
    other = make_data(tmp_path / "other")
    before = _snapshot(run_dir)
    r = run(write_cfg(tmp_path / "other.yaml", other), run_dir)
    assert_one_line_error(r, f"{run_dir} holds a run with a different data.labeled; use another --run-dir")
    r = cli("run", "digits-demo", "--run-dir", str(run_dir), "--no-report", "--set", "rounds=0", env=THREADS)
    assert_one_line_error(r, "holds a run with a different data.labeled")
    assert _snapshot(run_dir) == before


def test_second_command_on_a_busy_run_directory_is_refused_untouched(finished, tmp_path):
    """While one process holds the run directory, another is refused before it writes or sweeps
    anything (a live run's temp file is not stale); once the holder dies by SIGKILL the lock is gone."""
    import signal
    import subprocess
    import sys
    base, data, cfg, run_dir = finished
    live_temp = RunLayout(run_dir).round_dir(0) / ".model.pt.live1234.tmp"    # as if the holder were mid-write
    live_temp.write_bytes(b"partial")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from noisystudent.artifacts import "
                               f"lock_run_dir; lock_run_dir({str(run_dir)!r}); print('locked', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run_dir)
        r = run(cfg, run_dir)
        assert_one_line_error(r, f"{run_dir} is in use by another noisystudent command (pid {holder.pid})")
        assert _snapshot(run_dir) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = run(cfg, run_dir)
    assert r.returncode == 0, r.stderr
    assert not live_temp.exists()          # now it is stale, and the next run sweeps it


def test_evaluate_checkpoint_with_other_class_count(finished):
    base, data, cfg, run_dir = finished
    model = RunLayout(run_dir).model(0, "teacher") / "model.pt"
    r = cli("evaluate", "--checkpoint", str(model), "--data", "digits:test", "--out", str(base / "e.json"), env=THREADS)
    assert_one_line_error(r, "classes ['0', '1', '2', '3', '4'] are not among the model's 3 classes")
    assert not (base / "e.json").exists()


def test_evaluate_checkpoint_of_another_architecture(finished, tmp_path):
    base, data, cfg, run_dir = finished
    state = torch.load(RunLayout(run_dir).model(0, "teacher") / "model.pt", weights_only=True)
    state["meta"]["model_name"] = "ns_cnn_m"           # says ns_cnn_m, holds ns_cnn_s weights
    torch.save(state, tmp_path / "model.pt")
    r = cli("evaluate", "--checkpoint", str(tmp_path / "model.pt"), "--data", f"imagefolder:{data / 'test'}",
            env=THREADS)
    assert_one_line_error(r, f"{tmp_path / 'model.pt'}: weights do not fit ns_cnn_m")
    assert not (tmp_path / "eval.json").exists()


class Payload:
    """Unpickling this runs code: `Path(marker).touch()`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_checkpoint_needing_arbitrary_unpickling_is_refused(finished, tmp_path):
    base, data, cfg, run_dir = finished
    marker = tmp_path / "code-ran"
    state = torch.load(RunLayout(run_dir).model(0, "teacher") / "model.pt", weights_only=True)
    state["meta"]["extra"] = Payload(marker)
    torch.save(state, tmp_path / "evil.pt")
    r = cli("evaluate", "--checkpoint", str(tmp_path / "evil.pt"), "--data", f"imagefolder:{data / 'test'}",
            env=THREADS)
    assert_one_line_error(r, f"{tmp_path / 'evil.pt'}: refusing to load — it needs arbitrary unpickling")
    assert "only checkpoints of plain tensors/values are accepted" in r.stderr
    assert not marker.exists()                       # the payload never ran
    # the same loader reads resume checkpoints (checkpoint.pt) inside a run
    from noisystudent.artifacts import load_checkpoint
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_checkpoint_is_one_line(finished, tmp_path):
    base, data, cfg, run_dir = finished
    blob = (RunLayout(run_dir).model(0, "teacher") / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    r = cli("evaluate", "--checkpoint", str(tmp_path / "cut.pt"), "--data", f"imagefolder:{data / 'test'}",
            env=THREADS)
    assert_one_line_error(r, f"{tmp_path / 'cut.pt'}: not a readable checkpoint")


# ------------------------------------------------------------------------------------------------
# divergence

def test_nan_loss_from_huge_lr_stops_with_one_line(data, tmp_path):
    run_dir = tmp_path / "run"
    r = run(write_cfg(tmp_path / "c.yaml", data), run_dir, "teacher.lr=1e30")
    line = assert_one_line_error(r, "teacher: loss became ")
    assert " at epoch 1, step " in line and "no epoch had finished, so there is no checkpoint" in line
    assert "lower the learning rate or enable grad_clip" in line
    assert r.returncode == 2
    assert_no_partial(run_dir)
    teacher = RunLayout(run_dir).model(0, "teacher")
    assert stage_info(teacher)["status"] == "running"
    assert not (teacher / "model.pt").exists()


def _tiny_fit_setup():
    from noisystudent.config import TrainConfig
    from noisystudent.data import LabeledDataset, create_source, create_train_transform
    from noisystudent.config import DataConfig, SourceConfig
    src = create_source(SourceConfig(kind="digits", per_class=4), 1)
    tf = create_train_transform(DataConfig(image_size=8, in_chans=1), None)
    return LabeledDataset(src, tf), TrainConfig(epochs=3, batch_size=8, lr=0.01, warmup_epochs=0)


@pytest.mark.parametrize("how", ["loss", "weights"])
def test_divergence_after_a_good_epoch_keeps_its_checkpoint(tmp_path, monkeypatch, how):
    """Epoch 1 is fine; in epoch 2 the loss becomes NaN, or (loss still finite) a BatchNorm statistic
    does. The run stops with one line naming the kept checkpoint, which is epoch 1's, intact."""
    import noisystudent.engine as engine
    from noisystudent.artifacts import load_checkpoint
    from noisystudent.batches import LabeledBatches
    from noisystudent.errors import TrainingDiverged
    from noisystudent.models import create_model
    ds, cfg = _tiny_fit_setup()
    model = create_model("ns_cnn_s", 10, 1)
    calls = {"n": 0}
    steps = len(ds) // cfg.batch_size
    assert steps >= 3
    fit_kw = {}
    if how == "loss":
        from noisystudent.batches import joint_step_loss
        real = joint_step_loss(1.0, 0.0)

        def poisoned(logits, b):
            calls["n"] += 1
            loss, parts = real(logits, b)
            return (loss * float("nan") if calls["n"] == steps + 2 else loss), parts    # epoch 2, step 2
        fit_kw["loss"] = poisoned
    else:
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

        def poison_stats(m, inputs):                         # before the forward of epoch 2, step 2
            calls["n"] += 1
            if calls["n"] == steps + 2:
                m.running_mean.fill_(float("inf"))           # train mode uses batch stats: loss stays finite
        bn.register_forward_pre_hook(poison_stats)
    with pytest.raises(TrainingDiverged) as e:
        engine.fit(model, cfg, LabeledBatches(ds, cfg.batch_size), out_dir=tmp_path, seed=0, meta={},
                   desc="teacher", **fit_kw)
    msg = str(e.value)
    assert "\n" not in msg
    assert ("loss became nan at epoch 2" if how == "loss" else "weights became NaN/inf during epoch 2") in msg
    assert f"the last good checkpoint is kept at {tmp_path / 'checkpoint.pt'} (end of epoch 1)" in msg
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(tmp_path.glob("*.tmp")) == [] and sorted(tmp_path.glob(".*.tmp")) == []


# ------------------------------------------------------------------------------------------------
# disk full

def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


class _WrappedFile:
    """The file `os.fdopen` returns, with `write` replaced by a subclass (a fault injected there)."""

    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _assert_untouched(path: Path, before: bytes) -> None:
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("where", ["fsync", "write"])
def test_disk_full_while_writing_keeps_the_previous_file(tmp_path, monkeypatch, where):
    import noisystudent.artifacts as artifacts
    target = tmp_path / "stage.json"
    artifacts.write_json(target, {"status": "done"})
    before = target.read_bytes()
    if where == "fsync":
        monkeypatch.setattr(artifacts.os, "fsync", _enospc)
    else:
        real_fdopen = os.fdopen

        class Full(_WrappedFile):
            def write(self, b):
                _enospc()

        monkeypatch.setattr(artifacts.os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
    with pytest.raises(UserError) as e:
        artifacts.write_json(target, {"status": "running", "pad": "x" * 100_000})
    assert str(e.value) == (f"disk full while writing {target}; nothing was written there — free space "
                            "and rerun the same command to continue")
    _assert_untouched(target, before)


def test_disk_full_while_caching_corrupted_images(tmp_path, monkeypatch):
    import noisystudent.robustness.corruptions as corruptions
    images = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3)).astype(np.uint8)
    monkeypatch.setattr(corruptions.os, "fsync", _enospc)
    with pytest.raises(UserError, match="disk full while writing .*gaussian_noise-s1-.*[.]npy; nothing was written"):
        corruptions.corrupt_dataset(images, "gaussian_noise", 1, 0, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_disk_full_while_saving_a_checkpoint(tmp_path, monkeypatch):
    """torch.save turns a failing write into an opaque RuntimeError; the user must still read 'disk full'."""
    import io
    import noisystudent.artifacts as artifacts
    ck = tmp_path / "checkpoint.pt"
    artifacts.save_checkpoint(ck, {"epoch": 1, "w": torch.zeros(3)})
    before = ck.read_bytes()
    real_fdopen = os.fdopen

    class FullAfter(io.RawIOBase):      # the disk fills up 64 KiB into the file
        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, b):
            self.n += len(b)
            if self.n > 65536:
                _enospc()
            return self.f.write(b)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(artifacts.os, "fdopen", lambda *a, **k: FullAfter(real_fdopen(*a, **k)))
    with pytest.raises(UserError, match=f"disk full while writing {ck}; nothing was written there"):
        artifacts.save_checkpoint(ck, {"epoch": 2, "w": torch.zeros(100_000)})
    _assert_untouched(ck, before)
    assert artifacts.load_checkpoint(ck)["epoch"] == 1


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_an_interrupt_during_a_checkpoint_write_waits_for_it(tmp_path, monkeypatch, sig):
    """A kill arriving inside torch.save's write callbacks used to leave its zip writer half-done: the
    user read "unexpected pos" (a RuntimeError, exit 1) or the process aborted when the writer finished
    itself into the closed file (seen: SIGTERM during the demo). Now the write completes, then the
    interrupt is raised, as the handler in place (the CLI's Terminated, Python's KeyboardInterrupt)."""
    import signal
    import noisystudent.artifacts as artifacts
    from noisystudent.cli import Terminated, _on_sigterm
    ck = tmp_path / "checkpoint.pt"
    artifacts.save_checkpoint(ck, {"epoch": 1, "w": torch.zeros(3)})
    real_fdopen, writes = os.fdopen, []

    class KilledMidWrite(_WrappedFile):     # the signal lands on the third write, inside torch.save
        def write(self, b):
            writes.append(len(b))
            if len(writes) == 3:
                signal.raise_signal(getattr(signal, sig))
            return self.f.write(b)

    monkeypatch.setattr(artifacts.os, "fdopen", lambda *a, **k: KilledMidWrite(real_fdopen(*a, **k)))
    # the CLI's handlers (a shell's background job starts with SIGINT ignored, which the deferral keeps)
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Terminated if sig == "SIGTERM" else KeyboardInterrupt):
            artifacts.save_checkpoint(ck, {"epoch": 2, "w": torch.arange(100_000.0)})
        assert signal.getsignal(signal.SIGTERM) is _on_sigterm              # handlers restored
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
    assert len(writes) > 3                                  # torch.save went on to the end
    state = artifacts.load_checkpoint(ck)                   # the new checkpoint, whole
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.arange(100_000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_deferred_interrupts_nest_and_leave_other_threads_alone():
    import signal
    import threading
    from noisystudent.artifacts import deferred_interrupts
    order = []
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)     # not ignored, as in a background job
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                with deferred_interrupts():
                    signal.raise_signal(signal.SIGINT)
                    order.append("inner")
                order.append("outer")       # the inner block handed the interrupt to the outer one
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # an ignored signal stays ignored
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old_int)
    assert order == ["inner", "outer"]
    ran = []

    def worker():                           # signal.signal would raise there: the block runs unguarded
        with deferred_interrupts():
            ran.append(True)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert ran == [True]


def test_disk_full_during_a_run_is_one_line_and_the_rerun_continues(data, tmp_path, monkeypatch, capsys):
    """Through the CLI entry point (in-process, so the fault can be injected): the disk fills up when
    the teacher's first checkpoint is written. One line, exit 2, nothing half-written; after space is
    freed the same command finishes."""
    import noisystudent.artifacts as artifacts
    from noisystudent.cli import main
    cfg = write_cfg(tmp_path / "c.yaml", data)
    run_dir = tmp_path / "run"
    lay = RunLayout(run_dir)
    real_replace = os.replace

    def full_at_checkpoint(src, dst, *a, **k):
        if Path(dst).name == "checkpoint.pt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(artifacts.os, "replace", full_at_checkpoint)
    argv = ["run", str(cfg), "--run-dir", str(run_dir), "--no-report"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines == [f"error: disk full while writing {lay.model(0, 'teacher') / 'checkpoint.pt'}; nothing was "
                     "written there — free space and rerun the same command to continue"]
    assert "Traceback" not in err
    assert_no_partial(run_dir)
    assert not (lay.model(0, "teacher") / "checkpoint.pt").exists()
    monkeypatch.setattr(artifacts.os, "replace", real_replace)
    assert main(argv) == 0, capsys.readouterr().err
    assert lay.summary.is_file()


# ------------------------------------------------------------------------------------------------
# paths



def test_value_error_inside_a_stage_is_a_user_error_naming_the_stage(tmp_path):
    """Inner code raising ValueError (bad data/config reaching numpy, torch, pyarrow) becomes one
    UserError line naming the stage, not 'internal error'; the stage stays unfinished."""
    from noisystudent.artifacts import read_stage
    from noisystudent.config import load_config
    from noisystudent.stages.common import RunContext, run_stage

    def body(d):
        raise ValueError("expected a non-empty array\nsecond line")
    ctx = RunContext(load_config("configs/digits-demo.yaml"), tmp_path)
    lay = RunLayout(tmp_path)
    with pytest.raises(UserError) as e:
        run_stage(ctx, lay.model(0, "teacher"), {"x": 1}, {}, body)
    assert str(e.value) == f"{lay.rel(lay.model(0, 'teacher'))}: expected a non-empty array"
    assert read_stage(lay.model(0, "teacher"))["status"] == "running"
