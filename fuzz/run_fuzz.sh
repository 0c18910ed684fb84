#!/usr/bin/env bash
# Fuzz job (CI): builds libmlstm with clang + ASan/UBSan + libFuzzer coverage (CUDA off) and fuzz/fuzz_api.c,
# then fuzzes the public API on the OpenCL backend (PoCL on a CPU-only machine) for a bounded time from the seeds
# in fuzz/corpus/. Exit 0 only when nothing was found; a finding leaves its reproducer in $BUILD/artifacts/.
# Usage: bash fuzz/run_fuzz.sh [seconds, default 60]

# env: BUILD (default build-fuzz), POCL_CACHE_DIR (default build-pocl-cache), MLSTM_FUZZ_BACKEND (default opencl).
# Reproduce a finding: $BUILD/fuzz_api <file>. The log prints how often each status came back (MLSTM_FUZZ_STATS).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-60}
BUILD=${BUILD:-build-fuzz}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
CC=${CC_FUZZ:-clang}
# PoCL's on-disk kernel cache, shared by the fuzz, sanitizer and valgrind jobs (each kernel builds once) and
# private to this checkout, so nothing else clearing or racing on ~/.cache/pocl can slow or break a run
export POCL_CACHE_DIR=${POCL_CACHE_DIR:-$ROOT/build-pocl-cache}
mkdir -p "$POCL_CACHE_DIR"

# 1. a plain build (no sanitizers) and the standalone replay driver: replaying the seeds builds every kernel
#    program the fuzzer can reach and leaves it in PoCL's kernel cache (under ASan a build takes minutes)
cmake -S . -B "$BUILD/plain" -DCMAKE_BUILD_TYPE=Release -DMLSTM_ENABLE_CUDA=OFF -DMLSTM_BUILD_TESTS=OFF \
  -DMLSTM_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD/plain" -j "$(nproc)" >/dev/null
cc -O1 -g -I api -I tests/util fuzz/fuzz_api.c fuzz/replay_main.c tests/util/test_util.c \
  -L"$BUILD/plain" -lmlstm -Wl,-rpath,"$BUILD/plain" -lm -o "$BUILD/plain/fuzz_replay"
# 2. the sanitized library (with libFuzzer's coverage instrumentation) and the harness
cmake -S . -B "$BUILD/asan" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLSTM_SANITIZE=ON \
  -DMLSTM_ENABLE_CUDA=OFF -DMLSTM_BUILD_TESTS=OFF -DMLSTM_BUILD_BENCH=OFF \
  -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link" >/dev/null
cmake --build "$BUILD/asan" -j "$(nproc)" >/dev/null
"$CC" -g -O1 -Wall -Wextra -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I api -I tests/util fuzz/fuzz_api.c tests/util/test_util.c \
  -L"$BUILD/asan" -lmlstm -Wl,-rpath,"$BUILD/asan" -lm -o "$BUILD/fuzz_api"

t0=$(date +%s)
"$BUILD/plain/fuzz_replay" fuzz/corpus
echo "run_fuzz: seed replay without sanitizers (kernel cache warm-up) took $(( $(date +%s) - t0 ))s"

mkdir -p "$BUILD/corpus" "$BUILD/artifacts"
# Leaks inside the OpenCL ICD loader and PoCL (and the LLVM it compiles with) are theirs, never libmlstm's:
# tools/lsan.supp names only those libraries. fast_unwind_on_malloc=0 gives full allocation stacks through
# PoCL/LLVM code built without frame pointers, so those suppressions match (and libmlstm's frames show).
export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:abort_on_error=1:strict_string_checks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$ROOT/tools/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export MLSTM_FUZZ_STATS=${MLSTM_FUZZ_STATS:-1}   # the statuses the calls returned, printed at exit

set +e
# the seeds once under ASan (outside the time budget: one-time PoCL set-up costs land here, not in fuzzing time)
t0=$(date +%s)
"$BUILD/fuzz_api" -runs=0 -timeout=300 -detect_leaks=0 -error_exitcode=1 -timeout_exitcode=1 \
  -artifact_prefix="$BUILD/artifacts/" fuzz/corpus 2> "$BUILD/fuzz-seeds.log"
rc=$?
echo "run_fuzz: seed corpus under ASan took $(( $(date +%s) - t0 ))s (exit $rc)"
if [ $rc -ne 0 ]; then
  echo "run_fuzz: FAILED on the seed corpus; log: $BUILD/fuzz-seeds.log"
  tail -60 "$BUILD/fuzz-seeds.log"
  exit 1
fi
echo "run_fuzz: fuzzing for ${SECS}s (corpus $BUILD/corpus, seeds fuzz/corpus)"
# -detect_leaks=0 turns off libFuzzer's per-input leak check (it re-runs and symbolizes PoCL's first program
# load, costing ~45 s of a 60 s budget); LeakSanitizer still checks the whole run at exit (detect_leaks=1 above),
# and any leak it reports there fails the job.
"$BUILD/fuzz_api" "$BUILD/corpus" fuzz/corpus -max_total_time="$SECS" -timeout=120 -rss_limit_mb=4096 \
  -max_len=1024 -detect_leaks=0 -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 \
  -artifact_prefix="$BUILD/artifacts/" 2> "$BUILD/fuzz.log"
rc=$?
set -e
grep -E "^#[0-9]+ +(DONE|INITED)|^Done|^stat::number_of_executed_units|^stat::peak_rss|fuzz_api|ORACLE|ERROR|SUMMARY" \
  "$BUILD/fuzz.log" | head -40
if [ $rc -ne 0 ]; then
  echo "run_fuzz: FAILED (exit $rc); full log: $BUILD/fuzz.log; reproducers:"
  ls -l "$BUILD/artifacts/"
  tail -60 "$BUILD/fuzz.log"
  exit 1
fi
echo "run_fuzz: no findings"
