#!/usr/bin/env bash
# CIFAR-10-4000 on one GPU with the bundled recipe (issue 13/15): teacher, noisy student, no-noise
# student and the compute-matched supervised baseline, one seed, val + test; tables under $OUT_DIR.
#   PY=python3 CIFAR_TAR=data/cifar10-jpeg.tar.gz OUT_DIR=$OUT bash benchmarks/gpu_cifar.sh [STUDENT_STEPS]
# STUDENT_STEPS (default 4000) sizes the run to a short GPU lease; the CPU recipe uses 7800.
# The fast recipe (issue 14) as written, two rounds, PFLOP and wall time printed:
#   CONFIG=cifar10-4k-fast OUT_DIR=$OUT bash benchmarks/gpu_cifar.sh ""
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
CIFAR_TAR=${CIFAR_TAR:-../shared/data/cifar10-jpeg.tar.gz}
OUT_DIR=${OUT_DIR:-runs/gpu_cifar}
STEPS=${1-4000}
CONFIG=${CONFIG:-cifar10-4k}
export NOISYSTUDENT_PROGRESS=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
"$PY" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)' | tee -a "$OUT_DIR/gpu.txt"
[ -d data/cifar10/train ] || { mkdir -p data/cifar10 && tar xzf "$CIFAR_TAR" -C data/cifar10; }
t0=$SECONDS
STEP_SET=()
[ -n "$STEPS" ] && STEP_SET=(--set student.steps="$STEPS")
timeout "${LIMIT:-520}" "$PY" benchmarks/accuracy.py "$CONFIG" --seeds 0 --runs runs/gpu --out "$OUT_DIR" \
  --name "$CONFIG-gpu" --set data.workers=15 "${STEP_SET[@]}" \
  --set teacher.channels_last=true --set student.channels_last=true 2>&1 | tee "$OUT_DIR/log.txt"
echo "wall $((SECONDS - t0)) s" | tee -a "$OUT_DIR/gpu.txt"
# whatever finished, even if the time limit cut the run short
"$PY" - "$OUT_DIR/partial.txt" <<'PYEOF'
import json, sys, pathlib
rows = []
for p in sorted(pathlib.Path("runs/gpu").glob("*/*/round*/eval_*/eval.json")):
    d = json.loads(p.read_text())
    st = p.parent.parent / p.parent.name.replace("eval_", "") / "stage.json"
    info = json.loads(st.read_text()).get("info", {}) if st.is_file() else {}
    rows.append(f"{p.parent.parent.name}/{p.parent.name}: test {100*d['top1']:.2f} val "
                f"{100*(d.get('val') or {}).get('top1', float('nan')):.2f} train_s {info.get('train_s')} steps {info.get('steps')}")
pathlib.Path(sys.argv[1]).write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PYEOF
