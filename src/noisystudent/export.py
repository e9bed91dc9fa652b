"""`noisystudent export --checkpoint model.pt --format torchscript|onnx|safetensors`.

Each export is reloaded the way a user would load it (torch.jit.load, onnxruntime, a fresh timm model
+ safetensors) and its logits are compared with the original model's on the same batch; a mismatch
is an error, not a warning. Beside every file goes `<name>.json`: classes, image_size, in_chans,
mean/std — the preprocessing the model expects (resize to image_size, scale to [0, 1], normalise).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import UserError

__all__ = ["FORMATS", "export_model"]

FORMATS = ("torchscript", "onnx", "safetensors")
_SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx", "safetensors": ".safetensors"}
_META_KEYS = ("model_name", "num_classes", "in_chans", "classes", "image_size", "mean", "std")


def _example(meta: dict, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, meta["in_chans"], meta["image_size"], meta["image_size"], generator=g)


def _need(module: str, fmt: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"--format {fmt} needs the '{module}' package: pip install 'noisystudent[export]'") from None


def _torchscript(model, x, path: Path):
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, x), str(path))
        return torch.jit.load(str(path))(x)


def _onnx(model, x, path: Path):
    _need("onnx", "onnx")
    ort = _need("onnxruntime", "onnx")
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the exporter's deprecation/tracer chatter
        torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(["logits"], {"images": x.numpy()})[0])


def _safetensors(model, x, path: Path, meta: dict):
    _need("safetensors", "safetensors")
    from safetensors.torch import load_file, save_file
    from .models import create_model
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"noisystudent": json.dumps({k: meta[k] for k in _META_KEYS})})
    fresh = create_model(meta["model_name"], meta["num_classes"], meta["in_chans"]).eval()
    fresh.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        return fresh(x)


def export_model(checkpoint: str | Path, fmt: str, out: str | Path | None = None, atol: float = 1e-4) -> dict:
    """Export, reload, compare logits. Returns {"path", "format", "max_abs_diff", "meta_path"}."""
    from .stages.modelfile import load_model
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not Path(checkpoint).is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    model, meta = load_model(checkpoint, "cpu")
    path = Path(out) if out else Path(checkpoint).with_suffix("").with_name(Path(checkpoint).stem + _SUFFIX[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)
    x = _example(meta)
    with torch.no_grad():
        ref = model(x)
    got = {"torchscript": lambda: _torchscript(model, x, path), "onnx": lambda: _onnx(model, x, path),
           "safetensors": lambda: _safetensors(model, x, path, meta)}[fmt]()
    diff = float((got.detach().float() - ref.float()).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    if not diff <= atol * scale:
        raise UserError(f"{path}: reloaded {fmt} logits differ from the model's by {diff:.3g} "
                        f"(tolerance {atol * scale:.3g}); the export is not faithful")
    meta_path = path.with_name(path.name + ".json")
    meta_path.write_text(json.dumps({k: meta[k] for k in _META_KEYS} | {"format": fmt}, indent=2) + "\n")
    return {"path": str(path), "format": fmt, "max_abs_diff": diff, "meta_path": str(meta_path)}
