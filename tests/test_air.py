"""ns_air_*: the fast small-image family (issue 14): whitening init, noise where the config says,
timm conventions, and the train stage's data-dependent init."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import DropPath

from noisystudent.models import create_model, freeze_stages
from noisystudent.models.air import patch_whitening


def test_whitening_layer_whitens_the_patches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, 16, 16, generator=g) * torch.tensor([1.0, 3.0, 0.2]).view(1, 3, 1, 1)
    x[:, 1] += 0.5 * x[:, 0]                                   # correlated channels
    m = create_model("ns_air_s", 10, 3)
    m.init_from_data(x)
    with torch.no_grad():
        y = m.stem(x)
    assert y.shape == (200, 24, 15, 15)
    half = y[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(half.T)
    assert torch.allclose(cov, torch.eye(12), atol=0.02)      # whitened: identity covariance
    assert torch.allclose(y[:, 12:], -y[:, :12] + 2 * m.stem.bias[12:].view(1, -1, 1, 1), atol=1e-5)
    assert not m.stem.weight.requires_grad and m.stem.bias.requires_grad


def test_whitening_weights_are_eigenvectors_largest_first():
    x = torch.randn(64, 1, 8, 8)
    x = x + x.roll(1, dims=3)                                 # neighbouring pixels correlate
    w = patch_whitening(x)
    assert w.shape == (8, 1, 2, 2)
    norms = w[:4].flatten(1).norm(dim=1)
    assert torch.all(norms[:-1] <= norms[1:] + 1e-6)          # 1/sqrt(eigenvalue) grows as variance falls


@pytest.mark.parametrize("name, chans, size", [("ns_air_s", 3, 32), ("ns_air_m", 1, 28), ("ns_air_l", 3, 32)])
def test_shapes_timm_registry_and_feature_info(name, chans, size):
    m = timm.create_model(name, num_classes=7, in_chans=chans)
    assert m(torch.randn(2, chans, size, size)).shape == (2, 7)
    assert m.feature_info[-1]["reduction"] == 8
    widths = [f["num_chs"] for f in m.feature_info]
    assert widths == {"ns_air_s": [64, 256, 256], "ns_air_m": [96, 384, 384], "ns_air_l": [128, 512, 512]}[name]


def test_stochastic_depth_and_dropout_are_where_the_config_says():
    m = create_model("ns_air_s", 10, 3, drop_rate=0.3, drop_path_rate=0.2)
    rates = [g.drop_path.drop_prob if isinstance(g.drop_path, DropPath) else 0.0 for g in m.stages]
    assert rates == pytest.approx([0.0, 0.1, 0.2])            # survival 0.8 at the last group
    assert m.head_drop.p == 0.3
    m.eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(m(x), m(x))                            # eval: no noise
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, m(x))                        # train: dropout / drop path act


def test_freeze_stages_works_through_group_matcher():
    m = create_model("ns_air_s", 10, 3)
    frozen = freeze_stages(m, 1)
    assert "stem" in frozen and "stages.0.conv1" in frozen and "stages.1.conv1" not in frozen
    assert not m.stages[0].conv1.weight.requires_grad and m.stages[1].conv1.weight.requires_grad


def test_train_stage_initialises_from_the_labeled_images(tmp_path):
    """A teacher trained from scratch gets its whitening from the labeled images (normalised as in
    training); with zero steps the saved stem is exactly that."""
    from noisystudent.cli import main
    from noisystudent.data.transforms import normalize
    from noisystudent.stages.common import RunContext
    from noisystudent.stages.modelfile import load_model
    from noisystudent.config import load_config
    from noisystudent.tensor_batches import decode_all
    from noisystudent.layout import RunLayout
    from own_data import make_own_data
    make_own_data(tmp_path, size=32)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  labeled: {kind: imagefolder, root: train}\n  unlabeled: {kind: folder, root: pool}\n"
                   "  test: {kind: imagefolder, root: test}\nmodels: [ns_air_s]\ndevice: cpu\n"
                   "teacher: {epochs: 0, batch_size: 8}\n")
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "r")]) == 0
    model, _ = load_model(RunLayout(tmp_path / "r").model(0, "teacher") / "model.pt")
    ctx = RunContext(load_config(cfg), tmp_path / "r2", "cpu")
    images, _ = decode_all(ctx.labeled, 32, skip_bad=False)
    expect = patch_whitening(normalize(images.float() / 255.0, ctx.mean, ctx.std))
    assert torch.allclose(model.stem.weight, expect, atol=1e-5)
