"""Command line: parse arguments -> one call into the pipeline/stages. User errors are one line and
exit code 2; an interrupt says how to resume; an internal error says it is a bug."""
from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from pathlib import Path

# OpenMP threads that wait for work sleep instead of spinning. libgomp (torch's OpenMP) reads this
# once, when torch is imported, so it is set here, before anything imports torch (the package's API
# is imported lazily for that reason). A spinning thread holds the core another process needs: two
# runs at once on 2 cores trained at 0.35-0.43x the img/s of one run alone, together, with libgomp's
# default waits, and at 1.09-1.21x with sleeping ones, which cost a run alone 1% (the tiny digits
# demo's teacher 11%; medians of 3, docs/benchmarks/cpu-sharing.md). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import BUNDLED_DIR  # noqa: E402  (after the wait policy)
from .errors import UserError
from .layout import RunLayout

__all__ = ["main", "resolve_config_path", "parse_source_spec"]

_REL = RunLayout(Path())       # run-dir names for help texts (relative to any run)


def resolve_config_path(name: str) -> Path:
    """A path, or the name of a bundled config (`digits-demo`, `cifar10-4k`, ...)."""
    p = Path(name)
    if p.is_file():
        return p
    bundled = BUNDLED_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if bundled.is_file():
        return bundled
    names = sorted(f.stem for f in BUNDLED_DIR.glob("*.yaml"))
    raise UserError(f"config not found: {name} (a YAML path, or one of: {', '.join(names)})")


def parse_source_spec(spec: str):
    """`kind:root[:split]` -> SourceConfig, e.g. imagefolder:data/test, idx:data/fmnist:test, digits:test;
    a folder on its own is an imagefolder (class subfolders: the one folder layout with labels)."""
    from .config import SourceConfig, coerce
    if Path(spec).is_dir():
        return coerce({"kind": "imagefolder", "root": spec}, SourceConfig, "--data")
    parts = spec.split(":")
    kind = parts[0]
    if kind == "digits":
        return coerce({"kind": "digits", "split": parts[1] if len(parts) > 1 else "test"}, SourceConfig, "--data")
    if len(parts) < 2 or not parts[1]:
        raise UserError(f"--data '{spec}': not a folder; expected a folder of class subfolders or "
                        "KIND:PATH[:SPLIT], e.g. imagefolder:cifar10/test")
    d = {"kind": kind, "root": parts[1]}
    if len(parts) > 2:
        d["split"] = parts[2]
    return coerce(d, SourceConfig, "--data")


def _load(args):
    from .config import load_config
    return load_config(resolve_config_path(args.config), args.set)


def _ctx(args, cfg):
    from .stages.common import RunContext
    return RunContext(cfg, args.run_dir, args.device)


def cmd_run(args):
    from .pipeline import format_table, run
    cfg = _load(args)
    summary = run(cfg, args.run_dir, args.device, force=args.force, report=not args.no_report)
    from .distributed import is_main_process
    if not is_main_process():
        return
    print(format_table(summary))
    print(f"\nrun directory: {args.run_dir or cfg.resolved_run_dir()}")


def cmd_demo(args):
    args.config, args.force, args.no_report = "digits-demo", False, False
    cmd_run(args)


def cmd_train(args):
    from .pipeline import claim_run_dir
    from .stages.common import invalidate_stage
    from .stages.evaluate import evaluate_stage
    from .stages.train import train_teacher
    cfg = _load(args)
    ctx = _ctx(args, cfg)
    claim_run_dir(ctx, args.force)
    tdir = ctx.layout.model(0, "teacher")
    if args.restart:
        if ctx.rank == 0:           # one rank deletes; the others wait, so none sees a half-removed folder
            invalidate_stage(ctx, tdir)     # and everything made from it: it is not current any more
        if ctx.world > 1:
            import torch.distributed as dist
            dist.barrier()
    elif args.resume and not (tdir / "checkpoint.pt").is_file() and not (tdir / "model.pt").is_file():
        raise UserError(f"--resume: nothing to resume in {tdir} (no checkpoint.pt); drop --resume to start")
    train_teacher(ctx)
    ev = evaluate_stage(ctx, 0, "teacher")
    print(f"teacher {cfg.model_for_round(0)}: top-1 {100 * ev.record['info']['top1']:.2f}% "
          f"(ECE {ev.record['info']['ece']:.3f}) -> {tdir / 'model.pt'}")


def _stage_cmd(fn_name):
    def cmd(args):
        from .pipeline import claim_run_dir
        from .stages import evaluate as ev_mod, label as label_mod, select as sel_mod, train as train_mod
        fns = {"label": label_mod.label_pool, "select": sel_mod.select_pseudo_labels,
               "student": train_mod.train_student, "finetune": train_mod.finetune}
        cfg = _load(args)
        ctx = _ctx(args, cfg)
        claim_run_dir(ctx, args.force)
        res = fns[fn_name](ctx, args.round)
        if fn_name in ("student", "finetune"):
            ev_mod.evaluate_stage(ctx, args.round, fn_name)
        print(f"{fn_name} round {args.round}: {'already done' if res.skipped else 'done'} -> {res.dir}")
    return cmd


def cmd_evaluate(args):
    import json
    from .artifacts import write_json
    from .config import EvalConfig
    from .data import create_source
    from .distributed import resolve_device
    from .inference import inference_batch_size
    from .stages.modelfile import load_model, model_max_side, run_views
    from .stages.evaluate import evaluate_source, run_robustness
    if not args.checkpoint or not args.data:
        raise UserError("evaluate needs --checkpoint MODEL.pt and --data DIR|KIND:PATH[:SPLIT]")
    device = resolve_device(args.device or "auto")
    model, meta = load_model(args.checkpoint, device)
    src = create_source(parse_source_spec(args.data), meta["in_chans"], "--data")
    src.max_side = model_max_side(meta, args.image_size or 0)      # images kept as large as the run kept them
    size = args.image_size or meta["image_size"]
    if args.shift_tta is not None and args.shift_tta < 0:
        raise UserError(f"--shift-tta {args.shift_tta}: must be >= 0 pixels (0 = off)")
    flip, shift = run_views(meta, args.flip_tta, args.shift_tta)
    report = evaluate_source(model, meta, src, inference_batch_size(args.batch_size, device, size), device,
                             image_size=args.image_size, flip_tta=flip, shift_tta=shift)
    report.update(image_size=size, flip_tta=flip, shift_tta=shift)
    if args.robustness:
        ecfg = EvalConfig(max_images=args.max_images)
        report["robustness"] = run_robustness(model, meta, src, ecfg, Path(args.checkpoint).parent / "cache", device)
    report["data"], report["checkpoint"] = args.data, str(args.checkpoint)
    out = args.out or str(Path(args.checkpoint).parent / f"eval-{_data_slug(args.data)}.json")
    write_json(out, report)
    brief = {k: report[k] for k in ("num_images", "top1", "top5", "ece", "flip_tta", "shift_tta")}
    print(json.dumps(brief, indent=2))
    print(f"written: {out}")


def _data_slug(spec: str) -> str:
    """A file-name part for `evaluate`'s default output, from its --data: the last two parts of the
    path and the split (`data/cifar10/test` -> `cifar10-test`, `digits:test` -> `digits-test`), so
    evaluating one model on two sets writes two files, not one over the other."""
    import re
    kind, _, rest = spec.partition(":") if ":" in spec and not Path(spec).exists() else ("", "", spec)
    parts = [q for q in re.split(r"[/\\:]+", rest or kind) if q not in ("", ".", "..")][-2:]
    if rest and len(parts) < 2 and kind:
        parts = [kind, *parts]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))[:80] or "data"


def cmd_init(args):
    from .starter import choose_recipe, inspect_data_root, write_starter
    data, recipe, resize = None, args.recipe, False
    if args.unlabeled and not args.data:
        raise UserError("--unlabeled needs --data ROOT (the labeled train/ and test/ folders)")
    if args.data:
        data = inspect_data_root(args.data, args.unlabeled)
        print(f"{args.data}: {data.describe()}")
        if recipe is None:
            recipe, why, resize = choose_recipe(data)
            print(f"starting from {why}; --recipe NAME to choose another")
    out, notes = write_starter(args.dir, args.force, resolve_config_path(recipe) if recipe else None, data, resize)
    for note in notes:
        print(note)
    todo = (f"check it (`noisystudent config {out}` shows every value)" if data else
            f"edit its data paths (relative to {out.parent})")
    print(f"written: {out}\n{todo}, then: noisystudent run {out}")


def cmd_config(args):
    from .starter import resolved_config_text
    text, problem = resolved_config_text(_load(args), check_data=not args.no_data)
    print(text, end="")
    if problem:
        raise UserError(problem)


def cmd_predict(args):
    from .prediction import predict, write_predictions
    from .distributed import resolve_device
    device = str(resolve_device(args.device or "auto"))
    rows = predict(args.checkpoint, args.data, top_k=args.top_k, batch_size=args.batch_size, device=device,
                   workers=args.workers, flip_tta=args.flip_tta, shift_tta=args.shift_tta)
    out = write_predictions(rows, args.out)
    print(f"{len(rows)} images -> {out}")


def cmd_export(args):
    from .export import FORMATS, export_model
    fmts = FORMATS if args.format == "all" else [args.format]
    for fmt in fmts:
        r = export_model(args.checkpoint, fmt, args.out if len(fmts) == 1 else None)
        print(f"{fmt}: {r['path']} (reloaded; max |logit difference| {r['max_abs_diff']:.2g}) + {r['meta_path']}")


def cmd_report(args):
    from .report import write_report
    files = write_report(Path(args.run_dir))
    print("\n".join(str(f) for f in files))


def _version() -> str:
    from .artifacts import software_versions
    return software_versions()["noisystudent"]


def _add_common(sp, config=True):
    """The arguments every pipeline command shares (config + overrides, run dir, device)."""
    if config:
        sp.add_argument("config", help="YAML config path or bundled name (digits-demo, fashion-mnist-1k, cifar10-4k, ...)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set student.epochs=5 (repeatable)")
        sp.add_argument("--force", action="store_true",
                        help="reuse a run directory that holds a different experiment")
    sp.add_argument("--run-dir", default=None, help="run directory (default runs/<name>)")
    sp.add_argument("--device", default=None, help="auto|cpu|cuda|cuda:N (default: config's)")


def _add_pipeline_commands(sub) -> None:
    """run, demo, train and the one-stage commands (label, select, student, finetune)."""
    sp = sub.add_parser("run", help="the whole loop: teacher -> (label -> select -> student) x rounds")
    _add_common(sp)
    sp.add_argument("--no-report", action="store_true", help="skip report.md/html and plots")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("demo", help="the full loop on scikit-learn's bundled digits (< 3 min on 2 CPU cores)")
    _add_common(sp, config=False)
    sp.set_defaults(fn=cmd_demo, set=[])

    teacher_dir = _REL.rel(_REL.model(0, "teacher"))
    sp = sub.add_parser("train", help=f"train and evaluate the supervised teacher ({teacher_dir})")
    _add_common(sp)
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from checkpoint.pt (the default; "
                   "with this flag it is an error if there is nothing to resume)")
    g.add_argument("--restart", action="store_true", help=f"discard {teacher_dir} and train from scratch")
    sp.set_defaults(fn=cmd_train)

    for name, text in (("label", "teacher of round K predicts the unlabeled pool"),
                       ("select", "filter + balance round K's pseudo-labels"),
                       ("student", "train round K's noised student"),
                       ("finetune", "fine-tune round K's model at the test resolution")):
        sp = sub.add_parser(name, help=text)
        _add_common(sp)
        sp.add_argument("--round", type=int, default=1, help="round K (default 1)")
        sp.set_defaults(fn=_stage_cmd(name))


def _count(text: str, least: int):
    """A command-line count >= `least`, or 'auto' (anything else: argparse's one-line usage error)."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < least:
        raise argparse.ArgumentTypeError(f"must be a count >= {least} or 'auto', not {text!r}")
    return int(text)


def _batch_size(text: str):
    return _count(text, 1)


def _workers(text: str):
    return _count(text, 0)


def _add_tta_args(sp) -> None:
    """--flip-tta / --no-flip-tta / --shift-tta N: test-time views; by default those the run that wrote
    the model evaluated with (`stages.modelfile.run_views`)."""
    sp.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                    help="average the probabilities of each image and its mirror (default: as the run that wrote "
                         "the model evaluated, its evaluate.flip_tta)")
    sp.add_argument("--shift-tta", type=int, default=None, metavar="N",
                    help="also average over each view moved +-N pixels diagonally (0 = off; default: the run's "
                         "evaluate.shift_tta)")


def _add_model_commands(sub) -> None:
    """Commands on one model file: evaluate, predict, export."""
    sp = sub.add_parser("evaluate", help="evaluate a model file on a labeled set")
    sp.add_argument("--checkpoint", required=False, help="a model.pt written by noisystudent")
    sp.add_argument("--data", required=False, help="a folder of class subfolders, or KIND:PATH[:SPLIT], e.g. "
                    "imagefolder:cifar10/test, digits:test")
    sp.add_argument("--robustness", action="store_true", help="also corruptions, perturbations and FGSM")
    sp.add_argument("--max-images", type=int, default=1000, help="robustness subset size")
    sp.add_argument("--image-size", type=int, default=None,
                    help="evaluate at this resolution instead of the model's training one")
    sp.add_argument("--batch-size", type=_batch_size, default="auto",
                    help="images per forward pass: N, or auto (default: 1,024 for images <= 64 px on a GPU, else 256)")
    _add_tta_args(sp)
    sp.add_argument("--device", default=None)
    sp.add_argument("--out", default=None, help="where to write the report (default: eval-<data>.json beside the checkpoint, "
                    "e.g. eval-cifar10-test.json)")
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("predict", help="top-k classes and probabilities for every image of a folder or source")
    sp.add_argument("--checkpoint", required=True, help="a model.pt written by noisystudent")
    sp.add_argument("--data", required=True, help="a folder of images (any tree) or KIND:PATH[:SPLIT]")
    sp.add_argument("--out", required=True, help="preds.csv or preds.parquet")
    sp.add_argument("--top-k", type=int, default=5)
    sp.add_argument("--batch-size", type=_batch_size, default="auto",
                    help="images per forward pass: N, or auto (default: 1,024 for images <= 64 px on a GPU, else 256)")
    sp.add_argument("--workers", type=_workers, default="auto",
                    help="decode processes: N, or auto (default: none on a CPU, the cores less one, at most 8, on a GPU)")
    _add_tta_args(sp)
    sp.add_argument("--device", default=None)
    sp.set_defaults(fn=cmd_predict)

    sp = sub.add_parser("export", help="torchscript | onnx | safetensors, each reloaded and checked")
    sp.add_argument("--checkpoint", required=True, help="a model.pt written by noisystudent")
    sp.add_argument("--format", required=True, choices=["torchscript", "onnx", "safetensors", "all"])
    sp.add_argument("--out", default=None, help="output file (default: beside the checkpoint)")
    sp.set_defaults(fn=cmd_export)


def _add_setup_commands(sub) -> None:
    """Commands around a run: init (starter config), config (print it resolved), report."""
    sp = sub.add_parser("init", help="write DIR/config.yaml: a commented starter config for your own images")
    sp.add_argument("dir", help="directory for config.yaml (created if missing)")
    sp.add_argument("--force", action="store_true", help="overwrite an existing config.yaml")
    sp.add_argument("--recipe", metavar="NAME", help="start from a bundled recipe (fashion-mnist-1k, "
                    "cifar10-4k-fast, ...: its steps, noise and schedule) with your folders as its data")
    sp.add_argument("--data", metavar="ROOT", help="your images: ROOT/train/<class>/*, ROOT/test/<class>/*, "
                    "ROOT/unlabeled/** (optionally ROOT/val/<class>/*; without test/, val/ is the test set and "
                    "validation is drawn from train/); written into the config, and for "
                    "images of <= 40 px (colour: <= 48 px, resized to 32) a bundled small-image recipe is "
                    "picked unless --recipe says otherwise")
    sp.add_argument("--unlabeled", metavar="DIR", help="with --data: the unlabeled pool (any tree of images) "
                    "when it is not ROOT/unlabeled/")
    sp.set_defaults(fn=cmd_init)

    sp = sub.add_parser("config", help="print the resolved config (defaults filled in, paths resolved)")
    sp.add_argument("config", help="YAML config path or bundled name")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    sp.add_argument("--no-data", action="store_true", help="do not read the labeled images "
                    "(in_chans/image_size stay as written)")
    sp.set_defaults(fn=cmd_config)

    sp = sub.add_parser("report", help="write report.md/html and plots for a run directory")
    sp.add_argument("run_dir")
    sp.set_defaults(fn=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="noisystudent", description="Noisy Student Training: teacher -> "
                                "pseudo-labels -> noised, equal-or-larger student, in rounds.")
    p.add_argument("--version", action="version", version=f"noisystudent {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pipeline_commands(sub)
    _add_model_commands(sub)
    _add_setup_commands(sub)
    return p


def _one_line(e: BaseException) -> str:
    """A UserError's message is one line — except when a DataLoader worker raised it: the main
    process re-raises it with the worker's traceback as the message, whose last line is the original
    `module.Class: message`."""
    msg = str(e).strip()
    if "\n" not in msg:
        return msg
    last = [ln for ln in msg.splitlines() if ln.strip()][-1].strip()
    head, sep, rest = last.partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1] == type(e).__name__ else last


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler's preemption, systemd), raised where the main thread is: unwinds like
    Ctrl-C, so atomic writes clean up and the user reads one line instead of nothing."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _say(msg: str) -> None:
    """The command's last line: on stderr, and in the run's run.log when one is open."""
    from .runlog import note
    note(msg)
    print(msg, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="noisystudent: %(message)s", stream=sys.stderr)
    from .distributed import maybe_init_distributed, shutdown_distributed
    import signal
    import threading
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        maybe_init_distributed()
        args.fn(args)
        shutdown_distributed()
        return 0
    except UserError as e:
        _say(f"error: {_one_line(e)}")
        return 2
    except KeyboardInterrupt as e:
        # Ctrl-C and SIGTERM (a scheduler's kill, `kill PID`) alike: finished work is on disk
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        msg = f"{what}: finished work is kept; rerun the same command to resume"
        _say(msg)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:
        # stdout piped into a reader that has stopped (`noisystudent init ... | head`): what was left to
        # print has nowhere to go, which is no bug; files already written are complete (each atomic).
        # stdout goes to devnull so the interpreter's own flush at exit does not fail a second time.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass                                # not a real file (a notebook, tests)
        return 141                              # 128 + SIGPIPE, as a shell tool killed by it
    except Exception as e:  # noqa: BLE001 - last line of defence, keep it to one line for users
        if os.environ.get("NOISYSTUDENT_DEBUG"):
            raise
        if type(e).__name__ == "OutOfMemoryError":     # torch.OutOfMemoryError: not a bug, a batch too large
            first = (str(e).strip().splitlines() or [""])[0]
            msg = (f"error: out of memory on the device ({first[:120]}); finished stages are kept: lower "
                   "the batch size of the stage that ran (teacher.batch_size, student.batch_size, "
                   "label.batch_size, evaluate.batch_size) and rerun")
            _say(msg)
            return 2
        from .data.memory import loader_failure_hint
        if isinstance(e, RuntimeError) and (hint := loader_failure_hint(str(e))):
            msg = f"error: {hint}; finished stages are kept: rerun the same command to resume"
            _say(msg)
            return 2
        print(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(a bug: rerun with NOISYSTUDENT_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return 1
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        shutdown_distributed(barrier=False)     # no-op when not distributed or already left
        from .artifacts import release_run_dirs
        from .runlog import detach_run_log
        detach_run_log()                        # one command, one run.log and one lock: main may be
        release_run_dirs()                      # called again in this process (a notebook, tests)


if __name__ == "__main__":
    sys.exit(main())
