"""Streaming source for large unlabeled pools: WebDataset-style tar shards (`kind: tar`).

`root` is a directory of `*.tar` shards, one shard file, a glob (`pool/*.tar`) or a brace pattern
(`pool/pool-{000..099}.tar`). A sample is the group of members that share a key, with the
WebDataset rule (key = member path up to the first dot of its file name, so `a/b.seg.png` has key
`a/b`): one image member (`.jpg`, `.png`, ...) and an optional `.cls` member holding an int label.
Sample ids are `<shard>/<key>`, where `<shard>` is the shard's path relative to the shards'
common folder without `.tar`; they stay the same however the pool is read, split or resumed.
An optional `classes.txt` (one class name per line) beside the shards names the label values.
A pool listed file by file is a manifest (`manifest.py`).

Why our own tar index rather than the `webdataset` library or `tarfile`: the pipeline needs stable
row numbers and ids (the same label shards on every rank and rerun), random access to the selected
samples, and memory that holds no images (~20 bytes per sample plus its id). So each shard's
512-byte headers are scanned once (ustar/GNU/pax; ~4 us per member vs ~27 us for `tarfile`) and
members are read with `os.pread`. Compressed shards are refused. Details: docs/scaling.md.
"""
from __future__ import annotations

import io
import logging
import os
import re
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .formats import IMAGE_EXTENSIONS
from .decode import BadImage, open_image
from .sources import Source, register_source

__all__ = ["TarSource", "expand_braces", "list_shards", "scan_tar", "read_tar", "IMAGE_EXTS"]

log = logging.getLogger("noisystudent")

# Image member extensions in order of preference when a sample has several.
IMAGE_EXTS = tuple(e[1:] for e in IMAGE_EXTENSIONS)      # tar members' extensions (without the dot)
LABEL_EXTS = ("cls",)
_MAX_OPEN = 64          # open shard descriptors per process (least recently used are closed)


# ------------------------------------------------------------------------------------------------
# shard lists

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..003}.tar` -> a-000.tar .. a-003.tar (zero padding kept), `{x,y}` -> x, y; several
    groups expand left to right (the `braceexpand` convention WebDataset uses)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.lstrip("-").startswith("0") and len(a) > 1 else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        items = [str(v).zfill(width) for v in range(lo, hi + step, step)]
    else:
        items = body.split(",")
    return [x for item in items for x in expand_braces(head + item + tail)]


def list_shards(root: str) -> list[Path]:
    """The shard files `root` names (directory, file, glob or brace pattern), in a stable order."""
    if not root:
        raise UserError("tar source: 'root' is empty (a folder of .tar shards or a pattern like "
                        "pool/pool-{000..099}.tar)")
    if "{" in root:
        paths = [Path(p) for p in expand_braces(root)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"tar source: {len(missing)} of {len(paths)} shards named by '{root}' do not "
                            f"exist (e.g. {missing[0]})")
    elif any(c in root for c in "*?["):
        import glob
        paths = [Path(p) for p in sorted(glob.glob(root))]
    else:
        p = Path(root)
        if p.is_dir():
            paths = sorted((q for q in p.iterdir() if q.is_file() and q.name.endswith(".tar")),
                           key=lambda q: q.name)
            if not paths:
                compressed = sorted(q.name for q in p.iterdir() if q.name.endswith((".tar.gz", ".tgz")))
                hint = (f" (found compressed {compressed[0]}: decompress shards with gunzip, random "
                        "access needs plain .tar)") if compressed else ""
                raise UserError(f"tar source: no .tar shards in {p}{hint}")
        elif p.is_file():
            paths = [p]
        else:
            raise UserError(f"tar source: {p} is neither a folder of .tar shards nor a shard file")
    if not paths:
        raise UserError(f"tar source: no shards match '{root}'")
    for p in paths:
        if p.name.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst")):
            raise UserError(f"tar source: {p} is compressed; random access needs plain .tar shards "
                            "(decompress them, e.g. gunzip)")
    return paths


def _shard_names(paths: list[Path]) -> list[str]:
    """Shard part of the ids: path relative to the shards' common folder, minus `.tar`."""
    parents = [str(p.resolve().parent) for p in paths]
    common = Path(os.path.commonpath(parents))
    names = []
    for p in paths:
        rel = p.resolve().relative_to(common).as_posix()
        names.append(rel[:-4] if rel.endswith(".tar") else rel)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"tar source: shard '{dup}' is listed twice")
    return names


# ------------------------------------------------------------------------------------------------
# header scanner

def _octal(field_: bytes) -> int:
    if field_[:1] and field_[0] & 0x80:      # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field_[1:], "big")
    s = field_.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def _pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        rec = data[sp + 1:pos + length - 1]          # drop trailing newline
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _TarError(Exception):
    pass


def scan_tar(path: str | Path):
    """Yield (name, data offset, size) of each regular member, reading headers only.

    Raises _TarError on a corrupt header (bad checksum, garbage) — members before it were yielded.
    A member whose data runs past the end of the file is still yielded; reading it fails later.
    """
    with open(path, "rb", buffering=0) as f:
        pos, long_name, pax = 0, None, {}
        while True:
            f.seek(pos)
            h = f.read(512)
            if len(h) == 0:
                return
            if len(h) < 512:
                raise _TarError(f"truncated header at byte {pos}")
            if h.count(0) == 512:                    # end-of-archive marker
                return
            try:
                chk = _octal(h[148:156])
            except ValueError:
                raise _TarError(f"corrupt header at byte {pos}") from None
            if chk != sum(h[:148]) + 256 + sum(h[156:]):
                raise _TarError(f"header checksum mismatch at byte {pos}")
            try:
                size = _octal(h[124:136])
            except ValueError:
                raise _TarError(f"corrupt size field at byte {pos}") from None
            typ = h[156:157]
            data_at = pos + 512
            pos = data_at + ((size + 511) & ~511)
            if typ in (b"L", b"x", b"g"):
                f.seek(data_at)
                data = f.read(size)
                if typ == b"L":
                    long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif typ == b"x":
                    pax = _pax(data)
                continue
            if typ not in (b"0", b"\0", b"7"):       # dirs, links, devices, sparse files...
                if typ not in (b"5", b"K"):
                    log.warning("%s: skipping member of unsupported type %r at byte %d", path, typ, pos)
                long_name, pax = None, {}
                continue
            if "size" in pax:
                size = int(pax["size"])
                pos = data_at + ((size + 511) & ~511)
            name = pax.get("path") or long_name
            if name is None:
                name = h[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if h[257:262] == b"ustar":
                    prefix = h[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    if prefix:
                        name = f"{prefix}/{name}"
            long_name, pax = None, {}
            yield name, data_at, size


def _split_key(name: str) -> tuple[str, str] | None:
    """WebDataset's base_plus_ext: key = path up to the first dot of the file name; ext lowercased."""
    d, _, base = name.rpartition("/")
    if "." not in base:
        return None
    stem, _, ext = base.partition(".")
    if not stem:                                     # dotfiles like ._foo (macOS metadata)
        return None
    return (f"{d}/{stem}" if d else stem), ext.lower()


@dataclass
class _ShardIndex:
    keys: list
    offsets: array
    sizes: array
    labels: array
    no_image: int = 0


def _index_shard(path: Path, read_labels: bool = True) -> _ShardIndex:
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        for name, off, size in scan_tar(path):
            ks = _split_key(name[2:] if name.startswith("./") else name)
            if ks is None:
                continue
            groups.setdefault(ks[0], {})[ks[1]] = (off, size)
    except _TarError as e:
        log.warning("%s: %s; using the %d samples before it", path, e, len(groups))
    keys, offsets, sizes, labels = [], array("q"), array("q"), array("q")
    no_image = 0
    file_size = path.stat().st_size
    with open(path, "rb", buffering=0) as f:
        for key, members in groups.items():
            img = next((members[e] for e in IMAGE_EXTS if e in members), None)
            if img is None:
                no_image += 1
                continue
            label = -1
            if read_labels:
                cls = next((members[e] for e in LABEL_EXTS if e in members), None)
                if cls is not None and cls[0] + cls[1] <= file_size:
                    f.seek(cls[0])
                    text = f.read(cls[1]).decode("utf-8", "replace").strip()
                    try:
                        label = int(text)
                    except ValueError:
                        raise UserError(f"{path}: member {key}.cls holds {text[:20]!r}, not an integer "
                                        "class index") from None
            keys.append(key)
            offsets.append(img[0])
            sizes.append(img[1])
            labels.append(label)
    return _ShardIndex(keys, offsets, sizes, labels, no_image)


# ------------------------------------------------------------------------------------------------
# the source

class _Handles:
    """Per-process LRU of read-only descriptors; dropped on pickling and reopened after fork."""

    def __init__(self):
        self.pid, self.fds = os.getpid(), OrderedDict()

    def get(self, path: str) -> int:
        if self.pid != os.getpid():                  # forked (DataLoader worker): own descriptors
            self.pid, self.fds = os.getpid(), OrderedDict()
        fd = self.fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self.fds[path] = fd
            if len(self.fds) > _MAX_OPEN:
                _, old = self.fds.popitem(last=False)
                os.close(old)
        else:
            self.fds.move_to_end(path)
        return fd

    def close(self):
        if self.pid == os.getpid():
            for fd in self.fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds = OrderedDict()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __reduce__(self):                            # never pickle descriptors
        return (_Handles, ())


@dataclass(eq=False)
class TarSource(Source):
    """Samples of WebDataset-style tar shards, read by offset (see the module docstring)."""
    root: str = ""
    shard_paths: list = field(default_factory=list)     # str per shard
    shard: np.ndarray | None = None                     # int32 per sample: index into shard_paths
    offset: np.ndarray | None = None                    # int64 per sample: image data offset
    size: np.ndarray | None = None                      # int64 per sample: image data size

    def __post_init__(self):
        self._handles = _Handles()

    def read_bytes(self, i: int) -> bytes:
        s, off, n = int(self.shard[i]), int(self.offset[i]), int(self.size[i])
        path = self.shard_paths[s]
        fd = self._handles.get(path)
        if hasattr(os, "pread"):
            data = os.pread(fd, n, off)
        else:  # pragma: no cover - Windows
            os.lseek(fd, off, os.SEEK_SET)
            data = os.read(fd, n)
        if len(data) != n:
            raise BadImage(f"{path}:{self.ids[i]}: member truncated ({len(data)} of {n} bytes)")
        return data

    def _load(self, i: int) -> np.ndarray:
        return open_image(io.BytesIO(self.read_bytes(i)), self.in_chans, max_side=self.max_side,
                          name=f"{self.shard_paths[int(self.shard[i])]}:{self.ids[i]}")

    def close(self) -> None:
        self._handles.close()

    def _hash_rows(self, h, rows: np.ndarray | None, content=None) -> None:
        # each shard's size + mtime (or, given `content`, its bytes' digest), and where every row's
        # image sits in it
        if content is not None:
            h.update(content.digests(self.shard_paths).tobytes())
        else:
            for p in self.shard_paths:
                try:
                    st = os.stat(p)
                    h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\0".encode())
                except OSError:
                    h.update(f"{p}:-\0".encode())
        sel = slice(None) if rows is None else np.asarray(rows, dtype=np.int64)
        for a in (self.shard, self.offset, self.size):
            h.update(np.ascontiguousarray(a[sel]).tobytes())


@register_source("tar")
def read_tar(root: str, split: str, in_chans: int) -> Source:
    paths = list_shards(root)
    names = _shard_names(paths)
    ids, shard, offsets, sizes, labels = [], array("i"), array("q"), array("q"), array("q")
    no_image = 0
    for s, (p, name) in enumerate(zip(paths, names)):
        idx = _index_shard(p)
        ids.extend(f"{name}/{k}" for k in idx.keys)
        shard.extend([s] * len(idx.keys))
        offsets.extend(idx.offsets)
        sizes.extend(idx.sizes)
        labels.extend(idx.labels)
        no_image += idx.no_image
    if no_image:
        log.warning("tar source %s: %d samples have no image member (%s) and are left out",
                    root, no_image, ", ".join(IMAGE_EXTS))
    if not ids:
        raise UserError(f"tar source {root}: no samples with an image member in {len(paths)} shard(s)")
    labels_np = np.frombuffer(labels, dtype=np.int64).copy()
    classes = None
    known = labels_np[labels_np >= 0]
    if known.size:
        ctxt = Path(os.path.commonpath([str(p.resolve().parent) for p in paths])) / "classes.txt"
        if ctxt.is_file():
            classes = [ln.strip() for ln in ctxt.read_text().splitlines() if ln.strip()]
            if int(known.max()) >= len(classes):
                raise UserError(f"{ctxt}: lists {len(classes)} classes but a .cls member holds "
                                f"{int(known.max())}")
        else:
            classes = [str(c) for c in range(int(known.max()) + 1)]
    name = Path(str(root).split("{", 1)[0].rstrip("/")).name or "tar"
    return TarSource(name, ids, labels_np, classes, in_chans, root=str(root),
                     shard_paths=[str(p) for p in paths],
                     shard=np.frombuffer(shard, dtype=np.int32).copy(),
                     offset=np.frombuffer(offsets, dtype=np.int64).copy(),
                     size=np.frombuffer(sizes, dtype=np.int64).copy())
