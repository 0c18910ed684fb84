#!/bin/bash
# libmlstm CUDA backend: one-call build + check + benchmark script for a machine with an NVIDIA GPU.
# Builds the project (CUDA only, sm_90), runs the float64 accuracy checks and the
# SDPA comparison (bench/compare_torch.py), the conformance suite, compute-sanitizer on a few cases, and
# optional tile-config variants (VARIANTS="name:-DFLAG=.. -DFLAG=..;name2:..").
# Usage (repo root, on the GPU machine): bash bench/gpu_check.sh [steps]   steps: build,check,bench,ctest,sanitize,variants,ab
# ab: the bf16 bench twice, MLSTM_CUDA_SMALL_TILES=0 (default tiles) and =1 (small-grid tiles), over ABSHAPES.
set -o pipefail
STEPS=${1:-build,check,bench,ctest,sanitize}
OUT=${OUT:-/tmp/mlstm_out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
BUILD=build-gpu
has() { [[ ",$STEPS," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
if has build; then
  t0=$(date +%s)
  cmake -S . -B $BUILD -DMLSTM_CUDA_ARCHS=90a -DMLSTM_ENABLE_OPENCL=OFF -DCMAKE_BUILD_TYPE=Release > "$OUT/build.log" 2>&1 \
    && cmake --build $BUILD -j16 >> "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1; }
  echo "build ok ($(( $(date +%s) - t0 )) s)"
fi
if has check; then
  timeout 240 python3 bench/compare_torch.py --lib $BUILD/libmlstm.so --check 2>&1 | tee "$OUT/check.log"
fi
if has bench; then
  timeout 200 python3 bench/compare_torch.py --lib $BUILD/libmlstm.so --bench --dtypes ${BENCH_DTYPES:-bf16} 2>&1 | tee "$OUT/bench.log"
  timeout 100 python3 bench/compare_torch.py --lib $BUILD/libmlstm.so --bench --dtypes f32 \
    --shapes "1,8,4096,64;1,8,4096,128" 2>&1 | tee -a "$OUT/bench.log"
fi
if has ctest; then
  MLSTM_BACKEND=cuda timeout 150 ctest --test-dir $BUILD -R "conformance.cuda|api|ref" --output-on-failure > "$OUT/ctest.log" 2>&1
  echo "ctest rc=$?"; grep -E "tests passed|\[  FAILED" "$OUT/ctest.log" | head -30
fi
if has sanitize; then
  for tool in memcheck racecheck; do
    echo "== $tool" >> "$OUT/sanitize.log"
    MLSTM_BACKEND=cuda MLSTM_TEST_FILTER='*_S6?_*' timeout 120 compute-sanitizer --tool $tool --print-limit 5 \
      $BUILD/tests/test_conformance >> "$OUT/sanitize.log" 2>&1
    echo "sanitize $tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize.log" | tail -1)"
  done
fi
if has ab; then
  for mode in 0 1; do
    echo "== MLSTM_CUDA_SMALL_TILES=$mode" | tee -a "$OUT/ab.log"
    shapes="1,8,512,64;1,8,1024,64;1,8,2048,64;1,8,4096,64;1,8,512,128;1,8,1024,128;1,8,2048,128;1,8,4096,128;1,8,512,256;1,8,1024,256;1,8,2048,256;1,8,4096,256"
    [ $mode = 0 ] && shapes="$shapes;1,8,8192,64;1,8,8192,128;1,8,8192,256"  # S=8192: small grid never chosen
    MLSTM_CUDA_SMALL_TILES=$mode timeout 100 python3 bench/compare_torch.py --lib $BUILD/libmlstm.so --bench --dtypes bf16 \
      --shapes "${ABSHAPES:-$shapes}" \
      2>&1 | grep -v "^device" | tee -a "$OUT/ab.log"
  done
fi
if has variants; then
  IFS=';' read -ra VS <<< "$VARIANTS"
  for v in "${VS[@]}"; do
    name=${v%%:*}; flags=${v#*:}
    echo "== variant $name: $flags" | tee -a "$OUT/variants.log"
    cmake -S . -B build-$name -DMLSTM_CUDA_ARCHS=90a -DMLSTM_ENABLE_OPENCL=OFF -DMLSTM_BUILD_TESTS=OFF \
      -DMLSTM_BUILD_BENCH=OFF "-DCMAKE_CUDA_FLAGS=$flags" > /dev/null 2>&1 && cmake --build build-$name -j16 --target mlstm > /dev/null 2>&1 \
      || { echo "variant build failed" | tee -a "$OUT/variants.log"; continue; }
    timeout 120 python3 bench/compare_torch.py --lib build-$name/libmlstm.so --bench --dtypes bf16 \
      --shapes "${VSHAPES:-1,8,2048,64;1,8,8192,64;1,8,2048,128;1,8,8192,128}" 2>&1 | grep -v "^device" | tee -a "$OUT/variants.log"
  done
fi
