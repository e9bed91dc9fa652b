"""noisystudent: Noisy Student Training (Xie et al., CVPR 2020) in PyTorch.

Python API mirroring the CLI:

    from noisystudent import load_config, run
    summary = run(load_config("configs/digits-demo.yaml"))

Stage functions take a `RunContext` (config + run directory) and a round number:
`train_teacher(ctx)`, `label(ctx, k)`, `select(ctx, k)`, `train_student(ctx, k)`, `finetune(ctx, k)`,
`evaluate(ctx, k, which)`. After training: `predict(model_or_path, images)` (top-k rows per image) and
`export_model(checkpoint, "torchscript" | "onnx" | "safetensors")` (reloaded and checked).
"""
from .config import Config, load_config
from .errors import UserError
from .models import create_model
from .export import export_model
from .pipeline import run
from .prediction import predict, write_predictions
from .stages import RunContext, finetune, load_model, train_student, train_teacher
from .stages import evaluate_stage as evaluate
from .stages import label_pool as label
from .stages import select_pseudo_labels as select

__version__ = "0.1.0"
__all__ = ["Config", "load_config", "UserError", "create_model", "run", "RunContext", "train_teacher",
           "label", "select", "train_student", "finetune", "evaluate", "load_model", "predict", "write_predictions", "export_model", "__version__"]
