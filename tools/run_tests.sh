#!/usr/bin/env bash
# The test command (README, .ci/run): installs the dependencies, builds libmlstm with every backend whose
# toolchain is present (CUDA compiles and links when nvcc exists; OpenCL runs on PoCL when no GPU is
# present), runs the whole default test suite through CTest, a few cases of the sm_90a kernels on the CPU emulator,
# then the fuzz job (60 s of libFuzzer on the public API; less, down to 10 s, on a slow host: see below), the
# ASan+UBSan, ThreadSanitizer and valgrind jobs.
# Exit status 0 only if everything passed. Each phase's end is logged with the seconds since the start.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
phase() { echo "run_tests: $1 done at $(elapsed) s"; }
bash tools/install_deps.sh
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
BUILD=${BUILD:-build}
# PoCL's kernel cache, private to this checkout and shared by every job below (each program compiles once)
export POCL_CACHE_DIR=${POCL_CACHE_DIR:-$PWD/build-pocl-cache}
mkdir -p "$POCL_CACHE_DIR"
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j "$JOBS"
phase build
ctest --test-dir "$BUILD" --output-on-failure -j 1 --timeout 1500
phase ctest
# the sm_90a kernels' logic without a GPU: a few cases of the forward and backward (persistent, overlapped, masking
# and chained variants included) on tools/kernel_emu's emulated wgmma, mbarriers and TMA (~25 s)
MLSTM_LIB_DIR="$BUILD" EMU_DIR="$BUILD-emu" bash tools/kernel_emu/run.sh wg16-quick
phase emulator
# the jobs after this point took 6.4 min on this 2-core host on a slow day (fuzz 139 s with 60 s of fuzzing,
# sanitize 83, tsan 18, valgrind 144; the suite had ended at 519 s); where the build and the suite run past 430 s, the
# fuzzing gives up as many seconds, down to 10, so that the whole stays within CI's 15 minutes
FUZZ_SECONDS=${MLSTM_FUZZ_SECONDS:-60}
if [ -z "${MLSTM_FUZZ_SECONDS:-}" ]; then
  over=$(( $(elapsed) - 430 ))
  if [ $over -gt 0 ]; then
    FUZZ_SECONDS=$(( 60 - over < 10 ? 10 : 60 - over ))
    echo "run_tests: $(elapsed) s have passed (a slow host): fuzzing for $FUZZ_SECONDS s instead of 60"
  fi
fi
bash fuzz/run_fuzz.sh "$FUZZ_SECONDS"
phase fuzz
bash tools/sanitize.sh
phase sanitize
bash tools/tsan.sh
phase tsan
bash tools/valgrind.sh
phase valgrind
