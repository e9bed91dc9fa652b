"""DataLoader workers hand their batches over in /dev/shm; a container's default is 64 MiB. The
loaders start only as many workers as their batches in flight fit (with one warning naming the
fix), and a loader that dies for lack of shared memory anyway is one line, not "internal error"."""
import numpy as np
import pytest
import torch

from conftest import cli
from test_cache_budget import _folder

from noisystudent.data import LabeledDataset, eval_batches, memory
from noisystudent.data.loaders import EpochLoader
from noisystudent.data.transforms import TrainTransform

MiB = 2**20


@pytest.fixture
def shm(monkeypatch):
    """Set the free /dev/shm the loaders see; the warnings said so far are forgotten."""
    monkeypatch.setattr(memory, "_warned_shm", set())
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)

    def set_free(n):
        monkeypatch.setattr(memory, "shm_free", lambda: n)
    return set_free


def test_workers_are_cut_to_what_half_the_free_shm_carries(shm, monkeypatch, caplog):
    batch = 3 * MiB                         # 8 workers x 4 prefetched + 1 = 33 batches: 99 MiB
    shm(1024 * MiB)
    assert memory.fit_workers_to_shm(8, batch, 4, "x") == 8
    shm(64 * MiB)                           # Docker's default: 32 MiB for this loader = 10 batches
    with caplog.at_level("WARNING", logger="noisystudent"):
        assert memory.fit_workers_to_shm(8, batch, 4, "data.workers (training)") == 2
        assert memory.fit_workers_to_shm(8, batch, 4, "data.workers (training)") == 2
    assert caplog.text.count("data.workers (training): 8 loader processes would hold ~99.0 MiB of batches in "
                             "shared memory, more than half the 64.0 MiB free in /dev/shm: using 2 (a container's "
                             "default is 64 MiB: start it with --shm-size=8g or --ipc=host)") == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")     # two ranks on the machine share it: 5 batches each
    assert memory.fit_workers_to_shm(8, batch, 4, "y") == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert memory.fit_workers_to_shm(8, batch, 4, "y") == 0
    shm(None)                               # no /dev/shm to read (not Linux): as asked
    assert memory.fit_workers_to_shm(8, batch, 4, "z") == 8
    assert memory.fit_workers_to_shm(0, batch, 4, "z") == 0


def test_shm_free_reads_the_filesystem_and_none_where_there_is_none(monkeypatch, tmp_path):
    import os
    monkeypatch.setattr(memory, "SHM", str(tmp_path))       # any mounted folder: its free bytes
    st = os.statvfs(tmp_path)
    assert abs(memory.shm_free() - st.f_bavail * st.f_frsize) < 64 * MiB
    monkeypatch.setattr(memory, "SHM", str(tmp_path / "none"))
    assert memory.shm_free() is None


def test_loaders_start_fewer_workers_and_give_the_same_batches(shm, tmp_path, caplog):
    src = _folder(tmp_path / "f", 40, side=24)
    ds = LabeledDataset(src, TrainTransform(32, 3, [0.5] * 3, [0.5] * 3, crop_padding=2, hflip=True))
    shm(1024 * MiB)
    roomy = EpochLoader(ds, 8, workers=2)
    shm(MiB // 4)                           # 96 KiB per batch (8 x float32 3x32x32): one fits in 128 KiB
    tight = EpochLoader(ds, 8, workers=2)
    assert (roomy.loader.num_workers, tight.loader.num_workers) == (2, 0)
    a, b = list(roomy.epoch(40, seed=3)), list(tight.epoch(40, seed=3))
    assert len(a) == len(b) == 5 and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    shm(1024 * MiB)
    full = list(eval_batches(src, 16, 32, [0.5] * 3, [0.5] * 3, workers=2))
    shm(MiB // 4)
    with caplog.at_level("WARNING", logger="noisystudent"):
        cut = list(eval_batches(src, 16, 32, [0.5] * 3, [0.5] * 3, workers=2))
    assert "data.workers (labeling, evaluation): 2 loader processes would hold" in caplog.text
    assert "free in /dev/shm: using 0" in caplog.text
    assert len(full) == len(cut) == 3
    assert all(torch.equal(x, y) and np.array_equal(i, j) for (x, i), (y, j) in zip(full, cut))


@pytest.mark.parametrize("raised, expect", [
    ("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
     "RuntimeError: unable to allocate shared memory(shm) for file </torch_1_2_0>: No space left on device (28)",
     "error: a data loader process ran out of shared memory in /dev/shm"),
    ("DataLoader worker (pid 123) is killed by signal: Bus error. It is possible that dataloader's workers are "
     "out of shared memory. Please try to raise your shared memory limit.",
     "error: a data loader process ran out of shared memory in /dev/shm"),
    ("Too many open files. Communication with the workers is no longer possible. Please increase the limit "
     "using `ulimit -n` in the shell or change the sharing strategy",
     "error: the data loader processes ran out of open files"),
    ("DataLoader worker (pid 123) is killed by signal: Killed. ",
     "error: a data loader process was killed by the system, most likely for lack of memory")])
def test_a_loader_that_dies_for_the_machine_is_one_line_not_a_bug(monkeypatch, raised, expect):
    import noisystudent.pipeline as pipeline

    def run(*a, **k):
        raise RuntimeError(raised)
    monkeypatch.setattr(pipeline, "run", run)
    r = cli("run", "digits-demo", "--run-dir", "/nonexistent/never-made")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect), r.stderr
    assert "rerun the same command to resume" in lines[0] and "internal error" not in r.stderr
