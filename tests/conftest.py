"""Shared fixtures: a tiny digits config that runs the whole loop in seconds."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("NOISYSTUDENT_PROGRESS", "0")

TINY = [
    "rounds=2", "ablation_no_noise=false", "variants=[]", "models=[ns_cnn_s, ns_cnn_s, ns_cnn_m]",
    "data.labeled.per_class=8", "data.unlabeled.fraction=0.25",
    # lengths in epochs (the bundled config counts steps): epoch boundaries are what resume tests kill at
    "teacher.steps=0", "teacher.warmup_steps=null", "student.steps=0", "student.warmup_steps=null",
    "teacher.epochs=8", "teacher.batch_size=16",
    "student.epochs=4", "student.batch_size=8", "student.ratio=3",
    "label.shard_size=128", "evaluate.batch_size=128",
]


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture
def tiny_cfg():
    from noisystudent.config import load_config
    return load_config(ROOT / "configs" / "digits-demo.yaml", TINY)


def cli(*args, env=None, timeout=300):
    """Run the CLI in a subprocess (as a user would) and return the CompletedProcess."""
    import subprocess
    e = dict(os.environ, NOISYSTUDENT_PROGRESS="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", "noisystudent", *args], capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=ROOT)


# Lines tests want shown after the run (e.g. the fault suite's kill points per stage), printed in
# pytest's terminal summary so they are visible without -s.
REPORT_LINES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if REPORT_LINES:
        terminalreporter.section("noisystudent report")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)
