"""Warnings about a run that will likely disappoint, each said once and kept for the report.

Ten checks, each a pure function that returns a message or None:
  - `threshold_filters_nothing`: select.threshold <= 1/num_classes keeps every pool image (the top
    class of a probability vector is always at least 1/num_classes sure);
  - `pool_copies`: pool images that are copies of validation or test images (left out of the
    selection by the select stage; data/overlap.py finds them);
  - `pool_near_copies`: pool images that are near copies of them (re-encoded, resized, recoloured;
    left out too; data/nearcopy.py finds them);
  - `labeled_near_copies`: labeled images that are copies or near copies of validation or test
    images (said at the teacher stage; the user's labeled and evaluation sets are left as they are);
  - `short_schedule`: too few optimizer steps to fit the labeled set (a tiny labeled set counted in
    epochs: 30 epochs of 100 images at batch 64 are 60 steps);
  - `mirror_changes_class`: a random mirror or flip test-time augmentation on images whose class a
    mirror changes (digits, letters; data/mirror.py asks the labeled images);
  - `feature_map_collapse`: a model that downsamples by more than the image size (resnet18's 32 on
    12 px images) ends in 1x1 maps, where BatchNorm normalises a handful of values and the
    gradients can grow without bound (a NaN a few steps in, run to run);
  - `loss_rising`: the training loss at the end of a stage above the loss at its start;
  - `student_worse`: a round's noisy student below its teacher (on val when both have it, else test);
  - `baseline_better`: the noisy student below a baseline trained beside it (the compute-matched
    `supervised` variant: the pool added nothing; `no_noise`: the noise did not pay).
(A one-class labeled set is not a warning: `RunContext.labeled` refuses it.)

`emit` logs a warning (stderr and run.log) the first time it is seen for a run directory, recording
it in `warnings.json`, so a resumed or rerun command does not repeat it. A stage keeps its own
warnings in its stage.json (`info.warnings`); at the end of `run`, `collect` rebuilds warnings.json
from the config, the stage records and the evaluations, so a warning of a stage that was since
redone does not outlive it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from .layout import RunLayout

__all__ = ["threshold_filters_nothing", "pool_copies", "pool_near_copies", "labeled_near_copies", "short_schedule", "mirror_changes_class", "feature_map_collapse", "loss_rising", "student_worse",
           "baseline_better", "BASELINES", "emit", "collect", "write_warnings", "read_warnings", "compare_round",
           "compare_baselines", "WARNINGS_FILE"]

log = logging.getLogger("noisystudent")

WARNINGS_FILE = RunLayout(".").warnings.name
MIN_STEPS, MIN_PASSES = 500, 20     # short_schedule: fewer steps, or passes over the labeled set, warn
LOSS_WINDOW = 0.1                   # loss_rising compares the mean of the first and the last 10% of epochs
LOSS_MIN_EPOCHS = 4                 # with fewer epochs there is no trend to tell from batch noise
LOSS_MARGIN = 0.10                  # ...and a rise must exceed 10% of the starting loss
LOSS_ABS_MARGIN = 0.01              # (and 0.01 in absolute terms: a loss near 0 wobbles by more than 10%)

_SEEN: set[tuple[str, str, str]] = set()      # (run dir, key, message) this process has logged


# ------------------------------------------------------------------------------------------------
# the checks (pure)

def threshold_filters_nothing(threshold: float | str, num_classes: int) -> str | None:
    """`select.threshold` (a number or 'auto', as in the config) keeps every pool image: <= 1/K."""
    from .pseudo import FEW_CLASSES_THRESHOLD, resolve_threshold
    t = resolve_threshold(threshold, num_classes)
    if num_classes < 2 or t > 1.0 / num_classes:
        return None
    return (f"select.threshold={t:g} is <= 1/{num_classes} classes = {1 / num_classes:.3g}: every pool "
            f"image's top class is at least that sure, so the threshold filters nothing; set it above "
            f"{1 / num_classes:.3g} to drop the teacher's least confident pseudo-labels, or to 'auto' "
            f"({FEW_CLASSES_THRESHOLD:g} for 2 or 3 classes, chosen on val: docs/benchmarks/transfer.md)")


def pool_copies(copies: dict[str, list[str]]) -> str | None:
    """{'val' / 'test' / ...: pool ids that are copies of that set's images}: say how many, where."""
    if not any(copies.values()):
        return None
    parts = [f"{len(ids):,} of {name}" for name, ids in copies.items() if ids]
    example = next(ids[0] for ids in copies.values() if ids)
    return (f"the unlabeled pool holds copies of evaluation images ({', '.join(parts)}; e.g. {example!r}): "
            f"left out of the selection, so the student never trains on them; remove them from data.unlabeled "
            f"so the teacher stops labeling them")


def pool_near_copies(near: dict[str, dict]) -> str | None:
    """{'val' / 'test' / ...: {pool id: [that set's id, score]}} of near copies (data/nearcopy.py):
    say how many, and one pair."""
    if not any(near.values()):
        return None
    parts = [f"{len(d):,} of {name}" for name, d in near.items() if d]
    name, d = next((n, d) for n, d in near.items() if d)
    pool_id = sorted(d)[0]
    return (f"the unlabeled pool holds near copies of evaluation images, re-encoded, resized, recoloured or mirrored "
            f"({', '.join(parts)}; e.g. {pool_id!r} ~ {name} {d[pool_id][0]!r}): left out of the selection "
            f"(pairs in cache/near-copies.json; select.near_copies: false keeps them)")


def labeled_near_copies(near: dict[str, dict]) -> str | None:
    """{'val' / 'test' / ...: {labeled id: [that set's id, score]}} (data/nearcopy.py): labeled images
    that are copies or near copies of evaluation images, so the score on that set counts images the
    models were trained on, with their labels. Say how many, one pair, and what to do."""
    if not any(near.values()):
        return None
    counts = {name: len({v[0] for v in d.values()}) for name, d in near.items() if d}
    parts = [f"{n:,} {name} image{'s' if n != 1 else ''}" for name, n in counts.items()]
    name, d = next((n, d) for n, d in near.items() if d)
    lab_id = sorted(d)[0]
    return (f"labeled images are copies or near copies of evaluation images ({', '.join(parts)}; e.g. labeled "
            f"{lab_id!r} ~ {name} {d[lab_id][0]!r}): scores on those sets count images the models were trained "
            f"on, labels and all; take them out of the evaluation sets (pairs in cache/labeled-near-copies.json)")


def short_schedule(tag: str, steps: int, n_labeled: int, batch_size: int) -> str | None:
    """Too few optimizer steps to fit the labeled set: fewer than MIN_STEPS in all, or fewer than
    MIN_PASSES passes over the labeled images."""
    passes = steps * batch_size / max(1, n_labeled)
    if steps >= MIN_STEPS and passes >= MIN_PASSES:
        return None
    section = "teacher" if tag.startswith("teacher") else "student"
    return (f"{tag}: only {steps} optimizer steps ({passes:.0f} passes over {n_labeled} labeled images); "
            f"small-data recipes need >= {MIN_STEPS} steps and >= {MIN_PASSES} passes to fit — raise {section}.steps")


def mirror_changes_class(check, mirrored_keys: list[str]) -> str | None:
    """`check` (data.mirror.MirrorCheck of the labeled images, or None), `mirrored_keys` the config
    keys that mirror images (data.hflip, label.flip_tta, evaluate.flip_tta) set true."""
    if check is None or check.keeps_class or not mirrored_keys:
        return None
    return (f"{', '.join(mirrored_keys)}: a mirror changes the class of these images ({check.describe()}; "
            f"digits, letters); set {' and '.join(k + '=false' for k in mirrored_keys)} (on MNIST the mirror "
            f"cost the noisy student about 1.5 points: docs/benchmarks/transfer.md, TM)")


def feature_map_collapse(tag: str, model_name: str, image_size: int | None, reduction: int | None) -> str | None:
    """`reduction`: the model's total downsampling (timm's feature_info[-1]["reduction"]); None when
    the model does not say (our small-image models, which keep their maps)."""
    if not image_size or not reduction or image_size >= reduction:
        return None
    section = "teacher" if tag.startswith("teacher") else "student"
    return (f"{tag}: {model_name} downsamples {reduction}x but the images are {image_size} px, so its last stages "
            f"see 1x1 maps where BatchNorm normalises a handful of values and training can turn NaN; set "
            f"data.image_size >= {reduction} (images are resized) or use a small-image model in models "
            f"(ns_cnn_s, ns_wrn_28_2) for the {section}")


def loss_rising(tag: str, losses: list[float]) -> str | None:
    """The mean loss of the last LOSS_WINDOW of the epochs above that of the first LOSS_WINDOW (at
    least one epoch each) by LOSS_MARGIN relative and LOSS_ABS_MARGIN absolute. A falling loss with
    a bump in the middle is not flagged: only where the stage ended compared with where it began."""
    vals = [float(v) for v in losses if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(vals) < LOSS_MIN_EPOCHS:
        return None
    n = max(1, round(LOSS_WINDOW * len(vals)))
    first, last = sum(vals[:n]) / n, sum(vals[-n:]) / n
    if last <= first * (1 + LOSS_MARGIN) or last - first <= LOSS_ABS_MARGIN:
        return None
    section = "teacher" if tag.startswith("teacher") else "student"
    span = "epoch" if n == 1 else f"{n} epochs"
    return (f"{tag}: the training loss rose from {first:.4g} (first {span}) to {last:.4g} (last {span}) over "
            f"{len(vals)} epochs; lower {section}.lr or set {section}.grad_clip")


def _scores(a: dict, b: dict) -> tuple[str, float | None, float | None, int | None]:
    """(where, a's top-1, b's top-1, images scored) of two eval.json contents: on val when both have
    it, else test."""
    va, vb = a.get("val") or {}, b.get("val") or {}
    on_val = va.get("top1") is not None and vb.get("top1") is not None
    a, b = (va, vb) if on_val else (a, b)
    return ("val" if on_val else "test"), a.get("top1"), b.get("top1"), a.get("num_images")


# A two-sided exact sign test (McNemar's) at 5% needs the two models' disagreements to split at least
# 6 to 0 (2 x 0.5^6 = 0.031): a gap of fewer than 6 images is noise whatever the set's size.
MIN_TELLING_GAP = 6


def _gap(x: float, y: float, n: int | None) -> str:
    """'; D of N images' for two top-1s on N images, saying when D is too few to mean anything."""
    if not n:
        return ""
    d = round(abs(x - y) * n)
    noise = f", within noise: fewer than {MIN_TELLING_GAP} images cannot tell two models apart" \
        if d < MIN_TELLING_GAP else ""
    return f"; {d} of {n:,} images{noise}"


def student_worse(k: int, teacher: dict, student: dict) -> str | None:
    """`teacher`/`student`: eval.json contents (top1, and val.top1 when there is a validation set;
    num_images of each)."""
    where, t, s, n = _scores(teacher, student)
    if t is None or s is None or s >= t:
        return None
    who = "the round-0 teacher" if k == 1 else f"its teacher (round {k - 1}'s student)"
    return (f"round {k}: the noisy student ({100 * s:.2f}% on {where}) is worse than {who} ({100 * t:.2f}%"
            f"{_gap(s, t, n)}); train the teacher longer, raise select.threshold, or give the student more steps")


# the variants whose lead over the noisy student means something to act on, and what
BASELINES = {
    "supervised": ("the compute-matched supervised model (same model, noise and steps on the labeled "
                   "images only)", "the pseudo-labels added nothing here; more unlabeled images or a "
                   "stronger teacher may help, or use the supervised model"),
    "no_noise": ("the same student without noise", "the noise did not pay here; try lighter noise "
                 "(student.noise.ra_magnitude, cutout, drop_rate) or more student steps"),
}


def baseline_better(k: int, name: str, student: dict, baseline: dict) -> str | None:
    """The noisy student of round k below the variant `name` (a key of BASELINES) trained beside it."""
    where, s, b, n = _scores(student, baseline)
    if name not in BASELINES or s is None or b is None or s >= b:
        return None
    who, advice = BASELINES[name]
    return (f"round {k}: the noisy student ({100 * s:.2f}% on {where}) is below {who} ({100 * b:.2f}%"
            f"{_gap(s, b, n)}): {advice}")


# ------------------------------------------------------------------------------------------------
# saying each once, and keeping them

def read_warnings(run_dir: Path) -> list[dict] | None:
    """warnings.json as a list of {key, message}, or None when absent or unreadable."""
    import json
    path = RunLayout(run_dir).warnings
    try:
        items = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(items, list):
        return None
    return [i for i in items if isinstance(i, dict) and isinstance(i.get("message"), str)]


def write_warnings(run_dir: Path, items: dict[str, str]) -> None:
    from .artifacts import write_json
    write_json(RunLayout(run_dir).warnings, [{"key": k, "message": m} for k, m in items.items()])


def emit(run_dir: Path | None, key: str, msg: str | None, into: dict | None = None) -> None:
    """Log `msg` as a warning unless this run directory already has it (this process logged it, or
    warnings.json holds it from an earlier invocation); record it in warnings.json and in `into`
    (a stage's own list). `run_dir=None`: no run directory (a direct call), log once per process."""
    if msg is None:
        return
    if into is not None:
        into[key] = msg
    mark = (str(run_dir), key, msg)
    if mark in _SEEN:
        return
    _SEEN.add(mark)
    if run_dir is None:
        log.warning("%s", msg)
        return
    items = {i.get("key"): i["message"] for i in read_warnings(run_dir) or []}
    if items.get(key) == msg:
        return
    log.warning("%s", msg)
    items[key] = msg
    write_warnings(run_dir, items)


def _eval(run_dir: Path, k: int, which: str) -> dict | None:
    from .artifacts import read_json
    p = RunLayout(run_dir).eval(k, which) / "eval.json"
    try:
        return read_json(p) if p.is_file() else None
    except (OSError, ValueError):
        return None


def compare_round(run_dir: Path, k: int) -> str | None:
    """student_worse for round k from the eval.json files (its teacher: round k-1's student, or the
    round-0 teacher)."""
    teacher = _eval(run_dir, 0, "teacher") if k <= 1 else _eval(run_dir, k - 1, "student")
    student = _eval(run_dir, k, "student")
    return student_worse(k, teacher, student) if teacher and student else None


def compare_baselines(run_dir: Path, k: int, names: list[str]) -> dict[str, str]:
    """baseline_better for each variant of `names` (those the config trains in round k) that is one
    of BASELINES and has an evaluation: {key: message}."""
    from .variants import variant_stage
    student, out = _eval(run_dir, k, "student"), {}
    for name in (n for n in names if n in BASELINES):
        baseline = _eval(run_dir, k, variant_stage(name))
        if student and baseline and (m := baseline_better(k, name, student, baseline)):
            out[f"below_{name}:round{k}"] = m
    return out


def collect(run_dir: Path, cfg, num_classes: int) -> dict[str, str]:
    """Every current warning of the run, rebuilt from its files: config checks, each stage's own
    (stage.json info.warnings, in pipeline order), then the teacher/student comparisons."""
    from .artifacts import read_stage
    lay = RunLayout(run_dir)
    items: dict[str, str] = {}
    if cfg.rounds > 0 and (m := threshold_filters_nothing(cfg.select.threshold, num_classes)):
        items["select.threshold"] = m
    rounds = lay.rounds()
    for k in rounds:
        for d in sorted(lay.round_dir(k).iterdir()):
            rec = read_stage(d) if d.is_dir() else None
            stage_items = ((rec or {}).get("info") or {}).get("warnings") if rec is not None else None
            if isinstance(stage_items, dict):
                items.update({str(a): str(b) for a, b in stage_items.items()})
    from .variants import variant_names
    for k in rounds:
        if k >= 1 and (m := compare_round(run_dir, k)):
            items[f"student_worse:round{k}"] = m
        if k >= 1 and k == getattr(cfg, "variants_round", None):
            items.update(compare_baselines(run_dir, k, variant_names(cfg.variants)))
    return items
