"""Image sources: each is an indexed list of (image, label or -1, stable sample id).

A source knows its `ids` (relative path for files, `name/index` for arrays), its `labels` (-1 when
unknown) and its `classes` (sorted names, or None for an unlabeled folder). Images are decoded on
demand by `load(i)`; `cache()` decodes everything once into uint8 arrays so that training epochs on
small images are bound by compute, not by JPEG decoding on 2 cores.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import UserError
from .decode import BadImage, open_image, shrink
from .formats import BROKEN_LINK, IMAGE_EXTENSIONS, unreadable_photos
from .memory import CacheTooLarge

if TYPE_CHECKING:
    from .contenthash import ContentHashes

__all__ = ["Source", "max_side_for", "ArraySource", "FileSource", "register_source", "list_sources", "create_source",
           "draw_per_class"]

log = logging.getLogger("noisystudent")


def max_side_for(*sizes: int) -> int:
    """How large images are kept (`Source.max_side`): 4x the largest size a stage resizes them to
    (at least 4 x 128), so ordinary data is untouched and one huge photo cannot fill the memory. A
    run and the commands on its model files (`predict`, `evaluate`) use the same, so they see the
    same pixels."""
    return 4 * max(128, *(int(s or 0) for s in sizes))


# a projection from fewer decoded images than this would be noise (one folder of large photos first)
_PROJECT_AFTER = 256


@dataclass
class Source:
    """Base class. Subclasses fill `ids`, `labels`, `classes` and implement `_load`."""
    name: str
    ids: list[str]
    labels: np.ndarray
    classes: list[str] | None
    in_chans: int = 3
    skipped: list[str] = field(default_factory=list)   # ids dropped as undecodable by cache()
    max_side: int | None = None         # larger images are shrunk (aspect kept) as they are loaded

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> np.ndarray:
        a = self._load(i)
        if self.max_side and max(a.shape[0], a.shape[1]) > self.max_side:
            a = shrink(a, self.max_side)
        return a

    def _load(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> "Source":
        indices = np.asarray(indices, dtype=np.int64)
        return _SubsetSource(self.name, [self.ids[i] for i in indices], self.labels[indices],
                             self.classes, self.in_chans, list(self.skipped), self.max_side, parent=self,
                             index=indices)

    def fingerprint(self, content: "ContentHashes | None" = None) -> str:
        """A short hash of what the source holds: its ids, labels and classes, and each row's contents
        as cheaply as they can be told apart (file size + modification time for files, the bytes for
        arrays in memory), or, given `content` (data.fingerprint: content), a digest of every file's
        bytes. Stages that read a source put this into their fingerprint, so adding, removing or
        replacing an image redoes exactly the stages that read it."""
        import hashlib
        h = hashlib.sha256()
        head = (type(self).__name__, self.classes, len(self.ids))     # stat: as before content existed
        h.update(repr(head + (("content",) if content is not None else ())).encode())
        h.update("\0".join(self.ids).encode("utf-8", "surrogateescape"))
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        self._hash_rows(h, None, content)
        return h.hexdigest()[:16]

    def _hash_rows(self, h, rows: np.ndarray | None, content=None) -> None:
        """Feed the contents of `rows` (None = all) into `h`. Subclasses know their storage."""
        for i in (range(len(self)) if rows is None else rows):      # generic, slow: decode everything
            h.update(np.ascontiguousarray(self.load(int(i))).tobytes())

    def cache(self, on_bad: str = "fail", progress: Callable | None = None,
              max_bytes: int | None = None, workers: int = 0) -> "ArraySource":
        """Decode every image once, in `workers` DataLoader processes when > 0 (`loaders.decode_rows`:
        in row order, so the result does not depend on it). on_bad='skip' drops undecodable files
        (their ids are kept in `skipped`); 'fail' raises a one-line UserError naming the file. With
        `max_bytes`, stops with CacheTooLarge as soon as the decoded images exceed it, or are
        projected to (from the first 256 images on), so a set that does not fit is given up early,
        not when memory runs out."""
        from .loaders import decode_rows         # loaders imports this module
        images, keep, skipped = [], [], list(self.skipped)
        rows = decode_rows(self, workers)
        held = 0
        for i, img in (progress(rows) if progress else rows):
            if isinstance(img, BadImage):
                if on_bad == "fail":
                    raise UserError(str(img)) from None
                skipped.append(self.ids[i])
                continue
            images.append(img)
            keep.append(i)
            if max_bytes is not None:
                held += images[-1].nbytes
                projected = held * len(self) // (i + 1)
                if held > max_bytes or (i + 1 >= _PROJECT_AFTER and projected > max_bytes):
                    raise CacheTooLarge(max(projected, held), i + 1, len(self), max_bytes)
        if not keep and len(self):
            raise UserError(f"source '{self.name}': no decodable image out of {len(self)}")
        same = len({im.shape for im in images}) <= 1 and images
        stack = np.stack(images) if same else images
        return ArraySource(self.name, [self.ids[i] for i in keep], self.labels[np.asarray(keep, dtype=np.int64)],
                           self.classes, self.in_chans, skipped, images=stack)


@dataclass
class ArraySource(Source):
    """Images already in memory: uint8 (N,H,W,C) array or a list of HWC arrays."""
    images: np.ndarray | list | None = None

    def _load(self, i: int) -> np.ndarray:
        return self.images[i]

    def _hash_rows(self, h, rows: np.ndarray | None, content=None) -> None:
        if isinstance(self.images, np.ndarray):     # the pixels themselves: `content` adds nothing
            a = self.images if rows is None else self.images[rows]
            h.update(repr(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            for i in (range(len(self)) if rows is None else rows):
                im = np.ascontiguousarray(self.images[int(i)])
                h.update(repr(im.shape).encode())
                h.update(im.tobytes())

    def subset(self, indices: Sequence[int]) -> "ArraySource":
        # Slicing the array keeps the fast path (vectorised eval batches) available to subsets.
        indices = np.asarray(indices, dtype=np.int64)
        images = (self.images[indices] if isinstance(self.images, np.ndarray)
                  else [self.images[i] for i in indices])
        return ArraySource(self.name, [self.ids[i] for i in indices], self.labels[indices],
                           self.classes, self.in_chans, list(self.skipped), images=images)


@dataclass
class FileSource(Source):
    """Image files under `root`; `ids` are their relative POSIX paths."""
    root: Path = Path(".")

    def _load(self, i: int) -> np.ndarray:
        return open_image(self.root / self.ids[i], self.in_chans, name=str(self.root / self.ids[i]),
                          max_side=self.max_side)

    def _hash_rows(self, h, rows: np.ndarray | None, content=None) -> None:
        root, join = str(self.root), os.path.join
        paths = [join(root, self.ids[int(i)]) for i in (range(len(self)) if rows is None else rows)]
        if content is not None:
            h.update(content.digests(paths).tobytes())
            return
        # size + mtime of every file: one stat each, no reads (see docs/reliability.md for the cost)
        out, stat_ = [], os.stat
        for p in paths:
            try:
                st = stat_(p)
                out.append(f"{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                out.append("-")
        h.update("\0".join(out).encode())


@dataclass
class _SubsetSource(Source):
    parent: Source | None = None
    index: np.ndarray | None = None

    def _load(self, i: int) -> np.ndarray:
        return self.parent.load(int(self.index[i]))

    def _hash_rows(self, h, rows: np.ndarray | None, content=None) -> None:
        self.parent._hash_rows(h, self.index if rows is None else self.index[np.asarray(rows, dtype=np.int64)],
                               content)


# ------------------------------------------------------------------------------------------------
# readers, registered by kind (timm-style registry: `create_source(cfg)` looks the kind up)

_READERS: dict[str, Callable] = {}


def list_sources() -> list[str]:
    """Registered source kinds (the built-in ones and any added with `register_source`)."""
    return sorted(_READERS)


def register_source(kind: str):
    def deco(fn):
        _READERS[kind] = fn
        return fn
    return deco


def _list_images(root: Path, ignored: Counter | None = None) -> list[str]:
    """Image files under `root` by extension (`formats.IMAGE_EXTENSIONS`), as sorted relative POSIX
    paths. Hidden files and folders are not data: macOS `._x.png` resource forks,
    `.ipynb_checkpoints/`, `.DS_Store`; other files are left out too, counted by extension in
    `ignored` (for `formats.unreadable_photos`). Like `Path.rglob`, links to folders are not followed
    (no cycles).

    os.scandir, not rglob: the entry's type comes with the listing (no stat per file), which makes
    listing a 1M-file pool several times faster (benchmarks/fingerprint.py, docs/reliability.md)."""
    out: list[str] = []
    todo = [(str(root), "")]
    while todo:
        folder, prefix = todo.pop()
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    todo.append((e.path, f"{prefix}{e.name}/"))
                    continue
                ext = os.path.splitext(e.name)[1].lower()
                if ext not in IMAGE_EXTENSIONS:
                    if ignored is not None:
                        ignored[ext] += 1
                elif e.is_file():
                    out.append(prefix + e.name)
                elif ignored is not None and e.is_symlink():      # a link to a missing file
                    ignored[BROKEN_LINK] += 1
    out.sort()
    return out


def _say_unreadable(root: Path, ignored: Counter) -> None:
    """Log the warning for photos left out of `root` (if any)."""
    note = unreadable_photos(root, ignored)
    if note:
        log.warning("%s", note)


def _no_images(root: Path, what: str, ignored: Counter, hint: str = "") -> UserError:
    """The one-line error for a folder without images, naming any photos it left out and why."""
    note = unreadable_photos(root, ignored)
    return UserError(f"{root}: {what} ({', '.join(IMAGE_EXTENSIONS)})" + "".join(f"; {t}" for t in (hint, note) if t))


@register_source("imagefolder")
def read_imagefolder(root: str, split: str, in_chans: int) -> Source:
    root_p = Path(root)
    if not root_p.is_dir():
        raise UserError(f"data root not found: {root_p} (expected <root>/<class>/<image files>)")
    classes = sorted(d.name for d in root_p.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{root_p}: no class folders found (expected <root>/<class>/<image files>)")
    ids, labels = [], []
    ignored: Counter = Counter()
    for c, name in enumerate(classes):
        here: Counter = Counter()
        files = _list_images(root_p / name, here)
        if not files:
            raise _no_images(root_p / name, "class folder has no image files", here, "remove it or add images")
        ignored.update(here)
        ids += [f"{name}/{f}" for f in files]
        labels += [c] * len(files)
    _say_unreadable(root_p, ignored)
    return FileSource(root_p.name, ids, np.asarray(labels, dtype=np.int64), classes, in_chans, root=root_p)


@register_source("folder")
def read_folder(root: str, split: str, in_chans: int) -> Source:
    root_p = Path(root)
    if not root_p.is_dir():
        raise UserError(f"unlabeled folder not found: {root_p}")
    ignored: Counter = Counter()
    ids = _list_images(root_p, ignored)
    if not ids:
        raise _no_images(root_p, "no image files found", ignored)
    _say_unreadable(root_p, ignored)
    return FileSource(root_p.name, ids, np.full(len(ids), -1, dtype=np.int64), None, in_chans, root=root_p)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number (not an unsigned-byte IDX file)")
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if arr.size != int(np.prod(shape)):
            raise ValueError(f"expected {int(np.prod(shape))} values, found {arr.size} (truncated?)")
        return arr.reshape(shape).copy()   # writable: torch.from_numpy warns on read-only buffers
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise UserError(f"{path}: not a valid IDX file ({e})") from None


def _find(root: Path, stem: str) -> Path:
    for cand in (root / stem, root / f"{stem}.gz"):
        if cand.is_file():
            return cand
    raise UserError(f"IDX file not found: {root / stem}[.gz]")


@register_source("idx")
def read_idx(root: str, split: str, in_chans: int) -> Source:
    """MNIST-family IDX files: <root>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    if split not in ("train", "test"):
        raise UserError(f"idx split '{split}' not allowed; choose 'train' or 'test'")
    prefix = "train" if split == "train" else "t10k"
    root_p = Path(root)
    images = _read_idx(_find(root_p, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(root_p, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise UserError(f"{root_p}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    images = images[..., None]
    if in_chans == 3:
        images = np.repeat(images, 3, axis=-1)
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    ids = [f"{prefix}/{i}" for i in range(len(images))]
    return ArraySource(root_p.name, ids, labels, classes, in_chans, images=np.ascontiguousarray(images))


@register_source("digits")
def read_digits(root: str, split: str, in_chans: int) -> Source:
    """scikit-learn's bundled 8x8 digits (1,797 images): the offline default. A fixed split (seed 0,
    the dataset's property, not the run's) holds out 297 images as `test`."""
    from sklearn.datasets import load_digits
    if split not in ("train", "test"):
        raise UserError(f"digits split '{split}' not allowed; choose 'train' or 'test'")
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    idx = np.sort(order[:297] if split == "test" else order[297:])
    if in_chans == 3:
        images = np.repeat(images, 3, axis=-1)
    ids = [f"digits/{i}" for i in idx]
    return ArraySource("digits", ids, d.target[idx].astype(np.int64), [str(c) for c in range(10)],
                       in_chans, images=np.ascontiguousarray(images[idx]))


def draw_per_class(labels: np.ndarray, per_class: int, seed: int, source: str = "") -> np.ndarray:
    """Indices of `per_class` images of each class, reproducible for `seed`, sorted ascending."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise UserError(f"{source}: class {c} has {len(members)} images, fewer than per_class={per_class}")
        picks.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def create_source(cfg, in_chans: int, key: str = "data", exclude_ids: set | None = None) -> Source:
    """Build the source described by a `SourceConfig`: read, drop `exclude_ids` (the images of the
    sections named in `exclude`), draw per_class (or keep the rest), keep a fraction."""
    reader = _READERS.get(cfg.kind)
    if reader is None:
        raise UserError(f"config key '{key}.kind': unknown source '{cfg.kind}'; choose one of "
                        + ", ".join(sorted(_READERS)))
    seed = cfg.seed or 0
    src = reader(cfg.root, cfg.split, in_chans)
    if exclude_ids:
        src = src.subset([i for i, sid in enumerate(src.ids) if sid not in exclude_ids])
    if cfg.per_class is not None:
        if src.classes is None:
            raise UserError(f"config key '{key}.per_class': source '{cfg.kind}' has no labels to draw from")
        drawn = draw_per_class(src.labels, cfg.per_class, seed, source=key)
        if cfg.subset == "rest":
            drawn = np.setdiff1d(np.arange(len(src)), drawn)
        src = src.subset(drawn)
    if cfg.fraction < 1.0:
        keep = np.random.default_rng(seed + 1).permutation(len(src))[: max(1, round(cfg.fraction * len(src)))]
        src = src.subset(np.sort(keep))
    if len(src) == 0:
        raise UserError(f"config key '{key}': the source selects no images")
    return src
