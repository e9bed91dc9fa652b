"""Small residual CNNs for tiny images (8x8 digits, 28x28 Fashion-MNIST, 32x32 CIFAR).

They are registered in timm's model registry, so `timm.create_model("ns_cnn_s", ...)` and every
timm tool (freezing by `group_matcher`, EMA, feature info) treat them like any timm model. They take
timm's `drop_rate` (dropout before the classifier) and `drop_path_rate` (stochastic depth, linearly
increasing so the last block's survival probability is 1 - drop_path_rate, as in the paper).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models import register_model

__all__ = ["TinyResNet", "LinearHead", "model_kwargs"]


class LinearHead:
    """timm's classifier conventions for our nets with a `fc` head over `num_features` (classifier
    reset for a warm start with another class count); shared by TinyResNet and AirNet."""

    def get_classifier(self):
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool=None):
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)


def model_kwargs(kwargs: dict) -> dict:
    """timm's factory kwargs without the hub ones our nets have no weights for."""
    for k in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    return kwargs


class BasicBlock(nn.Module):
    """Pre-activation residual block (as in WideResNet), with stochastic depth on the branch."""

    def __init__(self, cin: int, cout: int, stride: int, drop_path: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        o = self.act(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(self.act(self.bn2(self.conv1(o))))
        return skip + self.drop_path(o)


class TinyResNet(LinearHead, nn.Module):
    def __init__(self, widths=(16, 32, 64), depths=(1, 1, 1), num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, stem_width: int | None = None, **_):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        stem = stem_width or widths[0]
        self.stem = nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False)
        total = sum(depths)
        rates = torch.linspace(0, drop_path_rate, total).tolist() if total > 1 else [drop_path_rate]
        stages, cin, k = [], stem, 0
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(d):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, rates[k]))
                cin, k = w, k + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(cin)
        self.act = nn.ReLU(inplace=True)
        self.num_features = cin
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    # timm conventions, so timm utilities (freezing by group, classifier reset) work on us too
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    def forward_features(self, x):
        return self.act(self.norm(self.stages(self.stem(x))))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _make(widths, depths, kwargs):
    return TinyResNet(widths, depths, **model_kwargs(kwargs))


@register_model
def ns_cnn_s(pretrained=False, **kwargs):
    """~0.08M params: 3 stages x 1 block, widths 16/32/64. Fast teacher for tiny images."""
    return _make((16, 32, 64), (1, 1, 1), kwargs)


@register_model
def ns_cnn_m(pretrained=False, **kwargs):
    """~0.7M params: 3 stages x 2 blocks, widths 32/64/128. An 'equal-or-larger' student."""
    return _make((32, 64, 128), (2, 2, 2), kwargs)


@register_model
def ns_cnn_l(pretrained=False, **kwargs):
    """~2.4M params: 3 stages x 3 blocks, widths 48/96/192."""
    return _make((48, 96, 192), (3, 3, 3), kwargs)


@register_model
def ns_wrn_28_2(pretrained=False, **kwargs):
    """WideResNet-28-2 (1.5M params), the standard CIFAR-10-4000 semi-supervised backbone."""
    return _make((32, 64, 128), (4, 4, 4), dict(kwargs, stem_width=16))
