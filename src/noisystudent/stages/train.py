"""Training stages: the teacher (labeled only), the noised student (joint batches), the fine-tune.

Each is a thin adapter: read upstream files -> build datasets/model -> `engine.fit` -> write
`model.pt`. All of them resume from `checkpoint.pt` when rerun after a kill.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pyarrow.parquet as pq

from ..config import NoiseConfig, StudentConfig, TrainConfig, config_to_dict
from ..data import ArraySource, LabeledDataset, PseudoDataset, create_train_transform, seed_for
from ..engine import fit, plan_steps, seed_everything
from ..pseudo import pseudo_weight
from .. import runwarnings
from ..variants import variant_config, variant_stage
from ..errors import UserError
from timm.utils.model import unfreeze

from ..models import count_params, create_model, freeze_stages
from ..models.warmstart import warm_start, warm_start_identity
from .common import RunContext, StageResult, load_model, run_stage, save_model

log = logging.getLogger("noisystudent")

__all__ = ["train_teacher", "train_student", "finetune", "teacher_dir", "model_dir"]

NO_NOISE = NoiseConfig(randaugment=False, cutout=0.0, drop_rate=0.0, drop_path_rate=0.0)


def teacher_dir(ctx: RunContext, k: int):
    """Round k's teacher: the supervised model for k=1, else the student of round k-1."""
    return ctx.stage_dir(0, "teacher") if k <= 1 else ctx.stage_dir(k - 1, "student")


def model_dir(ctx: RunContext, k: int):
    return ctx.stage_dir(0, "teacher") if k == 0 else ctx.stage_dir(k, "student")


def _data_identity(ctx: RunContext) -> dict:
    d = ctx.cfg.data
    return {"labeled": dataclasses.asdict(d.labeled), "image_size": d.image_size, "in_chans": d.in_chans,
            "mean": ctx.mean, "std": ctx.std, "crop_padding": d.crop_padding, "hflip": d.hflip,
            "bad_images": d.bad_images, "labeled_content": ctx.data_fingerprint("labeled")}


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

    def body(d):
        seed_everything(seed_for(cfg.seed, "init", "teacher"))     # weight init is part of the seed
        model = create_model(name, len(ctx.classes), cfg.data.in_chans, t.noise.drop_rate, t.noise.drop_path_rate)
        started = warm_start(model, t, name, "teacher")
        ds = LabeledDataset(ctx.labeled, create_train_transform(cfg.data, t.noise),
                            skip_bad=ctx.policy("labeled") == "skip")
        meta = ctx.model_meta(name, cfg.data.image_size, t.noise, "teacher")
        warns: dict = {}
        warn_short_schedule("teacher", plan_steps(t, math.ceil(len(ds) / (t.batch_size * ctx.world)))[0],
                            len(ds), t.batch_size, ctx, d, warns)
        res = fit(model, t, labeled_ds=ds, out_dir=d, seed=seed_for(cfg.seed, "teacher"), meta=meta,
                  workers=cfg.data.workers, device=ctx.device, desc="teacher")
        _warn_loss(ctx, d, "teacher", res.history, warns)
        if ctx.rank == 0:
            save_model(d / "model.pt", res.model, meta)
        return ["model.pt"], dict(_summary(res.history, res.model), warm_start=started, warnings=warns)

    return run_stage(ctx, ctx.stage_dir(0, "teacher"), config, {}, body, cleanup=["checkpoint.pt"])


def _pseudo_dataset(ctx: RunContext, sel_path, transform) -> tuple[PseudoDataset, int]:
    """Selected pool rows with their targets, repeated by `copies` (class balancing)."""
    table = pq.read_table(sel_path)
    ids = table.column("sample_id").to_pylist()
    targets = np.asarray(table.column("target").to_pylist(), dtype=np.float32)
    copies = table.column("copies").to_numpy()
    pool = ctx.pool
    id2row = {sid: i for i, sid in enumerate(pool.ids)}
    missing = [s for s in ids if s not in id2row]
    if missing:
        raise UserError(f"{sel_path}: {len(missing)} selected ids are not in the unlabeled pool "
                        f"(e.g. {missing[0]}); the pool changed since labeling — rerun `noisystudent run`")
    sub = pool.subset([id2row[s] for s in ids])
    if ctx.cfg.data.cache and not isinstance(sub, ArraySource) and len(sub):
        sub = sub.cache(on_bad="skip")      # decoded once; undecodable rows drop out here
        keep = {sid: i for i, sid in enumerate(ids)}
        pos = np.asarray([keep[s] for s in sub.ids], dtype=np.int64)
        targets, copies = targets[pos], copies[pos]
    return PseudoDataset(sub, np.arange(len(sub)), targets, copies, transform), int(copies.sum())


def joint_plan(s: StudentConfig, n_pseudo: int, n_labeled: int, world: int = 1) -> tuple[int, int]:
    """(total steps, warmup steps) of round k's joint student; every variant trains exactly as long."""
    per_step = s.batch_size * (s.ratio if n_pseudo > 0 else 1) * world
    per_epoch = max(1, math.ceil((n_pseudo if n_pseudo > 0 else n_labeled) / per_step))
    return plan_steps(s, per_epoch)


def train_student(ctx: RunContext, k: int, variant: str | None = None) -> StageResult:
    """Round k's student, from scratch (or from the teacher), on labeled + selected pseudo-labels;
    `variant` (variants.VARIANTS) trains the same student with one switch flipped, same steps."""
    cfg = ctx.cfg
    s = variant_config(cfg.student, variant) if variant else cfg.student
    name = cfg.model_for_round(k)
    sdir = ctx.stage_dir(k, variant_stage(variant) if variant else "student")
    inputs = {"selection": ctx.stage_dir(k, "selection")}
    if s.init_from_teacher:
        inputs["teacher"] = teacher_dir(ctx, k)
    config = {"train": config_to_dict(s), "model": name, "seed": cfg.seed, "round": k,
              "data": _data_identity(ctx), "variant": variant, "warm_start": warm_start_identity(s, "student")}
    tag = f"student r{k}" + (f" ({variant})" if variant else "")

    def body(d):
        seed_everything(seed_for(cfg.seed, "init", "student", k, variant))
        model = create_model(name, len(ctx.classes), cfg.data.in_chans, s.noise.drop_rate, s.noise.drop_path_rate)
        started = warm_start(model, s, name, "student")
        if s.init_from_teacher:
            teacher, _ = load_model(teacher_dir(ctx, k) / "model.pt", expect_classes=ctx.classes)
            if type(teacher) is not type(model) or teacher.state_dict().keys() != model.state_dict().keys():
                raise UserError(f"student.init_from_teacher needs the same architecture, but round {k} "
                                f"trains {name}; set student.init_from_teacher=false or models[{k}] to the teacher's")
            model.load_state_dict(teacher.state_dict())
        noise_tf = create_train_transform(cfg.data, s.noise)
        lab = LabeledDataset(ctx.labeled, noise_tf, skip_bad=ctx.policy("labeled") == "skip")
        pseudo, n_pseudo = _pseudo_dataset(ctx, inputs["selection"] / "selection.parquet", noise_tf)
        total, warmup = joint_plan(cfg.student, n_pseudo, len(lab), ctx.world)
        warns: dict = {}
        if n_pseudo == 0 and ctx.rank == 0:       # one key per round: its variants share the selection
            runwarnings.emit(ctx.run_dir, f"no_pseudo_labels:round{k}", f"round {k}: no pool image passed "
                             f"select.threshold={cfg.select.threshold}; the student trains on the labeled images "
                             "only (lower the threshold or train the teacher longer)", warns)
        warn_short_schedule(tag, total, len(lab), s.batch_size, ctx, d, warns)
        s_run = dataclasses.replace(s, steps=total, warmup_steps=warmup)
        meta = ctx.model_meta(name, cfg.data.image_size, s.noise, "student")
        meta.update(round=k, variant=variant)
        common = dict(out_dir=d, meta=meta, workers=cfg.data.workers, device=ctx.device)
        seed = seed_for(cfg.seed, "student", k, variant)
        w = pseudo_weight(s.loss_weighting, s.unlabeled_weight, s.ratio)
        if s.mode == "supervised" or n_pseudo == 0:
            res = fit(model, s_run, labeled_ds=lab, batch_size=s.batch_size * (1 + s.ratio), seed=seed,
                      desc=tag, **common)
            history = res.history
        elif s.mode == "two_step":     # pseudo-labels only, then the labeled images; same total steps
            p2 = min(total - 1, s.two_step_epochs * math.ceil(len(lab) / s.batch_size))
            res = fit(model, dataclasses.replace(s_run, steps=total - p2), labeled_ds=None, pseudo_ds=pseudo,
                      ratio=s.ratio, unlabeled_weight=w, seed=seed, desc=tag, **common)
            history = res.history
            _warn_loss(ctx, d, tag, history, warns)     # each phase on its own: different losses
            res = fit(res.model, dataclasses.replace(s_run, steps=p2, warmup_steps=min(warmup, p2 // 10)),
                      labeled_ds=lab, seed=seed_for(cfg.seed, "student2", k), desc=f"{tag} phase 2",
                      **dict(common, out_dir=d / "phase2"))
            _warn_loss(ctx, d / "phase2", f"{tag} phase 2", res.history, warns)
            history = history + res.history
        else:
            res = fit(model, s_run, labeled_ds=lab, pseudo_ds=pseudo, ratio=s.ratio, unlabeled_weight=w,
                      seed=seed, desc=tag, **common)
            history = res.history
        if s.mode != "two_step" or n_pseudo == 0:
            _warn_loss(ctx, d, tag, history, warns)
        if ctx.rank == 0:
            save_model(d / "model.pt", res.model, meta)
        info = _summary(history, res.model)
        info.update(pseudo_images=n_pseudo, labeled_images=len(lab), variant=variant, steps=total, warm_start=started,
                    warnings=warns)
        return ["model.pt"], info

    return run_stage(ctx, sdir, config, inputs, body, cleanup=["checkpoint.pt", "phase2/checkpoint.pt"])


def warn_short_schedule(tag: str, steps: int, n_labeled: int, batch_size: int, ctx: RunContext | None = None,
                        stage_dir=None, into: dict | None = None) -> None:
    """Warn (once per run directory) when a stage has too few optimizer steps to fit its labeled
    set (runwarnings.short_schedule); the warning goes into the stage's own list `into` too."""
    msg = runwarnings.short_schedule(tag, steps, n_labeled, batch_size)
    _emit(ctx, stage_dir, "short_schedule", msg, into)


def _warn_loss(ctx: RunContext, stage_dir, tag: str, history: list, into: dict) -> None:
    _emit(ctx, stage_dir, "loss_rising", runwarnings.loss_rising(tag, [h.get("loss") for h in history]), into)


def _emit(ctx, stage_dir, kind: str, msg, into) -> None:
    if ctx is not None and ctx.rank != 0:
        return
    run_dir = ctx.run_dir if ctx is not None else None
    where = stage_dir.relative_to(run_dir).as_posix() if run_dir is not None and stage_dir is not None else ""
    runwarnings.emit(run_dir, f"{kind}:{where}" if where else kind, msg, into)


def finetune(ctx: RunContext, k: int) -> StageResult:
    """FixRes-style fix: a short, augmentation-free fine-tune at the test resolution with the stem and
    the first `freeze` stages frozen (their BatchNorm statistics included)."""
    cfg, ft = ctx.cfg, ctx.cfg.finetune
    size = ft.image_size or int(ctx.test.load(0).shape[0])
    src_dir = model_dir(ctx, k)
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
        res = fit(model, tcfg, labeled_ds=ds, out_dir=d, seed=seed_for(cfg.seed, "finetune", k), meta=meta,
                  workers=cfg.data.workers, device=ctx.device, desc=f"finetune r{k}")
        # Back to ordinary BatchNorm (statistics kept) so model.pt loads into a fresh architecture.
        unfreeze(res.model, frozen, include_bn_running_stats=True)
        if ctx.rank == 0:
            save_model(d / "model.pt", res.model, meta)
        info = _summary(res.history, res.model)
        info.update(image_size=size, frozen_modules=len(frozen))
        return ["model.pt"], info

    return run_stage(ctx, ctx.stage_dir(k, "finetune"), config, {"model": src_dir}, body,
                     cleanup=["checkpoint.pt"])
