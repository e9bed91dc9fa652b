"""Classification metrics on logits (pure functions): top-k, per-class, confusion, calibration."""
from __future__ import annotations

import torch

__all__ = ["topk_accuracy", "confusion_matrix", "per_class_accuracy", "expected_calibration_error",
           "classification_report"]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item() if len(labels) else float("nan")


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows: true class; columns: predicted class."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> list[float | None]:
    """Recall per class; None for a class absent from the labels."""
    tot = cm.sum(1)
    return [(cm[c, c] / tot[c]).item() if tot[c] > 0 else None for c in range(cm.shape[0])]


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / N (Guo et al. 2017)."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.float().mean() * (correct[m].mean() - conf[m].mean()).abs()
    return ece.item()


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Everything `eval.json` holds, from logits and true labels."""
    probs = logits.float().softmax(1)
    pred = probs.argmax(1)
    cm = confusion_matrix(pred, labels, len(classes))
    return {
        "num_images": int(len(labels)),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "ece": expected_calibration_error(probs, labels),
        "nll": torch.nn.functional.cross_entropy(logits.float(), labels).item() if len(labels) else None,
        "per_class_accuracy": dict(zip(classes, per_class_accuracy(cm))),
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }
