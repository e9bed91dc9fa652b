"""Is the CPU busy with other processes? Asked once when a training stage starts on the CPU.

Why: PyTorch runs its CPU kernels with one thread per core, so two training processes on the same
cores each run slower than alone: 1.6-1.8x each with the sleeping OpenMP waits the command line
sets (cli.py), 4.6-5.7x with libgomp's spinning default (docs/benchmarks/cpu-sharing.md). Nothing
in a run can give it the cores back, so the user is told, with what to do, before the first step.

How: the kernel's per-CPU counters (/proc/stat) for the CPUs this process may run on, read twice
around a short sleep; what the CPUs did meanwhile minus what this process did (its threads,
`time.process_time`) is the other processes' share. Linux only: elsewhere nothing is said.
`NOISYSTUDENT_CPU_CHECK=0` skips the check (and its ~0.3 s).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .runlog import env_flag

__all__ = ["busy_jiffies", "others_cores", "busy_message", "sample_others", "check_busy_cpu",
           "MIN_OTHERS", "WINDOW_S"]

MIN_OTHERS = 0.5      # other processes using at least half a core of ours...
WINDOW_S = 0.3        # ...over this long (30 ticks of a 100 Hz clock a core: enough to tell 0.5 from 0)
_STAT = Path("/proc/stat")


def busy_jiffies(stat_text: str, cpus: set[int]) -> int | None:
    """Clock ticks the CPUs in `cpus` spent running anything (user, nice, system, irq, softirq),
    from the text of /proc/stat; None if none of them is listed.

    Idle and iowait are not work; steal is time the hypervisor gave to another machine, which no
    process here can give back, so it is left out too."""
    total, seen = 0, False
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        f = [int(x) for x in rest.split()]
        total += f[0] + f[1] + f[2] + f[5] + f[6]        # user nice system [idle iowait] irq softirq
        seen = True
    return total if seen else None


def others_cores(busy_ticks: int, ticks_per_s: float, own_cpu_s: float, window_s: float) -> float:
    """How many cores other processes kept busy on average over the window (never below 0: the
    tick counters and process_time are sampled at slightly different moments)."""
    return max(0.0, (busy_ticks / ticks_per_s - own_cpu_s) / window_s)


def busy_message(others: float, cores: int, threads: int) -> str | None:
    """The line to say when other processes use at least MIN_OTHERS of a core and, with this
    process's threads, more cores than there are; None when the cores suffice."""
    if others < MIN_OTHERS or others + threads <= cores + 0.25:
        return None
    return (f"other processes are keeping {others:.1f} of this machine's {cores} CPU cores busy while this "
            f"run trains with {threads} thread{'s' if threads > 1 else ''}: it will train slower than alone and "
            f"slow them too (two runs on 2 cores: 1.6-1.8x each; docs/benchmarks/cpu-sharing.md). Run one at a "
            f"time, or give each run its share of the cores (two runs here: OMP_NUM_THREADS={max(1, cores // 2)} each)")


def sample_others(window_s: float = WINDOW_S) -> tuple[float, int] | None:
    """(cores other processes used over `window_s`, cores this process may use), or None where the
    counters are not readable (not Linux)."""
    try:
        cpus = os.sched_getaffinity(0)
        ticks_per_s = os.sysconf("SC_CLK_TCK")
        b0, p0 = busy_jiffies(_STAT.read_text(), cpus), time.process_time()
        time.sleep(window_s)
        b1, p1 = busy_jiffies(_STAT.read_text(), cpus), time.process_time()
    except (OSError, AttributeError, ValueError):
        return None
    if b0 is None or b1 is None:
        return None
    return others_cores(b1 - b0, ticks_per_s, p1 - p0, window_s), len(cpus)


def check_busy_cpu(threads: int) -> str | None:
    """The busy-CPU line for a stage about to train with `threads` torch threads, or None."""
    if not env_flag("NOISYSTUDENT_CPU_CHECK", True):
        return None
    sample = sample_others()
    return None if sample is None else busy_message(sample[0], sample[1], threads)
