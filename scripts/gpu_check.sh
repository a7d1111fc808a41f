#!/usr/bin/env bash
# One device call: GPU tests, then benchmarks. Full logs under $OUT (default ./gpu_out); short table last.
# Usage: bash scripts/gpu_check.sh [tests|bench|tune|all ...]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
parts=${*:-all}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
date -u +%Y-%m-%dT%H:%MZ | tee -a "$OUT/gpu.txt"
status=0
for part in $parts; do
  case $part in
    tests|all)
      python -m pytest -q tests 2>&1 | tee "$OUT/pytest_cuda.log" | tail -n 25; status=$((status | PIPESTATUS[0]));;&
    tune)
      python benchmarks/tune_dropout.py 2>&1 | tee "$OUT/tune.log";;
    bench|all)
      for b in benchmarks/bench_*.py; do
        echo "== $b"; python "$b" --out "$OUT" 2>&1 | tee "$OUT/$(basename "$b" .py).log" | tail -n 60
      done;;
  esac
done
exit $status
