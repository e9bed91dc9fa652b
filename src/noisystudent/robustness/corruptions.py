"""ImageNet-C style common corruptions (Hendrycks & Dietterich, ICLR 2019).

`corrupt` applies one of the 15 benchmark corruptions at severity 1..5 to one uint8 image;
`corrupt_dataset` does it for a whole array with per-image seeds and an optional on-disk cache,
so that a teacher and its students are scored on byte-identical corrupted images.

The maths is the `imagecorruptions` package's (1.1.2). Where it no longer runs (numpy 2,
scikit-image 0.26, setuptools without `pkg_resources`) we import it with stand-ins for the missing
modules and re-implement `glass_blur`, `fog` and `impulse_noise` bit for bit with their tables.
Sides under 32 px are upsampled by pixel replication, corrupted and sampled back (pixelate runs at
native size); grayscale is corrupted as RGB and returned as luma (noise corruptions keep one
channel). At small sizes severities compare models scored here, not published ImageNet-C numbers.

Not thread-safe: the package draws from numpy's global RNG, which `corrupt` seeds and restores.
Why each deviation, and references: docs/robustness.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import sys
import types
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from noisystudent.errors import UserError

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "corrupt_dataset", "derive_seed", "array_digest"]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_MIN_SIDE = 32  # smallest side the package's kernels and frost crops are designed for
# pixelate keeps a fraction (down to 1/4) of the resolution; it only needs that to be >= 1 px.
_MIN_SIDE_FOR = {"pixelate": 4}
_LUMA = np.array([0.299, 0.587, 0.114])
_PER_CHANNEL_NOISE = frozenset({"gaussian_noise", "shot_noise", "impulse_noise"})
# Bump when the corruption code changes, so stale cache files are never reused.
_CACHE_VERSION = "1"


# ----------------------------------------------------------------------------- package import

@functools.cache
def _package():
    """Import `imagecorruptions.corruptions`, standing in for the two modules it needs that
    modern environments lack. The stand-ins live in sys.modules only during the import."""
    standins: dict[str, types.ModuleType] = {}
    with warnings.catch_warnings():
        # Both modules, where they still exist, warn that they are deprecated on import.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            import pkg_resources  # noqa: F401  (older setuptools: use the real one)
        except ImportError:
            shim = types.ModuleType("pkg_resources")
            # The package calls resource_filename("imagecorruptions.corruptions", "./frost/x.png").
            shim.resource_filename = lambda module, rel: os.path.join(
                os.path.dirname(sys.modules[module].__file__), rel)
            standins["pkg_resources"] = shim
        try:
            import scipy.ndimage.interpolation  # noqa: F401
        except ImportError:
            import scipy.ndimage
            standins["scipy.ndimage.interpolation"] = scipy.ndimage
        sys.modules.update(standins)
        try:
            from imagecorruptions import corruptions
        except ImportError as e:
            raise UserError(f"corruptions need the robustness extra ({e}); "
                            "run: pip install 'noisystudent[robustness]'") from e
        finally:
            for name in standins:
                sys.modules.pop(name, None)
    return corruptions


# ------------------------------------------------------------------- re-implemented corruptions

def _glass_blur(x: Image.Image, severity: int = 1) -> np.ndarray:
    from skimage.filters import gaussian
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    x = np.uint8(gaussian(np.array(x) / 255.0, sigma=sigma, channel_axis=-1) * 255)
    height, width = x.shape[:2]
    # Pack RGB into one int per pixel so the inherently sequential loop runs on a Python list.
    flat = ((x[..., 0].astype(np.int64) << 16) | (x[..., 1].astype(np.int64) << 8) | x[..., 2]).ravel().tolist()
    hs = np.arange(height - delta, delta, -1)  # the reference visits rows and columns backwards
    ws = np.arange(width - delta, delta, -1)
    hh, ww = (a.ravel() for a in np.meshgrid(hs, ws, indexing="ij"))
    for _ in range(iterations):
        # One draw of shape (n, 2) yields the same stream as the reference's n draws of shape (2,).
        d = np.random.randint(-delta, delta, size=(hh.size, 2))
        src = ((hh + d[:, 1]) * width + (ww + d[:, 0])).tolist()  # (dx, dy) = d[i]
        for dst, s in zip((hh * width + ww).tolist(), src):
            flat[dst] = flat[s]  # the reference's "swap" only copies; see docs/robustness.md
    packed = np.array(flat, dtype=np.int64).reshape(height, width)
    x = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=-1).astype(np.uint8)
    return np.clip(gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255


def _plasma_fractal(mapsize: int = 256, wibbledecay: float = 3) -> np.ndarray:
    """Diamond-square height map in [0, 1] (Hendrycks' code; np.float_ -> np.float64)."""
    assert mapsize & (mapsize - 1) == 0, "mapsize must be a power of two"
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        return array / 4 + wibble * np.random.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        # squares: the centre of each square is the mean of its corners plus noise
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)
        # diamonds: edge midpoints are the mean of their four neighbours plus noise
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        # (kept as two partial sums: float addition order must match the reference bit for bit)
        ltsum = (drgrid + np.roll(drgrid, 1, axis=0)) + (ulgrid + np.roll(ulgrid, -1, axis=1))
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = (drgrid + np.roll(drgrid, 1, axis=1)) + (ulgrid + np.roll(ulgrid, -1, axis=0))
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def _fog(x: Image.Image, severity: int = 1) -> np.ndarray:
    strength, decay = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    x = np.array(x) / 255.0
    height, width = x.shape[:2]
    max_val = x.max()
    map_size = 1 << (max(x.shape) - 1).bit_length()  # next power of two, as the package does
    x += strength * _plasma_fractal(map_size, decay)[:height, :width][..., np.newaxis]
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


def _impulse_noise(x: Image.Image, severity: int = 1) -> np.ndarray:
    from skimage.util import random_noise
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    rng = np.random.default_rng(np.random.randint(0, 2**32, dtype=np.uint64))  # tie to global seed
    x = random_noise(np.array(x) / 255.0, mode="s&p", amount=amount, rng=rng)
    return np.clip(x, 0, 1) * 255


_OWN: dict[str, Callable] = {"glass_blur": _glass_blur, "fog": _fog, "impulse_noise": _impulse_noise}


def _function(name: str) -> Callable:
    return _OWN.get(name) or getattr(_package(), name)


# ------------------------------------------------------------------------------- public API

def _check(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")


@contextlib.contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Return `image` (uint8, HW, HW1 or HW3) with corruption `name` at `severity` (1..5) applied.

    Same shape and dtype as the input; a pure function of (image, name, severity, seed).
    """
    _check(name, severity)
    _check_seed(seed)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        raise ValueError(f"image must be HW, HWx1 or HWx3, got shape {image.shape}")
    gray = image.ndim == 2 or image.shape[2] == 1
    rgb = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2) if gray else image
    height, width = rgb.shape[:2]
    min_side = _MIN_SIDE_FOR.get(name, _MIN_SIDE)
    k = math.ceil(min_side / min(height, width)) if min(height, width) < min_side else 1
    if k > 1:
        rgb = np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)
    with _seeded_global_rng(int(seed)):
        out = np.asarray(_function(name)(Image.fromarray(np.ascontiguousarray(rgb)), severity))
    out = np.uint8(np.clip(out, 0, 255))  # truncation, like the reference implementations
    if k > 1:  # block-centre sub-sampling: exact inverse of the replication above
        out = out[k // 2::k, k // 2::k][:height, :width]
    if gray:
        out = out[..., 0] if name in _PER_CHANNEL_NOISE else np.rint(out @ _LUMA).astype(np.uint8)
        out = np.ascontiguousarray(out).reshape(image.shape)
    return out


def derive_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed that depends only on `seed` and `parts` (e.g. name, severity, image index):
    the package's one seed hash (`data.loaders.seed_for`, stable across platforms and processes),
    cut to the 32 bits numpy's legacy global seeding takes."""
    from ..data.loaders import seed_for
    return seed_for(seed, *parts) & 0xFFFFFFFF


def array_digest(*arrays: np.ndarray, prefix: str = "") -> str:
    """sha256 of arrays' shapes, dtypes and bytes (the identity of an evaluation set or its cache)."""
    h = hashlib.sha256(prefix.encode())
    for a in arrays:
        h.update(f"|{a.shape}|{a.dtype}|".encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


def _cache_path(cache_dir: Path, digest: str, name: str, severity: int, seed: int) -> Path:
    key = hashlib.sha256(f"{digest}|{name}|{severity}|{seed}".encode()).hexdigest()[:24]
    return cache_dir / f"{name}-s{severity}-{key}.npy"


def _load_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # unreadable (e.g. truncated by a crash outside our atomic write): recompute
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    # Readers never see a half-written file; concurrent writers of the same key just replace each
    # other's identical result.
    from ..artifacts import atomic_write
    with atomic_write(path) as f:
        np.save(f, arr)


def corrupt_dataset(
    images: np.ndarray,
    names: Iterable[str] | str,
    severities: Iterable[int] | int,
    seed: int,
    cache_dir: str | os.PathLike | None = None,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    progress: bool = False,
) -> dict[tuple[str, int], np.ndarray]:
    """Corrupt every image (NHWC or NHW uint8) for each (name, severity).

    Image i gets seed `derive_seed(seed, name, severity, indices[i])`; `indices` defaults to
    0..N-1 and lets a subset reuse the seeds its images have in the full set. With `cache_dir`,
    each (name, severity) array is stored as .npy keyed by a hash of the images, indices and
    parameters, and loaded instead of recomputed next time.
    """
    from tqdm.auto import tqdm

    names = (names,) if isinstance(names, str) else tuple(names)
    severities = (severities,) if isinstance(severities, (int, np.integer)) else tuple(severities)
    for name in names:
        for severity in severities:
            _check(name, severity)
    _check_seed(seed)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"images must be a uint8 NHWC or NHW array, got {images.dtype} {images.shape}")
    indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    if indices.shape != (len(images),):
        raise ValueError(f"indices must have shape ({len(images)},), got {indices.shape}")

    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        digest = array_digest(images, np.asarray(indices, dtype=np.int64), prefix=str(_CACHE_VERSION))

    results: dict[tuple[str, int], np.ndarray] = {}
    for name in names:
        for severity in severities:
            path = _cache_path(cache, digest, name, int(severity), int(seed)) if cache else None
            out = _load_cached(path, images.shape) if path else None
            if out is None:
                out = np.empty_like(images)
                for i in tqdm(range(len(images)), desc=f"{name} s{severity}", disable=not progress, leave=False):
                    image_seed = derive_seed(seed, name, int(severity), int(indices[i]))
                    out[i] = corrupt(images[i], name, int(severity), image_seed)
                if path:
                    _save_atomic(path, out)
            results[(name, int(severity))] = out
    return results
