#!/bin/bash
# Every CUDA kernel variant through the conformance suite, not only those auto-dispatch picks for the suite's
# shapes: runs tests/test_conformance once per MLSTM_CUDA_FORCE setting (the GPU set included), fails on any failed
# case, and checks from the [ KERNELS ] lines that each pinned variant actually ran. Needs a Hopper GPU (sm_90a
# variants) and a build with tests, e.g. `cmake -S . -B build-gpu -DMLSTM_CUDA_ARCHS=90a && cmake --build build-gpu`.
# Usage (repository root): bash bench/gpu_instances.sh [build dir]     logs: $LOGDIR (default gpu-logs/instances)
# SANITIZE=memcheck|racecheck runs each pinned set under compute-sanitizer instead, on the cases MLSTM_TEST_FILTER
# selects (default '*S6?_*': small shapes whose tiles are partly filled), without the GPU set; it fails on any
# reported error or hazard. The large-grid variants (fwd.wg, dq.wg, dkdv.tc, ...) that dispatch never picks for
# small shapes run there only through these pins.
set -o pipefail
BUILD=${1:-build-gpu}
LOG=${LOGDIR:-gpu-logs/instances}
mkdir -p "$LOG"
RUN=()
if [ -n "${SANITIZE:-}" ]; then
  RUN=(compute-sanitizer --tool "$SANITIZE" --print-limit 5 --error-exitcode 3)
  export MLSTM_TEST_FILTER=${MLSTM_TEST_FILTER:-'*S6?_*'} MLSTM_TEST_GPU_SET=0
fi
export MLSTM_BACKEND=cuda MLSTM_TEST_GPU_SET=${MLSTM_TEST_GPU_SET:-1} # the GPU set: training-sized grids
# one line per run; together they pin every variant of the registry (kernels_cuda/dispatch.cu, k_variants) once
SETS=("fwd.tc,dkdv.tc,dq.tc,fwd.tc32,bwd.tc32"
      "fwd.tc_small,dkdv.tc_small,dq.wg_split"
      "fwd.tc_split,dkdv.wg,dq.wg"
      "fwd.wg,fwd.wg32,bwd.wg32"
      "fwd.wg_split"
      "fwd.simt,bwd.simt")
fail=0
for set in "${SETS[@]}"; do
  log="$LOG/force_${set//[,.]/_}${SANITIZE:+_$SANITIZE}.log"
  MLSTM_CUDA_FORCE=$set timeout ${INSTANCE_TIMEOUT:-900} "${RUN[@]}" "$BUILD/tests/test_conformance" > "$log" 2>&1
  rc=$?
  ran=$(grep -c '^\[       OK \]' "$log")
  failed=$(grep -c '^\[  FAILED  \] [^0-9]' "$log")
  missing=""
  for v in ${set//,/ }; do
    grep -q "^\[ KERNELS \].*\b${v//./\\.}\." "$log" || missing="$missing $v"
  done
  echo "MLSTM_CUDA_FORCE=$set: rc=$rc, $ran cases passed, $failed failed${missing:+, never ran:$missing}${SANITIZE:+, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)}"
  grep '^\[  FAILED  \] [^0-9]' "$log" | head -5
  if [ $rc -ne 0 ] || [ -n "$missing" ]; then fail=1; fi
done
echo "kernel instances seen (variant.dtype.dim):"
grep -h '^\[ KERNELS \]' "$LOG"/force_*${SANITIZE:+_$SANITIZE}.log | sed 's/.*: //' | tr '+' '\n' | grep -v '^headdim' | sort | uniq -c
[ $fail -eq 0 ] && echo "gpu_instances: every pinned variant ran and passed" || { echo "gpu_instances: FAILED (logs: $LOG)"; exit 1; }
