#!/usr/bin/env bash
# Valgrind job (CI): runs the API tests, a small conformance subset, the fault-path tests and a replay of the
# fuzz seed corpus under memcheck (--error-exitcode=1, full leak check) on the OpenCL backend (PoCL on a CPU-only
# machine), in a RelWithDebInfo build with CUDA off. tools/valgrind.supp covers only the ICD loader's and PoCL's
# own reports. Usage: bash tools/valgrind.sh

# env: BUILD (default build-valgrind), VALGRIND_CONFORMANCE_FILTER (default the S=2, DQK=3, DV=5 cases),
# POCL_CACHE_DIR, VALGRIND_TIMEOUT (seconds per program under valgrind, default 240; a run takes 15-25 s on 2 cores).
# Each program first runs once without valgrind to fill PoCL's kernel cache: compiling kernels under valgrind
# takes minutes per program and LLVM's allocations show up as leaks. PoCL keys that cache by the CPU target it
# picks from the CPU it sees, and under valgrind the CPU may look like another model (valgrind's CPUID hides
# e.g. AVX-512: pthread-skylake-avx512 natively, pthread-haswell under valgrind). So the job asks PoCL for its
# device under valgrind first, pins that target for the warm-up and the checked run alike (POCL_KERNELLIB_NAME
# for Debian's multi-variant PoCL builds, POCL_LLVM_CPU_NAME for single-target ones) and checks that the
# native run now reports the same device; where pinning cannot make them agree, it warms up under
# `valgrind --tool=none` instead. A kernel build that still happens under memcheck is reported as such: the run
# is stopped as soon as PoCL writes its output to the cache (after a few minutes of memcheck, not 18), the
# remaining programs are not run (they would pay the same), and every run is bounded by VALGRIND_TIMEOUT.
# Testing this job only (any x86-64 CPU, PoCL kernel library variants such as sse2): VALGRIND_NATIVE_KERNELLIB=sse2
# makes PoCL see another CPU natively than under valgrind (as on an AVX-512 machine), which pinning must absorb;
# VALGRIND_WARMUP_KERNELLIB=sse2 warms up for the wrong target, which must be reported as kernel builds under
# valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build-valgrind}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
FILTER=${VALGRIND_CONFORMANCE_FILTER:-'*B1_NH1_S2_DQK3_DV5*'}
BOUND=${VALGRIND_TIMEOUT:-240}
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

# ---- PoCL's CPU target: the same under valgrind and natively ----
# the OpenCL device the library selects, as the conformance program prints it (no test runs)
device_of() { MLSTM_TEST_FILTER='-' "$@" "$BUILD/tests/test_conformance" 2>/dev/null | sed -n "s/.*device '\(.*\)'.*/\1/p"; }
# testing this job only: VALGRIND_NATIVE_KERNELLIB makes PoCL see another CPU natively than under valgrind
NATIVE=()
[ -n "${VALGRIND_NATIVE_KERNELLIB:-}" ] && NATIVE=(env POCL_KERNELLIB_NAME="$VALGRIND_NATIVE_KERNELLIB")
vg_dev=$(device_of valgrind --tool=none -q)
native_dev=$(device_of "${NATIVE[@]}")
[ -n "$vg_dev" ] && [ -n "$native_dev" ] || { echo "valgrind: no OpenCL device (natively '$native_dev', under valgrind '$vg_dev')" >&2; exit 1; }
# pins PoCL's CPU target to that of device name $1: PoCL's CPU devices are named pthread-<target>-<model>
# (cpu-<target>-<model> in later releases); Debian's build selects one of its kernel library variants
# (variant:target pairs below) by POCL_KERNELLIB_NAME, a single-target build its LLVM CPU by POCL_LLVM_CPU_NAME.
# Sets pinned (what was exported).
pin_target() {
  local target=${1#pthread-} pair model
  target=${target#cpu-}
  for pair in avx512:skylake-avx512 avx2:haswell avx_fma4:bdver1 avx_f16c:ivybridge avx:sandybridge sse41:penryn \
              ssse3:core2 sse2:athlon64; do
    if [[ "$target" == "${pair#*:}-"* ]]; then
      export POCL_KERNELLIB_NAME=${pair%%:*}
      pinned="POCL_KERNELLIB_NAME=$POCL_KERNELLIB_NAME"
      return
    fi
  done
  model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  export POCL_LLVM_CPU_NAME=${target%-"$model"}
  pinned="POCL_LLVM_CPU_NAME=$POCL_LLVM_CPU_NAME"
}
if [ "$vg_dev" != "$native_dev" ]; then
  echo "valgrind: PoCL's device is '$native_dev' natively and '$vg_dev' under valgrind"
  pin_target "$vg_dev"
  NATIVE=()
  native_dev=$(device_of)
  vg_dev=$(device_of valgrind --tool=none -q)
  if [ "$vg_dev" = "$native_dev" ]; then
    echo "valgrind: PoCL's CPU target pinned for both runs ($pinned): device '$vg_dev'"
  else
    echo "valgrind: pinning ($pinned) leaves the devices apart (natively '$native_dev', under valgrind" \
         "'$vg_dev'): warming up under valgrind --tool=none"
    NATIVE=(valgrind --tool=none -q)
  fi
else
  echo "valgrind: device '$vg_dev' natively and under valgrind"
fi
WARMUP=("${NATIVE[@]}")  # prefix of the warm-up runs
if [ -n "${VALGRIND_WARMUP_KERNELLIB:-}" ]; then
  echo "valgrind: VALGRIND_WARMUP_KERNELLIB=$VALGRIND_WARMUP_KERNELLIB: warming up for another target (test of this job)"
  WARMUP=(env POCL_KERNELLIB_NAME="$VALGRIND_WARMUP_KERNELLIB")
fi

# ---- the checked runs ----
# PoCL's compiled outputs (a program's bitcode, a kernel's shared object per work-group shape); not its temporary
# and last_accessed files, which a run that compiles nothing also writes
cache_files() { find "$POCL_CACHE_DIR" -type f \( -name program.bc -o -name '*.so' \) | LC_ALL=C sort; }
# runs "$@" under memcheck into $log; kills it as soon as PoCL's cache gains a compiled output (a kernel built under
# valgrind: minutes per program, then LLVM's allocations as leaks) or after BOUND seconds. Sets rc (124: out of
# time), built (the new cache files) and secs.
checked_run() {
  local before="$BUILD/pocl-cache.before" t0=$SECONDS
  cache_files > "$before"
  built=""
  "${VG[@]}" "$@" > "$log" 2>&1 &
  local pid=$! timed_out=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    built=$(cache_files | comm -13 "$before" -)
    [ $((SECONDS - t0)) -ge "$BOUND" ] && timed_out=1
    if [ -n "$built" ] || [ $timed_out -eq 1 ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
  done
  rc=0
  wait "$pid" 2>/dev/null || rc=$?
  [ $timed_out -eq 1 ] && rc=124
  [ -n "$built" ] || built=$(cache_files | comm -13 "$before" -)
  secs=$((SECONDS - t0))
}

# the seeds without the zz_biggrid_* ones (those only warm PoCL's large-grid kernels for the fuzz job; under
# valgrind a 768-head call is slow and exercises no other code)
SEEDS=$(ls -d "$ROOT"/fuzz/corpus/* | grep -v '/zz_biggrid_' | tr '\n' ' ')
failed=0
for spec in "api|$BUILD/tests/test_api" "conformance[$FILTER]|$BUILD/tests/test_conformance" \
            "faults|$BUILD/tests/reliability/test_faults" "fuzz corpus replay|$BUILD/fuzz_replay $SEEDS"; do
  name=${spec%%|*}
  if [ $failed -eq 2 ]; then  # the same cache miss would cost every further program minutes
    printf '  %-40s %s\n' "$name" "not run (kernel builds under valgrind, see above)"
    continue
  fi
  read -r -a cmd <<< "${spec#*|}"
  log="$BUILD/valgrind-$(basename "${cmd[0]}").log"
  filt=""
  [ "$name" = "conformance[$FILTER]" ] && filt=$FILTER
  export MLSTM_TEST_FILTER=$filt
  "${WARMUP[@]}" "${cmd[@]}" > /dev/null 2>&1 || true   # kernel cache warm-up (results checked below)
  checked_run "${cmd[@]}"
  status=ok
  if [ -n "$built" ]; then
    status="FAILED: PoCL compiled kernels under valgrind (its cache lacked them for the target valgrind presents); stopped"
    rc=98
  elif [ $rc -eq 124 ]; then
    status="FAILED: not done within VALGRIND_TIMEOUT=$BOUND s (no kernel build detected); stopped"
  elif [ $rc -eq 0 ] && ! grep -qE "\[ +OK +\]|replay: [1-9][0-9]* inputs run" "$log"; then
    # a run that executed nothing would pass silently: require a passed test or a replayed input
    rc=99
    status="FAILED: nothing ran"
  elif [ $rc -ne 0 ]; then
    status="FAILED ($rc)"
  fi
  printf '  %-40s %s (%ss) %s\n' "$name" "$status" "$secs" "$(grep -oE 'ERROR SUMMARY: [0-9]+ errors' "$log" | tail -1)"
  if [ $rc -eq 98 ]; then
    failed=2
    echo "  new PoCL cache files:"
    sed 's/^/    /' <<< "$built" | head -10
  elif [ $rc -ne 0 ]; then
    failed=1
    grep -E "^==[0-9]+== " "$log" | head -80
    tail -20 "$log"
  fi
done
[ $failed -eq 0 ] && echo "valgrind: no memcheck findings" || { echo "valgrind: FAILED (logs: $BUILD/valgrind-*.log)"; exit 1; }
