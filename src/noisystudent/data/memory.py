"""How much of the machine's memory decoded images may take (`data.cache`), and how many loader
processes the shared memory their batches travel through can carry (`fit_workers_to_shm`).

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

__all__ = ["CacheTooLarge", "cache_budget", "cache_if_fits", "shm_free", "fit_workers_to_shm", "loader_failure_hint"]

SHM = "/dev/shm"        # where torch's DataLoader workers put the tensors they hand over (Linux)

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


# ------------------------------------------------------------------------------------------------
# shared memory: a DataLoader worker hands each batch's tensors over in /dev/shm. A container's
# default /dev/shm is 64 MiB (Docker), less than 8 workers' prefetched batches of 224 px images, and
# the run died with "unable to allocate shared memory(shm)" or a worker's bus error.

def shm_free() -> int | None:
    """Bytes free in /dev/shm, or None where there is none (not Linux) or it cannot be read."""
    try:
        st = os.statvfs(SHM)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


_warned_shm: set = set()


def fit_workers_to_shm(workers: int, batch_bytes: int, prefetch: int, what: str) -> int:
    """The most of `workers` loader processes whose batches in flight (`prefetch` each, and one being
    handed over) fit in half the free /dev/shm of this process's share (torchrun's ranks on a machine
    share it; the other half is for a second loader: joint batches, validation). Fewer, with one
    warning line naming `what` and the fix, when they do not; `workers` where shm_free() is unknown."""
    if workers <= 0 or batch_bytes <= 0:
        return workers
    free = shm_free()
    if free is None:
        return workers
    budget = free // 2 // local_world_size()
    fit = max(0, min(workers, (budget // batch_bytes - 1) // max(1, prefetch)))
    if fit < workers and what not in _warned_shm:
        _warned_shm.add(what)
        log.warning("%s: %d loader processes would hold ~%s of batches in shared memory, more than half the %s "
                    "free in %s: using %d (a container's default is 64 MiB: start it with --shm-size=8g or "
                    "--ipc=host)", what, workers, _size((workers * prefetch + 1) * batch_bytes), _size(free), SHM, fit)
    return fit


def loader_failure_hint(message: str) -> str | None:
    """One line for a DataLoader failure that is the machine's, not a bug (`message`: the exception's
    text, which for a worker's error holds the worker's traceback), else None."""
    if "shared memory" in message or "(shm)" in message or "bus error" in message.lower():
        free = shm_free()
        room = f" ({_size(free)} free)" if free is not None else ""
        return (f"a data loader process ran out of shared memory in {SHM}{room}; start the container with "
                "--shm-size=8g or --ipc=host, or set data.workers lower (0: no loader processes)")
    if "Too many open files" in message or "received 0 items of ancdata" in message:
        return ("the data loader processes ran out of open files (each batch they hand over holds one); raise "
                "the limit (ulimit -n 65536), or set data.workers lower")
    if "killed by signal: Killed" in message:
        return ("a data loader process was killed by the system, most likely for lack of memory; set data.workers "
                "lower, or lower the batch size")
    return None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**29 else f"{n / 2**20:.1f} MiB"
