"""Typed configuration: dataclasses -> YAML -> `--set key=value` overrides.

Every knob of a run lives in one `Config` tree. It is loaded from YAML, overridden from the command
line, validated (unknown keys, wrong types and out-of-range values fail with one line that names the
key and what is allowed), and saved, resolved, next to every artifact and inside every checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import yaml

from .config_check import RULES, Range, coerce, from_dict, student_ranges, validate  # noqa: F401 - re-exported
from .errors import UserError

__all__ = [
    "SourceConfig", "DataConfig", "NoiseConfig", "TrainConfig", "StudentConfig", "LabelConfig",
    "SelectConfig", "FinetuneConfig", "EvalConfig", "Config",
    "load_config", "safe_load_yaml", "RULES", "config_from_dict", "config_to_dict", "apply_overrides", "config_hash",
    "coerce", "Range", "student_ranges", "BUNDLED_DIR",
]


@dataclass
class SourceConfig:
    """Where images come from. `kind` picks the reader; ids are stable (relative path or index)."""
    kind: str = "digits"                # a registered source kind (data.list_sources()): imagefolder,
                                        # folder, idx, digits, tar, manifest, or one you register
    root: str = ""                      # directory / file prefix / manifest path (unused for digits)
    split: str = "train"                # idx: train|test (t10k); digits: train|test; others: unused
    per_class: Optional[int] = None     # draw N labeled images per class with `seed`...
    subset: Literal["draw", "rest"] = "draw"   # ...and keep the draw, or everything else (the pool)
    fraction: float = 1.0               # keep this fraction of the result (pool-size ablations)
    seed: Optional[int] = None          # None: the run's `seed` (so --set seed=N also redraws the labels)
    # other data sections whose images are removed from this one first (same source, by stable id):
    # e.g. the pool `exclude: [labeled, val]`, or a validation set carved out of the labeled images
    exclude: list[str] = field(default_factory=list)
    classes: Optional[list[str]] = None      # extra test sets covering a subset of classes (by name)
    name: str = ""                      # display name for extra test sets


@dataclass
class DataConfig:
    # No data section has a default: a config names its labeled set, its test set and (rounds > 0)
    # its unlabeled pool (`require_data`); relative roots resolve from the config file's directory.
    labeled: Optional[SourceConfig] = None
    unlabeled: Optional[SourceConfig] = None
    test: Optional[SourceConfig] = None
    # validation images: recipe choices are made on these, test is reported once (None = no val set)
    val: Optional[SourceConfig] = None
    extra_test: list = field(default_factory=list)   # list of SourceConfig dicts (ImageNet-A/-R style)
    image_size: Optional[int] = None    # training resolution (square); None: inferred from the labeled images
    in_chans: Optional[int] = None      # 1 or 3; None: inferred from the labeled images
    mean: Optional[list[float]] = None         # None: 0.5 per channel
    std: Optional[list[float]] = None
    crop_padding: int = 1               # random crop with this padding (0 = off), a standard CIFAR aug
    hflip: bool = False                 # digits are not mirror-symmetric; CIFAR is
    # DataLoader worker processes that decode (and on the CPU path noise) images; 0 = in the main
    # process; auto = 0 on a CPU, min(8, CPUs per GPU - 1) on a GPU (data.loaders.resolve_workers);
    # caching (data.cache) under auto uses every core on a CPU too (resolve_decode_workers)
    workers: Union[int, Literal["auto"]] = "auto"
    cache: bool = True                  # decode each image once into a uint8 array in RAM, when it fits
                                        # (half the available memory; NOISYSTUDENT_CACHE_GB): else read the files
    bad_images: Literal["auto", "skip", "fail"] = "auto"   # auto: skip in the pool, fail elsewhere
    # where the training noise runs: cpu = PIL per image in DataLoader workers; device = images decoded
    # once into a tensor on the training device, noised a batch at a time; auto = device on a GPU
    # when the decoded images fit in a quarter of its free memory (stages/batching.py)
    augment_on: Literal["auto", "cpu", "device"] = "auto"
    # how changed data is noticed: each file's size + mtime (one stat), or a digest of its bytes,
    # cached in RUN_DIR/cache (sees files rewritten with their old mtime put back; reads all once)
    fingerprint: Literal["stat", "content"] = "stat"


@dataclass
class NoiseConfig:
    """The student's noise (the paper's essence). Each switch can be turned off for ablations."""
    randaugment: bool = True
    ra_magnitude: int = 9               # timm 'rand-m{M}-n{N}-p{prob}-mstd{std}-mmax30'; > 10 means more
    ra_layers: int = 2
    ra_prob: float = 1.0                # probability of applying each chosen op (official: 1)
    ra_mstd: float = 0.0                # std of the magnitude's Gaussian jitter (official: 0, fixed)
    ra_translate: float = 0.125         # largest shift at magnitude 10, as a fraction of the image size
                                        # (official small-image recipe: size/8; its ImageNet one: 0.45)
    cutout: float = 0.5                 # Cutout square side as a fraction of the image size (0 = off)
    drop_rate: float = 0.2              # dropout before the classifier
    drop_path_rate: float = 0.2         # stochastic depth: survival 0.8 at the last block


@dataclass
class TrainConfig:
    model: str = "ns_cnn_s"
    epochs: int = 30
    steps: int = 0                      # optimizer steps in all; > 0 overrides `epochs` (recipes that transfer)
    batch_size: int = 64
    optimizer: str = "sgd"              # any of timm.optim.list_optimizers(); sgd = Nesterov SGD
    lr: float = 0.05                    # for batch_size; scaled linearly by the total batch
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    warmup_steps: Optional[int] = None  # overrides warmup_epochs when set
    label_smoothing: float = 0.0
    ema_decay: float = 0.0              # 0 = off; capped at 1 - 10/steps (engine.effective_ema_decay)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float = 0.0
    # validation on data.val every `val_every` optimizer steps (at the end of the epoch that reaches
    # it, and after the last); keep_best: keep the weights that scored best there instead of the last
    val_every: int = 0
    keep_best: bool = False
    # initial weights (default: random): timm's pretrained weights (hub or local cache), a local timm
    # weights file (offline), or your own model.pt; the classifier is re-initialised when the class
    # count differs. init_checkpoint wins over pretrained_file, which wins over pretrained.
    pretrained: bool = False
    pretrained_file: str = ""
    init_checkpoint: str = ""
    noise: NoiseConfig = field(default_factory=lambda: NoiseConfig(randaugment=False, cutout=0.0, drop_rate=0.0,
                                                                   drop_path_rate=0.0))


@dataclass
class StudentConfig(TrainConfig):
    ratio: int = 3                      # pseudo-labeled images per labeled image in each batch
    unlabeled_weight: float = 1.0       # loss = CE(labeled) + w * softCE(pseudo)
    # mean: CE_l + w*CE_u, each a mean over its rows. per_image (official code): CE_l + w*ratio*CE_u,
    # i.e. every image of the joint batch weighs the same
    loss_weighting: Literal["mean", "per_image"] = "per_image"
    label_smoothing: float = 0.1        # on the labeled rows (official code); the teacher's default is 0
    soft: bool = True                   # soft targets (probabilities) or hard (one-hot argmax)
    init_from_teacher: bool = False
    # joint (the paper): labeled + pseudo in every batch. two_step (ablation): pseudo-labeled only,
    # then `two_step_epochs` on the labeled set. supervised (the compute-matched baseline): the
    # labeled images only, batches of batch_size x (1 + ratio), for the joint student's step count.
    mode: Literal["joint", "two_step", "supervised"] = "joint"
    two_step_epochs: int = 10
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass
class LabelConfig:
    temperature: float = 1.0
    flip_tta: bool = False              # average the teacher's probs over the image and its mirror
    shift_tta: int = 0                  # pixels: also average over each view moved +-N diagonally (0 = off)
    noised_teacher: bool = False        # the paper's ablation only: label with dropout/SD on
    # auto: 1,024 for images <= 64 px on a CUDA GPU (smaller batches leave it waiting on the CPU), else 256
    batch_size: Union[int, Literal["auto"]] = "auto"
    shard_size: int = 4096              # rows per Parquet shard (the unit of resume)


@dataclass
class SelectConfig:
    # auto: the paper's 0.3, but 0.9 for 2 or 3 classes, where 0.3 <= 1/K filters nothing
    # (pseudo.resolve_threshold; chosen on val, docs/benchmarks/transfer.md)
    threshold: Union[float, Literal["auto"]] = "auto"
    # auto: the confident pool in the validation set's class mix where it was chosen, not drawn, else
    # the labeled set's (a balanced val is the paper's fixed count per class: pseudo.auto_proportions);
    # an int: that many a class
    per_class: Union[int, Literal["auto", "none"]] = "auto"
    # leave out pool images that are near copies of validation or test images too (re-encoded,
    # resized, recoloured, moved a pixel, mirrored: data/nearcopy.py), not only exact copies (always left out),
    # and warn of labeled images that are (the teacher stage; those sets are left as they are)
    near_copies: bool = True


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
    # auto: 1,024 for images <= 64 px on a CUDA GPU, else 256 (inference.inference_batch_size)
    batch_size: Union[int, Literal["auto"]] = "auto"
    flip_tta: bool = False              # score the mean probability over each image and its mirror
    shift_tta: int = 0                  # pixels: also average over each view moved +-N diagonally (0 = off)
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
    # extra students trained beside the noisy one, same selection and steps (variants.py):
    # built-in names (no_noise, no_randaugment, no_dropout_sd, supervised, two_step) or your own as
    # {name: {student key: value, ...}}, e.g. {light_noise: {noise.ra_magnitude: 5}}
    variants: list[Union[str, dict]] = field(default_factory=list)
    # the round whose selection the variants train on: 1 (the paper's ablations) or the last round, so a
    # multi-round recipe's final student is compared with a no-noise student of the same round
    variants_round: int = 1
    ablation_no_noise: bool = False     # shorthand for adding `no_noise` to variants
    # per-epoch metric loggers besides run.log (loggers.py): csv -> <stage>/metrics.csv, tensorboard ->
    # <stage>/tensorboard/ (pip install 'noisystudent[logging]')
    logging: list[Literal["csv", "tensorboard"]] = field(default_factory=list)

    def train_for_round(self, k: int) -> "TrainConfig":
        """Training settings of round k's model: the teacher's (k=0) or the student's (k>=1)."""
        return self.teacher if k == 0 else self.student

    def model_for_round(self, k: int) -> str:
        """Model name of round k's teacher (k=0) or student (k>=1), from the `models` schedule."""
        if not self.models:
            return self.train_for_round(k).model
        return self.models[min(k, len(self.models) - 1)]

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


def config_from_dict(data: dict | None) -> Config:
    cfg = from_dict(Config, data or {})
    cfg.data.extra_test = [coerce(s, SourceConfig, f"data.extra_test[{i}]")
                           for i, s in enumerate(cfg.data.extra_test)]
    # Sources without their own seed take the run's, so `--set seed=N` redraws the labeled set (and
    # its complement, the pool, consistently) as well as the initialisation and augmentation.
    for s in [cfg.data.labeled, cfg.data.unlabeled, cfg.data.test, cfg.data.val, *cfg.data.extra_test]:
        if s is not None and s.seed is None:
            s.seed = cfg.seed
    # the shorthand joins `variants` before the checks, so they (variants_round too) see every variant
    if cfg.ablation_no_noise and "no_noise" not in cfg.variants:
        cfg.variants = ["no_noise", *cfg.variants]
    validate(cfg)
    from .variants import check_variants
    check_variants(cfg.variants, cfg.student)
    return cfg


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (`*name`, `<<: *name`): a few hundred bytes of nested aliases expand to
    gigabytes ("billion laughs"), and a recursive one has no expansion at all. A config never needs
    them, so the first one is refused, before anything is expanded."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            ev = self.peek_event()
            raise _AliasFound(ev.anchor, ev.start_mark.line + 1)
        return super().compose_node(parent, index)


class _AliasFound(Exception):
    def __init__(self, anchor, line):
        super().__init__(anchor, line)
        self.anchor, self.line = anchor, line


def safe_load_yaml(text: str, where: str):
    """yaml.safe_load, refusing aliases with one line naming `where` (a file, or a --set key)."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)       # noqa: S506 - a SafeLoader subclass
    except _AliasFound as e:
        raise UserError(f"{where}: YAML aliases are not allowed in configs (*{e.anchor} on line {e.line}); "
                        "write the values out") from None


def _parse_scalar(text: str, key: str = ""):
    """`--set` values are YAML scalars/lists: 5, 0.1, true, null, [a, b], "text"."""
    try:
        return safe_load_yaml(text, f"--set {key}")
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a plain dict (before validation, so errors name the key)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        set_dotted(data, key.strip(), _parse_scalar(text, key.strip()), f"--set {key}")
    return data


def set_dotted(data: dict, key: str, value, where: str) -> None:
    """data['a']['b']['c'] = value for key 'a.b.c', making the sections it needs (in place); the keys
    themselves are checked later, when the dict becomes a dataclass. `where` starts the error."""
    *path, leaf = key.split(".")
    node = data
    for p in path:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"{where}: '{p}' is not a section")
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (or defaults when None) + overrides -> validated Config."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            data = safe_load_yaml(p.read_text(), str(p)) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{p}: the top level must be a mapping of config sections")
        data = resolve_paths(data, _base_dir(p))
    data = apply_overrides(data, overrides or [])
    cfg = config_from_dict(data)
    # here, not in config_check.validate: a finished run's config.yaml must stay readable (the report) without it
    from .loggers import check_available
    check_available(cfg.logging)
    return cfg


BUNDLED_DIR = Path(__file__).parent / "configs"   # the bundled recipes (`noisystudent run <name>`)


def _base_dir(path: Path) -> Path | None:
    """The directory relative paths in `path` resolve from: the file's own directory. The bundled
    configs (the package's configs/, symlinked from the repo root) name data relative to the current
    directory (the repository root), so theirs stay as written."""
    try:
        if path.resolve().parent == BUNDLED_DIR.resolve():
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
