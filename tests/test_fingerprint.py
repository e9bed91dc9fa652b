"""data.fingerprint: content (issue 17 item 2, "content hashes when asked"): an image rewritten in
place with its old size and mtime is seen only under `content`; the digests are cached in the run
directory and the cache never trusts what `stat` trusts."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from noisystudent.config import SourceConfig, load_config
from noisystudent.data import create_source
from noisystudent.data.contenthash import MISSING, NOT_REGULAR, OK, ContentHashes
from noisystudent.errors import UserError
from noisystudent.layout import RunLayout

from test_bad_inputs import _img, make_data, write_cfg


def _same_size_rewrite(path: Path, seed: int) -> None:
    """New pixels, same byte count, old mtime put back: what `stat` cannot see. PNG without
    compression (stored deflate blocks) has a size set by the image's dimensions alone."""
    st = path.stat()
    _img(0, seed).save(path, compress_level=0)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


@pytest.fixture
def data(tmp_path):
    root = make_data(tmp_path / "data")
    _img(0, 1).save(root / "train" / "cat" / "0.png", compress_level=0)
    return root


def test_in_place_rewrite_with_the_old_mtime_is_seen_only_by_content(data):
    src = create_source(SourceConfig(kind="imagefolder", root=str(data / "train")), 3)
    stat_a, content_a = src.fingerprint(), src.fingerprint(ContentHashes())
    assert content_a != stat_a
    _same_size_rewrite(data / "train" / "cat" / "0.png", seed=2)
    assert src.fingerprint() == stat_a                      # stat: size and mtime are all it has
    assert src.fingerprint(ContentHashes()) != content_a    # content: the bytes changed


def test_content_fingerprint_ignores_a_touch(data):
    """Only the bytes count: `touch` or a copy without -p (new mtimes) redoes nothing."""
    src = create_source(SourceConfig(kind="folder", root=str(data / "pool")), 3)
    stat_a, content_a = src.fingerprint(), src.fingerprint(ContentHashes())
    f = data / "pool" / "003.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert src.fingerprint() != stat_a
    assert src.fingerprint(ContentHashes()) == content_a


def test_digest_cache_is_reused_and_never_fooled_by_size_and_mtime(data, tmp_path):
    paths = [str(p) for p in sorted((data / "train").rglob("*.png"))]
    cache = RunLayout(tmp_path / "run").cache("content-hashes.npz")
    first = ContentHashes(cache, racy_ns=0)
    a = first.digests(paths)
    assert first.read_files == len(paths) and (a[:, 0] == OK).all()
    first.flush()
    again = ContentHashes(cache, racy_ns=0)
    assert (again.digests(paths) == a).all() and again.read_files == 0      # a rerun reads nothing
    _same_size_rewrite(data / "train" / "cat" / "0.png", seed=3)
    third = ContentHashes(cache, racy_ns=0)
    b = third.digests(paths)
    assert third.read_files == 1                            # ctime moved: this file is read again
    i = paths.index(str(data / "train" / "cat" / "0.png"))
    assert (b[i] != a[i]).any() and (np.delete(b, i, 0) == np.delete(a, i, 0)).all()


def test_digests_of_files_changed_just_now_are_not_stored(data, tmp_path):
    """ctime ticks coarsely: a digest read in the same tick as a change could hide a second change."""
    paths = [str(p) for p in sorted((data / "pool").glob("*.png"))]
    cache = tmp_path / "c.npz"
    window = 1000 * 10**9                                   # (2 s by default; this file's are minutes)
    fresh = ContentHashes(cache, racy_ns=window)
    fresh.digests(paths)
    fresh.flush()
    assert not cache.exists()
    again = ContentHashes(cache, racy_ns=window)
    again.digests(paths)
    assert again.read_files == len(paths)
    assert ContentHashes().racy_ns == 2 * 10**9


def test_missing_fifo_and_damaged_cache(data, tmp_path, caplog):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)                                         # opening it would block: never opened
    cache = tmp_path / "c.npz"
    cache.write_bytes(b"not a zip")
    h = ContentHashes(cache, racy_ns=0)
    out = h.digests([str(fifo), str(tmp_path / "gone.png"), str(data / "pool" / "000.png")])
    assert list(out[:, 0]) == [NOT_REGULAR, MISSING, OK]
    assert "is damaged" in caplog.text                      # a warning; the run goes on
    h.flush()
    assert ContentHashes(cache).digests([str(data / "pool" / "000.png")])[0, 0] == OK


def test_fingerprint_key_is_validated():
    assert load_config(None, ["data.fingerprint=content"]).data.fingerprint == "content"
    with pytest.raises(UserError, match=r"config key 'data.fingerprint': 'sha1' is not allowed; "
                                        r"choose one of 'stat', 'content'"):
        load_config(None, ["data.fingerprint=sha1"])


def test_a_run_under_content_redoes_the_stages_that_read_a_rewritten_image(data, tmp_path, caplog, monkeypatch):
    """A whole run (in-process: two CLI runs cost minutes on a loaded machine): the teacher and its
    evaluation are redone after a same-size, same-mtime rewrite of a labeled image, and only then;
    the digests are cached in the run directory."""
    import noisystudent.data.contenthash as contenthash
    from noisystudent.pipeline import run as run_pipeline
    # the images are seconds old: without this, on a fast machine none would be old enough to store
    monkeypatch.setattr(contenthash, "RACY_NS", 0)
    cfg = load_config(write_cfg(tmp_path / "c.yaml", data, rounds=0, models=["ns_cnn_s"],
                                data__fingerprint="content"))
    run_dir = tmp_path / "run"
    lay = RunLayout(run_dir)
    teacher_stages = {lay.rel(lay.model(0, "teacher")), lay.rel(lay.eval(0, "teacher"))}

    def redone() -> set[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="noisystudent"):
            run_pipeline(cfg, run_dir, device="cpu", report=False)
        return {m.split(": ")[0] for m in caplog.messages if m.endswith(": running")}
    assert redone() == teacher_stages
    assert lay.cache("content-hashes.npz").is_file()
    assert redone() == set()
    _same_size_rewrite(data / "train" / "cat" / "0.png", seed=4)
    assert redone() == teacher_stages
