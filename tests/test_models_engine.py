import numpy as np
import pytest
import torch

from noisystudent.config import NoiseConfig, SourceConfig, TrainConfig
from noisystudent.data import LabeledDataset, PseudoDataset, create_source, create_train_transform
from noisystudent.batches import JointBatches, LabeledBatches
from noisystudent.engine import fit
from noisystudent.errors import UserError
from noisystudent.models import count_params, create_model, freeze_stages
from noisystudent.artifacts import load_checkpoint


@pytest.mark.parametrize("name", ["ns_cnn_s", "ns_cnn_m", "ns_wrn_28_2", "resnet18"])
def test_create_model_shapes(name):
    m = create_model(name, num_classes=7, in_chans=1, drop_rate=0.1, drop_path_rate=0.2).eval()
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_small_models_grow():
    sizes = [count_params(create_model(n, 10)) for n in ("ns_cnn_s", "ns_cnn_m", "ns_cnn_l")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 10


def test_stochastic_depth_last_block_survival():
    m = create_model("ns_cnn_m", 10, drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob for s in m.stages for b in s if hasattr(b.drop_path, "drop_prob")]
    assert rates[-1] == pytest.approx(0.2) and rates == sorted(rates)


def test_unknown_model_lists_close_matches():
    with pytest.raises(UserError, match="unknown model 'resnet1800'; did you mean: resnet18"):
        create_model("resnet1800", 10)


def test_freeze_stages_really_freezes():
    m = create_model("ns_cnn_m", 10)
    frozen = freeze_stages(m, 1)
    assert "stem" in frozen and any(f.startswith("stages.0") for f in frozen)
    assert not any(f.startswith("stages.1") for f in frozen)
    bn = m.stages[0][0].bn1
    before = bn.running_mean.clone()
    m.train()
    out = m(torch.randn(8, 3, 16, 16) * 3 + 1)
    out.sum().backward()
    assert m.stem.weight.grad is None and not m.stem.weight.requires_grad
    assert torch.equal(bn.running_mean, before)                      # frozen BN stats unchanged
    assert m.stages[1][0].conv1.weight.grad is not None             # later stages still train
    assert not torch.equal(m.stages[1][0].bn1.running_mean, torch.zeros_like(m.stages[1][0].bn1.running_mean))


def _digits(per_class=6):
    return create_source(SourceConfig(kind="digits", per_class=per_class), 1)


def _tf(noise=None):
    from noisystudent.config import DataConfig
    return create_train_transform(DataConfig(image_size=8, in_chans=1), noise)


def _cfg(**kw):
    base = dict(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.0, noise=NoiseConfig(False, drop_rate=0.0, drop_path_rate=0.0))
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss(tmp_path):
    ds = LabeledDataset(_digits(10), _tf())
    res = fit(create_model("ns_cnn_s", 10, 1), _cfg(epochs=6), LabeledBatches(ds, 16), out_dir=tmp_path, seed=0, meta={})
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0] * 0.8
    assert {"lr", "images_per_s", "epoch", "loss_labeled"} <= set(res.history[0])
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 6


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    ds = LabeledDataset(_digits(), _tf(NoiseConfig(randaugment=True)))
    cfg = _cfg(ema_decay=0.9, noise=NoiseConfig(randaugment=True, drop_rate=0.3, drop_path_rate=0.2))

    def model():
        torch.manual_seed(1)
        return create_model("ns_cnn_s", 10, 1, 0.3, 0.2)
    ref = fit(model(), cfg, LabeledBatches(ds, cfg.batch_size), out_dir=tmp_path / "a", seed=5, meta={"k": 1}).model.state_dict()

    class Killed(Exception):
        pass

    def die_in_epoch_2(m):
        if len(calls) == 1:
            raise Killed()          # dies during epoch 2, before its checkpoint is written
        calls.append(1)
        return {}
    calls = []
    with pytest.raises(Killed):
        fit(model(), cfg, LabeledBatches(ds, cfg.batch_size), out_dir=tmp_path / "b", seed=5, meta={}, eval_fn=die_in_epoch_2)
    ck = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["ema"] is not None and ck["optimizer"]["state"]
    res = fit(model(), cfg, LabeledBatches(ds, cfg.batch_size), out_dir=tmp_path / "b", seed=5, meta={})
    assert res.resumed_from == 1 and len(res.history) == 3
    for k, v in ref.items():
        assert torch.equal(v, res.model.state_dict()[k]), k


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path):
    from noisystudent.errors import TrainingDiverged
    ds = LabeledDataset(_digits(), _tf())
    cfg = _cfg(epochs=2, lr=1e12)
    # It diverges within epoch 1, so there is no checkpoint to keep, and the message must not claim one
    # (tests/test_bad_inputs.py covers divergence after a good epoch: that checkpoint is kept).
    with pytest.raises(TrainingDiverged, match="loss became .* no epoch had finished, so there is no checkpoint"):
        fit(create_model("ns_cnn_s", 10, 1), cfg, LabeledBatches(ds, cfg.batch_size), out_dir=tmp_path, seed=0, meta={})
    assert not (tmp_path / "checkpoint.pt").exists()


def test_loss_read_every_few_steps_still_names_the_first_bad_step(tmp_path):
    """On a GPU the trainer reads the loss every `check_every` steps (no host sync per step): a NaN at
    step 2 found at the step-4 read is still reported as step 2, with the loss value and no checkpoint."""
    from noisystudent.batches import joint_step_loss
    from noisystudent.engine import Trainer
    from noisystudent.errors import TrainingDiverged
    ds = LabeledDataset(_digits(), _tf())
    cfg = _cfg(epochs=1)
    real, calls = joint_step_loss(), {"n": 0}

    def poisoned(logits, b):
        calls["n"] += 1
        loss, parts = real(logits, b)
        return (loss * float("nan") if calls["n"] == 2 else loss), parts
    tr = Trainer(create_model("ns_cnn_s", 10, 1), cfg, LabeledBatches(ds, cfg.batch_size), out_dir=tmp_path,
                 seed=0, meta={}, loss=poisoned)
    tr.check_every = 4
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 2;"):
        tr.fit()
    assert calls["n"] == 4                       # found at the read after step 4, not later
    assert not (tmp_path / "checkpoint.pt").exists()


def test_joint_batches_have_the_configured_ratio_and_replay():
    lab = LabeledDataset(_digits(), _tf())
    pool = create_source(SourceConfig(kind="digits", per_class=6, subset="rest", fraction=0.1), 1)
    targets = np.eye(10, dtype=np.float32)[np.zeros(len(pool), int)]
    pse = PseudoDataset(pool, np.arange(len(pool)), targets, np.ones(len(pool), int), _tf())
    B, ratio, steps = 4, 3, 5
    src = JointBatches.of_datasets(lab, pse, B, ratio)
    assert src.steps_per_epoch() == -(-len(pse) // (B * ratio))      # an epoch is one pass over the pool
    torch.manual_seed(0)                    # augmentation draws from the RNGs the trainer seeds per epoch
    batches = list(src.epoch(seed=1, epoch=0, steps=steps))
    assert len(batches) == steps
    for b in batches:
        assert len(b.x) == B + ratio * B and len(b.y) == B and b.targets.shape == (ratio * B, 10)
    torch.manual_seed(0)
    again = list(src.epoch(seed=1, epoch=0, steps=steps))           # a resumed epoch sees the same batches
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(batches, again))
    torch.manual_seed(0)
    other = list(src.epoch(seed=1, epoch=1, steps=steps))
    assert not all(torch.equal(a.x, b.x) for a, b in zip(batches, other))


def test_a_new_mode_is_a_source_and_a_loss(tmp_path):
    """The trainer takes any batch source and step loss: here pseudo-only batches with a loss that
    only sees the pseudo rows (no new branch in the loop)."""
    from noisystudent.batches import PseudoBatches
    pool = create_source(SourceConfig(kind="digits", per_class=6), 1)
    targets = np.eye(10, dtype=np.float32)[pool.labels]
    pse = PseudoDataset(pool, np.arange(len(pool)), targets, np.ones(len(pool), int), _tf())
    seen = []

    def loss(logits, b):
        seen.append((len(b.y), len(b.targets)))
        return -(b.targets * logits.log_softmax(1)).sum(1).mean(), {"loss_pseudo": 0.0}
    res = fit(create_model("ns_cnn_s", 10, 1), _cfg(epochs=2), PseudoBatches(pse, 12), loss=loss,
              out_dir=tmp_path, seed=0, meta={})
    assert len(res.history) == 2 and set(seen) == {(0, 12)}


def test_noise_switches_change_model_and_transform():
    x = torch.randn(4, 1, 8, 8)
    noisy = create_model("ns_cnn_m", 10, 1, drop_rate=0.5, drop_path_rate=0.5).train()
    torch.manual_seed(0)
    a = noisy(x)
    torch.manual_seed(1)
    b = noisy(x)
    assert not torch.allclose(a, b)                     # dropout / stochastic depth active in train mode
    clean = create_model("ns_cnn_m", 10, 1).train()
    clean.load_state_dict(noisy.state_dict())
    torch.manual_seed(0)
    c = clean(x)
    torch.manual_seed(1)
    assert torch.allclose(c, clean(x))                  # no noise: same output whatever the seed
    img = (np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 3)
    ra = _tf(NoiseConfig(randaugment=True, ra_magnitude=15))
    plain = create_train_transform(__import__("noisystudent.config", fromlist=["DataConfig"]).DataConfig(image_size=8, in_chans=1, crop_padding=0), None)
    assert ra.ra is not None and plain.ra is None
    outs = set()
    for s in range(8):
        __import__("random").seed(s)
        outs.add(ra(img).numpy().tobytes())
    assert len(outs) > 1
    assert torch.equal(plain(img), plain(img))


def test_periodic_validation_keeps_the_best_weights(tmp_path):
    """eval_every counts optimizer steps (evaluated at the end of the epoch that reaches a multiple,
    and after the last); best_key keeps the weights that scored best there, also across a resume."""
    import copy
    from noisystudent.artifacts import load_checkpoint
    ds = LabeledDataset(_digits(), _tf())
    per_epoch = LabeledBatches(ds, 16).steps_per_epoch()
    scores, snaps = iter([0.5, 0.9, 0.7, 0.6]), []

    def on_val(model):
        snaps.append(copy.deepcopy(model.state_dict()))
        return {"val_top1": next(scores)}
    res = fit(create_model("ns_cnn_s", 10, 1), _cfg(epochs=6), LabeledBatches(ds, 16), out_dir=tmp_path, seed=0,
              meta={}, eval_fn=on_val, eval_every=2 * per_epoch, best_key="val_top1")
    assert [h["epoch"] for h in res.history if "val_top1" in h] == [2, 4, 6]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 4
    for k, v in snaps[1].items():                          # the weights of the 0.9 evaluation
        assert torch.equal(v, res.model.state_dict()[k]), k


def test_checkpoint_interval_rule_and_env(monkeypatch):
    """After an epoch: checkpoint once the interval has passed, and always after the last epoch;
    the interval comes from NOISYSTUDENT_CHECKPOINT_S (default 30 s) and a bad value is one line."""
    from noisystudent.engine import checkpoint_due, checkpoint_interval_s
    assert not checkpoint_due(now=29.9, last=0.0, interval=30.0, last_epoch=False)
    assert checkpoint_due(now=30.0, last=0.0, interval=30.0, last_epoch=False)
    assert checkpoint_due(now=0.1, last=0.0, interval=30.0, last_epoch=True)
    assert checkpoint_due(now=0.0, last=0.0, interval=0.0, last_epoch=False)        # 0: every epoch
    monkeypatch.delenv("NOISYSTUDENT_CHECKPOINT_S", raising=False)
    assert checkpoint_interval_s() == 30.0
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv("NOISYSTUDENT_CHECKPOINT_S", bad)
        with pytest.raises(UserError, match="NOISYSTUDENT_CHECKPOINT_S must be a number of seconds >= 0"):
            checkpoint_interval_s()


def test_a_long_checkpoint_interval_still_resumes_exactly(tmp_path, monkeypatch):
    """With the interval longer than the run, only the last epoch is checkpointed: a kill before it
    leaves no checkpoint (the rerun starts over), metrics.jsonl still gets every epoch at the end, and
    the result equals the every-epoch run's (checkpointing never changes what is trained)."""
    ds = LabeledDataset(_digits(), _tf(NoiseConfig(randaugment=True)))
    cfg = _cfg(ema_decay=0.9)

    def run(out, **kw):
        torch.manual_seed(1)
        return fit(create_model("ns_cnn_s", 10, 1), cfg, LabeledBatches(ds, cfg.batch_size), out_dir=out,
                   seed=5, meta={}, **kw)
    ref = run(tmp_path / "a").model.state_dict()
    monkeypatch.setenv("NOISYSTUDENT_CHECKPOINT_S", "3600")

    def die_in_epoch_3(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return {}
    calls = []
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "b", eval_fn=die_in_epoch_3)
    assert not (tmp_path / "b" / "checkpoint.pt").exists()          # epochs 1-2 were not checkpointed
    res = run(tmp_path / "b")
    assert res.resumed_from == 0 and load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 3
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3
    for k, v in ref.items():
        assert torch.equal(v, res.model.state_dict()[k]), k


def test_load_model_channels_last_gives_the_same_predictions(tmp_path):
    """Evaluation and labeling load a model trained channels-last in that layout (1.6x faster on a
    CPU): weights NHWC, logits equal to the NCHW model's up to float rounding, same classes."""
    from noisystudent.config import Config
    from noisystudent.stages.common import channels_last_of
    from noisystudent.stages.modelfile import load_model, save_model
    torch.manual_seed(0)
    m = create_model("ns_cnn_s", 10, 1).eval()
    save_model(tmp_path / "m.pt", m, {"model_name": "ns_cnn_s", "num_classes": 10, "in_chans": 1,
                                      "classes": [str(i) for i in range(10)], "image_size": 28,
                                      "mean": [0.5], "std": [0.25]})
    plain, _ = load_model(tmp_path / "m.pt")
    cl, _ = load_model(tmp_path / "m.pt", channels_last=True)
    w = next(p for p in cl.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1)   # a 3x3 conv, C > 1
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        a, b = plain(x), cl(x)
    assert torch.allclose(a, b, atol=1e-5) and torch.equal(a.argmax(1), b.argmax(1))
    cfg = Config()
    cfg.teacher.channels_last, cfg.student.channels_last = True, False
    assert channels_last_of(cfg, 0) and not channels_last_of(cfg, 1) and not channels_last_of(cfg, 2)


def test_prefetch_switch_takes_0_or_1_only(monkeypatch):
    from noisystudent.runlog import env_flag
    monkeypatch.delenv("NOISYSTUDENT_PREFETCH", raising=False)
    assert env_flag("NOISYSTUDENT_PREFETCH", True) is True
    monkeypatch.setenv("NOISYSTUDENT_PREFETCH", "0")
    assert env_flag("NOISYSTUDENT_PREFETCH", True) is False
    monkeypatch.setenv("NOISYSTUDENT_PREFETCH", "yes")
    with pytest.raises(UserError, match="NOISYSTUDENT_PREFETCH='yes': allowed values are 0 and 1"):
        env_flag("NOISYSTUDENT_PREFETCH", True)
