#!/usr/bin/env bash
# GPU readiness check for a lent GPU machine (< 5 minutes): CUDA visible, AMP, channels_last,
# torch.compile, pinned-memory loaders; throughput on CIFAR-10 32 px; a short accuracy run.
#   bash benchmarks/gpu_check.sh            (from the repo root, after `make setup`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export NOISYSTUDENT_PROGRESS=0
$PY - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
PY
if [ ! -d data/cifar10/train ]; then
  mkdir -p data/cifar10 && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C data/cifar10
fi
# 1) throughput: bare loop vs our engine, fp32 and bf16 autocast, on the GPU
$PY benchmarks/throughput.py --device cuda --steps 30 --batch 256 --amp off,bf16 --workers 4 --out runs/gpu_check
# 2) a short accuracy run of the whole loop on a CIFAR-10 subset (one round, few epochs)
timeout 200 $PY -m noisystudent run cifar10-4k --run-dir runs/gpu_check/loop --device cuda --no-report \
  --set rounds=1 --set data.labeled.per_class=100 --set data.unlabeled.fraction=0.2 \
  --set teacher.epochs=15 --set student.epochs=3 --set teacher.batch_size=128 --set student.batch_size=64 \
  --set teacher.channels_last=true --set student.channels_last=true --set teacher.amp=bf16 --set student.amp=bf16 \
  --set data.workers=4 --set teacher.compile=true
echo "gpu_check: OK"
