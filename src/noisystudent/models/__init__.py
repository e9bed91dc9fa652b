"""Model factory (timm names + our small CNNs) and stage freezing for the resolution fine-tune."""
from __future__ import annotations

import difflib

import timm
import torch.nn as nn

from ..errors import UserError
from . import air, small  # noqa: F401  (register the ns_* models in timm's registry)

__all__ = ["create_model", "check_model_name", "freeze_stages", "count_params", "stage_groups"]


def check_model_name(name: str) -> None:
    """UserError (with close matches) unless `name` is a timm model or one of our `ns_*` CNNs."""
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}" if close else "; see timm.list_models()"
        raise UserError(f"unknown model '{name}'{hint}")


def create_model(name: str, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, pretrained: bool = False) -> nn.Module:
    """Any timm model name (or our `ns_*` small CNNs) with the paper's noise knobs."""
    check_model_name(name)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise UserError(f"model '{name}' does not accept these options ({e})") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage_groups(model: nn.Module) -> list[list[str]]:
    """Parameter-owning module names grouped as [stem, stage1, stage2, ..., head], in forward order.

    Uses timm's `group_matcher(coarse=True)` convention, which every timm model and ours implement,
    so the resolution fine-tune can freeze "stem + first N stages" without per-architecture code.
    """
    from timm.models import group_parameters
    if not hasattr(model, "group_matcher"):
        raise UserError(f"{type(model).__name__} has no group_matcher; cannot find its stages to freeze")
    groups = group_parameters(model, model.group_matcher(coarse=True))
    out = []
    for _, names in sorted(groups.items(), key=lambda kv: kv[0]):
        mods = sorted({n.rsplit(".", 1)[0] for n in names})
        out.append(mods)
    return out


def freeze_stages(model: nn.Module, n: int) -> list[str]:
    """Freeze the stem and the first `n` stages: no gradients, and their BatchNorms become
    FrozenBatchNorm2d so running statistics stay exactly as trained. Returns the frozen modules."""
    from timm.utils.model import freeze
    if n < 0:
        raise UserError("finetune.freeze must be >= 0")
    groups = stage_groups(model)
    # groups[0] is the stem; the last group holds the classifier (and final norm), never frozen.
    chosen = [m for g in groups[: min(n + 1, max(len(groups) - 1, 0))] for m in g]
    if chosen:
        freeze(model, chosen, include_bn_running_stats=True)
    return chosen
