"""`ns_air_*`: a fast VGG-like family for 28-32 px images, after the ingredients published with
airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"): a 2x2 patch-whitening first layer
initialised from the data, three conv groups each ending its resolution with a max-pool, BatchNorm and
GELU, and a max-pooled head. Our own code and our own choices where we differ:

  * Each group's second conv is a residual branch (`x + drop_path(gelu(bn(conv(x))))`), so the
    student's stochastic depth has something to drop: with drop_path_rate=0.2 the last group's branch
    survives with probability 0.8, the first with 1.0 - 0.2 * 0/2 (linear, as in the paper). A residual
    branch also starts the net near identity, which is what airbench's dirac init is for.
  * The whitening layer is frozen: `init_from_data(images)` sets it to the eigenvectors of the 2x2
    patch covariance scaled by 1/sqrt(eigenvalue), and their negatives (GELU keeps both signs). The
    train stage calls it with labeled images for a model trained from scratch; without data it stays
    a frozen random projection (a warm start or a loaded checkpoint carries its own).

Sizes are widths x1, x1.5, x2 of (64, 256, 256), so an "equal-or-larger" student is a real step up:
forward GFLOPs at 32 px RGB are printed by `benchmarks/throughput.py --model ns_air_s`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models import register_model

from .small import LinearHead, model_kwargs

__all__ = ["AirNet", "patch_whitening"]

WHITEN_EPS = 5e-4        # added to the patch covariance's eigenvalues: near-constant directions stay tame


def patch_whitening(images: torch.Tensor, k: int = 2, eps: float = WHITEN_EPS) -> torch.Tensor:
    """Conv weights (2*c*k*k, c, k, k) that whiten the k x k patches of `images` (N, C, H, W):
    eigenvectors of the patch covariance divided by sqrt(eigenvalue + eps), then their negatives."""
    c = images.shape[1]
    patches = images.float().unfold(2, k, 1).unfold(3, k, 1)             # N, C, H', W', k, k
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    patches = patches - patches.mean(0, keepdim=True)
    cov = patches.T @ patches / max(1, patches.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov.double())
    w = (evecs.T / torch.sqrt(evals.clamp_min(0) + eps)[:, None]).float()   # rows: whitening directions
    w = w.flip(0).reshape(c * k * k, c, k, k)                                 # largest variance first
    return torch.cat([w, -w])


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool2 -> BN -> GELU, then a residual conv3x3 -> BN -> GELU branch."""

    def __init__(self, cin: int, cout: int, drop_path: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.GELU()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return x + self.drop_path(self.act(self.bn2(self.conv2(x))))


class AirNet(LinearHead, nn.Module):
    def __init__(self, widths=(64, 256, 256), num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, **_):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        stem = 2 * in_chans * 4
        self.stem = nn.Conv2d(in_chans, stem, 2, bias=True)       # 2x2 patches, no padding: 32 -> 31 px
        self.stem.weight.requires_grad_(False)                    # frozen whitening (bias still learns)
        self.stem_act = nn.GELU()
        n = len(widths)
        rates = [drop_path_rate * i / (n - 1) for i in range(n)] if n > 1 else [drop_path_rate]
        groups, cin = [], stem
        for w, r in zip(widths, rates):
            groups.append(ConvGroup(cin, w, r))
            cin = w
        self.stages = nn.Sequential(*groups)
        self.num_features = cin
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_info = [dict(num_chs=w, reduction=2 ** (i + 1), module=f"stages.{i}") for i, w in enumerate(widths)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.stem:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the frozen first layer to whiten the 2x2 patches of `images` (N, C, H, W, normalised as
        in training); a few thousand images are plenty (the covariance is 12x12 for RGB)."""
        self.stem.weight.copy_(patch_whitening(images.to(self.stem.weight.device)))
        nn.init.zeros_(self.stem.bias)

    def group_matcher(self, coarse: bool = False):      # timm's convention: freezing by stage
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)")

    def forward_features(self, x):
        return self.stages(self.stem_act(self.stem(x)))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x.amax((2, 3)))         # max-pooled head (airbench): sharper than the mean here
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _make(widths, kwargs):
    return AirNet(widths, **model_kwargs(kwargs))


@register_model
def ns_air_s(pretrained=False, **kwargs):
    """Widths 64/256/256 (~2.0M params, 0.24 GFLOP forward at 32 px): the fast teacher for 28-32 px images."""
    return _make((64, 256, 256), kwargs)


@register_model
def ns_air_m(pretrained=False, **kwargs):
    """Widths x1.5 (96/384/384, ~4.4M params, 0.51 GFLOP): an equal-or-larger student."""
    return _make((96, 384, 384), kwargs)


@register_model
def ns_air_l(pretrained=False, **kwargs):
    """Widths x2 (128/512/512, ~7.9M params, 0.89 GFLOP)."""
    return _make((128, 512, 512), kwargs)
