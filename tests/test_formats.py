"""Which files are images: JPEG's other suffixes, HEIC through pillow-heif, and a warning (never
silence) for photos no installed decoder reads."""
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from noisystudent.config import SourceConfig
from noisystudent.data import create_source, open_image
from noisystudent.data import formats, sources
from noisystudent.errors import UserError


def _pattern(h=24, w=32):
    """Smooth enough to survive lossy codecs, asymmetric so a turn would show."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], -1).astype(np.uint8)


def _folder(tmp_path, files: dict[str, str]) -> None:
    """files: relative path -> 'jpeg' | 'png' | 'junk' (bytes no decoder would read)."""
    for rel, kind in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "junk":
            p.write_bytes(b"not decodable here")
        else:
            Image.fromarray(_pattern()).save(p, "JPEG" if kind == "jpeg" else "PNG", quality=95)


def test_jpeg_under_its_other_suffixes_is_read(tmp_path):
    _folder(tmp_path, {"pool/a.jfif": "jpeg", "pool/b.JPE": "jpeg", "pool/c.jpg": "jpeg", "pool/d.txt": "junk"})
    src = create_source(SourceConfig(kind="folder", root=str(tmp_path / "pool")), 3)
    assert src.ids == ["a.jfif", "b.JPE", "c.jpg"]
    assert all(src.load(i).shape == (24, 32, 3) for i in range(3))


def test_heic_photos_are_read_through_pillow_heif(tmp_path):
    pytest.importorskip("pillow_heif", reason="HEIC needs the optional pillow-heif (`make` installs the heif extra)")
    assert formats.HEIF and ".heic" in formats.IMAGE_EXTENSIONS
    _folder(tmp_path, {"train/cat/a.png": "png", "train/dog/b.png": "png"})
    Image.fromarray(_pattern()).save(tmp_path / "train" / "cat" / "iphone.HEIC", quality=95)
    src = create_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "train")), 3)
    assert src.ids == ["cat/a.png", "cat/iphone.HEIC", "dog/b.png"]
    out = src.load(1)
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - _pattern().astype(int)).mean() < 4      # lossy HEVC, same picture


@pytest.fixture
def no_heif(monkeypatch):
    """This installation as one without pillow-heif."""
    monkeypatch.setattr(formats, "HEIF", False)
    monkeypatch.setattr(sources, "IMAGE_EXTENSIONS", tuple(e for e in formats.IMAGE_EXTENSIONS
                                                             if e not in (".heic", ".heif", ".hif")))


def test_photos_no_decoder_reads_are_left_out_with_a_warning_saying_how_to_read_them(tmp_path, no_heif, caplog):
    _folder(tmp_path, {"pool/a.jpg": "jpeg", "pool/b.heic": "junk", "pool/sub/c.HEIC": "junk",
                       "pool/d.CR2": "junk", "pool/notes.txt": "junk", "pool/.hidden.heic": "junk"})
    with caplog.at_level("WARNING", logger="noisystudent"):
        src = create_source(SourceConfig(kind="folder", root=str(tmp_path / "pool")), 3)
    assert src.ids == ["a.jpg"]
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [f"{tmp_path / 'pool'}: 3 photo(s) left out, no installed decoder reads them (.cr2: 1, "
                      ".heic: 2); `pip install pillow-heif` reads HEIC/HEIF; convert camera raw files to JPEG or PNG"]


def test_other_files_left_out_are_not_worth_a_warning(tmp_path, no_heif, caplog):
    _folder(tmp_path, {"train/cat/a.jpg": "jpeg", "train/cat/labels.csv": "junk", "train/dog/b.png": "png",
                       "train/dog/Thumbs.db": "junk"})
    with caplog.at_level("WARNING", logger="noisystudent"):
        create_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "train")), 3)
    assert caplog.records == []


def test_a_class_of_only_unreadable_photos_is_one_line_naming_them(tmp_path, no_heif):
    _folder(tmp_path, {"train/cat/a.jpg": "jpeg", "train/dog/b.heic": "junk", "train/dog/c.heic": "junk"})
    with pytest.raises(UserError) as e:
        create_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "train")), 3)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'train' / 'dog'}: class folder has no image files (.jpg, ")
    assert msg.endswith("; remove it or add images; " f"{tmp_path / 'train' / 'dog'}: 2 photo(s) left out, no installed "
                        "decoder reads them (.heic: 2); `pip install pillow-heif` reads HEIC/HEIF")
    assert "\n" not in msg


def test_unreadable_photos_names_only_photo_formats_this_installation_lacks(monkeypatch):
    assert formats.unreadable_photos("d", Counter({".txt": 5, ".csv": 1, "": 2})) is None
    monkeypatch.setattr(formats, "AVIF", False)
    note = formats.unreadable_photos("d", Counter({".avif": 2, ".nef": 1}))
    assert note == ("d: 3 photo(s) left out, no installed decoder reads them (.avif: 2, .nef: 1); a Pillow built "
                    "with AVIF (the PyPI wheels >= 11.2) reads AVIF; convert camera raw files to JPEG or PNG")
    monkeypatch.setattr(formats, "HEIF", True)
    assert formats.unreadable_photos("d", Counter({".heic": 4})) is None


def test_avif_is_read_where_pillow_has_it(tmp_path):
    if not formats.AVIF:
        pytest.skip("this Pillow build has no AVIF codec (the PyPI wheels >= 11.2 have one); "
                    ".avif files are left out with a warning there")
    Image.fromarray(_pattern()).save(tmp_path / "a.avif", quality=95)
    assert np.abs(open_image(tmp_path / "a.avif", 3).astype(int) - _pattern().astype(int)).mean() < 4


def test_links_to_missing_images_are_named_not_dropped_in_silence(tmp_path, caplog):
    _folder(tmp_path, {"pool/a.jpg": "jpeg", "elsewhere/b.jpg": "jpeg"})
    (tmp_path / "pool" / "b.jpg").symlink_to(tmp_path / "elsewhere" / "b.jpg")      # a good link: read
    (tmp_path / "pool" / "c.jpg").symlink_to(tmp_path / "unmounted" / "c.jpg")      # its target is gone
    with caplog.at_level("WARNING", logger="noisystudent"):
        src = create_source(SourceConfig(kind="folder", root=str(tmp_path / "pool")), 3)
    assert src.ids == ["a.jpg", "b.jpg"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'pool'}: 1 link(s) to images left out, their targets are missing"]
    note = formats.unreadable_photos("d", Counter({".cr2": 1, formats.BROKEN_LINK: 2}))
    assert note == ("d: 1 photo(s) left out, no installed decoder reads them (.cr2: 1); convert camera raw files "
                    "to JPEG or PNG; 2 link(s) to images left out too, their targets are missing")
