"""Transforms: clean eval preprocessing, and the student's input noise (timm RandAugment).

Images arrive as uint8 HWC numpy arrays from a `Source`. Training goes through PIL because timm's
RandAugment is PIL-based (we reuse it rather than re-implementing the 14 ops); evaluation and
labeling use a vectorised tensor path so the un-noised teacher is not slowed by per-image Python.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

__all__ = ["TrainTransform", "to_tensor_batch", "default_mean_std", "create_train_transform"]


def default_mean_std(in_chans: int, mean=None, std=None):
    mean = list(mean) if mean else [0.5] * in_chans
    std = list(std) if std else [0.5] * in_chans
    return mean, std


class TrainTransform:
    """uint8 HWC array -> normalised CHW float tensor, with optional crop/flip/RandAugment.

    RandAugment runs on RGB even for grayscale data (some of timm's ops fill with an RGB colour),
    and the result is converted back, so the noise is the same op set for both.
    """

    def __init__(self, image_size: int, in_chans: int, mean, std, *, crop_padding: int = 0,
                 hflip: bool = False, randaugment: bool = False, ra_magnitude: int = 9,
                 ra_layers: int = 2, ra_mstd: float = 0.5):
        self.image_size, self.in_chans = image_size, in_chans
        self.crop = T.RandomCrop(image_size, padding=crop_padding, padding_mode="reflect") if crop_padding else None
        self.flip = T.RandomHorizontalFlip() if hflip else None
        self.ra = None
        if randaugment:
            from timm.data.auto_augment import rand_augment_transform
            fill = tuple(int(round(255 * m)) for m in (mean * 3 if len(mean) == 1 else mean))
            hparams = {"translate_const": max(1, int(image_size * 0.45)), "img_mean": fill}
            spec = f"rand-m{ra_magnitude}-n{ra_layers}-mstd{ra_mstd}"
            self.ra = rand_augment_transform(spec, hparams)
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
        return self.normalize(self.to_tensor(im))


def create_train_transform(data_cfg, noise_cfg=None, image_size: int | None = None) -> TrainTransform:
    """Build from config; `noise_cfg=None` gives the un-noised (crop/flip only) training transform."""
    mean, std = default_mean_std(data_cfg.in_chans, data_cfg.mean, data_cfg.std)
    ra = bool(noise_cfg and noise_cfg.randaugment)
    return TrainTransform(image_size or data_cfg.image_size, data_cfg.in_chans, mean, std,
                          crop_padding=data_cfg.crop_padding, hflip=data_cfg.hflip, randaugment=ra,
                          ra_magnitude=noise_cfg.ra_magnitude if ra else 9,
                          ra_layers=noise_cfg.ra_layers if ra else 2,
                          ra_mstd=noise_cfg.ra_mstd if ra else 0.5)


def to_tensor_batch(images: np.ndarray, image_size: int, mean, std) -> torch.Tensor:
    """Clean eval preprocessing for a uint8 NHWC batch: resize (bilinear, antialiased) + normalise."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=True)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
