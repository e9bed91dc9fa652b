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
    assert [o.feature for o in check.opinions] == ["pixels", "gradients"]
    for o in check.opinions:
        assert o.accuracy == 1.0 and o.informative and o.mirrored < 0.5 and o.ratio < MAX_RATIO
    assert not check.keeps_class


def test_a_mirror_that_keeps_classes_keeps_it():
    check = mirror_check(*_blobs(10))
    assert all(o.accuracy == 1.0 and o.mirrored == 1.0 and o.ratio == 1.0 for o in check.opinions)
    assert check.keeps_class


def test_near_chance_pixels_cannot_tell_so_the_mirror_stays():
    """Labels unrelated to the images (1-NN at chance): nothing can be read, the setting stays."""
    imgs, _ = _arrows(10)
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(3), 10))
    check = mirror_check(imgs, labels)
    assert not any(o.informative for o in check.opinions) and check.keeps_class


def test_every_feature_that_can_tell_must_agree():
    """One informative opinion below MAX_RATIO turns the mirror off only when no other informative
    one says it keeps the class; an opinion near chance has no say."""
    from noisystudent.data.mirror import MirrorCheck, Opinion, keeps_class
    off, on = Opinion("pixels", 0.9, 0.2, 0.1, True), Opinion("gradients", 0.9, 0.8, 0.9, True)
    silent = Opinion("pixels", 0.12, 0.1, float("nan"), False)
    assert keeps_class((off, silent)) is False and keeps_class((silent, off)) is False
    assert keeps_class((off, on)) is True and keeps_class((silent, silent)) is True
    assert keeps_class((Opinion("pixels", 0.9, 0.5, MAX_RATIO, True),)) is True      # at the bound: kept
    assert MirrorCheck(30, (silent, on), True).describe().endswith("1-NN on gradients: 90% right, mirrored 80%, ratio 0.90")


def _strokes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of one stroke each (horizontal, vertical, diagonal), moved up to 3 px, on random
    texture, darker or lighter than it at random (as MNIST-M's |background - digit| makes them): a
    zero-mean pixel match needs the same place and polarity, an unsigned gradient orientation in a
    4x4 grid of cells does not."""
    rng = np.random.default_rng(seed)
    imgs = []
    for c in range(3):
        for _ in range(12):
            m, o = np.zeros((16, 16), bool), int(rng.integers(-3, 4))
            if c == 0:
                m[7 + o:9 + o, 2:14] = True
            elif c == 1:
                m[2:14, 7 + o:9 + o] = True
            else:
                np.fill_diagonal(m[max(o, 0):, max(-o, 0):], True)
            bg = 128 + rng.uniform(-40, 40, m.shape)
            imgs.append(np.where(m, bg + rng.choice([-110, 110]), bg))
    return np.clip(np.stack(imgs), 0, 255).astype(np.uint8), np.repeat(np.arange(3), 12)


def test_gradient_histograms_see_strokes_through_a_texture():
    from noisystudent.data.mirror import _gradient_histograms
    imgs, ys = _strokes()
    h = _gradient_histograms(imgs)
    assert h.shape == (36, 4 * 4 * 9) and (h >= 0).all()
    pixels, gradients = mirror_check(imgs, ys).opinions
    assert gradients.accuracy > pixels.accuracy and gradients.informative


def test_an_image_and_its_own_mirror_are_never_neighbours():
    """Two classes of perfectly symmetric images (one of each): a match of an image with itself or
    its own mirror would score 100%; leave-one-out scores it 0%."""
    a = np.zeros((2, 4, 4, 1), np.uint8)
    a[0, :, 1:3] = 200          # symmetric: its mirror is itself
    a[1, 1:3, :] = 200
    check = mirror_check(a, np.array([0, 1]))
    assert all(o.accuracy == 0.0 and o.mirrored == 0.0 for o in check.opinions)


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
    assert starter in out and "mirror off" in out and "1-NN on pixels" in out
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
