"""Pool images that are near copies of evaluation images: the same photo re-encoded, resized,
recoloured, turned gray, mirrored or moved by a pixel or two, which `overlap.py` (same file, same bytes) cannot
see because the bytes differ.

Why: such pairs are common wherever images are collected twice: Barz & Denzler ("Do we train on
test data? Purging CIFAR of near-duplicates", 2020) report that 3.3% of CIFAR-10's test images have a
near copy in its training split. A student trained on the pseudo-label of a test image's copy is
partly scored on its training data.

How (ours, torch on thumbnails; ImageHash's pHash, measured beside it in the benchmark, finds
fewer CIFAR-10 pairs and few copies moved by a pixel):
1. Each image becomes a 32x32 gray thumbnail (squashed: a resized copy squashes the same way).
2. *Layout*: the thumbnail averaged to 16x16, mean removed, unit length. Its correlation finds the
   candidates: for each pool image the `CANDIDATES` evaluation images it correlates with best, kept
   when at least `LAYOUT_MIN`. Layout alone is not enough: two photos of a ship on the sea, or two
   silhouettes on white, correlate as well as copies do.
3. *Detail*: the thumbnail less its 3x3 blur (what is left after the layout), compared over the centre
   (the `MARGIN` pixels of each border left out: frames and borders would dominate), at every shift
   of up to `SHIFT` pixels; the best correlation is the pair's score, a copy when >= `DETAIL_MIN`.
   Re-encoding, resizing, brightness, contrast and colour keep the detail; another photo does not.
4. Images with almost no detail (`FLAT`: blank, nearly uniform) are never matched: there is nothing
   to tell a copy from another such image.
5. Each pool image is also compared mirrored left to right (`MIRROR`; the descriptors flip, no second
   decode): a model trained with random flips sees a mirrored copy as the same image.
6. Where the evaluation images are alike by nature (items on a plain background, digits), 0.6 pairs
   different images, and no threshold tells a copy from a look-alike: such a set is not searched
   (`copy_threshold`; exact copies are still found by `overlap.py`).

Thresholds, read off CIFAR-10 train vs test by eye (`benchmarks/near_copies.py` prints the tables and
writes montages): at `DETAIL_MIN` 0.6, 337 training images are flagged as near copies of 242 test
images, 99.4% of the pairs of one class, and 30 more mirrored (all 30 the same photo, by eye); of
1,000 test images re-saved as JPEG at quality 30, enlarged 4x, recoloured, turned gray or mirrored
99.4-100% are found again, moved by 1 px 94%. Not found: crops of more than a pixel or two a side,
rotations, heavy edits.
Cost: one decode of every pool and evaluation image at reduced size (JPEGs at 1/2-1/8 scale) and a
matrix product; the select stage keeps the result in the run directory, so it is paid once a run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decode import DECODE_VERSION

__all__ = ["THUMB", "thumbnail", "Descriptors", "describe", "mirrored", "best_matches", "copy_threshold",
           "near_copy_pairs", "source_thumbnails", "evaluation_set", "near_copies_of", "cached_near_copies"]

log = logging.getLogger("noisystudent")

THUMB = 32            # thumbnail side
CANDIDATES = 5        # evaluation images a pool image is checked against in detail
LAYOUT_MIN = 0.75     # layout correlation a candidate needs
DETAIL_MIN = 0.6      # detail correlation that makes a copy
MARGIN = 3            # border pixels left out of the detail comparison
SHIFT = 2             # largest shift (pixels at 32 px) searched
FLAT = 1.0            # detail below this RMS (gray levels) is no detail
SELF_SIMILAR = 0.05   # evaluation sets whose own images match each other more often are alike by nature
MIRROR = True         # search each pool image mirrored left to right as well


def thumbnail(image: np.ndarray) -> np.ndarray:
    """uint8 HWC (1 or 3 channels; any size) -> float32 THUMB x THUMB gray thumbnail."""
    a = image[:, :, 0] if image.shape[2] == 1 else np.asarray(Image.fromarray(image[:, :, :3]).convert("L"))
    return np.asarray(Image.fromarray(a).resize((THUMB, THUMB), Image.BILINEAR), dtype=np.float32)


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean(dim=-1, keepdim=True)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)


@dataclass
class Descriptors:
    layout: torch.Tensor      # (n, 256) unit vectors
    detail: torch.Tensor      # (n, THUMB, THUMB)
    flat: torch.Tensor        # (n,) bool: never matched

    def __len__(self) -> int:
        return len(self.flat)


def describe(thumbs: np.ndarray | torch.Tensor) -> Descriptors:
    """(n, THUMB, THUMB) thumbnails -> their layout and detail (see the module docstring)."""
    x = torch.as_tensor(np.asarray(thumbs, dtype=np.float32)).reshape(-1, 1, THUMB, THUMB)
    layout = _unit(F.avg_pool2d(x, 2).flatten(1))
    detail = (x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1))[:, 0]
    inner = detail[:, MARGIN:THUMB - MARGIN, MARGIN:THUMB - MARGIN]
    flat = inner.pow(2).mean(dim=(1, 2)).sqrt() < FLAT
    return Descriptors(layout, detail, flat)


def _detail_score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Best correlation of the centre of each `a` with the same-sized window of its `b` moved by up
    to SHIFT pixels (pairs row by row)."""
    lo, hi = MARGIN, THUMB - MARGIN
    centre = _unit(a[:, lo:hi, lo:hi].flatten(1))
    best = torch.full((len(a),), -1.0)
    for dy in range(-SHIFT, SHIFT + 1):
        for dx in range(-SHIFT, SHIFT + 1):
            window = _unit(b[:, lo + dy:hi + dy, lo + dx:hi + dx].flatten(1))
            best = torch.maximum(best, (centre * window).sum(1))
    return best


def best_matches(pool: Descriptors, other: Descriptors, same: bool = False,
                 block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(score, row of `other`) of each pool row's best match: the highest detail score among its
    CANDIDATES best layout matches of at least LAYOUT_MIN; (-1, -1) where none qualifies. `same`:
    `other` is `pool` itself, and a row never matches itself. Deterministic (no randomness)."""
    score = np.full(len(pool), -1.0, dtype=np.float32)
    match = np.full(len(pool), -1, dtype=np.int64)
    k = min(CANDIDATES, len(other) - int(same))
    if k <= 0 or not len(pool):
        return score, match
    for start in range(0, len(pool), block):
        stop = min(start + block, len(pool))
        sim = pool.layout[start:stop] @ other.layout.T
        sim[:, other.flat] = -2.0
        if same:
            sim[torch.arange(stop - start), torch.arange(start, stop)] = -2.0
        val, idx = sim.topk(k, dim=1)
        cand = (val >= LAYOUT_MIN) & ~pool.flat[start:stop, None]
        pi, ki = cand.nonzero(as_tuple=True)
        if not len(pi):
            continue
        s = _detail_score(pool.detail[start + pi], other.detail[idx[pi, ki]]).numpy()
        o = idx[pi, ki].numpy()
        rows = (start + pi).numpy()
        for r, oj, v in zip(rows.tolist(), o.tolist(), s.tolist()):   # candidates in layout order
            if v > score[r]:
                score[r], match[r] = v, oj
    return score, match


def copy_threshold(other: Descriptors) -> tuple[float | None, float]:
    """(the detail score that makes a pool image a copy of one of `other`, or None: not searched; the
    share of `other`'s images that score >= DETAIL_MIN against another of them). Above SELF_SIMILAR
    the images are alike by nature: 53% of Fashion-MNIST's test images and 96% of the digits' pair up
    at 0.6; at the threshold where only 1 in 1,000 of them still pairs (0.93-0.98), digits written
    alike were taken for copies and 98% of Fashion-MNIST copies re-saved as JPEG at quality 30 were
    missed (benchmarks/near_copies.py, tried before this rule). A hash does no better there (pHash flags 4% of Fashion-MNIST's
    training images at 2 bits, 90% of them of one class). So such a set is not searched."""
    best, _ = _best_either_way(other, other, same=True)    # a row never matches its own mirror: `same`
    share = float((best >= DETAIL_MIN).mean()) if len(best) else 0.0
    return (DETAIL_MIN if share <= SELF_SIMILAR else None), share


def mirrored(d: Descriptors) -> Descriptors:
    """The descriptors of the images mirrored left to right (no decode: both parts flip in place)."""
    side = THUMB // 2
    layout = d.layout.reshape(-1, side, side).flip(-1).reshape(-1, side * side)
    return Descriptors(layout, d.detail.flip(-1), d.flat)


def _best_either_way(pool: Descriptors, other: Descriptors, same: bool = False,
                     block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """`best_matches` of the pool images as they are or, with MIRROR, mirrored: whichever scores higher."""
    score, match = best_matches(pool, other, same=same, block=block)
    if MIRROR:
        m_score, m_match = best_matches(mirrored(pool), other, same=same, block=block)
        better = m_score > score
        score, match = np.where(better, m_score, score), np.where(better, m_match, match)
    return score, match


def near_copy_pairs(pool: Descriptors, other: Descriptors, detail_min: float = DETAIL_MIN,
                    block: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool rows, `other` rows, scores) of the pool images whose best match, as they are or mirrored,
    scores >= `detail_min`. A mirrored copy is searched too: to a model trained with random flips
    (data.hflip, the default) it is the same image."""
    score, match = _best_either_way(pool, other, block=block)
    rows = np.flatnonzero(score >= detail_min)
    return rows.astype(np.int64), match[rows], score[rows]


def _small(src):
    """A shallow copy of `src` that decodes at most 2*THUMB px (JPEGs at reduced scale, `open_image`),
    down to the source that reads the files (a subset reads its parent's rows)."""
    import copy
    out = copy.copy(src)
    out.max_side = 2 * THUMB
    if getattr(out, "parent", None) is not None:
        out.parent = _small(out.parent)
    return out


def source_thumbnails(src, workers: int = 0, progress=None, block: int = 4096):
    """Yield (rows, (m, THUMB, THUMB) uint8 thumbnails) for `src` in blocks of `block` rows, in row
    order; undecodable rows are left out (the stages that read them skip or stop on them already)."""
    from .decode import BadImage
    from .loaders import decode_rows
    rows, thumbs = [], []
    decoded = decode_rows(_small(src), workers)
    for i, img in (progress(decoded) if progress else decoded):
        if isinstance(img, BadImage):
            continue
        rows.append(i)
        thumbs.append(np.clip(np.rint(thumbnail(img)), 0, 255).astype(np.uint8))
        if len(rows) == block:
            yield np.asarray(rows, dtype=np.int64), np.stack(thumbs)
            rows, thumbs = [], []
    if rows:
        yield np.asarray(rows, dtype=np.int64), np.stack(thumbs)


# in every cache key: the method's constants and the decoder's version (what pixels the files gave)
_METHOD = [THUMB, CANDIDATES, LAYOUT_MIN, DETAIL_MIN, MARGIN, SHIFT, FLAT, SELF_SIMILAR, MIRROR, DECODE_VERSION]


def evaluation_set(src, workers: int = 0, cache: Path | None = None, fingerprint: str | None = None):
    """(rows, Descriptors, (threshold, share alike)) of an evaluation source: its thumbnails described
    and its `copy_threshold`. With `cache` and the source's `fingerprint` the thumbnails are kept there
    (uint8, 1 KB an image) and read back while the fingerprint holds, so the labeled check (teacher
    stage) and the pool check (select stage) decode the evaluation images once between them."""
    from ..artifacts import atomic_write
    from ..config import config_hash
    key = config_hash({"source": fingerprint, "method": _METHOD}) if cache is not None and fingerprint else None
    thumbs = None
    if key is not None and cache.exists():
        try:
            with np.load(cache) as z:
                if str(z["key"]) == key:
                    rows, thumbs = z["rows"], z["thumbs"]
        except (OSError, ValueError, KeyError):
            thumbs = None           # derived data: a damaged file is computed again
    if thumbs is None:
        parts = list(source_thumbnails(src, workers))
        rows = np.concatenate([r for r, _ in parts]) if parts else np.zeros(0, np.int64)
        thumbs = np.concatenate([t for _, t in parts]) if parts else np.zeros((0, THUMB, THUMB), np.uint8)
        if key is not None:
            with atomic_write(cache) as f:
                np.savez(f, key=key, rows=rows, thumbs=thumbs)
    desc = describe(thumbs)
    return rows, desc, copy_threshold(desc)


def _evaluation_sets(others: dict, workers: int, cache_dir: Path | None, fingerprints: dict | None) -> dict:
    """{name: (rows, Descriptors, source, (threshold, share alike))} of the non-empty `others`."""
    sets = {}
    for name, src in others.items():
        if src is None or not len(src):
            continue
        fp = (fingerprints or {}).get(name)
        cache = cache_dir / f"near-copies-{name}.npz" if cache_dir is not None else None
        rows, desc, threshold = evaluation_set(src, workers, cache, fp)
        if len(rows):
            sets[name] = (rows, desc, src, threshold)
    return sets


def near_copies_of(pool, others: dict, workers: int = 0, progress=None, cache_dir: Path | None = None,
                   fingerprints: dict | None = None) -> tuple[dict, dict]:
    """({name: {pool id: (id in others[name], score)}}, {name: (threshold, share alike)}) for the pool
    images that are near copies of an image of each source of `others` (None entries skipped), and
    each set's `copy_threshold` (None: alike by nature, not searched, its dict empty). The evaluation
    sets are held as descriptors (5 KB an image; their thumbnails kept in `cache_dir` under
    `fingerprints[name]`, `evaluation_set`); the pool streams through in blocks."""
    return _search(pool, _evaluation_sets(others, workers, cache_dir, fingerprints), workers, progress)


def _search(pool, sets: dict, workers: int = 0, progress=None) -> tuple[dict, dict]:
    """`near_copies_of` against evaluation sets already described (`_evaluation_sets`)."""
    found: dict[str, dict] = {name: {} for name in sets}
    thresholds = {name: v[3] for name, v in sets.items()}
    sets = {name: v for name, v in sets.items() if v[3][0] is not None}
    if not sets:
        return found, thresholds
    for rows, thumbs in source_thumbnails(pool, workers, progress):
        block = describe(thumbs)
        for name, (other_rows, other, src, (threshold, _)) in sets.items():
            p, o, s = near_copy_pairs(block, other, threshold)
            for pi, oi, si in zip(p.tolist(), o.tolist(), s.tolist()):
                found[name][pool.ids[int(rows[pi])]] = (src.ids[int(other_rows[oi])], round(float(si), 3))
    return found, thresholds


def cached_near_copies(pool, others: dict, fingerprints: dict, path: Path, workers: int = 0,
                       progress: bool = False, what: str = "pool") -> dict:
    """`near_copies_of` as JSON ({'found': {set: {pool id: [id, score]}}, 'thresholds': {set: [t, share]}}),
    read back from `path` when it was computed for the same `fingerprints` (of the pool and the
    evaluation sources) and method; else computed, logged (`what` names the searched images) and saved
    there (derived data: a damaged or stale file is computed again). The evaluation sets' thumbnails
    are kept beside it, shared by every search of the run.

    Under torchrun every rank calls it (it is a collective): each searches a contiguous share of
    `pool`, rank 0 gathers the shares and saves the result, and every rank returns all of it. So the
    search takes 1/N of the time on N ranks, and no rank sits at a barrier while rank 0 decodes a
    pool of millions of images alone (which could outlast the process group's timeout)."""
    from tqdm import tqdm
    from ..artifacts import read_json, write_json
    from ..config import config_hash
    from ..distributed import from_rank0, world_info
    rank, world = world_info()
    key = config_hash({"sources": fingerprints, "method": _METHOD})
    saved = None
    if rank == 0:
        try:
            saved = read_json(path) if path.exists() else None
        except (OSError, ValueError):
            saved = None
    if world > 1:
        saved = from_rank0(saved)
    if isinstance(saved, dict) and saved.get("key") == key:
        return {"found": saved["found"], "thresholds": saved["thresholds"]}
    t0 = time.time()
    # The evaluation sets are decoded once, by rank 0, into the cache beside `path`; the other ranks
    # read them from there.
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        sets = _evaluation_sets(others, workers, path.parent, fingerprints)
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        sets = _evaluation_sets(others, workers, path.parent, fingerprints)
    mine = pool         # the images this process searches: all of them, or its rank's share
    if world > 1:
        mine = pool.subset(np.array_split(np.arange(len(pool)), world)[rank])
    bar = tqdm(total=len(mine), desc=f"near copies ({what})", unit="img", disable=not progress, leave=False)

    def counted(rows):
        for row in rows:
            bar.update(1)
            yield row
    found, thresholds = _search(mine, sets, workers, counted)
    bar.close()
    if world > 1:
        parts: list = [None] * world
        torch.distributed.all_gather_object(parts, found)
        found = {n: {p: v for part in parts for p, v in part.get(n, {}).items()} for n in found}
    result = {"found": {n: {p: list(v) for p, v in sorted(d.items())} for n, d in found.items()},
              "thresholds": {n: [t, round(f, 4)] for n, (t, f) in thresholds.items()}}
    if rank != 0:
        return result
    write_json(path, {"key": key, **result})
    searched = [n for n, (t, _) in thresholds.items() if t is not None]
    if searched:
        log.info("near copies: %s %s images checked against %s in %.0f s%s", f"{len(pool):,}", what,
                 ", ".join(f"{n} ({len(others[n]):,})" for n in searched), time.time() - t0,
                 f" ({world} ranks, a share each)" if world > 1 else "")
    for n, (t, share) in thresholds.items():
        if t is None:
            log.info("near copies of %s images: %s not searched: %.0f%% of its images are as alike as copies to "
                     "another of them (items on a plain background, digits), so a copy cannot be told from a "
                     "look-alike", what, n, 100 * share)
    return result
