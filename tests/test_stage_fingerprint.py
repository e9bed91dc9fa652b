"""Stage fingerprints: label.batch_size and evaluate.batch_size (how fast, not what) stay out of
them, and records written while they were in them are still recognised, so neither an upgrade nor a
smaller batch after an out-of-memory error redoes finished labels or evaluations."""
import pytest
import torch

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


def _untrained_teacher(run_dir):
    """round0/teacher of a digits-demo run: an untrained ns_cnn_s, recorded as done."""
    from noisystudent.artifacts import write_stage
    from noisystudent.models import create_model
    from noisystudent.stages.modelfile import save_model
    cfg = load_config("configs/digits-demo.yaml")
    ctx = RunContext(cfg, run_dir, "cpu")
    tdir = ctx.layout.model(0, "teacher")
    torch.manual_seed(0)
    model = create_model("ns_cnn_s", len(ctx.classes), 1)
    save_model(tdir / "model.pt", model, ctx.model_meta("ns_cnn_s", 8, cfg.teacher.noise, "teacher"))
    write_stage(tdir, status="done", fingerprint="test", config={}, inputs={}, outputs={"model.pt": True})


def test_out_of_memory_while_labeling_names_the_batch_and_a_smaller_one_resumes(tmp_path, monkeypatch, capsys):
    """The GPU runs out of memory after one shard: one line naming label.batch_size and a value to
    try, exit 2, the shard kept; the rerun at that value labels only the shards left."""
    import noisystudent.stages.label as label_mod
    from noisystudent.cli import main
    run = tmp_path / "run"
    _untrained_teacher(run)
    real = label_mod.predict_shards
    launched = []

    def oom_after_one(model, pool, todo, *a, **kw):
        launched.append(list(todo))
        for i, item in enumerate(real(model, pool, todo, *a, **kw)):
            if i == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            yield item

    monkeypatch.setattr(label_mod, "predict_shards", oom_after_one)
    argv = ["label", "configs/digits-demo.yaml", "--run-dir", str(run), "--set", "label.shard_size=300",
            "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: round 1: out of memory labeling at label.batch_size=256 (auto); the finished shards "
                   "are kept: rerun with --set label.batch_size=64")
    labels = RunLayout(run).labels(1)
    assert sorted(p.name for p in labels.glob("part-*.parquet")) == ["part-00000.parquet"]
    monkeypatch.setattr(label_mod, "predict_shards", real)
    monkeypatch.setattr(label_mod, "predict_shards", lambda m, p, todo, *a, **kw: (launched.append(list(todo)),
                                                                                 real(m, p, todo, *a, **kw))[1])
    assert main(argv + ["--set", "label.batch_size=64"]) == 0
    assert launched == [[0, 1, 2, 3], [1, 2, 3]]                 # resumed: shard 0 was not labeled again
    assert read_stage(labels)["info"]["batch_size"] == 64


def test_out_of_memory_elsewhere_is_one_line_not_a_bug_report(tmp_path, monkeypatch, capsys):
    import noisystudent.stages.label as label_mod
    from noisystudent.cli import main
    run = tmp_path / "run"
    _untrained_teacher(run)

    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB\nmore text")
    monkeypatch.setattr(label_mod, "label_pool", oom)
    assert main(["label", "configs/digits-demo.yaml", "--run-dir", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: out of memory on the device (CUDA out of memory. Tried to allocate 9.00 GiB)")
    assert "lower the batch size" in err and "a bug" not in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: a real out-of-memory error while labeling")
def test_a_real_cuda_out_of_memory_while_labeling(tmp_path, monkeypatch, capsys):
    """The message above, from the CUDA allocator itself: labeling asks for 4 TiB."""
    import noisystudent.stages.label as label_mod
    from noisystudent.cli import main
    run = tmp_path / "run"
    _untrained_teacher(run)

    def huge(*a, **kw):
        torch.empty(1 << 42, dtype=torch.uint8, device="cuda")
        yield from ()
    monkeypatch.setattr(label_mod, "predict_shards", huge)
    assert main(["label", "configs/digits-demo.yaml", "--run-dir", str(run), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: round 1: out of memory labeling at label.batch_size=1024 (auto); the finished shards "
                   "are kept: rerun with --set label.batch_size=256")


def test_an_evaluation_recorded_at_batch_256_is_the_same_stage_at_auto():
    """evaluate.batch_size left the fingerprint when it became `auto` (2026-12-04): an evaluation
    stage recorded at the old default 256, before, is still this stage; other keys still count."""
    def ev(batch, tta=False):
        return {"evaluate": {"batch_size": batch, "flip_tta": tta}, "test": {"kind": "digits"}}
    old = {"fingerprint": _legacy(ev(256)), "config": ev(256)}
    assert stage_fingerprint(ev("auto"), UP, old) == old["fingerprint"]
    assert stage_fingerprint(ev(1024), UP) == stage_fingerprint(ev("auto"), UP)
    assert stage_fingerprint(ev("auto", True), UP, old) not in (old["fingerprint"], stage_fingerprint(ev("auto"), UP))


def test_a_stage_records_the_software_that_made_it_and_says_when_it_differs(tmp_path, caplog):
    """stage.json keeps the versions of noisystudent, torch, timm and torchvision (provenance). A
    finished stage made by other versions is still skipped (an upgrade must not throw away hours of
    training unasked) but the log says so and how to redo it; a stage with no record of versions (from
    before) or the same ones says nothing."""
    import json
    from noisystudent.artifacts import software_versions, version_drift
    ctx = RunContext(load_config("configs/digits-demo.yaml"), tmp_path)
    d = RunLayout(tmp_path).labels(1)
    run_stage(ctx, d, _label_config(256), {}, lambda out: ([], {}))
    rec = json.loads((d / "stage.json").read_text())
    assert rec["versions"] == software_versions() and rec["versions"]["torch"] == torch.__version__
    assert version_drift(rec) == "" and version_drift({}) == ""
    with caplog.at_level("WARNING", logger="noisystudent"):
        assert run_stage(ctx, d, _label_config(256), {}, lambda out: ([], {})).skipped
    assert "other software" not in caplog.text
    rec["versions"] = {**rec["versions"], "noisystudent": "0.0.1", "timm": "0.9.0"}
    (d / "stage.json").write_text(json.dumps(rec))
    assert version_drift(rec) == f"noisystudent 0.0.1 -> {software_versions()['noisystudent']}, " \
                                 f"timm 0.9.0 -> {software_versions()['timm']}"
    with caplog.at_level("WARNING", logger="noisystudent"):
        assert run_stage(ctx, d, _label_config(256), {}, lambda out: ([], {})).skipped
    assert "round1/labels: done with other software (noisystudent 0.0.1 -> " in caplog.text
    assert f"delete {d} to redo it" in caplog.text
