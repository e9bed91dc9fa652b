"""Reading a run directory for the report: every optional file may be missing or unreadable, and
the report shows what is there. Also the small number formatters the tables and plots share."""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from ..artifacts import read_json
from ..errors import UserError
from ..layout import RunLayout, role_label as layout_role_label

__all__ = ["RunData", "load_optional", "read_jsonl", "is_num", "pct", "fmt_params", "fmt_secs", "role_label",
           "training_stages"]

log = logging.getLogger("noisystudent")

DPI = 110
MAX_BAR_CLASSES = 50      # beyond this, per-class bar charts show the extremes / lines instead
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False}


def load_optional(path: Path):
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        log.warning("report: %s is unreadable; leaving it out", path)
        return None


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass                            # one bad line should not hide the rest of the curve
    return rows


def is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def pct(x, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%" if is_num(x) else "—"


def fmt_params(n) -> str:
    return "—" if not is_num(n) else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def fmt_secs(s) -> str:
    if not is_num(s):
        return "—"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


class RunData:
    def __init__(self, run_dir: Path):
        self.dir = run_dir
        try:
            summary = read_json(RunLayout(run_dir).summary)
        except (OSError, json.JSONDecodeError):
            summary = None
        if not isinstance(summary, dict):
            raise UserError(f"{run_dir} has no readable summary.json; run `noisystudent run CONFIG "
                            f"--run-dir {run_dir}` first")
        self.summary = summary
        self.name = summary.get("name") or run_dir.name
        self.classes = [str(c) for c in summary.get("classes") or []]
        self.models = [m for m in summary.get("models") or [] if isinstance(m, dict) and {"which", "round"} <= m.keys()]
        self.layout = RunLayout(run_dir)
        self.rounds = self.layout.rounds()

    def json(self, folder: Path, name: str):
        """A JSON file of a stage folder (from `self.layout`), or None when absent or unreadable."""
        return load_optional(folder / name)

    @functools.cached_property
    def config(self):
        """The run's resolved config (config.yaml) as a `Config`; raises what reading or checking it
        raises (nothing is cached then)."""
        import yaml
        from ..config import config_from_dict
        return config_from_dict(yaml.safe_load(self.layout.config.read_text()))

    def final_student(self) -> dict | None:
        students = [m for m in self.models if m["which"] == "student"]
        return max(students, key=lambda m: m["round"]) if students else None

    @functools.cached_property
    def robust(self) -> list[tuple[str, dict, dict]]:
        """(label, summary row, robustness.json) for every model with a robustness result. The full
        file, not summary.json's digest of it: the per-corruption curves are only there."""
        robs = [(m, load_optional(self.layout.eval(m["round"], m["which"]) / "robustness.json")) for m in self.models]
        return [(f"r{m['round']} {role_label(m)}", m, r) for m, r in robs if isinstance(r, dict)]


def role_label(m: dict) -> str:
    return layout_role_label(m["which"])


def training_stages(run: RunData) -> list[tuple[int, str]]:
    """(round, stage) of every training stage folder the run has, in pipeline order."""
    return run.layout.training_stages()
