#!/bin/bash
# One-shot check of libmlstm on a machine with an NVIDIA GPU: builds both backends (CUDA for the local
# card's architecture, OpenCL through NVIDIA's OpenCL driver), runs the default test suite on both, a
# compute-sanitizer subset, the long-sequence conformance set, bench_mlstm on the anchor shapes for each
# backend, and the side-by-side comparison with torch SDPA. Logs go to $LOGDIR (default ./gpu-logs).
# Usage (repository root): bash bench/gpu_suite.sh [steps]   steps: build,test,bench,torch,sanitize,slow
set -o pipefail
STEPS=${1:-build,test,bench,torch,sanitize,slow}
LOG=${LOGDIR:-gpu-logs}
BUILD=${BUILD:-build-gpu}
ARCH=${MLSTM_CUDA_ARCHS:-90a}
mkdir -p "$LOG"
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
has() { [[ ",$STEPS," == *",$1,"* ]]; }
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ANCHORS="1,8,1024,64,64;1,8,4096,64,64;1,8,8192,64,64;1,8,1024,128,128;1,8,4096,128,128;1,8,8192,128,128;1,8,4096,256,256;1,8,8192,256,256"
if has build; then
  t0=$(date +%s)
  { cmake -S . -B "$BUILD" -DMLSTM_CUDA_ARCHS="$ARCH" -DMLSTM_SLOW_TESTS=ON -DCMAKE_BUILD_TYPE=Release &&
    cmake --build "$BUILD" -j "$(nproc)"; } > "$LOG/build.log" 2>&1 || { echo "BUILD FAILED"; tail -30 "$LOG/build.log"; exit 1; }
  echo "build ok ($(( $(date +%s) - t0 )) s); backends: $(grep 'libmlstm backends' "$LOG/build.log")"
fi
if has test; then
  timeout 200 ctest --test-dir "$BUILD" -LE slow --output-on-failure > "$LOG/ctest.log" 2>&1
  echo "ctest rc=$?"; grep -E "tests passed|Passed|Failed|Skipped|\[  FAILED" "$LOG/ctest.log" | head -20
fi
if has bench; then
  for b in opencl cuda; do
    for dt in bf16 f32; do
      MLSTM_BACKEND=$b timeout 90 "$BUILD/bench/bench_mlstm" --dtype $dt --iters 10 --warmup 2 --shapes "$ANCHORS" \
        --csv "$LOG/bench_${b}_${dt}.csv" 2>&1 | tee -a "$LOG/bench.log"
    done
  done
fi
if has torch; then
  timeout 120 python3 bench/compare_torch.py --lib "$BUILD/libmlstm.so" --bench --dtypes bf16 \
    --shapes "1,8,512,64;1,8,1024,64;1,8,2048,64;1,8,4096,64;1,8,8192,64;1,8,1024,128;1,8,2048,128;1,8,4096,128;1,8,8192,128;1,8,2048,256;1,8,4096,256;1,8,8192,256" \
    2>&1 | tee "$LOG/torch.log"
  timeout 60 python3 bench/compare_torch.py --lib "$BUILD/libmlstm.so" --bench --dtypes f32 \
    --shapes "1,8,4096,64;1,8,4096,128;1,8,8192,128" 2>&1 | tee -a "$LOG/torch.log"
fi
if has sanitize; then
  # odd S around one tile, every dtype, both directions (cmocka filters know '*' and '?', not brackets)
  for tool in memcheck racecheck; do
    for f in '*_S63_*' '*_S65_*'; do
      MLSTM_BACKEND=cuda MLSTM_TEST_FILTER="$f" timeout 90 compute-sanitizer --tool $tool --print-limit 5 \
        "$BUILD/tests/test_conformance" > "$LOG/sanitize_$tool.log" 2>&1
      echo "compute-sanitizer $tool [$f] rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOG/sanitize_$tool.log" | tail -1)" \
        "$(grep -E '^\[  PASSED|^\[  FAILED' "$LOG/sanitize_$tool.log" | head -2 | tr '\n' ' ')"
    done
  done
fi
if has slow; then
  for b in cuda opencl; do
    MLSTM_BACKEND=$b MLSTM_TEST_SLOW=1 timeout ${SLOW_TIMEOUT:-100} "$BUILD/tests/test_conformance" > "$LOG/slow_$b.log" 2>&1
    echo "slow conformance $b rc=$? (124 = stopped by the time limit; see the log for the cases that ran)"
    grep -cE "^\[       OK" "$LOG/slow_$b.log"; grep -E "^\[  FAILED  \] " "$LOG/slow_$b.log" | head
  done
fi
