"""Which files are images: the extensions the folder and tar sources offer to the decoder, the optional
HEIC/HEIF decoder, and one warning line for photos no installed decoder reads.

Decoding is Pillow's, plus pillow-heif's plugin for iPhone photos (HEIC) when it is installed
(`pip install 'noisystudent[heif]'`). Files of other types are not data (notes, CSVs) and are left
out in silence; photos of a type this installation cannot decode are left out too, but never in
silence: a folder of iPhone photos would otherwise train on the few JPEGs among them.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import features

__all__ = ["IMAGE_EXTENSIONS", "HEIF", "BROKEN_LINK", "unreadable_photos"]

# Pillow decodes these in every build; .jpe and .jfif are JPEG too (Windows saves web JPEGs as .jfif)
_ALWAYS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
           ".ppm", ".pgm", ".pbm", ".pnm")
_AVIF = (".avif",)                      # Pillow >= 11.2 wheels carry libavif; other builds may not
_HEIF = (".heic", ".heif", ".hif")      # pillow-heif's extensions (iPhones save HEIC by default)
# camera raw files: photos, but they need demosaicing that neither decoder does
_RAW = (".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".orf", ".rw2", ".raf", ".srw", ".pef")


def _register_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow when it is installed. It applies the file's
    own rotation (HEIF keeps it outside EXIF) and resets the EXIF orientation tag to 1, so
    `decode.upright` does not turn the image a second time."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


HEIF = _register_heif()
AVIF = bool(features.check("avif"))
IMAGE_EXTENSIONS = _ALWAYS + (_AVIF if AVIF else ()) + (_HEIF if HEIF else ())


# the key of `ignored` that counts links to image files whose target is missing (an unmounted disk)
BROKEN_LINK = "broken link"


def unreadable_photos(root: Path | str, ignored: Counter) -> str | None:
    """A warning line for the files left out of `root` (`ignored`: lowercased extension -> count, and
    BROKEN_LINK) that are photos no installed decoder reads, saying how to read them, or links to
    images whose target is missing; None when there are none."""
    missing = {".heic": HEIF, ".heif": HEIF, ".hif": HEIF, ".avif": AVIF}
    found = {e: n for e, n in sorted(ignored.items()) if e in _RAW or (e in missing and not missing[e])}
    links = ignored.get(BROKEN_LINK, 0)
    if not found:
        return f"{root}: {links} link(s) to images left out, their targets are missing" if links else None
    how = []
    if any(e in _HEIF for e in found):
        how.append("`pip install pillow-heif` reads HEIC/HEIF")
    if ".avif" in found:
        how.append("a Pillow built with AVIF (the PyPI wheels >= 11.2) reads AVIF")
    if any(e in _RAW for e in found):
        how.append("convert camera raw files to JPEG or PNG")
    if links:
        how.append(f"{links} link(s) to images left out too, their targets are missing")
    kinds = ", ".join(f"{e}: {n}" for e, n in found.items())
    return (f"{root}: {sum(found.values())} photo(s) left out, no installed decoder reads them ({kinds}); "
            + "; ".join(how))
