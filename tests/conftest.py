"""Shared fixtures: a tiny digits config that runs the whole loop in seconds."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from noisystudent.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("NOISYSTUDENT_PROGRESS", "0")
# checkpoint after every epoch (default: at most every 30 s): the resume tests kill at epoch boundaries
os.environ.setdefault("NOISYSTUDENT_CHECKPOINT_S", "0")
# log every epoch line (default: at most one every 10 s): tests read the lines of given epochs
os.environ.setdefault("NOISYSTUDENT_LOG_S", "0")
# no busy-CPU check at each training stage (0.3 s asleep each, hundreds of stages here; and a test
# machine is busy by nature): tests/test_cpuload.py turns it on
os.environ.setdefault("NOISYSTUDENT_CPU_CHECK", "0")

TINY = [
    "rounds=2", "ablation_no_noise=false", "variants=[]", "models=[ns_cnn_s, ns_cnn_s, ns_cnn_m]",
    "data.labeled.per_class=8", "data.unlabeled.fraction=0.25",
    # lengths in epochs (the bundled config counts steps): epoch boundaries are what resume tests kill at
    "teacher.steps=0", "teacher.warmup_steps=null", "student.steps=0", "student.warmup_steps=null",
    "teacher.epochs=8", "teacher.batch_size=16",
    "student.epochs=4", "student.batch_size=8", "student.ratio=3",
    "label.shard_size=128", "evaluate.batch_size=128",
]


def twin_student_overrides(config: Path) -> list[str]:
    """Overrides that make `config`'s student the teacher's compute-matched twin (from scratch, the
    teacher's steps and warm-up), read from the config so the tests follow a recipe's lengths."""
    from noisystudent.config import load_config
    t = load_config(config).teacher
    return ["student.init_from_teacher=false", f"student.steps={t.steps}", f"student.warmup_steps={t.warmup_steps}"]


# The run directory's paths relative to its root, as log lines, stage records and warning keys spell
# them: rel(REL.labels(1)) is round 1's label stage as `noisystudent run` names it. For a real run,
# RunLayout(run_dir) and its own .rel.
REL = RunLayout(Path())


def rel(path: Path) -> str:
    """A path of `REL` as a run-relative posix string, e.g. for rel(REL.eval(0, "teacher"))."""
    return REL.rel(path)


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture
def tiny_cfg():
    from noisystudent.config import load_config
    return load_config(ROOT / "configs" / "digits-demo.yaml", TINY)


# environment a test may ask for that only changes speed (threads), not behaviour
_SPEED_ONLY_ENV = {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}


def cli(*args, env=None, timeout=None, real=False):
    """Run the CLI and return a CompletedProcess (exit code, stdout, stderr). In this process by
    default (`cli_inproc`: the same `main`, ~10x faster here than a new interpreter importing torch);
    in a real subprocess when `real`, when a `timeout` must bound a possible hang, or when `env`
    changes more than thread counts. The entry point itself and the fault suite run real processes."""
    if not real and timeout is None and set(env or {}) <= _SPEED_ONLY_ENV:
        return cli_inproc(*args)
    import subprocess
    e = dict(os.environ, NOISYSTUDENT_PROGRESS="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", "noisystudent", *args], capture_output=True, text=True,
                          env=e, timeout=timeout or 300, cwd=ROOT)


def cli_inproc(*args):
    """`cli(*args)` in this process: the same `main`, exit code, stdout and stderr (log lines
    included), without a new interpreter importing torch (~5 s each on 2 cores). For commands that
    neither kill nor signal the process; the fault suite keeps real subprocesses."""
    import contextlib
    import io
    import logging
    import subprocess
    from noisystudent.cli import main
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("noisystudent: %(message)s"))
    log = logging.getLogger("noisystudent")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:          # argparse: --help (0) and usage errors (2)
                code = e.code if isinstance(e.code, int) else 1
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return subprocess.CompletedProcess(["noisystudent", *args], code, out.getvalue(), err.getvalue())


# Lines tests want shown after the run (e.g. the fault suite's kill points per stage), printed in
# pytest's terminal summary so they are visible without -s.
REPORT_LINES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if REPORT_LINES:
        terminalreporter.section("noisystudent report")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)
