"""Config checking: dict -> dataclass with type coercion, and the range table every numeric key is
checked against. Messages name the key and what is allowed, in one line (`UserError`).

Pure functions over the dataclasses of `config.py` (passed in, never imported at module level, so
`config` can import this module); `config.py` re-exports the public names.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from .errors import UserError

__all__ = ["coerce", "from_dict", "Range", "RULES", "validate", "student_ranges"]


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def coerce(value: Any, tp, key: str):
    """Check/convert `value` to annotation `tp`, or raise UserError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and ("off" if value is False else "on") in allowed:
            value = "off" if value is False else "on"     # YAML 1.1 reads a bare off/on as a boolean
        if value not in allowed:
            raise UserError(f"config key '{key}': {value!r} is not allowed; choose one of "
                            + ", ".join(repr(a) for a in allowed))
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(value, arg, key)
            except UserError as e:
                errors.append(e)
        if len(errors) == 1:            # Optional[X]: X's own message names the element at fault
            raise errors[0]
        raise UserError(f"config key '{key}': {value!r} is not a valid {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}': expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads `1e-3` (no dot) as a string; a learning rate is usually written that way
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
        raise UserError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key '{key}': expected a string, got {value!r}")
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (None,)
        # each element is checked like a key of its own: 'evaluate.severities[2]: expected an integer'
        return value if item is None else [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        import difflib
        k = unknown[0]
        close = difflib.get_close_matches(str(k), names, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise UserError(f"unknown config key '{prefix}{k}'{hint}; allowed keys: {', '.join(names)}")
    kwargs = {k: coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


@dataclass(frozen=True)
class Range:
    """One row of the validation table: the allowed range of a numeric key (or of every element of a
    list key, `each`). `text` is what the user reads after "config key 'K': "."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False               # lo < v (else lo <= v)
    hi_open: bool = False               # v < hi (else v <= hi)
    text: str = ""                      # the message; derived from the bounds when empty
    each: bool = False                  # a list: every element must be in range
    optional: bool = False              # None is allowed
    also: tuple = ()                    # extra allowed values outside the range (finetune.image_size=0)

    def ok(self, v) -> bool:
        if v in self.also and not isinstance(v, bool):
            return True
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def message(self) -> str:
        if self.text:
            return self.text
        lo, hi = (f"{b:g}" if b is not None else None for b in (self.lo, self.hi))
        if lo is not None and hi is not None:
            return f"must be in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"must be {'>' if self.lo_open else '>='} {lo}"
        return f"must be {'<' if self.hi_open else '<='} {hi}"


GE0, GT0, GE1, UNIT = Range(0), Range(0, lo_open=True), Range(1), Range(0, 1, hi_open=True)   # UNIT: [0, 1)
_TRAIN_RULES = {
    "epochs": GE0, "batch_size": GE1, "lr": GT0, "weight_decay": GE0, "momentum": UNIT,
    "warmup_epochs": GE0, "label_smoothing": UNIT, "ema_decay": UNIT, "grad_clip": GE0,
    "noise.ra_magnitude": Range(0, 30), "noise.ra_layers": GE0, "noise.ra_mstd": Range(0, 100),
    "noise.ra_prob": Range(0, 1), "noise.ra_translate": Range(0, 1), "noise.cutout": UNIT,
    "noise.drop_rate": UNIT, "noise.drop_path_rate": UNIT,
    "steps": GE0, "warmup_steps": Range(0, optional=True), "val_every": GE0,
}
_SOURCE_RULES = {"per_class": Range(0, lo_open=True, optional=True), "fraction": Range(0, 1, lo_open=True),
                 "seed": GE0}

# Every numeric config key and its allowed range: `validate` checks them all before anything runs
# (tests/test_config.py loops over this table, and checks that no numeric key is missing from it).
# `data.extra_test[]` rows apply to every extra test set.
RULES: dict[str, Range] = {
    "seed": GE0,
    "rounds": GE0,
    "variants_round": GE1,
    **{f"data.{s}.{k}": r for s in ("labeled", "unlabeled", "test", "val", "extra_test[]")
       for k, r in _SOURCE_RULES.items()},
    "data.image_size": Range(4, 8192, optional=True, text="must be >= 4 pixels (and at most 8192)"),
    "data.in_chans": Range(1, 1, also=(3,), optional=True, text="must be 1 (grayscale) or 3 (RGB)"),
    "data.mean": Range(-1e6, 1e6, each=True, optional=True, text="each must be a finite number"),
    "data.std": Range(0, 1e6, lo_open=True, each=True, optional=True, text="every value must be > 0"),
    "data.crop_padding": GE0,
    "data.workers": Range(0, 256, text="must be in [0, 256] or 'auto'"),
    **{f"{sec}.{k}": r for sec in ("teacher", "student") for k, r in _TRAIN_RULES.items()},
    "student.ratio": GE1,
    "student.unlabeled_weight": GE0,
    "student.two_step_epochs": GE0,
    "label.temperature": GT0,
    "label.batch_size": Range(1, text="must be >= 1 or 'auto'"),
    "label.shard_size": GE1,
    "select.threshold": Range(0, 1, hi_open=True, text="must be in [0, 1) or 'auto'"),
    "select.per_class": Range(0, lo_open=True, text="must be > 0, 'auto' or 'none'"),
    "finetune.image_size": Range(4, 8192, also=(0,), text="must be 0 (the test set's native size) or in [4, 8192]"),
    "finetune.epochs": GE0,
    "finetune.lr": GT0,
    "finetune.batch_size": GE1,
    "finetune.freeze": GE0,
    "evaluate.batch_size": Range(1, text="must be >= 1 or 'auto'"),
    "evaluate.severities": Range(1, 5, each=True, text="each must be in 1..5"),
    "evaluate.fgsm_eps": Range(0, 1, hi_open=True, each=True, text="each must be in [0, 1) (pixel scale; 8/255 = 0.0314)"),
    "evaluate.max_images": GE0,
    **{f"{sec}.shift_tta": Range(0, 8, text="must be 0 (off) to 8 pixels") for sec in ("label", "evaluate")},
}


def _lookup(cfg, key: str) -> list[tuple[str, Any]]:
    """(full key, value) pairs a table key names: one, or one per extra test set for `extra_test[]`."""
    head, sep, rest = key.partition("[]")
    if sep:
        return [(f"{head}[{i}]{r}", v) for i, src in enumerate(_lookup(cfg, head)[0][1])
                for r, v in [(rest, _get(src, rest.lstrip(".")))]]
    parent, _, _ = key.rpartition(".")
    if parent and _get(cfg, parent) is None:        # an optional section that is not set (data.val)
        return []
    return [(key, _get(cfg, key))]


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _check_rule(rule: Range, v, key: str) -> None:
    """One RULES row on one value, or a UserError naming `key`."""
    if (v is None and rule.optional) or isinstance(v, str):    # select.per_class: 'auto' | 'none' (by type)
        return
    bad = next((x for x in (v if rule.each else [v]) if not rule.ok(x)), None)
    if bad is not None:
        got = f", got {bad!r}" if isinstance(bad, float) and not math.isfinite(bad) else ""
        raise UserError(f"config key '{key}': {rule.message()}{got}")


def student_ranges(student, prefix: str) -> None:
    """The `student.*` range rules on one StudentConfig (a variant's), errors naming `prefix`+key."""
    for table_key, rule in RULES.items():
        if table_key.startswith("student."):
            key = table_key.removeprefix("student.")
            _check_rule(rule, _get(student, key), prefix + key)


def validate(cfg) -> None:
    """Range checks that types alone cannot express: every numeric key against `RULES`, then the few
    checks that relate two keys."""
    def need(cond, key, msg):
        if not cond:
            raise UserError(f"config key '{key}': {msg}")
    for table_key, rule in RULES.items():
        for key, v in _lookup(cfg, table_key):
            _check_rule(rule, v, key)
    for key in ("mean", "std"):
        v = getattr(cfg.data, key)
        if v is not None and cfg.data.in_chans is not None:
            need(len(v) == cfg.data.in_chans, f"data.{key}", f"needs one value per channel "
                 f"(data.in_chans={cfg.data.in_chans}), got {len(v)}")
    need(not cfg.variants or cfg.rounds == 0 or cfg.variants_round <= cfg.rounds, "variants_round",
         f"must be a round of the run, 1 to rounds={cfg.rounds}, got {cfg.variants_round}")
    _check_excludes(cfg.data)
    from .distributed import device_name_error      # the spelling now; the machine at run time
    bad_device = device_name_error(cfg.device)
    need(bad_device is None, "device", bad_device)
    if cfg.student.init_from_teacher:       # caught now, not after the teacher has trained for an hour
        for k in range(1, cfg.rounds + 1):
            a, b = cfg.model_for_round(k - 1), cfg.model_for_round(k)
            need(a == b, "student.init_from_teacher", f"starts each student from its teacher's weights, so they "
                 f"need one architecture, but round {k} trains {b} from a {a} teacher; set "
                 "student.init_from_teacher=false for a larger student (the paper's: trained from scratch)")
    from timm.optim import list_optimizers
    for sec in ("teacher", "student"):
        opt = getattr(cfg, sec).optimizer
        need(opt in list_optimizers(), f"{sec}.optimizer", f"unknown optimizer {opt!r}; allowed: any of "
             f"timm.optim.list_optimizers(), e.g. sgd, adamw, lamb, lion")
        need(not getattr(cfg, sec).keep_best or (getattr(cfg, sec).val_every > 0 and cfg.data.val is not None),
             f"{sec}.keep_best", "needs a validation set (data.val) and val_every > 0")
    need(cfg.data.val is None or cfg.data.val.kind != "folder", "data.val.kind",
         "a validation set needs labels (imagefolder, idx, digits, ...), not 'folder'")
    from .data.sources import list_sources      # validated against the registry: user kinds count
    for name in ("labeled", "unlabeled", "test", "val"):
        s = getattr(cfg.data, name)
        if s is None:
            continue
        need(s.kind in list_sources(), f"data.{name}.kind", f"unknown source '{s.kind}'; choose one of "
             + ", ".join(list_sources()))
        if s.kind != "digits":
            need(bool(s.root), f"data.{name}.root", f"is required for kind '{s.kind}'")


SECTIONS = ("labeled", "val", "unlabeled", "test")


def _check_excludes(d) -> None:
    """`exclude` names other data sections, and following the names never comes back (no cycle)."""
    def excl(name):
        s = getattr(d, name)
        return s.exclude if s is not None else []
    for name in SECTIONS:
        for i, other in enumerate(excl(name)):
            if other not in SECTIONS or other == name:
                raise UserError(f"config key 'data.{name}.exclude[{i}]': {other!r} is not another data section; "
                                f"choose from {', '.join(n for n in SECTIONS if n != name)}")
            if getattr(d, other) is None:
                raise UserError(f"config key 'data.{name}.exclude[{i}]': data.{other} is not set")
    for start in SECTIONS:
        seen, todo = set(), list(excl(start))
        while todo:
            n = todo.pop()
            if n == start:
                raise UserError(f"config key 'data.{start}.exclude': the exclusions lead back to data.{start} (a cycle)")
            if n not in seen:
                seen.add(n)
                todo.extend(excl(n))
