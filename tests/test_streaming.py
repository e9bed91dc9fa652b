"""Streaming sources: WebDataset-style tar shards and manifests (tiny generated fixtures)."""
import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from noisystudent.config import SourceConfig
from noisystudent.data import BadImage, TarSource, create_source, eval_batches
from noisystudent.data.streaming import expand_braces, scan_tar
from noisystudent.errors import UserError


def _png(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def _images(n, seed=0, size=6):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (size, size), dtype=np.uint8) for _ in range(n)]


def _write_shards(root, n_shards=3, per_shard=4, labels=True, fmt=tarfile.PAX_FORMAT):
    """Shards pool-000.tar.. with keys s{shard}-{i:03d}; returns {id: (image, label)}."""
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for s in range(n_shards):
        imgs = _images(per_shard, seed=s)
        with tarfile.open(root / f"pool-{s:03d}.tar", "w", format=fmt) as tf:
            for i, im in enumerate(imgs):
                key = f"s{s}-{i:03d}"
                _add(tf, f"{key}.png", _png(im))
                if labels:
                    _add(tf, f"{key}.cls", str((s + i) % 3).encode())
                truth[f"pool-{s:03d}/{key}"] = (im, (s + i) % 3 if labels else -1)
    return truth


def test_expand_braces():
    assert expand_braces("p-{000..003}.tar") == [f"p-00{i}.tar" for i in range(4)]
    assert expand_braces("{a,b}/x-{1..2}.tar") == ["a/x-1.tar", "a/x-2.tar", "b/x-1.tar", "b/x-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_tar_ids_labels_random_access_equals_sequential(tmp_path):
    truth = _write_shards(tmp_path / "pool")
    src = create_source(SourceConfig(kind="tar", root=str(tmp_path / "pool")), 1)
    assert isinstance(src, TarSource)
    assert src.ids == sorted(truth)                       # shard order, then member order
    assert src.classes == ["0", "1", "2"]
    assert src.labels.tolist() == [truth[i][1] for i in src.ids]
    seq = [src.load(i) for i in range(len(src))]
    for i, sid in enumerate(src.ids):
        assert seq[i].shape == (6, 6, 1) and np.array_equal(seq[i][:, :, 0], truth[sid][0])
    rng = np.random.default_rng(1)
    for i in rng.permutation(len(src)):                   # random access == sequential
        assert np.array_equal(src.load(int(i)), seq[i])
    # the same pool named by a brace pattern or a glob gives the same ids (stable ids)
    for root in (str(tmp_path / "pool" / "pool-{000..002}.tar"), str(tmp_path / "pool" / "*.tar")):
        assert create_source(SourceConfig(kind="tar", root=root), 1).ids == src.ids
    # a subset (what the student trains on) reads the right members; pickling drops descriptors
    sub = src.subset([7, 2])
    assert np.array_equal(sub.load(0), seq[7]) and sub.ids == [src.ids[7], src.ids[2]]
    clone = pickle.loads(pickle.dumps(src))
    assert np.array_equal(clone.load(5), seq[5])
    # eval_batches over the tar source (the labeling path), also with a DataLoader worker
    for workers in (0, 1):
        got = list(eval_batches(src, 5, 6, [0.5], [0.5], start=2, stop=11, workers=workers))
        rows = np.concatenate([r for _, r in got])
        assert rows.tolist() == list(range(2, 11))
        x = np.concatenate([b.numpy() for b, _ in got])
        expect = np.stack([seq[i] for i in range(2, 11)]).transpose(0, 3, 1, 2) / 255.0
        np.testing.assert_allclose(x, (expect - 0.5) / 0.5, atol=1e-6)


def test_tar_unlabeled_classes_txt_longnames_and_prefix(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    img = _images(3)
    # > 100 chars: a pax header (PAX), a GNU long name (GNU), the ustar prefix field (USTAR)
    long_dir = "d" * 120
    for fmt, name in ((tarfile.PAX_FORMAT, "a.tar"), (tarfile.GNU_FORMAT, "b.tar"), (tarfile.USTAR_FORMAT, "c.tar")):
        with tarfile.open(root / name, "w", format=fmt) as tf:
            _add(tf, f"{long_dir}/k0.png", _png(img[0]))
            _add(tf, "sub/k1.seg.png", _png(img[1]))       # key sub/k1, ext seg.png: not the image field
            _add(tf, "sub/k2.png", _png(img[2]))
            _add(tf, "sub/k2.json", b"{}")
            _add(tf, "README", b"no extension: ignored")
    src = create_source(SourceConfig(kind="tar", root=str(root)), 1)
    assert src.ids == [f"{s}/{k}" for s in "abc" for k in (f"{long_dir}/k0", "sub/k2")]
    assert src.classes is None and (src.labels == -1).all()
    assert np.array_equal(src.load(0)[:, :, 0], img[0]) and np.array_equal(src.load(5)[:, :, 0], img[2])
    # classes.txt names the .cls values
    _write_shards(tmp_path / "named", n_shards=1)
    (tmp_path / "named" / "classes.txt").write_text("cat\ndog\nfox\n")
    assert create_source(SourceConfig(kind="tar", root=str(tmp_path / "named")), 1).classes == ["cat", "dog", "fox"]


def test_tar_bad_members(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    good = _png(_images(1)[0])
    with tarfile.open(root / "x.tar", "w") as tf:
        _add(tf, "ok.png", good)
        _add(tf, "broken.png", b"\x89PNG\r\n\x1a\n garbage")
        _add(tf, "half.png", good[: len(good) // 2])
    src = create_source(SourceConfig(kind="tar", root=str(root)), 3)
    assert src.ids == ["x/ok", "x/broken", "x/half"]
    assert src.load(0).shape == (6, 6, 3)
    for i in (1, 2):
        with pytest.raises(BadImage, match="x/"):
            src.load(i)
    # the label path skips them under `skip` and raises otherwise
    rows = np.concatenate([r for _, r in eval_batches(src, 8, 6, [0.5] * 3, [0.5] * 3, skip_bad=True)])
    assert rows.tolist() == [0]
    with pytest.raises(BadImage):
        list(eval_batches(src, 8, 6, [0.5] * 3, [0.5] * 3))
    # a shard truncated inside a member: members before it index; the cut member fails as BadImage
    data = (root / "x.tar").read_bytes()
    (root / "x.tar").write_bytes(data[: 512 + 512 + 512 + 10])
    src = create_source(SourceConfig(kind="tar", root=str(root)), 3)
    assert src.ids == ["x/ok", "x/broken"]
    with pytest.raises(BadImage, match="truncated"):
        src.load(1)
    # garbage in a header stops the scan of that shard (with a warning), earlier members stay
    (root / "x.tar").write_bytes(data)
    third = [off for _, off, _ in scan_tar(root / "x.tar")][2] - 512
    blob = bytearray(data)
    blob[third: third + 512] = b"\x01" * 512
    (root / "x.tar").write_bytes(bytes(blob))
    src = create_source(SourceConfig(kind="tar", root=str(root)), 3)
    assert src.ids == ["x/ok", "x/broken"]


def test_tar_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .tar shards"):
        create_source(SourceConfig(kind="tar", root=str(tmp_path / "empty")), 1)
    (tmp_path / "empty" / "p.tar.gz").write_bytes(b"")
    with pytest.raises(UserError, match="decompress"):
        create_source(SourceConfig(kind="tar", root=str(tmp_path / "empty")), 1)
    _write_shards(tmp_path / "pool", n_shards=2)
    with pytest.raises(UserError, match="do not exist"):
        create_source(SourceConfig(kind="tar", root=str(tmp_path / "pool" / "pool-{000..005}.tar")), 1)
    with tarfile.open(tmp_path / "pool" / "pool-009.tar", "w") as tf:
        _add(tf, "k.png", _png(_images(1)[0]))
        _add(tf, "k.cls", b"cat")
    with pytest.raises(UserError, match="not an integer"):
        create_source(SourceConfig(kind="tar", root=str(tmp_path / "pool")), 1)


def _manifest_tree(tmp_path):
    imgs = _images(4)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    paths = ["imgs/a/0.png", "imgs/a/1.png", "imgs/2.png"]
    for p, im in zip(paths, imgs):
        Image.fromarray(im).save(tmp_path / p)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(imgs[3]).save(outside / "3.png")
    return imgs, paths + [str(outside / "3.png")]


def test_manifest_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    imgs, paths = _manifest_tree(tmp_path)
    (tmp_path / "m").mkdir()
    csv = tmp_path / "pool.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in zip(paths, ["1", "", "0", "-1"])))
    src = create_source(SourceConfig(kind="manifest", root=str(csv)), 1)
    assert src.ids == paths                              # ids = paths as written (absolute stays absolute)
    assert src.labels.tolist() == [1, -1, 0, -1] and src.classes == ["0", "1"]
    for i, im in enumerate(imgs):
        assert np.array_equal(src.load(i)[:, :, 0], im)
    pq.write_table(pa.table({"path": paths, "class": ["dog", "cat", None, "dog"]}), tmp_path / "pool.parquet")
    src = create_source(SourceConfig(kind="manifest", root=str(tmp_path / "pool.parquet")), 3)
    assert src.ids == paths and src.classes == ["cat", "dog"] and src.labels.tolist() == [1, 0, -1, 1]
    assert src.load(3).shape == (6, 6, 3)
    # unlabeled manifest, loaded through the streaming label path
    (tmp_path / "plain.csv").write_text("path\n" + "\n".join(paths) + "\n")
    src = create_source(SourceConfig(kind="manifest", root=str(tmp_path / "plain.csv")), 1)
    assert src.classes is None and (src.labels == -1).all()
    rows = np.concatenate([r for _, r in eval_batches(src, 3, 6, [0.5], [0.5])])
    assert rows.tolist() == [0, 1, 2, 3]


def test_manifest_errors_and_bad_images(tmp_path):
    _, paths = _manifest_tree(tmp_path)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png")
    m = tmp_path / "m.csv"
    m.write_text("path\nimgs/bad.png\nimgs/missing.png\n" + paths[0] + "\n")
    src = create_source(SourceConfig(kind="manifest", root=str(m)), 1)
    for i in (0, 1):
        with pytest.raises(BadImage):
            src.load(i)
    rows = np.concatenate([r for _, r in eval_batches(src, 4, 6, [0.5], [0.5], skip_bad=True)])
    assert rows.tolist() == [2]
    m.write_text("file\nx.png\n")
    with pytest.raises(UserError, match="'path' column"):
        create_source(SourceConfig(kind="manifest", root=str(m)), 1)
    m.write_text("path\nx.png\nx.png\n")
    with pytest.raises(UserError, match="more than once"):
        create_source(SourceConfig(kind="manifest", root=str(m)), 1)
    with pytest.raises(UserError, match="manifest not found"):
        create_source(SourceConfig(kind="manifest", root=str(tmp_path / "nope.csv")), 1)
