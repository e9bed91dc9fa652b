"""Run-directory artifacts: atomic writes, hashing, stage records, safe checkpoints.

Why so careful: runs last hours and get killed. Every file is written under a temporary name in the
same directory, fsync'ed, then `os.replace`d into place, so a reader sees either the old complete
file or the new complete file, never half of one. A stage is "done" only when its `stage.json` says
so, and that file is written last.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .layout import WRITTEN_SUBDIRS, RunLayout

__all__ = [
    "atomic_write", "deferred_interrupts", "write_json", "read_json", "file_hash", "save_checkpoint",
    "load_checkpoint", "StageRecord", "read_stage", "write_stage", "remove_stale_temps", "software_versions",
    "version_drift", "lock_run_dir", "release_run_dirs", "is_run_dir", "is_our_temp", "RUN_RESULTS",
    "remove_run_results",
]


def _read_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb"):
    """Yield a file object writing to a temp file next to `path`; rename into place on success.

    On any error (including disk full) the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give artifacts the usual permissions so reports can be shared.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {path}; nothing was written there — free space "
                            "and rerun the same command to continue") from None
        raise


# `atomic_write`'s temp names: mkstemp(prefix=".NAME.", suffix=".tmp") adds 8 of these characters.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def is_our_temp(name: str) -> bool:
    return _TEMP_NAME.fullmatch(name) is not None


def remove_stale_temps(root: str | Path) -> int:
    """Delete the temp files that killed processes left under `root` (`.NAME.XXXXXXXX.tmp` from
    `atomic_write`); returns how many. Only our own temp names, only in the places a run writes
    (the run directory itself, `roundK/`, `plots/`, `cache/`): a user's `notes/draft.tmp` is not
    ours. SIGKILL and power loss skip every cleanup handler, so the next run sweeps them. Call it
    only while no other process is writing under `root` (after `lock_run_dir`, before any stage)."""
    n = 0
    root = Path(root)
    if not root.is_dir():
        return 0
    candidates = [p for p in root.iterdir() if p.is_file()]
    for d in root.iterdir():
        if d.is_dir() and not d.is_symlink() and WRITTEN_SUBDIRS.fullmatch(d.name):
            candidates += d.rglob(".*.tmp")
    for p in candidates:
        if is_our_temp(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            n += 1
    return n


def is_run_dir(root: str | Path) -> bool:
    """A folder this tool made: it has the `config.yaml` every command writes first, or a stage record."""
    root = Path(root)
    lay = RunLayout(root)
    return lay.config.is_file() or any((d / "stage.json").is_file()
                                       for k in lay.rounds() for d in lay.round_dir(k).iterdir())


_HELD_LOCKS: dict[str, Any] = {}      # run dir -> open lock file, held until released or the process exits


def lock_run_dir(root: str | Path) -> None:
    """Take an exclusive advisory lock on `root/.lock` until `release_run_dirs()` (the CLI calls it
    after each command, `pipeline.run` when it returns) or the process ends, so two commands cannot
    write one run directory at once (the second would also sweep the first's temp files).
    Re-entrant within a process; the OS drops the lock when the process dies, even by SIGKILL, so a
    killed run never leaves a stale lock. A no-op where `fcntl` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:         # pragma: no cover - Windows
        return
    root = Path(root)
    key = str(root.resolve())
    if key in _HELD_LOCKS:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        f = open(RunLayout(root).lock, "a+")
    except OSError as e:
        raise _cannot_write(RunLayout(root).lock, e) from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{root} is in use by another noisystudent command ({holder}); wait for it to finish "
                        "or use another --run-dir") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
    except OSError as e:
        # close() flushes the buffered line again and fails the same way (a real full disk does;
        # found by filling a tmpfs): it must not replace the one-line message
        with contextlib.suppress(OSError):
            f.close()
        raise _cannot_write(RunLayout(root).lock, e) from None
    _HELD_LOCKS[key] = f


def release_run_dirs() -> None:
    """Drop every run-directory lock this process holds (closing the file releases the flock), so
    a finished command in a long-lived process (a notebook, a test) does not keep others out."""
    while _HELD_LOCKS:
        _, f = _HELD_LOCKS.popitem()
        with contextlib.suppress(OSError):
            f.close()


def _cannot_write(path: Path, e: OSError) -> UserError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"disk full while writing {path}; nothing was written — free space and rerun the "
                         "same command")
    return UserError(f"cannot write {path} ({e.strerror or e}); check the folder's permissions and free "
                     "space, or use another --run-dir")


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# checkpoints: plain dicts of tensors and JSON-able values, so `weights_only=True` can load them

class _WriteErrorRecorder:
    """A write-only view of a file that remembers the first OSError (or interrupt) its `write` raised:
    torch.save turns such an error (e.g. disk full) into an opaque RuntimeError ("unexpected pos ...")."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, b):
        try:
            return self.f.write(b)
        except (OSError, KeyboardInterrupt) as e:    # Ctrl-C/SIGTERM mid-write: still an interrupt
            self.error = self.error or e
            raise

    def flush(self):
        self.f.flush()


@contextlib.contextmanager
def deferred_interrupts():
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them to the handlers they would
    have reached. For torch.save: an interrupt raised inside its Python write callbacks leaves its C++
    zip writer half-finished, which either masks the interrupt with "unexpected pos" (the user reads a
    RuntimeError, exit 1) or finishes the file from its destructor after the file was closed, which
    aborts the process (C++ terminate, exit 134; seen on a SIGTERM during the demo). The kill waits for
    one write (0.2-0.3 s for resnet18's 85 MiB checkpoint on 2 CPU cores) and keeps what it wrote.
    Signal handlers belong to the main thread: elsewhere the block runs unguarded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)      # the restored handler runs now (Terminated, KeyboardInterrupt)


def save_checkpoint(path: str | Path, state: dict) -> None:
    with deferred_interrupts(), atomic_write(path, "wb") as f:
        w = _WriteErrorRecorder(f)
        try:
            torch.save(state, w)
        except RuntimeError:
            if w.error is not None:     # the real cause, so atomic_write can say "disk full"
                raise w.error from None
            raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load with `weights_only=True`: a checkpoint can never run code on our machine."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure here is the file's fault
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UserError(f"{path}: refusing to load — it needs arbitrary unpickling ({first[:120]}); "
                            "only checkpoints of plain tensors/values are accepted") from None
        raise UserError(f"{path}: not a readable checkpoint ({first[:160]})") from None


# ------------------------------------------------------------------------------------------------
# stage records

class StageRecord(dict):
    """Contents of a stage's `stage.json`: status, fingerprint, resolved config, input/output hashes."""

    @property
    def done(self) -> bool:
        return self.get("status") == "done"


def read_stage(stage_dir: str | Path) -> StageRecord | None:
    """The stage's record, or None when there is none or it is damaged (not JSON, or not the shape
    `write_stage` writes): a stage without a usable record counts as not done and is redone."""
    p = Path(stage_dir) / "stage.json"
    if not p.is_file():
        return None
    try:
        rec = read_json(p)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if not _record_ok(rec):
        return None
    return StageRecord(rec)


def _record_ok(rec) -> bool:
    if not isinstance(rec, dict) or not isinstance(rec.get("status"), str) \
            or not isinstance(rec.get("fingerprint"), str):
        return False
    outputs, inputs = rec.get("outputs", {}), rec.get("inputs", {})
    if not isinstance(outputs, dict) or not all(isinstance(k, str) and isinstance(v, str) and k
                                                for k, v in outputs.items()):
        return False
    if not isinstance(inputs, dict) or not all(isinstance(v, dict) for v in inputs.values()):
        return False
    dirs = rec.get("input_dirs", {})
    return isinstance(dirs, dict) and all(isinstance(v, str) for v in dirs.values()) \
        and isinstance(rec.get("info", {}), dict)


# The software that made a stage: recorded with it (provenance), and compared when a finished or
# half-done stage is reused. Not part of the fingerprint: an upgrade must not silently throw away hours
# of training; the user is told, and `--restart` redoes the stage when the change matters.
_VERSIONED = ("noisystudent", "torch", "timm", "torchvision")


@functools.lru_cache(maxsize=1)
def software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    out["torch"] = str(torch.__version__)      # with its build (+cu130, +cpu): the metadata drops it
    out["python"] = platform.python_version()
    return out


def version_drift(rec: dict | None) -> str:
    """'noisystudent 0.1.0 -> 0.2.0, torch ...' for the packages whose version differs from the one
    that wrote `rec` (a stage record), or '' (also for records older than this field)."""
    then, now = (rec or {}).get("versions") or {}, software_versions()
    return ", ".join(f"{k} {then[k]} -> {now[k]}" for k in _VERSIONED
                     if isinstance(then.get(k), str) and then[k] != now[k])


def write_stage(stage_dir: str | Path, *, status: str, fingerprint: str, config: dict,
                inputs: dict, outputs: dict | None = None, info: dict | None = None,
                input_dirs: dict | None = None) -> None:
    stage_dir = Path(stage_dir)
    rec = {
        "status": status,
        "fingerprint": fingerprint,
        "config": config,
        "inputs": inputs,
        "input_dirs": input_dirs or {},     # name -> upstream stage folder, relative to the run dir
        "outputs": {k: file_hash(stage_dir / k) for k in (outputs or {})} if outputs else {},
        "info": info or {},
        "versions": software_versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(stage_dir / "stage.json", rec)


# What a finished run adds at the top of its folder (RunLayout.results): the summary and the report.
RUN_RESULTS = tuple(p.name for p in RunLayout(Path(".")).results())


def remove_run_results(run_dir: str | Path) -> list[str]:
    """Remove summary.json and the report before a stage is (re)done: until the run finishes again
    they would show the old results as current. Returns what was removed."""
    gone = []
    for p in RunLayout(run_dir).results():
        name = p.name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            gone.append(name)
        elif p.exists() or p.is_symlink():
            p.unlink()
            gone.append(name)
    return gone


def reset_dir(path: str | Path) -> None:
    """Remove a stale stage folder (its fingerprint no longer matches the config)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
