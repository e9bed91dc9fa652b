"""The `evaluate` stage: clean accuracy/calibration on the test set, extra test sets (optionally
covering a subset of the classes, ImageNet-A style), and robustness (corruptions, perturbations,
FGSM) when enabled."""
from __future__ import annotations

import torch

from ..artifacts import write_json
from ..config import SourceConfig, config_to_dict
from ..data import Source
from ..errors import UserError
from ..inference import inference_batch_size, iter_logits, mean_view_probs
from ..metrics import classification_report
from .common import RunContext, StageResult, channels_last_of, run_stage
from .modelfile import load_model

__all__ = ["predict_logits", "evaluate_source", "evaluate_stage", "robustness_images", "run_robustness"]


def predict_logits(model, source: Source, image_size: int, mean, std, batch_size: int = 256,
                   device="cpu", workers: int = 0, flip_tta: bool = False,
                   shift_tta: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a whole labeled source, in eval mode. With test-time views (`flip_tta`:
    the mirror; `shift_tta`: +-N pixel shifts, `inference.tta_views`), the log of the mean
    probability over the views (so softmax gives the averaged probabilities, as the label stage
    averages them)."""
    model.eval()
    out, labels = [], []
    for views, idx in iter_logits(model, source, image_size, mean, std, batch_size=batch_size, device=device,
                                  workers=workers, hflip=flip_tta, shift=shift_tta):
        if len(views) > 1:
            out.append(mean_view_probs(views).clamp_min(1e-12).log())
        else:
            out.append(views[0])
        labels.append(torch.from_numpy(source.labels[idx]))
    return torch.cat(out), torch.cat(labels)


def evaluate_source(model, meta: dict, source: Source, batch_size: int = 256, device="cpu",
                    workers: int = 0, key: str = "test", image_size: int | None = None,
                    flip_tta: bool = False, shift_tta: int = 0) -> dict:
    """Classification report of `model` on a labeled source. A source whose classes are a subset of
    the model's is scored on those classes only (logits restricted, as the ImageNet-A protocol)."""
    classes = list(meta["classes"])
    if source.classes is None:
        raise UserError(f"{key}: an evaluation set needs labels (use kind imagefolder, idx or digits)")
    unknown = [c for c in source.classes if c not in classes]
    if unknown:
        raise UserError(f"{key}: classes {unknown[:5]} are not among the model's {len(classes)} classes")
    logits, labels = predict_logits(model, source, image_size or meta["image_size"], meta["mean"], meta["std"],
                                    batch_size, device, workers, flip_tta, shift_tta)
    if source.classes != classes:
        cols = torch.tensor([classes.index(c) for c in source.classes])
        logits = logits[:, cols]
    return classification_report(logits, labels, list(source.classes))


def robustness_images(source: Source, image_size: int, max_images: int, seed: int = 0):
    """A deterministic subset of the test set as uint8 NHWC at the model's resolution, so every
    model of a run is attacked/corrupted on the very same images."""
    from ..robustness.evaluate import subset_indices
    from ..tensor_batches import decode_all        # the one "decode and resize to the model's size"
    idx = subset_indices(len(source), max_images or None, seed)
    images, _ = decode_all(source.subset(idx), image_size, skip_bad=False)
    return images.permute(0, 2, 3, 1).contiguous().numpy(), source.labels[idx]


def run_robustness(model, meta: dict, source: Source, ecfg, cache_dir, device, seed: int = 0) -> dict:
    from ..robustness import CORRUPTIONS, evaluate_robustness
    corruptions = list(CORRUPTIONS) if "all" in ecfg.corruptions else list(ecfg.corruptions)
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise UserError(f"config key 'evaluate.corruptions': unknown {unknown}; allowed: all, {', '.join(CORRUPTIONS)}")
    images, labels = robustness_images(source, meta["image_size"], ecfg.max_images, seed)
    return evaluate_robustness(model, images, labels, mean=meta["mean"], std=meta["std"],
                               corruptions=corruptions, severities=tuple(ecfg.severities),
                               fgsm_eps=tuple(ecfg.fgsm_eps), perturbations=tuple(ecfg.perturbations),
                               seed=seed, cache_dir=cache_dir, device=device,
                               batch_size=inference_batch_size(ecfg.batch_size, device, meta["image_size"]),
                               progress=False)


def evaluate_stage(ctx: RunContext, k: int, which: str) -> StageResult:
    """Evaluate round k's `which` model (teacher, student, student_nonoise, finetune)."""
    cfg, ecfg = ctx.cfg, ctx.cfg.evaluate
    mdir = ctx.layout.model(k, which)
    config = {"evaluate": config_to_dict(ecfg), "test": config_to_dict(cfg.data.test),
              "val": config_to_dict(cfg.data.val) if cfg.data.val is not None else None,
              "extra_test": [config_to_dict(s) for s in cfg.data.extra_test],
              "test_content": ctx.data_fingerprint("test"), "val_content": ctx.data_fingerprint("val"),
              "extra_content": ctx.data_fingerprint("extra_test")}

    def body(d):
        model, meta = load_model(mdir / "model.pt", ctx.device, expect_classes=ctx.classes,
                                 channels_last=channels_last_of(cfg, k))
        tta = dict(flip_tta=ecfg.flip_tta, shift_tta=ecfg.shift_tta)
        batch = inference_batch_size(ecfg.batch_size, ctx.device, meta["image_size"])
        report = evaluate_source(model, meta, ctx.test, batch, ctx.device, ctx.workers, **tta)
        report["extra"] = {}
        if ctx.val is not None:
            rep = evaluate_source(model, meta, ctx.val, batch, ctx.device, ctx.workers, "val", **tta)
            report["val"] = {k2: rep[k2] for k2 in ("num_images", "top1", "top5", "ece", "per_class_accuracy")}
        for sc, src in zip(cfg.data.extra_test, ctx.extra_tests):
            sc: SourceConfig
            name = sc.name or f"{sc.kind}:{sc.root}"
            rep = evaluate_source(model, meta, src, batch, ctx.device, ctx.workers, name, **tta)
            report["extra"][name] = {k2: rep[k2] for k2 in ("num_images", "top1", "top5", "ece", "classes")}
        report.update(model=meta["model_name"], role=meta["role"], image_size=meta["image_size"], round=k,
                      flip_tta=ecfg.flip_tta, shift_tta=ecfg.shift_tta)
        outputs = ["eval.json"]
        if ecfg.robustness:
            rob = run_robustness(model, meta, ctx.test, ecfg, ctx.layout.cache("robustness"),
                                 ctx.device, seed=cfg.seed)
            write_json(d / "robustness.json", rob)
            outputs.append("robustness.json")
        write_json(d / "eval.json", report)
        return outputs, {"top1": report["top1"], "ece": report["ece"],
                         "val_top1": report.get("val", {}).get("top1")}

    return run_stage(ctx, ctx.layout.eval(k, which), config, {"model": mdir}, body, rank0_only=True)
