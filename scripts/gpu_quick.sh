#!/usr/bin/env bash
# A short GPU check of the C++ host path: its CUDA tests and dropout_add's, then the
# benchmarks it moves (dropout_add [16384, 4096] and the MLP sub-block, GPT-2 step phases).
# Usage: bash scripts/gpu_quick.sh   (results under $OUT when set, else ./gpu_results)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build/torch_extensions}
RESULTS=${OUT:-gpu_results}
mkdir -p "$RESULTS"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u +%Y-%m-%dT%H:%MZ; } | tee "$RESULTS/gpu.txt"
python -m pytest -m cuda tests/test_extension.py tests/test_cuda.py -k "extension or dropout_add" -p no:warnings \
  2>&1 | tee "$RESULTS/pytest_quick.log" | tail -n 4
status=${PIPESTATUS[0]}
python benchmarks/bench_dropout_add.py --quick --no-compile --out "$RESULTS" 2>&1 | tee "$RESULTS/bench_dropout_add.log" | tail -n 32
python benchmarks/gpt2_phases.py --rounds 3 --steps 6 2>&1 | tee "$RESULTS/gpt2_phases.log" | tail -n 7
exit "$status"
