"""Batched image ops that reproduce PIL's arithmetic, for noise applied on the training device.

Every function takes a float tensor (n, C, H, W) holding integer grey levels 0..255 (the image a
uint8 PIL image would hold) plus one parameter per image, and returns the same kind of tensor,
quantised the way PIL quantises its uint8 result. Rounding mirrors PIL's C code, so the batched
noise gives the same image as timm's per-image RandAugment, not merely a similar one:

- geometry (`warp`): PIL maps the centre of output pixel (x, y) to (a(x+.5) + b(y+.5) + c, ...);
  a source point outside [0, W) x [0, H) takes the fill colour (a hard edge, no blend); inside,
  bilinear or PIL's bicubic (the a = -1 cubic, not torch's a = -0.75) with clamped taps; the
  result is truncated to an integer.
- point ops are per-image lookup tables built with PIL's formulas (`*_lut`) and applied by
  `apply_lut`; `Image.blend` (Brightness/Contrast/Color/Sharpness) is float32 and truncates.

Pure functions: no randomness here (the caller draws every parameter from its own generator).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["apply_lut", "identity_lut", "posterize_lut", "solarize_lut", "solarize_add_lut", "invert_lut",
           "autocontrast_lut", "equalize_lut", "blend_const_lut", "gray_l", "color", "sharpness", "warp",
           "affine_coefficients"]


# lookup tables: (n, C, 256) float64, values are the output grey level for each input level -------

def identity_lut(n: int, c: int, device) -> torch.Tensor:
    return torch.arange(256, dtype=torch.float64, device=device).expand(n, c, 256).clone()


def apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """x[i, ch] -> lut[i, ch][x[i, ch]]; one gather, whatever mix of point ops built the tables."""
    n, c, h, w = x.shape
    idx = x.reshape(n, c, h * w).long()
    return lut.to(x.dtype).gather(2, idx).view(n, c, h, w)


def invert_lut(n, c, device):
    return 255.0 - identity_lut(n, c, device)


def posterize_lut(bits: torch.Tensor, c: int) -> torch.Tensor:
    """Keep the `bits` most significant bits (per image). timm skips the op at >= 8 bits; at 0
    bits the mask is 0 (black), which is what PIL did before it started rejecting bits < 1."""
    lv = torch.arange(256, device=bits.device)
    mask = (255 - ((1 << (8 - bits.clamp(0, 8))) - 1))            # bits=3 -> 0b11100000
    return (lv[None] & mask[:, None]).double()[:, None].expand(-1, c, -1).clone()


def solarize_lut(thresh: torch.Tensor, c: int) -> torch.Tensor:
    lv = torch.arange(256, dtype=torch.float64, device=thresh.device)[None]
    return torch.where(lv < thresh[:, None], lv, 255 - lv)[:, None].expand(-1, c, -1).clone()


def solarize_add_lut(add: torch.Tensor, c: int, thresh: int = 128) -> torch.Tensor:
    lv = torch.arange(256, dtype=torch.float64, device=add.device)[None]
    return torch.where(lv < thresh, (lv + add[:, None]).clamp(max=255), lv)[:, None].expand(-1, c, -1).clone()


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel counts of each grey level: (n, C, 256) int64."""
    n, c, h, w = x.shape
    idx = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, idx, torch.ones_like(idx))
    return hist.view(n, c, 256)


def autocontrast_lut(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0): per channel, [lo, hi] -> [0, 255] with int() truncation,
    identity where the channel is flat. Computed in float64 like PIL's Python floats."""
    flat = x.flatten(2)
    lo, hi = flat.amin(2).double(), flat.amax(2).double()
    lv = torch.arange(256, dtype=torch.float64, device=x.device)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)   # not 255.0 / t: torch takes a reciprocal
    lut = torch.trunc(lv * scale[..., None] + (-lo * scale)[..., None]).clamp(0, 255)
    return torch.where((hi > lo)[..., None], lut, lv.expand_as(lut))


def equalize_lut(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize: step = (pixels - count of the last used level) // 255, and level i maps
    to (step // 2 + pixels below i) // step; identity when step is 0 (at most one level used)."""
    hist = _histogram(x)
    total = hist.sum(2)
    last = torch.arange(256, device=x.device).expand_as(hist).masked_fill(hist == 0, -1).amax(2)
    step = (total - hist.gather(2, last.clamp(min=0)[..., None])[..., 0]) // 255
    below = torch.cumsum(hist, 2) - hist
    lut = ((step // 2)[..., None] + below) // step.clamp(min=1)[..., None]
    lv = torch.arange(256, device=x.device).expand_as(lut)
    return torch.where((step > 0)[..., None], lut.clamp(max=255), lv).double()


def blend_const_lut(base: torch.Tensor, factor: torch.Tensor, c: int) -> torch.Tensor:
    """Image.blend(constant `base`, image, factor) as a table: float32 base + f * (v - base),
    clipped, truncated. Brightness is base 0; Contrast is base = rounded mean of the L image."""
    lv = torch.arange(256, dtype=torch.float32, device=factor.device)[None]
    b = base.float()[:, None]
    out = b + factor.float()[:, None] * (lv - b)
    return torch.trunc(out.clamp(0, 255)).double()[:, None].expand(-1, c, -1).clone()


# ops that mix pixels -------------------------------------------------------------------------------

def gray_l(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion, exact integer form (ITU-R 601-2 luma in 16-bit fixed point)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1].long(), x[:, 1:2].long(), x[:, 2:3].long()
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(x.dtype)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.float().view(-1, 1, 1, 1)
    d = degenerate.float()
    return torch.trunc((d + f * (x.float() - d)).clamp(0, 255)).to(x.dtype)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Color: blend with the image's own grey version (a no-op on one channel)."""
    return _blend(gray_l(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH (3x3 kernel / 13, rounded), whose
    one-pixel border PIL copies unfiltered. The integer kernel sum keeps the rounding exact."""
    n, c, h, w = x.shape
    k = torch.ones(c, 1, 3, 3, device=x.device, dtype=x.dtype)        # ImageFilter.SMOOTH: 1s, 5 centre
    k[:, :, 1, 1] = 5
    s = F.conv2d(x, k, groups=c)                                       # (n, c, h-2, w-2) integers
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = torch.floor(s / 13 + 0.5).clamp(0, 255)
    return _blend(smooth, x, factor)


# geometry --------------------------------------------------------------------------------------------

def affine_coefficients(kind: torch.Tensor, value: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL's inverse affine data (a, b, c, d, e, f) per image, float64 (n, 6).

    kind: 0 rotate by `value` degrees counter-clockwise about (w/2, h/2) as Image.rotate does,
    1 shear x by `value`, 2 shear y, 3 translate x by `value` pixels, 4 translate y.
    """
    v = value.double()
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    th = -torch.deg2rad(torch.remainder(v, 360.0))                  # Image.rotate's own steps
    cos, sin = torch.round(torch.cos(th), decimals=15), torch.round(torch.sin(th), decimals=15)
    cx, cy = w / 2.0, h / 2.0
    rot = torch.stack([cos, sin, (cos * -cx + sin * -cy) + cx, -sin, cos, (-sin * -cx + cos * -cy) + cy], 1)
    rows = [rot,
            torch.stack([one, v, zero, zero, one, zero], 1),
            torch.stack([one, zero, zero, v, one, zero], 1),
            torch.stack([one, zero, v, zero, one, zero], 1),
            torch.stack([one, zero, zero, zero, one, v], 1)]
    out = rows[0]
    for k in range(1, 5):
        out = torch.where((kind == k)[:, None], rows[k], out)
    return out


_CPU_CHUNK = 16   # 2-core EPYC: the 16-tap gather of 16 images stays in L2 (64 images: up to 1.5x slower)


def _cubic_(v1, v2, v3, v4, d):
    """PIL's BICUBIC macro (Geometry.c), in place on v1 (returned). p2..p4 follow its operation
    order; d's Horner steps too, so flat areas stay exactly flat and values round as PIL's do."""
    p2 = v3 - v1
    p3 = (v1 - v2).mul_(2).add_(v3).sub_(v4)
    p4 = v1.neg_().add_(v2).sub_(v3).add_(v4)
    return p4.mul_(d).add_(p3).mul_(d).add_(p2).mul_(d).add_(v2)


_PAD = 2   # edge-replicated border: a tap at x0 + o (o in -1..2) reads what PIL's clamped XCLIP/YCLIP reads


def warp(x: torch.Tensor, coef: torch.Tensor, fill: torch.Tensor, bicubic: bool | torch.Tensor,
         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Image.transform(AFFINE) for a batch: one (a..f) row per image, `fill` (C,) outside.

    `bicubic` is one filter for all, or a per-image bool tensor (both computed from one set of
    taps, then picked: the dense GPU path). `dtype` is the precision of coordinates and
    interpolation: float64 is PIL's (C doubles) and gives its result to the grey level; float32
    is faster and can move a truncated pixel by one.

    All taps come from one gather on the edge-padded image (padding replaces per-tap clamping) and
    the interpolation runs on all rows of taps at once: a RandAugment layer's geometry is ~125
    kernels instead of ~213 (each one a node the CUDA graph replays per batch); on the CPU it runs
    about as fast as one gather per tap did (docs/benchmarks/throughput.md).
    """
    n, c, h, w = x.shape
    if x.device.type == "cpu" and n > _CPU_CHUNK:     # temporaries of a chunk stay in L2
        pick = lambda i: bicubic[i:i + _CPU_CHUNK] if torch.is_tensor(bicubic) else bicubic  # noqa: E731
        return torch.cat([warp(x[i:i + _CPU_CHUNK], coef[i:i + _CPU_CHUNK], fill, pick(i), dtype)
                          for i in range(0, n, _CPU_CHUNK)])
    dev = x.device
    co = coef.to(dev, dtype)
    yy, xx = torch.meshgrid(torch.arange(h, device=dev, dtype=dtype) + 0.5,
                            torch.arange(w, device=dev, dtype=dtype) + 0.5, indexing="ij")
    xx, yy = xx.reshape(1, -1), yy.reshape(1, -1)
    xin = co[:, 0:1] * xx + co[:, 1:2] * yy + co[:, 2:3]
    yin = co[:, 3:4] * xx + co[:, 4:5] * yy + co[:, 5:6]
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xs, ys = xin - 0.5, yin - 0.5
    x0, y0 = torch.floor(xs), torch.floor(ys)
    dx, dy = (xs - x0)[:, None, None], (ys - y0)[:, None]                    # (n, 1, 1, hw), (n, 1, hw)
    # inside pixels have x0 in [-1, w-1]; clamping the others keeps their (discarded) taps in range
    x0, y0 = x0.long().clamp_(-1, w - 1), y0.long().clamp_(-1, h - 1)
    cubic = bicubic is True or torch.is_tensor(bicubic)
    linear = bicubic is False or torch.is_tensor(bicubic)
    offsets = torch.arange(-1, 3, device=dev) if cubic else torch.arange(0, 2, device=dev)
    k, wp = offsets.numel(), w + 2 * _PAD
    padded = F.pad(x.to(dtype), (_PAD,) * 4, mode="replicate").reshape(n, c, -1)
    base = (y0 + _PAD) * wp + (x0 + _PAD)                                     # (n, hw)
    tap_off = (offsets[None, :] * wp + offsets[:, None]).reshape(-1)          # (k*k,): [column i, row j]
    idx = (base[:, None, :] + tap_off[None, :, None]).reshape(n, 1, -1).expand(n, c, -1)
    taps = padded.gather(2, idx).view(n, c, k, k, h * w)                      # [.., i, j, pixel]: pixels contiguous
    if linear:                                  # PIL's BILINEAR, a + (b - a) * d; leaves the taps intact
        o = 1 if cubic else 0                   # where offset 0 sits
        rows = (taps[:, :, o + 1, o:o + 2] - taps[:, :, o, o:o + 2]).mul_(dx).add_(taps[:, :, o, o:o + 2])
        v = rows[:, :, 1].sub(rows[:, :, 0]).mul_(dy).add_(rows[:, :, 0])     # rows: (n, c, 2, hw) top, bottom
    if cubic:                                   # the four rows at once, then down the column
        r = _cubic_(taps[:, :, 0], taps[:, :, 1], taps[:, :, 2], taps[:, :, 3], dx)     # (n, c, 4, hw)
        vc = _cubic_(r[:, :, 0], r[:, :, 1], r[:, :, 2], r[:, :, 3], dy).clamp_(0, 255)
        v = torch.where(bicubic.to(dev).view(-1, 1, 1), vc, v) if linear else vc
    v = v.trunc_().to(x.dtype)
    out = torch.where(inside[:, None], v, fill.to(x.dtype).view(1, c, 1))
    return out.view(n, c, h, w)
