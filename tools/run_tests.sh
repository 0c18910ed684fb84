#!/usr/bin/env bash
# The test command (README, .ci/run): installs the dependencies, builds libmlstm with every backend whose
# toolchain is present (CUDA compiles and links when nvcc exists; OpenCL runs on PoCL when no GPU is
# present), and runs the whole default test suite through CTest. Exit status 0 only if everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j "$JOBS"
ctest --test-dir "$BUILD" --output-on-failure -j 1 --timeout 1500
