"""Pretrained and warm starts: `pretrained: true` (timm's weights: the hub or the local cache),
`pretrained_file:` (a local timm weights file, .safetensors/.pth/.bin, offline), `init_checkpoint:`
(the user's own model.pt or state dict). Tensors whose shape differs from the new model's — the
classifier when the class count differs, or the stem for another in_chans — are re-initialised (the
stem is adapted with timm's `adapt_input_conv` when only the channel count differs); any other
mismatch is an error naming the key."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UserError

__all__ = ["warm_start", "warm_start_identity"]

log = logging.getLogger("noisystudent")


def warm_start_identity(tcfg, key: str) -> dict | None:
    """What the stage fingerprint needs to know: the source of the initial weights and, for files,
    their content hash (a replaced file redoes the stage)."""
    from ..artifacts import file_hash
    path = tcfg.init_checkpoint or tcfg.pretrained_file
    if path:
        p = Path(path)
        if not p.is_file():
            name = "init_checkpoint" if tcfg.init_checkpoint else "pretrained_file"
            raise UserError(f"config key '{key}.{name}': file not found: {p} (a relative path in a config "
                            "file resolves from that file's directory)")
        return {"file": str(p), "sha256": file_hash(p)}
    return {"timm_pretrained": True} if tcfg.pretrained else None


def _read_state(path: Path, key: str) -> dict:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{key}: reading {path.name} needs safetensors: pip install 'noisystudent[export]'") from None
        return load_file(str(path))
    from ..artifacts import load_checkpoint
    state = load_checkpoint(path)
    for k in ("model", "state_dict", "model_state_dict"):      # our model.pt, timm/lightning checkpoints
        if isinstance(state, dict) and isinstance(state.get(k), dict):
            state = state[k]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{key}: {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _timm_state(name: str, key: str) -> dict:
    import timm
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as e:  # noqa: BLE001 - hub/network/cache failures all mean the same to the user
        raise UserError(f"config key '{key}.pretrained': could not get timm's pretrained weights for {name} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); offline, "
                        f"set {key}.pretrained_file to a local weights file") from None


def warm_start(model: nn.Module, tcfg, name: str, key: str) -> str | None:
    """Load the configured initial weights into `model` in place; returns a one-line description."""
    if tcfg.init_checkpoint:
        src, state = tcfg.init_checkpoint, _read_state(Path(tcfg.init_checkpoint), f"{key}.init_checkpoint")
    elif tcfg.pretrained_file:
        src, state = tcfg.pretrained_file, _read_state(Path(tcfg.pretrained_file), f"{key}.pretrained_file")
    elif tcfg.pretrained:
        src, state = f"timm:{name}", _timm_state(name, key)
    else:
        return None
    own = model.state_dict()
    head = _classifier_keys(model)
    load, reinit = {}, []
    for k, v in state.items():
        if k not in own:
            continue
        if v.shape == own[k].shape:
            load[k] = v
        elif k in head:
            reinit.append(k)
        elif v.ndim == 4 and own[k].ndim == 4 and v.shape[0] == own[k].shape[0] and v.shape[2:] == own[k].shape[2:]:
            from timm.models import adapt_input_conv
            load[k] = adapt_input_conv(own[k].shape[1], v)     # RGB stem -> grayscale (or back)
        else:
            raise UserError(f"{key}: weights from {src} do not fit {name}: '{k}' is {tuple(v.shape)} there, "
                            f"{tuple(own[k].shape)} here")
    missing = [k for k in own if k not in load and k not in head and not k.endswith("num_batches_tracked")]
    if not load or len(missing) > len(own) // 2:
        raise UserError(f"{key}: weights from {src} do not match {name} ({len(load)} of {len(own)} tensors "
                        f"fit; e.g. missing '{missing[0] if missing else '?'}'); is it the same architecture?")
    model.load_state_dict(load, strict=False)
    msg = (f"{key}: initialised {len(load)}/{len(own)} tensors from {src}"
           + (f"; classifier re-initialised ({len(reinit)} tensors: class count differs)" if reinit else ""))
    log.info("%s", msg)
    return msg


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier (timm's `get_classifier()`), re-initialised on a class mismatch."""
    try:
        clf = model.get_classifier()
    except AttributeError:
        return set()
    ids = {id(m) for m in clf.modules()} if isinstance(clf, nn.Module) else set()
    keys = set()
    for mname, m in model.named_modules():
        if id(m) in ids:
            keys |= {f"{mname}.{p}" if mname else p for p in m.state_dict()}
    return keys
