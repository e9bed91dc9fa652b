"""Stages: thin adapters, each reading earlier stages' files and writing only its own folder."""
from .common import RunContext, StageResult, run_stage
from .modelfile import load_model, save_model
from .evaluate import evaluate_source, evaluate_stage
from .label import label_pool
from .select import select_pseudo_labels
from .train import finetune, train_student, train_teacher

__all__ = ["RunContext", "StageResult", "load_model", "run_stage", "save_model", "evaluate_source",
           "evaluate_stage", "label_pool", "select_pseudo_labels", "finetune", "train_student", "train_teacher"]
