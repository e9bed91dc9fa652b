"""The run directory, in one place: every path a stage, the summary, the report or a test uses.

    <run_dir>/
      config.yaml  summary.json  report.md  report.html  run.log  .lock
      round0/teacher/            model.pt, metrics.jsonl, stage.json (+ checkpoint.pt while running)
      round0/eval_teacher/       eval.json (+ robustness.json)
      round0/finetune/  round0/eval_finetune/
      round{k}/labels/           part-NNNNN.parquet (labels.py), the round-k teacher's predictions
      round{k}/selection/        selection.parquet, selection.json
      round{k}/student/          the noisy student (the next round's teacher)
      round{k}/student_<variant>/, round{k}/eval_<role>/ ...

Roles are the models a run trains; a variant's role is its stage folder (variants.variant_stage).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunLayout", "ROLES", "ROLE_LABEL", "role_label", "WRITTEN_SUBDIRS"]

# Every model role, in the order the pipeline makes them within a round.
ROLES = ("teacher", "student", "student_nonoise", "student_no_randaugment", "student_no_dropout_sd",
         "student_supervised", "student_two_step", "finetune")
ROLE_LABEL = {"teacher": "teacher", "student": "noisy student", "student_nonoise": "student (no noise)",
              "student_no_randaugment": "student (no RandAugment/Cutout)",
              "student_no_dropout_sd": "student (no dropout/SD)",
              "student_supervised": "supervised, compute-matched", "student_two_step": "student (two-step)",
              "finetune": "fine-tuned"}
_ROUND = re.compile(r"^round(\d+)$")
# The folders a run writes into besides its top level (rounds, plots, cache): nothing else is swept.
WRITTEN_SUBDIRS = re.compile(r"round\d+|plots|cache")


def role_label(role: str) -> str:
    """A role's name in tables: ROLE_LABEL's, or 'student (<name>)' for a variant a config declared."""
    if role not in ROLE_LABEL and role.startswith("student_"):
        return f"student ({role.removeprefix('student_')})"
    return ROLE_LABEL.get(role, role)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # -- files of the whole run
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def run_log(self) -> Path:
        return self.root / "run.log"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def warnings(self) -> Path:
        return self.root / "warnings.json"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def cache(self, *parts: str) -> Path:
        """Reusable derived data (corrupted test images, content digests): safe to delete."""
        return self.root.joinpath("cache", *parts)

    def results(self) -> list[Path]:
        """What a finished run publishes: removed before any stage is redone, so a failed rerun never
        leaves an old result looking current."""
        return [self.summary, self.report_md, self.report_html, self.plots]

    # -- stage folders
    def round_dir(self, k: int) -> Path:
        return self.root / f"round{k}"

    def stage(self, k: int, name: str) -> Path:
        return self.round_dir(k) / name

    def model(self, k: int, role: str) -> Path:
        """The training stage folder of round k's `role` (its model.pt)."""
        return self.stage(k, role)

    def eval(self, k: int, role: str) -> Path:
        return self.stage(k, f"eval_{role}")

    def labels(self, k: int) -> Path:
        return self.stage(k, "labels")

    def selection(self, k: int) -> Path:
        return self.stage(k, "selection")

    def teacher_of(self, k: int) -> Path:
        """Round k's teacher: the supervised model for k <= 1, else the student of round k-1."""
        return self.model(0, "teacher") if k <= 1 else self.model(k - 1, "student")

    def final_model_of(self, k: int) -> Path:
        """The model round k ends with: the teacher for k = 0, else that round's noisy student."""
        return self.model(0, "teacher") if k == 0 else self.model(k, "student")

    # -- what exists
    def rounds(self) -> list[int]:
        """Round numbers with a folder, ascending."""
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if p.is_dir() and (m := _ROUND.match(p.name)))

    def stage_dirs(self) -> list[Path]:
        """Every stage folder that has a record (stage.json), in path order."""
        return [p.parent for p in sorted(self.root.glob("round*/*/stage.json"))]

    def training_stages(self) -> list[tuple[int, str]]:
        """(round, role) of every training stage folder present, in pipeline order."""
        out = []
        for k in self.rounds():
            present = {p.name for p in self.round_dir(k).iterdir() if p.is_dir()}
            declared = sorted(n for n in present if n.startswith("student_") and n not in ROLES)   # config's own
            order = [*ROLES[:-1], *declared, ROLES[-1]]                                           # before finetune
            out += [(k, r) for r in order if r in present]
        return out

    def rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()
