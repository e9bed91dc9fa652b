"""Labeling a file pool through one loader: batches aligned to shards, one DataLoader for all of a
stage's shards, the same tables as shard by shard, and `label.batch_size: auto`."""
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import noisystudent.data.loaders as loaders
from noisystudent.config import SourceConfig, load_config
from noisystudent.data import create_source, eval_batches
from noisystudent.data.loaders import RangeBatches
from noisystudent.errors import UserError
from noisystudent.inference import inference_batch_size
from noisystudent.labels import predict_shard, predict_shards
from noisystudent.models import create_model


def _tar_pool(root, n=23, bad=()):
    """One tar of n 8x8 grayscale PNGs; the members numbered in `bad` are not images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with tarfile.open(root / "pool.tar", "w") as tf:
        for i in range(n):
            b = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(b, format="PNG")
            data = b"not a png" if i in bad else b.getvalue()
            info = tarfile.TarInfo(f"img{i:03d}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return create_source(SourceConfig(kind="tar", root=str(root)), 1)


def test_range_batches_never_span_two_ranges():
    rb = RangeBatches([(0, 10), (20, 23), (30, 30), (40, 44)], 4)
    got = list(rb)
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [20, 21, 22], [40, 41, 42, 43]]
    assert len(rb) == len(got) == 5
    assert list(RangeBatches([], 4)) == [] and len(RangeBatches([(3, 3)], 4)) == 0


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_batches_over_ranges_equals_each_range_alone(tmp_path, workers):
    src = _tar_pool(tmp_path / "pool")
    ranges = [(10, 20), (0, 10), (20, 30)]               # the last runs past the pool: clipped at 23
    got = list(eval_batches(src, 4, 8, [0.5], [0.5], ranges=ranges, workers=workers))
    want = [b for a, z in ranges for b in eval_batches(src, 4, 8, [0.5], [0.5], start=a, stop=z)]
    assert [r.tolist() for _, r in got] == [r.tolist() for _, r in want]
    assert np.concatenate([r for _, r in got]).tolist() == list(range(10, 20)) + list(range(10)) + [20, 21, 22]
    for (x, _), (y, _) in zip(got, want):
        assert torch.equal(x, y)
    # the in-memory path reads the same rows in the same batches
    arr = src.cache()
    got_arr = list(eval_batches(arr, 4, 8, [0.5], [0.5], ranges=ranges))
    assert [r.tolist() for _, r in got_arr] == [r.tolist() for _, r in want]


def test_one_loader_serves_every_shard_and_tables_match_shard_by_shard(tmp_path, monkeypatch):
    """The label stage's loop over a file pool starts its DataLoader (and its workers) once, not
    once per shard; a skipped image leaves its shard short, a shard of only bad images is empty."""
    src = _tar_pool(tmp_path / "pool", n=23, bad={3, 10, 11, 12, 13, 14})
    torch.manual_seed(0)
    model = create_model("ns_cnn_s", 10, 1).eval()
    kw = dict(image_size=8, mean=[0.5], std=[0.5], temperature=1.0, flip_tta=False, batch_size=3, device="cpu",
              workers=1, skip_bad=True, teacher_hash="t")
    made = []
    real = loaders.DataLoader

    def counting(*a, **k):
        made.append(1)
        return real(*a, **k)

    monkeypatch.setattr(loaders, "DataLoader", counting)
    got = list(predict_shards(model, src, [0, 2, 1, 3, 4], 5, **kw))
    assert len(made) == 1
    monkeypatch.setattr(loaders, "DataLoader", real)
    assert [s for s, _ in got] == [0, 2, 1, 3, 4]
    assert [t.num_rows for _, t in got] == [4, 0, 5, 5, 3]   # rows 3 and 10-14 are not images
    for s, table in got:
        assert table.equals(predict_shard(model, src, s * 5, (s + 1) * 5, **kw))
    assert got[0][1].column("sample_id").to_pylist() == ["pool/img000", "pool/img001", "pool/img002",
                                                         "pool/img004"]


def test_inference_batch_size_auto_by_device_and_image_size():
    assert inference_batch_size("auto", "cpu", 32) == 256
    assert inference_batch_size("auto", torch.device("cuda", 1), 32) == 1024
    assert inference_batch_size("auto", "cuda", 64) == 1024
    assert inference_batch_size("auto", "cuda", 224) == 256       # large images fill the GPU at 256
    assert inference_batch_size(300, "cuda", 32) == 300           # a number is kept as given


def test_label_batch_size_config_takes_auto_or_a_positive_int():
    cfg = load_config(None, [])
    assert cfg.label.batch_size == "auto"
    assert load_config(None, ["label.batch_size=512"]).label.batch_size == 512
    with pytest.raises(UserError, match="'label.batch_size': must be >= 1 or 'auto'"):
        load_config(None, ["label.batch_size=0"])
    with pytest.raises(UserError, match="'label.batch_size': 'big' is not a valid int | 'auto'"):
        load_config(None, ["label.batch_size=big"])


@pytest.mark.parametrize("workers", [0, 1])
def test_images_of_different_sizes_are_resized_one_by_one(tmp_path, workers):
    """A batch whose images differ in size stays a list in the worker's collate and each image is
    resized alone; a batch of one size arrives stacked. Both give what `to_tensor_batch` gives."""
    from noisystudent.data import to_tensor_batch
    rng = np.random.default_rng(1)
    shapes = [(8, 8), (12, 6), (8, 8), (8, 8)]
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    src = create_source(SourceConfig(kind="folder", root=str(tmp_path)), 3)
    got = list(eval_batches(src, 2, 8, [0.5] * 3, [0.5] * 3, workers=workers))
    assert [r.tolist() for _, r in got] == [[0, 1], [2, 3]]
    x = torch.cat([b for b, _ in got])
    for i in range(len(src)):
        assert torch.allclose(x[i], to_tensor_batch(src.load(i)[None], 8, [0.5] * 3, [0.5] * 3)[0], atol=1e-6)


@pytest.mark.parametrize("workers", [0, 1])
def test_large_images_are_made_into_the_models_input_by_the_worker(tmp_path, workers):
    """An image of more than 4 x image_size**2 pixels leaves the worker as the float input the model
    takes (not as its larger uint8 pixels), bit for bit what converting it in the main process gave,
    in batches of one size or of mixed sizes; small same-size images still leave as one uint8 stack."""
    from noisystudent.data import to_tensor_batch
    from noisystudent.data.loaders import _EvalDataset
    rng = np.random.default_rng(2)
    shapes = [(20, 24), (20, 24), (8, 8), (20, 24), (8, 8), (8, 8)]      # 480 px > 4 * 8**2 = 256 px
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    src = create_source(SourceConfig(kind="folder", root=str(tmp_path)), 3)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    ds = _EvalDataset(src, False, 8, mean, std)
    big, small = ds[0][0], ds[2][0]
    assert isinstance(big, torch.Tensor) and big.shape == (1, 3, 8, 8) and big.dtype == torch.float32
    assert isinstance(small, np.ndarray) and small.dtype == np.uint8
    x, rows = ds.collate([ds[4], ds[5]])
    assert x.dtype == torch.uint8 and x.shape == (2, 8, 8, 3) and rows == [4, 5]
    got = list(eval_batches(src, 2, 8, mean, std, workers=workers))
    assert [r.tolist() for _, r in got] == [[0, 1], [2, 3], [4, 5]]
    x = torch.cat([b for b, _ in got])
    want = [to_tensor_batch(np.stack([src.load(0), src.load(1)]), 8, mean, std)]      # as the main process did
    want += [to_tensor_batch(src.load(i)[None], 8, mean, std) for i in range(2, 6)]
    assert torch.equal(x, torch.cat(want))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: batches converted on the device and in workers")
@pytest.mark.parametrize("workers", [0, 2])
def test_eval_batches_on_cuda_match_the_cpu(tmp_path, workers):
    """Same-size small batches are converted on the GPU, large and mixed-size ones in the workers
    (pinned by the loader, copied without waiting): the same inputs as on the CPU."""
    rng = np.random.default_rng(3)
    shapes = [(8, 8)] * 4 + [(20, 24), (8, 8), (30, 10), (20, 24)]
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    src = create_source(SourceConfig(kind="folder", root=str(tmp_path)), 3)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    cpu = torch.cat([x for x, _ in eval_batches(src, 4, 16, mean, std, workers=workers)])
    got = [x for x, _ in eval_batches(src, 4, 16, mean, std, workers=workers, device="cuda")]
    assert all(x.is_cuda for x in got)
    assert torch.allclose(torch.cat(got).cpu(), cpu, atol=1e-5)
