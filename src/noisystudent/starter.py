"""`noisystudent init DIR` (a commented starter config, or with `--recipe NAME` a bundled recipe
with your three folders as its data) and `noisystudent config CONFIG` (the resolved config, every
default filled in)."""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UserError

__all__ = ["TEMPLATE", "write_starter", "recipe_starter_text", "resolved_config_text"]

TEMPLATE = Path(__file__).parent / "templates" / "own-data.yaml"


def write_starter(directory: str | Path, force: bool = False, recipe: Path | None = None) -> Path:
    """Write DIR/config.yaml from the template, or from the recipe at `recipe` (a bundled config)
    (refusing to overwrite unless `force`)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UserError(f"{d} exists and is not a directory")
    out = d / "config.yaml"
    if out.exists() and not force:
        raise UserError(f"{out} already exists; edit it, or pass --force to overwrite it")
    text = recipe_starter_text(recipe) if recipe else TEMPLATE.read_text()
    d.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def resolved_config_text(cfg, check_data: bool = True) -> tuple[str, str | None]:
    """(YAML of the resolved config, the problem that stops it from running or None). With
    `check_data`, in_chans/image_size are read from the labeled images, as a run would."""
    from .config import config_to_dict
    problem = None
    if check_data:
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


def recipe_starter_text(path: Path) -> str:
    """The bundled recipe at `path` with its `data:` section replaced by the three-folder layout of
    the starter (plus a validation set carved from train/) and its name by `my-run`; the recipe's
    lengths, noise and comments stay, so the settings chosen on its validation data come along."""
    name, text = path.stem, path.read_text()
    data = (yaml.safe_load(text) or {}).get("data") or {}
    lines = text.splitlines()
    try:
        start = lines.index("data:")
    except ValueError:
        raise UserError(f"recipe {name}: no top-level 'data:' section to replace") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "#")), len(lines))
    kept = [f"  {k}: {yaml.safe_dump(data[k], default_flow_style=True).strip().removesuffix('...').strip()}"
            + ("   # random mirror: turn off for text, digits, anything asymmetric" if k == "hflip" and data[k] else "")
            for k in _RECIPE_DATA_KEYS if k in data]
    if data.get("image_size"):
        kept.insert(0, f"  # image_size: {data['image_size']}   # the recipe's training size: uncomment to resize your images to it")
    body = [("name: my-run                 # results go to runs/<name>/ (or --run-dir)" if ln.startswith("name:") else ln)
            for ln in lines[:start]]
    header = [f"# noisystudent starter from the bundled recipe '{name}' (written by `noisystudent init --recipe {name}`).",
              "# Its data section is yours: edit the three roots below, then:   noisystudent run config.yaml",
              "# The lengths (optimizer steps), noise and schedule below were chosen on the recipe's own",
              "# validation data; check them on yours (val below) before trusting a change on test.",
              "# `--set variants=[]` skips the comparison students (no noise, supervised) and their time.",
              "#"]
    out = header + body + _OWN_SOURCES.splitlines() + kept + lines[end:]
    return "\n".join(out) + "\n"
