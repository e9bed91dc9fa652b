"""The DataLoader path's batch sources: per-item augmentation seeds, one persistent loader per stage."""
import pytest
import torch

from noisystudent.batches import LabeledBatches
from noisystudent.config import DataConfig, NoiseConfig, SourceConfig
from noisystudent.data import LabeledDataset, create_source, create_train_transform

DATA = DataConfig(image_size=8, in_chans=1, mean=[0.5], std=[0.5], crop_padding=1, hflip=True)
NOISE = NoiseConfig(randaugment=True, ra_magnitude=9, cutout=0.25, drop_rate=0.0, drop_path_rate=0.0)


def _dataset():
    src = create_source(SourceConfig(kind="digits", per_class=4), 1)
    return LabeledDataset(src, create_train_transform(DATA, NOISE))


def _epochs(lb, epochs=(0, 1), steps=4):
    return [[(b.x.clone(), b.y.clone()) for b in lb.epoch(seed=7, epoch=e, steps=steps)] for e in epochs]


def test_noise_does_not_depend_on_the_worker_count():
    """Each image's RandAugment/crop/flip/Cutout come from its own seed, not from a worker's stream:
    0 and 2 workers give the same batches."""
    a = _epochs(LabeledBatches(_dataset(), 8, workers=0))
    b = _epochs(LabeledBatches(_dataset(), 8, workers=2))
    for ea, eb in zip(a, b):
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(ea, eb))


def test_one_loader_serves_every_epoch_and_a_fresh_source_replays_any_epoch():
    lb = LabeledBatches(_dataset(), 8, workers=0)
    e0, e1 = _epochs(lb)
    loader = lb._loader
    assert loader is not None and _epochs(lb, (1,))[0][0][0].shape == (8, 1, 8, 8) and lb._loader is loader
    assert not torch.equal(e0[0][0], e1[0][0])                          # epochs differ
    (r1,) = _epochs(LabeledBatches(_dataset(), 8, workers=0), (1,))     # a resumed run starts at epoch 1
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(e1, r1))


def test_loading_in_the_main_process_leaves_the_training_rng_alone():
    """With workers=0 the items' seeds must not reset torch's generator, which dropout and stochastic
    depth draw from between batches."""
    torch.manual_seed(123)
    expect = torch.rand(3)
    torch.manual_seed(123)
    _epochs(LabeledBatches(_dataset(), 8, workers=0))
    assert torch.equal(expect, torch.rand(3))


@pytest.mark.parametrize("workers, device, cpus, ranks, expect", [
    (3, "cuda", 16, 1, 3), (0, "cuda", 16, 1, 0), (2, "cpu", 2, 1, 2),   # a count is used as given
    ("auto", "cpu", 64, 1, 0),              # on a CPU the model needs the cores
    ("auto", "cuda", 16, 1, 8),             # the cores less one for the main process, at most 8
    ("auto", "cuda:1", 4, 1, 3),
    ("auto", "cuda", 16, 8, 1),             # torchrun's 8 ranks share 16 cores: 2 each
    ("auto", "cuda", 8, 8, 0), ("auto", "cuda", 1, 1, 0)])
def test_auto_workers_leave_a_cpu_to_the_model_and_feed_a_gpu(workers, device, cpus, ranks, expect):
    from noisystudent.data.loaders import resolve_workers
    assert resolve_workers(workers, device, cpus, ranks) == expect


@pytest.mark.parametrize("workers, device, cpus, ranks, expect", [
    (0, "cpu", 16, 1, 0), (3, "cpu", 2, 1, 3),     # a count is the user's, for caching too
    ("auto", "cpu", 2, 1, 2),               # no model runs while a source is cached: every core
    ("auto", "cpu", 64, 1, 8),              # at most 8
    ("auto", "cpu", 1, 1, 0),               # one core: in the main process
    ("auto", "cpu", 16, 4, 4),              # torchrun's 4 ranks share 16 cores
    ("auto", "cuda", 16, 1, 8), ("auto", "cuda", 4, 1, 3)])   # on a GPU as the loaders
def test_auto_decode_workers_use_every_core_of_a_cpu_while_caching(workers, device, cpus, ranks, expect):
    from noisystudent.data.loaders import resolve_decode_workers
    assert resolve_decode_workers(workers, device, cpus, ranks) == expect


def test_auto_workers_count_the_cores_this_process_may_use_and_its_local_ranks(monkeypatch):
    import os
    from noisystudent.config import DataConfig
    from noisystudent.data.loaders import resolve_workers
    assert DataConfig().workers == "auto"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert resolve_workers("auto", "cuda") == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert resolve_workers("auto", "cuda") == 8


def test_a_run_resolves_auto_workers_once_and_says_so(monkeypatch, tmp_path, caplog):
    """What every stage reads (`RunContext.workers`), without a GPU: the device is faked, nothing runs on it."""
    import os
    from noisystudent.config import load_config
    from noisystudent.stages import common
    monkeypatch.setattr(common, "resolve_device", lambda d: torch.device("cuda"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    from noisystudent.cli import resolve_config_path
    cfg = load_config(resolve_config_path("digits-demo"), [])
    with caplog.at_level("INFO", logger="noisystudent"):
        ctx = common.RunContext(cfg, tmp_path / "run")
    assert ctx.workers == 3 and cfg.data.workers == "auto"          # the config itself is left as written
    assert "data.workers auto: 3 loader processes, 3 for caching (cuda)" in caplog.text
    monkeypatch.setattr(common, "resolve_device", lambda d: torch.device("cpu"))
    ctx = common.RunContext(cfg, tmp_path / "cpu")      # the model keeps the cores; caching uses all 4
    assert (ctx.workers, ctx.decode_workers) == (0, 4)
    ctx = common.RunContext(load_config(resolve_config_path("digits-demo"), ["data.workers=2"]), tmp_path / "r2")
    assert ctx.workers == ctx.decode_workers == 2
