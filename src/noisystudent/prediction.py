"""Predictions for new images with a trained model, using the preprocessing saved in the model file.

    from noisystudent import predict
    rows = predict("runs/x/round1/student/model.pt", "photos/")       # a folder, any source, arrays
    rows[0] -> {"sample_id": "a.jpg", "pred_class": "cat", "confidence": 0.93,
                "top_classes": ["cat", "dog", ...], "top_probs": [0.93, 0.05, ...]}

CLI: `noisystudent predict --checkpoint model.pt --data folder:photos --out preds.csv` (or .parquet).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

__all__ = ["predict", "write_predictions", "as_source"]


def as_source(images: Any, in_chans: int, key: str = "images"):
    """A Source from: a Source; a SourceConfig; 'KIND:PATH[:SPLIT]'; a directory (imagefolder when it
    holds only class folders of images, else a flat/any-tree `folder`); image file paths; or a uint8
    NHWC array / list of HWC arrays."""
    from .config import SourceConfig
    from .data import ArraySource, FileSource, Source, create_source
    if isinstance(images, Source):
        return images
    if isinstance(images, SourceConfig):
        return create_source(images, in_chans, key)
    if isinstance(images, np.ndarray) or (isinstance(images, list) and images and isinstance(images[0], np.ndarray)):
        arr = _arrays(images, in_chans, key)
        n = len(arr)
        return ArraySource("array", [str(i) for i in range(n)], np.full(n, -1, dtype=np.int64), None,
                           in_chans, images=arr)
    if isinstance(images, (list, tuple)):
        paths = [Path(p) for p in images]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"{key}: image file not found: {missing[0]}")
        return FileSource("files", [str(p) for p in paths], np.full(len(paths), -1, dtype=np.int64), None,
                          in_chans, root=Path("."))
    text = str(images)
    if ":" in text and not Path(text).exists() and text.split(":")[0].isalpha() and len(text.split(":")[0]) > 1:
        from .cli import parse_source_spec
        return create_source(parse_source_spec(text), in_chans, key)
    p = Path(text)
    if not p.is_dir():
        raise UserError(f"{key}: not a directory, source spec (KIND:PATH) or list of images: {text}")
    return create_source(SourceConfig(kind="folder", root=str(p)), in_chans, key)


def _arrays(images, in_chans: int, key: str):
    """A uint8 NHWC batch (or a list of HW / HWC images) as the model's `in_chans` channels, each image
    as `open_image` would decode its file (`data.decode.from_array`); a batch whose channels already
    match is used as it is."""
    from .data.decode import from_array
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            from_array(images, in_chans, key)                       # stops with the dtype's line
        if images.ndim == 3 and images.shape[2] in (3, 4) and images.shape[1] > 4:
            # read as (N, H, W) it would be N gray images 3 or 4 px wide: it is one colour image
            raise UserError(f"{key}: shape {tuple(images.shape)} is one image (H, W, C); pass a batch: "
                            "images[None], or a list [image]")
        if images.ndim == 3:                                        # (N, H, W): grayscale
            images = images[..., None]
        if images.ndim == 4 and images.shape[3] == in_chans:
            return images
        if images.ndim not in (3, 4):
            raise UserError(f"{key}: a batch must be (N, H, W) or (N, H, W, C), got shape {tuple(images.shape)}")
        if images.ndim == 4 and not 1 <= images.shape[3] <= 4 and 1 <= images.shape[1] <= 4:
            raise UserError(f"{key}: shape {tuple(images.shape)} looks channels-first (N, C, H, W), a torch "
                            "tensor's layout; pass images.transpose(0, 2, 3, 1)")
        return np.stack([from_array(a, in_chans, f"{key}[{i}]") for i, a in enumerate(images)])
    return [from_array(a, in_chans, f"{key}[{i}]") for i, a in enumerate(images)]


def _load(model_or_path, device):
    from .stages.modelfile import load_model
    if isinstance(model_or_path, (str, Path)):
        if not Path(model_or_path).is_file():
            raise UserError(f"checkpoint not found: {model_or_path}")
        return load_model(model_or_path, device)
    if isinstance(model_or_path, tuple) and len(model_or_path) == 2:
        model, meta = model_or_path
        return model.to(device).eval(), meta
    raise UserError("predict: pass a model.pt path or a (model, meta) pair from load_model")


@torch.no_grad()
def predict(model_or_path, images, *, top_k: int = 5, batch_size: int | str = "auto", device: str = "cpu",
            workers: int | str = "auto", skip_bad: bool = True, flip_tta: bool | None = None,
            shift_tta: int | None = None) -> list[dict]:
    """One row per decodable image: sample_id, pred (index), pred_class, confidence, top_classes,
    top_probs (top_k of them), and label/label_class when the source has labels. `workers`: decode
    processes, or `auto` (none on a CPU, the cores less one on a GPU: `data.loaders.resolve_workers`);
    `batch_size` `auto`: as the label stage (`inference.inference_batch_size`). `device`: as in a
    config (`auto`, `cpu`, `cuda`, `cuda:N`); one this machine lacks is a UserError. `flip_tta` /
    `shift_tta`: the probabilities averaged over each image's mirror / +-N pixel shifts as the label
    and evaluate stages do with theirs; None (the default): the views the run that wrote the model
    evaluated with (`stages.modelfile.run_views`), so predictions score as its eval.json says."""
    from .data.loaders import resolve_workers
    from .distributed import resolve_device
    from .inference import inference_batch_size, iter_logits, mean_view_probs
    from .stages.modelfile import model_max_side, run_views
    if shift_tta is not None and shift_tta < 0:
        raise UserError(f"predict: shift_tta {shift_tta} must be >= 0 pixels (0 = off)")
    dev = resolve_device(str(device))
    model, meta = _load(model_or_path, dev)
    flip_tta, shift_tta = run_views(meta, flip_tta, shift_tta)
    src = as_source(images, meta["in_chans"])
    src.max_side = model_max_side(meta)          # the pixels the run's evaluation saw (and photos decode faster)
    classes = list(meta["classes"])
    k = max(1, min(top_k, len(classes)))
    rows = []
    batch_size = inference_batch_size(batch_size, dev, meta["image_size"])
    for views, idx in iter_logits(model, src, meta["image_size"], meta["mean"], meta["std"], batch_size=batch_size,
                                  device=dev, workers=resolve_workers(workers, dev), skip_bad=skip_bad,
                                  hflip=flip_tta, shift=shift_tta):
        probs = mean_view_probs(views)
        p, c = probs.topk(k, dim=1)
        for j, i in enumerate(idx.tolist()):
            row = {"sample_id": src.ids[i], "pred": int(c[j, 0]), "pred_class": classes[int(c[j, 0])],
                   "confidence": float(p[j, 0]), "top_classes": [classes[int(t)] for t in c[j]],
                   "top_probs": [float(v) for v in p[j]]}
            label = int(src.labels[i])
            if label >= 0 and src.classes is not None:
                row["label_class"] = src.classes[label]
            rows.append(row)
    return rows


def write_predictions(rows: list[dict], out: str | Path) -> Path:
    """Write rows as .csv (flat columns top1_class, top1_prob, ...) or .parquet (list columns too)."""
    import pyarrow as pa
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise UserError(f"--out {out}: use a .csv or .parquet file name")
    k = max((len(r["top_classes"]) for r in rows), default=0)
    cols: dict[str, list] = {c: [r.get(c) for r in rows] for c in ("sample_id", "pred_class", "confidence")}
    if any("label_class" in r for r in rows):
        cols["label_class"] = [r.get("label_class") for r in rows]
    for t in range(k):
        cols[f"top{t + 1}_class"] = [r["top_classes"][t] for r in rows]
        cols[f"top{t + 1}_prob"] = [r["top_probs"][t] for r in rows]
    table = pa.table(cols) if rows else pa.table({"sample_id": pa.array([], pa.string())})
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        import pyarrow.csv as pcsv
        pcsv.write_csv(table, out)
    else:
        import pyarrow.parquet as pq
        pq.write_table(table.append_column("top_classes", pa.array([r["top_classes"] for r in rows]))
                       .append_column("top_probs", pa.array([r["top_probs"] for r in rows])), out)
    return out
