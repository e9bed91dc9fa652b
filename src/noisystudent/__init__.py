"""noisystudent: Noisy Student Training (Xie et al., CVPR 2020) in PyTorch.

Python API mirroring the CLI:

    from noisystudent import load_config, run
    summary = run(load_config("configs/digits-demo.yaml"))

Stage functions take a `RunContext` (config + run directory) and a round number:
`train_teacher(ctx)`, `label(ctx, k)`, `select(ctx, k)`, `train_student(ctx, k)`, `finetune(ctx, k)`,
`evaluate(ctx, k, which)`. After training: `predict(model_or_path, images)` (top-k rows per image) and
`export_model(checkpoint, "torchscript" | "onnx" | "safetensors")` (reloaded and checked).
"""
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # what type checkers and editors see; at run time __getattr__ below imports them
    from .config import Config, load_config
    from .errors import UserError
    from .export import export_model
    from .models import create_model
    from .pipeline import run
    from .prediction import predict, write_predictions
    from .stages import RunContext, finetune, load_model, train_student, train_teacher
    from .stages import evaluate_stage as evaluate
    from .stages import label_pool as label
    from .stages import select_pseudo_labels as select

# The API is imported on first use (PEP 562), not with the package: `noisystudent.cli` must run
# before torch is imported, to choose OpenMP's wait policy for the command (cli.py says why).
_API = {   # public name -> (module, name there)
    "Config": (".config", "Config"), "load_config": (".config", "load_config"),
    "UserError": (".errors", "UserError"), "create_model": (".models", "create_model"),
    "export_model": (".export", "export_model"), "run": (".pipeline", "run"),
    "predict": (".prediction", "predict"), "write_predictions": (".prediction", "write_predictions"),
    "RunContext": (".stages", "RunContext"), "finetune": (".stages", "finetune"),
    "load_model": (".stages", "load_model"), "train_student": (".stages", "train_student"),
    "train_teacher": (".stages", "train_teacher"), "evaluate": (".stages", "evaluate_stage"),
    "label": (".stages", "label_pool"), "select": (".stages", "select_pseudo_labels"),
}

__version__ = "0.1.0"
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'noisystudent' has no attribute '{name}'")
    module, attr = _API[name]
    value = getattr(import_module(module, __name__), attr)
    globals()[name] = value          # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
