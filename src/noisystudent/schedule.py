"""How long and how fast a model trains: step budget, optimizer, LR schedule, EMA decay.

Pure functions of the config and the step count (no state of their own), so a resumed run gets the
same LR and EMA decay at every step as an uninterrupted one. The optimizer and the cosine come from
timm (`create_optimizer_v2`, `CosineLRScheduler`); what is ours is how they are sized.
"""
from __future__ import annotations

__all__ = ["plan_steps", "create_optimizer", "create_scheduler", "effective_ema_decay", "ema_decay_at"]


def plan_steps(cfg, steps_per_epoch: int, steps: int | None = None) -> tuple[int, int]:
    """(total optimizer steps, warmup steps). `steps` (explicit) > `cfg.steps` > epochs x steps/epoch.

    Counting in steps makes a recipe transfer across labeled-set sizes: 30 epochs of a 100-image set
    are 60 steps at batch 64 (too few to fit anything), 30 epochs of 60,000 images are 28,000."""
    total = steps if steps else (cfg.steps if cfg.steps > 0 else cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_epochs * steps_per_epoch)
    return max(0, int(total)), max(0, min(int(warmup), max(0, int(total) - 1)))


def create_scheduler(optimizer, base_lr: float, total: int, warmup: int, lr_min_ratio: float = 1e-3):
    """timm's cosine with a linear warmup prefix, sized so the LAST step (index total-1) is at lr_min.

    With `warmup_prefix=True` timm starts the cosine after the warmup and reaches lr_min when
    t - warmup == t_initial; so t_initial = total - warmup - 1. (t_initial = total, as before,
    ended training at 2-7% of the peak LR instead of annealing to the end.)"""
    from timm.scheduler import CosineLRScheduler
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup - 1), lr_min=base_lr * lr_min_ratio,
                             warmup_t=warmup, warmup_lr_init=base_lr * 0.01, warmup_prefix=True,
                             t_in_epochs=False)


def effective_ema_decay(decay: float, total_steps: int) -> float:
    """The EMA decay actually used: the configured one, capped so that the EMA's time constant
    1/(1-decay) is at most a tenth of the run (decay <= 1 - 10/total_steps). A 0.999 EMA averages
    over ~1,000 steps: in a 600-step run it would still hold mostly early, untrained weights."""
    if decay <= 0 or total_steps <= 0:
        return 0.0
    return float(min(decay, max(0.0, 1.0 - 10.0 / total_steps)))


def ema_decay_at(step: int, decay: float) -> float:
    """Decay for update number `step` (0-based): min(decay, (1+step)/(10+step)), the ramp of
    tf.train.ExponentialMovingAverage(num_updates=step) that the official code uses, so the EMA
    follows the fast-moving early weights closely and settles at `decay`."""
    return float(min(decay, (1.0 + step) / (10.0 + step)))


def create_optimizer(model, cfg, lr: float):
    """timm's optimizer factory: any name in `timm.optim.list_optimizers()`; `sgd` is Nesterov SGD.
    Weight decay skips norms and biases (timm's `filter_bias_and_bn`): decaying them hurts small-data
    training."""
    from timm.optim import create_optimizer_v2
    return create_optimizer_v2(model, cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, filter_bias_and_bn=True)
