#!/bin/bash
# libmlstm CUDA backend: one-command check of the tensor-core numerics (issues 13.4, 14, 17) on a machine with an
# NVIDIA GPU (sm_90a build): builds, runs tests/numerics_check.c (training-sized grids against the float64 reference,
# every instance family forced in turn), the conformance suite, the slow set's f16/bf16 backward cases, the sanitizers
# on the backward kernels whose shared memory changed, and optionally a timing A/B against a base revision.
# Usage (repository root): bash bench/gpu_numerics_check.sh [steps]
#   steps (comma-separated, default build,numerics,sweep,ctest,slow,sanitize): also 'ab' (BASE=<git rev>, default HEAD~1:
#   bf16/f16 fwd+bwd timings of both builds through bench/compare_torch.py, same process order, same card).
# Output: a summary on stdout, logs under $OUT (default /tmp/mlstm_numerics). Exit status 1 if a check failed.
set -o pipefail
STEPS=${1:-build,numerics,sweep,ctest,slow,sanitize}
OUT=${OUT:-/tmp/mlstm_numerics}
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1 MLSTM_BACKEND=cuda
has() { [[ ",$STEPS," == *",$1,"* ]]; }
fail=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

build_tree() { # src dir, build dir, log
  cmake -S "$1" -B "$2" -DMLSTM_ENABLE_CUDA=ON -DMLSTM_CUDA_ARCHS=90a -DMLSTM_ENABLE_OPENCL=OFF -DCMAKE_BUILD_TYPE=Release \
    > "$3" 2>&1 && cmake --build "$2" -j "$JOBS" >> "$3" 2>&1
}
if has build; then
  t0=$(date +%s)
  build_tree . $BUILD "$OUT/build.log" || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1; }
  # the standalone check program: tests/util (inputs, reference, device runner) and tests/ref, linked to the library
  gcc -std=c11 -O2 -fopenmp -I api -I tests -I tests/util -I tests/ref tests/numerics_check.c tests/util/mlstm_case.c \
    tests/util/test_util.c tests/ref/mlstm_ref.c -L $BUILD -Wl,-rpath,"$PWD/$BUILD" -lmlstm -lm -o $BUILD/numerics_check \
    >> "$OUT/build.log" 2>&1 || { echo "BUILD FAILED (numerics_check)"; tail -20 "$OUT/build.log"; exit 1; }
  echo "build ok ($(( $(date +%s) - t0 )) s)"
fi
if has numerics; then
  # default dispatch, then every instance family forced: the small-grid variants (and the dQ key split) always /
  # never, and the mma.sync kernels instead of wgmma
  for env in "" "MLSTM_CUDA_SMALL_TILES=0" "MLSTM_CUDA_SMALL_TILES=1" "MLSTM_CUDA_WGMMA=0"; do
    log="$OUT/numerics${env:+_${env//=/_}}.log"
    echo "== numerics_check ${env:-(default dispatch)}" | tee "$log"
    env $env timeout 900 $BUILD/numerics_check >> "$log" 2>&1
    rc=$?
    grep -E "^(ok|FAIL)|^    |failed" "$log"
    [ $rc = 0 ] || fail=1
  done
fi
if has sweep; then
  # short sequences over many seeds: the backward at the h it received (fails), and the exact-mode di / df misses
  # against the reference's own h (the forward's h error through delta; reported)
  timeout 600 $BUILD/numerics_check sweep > "$OUT/sweep.log" 2>&1
  rc=$?
  grep -E "^(ok|FAIL)|sweep:" "$OUT/sweep.log"
  [ $rc = 0 ] || fail=1
fi
if has ctest; then
  timeout 600 ctest --test-dir $BUILD -R "conformance.cuda|conformance_fused.cuda|api|ref" --output-on-failure > "$OUT/ctest.log" 2>&1
  rc=$?
  echo "ctest rc=$rc"; grep -E "tests passed|\[  FAILED|FAIL" "$OUT/ctest.log" | head -30
  [ $rc = 0 ] || fail=1
fi
if has slow; then
  # the precision-contract shapes of the slow set, f16 and bf16 backward (S up to 8192, small grids)
  for d in f16 bf16; do
    MLSTM_TEST_SLOW=1 MLSTM_TEST_FILTER="bwd/$d/*" timeout 900 $BUILD/tests/test_conformance > "$OUT/slow_$d.log" 2>&1
    rc=$?
    echo "slow bwd/$d rc=$rc"; grep -E "PASSED|FAILED|\[  FAILED" "$OUT/slow_$d.log" | head -20
    [ $rc = 0 ] || fail=1
  done
fi
if has sanitize; then
  # the D = 256 pair kernels exchange new tiles through shared memory (bwd_tc.cuh, bwd_wgmma.cuh), the dQ epilogue
  # reads what dK/dV left in dq: memcheck and racecheck on the default set's backward cases that run them
  for tool in memcheck racecheck; do
    for filt in 'bwd/*DQK256*' 'bwd/f16/*S6?_*' 'bwd/bf16/*S6?_*'; do
      for env in "" "MLSTM_CUDA_WGMMA=0"; do
        echo "== $tool $filt $env" >> "$OUT/sanitize.log"
        env $env MLSTM_TEST_FILTER="$filt" timeout 300 compute-sanitizer --tool $tool --print-limit 5 \
          $BUILD/tests/test_conformance >> "$OUT/sanitize.log" 2>&1
        rc=$?
        echo "sanitize $tool '$filt' ${env:-wgmma} rc=$rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize.log" | tail -1)"
        [ $rc = 0 ] || fail=1
      done
    done
  done
fi
if has ab; then
  BASE=${BASE:-HEAD~1}
  rm -rf "$OUT/base-src" && mkdir -p "$OUT/base-src" && git archive "$BASE" | tar -x -C "$OUT/base-src"
  build_tree "$OUT/base-src" "$OUT/base-build" "$OUT/build_base.log" || { echo "BASE BUILD FAILED"; exit 1; }
  shapes="1,8,4096,64;1,8,4096,128;1,8,4096,256;4,8,2048,128;1,8,8192,128;1,8,8192,256"
  for round in 1 2; do
    for lib in "$OUT/base-build/libmlstm.so" "$BUILD/libmlstm.so"; do
      echo "== round $round $lib" | tee -a "$OUT/ab.log"
      timeout 300 python3 bench/compare_torch.py --lib "$lib" --bench --dtypes bf16,f16 --shapes "$shapes" 2>&1 \
        | tee -a "$OUT/ab.log"
    done
  done
fi
echo "gpu_numerics_check: $([ $fail = 0 ] && echo all passed || echo FAILURES, see $OUT)"
exit $fail
