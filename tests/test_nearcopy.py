"""Near copies of evaluation images in the pool (data/nearcopy.py): what is found, what is not, and
how a run leaves them out."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageEnhance
from sklearn.datasets import load_sample_images

from noisystudent.cli import main
from noisystudent.data import ArraySource
from noisystudent.data.nearcopy import (DETAIL_MIN, THUMB, best_matches, cached_near_copies, copy_threshold, describe,
                                        near_copies_of, near_copy_pairs, source_thumbnails, thumbnail)
from noisystudent.data.sources import read_folder
from noisystudent.layout import RunLayout
from own_data import make_own_data
from test_init_data import TINY


def _photos() -> np.ndarray:
    """Distinct real photos (uint8 NHWC, 32 px): the 96 px tiles of scikit-learn's two sample photos
    that have detail at 32 px (smooth sky and petals left out), each tile a photo of its own."""
    tiles = []
    for im in load_sample_images().images:
        for y in range(0, im.shape[0] - 96, 96):
            for x in range(0, im.shape[1] - 96, 96):
                tiles.append(np.asarray(Image.fromarray(im[y:y + 96, x:x + 96]).resize((32, 32), Image.BILINEAR)))
    tiles = np.stack(tiles)
    return tiles[~_desc(tiles).flat.numpy()]


def _desc(images) -> "object":
    return describe(np.stack([thumbnail(a) for a in images]))


def _jpeg(a: np.ndarray, q: int) -> np.ndarray:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(b.getvalue())).convert("RGB"))


def _altered(a: np.ndarray) -> list[np.ndarray]:
    im = Image.fromarray(a)
    return [_jpeg(a, 75),                                                                     # re-saved
            np.asarray(im.resize((96, 96), Image.BICUBIC)),                                 # enlarged
            np.asarray(ImageEnhance.Brightness(im).enhance(1.3)),                            # brighter
            np.repeat(np.asarray(im.convert("L"))[:, :, None], 3, axis=2),                   # gray
            np.pad(a, ((1, 0), (1, 0), (0, 0)), mode="edge")[:32, :32],                      # moved 1 px
            _jpeg(np.ascontiguousarray(a[:, ::-1]), 75)]                                      # mirrored, re-saved


def test_thumbnail_is_a_gray_square_of_any_image():
    assert thumbnail(np.zeros((7, 50, 3), np.uint8)).shape == (THUMB, THUMB)
    gray = thumbnail(np.full((40, 40, 1), 90, np.uint8))
    assert gray.dtype == np.float32 and np.allclose(gray, 90)
    rgb = thumbnail(np.full((40, 40, 3), (90, 90, 90), np.uint8))
    assert np.allclose(rgb, gray)


def test_altered_copies_are_found_and_other_photos_are_not():
    photos = _photos()
    assert len(photos) >= 24
    test, others = photos[0::2], photos[1::2]        # the odd tiles: photos of their own, none a copy
    kinds = ["re-saved", "enlarged", "brighter", "gray", "moved", "mirrored"]
    altered = [_altered(a) for a in test]
    for k, kind in enumerate(kinds):
        pool = [alt[k] for alt in altered] + list(others)
        rows, match, score = near_copy_pairs(_desc(pool), _desc(test))
        assert (rows < len(test)).all(), kind                   # no other photo is taken for a copy
        assert (match == rows).all(), kind                      # a copy is matched to its own original
        assert len(rows) >= 0.8 * len(test), (kind, len(rows)) # and most copies are found
        assert ((score >= DETAIL_MIN) & (score <= 1.0001)).all()


def test_mirrored_descriptors_are_those_of_the_mirrored_images():
    """`mirrored` flips the descriptors without decoding: the same as describing the mirrored images;
    an image never matches its own mirror when a set is compared with itself."""
    from noisystudent.data.nearcopy import mirrored
    photos = _photos()[:6]
    a, b = mirrored(_desc(photos)), _desc(np.ascontiguousarray(photos[:, :, ::-1]))
    assert torch.allclose(a.layout, b.layout, atol=1e-5) and torch.allclose(a.detail, b.detail, atol=1e-3)
    assert bool((a.flat == b.flat).all())
    d = _desc(photos)
    score, _ = best_matches(mirrored(d), d, same=True)
    assert (score < DETAIL_MIN).all()


def test_flat_images_never_match_and_a_row_never_matches_itself():
    flat = [np.full((32, 32, 3), v, np.uint8) for v in (0, 128, 255)]
    test = _desc(flat)
    assert bool(test.flat.all())
    assert near_copy_pairs(_desc(flat), test)[0].size == 0      # blank pool vs blank test: nothing to tell
    photos = _photos()[:10]
    d = _desc(np.concatenate([photos, photos[4:5]]))              # row 10 is a copy of row 4
    score, match = best_matches(d, d, same=True)
    assert match[10] == 4 and match[4] == 10 and score[10] > 0.99
    assert (match[:10][np.arange(10) != 4] != np.arange(10)[np.arange(10) != 4]).all()


def test_sets_alike_by_nature_are_not_searched():
    photos = _desc(_photos())
    assert copy_threshold(photos) == (DETAIL_MIN, 0.0)
    rng = np.random.default_rng(0)             # 60 pale silhouettes on black, as in Fashion-MNIST
    yy, xx = np.mgrid[0:28, 0:28]
    alike = []
    for _ in range(60):
        ry, rx = rng.uniform(9, 12), rng.uniform(5, 8)
        shape = (((yy - 14) / ry) ** 2 + ((xx - 14) / rx) ** 2 < 1) * rng.uniform(150, 230)
        alike.append(np.clip(shape + rng.normal(0, 2, shape.shape), 0, 255).astype(np.uint8)[:, :, None])
    t, share = copy_threshold(_desc(alike))
    assert share > 0.5 and t is None


def test_sources_stream_in_blocks_skip_bad_files_and_name_pairs_by_id(tmp_path):
    photos = _photos()[:12]
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    for i, a in enumerate(photos[:6]):
        Image.fromarray(a).save(pool_dir / f"p{i}.png")
    Image.fromarray(np.asarray(Image.fromarray(photos[8]).resize((400, 400), Image.BICUBIC))).save(pool_dir / "big.jpg", quality=90)
    (pool_dir / "broken.png").write_bytes(b"not an image")
    pool = read_folder(str(pool_dir), "", 3)
    blocks = list(source_thumbnails(pool, block=3))
    assert [len(r) for r, _ in blocks] == [3, 3, 1]                    # 8 files, the broken one left out
    assert all(t.shape[1:] == (THUMB, THUMB) and t.dtype == np.uint8 for _, t in blocks)
    test = ArraySource("test", [f"t{i}" for i in range(6, 12)], np.zeros(6, np.int64), None, 3, images=photos[6:])
    found, thresholds = near_copies_of(pool, {"test": test, "val": None})
    assert list(found) == ["test"] and {k: v[0] for k, v in found["test"].items()} == {"big.jpg": "t8"}
    assert thresholds == {"test": (DETAIL_MIN, 0.0)}
    again, _ = near_copies_of(pool, {"test": test})
    assert again == found                                                 # deterministic


def test_a_run_leaves_near_copies_out_keeps_them_when_asked_and_reuses_its_search(tmp_path, capsys):
    """A pool holding an enlarged, re-encoded test image: left out of the selection, said once, the
    pairs kept in cache/near-copies.json (a rerun reads them back); select.near_copies=false keeps it."""
    make_own_data(tmp_path / "d", per_class=6, test_per_class=2)
    test_img = sorted((tmp_path / "d" / "test").rglob("*.png"))[0]
    Image.open(test_img).resize((36, 36), Image.BICUBIC).save(tmp_path / "d" / "pool" / "zz_near.jpg", quality=95)
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 0
    cfg = str(tmp_path / "p" / "config.yaml")
    over = [*TINY, "--set", "select.threshold=0.0", "--set", "select.per_class=none", "--no-report"]
    run = tmp_path / "run"
    assert main(["run", cfg, "--run-dir", str(run), *over]) == 0, capsys.readouterr().err
    log = (run / "run.log").read_text()
    assert "the unlabeled pool holds near copies of evaluation images" in log and "'zz_near.jpg'" in log
    sel_dir = RunLayout(run).selection(1)
    report = json.loads((sel_dir / "selection.json").read_text())
    near = report["pool_near_copies"]["test"]
    assert near["count"] == 1 and near["examples"][0][:2] == ["zz_near.jpg", test_img.relative_to(tmp_path / "d" / "test").as_posix()]
    chosen = set(pq.read_table(sel_dir / "selection.parquet").column("sample_id").to_pylist())
    assert "zz_near.jpg" not in chosen and len(chosen) == 18
    cache = json.loads((run / "cache" / "near-copies.json").read_text())
    assert list(cache["found"]["test"]) == ["zz_near.jpg"]
    # a rerun: every stage done, the search read back from the cache (no second log line)
    assert main(["run", cfg, "--run-dir", str(run), *over]) == 0
    text = (run / "run.log").read_text()
    assert text.count("pool images checked") == 1 and text.count("labeled images checked") == 1
    assert "labeled_near_copies" not in (run / "warnings.json").read_text()     # none among the labeled
    keep = tmp_path / "keep"
    assert main(["run", cfg, "--run-dir", str(keep), *over, "--set", "select.near_copies=false"]) == 0
    chosen = set(pq.read_table(RunLayout(keep).selection(1) / "selection.parquet").column("sample_id").to_pylist())
    assert "zz_near.jpg" in chosen and len(chosen) == 19


def test_the_search_is_kept_under_the_sources_fingerprints(tmp_path):
    """Read back for the same fingerprints; computed again for other ones or a damaged file."""
    photos = _photos()[:8]
    test = ArraySource("test", [f"t{i}" for i in range(8)], np.zeros(8, np.int64), None, 3, images=photos)
    pool = ArraySource("pool", ["a", "b"], np.zeros(2, np.int64), None, 3, images=[_jpeg(photos[2], 75), photos[0][::-1]])
    path = tmp_path / "cache" / "near-copies.json"
    first = cached_near_copies(pool, {"test": test}, {"test": "x", "unlabeled": "y"}, path)
    assert list(first["found"]["test"]) == ["a"] and first["thresholds"] == {"test": [DETAIL_MIN, 0.0]}
    fake = json.loads(path.read_text())
    fake["found"] = {"test": {"zz": ["t0", 1.0]}}          # what a stale result would look like
    path.write_text(json.dumps(fake))
    assert cached_near_copies(pool, {"test": test}, {"test": "x", "unlabeled": "y"}, path)["found"] == fake["found"]
    assert cached_near_copies(pool, {"test": test}, {"test": "x", "unlabeled": "z"}, path) == first   # pool changed
    path.write_text("{not json")
    assert cached_near_copies(pool, {"test": test}, {"test": "x", "unlabeled": "z"}, path) == first


def test_tar_shards_and_a_subset_pool_read_through_two_decode_processes(tmp_path):
    """A pool of webdataset-style shards, read by 2 DataLoader processes (the run's decode workers),
    and a subset of it (a source with `exclude`): the same near copy is found, by its member id."""
    import tarfile
    from noisystudent.config import SourceConfig
    from noisystudent.data import create_source
    photos = _photos()[:30]
    test = ArraySource("test", [f"t{i}" for i in range(15)], np.zeros(15, np.int64), None, 3, images=photos[:15])
    (tmp_path / "tars").mkdir()
    with tarfile.open(tmp_path / "tars" / "pool-000.tar", "w") as tf:
        members = [(f"p{i:03d}.png", photos[15 + i % 15]) for i in range(300)] + [("zz.jpg", photos[7])]
        for name, a in members:
            b = io.BytesIO()
            im = Image.fromarray(a) if name.endswith(".png") else Image.fromarray(a).resize((80, 80), Image.BICUBIC)
            im.save(b, "PNG" if name.endswith(".png") else "JPEG", quality=90)
            ti = tarfile.TarInfo(name)
            ti.size = b.tell()
            tf.addfile(ti, io.BytesIO(b.getvalue()))
    tar = create_source(SourceConfig(kind="tar", root=str(tmp_path / "tars")), 3)
    found, _ = near_copies_of(tar, {"test": test}, workers=2)
    assert {k: v[0] for k, v in found["test"].items()} == {"pool-000/zz": "t7"}
    part = tar.subset(np.arange(250, len(tar)))
    found, _ = near_copies_of(part, {"test": test}, workers=2)
    assert {k: v[0] for k, v in found["test"].items()} == {"pool-000/zz": "t7"}


def test_labeled_near_copies_of_test_images_are_said_at_the_teacher_stage(tmp_path, capsys):
    """A labeled image that is a re-saved, enlarged test image: one warning (run.log, warnings.json),
    the pair in cache/labeled-near-copies.json; the sets themselves are left as the user made them."""
    make_own_data(tmp_path / "d", per_class=6, test_per_class=2)
    test_img = sorted((tmp_path / "d" / "test" / "dog").glob("*.png"))[0]
    Image.open(test_img).resize((30, 30), Image.BICUBIC).save(tmp_path / "d" / "train" / "dog" / "zz_leak.jpg", quality=95)
    assert main(["init", str(tmp_path / "p"), "--data", str(tmp_path / "d")]) == 0
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "p" / "config.yaml"), "--run-dir", str(run), *TINY]) == 0, capsys.readouterr().err
    assert ("labeled images are copies or near copies of evaluation images (1 test image; e.g. labeled "
            f"'dog/zz_leak.jpg' ~ test 'dog/{test_img.name}')") in (run / "run.log").read_text()
    assert any(w["key"].startswith("labeled_near_copies") for w in json.loads((run / "warnings.json").read_text()))
    cache = json.loads((run / "cache" / "labeled-near-copies.json").read_text())
    assert {k: v[0] for k, v in cache["found"]["test"].items()} == {"dog/zz_leak.jpg": f"dog/{test_img.name}"}


def test_evaluation_thumbnails_are_decoded_once_a_fingerprint(tmp_path, monkeypatch):
    """The labeled check and the pool check share the evaluation sets' thumbnails (kept under the
    source's fingerprint): the second search decodes only the searched images."""
    import noisystudent.data.nearcopy as nc
    photos = _photos()[:8]
    test = ArraySource("test", [f"t{i}" for i in range(8)], np.zeros(8, np.int64), None, 3, images=photos)
    first = nc.evaluation_set(test, cache=tmp_path / "near-copies-test.npz", fingerprint="fp1")
    decoded = []
    real = nc.source_thumbnails
    monkeypatch.setattr(nc, "source_thumbnails", lambda src, *a, **k: (decoded.append(src.name), real(src, *a, **k))[1])
    again = nc.evaluation_set(test, cache=tmp_path / "near-copies-test.npz", fingerprint="fp1")
    assert decoded == [] and np.array_equal(first[0], again[0]) and first[2] == again[2]
    assert bool((first[1].detail == again[1].detail).all())
    nc.evaluation_set(test, cache=tmp_path / "near-copies-test.npz", fingerprint="fp2")    # other images
    assert decoded == ["test"]


def test_a_new_decoder_version_recomputes_the_cached_thumbnails_and_search(tmp_path, monkeypatch):
    """Cached near-copy data were computed from decoded pixels: when `open_image` changes what a file
    gives (DECODE_VERSION), both caches are recomputed instead of compared with new pixels."""
    import noisystudent.data.nearcopy as nc
    photos = _photos()[:8]
    test = ArraySource("test", [f"t{i}" for i in range(8)], np.zeros(8, np.int64), None, 3, images=photos)
    pool = ArraySource("pool", ["a"], np.zeros(1, np.int64), None, 3, images=[_jpeg(photos[2], 75)])
    nc.evaluation_set(test, cache=tmp_path / "near-copies-test.npz", fingerprint="fp1")
    path = tmp_path / "near-copies.json"
    nc.cached_near_copies(pool, {"test": test}, {"test": "x", "unlabeled": "y"}, path)
    fake = json.loads(path.read_text())
    fake["found"] = {"test": {}}
    path.write_text(json.dumps(fake))
    decoded = []
    real = nc.source_thumbnails
    monkeypatch.setattr(nc, "source_thumbnails", lambda src, *a, **k: (decoded.append(src.name), real(src, *a, **k))[1])
    assert nc._METHOD[-1] == nc.DECODE_VERSION
    monkeypatch.setattr(nc, "_METHOD", nc._METHOD[:-1] + [nc.DECODE_VERSION + 1])
    nc.evaluation_set(test, cache=tmp_path / "near-copies-test.npz", fingerprint="fp1")
    assert decoded == ["test"]
    assert list(nc.cached_near_copies(pool, {"test": test}, {"test": "x", "unlabeled": "y"}, path)["found"]["test"]) == ["a"]


def test_under_torchrun_each_rank_searches_a_share_of_the_pool(tmp_path):
    """Two ranks (torchrun, gloo): each decodes half of the pool (rank 0 the test set too, which the
    other reads from the cache), and both return what one process finds, near copies in either half
    included; the second call reads it back on both ranks without decoding."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    from noisystudent.config import SourceConfig
    from noisystudent.data import create_source
    from test_distributed import _free_port
    photos = _photos()
    (tmp_path / "test").mkdir()
    (tmp_path / "pool").mkdir()
    for i in range(10):
        Image.fromarray(photos[i]).save(tmp_path / "test" / f"t{i}.png")
    for i in range(20):
        Image.fromarray(photos[10 + i]).save(tmp_path / "pool" / f"p{i:02d}.png")
    Image.fromarray(_jpeg(photos[2], 75)).save(tmp_path / "pool" / "a_copy.png")        # first half
    Image.fromarray(_altered(photos[7])[1]).save(tmp_path / "pool" / "z_copy.png")      # second half
    one = cached_near_copies(
        create_source(SourceConfig(kind="folder", root=str(tmp_path / "pool")), 3),
        {"test": create_source(SourceConfig(kind="folder", root=str(tmp_path / "test")), 3)},
        {"test": "t", "unlabeled": "u"}, tmp_path / "one" / "near-copies.json")
    assert {p: v[0] for p, v in one["found"]["test"].items()} == {"a_copy.png": "t2.png", "z_copy.png": "t7.png"}
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    root = Path(__file__).resolve().parent
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(root / "_ddp_near_copies.py"),
                        str(tmp_path / "pool"), str(tmp_path / "test"), str(tmp_path / "out")],
                       capture_output=True, text=True, env=dict(env, OMP_NUM_THREADS="1"), timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["first"] == one == r["again"] and r["decoded_again"] == []
    assert ranks[0]["decoded"] == [10, 11] and ranks[1]["decoded"] == [11]     # test set once; 22 pool images split
    saved = json.loads((tmp_path / "out" / "cache" / "near-copies.json").read_text())
    assert saved["found"] == one["found"]
