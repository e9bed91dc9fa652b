#!/usr/bin/env bash
# The GPU checks of one lent GPU session, as one prepared script (each part has its own time limit,
# runs even if an earlier one failed, and leaves its log in $OUT_DIR). On an H200, 2026-12-04: env
# 12 s, tests 14 s, profile 66 s, throughput 29 s (at 40 steps; now 100), fast 67 s, loop 148 s;
# sanity was not run (the default parts fit one 10-minute call):
#   1. env         CUDA visible, bf16, versions
#   2. tests       `pytest -m gpu`: the on-device noise against the CPU reference, the prefetch, eval batches, a real CUDA OOM,
#                  torchrun `--device cpu` where CUDA is visible (backend cpu:gloo,cuda:nccl)
#   3. profile     where a step's time goes (bare vs ours, prefetch off/on, the noise alone, labeling)
#   4. throughput  ours vs a bare loop, WRN-28-2, batch 256, bf16, PIL workers and on-device noise, labeling
#   5. fast        the fast recipe (cifar10-4k-fast: ns_air_s, one round), whole loop, wall + accuracy
#   6. sanity      the fast net supervised on 49,000 CIFAR-10 labels (issue 14's >= 90% check)
#   7. loop        the standard-architecture recipe (cifar10-4k: ns_cnn_m -> WRN-28-2), whole loop
#   8. results     every finished stage's accuracy and wall time -> $OUT_DIR/results.txt
# Usage (repo root):
#   bash benchmarks/gpu_check.sh
#   PY=python3 CIFAR_TAR=data/cifar10-jpeg.tar.gz OUT_DIR=$OUT RUNS=/tmp/runs bash benchmarks/gpu_check.sh
#       (the device tool: copy ../shared/data/cifar10-jpeg.tar.gz to data/ and carry it; timeout 600)
#   DRY=1 bash benchmarks/gpu_check.sh     (on a CPU, every part shrunk to seconds: checks the script itself)
# Without an installed package it runs from src/ (PYTHONPATH). Exits non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then PY=.venv/bin/python; [ -x "$PY" ] || PY=python3; fi
CIFAR_TAR=${CIFAR_TAR:-../shared/data/cifar10-jpeg.tar.gz}
OUT_DIR=${OUT_DIR:-runs/gpu_check}
RUNS=${RUNS:-runs/gpu}
export NOISYSTUDENT_PROGRESS=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR" "$RUNS"
DEV=cuda; TP=(--steps 100 --batch 256 --amp bf16 --workers 8); GP=(--steps 100 --batch 256); SHRINK=(); T=1
if [ -n "${DRY:-}" ]; then   # the same commands at toy size on the CPU
  DEV=cpu; TP=(--steps 3 --batch 16 --amp off --workers 0); GP=(--steps 3 --batch 16 --model ns_cnn_m --workers 1 --amp off); T=3
  SHRINK=(--set teacher.steps=30 --set teacher.warmup_steps=3 --set student.steps=20 --set student.warmup_steps=2
          --set data.labeled.per_class=20 --set data.val.per_class=10 --set data.unlabeled.fraction=0.01
          --set data.test.per_class=10)
fi
# `sanity` is off by default (issue 14's check, done on the CPU; add it with PARTS=...): with it, nine
# logs would be written and the device tool brings back eight files
PARTS=${PARTS:-tests profile throughput fast loop}   # a subset for a short lease, e.g. PARTS="tests throughput"
FAST_LIMIT=${FAST_LIMIT:-150}
LOOP_LIMIT=${LOOP_LIMIT:-200}
failed=()
part() {  # part NAME SECONDS CMD...: run under a time limit, log to $OUT_DIR/NAME.log, remember failures
  local name=$1 limit=$(( $2 * T )); shift 2
  [ "$name" = env ] || [[ " $PARTS " == *" $name "* ]] || return 0
  local t0=$SECONDS
  echo "== $name (limit $limit s)"
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT_DIR/$name.log"
  echo "== $name: exit $rc, $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || failed+=("$name")
}
part env 60 "$PY" -c '
import os, subprocess, torch, timm
print("torch", torch.__version__, "| timm", timm.__version__, "| cpus", os.cpu_count())
st = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None   # loaders fit their workers to it
print("/dev/shm free:", f"{st.f_bavail * st.f_frsize / 2**30:.1f} GiB" if st else "none")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout)
elif not os.environ.get("DRY"):
    raise SystemExit("no CUDA device visible")'
if [ ! -d data/cifar10/train ]; then
  mkdir -p data/cifar10 && tar xzf "$CIFAR_TAR" -C data/cifar10 || failed+=("extract")
fi
if [ -z "${DRY:-}" ]; then
  part tests 120 "$PY" -m pytest -o addopts= -q -p no:cacheprovider -m gpu tests/test_batch_noise.py tests/test_label_stream.py \
    tests/test_tensor_batches.py tests/test_stage_fingerprint.py tests/test_distributed.py
fi
# where a step's time goes: bare vs ours (side-stream prefetch off/on), the noise alone, labeling
part profile 140 "$PY" benchmarks/gpu_profile.py --device "$DEV" "${GP[@]}" --out "$RUNS/profile"
part throughput 150 "$PY" benchmarks/throughput.py --device "$DEV" "${TP[@]}" --model ns_wrn_28_2 --out "$RUNS/tp"
cp "$RUNS/tp/throughput.json" "$OUT_DIR/" 2>/dev/null    # the table is in throughput.log (8 files come back)
# whole loops, noisy student only (the no-noise and supervised variants cost a student each);
# data.workers and label.batch_size are the defaults (auto: min(8, cores - 1) loader processes, batches of
# 1,024 on a GPU), as a user runs them; training noise runs on the device
part fast "$FAST_LIMIT" "$PY" benchmarks/accuracy.py cifar10-4k-fast --seeds 0 --variants "" --runs "$RUNS" \
  --out "$RUNS/fast-tables" --name cifar10-4k-fast-gpu "${SHRINK[@]}"
# ns_air_s on all of train/ but 50 images per class (the validation split the config needs; the
# pool keeps the last 500): 9,000 steps x 128 = ~23.5 passes (90.63% on the CPU), crop + flip only, flip TTA at test
part sanity 120 "$PY" -m noisystudent train cifar10-4k-fast --run-dir "$RUNS/sup49k" --device "$DEV" \
  --set data.labeled.per_class=4900 --set data.val.per_class=50 --set teacher.steps=9000 \
  --set teacher.warmup_steps=450 --set teacher.noise.randaugment=false "${SHRINK[@]}"
part loop "$LOOP_LIMIT" "$PY" benchmarks/accuracy.py cifar10-4k --seeds 0 --variants "" --runs "$RUNS" \
  --out "$RUNS/loop-tables" --name cifar10-4k-gpu \
  --set teacher.channels_last=true --set student.channels_last=true "${SHRINK[@]}"
# what finished, even where a limit cut a run short: accuracy, steps, wall per stage
"$PY" - "$RUNS" > "$OUT_DIR/results.txt" 2>&1 <<'PYEOF'
import json, sys, pathlib
root = pathlib.Path(sys.argv[1])
for run in sorted(root.glob("*/baseline")) + sorted(root.glob("sup49k")):
    print(f"# {run.parent.name if run.name == 'baseline' else run.name}")
    for st in sorted(run.glob("round*/*/stage.json")):
        s = json.loads(st.read_text())
        info = s.get("info", {})
        line = f"{st.parent.parent.name}/{st.parent.name}: status {s.get('status')} stage_s {info.get('stage_s')}"
        for k in ("steps", "train_s", "images_per_s", "kept", "batch_size"):
            if k in info:
                line += f" {k} {info[k]}"
        pla = info.get("pseudo_label_accuracy") or {}
        for when in ("before", "after"):
            if (pla.get(when) or {}).get("overall") is not None:
                line += f" pseudo_acc_{when} {pla[when]['overall']:.4f}"
        ev = st.parent / "eval.json"
        if ev.is_file():
            d = json.loads(ev.read_text())
            line += f" | test {100 * d['top1']:.2f} val {100 * ((d.get('val') or {}).get('top1') or float('nan')):.2f}"
        print(line)
    log = run / "run.log"
    if log.is_file():                        # where an unfinished stage stood
        print("  run.log: " + "\n  run.log: ".join(log.read_text().splitlines()[-3:]))
PYEOF
cat "$OUT_DIR/results.txt"
if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: OK"; else echo "gpu_check: FAILED: ${failed[*]}"; exit 1; fi
