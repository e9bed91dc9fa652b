"""`noisystudent init DIR` (a commented starter config, or with `--recipe NAME` a bundled recipe
with your three folders as its data; with `--data ROOT` the folders are found and looked at, and a
recipe is picked for small images) and `noisystudent config CONFIG` (the resolved config, every
default filled in)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import yaml

from .errors import UserError

if TYPE_CHECKING:
    from .data.mirror import MirrorCheck

__all__ = ["TEMPLATE", "write_starter", "recipe_starter_text", "resolved_config_text", "DataRoot",
           "inspect_data_root", "choose_recipe", "RecipePick", "few_classes_threshold", "mirror_setting",
           "class_mix_note"]

TEMPLATE = Path(__file__).parent / "templates" / "own-data.yaml"
# the template's block of data sections that `--data` replaces (first and last line)
_TEMPLATE_FIRST = "  labeled:   {kind: imagefolder, root: train}"
_TEMPLATE_LAST = "  # labeled: {kind: imagefolder, root: train, exclude: [val]}"


def write_starter(directory: str | Path, force: bool = False, recipe: Path | None = None,
                  data: "DataRoot | None" = None, resize: bool = False) -> tuple[Path, list[str]]:
    """Write DIR/config.yaml from the template, or from the recipe at `recipe` (a bundled config)
    (refusing to overwrite unless `force`); with `data` (`inspect_data_root`) its folders are the
    config's data sections, so nothing is left to edit; with `resize` (`choose_recipe`'s pick) the
    images train at the recipe's own size even when they are all one square size. Returns the path
    and what was changed for the data (lines for the user)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UserError(f"{d} exists and is not a directory")
    out = d / "config.yaml"
    if out.exists() and not force:
        raise UserError(f"{out} already exists; edit it, or pass --force to overwrite it")
    sources = None
    if data:
        recipe_size = _recipe_data(recipe.read_text()).get("image_size") if recipe else None
        resize = bool(resize and recipe_size)
        size = data.training_size(recipe_size) if data.needs_size or resize else None
        sources = data.source_lines(size, recipe=recipe.stem if resize else None)
    text = recipe_starter_text(recipe, sources) if recipe else template_text(sources)
    text, note = few_classes_threshold(text, len(data.classes)) if data else (text, None)
    text, mirror = mirror_setting(text, data.mirror) if data else (text, None)
    mix = class_mix_note(data) if data else None
    d.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out, [n for n in (note, mirror, mix) if n]


def template_text(sources: list[str] | None = None) -> str:
    """The plain starter; `sources` (lines) replace its three example data sections and the
    commented validation carve below them."""
    text = TEMPLATE.read_text()
    if sources is None:
        return text
    lines = text.splitlines()
    start = lines.index(_TEMPLATE_FIRST)
    end = lines.index(_TEMPLATE_LAST) + 1
    return "\n".join(lines[:start] + sources + lines[end:]) + "\n"


def few_classes_threshold(text: str, num_classes: int) -> tuple[str, str | None]:
    """(the config `text`, what `init` tells the user) for `num_classes`. With 2 or 3 classes the
    paper's 0.3 is <= 1/K and filters nothing, so `select.threshold: auto` (the bundled recipes' and
    the template's) resolves to pseudo.FEW_CLASSES_THRESHOLD: the note says so. A number that filters
    nothing (a recipe of your own) is replaced by `auto`. Else (`text`, None); a value that is not a
    number is left to the config check of `run`."""
    from .pseudo import PAPER_THRESHOLD, resolve_threshold
    from .runwarnings import threshold_filters_nothing     # the run's own test of "filters nothing"
    threshold = ((yaml.safe_load(text) or {}).get("select") or {}).get("threshold", "auto")
    auto = resolve_threshold("auto", num_classes)
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if threshold == "auto" and auto != PAPER_THRESHOLD:
        was = PAPER_THRESHOLD
    elif number and threshold_filters_nothing(threshold, num_classes):
        was = threshold
    else:
        return text, None
    why = f"{was:g} is <= 1/{num_classes} and would keep every pool image"
    note = f"select.threshold {f'{was:g} -> ' if number else ''}auto = {auto:g} for {num_classes} classes ({why})"
    if not number:
        return text, note
    lines = text.splitlines()
    start = lines.index("select:")
    i = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  threshold:"))
    j = i + 1
    while j < len(lines) and lines[j].lstrip().startswith("#") and lines[j].startswith("    "):
        j += 1                      # the old value's comment, continued on its own lines
    lines[i:j] = [f"  threshold: auto   # {num_classes} classes: {why}; auto is {auto:g} here, "
                  "chosen on val (docs/benchmarks/transfer.md)"]
    return "\n".join(lines) + "\n", note


def mirror_setting(text: str, check) -> tuple[str, str | None]:
    """(the config `text`, what `init` tells the user) for the labeled images' mirror check
    (`data.mirror.MirrorCheck`, or None when it could not run). When the mirror changes the class
    (digits, letters) a random mirror (`data.hflip: true`) and flip test-time augmentation
    (`label.flip_tta`, `evaluate.flip_tta`) are turned off; else the text is the config's own."""
    cfg = yaml.safe_load(text) or {}
    if check is None or check.keeps_class or not (cfg.get("data") or {}).get("hflip"):
        return text, None
    lines, section = text.splitlines(), None
    for i, line in enumerate(lines):
        if line[:1] not in ("", " ", "#"):
            section = line.split(":")[0]
        if section == "data" and line.startswith("  hflip:"):
            lines[i] = (f"  hflip: false   # a mirror changes the class here ({check.describe()}); "
                        "set by `init --data`: docs/benchmarks/transfer.md, TM")
        elif section in ("label", "evaluate") and line.startswith("  flip_tta:"):
            lines[i] = "  flip_tta: false   # no mirror: see data.hflip"
    note = (f"mirror off (data.hflip, label/evaluate.flip_tta: false): it changes the class of these images "
            f"({check.describe()})")
    return "\n".join(lines) + "\n", note


def class_mix_note(data: "DataRoot") -> str | None:
    """What `init` tells the user of a long-tailed labeled set (the largest class at least twice the
    smallest): whose class mix `select.per_class: auto` gives the pseudo-labels (pseudo.auto_proportions,
    on the counts the run will have: the labeled images less a val draw)."""
    from .pseudo import auto_proportions
    lo, hi = min(data.per_class), max(data.per_class)
    if hi < 2 * max(lo, 1):
        return None
    k = data.val_per_class
    val = data.val_counts if data.val is not None else [k] * len(data.per_class) if k else None
    labeled = [n - k for n in data.per_class]
    _, whose = auto_proportions(labeled, val)
    if whose == "val":
        whose = ("the class mix of your val/" if data.val is not None else
                 f"the class mix of the val draw ({k} a class: the same count for every class, as the paper)")
    elif val is None:
        whose = "the labeled set's class mix (there is no validation set)"
    elif any(v == 0 < n for v, n in zip(val, labeled)):
        whose = "the labeled set's class mix (val/ has no image of some class)"
    else:
        whose = "the labeled set's class mix (val's differs from it no more than a random draw would)"
    return (f"labeled set long-tailed ({lo}-{hi} a class): select.per_class auto gives the pseudo-labels {whose}"
            " (docs/benchmarks/transfer.md, TI)")


# `init --data ROOT`: find the folders, look at the images, pick a recipe ------------------------

_POOL_NAMES = ("unlabeled", "unlabelled", "pool")
_SMALL_SIDE = 40          # images at most this large train with a bundled small-image recipe
_RESIZE_SIDE = 48         # colour images up to this size train with it too, resized to its 32 px (F48, transfer.md)
_MIN_VAL_CLASS = 10       # a validation draw needs this many images in the smallest class
_MAX_STARTER_SIZE = 224   # the plain starter's largest training size for mixed sizes (timm resnet18's own)


@dataclass
class DataRoot:
    """What `init --data` found under ROOT: the folders and a look at the labeled images."""
    train: Path
    unlabeled: Path
    test: Path
    val: Path | None            # ROOT/val/<class>/ when there is one, else a draw from train/
    classes: list[str]
    per_class: list[int]        # labeled images per class
    pool: int
    tests: int
    sizes: list[tuple[int, int]]    # (height, width) of the sampled labeled images
    colour: bool
    test_is_val: bool = False   # no ROOT/test/: ROOT/val/ is the test set (ImageNet's layout)
    mirror: "MirrorCheck | None" = None     # does a mirror keep the class? (data.mirror; None: not asked)
    val_counts: list[int] | None = None     # images per class in ROOT/val/ when there is one

    @property
    def max_side(self) -> int:
        return max(max(s) for s in self.sizes)

    @property
    def val_per_class(self) -> int:
        """Images per class drawn from train/ for validation: 20, or a fifth of the smallest class,
        or 0 (no validation) below `_MIN_VAL_CLASS`; 0 also when ROOT has its own val/."""
        n = min(self.per_class)
        return 0 if self.val is not None or n < _MIN_VAL_CLASS else min(20, n // 5)

    @property
    def needs_size(self) -> bool:
        """The images are not all one square size, so a run needs `data.image_size` (it stops without)."""
        return len(set(self.sizes)) != 1 or self.sizes[0][0] != self.sizes[0][1]

    def training_size(self, recipe_size: int | None = None) -> int:
        """The square size `init` writes for images of mixed or non-square sizes: a recipe's own size
        (its model and noise were chosen at it), else the median shorter side rounded down to a
        multiple of 8 (so most images are shrunk, few enlarged), from 16 up to 224 px."""
        if recipe_size:
            return int(recipe_size)
        side = int(np.median([min(s) for s in self.sizes]))
        return int(min(_MAX_STARTER_SIZE, max(16, side // 8 * 8)))

    def describe(self) -> str:
        sizes = sorted(set(self.sizes))
        size = f"{sizes[0][1]}x{sizes[0][0]}" if len(sizes) == 1 else f"{len(sizes)} sizes up to {self.max_side} px"
        lo, hi = min(self.per_class), max(self.per_class)
        counts = f"{lo} a class" if lo == hi else f"{lo}-{hi} a class"
        test = f"{self.tests:,} test" + (" (val/, as there is no test/)" if self.test_is_val else "")
        return (f"{len(self.classes)} classes, {sum(self.per_class):,} labeled images ({counts}), "
                f"{self.pool:,} unlabeled, {test}; {size}, {'colour' if self.colour else 'grayscale'}")

    def source_lines(self, image_size: int | None = None, recipe: str | None = None) -> list[str]:
        """The config's data sections for these folders; with `image_size` (images of mixed or
        non-square sizes, since a run stops without one, or `recipe`'s own size) the training size
        line too."""
        def src(**kw) -> str:
            return yaml.safe_dump(kw, default_flow_style=True, sort_keys=False, width=1000).strip()
        k = self.val_per_class
        lines = [f"  # found by `noisystudent init --data`: {self.describe()}"]
        if self.val is not None:
            lines += [f"  labeled:   {src(kind='imagefolder', root=str(self.train))}",
                      f"  val:       {src(kind='imagefolder', root=str(self.val))}   # choose settings on it; test is read once"]
        elif k:
            lines += [f"  labeled:   {src(kind='imagefolder', root=str(self.train), exclude=['val'])}   # less the val draw",
                      f"  val:       {src(kind='imagefolder', root=str(self.train), per_class=k)}   "
                      f"# {k} a class drawn from train/ (seeded): choose settings on it; test is read once"]
        else:
            lines += [f"  labeled:   {src(kind='imagefolder', root=str(self.train))}",
                      f"  # no validation set: the smallest class has {min(self.per_class)} labeled images "
                      f"(a draw needs {_MIN_VAL_CLASS}); add ROOT/val/<class>/ to have one"
                      + (" (with ROOT/test/<class>/: your val/ is the test set now)" if self.test_is_val else "")]
        test_note = "   # no test/: ROOT/val/ is the test set, read once" if self.test_is_val else ""
        lines += [f"  unlabeled: {src(kind='folder', root=str(self.unlabeled))}",
                  f"  test:      {src(kind='imagefolder', root=str(self.test))}{test_note}"]
        if image_size:
            sizes = sorted(set(self.sizes))
            seen = (f"{sizes[0][1]}x{sizes[0][0]}" if len(sizes) == 1 else
                    f"{len(sizes)} sizes, {sizes[0][1]}x{sizes[0][0]} to {sizes[-1][1]}x{sizes[-1][0]}")
            why = (f"the size of the recipe '{recipe}', which beat the plain starter on 48 px images"
                   + ("" if self.needs_size else "; delete this line to train at yours") if recipe
                   else "larger costs compute, smaller loses detail")
            lines.append(f"  image_size: {image_size}   # every image is resized to this square (yours: {seen}); {why}")
        return lines


def inspect_data_root(root: str | Path, unlabeled: str | Path | None = None) -> DataRoot:
    """ROOT/train/<class>/*, ROOT/test/<class>/*, an unlabeled tree (`unlabeled` when given, as a
    large pool often lives apart from the labeled images; else ROOT/unlabeled, unlabelled or pool)
    and optionally ROOT/val/<class>/* (without test/, val/ is the test set): read (listing only,
    plus 16 labeled images) through the sources a run uses, so an error here is the one the run
    would give."""
    from .data.infer import is_colour, sample_images
    from .data.mirror import mirror_check_source
    from .data.sources import read_folder, read_imagefolder
    r = Path(root).expanduser().resolve()
    if not r.is_dir():
        raise UserError(f"--data {root}: not a folder")
    found = sorted(p.name for p in r.iterdir() if p.is_dir() and not p.name.startswith("."))
    layout = "ROOT/train/<class>/*, ROOT/test/<class>/*, ROOT/unlabeled/** (and optionally ROOT/val/<class>/*)"
    if unlabeled is not None:
        pool = Path(unlabeled).expanduser().resolve()
        if not pool.is_dir():
            raise UserError(f"--unlabeled {unlabeled}: not a folder")
    else:
        pool = next((r / n for n in _POOL_NAMES if (r / n).is_dir()), None)
    # ImageNet's layout (train/ and val/, no test/): its val/ is what papers report, so it is the test
    # set here, and validation is drawn from train/ (the usual held-out "minival" of ImageNet work)
    test_is_val = not (r / "test").is_dir() and (r / "val").is_dir()
    test_dir = r / "val" if test_is_val else r / "test"
    for name, p in (("train", r / "train"), ("test", test_dir), ("unlabeled", pool)):
        if p is None or not p.is_dir():
            elsewhere = {"unlabeled": " (or --unlabeled DIR for a pool kept elsewhere)",
                         "test": " (or ROOT/val/<class>/*, then the test set)"}.get(name, "")
            raise UserError(f"--data {r}: no {name}/ folder (found: {', '.join(found) or 'nothing'}); "
                            f"expected {layout}{elsewhere}; or write the config by hand (`noisystudent init DIR`)")
    if unlabeled is not None:     # a pool over the labeled or test images would pseudo-label them
        for p in (r / "train", r / "test", r / "val"):
            if pool == p or pool in p.parents or p in pool.parents:
                raise UserError(f"--unlabeled {pool}: overlaps {p}; point it at a folder of unlabeled images only")
    train, test = read_imagefolder(str(r / "train"), "", 3), read_imagefolder(str(test_dir), "", 3)
    missing = sorted(set(test.classes) - set(train.classes))
    if missing:
        raise UserError(f"--data {r}: {test_dir.name}/ has classes train/ has not: {', '.join(missing[:5])}")
    val = r / "val" if (r / "val").is_dir() and not test_is_val else None
    val_src = read_imagefolder(str(val), "", 3) if val is not None else None
    if val_src is not None and val_src.classes != train.classes:
        raise UserError(f"--data {r}: val/ and train/ have different class folders")
    imgs = sample_images(train)
    if not imgs:
        raise UserError(f"--data {r}: none of the sampled train/ images could be decoded")
    return DataRoot(train=r / "train", unlabeled=pool, test=test_dir, val=val, classes=list(train.classes),
                    per_class=np.bincount(train.labels, minlength=len(train.classes)).tolist(),
                    pool=len(read_folder(str(pool), "", 3)), tests=len(test),
                    sizes=[(im.shape[0], im.shape[1]) for _, im in imgs], colour=any(is_colour(im) for _, im in imgs),
                    test_is_val=test_is_val, mirror=mirror_check_source(train),
                    val_counts=None if val_src is None else np.bincount(val_src.labels, minlength=len(train.classes)).tolist())


class RecipePick(NamedTuple):
    recipe: str | None      # a bundled recipe's name, or None for the plain starter
    why: str                # for the user
    resize: bool = False    # train at the recipe's own size, not the images'


def choose_recipe(data: DataRoot) -> RecipePick:
    """Small images train with the recipes chosen on small images (colour: the CIFAR-10 one,
    grayscale: the Fashion-MNIST one), and colour images up to 48 px with the CIFAR-10 one resized
    to its 32 px (measured against the plain starter: F48 in docs/benchmarks/transfer.md); larger
    ones with the plain starter (a timm resnet18, lengths in steps)."""
    kind = "colour" if data.colour else "grayscale"
    if data.max_side <= _SMALL_SIDE:
        name = "cifar10-4k-fast" if data.colour else "fashion-mnist-1k"
        return RecipePick(name, f"images of at most {data.max_side} px in {kind}: the bundled recipe '{name}' "
                          f"(chosen on {'32 px colour' if data.colour else '28 px grayscale'} images; its steps, noise and schedule)")
    if data.colour and data.max_side <= _RESIZE_SIDE:
        return RecipePick("cifar10-4k-fast", f"colour images of at most {data.max_side} px: the bundled recipe "
                          "'cifar10-4k-fast' with the images resized to its 32 px (on CIFAR-10 enlarged to 48 px its "
                          "student beat the plain starter's by 5-8 points on val, 3 seeds)", resize=True)
    return RecipePick(None, f"images up to {data.max_side} px: the plain starter (a timm resnet18, lengths in optimizer "
                      f"steps); for <= {_SMALL_SIDE} px images (colour: <= {_RESIZE_SIDE} px) the bundled "
                      "small-image recipes are picked instead")


def resolved_config_text(cfg, check_data: bool = True) -> tuple[str, str | None]:
    """(YAML of the resolved config, the problem that stops it from running or None). With
    `check_data`, in_chans/image_size are read from the labeled images, as a run would. A model name
    that is neither timm's nor ours is a problem too (a run would stop on it before any work)."""
    from .config import config_to_dict
    from .pipeline import check_model_names
    problem = None
    try:
        check_model_names(cfg)
    except UserError as e:
        problem = str(e)
    if check_data and problem is None:
        from .data.infer import resolve_data_config
        try:
            cfg = resolve_data_config(cfg)
        except UserError as e:
            problem = str(e)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None, width=100)
    return text, problem


# `init --recipe NAME`: a bundled recipe, its data section swapped for the three folders ----------

# data keys of a recipe that are settings, not its data set's (kept as the recipe has them)
_RECIPE_DATA_KEYS = ("crop_padding", "hflip", "augment_on", "workers", "bad_images", "fingerprint")

_OWN_SOURCES = """\
data:
  # your images; relative paths resolve from this file's folder (edit the three roots)
  labeled:   {kind: imagefolder, root: train, exclude: [val]}   # train/<class>/*.jpg, less the val draw
  val:       {kind: imagefolder, root: train, per_class: 20}    # validation: 20 a class drawn from train/ (seeded)
  unlabeled: {kind: folder, root: unlabeled}                   # any tree of images: the pool to pseudo-label
  test:      {kind: imagefolder, root: test}                    # test/<class>/*.jpg, reported once
  # image_size and in_chans are read from your images (set image_size if they differ in size)
"""


def _recipe_data(text: str) -> dict:
    """The `data:` section of a recipe's YAML text ({} when it has none)."""
    return (yaml.safe_load(text) or {}).get("data") or {}


def recipe_starter_text(path: Path, sources: list[str] | None = None) -> str:
    """The bundled recipe at `path` with its `data:` section replaced by the three-folder layout of
    the starter (plus a validation set carved from train/), or by `sources` (lines), and its name by
    `my-run`; the recipe's lengths, noise and comments stay, so the settings chosen on its validation
    data come along."""
    name, text = path.stem, path.read_text()
    data = _recipe_data(text)
    lines = text.splitlines()
    try:
        start = lines.index("data:")
    except ValueError:
        raise UserError(f"recipe {name}: no top-level 'data:' section to replace") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "#")), len(lines))
    kept = [f"  {k}: {yaml.safe_dump(data[k], default_flow_style=True).strip().removesuffix('...').strip()}"
            + ("   # random mirror: turn off for text, digits, anything asymmetric" if k == "hflip" and data[k] else "")
            for k in _RECIPE_DATA_KEYS if k in data]
    if data.get("image_size") and not any(ln.startswith("  image_size:") for ln in sources or []):
        kept.insert(0, f"  # image_size: {data['image_size']}   # the recipe's training size: uncomment to resize your images to it")
    body = [("name: my-run                 # results go to runs/<name>/ (or --run-dir)" if ln.startswith("name:") else ln)
            for ln in lines[:start]]
    header = [f"# noisystudent starter from the bundled recipe '{name}' (written by `noisystudent init"
              f"{' --data ROOT' if sources else ''} --recipe {name}`).",
              ("# Its data section is yours (found by --data): check it, then:   noisystudent run config.yaml" if sources else
               "# Its data section is yours: edit the three roots below, then:   noisystudent run config.yaml"),
              "# The lengths (optimizer steps), noise and schedule below were chosen on the recipe's own",
              "# validation data; check them on yours (val below) before trusting a change on test.",
              "# `--set variants=[]` skips the comparison students (no noise, supervised) and their time.",
              "#"]
    own = ["data:", *sources] if sources else _OWN_SOURCES.splitlines()
    out = header + body + own + kept + lines[end:]
    return "\n".join(out) + "\n"
