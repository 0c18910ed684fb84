#!/bin/bash
# libmlstm CUDA backend: a kernel variant against the default build, in one call on one GPU. Builds the default and
# the variant (extra CUDA flags, e.g. -DMLSTM_DKDV_PINGPONG=1) side by side, runs bench_mlstm on both in turn twice
# (bf16 over SHAPES, f16 over F16_SHAPES), then the variant's CUDA conformance suite and compute-sanitizer racecheck
# and memcheck on the conformance cases matching SAN_FILTER. Logs go to $OUT (default /tmp/mlstm_out).
# Usage (repo root): VARIANT_FLAGS="-DMLSTM_DKDV_PINGPONG=1" bash bench/gpu_variant_ab.sh [steps]  steps: build,bench,conf,san
# CONF_FORCE: MLSTM_CUDA_FORCE for the conformance and sanitizer steps only (e.g. fwd.wg, so that the small cases run
# the default-tile forward rather than its split variants); CONF_FILTER: their MLSTM_TEST_FILTER (default all).
set -o pipefail
STEPS=${1:-build,bench,conf,san}
OUT=${OUT:-/tmp/mlstm_out}
ARCH=${MLSTM_CUDA_ARCHS:-90a}
VARIANT_FLAGS=${VARIANT_FLAGS:?set VARIANT_FLAGS to the variant build\'s extra CUDA flags}
SHAPES=${SHAPES:-4,8,2048,256,512;1,8,4096,256,512;1,8,8192,256,512;1,8,2048,256,512;4,8,2048,256,256;1,8,4096,256,256;1,8,4096,200,400}
F16_SHAPES=${F16_SHAPES:-4,8,2048,256,512;1,8,4096,256,256}
SAN_FILTER=${SAN_FILTER:-bwd/*_DQK2*}
CONF_FORCE=${CONF_FORCE:-}
CONF_FILTER=${CONF_FILTER:-}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
has() { [[ ",$STEPS," == *",$1,"* ]]; }
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "variant: $VARIANT_FLAGS"
cfg="-DMLSTM_CUDA_ARCHS=$ARCH -DMLSTM_ENABLE_OPENCL=OFF -DCMAKE_BUILD_TYPE=Release"
jobs=$(( $(nproc) / 2 > 1 ? $(nproc) / 2 : 1 ))
if has build; then
  (cmake -S . -B build-variant $cfg "-DCMAKE_CUDA_FLAGS=$VARIANT_FLAGS" > "$OUT/build_variant.log" 2>&1 &&
   cmake --build build-variant -j$jobs --target bench_mlstm test_conformance >> "$OUT/build_variant.log" 2>&1
   echo "variant build rc=$?") &
  cmake -S . -B build-default $cfg > "$OUT/build_default.log" 2>&1 &&
    cmake --build build-default -j$jobs --target bench_mlstm >> "$OUT/build_default.log" 2>&1
  echo "default build rc=$?"
  wait
  echo "builds done at $(el) s"
fi
D=build-default/bench/bench_mlstm V=build-variant/bench/bench_mlstm
if has bench; then
  # a variant that hangs or fails on a small call stops here, before the timed runs
  timeout 30 $V --dtype bf16 --iters 2 --warmup 1 --shapes "1,8,1024,256,256;2,8,512,256,512" > "$OUT/smoke.log" 2>&1 ||
    { echo "variant smoke run failed (rc $?)"; tail -5 "$OUT/smoke.log"; exit 1; }
  for r in 1 2; do
    for v in D V; do
      echo "== $([ $v = D ] && echo default || echo variant) bf16, run $r" | tee -a "$OUT/bench.log"
      timeout 60 ${!v} --dtype bf16 --iters 10 --warmup 2 --shapes "$SHAPES" 2>&1 | grep -v '^#' | tail -n +3 | tee -a "$OUT/bench.log"
    done
  done
  for v in D V; do
    echo "== $([ $v = D ] && echo default || echo variant) f16" | tee -a "$OUT/bench.log"
    timeout 60 ${!v} --dtype f16 --iters 10 --warmup 2 --shapes "$F16_SHAPES" 2>&1 | grep -v '^#' | tail -n +3 | tee -a "$OUT/bench.log"
  done
fi
if has conf; then
  echo "== variant conformance (CUDA) at $(el) s"
  MLSTM_BACKEND=cuda MLSTM_CUDA_FORCE="$CONF_FORCE" MLSTM_TEST_FILTER="$CONF_FILTER" timeout 200 \
    build-variant/tests/test_conformance > "$OUT/conformance.log" 2>&1
  echo "rc=$?"; grep -E '^\[  FAILED|^\[  PASSED|^\[  SKIPPED' "$OUT/conformance.log" | head -12
fi
if has san; then
  for tool in racecheck memcheck; do
    MLSTM_BACKEND=cuda MLSTM_CUDA_FORCE="$CONF_FORCE" MLSTM_TEST_GPU_SET=0 MLSTM_TEST_FILTER="$SAN_FILTER" timeout 120 compute-sanitizer --tool $tool \
      --print-limit 5 build-variant/tests/test_conformance > "$OUT/san_$tool.log" 2>&1
    echo "$tool [$SAN_FILTER] rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san_$tool.log" | tail -1)" \
      "$(grep -cE '^\[       OK' "$OUT/san_$tool.log") ok, $(grep -cE '^\[  FAILED' "$OUT/san_$tool.log") failed"
  done
fi
echo "end at $(el) s"
