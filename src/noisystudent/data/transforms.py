"""Transforms: clean eval preprocessing, and the student's input noise (timm RandAugment).

Images arrive as uint8 HWC numpy arrays from a `Source`. Training goes through PIL because timm's
RandAugment is PIL-based (we reuse it rather than re-implementing the 14 ops); evaluation and
labeling use a vectorised tensor path so the un-noised teacher is not slowed by per-image Python.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

__all__ = ["TrainTransform", "to_tensor_batch", "normalize", "default_mean_std", "create_train_transform", "randaugment_spec",
           "cutout_"]


def default_mean_std(in_chans: int, mean=None, std=None):
    mean = list(mean) if mean else [0.5] * in_chans
    std = list(std) if std else [0.5] * in_chans
    return mean, std


def randaugment_spec(magnitude: int, layers: int, prob: float, mstd: float) -> str:
    """timm's RandAugment config string. `mmax` lifts timm's default clamp of magnitudes to 10,
    so `ra_magnitude: 27` is 27 (without it timm silently applies 10)."""
    return f"rand-m{magnitude}-n{layers}-p{prob:g}-mstd{mstd:g}-mmax{max(10, magnitude)}"


def cutout_(x: torch.Tensor, frac: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017), in place on a normalised CHW tensor: a square of side
    round(frac * size) centred at a uniformly drawn pixel (clipped at the border) is set to 0, the
    dataset mean after normalisation. The official small-image recipe uses frac 0.5."""
    h, w = x.shape[-2:]
    side = int(round(frac * min(h, w)))
    if side <= 0:
        return x
    cy = int(torch.randint(h, (1,), generator=generator))
    cx = int(torch.randint(w, (1,), generator=generator))
    y0, y1 = max(0, cy - side // 2), min(h, cy - side // 2 + side)
    x0, x1 = max(0, cx - side // 2), min(w, cx - side // 2 + side)
    x[..., y0:y1, x0:x1] = 0.0
    return x


class TrainTransform:
    """uint8 HWC array -> normalised CHW float tensor, with optional crop/flip/RandAugment/Cutout.

    RandAugment is timm's, with its geometry scaled to the image: the largest shift at magnitude
    10 is `ra_translate` x size (timm's RandAugment shifts by `translate_pct` and ignores
    `translate_const`), and fills use the dataset mean. It runs on RGB even for grayscale data
    (some of timm's ops fill with an RGB colour), and the result is converted back.
    """

    def __init__(self, image_size: int, in_chans: int, mean, std, *, crop_padding: int = 0,
                 hflip: bool = False, randaugment: bool = False, ra_magnitude: int = 9,
                 ra_layers: int = 2, ra_prob: float = 1.0, ra_mstd: float = 0.0, ra_translate: float = 0.125,
                 cutout: float = 0.0):
        self.image_size, self.in_chans, self.cutout = image_size, in_chans, cutout
        self.crop = T.RandomCrop(image_size, padding=crop_padding, padding_mode="reflect") if crop_padding else None
        self.flip = T.RandomHorizontalFlip() if hflip else None
        self.ra = None
        if randaugment:
            from timm.data.auto_augment import rand_augment_transform
            fill = tuple(int(round(255 * m)) for m in (mean * 3 if len(mean) == 1 else mean))
            hparams = {"translate_pct": ra_translate, "img_mean": fill}
            self.ra = rand_augment_transform(randaugment_spec(ra_magnitude, ra_layers, ra_prob, ra_mstd), hparams)
        self.normalize = T.Normalize(mean, std)
        self.to_tensor = T.ToTensor()

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        if im.size != (self.image_size, self.image_size):
            im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
        if self.crop is not None:
            im = self.crop(im)
        if self.flip is not None:
            im = self.flip(im)
        if self.ra is not None:
            gray = im.mode == "L"
            im = self.ra(im.convert("RGB") if gray else im)
            if gray:
                im = im.convert("L")
        x = self.normalize(self.to_tensor(im))
        return cutout_(x, self.cutout) if self.cutout > 0 else x


def resize_for_training(arr: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 HWC -> (image_size, image_size, C) exactly as `TrainTransform` resizes first (PIL
    bilinear); done once ahead of it (`decode_all`, `at_training_size`), the transform's own resize
    is then a no-op and its output the same, bit for bit."""
    if arr.shape[:2] == (image_size, image_size):
        return arr
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(im).reshape(image_size, image_size, -1)


def create_train_transform(data_cfg, noise_cfg=None, image_size: int | None = None) -> TrainTransform:
    """Build from config; `noise_cfg=None` gives the un-noised (crop/flip only) training transform."""
    mean, std = default_mean_std(data_cfg.in_chans, data_cfg.mean, data_cfg.std)
    ra = bool(noise_cfg and noise_cfg.randaugment)
    kw = {}
    if ra:
        kw = dict(ra_magnitude=noise_cfg.ra_magnitude, ra_layers=noise_cfg.ra_layers, ra_prob=noise_cfg.ra_prob,
                  ra_mstd=noise_cfg.ra_mstd, ra_translate=noise_cfg.ra_translate)
    return TrainTransform(image_size or data_cfg.image_size, data_cfg.in_chans, mean, std,
                          crop_padding=data_cfg.crop_padding, hflip=data_cfg.hflip, randaugment=ra,
                          cutout=noise_cfg.cutout if noise_cfg else 0.0, **kw)


def to_tensor_batch(images: np.ndarray | torch.Tensor, image_size: int, mean, std, device=None) -> torch.Tensor:
    """Clean eval preprocessing for a uint8 NHWC batch (array or tensor): resize (bilinear,
    antialiased) + normalise, on `device` when given: on a GPU the uint8 batch crosses the bus (a
    quarter of float32's bytes, from pinned memory, asynchronously) and the GPU does the arithmetic,
    not the CPU (issue 15). A batch a DataLoader already pinned is not copied again."""
    x = images
    if not isinstance(x, torch.Tensor):
        # a read-only array (a decoded image as PIL hands it over) is copied: torch warns on it otherwise
        x = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else np.array(x))
    if device is not None and torch.device(device).type == "cuda":
        x = (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=True)
    return normalize(x, mean, std)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel for a float NCHW batch in [0, 1]: the model's input. The one
    normaliser of batches (eval, on-device training noise, robustness); per-image training
    transforms use torchvision's Normalize, the same formula."""
    if isinstance(mean, torch.Tensor) or isinstance(std, torch.Tensor):
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    else:
        m, s = _stats(tuple(float(v) for v in mean), tuple(float(v) for v in std), x.dtype, x.device)
    return (x - m) / s


@functools.lru_cache(maxsize=64)
def _stats(mean: tuple, std: tuple, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """mean/std as (1, C, 1, 1) tensors on `device`, made once: building them per batch is a
    host->device copy from pageable memory, which PyTorch follows with a stream sync, and a sync
    per batch keeps the CPU from queueing the next batch while the GPU works (issue 15)."""
    return (torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1),
            torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1))
