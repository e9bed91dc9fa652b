"""The `label` stage: the un-noised teacher predicts the unlabeled pool into Parquet shards.

Un-noised means: EMA weights, eval mode (no dropout, no stochastic depth, BatchNorm running stats)
and clean eval preprocessing. Shard s holds pool rows [s*shard_size, (s+1)*shard_size); each shard
is written atomically and skipped when it exists, so a killed labeling run redoes at most one shard
per rank; ranks take shards s = rank, rank+world, ... so their union is the single-process output.
Memory is one batch plus one shard's rows, whatever the pool size.
"""
from __future__ import annotations

import logging

import pyarrow.parquet as pq
import torch
from timm.layers import DropPath
from tqdm import tqdm

from ..artifacts import atomic_write, file_hash
from ..config import config_to_dict
from ..distributed import progress_enabled
from ..errors import UserError
from ..inference import inference_batch_size
from ..labels import predict_shards, shard_name, shard_schema
from .common import RunContext, StageResult, channels_last_of, run_stage
from .modelfile import load_model

log = logging.getLogger("noisystudent")

__all__ = ["label_pool"]


def _set_noise(model: torch.nn.Module, on: bool) -> None:
    """Eval mode, except dropout/stochastic depth when `on` (the paper's noised-teacher ablation)."""
    model.eval()
    if on:
        for m in model.modules():
            if isinstance(m, (torch.nn.Dropout, DropPath)):
                m.train()


def _shard_ok(path, num_classes: int, max_rows: int, k: int) -> bool:
    """A finished shard of an unfinished label stage is kept only if it reads back as one: its footer
    parses, its schema is ours and it has no more rows than its range. A damaged one (cut short or
    overwritten outside the run; ours are written atomically) is removed and labeled again."""
    if not path.is_file():
        return False
    try:
        f = pq.ParquetFile(path)
        ok = f.schema_arrow.equals(shard_schema(num_classes)) and f.metadata.num_rows <= max_rows
        why = "not a label shard of this run"
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        ok, why = False, f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    if not ok:
        log.warning("round %d: %s is damaged (%s); labeling its images again", k, path, why)
        path.unlink(missing_ok=True)
    return ok


def label_pool(ctx: RunContext, k: int) -> StageResult:
    cfg, lc = ctx.cfg, ctx.cfg.label
    tdir = ctx.layout.teacher_of(k)
    config = {"label": config_to_dict(lc), "pool": config_to_dict(cfg.data.unlabeled),
              "image_size": cfg.data.image_size, "mean": ctx.mean, "std": ctx.std,
              "pool_content": ctx.data_fingerprint("unlabeled")}

    def body(d):
        model, meta = load_model(tdir / "model.pt", ctx.device, expect_classes=ctx.classes,
                                 noised=lc.noised_teacher, channels_last=channels_last_of(cfg, k - 1))
        _set_noise(model, lc.noised_teacher)
        pool = ctx.pool
        thash = file_hash(tdir / "model.pt")
        u, l = cfg.data.unlabeled, cfg.data.labeled
        same_dataset = (u.kind, u.root) == (l.kind, l.root) and pool.classes == ctx.classes
        n_shards = max(1, -(-len(pool) // lc.shard_size))
        mine = [s for s in range(n_shards) if s % ctx.world == ctx.rank]
        todo = [s for s in mine if not _shard_ok(d / shard_name(s), len(ctx.classes),
                                                 min(lc.shard_size, len(pool) - s * lc.shard_size), k)]
        batch = inference_batch_size(lc.batch_size, ctx.device, meta["image_size"])
        bar = tqdm(total=len(todo), desc=f"label r{k}", disable=not (progress_enabled() and ctx.rank == 0),
                   leave=True)
        # shard s+1 is queued on the device before shard s is written (predict_shards)
        shards = predict_shards(model, pool, todo, lc.shard_size, image_size=meta["image_size"], mean=meta["mean"],
                                std=meta["std"], temperature=lc.temperature, flip_tta=lc.flip_tta,
                                shift_tta=lc.shift_tta, batch_size=batch, device=ctx.device,
                                workers=ctx.workers, skip_bad=ctx.policy("unlabeled") == "skip",
                                teacher_hash=thash,
                                # true labels of a pool drawn from the labeled set (benchmarks) are
                                # recorded for reports; an out-of-domain pool's labels mean nothing here
                                keep_true_labels=same_dataset)
        try:
            for s, table in shards:
                with atomic_write(d / shard_name(s)) as f:
                    pq.write_table(table, f)
                bar.update(1)
        except torch.OutOfMemoryError as e:
            # the batch size is out of the stage's fingerprint: a smaller one resumes from the shards on disk
            auto = " (auto)" if lc.batch_size == "auto" else ""
            raise UserError(f"round {k}: out of memory labeling at label.batch_size={batch}{auto}; the finished "
                            f"shards are kept: rerun with --set label.batch_size={max(1, batch // 4)}") from e
        bar.close()
        if ctx.world > 1:
            torch.distributed.barrier()     # every rank's shards are in place before counting
        files = [shard_name(s) for s in range(n_shards)]
        rows = sum(pq.ParquetFile(d / f).metadata.num_rows for f in files) if ctx.rank == 0 else 0
        if ctx.rank == 0 and rows < len(pool):
            log.warning("round %d: skipped %d undecodable pool image(s) of %d (data.bad_images=skip); "
                        "the count is in %s", k, len(pool) - rows, len(pool), d / "stage.json")
        return files, {"pool_size": len(pool), "rows": rows, "skipped_images": len(pool) - rows,
                       "shards": n_shards, "batch_size": batch, "teacher": thash, "teacher_dir": ctx.layout.rel(tdir)}

    return run_stage(ctx, ctx.layout.labels(k), config, {"teacher": tdir}, body)

