"""Reliability, second pass (issue 17): data changes, stale results, user files, hostile configs and
model files. Each test here failed before its fix. End-to-end cases share one tiny finished run
(`ref_run`, module scope) and copy it, so the whole file adds well under a minute to `make test`."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import types
import typing
from pathlib import Path

import pytest

from noisystudent.config import RULES, Config, load_config
from noisystudent.errors import UserError
from noisystudent.layout import RunLayout

from test_bad_inputs import THREADS, assert_one_line_error, make_data, run, write_cfg

from conftest import REL, cli, rel


# ------------------------------------------------------------------------------------------------
# item 6: every numeric key has a range, checked up front (one table, tested by a loop over it)

def _field_type(key: str):
    """The annotation of a config key ('teacher.noise.drop_rate', 'data.extra_test[].seed')."""
    from noisystudent.config import SourceConfig
    tp = Config
    for part in key.replace("[]", "").split("."):
        hints = typing.get_type_hints(tp)
        tp = hints[part]
        if part in ("extra_test", "val", "labeled", "unlabeled", "test"):   # list of / Optional SourceConfig
            tp = SourceConfig
    return tp


def _numeric_kind(tp) -> str | None:
    """'int' / 'float' when the annotation holds a number (directly, optionally, in a list)."""
    origin = typing.get_origin(tp)
    if tp is int or tp is float:
        return tp.__name__
    if origin in (typing.Union, types.UnionType, list):
        kinds = {_numeric_kind(a) for a in typing.get_args(tp)} - {None}
        return "float" if "float" in kinds else kinds.pop() if kinds else None
    return None


def _numeric_keys(tp=Config, prefix="") -> list[str]:
    out = []
    for f in dataclasses.fields(tp):
        hint = typing.get_type_hints(tp)[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):     # Optional[SourceConfig]: data.val
            hint = args[0]
        key = prefix + f.name
        if f.name == "extra_test":
            from noisystudent.config import SourceConfig
            out += _numeric_keys(SourceConfig, key + "[].")
        elif dataclasses.is_dataclass(hint):
            out += _numeric_keys(hint, key + ".")
        elif _numeric_kind(hint) and f.name not in ("labeled", "unlabeled", "test"):
            out.append(key)
    return out


def test_every_numeric_config_key_has_a_rule():
    missing = [k for k in _numeric_keys() if k not in RULES]
    assert missing == [], f"numeric config keys without a range in config.RULES: {missing}"
    assert [k for k in RULES if k not in _numeric_keys()] == []


def _override(key: str, value, each: bool) -> str:
    text = {"nan": ".nan", "inf": ".inf"}.get(repr(value), repr(value))
    text = f"[{text}]" if each else text
    if "[]" in key:
        head, field = key.split("[].")
        return f"{head}=[{{kind: digits, {field}: {text}}}]"
    return f"{key}={text}"


def _cases(key, rule):
    kind = _numeric_kind(_field_type(key))
    step = 1 if kind == "int" else 0.5
    bad, good = [], []
    if rule.lo is not None:
        (bad if rule.lo_open else good).append(rule.lo if kind == "float" or not rule.lo_open else rule.lo)
        bad.append(rule.lo - step)
        if rule.lo_open:
            good.append(rule.lo + (1 if kind == "int" else 1e-3))
    if rule.hi is not None:
        (bad if rule.hi_open else good).append(rule.hi)
        bad.append(rule.hi + step)
    if kind == "float":
        bad += [float("nan"), float("inf")]
    if kind == "int":
        bad, good = [int(b) for b in bad if b == int(b)], [int(g) for g in good]
    bad = [b for b in bad if b not in rule.also]
    return bad, good + list(rule.also)


@pytest.mark.parametrize("key", list(RULES))
def test_config_rule_table(key):
    rule = RULES[key]
    bad, good = _cases(key, rule)
    assert bad, key
    for v in bad:
        with pytest.raises(UserError) as e:
            load_config(None, [_override(key, v, rule.each)])
        shown = key.replace("[]", "[0]")
        got = f", got {v!r}" if isinstance(v, float) and not math.isfinite(v) else ""
        assert str(e.value) == f"config key '{shown}': {rule.message()}{got}", (key, v)
    for v in good:
        load_config(None, [_override(key, v, rule.each)])


@pytest.mark.parametrize("sets, message", [
    (["label.shard_size=0"], "config key 'label.shard_size': must be >= 1"),
    (["label.batch_size=0"], "config key 'label.batch_size': must be >= 1 or 'auto'"),
    (["evaluate.batch_size=0"], "config key 'evaluate.batch_size': must be >= 1 or 'auto'"),
    (["data.workers=-1"], "config key 'data.workers': must be in [0, 256] or 'auto'"),
    (["teacher.momentum=-1"], "config key 'teacher.momentum': must be in [0, 1)"),
    (["teacher.label_smoothing=5"], "config key 'teacher.label_smoothing': must be in [0, 1)"),
    (["teacher.weight_decay=.nan"], "config key 'teacher.weight_decay': must be >= 0, got nan"),
])
def test_issue_config_values_fail_up_front_with_one_line(sets, message):
    """The issue's cases (before: internal errors, some after the teacher trained)."""
    with pytest.raises(UserError) as e:
        load_config(None, sets)
    assert str(e.value) == message


def test_bad_config_value_through_the_cli_writes_nothing(tmp_path):
    r = cli("run", "digits-demo", "--run-dir", str(tmp_path / "run"), "--no-report", "--set", "label.shard_size=0",
            env=THREADS)
    assert_one_line_error(r, "config key 'label.shard_size': must be >= 1")
    assert r.returncode == 2 and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# item 4: YAML aliases (billion laughs, recursive) are refused before anything is expanded

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, alias, line", [(BOMB, "a", 2), ("a: &x [*x]\n", "x", 1),
                                               ("teacher: &t {epochs: 3}\nstudent: *t\n", "t", 2)])
def test_yaml_aliases_are_refused(tmp_path, text, alias, line):
    assert len(BOMB) < 600
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(p)
    assert str(e.value) == (f"{p}: YAML aliases are not allowed in configs (*{alias} on line {line}); "
                            "write the values out")


def test_yaml_bomb_through_the_cli_is_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(BOMB)
    r = cli("run", str(p), "--run-dir", str(tmp_path / "run"), env=THREADS, timeout=120)
    assert_one_line_error(r, f"{p}: YAML aliases are not allowed in configs (*a on line 2)")
    assert not (tmp_path / "run").exists()


def test_yaml_alias_in_a_set_value_is_refused():
    with pytest.raises(UserError, match=r"--set models: YAML aliases are not allowed"):
        load_config(None, ["models=[&a x, *a]"])


# ------------------------------------------------------------------------------------------------
# one finished tiny run (3-class PNG folders, 1 round), shared; tests copy its run directory

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("rel2")
    data = make_data(base / "data")
    cfg = write_cfg(base / "c.yaml", data)
    r = cli("run", str(cfg), "--run-dir", str(base / "run"), env=THREADS)    # with the report
    assert r.returncode == 0, r.stderr
    return base, data, cfg, base / "run"


@pytest.fixture
def copy_run(finished, tmp_path):
    base, data, cfg, ref = finished
    run_dir = tmp_path / "run"
    shutil.copytree(ref, run_dir)
    return run_dir


def _rec(run_dir: Path, stage: Path) -> dict:
    """The stage record of `stage` (a path of REL, relative to the run) in `run_dir`."""
    return json.loads((run_dir / stage / "stage.json").read_text())


# ------------------------------------------------------------------------------------------------
# item 1: a redo that fails leaves no old result looking current

def test_failed_redo_removes_stale_results(finished, copy_run):
    base, data, cfg, ref = finished
    run_dir = copy_run
    lay = RunLayout(run_dir)
    assert lay.summary.is_file() and lay.report_md.is_file()
    r = run(cfg, run_dir, "student.lr=1e30")
    assert_one_line_error(r, "student r1: loss became ")
    assert r.returncode == 2
    for gone in (lay.summary, lay.report_md, lay.report_html, lay.plots, lay.eval(1, "student")):
        assert not gone.exists(), gone
    assert (f"{lay.rel(lay.eval(1, 'student'))}: removed, it was made from {lay.rel(lay.model(1, 'student'))}, "
            "which is being redone") in r.stderr
    # what the redone stage does not feed is kept
    for kept in (REL.model(0, "teacher"), REL.eval(0, "teacher"), REL.labels(1), REL.selection(1)):
        assert _rec(run_dir, kept) == _rec(ref, kept), kept
    r = cli("report", str(run_dir))
    assert_one_line_error(r, f"{run_dir} has no readable {lay.summary.name}")
    # the rerun with the old config is the old run again
    r = run(cfg, run_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads(lay.summary.read_text()) == json.loads(RunLayout(ref).summary.read_text())


def test_restart_invalidates_everything_made_from_the_teacher(finished, copy_run):
    from noisystudent.stages.common import RunContext, downstream_stages
    base, data, cfg, ref = finished
    ctx = RunContext(load_config(cfg), copy_run)
    lay = RunLayout(copy_run)
    got = sorted(lay.rel(p) for p in downstream_stages(ctx, lay.model(0, "teacher")))
    assert got == [rel(p) for p in (REL.eval(0, "teacher"), REL.eval(1, "student"), REL.labels(1), REL.selection(1),
                                    REL.model(1, "student"))]
    # records without input_dirs (older runs) are followed through their input fingerprints
    for p in [d / "stage.json" for d in lay.stage_dirs()]:
        rec = json.loads(p.read_text())
        rec.pop("input_dirs", None)
        p.write_text(json.dumps(rec))
    got2 = sorted(lay.rel(p) for p in downstream_stages(ctx, lay.labels(1)))
    assert got2 == [rel(p) for p in (REL.eval(1, "student"), REL.selection(1), REL.model(1, "student"))]


# ------------------------------------------------------------------------------------------------
# item 3: never delete a user's files; refuse a non-empty folder that is not a run directory

def test_non_empty_foreign_folder_is_refused_and_user_files_are_kept(finished, tmp_path):
    base, data, cfg, ref = finished
    folder = tmp_path / "mine"
    (folder / "notes").mkdir(parents=True)
    user_files = [folder / "notes" / "draft.tmp", folder / "notes" / ".draft.abcd1234.tmp", folder / "todo.tmp"]
    for f in user_files:
        f.write_text("my work")
    r = run(cfg, folder)
    assert_one_line_error(r, f"{folder} is not empty and is not a noisystudent run directory "
                             f"(no {RunLayout(folder).config.name}); "
                             "use a new or empty --run-dir (or --force to use this folder anyway)")
    assert sorted(p.name for p in folder.iterdir()) == ["notes", "todo.tmp"]
    r = cli("run", str(cfg), "--run-dir", str(folder), "--no-report", "--force", env=THREADS)
    assert r.returncode == 0, r.stderr
    assert "temp file(s)" not in r.stderr
    assert all(f.read_text() == "my work" for f in user_files)


def test_sweep_removes_only_our_temp_names_in_our_folders(tmp_path):
    from noisystudent.artifacts import atomic_write, remove_stale_temps
    lay = RunLayout(tmp_path)
    ours = [tmp_path / f".{lay.summary.name}.k3j_9x0a.tmp", lay.labels(1) / ".part-00000.parquet.abcdefgh.tmp",
            lay.cache("robustness") / ".fog-s1.npy.0a1b2c3d.tmp"]
    theirs = [tmp_path / "notes" / "draft.tmp", tmp_path / "notes" / ".x.abcdefgh.tmp", lay.round_dir(1) / "draft.tmp",
              lay.round_dir(1) / ".draft.tmp", tmp_path / "a.tmp"]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert remove_stale_temps(tmp_path) == len(ours)
    assert [p.exists() for p in ours] == [False] * len(ours)
    assert all(p.exists() for p in theirs)
    # the names atomic_write really uses are among those swept
    import noisystudent.artifacts as artifacts
    with atomic_write(lay.round_dir(2) / "x.json", "w") as f:
        (name,) = [p.name for p in lay.round_dir(2).iterdir()]
        assert artifacts.is_our_temp(name), name
        f.write("{}")


# ------------------------------------------------------------------------------------------------
# item 8: damaged records and unfinished artifacts

@pytest.mark.parametrize("content", ["[1, 2]", '"done"', '{"status": "done", "fingerprint": 3}',
                                     '{"status": "done", "fingerprint": "x", "outputs": [1]}',
                                     '{"status": "done", "fingerprint": "x", "inputs": {"a": 1}}', "\xff"])
def test_damaged_stage_record_reads_as_none(tmp_path, content):
    from noisystudent.artifacts import read_stage, write_stage
    (tmp_path / "stage.json").write_text(content, encoding="latin-1")
    assert read_stage(tmp_path) is None
    write_stage(tmp_path, status="done", fingerprint="f", config={}, inputs={})
    assert read_stage(tmp_path).done


def test_damaged_stage_record_is_redone(finished, copy_run):
    base, data, cfg, ref = finished
    lay = RunLayout(copy_run)
    (lay.selection(1) / "stage.json").write_text("[1, 2]")
    r = run(cfg, copy_run)
    assert r.returncode == 0, r.stderr
    assert (f"{lay.rel(lay.selection(1))}: stage.json is damaged (not a stage record); "
            "redoing the stage") in r.stderr
    assert _rec(copy_run, REL.selection(1))["outputs"] == _rec(ref, REL.selection(1))["outputs"]
    # what was made from it is redone too (its input cannot be trusted), and comes out the same
    assert (f"{lay.rel(lay.model(1, 'student'))}: removed, it was made from {lay.rel(lay.selection(1))}, "
            "which is being redone") in r.stderr
    assert json.loads(lay.summary.read_text()) == json.loads(RunLayout(ref).summary.read_text())


@pytest.mark.parametrize("content, why", [
    ("- a\n", "not a mapping of config sections but a list"),
    ("data: null\n", "its 'data' section is missing or not a mapping"),
    ("", "empty"),
    ("data: {labeled: 1}\n", "its 'data' section lacks test, in_chans"),
    ("a: [1,\n", "not readable YAML"),
])
def test_damaged_run_config_is_one_line(tmp_path, content, why):
    from noisystudent.pipeline import read_run_config
    run_config = RunLayout(tmp_path).config
    run_config.write_text(content)
    with pytest.raises(UserError) as e:
        read_run_config(run_config)
    assert str(e.value).startswith(f"{run_config} is damaged ({why}")
    assert str(e.value).endswith(f"so it cannot tell which experiment {tmp_path} holds; restore it, or rerun with "
                                 "--force to reuse the folder (stages whose inputs changed are redone)")


def test_damaged_run_config_through_the_cli(finished, copy_run):
    base, data, cfg, ref = finished
    run_config = RunLayout(copy_run).config
    run_config.write_text("- a\n")
    r = run(cfg, copy_run)
    assert_one_line_error(r, f"{run_config} is damaged (not a mapping of config sections but a list)")
    r = cli("run", str(cfg), "--run-dir", str(copy_run), "--no-report", "--force", env=THREADS)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("done, skipping") == 6


def test_truncated_shard_of_an_unfinished_label_stage_is_relabeled(finished, copy_run):
    base, data, cfg, ref = finished
    lay = RunLayout(copy_run)
    labels = lay.labels(1)
    rec = _rec(copy_run, REL.labels(1))
    (labels / "stage.json").write_text(json.dumps(dict(rec, status="running", outputs={})))
    shard = labels / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    r = run(cfg, copy_run)
    assert r.returncode == 0, r.stderr
    assert f"round 1: {shard} is damaged (" in r.stderr
    assert _rec(copy_run, REL.labels(1))["outputs"] == rec["outputs"]      # relabeled identically
    assert f"{lay.rel(lay.selection(1))}: done, skipping" in r.stderr


def test_disk_full_when_the_lock_is_written(tmp_path, monkeypatch):
    import errno
    import noisystudent.artifacts as artifacts
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = write

        def close(self):        # a buffered file flushes its pending line again on close, and fails
            self.f.close()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(artifacts, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)
    with pytest.raises(UserError) as e:
        artifacts.lock_run_dir(tmp_path / "run")
    assert str(e.value) == (f"disk full while writing {tmp_path / 'run' / '.lock'}; nothing was written — "
                            "free space and rerun the same command")

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(artifacts, "open", no_space, raising=False)
    with pytest.raises(UserError, match="disk full while writing .*other.*[.]lock"):
        artifacts.lock_run_dir(tmp_path / "other")


# ------------------------------------------------------------------------------------------------
# item 2: data contents are in the fingerprints of the stages that read them

def test_changed_data_redoes_exactly_the_stages_that_read_it(tmp_path, caplog):
    """In-process: six CLI runs cost ~30 s of imports on 2 cores (the CLI path of a rerun is covered
    by the other tests of this file)."""
    import logging
    from test_bad_inputs import _img
    from noisystudent.pipeline import run as run_pipeline
    data = make_data(tmp_path / "data")
    cfg = write_cfg(tmp_path / "c.yaml", data)
    run_dir = tmp_path / "run"

    def redone(*sets) -> set[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="noisystudent"):
            run_pipeline(load_config(cfg, list(sets)), run_dir, device="cpu", report=False)
        return {m.split(": ")[0] for m in caplog.messages if m.endswith(": running")}
    teacher, teacher_eval, labels, selection, student, student_eval = (
        rel(p) for p in (REL.model(0, "teacher"), REL.eval(0, "teacher"), REL.labels(1), REL.selection(1),
                         REL.model(1, "student"), REL.eval(1, "student")))
    everything = {teacher, teacher_eval, labels, selection, student, student_eval}
    assert redone() == everything
    # the pool: one image removed, five added -> labeled again, and all after it
    (data / "pool" / "000.png").unlink()
    for i in range(5):
        _img(i % 3, 5000 + i).save(data / "pool" / f"new{i}.png")
    assert redone() == everything - {teacher, teacher_eval}
    assert _rec(run_dir, REL.labels(1))["info"]["rows"] == 16
    # a student setting then works (before: "selected ids are not in the unlabeled pool" forever)
    assert redone("student.lr=0.04") == {student, student_eval}
    # a labeled image replaced in place (same name): a new teacher, and everything after it
    _img(0, 777).save(data / "train" / "cat" / "0.png")
    assert redone("student.lr=0.04") == everything
    # a test image replaced in place: the evaluations only
    _img(2, 778).save(data / "test" / "fox" / "1.png")
    assert redone("student.lr=0.04") == {teacher_eval, student_eval}
    # nothing changed: nothing redone
    assert redone("student.lr=0.04") == set()


def test_source_fingerprints_see_contents(tmp_path):
    import os
    import numpy as np
    from noisystudent.config import SourceConfig
    from noisystudent.data import create_source
    data = make_data(tmp_path / "data")

    def fp(kind="imagefolder", root=data / "train", **kw):
        return create_source(SourceConfig(kind=kind, root=str(root), **kw), 3).fingerprint()
    a = fp()
    assert fp() == a                                            # stable
    f = data / "train" / "dog" / "2.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))     # touched
    assert fp() != a
    digits = create_source(SourceConfig(kind="digits", per_class=5), 1)
    d1 = digits.fingerprint()
    digits.images = digits.images.copy()
    digits.images[0, 0, 0, 0] ^= np.uint8(1)                    # one pixel
    assert digits.fingerprint() != d1


# ------------------------------------------------------------------------------------------------
# item 7: crafted model files are checked before anything is built from them

def _crafted(finished, tmp_path, **meta_changes):
    import torch
    base, data, cfg, ref = finished
    state = torch.load(RunLayout(ref).model(0, "teacher") / "model.pt", weights_only=True)
    if meta_changes.pop("clear", False):
        state["meta"] = {}
    state["meta"].update(meta_changes)
    out = tmp_path / "model.pt"
    torch.save(state, out)
    return out


@pytest.mark.parametrize("changes, fragment", [
    ({"num_classes": 100_000_000}, "damaged model metadata: meta.num_classes must be an integer in [2, 1000000] "
                                   "(got '100000000'); use a model.pt written by noisystudent"),
    ({"clear": True}, "damaged model metadata: meta.model_name must be a model name (got 'None')"),
])
def test_crafted_model_file_is_one_line(finished, tmp_path, changes, fragment):
    model = _crafted(finished, tmp_path, **changes)
    r = cli("evaluate", "--checkpoint", str(model), "--data", f"imagefolder:{finished[1] / 'test'}", env=THREADS)
    assert_one_line_error(r, f"{model}: {fragment}")
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.parametrize("changes, fragment", [
    ({"num_classes": 1_000_000, "classes": [str(i) for i in range(1_000_000)]},
     "weights do not fit ns_cnn_s (fc.weight: [3, 64] in the file, [1000000, 64] for 1000000 classes)"),
    ({"num_classes": 3.0}, "meta.num_classes must be an integer"),
    ({"classes": ["a", "b"]}, "meta.classes must list num_classes class names"),
    ({"in_chans": 1}, "meta.mean must be in_chans finite numbers"),
    ({"std": [0.5, 0.0, 0.5]}, "meta.std must be in_chans numbers > 0"),
    ({"image_size": 10 ** 9}, "meta.image_size must be in [1, 8192]"),
    ({"model_name": "nosuch_net"}, "unknown model 'nosuch_net'"),
    ({"drop_rate": float("nan")}, "meta.drop_rate must be in [0, 1)"),
])
def test_model_metadata_is_validated_before_building(finished, tmp_path, changes, fragment):
    import resource
    from noisystudent.stages.modelfile import load_model
    model = _crafted(finished, tmp_path, **changes)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError) as e:
        load_model(model, noised=True)
    assert fragment in str(e.value) and str(e.value).startswith(f"{model}: ")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000     # KiB: nothing big was built


# ------------------------------------------------------------------------------------------------
# item 5 (+ item 9: raw HTML in report.md): data-derived text in the report

def test_dollar_in_class_names_and_html_in_the_name(tmp_path):
    """A `$` in class names once made every report fail (mathtext, in savefig outside the guard);
    the config `name` went into report.md as raw HTML."""
    from test_bad_inputs import CLASSES
    data = make_data(tmp_path / "data")
    for split in ("train", "test"):
        for c, new in zip(CLASSES, ["$cat", "dog$", "f$o$x"]):
            (data / split / c).rename(data / split / new)
    cfg = write_cfg(tmp_path / "c.yaml", data, name="<script>alert(1)</script>$x$")
    lay = RunLayout(tmp_path / "run")
    r = cli("run", str(cfg), "--run-dir", str(lay.root), env=THREADS)
    assert r.returncode == 0, r.stderr
    assert "plot" not in r.stderr and "skipped" not in r.stderr, r.stderr
    assert {p.name for p in lay.plots.iterdir()} >= {"accuracy.png", "per_class_delta.png"}
    md = lay.report_md.read_text()
    # fenced code blocks (the config section) are shown verbatim by every Markdown renderer, not run
    md = re.sub(r"```.*?```", "", md, flags=re.S)
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;$x$" in md
    assert "<script>" not in lay.report_html.read_text()


def test_one_failing_plot_never_costs_the_report(finished, copy_run, monkeypatch):
    from noisystudent.report import plots, write_report
    from matplotlib.figure import Figure

    def broken(run):               # fails at draw time, inside savefig
        fig = Figure()
        fig.subplots().set_title("$\\\\notacommand$")
        fig.get_axes()[0].title.set_parse_math(True)
        return fig
    monkeypatch.setattr(plots, "PLOTS", [("broken", "a broken plot", broken), *plots.PLOTS])
    import noisystudent.report as report
    monkeypatch.setattr(report, "PLOTS", plots.PLOTS)
    lay = RunLayout(copy_run)
    written = write_report(copy_run)
    names = {p.name for p in written}
    assert "broken.png" not in names and {"accuracy.png", lay.report_md.name, lay.report_html.name} <= names
    assert not list(lay.plots.glob("*.tmp")) and not (lay.plots / "broken.png").exists()


# ------------------------------------------------------------------------------------------------
# item 9: huge images, FIFOs, one-class labeled sets, SIGTERM

def test_huge_image_is_refused_and_large_ones_are_kept_small(tmp_path):
    import numpy as np
    from PIL import Image
    from noisystudent.config import SourceConfig
    from noisystudent.data import BadImage, create_source, open_image
    big = tmp_path / "big.png"
    Image.new("RGB", (10000, 10000)).save(big)                  # ~300 KB on disk, 300 MB decoded
    assert big.stat().st_size < 1_000_000
    with pytest.raises(BadImage, match=r"big.png: 10000x10000 pixels, more than the 64,000,000 an image may "
                                       r"have here; downscale it; fix or remove the file"):
        open_image(big, 3)
    data = make_data(tmp_path / "data")
    Image.new("RGB", (3000, 1500), (200, 10, 10)).save(data / "train" / "cat" / "wide.png")
    src = create_source(SourceConfig(kind="imagefolder", root=str(data / "train")), 3)
    src.max_side = 512
    cached = src.cache()
    assert max(im.shape[0] * im.shape[1] for im in cached.images) == 512 * 256
    assert cached.load(cached.ids.index("cat/wide.png")).shape == (256, 512, 3)
    # shrunk while decoding (one full-size copy in memory), to exactly what shrinking the array gives
    from noisystudent.data.decode import shrink
    wide = data / "train" / "cat" / "wide.png"
    for chans in (1, 3):
        assert np.array_equal(open_image(wide, chans, max_side=512), shrink(open_image(wide, chans), 512))


def test_fifo_in_a_manifest_is_skipped_not_waited_for(tmp_path):
    import os
    data = make_data(tmp_path / "data")
    os.mkfifo(data / "pool" / "pipe.png")
    names = sorted(p.name for p in (data / "pool").iterdir())
    (data / "pool.csv").write_text("path\n" + "\n".join(f"pool/{n}" for n in names) + "\n")
    cfg = write_cfg(tmp_path / "c.yaml", data, data__unlabeled={"kind": "manifest", "root": str(data / "pool.csv")})
    r = cli("run", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-report", env=THREADS, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "skipped 1 undecodable pool image(s) of 13" in r.stderr


def test_one_class_labeled_set_is_refused(tmp_path):
    data = make_data(tmp_path / "data")
    for split in ("train", "test"):
        for c in ("dog", "fox"):
            shutil.rmtree(data / split / c)
    r = run(write_cfg(tmp_path / "c.yaml", data), tmp_path / "run")
    assert_one_line_error(r, "config key 'data.labeled': the labeled set has images of only 1 class (cat); "
                             "a classifier needs at least 2 classes")
    assert not (tmp_path / "run").exists()


def test_sigterm_says_how_to_resume(finished, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    base, data, cfg, ref = finished
    run_dir = tmp_path / "run"
    teacher_metrics = RunLayout(run_dir).model(0, "teacher") / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "noisystudent", "run", str(cfg), "--run-dir", str(run_dir),
                             "--no-report", "--set", "teacher.epochs=500"], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, **THREADS, NOISYSTUDENT_PROGRESS="0"))
    deadline = time.monotonic() + 240          # a loaded machine can take long just to import torch
    while not teacher_metrics.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and teacher_metrics.exists()
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == ("terminated (SIGTERM): finished work is kept; rerun the same command "
                                            "to resume")
    assert "Traceback" not in err and sorted(run_dir.rglob("*.tmp")) == []
