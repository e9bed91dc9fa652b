"""Round-1 student variants: the paper's ablations as config (`variants: [no_noise, supervised]`).

Each variant is the configured student with one switch flipped, trained in round 1 beside the noisy
student, on the same selection and for the same number of optimizer steps (so every row of a
comparison costs the same compute), and evaluated like it. Its folder is `round1/<stage_name>`.
"""
from __future__ import annotations

import dataclasses

from .config import StudentConfig
from .errors import UserError

__all__ = ["VARIANTS", "variant_config", "variant_stage", "check_variants"]

# name -> (description, changes to the student config as {dotted key: value})
VARIANTS: dict[str, tuple[str, dict]] = {
    "no_noise": ("student without any noise (no RandAugment, Cutout, dropout, stochastic depth)",
                 {"noise.randaugment": False, "noise.cutout": 0.0, "noise.drop_rate": 0.0,
                  "noise.drop_path_rate": 0.0}),
    "no_randaugment": ("no input noise (RandAugment and Cutout off; dropout + stochastic depth kept)",
                       {"noise.randaugment": False, "noise.cutout": 0.0}),
    "no_dropout_sd": ("no model noise (dropout + stochastic depth off; RandAugment kept)",
                      {"noise.drop_rate": 0.0, "noise.drop_path_rate": 0.0}),
    "supervised": ("compute-matched supervised baseline: the student's architecture and noise on the "
                   "labeled images only, same steps and batch size", {"mode": "supervised"}),
    "two_step": ("two-step: pseudo-labels first, then the labeled images (same total steps)",
                 {"mode": "two_step"}),
}


def check_variants(names: list[str]) -> None:
    for i, n in enumerate(names):
        if n not in VARIANTS:
            raise UserError(f"config key 'variants[{i}]': unknown variant {n!r}; allowed: {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise UserError("config key 'variants': a variant is listed twice")


def variant_stage(name: str) -> str:
    """Stage folder of a variant (no_noise keeps its historic name)."""
    return "student_nonoise" if name == "no_noise" else f"student_{name}"


def variant_config(student: StudentConfig, name: str) -> StudentConfig:
    """The student config with the variant's switches applied (a new object; `student` is untouched)."""
    changes = VARIANTS[name][1]
    noise = dataclasses.replace(student.noise, **{k.split(".", 1)[1]: v for k, v in changes.items()
                                                  if k.startswith("noise.")})
    return dataclasses.replace(student, noise=noise, **{k: v for k, v in changes.items() if "." not in k})
