"""Trigger every case of issue 17 (docs/reliability.md, "Second pass") and print what the user sees.

Not a test (tests/test_reliability2.py and tests/test_fingerprint.py assert the messages): this is
how the messages quoted in docs/reliability.md were checked — each case is made to happen for real on
a tiny 3-class PNG run (a real full filesystem for the lock, a real FIFO, a real SIGTERM) and its
exit code, `error:` line and the log lines that matter are printed. In-process through `cli.main`
(one import of torch for all cases) except SIGTERM, which needs a process to signal. The disk-full
case mounts a 64 KB tmpfs, so it needs root (skipped otherwise).

    nice -n 19 python benchmarks/reliability_messages.py > messages.txt
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from noisystudent.layout import RunLayout

sys.path.insert(0, str(Path(__file__).parent))
from big_image_rss import config, tiny_data  # noqa: E402

os.environ["NOISYSTUDENT_PROGRESS"] = "0"


class _Stderr(io.TextIOBase):
    """sys.stderr for the whole script: logging binds the stream once, so the target is switched."""
    target = sys.__stderr__

    def write(self, s):
        return self.target.write(s)


sys.stderr = _Stderr()
KEEP = re.compile(r"error|internal|terminated|removed|damaged|redoing|skipped|undecodable|changed|temp file")


def cli(*argv) -> tuple[int, str]:
    from noisystudent.cli import main
    buf = io.StringIO()
    sys.stderr.target = buf
    try:
        rc = main([str(a) for a in argv])
    finally:
        sys.stderr.target = sys.__stderr__
    return rc, buf.getvalue()


def show(case: str, rc: int, err: str, pattern: re.Pattern = KEEP) -> None:
    print(f"\n## {case}\nexit {rc}")
    for ln in err.splitlines():
        if pattern.search(ln):
            print("  " + ln)


def run(cfg, run_dir, *sets, report=False):
    args = ["run", cfg, "--run-dir", run_dir] + ([] if report else ["--no-report"])
    for s in sets:
        args += ["--set", s]
    return cli(*args)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ns-rel-"))
    try:
        cases(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def cases(tmp: Path) -> None:
    data = tiny_data(tmp / "data")
    cfg = config(tmp / "c.yaml", data)
    ref = tmp / "ref"
    rc, err = run(cfg, ref, report=True)
    assert rc == 0, err

    def copy(name):
        shutil.copytree(ref, tmp / name)
        return tmp / name

    # 1: a redo that fails after a config change
    r1 = copy("r1")
    show("1. --set student.lr=1e30 on a finished run", *run(cfg, r1, "student.lr=1e30"))
    show("1. then `noisystudent report`", *cli("report", r1))

    # 2: data changed (own data and run: the rest reuse `data` unchanged)
    d2 = tiny_data(tmp / "d2")
    c2 = config(tmp / "c2.yaml", d2)
    assert run(c2, tmp / "r2")[0] == 0
    (d2 / "pool" / "000.png").unlink()
    for i in range(5):
        shutil.copy(d2 / "train" / "cat" / f"{i}.png", d2 / "pool" / f"new{i}.png")
    show("2. pool: one image removed, five added", *run(c2, tmp / "r2"))
    show("2. then a student setting", *run(c2, tmp / "r2", "student.lr=0.04"))
    Image.new("RGB", (8, 8), (250, 0, 0)).save(d2 / "train" / "cat" / "0.png")
    show("2. a labeled image replaced in place", *run(c2, tmp / "r2", "student.lr=0.04"))
    f = d2 / "train" / "dog" / "1.png"
    Image.new("RGB", (8, 8), (0, 250, 0)).save(f, compress_level=0)    # uncompressed: size = dimensions
    c2c = config(tmp / "c2c.yaml", d2, fingerprint="content")
    assert run(c2c, tmp / "r2c")[0] == 0
    st = f.stat()
    Image.new("RGB", (8, 8), (0, 251, 0)).save(f, compress_level=0)    # new pixels, same size...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))                   # ...and the old mtime put back
    assert f.stat().st_size == st.st_size
    show("2. data.fingerprint=content, an image rewritten with its old mtime", *run(c2c, tmp / "r2c"))
    show("2. data.fingerprint=sha1", *run(c2, tmp / "r2x", "data.fingerprint=sha1"))

    # 3: --run-dir is a folder of the user's
    mine = tmp / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "draft.tmp").write_text("my work")
    show("3. --run-dir: a non-empty folder of yours", *run(cfg, mine))
    rc, err = cli("run", cfg, "--run-dir", mine, "--no-report", "--force")
    show("3. ... with --force", rc, err)
    print(f"  notes/draft.tmp still there: {(mine / 'notes' / 'draft.tmp').read_text() == 'my work'}")

    # 4: YAML aliases
    bomb = tmp / "bomb.yaml"
    bomb.write_text("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
    print(f"\n(bomb.yaml: {bomb.stat().st_size} bytes)")
    show("4. billion laughs", *run(bomb, tmp / "r4"))
    (tmp / "rec.yaml").write_text("a: &x [*x]\n")
    show("4. recursive alias", *run(tmp / "rec.yaml", tmp / "r4"))
    show("4. alias in --set", *run(cfg, tmp / "r4", "models=[&a x, *a]"))

    # 5: $ in class names (and 9: HTML in the name), then one plot failing
    d5 = tiny_data(tmp / "d5", classes=("$x$", "a$b", "c_d"))
    c5 = config(tmp / "c5.yaml", d5, top={"name": "<b>bold</b> & co"})
    rc, err = run(c5, tmp / "r5", report=True)
    show("5. class names $x$, a$b (and name '<b>bold</b> & co')", rc, err, re.compile(r"error|skipped|report"))
    # fenced code blocks (the config) are shown verbatim by Markdown renderers, never rendered
    r5 = RunLayout(tmp / "r5")
    md = re.sub(r"```.*?```", "", r5.report_md.read_text(), flags=re.S)
    print(f"  report.md: {'&lt;b&gt;bold&lt;/b&gt; &amp; co' in md and '<b>' not in md} (name escaped), "
          f"plots: {sorted(p.name for p in r5.plots.glob('*.png'))}")
    import noisystudent.report as report
    from matplotlib.figure import Figure

    def broken(run):                        # fails when drawn (inside savefig), as a mathtext error did
        fig = Figure()
        fig.subplots().set_title("$\\notacommand$")
        fig.get_axes()[0].title.set_parse_math(True)
        return fig
    real = report.PLOTS
    report.PLOTS = [("broken", "a plot that cannot be drawn", broken), *real]
    try:
        show("5. one plot failing when drawn", *cli("report", tmp / "r5"), re.compile(r"error|skipped"))
    finally:
        report.PLOTS = real

    # 6: out-of-range values
    for s in ("label.shard_size=0", "label.batch_size=0", "evaluate.batch_size=0", "data.workers=-1",
              "teacher.momentum=-1", "teacher.label_smoothing=5", "teacher.weight_decay=.nan"):
        show(f"6. --set {s}", *run(cfg, tmp / "r6", s))

    # 7: crafted model files
    state = torch.load(RunLayout(ref).model(0, "teacher") / "model.pt", weights_only=True)
    for what, meta in (("meta.num_classes=1e8", dict(state["meta"], num_classes=100_000_000)),
                       ("meta={}", {}),
                       ("1,000,000 classes, 3 in the weights", dict(state["meta"], num_classes=1_000_000,
                                                                    classes=[str(i) for i in range(1_000_000)]))):
        p = tmp / "crafted.pt"
        torch.save(dict(state, meta=meta), p)
        show(f"7. model.pt with {what} ({p.stat().st_size // 1024} KB)",
             *cli("evaluate", "--checkpoint", p, "--data", f"imagefolder:{data / 'test'}"))

    # 8: damaged records and unfinished artifacts
    r8 = copy("r8")
    sel_record = RunLayout(r8).selection(1) / "stage.json"
    sel_record.write_text("[1, 2]")
    show(f"8. {RunLayout(r8).rel(sel_record)} holds [1,2]", *run(cfg, r8))
    for text, what in (("- a\n", "- a"), ("data: null\n", "data: null"), ("", "empty"), ("a: [1,\n", "not YAML")):
        r = copy(f"r8c{len(what)}{what[0]}".replace(" ", "").replace(":", ""))
        RunLayout(r).config.write_text(text)
        show(f"8. run-dir config.yaml: {what}", *run(cfg, r))
    r8s = copy("r8s")
    labels = RunLayout(r8s).labels(1)
    rec = json.loads((labels / "stage.json").read_text())
    (labels / "stage.json").write_text(json.dumps(dict(rec, status="running", outputs={})))
    shard = labels / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    show("8. truncated shard in an unfinished label stage", *run(cfg, r8s))
    mnt = tmp / "full"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                                    str(mnt)]).returncode == 0
    if mounted:
        try:
            fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"x" * 4096):
                    pass
            except OSError:             # ENOSPC: the filesystem is full
                pass
            os.close(fd)
            show("8. a full disk (64 KB tmpfs, filled) when .lock is written", *run(cfg, mnt / "run"))
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            show("8. a read-only filesystem (the tmpfs remounted ro)", *run(cfg, mnt / "run2"))
        finally:
            subprocess.run(["umount", str(mnt)])
    else:
        print("\n## 8. disk full: skipped (needs root to mount a tmpfs)")

    # 9: a huge image, a FIFO, one class, SIGTERM
    big = tmp / "big.png"
    Image.new("RGB", (10000, 10000)).save(big)
    print(f"\n(big.png: {big.stat().st_size // 1024} KB)")
    d9 = tiny_data(tmp / "d9")
    os.link(big, d9 / "pool" / "big.png")
    show("9. 10000x10000 PNG in the pool", *run(config(tmp / "c9.yaml", d9), tmp / "r9"))
    os.link(big, d9 / "train" / "cat" / "big.png")
    show("9. ... and in the labeled set", *run(config(tmp / "c9.yaml", d9), tmp / "r9b"))
    d9f = tiny_data(tmp / "d9f")
    os.mkfifo(d9f / "pool" / "pipe.png")
    names = sorted(p.name for p in (d9f / "pool").iterdir())
    (d9f / "pool.csv").write_text("path\n" + "\n".join(f"pool/{n}" for n in names) + "\n")
    (d9f / "train.csv").write_text("path,class\n" + "".join(
        f"train/{c}/{i}.png,{c}\n" for c in ("cat", "dog", "fox") for i in range(6)) + "pool/pipe.png,cat\n")
    c9f = config(tmp / "c9f.yaml", d9f, unlabeled={"kind": "manifest", "root": str(d9f / "pool.csv")})
    show("9. a manifest naming a FIFO (pool)", *run(c9f, tmp / "r9f"))
    c9g = config(tmp / "c9g.yaml", d9f, labeled={"kind": "manifest", "root": str(d9f / "train.csv")})
    show("9. a manifest naming a FIFO (labeled set)", *run(c9g, tmp / "r9g"))
    d9o = tiny_data(tmp / "d9o")
    for split in ("train", "test"):
        for c in ("dog", "fox"):
            shutil.rmtree(d9o / split / c)
    show("9. a one-class labeled set", *run(config(tmp / "c9o.yaml", d9o), tmp / "r9o"))
    long_cfg = config(tmp / "c9t.yaml", data, top={"teacher": {"epochs": 100000, "batch_size": 6}})
    r9t = RunLayout(tmp / "r9t")
    teacher_running = f"{r9t.rel(r9t.model(0, 'teacher'))}: running"
    p = subprocess.Popen([sys.executable, "-m", "noisystudent", "run", str(long_cfg), "--run-dir", str(r9t.root),
                          "--no-report"], stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = []
    for ln in p.stderr:
        lines.append(ln)
        if teacher_running in ln:
            p.send_signal(signal.SIGTERM)
            break
    lines += p.stderr.readlines()
    show("9. SIGTERM during the teacher", p.wait(), "".join(lines))


if __name__ == "__main__":
    sys.exit(main())
