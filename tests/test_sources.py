import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from noisystudent.config import SourceConfig
from noisystudent.data import BadImage, create_source, draw_per_class
from noisystudent.errors import UserError


def _imagefolder(root, classes=("cat", "dog"), n=3, size=6, mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).convert(mode).save(root / c / f"{i}.png")
    return root


def test_imagefolder_ids_labels_classes(tmp_path):
    root = _imagefolder(tmp_path / "train")
    (root / "cat" / "notes.txt").write_text("not an image")   # ignored: not an image extension
    src = create_source(SourceConfig(kind="imagefolder", root=str(root)), 3)
    assert src.classes == ["cat", "dog"]
    assert src.ids == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    assert src.labels.tolist() == [0, 0, 0, 1, 1, 1]
    img = src.load(4)
    assert img.shape == (6, 6, 3) and img.dtype == np.uint8
    assert np.array_equal(img, np.asarray(Image.open(root / "dog" / "1.png")))


def test_grayscale_rgb_mix_is_converted(tmp_path):
    root = _imagefolder(tmp_path / "t", n=1)
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(root / "cat" / "gray.png")
    src = create_source(SourceConfig(kind="imagefolder", root=str(root)), 3)
    assert {src.load(i).shape for i in range(len(src))} == {(6, 6, 3)}
    src1 = create_source(SourceConfig(kind="imagefolder", root=str(root)), 1)
    assert {src1.load(i).shape for i in range(len(src1))} == {(6, 6, 1)}


def test_folder_source_is_unlabeled(tmp_path):
    root = _imagefolder(tmp_path / "pool")
    src = create_source(SourceConfig(kind="folder", root=str(root)), 3)
    assert src.classes is None and (src.labels == -1).all() and len(src) == 6
    assert src.ids[0] == "cat/0.png"


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(UserError, match="data root not found"):
        create_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "nope")), 3)
    (tmp_path / "e" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="class folder has no image files"):
        create_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "e")), 3)
    (tmp_path / "f").mkdir()
    with pytest.raises(UserError, match="no image files found"):
        create_source(SourceConfig(kind="folder", root=str(tmp_path / "f")), 3)


def test_corrupt_image_policy(tmp_path):
    root = _imagefolder(tmp_path / "c")
    (root / "dog" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    src = create_source(SourceConfig(kind="imagefolder", root=str(root)), 3)
    with pytest.raises(BadImage):
        src.load(src.ids.index("dog/9.png"))
    with pytest.raises(UserError, match="dog/9.png: cannot decode image"):
        src.cache(on_bad="fail")
    cached = src.cache(on_bad="skip")
    assert len(cached) == 6 and cached.skipped == ["dog/9.png"]


def _write_idx(path, arr, gz=True):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_source(tmp_path, gz):
    imgs = np.arange(4 * 5 * 5, dtype=np.uint8).reshape(4, 5, 5)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", imgs, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.array([0, 1, 2, 1]), gz)
    src = create_source(SourceConfig(kind="idx", root=str(tmp_path), split="test"), 1)
    assert len(src) == 4 and src.labels.tolist() == [0, 1, 2, 1] and src.classes == ["0", "1", "2"]
    assert src.ids[2] == "t10k/2" and np.array_equal(src.load(2)[..., 0], imgs[2])
    with pytest.raises(UserError, match="IDX file not found"):
        create_source(SourceConfig(kind="idx", root=str(tmp_path), split="train"), 1)


def test_idx_truncated(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 5, 5)), gz=False)
    data = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-7])
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4), gz=False)
    with pytest.raises(UserError, match="not a valid IDX file"):
        create_source(SourceConfig(kind="idx", root=str(tmp_path)), 1)


def test_digits_split_and_labeled_subset_reproducible():
    train = create_source(SourceConfig(kind="digits", split="train"), 1)
    test = create_source(SourceConfig(kind="digits", split="test"), 1)
    assert len(train) == 1500 and len(test) == 297 and not set(train.ids) & set(test.ids)
    a = create_source(SourceConfig(kind="digits", per_class=5, seed=3), 1)
    b = create_source(SourceConfig(kind="digits", per_class=5, seed=3), 1)
    c = create_source(SourceConfig(kind="digits", per_class=5, seed=4), 1)
    rest = create_source(SourceConfig(kind="digits", per_class=5, seed=3, subset="rest"), 1)
    assert a.ids == b.ids and a.ids != c.ids
    assert np.bincount(a.labels).tolist() == [5] * 10
    assert not set(a.ids) & set(rest.ids) and len(a) + len(rest) == 1500
    half = create_source(SourceConfig(kind="digits", per_class=5, seed=3, subset="rest", fraction=0.5), 1)
    assert len(half) == 725 and set(half.ids) <= set(rest.ids)


def test_draw_per_class_too_few():
    with pytest.raises(UserError, match="fewer than per_class=3"):
        draw_per_class(np.array([0, 0, 1]), 3, 0)


def test_unknown_source_kind_lists_allowed():
    cfg = SourceConfig(kind="digits")
    cfg.kind = "zip"
    with pytest.raises(UserError, match="unknown source 'zip'; choose one of .*digits"):
        create_source(cfg, 1)


def _photo(path, w, h, seed=0):
    """A photo-like JPEG: smooth colour fields plus sensor noise."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    a = np.asarray(base, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


def _decoded_sizes(monkeypatch):
    """Record the size each JPEG is decoded at (after PIL's draft, before any shrink)."""
    from PIL import JpegImagePlugin
    seen, orig = [], JpegImagePlugin.JpegImageFile.load

    def load(self):
        seen.append(self.size)
        return orig(self)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    return seen


@pytest.mark.parametrize("chans", [1, 3])
def test_a_large_jpeg_is_decoded_at_reduced_scale_then_shrunk_as_before(tmp_path, monkeypatch, chans):
    from noisystudent.data import open_image
    from noisystudent.data.decode import shrink
    big = _photo(tmp_path / "big.jpg", 1200, 900)
    full = shrink(open_image(big, chans), 256)             # the full-size decode, shrunk
    seen = _decoded_sizes(monkeypatch)
    out = open_image(big, chans, max_side=256)
    # 1200x900 into a 256 box: libjpeg's 1/4 scale (300x225) is the smallest that still covers 256x192
    assert seen == [(300, 225)]
    assert out.shape == full.shape == (192, 256, chans)
    diff = np.abs(out.astype(np.int16) - full.astype(np.int16))
    assert diff.mean() < 1.5 and diff.max() < 40, (diff.mean(), diff.max())


def test_a_jpeg_under_twice_max_side_or_without_it_is_decoded_whole(tmp_path, monkeypatch):
    from noisystudent.data import open_image
    from noisystudent.data.decode import shrink
    jpg = _photo(tmp_path / "mid.jpg", 500, 300)
    seen = _decoded_sizes(monkeypatch)
    whole = open_image(jpg, 3)
    assert np.array_equal(open_image(jpg, 3, max_side=256), shrink(whole, 256))   # bit for bit, as before
    assert seen == [(500, 300), (500, 300)]
    # extreme aspect: the short side limits the scale (both sides stay >= the box's)
    thin = _photo(tmp_path / "thin.jpg", 2000, 12)
    seen.clear()
    assert open_image(thin, 3, max_side=512).shape == (3, 512, 3)
    assert seen == [(1000, 6)]


def _upright_pattern(h=6, w=9):
    """An image no flip or rotation maps onto itself: every pixel a different value."""
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


# What a camera stores for an upright scene `u` under each EXIF orientation (the EXIF standard: the
# tag says how to turn the stored pixels for display; these are the inverse turns).
_STORED = {1: lambda u: u, 2: lambda u: u[:, ::-1], 3: lambda u: u[::-1, ::-1], 4: lambda u: u[::-1],
           5: lambda u: u.transpose(1, 0, 2), 6: lambda u: np.rot90(u, 1), 7: lambda u: np.rot90(u, 2).transpose(1, 0, 2),
           8: lambda u: np.rot90(u, -1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_images_are_decoded_upright_as_their_exif_orientation_says(tmp_path, orientation):
    from noisystudent.data import open_image
    u = _upright_pattern()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "shot.png"        # lossless, so the comparison is exact (PNG carries EXIF too)
    Image.fromarray(np.ascontiguousarray(_STORED[orientation](u))).save(path, exif=exif)
    assert np.array_equal(open_image(path, 3), u)
    assert np.array_equal(open_image(path, 1)[:, :, 0], np.asarray(Image.fromarray(u).convert("L")))


def test_a_large_portrait_jpeg_is_upright_and_decoded_at_reduced_scale(tmp_path, monkeypatch):
    from noisystudent.data import open_image
    from noisystudent.data.decode import shrink
    stored = _photo(tmp_path / "plain.jpg", 1200, 900)
    exif = Image.Exif()
    exif[0x0112] = 6                    # a phone held upright: landscape pixels, turned for display
    with Image.open(stored) as im:
        im.save(tmp_path / "portrait.jpg", quality=100, exif=exif)
    as_stored = open_image(tmp_path / "plain.jpg", 3)
    seen = _decoded_sizes(monkeypatch)
    out = open_image(tmp_path / "portrait.jpg", 3, max_side=256)
    assert seen == [(300, 225)]                         # still libjpeg's 1/4 scale
    assert out.shape == (256, 192, 3)                   # portrait
    diff = np.abs(out.astype(np.int16) - shrink(np.rot90(as_stored, -1).copy(), 256).astype(np.int16))
    assert diff.mean() < 2.5, diff.mean()


@pytest.mark.parametrize("exif", [b"Exif\x00\x00MM\x00*garbage", b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff",
                                  "orientation 9", "orientation 0"])
def test_a_malformed_or_unknown_exif_orientation_keeps_the_image_as_stored(tmp_path, exif):
    from noisystudent.data import open_image
    u = _upright_pattern()
    path = tmp_path / "odd.png"
    if isinstance(exif, str):
        e = Image.Exif()
        e[0x0112] = int(exif.split()[-1])
        exif = e
    Image.fromarray(u).save(path, exif=exif)
    assert np.array_equal(open_image(path, 3), u)
