import pytest

from noisystudent.config import Config, config_hash, load_config
from noisystudent.errors import UserError


def test_defaults_and_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nteacher:\n  epochs: 7\nstudent:\n  noise: {drop_path_rate: 0.3}\n")
    cfg = load_config(p, ["teacher.lr=0.2", "select.per_class=50", "models=[a, b]", "data.hflip=true"])
    assert cfg.name == "x" and cfg.teacher.epochs == 7 and cfg.teacher.lr == 0.2
    assert cfg.student.noise.drop_path_rate == 0.3 and cfg.student.noise.randaugment is True
    assert cfg.select.per_class == 50 and cfg.models == ["a", "b"] and cfg.data.hflip is True
    assert cfg.model_for_round(0) == "a" and cfg.model_for_round(5) == "b"


def test_student_noise_defaults_match_paper():
    cfg = Config()
    assert cfg.student.noise.drop_path_rate == 0.2      # survival 0.8 at the last layer
    assert cfg.select.threshold == "auto" and cfg.student.soft is True and cfg.student.ratio == 3


@pytest.mark.parametrize("override, fragment", [
    ("teacher.epoch=3", "unknown config key 'teacher.epoch' (did you mean 'teacher.epochs'?)"),
    ("nosuch=1", "unknown config key 'nosuch'"),
    ("teacher.epochs=abc", "config key 'teacher.epochs': expected an integer, got 'abc'"),
    ("teacher.optimizer=adamz", "config key 'teacher.optimizer': unknown optimizer 'adamz'; allowed: any of timm"),
    ("data.hflip=3", "config key 'data.hflip': expected true or false"),
    ("select.threshold=1.5", "config key 'select.threshold': must be in [0, 1) or 'auto'"),
    ("select.threshold=high", "config key 'select.threshold': 'high' is not a valid float | 'auto'"),
    ("select.per_class=many", "config key 'select.per_class'"),
    ("data.labeled.kind=zip", "config key 'data.labeled.kind': unknown source 'zip'; choose one of digits, folder, idx, imagefolder, manifest, tar"),
    ("student.ratio=0", "config key 'student.ratio': must be >= 1"),
    ("teacher", "--set expects key=value"),
    # list entries are checked element by element, naming the element
    ("evaluate.severities=[1, two]", "config key 'evaluate.severities[1]': expected an integer, got 'two'"),
    ("evaluate.severities=[1, 9]", "config key 'evaluate.severities': each must be in 1..5"),
    ("evaluate.fgsm_eps=[0.01, 8]", "config key 'evaluate.fgsm_eps': each must be in [0, 1)"),
    ("evaluate.corruptions=[fog, 3]", "config key 'evaluate.corruptions[1]': expected a string, got 3"),
    ("models=[ns_cnn_s, [x]]", "config key 'models[1]': expected a string"),
    ("data.mean=[0.5, x]", "config key 'data.mean[1]': expected a number, got 'x'"),
    ("data.std=[0.5, 0.5]", "config key 'data.std': needs one value per channel (data.in_chans=1), got 2"),
    ("data.std=[0]", "config key 'data.std': every value must be > 0"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(UserError) as e:
        load_config(None, ["data.in_chans=1", override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_list_elements_are_coerced():
    cfg = load_config(None, ["evaluate.fgsm_eps=[0, 1e-2]", "data.mean=[1]", "evaluate.severities=[5]"])
    assert cfg.evaluate.fgsm_eps == [0.0, 0.01] and all(type(e) is float for e in cfg.evaluate.fgsm_eps)
    assert cfg.data.mean == [1.0] and type(cfg.data.mean[0]) is float and cfg.evaluate.severities == [5]


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(lst)


def test_config_hash_changes_with_content():
    a, b = Config(), Config()
    assert config_hash(a) == config_hash(b)
    b.student.epochs += 1
    assert config_hash(a) != config_hash(b)


def test_source_kinds_come_from_the_registry():
    """A kind added with register_source is a valid config value (no fixed list to edit)."""
    from noisystudent.data import register_source
    from noisystudent.data.sources import _READERS
    from noisystudent.config import load_config
    register_source("my_kind")(_READERS["digits"])
    try:
        cfg = load_config("configs/digits-demo.yaml", ["data.test.kind=my_kind", "data.test.root=."])
        assert cfg.data.test.kind == "my_kind"
    finally:
        _READERS.pop("my_kind")


def test_extra_test_sets_are_built(tmp_path):
    """data.extra_test (e.g. an out-of-domain test set) becomes one source per entry."""
    from noisystudent.config import load_config
    from noisystudent.stages.common import RunContext
    cfg = load_config("configs/digits-demo.yaml", ["data.extra_test=[{kind: digits, split: test, per_class: 3}]"])
    ctx = RunContext(cfg, tmp_path)
    assert [len(s) for s in ctx.extra_tests] == [30]
    assert isinstance(ctx.data_fingerprint("extra_test"), list)


def test_bundled_configs_match_the_repository_copies():
    """configs/*.yaml (what the docs show) and the installed package's copies must not drift."""
    from conftest import ROOT
    for f in sorted((ROOT / "configs").glob("*.yaml")):
        assert f.read_bytes() == (ROOT / "src" / "noisystudent" / "configs" / f.name).read_bytes(), f.name
