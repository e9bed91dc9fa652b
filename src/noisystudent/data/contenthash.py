"""Content fingerprints (`data.fingerprint: content`): a digest of every file's bytes, cached in the
run directory so that a rerun reads only the files that changed.

Why opt-in: the default (`stat`) fingerprint takes each file's size and modification time, one stat
per file, and the tools that copy or restore data keep both (rsync -a, cp -p, tar), so moving a
dataset redoes nothing. But a program can write new bytes in place and set the old mtime back
(`os.utime`, `touch -r`); only reading the bytes sees that.

Why the cache can be trusted: a stored digest is reused only while the file's size, mtime, ctime and
inode all still match. No program sets ctime (every write, rename or utime moves it to "now"), so a
rewritten and back-dated file is read again. ctime ticks coarsely (milliseconds), so a change in the
same tick as the read would look like no change: digests of files changed less than `racy_ns` before
they were read are used but not stored (git's "racily clean" rule).

The cache holds no paths: rows are keyed by a 64-bit hash of the path, sorted, and looked up with one
vectorised search — 56 bytes a file on disk and in memory, so 1M files cost ~56 MB, not a dict of
a million strings. Two paths whose keys collide could share a row only with the same inode too, i.e.
as hard links to one file (same bytes). Rows of files that are gone stay until the file is deleted (any time; it is only
a cache).
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat as stat_mod
import time
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["ContentHashes", "RACY_NS", "DIGEST_BYTES", "file_digest", "bytes_digest"]

log = logging.getLogger("noisystudent")

RACY_NS = 2_000_000_000     # 2 s: above any ctime tick (and FAT's 2 s mtime)
DIGEST_BYTES = 16           # sha256, truncated: 128 bits tell files apart
# status byte before each digest: the file was read, or why not (a FIFO is never opened: it would block)
OK, MISSING, NOT_REGULAR, UNREADABLE = 0, 1, 2, 3
INO_MASK = (1 << 63) - 1    # some filesystems number inodes up to 2**64; the table is int64


def _path_keys(paths: Sequence[str]) -> np.ndarray:
    b2 = hashlib.blake2b
    blob = b"".join(b2(os.fsencode(p), digest_size=8).digest() for p in paths)
    return np.frombuffer(blob, dtype="<u8").astype(np.uint64)


def bytes_digest(data: bytes) -> bytes:
    """`file_digest` of bytes in memory (a tar member's): equal bytes, equal digests, wherever they are."""
    return hashlib.sha256(data).digest()[:DIGEST_BYTES]


def file_digest(path: str, size: int) -> bytes:
    """A digest (DIGEST_BYTES of sha256) of the bytes of the file at `path`, of stat size `size`."""
    # os-level reads: an image of up to 1 MB is one read (asking for a byte more than its stat size
    # sees the end in the same call); a file object costs more than the read itself
    h = hashlib.sha256()
    want, got = min(size + 1, 1 << 20), 0
    # O_NONBLOCK: a FIFO swapped in after the stat must not block the open (no effect on files)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        while chunk := os.read(fd, want):
            h.update(chunk)
            got += len(chunk)
            if len(chunk) < want and got >= size:
                break
    finally:
        os.close(fd)
    return h.digest()[:DIGEST_BYTES]


class ContentHashes:
    """Digests of files, reusing those stored in `path` (an .npz; None = no cache). `digests()` reads
    only files whose stat changed; `flush()` stores what was read. `read_files` counts the reads."""

    def __init__(self, path: str | Path | None = None, racy_ns: int | None = None):
        self.path = Path(path) if path else None
        self.racy_ns = RACY_NS if racy_ns is None else racy_ns     # read now: tests may lower it
        self.read_files = 0
        self._keys: np.ndarray | None = None        # sorted uint64 path keys
        self._meta = self._digest = None            # (m, 4) int64 size/mtime/ctime/ino; (m, 16) uint8
        self._new: list[tuple[int, tuple, bytes]] = []

    def _load(self) -> None:
        self._keys, self._meta = np.zeros(0, np.uint64), np.zeros((0, 4), np.int64)
        self._digest = np.zeros((0, DIGEST_BYTES), np.uint8)
        if self.path is None or not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as z:
                keys, meta, digest = z["keys"], z["meta"], z["digest"]
            m = len(keys)
            if keys.dtype != np.uint64 or meta.shape != (m, 4) or digest.shape != (m, DIGEST_BYTES) \
                    or (m > 1 and not bool(np.all(keys[1:] > keys[:-1]))):
                raise ValueError("unexpected arrays")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            # only a cache: a damaged one costs a re-read, never the run
            log.warning("%s is damaged (%s); reading the data files again", self.path, str(e)[:80])
            return
        self._keys, self._meta, self._digest = keys, meta.astype(np.int64), digest.astype(np.uint8)

    def digests(self, paths: Sequence[str]) -> np.ndarray:
        """(n, 1 + DIGEST_BYTES) uint8: per path a status byte (OK, MISSING, NOT_REGULAR, UNREADABLE)
        and the sha256 of its bytes (zeros unless OK)."""
        if self._keys is None:
            self._load()
        t0 = time.time_ns()
        n = len(paths)
        rows, stat_, isreg = [], os.stat, stat_mod.S_ISREG
        for p in paths:         # plain tuples, one array at the end: a numpy row per file costs more
            try:
                st = stat_(p)
            except (OSError, ValueError):       # ValueError: a NUL in a manifest's path
                rows.append((0, 0, 0, 0, MISSING))
                continue
            rows.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino & INO_MASK,
                         OK if isreg(st.st_mode) else NOT_REGULAR))
        table = np.array(rows, dtype=np.int64).reshape(n, 5)
        meta, status = table[:, :4], table[:, 4]
        regular = status == OK
        out = np.zeros((n, 1 + DIGEST_BYTES), np.uint8)
        out[:, 0] = status
        keys = _path_keys(paths)
        hit = np.zeros(n, bool)
        if len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
            hit = regular & (self._keys[pos] == keys) & np.all(self._meta[pos] == meta, axis=1)
            out[hit, 1:] = self._digest[pos[hit]]
        for i in np.flatnonzero(regular & ~hit):
            try:
                d = file_digest(paths[i], int(meta[i, 0]))
            except (OSError, ValueError):
                out[i, 0] = UNREADABLE
                continue
            self.read_files += 1
            out[i, 1:] = np.frombuffer(d, np.uint8)
            if t0 - max(meta[i, 1], meta[i, 2]) >= self.racy_ns:
                self._new.append((int(keys[i]), tuple(meta[i]), d))
        return out

    def flush(self) -> None:
        """Store the digests read since the last flush (atomically; newer rows replace older ones)."""
        if self.path is None or not self._new:
            return
        from ..artifacts import atomic_write
        nk = np.asarray([k for k, _, _ in self._new], np.uint64)
        nm = np.asarray([m for _, m, _ in self._new], np.int64).reshape(-1, 4)
        nd = np.frombuffer(b"".join(d for _, _, d in self._new), np.uint8).reshape(-1, DIGEST_BYTES)
        keys = np.concatenate([nk[::-1], self._keys])   # np.unique keeps the first: the newest row wins
        keys, first = np.unique(keys, return_index=True)
        self._meta = np.concatenate([nm[::-1], self._meta])[first]
        self._digest = np.concatenate([nd[::-1], self._digest])[first]
        self._keys, self._new = keys, []
        with atomic_write(self.path) as f:
            np.savez(f, keys=self._keys, meta=self._meta, digest=self._digest)
