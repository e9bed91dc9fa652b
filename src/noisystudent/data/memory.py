"""How much of the machine's memory decoded images may take (`data.cache`).

`data.cache: true` decodes a source once into RAM, which makes epochs on small images bound by
compute instead of by decoding. It must not mean that a folder of 12-MP photos fills the memory
(each is kept at up to 896x896 px for 224 px training: 2.4 MB) and the system kills the run: a source
is cached only while its decoded images fit `cache_budget()`, else it is read from its files.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

from ..distributed import local_world_size
from ..runlog import env_number

if TYPE_CHECKING:
    from .sources import Source

__all__ = ["CacheTooLarge", "cache_budget", "cache_if_fits"]

log = logging.getLogger("noisystudent")


class CacheTooLarge(Exception):
    """`Source.cache(max_bytes=...)` stopped: the decoded images would take more than `max_bytes`
    (`estimate`, projected from the `decoded` images of `total` it had decoded)."""

    def __init__(self, estimate: int, decoded: int, total: int, max_bytes: int):
        super().__init__(f"~{estimate / 2**30:.1f} GiB decoded, more than {max_bytes / 2**30:.1f} GiB")
        self.estimate, self.decoded, self.total, self.max_bytes = estimate, decoded, total, max_bytes


def cache_budget(processes: int = 1) -> int | None:
    """Bytes the decoded images of one source may take in RAM: `NOISYSTUDENT_CACHE_GB` when set, else
    half the memory available now (Linux: MemAvailable; elsewhere the free physical pages) shared by
    the `processes` caching at once on this machine (torchrun's ranks); None where neither can be
    read (no limit). Sources cached earlier in the command have already taken their share."""
    if os.environ.get("NOISYSTUDENT_CACHE_GB", "").strip():
        return int(env_number("NOISYSTUDENT_CACHE_GB", 0, "GiB") * 2**30)
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kb * 1024 // 2 // max(1, processes)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2 // max(1, processes)
    except (AttributeError, ValueError, OSError):
        return None


def cache_if_fits(src: Source, on_bad: str, what: str, workers: int,
                  agree: Callable[[bool], bool] | None = None) -> Source:
    """`src` decoded into RAM by `workers` processes (`Source.cache`) when its images fit in
    `cache_budget()`, else `src` itself, read from its files each epoch, with one warning line naming
    `what`. Both give the same pixels (`Source.load`), so the same results.

    `agree(fits)` (torchrun: `distributed.all_ranks`, called by every rank for the same source) makes
    the choice the run's: a rank whose budget, read from its own machine's memory, was too small makes
    every rank read the files. Else one rank would train on the cached set, which has dropped its
    undecodable images (`data.*.bad_images: skip`), and another on the files, which drop them per
    batch: different batch counts per epoch, and DDP waits forever for a step one rank never takes."""
    # torchrun's ranks on this machine each cache their own copy, at the same time
    budget = cache_budget(local_world_size())
    try:
        cached = src.cache(on_bad=on_bad, max_bytes=budget, workers=workers)
    except CacheTooLarge as e:
        why = ("NOISYSTUDENT_CACHE_GB" if os.environ.get("NOISYSTUDENT_CACHE_GB", "").strip() else
               "half the memory available; NOISYSTUDENT_CACHE_GB sets another limit")
        log.warning("%s: its %d images would take ~%s decoded, more than the %s the cache may use (%s): reading "
                    "them from their files instead%s", what, e.total, _size(e.estimate), _size(e.max_bytes), why,
                    "" if workers > 0 else " (data.workers decodes them in parallel)")
        cached = None
    if agree is not None and not agree(cached is not None):
        if cached is not None:
            log.warning("%s: another process of this run could not cache these images (memory); every process "
                        "reads them from their files instead, so that all see the same images", what)
        return src
    return src if cached is None else cached


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**29 else f"{n / 2**20:.1f} MiB"
