#!/usr/bin/env bash
# Sanitizer job (CI): builds libmlstm and its tests with ASan + UBSan (-DMLSTM_SANITIZE=ON, clang, CUDA off) and
# runs on the OpenCL backend (PoCL on a CPU-only machine) the API tests, a conformance subset and the reliability
# tests (faults, threads, extreme, determinism). Any sanitizer report or leak fails it, except leaks that
# tools/lsan.supp attributes to the OpenCL ICD loader or PoCL. Usage: bash tools/sanitize.sh

# env: BUILD (default build-sanitize), SANITIZE_CONFORMANCE_FILTER (MLSTM_TEST_FILTER of the conformance subset,
# default every DQK=3, DV=5 case), POCL_CACHE_DIR. A plain build runs the same set first: informative results,
# and it fills PoCL's kernel cache (kernel builds are several times slower inside an ASan process).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build-sanitize}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
FILTER=${SANITIZE_CONFORMANCE_FILTER:-'*_DQK3_DV5/*'}
CC=${CC_SANITIZE:-clang}
JOBS=$(nproc)
# PoCL's on-disk kernel cache, shared by the fuzz, sanitizer and valgrind jobs (each kernel builds once) and
# private to this checkout, so nothing else clearing or racing on ~/.cache/pocl can slow or break a run
export POCL_CACHE_DIR=${POCL_CACHE_DIR:-$ROOT/build-pocl-cache}
mkdir -p "$POCL_CACHE_DIR"

cmake -S . -B "$BUILD/plain" -DCMAKE_BUILD_TYPE=Release -DMLSTM_ENABLE_CUDA=OFF -DMLSTM_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD/plain" -j "$JOBS" >/dev/null
cmake -S . -B "$BUILD/asan" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLSTM_SANITIZE=ON \
  -DMLSTM_ENABLE_CUDA=OFF -DMLSTM_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD/asan" -j "$JOBS" >/dev/null

REL=(test_faults test_threads test_extreme test_determinism)
for t in "${REL[@]}"; do
  if [ ! -x "$BUILD/asan/tests/reliability/$t" ]; then
    echo "sanitize: tests/reliability is not built: add 'add_subdirectory(reliability)' to tests/CMakeLists.txt" >&2
    exit 1
  fi
done

# name | command (run from the build dir); the conformance subset is the only filtered one
run_set() {
  local dir=$1 failed=0 t0
  for spec in "api|tests/test_api" "conformance[$FILTER]|tests/test_conformance" \
              "faults|tests/reliability/test_faults" "threads|tests/reliability/test_threads" \
              "extreme|tests/reliability/test_extreme" "determinism|tests/reliability/test_determinism"; do
    local name=${spec%%|*} cmd=${spec#*|} rc=0
    t0=$(date +%s)
    if [ "$name" = "conformance[$FILTER]" ]; then
      (cd "$dir" && MLSTM_BACKEND=opencl MLSTM_TEST_FILTER="$FILTER" "./$cmd") > "$dir/$(basename "$cmd").log" 2>&1 || rc=$?
    else
      (cd "$dir" && MLSTM_BACKEND=opencl "./$cmd") > "$dir/$(basename "$cmd").log" 2>&1 || rc=$?
    fi
    # a subset that ran nothing would pass silently: require at least one test to have run
    if [ $rc -eq 0 ] && ! grep -qE "\[ +OK +\]|PASS" "$dir/$(basename "$cmd").log"; then rc=99; fi
    printf '  %-40s %s (%ss)\n' "$name" "$([ $rc -eq 0 ] && echo ok || ([ $rc -eq 77 ] && echo SKIPPED || echo "FAILED ($rc)"))" \
      "$(( $(date +%s) - t0 ))"
    if [ $rc -ne 0 ]; then
      failed=1
      tail -40 "$dir/$(basename "$cmd").log"
    fi
  done
  return $failed
}

echo "sanitize: plain build (warms PoCL's kernel cache; its results are informative, the ASan run decides)"
run_set "$BUILD/plain" || echo "sanitize: (the plain build failed tests too: not a sanitizer finding)"

export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$ROOT/tools/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
echo "sanitize: ASan + UBSan build"
run_set "$BUILD/asan"
echo "sanitize: no sanitizer findings"
