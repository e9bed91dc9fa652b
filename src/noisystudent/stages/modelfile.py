"""Final model files: the weights plus everything needed to rebuild the model and preprocess its
inputs (`meta`), saved with `artifacts.save_checkpoint` and loaded `weights_only`. A file is checked
(metadata types and bounds, weights of exactly the named architecture's shapes) before anything is
built from it, so a damaged or foreign file is one clear line, not a traceback or a huge allocation.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..artifacts import load_checkpoint, save_checkpoint
from ..data import max_side_for
from ..errors import UserError
from ..models import create_model

__all__ = ["save_model", "load_model", "check_model_file", "model_max_side", "run_views", "MAX_CLASSES"]



def save_model(path: Path, model: torch.nn.Module, meta: dict) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"format": "noisystudent/model/1", "model": state, "meta": meta})


MAX_CLASSES = 1_000_000


def _expected_shapes(name: str, num_classes: int, in_chans: int) -> dict[str, tuple]:
    """The state dict's shapes of `name` built for `num_classes`, without allocating them: on the
    `meta` device where the architecture allows it; otherwise (its __init__ computes with tensors)
    from two real builds with 2 and 3 classes, whose difference shows which dims are the classes."""
    try:
        with torch.device("meta"):
            ref = create_model(name, num_classes, in_chans)
        return {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - e.g. "Cannot copy out of meta tensor"
        pass
    a, b = ({k: tuple(v.shape) for k, v in create_model(name, n, in_chans).state_dict().items()} for n in (2, 3))
    out = {}
    for k, sa in a.items():
        sb = b.get(k, sa)
        out[k] = tuple(num_classes if (x, y) == (2, 3) else x for x, y in zip(sa, sb)) if sa != sb else sa
    return out


def check_model_file(path, state) -> dict:
    """Check a loaded model file before anything is built from it: the metadata's types and bounds,
    and that the weights have exactly the shapes the named architecture has for that metadata (the
    architecture is built on the `meta` device for this: no memory, whatever the file claims).
    Returns the metadata."""
    if not isinstance(state, dict) or not isinstance(state.get("meta"), dict) \
            or not isinstance(state.get("model"), dict):
        raise UserError(f"{path}: not a noisystudent model file (no 'meta'/'model' entries)")
    meta, weights = state["meta"], state["model"]

    def need(cond, key, what):
        if not cond:
            raise UserError(f"{path}: damaged model metadata: meta.{key} {what} (got {str(meta.get(key))[:40]!r}); "
                            "use a model.pt written by noisystudent")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def numbers(v, n):
        return isinstance(v, (list, tuple)) and len(v) == n and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    need(isinstance(meta.get("model_name"), str) and meta["model_name"], "model_name", "must be a model name")
    need(is_int(meta.get("num_classes")) and 2 <= meta["num_classes"] <= MAX_CLASSES, "num_classes",
         f"must be an integer in [2, {MAX_CLASSES}]")
    need(meta.get("in_chans") in (1, 3) and is_int(meta.get("in_chans")), "in_chans", "must be 1 or 3")
    need(isinstance(meta.get("classes"), list) and len(meta["classes"]) == meta["num_classes"]
         and all(isinstance(c, str) for c in meta["classes"]), "classes", "must list num_classes class names")
    need(is_int(meta.get("image_size")) and 1 <= meta["image_size"] <= 8192, "image_size", "must be in [1, 8192]")
    need(numbers(meta.get("mean"), meta["in_chans"]), "mean", "must be in_chans finite numbers")
    need(numbers(meta.get("std"), meta["in_chans"]) and all(x > 0 for x in meta["std"]), "std",
         "must be in_chans numbers > 0")
    for key in ("drop_rate", "drop_path_rate"):
        v = meta.get(key, 0.0)
        need(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1, key, "must be in [0, 1)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise UserError(f"{path}: not a noisystudent model file ('model' must map names to tensors)")
    name = meta["model_name"]
    try:
        want = _expected_shapes(name, meta["num_classes"], meta["in_chans"])
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if want != got:
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        shape = next((k for k in want if k in got and want[k] != got[k]), None)
        detail = (f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}" if extra else
                  f"{shape}: {list(got[shape])} in the file, {list(want[shape])} for {meta['num_classes']} classes")
        raise UserError(f"{path}: weights do not fit {name} ({detail})")
    return meta


def model_max_side(meta: dict, *sizes: int) -> int:
    """The `max_side` of the run that wrote the model (from the config saved in its metadata), so a
    command on the model file keeps images as large as the run did; `sizes`: others it resizes to."""
    cfg = meta.get("config") or {}
    data, ft = cfg.get("data") or {}, cfg.get("finetune") or {}
    return max_side_for(meta["image_size"], data.get("image_size") or 0,
                        (ft.get("image_size") or 0) if ft.get("enabled") else 0, *sizes)


def run_views(meta: dict, flip_tta: bool | None = None, shift_tta: int | None = None) -> tuple[bool, int]:
    """The test-time views a command on a model file uses: those given, else the ones the run that
    wrote it evaluated with (`evaluate.flip_tta` / `shift_tta` of the config saved in its metadata;
    none for a model without one), so `evaluate` and `predict` reproduce the run's eval.json."""
    ecfg = (meta.get("config") or {}).get("evaluate") or {}
    return (bool(ecfg.get("flip_tta", False)) if flip_tta is None else bool(flip_tta),
            int(ecfg.get("shift_tta", 0) or 0) if shift_tta is None else int(shift_tta))


def load_model(path: str | Path, device: torch.device | str = "cpu", *, expect_classes: list | None = None,
               noised: bool = False, channels_last: bool = False) -> tuple[torch.nn.Module, dict]:
    """Rebuild the architecture named in the file and load its weights (strictly). `noised` builds it
    with the dropout/stochastic-depth rates it was trained with (the noised-teacher ablation).
    `channels_last` lays its weights out NHWC, as it trained with that setting: the same logits to
    float rounding, 1.6x the images/s of fp32 NCHW for ns_cnn_s on a CPU (evaluation and labeling)."""
    state = load_checkpoint(path)
    meta = check_model_file(path, state)
    if expect_classes is not None and list(meta["classes"]) != list(expect_classes):
        raise UserError(f"{path}: trained for {meta['num_classes']} classes {meta['classes'][:5]}..., "
                        f"but the data has {len(expect_classes)} classes {list(expect_classes)[:5]}...")
    rates = (meta.get("drop_rate", 0.0), meta.get("drop_path_rate", 0.0)) if noised else (0.0, 0.0)
    model = create_model(meta["model_name"], meta["num_classes"], meta["in_chans"], *rates)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit {meta['model_name']} "
                        f"({str(e).splitlines()[0][:150]})") from None
    model = model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, meta
