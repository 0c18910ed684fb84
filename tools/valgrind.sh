#!/usr/bin/env bash
# Valgrind job (CI): runs the API tests, a small conformance subset, the fault-path tests and a replay of the
# fuzz seed corpus under memcheck (--error-exitcode=1, full leak check) on the OpenCL backend (PoCL on a CPU-only
# machine), in a RelWithDebInfo build with CUDA off. tools/valgrind.supp covers only the ICD loader's and PoCL's
# own reports. Usage: bash tools/valgrind.sh

# env: BUILD (default build-valgrind), VALGRIND_CONFORMANCE_FILTER (default the S=2, DQK=3, DV=5 cases),
# POCL_CACHE_DIR. Each program first runs once without valgrind to fill PoCL's kernel cache (compiling kernels
# under valgrind would take minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build-valgrind}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
FILTER=${VALGRIND_CONFORMANCE_FILTER:-'*B1_NH1_S2_DQK3_DV5*'}
# PoCL's on-disk kernel cache, shared by the fuzz, sanitizer and valgrind jobs (each kernel builds once) and
# private to this checkout, so nothing else clearing or racing on ~/.cache/pocl can slow or break a run
export POCL_CACHE_DIR=${POCL_CACHE_DIR:-$ROOT/build-pocl-cache}
mkdir -p "$POCL_CACHE_DIR"

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLSTM_ENABLE_CUDA=OFF -DMLSTM_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD" -j "$(nproc)" >/dev/null
cc -O1 -g -I api -I tests/util fuzz/fuzz_api.c fuzz/replay_main.c tests/util/test_util.c \
  -L"$BUILD" -lmlstm -Wl,-rpath,"$BUILD" -lm -o "$BUILD/fuzz_replay"
if [ ! -x "$BUILD/tests/reliability/test_faults" ]; then
  echo "valgrind: tests/reliability is not built: add 'add_subdirectory(reliability)' to tests/CMakeLists.txt" >&2
  exit 1
fi

VG=(valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,possible --track-origins=yes
    --num-callers=40 --suppressions="$ROOT/tools/valgrind.supp")
export MLSTM_BACKEND=opencl
# the seeds without the zz_biggrid_* ones (those only warm PoCL's large-grid kernels for the fuzz job; under
# valgrind a 768-head call is slow and exercises no other code)
SEEDS=$(ls -d "$ROOT"/fuzz/corpus/* | grep -v '/zz_biggrid_' | tr '\n' ' ')
failed=0
for spec in "api|$BUILD/tests/test_api" "conformance[$FILTER]|$BUILD/tests/test_conformance" \
            "faults|$BUILD/tests/reliability/test_faults" "fuzz corpus replay|$BUILD/fuzz_replay $SEEDS"; do
  name=${spec%%|*}
  read -r -a cmd <<< "${spec#*|}"
  log="$BUILD/valgrind-$(basename "${cmd[0]}").log"
  filt=""
  [ "$name" = "conformance[$FILTER]" ] && filt=$FILTER
  MLSTM_TEST_FILTER=$filt "${cmd[@]}" > /dev/null 2>&1 || true   # kernel cache warm-up (results checked below)
  t0=$(date +%s)
  rc=0
  MLSTM_TEST_FILTER=$filt "${VG[@]}" "${cmd[@]}" > "$log" 2>&1 || rc=$?
  # a run that executed nothing would pass silently: require a passed test or a replayed input
  if [ $rc -eq 0 ] && ! grep -qE "\[ +OK +\]|replay: [1-9][0-9]* inputs run" "$log"; then rc=99; fi
  printf '  %-40s %s (%ss) %s\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" \
    "$(( $(date +%s) - t0 ))" "$(grep -oE 'ERROR SUMMARY: [0-9]+ errors' "$log" | tail -1)"
  if [ $rc -ne 0 ]; then
    failed=1
    grep -E "^==[0-9]+== " "$log" | head -80
    tail -20 "$log"
  fi
done
[ $failed -eq 0 ] && echo "valgrind: no memcheck findings" || { echo "valgrind: FAILED (logs: $BUILD/valgrind-*.log)"; exit 1; }
