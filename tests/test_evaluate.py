"""Evaluation on extra test sets that cover only some of the classes (the ImageNet-A protocol)."""
import numpy as np
import pytest
import torch
from PIL import Image

from noisystudent.config import SourceConfig
from noisystudent.data import create_source, to_tensor_batch
from noisystudent.errors import UserError
from noisystudent.models import create_model
from noisystudent.stages.evaluate import evaluate_source


def _subset_folder(root, classes=("3", "7"), n=6):
    test = create_source(SourceConfig(kind="digits", split="test"), 1)
    for c in classes:
        (root / c).mkdir(parents=True)
        rows = np.flatnonzero(test.labels == int(c))[:n]
        for i in rows:
            Image.fromarray(test.load(int(i))[..., 0]).save(root / c / f"{i}.png")
    return root


def test_subset_classes_restrict_the_logits(tmp_path):
    torch.manual_seed(0)
    model = create_model("ns_cnn_s", 10, 1).eval()
    meta = {"classes": [str(c) for c in range(10)], "image_size": 8, "mean": [0.5], "std": [0.5]}
    src = create_source(SourceConfig(kind="imagefolder", root=str(_subset_folder(tmp_path / "a"))), 1)
    rep = evaluate_source(model, meta, src)
    assert rep["classes"] == ["3", "7"] and rep["num_images"] == 12
    x = to_tensor_batch(np.stack([src.load(i) for i in range(len(src))]), 8, [0.5], [0.5])
    with torch.no_grad():
        logits = model(x)[:, [3, 7]]          # only the covered classes compete
    expected = (logits.argmax(1).numpy() == src.labels).mean()
    assert rep["top1"] == pytest.approx(expected)
    assert len(rep["confusion_matrix"]) == 2


def test_unknown_class_in_extra_set_is_a_clear_error(tmp_path):
    model = create_model("ns_cnn_s", 10, 1).eval()
    meta = {"classes": [str(c) for c in range(10)], "image_size": 8, "mean": [0.5], "std": [0.5]}
    _subset_folder(tmp_path / "b", ("3",))
    (tmp_path / "b" / "cat").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b" / "cat" / "x.png")
    src = create_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "b")), 1)
    with pytest.raises(UserError, match=r"extra: classes \['cat'\] are not among the model's 10 classes"):
        evaluate_source(model, meta, src, key="extra")


def test_flip_tta_scores_the_mean_probability_of_image_and_mirror(tmp_path):
    torch.manual_seed(0)
    model = create_model("ns_cnn_s", 10, 1).eval()
    meta = {"classes": [str(c) for c in range(10)], "image_size": 8, "mean": [0.5], "std": [0.5]}
    src = create_source(SourceConfig(kind="digits", split="test"), 1).subset(range(40))
    plain, tta = evaluate_source(model, meta, src), evaluate_source(model, meta, src, flip_tta=True)
    x = to_tensor_batch(np.stack([src.load(i) for i in range(len(src))]), 8, [0.5], [0.5])
    with torch.no_grad():
        p = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert tta["top1"] == pytest.approx((p.argmax(1).numpy() == src.labels).mean())
    assert plain["top1"] == pytest.approx((model(x).argmax(1).numpy() == src.labels).mean())
