"""Explicit data, nothing assumed: the required data sections, and `in_chans`/`image_size` read from
the labeled images when the config leaves them out (or a one-line error saying which key to set).

Earlier versions defaulted every data section to the digits demo, so a config that forgot
`data.unlabeled` trained on digits without a word; now a missing section stops the run naming it.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..errors import UserError
from .decode import BadImage
from .sources import create_source

__all__ = ["require_data", "resolve_data_config", "sample_images", "create_source_noted", "is_colour"]

log = logging.getLogger("noisystudent")

_EXAMPLES = {
    "labeled": "{kind: imagefolder, root: train/}  (root/<class>/<images>)",
    "test": "{kind: imagefolder, root: test/}  (same class folders as data.labeled)",
    "unlabeled": "{kind: folder, root: unlabeled/}  (any tree of images)",
}


def require_data(cfg) -> None:
    """One line naming the first data section the run needs but the config does not state."""
    needed = ["labeled", "test"] + (["unlabeled"] if cfg.rounds > 0 else [])
    for name in needed:
        if getattr(cfg.data, name) is None:
            why = f" (rounds: {cfg.rounds} needs a pool to pseudo-label)" if name == "unlabeled" else ""
            raise UserError(f"config key 'data.{name}' is required{why}; e.g. data.{name}: {_EXAMPLES[name]}"
                            " — nothing is assumed (see `noisystudent init`)")


def create_source_noted(scfg, in_chans: int, key: str, exclude_ids: set | None = None):
    """create_source, with a note on where relative paths resolve when a root is not found."""
    try:
        return create_source(scfg, in_chans, key, exclude_ids=exclude_ids)
    except UserError as e:
        if "not found" in str(e) and scfg.root:
            raise UserError(f"{e} [config key '{key}.root'; a relative root in a config file resolves "
                            "from that file's directory, one given with --set from the current "
                            "directory]") from None
        raise


def sample_images(source, n: int = 16) -> list[tuple[str, np.ndarray]]:
    """Up to `n` decodable images spread evenly over the source (so every class folder is seen)."""
    idx = np.unique(np.linspace(0, len(source) - 1, num=min(n, len(source))).round().astype(int))
    out = []
    for i in idx:
        try:
            out.append((source.ids[i], source.load(int(i))))
        except BadImage:
            continue
    return out


def is_colour(img: np.ndarray) -> bool:
    if img.shape[2] < 3:
        return False
    a = img.astype(np.int16)
    return float(np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean()) > 2.0


def resolve_data_config(cfg):
    """Check the data sections, then fill `data.in_chans`/`data.image_size` from the labeled images
    when unset; warn when colour images are about to be trained as grayscale. Returns a new Config."""
    require_data(cfg)
    d = cfg.data
    if d.in_chans is not None and d.image_size is not None and d.in_chans == 3:
        return cfg
    if d.labeled.kind in ("digits", "idx") and d.in_chans is not None and d.image_size is not None:
        return cfg          # grayscale by nature
    src = create_source_noted(d.labeled, 3, "data.labeled")
    imgs = sample_images(src)
    if not imgs:
        return cfg          # every sampled file is bad: the labeled set's own check names them
    colour = [sid for sid, im in imgs if is_colour(im)]
    in_chans, image_size = d.in_chans, d.image_size
    if in_chans is None:
        in_chans = 3 if colour else 1
        log.info("data.in_chans not set: %d (%s labeled images)", in_chans, "colour" if colour else "grayscale")
    elif in_chans == 1 and colour:
        log.warning("data.in_chans is 1 but the labeled images are in colour (e.g. %s): they are converted "
                    "to grayscale; set data.in_chans: 3 to keep the colour", colour[0])
    if image_size is None:
        sizes = sorted({(im.shape[0], im.shape[1]) for _, im in imgs})
        if len(sizes) == 1 and sizes[0][0] == sizes[0][1] and sizes[0][0] >= 4:
            image_size = sizes[0][0]
            log.info("data.image_size not set: %d px (the labeled images' size)", image_size)
        else:
            shown = ", ".join(f"{w}x{h}" for h, w in sizes[:4])
            raise UserError("config key 'data.image_size' is required: the labeled images are not all one "
                            f"square size ({shown}); set the training resolution in pixels (images are "
                            "resized to a square)")
    for key in ("mean", "std"):
        v = getattr(d, key)
        if v is not None and len(v) != in_chans:
            raise UserError(f"config key 'data.{key}': needs one value per channel (data.in_chans={in_chans}), "
                            f"got {len(v)}")
    return dataclasses.replace(cfg, data=dataclasses.replace(d, in_chans=in_chans, image_size=image_size))
