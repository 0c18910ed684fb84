#!/bin/bash
# libmlstm CUDA backend: kernel variants against the default build, in one call on one GPU. Builds the default and
# each variant (extra CUDA flags, e.g. -DMLSTM_DKDV_PINGPONG=1) side by side, runs bench_mlstm on all in turn twice
# (bf16 over SHAPES, f16 over F16_SHAPES), then each variant's CUDA conformance suite and compute-sanitizer racecheck
# and memcheck on the conformance cases matching SAN_FILTER. Logs go to $OUT (default /tmp/mlstm_out).
# Usage (repo root): VARIANT_FLAGS="-DMLSTM_DKDV_PINGPONG=1" bash bench/gpu_variant_ab.sh [steps]  steps: build,bench,conf,san
# VARIANT_FLAGS may name several variants separated by ';' (variant 1, 2, ... in the logs, build-variant1, ...).
# CONF_FORCE: MLSTM_CUDA_FORCE for the conformance and sanitizer steps only (e.g. fwd.wg, so that the small cases run
# the default-tile forward rather than its split variants); CONF_FILTER: their MLSTM_TEST_FILTER (default all).
# CONF_FORCE, CONF_FILTER and SAN_FILTER may also be ';'-separated lists, one entry per variant, in VARIANT_FLAGS' order.
# TIME_LIMIT (seconds, default 560): a conformance or sanitizer run that would start later is skipped (and says so).
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
TIME_LIMIT=${TIME_LIMIT:-560}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
has() { [[ ",$STEPS," == *",$1,"* ]]; }
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
IFS=';' read -r -a VARS <<< "$VARIANT_FLAGS"
NV=${#VARS[@]}
# per_variant LIST I: entry I (1-based) of a ';'-separated list, or the whole value where it has no ';'
per_variant() { if [[ "$1" == *";"* ]]; then IFS=';' read -r -a L <<< "$1"; echo "${L[$(($2 - 1))]}"; else echo "$1"; fi; }
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for i in $(seq 1 $NV); do echo "variant $i: ${VARS[$((i - 1))]}"; done
cfg="-DMLSTM_CUDA_ARCHS=$ARCH -DMLSTM_ENABLE_OPENCL=OFF -DCMAKE_BUILD_TYPE=Release"
jobs=$(( $(nproc) / (NV + 1) > 1 ? $(nproc) / (NV + 1) : 1 ))
if has build; then
  for i in $(seq 1 $NV); do
    (cmake -S . -B build-variant$i $cfg "-DCMAKE_CUDA_FLAGS=${VARS[$((i - 1))]}" > "$OUT/build_variant$i.log" 2>&1 &&
     cmake --build build-variant$i -j$jobs --target bench_mlstm test_conformance >> "$OUT/build_variant$i.log" 2>&1
     echo "variant $i build rc=$?") &
  done
  cmake -S . -B build-default $cfg > "$OUT/build_default.log" 2>&1 &&
    cmake --build build-default -j$jobs --target bench_mlstm >> "$OUT/build_default.log" 2>&1
  echo "default build rc=$?"
  wait
  echo "builds done at $(el) s"
fi
bin() { [ "$1" = 0 ] && echo build-default/bench/bench_mlstm || echo build-variant$1/bench/bench_mlstm; }
DEAD=""
dead() { [[ " $DEAD " == *" $1 "* ]]; }
label() { [ "$1" = 0 ] && echo default || echo "variant $1"; }
if has bench; then
  # a variant that hangs or fails on a small call is dropped here, before the timed runs (and its conformance and
  # sanitizer steps are skipped), so that the others are still measured
  for i in $(seq 1 $NV); do
    timeout 30 $(bin $i) --dtype bf16 --iters 2 --warmup 1 --shapes "1,8,1024,256,256;2,8,512,256,512" > "$OUT/smoke$i.log" 2>&1 ||
      { echo "variant $i smoke run failed (rc $?): dropped"; tail -5 "$OUT/smoke$i.log"; DEAD="$DEAD $i"; }
  done
  for r in 1 2; do
    for v in $(seq 0 $NV); do
      dead $v && continue
      echo "== $(label $v) bf16, run $r" | tee -a "$OUT/bench.log"
      timeout 60 $(bin $v) --dtype bf16 --iters 10 --warmup 2 --shapes "$SHAPES" 2>&1 | grep -v '^#' | tail -n +3 | tee -a "$OUT/bench.log"
    done
  done
  for v in $(seq 0 $NV); do
    dead $v && continue
    echo "== $(label $v) f16" | tee -a "$OUT/bench.log"
    timeout 60 $(bin $v) --dtype f16 --iters 10 --warmup 2 --shapes "$F16_SHAPES" 2>&1 | grep -v '^#' | tail -n +3 | tee -a "$OUT/bench.log"
  done
fi
for i in $(seq 1 $NV); do
  if dead $i; then echo "variant $i: conformance and sanitizers not run (its smoke run failed)"; continue; fi
  if has conf; then
    if [ $(el) -gt $TIME_LIMIT ]; then echo "variant $i conformance not run (time: $(el) s)"; else
      echo "== variant $i conformance (CUDA) at $(el) s"
      MLSTM_BACKEND=cuda MLSTM_CUDA_FORCE="$(per_variant "$CONF_FORCE" $i)" MLSTM_TEST_FILTER="$(per_variant "$CONF_FILTER" $i)" timeout 200 \
        build-variant$i/tests/test_conformance > "$OUT/conformance$i.log" 2>&1
      echo "rc=$?"; grep -E '^\[  FAILED|^\[  PASSED|^\[  SKIPPED' "$OUT/conformance$i.log" | head -12
    fi
  fi
  if has san; then
    for tool in racecheck memcheck; do
      if [ $(el) -gt $TIME_LIMIT ]; then echo "variant $i $tool not run (time: $(el) s)"; continue; fi
      MLSTM_BACKEND=cuda MLSTM_CUDA_FORCE="$(per_variant "$CONF_FORCE" $i)" MLSTM_TEST_GPU_SET=0 MLSTM_TEST_FILTER="$(per_variant "$SAN_FILTER" $i)" timeout 120 \
        compute-sanitizer --tool $tool --print-limit 5 build-variant$i/tests/test_conformance > "$OUT/san${i}_$tool.log" 2>&1
      echo "variant $i $tool [$(per_variant "$SAN_FILTER" $i)] rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san${i}_$tool.log" | tail -1)" \
        "$(grep -cE '^\[       OK' "$OUT/san${i}_$tool.log") ok, $(grep -cE '^\[  FAILED' "$OUT/san${i}_$tool.log") failed"
    done
  fi
done
echo "end at $(el) s"
