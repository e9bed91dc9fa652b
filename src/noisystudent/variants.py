"""Student variants: the paper's ablations as config.

Each variant is the configured student with some switches changed, trained beside the noisy
student of round K = `variants_round` (1 by default; the last round to compare a multi-round
recipe's final student), on the same selection and for the same number of optimizer steps (so every
row of a comparison costs the same compute), and evaluated like it. Its folder is
`round<K>/student_<name>`.
A config lists built-in variants by name and declares its own as a one-key mapping of student keys:

    variants:
      - no_noise                                   # built in (VARIANTS below)
      - supervised
      - light_noise: {noise.ra_magnitude: 5, noise.cutout: 0.25}   # ours: student.* keys
"""
from __future__ import annotations

import re

from .config import StudentConfig
from .errors import UserError

__all__ = ["VARIANTS", "variant_config", "variant_stage", "check_variants", "variant_names", "variant_changes",
           "supervised_twin_differences"]

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


# a variant trains the noisy student's optimizer steps (compute-matched): these keys would be ignored
_FIXED = ("steps", "epochs", "warmup_steps", "warmup_epochs")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _entry(entry, i: int) -> tuple[str, dict | None]:
    """(name, its student changes or None for a built-in) of `variants[i]`."""
    if isinstance(entry, str):
        if entry not in VARIANTS:
            raise UserError(f"config key 'variants[{i}]': unknown variant {entry!r}; allowed: {', '.join(VARIANTS)}, "
                            "or your own as {name: {student key: value, ...}}")
        return entry, None
    if not (isinstance(entry, dict) and len(entry) == 1):
        raise UserError(f"config key 'variants[{i}]': expected a built-in name or a one-key mapping "
                        f"{{name: {{student key: value, ...}}}}, got {entry!r}")
    (name, changes), = entry.items()
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in VARIANTS or name == "nonoise":
        why = "is a built-in variant's name or folder: list the built-in by name, or choose another" \
            if name in VARIANTS or name == "nonoise" else \
            "must be lower-case letters, digits and _ (it names the folder student_<name>)"
        raise UserError(f"config key 'variants[{i}]': variant name {name!r} {why}")
    if not isinstance(changes, dict) or not changes:
        raise UserError(f"config key 'variants[{i}].{name}': expected a mapping of student keys to values, "
                        f"e.g. {{noise.ra_magnitude: 5}}, got {changes!r}")
    return name, {str(k).removeprefix("student."): v for k, v in changes.items()}


def variant_changes(entries: list) -> dict[str, dict]:
    """{name: {dotted student key: value}} for every variant a config lists, in its order."""
    return {name: (VARIANTS[name][1] if ch is None else ch) for name, ch in
            (_entry(e, i) for i, e in enumerate(entries))}


def variant_names(entries: list) -> list[str]:
    return list(variant_changes(entries))


def check_variants(entries: list, student: StudentConfig | None = None) -> None:
    """Names known or well-formed, none twice, and (given `student`) every declared key a student
    key whose value its type and range accept; the error names the variant and the key."""
    parsed = [_entry(e, i) for i, e in enumerate(entries)]
    if len({name for name, _ in parsed}) != len(parsed):
        raise UserError("config key 'variants': a variant is listed twice")
    if student is None:
        return
    for i, (name, ch) in enumerate(parsed):
        if ch is None:
            continue
        fixed = [k for k in ch if k in _FIXED]
        if fixed:
            raise UserError(f"config key 'variants[{i}].{name}.{fixed[0]}': a variant trains the noisy "
                            "student's steps (compute-matched); change student.steps for every row instead")
        variant_config(student, name, entries, prefix=f"variants[{i}].{name}.")


def variant_stage(name: str) -> str:
    """Stage folder of a variant (no_noise keeps its historic name)."""
    return "student_nonoise" if name == "no_noise" else f"student_{name}"


def variant_config(student: StudentConfig, name: str, entries: list | None = None,
                   prefix: str = "") -> StudentConfig:
    """The student config with the variant's changes applied (a new object; `student` is untouched).
    `entries`: the config's `variants` list, where the declared (non-built-in) ones are found."""
    from .config import coerce, config_to_dict, set_dotted, student_ranges
    declared = variant_changes(entries if entries is not None else ([name] if name in VARIANTS else []))
    if name not in declared:
        raise UserError(f"variant {name!r} is not in this config's variants ({', '.join(declared) or 'none'})")
    d = config_to_dict(student)
    for key, value in declared[name].items():       # unknown keys: refused by `coerce`, did-you-mean and all
        set_dotted(d, key, value, f"config key '{prefix}{key}'")
    out = coerce(d, StudentConfig, prefix.rstrip(".") or "student")
    student_ranges(out, prefix)
    return out


# TrainConfig keys that change only how fast a stage runs, not what it learns
_EXECUTION_ONLY = ("channels_last", "compile")


def supervised_twin_differences(cfg) -> list[str]:
    """Why round 0's teacher is NOT the `supervised` variant of `variants_round` ([] = it is).

    The compute-matched supervised baseline is the student's architecture trained on the labeled
    images alone, for the student's optimizer steps, with batches of batch_size x (1 + ratio) and
    the student's noise and schedule. A teacher trained that way already is that baseline (another
    seed of it), so a recipe can skip the `supervised` stage and report the teacher in its row:
    one stage fewer per run. Pure: reads the config only."""
    from dataclasses import fields
    from .config import TrainConfig
    t, s, k = cfg.teacher, cfg.student, cfg.variants_round
    why = []
    if cfg.model_for_round(0) != cfg.model_for_round(k):
        why.append(f"model {cfg.model_for_round(0)} vs {cfg.model_for_round(k)}")
    if t.steps <= 0 or t.steps != s.steps:
        why.append(f"steps {t.steps or f'{t.epochs} epochs'} vs {s.steps or f'{s.epochs} epochs'} "
                   "(both must be set in steps and equal)")
    if t.batch_size != s.batch_size * (1 + s.ratio):
        why.append(f"images per step {t.batch_size} vs {s.batch_size} x (1 + {s.ratio})")
    if s.init_from_teacher:
        why.append("student.init_from_teacher")
    for f in fields(TrainConfig):
        if f.name in ("model", "steps", "epochs", "batch_size", *_EXECUTION_ONLY):
            continue
        a, b = getattr(t, f.name), getattr(s, f.name)
        if a != b:
            why.append(f"{f.name} {a!r} vs {b!r}")
    return why
