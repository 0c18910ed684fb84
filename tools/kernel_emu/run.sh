#!/bin/bash
# kernel_emu: builds the CPU emulation of tc32::mlstm_fwd_kernel from the real kernels_cuda/fwd_tf32.cuh and
# common.cuh (two mechanical substitutions: the mma.sync asm -> emu_mma_tf32, ex2.approx -> exp2f) and runs a set
# of cases against the float64 reference. No GPU needed; slow (every CUDA thread is a coroutine): small shapes only.
# Needs g++ and a built libmlstm in build/ (or MLSTM_LIB_DIR; only to satisfy the link of the test utilities).
# Usage (repository root): bash tools/kernel_emu/run.sh [quick]
set -euo pipefail
cd "$(dirname "$0")/../.."
W=build-emu
mkdir -p $W
python3 - <<'PY'
import re
src = open("kernels_cuda/common.cuh").read()
old = 'asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));'
assert src.count(old) == 1
open("build-emu/common.cuh", "w").write(src.replace(old, "y = exp2f(x);"))
src = open("kernels_cuda/fwd_tf32.cuh").read()
new, k = re.subn(r'asm\("mma\.sync\.aligned\.m16n8k8.*?"r"\(b1\)\);', "emu_mma_tf32(c, a, b0, b1);", src, flags=re.S)
assert k == 1
open("build-emu/fwd_tf32.cuh", "w").write(new)
PY
# inputs and reference from the test utilities (tests/util, tests/ref); libmlstm only to satisfy the link
gcc -std=c11 -O2 -fopenmp -I api -I tests/util -I tests/ref -c tests/util/mlstm_case.c -o $W/mlstm_case.o
gcc -std=c11 -O2 -fopenmp -I api -I tests/util -I tests/ref -c tests/util/test_util.c -o $W/test_util.o
gcc -std=c11 -O2 -fopenmp -I api -c tests/ref/mlstm_ref.c -o $W/mlstm_ref.o
g++ -std=c++17 -O2 -ffp-contract=off -w ${EMU_CXXFLAGS:-} -I $W -I tools/kernel_emu -I kernels_cuda -I backends -I api -I tests/ref \
  -I tests/util -I tests tools/kernel_emu/emu_main.cpp $W/mlstm_case.o $W/test_util.o $W/mlstm_ref.o \
  -L "${MLSTM_LIB_DIR:-build}" -Wl,-rpath,"$PWD/${MLSTM_LIB_DIR:-build}" -lmlstm -fopenmp -lm -o $W/emu_fwd_tf32
E=$W/emu_fwd_tf32
fail=0
run() {
  local rc=0
  "$E" "$@" > $W/last.log 2>&1 || rc=$?
  grep -v tiles $W/last.log
  [ $rc = 0 ] || fail=1
}
if [ "${1:-}" = quick ]; then
  run 0 64 129 2 3 std 9
  exit $fail
fi
if [ "${1:-}" = acc ]; then # the 3xTF32 accuracy-sensitive cases
  run 0 64 70 1 2 std 38 0.01 0.5
  run 0 64 64 1 1 std 6
  run 0 64 1000 1 1 std 10
  run 0 128 200 1 1 std 45
  run 0 256 33 1 1 std 22
  exit $fail
fi
# every f32 forward case of the default conformance set that the tensor-core kernel serves (BNSD, D 64/128/256),
# in both modes (args: mode D S B NH gates seed [eps scale])
for mode in 0 1; do
  run $mode 64 1 1 1 std 1
  run $mode 64 2 1 1 normal 2
  run $mode 64 3 1 1 std 3
  run $mode 64 17 1 2 std 4
  run $mode 64 63 1 2 normal 5
  run $mode 64 64 1 1 std 6
  run $mode 64 65 2 1 std 7
  run $mode 64 127 1 1 normal 8
  run $mode 64 129 2 3 std 9
  run $mode 64 1000 1 1 std 10
  run $mode 64 1000 1 1 normal 11
  run $mode 256 129 1 1 normal 23
  run $mode 128 200 1 1 std 45
  run $mode 64 200 1 1 ext_n 29
  run $mode 64 65 2 1 closed 31
  run $mode 64 70 1 2 std 38 0.01 0.5
  run $mode 256 33 1 1 std 22
done
exit $fail
