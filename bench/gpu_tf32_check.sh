#!/bin/bash
# One-call GPU check of the CUDA f32 tensor-core kernels (kernels_cuda/fwd/fwd_tf32.cuh, bwd/bwd_tf32.cuh, forced on:
# MLSTM_CUDA_F32_TC=1): builds sm_90 in $BUILD (default build-gpu), runs the f32 conformance cases (default set,
# slow-set f32 forward), test_extreme, test_determinism, compute-sanitizer, bench_mlstm f32 forward and forward +
# backward as SIMT vs 3xTF32 vs TF32, then the slow-set f32 backward cases (slowbwd: float64 references of S up to
# 8192, minutes). Usage (repository root, with the OpenCL loader, cmocka and
# CLBlast installed as README "Set up" lists):
#   bash bench/gpu_tf32_check.sh [test,slow,sanitize,bench,slowbwd]
set -o pipefail
export MLSTM_CUDA_F32_TC=1
STEPS=${1:-test,slow,sanitize,bench,slowbwd}
LOG=${LOGDIR:-gpu-logs}
mkdir -p "$LOG"
export PATH=/usr/local/cuda/bin:$PATH
has() { [[ ",$STEPS," == *",$1,"* ]]; }
date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
BUILD=${BUILD:-build-gpu}
t0=$(date +%s)
{ cmake -S . -B "$BUILD" -DMLSTM_CUDA_ARCHS="${MLSTM_CUDA_ARCHS:-90a}" -DMLSTM_SLOW_TESTS=ON -DCMAKE_BUILD_TYPE=Release &&
  cmake --build "$BUILD" -j "$(nproc)"; } > "$LOG/build.log" 2>&1 || { echo "BUILD FAILED"; tail -30 "$LOG/build.log"; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
T="$BUILD/tests/test_conformance"
summary() { grep -E "^\[  PASSED|^\[  FAILED|^\[  SKIPPED" "$1" | head -12; }
if has test; then
  MLSTM_BACKEND=cuda MLSTM_TEST_FILTER='*f32*' timeout 300 "$T" > "$LOG/conf_f32.log" 2>&1
  echo "conformance cuda f32 (default set) rc=$?"; summary "$LOG/conf_f32.log"
  grep -E "CASE\] (fwd|bwd)/f32" "$LOG/conf_f32.log" | sed 's/layout=bnsd\///'
  MLSTM_BACKEND=cuda timeout 120 "$BUILD/tests/reliability/test_extreme" > "$LOG/extreme.log" 2>&1
  echo "reliability extreme (cuda) rc=$?"; grep -E "cases|PASSED|FAILED" "$LOG/extreme.log" | head
  MLSTM_BACKEND=cuda timeout 60 "$BUILD/tests/reliability/test_determinism" > "$LOG/determinism.log" 2>&1
  echo "reliability determinism (cuda) rc=$?"; grep -E "PASSED|FAILED" "$LOG/determinism.log" | head -3
fi
if has slow; then
  MLSTM_BACKEND=cuda MLSTM_TEST_SLOW=1 MLSTM_TEST_FILTER='fwd/f32/*' timeout 120 "$T" > "$LOG/slow_f32.log" 2>&1
  echo "conformance cuda slow fwd/f32 rc=$?"; summary "$LOG/slow_f32.log"; grep -E "CASE\]" "$LOG/slow_f32.log"
fi
if has sanitize; then
  for tool in memcheck racecheck; do
    MLSTM_BACKEND=cuda MLSTM_TEST_FILTER='*/f32/*_S6[35]_*' timeout 120 compute-sanitizer --tool $tool --print-limit 5 \
      "$T" > "$LOG/sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOG/sanitize_$tool.log" | tail -1)"
  done
fi
if has bench; then
  SH=${SHAPES:-"1,8,1024,64,64;1,8,4096,64,64;1,8,8192,64,64;1,8,1024,128,128;1,8,4096,128,128;1,8,8192,128,128;1,8,4096,256,256;1,8,8192,256,256"}
  B="$BUILD/bench/bench_mlstm --dtype f32 --fwd-only --iters ${ITERS:-20} --warmup 3 --shapes $SH"
  echo "== SIMT f32 (MLSTM_CUDA_F32_TC=0)"; MLSTM_BACKEND=cuda MLSTM_CUDA_F32_TC=0 timeout 60 $B --csv "$LOG/bench_simt.csv"
  echo "== 3xTF32 (default math)"; MLSTM_BACKEND=cuda MLSTM_CUDA_F32_TC=1 timeout 30 $B --csv "$LOG/bench_3xtf32.csv"
  echo "== TF32 (--math tf32)"; MLSTM_BACKEND=cuda MLSTM_CUDA_F32_TC=1 timeout 30 $B --math tf32 --csv "$LOG/bench_tf32.csv"
  SHB=${SHAPES_BWD:-"1,8,4096,64,64;1,8,4096,128,128;1,8,8192,128,128;1,8,4096,256,256"}
  B="$BUILD/bench/bench_mlstm --dtype f32 --iters ${ITERS:-20} --warmup 3 --shapes $SHB"
  echo "== fwd+bwd SIMT f32"; MLSTM_BACKEND=cuda MLSTM_CUDA_F32_TC=0 timeout 180 $B --csv "$LOG/bench_fb_simt.csv"
  echo "== fwd+bwd 3xTF32"; MLSTM_BACKEND=cuda MLSTM_CUDA_F32_TC=1 timeout 60 $B --csv "$LOG/bench_fb_3xtf32.csv"
  echo "== fwd+bwd TF32"; MLSTM_BACKEND=cuda MLSTM_CUDA_F32_TC=1 timeout 60 $B --math tf32 --csv "$LOG/bench_fb_tf32.csv"
fi
if has slowbwd; then
  MLSTM_BACKEND=cuda MLSTM_TEST_SLOW=1 MLSTM_TEST_FILTER='bwd/f32/*' timeout 900 "$T" > "$LOG/slow_bwd_f32.log" 2>&1
  echo "conformance cuda slow bwd/f32 rc=$?"; summary "$LOG/slow_bwd_f32.log"; grep -E "CASE\]" "$LOG/slow_bwd_f32.log"
fi
