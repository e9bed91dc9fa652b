"""Stage fingerprints: label.batch_size (how fast, not what) stays out of them, and records written
while it was in them are still recognised, so neither an upgrade nor a smaller batch after an
out-of-memory error redoes finished labels."""
from noisystudent.artifacts import read_stage
from noisystudent.config import config_hash, load_config
from noisystudent.layout import RunLayout
from noisystudent.stages.common import RunContext, run_stage
from noisystudent.stages.fingerprint import fingerprinted, stage_fingerprint

UP = {"teacher": {"fingerprint": "abc", "outputs": {"model.pt": "h"}}}


def _label_config(batch, temperature=1.0):
    return {"label": {"temperature": temperature, "batch_size": batch, "shard_size": 4096}, "image_size": 32}


def _legacy(config):
    """How a stage was fingerprinted before 2026-12-04: every key, the batch size included."""
    return config_hash({"config": fingerprinted(config), "inputs": UP})


def test_batch_size_changes_how_fast_not_the_fingerprint():
    assert stage_fingerprint(_label_config(256), UP) == stage_fingerprint(_label_config("auto"), UP)
    assert stage_fingerprint(_label_config(256), UP) != stage_fingerprint(_label_config(256, 2.0), UP)
    # the same key elsewhere (a student's batch decides what it learns) is still in
    a, b = {"student": {"batch_size": 64}}, {"student": {"batch_size": 128}}
    assert stage_fingerprint(a, UP) != stage_fingerprint(b, UP)


def test_a_record_from_before_is_the_same_stage_if_only_the_batch_size_differs():
    old = {"fingerprint": _legacy(_label_config(512)), "config": _label_config(512)}
    assert stage_fingerprint(_label_config("auto"), UP, old) == old["fingerprint"]
    assert stage_fingerprint(_label_config(512), UP, old) == old["fingerprint"]
    # anything else changed: the new fingerprint, so the stage is redone
    new = stage_fingerprint(_label_config("auto", 2.0), UP, old)
    assert new != old["fingerprint"] and new == stage_fingerprint(_label_config(1, 2.0), UP)
    # other inputs: redone too
    assert stage_fingerprint(_label_config(512), {"teacher": {"fingerprint": "zzz"}}, old) != old["fingerprint"]


def test_run_stage_resumes_a_stage_whose_batch_size_was_lowered(tmp_path):
    """Label shards finished at one batch size are kept when the stage runs again at another."""
    ctx = RunContext(load_config("configs/digits-demo.yaml"), tmp_path)
    d = RunLayout(tmp_path).labels(1)
    calls = []

    def killed(out):
        (out / "part-00000.parquet").write_text("a finished shard")
        raise KeyboardInterrupt

    def body(out):
        calls.append(sorted(p.name for p in out.iterdir()))
        return [], {}
    try:
        run_stage(ctx, d, _label_config(1024), {}, killed)
    except KeyboardInterrupt:
        pass
    run_stage(ctx, d, _label_config(256), {}, body)             # resumed: the shard is still there
    assert calls == [["part-00000.parquet", "stage.json"]]
    assert run_stage(ctx, d, _label_config("auto"), {}, body).skipped
    assert not run_stage(ctx, d, _label_config(256, 2.0), {}, body).skipped   # a real change: redone
    assert calls[-1] == ["stage.json"] and read_stage(d)["config"]["label"]["temperature"] == 2.0
