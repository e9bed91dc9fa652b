"""Decoding one image file: bytes -> upright uint8 HWC array with the channels asked for, at most
`max_side` per side, or a one-line `BadImage` naming the file. Every source (folder, tar, manifest,
`predict` on a folder) decodes through `open_image`, so they all see the same pixels.

The decoder is Pillow's (plus pillow-heif's plugin, `formats`); what is ours is the policy around
it: refuse decompression bombs from the header, decode large JPEGs at reduced scale, honour the
EXIF orientation, scale 16-bit grayscale instead of clipping it, shrink before the array is made.
"""
from __future__ import annotations

import math
import os
import stat
import zlib

import numpy as np
from PIL import Image

from ..errors import UserError

__all__ = ["MAX_PIXELS", "DECODE_VERSION", "BadImage", "open_image", "flatten_alpha", "from_array", "upright", "shrink"]

# Larger images are refused as undecodable (skipped in the pool): decoding one costs ~3 bytes a pixel
# several times over. Smaller ones larger than a source's `max_side` are shrunk as they are loaded.
MAX_PIXELS = 64_000_000

# Raised whenever `open_image` returns other pixels for some file (2: transparency laid over white).
# It is in the key of every cache of pixels derived from decoded files (the near-copy thumbnails), so
# an upgrade recomputes them instead of comparing old pixels with new.
DECODE_VERSION = 2


class BadImage(UserError):
    """An image file that cannot be decoded (corrupt, truncated, not an image).

    Code that may skip such files catches it (data.bad_images=skip); anywhere else it is a UserError,
    so under `fail` the user sees one line naming the file and the way out.
    """

    def __str__(self) -> str:
        msg = super().__str__()
        return msg if "data.bad_images" in msg else f"{msg}; fix or remove the file, or set data.bad_images=skip"


def open_image(path_or_file, in_chans: int, name: str = "", max_side: int | None = None) -> np.ndarray:
    """Decode to uint8 HWC with `in_chans` channels (grayscale/RGB/RGBA/palette are converted),
    upright (`upright`: a phone photo's EXIF orientation applied, as a photo viewer shows it), at
    most `max_side` pixels on the longer side (shrunk as `shrink` would, before the array is made:
    a 60M-pixel photo then costs one full-size copy in memory, not four).

    A JPEG at least twice `max_side` is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (PIL's
    `draft`, as `Image.thumbnail` does), never below `max_side`, then shrunk as above: a 12-MP phone
    photo decodes ~2.5x faster (benchmarks/big_photo_decode.py), which is what keeps a GPU labeling
    a pool of such photos fed. Its pixels differ slightly from a full decode's (DCT-domain scaling
    is a sharper low-pass than bilinear antialiasing); every source decodes the same way."""
    try:
        if isinstance(path_or_file, (str, os.PathLike)) and not stat.S_ISREG(os.stat(path_or_file).st_mode):
            raise BadImage(f"{name or path_or_file}: not a regular file (a pipe, device or folder); "
                           "only image files are read")
        with Image.open(path_or_file) as im:
            if im.width * im.height > MAX_PIXELS:
                raise BadImage(f"{name or path_or_file}: {im.width}x{im.height} pixels, more than the "
                               f"{MAX_PIXELS:,} an image may have here; downscale it")
            if max_side and max(im.size) >= 2 * max_side:
                # a no-op for formats other than JPEG; the scale keeps both sides >= the box's
                s = max_side / max(im.size)
                im.draft(None, (math.ceil(im.width * s), math.ceil(im.height * s)))
            im = upright(im)
            if im.mode.startswith("I;16") or im.mode == "I":
                # 16-bit grayscale: PIL's convert() clips to 255 (a nearly white image); scale instead.
                a = np.asarray(im, dtype=np.float64)
                if im.mode != "I" or a.max() > 255:
                    a = a / 257.0
                im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
            im = flatten_alpha(im)
            mode = "L" if in_chans == 1 else "RGB"
            if im.mode != mode:         # convert() to the same mode would copy the whole image
                im = im.convert(mode)
            if max_side and max(im.size) > max_side:
                im = _fit(im, max_side)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, zlib.error) as e:
        raise BadImage(f"{name or path_or_file}: cannot decode image ({e})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def flatten_alpha(im: Image.Image) -> Image.Image:
    """An image with transparency (RGBA, LA, a palette or PNG with a transparent colour) laid over
    white, as a browser or viewer on a white page shows it; others unchanged. PIL's convert("RGB"),
    which torchvision's and timm's loaders use, drops the alpha channel and keeps whatever colour the
    transparent pixels hold: black in one icon, white or leftover paint in the next, a background
    the model would learn from although nobody sees it. Opaque RGBA images are returned as they are
    (the check reads the alpha band's extrema only)."""
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("L" if im.mode in ("L", "LA") else "RGB")
    return im


_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def from_array(a, in_chans: int, name: str = "image") -> np.ndarray:
    """A user's image array as `open_image` would decode the same pixels from a file: uint8 HW or HWC
    with 1-4 channels (L, LA, RGB, RGBA), transparency laid over white, converted to `in_chans`
    channels (PIL's luma for colour to gray). Anything else stops with one line naming the fix: a
    float array (0-1 values would all become 0 or 1), or a CHW image (a torch tensor's layout)."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise UserError(f"{name}: a uint8 array of 0-255 pixels is needed, got {a.dtype}; values 0-1: "
                        "(a * 255).round().astype(np.uint8)")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or not 1 <= a.shape[2] <= 4:
        hint = (f"; it looks channels-first (C, H, W): pass a.transpose(1, 2, 0) (a batch: (0, 2, 3, 1))"
                if a.ndim == 3 and 1 <= a.shape[0] <= 4 else "")
        raise UserError(f"{name}: an image must be (H, W) or (H, W, C) with C = 1, 2, 3 or 4, got shape "
                        f"{tuple(a.shape)}{hint}")
    if a.shape[2] == in_chans:
        return a
    im = flatten_alpha(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a, _MODES[a.shape[2]]))
    out = np.asarray(im.convert("L" if in_chans == 1 else "RGB"), dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out


# EXIF orientation (tag 0x0112) -> the transposition that shows the image as it was shot (the EXIF
# standard's table; Pillow's ImageOps.exif_transpose uses the same one)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def upright(im: Image.Image) -> Image.Image:
    """`im` turned as its EXIF orientation tag says. A phone stores a portrait photo as landscape
    pixels plus this tag; without it the model would train on sideways images, and a model exported
    to a pipeline that honours the tag (torchvision's decode_jpeg(apply_exif_orientation=True), HF
    datasets, every photo viewer) would then see other images than it was trained on.

    Not `ImageOps.exif_transpose`: it copies every image that has no tag (nearly all of them), and
    raises on the malformed EXIF blocks some cameras and editors write (huggingface/datasets#7668),
    where the pixels are fine: such a tag is ignored here, the image kept as stored."""
    try:
        method = _ORIENTATION.get(im.getexif().get(0x0112))
    except Exception:       # noqa: BLE001 - any parse error of the metadata block: no usable tag
        return im
    return im.transpose(method) if method is not None else im


def _fit(im: Image.Image, max_side: int) -> Image.Image:
    """At most `max_side` pixels on the longer side, aspect kept (bilinear, antialiased)."""
    w, h = im.size
    scale = max_side / max(h, w)
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def shrink(a: np.ndarray, max_side: int) -> np.ndarray:
    """uint8 HWC -> at most `max_side` pixels on its longer side, aspect kept (PIL, antialiased)."""
    out = np.asarray(_fit(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a), max_side))
    return out[:, :, None] if out.ndim == 2 else out
