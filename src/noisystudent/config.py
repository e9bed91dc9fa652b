"""Typed configuration: dataclasses -> YAML -> `--set key=value` overrides.

Every knob of a run lives in one `Config` tree. It is loaded from YAML, overridden from the command
line, validated (unknown keys, wrong types and out-of-range values fail with one line that names the
key and what is allowed), and saved, resolved, next to every artifact and inside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import UserError

__all__ = [
    "SourceConfig", "DataConfig", "NoiseConfig", "TrainConfig", "StudentConfig", "LabelConfig",
    "SelectConfig", "FinetuneConfig", "EvalConfig", "Config",
    "load_config", "config_from_dict", "config_to_dict", "apply_overrides", "config_hash",
]


@dataclass
class SourceConfig:
    """Where images come from. `kind` picks the reader; ids are stable (relative path or index)."""
    kind: Literal["imagefolder", "folder", "idx", "digits", "tar", "manifest"] = "digits"
    root: str = ""                      # directory / file prefix / manifest path (unused for digits)
    split: str = "train"                # idx: train|test (t10k); digits: train|test; others: unused
    per_class: Optional[int] = None     # draw N labeled images per class with `seed`...
    subset: Literal["draw", "rest"] = "draw"   # ...and keep the draw, or everything else (the pool)
    fraction: float = 1.0               # keep this fraction of the result (pool-size ablations)
    seed: int = 0
    hide_labels: bool = False           # the pool: labels are never used for training (kept for reports)
    classes: Optional[list[str]] = None      # extra test sets covering a subset of classes (by name)
    name: str = ""                      # display name for extra test sets


@dataclass
class DataConfig:
    # No data section has a default: a config names its labeled set, its test set and (rounds > 0)
    # its unlabeled pool (`require_data`); relative roots resolve from the config file's directory.
    labeled: Optional[SourceConfig] = None
    unlabeled: Optional[SourceConfig] = None
    test: Optional[SourceConfig] = None
    extra_test: list = field(default_factory=list)   # list of SourceConfig dicts (ImageNet-A/-R style)
    image_size: Optional[int] = None    # training resolution (square); None: inferred from the labeled images
    in_chans: Optional[int] = None      # 1 or 3; None: inferred from the labeled images
    mean: Optional[list[float]] = None         # None: 0.5 per channel
    std: Optional[list[float]] = None
    crop_padding: int = 1               # random crop with this padding (0 = off), a standard CIFAR aug
    hflip: bool = False                 # digits are not mirror-symmetric; CIFAR is
    workers: int = 0                    # DataLoader worker processes (0 = in the main process)
    cache: bool = True                  # decode each image once into a uint8 array in RAM
    bad_images: Literal["auto", "skip", "fail"] = "auto"   # auto: skip in the pool, fail elsewhere


@dataclass
class NoiseConfig:
    """The student's noise (the paper's essence). Each switch can be turned off for ablations."""
    randaugment: bool = True
    ra_magnitude: int = 9               # timm rand_augment_transform 'rand-m{M}-n{N}-mstd{std}'
    ra_layers: int = 2
    ra_mstd: float = 0.5
    drop_rate: float = 0.2              # dropout before the classifier
    drop_path_rate: float = 0.2         # stochastic depth: survival 0.8 at the last block


@dataclass
class TrainConfig:
    model: str = "ns_cnn_s"
    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05                    # for batch_size; scaled linearly by the total batch
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0              # 0 = off; e.g. 0.999 (timm ModelEmaV3)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float = 0.0
    # initial weights (default: random): timm's pretrained weights (hub or local cache), a local timm
    # weights file (offline), or your own model.pt; the classifier is re-initialised when the class
    # count differs. init_checkpoint wins over pretrained_file, which wins over pretrained.
    pretrained: bool = False
    pretrained_file: str = ""
    init_checkpoint: str = ""
    noise: NoiseConfig = field(default_factory=lambda: NoiseConfig(randaugment=False, drop_rate=0.0,
                                                                   drop_path_rate=0.0))


@dataclass
class StudentConfig(TrainConfig):
    ratio: int = 3                      # pseudo-labeled images per labeled image in each batch
    unlabeled_weight: float = 1.0       # loss = CE(labeled) + w * softCE(pseudo)
    soft: bool = True                   # soft targets (probabilities) or hard (one-hot argmax)
    init_from_teacher: bool = False
    # joint (the paper): labeled + pseudo in every batch. two_step (ablation): pseudo-labeled only,
    # then `two_step_epochs` on the labeled set.
    mode: Literal["joint", "two_step"] = "joint"
    two_step_epochs: int = 10
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass
class LabelConfig:
    temperature: float = 1.0
    flip_tta: bool = False              # average the teacher's probs over the image and its mirror
    noised_teacher: bool = False        # the paper's ablation only: label with dropout/SD on
    batch_size: int = 256
    shard_size: int = 4096              # rows per Parquet shard (the unit of resume)


@dataclass
class SelectConfig:
    threshold: float = 0.3
    per_class: Union[int, Literal["auto", "none"]] = "auto"


@dataclass
class FinetuneConfig:
    enabled: bool = False
    image_size: int = 0                 # 0 = the test set's native size
    epochs: int = 2
    lr: float = 0.005
    batch_size: int = 64
    freeze: int = 1                     # freeze stem + first N stages (BN of frozen layers in eval)


@dataclass
class EvalConfig:
    batch_size: int = 256
    robustness: bool = False
    corruptions: list[str] = field(default_factory=lambda: ["all"])
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    fgsm_eps: list[float] = field(default_factory=lambda: [1 / 255, 2 / 255, 4 / 255, 8 / 255])
    perturbations: list[str] = field(default_factory=lambda: ["translate", "gaussian_noise", "brightness"])
    max_images: int = 1000              # robustness subset size (0 = all)


@dataclass
class Config:
    name: str = "run"
    run_dir: str = ""                   # "" -> runs/<name>
    seed: int = 0
    device: str = "auto"                # auto|cpu|cuda|cuda:N
    rounds: int = 1
    models: list[str] = field(default_factory=list)   # [teacher, student1, ...]; last repeats
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TrainConfig = field(default_factory=TrainConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    ablation_no_noise: bool = False     # also train a no-noise student in round 1 for comparison

    def model_for_round(self, k: int) -> str:
        """Model name of round k's teacher (k=0) or student (k>=1), from the `models` schedule."""
        if not self.models:
            return self.teacher.model if k == 0 else self.student.model
        return self.models[min(k, len(self.models) - 1)]

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


# --------------------------------------------------------------------------------------------
# dict <-> dataclass with validation

def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp, key: str):
    """Check/convert `value` to annotation `tp`, or raise UserError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
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
                return _coerce(value, arg, key)
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
        return _from_dict(tp, value, key + ".")
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
        return value if item is None else [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        import difflib
        k = unknown[0]
        close = difflib.get_close_matches(str(k), names, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise UserError(f"unknown config key '{prefix}{k}'{hint}; allowed keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    def need(cond, key, msg):
        if not cond:
            raise UserError(f"config key '{key}': {msg}")
    need(cfg.rounds >= 0, "rounds", "must be >= 0")
    need(cfg.data.image_size is None or cfg.data.image_size >= 4, "data.image_size", "must be >= 4 pixels")
    need(cfg.data.in_chans in (None, 1, 3), "data.in_chans", "must be 1 (grayscale) or 3 (RGB)")
    need(0.0 <= cfg.select.threshold < 1.0, "select.threshold", "must be in [0, 1)")
    if isinstance(cfg.select.per_class, int):
        need(cfg.select.per_class > 0, "select.per_class", "must be > 0, 'auto' or 'none'")
    need(cfg.label.temperature > 0, "label.temperature", "must be > 0")
    need(cfg.finetune.freeze >= 0, "finetune.freeze", "must be >= 0")
    for sec in ("teacher", "student"):
        t: TrainConfig = getattr(cfg, sec)
        need(t.epochs >= 0, f"{sec}.epochs", "must be >= 0")
        need(t.batch_size >= 1, f"{sec}.batch_size", "must be >= 1")
        need(t.lr > 0, f"{sec}.lr", "must be > 0")
        need(0.0 <= t.ema_decay < 1.0, f"{sec}.ema_decay", "must be in [0, 1)")
        need(0.0 <= t.noise.drop_rate < 1.0, f"{sec}.noise.drop_rate", "must be in [0, 1)")
        need(0.0 <= t.noise.drop_path_rate < 1.0, f"{sec}.noise.drop_path_rate", "must be in [0, 1)")
        need(0 <= t.noise.ra_magnitude <= 30, f"{sec}.noise.ra_magnitude", "must be in [0, 30]")
    need(cfg.student.ratio >= 1, "student.ratio", "must be >= 1")
    for key in ("mean", "std"):
        v = getattr(cfg.data, key)
        if v is not None and cfg.data.in_chans is not None:
            need(len(v) == cfg.data.in_chans, f"data.{key}", f"needs one value per channel "
                 f"(data.in_chans={cfg.data.in_chans}), got {len(v)}")
    if cfg.data.std is not None:
        need(all(x > 0 for x in cfg.data.std), "data.std", "every value must be > 0")
    need(all(1 <= s <= 5 for s in cfg.evaluate.severities), "evaluate.severities", "each must be in 1..5")
    need(all(0 <= e < 1 for e in cfg.evaluate.fgsm_eps), "evaluate.fgsm_eps",
         "each must be in [0, 1) (pixel scale; 8/255 = 0.0314)")
    for name in ("labeled", "unlabeled", "test"):
        s: SourceConfig = getattr(cfg.data, name)
        if s is None:
            continue
        need(0.0 < s.fraction <= 1.0, f"data.{name}.fraction", "must be in (0, 1]")
        if s.per_class is not None:
            need(s.per_class > 0, f"data.{name}.per_class", "must be > 0")
        if s.kind != "digits":
            need(bool(s.root), f"data.{name}.root", f"is required for kind '{s.kind}'")


def config_from_dict(data: dict | None) -> Config:
    cfg = _from_dict(Config, data or {})
    cfg.data.extra_test = [_coerce(s, SourceConfig, f"data.extra_test[{i}]")
                           for i, s in enumerate(cfg.data.extra_test)]
    _validate(cfg)
    return cfg


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _parse_scalar(text: str):
    """`--set` values are YAML scalars/lists: 5, 0.1, true, null, [a, b], "text"."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a plain dict (before validation, so errors name the key)."""
    data = json.loads(json.dumps(data))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{p}' is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (or defaults when None) + overrides -> validated Config."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{p}: the top level must be a mapping of config sections")
        data = resolve_paths(data, _base_dir(p))
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data)


_BUNDLED_DIR = Path(__file__).parent / "configs"


def _base_dir(path: Path) -> Path | None:
    """The directory relative paths in `path` resolve from: the file's own directory. The bundled
    configs (the package's configs/, symlinked from the repo root) name data relative to the current
    directory (the repository root), so theirs stay as written."""
    try:
        if path.resolve().parent == _BUNDLED_DIR.resolve():
            return None
    except OSError:
        pass
    return path.parent


def _join(base: Path | None, value):
    if base is None or not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    return os.path.normpath(base / value)


def resolve_paths(data: dict, base: Path | None) -> dict:
    """Rewrite the file paths of a config dict (data source roots, pretrained/init weight files) that
    are relative to `base`. Paths given with --set are left relative to the current directory."""
    data = json.loads(json.dumps(data))
    sections = data.get("data") if isinstance(data.get("data"), dict) else {}
    sources = [v for v in sections.values() if isinstance(v, dict)]
    sources += [v for v in sections.get("extra_test") or [] if isinstance(v, dict)]
    for src in sources:
        if "root" in src:
            src["root"] = _join(base, src["root"])
    for sec in ("teacher", "student"):
        t = data.get(sec)
        if isinstance(t, dict):
            for key in PATH_KEYS:
                if key in t:
                    t[key] = _join(base, t[key])
    return data


PATH_KEYS = ("pretrained_file", "init_checkpoint")


def config_hash(obj) -> str:
    """Stable short hash of any JSON-able value (dataclasses are converted first)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
