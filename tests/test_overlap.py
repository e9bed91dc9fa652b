"""Pool images that are copies of evaluation images (data/overlap.py) and what the select stage does
with them: left out of the selection, said once, in the fingerprint only when there are some."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from noisystudent.cli import main
from noisystudent.config import SourceConfig
from noisystudent.data import ArraySource, create_source
from noisystudent.data.overlap import HEAD_BYTES, pool_copies
from noisystudent.layout import RunLayout
from noisystudent.labels import shard_name
from noisystudent.selection import select_from_labels
from own_data import make_own_data
from test_init_data import TINY


def _folder(root) -> "create_source":
    return create_source(SourceConfig(kind="folder", root=str(root)), 3)


def _imagefolder(root, **kw):
    return create_source(SourceConfig(kind="imagefolder", root=str(root), **kw), 3)


def test_copies_links_and_same_size_impostors(tmp_path):
    """A copied file, a hard link and a symlink of test images are found; files of a test image's size
    whose bytes differ (in the first 4 KiB, or only after it) are not; nor is anything in a pool of
    other images."""
    make_own_data(tmp_path / "d", per_class=2, test_per_class=3)
    test = tmp_path / "d" / "test"
    pool = tmp_path / "d" / "pool"
    t = sorted(test.rglob("*.png"))
    shutil.copy(t[0], pool / "copied.png")
    os.link(t[1], pool / "hardlink.png")
    (pool / "symlink.png").symlink_to(t[2])
    # a big test "image" (any bytes: nothing is decoded) and two pool files of its size
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, 3 * HEAD_BYTES, dtype=np.uint8).tobytes()
    (test / "cat" / "big.png").write_bytes(big)
    (pool / "tail_differs.png").write_bytes(big[:-1] + bytes([big[-1] ^ 1]))
    (pool / "head_differs.png").write_bytes(bytes([big[0] ^ 1]) + big[1:])
    (pool / "big_copy.png").write_bytes(big)
    small = t[3].read_bytes()
    (pool / "small_differs.png").write_bytes(small[:-1] + bytes([small[-1] ^ 1]))
    found = pool_copies(_folder(pool), {"test": _imagefolder(test), "val": None})
    assert found == {"test": ["big_copy.png", "copied.png", "hardlink.png", "symlink.png"]}
    make_own_data(tmp_path / "e", per_class=2)          # another draw of images: nothing in common
    assert pool_copies(_folder(tmp_path / "e" / "pool"), {"test": _imagefolder(test)}) == {}


def test_a_pool_root_over_the_test_folder_and_a_drawn_val(tmp_path):
    """`unlabeled: {kind: folder, root: ROOT}` takes in ROOT/test/ under other ids: every test image is
    found by file identity; a val set drawn from train/ (a subset of it) is compared through its parent."""
    make_own_data(tmp_path / "d", per_class=10, test_per_class=2)
    pool = _folder(tmp_path / "d")
    val = _imagefolder(tmp_path / "d" / "train", per_class=2)
    found = pool_copies(pool, {"val": val, "test": _imagefolder(tmp_path / "d" / "test")})
    assert found["test"] == sorted(f"test/{i}" for i in _imagefolder(tmp_path / "d" / "test").ids)
    assert found["val"] == sorted(f"train/{i}" for i in val.ids)


def test_tar_members_and_in_memory_arrays(tmp_path):
    """Tar members compare by their bytes with files (a member that is a test file's copy is found);
    arrays by their pixels (and shape); encoded bytes are never compared with pixels."""
    make_own_data(tmp_path / "d", per_class=2, test_per_class=2)
    tfile = sorted((tmp_path / "d" / "test").rglob("*.png"))[0]
    (tmp_path / "tars").mkdir()
    with tarfile.open(tmp_path / "tars" / "pool-000.tar", "w") as tf:
        for name, data in (("a.png", tfile.read_bytes()), ("b.png", (tmp_path / "d" / "pool" / "img000.png").read_bytes())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    tar = create_source(SourceConfig(kind="tar", root=str(tmp_path / "tars")), 3)
    assert pool_copies(tar, {"test": _imagefolder(tmp_path / "d" / "test")}) == {"test": ["pool-000/a"]}
    # over HEAD_BYTES a member is compared whole: its digest must be the one a file's bytes get
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "big.png")
    (tmp_path / "bt" / "a").mkdir(parents=True)
    shutil.copy(tmp_path / "big.png", tmp_path / "bt" / "a" / "x.png")
    data = (tmp_path / "big.png").read_bytes()
    assert len(data) > HEAD_BYTES
    (tmp_path / "bigtar").mkdir()
    with tarfile.open(tmp_path / "bigtar" / "pool-000.tar", "w") as tf:
        ti = tarfile.TarInfo("c.png")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    big = create_source(SourceConfig(kind="tar", root=str(tmp_path / "bigtar")), 3)
    assert pool_copies(big, {"test": _imagefolder(tmp_path / "bt")}) == {"test": ["pool-000/c"]}

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (6, 4, 8, 3), dtype=np.uint8)
    arr = lambda ims, ids: ArraySource("x", ids, np.zeros(len(ids), dtype=np.int64), None, images=ims)
    other = arr(imgs[:2], ["t0", "t1"])
    pool = arr(np.concatenate([imgs[1:4], imgs[:1]]), ["p1", "p2", "p3", "p0"])
    assert pool_copies(pool, {"test": other}) == {"test": ["p0", "p1"]}
    same_bytes = arr([imgs[0].reshape(8, 4, 3)], ["q"])              # the bytes of t0 in another shape
    assert pool_copies(same_bytes, {"test": other}) == {}
    assert pool_copies(_folder(tmp_path / "d" / "pool"), {"test": other}) == {}      # files vs pixels


def _shards(tmp_path, ids, probs, name="labels"):
    import pyarrow as pa
    from noisystudent.labels import shard_schema
    d = tmp_path / name
    d.mkdir()
    C = probs.shape[1]
    table = pa.table({"sample_id": ids, "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1), pa.float16()), C),
                      "pred": probs.argmax(1).astype(np.int32), "confidence": probs.max(1).astype(np.float32),
                      "true_label": np.full(len(ids), -1, dtype=np.int32), "teacher": ["t"] * len(ids)},
                     schema=shard_schema(C))
    pq.write_table(table, d / shard_name(0))
    return d


def test_select_from_labels_without_the_excluded_ids_is_as_if_they_were_not_there(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3) * 0.5, 40).astype(np.float16).astype(np.float32)
    ids = [f"img{i:02d}" for i in range(40)]
    drop = {"img03", "img07", "img11", "img30", "nowhere"}
    keep = [i for i, s in enumerate(ids) if s not in drop]
    kw = dict(num_classes=3, threshold=0.4, per_class="auto", class_counts=[5, 5, 5], seed=3, batch_rows=7)
    a = select_from_labels(_shards(tmp_path, ids, probs, "all"), exclude_ids=sorted(drop), **kw)
    b = select_from_labels(_shards(tmp_path, [ids[i] for i in keep], probs[keep], "less"), **kw)
    assert a.table.equals(b.table) and a.report == b.report and a.report["rows"] == 36
    assert not drop & set(a.table.column("sample_id").to_pylist())


def test_a_run_leaves_pool_copies_of_test_images_out_and_says_so(tmp_path, capsys):
    """The whole loop on tiny folders whose pool holds two test images: the selection leaves them out,
    selection.json and warnings.json say so, and a pool without copies keeps the fingerprint the
    select stage had before the check (no `pool_copies` in its config)."""
    make_own_data(tmp_path / "d", per_class=6, test_per_class=2)
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 0
    cfg = str(tmp_path / "p" / "config.yaml")
    over = [*TINY, "--set", "select.threshold=0.0", "--set", "select.per_class=none", "--no-report"]
    assert main(["run", cfg, "--run-dir", str(tmp_path / "clean"), *over]) == 0, capsys.readouterr().err
    stage = json.loads((RunLayout(tmp_path / "clean").selection(1) / "stage.json").read_text())
    assert "pool_copies" not in stage["config"]
    tests = sorted((tmp_path / "d" / "test").rglob("*.png"))[:2]
    for i, t in enumerate(tests):
        shutil.copy(t, tmp_path / "d" / "pool" / f"zz_copy{i}.png")
    shutil.copytree(tmp_path / "clean" / "round0", tmp_path / "leak" / "round0")     # the same teacher, reused
    assert main(["run", cfg, "--run-dir", str(tmp_path / "leak"), *over]) == 0, capsys.readouterr().err
    assert "round0/teacher: done, skipping" in (tmp_path / "leak" / "run.log").read_text()
    assert ("the unlabeled pool holds copies of evaluation images (2 of test; e.g. 'zz_copy0.png')"
            in (tmp_path / "leak" / "run.log").read_text())
    sel_dir = RunLayout(tmp_path / "leak").selection(1)
    report = json.loads((sel_dir / "selection.json").read_text())
    assert report["pool_copies"] == {"test": {"count": 2, "examples": ["zz_copy0.png", "zz_copy1.png"]}}
    chosen = set(pq.read_table(sel_dir / "selection.parquet").column("sample_id").to_pylist())
    assert chosen and not chosen & {"zz_copy0.png", "zz_copy1.png"}          # threshold 0: all but the copies
    assert len(chosen) == 18
    warns = json.loads((tmp_path / "leak" / "warnings.json").read_text())
    assert any(w["key"] == "pool_copies" for w in warns)
