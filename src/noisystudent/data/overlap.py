"""Pool images that are copies of evaluation images (validation, test): the same file reached by two
paths (an unlabeled root over the test folder, hard or symbolic links) or a file with the same bytes
(a copy), so that the `select` stage can leave them out.

Why: the student trains on the teacher's pseudo-label of every selected pool image. If the pool holds
test images, the test score is partly a score on images the student was trained on, and a validation
image in the pool biases every choice made on val. `check_disjoint` catches this for sections of one
source (the same ids); this catches it across sources, where ids differ (`unlabeled: {kind: folder,
root: data}` beside `test: {kind: imagefolder, root: data/test}`, or test files copied into the pool).

How, and what it costs: one `stat` per file (the default stat fingerprint already pays one); bytes
are read only for pool files whose size equals an evaluation file's: their first 4 KiB, and the
whole file only where those agree too. Tar members compare the same way (their offsets in the shard
tell a member from itself); in-memory arrays (digits, idx, npz) by their pixels. Only exact copies are
found here: a re-encoded or resized copy has other bytes (`nearcopy.py` compares pixels for those, and
so also a file source with an in-memory one, which this module does not).
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .contenthash import bytes_digest, file_digest
from .sources import ArraySource, FileSource, Source, _SubsetSource
from .streaming import TarSource

__all__ = ["pool_copies", "copies_of"]

HEAD_BYTES = 4096      # enough to tell two encoded images of one size apart (entropy-coded data starts early)


@dataclass
class _Rows:
    """What the comparison needs of a source, row by row."""
    ident: list            # a hashable identity of the stored bytes ((device, inode[, offset])), or None
    size: np.ndarray       # int64 bytes; -1 = unreadable (never a copy)
    head: Callable[[int], bytes]     # row -> digest of its first HEAD_BYTES bytes
    whole: Callable[[int], bytes]    # row -> digest of all its bytes
    head_is_whole: int     # rows up to this size are told apart by `head` alone
    kind: str              # "encoded" (file or tar member bytes) or "pixels" (decoded arrays)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _file_rows(paths: list[str]) -> _Rows:
    ident, size = [], np.full(len(paths), -1, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)       # follows links: a symlink and its target are one file
        except OSError:
            ident.append(None)
            continue
        ident.append((st.st_dev, st.st_ino))
        size[i] = st.st_size

    def head(i: int) -> bytes:
        # os-level read: a file object costs more than reading a small image's head (contenthash.py)
        fd = os.open(paths[i], os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            return _digest(os.read(fd, HEAD_BYTES))
        finally:
            os.close(fd)
    return _Rows(ident, size, head, lambda i: file_digest(paths[i], int(size[i])), HEAD_BYTES, "encoded")


def _tar_rows(src: TarSource, rows: np.ndarray) -> _Rows:
    shard_id = {}
    for s, p in enumerate(src.shard_paths):
        try:
            st = os.stat(p)
            shard_id[s] = (st.st_dev, st.st_ino)
        except OSError:
            shard_id[s] = None
    ident = [(shard_id[int(src.shard[r])], int(src.offset[r])) if shard_id[int(src.shard[r])] else None
             for r in rows]
    size = np.asarray(src.size, dtype=np.int64)[rows]
    # the whole digest is a file's (`file_digest`), so a member and a file with its bytes match
    return _Rows(ident, size, lambda i: _digest(src.read_bytes(int(rows[i]))[:HEAD_BYTES]),
                 lambda i: bytes_digest(src.read_bytes(int(rows[i]))), HEAD_BYTES, "encoded")


def _array_rows(src: ArraySource, rows: np.ndarray) -> _Rows:
    def pixels(i: int) -> bytes:       # in memory, so the head is the whole image
        a = np.ascontiguousarray(src.images[int(rows[i])])
        return _digest(repr(a.shape).encode() + a.tobytes())      # the shape too: 4x8 and 8x4 share their bytes
    size = np.asarray([np.asarray(src.images[int(r)]).nbytes for r in rows], dtype=np.int64)
    return _Rows([None] * len(rows), size, pixels, pixels, np.iinfo(np.int64).max, "pixels")


def _rows_of(src: Source) -> _Rows | None:
    """The source's rows for comparison, or None for a kind this module cannot read bytes of."""
    rows = np.arange(len(src), dtype=np.int64)
    while isinstance(src, _SubsetSource):      # a subset reads its parent's rows
        rows, src = np.asarray(src.index, dtype=np.int64)[rows], src.parent
    if isinstance(src, FileSource):
        root = str(src.root)
        return _file_rows([os.path.join(root, src.ids[int(r)]) for r in rows])
    if isinstance(src, TarSource):
        return _tar_rows(src, rows)
    if isinstance(src, ArraySource) and src.images is not None:
        return _array_rows(src, rows)
    return None


def _safe(fn, i: int) -> bytes | None:
    try:
        return fn(i)
    except (OSError, ValueError):      # gone or unreadable since the stat: not a copy
        return None


def copies_of(pool: _Rows, other: _Rows) -> np.ndarray:
    """Rows of `pool` that are the same stored image as a row of `other` (see the module docstring)."""
    if pool.kind != other.kind:
        return np.zeros(0, dtype=np.int64)
    idents = {i for i in other.ident if i is not None}
    by_size: dict[int, list[int]] = defaultdict(list)
    for j, s in enumerate(other.size.tolist()):
        if s >= 0:
            by_size[s].append(j)
    heads: dict[int, dict] = {}                     # size -> {head digest: other's rows}, built on first need
    wholes: dict[int, bytes | None] = {}            # other's row -> digest of all its bytes
    found = []
    for i, s in enumerate(pool.size.tolist()):
        if pool.ident[i] is not None and pool.ident[i] in idents:
            found.append(i)
            continue
        if s < 0 or s not in by_size:
            continue
        if s not in heads:
            heads[s] = defaultdict(list)
            for j in by_size[s]:
                if (h := _safe(other.head, j)) is not None:
                    heads[s][h].append(j)
        head = _safe(pool.head, i)
        hits = heads[s].get(head) if head is not None else None
        if not hits:
            continue
        if s <= pool.head_is_whole:
            found.append(i)
            continue
        whole = _safe(pool.whole, i)
        if whole is None:
            continue
        for j in hits:
            if j not in wholes:
                wholes[j] = _safe(other.whole, j)
            if wholes[j] == whole:
                found.append(i)
                break
    return np.asarray(found, dtype=np.int64)


def pool_copies(pool: Source, others: dict[str, Source | None]) -> dict[str, list[str]]:
    """{name: ids of `pool` images that are copies of an image of `others[name]`, sorted} for each
    source given (None entries and names without copies are left out)."""
    p = _rows_of(pool)
    if p is None:
        return {}
    out = {}
    for name, src in others.items():
        o = _rows_of(src) if src is not None else None
        if o is None:
            continue
        rows = copies_of(p, o)
        if len(rows):
            out[name] = sorted(pool.ids[int(i)] for i in rows)
    return out
