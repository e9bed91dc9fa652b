"""The student's input noise for a whole uint8 batch on the training device, each image its own.

Same noise as the per-image CPU path (`data.transforms.TrainTransform`): random crop with reflect
padding, horizontal flip, timm's RandAugment ('rand-m{M}-n{N}-p{p}-mstd{s}-mmax{..}', its 15 ops,
level functions, sign flips, probabilities and bilinear/bicubic choice, dataset-mean fill) and
Cutout. What differs is where it runs: one batch of tensor ops (CPU or GPU) instead of one PIL
call chain per image, so the GPU does not wait for CPU workers.

Randomness is drawn in two steps so a run can be replayed exactly:
  draw = noise.draw(batch, (h, w), generator)   # every random number, small CPU tensors
  out = noise.apply(x, draw)                     # pure function of (x, draw), on x's device
The generator is a CPU `torch.Generator`, so a seed gives the same draws on CPU and GPU, and
`step_generator(seed, step, rank)` makes the draws of step k independent of everything before
it: a resumed run replays step k without replaying steps 0..k-1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import batch_ops as ops

__all__ = ["RAND_OPS", "BatchNoise", "NoiseDraw", "GraphedNoise", "step_generator", "apply_op"]

# timm's _RAND_TRANSFORMS (the 'rand-' set without 'inc1'), in its order; tests check it is still timm's
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_ID = {name: i for i, name in enumerate(RAND_OPS)}
_AFFINE_KIND = {_ID["Rotate"]: 0, _ID["ShearX"]: 1, _ID["ShearY"]: 2, _ID["TranslateXRel"]: 3,
                _ID["TranslateYRel"]: 4}


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator for one (seed, step, rank), from the package's one seed hash (`seed_for`), so
    nearby steps and ranks get unrelated streams and step k can be regenerated without running steps
    0..k-1."""
    from .data.loaders import seed_for
    return torch.Generator().manual_seed(seed_for(seed, "noise-step", step, rank))


@dataclass
class NoiseDraw:
    """Every random number one batch needs (CPU tensors; B images, N RandAugment layers)."""
    crop: torch.Tensor        # (B, 2) int64: top, left of the crop in the padded image, 0..2*pad
    flip: torch.Tensor        # (B,) bool
    op: torch.Tensor          # (B, N) int64: index into RAND_OPS, uniform with replacement
    apply: torch.Tensor       # (B, N) bool: the layer's op runs (prob p)
    magnitude: torch.Tensor   # (B, N) float64: after jitter and clipping to [0, mmax]
    negate: torch.Tensor      # (B, N) bool: signed ops (rotate, shear, translate) go the other way
    bicubic: torch.Tensor     # (B, N) bool: geometric ops resample bicubic, else bilinear
    cutout: torch.Tensor      # (B, 2) int64: centre row, column of the Cutout square

    def to(self, device) -> "NoiseDraw":
        return NoiseDraw(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    def pack(self) -> torch.Tensor:
        """Every field as columns of one (B, K) float64 tensor (exact: the ints are small), so a
        batch's draw crosses the bus as one copy."""
        b = self.crop.shape[0]
        return torch.cat([getattr(self, f.name).reshape(b, -1).double() for f in dataclasses.fields(self)], 1)

    @staticmethod
    def unpack(packed: torch.Tensor, layers: int) -> "NoiseDraw":
        """The inverse of `pack` for a draw of `layers` RandAugment layers."""
        out, at = {}, 0
        for f in dataclasses.fields(NoiseDraw):
            k = 2 if f.name in ("crop", "cutout") else (1 if f.name == "flip" else layers)
            col = packed[:, at:at + k]
            at += k
            col = col[:, 0] if f.name == "flip" else col
            out[f.name] = (col.to(torch.float64) if f.name == "magnitude" else
                           col.to(torch.int64) if f.name in ("crop", "op", "cutout") else col != 0)
        return NoiseDraw(**out)


@dataclass(frozen=True)
class BatchNoise:
    """Crop/flip/RandAugment/Cutout settings; the defaults are off, like `TrainTransform`'s.

    `fill` is the uint8 colour per channel that RandAugment's geometry and Cutout leave behind: the
    dataset mean, round(255 * mean), as the CPU path. `dense` computes each op for every image and
    keeps it where drawn (no host syncs, static shapes: the GPU default); otherwise each op runs on
    the images that drew it (less work: the CPU default). `precise` keeps PIL's float64 geometry.
    """
    crop_padding: int = 0
    hflip: bool = False
    randaugment: bool = False
    ra_magnitude: float = 9
    ra_layers: int = 2
    ra_prob: float = 1.0
    ra_mstd: float = 0.0
    ra_mmax: float | None = None          # None: max(10, ra_magnitude), as data.transforms.randaugment_spec
    ra_translate: float = 0.125
    cutout: float = 0.0
    fill: tuple[int, ...] = (128,)
    dense: bool | None = None             # None: dense on CUDA, sparse elsewhere
    precise: bool = True

    @classmethod
    def from_config(cls, data_cfg, noise_cfg=None, **kw) -> "BatchNoise":
        """What `data.transforms.create_train_transform(data_cfg, noise_cfg)` does on the CPU."""
        fill = tuple(int(round(255 * m)) for m in data_cfg.mean) if data_cfg.mean else (128,)   # default 0.5
        base = dict(crop_padding=data_cfg.crop_padding, hflip=data_cfg.hflip, fill=fill)
        if noise_cfg is not None:
            base.update(randaugment=noise_cfg.randaugment, ra_magnitude=noise_cfg.ra_magnitude,
                        ra_layers=noise_cfg.ra_layers, ra_prob=noise_cfg.ra_prob, ra_mstd=noise_cfg.ra_mstd,
                        ra_translate=noise_cfg.ra_translate, cutout=noise_cfg.cutout)
        base.update(kw)
        return cls(**base)

    @property
    def mmax(self) -> float:
        return self.ra_mmax if self.ra_mmax is not None else max(10.0, float(self.ra_magnitude))

    def draw(self, batch: int, size: tuple[int, int], generator: torch.Generator) -> NoiseDraw:
        """All random numbers for one batch, in a fixed order that does not depend on which noise
        is switched on (so turning Cutout off leaves the RandAugment draws of a seed unchanged)."""
        g, b, n = generator, batch, max(int(self.ra_layers), 0)
        h, w = size
        crop = torch.randint(0, 2 * self.crop_padding + 1, (b, 2), generator=g)
        flip = torch.rand(b, generator=g, dtype=torch.float64) < 0.5
        op = torch.randint(0, len(RAND_OPS), (b, n), generator=g)
        u_apply = torch.rand(b, n, generator=g, dtype=torch.float64)
        gauss = torch.randn(b, n, generator=g, dtype=torch.float64)
        unif = torch.rand(b, n, generator=g, dtype=torch.float64)
        negate = torch.rand(b, n, generator=g, dtype=torch.float64) > 0.5     # timm: random() > 0.5
        bicubic = torch.rand(b, n, generator=g, dtype=torch.float64) < 0.5    # timm: choice(bilinear, bicubic)
        cy = torch.randint(0, h, (b,), generator=g)
        cx = torch.randint(0, w, (b,), generator=g)
        m = torch.full((b, n), float(self.ra_magnitude), dtype=torch.float64)
        if self.ra_mstd > 100 or self.ra_mstd == float("inf"):               # timm: mstd > 100 is uniform
            m = unif * float(self.ra_magnitude)
        elif self.ra_mstd > 0:
            m = m + self.ra_mstd * gauss
        apply = u_apply <= self.ra_prob if self.ra_prob < 1.0 else torch.ones(b, n, dtype=torch.bool)
        return NoiseDraw(crop=crop, flip=flip, op=op, apply=apply, magnitude=m.clamp(0.0, self.mmax),
                         negate=negate, bicubic=bicubic, cutout=torch.stack([cy, cx], 1))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.draw(x.shape[0], tuple(x.shape[-2:]), generator))

    def apply(self, x: torch.Tensor, d: NoiseDraw) -> torch.Tensor:
        """uint8 (B, C, H, W) -> uint8 (B, C, H, W): crop, flip, RandAugment, Cutout, as drawn."""
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        d = d.to(x.device)                      # a few hundred bytes; everything below stays there
        return self._apply(x, d, _fill(self.fill, x.shape[1]).to(x.device))

    def _apply(self, x: torch.Tensor, d: NoiseDraw, fill: torch.Tensor) -> torch.Tensor:
        # no host<->device traffic and no syncs in here when dense: GraphedNoise captures it
        dev = x.device
        y = x.float()
        if self.crop_padding > 0:
            y = _crop(y, d.crop, self.crop_padding)
        if self.hflip:
            y = torch.where(d.flip.view(-1, 1, 1, 1), y.flip(-1), y)
        if self.randaugment:
            dense = dev.type == "cuda" if self.dense is None else self.dense
            for layer in range(d.op.shape[1]):
                y = _ra_layer(y, d.op[:, layer], d.apply[:, layer], d.magnitude[:, layer], d.negate[:, layer],
                              d.bicubic[:, layer], fill, self.ra_translate, dense, self.precise)
        if self.cutout > 0:
            y = _cutout(y, d.cutout, self.cutout, fill)
        return y.to(torch.uint8)


class GraphedNoise:
    """`BatchNoise.apply` (dense) for one batch shape on a CUDA device, captured as a CUDA graph:
    a replay is one launch, where eager dense noise issues ~1,100 small kernels per batch (32 px,
    2 layers) and costs the host more time than a small model's training step.

        g = GraphedNoise(noise, (256, 3, 32, 32), "cuda")
        out = g(x_uint8_on_cuda, noise.draw(256, (32, 32), gen))    # same result as noise.apply

    The output tensor is reused by the next call: consume (or clone) it before calling again.
    """

    def __init__(self, noise: "BatchNoise", shape: tuple[int, int, int, int], device="cuda"):
        b, c, h, w = shape
        self.noise = dataclasses.replace(noise, dense=True)
        self.layers = max(int(noise.ra_layers), 0)
        self.x = torch.zeros(shape, dtype=torch.uint8, device=device)
        # the draw enters as one packed float64 tensor (one host->device copy per batch, from pinned
        # memory, no host sync); unpacking it is part of the graph
        self.packed = noise.draw(b, (h, w), torch.Generator().manual_seed(0)).pack().to(device)
        self.fill = _fill(noise.fill, c).to(device)

        def run():
            return self.noise._apply(self.x, NoiseDraw.unpack(self.packed, self.layers), self.fill)
        side = torch.cuda.Stream()              # warm-up off the capturing stream, as torch.cuda.graphs asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run()

    def __call__(self, x: torch.Tensor, d: NoiseDraw) -> torch.Tensor:
        self.x.copy_(x)
        self.packed.copy_(d.pack().pin_memory(), non_blocking=True)
        self.graph.replay()
        return self.out


def _fill(fill, c: int) -> torch.Tensor:
    f = tuple(fill) * c if len(fill) == 1 else tuple(fill)
    if len(f) != c:
        raise ValueError(f"fill has {len(fill)} values for {c} channels")
    return torch.tensor(f, dtype=torch.float32)


def _crop(y: torch.Tensor, tl: torch.Tensor, pad: int) -> torch.Tensor:
    """torchvision RandomCrop(size, padding=pad, padding_mode='reflect') at the drawn corners."""
    b, c, h, w = y.shape
    p = torch.nn.functional.pad(y, (pad, pad, pad, pad), mode="reflect")
    rows = (tl[:, 0:1] + torch.arange(h, device=y.device))[:, :, None]          # (B, H, 1)
    cols = (tl[:, 1:2] + torch.arange(w, device=y.device))[:, None, :]          # (B, 1, W)
    bi = torch.arange(b, device=y.device)[:, None, None]
    return p.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2).contiguous()


def _cutout(y: torch.Tensor, centre: torch.Tensor, frac: float, fill: torch.Tensor) -> torch.Tensor:
    """data.transforms.cutout_: a square of side round(frac * min(h, w)) at the drawn centre,
    clipped at the border, set to the mean colour (0 after normalisation on the CPU path)."""
    b, c, h, w = y.shape
    side = int(round(frac * min(h, w)))
    if side <= 0:
        return y
    y0, x0 = centre[:, 0] - side // 2, centre[:, 1] - side // 2
    r = torch.arange(h, device=y.device)[None]
    q = torch.arange(w, device=y.device)[None]
    inr = (r >= y0[:, None]) & (r < y0[:, None] + side)
    inc = (q >= x0[:, None]) & (q < x0[:, None] + side)
    mask = (inr[:, :, None] & inc[:, None, :])[:, None]
    return torch.where(mask, fill.view(1, c, 1, 1), y)


# RandAugment ----------------------------------------------------------------------------------------

def _levels(op, m, negate, h, w, translate):
    """timm's level functions (auto_augment.LEVEL_TO_ARG, non-'Increasing' set) on the magnitude m,
    in float64 like Python: returns (int arg, float arg) per image for its drawn op."""
    lv = m / 10.0
    sign = torch.where(negate, -1.0, 1.0).to(m.dtype)
    ints = torch.zeros_like(op)
    ints = torch.where(op == _ID["Posterize"], (lv * 4).long(), ints)
    ints = torch.where(op == _ID["Solarize"], (lv * 256).long().clamp(max=256), ints)
    ints = torch.where(op == _ID["SolarizeAdd"], (lv * 110).long().clamp(max=128), ints)
    f = lv * 1.8 + 0.1                                                # Color/Contrast/Brightness/Sharpness
    f = torch.where(op == _ID["Rotate"], sign * lv * 30.0, f)
    f = torch.where((op == _ID["ShearX"]) | (op == _ID["ShearY"]), sign * lv * 0.3, f)
    f = torch.where(op == _ID["TranslateXRel"], sign * lv * translate * w, f)      # pixels = pct * width
    f = torch.where(op == _ID["TranslateYRel"], sign * lv * translate * h, f)
    return ints, f


def _lut_tables(name, x, ints, f):
    """The lookup table of point op `name` for each image of x, from its level arguments."""
    n, c = x.shape[:2]
    if name == "AutoContrast":
        return ops.autocontrast_lut(x)
    if name == "Equalize":
        return ops.equalize_lut(x)
    if name == "Invert":
        return ops.invert_lut(n, c, x.device)
    if name == "Posterize":                                            # timm: >= 8 bits is a no-op
        return torch.where((ints >= 8)[:, None, None], ops.identity_lut(n, c, x.device), ops.posterize_lut(ints, c))
    if name == "Solarize":
        return ops.solarize_lut(ints, c)
    if name == "SolarizeAdd":
        return ops.solarize_add_lut(ints, c)
    if name == "Contrast":                                             # degenerate: rounded mean of L
        return ops.blend_const_lut(torch.floor(ops.gray_l(x).double().mean((1, 2, 3)) + 0.5), f, c)
    return ops.blend_const_lut(torch.zeros_like(f), f, c)              # Brightness: blend with black


_LUT_NAMES = ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd", "Contrast", "Brightness")


def _lut_group(x, op, ints, f, dense):
    """The eight point ops: a table per image (built by the op it drew), then one gather. Dense
    builds every table for every image and picks; sparse builds each for its own images only."""
    n, c = x.shape[:2]
    lut = ops.identity_lut(n, c, x.device)
    for name in _LUT_NAMES:
        hit = op == _ID[name]
        if dense:
            lut = torch.where(hit[:, None, None], _lut_tables(name, x, ints, f), lut)
        else:
            idx = hit.nonzero()[:, 0]
            if idx.numel():
                lut[idx] = _lut_tables(name, x[idx], ints[idx], f[idx])
    return ops.apply_lut(x, lut)


def _warp_group(x, op, f, bicubic, fill, precise):
    h, w = x.shape[-2:]
    kind = torch.zeros_like(op)
    for i, k in _AFFINE_KIND.items():
        kind = torch.where(op == i, k, kind)
    coef = ops.affine_coefficients(kind, f, h, w)
    return ops.warp(x, coef, fill, bicubic, torch.float64 if precise else torch.float32)


def _ra_layer(y, op, apply, m, negate, bicubic, fill, translate, dense, precise):
    """One RandAugment layer: each image runs the op it drew (or none); ops are grouped by kind so a
    layer is four or five batched calls, not one per image."""
    h, w = y.shape[-2:]
    ints, f = _levels(op, m, negate, h, w, translate)
    is_affine, is_lut = torch.zeros_like(apply), torch.zeros_like(apply)     # no host->device copies
    for i in _AFFINE_KIND:
        is_affine |= op == i
    for name in _LUT_NAMES:
        is_lut |= op == _ID[name]
    groups = [(apply & is_lut, lambda x, s: _lut_group(x, op[s], ints[s], f[s], dense)),
              (apply & (op == _ID["Color"]), lambda x, s: ops.color(x, f[s])),
              (apply & (op == _ID["Sharpness"]), lambda x, s: ops.sharpness(x, f[s]))]
    if dense:                                   # one set of coordinates and taps, both filters
        groups.append((apply & is_affine, lambda x, s: _warp_group(x, op, f, bicubic, fill, precise)))
    else:                                       # each image computes only its own filter
        groups += [(apply & is_affine & ~bicubic, lambda x, s: _warp_group(x, op[s], f[s], False, fill, precise)),
                   (apply & is_affine & bicubic, lambda x, s: _warp_group(x, op[s], f[s], True, fill, precise))]
    everyone = slice(None)
    for mask, fn in groups:
        if dense:
            y = torch.where(mask.view(-1, 1, 1, 1), fn(y, everyone), y)
        else:
            idx = mask.nonzero()[:, 0]
            if idx.numel():                     # groups are disjoint, and y is our own copy
                y.index_copy_(0, idx, fn(y[idx], idx))
    return y


def apply_op(x: torch.Tensor, name: str, magnitude: float, *, negate: bool = False, bicubic: bool = False,
             fill=(128,), translate: float = 0.125, dense: bool = False, precise: bool = True) -> torch.Tensor:
    """One RandAugment op at one magnitude on every image of a uint8 batch (for tests and checks)."""
    b, dev = x.shape[0], x.device
    full = lambda v, dt: torch.full((b,), v, dtype=dt, device=dev)  # noqa: E731
    y = _ra_layer(x.float(), full(_ID[name], torch.int64), full(True, torch.bool),
                  full(float(magnitude), torch.float64), full(negate, torch.bool), full(bicubic, torch.bool),
                  _fill(fill, x.shape[1]).to(dev), translate, dense, precise)
    return y.to(torch.uint8)
