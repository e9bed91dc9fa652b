"""Issue 15, point 1: the batched, per-sample noise is the CPU path's noise (tiny tensors, CPU only).

The reference for every RandAugment op is timm's own op function on a PIL image with the same
level arguments (timm's level function at the same magnitude, the same sign and resampling filter),
so a change in timm or Pillow shows up here rather than as a silent drift in training.
"""
import dataclasses
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import auto_augment as aa

from noisystudent.batch_noise import RAND_OPS, BatchNoise, GraphedNoise, NoiseDraw, apply_op, step_generator
from noisystudent.config import DataConfig, NoiseConfig
from noisystudent.data.transforms import TrainTransform, cutout_

FILL3, FILL1 = (125, 123, 114), (120,)


def _images(n: int, size: int, c: int, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 NHWC images: smooth structure + noise + a per-image offset, so histograms,
    edges and borders all matter (a flat or purely random image would hide rounding choices)."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        base = 128 + 100 * np.sin(xx / rs.uniform(1.5, 4) + rs.uniform(0, 6)) * np.cos(yy / rs.uniform(1.5, 4))
        chans = [base + rs.normal(0, 20, (size, size)) + rs.uniform(-50, 50) for _ in range(c)]
        out.append(np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8))
    return np.stack(out)


def _batch(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def _timm_op(imgs, name, m, negate, bicubic, fill, monkeypatch):
    """timm's op on each image, as TrainTransform runs it (grey images go through RGB and back)."""
    c = imgs.shape[-1]
    hp = {"translate_pct": 0.125, "img_mean": fill * 3 if c == 1 else fill}
    monkeypatch.setattr(aa, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
    level = aa.LEVEL_TO_ARG[name]
    args = level(m, hp) if level else ()
    kw = dict(fillcolor=hp["img_mean"], resample=Image.BICUBIC if bicubic else Image.BILINEAR)
    out = []
    for a in imgs:
        im = Image.fromarray(a[..., 0]).convert("RGB") if c == 1 else Image.fromarray(a)
        o = aa.NAME_TO_OP[name](im, *args, **kw)
        out.append(np.asarray(o.convert("L") if c == 1 else o).reshape(a.shape))
    return np.stack(out)


def test_op_set_and_spec_are_timms():
    assert RAND_OPS == tuple(aa._RAND_TRANSFORMS)
    tf = TrainTransform(32, 3, [0.5] * 3, [0.5] * 3, randaugment=True, ra_magnitude=27, ra_prob=0.5, ra_mstd=0.7)
    op = tf.ra.ops[0]
    bn = BatchNoise(randaugment=True, ra_magnitude=27, ra_prob=0.5, ra_mstd=0.7)
    assert (op.magnitude, op.prob, op.magnitude_std, op.magnitude_max) == (27, 0.5, 0.7, bn.mmax)
    assert tf.ra.num_layers == bn.ra_layers and BatchNoise().mmax == 10


# 1. each op = timm's op, per grey level -----------------------------------------------------------

CASES = [(9, False, False), (9, True, True), (27, False, True), (3, True, False)]


@pytest.mark.parametrize("name", RAND_OPS)
@pytest.mark.parametrize("c", [3, 1])
def test_each_op_matches_timm_exactly(name, c, monkeypatch):
    """float64 geometry (`precise`, the default) reproduces PIL to the grey level: same pixel
    centres, hard fill edge, clamped taps, PIL's a=-1 bicubic, truncation. Both dispatch modes."""
    imgs = _images(4, 16, c)
    fill = FILL3 if c == 3 else FILL1
    for m, neg, bic in CASES:
        if name == "Posterize" and m < 2.5:                      # Pillow >= 10 rejects 0 bits (see below)
            continue
        ref = _timm_op(imgs, name, m, neg, bic, fill, monkeypatch)
        for dense in (False, True):
            out = apply_op(_batch(imgs), name, m, negate=neg, bicubic=bic, fill=fill, dense=dense)
            np.testing.assert_array_equal(out.permute(0, 2, 3, 1).numpy(), ref, err_msg=f"{name} m={m}")


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "TranslateXRel", "TranslateYRel"])
def test_float32_geometry_is_within_one_grey_level(name, monkeypatch):
    """precise=False (float32 coordinates, faster on some GPUs) may move a truncated pixel by one
    level where PIL's double lands just across an integer: measured <= 8% of pixels, mean < 0.1."""
    imgs = _images(4, 16, 3)
    ref = _timm_op(imgs, name, 9, False, False, FILL3, monkeypatch).astype(int)
    out = apply_op(_batch(imgs), name, 9, fill=FILL3, precise=False).permute(0, 2, 3, 1).numpy().astype(int)
    d = np.abs(out - ref)
    assert d.max() <= 1 and d.mean() < 0.1


def test_posterize_to_zero_bits_is_black():
    """timm maps magnitude < 2.5 to 0 bits, which Pillow >= 10 rejects with ValueError (so the CPU
    path fails there, e.g. with ra_mstd > 0); the batched op keeps the historical meaning: black."""
    x = _batch(_images(2, 8, 3))
    assert apply_op(x, "Posterize", 2).eq(0).all()
    with pytest.raises(ValueError):
        aa.posterize(Image.fromarray(_images(1, 8, 3)[0]), 0)


def test_largest_translation_is_ra_translate_times_size():
    """As tests/test_fidelity.py checks for the CPU path: 28 px -> 3.5 px at magnitude 10."""
    for size in (28, 32):
        a = np.zeros((1, 1, size, size), np.uint8)
        a[..., size // 2] = 255
        out = apply_op(torch.from_numpy(a), "TranslateXRel", 10, fill=(0,))[0, 0].double()
        col = out.sum(0)
        shift = float((col * torch.arange(size)).sum() / col.sum()) - size // 2
        assert abs(shift) == pytest.approx(size / 8, abs=0.3)


# 2. crop, flip, Cutout = the CPU path's ---------------------------------------------------------

def _draw(b, **kw):
    n = 1
    base = dict(crop=torch.zeros(b, 2, dtype=torch.long), flip=torch.zeros(b, dtype=torch.bool),
                op=torch.zeros(b, n, dtype=torch.long), apply=torch.zeros(b, n, dtype=torch.bool),
                magnitude=torch.zeros(b, n, dtype=torch.float64), negate=torch.zeros(b, n, dtype=torch.bool),
                bicubic=torch.zeros(b, n, dtype=torch.bool), cutout=torch.zeros(b, 2, dtype=torch.long))
    base.update(kw)
    return NoiseDraw(**base)


def test_crop_and_flip_match_torchvision():
    imgs = _images(6, 12, 3)
    tl = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [1, 7], [4, 4]])
    flip = torch.tensor([False, True, True, False, True, False])
    out = BatchNoise(crop_padding=4, hflip=True, fill=FILL3).apply(_batch(imgs), _draw(6, crop=tl, flip=flip))
    for i, a in enumerate(imgs):
        im = TF.crop(TF.pad(Image.fromarray(a), 4, padding_mode="reflect"), int(tl[i, 0]), int(tl[i, 1]), 12, 12)
        im = TF.hflip(im) if flip[i] else im
        np.testing.assert_array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(im))


def test_cutout_matches_the_cpu_square():
    for seed in range(20):
        x = torch.ones(1, 3, 14, 14)
        ref = cutout_(x.clone(), 0.5, torch.Generator().manual_seed(seed))[0, 0] == 0
        g = torch.Generator().manual_seed(seed)                 # the same centre cutout_ drew
        centre = torch.stack([torch.randint(14, (1,), generator=g), torch.randint(14, (1,), generator=g)], 1)
        out = BatchNoise(cutout=0.5, fill=(7, 8, 9)).apply(torch.full((1, 3, 14, 14), 200, dtype=torch.uint8),
                                                            _draw(1, cutout=centre))
        assert torch.equal(out[0, 0] == 7, ref) and torch.equal(out[0, 2] == 9, ref)


def test_from_config_is_the_cpu_transforms_config():
    data = DataConfig(in_chans=3, mean=[0.49, 0.48, 0.45], crop_padding=4, hflip=True)
    noise = NoiseConfig(ra_magnitude=7, ra_layers=3, ra_prob=0.8, ra_translate=0.2, cutout=0.4)
    bn = BatchNoise.from_config(data, noise)
    assert (bn.crop_padding, bn.hflip, bn.randaugment, bn.ra_magnitude, bn.ra_layers, bn.ra_prob, bn.ra_translate,
            bn.cutout) == (4, True, True, 7, 3, 0.8, 0.2, 0.4)
    tf = TrainTransform(32, 3, data.mean, [0.25] * 3, randaugment=True)
    assert bn.fill == tf.ra.ops[0].kwargs["fillcolor"] == (125, 122, 115)
    assert not BatchNoise.from_config(data).randaugment


def test_the_whole_chain_in_the_cpu_order(monkeypatch):
    """Crop, flip, two RandAugment layers, Cutout with chosen draws = the same steps done by
    torchvision and timm on PIL images, in TrainTransform's order (grey level exact)."""
    imgs = _images(5, 12, 3, seed=2)
    d = _draw(5, crop=torch.tensor([[0, 4], [2, 2], [4, 0], [1, 3], [3, 1]]),
              flip=torch.tensor([True, False, True, False, True]),
              op=torch.tensor([[3, 8], [13, 1], [11, 10], [4, 14], [0, 12]]),
              apply=torch.tensor([[True, True], [True, True], [True, False], [True, True], [False, True]]),
              magnitude=torch.tensor([[9.0, 9.0], [7.5, 9.0], [9.0, 9.0], [9.0, 6.0], [9.0, 8.0]], dtype=torch.float64),
              negate=torch.tensor([[True, False], [False, False], [True, True], [False, True], [False, True]]),
              bicubic=torch.tensor([[False, True], [True, False], [True, True], [False, False], [False, True]]),
              cutout=torch.tensor([[0, 0], [6, 6], [11, 3], [5, 11], [2, 8]]))
    out = dataclasses.replace(NOISE, crop_padding=2, cutout=0.5).apply(_batch(imgs), d)
    hp = {"translate_pct": 0.125, "img_mean": FILL3}
    for i, a in enumerate(imgs):
        top, left = int(d.crop[i, 0]), int(d.crop[i, 1])
        im = TF.crop(TF.pad(Image.fromarray(a), 2, padding_mode="reflect"), top, left, 12, 12)
        im = TF.hflip(im) if d.flip[i] else im
        for k in range(2):
            if not d.apply[i, k]:
                continue
            name = RAND_OPS[int(d.op[i, k])]
            neg = bool(d.negate[i, k])
            monkeypatch.setattr(aa, "_randomly_negate", (lambda v: -v) if neg else (lambda v: v))
            level = aa.LEVEL_TO_ARG[name]
            args = level(float(d.magnitude[i, k]), hp) if level else ()
            im = aa.NAME_TO_OP[name](im, *args, fillcolor=FILL3,
                                     resample=Image.BICUBIC if d.bicubic[i, k] else Image.BILINEAR)
        ref = np.array(im)
        cy, cx = int(d.cutout[i, 0]), int(d.cutout[i, 1])
        ref[max(0, cy - 3):max(0, cy + 3), max(0, cx - 3):max(0, cx + 3)] = FILL3
        np.testing.assert_array_equal(out[i].permute(1, 2, 0).numpy(), ref, err_msg=f"image {i}")


# 3. the same distribution as timm's RandAugment ----------------------------------------------------

def test_op_choice_probability_sign_and_filter_match_timm():
    """Count what timm's RandAugment actually calls over many images (ops replaced by recorders)
    and what our draws say; every frequency must agree within sampling error."""
    n_img, layers, p, m, mstd = 3000, 2, 0.6, 9, 2.0
    tf = TrainTransform(8, 3, [0.5] * 3, [0.5] * 3, randaugment=True, ra_magnitude=m, ra_layers=layers, ra_prob=p,
                        ra_mstd=mstd)
    seen = []
    geometric = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}

    def recorder(name):
        def record(img, *args, **kw):      # timm's filter draw happens in the op (_check_args_tf): redo it
            seen.append((name, args, aa._interpolation(dict(kw)) if name in geometric else None))
            return img
        return record

    for op in tf.ra.ops:
        op.aug_fn = recorder(op.name)
    random.seed(0)
    np.random.seed(0)
    img = Image.new("RGB", (8, 8))
    for _ in range(n_img):
        tf.ra(img)
    d = BatchNoise(randaugment=True, ra_magnitude=m, ra_layers=layers, ra_prob=p, ra_mstd=mstd).draw(
        n_img, (8, 8), torch.Generator().manual_seed(0))
    ours = d.op[d.apply]
    total = n_img * layers
    assert abs(len(seen) - int(d.apply.sum())) < 5 * np.sqrt(total * p * (1 - p))
    for i, name in enumerate(RAND_OPS):                           # binomial counts, 5 sigma
        q = p / len(RAND_OPS)
        tol = 5 * np.sqrt(total * q * (1 - q))
        assert abs(sum(s[0] == name for s in seen) - total * q) < tol, name
        assert abs(int((ours == i).sum()) - total * q) < tol, name
    rot = np.array([s[1][0] for s in seen if s[0] == "Rotate"])
    assert abs((rot < 0).mean() - 0.5) < 0.1 and abs(d.negate.double().mean() - 0.5) < 0.03
    bic = np.mean([s[2] == Image.BICUBIC for s in seen if s[0] in geometric])
    assert abs(bic - 0.5) < 0.03 and abs(d.bicubic.double().mean() - 0.5) < 0.03
    # magnitude after jitter and clipping to [0, 10]: from Brightness's factor = m / 10 * 1.8 + 0.1
    mt = np.array([(s[1][0] - 0.1) / 1.8 * 10 for s in seen if s[0] == "Brightness"])
    mo = d.magnitude[d.apply].numpy()
    assert mt.max() <= 10 and mo.max() <= 10 and mo.min() >= 0
    assert abs(mt.mean() - mo.mean()) < 0.3 and abs(mt.std() - mo.std()) < 0.3


# 4. per sample, seeded, replayable ----------------------------------------------------------------

NOISE = BatchNoise(crop_padding=2, hflip=True, randaugment=True, ra_magnitude=9, ra_layers=2, cutout=0.5, fill=FILL3)


def test_each_image_gets_its_own_noise():
    x = _batch(np.repeat(_images(1, 12, 3), 48, 0))              # 48 copies of one image
    d = NOISE.draw(48, (12, 12), torch.Generator().manual_seed(1))
    out = NOISE.apply(x, d)
    assert len({o.numpy().tobytes() for o in out}) >= 44         # a few may coincide (e.g. two flips)
    assert len(set(d.op[:, 0].tolist())) >= 10 and d.crop.unique(dim=0).shape[0] > 10


def test_dense_and_sparse_dispatch_agree():
    x = _batch(_images(24, 12, 3))
    d = NOISE.draw(24, (12, 12), torch.Generator().manual_seed(2))
    dense = dataclasses.replace(NOISE, dense=True).apply(x, d)
    sparse = dataclasses.replace(NOISE, dense=False).apply(x, d)
    assert torch.equal(dense, sparse)


def test_same_seed_same_noise_other_seed_other_noise():
    x = _batch(_images(16, 12, 3))
    a = NOISE(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, NOISE(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, NOISE(x, torch.Generator().manual_seed(6)))
    assert torch.equal(NOISE(x, step_generator(3, 7)), NOISE(x, step_generator(3, 7)))
    assert not torch.equal(NOISE(x, step_generator(3, 7)), NOISE(x, step_generator(3, 8)))
    assert not torch.equal(NOISE(x, step_generator(3, 7, rank=0)), NOISE(x, step_generator(3, 7, rank=1)))


def test_resume_replays_the_batch_of_step_k():
    """Two ways a resumed run can get step k's noise back: the saved generator state, or the
    (seed, step) generator, which needs no state at all."""
    x = _batch(_images(8, 12, 3))
    g = torch.Generator().manual_seed(11)
    outs, states = [], []
    for _ in range(5):
        states.append(g.get_state())
        outs.append(NOISE(x, g))
    g2 = torch.Generator()
    g2.set_state(states[3])
    assert torch.equal(NOISE(x, g2), outs[3]) and torch.equal(NOISE(x, g2), outs[4])
    steps = [NOISE(x, step_generator(11, k)) for k in range(5)]
    assert torch.equal(NOISE(x, step_generator(11, 3)), steps[3])


def test_switching_cutout_off_keeps_the_other_draws():
    d1 = NOISE.draw(8, (12, 12), torch.Generator().manual_seed(4))
    d2 = BatchNoise(randaugment=True).draw(8, (12, 12), torch.Generator().manual_seed(4))
    assert torch.equal(d1.op, d2.op) and torch.equal(d1.magnitude, d2.magnitude)


# 5. shapes, dtypes, devices -------------------------------------------------------------------------

@pytest.mark.parametrize("c,h,w", [(1, 28, 28), (3, 32, 32), (3, 10, 14)])
def test_shapes_and_dtypes(c, h, w):
    noise = dataclasses.replace(NOISE, fill=FILL3 if c == 3 else FILL1)
    x = _batch(_images(5, max(h, w), c))[..., :h, :w]
    out = noise(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    with pytest.raises(ValueError):
        noise(x.float(), torch.Generator())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: checks the on-device noise against the CPU result")
def test_cuda_gives_the_cpu_result():
    x = _batch(_images(32, 16, 3))
    d = NOISE.draw(32, (16, 16), torch.Generator().manual_seed(9))
    assert torch.equal(NOISE.apply(x.cuda(), d).cpu(), NOISE.apply(x, d))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: checks the on-device noise against the CPU result")
def test_cuda_graph_replays_the_eager_noise():
    x = _batch(_images(32, 16, 3)).cuda()
    g = GraphedNoise(NOISE, tuple(x.shape), "cuda")
    for seed in range(3):
        d = NOISE.draw(32, (16, 16), torch.Generator().manual_seed(seed))
        assert torch.equal(g(x, d).cpu(), NOISE.apply(x.cpu(), d))


def test_a_draw_crosses_the_bus_as_one_packed_tensor_and_unpacks_exactly():
    for layers in (0, 1, 3):
        noise = dataclasses.replace(NOISE, ra_layers=layers, ra_mstd=0.5)
        d = noise.draw(7, (16, 16), torch.Generator().manual_seed(layers))
        p = d.pack()
        assert p.dtype == torch.float64 and p.shape == (7, 2 + 1 + 5 * layers + 2)
        u = NoiseDraw.unpack(p, layers)
        for f in dataclasses.fields(NoiseDraw):
            a, b = getattr(d, f.name), getattr(u, f.name)
            assert a.dtype == b.dtype and torch.equal(a, b), f.name
