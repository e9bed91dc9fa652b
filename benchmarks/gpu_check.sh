#!/usr/bin/env bash
# GPU readiness check for a lent GPU machine (< 5 minutes): CUDA visible, AMP, channels_last,
# torch.compile, pinned-memory loaders; throughput on CIFAR-10 32 px; a short accuracy run.
#   bash benchmarks/gpu_check.sh                       (repo root, after `make setup`)
#   PY=python3 CIFAR_TAR=/path/cifar10-jpeg.tar.gz OUT_DIR=/tmp/gc bash benchmarks/gpu_check.sh
# Without an installed package it runs from src/ (PYTHONPATH). Each part runs even if an earlier one
# failed; the script exits non-zero if any failed. Logs and results land in $OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then PY=.venv/bin/python; [ -x "$PY" ] || PY=python3; fi
CIFAR_TAR=${CIFAR_TAR:-../shared/data/cifar10-jpeg.tar.gz}
OUT_DIR=${OUT_DIR:-runs/gpu_check}
export NOISYSTUDENT_PROGRESS=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"
failed=()
part() {  # part NAME TIMEOUT CMD...: run, time, log to $OUT_DIR/NAME.log, remember failures
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc, $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || failed+=("$name")
}
part env 60 "$PY" -c '
import torch, timm
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| timm", timm.__version__,
      "| bf16:", torch.cuda.is_bf16_supported())'
if [ ! -d data/cifar10/train ]; then
  mkdir -p data/cifar10 && tar xzf "$CIFAR_TAR" -C data/cifar10 || failed+=("extract")
fi
# 1) throughput: bare loop vs our engine, fp32 and bf16 autocast, 8 loader workers (the best of 4/8/15 on a 16-core H100 host) + pinned memory
part throughput 150 "$PY" benchmarks/throughput.py --device cuda --steps 30 --batch 256 --amp off,bf16 \
  --workers 8 --out "$OUT_DIR"
# 2) the whole loop on a CIFAR-10 subset (1,000 labels, 20% of the pool): bf16, channels_last,
#    torch.compile for the teacher, pinned-memory workers; prints the summary table
part loop 240 "$PY" -m noisystudent run cifar10-4k --run-dir "$OUT_DIR/loop" --device cuda --no-report \
  --set rounds=1 --set data.labeled.per_class=100 --set data.unlabeled.fraction=0.2 \
  --set teacher.epochs=40 --set student.epochs=10 --set teacher.batch_size=128 --set student.batch_size=64 \
  --set teacher.channels_last=true --set student.channels_last=true --set teacher.amp=bf16 --set student.amp=bf16 \
  --set data.workers=8 --set teacher.compile=true
if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: OK"; else echo "gpu_check: FAILED: ${failed[*]}"; exit 1; fi
