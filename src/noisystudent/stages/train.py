"""Training stages: the teacher (labeled only), the noised student (joint batches), the fine-tune.

Each is a thin adapter: read upstream files -> build datasets/model -> `engine.fit` -> write
`model.pt`. All of them resume from `checkpoint.pt` when rerun after a kill.
"""
from __future__ import annotations

import dataclasses
import logging
import math


from ..config import NoiseConfig, StudentConfig, TrainConfig, config_to_dict
from ..batches import JointBatches, LabeledBatches, joint_step_loss
from ..data import LabeledDataset, create_train_transform, seed_for
from ..distributed import seed_everything
from ..engine import fit
from ..schedule import plan_steps
from ..pseudo import pseudo_weight, resolve_threshold
from .. import runwarnings
from ..variants import variant_config, variant_stage
from ..errors import UserError
from timm.utils.model import unfreeze

from ..models import count_params, create_model, freeze_stages
from ..models.warmstart import warm_start, warm_start_identity
from .batching import labeled_source, pseudo_source, selected_pool
from .common import RunContext, StageResult, run_stage
from .modelfile import load_model, save_model

log = logging.getLogger("noisystudent")

__all__ = ["train_teacher", "train_student", "finetune"]

NO_NOISE = NoiseConfig(randaugment=False, cutout=0.0, drop_rate=0.0, drop_path_rate=0.0)


def _data_identity(ctx: RunContext) -> dict:
    d = ctx.cfg.data
    return {"labeled": dataclasses.asdict(d.labeled), "image_size": d.image_size, "in_chans": d.in_chans,
            "mean": ctx.mean, "std": ctx.std, "crop_padding": d.crop_padding, "hflip": d.hflip,
            "bad_images": d.bad_images, "labeled_content": ctx.data_fingerprint("labeled"),
            "augment_on": d.augment_on}


def _validation(ctx: RunContext, t: TrainConfig, meta: dict) -> dict:
    """fit() keywords for periodic validation on data.val (`val_every` steps; `keep_best` keeps the
    best weights on it), or {} when off or when there is no validation set."""
    if not t.val_every or ctx.val is None:
        if t.keep_best:
            raise UserError("keep_best needs a validation set (data.val) and val_every > 0")
        return {}
    from ..inference import inference_batch_size
    from .evaluate import evaluate_source

    def on_val(model) -> dict:
        batch = inference_batch_size(ctx.cfg.evaluate.batch_size, ctx.device, meta["image_size"])
        r = evaluate_source(model, meta, ctx.val, batch, ctx.device, key="data.val")
        return {"val_top1": r["top1"]}
    return {"eval_fn": on_val, "eval_every": t.val_every, "best_key": "val_top1" if t.keep_best else None}


def _summary(history: list, model) -> dict:
    last = history[-1] if history else {}
    return {"params": count_params(model), "epochs": len(history), "steps": sum(h.get("steps", 0) for h in history),
            "final_loss": last.get("loss"), "images_per_s": last.get("images_per_s"),
            "train_s": sum(h.get("epoch_s", 0.0) for h in history),
            "images_seen": sum(h.get("images_per_s", 0) * h.get("epoch_s", 0) for h in history)}


def train_teacher(ctx: RunContext) -> StageResult:
    cfg, t = ctx.cfg, ctx.cfg.teacher
    name = cfg.model_for_round(0)
    config = {"train": config_to_dict(t), "model": name, "seed": cfg.seed, "data": _data_identity(ctx)}
    config["warm_start"] = warm_start_identity(t, "teacher")
    if t.val_every:             # periodic validation (and keep_best) read data.val
        config["val_content"] = ctx.data_fingerprint("val")

    def body(d):
        seed_everything(seed_for(cfg.seed, "init", "teacher"))     # weight init is part of the seed
        model = create_model(name, len(ctx.classes), cfg.data.in_chans, t.noise.drop_rate, t.noise.drop_path_rate)
        started = warm_start(model, t, name, "teacher")
        init_from_data(ctx, model, started)
        source, n_lab = labeled_source(ctx, t.noise, t.batch_size)
        meta = ctx.model_meta(name, cfg.data.image_size, t.noise, "teacher")
        warns: dict = {}
        warn_collapse("teacher", name, model, ctx, d, warns)
        warn_mirror(ctx, d, warns)
        warn_labeled_near_copies(ctx, d, warns)
        warn_short_schedule("teacher", plan_steps(t, source.steps_per_epoch(ctx.world))[0], n_lab, t.batch_size,
                            ctx, d, warns)
        res = fit(model, t, source, out_dir=d, seed=seed_for(cfg.seed, "teacher"), meta=meta,
                  device=ctx.device, desc="teacher", **_validation(ctx, t, meta))
        _warn_loss(ctx, d, "teacher", res.history, warns)
        if ctx.rank == 0:
            save_model(d / "model.pt", res.model, meta)
        return ["model.pt"], dict(_summary(res.history, res.model), warm_start=started, warnings=warns)

    return run_stage(ctx, ctx.layout.model(0, "teacher"), config, {}, body, cleanup=["checkpoint.pt", "best.pt"])


def joint_plan(s: StudentConfig, n_pseudo: int, n_labeled: int, world: int = 1) -> tuple[int, int]:
    """(total steps, warmup steps) of round k's joint student; every variant trains exactly as long."""
    per_step = s.batch_size * (s.ratio if n_pseudo > 0 else 1) * world
    per_epoch = max(1, math.ceil((n_pseudo if n_pseudo > 0 else n_labeled) / per_step))
    return plan_steps(s, per_epoch)


def train_student(ctx: RunContext, k: int, variant: str | None = None) -> StageResult:
    """Round k's student, from scratch (or from the teacher), on labeled + selected pseudo-labels;
    `variant` (a name in cfg.variants) trains the same student with its changes, same steps."""
    cfg = ctx.cfg
    s = variant_config(cfg.student, variant, cfg.variants) if variant else cfg.student
    name = cfg.model_for_round(k)
    sdir = ctx.layout.model(k, variant_stage(variant) if variant else "student")
    inputs = {"selection": ctx.layout.selection(k)}
    if s.init_from_teacher:
        inputs["teacher"] = ctx.layout.teacher_of(k)
    config = {"train": config_to_dict(s), "model": name, "seed": cfg.seed, "round": k,
              "data": _data_identity(ctx), "variant": variant, "warm_start": warm_start_identity(s, "student")}
    if s.val_every:
        config["val_content"] = ctx.data_fingerprint("val")
    tag = f"student r{k}" + (f" ({variant})" if variant else "")

    def body(d):
        model, started = _student_model(ctx, s, name, k, variant)
        selection = selected_pool(ctx, inputs["selection"] / "selection.parquet")
        n_pseudo = int(selection[2].sum())
        n_lab = len(ctx.labeled)
        total, warmup = joint_plan(cfg.student, n_pseudo, n_lab, ctx.world)
        warns: dict = {}
        warn_collapse(tag, name, model, ctx, d, warns)
        if n_pseudo == 0 and ctx.rank == 0:       # one key per round: its variants share the selection
            threshold = resolve_threshold(cfg.select.threshold, len(ctx.classes))
            runwarnings.emit(ctx.run_dir, f"no_pseudo_labels:round{k}", f"round {k}: no pool image passed "
                             f"select.threshold={threshold:g}; the student trains on the labeled images "
                             "only (lower the threshold or train the teacher longer)", warns)
        warn_short_schedule(tag, total, n_lab, s.batch_size, ctx, d, warns)
        meta = ctx.model_meta(name, cfg.data.image_size, s.noise, "student")
        meta.update(round=k, variant=variant)
        run = dict(cfg=dataclasses.replace(s, steps=total, warmup_steps=warmup), seed=seed_for(cfg.seed, "student", k, variant),
                   loss=joint_step_loss(pseudo_weight(s.loss_weighting, s.unlabeled_weight, s.ratio), s.label_smoothing),
                   common=dict(out_dir=d, meta=meta, device=ctx.device, **_validation(ctx, s, meta)))
        mode = "supervised" if n_pseudo == 0 else s.mode
        final, history = _fit_student(ctx, model, mode, selection, run, tag, k, warns)
        if ctx.rank == 0:
            save_model(d / "model.pt", final, meta)
        info = _summary(history, final)
        info.update(pseudo_images=n_pseudo, labeled_images=n_lab, variant=variant, steps=total, warm_start=started,
                    warnings=warns)
        return ["model.pt"], info

    return run_stage(ctx, sdir, config, inputs, body,
                     cleanup=["checkpoint.pt", "best.pt", "phase2/checkpoint.pt", "phase2/best.pt"])


def _student_model(ctx: RunContext, s: StudentConfig, name: str, k: int, variant):
    """Round k's student before training: from scratch (seeded), warm-started, or the teacher's weights."""
    seed_everything(seed_for(ctx.cfg.seed, "init", "student", k, variant))
    model = create_model(name, len(ctx.classes), ctx.cfg.data.in_chans, s.noise.drop_rate, s.noise.drop_path_rate)
    started = warm_start(model, s, name, "student")
    if not s.init_from_teacher:
        init_from_data(ctx, model, started)
    if s.init_from_teacher:
        teacher, _ = load_model(ctx.layout.teacher_of(k) / "model.pt", expect_classes=ctx.classes)
        if type(teacher) is not type(model) or teacher.state_dict().keys() != model.state_dict().keys():
            raise UserError(f"student.init_from_teacher needs the same architecture, but round {k} "
                            f"trains {name}; set student.init_from_teacher=false or models[{k}] to the teacher's")
        model.load_state_dict(teacher.state_dict())
    return model, started


def _fit_student(ctx: RunContext, model, mode: str, selection, run: dict, tag: str, k: int, warns: dict):
    """Train in `mode` (joint, supervised, two_step) for run["cfg"].steps; (final model, history).
    Each mode is a batch source (and, for two_step, a second phase), not a branch in the trainer."""
    s, common, total = run["cfg"], run["common"], run["cfg"].steps
    kw = dict(loss=run["loss"], seed=run["seed"], desc=tag)
    if mode == "supervised":        # the labeled images only, in batches as large as the joint ones
        source, _ = labeled_source(ctx, s.noise, s.batch_size * (1 + s.ratio))
        res = fit(model, s, source, **kw, **common)
        _warn_loss(ctx, common["out_dir"], tag, res.history, warns)
        return res.model, res.history
    pseudo = pseudo_source(ctx, s.noise, selection, s.batch_size * s.ratio)
    labeled, n_lab = labeled_source(ctx, s.noise, s.batch_size)
    if mode == "joint":             # the paper: joint batches, one forward pass
        res = fit(model, s, JointBatches(labeled, pseudo), **kw, **common)
        _warn_loss(ctx, common["out_dir"], tag, res.history, warns)
        return res.model, res.history
    # two_step: pseudo-labels only, then the labeled images; the same total steps
    p2 = min(total - 1, s.two_step_epochs * math.ceil(n_lab / s.batch_size))
    res = fit(model, dataclasses.replace(s, steps=total - p2), pseudo, **kw,
              **dict(common, eval_fn=None, best_key=None))
    res2 = fit(res.model, dataclasses.replace(s, steps=p2, warmup_steps=min(s.warmup_steps or 0, p2 // 10)), labeled,
               **dict(kw, seed=seed_for(ctx.cfg.seed, "student2", k), desc=f"{tag} phase 2"),
               **dict(common, out_dir=common["out_dir"] / "phase2"))
    _warn_loss(ctx, common["out_dir"], tag, res.history, warns)        # each phase on its own: other losses
    _warn_loss(ctx, common["out_dir"] / "phase2", f"{tag} phase 2", res2.history, warns)
    return res2.model, res.history + res2.history


def warn_short_schedule(tag: str, steps: int, n_labeled: int, batch_size: int, ctx: RunContext | None = None,
                        stage_dir=None, into: dict | None = None) -> None:
    """Warn (once per run directory) when a stage has too few optimizer steps to fit its labeled
    set (runwarnings.short_schedule); the warning goes into the stage's own list `into` too."""
    msg = runwarnings.short_schedule(tag, steps, n_labeled, batch_size)
    _emit(ctx, stage_dir, "short_schedule", msg, into)


DATA_INIT_IMAGES = 5000      # labeled images a data-dependent init sees (ns_air: a 12x12 covariance)


def init_from_data(ctx: RunContext, model, started) -> None:
    """Data-dependent initialisation (ns_air's patch-whitening layer) of a model trained from
    scratch, from the first labeled images normalised as in training; the same on every rank."""
    if started or not hasattr(model, "init_from_data"):
        return
    from ..data.transforms import normalize
    from ..tensor_batches import decode_all
    n = min(len(ctx.labeled), DATA_INIT_IMAGES)
    images, _ = decode_all(ctx.labeled.subset(range(n)), ctx.cfg.data.image_size, skip_bad=False)
    model.init_from_data(normalize(images.float() / 255.0, ctx.mean, ctx.std))


def warn_collapse(tag: str, name: str, model, ctx: RunContext, stage_dir, into: dict) -> None:
    """Warn when `model` downsamples its input below 1x1 (runwarnings.feature_map_collapse)."""
    info = getattr(model, "feature_info", None)
    reduction = info[-1].get("reduction") if isinstance(info, list) and info and isinstance(info[-1], dict) else None
    msg = runwarnings.feature_map_collapse(tag, name, ctx.cfg.data.image_size, reduction)
    _emit(ctx, stage_dir, "feature_map_collapse", msg, into)


def warn_mirror(ctx: RunContext, stage_dir, into: dict) -> None:
    """Warn when the config mirrors images whose class a mirror changes (runwarnings.mirror_changes_class;
    the labeled images asked by data.mirror, at most 2,000 of them, on rank 0 only)."""
    cfg = ctx.cfg
    keys = [k for k, on in (("data.hflip", cfg.data.hflip), ("label.flip_tta", cfg.label.flip_tta),
                            ("evaluate.flip_tta", cfg.evaluate.flip_tta)) if on]
    if not keys or ctx.rank != 0:
        return
    from ..data.mirror import mirror_check_source
    _emit(ctx, stage_dir, "mirror_changes_class",
          runwarnings.mirror_changes_class(mirror_check_source(ctx.labeled, seed=cfg.seed), keys), into)


def warn_labeled_near_copies(ctx: RunContext, stage_dir, into: dict) -> None:
    """Warn when labeled images are copies or near copies of validation or test images
    (runwarnings.labeled_near_copies; data/nearcopy.py on the sources as configured, once a run, a
    share of the labeled images a rank under torchrun: kept in cache/labeled-near-copies.json). Off
    with select.near_copies: false."""
    cfg = ctx.cfg
    if not cfg.select.near_copies:
        return
    from ..data.nearcopy import cached_near_copies
    from ..distributed import progress_enabled
    found = cached_near_copies(ctx.as_configured("labeled"), ctx.evaluation_sources(),
                               ctx.evaluation_fingerprints("labeled"), ctx.layout.cache("labeled-near-copies.json"),
                               ctx.decode_workers, progress_enabled(), what="labeled")["found"]
    _emit(ctx, stage_dir, "labeled_near_copies", runwarnings.labeled_near_copies(found), into)


def _warn_loss(ctx: RunContext, stage_dir, tag: str, history: list, into: dict) -> None:
    _emit(ctx, stage_dir, "loss_rising", runwarnings.loss_rising(tag, [h.get("loss") for h in history]), into)


def _emit(ctx, stage_dir, kind: str, msg, into) -> None:
    if ctx is not None and ctx.rank != 0:
        return
    where = ctx.layout.rel(stage_dir) if ctx is not None and stage_dir is not None else ""
    runwarnings.emit(ctx.run_dir if ctx is not None else None, f"{kind}:{where}" if where else kind, msg, into)


def finetune(ctx: RunContext, k: int) -> StageResult:
    """FixRes-style fix: a short, augmentation-free fine-tune at the test resolution with the stem and
    the first `freeze` stages frozen (their BatchNorm statistics included)."""
    cfg, ft = ctx.cfg, ctx.cfg.finetune
    size = ft.image_size or int(ctx.test.load(0).shape[0])
    src_dir = ctx.layout.final_model_of(k)
    config = {"finetune": config_to_dict(ft), "image_size": size, "data": _data_identity(ctx)}
    tcfg = TrainConfig(epochs=ft.epochs, batch_size=ft.batch_size, lr=ft.lr, warmup_epochs=0.0,
                       optimizer="sgd", weight_decay=0.0, ema_decay=0.0, noise=NO_NOISE,
                       amp=cfg.teacher.amp, channels_last=cfg.teacher.channels_last)

    def body(d):
        model, meta = load_model(src_dir / "model.pt", expect_classes=ctx.classes)
        frozen = freeze_stages(model, ft.freeze)
        plain = dataclasses.replace(cfg.data, crop_padding=0, hflip=False)
        ds = LabeledDataset(ctx.labeled, create_train_transform(plain, None, image_size=size))
        meta = dict(meta, image_size=size, role=f"{meta['role']}+finetune", finetune=config_to_dict(ft))
        res = fit(model, tcfg, LabeledBatches(ds, tcfg.batch_size, ctx.workers), out_dir=d,
                  seed=seed_for(cfg.seed, "finetune", k), meta=meta, device=ctx.device, desc=f"finetune r{k}")
        # Back to ordinary BatchNorm (statistics kept) so model.pt loads into a fresh architecture.
        unfreeze(res.model, frozen, include_bn_running_stats=True)
        if ctx.rank == 0:
            save_model(d / "model.pt", res.model, meta)
        info = _summary(res.history, res.model)
        info.update(image_size=size, frozen_modules=len(frozen))
        return ["model.pt"], info

    return run_stage(ctx, ctx.layout.model(k, "finetune"), config, {"model": src_dir}, body,
                     cleanup=["checkpoint.pt"])
