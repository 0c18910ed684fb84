#!/usr/bin/env bash
# The test command (README, .ci/run): installs the dependencies, builds libmlstm with every backend whose
# toolchain is present (CUDA compiles and links when nvcc exists; OpenCL runs on PoCL when no GPU is
# present), runs the whole default test suite through CTest, then the fuzz job (60 s of libFuzzer on the
# public API), the ASan+UBSan, ThreadSanitizer and valgrind jobs. Exit status 0 only if everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
BUILD=${BUILD:-build}
# PoCL's kernel cache, private to this checkout and shared by every job below (each program compiles once)
export POCL_CACHE_DIR=${POCL_CACHE_DIR:-$PWD/build-pocl-cache}
mkdir -p "$POCL_CACHE_DIR"
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j "$JOBS"
ctest --test-dir "$BUILD" --output-on-failure -j 1 --timeout 1500
bash fuzz/run_fuzz.sh "${MLSTM_FUZZ_SECONDS:-60}"
bash tools/sanitize.sh
bash tools/tsan.sh
bash tools/valgrind.sh
