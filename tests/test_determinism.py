"""Same seed + same machine -> the same run: pseudo-labels, selection and accuracy, byte for byte,
from two separate processes (nothing shared but the command line).

"Same machine" includes the number of CPU threads (OMP_NUM_THREADS): parallel float reductions are
ordered by it, so a different thread count may change the last bits of the weights.
"""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from conftest import TINY, cli
from noisystudent.layout import RunLayout

SETS = [*TINY, "rounds=1", "ablation_no_noise=false", "label.shard_size=64", "teacher.epochs=4",
        "student.epochs=2"]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(run_dir):
    args = ["run", "digits-demo", "--run-dir", str(run_dir), "--no-report"]
    for s in SETS:
        args += ["--set", s]
    r = cli(*args, env=ENV, real=True)    # a fresh process: no state from earlier tests
    assert r.returncode == 0, r.stderr
    return run_dir


@pytest.mark.slow       # test_faults compares every resumed stage byte for byte with a reference run
def test_same_seed_same_machine_gives_the_same_run(tmp_path):
    a, b = RunLayout(_run(tmp_path / "a")), RunLayout(_run(tmp_path / "b"))
    shards_a = sorted(p.name for p in a.labels(1).glob("part-*.parquet"))
    shards_b = sorted(p.name for p in b.labels(1).glob("part-*.parquet"))
    assert shards_a == shards_b and len(shards_a) > 1
    for name in shards_a:           # pseudo-labels: same bytes, hence the same table
        pa_, pb_ = a.labels(1) / name, b.labels(1) / name
        assert pq.read_table(pa_).equals(pq.read_table(pb_)), name
        assert pa_.read_bytes() == pb_.read_bytes(), name
    sa, sb = a.selection(1) / "selection.parquet", b.selection(1) / "selection.parquet"
    assert pq.read_table(sa).equals(pq.read_table(sb))
    assert sa.read_bytes() == sb.read_bytes()
    assert (a.selection(1) / "selection.json").read_text() == (b.selection(1) / "selection.json").read_text()
    for k, role in ((0, "teacher"), (1, "student")):
        model_a, model_b = a.model(k, role) / "model.pt", b.model(k, role) / "model.pt"
        assert model_a.read_bytes() == model_b.read_bytes(), a.rel(model_a)
    summary_a = json.loads(a.summary.read_text())
    summary_b = json.loads(b.summary.read_text())
    assert summary_a == summary_b
    assert [m["top1"] for m in summary_a["models"]] == [m["top1"] for m in summary_b["models"]]
    # every stage's fingerprint and output hashes agree, so either folder could resume the other
    for stage in a.stage_dirs():
        ra = json.loads((stage / "stage.json").read_text())
        rb = json.loads((b.root / a.rel(stage) / "stage.json").read_text())
        assert (ra["fingerprint"], ra["outputs"]) == (rb["fingerprint"], rb["outputs"]), stage.name
