"""Test-time augmentation: flip and shift views, how evaluation and labeling average them, and that
the key added later leaves older runs' fingerprints alone."""
import numpy as np
import pytest
import torch

from noisystudent.config import EvalConfig, LabelConfig, SourceConfig, load_config
from noisystudent.data import create_source, to_tensor_batch
from noisystudent.errors import UserError
from noisystudent.inference import tta_view_count, tta_views
from noisystudent.labels import predict_shard, predict_shards
from noisystudent.models import create_model
from noisystudent.config import config_to_dict
from noisystudent.stages.common import fingerprinted
from noisystudent.stages.evaluate import evaluate_source


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """numpy's own reflection (no edge repeat), written out: -1 -> 1, n -> n - 2."""
    i = np.abs(i)
    return np.where(i > n - 1, 2 * (n - 1) - i, i)


def _shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[..., i, j] = x[..., i + dy, j + dx], reflected at the border."""
    h, w = x.shape[-2:]
    rows = _reflect_index(np.arange(h) + dy, h)
    cols = _reflect_index(np.arange(w) + dx, w)
    return x[..., rows[:, None], cols[None, :]]


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("shift", [0, 1, 3])
def test_views_are_the_image_its_mirror_and_diagonal_shifts(hflip, shift):
    x = torch.arange(2 * 3 * 7 * 9, dtype=torch.float32).reshape(2, 3, 7, 9)
    views = tta_views(x, hflip, shift)
    assert len(views) == tta_view_count(hflip, shift) == (2 if hflip else 1) * (3 if shift else 1)
    assert views[0] is x
    bases = [x.numpy(), x.flip(-1).numpy()] if hflip else [x.numpy()]
    expected = [b for base in bases for b in ([base, _shifted(base, shift, shift), _shifted(base, -shift, -shift)]
                                              if shift else [base])]
    for v, e in zip(views, expected):
        assert v.shape == x.shape
        np.testing.assert_array_equal(v.numpy(), e)


def test_a_shift_moves_a_dot_by_that_many_pixels_each_way():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 6, 9] = 1
    _, up_left, down_right = tta_views(x, False, 2)
    assert up_left[0, 0].nonzero().tolist() == [[4, 7]]
    assert down_right[0, 0].nonzero().tolist() == [[8, 11]]


def test_a_shift_as_large_as_the_image_is_refused():
    with pytest.raises(ValueError, match="shift 8 must be smaller than the image"):
        tta_views(torch.zeros(1, 1, 8, 8), True, 8)


def _digits(n=40):
    return create_source(SourceConfig(kind="digits", split="test"), 1).subset(range(n))


def test_evaluation_scores_the_mean_probability_over_all_views():
    torch.manual_seed(0)
    model = create_model("ns_cnn_s", 10, 1).eval()
    meta = {"classes": [str(c) for c in range(10)], "image_size": 8, "mean": [0.5], "std": [0.5]}
    src = _digits()
    rep = evaluate_source(model, meta, src, flip_tta=True, shift_tta=1)
    x = to_tensor_batch(np.stack([src.load(i) for i in range(len(src))]), 8, [0.5], [0.5])
    xs = x.numpy()
    views = [torch.from_numpy(np.ascontiguousarray(v)) for b in (xs, xs[..., ::-1])
             for v in (b, _shifted(b, 1, 1), _shifted(b, -1, -1))]
    with torch.no_grad():
        p = torch.stack([model(v).softmax(1) for v in views]).mean(0)
    assert rep["top1"] == pytest.approx((p.argmax(1).numpy() == src.labels).mean())
    # and the shift changes what is scored (a random net is not translation invariant)
    flip_only = evaluate_source(model, meta, src, flip_tta=True)
    assert flip_only["nll"] != pytest.approx(rep["nll"])


def test_labeling_averages_the_probabilities_of_every_view():
    torch.manual_seed(1)
    model = create_model("ns_cnn_s", 10, 1).eval()
    src = _digits(24)
    kw = dict(image_size=8, mean=[0.5], std=[0.5], temperature=2.0, batch_size=10, device="cpu")
    table = predict_shard(model, src, 0, len(src), flip_tta=True, shift_tta=2, **kw)
    got = np.asarray(table.column("probs").to_pylist(), dtype=np.float32)
    x = to_tensor_batch(np.stack([src.load(i) for i in range(len(src))]), 8, [0.5], [0.5])
    with torch.no_grad():
        p = torch.stack([(model(v) / 2.0).softmax(1) for v in tta_views(x, True, 2)]).mean(0)
    np.testing.assert_allclose(got, p.numpy(), atol=2e-3)        # stored as float16


def test_the_shard_pipeline_gives_each_shard_its_own_table():
    """`predict_shards` (shard s+1 queued before shard s is built) = `predict_shard` per shard, in
    the order asked, the last shard short, an empty shard list nothing."""
    torch.manual_seed(2)
    model = create_model("ns_cnn_s", 10, 1).eval()
    src = _digits(24)
    kw = dict(image_size=8, mean=[0.5], std=[0.5], temperature=1.0, flip_tta=False, batch_size=4, device="cpu")
    got = list(predict_shards(model, src, [2, 0, 1], 10, **kw))
    assert [s for s, _ in got] == [2, 0, 1] and [t.num_rows for _, t in got] == [4, 10, 10]
    for s, table in got:
        assert table.equals(predict_shard(model, src, s * 10, (s + 1) * 10, **kw))
    assert list(predict_shards(model, src, [], 10, **kw)) == []


def test_shift_tta_is_checked_with_a_message_naming_the_key(tmp_path):
    for key, value in [("label.shift_tta", 9), ("evaluate.shift_tta", -1)]:
        with pytest.raises(UserError, match=rf"{key}.*0 \(off\) to 8 pixels"):
            load_config(None, [f"{key}={value}"])
    cfg = load_config(None, ["label.shift_tta=2", "evaluate.shift_tta=1"])
    assert (cfg.label.shift_tta, cfg.evaluate.shift_tta) == (2, 1)


def test_the_key_added_later_stays_out_of_the_fingerprint_at_its_default():
    # a run made before shift_tta existed keeps its labels and students after an upgrade
    def stage_section(section):     # as a stage hands its section to run_stage, nested
        return fingerprinted({"section": config_to_dict(section)})["section"]
    assert "shift_tta" not in stage_section(LabelConfig())
    assert "shift_tta" not in stage_section(EvalConfig(flip_tta=True))
    assert stage_section(LabelConfig(shift_tta=2))["shift_tta"] == 2
    assert stage_section(LabelConfig(flip_tta=True))["flip_tta"] is True


def _bench_tta():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_tta", Path(__file__).resolve().parents[1] / "benchmarks" / "tta.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tta_benchmark_settings_and_pool_scores():
    tta = _bench_tta()
    assert [tta.parse_setting(s) for s in ("none", "flip", "s2", "flip+s1")] == [(False, 0), (True, 0), (False, 2), (True, 1)]
    for bad in ("mirror", "s0", "flip+none", "sx"):
        with pytest.raises(UserError, match="use none, flip, sN or flip\\+sN"):
            tta.parse_setting(bad)
    s = tta.pool_scores(np.array([0, 1, 2, -1]), np.array([0, 2, 2, 1]), np.array([0.9, 0.2, 0.5, 0.99]), 0.3)
    assert s["pool_correct"] == pytest.approx(2 / 3)      # the unknown label (-1) is not counted
    assert (s["kept"], s["kept_correct"]) == (2, 1.0)     # 0.2 is under the threshold


def test_tta_benchmark_scores_a_trained_teacher(tmp_path, tiny_overrides, capsys):
    from conftest import cli
    run_dir = tmp_path / "run"
    assert cli("train", "digits-demo", "--run-dir", str(run_dir), *[a for o in tiny_overrides for a in ("--set", o)]).returncode == 0
    out = tmp_path / "tta.md"
    rc = _bench_tta().main(["digits-demo", "--run-dir", str(run_dir), "--settings", "none", "flip+s1",
                            "--pool-images", "60", "--out", str(out), *[a for o in tiny_overrides for a in ("--set", o)]])
    assert rc == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| none") or line.startswith("| flip+s1")]
    assert [r.split(" | ")[1] for r in rows] == ["1", "6"]                # views
    assert all(0 <= float(r.split(" | ")[4]) <= 100 for r in rows)       # pool argmax correct (%)
    assert _bench_tta().main(["digits-demo", "--run-dir", str(tmp_path / "empty")]) == 2
    assert "no trained model there" in capsys.readouterr().err


def test_predict_with_views_gives_the_label_stages_probabilities():
    """`predict(..., flip_tta, shift_tta)` (and `noisystudent predict --flip-tta --shift-tta`) averages
    the views' probabilities as the label stage does, so a run's pseudo-labels can be reproduced from
    its model file; without views it is the plain forward pass."""
    from noisystudent.prediction import predict
    torch.manual_seed(2)
    model = create_model("ns_cnn_s", 10, 1).eval()
    src = _digits(24)
    meta = {"image_size": 8, "in_chans": 1, "classes": [str(c) for c in range(10)], "mean": [0.5], "std": [0.5]}
    images = np.stack([src.load(i) for i in range(len(src))])
    label_kw = dict(image_size=8, mean=[0.5], std=[0.5], temperature=1.0, batch_size=10, device="cpu")
    for flip, shift in ((False, 0), (True, 0), (True, 2)):
        rows = predict((model, meta), images, top_k=10, batch_size=7, workers=0, flip_tta=flip, shift_tta=shift)
        got = np.array([[dict(zip(r["top_classes"], r["top_probs"]))[str(c)] for c in range(10)] for r in rows])
        want = predict_shard(model, src, 0, len(src), flip_tta=flip, shift_tta=shift, **label_kw)
        np.testing.assert_allclose(got, np.asarray(want.column("probs").to_pylist()), atol=2e-3)   # float16 there
    with pytest.raises(UserError, match="shift_tta -1 must be >= 0"):
        predict((model, meta), images, shift_tta=-1)
    # unasked, the views of the run that wrote the model (its evaluate config, kept in the model file)
    run_meta = dict(meta, config={"evaluate": {"flip_tta": True, "shift_tta": 2}})
    assert predict((model, run_meta), images, workers=0) == predict((model, meta), images, workers=0, flip_tta=True, shift_tta=2)
    assert predict((model, run_meta), images, workers=0, flip_tta=False, shift_tta=0) == predict((model, meta), images, workers=0)
