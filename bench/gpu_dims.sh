#!/bin/bash
# The head-dimension sweep on an NVIDIA GPU: bench_mlstm --dims (public API, host timer) on each backend, then
# compare_torch.py --dims (CUDA graphs, beside SDPA and mlstm_kernels' chunkwise TFLA and parallel Triton kernels
# where importable), then the xLSTM-7B shapes (DQK 256 / DV 512). Expects the library built in $BUILD
# (e.g. by bash bench/gpu_check.sh build). Logs and JSON go to $LOGDIR (default ./gpu-logs).
# Usage (repository root): bash bench/gpu_dims.sh [steps]   steps: c,torch,xlstm (default all)
# Environment: BUILD (build-gpu), BACKENDS (cuda; e.g. "cuda opencl"), DTYPES (bf16), SIZES (1,8,4096),
# DISABLE_LLVM_OPT (1: mlstm_kernels' f16 / bf16 Triton kernels compile only with it).
set -o pipefail
STEPS=${1:-c,torch,xlstm}
BUILD=${BUILD:-build-gpu}
LOG=${LOGDIR:-gpu-logs}
DTYPES=${DTYPES:-bf16}
SIZES=${SIZES:-1,8,4096}
export DISABLE_LLVM_OPT=${DISABLE_LLVM_OPT:-1} PYTHONUNBUFFERED=1
mkdir -p "$LOG"
has() { [[ ",$STEPS," == *",$1,"* ]]; }
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if has c; then
  for b in ${BACKENDS:-cuda}; do
    for dt in ${DTYPES//,/ }; do
      MLSTM_BACKEND=$b timeout 300 "$BUILD/bench/bench_mlstm" --dims --sizes "$SIZES" --dtype "$dt" --iters 10 \
        --warmup 2 --csv "$LOG/dims_${b}_${dt}.csv" 2>&1 | tee -a "$LOG/dims_c.log"
    done
  done
fi
if has torch; then
  timeout 500 python3 bench/compare_torch.py --lib "$BUILD/libmlstm.so" --bench --dims --sizes "$SIZES" \
    --dtypes "$DTYPES" --json "$LOG/dims_torch.json" 2>&1 | tee "$LOG/dims_torch.log"
fi
if has xlstm; then
  timeout 500 python3 bench/compare_torch.py --lib "$BUILD/libmlstm.so" --bench --shapes xlstm7b \
    --dtypes "$DTYPES" --json "$LOG/xlstm7b_torch.json" 2>&1 | tee "$LOG/xlstm7b_torch.log"
fi
