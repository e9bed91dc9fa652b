"""`noisystudent init DIR --data ROOT`: the folders found and written into the config, a look at the
images, and the recipe picked by their size and colour (or the one `--recipe` names)."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from noisystudent.cli import main
from noisystudent.config import load_config
from noisystudent.layout import RunLayout
from noisystudent.starter import DataRoot, choose_recipe, inspect_data_root
from own_data import CLASSES, make_own_data

TINY = ["--set", "teacher.steps=4", "--set", "teacher.warmup_steps=1", "--set", "student.steps=2",
        "--set", "student.warmup_steps=1", "--set", "variants=[]", "--set", "device=cpu"]


def _err(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def _convert(root, fn):
    for f in root.rglob("*.png"):
        fn(Image.open(f)).save(f)


def test_init_data_writes_the_folders_and_picks_the_small_colour_recipe(tmp_path, capsys):
    """12 px colour images: the CIFAR-10 recipe with ROOT's folders as its data (absolute paths, so
    the config works from anywhere), a validation draw of a fifth of the smallest class, and the
    loop runs on it with no edit."""
    make_own_data(tmp_path / "mydata", per_class=10, size=12)
    assert main(["init", str(tmp_path / "proj"), "--data", str(tmp_path / "mydata")]) == 0
    out = capsys.readouterr().out
    assert "3 classes, 30 labeled images (10 a class), 18 unlabeled, 12 test; 12x12, colour" in out
    assert "the bundled recipe 'cifar10-4k-fast'" in out
    cfg_path = tmp_path / "proj" / "config.yaml"
    cfg = load_config(cfg_path)
    assert cfg.models == ["ns_air_s", "ns_air_s"] and cfg.student.init_from_teacher
    d = cfg.data
    assert (d.labeled.root, d.labeled.exclude) == (str((tmp_path / "mydata" / "train").resolve()), ["val"])
    assert (d.val.root, d.val.per_class) == (d.labeled.root, 2)
    assert d.unlabeled.root.endswith("mydata/pool") and d.unlabeled.kind == "folder"
    assert d.test.root.endswith("mydata/test")
    run_dir = tmp_path / "run"
    assert main(["run", str(cfg_path), "--run-dir", str(run_dir), "--no-report", *TINY]) == 0, capsys.readouterr().err
    summary = json.loads(RunLayout(run_dir).summary.read_text())
    assert {(m["round"], m["which"]) for m in summary["models"]} >= {(0, "teacher"), (1, "student")}
    # a val draw in the labeled set's proportions: the same targets, and the fingerprint of before
    sel = RunLayout(run_dir).selection(1)
    assert json.loads((sel / "selection.json").read_text())["per_class_proportions"] == "labeled"
    assert "val_counts" not in json.loads((sel / "stage.json").read_text())["config"]


def test_a_long_tailed_labeled_set_gets_the_class_mix_of_its_balanced_val(tmp_path, capsys):
    """Labeled 12 / 4 / 1 images a class with a balanced val/ (4 a class, not what a draw from the
    labeled mix would give): `select.per_class: auto` gives the pool val's class mix (the paper's fixed
    count per class, TI in transfer.md), not the labeled set's; the stage's fingerprint and
    selection.json say so."""
    make_own_data(tmp_path / "d", per_class=12, size=12)
    make_own_data(tmp_path / "v", per_class=4, size=12, seed=1)
    shutil.move(str(tmp_path / "v" / "train"), str(tmp_path / "d" / "val"))
    for c, keep in zip(CLASSES, (12, 4, 1)):
        for f in sorted((tmp_path / "d" / "train" / c).iterdir())[keep:]:
            f.unlink()
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 0
    assert "labeled set long-tailed (1-12 a class): select.per_class auto gives the pseudo-labels the class mix of your val/" \
        in capsys.readouterr().out
    run = ["run", str(tmp_path / "p" / "config.yaml"), "--no-report", *TINY, "--set", "select.threshold=0.0"]
    assert main([*run, "--run-dir", str(tmp_path / "r")]) == 0, capsys.readouterr().err
    sel = RunLayout(tmp_path / "r").selection(1)
    report = json.loads((sel / "selection.json").read_text())
    assert report["per_class_proportions"] == "val" and report["per_class_target"] == [6, 6, 6]
    assert json.loads((sel / "stage.json").read_text())["config"]["val_counts"] == [4, 4, 4]
    # a val/ without an image of one class: the labeled set's mix, and init says why
    from noisystudent.starter import class_mix_note
    data = inspect_data_root(tmp_path / "d")
    data.val_counts = [4, 4, 0]
    assert "the labeled set's class mix (val/ has no image of some class)" in class_mix_note(data)
    data.val_counts = [24, 8, 2]
    assert "the labeled set's class mix (val's differs from it no more than a random draw would)" in class_mix_note(data)
    # without val/ the labeled set's mix, as before (18 pool images: 13 / 4 / 1)
    shutil.rmtree(tmp_path / "d" / "val")
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d"), "--force"]) == 0
    assert "the labeled set's class mix (there is no validation set)" in capsys.readouterr().out
    assert main([*run, "--run-dir", str(tmp_path / "r2")]) == 0, capsys.readouterr().err
    report = json.loads((RunLayout(tmp_path / "r2").selection(1) / "selection.json").read_text())
    assert report["per_class_proportions"] == "labeled" and report["per_class_target"] == [13, 4, 1]


def test_init_data_grayscale_small_images_get_the_fashion_recipe(tmp_path, capsys):
    make_own_data(tmp_path / "g", per_class=6, size=12)
    _convert(tmp_path / "g", lambda im: im.convert("L"))
    (tmp_path / "g" / "pool").rename(tmp_path / "g" / "unlabeled")
    assert main(["init", str(tmp_path / "proj"), "--data", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "12x12, grayscale" in out and "the bundled recipe 'fashion-mnist-1k'" in out
    cfg = load_config(tmp_path / "proj" / "config.yaml")
    assert cfg.models == ["ns_cnn_s", "ns_cnn_s"]
    # 6 a class is too few to draw a validation set from: none, and the config says why
    assert cfg.data.val is None and cfg.data.labeled.exclude == []
    assert "no validation set: the smallest class has 6 labeled images" in (tmp_path / "proj" / "config.yaml").read_text()


def test_init_data_large_images_get_the_plain_starter_in_steps(tmp_path, capsys):
    """Above 48 px: the plain starter (resnet18), its roots replaced, lengths in optimizer steps; a
    ROOT/val/ folder is the validation set as it is. --recipe still wins over the pick."""
    make_own_data(tmp_path / "big", per_class=12, size=56)
    shutil.copytree(tmp_path / "big" / "test", tmp_path / "big" / "val")
    assert main(["init", str(tmp_path / "proj"), "--data", str(tmp_path / "big")]) == 0
    assert "the plain starter" in capsys.readouterr().out
    cfg = load_config(tmp_path / "proj" / "config.yaml")
    assert cfg.models == ["resnet18", "resnet18"]
    assert (cfg.teacher.steps, cfg.student.steps) == (5000, 5000) and cfg.teacher.warmup_steps == 250
    assert cfg.teacher.noise.randaugment and cfg.student.noise.drop_path_rate == 0.2
    assert cfg.data.val.root.endswith("big/val") and cfg.data.val.per_class is None
    assert cfg.data.labeled.exclude == [] and cfg.data.labeled.root.endswith("big/train")
    assert main(["init", str(tmp_path / "p2"), "--data", str(tmp_path / "big"), "--recipe", "fashion-mnist-1k"]) == 0
    assert load_config(tmp_path / "p2" / "config.yaml").models == ["ns_cnn_s", "ns_cnn_s"]


def test_init_data_colour_48px_gets_the_fast_recipe_at_its_size(tmp_path, capsys):
    """Colour images of 41-48 px: the CIFAR-10 recipe with `image_size: 32` written (not commented),
    saying why and how to keep the images' own size; `--recipe` named by hand keeps the images' size."""
    make_own_data(tmp_path / "c", per_class=10, size=44)
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "c")]) == 0
    assert "the images resized to its 32 px" in capsys.readouterr().out
    text = (tmp_path / "p" / "config.yaml").read_text()
    assert "image_size: 32   # every image is resized to this square (yours: 44x44); the size of the recipe 'cifar10-4k-fast'" in text
    assert "# image_size: 32" not in text
    cfg = load_config(tmp_path / "p" / "config.yaml")
    assert cfg.models == ["ns_air_s", "ns_air_s"] and cfg.data.image_size == 32
    assert main(["init", str(tmp_path / "q"), "--data", str(tmp_path / "c"), "--recipe", "cifar10-4k-fast"]) == 0
    assert "  # image_size: 32" in (tmp_path / "q" / "config.yaml").read_text()
    assert load_config(tmp_path / "q" / "config.yaml").data.image_size is None     # read from the images: 44
    _resize_some(tmp_path / "c", [(40, 44)])              # mixed sizes: the line is needed, so no "delete it"
    assert main(["init", str(tmp_path / "m"), "--data", str(tmp_path / "c")]) == 0
    text = (tmp_path / "m" / "config.yaml").read_text()
    assert "which beat the plain starter on 48 px images\n" in text and "delete this line" not in text


def test_init_data_says_what_is_missing(tmp_path, capsys):
    make_own_data(tmp_path / "d", per_class=4)
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d" / "train")]) == 2
    assert "no train/ folder (found: cat, dog, ship); expected ROOT/train/<class>/*" in _err(capsys)
    shutil.rmtree(tmp_path / "d" / "pool")
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 2
    assert "no unlabeled/ folder (found: test, train)" in _err(capsys)
    (tmp_path / "d" / "unlabeled").mkdir()
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 2
    assert "no image files found" in _err(capsys)
    make_own_data(tmp_path / "e", per_class=4)
    (tmp_path / "e" / "test" / "cat").rename(tmp_path / "e" / "test" / "lion")
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "e")]) == 2
    assert "test/ has classes train/ has not: lion" in _err(capsys)
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in _err(capsys)
    assert not (tmp_path / "p").exists()                    # nothing written when it stops


def test_init_data_imagenet_layout_val_is_the_test_set(tmp_path, capsys):
    """train/ and val/ without test/ (ImageNet's layout): val/ is the test set, read once, and the
    validation set is drawn from train/ (a held-out minival); a run works from it."""
    make_own_data(tmp_path / "in", per_class=10)
    (tmp_path / "in" / "test").rename(tmp_path / "in" / "val")
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "in")]) == 0
    assert "12 test (val/, as there is no test/)" in capsys.readouterr().out
    text = (tmp_path / "p" / "config.yaml").read_text()
    assert "# no test/: ROOT/val/ is the test set, read once" in text
    cfg = load_config(tmp_path / "p" / "config.yaml")
    d = cfg.data
    assert d.test.root.endswith("in/val") and d.val.root.endswith("in/train") and d.val.per_class == 2
    assert d.labeled.exclude == ["val"]
    assert main(["run", str(tmp_path / "p" / "config.yaml"), "--run-dir", str(tmp_path / "run"), "--no-report",
                 *TINY]) == 0, capsys.readouterr().err
    shutil.rmtree(tmp_path / "in" / "val")           # neither test/ nor val/: the message names both
    assert main(["init", str(tmp_path / "p2"), "--data", str(tmp_path / "in")]) == 2
    err = _err(capsys)
    assert "no test/ folder (found: pool, train); expected" in err and "(or ROOT/val/<class>/*, then the test set)" in err


def test_init_data_takes_a_pool_kept_elsewhere(tmp_path, capsys):
    """--unlabeled DIR: the pool need not live under ROOT (a large one rarely does); the message for a
    ROOT without one names the option; a pool over train/ or test/, or --unlabeled alone, is refused."""
    make_own_data(tmp_path / "d", per_class=4)
    (tmp_path / "d" / "pool").rename(tmp_path / "big-pool")
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 2
    assert "(or --unlabeled DIR for a pool kept elsewhere)" in _err(capsys)
    for bad, why in ((tmp_path / "d", "overlaps"), (tmp_path / "d" / "test", "overlaps"),
                     (tmp_path / "d" / "train" / "cat", "overlaps"), (tmp_path / "nowhere", "not a folder")):
        assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d"), "--unlabeled", str(bad)]) == 2
        assert why in _err(capsys)
    assert main(["init", str(tmp_path / "p"), "--unlabeled", str(tmp_path / "big-pool")]) == 2
    assert "--unlabeled needs --data ROOT" in _err(capsys)
    assert not (tmp_path / "p").exists()
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d"), "--unlabeled",
                 str(tmp_path / "big-pool")]) == 0
    assert "18 unlabeled" in capsys.readouterr().out
    cfg = load_config(tmp_path / "p" / "config.yaml")
    assert cfg.data.unlabeled.root == str((tmp_path / "big-pool").resolve()) and cfg.data.unlabeled.kind == "folder"


@pytest.mark.parametrize("side,colour,want,resize", [
    (28, False, "fashion-mnist-1k", False), (32, True, "cifar10-4k-fast", False), (40, True, "cifar10-4k-fast", False),
    (40, False, "fashion-mnist-1k", False), (41, True, "cifar10-4k-fast", True), (48, True, "cifar10-4k-fast", True),
    (41, False, None, False), (49, True, None, False), (224, False, None, False)])
def test_choose_recipe_by_size_and_colour(side, colour, want, resize, tmp_path):
    """<= 40 px: the recipe at the images' size; colour 41-48 px: the CIFAR-10 recipe at its own 32 px
    (F48 measured it against the plain starter there; grayscale that large was not measured)."""
    data = DataRoot(train=tmp_path, unlabeled=tmp_path, test=tmp_path, val=None, classes=["a", "b"],
                    per_class=[50, 40], pool=100, tests=10, sizes=[(side, side), (side - 2, side)], colour=colour)
    assert tuple(choose_recipe(data))[::2] == (want, resize)
    assert data.val_per_class == 8                          # a fifth of the smallest class, at most 20


def test_inspect_reads_mixed_sizes(tmp_path):
    make_own_data(tmp_path / "m", per_class=5, size=20)
    img = next((tmp_path / "m" / "train" / "dog").glob("*.png"))
    Image.open(img).resize((64, 30)).save(img)
    data = inspect_data_root(tmp_path / "m")
    assert data.max_side == 64 and choose_recipe(data)[0] is None
    assert "2 sizes up to 64 px" in data.describe()


def test_the_transfer_set_is_what_init_data_reads(tmp_path, capsys):
    """benchmarks/transfer_set.py (the transfer check's data): seeded, disjoint splits in init --data's
    layout, converted and resized as asked."""
    import importlib.util
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("transfer_set", ROOT / "benchmarks" / "transfer_set.py")
    ts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ts)
    make_own_data(tmp_path / "src", per_class=6, size=12)
    counts = ts.build(tmp_path / "src", tmp_path / "t", gray=True, size=10, train=2, val=1, unlabeled=3, test=0)
    assert counts == {"train": 6, "val": 3, "unlabeled": 9, "test": 12}
    stems = [{p.stem.split("_")[-1] for p in (tmp_path / "t" / s).rglob("*.png")} for s in ("train", "val", "unlabeled")]
    assert not (stems[0] & stems[1]) and not (stems[0] & stems[2]) and not (stems[1] & stems[2])
    assert Image.open(next((tmp_path / "t" / "unlabeled").glob("*.png"))).mode == "L"
    data = inspect_data_root(tmp_path / "t")
    assert data.sizes[0] == (10, 10) and not data.colour and data.val is not None
    assert choose_recipe(data)[0] == "fashion-mnist-1k"
    # --classes keeps those class folders only (a two-class data set); a class the source lacks stops it
    counts = ts.build(tmp_path / "src", tmp_path / "two", gray=False, size=0, train=2, val=1, unlabeled=3, test=0,
                      classes=CLASSES[:2])
    assert counts == {"train": 4, "val": 2, "unlabeled": 6, "test": 8}
    assert inspect_data_root(tmp_path / "two").classes == sorted(CLASSES[:2])
    with pytest.raises(SystemExit, match="no class nope"):
        ts.build(tmp_path / "src", tmp_path / "none", gray=False, size=0, train=2, val=1, unlabeled=3, test=0,
                 classes=["nope"])
    # --other-classes: their images go to the flat pool only, after the labeled classes' draws (unchanged)
    counts = ts.build(tmp_path / "src", tmp_path / "mix", gray=False, size=0, train=2, val=1, unlabeled=3, test=0,
                      classes=CLASSES[:2], other_classes=CLASSES[2:], other_unlabeled=4)
    assert counts == {"train": 4, "val": 2, "unlabeled": 6, "test": 8, "unlabeled of other classes": 4 * (len(CLASSES) - 2)}
    mix = inspect_data_root(tmp_path / "mix")
    assert mix.classes == sorted(CLASSES[:2]) and mix.pool == 6 + 4 * (len(CLASSES) - 2)
    for split in ("train", "val", "unlabeled"):
        two = sorted(p.name for p in (tmp_path / "two" / split).rglob("*.png"))
        assert two == sorted(p.name for p in (tmp_path / "mix" / split).rglob("*.png")
                             if p.name.split("_")[0] in CLASSES[:2] or split != "unlabeled")
    # --imbalance R: a long tail over the labeled classes in folder order (first N, last N / R), for
    # train/ and unlabeled/ only; val/ and test/ stay balanced
    assert [ts.long_tail(250, c, 10, 10) for c in range(10)] == [250, 194, 150, 116, 90, 70, 54, 42, 32, 25]
    counts = ts.build(tmp_path / "src", tmp_path / "lt", gray=False, size=0, train=3, val=1, unlabeled=2, test=0,
                      classes=CLASSES[:3], imbalance=3)
    lt = inspect_data_root(tmp_path / "lt")
    assert lt.per_class == [3, 2, 1] and counts == {"train": 6, "val": 3, "unlabeled": 2 + 1 + 1, "test": 12}
    with pytest.raises(SystemExit, match="also labeled"):
        ts.build(tmp_path / "src", tmp_path / "both", gray=False, size=0, train=2, val=1, unlabeled=3, test=0,
                 classes=CLASSES[:2], other_classes=CLASSES[1:2], other_unlabeled=1)
    # --src digits: scikit-learn's 8 px digits, test/ the rest of each class, the draw seeded
    counts = ts.build_arrays(tmp_path / "dg", *ts.load_digits_u8(), train=2, val=1, unlabeled=3, seed=1)
    assert counts == {"train": 20, "val": 10, "unlabeled": 30, "test": 1797 - 60}
    again = ts.build_arrays(tmp_path / "dg2", *ts.load_digits_u8(), train=2, val=1, unlabeled=3, seed=1)
    assert counts == again and sorted(p.name for p in (tmp_path / "dg" / "train" / "3").iterdir()) == \
        sorted(p.name for p in (tmp_path / "dg2" / "train" / "3").iterdir())
    data = inspect_data_root(tmp_path / "dg")
    assert data.sizes[0] == (8, 8) and not data.colour and choose_recipe(data)[0] == "fashion-mnist-1k"
    # --prefix/--add: sources built one after another into one set keep their classes apart (a set of
    # many classes of several kinds); --test caps each class's test images of an array source
    ts.build(tmp_path / "src", tmp_path / "many", gray=True, size=8, train=2, val=1, unlabeled=3, test=2,
             classes=CLASSES[:2], prefix="img-")
    counts = ts.build_arrays(tmp_path / "many", *ts.load_digits_u8(), train=2, val=1, unlabeled=3, seed=1, test=5,
                             prefix="digit-")
    assert counts == {"train": 20, "val": 10, "unlabeled": 30, "test": 50}
    many = inspect_data_root(tmp_path / "many")
    assert many.classes == sorted([f"img-{c}" for c in CLASSES[:2]] + [f"digit-{d}" for d in range(10)])
    assert many.pool == 2 * 3 + 30 and many.per_class == [2] * 12
    assert sorted({p.name.split("_")[0] for p in (tmp_path / "many" / "unlabeled").iterdir()}) == many.classes


def test_pool_classes_counts_what_the_selection_kept_of_other_classes(tmp_path):
    """benchmarks/pool_classes.py (the class-mismatch check's table): classes read off the pool's file
    names, kept shares unique and with copies, pseudo-labels right among the labeled classes."""
    import importlib.util
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("pool_classes", ROOT / "benchmarks" / "pool_classes.py")
    pc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pc)
    assert pc.class_of("cat_0001.png") == "cat" and pc.class_of("truck/0001.jpg") == "truck"
    (tmp_path / "round1" / "labels").mkdir(parents=True)
    (tmp_path / "round1" / "selection").mkdir()
    ids = ["cat_1.png", "cat_2.png", "dog_1.png", "truck_1.png", "truck_2.png", "ship_1.png"]
    pq.write_table(pa.table({"sample_id": ids, "confidence": [0.9, 0.2, 0.8, 0.7, 0.1, 0.3]}),
                   tmp_path / "round1" / "labels" / "part-00000.parquet")
    pq.write_table(pa.table({"sample_id": ["cat_1.png", "dog_1.png", "truck_1.png", "ship_1.png"],
                             "copies": pa.array([1, 2, 3, 1], pa.int32()), "pred": pa.array([0, 0, 1, 1], pa.int32())}),
                   tmp_path / "round1" / "selection" / "selection.parquet")
    (tmp_path / "round1" / "selection" / "selection.json").write_text(json.dumps({"classes": ["cat", "dog"]}))
    r = pc.pool_classes(tmp_path, {"truck", "ship"})
    assert (r["pool"], r["pool_other"], r["kept"], r["kept_other"]) == (6, 3, 4, 2)
    assert (r["kept_with_copies"], r["kept_other_with_copies"]) == (7, 4)
    assert r["confidence_other"] == pytest.approx(1.1 / 3) and r["confidence_labeled_classes"] == pytest.approx(1.9 / 3)
    assert r["right_of_labeled_classes"] == 0.5         # cat_1 labeled cat, dog_1 labeled cat
    assert r["other_as"] == {"dog": 2}                  # truck_1 and ship_1 both given dog
    assert "2 of 4 (50.0%)" in pc.table([r]) and "mean" in pc.table([r, r])
    with pytest.raises(FileNotFoundError, match="round 2"):
        pc.pool_classes(tmp_path, {"truck"}, k=2)
    # --group: per group of classes (the class in the file name), what became of its pool images
    g = pc.pool_groups(tmp_path, pc.parse_groups(["pets=cat,dog", "cars=truck"]))["groups"]
    assert g["pets"] == {"pool": 3, "kept": 2, "kept_with_copies": 3, "right_with_copies": 1,
                         "confidence": pytest.approx(1.9 / 3)}          # cat_1 (1 copy) right, dog_1 (2) wrong
    assert g["cars"] == {"pool": 2, "kept": 1, "kept_with_copies": 3, "right_with_copies": 0,
                         "confidence": pytest.approx(0.4)}
    rows = pc.group_table([pc.pool_groups(tmp_path, pc.parse_groups(["pets=cat,dog", "cars=truck"]))]).splitlines()
    assert rows[2] == "| pets | 66.7 | 42.9 | 1.50 | 33.3 | 0.633 |"    # 3 of the 7 selected with copies
    assert pc.group_of("ship", pc.parse_groups(["pets=cat,dog"])) is None


def _resize_some(root, sizes):
    """Resize train/ images in turn to each (width, height) of `sizes`."""
    for f, wh in zip(sorted(root.rglob("train/*/*.png")), sizes * 100):
        Image.open(f).resize(wh).save(f)


def test_init_data_mixed_sizes_writes_a_training_size(tmp_path, capsys):
    """Images of several sizes (or one non-square size): a run stops without `data.image_size`, so
    `init --data` writes one, and the config resolves with no edit: the median shorter side rounded
    down to a multiple of 8 for the plain starter, the recipe's own size for small images."""
    make_own_data(tmp_path / "big", per_class=10, size=60)
    _resize_some(tmp_path / "big", [(64, 48), (72, 60), (80, 64)])
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "big")]) == 0
    text = (tmp_path / "p" / "config.yaml").read_text()
    assert "image_size: 56   # every image is resized to this square (yours: 3 sizes, 64x48 to 80x64)" in text
    assert load_config(tmp_path / "p" / "config.yaml").data.image_size == 56
    capsys.readouterr()
    assert main(["config", str(tmp_path / "p" / "config.yaml")]) == 0, capsys.readouterr().err

    make_own_data(tmp_path / "small", per_class=10, size=20)
    _resize_some(tmp_path / "small", [(24, 16)])                  # one non-square size: still needs a size
    assert main(["init", str(tmp_path / "q"), "--data", str(tmp_path / "small")]) == 0
    text = (tmp_path / "q" / "config.yaml").read_text()
    cfg = load_config(tmp_path / "q" / "config.yaml")
    assert cfg.models == ["ns_air_s", "ns_air_s"] and cfg.data.image_size == 32
    assert "# image_size: 32" not in text                         # the recipe's commented line gives way to it
    assert main(["config", str(tmp_path / "q" / "config.yaml")]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("sizes,want", [([(20, 20)], False), ([(20, 30)], True), ([(20, 20), (24, 24)], True)])
def test_needs_size_is_one_square_size_or_not(sizes, want, tmp_path):
    data = DataRoot(train=tmp_path, unlabeled=tmp_path, test=tmp_path, val=None, classes=["a"], per_class=[5],
                    pool=5, tests=5, sizes=sizes, colour=True)
    assert data.needs_size is want
    assert DataRoot(**{**data.__dict__, "sizes": [(600, 400), (500, 375), (480, 640)]}).training_size() == 224
    assert DataRoot(**{**data.__dict__, "sizes": [(10, 12)]}).training_size() == 16
    assert data.training_size(32) == 32


def test_few_classes_get_a_threshold_that_filters(tmp_path, capsys):
    """With 2-3 classes the paper's 0.3 is <= 1/K and keeps every pool image. The template and the
    recipes say `auto`, which resolves to FEW_CLASSES_THRESHOLD there: `init --data` says so and
    leaves the text; a number of a recipe of your own that filters nothing becomes `auto`."""
    import yaml
    from noisystudent.pseudo import resolve_threshold
    from noisystudent.starter import TEMPLATE, few_classes_threshold
    from noisystudent.config import BUNDLED_DIR
    for text in (TEMPLATE.read_text(), (BUNDLED_DIR / "fashion-mnist-1k.yaml").read_text()):
        assert yaml.safe_load(text)["select"]["threshold"] == "auto"
        assert few_classes_threshold(text, 4) == (text, None)
        for k in (2, 3):
            assert few_classes_threshold(text, k) == (
                text, f"select.threshold auto = 0.9 for {k} classes (0.3 is <= 1/{k} and would keep every pool image)")
    own = (BUNDLED_DIR / "imagenet-efficientnet.yaml").read_text()            # says 0.3 (the paper's, 1,000 classes)
    assert few_classes_threshold(own, 4) == (own, None)
    out, note = few_classes_threshold(own, 2)
    assert yaml.safe_load(out)["select"] == {**yaml.safe_load(own)["select"], "threshold": "auto"}
    assert note == "select.threshold 0.3 -> auto = 0.9 for 2 classes (0.3 is <= 1/2 and would keep every pool image)"
    assert len(out.splitlines()) == len(own.splitlines())
    kept = "select:\n  threshold: 0.4\n"                      # already above 1/3: the user's value stays
    assert few_classes_threshold(kept, 3) == (kept, None)
    make_own_data(tmp_path / "d", per_class=10, size=12)     # 3 classes
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 0
    assert "select.threshold auto = 0.9 for 3 classes" in capsys.readouterr().out
    assert resolve_threshold(load_config(tmp_path / "p" / "config.yaml").select.threshold, 3) == 0.9
