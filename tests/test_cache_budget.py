"""`data.cache: true` caches a source only when its decoded images fit (`cache_budget`): a set that
does not fit is read from its files, with a warning, and the run gives the same results."""
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import cli
from test_bad_inputs import make_data, write_cfg

from noisystudent.config import SourceConfig
from noisystudent.data import CacheTooLarge, cache_budget, create_source
from noisystudent.errors import UserError


def _folder(root, n, side=16):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return create_source(SourceConfig(kind="folder", root=str(root)), 3)


def test_cache_gives_up_as_soon_as_the_images_would_not_fit(tmp_path):
    src = _folder(tmp_path / "f", 300)              # 768 bytes each decoded, 230,400 in all
    with pytest.raises(CacheTooLarge) as e:
        src.cache(max_bytes=200_000)                # 196,608 held after 256 images: projected 230,400
    assert (e.value.decoded, e.value.total, e.value.estimate) == (256, 300, 230_400)
    with pytest.raises(CacheTooLarge) as e:
        src.cache(max_bytes=50_000)                 # exceeded before a projection is trusted
    assert e.value.decoded == 66 and e.value.estimate == 300 * 768
    cached = src.cache(max_bytes=230_400)
    assert cached.images.shape == (300, 16, 16, 3)
    assert np.array_equal(cached.images[7], src.load(7))


def test_cache_budget_reads_the_environment_or_the_memory(monkeypatch):
    monkeypatch.delenv("NOISYSTUDENT_CACHE_GB", raising=False)
    half = cache_budget()                           # half of MemAvailable
    assert half > 0 and abs(cache_budget(4) - half / 4) < 0.05 * half     # shared by 4 ranks
    monkeypatch.setenv("NOISYSTUDENT_CACHE_GB", "1.5")
    assert cache_budget() == int(1.5 * 2**30)
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("NOISYSTUDENT_CACHE_GB", bad)
        with pytest.raises(UserError, match=f"NOISYSTUDENT_CACHE_GB must be a number of GiB >= 0, got '{bad}'"):
            cache_budget()


def test_a_run_whose_images_do_not_fit_reads_them_from_files_with_the_same_results(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data")
    cfg = write_cfg(tmp_path / "c.yaml", data)
    monkeypatch.delenv("NOISYSTUDENT_CACHE_GB", raising=False)
    r = cli("run", str(cfg), "--run-dir", str(tmp_path / "cached"), "--no-report")
    assert r.returncode == 0, r.stderr
    assert "the cache may use" not in r.stderr
    monkeypatch.setenv("NOISYSTUDENT_CACHE_GB", "0")
    r = cli("run", str(cfg), "--run-dir", str(tmp_path / "files"), "--no-report")
    assert r.returncode == 0, r.stderr
    for what, n in (("data.labeled", 18), ("data.test", 9), ("the selected pool images (data.unlabeled)", 12)):
        assert (f"{what}: its {n} images would take ~0.0 MiB decoded, more than the 0.0 MiB the cache may use "
                "(NOISYSTUDENT_CACHE_GB): reading them from their files instead") in r.stderr
    # the same pixels either way (Source.load), so the same pseudo-labels and the same student
    shards = sorted((tmp_path / "cached" / "round1" / "labels").glob("*.parquet"))
    assert len(shards) == 2                         # 12 pool images in shards of 8
    for shard in shards:
        a, b = pq.read_table(shard), pq.read_table(tmp_path / "files" / "round1" / "labels" / shard.name)
        assert a.column("probs").to_pylist() == b.column("probs").to_pylist()
    for ev in ("round0/eval_teacher/eval.json", "round1/eval_student/eval.json"):
        assert (tmp_path / "cached" / ev).read_text() == (tmp_path / "files" / ev).read_text()


def test_cache_if_fits_lets_the_ranks_agree(tmp_path, caplog):
    """`agree` gets whether this process's images fit; a rank told that another's did not reads the
    files too, even though its own copy fit (it is dropped, with a warning)."""
    from noisystudent.data import ArraySource, cache_if_fits
    src = _folder(tmp_path / "f", 20)
    seen = []
    assert isinstance(cache_if_fits(src, "fail", "data.test", 0, lambda f: seen.append(f) or f), ArraySource)
    with caplog.at_level("WARNING", logger="noisystudent"):
        got = cache_if_fits(src, "fail", "data.test", 0, lambda f: seen.append(f) or False)
    assert got is src and seen == [True, True]
    assert "data.test: another process of this run could not cache these images (memory)" in caplog.text


def test_torchrun_ranks_cache_only_if_every_rank_can(tmp_path):
    """Two gloo processes: with rank 1's budget at 0 both read the files (not only rank 1), else both
    cache. Apart, they would drop undecodable images at different points and take different numbers
    of steps, and DDP would wait forever."""
    import subprocess
    import sys
    from conftest import ROOT
    from test_distributed import _free_port
    _folder(tmp_path / "f", 20)
    for small, expect in ((1, "files"), (-1, "cached")):
        out = tmp_path / f"out{small}"
        out.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "NOISYSTUDENT_CACHE_GB")}
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                            "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                            str(ROOT / "tests" / "_ddp_cache_agree.py"), str(tmp_path / "f"), str(out), str(small)],
                           capture_output=True, text=True, env=dict(env, OMP_NUM_THREADS="1"), timeout=180)
        assert p.returncode == 0, p.stderr[-3000:]
        assert [(out / f"rank{r}").read_text() for r in (0, 1)] == [expect, expect]


def test_cache_decodes_in_workers_in_row_order_with_the_same_result(tmp_path):
    """`cache(workers=2)` (DataLoader processes, from 4 batches of 64 on) gives what one process
    gives: the same rows in order, the same pixels, undecodable files skipped or named one-line."""
    from noisystudent.data.loaders import decode_rows
    root = tmp_path / "f"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(300):
        side = 8 + i % 3                             # three sizes: the cache is a list, not a stack
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    (root / "150.png").write_bytes(b"not a png")
    src = create_source(SourceConfig(kind="folder", root=str(root)), 3)
    rows = list(decode_rows(src, workers=2))
    assert [i for i, _ in rows] == list(range(300))
    assert type(rows[150][1]).__name__ == "BadImage" and "150.png" in str(rows[150][1])
    assert np.array_equal(rows[7][1], src.load(7))
    one, two = src.cache(on_bad="skip"), src.cache(on_bad="skip", workers=2)
    assert one.ids == two.ids and len(two.ids) == 299 and two.skipped == ["150.png"] == one.skipped
    assert all(np.array_equal(a, b) for a, b in zip(one.images, two.images))
    with pytest.raises(UserError, match=r"^[^\n]*150.png: cannot decode image[^\n]*$"):
        src.cache(on_bad="fail", workers=2)


@pytest.mark.parametrize("chans", [1, 3])
def test_training_images_resized_once_give_the_same_noised_images(tmp_path, chans):
    """`at_training_size` hoists the training transform's first step (a PIL bilinear resize to the
    training size) out of every step: with crop, flip, RandAugment and Cutout seeded per item, the
    same tensors, bit for bit; sets already at the size, or smaller, are left alone."""
    import torch
    from noisystudent.config import NoiseConfig, load_config
    from noisystudent.data import ArraySource, LabeledDataset, create_train_transform
    from noisystudent.stages.batching import at_training_size
    rng = np.random.default_rng(4)
    shapes = [(40, 56), (64, 48), (33, 33), (16, 16)]                 # photos cached larger than 16 px
    imgs = [rng.integers(0, 256, (h, w, chans), dtype=np.uint8) for h, w in shapes * 3]
    src = ArraySource("a", [str(i) for i in range(12)], np.arange(12) % 2, ["x", "y"], chans, images=imgs)
    small = at_training_size(src, 16)
    assert isinstance(small.images, np.ndarray) and small.images.shape == (12, 16, 16, chans)
    assert small.ids == src.ids and np.array_equal(small.labels, src.labels)
    cfg = load_config(None, [f"data.in_chans={chans}", "data.image_size=16", "data.crop_padding=2", "data.hflip=true"])
    tf = create_train_transform(cfg.data, NoiseConfig(randaugment=True, ra_magnitude=9, ra_layers=2, cutout=0.5))
    a, b = LabeledDataset(src, tf), LabeledDataset(small, tf)
    for i in range(12):
        x, y = a[(i, 1000 + i)], b[(i, 1000 + i)]
        assert torch.equal(x[0], y[0]) and x[1:] == y[1:]
    assert at_training_size(src, 64) is src                            # would upscale: left alone
    stacked = ArraySource("s", ["0", "1"], np.zeros(2, np.int64), ["x"], chans,
                          images=np.zeros((2, 16, 16, chans), np.uint8))
    assert at_training_size(stacked, 16) is stacked
