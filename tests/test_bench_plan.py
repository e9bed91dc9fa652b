"""benchmarks/accuracy.py plans its ablations from the config: no-ops and bad names never run."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "benchmarks" / "accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _names(plan):
    return [name for name, _, _ in plan]


def test_ablation_equal_to_the_baseline_is_skipped(accuracy):
    cfg = ROOT / "configs" / "fashion-mnist-1k.yaml"
    plan3 = accuracy.plan_ablations(cfg, ["student.ratio=3"], ["ratio_1", "ratio_3", "no_noise"])
    plan1 = accuracy.plan_ablations(cfg, ["student.ratio=1"], ["ratio_1", "ratio_3", "no_noise"])
    assert _names(plan3) == ["ratio_1", "no_noise"]
    assert _names(plan1) == ["ratio_3", "no_noise"]
    # every planned ablation is one round on top of the caller's overrides; variants run in the baseline
    name, _, over = plan1[0]
    assert over[:3] == ["rounds=1", "ablation_no_noise=false", "variants=[]"] and over[-1] == "student.ratio=3"
    assert plan1[1][2] == ["@variant:no_noise"]


def test_ood_rows_only_for_digits_and_unknown_names_fail(accuracy):
    cfg = ROOT / "configs" / "fashion-mnist-1k.yaml"
    assert _names(accuracy.plan_ablations(cfg, [], ["ood_soft", "ood_hard"])) == []
    with pytest.raises(SystemExit, match="unknown ablation 'nonoise'.*no_noise"):
        accuracy.plan_ablations(cfg, [], ["nonoise"])


def test_ood_rows_planned_for_digits(accuracy):
    plan = accuracy.plan_ablations(ROOT / "configs" / "digits-demo.yaml", [], ["ood_soft", "ood_hard"])
    assert _names(plan) == ["ood_soft", "ood_hard"]
    assert any("kind: idx" in o for o in plan[0][2]) and plan[0][2][-1] == "student.soft=true"


def test_loop_compute_counts_training_and_labeling(accuracy, tmp_path):
    """PFLOP = forward FLOPs x images x 3 for training, x views for labeling; variants not counted."""
    import json
    from noisystudent.config import load_config
    cfg = load_config(ROOT / "configs" / "cifar10-4k-fast.yaml", ["rounds=1"])
    for stage, info in {"round0/teacher": {"images_seen": 1000, "stage_s": 60},
                        "round1/labels": {"rows": 500, "stage_s": 6},
                        "round1/student": {"images_seen": 2000, "stage_s": 120},
                        "round1/student_supervised": {"images_seen": 2000, "stage_s": 120}}.items():
        (tmp_path / stage).mkdir(parents=True)
        (tmp_path / stage / "stage.json").write_text(json.dumps({"info": info}))
    f = accuracy.forward_flops("ns_air_s", 3, 32)
    assert 0.2e9 < f < 0.3e9
    c = accuracy.loop_compute(tmp_path, cfg)
    assert c["train_pflop"] == pytest.approx(3 * f * 3000 / 1e15)
    assert c["label_pflop"] == pytest.approx(2 * f * 500 / 1e15)        # flip TTA: two views
    assert c["loop_s"] == pytest.approx(186)
