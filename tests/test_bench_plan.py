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
    from noisystudent.layout import RunLayout
    cfg = load_config(ROOT / "configs" / "cifar10-4k-fast.yaml", ["rounds=1"])
    lay = RunLayout(tmp_path)
    for stage, info in {lay.model(0, "teacher"): {"images_seen": 1000, "stage_s": 60},
                        lay.labels(1): {"rows": 500, "stage_s": 6},
                        lay.model(1, "student"): {"images_seen": 2000, "stage_s": 120},
                        lay.model(1, "student_supervised"): {"images_seen": 2000, "stage_s": 120}}.items():
        stage.mkdir(parents=True)
        (stage / "stage.json").write_text(json.dumps({"info": info}))
    f = accuracy.forward_flops("ns_air_s", 3, 32)
    assert 0.2e9 < f < 0.3e9
    c = accuracy.loop_compute(tmp_path, cfg)
    assert c["train_pflop"] == pytest.approx(3 * f * 3000 / 1e15)
    assert c["label_pflop"] == pytest.approx(2 * f * 500 / 1e15)        # flip TTA: two views
    assert c["loop_s"] == pytest.approx(186)


def test_jobs_split_seeds_into_one_thread_children(accuracy, tmp_path):
    argv = ["fashion-mnist-1k", "--seeds", "3", "--jobs=3", "--set", "models=[ns_cnn_s, ns_cnn_m]",
            "--out", "docs/benchmarks", "--name", "fm"]
    plan = accuracy.seed_jobs(argv, [0, 1, 2], 3, tmp_path, cores=2)
    assert [j["seed"] for j in plan] == [0, 1, 2]
    cmd = plan[2]["cmd"]
    # the config, --set (value kept whole) and --name pass through; --seeds/--jobs/--out are the child's own
    assert cmd[2:] == ["fashion-mnist-1k", "--set", "models=[ns_cnn_s, ns_cnn_m]", "--name", "fm",
                       "--seeds", "2,", "--out", str(tmp_path / "seed2")]
    assert plan[0]["env"]["OMP_NUM_THREADS"] == "1"                 # 2 cores // 3 jobs, at least 1
    assert accuracy.seed_jobs(argv, [0, 1], 2, tmp_path, cores=16)[1]["env"]["OMP_NUM_THREADS"] == "8"


def test_seed_table_reads_eval_files_of_every_seed(tmp_path):
    import json
    from noisystudent.layout import RunLayout
    spec = importlib.util.spec_from_file_location("bench_seed_table", ROOT / "benchmarks" / "seed_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = []
    for seed, (tv, tt, sv, st) in enumerate([(0.80, 0.79, 0.84, 0.83), (0.82, 0.81, 0.86, 0.85)]):
        lay = RunLayout(tmp_path / f"s{seed}")
        for k, role, v, t in ((0, "teacher", tv, tt), (1, "student", sv, st)):
            lay.model(k, role).mkdir(parents=True)
            lay.eval(k, role).mkdir(parents=True)
            (lay.eval(k, role) / "eval.json").write_text(json.dumps({"top1": t, "val": {"top1": v}, "model": "m"}))
        runs.append(lay.root)
    lay.model(1, "student_supervised").mkdir()          # trained in seed 1 only, not evaluated: no row
    out = mod.table(runs).splitlines()
    assert len(out) == 4
    assert out[2].startswith("| 0 | teacher | m | 81.00 ± 1.41 | 80.00 ± 1.41 | 80.00 / 79.00, 82.00 / 81.00")
    assert out[3].startswith("| 1 | noisy student | m | 85.00 ± 1.41 | 84.00 ± 1.41 |")
    # --group: test top-1 over a group's classes (the mean of their per-class accuracies), per row
    for seed, run in enumerate(runs):
        for k, role, acc in ((0, "teacher", [0.5, 0.7, 0.9]), (1, "student", [0.6, 0.8, 0.9 + 0.02 * seed])):
            f = RunLayout(run).eval(k, role) / "eval.json"
            e = json.loads(f.read_text())
            f.write_text(json.dumps(e | {"per_class_accuracy": dict(zip(["a-cat", "a-dog", "b-one"], acc))}))
    groups = mod.parse_groups(["a=a-*", "b=b-one,nothing"])
    out = mod.group_table(runs, groups).splitlines()
    assert out[0] == "| round | role | a (2 classes) test top-1 (%) | b (1 classes) test top-1 (%) |"
    assert out[2] == "| 0 | teacher | 60.00 ± 0.00 | 90.00 ± 0.00 |"
    assert out[3] == "| 1 | noisy student | 70.00 ± 0.00 | 91.00 ± 1.41 |"
    with pytest.raises(SystemExit, match="--group c: no class matches; classes: a-cat, a-dog, b-one"):
        mod.group_table(runs, mod.parse_groups(["c=c-*"]))
    for bad in (["a"], ["a="], ["a=x", "a=y"]):
        with pytest.raises(SystemExit, match="--group"):
            mod.parse_groups(bad)


def test_seed_table_vs_pairs_one_role_with_every_other_row(tmp_path):
    """`--vs ROLE`: ROLE against each other row, paired by run (seed), with the larger-std rule."""
    import json
    from noisystudent.layout import RunLayout
    spec = importlib.util.spec_from_file_location("bench_seed_table_vs", ROOT / "benchmarks" / "seed_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = []
    # (role, val, test) per seed: init wins on val by 1.0 and 2.0 (paired 1.5 ± 0.71) over the
    # scratch student; over the teacher by 5 and 6 on val, but loses on test in seed 1.
    per_seed = [{"teacher": (0.80, 0.80), "student": (0.84, 0.83), "student_init": (0.85, 0.84)},
                {"teacher": (0.81, 0.86), "student": (0.85, 0.84), "student_init": (0.87, 0.85)}]
    for seed, rows in enumerate(per_seed):
        lay = RunLayout(tmp_path / f"s{seed}")
        for role, (v, t) in rows.items():
            k = 0 if role == "teacher" else 1
            lay.model(k, role).mkdir(parents=True)
            lay.eval(k, role).mkdir(parents=True)
            (lay.eval(k, role) / "eval.json").write_text(json.dumps({"top1": t, "val": {"top1": v}, "model": "m"}))
        runs.append(lay.root)
    comp = {c["vs"]: c for c in mod.versus(runs, "student_init")}
    assert set(comp) == {"0 teacher", "1 noisy student"}
    s = comp["1 noisy student"]["val_top1"]
    assert s["delta"] == pytest.approx(1.5) and s["paired_std"] == pytest.approx(0.7071, abs=1e-3)
    assert s["wins"] == 2 and s["holds"] is True          # 1.5 > larger std 1.41 (both rows differ by 2 points)
    t = comp["0 teacher"]["top1"]
    assert t["wins"] == 1 and t["holds"] is False          # +4, -1: mean +1.5 < larger std 4.24
    assert any(line.startswith("| 0 teacher | +5.50 |") for line in mod.comparison_lines(list(comp.values()), "x"))
    with pytest.raises(SystemExit, match="rows: student, student_init, teacher"):
        mod.versus(runs, "student_nonoise")
    # --with: another group of runs (one per seed, same order) adds its rows of round >= 1, labelled
    others = []
    for seed, (v, t) in enumerate([(0.86, 0.85), (0.84, 0.83)]):
        lay = RunLayout(tmp_path / f"t{seed}")
        for k, role, vv, tt in ((0, "teacher", 0.1, 0.1), (1, "student", v, t)):   # round 0 is left out
            lay.model(k, role).mkdir(parents=True)
            lay.eval(k, role).mkdir(parents=True)
            (lay.eval(k, role) / "eval.json").write_text(json.dumps({"top1": tt, "val": {"top1": vv}, "model": "m"}))
        others.append(lay.root)
    out = mod.table(runs, {"thr 0.7": others}).splitlines()
    assert len(out) == 6 and out[5].startswith("| 1 | thr 0.7: noisy student | m | 85.00 ± 1.41 | 84.00 ± 1.41 | "
                                                "86.00 / 85.00, 84.00 / 83.00")
    comp = {c["vs"]: c for c in mod.versus(runs, "student", {"thr 0.7": others})}
    v = comp["1 thr 0.7: noisy student"]["val_top1"]    # student 84, 85 against 86, 84: -2 and +1
    assert v["delta"] == pytest.approx(-0.5) and v["wins"] == 1
    with pytest.raises(SystemExit, match="1 run directories for 2 seeds"):
        mod.table(runs, {"thr 0.7": others[:1]})


def test_teacher_reported_as_the_supervised_baseline_only_when_it_is_one(accuracy):
    """A teacher trained as the compute-matched supervised baseline (the Fashion-MNIST recipe with a
    student from scratch of the teacher's length) is reported in that row (marked) instead of being
    trained twice; a teacher trained otherwise (fewer steps) or a run that trained the variant gets no such row."""
    from conftest import twin_student_overrides
    from noisystudent.config import load_config
    scratch = twin_student_overrides(ROOT / "configs" / "fashion-mnist-1k.yaml")   # the teacher's twin
    cfg = load_config(ROOT / "configs" / "fashion-mnist-1k.yaml", ["variants=[no_noise]", *scratch])
    rows = [{"row": "baseline", "round": 0, "which": "teacher", "top1": 0.85, "val_top1": 0.86},
            {"row": "baseline", "round": 1, "which": "student", "top1": 0.87, "val_top1": 0.88}]
    out = accuracy.with_supervised_twin(rows, cfg, ["no_noise"])
    twin = out[-1]
    assert len(out) == 3 and twin["which"] == "student_supervised" and twin["twin_of"] == "teacher"
    assert (twin["top1"], twin["val_top1"], twin["round"]) == (0.85, 0.86, cfg.variants_round)
    assert accuracy.with_supervised_twin(rows, cfg, ["no_noise", "supervised"]) == rows
    short = load_config(ROOT / "configs" / "fashion-mnist-1k.yaml", ["teacher.steps=1000", *scratch])
    assert accuracy.with_supervised_twin(rows, short, ["no_noise"]) == rows
    # the bundled recipe starts its student from the teacher: the teacher is not the baseline, the variant is
    bundled = load_config(ROOT / "configs" / "fashion-mnist-1k.yaml")
    assert "supervised" in bundled.variants and accuracy.with_supervised_twin(rows, bundled, ["no_noise"]) == rows


def test_comparisons_pair_seeds_and_apply_the_larger_std_rule(accuracy):
    """Final student vs each row: difference of means, paired per-seed differences, and 'holds' only
    when the difference exceeds the larger of the two rows' sample std's."""
    rows = []
    for seed, (t, s1, s2, nn) in enumerate([(0.80, 0.82, 0.84, 0.83), (0.82, 0.83, 0.86, 0.86), (0.81, 0.83, 0.85, 0.84)]):
        rows += [{"row": "baseline", "round": 0, "which": "teacher", "seed": seed, "val_top1": t, "top1": t},
                 {"row": "baseline", "round": 1, "which": "student", "seed": seed, "val_top1": s1, "top1": s1},
                 {"row": "baseline", "round": 2, "which": "student", "seed": seed, "val_top1": s2, "top1": s2},
                 {"row": "student_nonoise", "round": 2, "which": "student_nonoise", "seed": seed,
                  "val_top1": nn, "top1": None}]
    comp = {c["vs"]: c for c in accuracy.comparisons(rows)}
    t = comp["teacher"]["val_top1"]             # round 2 (the last) is the final student
    assert t["delta"] == pytest.approx(4.0) and t["paired_std"] == pytest.approx(0.0, abs=1e-9)
    assert t["larger_std"] == pytest.approx(1.0) and t["holds"] and t["wins"] == 3
    nn = comp["student_nonoise"]["val_top1"]
    assert nn["delta"] == pytest.approx(0.6667, abs=1e-3) and nn["wins"] == 2
    assert nn["larger_std"] == pytest.approx(1.5275, abs=1e-3) and not nn["holds"]
    assert "top1" not in comp["student_nonoise"]          # a missing value: no test column, not a made-up one


def test_a_configs_own_variants_reach_the_run_whole(accuracy):
    """The bench used to pass only variant *names* on to the run, so a config's own variant
    (`{ra_m9: {noise.ra_magnitude: 9}}`) failed as an unknown built-in."""
    from noisystudent.config import load_config
    cfg = ROOT / "configs" / "fashion-mnist-1k.yaml"
    declared = load_config(cfg, ["variants=[no_noise, {ra_m9: {noise.ra_magnitude: 9}}]"]).variants
    entries = accuracy.variant_entries(declared, None, ["no_noise", "supervised"])
    assert entries == ["no_noise", {"ra_m9": {"noise.ra_magnitude": 9}}, "supervised"]
    # the override round-trips through the config loader with the changes intact
    assert load_config(cfg, [accuracy.variants_override(entries)]).variants == entries
    assert accuracy.variant_entries(declared, ["ra_m9"], []) == [{"ra_m9": {"noise.ra_magnitude": 9}}]
    assert accuracy.variant_entries(declared, ["supervised"], []) == ["supervised"]
    with pytest.raises(SystemExit, match="--variants: light is neither declared.*declared: no_noise, ra_m9"):
        accuracy.variant_entries(declared, ["light"], [])


def test_machine_speed_times_the_configs_teacher_step_and_reaches_the_table(accuracy, tmp_path, monkeypatch):
    from noisystudent.config import load_config
    cfg = load_config(ROOT / "configs" / "digits-demo.yaml", [])
    speed = accuracy.machine_speed(cfg)
    assert speed["bare_img_s"] > 0
    assert speed["bare_what"].startswith("ns_cnn_s 8 px x1, batch 32,")    # the teacher's model, size, batch
    assert speed["bare_what"].endswith("1 CPU thread")                     # no GPU here: the CPU, one thread
    monkeypatch.setattr(accuracy, "_SPEED", speed)
    row = {"row": "baseline", "round": 0, "which": "teacher", "model": "ns_cnn_s", "val_top1": 0.9, "top1": 0.9,
           "seed": 0, "steps": 10}
    accuracy.write_tables(tmp_path, "t", [row], 60.0, [])
    assert f"{speed['bare_img_s']:,.0f} img/s" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "t.json").read_text().count('"bare_img_s"') == 1
