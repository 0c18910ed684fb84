#!/usr/bin/env bash
# The main job (README): installs the dependencies, builds libmlstm, then on the auto-selected backend
# (CUDA when an NVIDIA GPU is present, else OpenCL, e.g. PoCL on a CPU) checks h and every gradient against
# the float64 reference and runs the benchmark. On a GPU the anchor shapes (S up to 8192) are timed too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
BUILD=${BUILD:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMLSTM_BUILD_TESTS=OFF
cmake --build "$BUILD" -j "$(nproc)"
bench="$BUILD/bench/bench_mlstm"
# correctness against the float64 reference, every dtype, forward and backward (exit 1 on a violation)
"$bench" --check --dtype all --iters 3 --warmup 1 \
  --shapes "1,2,256,64,64;1,2,129,48,96;1,1,1024,64,64;2,2,200,128,128"
# the benchmark: the anchor shapes on an NVIDIA GPU, small shapes elsewhere (a CPU through PoCL)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$bench" --dtype bf16 && "$bench" --dtype f32
else
  "$bench" --dtype all --iters 5 --warmup 1 --shapes "1,8,512,64,64;1,8,1024,64,64;1,8,1024,128,128"
fi
