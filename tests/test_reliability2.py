"""Reliability, second pass (issue 17): data changes, stale results, user files, hostile configs and
model files. Each test here failed before its fix. End-to-end cases share one tiny finished run
(`ref_run`, module scope) and copy it, so the whole file adds well under a minute to `make test`."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import types
import typing
from pathlib import Path

import pytest
import yaml

from noisystudent.config import RULES, Config, load_config
from noisystudent.errors import UserError

from test_bad_inputs import THREADS, assert_one_line_error, make_data, run, write_cfg

from conftest import cli


# ------------------------------------------------------------------------------------------------
# item 6: every numeric key has a range, checked up front (one table, tested by a loop over it)

def _field_type(key: str):
    """The annotation of a config key ('teacher.noise.drop_rate', 'data.extra_test[].seed')."""
    from noisystudent.config import SourceConfig
    tp = Config
    for part in key.replace("[]", "").split("."):
        hints = typing.get_type_hints(tp)
        tp = hints[part]
        if part == "extra_test":
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
        key = prefix + f.name
        if f.name == "extra_test":
            from noisystudent.config import SourceConfig
            out += _numeric_keys(SourceConfig, key + "[].")
        elif dataclasses.is_dataclass(hint):
            out += _numeric_keys(hint, key + ".")
        elif _numeric_kind(hint):
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
    (["label.batch_size=0"], "config key 'label.batch_size': must be >= 1"),
    (["evaluate.batch_size=0"], "config key 'evaluate.batch_size': must be >= 1"),
    (["data.workers=-1"], "config key 'data.workers': must be in [0, 256]"),
    (["teacher.momentum=-1"], "config key 'teacher.momentum': must be in [0, 1)"),
    (["teacher.label_smoothing=5"], "config key 'teacher.label_smoothing': must be in [0, 1)"),
    (["teacher.weight_decay=.nan"], "config key 'teacher.weight_decay': must be >= 0, got nan"),
])
def test_issue_config_values_fail_up_front_with_one_line(tmp_path, sets, message):
    """The issue's cases, through the CLI: one line, exit 2, nothing written (before: internal errors,
    some after the teacher trained)."""
    args = ["run", "digits-demo", "--run-dir", str(tmp_path / "run"), "--no-report"]
    for s in sets:
        args += ["--set", s]
    r = cli(*args, env=THREADS)
    assert assert_one_line_error(r, message) == f"error: {message}"
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
    r = cli("run", str(p), "--run-dir", str(tmp_path / "run"), env=THREADS, timeout=60)
    assert_one_line_error(r, f"{p}: YAML aliases are not allowed in configs (*{alias} on line {line}); "
                             "write the values out")
    assert not (tmp_path / "run").exists()


def test_yaml_alias_in_a_set_value_is_refused():
    with pytest.raises(UserError, match=r"--set models: YAML aliases are not allowed"):
        load_config(None, ["models=[&a x, *a]"])
