"""What every stage shares: the run context (config, sources, device) and the skip/resume rule.

The rule: a stage's *fingerprint* hashes its own resolved config section plus the fingerprints and
output hashes of the stages it reads. If `stage.json` says done with the same fingerprint (and its
outputs still hash the same), the stage is skipped. If the fingerprint differs, the stage folder is
stale and is cleared before it is redone; downstream fingerprints then differ too, so everything
after it is redone — a changed config never silently reuses old artifacts. What the fingerprint
leaves out (keys added later at their default; speed-only keys such as label.batch_size):
`fingerprint.py`.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..artifacts import file_hash, read_stage, remove_run_results, reset_dir, version_drift, write_stage
from ..config import Config, config_to_dict
from ..data import ArraySource, Source, cache_if_fits, default_mean_std, max_side_for
from ..data.loaders import resolve_decode_workers, resolve_workers
from ..data.infer import create_source_noted as _create
from ..distributed import all_ranks, from_rank0, resolve_device, world_info
from ..errors import UserError
from ..layout import RunLayout
from .. import runlog
from .fingerprint import fingerprinted, stage_fingerprint

__all__ = ["RunContext", "run_stage", "channels_last_of", "StageResult", "invalidate_stage", "fingerprinted",
           "class_counts"]

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
        # data.workers as a count (`auto`: none on a CPU, the cores per GPU less one, at most 8)
        self.workers = resolve_workers(cfg.data.workers, self.device)
        # ... and for decoding a whole source into RAM (data.cache), when no model competes for the
        # cores: `auto` takes them all on a CPU too
        self.decode_workers = resolve_decode_workers(cfg.data.workers, self.device)
        if cfg.data.workers == "auto" and self.decode_workers and self.rank == 0:
            log.info("data.workers auto: %d loader processes, %d for caching (%s)", self.workers,
                     self.decode_workers, self.device)
        self._fingerprints: dict = {}
        self._built: dict = {}            # section -> its source as built (see _build)
        # data.fingerprint: content reads every data file once; the digests are kept in the run
        # directory, read before the run claims it but written only by `data_fingerprint` (after)
        self._content = None
        if cfg.data.fingerprint == "content":
            from ..data.contenthash import ContentHashes
            self._content = ContentHashes(self.layout.cache("content-hashes.npz"))

    def policy(self, role: str) -> str:
        p = self.cfg.data.bad_images
        return ("skip" if role == "unlabeled" else "fail") if p == "auto" else p

    def _source_config(self, section: str):
        return getattr(self.cfg.data, "unlabeled" if section == "pool" else section)

    def _build(self, section: str) -> Source:
        """Create a data section's source, first removing the images of the sections it `exclude`s
        (config validation has ruled out cycles). Built once per section and before that section's
        checks, so the ids another section excludes never wait on them: a validation set carved out
        of the labeled images (`labeled: {exclude: [val]}`) is checked against the labeled set that
        excludes it."""
        if section not in self._built:
            sc = self._source_config(section)
            excluded: set = set()
            for other in sc.exclude:
                excluded.update(self._build("pool" if other == "unlabeled" else other).ids)
            key = f"data.{'unlabeled' if section == 'pool' else section}"
            self._built[section] = _create(sc, self.cfg.data.in_chans, key, exclude_ids=excluded)
        return self._built[section]

    @functools.cached_property
    def labeled(self) -> Source:
        src = self._build("labeled")
        if src.classes is None:
            raise UserError("config key 'data.labeled': the labeled source has no classes "
                            "(use kind imagefolder, idx or digits)")
        if len(src.classes) < 2 or len(np.unique(src.labels[src.labels >= 0])) < 2:
            found = sorted({src.classes[c] for c in src.labels if 0 <= c < len(src.classes)})
            raise UserError(f"config key 'data.labeled': the labeled set has images of only {len(found)} class "
                            f"({', '.join(found)[:80]}); a classifier needs at least 2 classes")
        self._fingerprints["labeled"] = src.fingerprint(self._content)     # of the files, before caching
        return self._maybe_cache(src, "labeled", "labeled")

    @functools.cached_property
    def test(self) -> Source:
        src = self._build("test")
        _check_classes(self.labeled, src, "data.labeled", "data.test")
        self._fingerprints["test"] = src.fingerprint(self._content)
        return self._maybe_cache(src, "test", "test")

    @functools.cached_property
    def val(self) -> Source | None:
        """Validation images (data.val), or None. Recipe choices are made on these, never on test."""
        if self.cfg.data.val is None:
            return None
        src = self._build("val")
        _check_classes(self.labeled, src, "data.labeled", "data.val")
        self._fingerprints["val"] = src.fingerprint(self._content)
        return self._maybe_cache(src, "test", "val")

    @functools.cached_property
    def extra_tests(self) -> list[Source]:
        return [_create(sc, self.cfg.data.in_chans, f"data.extra_test[{i}]")
                for i, sc in enumerate(self.cfg.data.extra_test)]

    @functools.cached_property
    def pool_copies(self) -> dict[str, list[str]]:
        """{'val' / 'test' / 'extra_test[i]': ids of pool images that are copies of that set's images}
        (`data.overlap`: the same file, or the same bytes), found once per command. The sources as
        configured, not their decoded caches, so files compare as files."""
        from ..data.overlap import pool_copies
        return pool_copies(self.pool, self.evaluation_sources())

    def as_configured(self, section: str) -> Source:
        """A data section's source as configured ('labeled', 'val', 'test', 'pool'): its files, not the
        decoded cache the training reads, for the checks that compare files or decode them small."""
        return self._build(section)

    def evaluation_sources(self) -> dict:
        """{'val': source or None, 'test': source, 'extra_test[i]': source} as configured."""
        others = {"val": self._build("val") if self.cfg.data.val is not None else None, "test": self._build("test")}
        others.update({f"extra_test[{i}]": s for i, s in enumerate(self.extra_tests)})
        return others

    @functools.cached_property
    def pool_near_copies(self) -> dict:
        """{'found': {'val' / 'test' / 'extra_test[i]': {pool id: [that set's id, score]}}, 'thresholds':
        {set: [score threshold or None (not searched), share of its images alike among themselves]}}
        (`data.nearcopy`: re-encoded, resized, recoloured, moved or mirrored copies). Computed once a run (under
        torchrun every rank searches a share of the pool), kept in cache/near-copies.json under the
        sources' fingerprints."""
        from ..data.nearcopy import cached_near_copies
        from ..distributed import progress_enabled
        return cached_near_copies(self.pool, self.evaluation_sources(), self.evaluation_fingerprints("unlabeled"),
                                  self.layout.cache("near-copies.json"), self.decode_workers, progress_enabled())

    def evaluation_fingerprints(self, role: str) -> dict:
        """`data_fingerprint` of `role` ('unlabeled', 'labeled') and of every evaluation set."""
        prints = {role: self.data_fingerprint(role), "val": self.data_fingerprint("val"),
                  "test": self.data_fingerprint("test")}
        prints.update({f"extra_test[{i}]": fp for i, fp in enumerate(self.data_fingerprint("extra_test") or [])})
        return prints

    def data_fingerprint(self, role: str) -> str | list[str] | None:
        """Contents of a data source (`Source.fingerprint`), for the stages that read it: 'labeled',
        'test', 'val', 'unlabeled' or 'extra_test' (a list). Computed once per command; called by
        stages only, so after the run directory is claimed: content digests read so far are saved."""
        if role not in self._fingerprints:
            if role in ("labeled", "test", "val"):
                if getattr(self, role) is None:     # computes it before caching the images
                    return None
            elif role == "unlabeled":
                self._fingerprints[role] = self.pool.fingerprint(self._content)
            else:
                self._fingerprints[role] = [s.fingerprint(self._content) for s in self.extra_tests]
        if self._content is not None and self.rank == 0:
            self._content.flush()
        return self._fingerprints[role]

    @functools.cached_property
    def pool(self) -> Source:
        """The unlabeled pool. Not cached whole: labeling reads it once, streaming."""
        src = self._build("pool")
        src.max_side = self.max_side
        return src

    def check_disjoint(self) -> None:
        """Labeled, validation, pool and test images drawn from the same source must not overlap (by
        stable id): a labeled image in the pool, or a validation image in training, inflates results."""
        d = self.cfg.data
        named = [("labeled", self.labeled), ("val", self.val), ("unlabeled", self.pool if self.cfg.rounds > 0 else None),
                 ("test", self.test)]
        named = [(n, src, getattr(d, n)) for n, src in named if src is not None]
        for i, (a, sa, ca) in enumerate(named):
            for b, sb, cb in named[i + 1:]:
                if (ca.kind, ca.root, ca.split) != (cb.kind, cb.root, cb.split):
                    continue
                shared = set(sa.ids).intersection(sb.ids)
                if shared:
                    raise UserError(f"data.{a} and data.{b} share {len(shared)} image(s) of the same source "
                                    f"(e.g. {sorted(shared)[0]!r}); add `exclude: [{a}]` to data.{b} (or draw "
                                    f"both with the same seed and subset: rest)")

    @property
    def max_side(self) -> int:
        """Images are kept (and cached) at most this large (`max_side_for`)."""
        ft = self.cfg.finetune
        return max_side_for(self.cfg.data.image_size, ft.image_size if ft.enabled else 0)

    @property
    def classes(self) -> list[str]:
        return self.labeled.classes

    def _maybe_cache(self, src: Source, role: str, section: str) -> Source:
        src.max_side = self.max_side
        if not self.cfg.data.cache or isinstance(src, ArraySource):
            return src
        return cache_if_fits(src, self.policy(role), f"data.{section}", self.decode_workers, self.agree)

    def agree(self, flag: bool) -> bool:
        """True when `flag` is true on every rank of the run (a collective under torchrun: every rank
        must call it at the same point; rank-0-only stage bodies must not)."""
        return all_ranks(flag, self.device)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def stage_dir(self, k: int, name: str) -> Path:
        return self.layout.stage(k, name)

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
    upstream = _upstream(ctx, inputs, label)
    input_dirs = {name: _rel(ctx, d) for name, d in inputs.items()}
    old = read_stage(stage_dir) if ctx.rank == 0 else None
    fp = stage_fingerprint(config, upstream, old)      # only rank 0 decides and writes records
    action = _same_on_all_ranks(ctx, _decide(stage_dir, fp, label) if ctx.rank == 0 else None)
    if ctx.rank == 0 and action != "reset" and (drift := version_drift(old)):
        log.warning("%s: %s with other software (%s); kept, as finished work is; delete %s to redo it "
                    "(and what was made from it)", label, "done" if action == "skip" else "begun", drift, stage_dir)
    if action == "skip":
        log.info("%s: done, skipping", label)
        if ctx.rank == 0:       # resume state a kill right after "done" left behind
            for f in cleanup:
                (stage_dir / f).unlink(missing_ok=True)
        rec = read_stage(stage_dir)
        runlog.plan_skip((rec or {}).get("info", {}).get("images_seen") or 0)   # the run's ETA: not left to do
        return StageResult(stage_dir, rec, True)
    if ctx.rank == 0:
        # Before any work: results made from the old version of this stage must not outlive it, or a
        # run that fails now would leave them looking current (summary.json, eval.json, the report).
        if action == "reset":
            invalidate_stage(ctx, stage_dir, old_fingerprint=(old or {}).get("fingerprint"))
        else:
            _remove_results(ctx)
    _barrier(ctx)
    if ctx.rank == 0:
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_stage(stage_dir, status="running", fingerprint=fp, config=config, inputs=upstream,
                    input_dirs=input_dirs)
    _barrier(ctx)
    log.info("%s: running", label)
    t0 = time.perf_counter()
    try:
        outputs, info = body(stage_dir) if ctx.rank == 0 or not rank0_only else ([], {})
    except ValueError as e:
        # Inner code (ours, numpy, torch, pyarrow) says "bad value" with ValueError: that is about the
        # user's data or config, not a bug. One line naming the stage; the stage stays unfinished.
        raise UserError(f"{label}: {e}".splitlines()[0]) from e
    _barrier(ctx)
    if ctx.rank == 0:
        # stage_s: wall seconds of the invocation that finished the stage (a resumed one: since resuming)
        info = dict(info or {}, stage_s=round(time.perf_counter() - t0, 2))
        write_stage(stage_dir, status="done", fingerprint=fp, config=config, inputs=upstream,
                    outputs={o: True for o in outputs}, info=info, input_dirs=input_dirs)
        summary = runlog.stage_summary(info)
        log.info("%s: done in %s%s", label, runlog.fmt_duration(info["stage_s"]), f": {summary}" if summary else "")
        # Resume state is dead weight once the stage is done (written last, so a kill before this
        # line at worst leaves a redundant file).
        for f in cleanup:
            (stage_dir / f).unlink(missing_ok=True)
    _barrier(ctx)
    return StageResult(stage_dir, read_stage(stage_dir), False)


def _upstream(ctx: RunContext, inputs: dict[str, Path], label: str) -> dict:
    """Fingerprint and output hashes of each finished upstream stage (the chain of hashes)."""
    upstream = {}
    for name, d in inputs.items():
        rec = read_stage(d)
        if rec is None or not rec.done:
            raise UserError(f"{label} needs {d.relative_to(ctx.run_dir)} to be finished first "
                            "(run `noisystudent run CONFIG`, which runs stages in order)")
        upstream[name] = {"fingerprint": rec["fingerprint"], "outputs": rec["outputs"]}
    return upstream


def _same_on_all_ranks(ctx: RunContext, action):
    """Rank 0's decision, on every rank: a rank that skipped while another redoes the stage would
    leave the other waiting at a barrier."""
    if ctx.world > 1:
        action = from_rank0(action)
    return action


def _barrier(ctx: RunContext) -> None:
    if ctx.world > 1:
        torch.distributed.barrier()


def _rel(ctx: RunContext, d: Path) -> str:
    try:
        return Path(d).relative_to(ctx.run_dir).as_posix()
    except ValueError:
        return str(d)


def _remove_results(ctx: RunContext) -> None:
    if gone := remove_run_results(ctx.run_dir):
        log.info("removed %s: the run's results are out of date until it finishes again", ", ".join(gone))


def downstream_stages(ctx: RunContext, stage_dir: Path, old_fingerprint: str | None = None) -> list[Path]:
    """Every stage folder made, directly or through others, from `stage_dir`'s outputs: its record
    names `stage_dir` among its inputs (`input_dirs`) or holds the fingerprint `stage_dir` had."""
    if old_fingerprint is None:
        old_fingerprint = (read_stage(stage_dir) or {}).get("fingerprint")
    recs = {}
    for d in ctx.layout.stage_dirs():
        rec = read_stage(d)
        if rec is not None and d != stage_dir:
            recs[d] = rec
    found: list[Path] = []
    todo = [(_rel(ctx, stage_dir), old_fingerprint)]
    while todo:
        rel, fp = todo.pop()
        for d, rec in recs.items():
            if d in found:
                continue
            fps = [i.get("fingerprint") for i in rec.get("inputs", {}).values()]
            if rel in rec.get("input_dirs", {}).values() or (fp and fp in fps):
                found.append(d)
                todo.append((_rel(ctx, d), rec["fingerprint"]))
    return found


def invalidate_stage(ctx: RunContext, stage_dir: Path, old_fingerprint: str | None = None) -> None:
    """Clear a stage that is about to be redone, every stage made from it, and the run's results
    (summary.json, report): a redo that fails must not leave the old results looking current.
    Rank 0 only."""
    for d in downstream_stages(ctx, stage_dir, old_fingerprint):
        log.warning("%s: removed, it was made from %s, which is being redone", _rel(ctx, d), _rel(ctx, stage_dir))
        reset_dir(d)
    reset_dir(stage_dir)
    _remove_results(ctx)


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
        if rec is None and (stage_dir / "stage.json").exists():
            log.warning("%s: stage.json is damaged (not a stage record); redoing the stage", label)
        elif rec is not None:
            log.warning("%s: config or inputs changed since it ran; redoing it (stages that read its outputs follow; the others are kept)", label)
        return "reset"
    return "resume"


def channels_last_of(cfg, k: int) -> bool:
    """Was round k's model trained channels-last? Round 0's is the teacher, later rounds' students."""
    return cfg.train_for_round(k).channels_last


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels[labels >= 0], minlength=num_classes).tolist()
