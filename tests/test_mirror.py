"""The mirror check `init --data` runs on the labeled images (noisystudent.data.mirror) and what it
writes: classes a mirror swaps turn the mirror off, classes it keeps leave the recipe's setting."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from noisystudent.cli import main
from noisystudent.data.mirror import MAX_RATIO, mirror_check
from noisystudent.starter import mirror_setting
from own_data import make_own_data


def _arrows(n_per_class: int, seed: int = 0, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: a bright bar near the left edge; class 1: near the right edge; class 2: in the middle.
    A mirror turns 0 into 1 and 1 into 0 (and keeps 2), as it turns a 'b' into a 'd'."""
    rng = np.random.default_rng(seed)
    imgs, ys = [], []
    for c, col in enumerate((2, size - 3, size // 2 - 1)):
        for _ in range(n_per_class):
            a = rng.normal(40, 15, (size, size))
            a[:, col:col + 2] += 180
            imgs.append(np.clip(a, 0, 255).astype(np.uint8))
            ys.append(c)
    return np.stack(imgs)[..., None], np.array(ys)


def _blobs(n_per_class: int, seed: int = 0, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Classes told apart by a symmetric shape (a bright centre square, a ring, stripes across):
    a mirror keeps every class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    shapes = [(np.abs(yy) < 2) & (np.abs(xx) < 2), np.abs(np.hypot(yy, xx) - 4) < 1, (np.arange(size)[:, None] % 4 < 2) & (xx == xx)]
    imgs, ys = [], []
    for c, m in enumerate(shapes):
        for _ in range(n_per_class):
            a = rng.normal(40, 15, (size, size)) + 180 * m
            imgs.append(np.clip(a, 0, 255).astype(np.uint8))
            ys.append(c)
    return np.stack(imgs)[..., None], np.array(ys)


def test_a_mirror_that_swaps_classes_turns_the_mirror_off():
    check = mirror_check(*_arrows(10))
    assert check.accuracy == 1.0 and check.informative
    assert check.mirrored < 0.5 and check.ratio < MAX_RATIO and not check.keeps_class


def test_a_mirror_that_keeps_classes_keeps_it():
    check = mirror_check(*_blobs(10))
    assert check.accuracy == 1.0 and check.mirrored == 1.0 and check.ratio == 1.0 and check.keeps_class


def test_near_chance_pixels_cannot_tell_so_the_mirror_stays():
    """Labels unrelated to the pixels (1-NN at chance): nothing can be read, the setting stays."""
    imgs, _ = _arrows(10)
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(3), 10))
    check = mirror_check(imgs, labels)
    assert not check.informative and check.keeps_class


def test_an_image_and_its_own_mirror_are_never_neighbours():
    """Two classes of perfectly symmetric images (one of each): a match of an image with itself or
    its own mirror would score 100%; leave-one-out scores it 0%."""
    a = np.zeros((2, 4, 4, 1), np.uint8)
    a[0, :, 1:3] = 200          # symmetric: its mirror is itself
    a[1, 1:3, :] = 200
    check = mirror_check(a, np.array([0, 1]))
    assert check.accuracy == 0.0 and check.mirrored == 0.0


def test_mirror_check_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="one label each"):
        mirror_check(np.zeros((3, 4, 4, 1), np.uint8), np.array([0, 1]))


def _save(root, imgs, ys, split):
    for i, (a, y) in enumerate(zip(imgs, ys)):
        if split == "unlabeled":
            d, name = root / split, f"{y}_{i}.png"
        else:
            d, name = root / split / f"c{y}", f"{i}.png"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a[..., 0], "L").save(d / name)


@pytest.mark.parametrize("size, starter", [(12, "fashion-mnist-1k"), (44, "plain starter")])
def test_init_data_turns_the_mirror_off_for_classes_a_mirror_swaps(tmp_path, capsys, size, starter):
    """Both a bundled recipe (small images) and the plain starter (larger ones) lose the mirror."""
    for split, n, seed in (("train", 12, 0), ("test", 3, 1), ("unlabeled", 4, 2)):
        _save(tmp_path / "d", *_arrows(n, seed, size), split)
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert starter in out and "mirror off" in out and "their mirrors" in out
    cfg = yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())
    assert cfg["data"]["hflip"] is False
    assert cfg.get("label", {}).get("flip_tta", False) is False and cfg.get("evaluate", {}).get("flip_tta", False) is False
    # the config still resolves as written
    assert main(["config", str(tmp_path / "p" / "config.yaml")]) == 0


def test_init_data_keeps_the_mirror_when_it_keeps_the_class(tmp_path, capsys):
    make_own_data(tmp_path / "d", per_class=10)
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 0
    assert "mirror off" not in capsys.readouterr().out
    cfg = yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())
    assert cfg["data"]["hflip"] is True and cfg["label"]["flip_tta"] is True


def test_mirror_setting_leaves_a_config_without_a_mirror_alone():
    check = mirror_check(*_arrows(10))
    text = "data:\n  hflip: false\nlabel:\n  flip_tta: true\n"
    assert mirror_setting(text, check) == (text, None)
    assert mirror_setting("data:\n  hflip: true\n", None) == ("data:\n  hflip: true\n", None)


def test_the_run_warns_when_its_config_mirrors_such_images(tmp_path):
    """A config written by hand (or `init --recipe`) that mirrors digits: the teacher stage asks the
    labeled images and warns, naming the keys that are on; off keys or symmetric classes: no warning."""
    from types import SimpleNamespace
    from noisystudent import runwarnings as rw
    from noisystudent.data.sources import ArraySource
    from noisystudent.stages.train import warn_mirror
    for make, on, warned in ((_arrows, (True, True, False), True), (_arrows, (False, False, False), False),
                             (_blobs, (True, True, True), False)):
        imgs, ys = make(10)
        src = ArraySource("t", [str(i) for i in range(len(ys))], ys, ["a", "b", "c"], 1, images=imgs)
        cfg = SimpleNamespace(seed=0, data=SimpleNamespace(hflip=on[0]), label=SimpleNamespace(flip_tta=on[1]),
                              evaluate=SimpleNamespace(flip_tta=on[2]))
        ctx = SimpleNamespace(rank=0, run_dir=tmp_path / f"{make.__name__}{on}", cfg=cfg, labeled=src, layout=None)
        into: dict = {}
        warn_mirror(ctx, None, into)
        assert bool(into) == warned, (make.__name__, on, into)
        if warned:
            msg = next(iter(into.values()))
            assert msg.startswith("data.hflip, label.flip_tta: a mirror changes the class")
            assert "evaluate.flip_tta" not in msg
    assert rw.mirror_changes_class(None, ["data.hflip"]) is None
