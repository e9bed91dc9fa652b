"""The busy-CPU line: parsing /proc/stat, the share of other processes, when to speak, and the
line itself from a real `noisystudent train` beside a process that keeps a core busy."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, cli
from noisystudent.cpuload import (MIN_OTHERS, busy_jiffies, busy_message, others_cores, sample_others)

STAT = """cpu  900 90 300 5000 10 0 20 7 0 0
cpu0 100 10 50 2000 5 0 10 3 0 0
cpu1 200 20 60 2000 5 1 4 4 0 0
cpu2 600 60 190 1000 0 0 6 0 0 0
intr 12345 0 0
ctxt 999
procs_running 3
"""

LINUX = Path("/proc/stat").is_file()


def test_busy_ticks_count_work_of_the_allowed_cpus_only():
    # user + nice + system + irq + softirq; idle, iowait and steal (the hypervisor's) are not work
    assert busy_jiffies(STAT, {0}) == 100 + 10 + 50 + 0 + 10
    assert busy_jiffies(STAT, {0, 1}) == 170 + (200 + 20 + 60 + 1 + 4)
    assert busy_jiffies(STAT, {2}) == 600 + 60 + 190 + 6       # the aggregate "cpu" line is never counted
    assert busy_jiffies(STAT, {7}) is None


def test_others_share_is_the_cpus_work_minus_ours():
    # 2 cores fully busy for 0.5 s at 100 ticks/s = 100 ticks; this process ran 0.5 CPU-s of them
    assert others_cores(100, 100, 0.5, 0.5) == pytest.approx(1.0)
    assert others_cores(100, 100, 0.0, 0.5) == pytest.approx(2.0)
    assert others_cores(10, 100, 0.3, 0.5) == 0.0               # sampling skew never goes negative


@pytest.mark.parametrize("others, cores, threads, speaks", [
    (1.9, 2, 2, True),      # another training run on a 2-core machine
    (1.0, 2, 1, False),     # two runs with one thread each fit
    (0.3, 2, 2, False),     # a shell, an editor: below half a core
    (MIN_OTHERS, 2, 2, True),
    (6.0, 16, 8, False),    # a big machine with room to spare
    (12.0, 16, 8, True),
])
def test_the_line_is_said_only_when_the_cores_do_not_suffice(others, cores, threads, speaks):
    msg = busy_message(others, cores, threads)
    assert (msg is not None) == speaks
    if speaks:
        assert f"{others:.1f} of this machine's {cores} CPU cores" in msg and f"with {threads} thread{'s' if threads > 1 else ''}:" in msg
        assert f"OMP_NUM_THREADS={max(1, cores // 2)} each" in msg and "cpu-sharing.md" in msg


SPIN = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


@pytest.mark.skipif(not LINUX, reason="the check reads Linux's /proc/stat; elsewhere it is off (test_no_proc_stat_means_no_check)")
def test_a_busy_process_beside_us_is_seen():
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(s=20)])
    try:
        others, cores = sample_others(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert others >= 0.7, others       # the spinner keeps one core busy (0.5 s = 50 ticks of it)
    assert cores >= 1


@pytest.mark.skipif(not LINUX, reason="the check reads Linux's /proc/stat; elsewhere it is off (test_no_proc_stat_means_no_check)")
def test_train_says_when_other_processes_keep_the_cpu_busy(tmp_path):
    import os
    cores = len(os.sched_getaffinity(0))
    # one spinner a core: whatever the machine, the others then fill it and any thread count overflows
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(s=120)]) for _ in range(cores)]
    try:
        sets = [x for o in TINY + ["teacher.epochs=1"] for x in ("--set", o)]
        said = cli("train", "digits-demo", "--run-dir", str(tmp_path / "r"), *sets,
                   env={"NOISYSTUDENT_CPU_CHECK": "1", "OMP_NUM_THREADS": "1"})
        # turned off (as the rest of the suite runs): nothing said on the same busy machine
        quiet = cli("train", "digits-demo", "--run-dir", str(tmp_path / "r2"), *sets,
                    env={"NOISYSTUDENT_CPU_CHECK": "0", "OMP_NUM_THREADS": "1"})
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert said.returncode == 0, said.stderr
    line = [x for x in said.stderr.splitlines() if "other processes are keeping" in x]
    assert len(line) == 1 and "teacher" in line[0] and "with 1 thread:" in line[0], said.stderr
    assert quiet.returncode == 0 and "other processes are keeping" not in quiet.stderr, quiet.stderr


def test_no_proc_stat_means_no_check(tmp_path, monkeypatch):
    # macOS, Windows, a sandbox without /proc: nothing is said, nothing fails
    import noisystudent.cpuload as cpuload
    monkeypatch.setattr(cpuload, "_STAT", tmp_path / "no-proc-stat")
    monkeypatch.setenv("NOISYSTUDENT_CPU_CHECK", "1")
    assert cpuload.sample_others(0.01) is None
    assert cpuload.check_busy_cpu(2) is None


def test_the_switch_takes_0_or_1_only(monkeypatch):
    from noisystudent.cpuload import check_busy_cpu
    from noisystudent.errors import UserError
    monkeypatch.setenv("NOISYSTUDENT_CPU_CHECK", "yes")
    with pytest.raises(UserError, match="NOISYSTUDENT_CPU_CHECK='yes': allowed values are 0 and 1"):
        check_busy_cpu(2)
    monkeypatch.setenv("NOISYSTUDENT_CPU_CHECK", "0")
    assert check_busy_cpu(2) is None
