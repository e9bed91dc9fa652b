"""`noisystudent init DIR` (a commented starter config) and `noisystudent config CONFIG` (the
resolved config, every default filled in)."""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UserError

__all__ = ["TEMPLATE", "write_starter", "resolved_config_text"]

TEMPLATE = Path(__file__).parent / "templates" / "own-data.yaml"


def write_starter(directory: str | Path, force: bool = False) -> Path:
    """Write DIR/config.yaml from the template (refusing to overwrite unless `force`)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UserError(f"{d} exists and is not a directory")
    out = d / "config.yaml"
    if out.exists() and not force:
        raise UserError(f"{out} already exists; edit it, or pass --force to overwrite it")
    d.mkdir(parents=True, exist_ok=True)
    out.write_text(TEMPLATE.read_text())
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
