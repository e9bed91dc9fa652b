"""The on-device batch path (`data.augment_on: device`): images decoded once into a uint8 tensor,
noised a batch at a time; same contract as the DataLoader path (steps, order, replay, rank shares)."""
import numpy as np
import pytest
import torch

from conftest import ROOT, TINY
from noisystudent.batch_noise import BatchNoise
from noisystudent.batches import JointBatches
from noisystudent.config import SourceConfig
from noisystudent.data import ArraySource, create_source
from noisystudent.tensor_batches import TensorLabeledBatches, TensorPseudoBatches, decode_all

NOISE = BatchNoise(crop_padding=1, randaugment=True, ra_magnitude=5, cutout=0.25)


def _digits():
    src = create_source(SourceConfig(kind="digits", per_class=5), 1)
    images, rows = decode_all(src, 8, skip_bad=False)
    return src, images, rows


def test_decode_all_keeps_arrays_and_resizes_files_to_the_training_size():
    src, images, rows = _digits()
    assert images.shape == (50, 1, 8, 8) and images.dtype == torch.uint8 and list(rows) == list(range(50))
    assert torch.equal(images[3, 0], torch.from_numpy(src.load(3)[:, :, 0]))
    big = ArraySource("big", ["a", "b"], np.array([0, 1]), ["x", "y"], 3,
                      images=[np.full((12, 10, 3), 7, np.uint8), np.full((8, 8, 3), 9, np.uint8)])
    out, rows = decode_all(big, 8, skip_bad=False)
    assert out.shape == (2, 3, 8, 8) and int(out[0].float().mean()) == 7 and list(rows) == [0, 1]


def test_labeled_batches_replay_and_split_across_ranks():
    src, images, rows = _digits()
    lb = TensorLabeledBatches(images, src.labels[rows], NOISE, [0.5], [0.5], batch_size=8)
    assert lb.steps_per_epoch() == 7 and lb.steps_per_epoch(world=2) == 4
    a = list(lb.epoch(seed=3, epoch=0, steps=5))
    b = list(lb.epoch(seed=3, epoch=0, steps=5))            # a resumed epoch replays exactly
    c = list(lb.epoch(seed=3, epoch=1, steps=5))
    assert len(a) == 5 and all(x.x.shape == (8, 1, 8, 8) and x.x.dtype == torch.float32 for x in a)
    assert all(torch.equal(x.x, y.x) and torch.equal(x.y, y.y) for x, y in zip(a, b))
    assert not all(torch.equal(x.x, y.x) for x, y in zip(a, c))
    # normalised with mean/std 0.5: pixel values land in [-1, 1]
    assert -1.0 <= float(a[0].x.min()) and float(a[0].x.max()) <= 1.0
    # ranks take interleaved shares of one order: together they are the single-process rows
    r0 = [x.y for x in lb.epoch(seed=3, epoch=0, steps=3, rank=0, world=2)]
    r1 = [x.y for x in lb.epoch(seed=3, epoch=0, steps=3, rank=1, world=2)]
    assert len(r0) == len(r1) == 3 and not all(torch.equal(p, q) for p, q in zip(r0, r1))


def test_pseudo_copies_repeat_rows_and_joint_batches_keep_the_ratio():
    src, images, rows = _digits()
    targets = np.eye(10, dtype=np.float32)[src.labels[rows]]
    copies = np.where(src.labels[rows] == 0, 3, 1)           # class 0 duplicated (balancing)
    pb = TensorPseudoBatches(images, targets, copies, NOISE, [0.5], [0.5], batch_size=12)
    assert len(pb) == int(copies.sum()) == 60
    lb = TensorLabeledBatches(images, src.labels[rows], NOISE, [0.5], [0.5], batch_size=4)
    joint = JointBatches(lb, pb)
    assert joint.steps_per_epoch() == 5
    batches = list(joint.epoch(seed=0, epoch=0, steps=5))
    assert all(len(b.x) == 16 and len(b.y) == 4 and b.targets.shape == (12, 10) for b in batches)
    seen = torch.cat([b.targets.argmax(1) for b in batches])
    assert int((seen == 0).sum()) == 15                      # 5 class-0 images x 3 copies, one epoch


def test_only_sources_that_make_batches_on_a_gpu_are_prefetched():
    """The trainer makes the next batch early (side stream) only where that queues GPU work: never
    for DataLoader sources, whose next batch may keep the CPU waiting, nor for tensors on the CPU."""
    from noisystudent.batches import LabeledBatches
    src, images, rows = _digits()
    on_cpu = TensorLabeledBatches(images, src.labels[rows], NOISE, [0.5], [0.5], batch_size=8)
    assert not on_cpu.made_on_device
    assert not JointBatches(on_cpu, on_cpu).made_on_device
    assert not LabeledBatches([], 8).made_on_device
    if torch.cuda.is_available():
        on_gpu = TensorLabeledBatches(images.cuda(), src.labels[rows], NOISE, [0.5], [0.5], batch_size=8)
        assert on_gpu.made_on_device and JointBatches(on_gpu, on_gpu).made_on_device
        assert not JointBatches(on_gpu, LabeledBatches([], 8)).made_on_device


def test_augment_on_decides_the_path(tmp_path):
    from noisystudent.config import load_config
    from noisystudent.errors import UserError
    from noisystudent.stages import batching
    from noisystudent.stages.common import RunContext
    cfg = load_config(ROOT / "configs" / "digits-demo.yaml", ["data.augment_on=auto"])
    ctx = RunContext(cfg, tmp_path, "cpu")
    assert not batching.use_device_noise(ctx, 100)           # auto: the device path is for GPUs
    cfg.data.augment_on = "device"
    assert batching.use_device_noise(ctx, 100)
    with pytest.raises(UserError, match="'data.augment_on': 'device' needs .* GiB"):
        batching.use_device_noise(ctx, 10**11)
    ctx.agree = lambda fits: False      # under torchrun, another rank has less memory free: all agree
    with pytest.raises(UserError, match="needs 0.0 GiB .* but another process of this run has not that much"):
        batching.use_device_noise(ctx, 100)


def test_a_run_on_the_device_path_trains_and_resumes_its_stages(tmp_path):
    from noisystudent.config import load_config
    from noisystudent.pipeline import run
    cfg = load_config(ROOT / "configs" / "digits-demo.yaml", [*TINY, "rounds=1", "data.augment_on=device",
                      "teacher.steps=200", "student.steps=200", "student.warmup_steps=20"])
    summary = run(cfg, run_dir=tmp_path / "r", report=False)
    acc = {m["which"]: m["top1"] for m in summary["models"]}
    assert acc["teacher"] > 0.5 and acc["student"] > 0.5      # 10 classes: chance is 0.1
    again = run(cfg, run_dir=tmp_path / "r", report=False)     # every stage is found done
    assert again["models"] == summary["models"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: checks the graphed noise of a batch source")
def test_cuda_batches_replay_the_eager_noise_through_a_cuda_graph():
    """On CUDA the source replays its noise as a CUDA graph (one per batch shape): every step must be
    exactly the eager on-device batch, and the graph's reused output must not leak between steps."""
    src, images, rows = _digits()
    graphed = TensorLabeledBatches(images.cuda(), src.labels[rows], NOISE, [0.5], [0.5], batch_size=8)
    eager = TensorLabeledBatches(images.cuda(), src.labels[rows], NOISE, [0.5], [0.5], batch_size=8)
    eager._graph = lambda x: None
    a = list(graphed.epoch(seed=3, epoch=0, steps=5))
    b = list(eager.epoch(seed=3, epoch=0, steps=5))
    assert len(graphed.graphs) == 1 and not eager.graphs
    assert len({float(x.x.sum()) for x in a}) == 5          # five different batches, not one buffer
    for x, y in zip(a, b):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: checks the side-stream prefetch")
def test_side_stream_prefetch_yields_the_sources_batches_unchanged():
    """The trainer makes batch k+1 on a side stream while step k trains: the batches it sees must be
    exactly the source's, in order (joint batches: labeled + pseudo, noised through CUDA graphs)."""
    from noisystudent.engine import prefetch_on_side_stream
    src, images, rows = _digits()
    targets = np.eye(10, dtype=np.float32)[src.labels[rows]]

    def joint():
        return JointBatches(TensorLabeledBatches(images.cuda(), src.labels[rows], NOISE, [0.5], [0.5], 4),
                            TensorPseudoBatches(images.cuda(), targets, np.ones(50, int), NOISE, [0.5], [0.5], 12))
    direct = [(b.x.clone(), b.y.clone(), b.targets.clone()) for b in joint().epoch(seed=1, epoch=0, steps=4)]
    seen = []
    for b in prefetch_on_side_stream(joint().epoch(seed=1, epoch=0, steps=4), torch.device("cuda")):
        b.x.mul_(0)                 # the consumer may write its batch: the next one must not change
        seen.append((b.y.clone(), b.targets.clone()))
    fetched = [b.x.clone() for b in prefetch_on_side_stream(joint().epoch(seed=1, epoch=0, steps=4),
                                                            torch.device("cuda"))]
    assert len(seen) == len(fetched) == 4
    for (x, y, t), (y2, t2), x2 in zip(direct, seen, fetched):
        assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(t, t2)
