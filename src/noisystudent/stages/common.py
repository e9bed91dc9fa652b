"""What every stage shares: the run context (config, sources, device) and the skip/resume rule.

The rule: a stage's *fingerprint* hashes its own resolved config section plus the fingerprints and
output hashes of the stages it reads. If `stage.json` says done with the same fingerprint (and its
outputs still hash the same), the stage is skipped. If the fingerprint differs, the stage folder is
stale and is cleared before it is redone; downstream fingerprints then differ too, so everything
after it is redone — a changed config never silently reuses old artifacts.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..artifacts import (file_hash, load_checkpoint, read_stage, reset_dir, save_checkpoint,
                         write_stage)
from ..config import Config, config_hash, config_to_dict
from ..data import ArraySource, Source, default_mean_std
from ..data.infer import create_source_noted as _create
from ..engine import resolve_device, world_info
from ..errors import UserError
from ..models import create_model

__all__ = ["RunContext", "run_stage", "load_model", "save_model", "StageResult"]

log = logging.getLogger("noisystudent")


def _check_classes(a: Source, b: Source, a_key: str, b_key: str) -> None:
    if a.classes != b.classes:
        missing = sorted(set(a.classes or []) - set(b.classes or []))
        extra = sorted(set(b.classes or []) - set(a.classes or []))
        detail = (f"{missing[:5]} missing from {b_key}" if missing else "") + \
                 (("; " if missing else "") + f"{extra[:5]} only in {b_key}" if extra else "")
        raise UserError(f"class lists differ between {a_key} and {b_key}: {detail or 'different order'}; "
                        "both must have the same class folders")


class RunContext:
    """The config, the run directory, the device, and lazily built (and cached) data sources."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, device: str | None = None):
        from ..data.infer import resolve_data_config
        cfg = resolve_data_config(cfg)      # required sections; in_chans/image_size from the images
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else cfg.resolved_run_dir()
        self.device = resolve_device(device or cfg.device)
        self.rank, self.world = world_info()
        self.mean, self.std = default_mean_std(cfg.data.in_chans, cfg.data.mean, cfg.data.std)

    def policy(self, role: str) -> str:
        p = self.cfg.data.bad_images
        return ("skip" if role == "unlabeled" else "fail") if p == "auto" else p

    @functools.cached_property
    def labeled(self) -> Source:
        src = _create(self.cfg.data.labeled, self.cfg.data.in_chans, "data.labeled")
        if src.classes is None:
            raise UserError("config key 'data.labeled': the labeled source has no classes "
                            "(use kind imagefolder, idx or digits)")
        if len(np.unique(src.labels[src.labels >= 0])) < 2:
            raise UserError(f"config key 'data.labeled': all labeled images are of one class "
                            f"({src.classes[int(src.labels[0])] if len(src) else '?'}); a classifier needs "
                            "at least two class folders")
        return self._maybe_cache(src, "labeled")

    @functools.cached_property
    def test(self) -> Source:
        src = _create(self.cfg.data.test, self.cfg.data.in_chans, "data.test")
        _check_classes(self.labeled, src, "data.labeled", "data.test")
        return self._maybe_cache(src, "test")

    @functools.cached_property
    def pool(self) -> Source:
        """The unlabeled pool. Not cached whole: labeling reads it once, streaming."""
        return _create(self.cfg.data.unlabeled, self.cfg.data.in_chans, "data.unlabeled")

    @property
    def classes(self) -> list[str]:
        return self.labeled.classes

    def _maybe_cache(self, src: Source, role: str) -> Source:
        if not self.cfg.data.cache or isinstance(src, ArraySource):
            return src
        return src.cache(on_bad=self.policy(role))

    def stage_dir(self, k: int, name: str) -> Path:
        return self.run_dir / f"round{k}" / name

    def model_meta(self, model_name: str, image_size: int, noise, role: str) -> dict:
        return {"model_name": model_name, "num_classes": len(self.classes), "in_chans": self.cfg.data.in_chans,
                "classes": list(self.classes), "image_size": image_size, "mean": self.mean, "std": self.std,
                "drop_rate": noise.drop_rate, "drop_path_rate": noise.drop_path_rate, "role": role,
                "config": config_to_dict(self.cfg)}


@dataclasses.dataclass
class StageResult:
    dir: Path
    record: dict
    skipped: bool


def run_stage(ctx: RunContext, stage_dir: Path, config: dict, inputs: dict[str, Path],
              body: Callable[[Path], tuple[list[str], dict]], label: str = "",
              cleanup: tuple | list = (), rank0_only: bool = False) -> StageResult:
    """Run `body(stage_dir) -> (output files, info)` unless it is already done for this fingerprint.

    `inputs` maps names to upstream stage folders (which must be done). The record of each
    (fingerprint + output hashes) goes into ours, so the chain of hashes covers all inputs.
    Under torchrun rank 0 decides skip/redo for all ranks, and only rank 0 writes the record;
    `rank0_only` stages (select, evaluate) run `body` on rank 0 while the others wait.
    """
    label = label or str(stage_dir.relative_to(ctx.run_dir))
    upstream = {}
    for name, d in inputs.items():
        rec = read_stage(d)
        if rec is None or not rec.done:
            raise UserError(f"{label} needs {d.relative_to(ctx.run_dir)} to be finished first "
                            "(run `noisystudent run CONFIG`, which runs stages in order)")
        upstream[name] = {"fingerprint": rec["fingerprint"], "outputs": rec["outputs"]}
    fp = config_hash({"config": config, "inputs": upstream})
    action = _decide(stage_dir, fp, label) if ctx.rank == 0 else None
    if ctx.world > 1:
        # Every rank must take the same branch: a rank that skipped while another redoes the stage
        # would leave the other waiting at a barrier.
        box = [action]
        torch.distributed.broadcast_object_list(box, src=0)
        action = box[0]
    if action == "skip":
        log.info("%s: done, skipping", label)
        if ctx.rank == 0:       # resume state a kill right after "done" left behind
            for f in cleanup:
                (stage_dir / f).unlink(missing_ok=True)
        return StageResult(stage_dir, read_stage(stage_dir), True)
    if action == "reset" and ctx.rank == 0:
        reset_dir(stage_dir)
    if ctx.world > 1:
        torch.distributed.barrier()
    if ctx.rank == 0:
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_stage(stage_dir, status="running", fingerprint=fp, config=config, inputs=upstream)
    if ctx.world > 1:
        torch.distributed.barrier()
    log.info("%s: running", label)
    outputs, info = body(stage_dir) if ctx.rank == 0 or not rank0_only else ([], {})
    if ctx.world > 1:
        torch.distributed.barrier()
    if ctx.rank == 0:
        write_stage(stage_dir, status="done", fingerprint=fp, config=config, inputs=upstream,
                    outputs={o: True for o in outputs}, info=info)
        # Resume state is dead weight once the stage is done (written last, so a kill before this
        # line at worst leaves a redundant file).
        for f in cleanup:
            (stage_dir / f).unlink(missing_ok=True)
    if ctx.world > 1:
        torch.distributed.barrier()
    return StageResult(stage_dir, read_stage(stage_dir), False)


def _decide(stage_dir: Path, fp: str, label: str) -> str:
    """'skip' (done, outputs intact), 'reset' (stale folder: clear it) or 'resume' (keep what a
    killed run of this very stage left: checkpoints, finished label shards)."""
    rec = read_stage(stage_dir)
    if rec is not None and rec.get("fingerprint") == fp and rec.done:
        intact = all((stage_dir / f).is_file() and file_hash(stage_dir / f) == h
                     for f, h in rec["outputs"].items())
        if intact:
            return "skip"
        log.warning("%s: outputs changed on disk since they were written; redoing the stage", label)
        return "reset"
    if stage_dir.exists() and (rec is None or rec.get("fingerprint") != fp):
        if rec is not None:
            log.warning("%s: config or inputs changed since it ran; redoing it and every stage after it", label)
        return "reset"
    return "resume"


# ------------------------------------------------------------------------------------------------
# final model files: weights + everything needed to rebuild and preprocess, loadable weights_only

def save_model(path: Path, model: torch.nn.Module, meta: dict) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"format": "noisystudent/model/1", "model": state, "meta": meta})


def load_model(path: str | Path, device: torch.device | str = "cpu", *, expect_classes: list | None = None,
               noised: bool = False) -> tuple[torch.nn.Module, dict]:
    """Rebuild the architecture named in the file and load its weights (strictly). `noised` builds it
    with the dropout/stochastic-depth rates it was trained with (the noised-teacher ablation)."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "meta" not in state or "model" not in state:
        raise UserError(f"{path}: not a noisystudent model file (no 'meta'/'model' entries)")
    meta = state["meta"]
    if expect_classes is not None and list(meta["classes"]) != list(expect_classes):
        raise UserError(f"{path}: trained for {meta['num_classes']} classes {meta['classes'][:5]}..., "
                        f"but the data has {len(expect_classes)} classes {list(expect_classes)[:5]}...")
    rates = (meta.get("drop_rate", 0.0), meta.get("drop_path_rate", 0.0)) if noised else (0.0, 0.0)
    model = create_model(meta["model_name"], meta["num_classes"], meta["in_chans"], *rates)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit {meta['model_name']} "
                        f"({str(e).splitlines()[0][:150]})") from None
    return model.to(device).eval(), meta


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels[labels >= 0], minlength=num_classes).tolist()
