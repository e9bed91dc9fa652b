"""Issue 13: the noise and the schedule do what the config says (each test failed before its fix)."""

import numpy as np
import pytest
import torch
from PIL import Image

from noisystudent.config import NoiseConfig, SourceConfig, TrainConfig, load_config
from noisystudent.data import LabeledDataset, create_source
from noisystudent.data.transforms import TrainTransform, cutout_
from noisystudent.batches import LabeledBatches
from noisystudent.distributed import autocast_dtype
from noisystudent.engine import fit
from noisystudent.schedule import create_scheduler, effective_ema_decay, ema_decay_at, plan_steps
from noisystudent.errors import UserError
from noisystudent.models import create_model
from noisystudent.pseudo import joint_loss, pseudo_weight

from conftest import ROOT, twin_student_overrides

DIGITS = ROOT / "configs" / "digits-demo.yaml"


# 1. the learning rate anneals to lr_min at the last step ------------------------------------------

@pytest.mark.parametrize("total,warmup", [(100, 10), (37, 0), (5, 2), (1000, 250)])
def test_cosine_reaches_lr_min_at_the_last_step(total, warmup):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = create_scheduler(opt, 0.1, total, warmup)
    lrs = []
    for t in range(total):
        sched.step_update(t)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[-1] == pytest.approx(0.1 * 1e-3)
    assert max(lrs) == pytest.approx(0.1, rel=0.05)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))   # monotone after warmup


def _fit_digits(tmp_path, **train):
    """A plain teacher fit on 50 digits (batch 8): what `fit` does with the given TrainConfig keys."""
    ds = LabeledDataset(create_source(SourceConfig(kind="digits", per_class=5), 1),
                        lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255)
    cfg = TrainConfig(batch_size=8, lr=0.05, noise=NoiseConfig(False, cutout=0.0, drop_rate=0.0, drop_path_rate=0.0),
                      **train)
    return fit(create_model("ns_cnn_s", 10, 1), cfg, LabeledBatches(ds, cfg.batch_size), out_dir=tmp_path, seed=0,
               meta={})


def test_fit_trains_exactly_the_configured_steps_and_ends_at_lr_min(tmp_path):
    res = _fit_digits(tmp_path, steps=13, warmup_steps=3)
    assert sum(h["steps"] for h in res.history) == 13           # 50 images / 8 = 7 per epoch: 7 + 6
    assert res.history[-1]["lr"] == pytest.approx(0.05 * 1e-3)


def test_plan_steps_prefers_steps_over_epochs():
    assert plan_steps(TrainConfig(epochs=30, steps=0, warmup_epochs=1), 2) == (60, 2)
    assert plan_steps(TrainConfig(epochs=30, steps=3000, warmup_steps=100), 2) == (3000, 100)
    assert plan_steps(TrainConfig(epochs=30), 2, steps=77)[0] == 77


# 2. RandAugment's geometry scales with the image -------------------------------------------------

def _shift_of(tf: TrainTransform, size: int) -> float:
    op = next(o for o in tf.ra.ops if o.name == "TranslateXRel")
    a = np.zeros((size, size, 3), np.uint8)
    a[:, size // 2] = 255
    out = np.asarray(op(Image.fromarray(a)).convert("L"), dtype=np.float64)
    col = out.sum(0)
    return abs((col * np.arange(size)).sum() / col.sum() - size // 2)


@pytest.mark.parametrize("size", [28, 32])
def test_largest_randaugment_shift_is_an_eighth_of_the_image(size):
    tf = TrainTransform(size, 3, [0.0] * 3, [1.0] * 3, randaugment=True, ra_magnitude=10)   # fill 0
    assert _shift_of(tf, size) == pytest.approx(size / 8, abs=0.3)     # 3.5 px at 28, 4 px at 32


def test_randaugment_applies_every_chosen_op_at_fixed_magnitude_by_default():
    tf = TrainTransform(32, 3, [0.5] * 3, [0.5] * 3, randaugment=True, ra_magnitude=9)
    assert all(o.prob == 1.0 and o.magnitude_std == 0 for o in tf.ra.ops)
    tf = TrainTransform(32, 3, [0.5] * 3, [0.5] * 3, randaugment=True, ra_prob=0.5, ra_mstd=0.5)
    assert all(o.prob == 0.5 and o.magnitude_std == 0.5 for o in tf.ra.ops)


# 3. magnitudes above 10 are not silently clamped -------------------------------------------------

def test_magnitude_above_ten_means_more():
    def rotated(m):
        tf = TrainTransform(32, 3, [0.5] * 3, [0.5] * 3, randaugment=True, ra_magnitude=m)
        op = next(o for o in tf.ra.ops if o.name == "Rotate")
        a = np.zeros((32, 32, 3), np.uint8)
        a[4:8, 10:22] = 255
        import random
        random.seed(0)
        return np.asarray(op(Image.fromarray(a)))
    assert not np.array_equal(rotated(27), rotated(10))
    assert np.array_equal(rotated(10), rotated(10))


# 4. EMA: the decay that runs is explicit and sized to the run ------------------------------------

def test_effective_ema_decay_is_sized_to_the_run():
    assert effective_ema_decay(0.999, 600) == pytest.approx(1 - 10 / 600)
    assert effective_ema_decay(0.999, 100_000) == pytest.approx(0.999)
    assert effective_ema_decay(0.0, 100) == 0.0
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10_000, 0.999) == pytest.approx(0.999)


def test_fit_records_the_ema_decay_it_used(tmp_path):
    res = _fit_digits(tmp_path, steps=20, ema_decay=0.999)
    assert res.history[-1]["ema_decay"] == pytest.approx(0.5)     # 1 - 10/20


# 5. loss weighting ---------------------------------------------------------------------------------

def test_per_image_weighting_weighs_every_image_the_same():
    torch.manual_seed(0)
    logits = torch.randn(2 + 6, 4)
    labels = torch.tensor([1, 3])
    hard = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    loss, _ = joint_loss(logits, 2, labels, hard, pseudo_weight("per_image", 1.0, 3))
    per_row = torch.nn.functional.cross_entropy(logits, torch.cat([labels, hard.argmax(1)]), reduction="none")
    assert loss == pytest.approx(float(per_row.sum() / 2), rel=1e-5)
    assert pseudo_weight("mean", 0.5, 3) == 0.5


# Cutout ---------------------------------------------------------------------------------------------

def test_cutout_zeroes_a_square_of_the_configured_side():
    x = torch.ones(1, 32, 32)
    g = torch.Generator().manual_seed(0)
    zeros = []
    for _ in range(50):
        y = cutout_(x.clone(), 0.5, g)
        zeros.append(int((y == 0).sum()))
        rows, cols = torch.nonzero(y[0] == 0, as_tuple=True)
        assert rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16
    assert max(zeros) == 256 and min(zeros) > 0      # a full 16x16 square, clipped near the border


# amp: auto ---------------------------------------------------------------------------------------

def test_amp_auto_picks_bf16_only_where_native(monkeypatch):
    import noisystudent.distributed as eng
    monkeypatch.setattr(eng, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype("auto", torch.device("cpu")) is None
    monkeypatch.setattr(eng, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype("off", torch.device("cpu")) is None


@pytest.mark.parametrize("capability, expect", [
    ((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16),   # H100/H200, A100, RTX 30xx
    ((7, 5), torch.float16), ((7, 0), torch.float16),   # T4, V100: bf16 only emulated; fp16 tensor cores
    ((6, 0), None)])                                    # P100: no tensor cores, fp32
def test_amp_auto_on_a_gpu_follows_its_compute_capability(monkeypatch, capability, expect):
    """Without a GPU: the capability is faked, nothing runs on a device. torch's own
    `is_bf16_supported()` says True on a T4 (emulation), which made `auto` pick slow bf16 there."""
    import noisystudent.distributed as dist_mod
    monkeypatch.setattr(dist_mod, "cuda_capability", lambda device: capability)
    assert autocast_dtype("auto", torch.device("cuda")) == expect
    assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16
    assert autocast_dtype("off", torch.device("cuda")) is None


def test_forced_bf16_on_an_old_gpu_warns_once(monkeypatch, caplog):
    import noisystudent.distributed as dist_mod
    monkeypatch.setattr(dist_mod, "cuda_capability", lambda device: (7, 5))
    monkeypatch.setattr(dist_mod, "_warned_bf16", False)
    with caplog.at_level("WARNING", logger="noisystudent"):
        assert autocast_dtype("bf16", torch.device("cuda")) == torch.bfloat16
        assert autocast_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    assert caplog.text.count("amp=bf16 on a GPU without native bf16: expect it to run many times slower than "
                             "fp16 (use amp: auto)") == 1


def test_amp_off_from_yaml_is_accepted():
    assert load_config(DIGITS, ["teacher.amp=off"]).teacher.amp == "off"


# Leakage guards and seeds ------------------------------------------------------------------------

def test_labeled_and_pool_must_not_share_images():
    from noisystudent.pipeline import check_inputs
    from noisystudent.stages.common import RunContext
    # the pool as "the rest of a per-class draw" with another seed than the labeled draw: 84 shared
    cfg = load_config(DIGITS, ["data.val=null", "data.labeled.seed=1",
                               "data.unlabeled={kind: digits, split: train, per_class: 10, subset: rest, seed: 0}"])
    with pytest.raises(UserError, match=r"data.labeled and data.unlabeled share \d+ image"):
        check_inputs(RunContext(cfg, "/tmp/unused"))


def test_exclude_carves_a_disjoint_validation_set():
    from noisystudent.stages.common import RunContext
    cfg = load_config(DIGITS, ["data.val={kind: digits, split: train, per_class: 5, exclude: [labeled]}",
                               "data.unlabeled={kind: digits, split: train, exclude: [labeled, val]}"])
    ctx = RunContext(cfg, "/tmp/unused")
    lab, val, pool = set(ctx.labeled.ids), set(ctx.val.ids), set(ctx.pool.ids)
    assert len(val) == 50 and not (lab & val) and not (lab & pool) and not (val & pool)
    assert len(lab) + len(val) + len(pool) == 1500
    ctx.check_disjoint()


def test_exclude_cycle_is_refused():
    with pytest.raises(UserError, match="cycle"):
        load_config(DIGITS, ["data.val={kind: digits, split: train, per_class: 5, exclude: [labeled]}",
                             "data.labeled.exclude=[val]"])


def test_run_seed_redraws_the_labeled_set():
    from noisystudent.stages.common import RunContext
    a = RunContext(load_config(DIGITS, ["seed=0"]), "/tmp/x").labeled.ids
    b = RunContext(load_config(DIGITS, ["seed=3"]), "/tmp/x").labeled.ids
    assert load_config(DIGITS, ["seed=3"]).data.unlabeled.seed == 3
    assert a != b


def test_hide_labels_is_gone():
    with pytest.raises(UserError, match="unknown config key 'data.unlabeled.hide_labels'"):
        load_config(DIGITS, ["data.unlabeled.hide_labels=true"])


def test_unknown_variant_is_refused():
    with pytest.raises(UserError, match=r"variants\[0\].*allowed: no_noise"):
        load_config(DIGITS, ["variants=[nonoise]"])


@pytest.mark.parametrize("entry,message", [
    ("{light: {noise.ra_magnitud: 5}}", r"unknown config key 'variants\[0\].light.noise.ra_magnitud' \(did you mean"),
    ("{light: {noise.ra_magnitude: -1}}", r"'variants\[0\].light.noise.ra_magnitude': must be in \[0, 30\]"),
    ("{light: {lr: x}}", r"'variants\[0\].light.lr': expected a number"),
    ("{light: {steps: 5}}", r"'variants\[0\].light.steps': a variant trains the noisy student's steps"),
    ("{no_noise: {lr: 1}}", r"'no_noise' is a built-in"),
    ("{nonoise: {lr: 1}}", r"'nonoise' is a built-in variant's name or folder"),
    ("{Light: {lr: 1}}", r"lower-case letters"),
    ("{light: {}}", r"'variants\[0\].light': expected a mapping of student keys"),
    ("{a: {lr: 1}, b: {lr: 2}}", r"one-key mapping"),
])
def test_declared_variants_are_checked_like_config_keys(entry, message):
    with pytest.raises(UserError, match=message):
        load_config(DIGITS, [f"variants=[{entry}]"])


def test_declared_variant_changes_only_its_keys():
    from noisystudent.variants import variant_config, variant_names
    cfg = load_config(DIGITS, ["variants=[supervised, {light: {student.noise.cutout: 0.1, lr: 0.02}}]"])
    assert variant_names(cfg.variants) == ["supervised", "light"]
    v = variant_config(cfg.student, "light", cfg.variants)
    assert (v.noise.cutout, v.lr) == (0.1, 0.02) and v.noise.ra_magnitude == cfg.student.noise.ra_magnitude
    assert cfg.student.noise.cutout != 0.1 or cfg.student.lr != 0.02          # the student is untouched
    with pytest.raises(UserError, match="twice"):
        load_config(DIGITS, ["variants=[{l: {lr: 0.1}}, {l: {lr: 0.2}}]"])


# Variants train beside the student for exactly its number of steps ---------------------------------

def test_variants_are_compute_matched(tmp_path):
    from noisystudent.artifacts import read_json
    from noisystudent.layout import RunLayout, role_label
    from noisystudent.pipeline import run
    lay = RunLayout(tmp_path)
    cfg = load_config(DIGITS, ["rounds=1", "teacher.steps=60", "student.steps=30", "student.batch_size=8",
                               "variants=[no_noise, supervised, two_step, {light: {noise.ra_magnitude: 3}}]",
                               "data.unlabeled.fraction=0.3"])
    summary = run(cfg, run_dir=tmp_path, report=False)
    steps = {w: read_json(lay.model(1, w) / "stage.json")["info"]["steps"]
             for w in ("student", "student_nonoise", "student_supervised", "student_two_step", "student_light")}
    assert set(steps.values()) == {30}, steps
    # a declared variant trains the student config with its changes, and records them
    noise = {w: read_json(lay.model(1, w) / "stage.json")["config"]["train"]["noise"]
             for w in ("student", "student_light")}
    assert noise["student_light"] == dict(noise["student"], ra_magnitude=3)
    # the summary, the layout and the report name it
    assert (1, "student_light") in lay.training_stages()
    assert role_label("student_light") == "student (light)"
    assert "student_light" in {m["which"] for m in summary["models"]}
    hist = [read_json(lay.model(1, "student_supervised") / "stage.json")["info"]]
    assert hist[0]["images_seen"] == 30 * 8 * 4           # batches of batch_size x (1 + ratio), labeled only
    assert {m["which"] for m in summary["models"]} >= {"student_supervised", "student_two_step"}
    assert all(m["val_top1"] is not None for m in summary["models"])


def test_variants_train_in_the_configured_round(tmp_path):
    """`variants_round: 2` compares a two-round recipe's final student with variants on round 2's
    selection (same steps); round 1 gets none. A round the run does not have is refused by name."""
    from noisystudent.artifacts import read_json
    from noisystudent.layout import RunLayout
    from noisystudent.pipeline import run
    with pytest.raises(UserError, match=r"config key 'variants_round': must be a round of the run, 1 to rounds=1"):
        load_config(DIGITS, ["rounds=1", "variants=[no_noise]", "variants_round=2"])
    with pytest.raises(UserError, match=r"'variants_round': must be a round of the run"):    # the shorthand too
        load_config(DIGITS, ["rounds=1", "variants=[]", "ablation_no_noise=true", "variants_round=2"])
    lay = RunLayout(tmp_path)
    cfg = load_config(DIGITS, ["rounds=2", "teacher.steps=40", "student.steps=20", "student.batch_size=8",
                               "variants=[no_noise]", "variants_round=2", "data.unlabeled.fraction=0.3"])
    summary = run(cfg, run_dir=tmp_path, report=False)
    assert not (lay.model(1, "student_nonoise")).exists()
    info = read_json(lay.model(2, "student_nonoise") / "stage.json")["info"]
    assert info["steps"] == 20 and info["pseudo_images"] > 0
    assert (2, "student_nonoise") in {(m["round"], m["which"]) for m in summary["models"]}


def test_supervised_twin_needs_the_students_model_steps_batch_and_noise():
    """The teacher is the compute-matched supervised baseline only if trained exactly as it: each
    difference is named (so a recipe cannot skip the baseline stage by accident)."""
    from noisystudent.variants import supervised_twin_differences as diff
    base = ROOT / "configs" / "fashion-mnist-1k.yaml"
    # a student from scratch with the teacher's length: the teacher is the baseline
    scratch = twin_student_overrides(base)
    bundled = load_config(base)
    steps = bundled.teacher.steps
    assert diff(load_config(base, scratch)) == []
    assert any("init_from_teacher" in w for w in diff(load_config(base, [])))   # the bundled one starts from it
    for over, needle in [("teacher.steps=1000", f"steps 1000 vs {steps}"),
                         ("teacher.batch_size=64", "images per step 64 vs 32 x (1 + 3)"),
                         ("teacher.noise.cutout=0", "noise"),
                         ("teacher.lr=0.1", "lr 0.1 vs 0.05"),
                         ("models=[ns_cnn_s, ns_cnn_m]", "model ns_cnn_s vs ns_cnn_m"),
                         ("student.init_from_teacher=true", "init_from_teacher")]:
        why = diff(load_config(base, [*scratch, over]))
        assert any(needle in w for w in why), (over, why)
    assert diff(load_config(base, [*scratch, "teacher.channels_last=false"])) == []     # speed only
    assert any(f"steps {steps} vs {bundled.student.steps}" in w for w in diff(load_config(base, scratch[:1])))   # the bundled student is shorter


def test_init_from_teacher_with_a_larger_student_fails_before_training():
    """The bundled Fashion-MNIST recipe starts its student from the teacher; asking for a larger
    student must fail at load time with the key and the way out, not after the teacher has trained."""
    from noisystudent.errors import UserError
    base = ROOT / "configs" / "fashion-mnist-1k.yaml"
    with pytest.raises(UserError, match=r"'student.init_from_teacher'.*round 1 trains ns_cnn_m from a ns_cnn_s "
                                        r"teacher; set student.init_from_teacher=false"):
        load_config(base, ["models=[ns_cnn_s, ns_cnn_m]"])
    with pytest.raises(UserError, match="round 2 trains ns_cnn_m"):     # a later round's change is caught too
        load_config(base, ["rounds=2", "models=[ns_cnn_s, ns_cnn_s, ns_cnn_m]"])
    assert load_config(base, ["models=[ns_cnn_s, ns_cnn_m]", "student.init_from_teacher=false"]).models[1] == "ns_cnn_m"
    assert load_config(base, ["rounds=3"]).student.init_from_teacher        # one model for every round: fine


def test_short_schedule_warns(caplog):
    from noisystudent.stages.train import warn_short_schedule
    with caplog.at_level("WARNING", logger="noisystudent"):
        warn_short_schedule("teacher", 60, 100, 64)          # the held-out 10-labels-per-class case
    assert "only 60 optimizer steps" in caplog.text and "teacher.steps" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="noisystudent"):
        warn_short_schedule("student r1", 2000, 1000, 64)
    assert caplog.text == ""
