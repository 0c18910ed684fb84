#!/bin/bash
# kernel_emu: builds the CPU emulation of the f32 tensor-core kernels from the real kernels_cuda sources (mechanical
# substitutions only: the mma.sync asm -> emu_mma_tf32, ex2.approx -> exp2f, aux.cuh's static __shared__ arrays ->
# static storage) and runs conformance cases against the float64 reference. No GPU needed; slow (every CUDA thread is
# a coroutine): small shapes only. Needs g++ and a built libmlstm in build/ (or MLSTM_LIB_DIR; only to satisfy the
# link of the test utilities).
# Usage (repository root): bash tools/kernel_emu/run.sh [quick | acc | bwd | bwd-quick | bwd-sweep | bwd-det | tc16 |
#   tc16-quick | tc16-bwd | wg16 | wg16-bwd | wg16-quick]
#   (none) the default set's f32 forward cases; bwd: its f32 backward cases (both gradient and math modes);
#   bwd-sweep: more sequence lengths for every head dim (3xTF32);
#   bwd-det: backward cases run twice and in a strided layout, digests compared. EMU_TC_TRUNC=1: truncating
#   tensor-core accumulation; EMU_REF_FWD=1: the backward gets the reference's h, m, n (f32) instead of the emulated
#   forward's, so that its errors are its own (exact mode amplifies the forward's h error through dP - delta);
#   EMU_SIMT=1: the SIMT f32 backward kernels (simt.cuh) instead of the tensor-core ones, for comparison.
# tc16: the f16 and bf16 tensor-core forward (fwd_tc.cuh, mma.sync m16n8k16 through emu_mma16.h) at D 64/128/256,
#   S 1..200, and the D = 512 class (D given as DQKxDV: DQK <= 512, DV <= 256), against the f16/bf16 rows of
#   tolerances.h; tc16-quick: two of those cases.
# wg16: the sm_90a f16/bf16 default-tile forward (fwd_wgmma.cuh, K / V through TMA) and its persistent variant
#   (fwd_wgmma_persistent.cuh, on EMU_SMS = 3 CTAs so that each walks several tiles; also built with its staged
#   epilogue, MLSTM_FWD_PERS_STAGED_EPILOGUE), through emu_wgmma.h (mbarriers,
#   named barriers, TMA boxes, wgmma decoded from the kernels' descriptors; asynchronous operations complete at once,
#   so races that need real concurrency stay unseen: compute-sanitizer on a GPU still has the last word).
# wg16-bwd: the tc16 backward with the sm_90a dK/dV kernels (EMU_DKDV=wg) and dQ kernels (EMU_DQ=wg: the KS = 1
#   tiles; wgp: their persistent variant; wgs: the small-grid key split) in place, built twice: as the defaults, and with the backward's switches
#   flipped (the fragment epilogues: MLSTM_DQ_WG_STAGED_EPILOGUE=0, MLSTM_DKDV_STAGED_EPILOGUE=0; MLSTM_DKDV_SPLIT_PROLOGUE=1, MLSTM_DKDV_TMA=1);
#   EMU_PRIOR=1 cases add a chained slice's prior dq, dk.
# tc16-bwd: the f16/bf16 tensor-core backward (prep, bwd_tc.cuh's dK/dV and dQ with the default tiles, gates) after
#   that forward, exact and detached, D 64/128/256 (and DQKxDV cases of the D = 512 class), S 17/65/129, all eight
#   outputs (emu_bwd_tc16; EMU_REF_FWD=1 as above). Known: bf16 exact D 64 S 65 seed 421 fails df (1.1e-2 > 1e-2),
#   as on a GPU (1.12e-2, H100); with EMU_REF_FWD=1 it is 3.4e-3: the forward's h error reaches di and df through
#   exact mode's delta = dh . h (kernels_cuda/NOTES.md, open items).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${EMU_DIR:-build-emu} # a separate EMU_DIR per concurrent run
mkdir -p $W
LIB=$(realpath -m "${MLSTM_LIB_DIR:-build}") # absolute, for the rpath
EMU_DIR=$W python3 - <<'PY'
import os, re
W = os.environ["EMU_DIR"]
for d in ("common", "fwd", "bwd", "simt"):  # the copies keep kernels_cuda/'s layout
    os.makedirs(f"{W}/{d}", exist_ok=True)
src = open("kernels_cuda/common/common.cuh").read()
old = 'asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));'
assert src.count(old) == 1
open(f"{W}/common/common.cuh", "w").write(src.replace(old, "y = exp2f(x);"))
src = open("kernels_cuda/fwd/fwd_tf32.cuh").read()
new, k = re.subn(r'asm\("mma\.sync\.aligned\.m16n8k8.*?"r"\(b1\)\);', "emu_mma_tf32(c, a, b0, b1);", src, flags=re.S)
assert k == 1
open(f"{W}/fwd/fwd_tf32.cuh", "w").write(new)
open(f"{W}/bwd/bwd_tf32.cuh", "w").write(open("kernels_cuda/bwd/bwd_tf32.cuh").read())  # includes the copy above
# for EMU_SIMT=1: extern smem -> simt::sm (emu_bwd_main.cpp), the rest static
src = open("kernels_cuda/simt/simt.cuh").read()
src = src.replace("extern __shared__ ", "extern ")
new, k = re.subn(r'^(\s+)__shared__ ', r'\1static ', src, flags=re.M)
open(f"{W}/simt/simt.cuh", "w").write(new)
src = open("kernels_cuda/bwd/aux.cuh").read()
new, k = re.subn(r'^(\s+)__shared__ ', r'\1static ', src, flags=re.M)
assert k >= 2
open(f"{W}/bwd/aux.cuh", "w").write(new)
# tc16 (the f16/bf16 forward, fwd_tc.cuh): the real common/mma.cuh with its asm replaced by emu_mma16.h's functions,
# in a folder of its own ahead of the others on that build's include path (the tf32 builds keep
# tools/kernel_emu/common/mma.cuh)
os.makedirs(f"{W}/tc16/common", exist_ok=True)
src = open("kernels_cuda/common/mma.cuh").read()
subs = [
    (r'asm volatile\("cp\.async\.cg\.shared\.global .*?\);', "emu_cp_async16(saddr, gmem, n);"),
    (r'asm volatile\("cp\.async\.commit_group;.*?\);', ""),
    (r'asm volatile\("cp\.async\.wait_group .*?\);', ""),
    (r'asm volatile\("ldmatrix\.sync\.aligned\.m8n8\.x4\.shared\.b16 .*?\);', "emu_ldsm_x4(r0, r1, r2, r3, addr, false);"),
    (r'asm volatile\("ldmatrix\.sync\.aligned\.m8n8\.x4\.trans\.shared\.b16 .*?\);', "emu_ldsm_x4(r0, r1, r2, r3, addr, true);"),
    (r'asm volatile\("mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.f16\.f16\.f32 .*?"r"\(b1\)\);', "emu_mma16816<__half>(c, a, b0, b1);"),
    (r'asm volatile\("mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32 .*?"r"\(b1\)\);', "emu_mma16816<__nv_bfloat16>(c, a, b0, b1);"),
    (r'#include "common/common\.cuh"\n', '#include "common/common.cuh"\n#include "emu_mma16.h"\n'),
]
for pat, rep in subs:
    src, k = re.subn(pat, rep, src, flags=re.S)
    assert k == 1, pat
assert "asm" not in src
open(f"{W}/tc16/common/mma.cuh", "w").write(src)
# the f16/bf16 backward (bwd_tc.cuh): pair_sync's named barrier (bar.sync id, 64) is not emulated; only the warp-pair
# dK/dV variant (D = 256, sm_90 small-grid slot) calls it, which tc16-bwd does not run: it aborts if reached
os.makedirs(f"{W}/tc16/bwd", exist_ok=True)
src = open("kernels_cuda/bwd/bwd_tc.cuh").read()
src, k = re.subn(r'asm volatile\("bar\.sync %0, 64;" ::"r"\(1 \+ pair\) : "memory"\);',
                 lambda _: '(void)pair; std::fprintf(stderr, "kernel_emu: bar.sync id, 64 is not emulated\\n"); std::abort();',
                 src)
assert k == 1 and "asm" not in src
open(f"{W}/tc16/bwd/bwd_tc.cuh", "w").write(src)
PY
# inputs and reference from the test utilities (tests/util, tests/ref); libmlstm only to satisfy the link
gcc -std=c11 -O2 -fopenmp -I api -I tests/util -I tests/ref -c tests/util/mlstm_case.c -o $W/mlstm_case.o
gcc -std=c11 -O2 -fopenmp -I api -I tests/util -I tests/ref -c tests/util/test_util.c -o $W/test_util.o
gcc -std=c11 -O2 -fopenmp -I api -c tests/ref/mlstm_ref.c -o $W/mlstm_ref.o
tc16=0; case "${1:-}" in tc16* | wg16*) tc16=1 ;; esac
wg16=0; case "${1:-}" in wg16*) wg16=1 ;; esac
for t in fwd bwd; do
  [ $tc16 = 1 ] && break # the tc16 modes build only their own binary
  src=tools/kernel_emu/emu_main.cpp; [ $t = bwd ] && src=tools/kernel_emu/emu_bwd_main.cpp
  if [ ! -x $W/emu_${t}_tf32 ] || [ -n "$(find kernels_cuda tools/kernel_emu tests/util -newer $W/emu_${t}_tf32 -name '*.[ch]*')" ]; then
    g++ -std=c++17 -O2 -ffp-contract=off -fno-strict-aliasing -w ${EMU_CXXFLAGS:-} -I $W -I tools/kernel_emu -I kernels_cuda -I backends -I api \
      -I tests/ref -I tests/util -I tests $src $W/mlstm_case.o $W/test_util.o $W/mlstm_ref.o \
      -L "$LIB" -Wl,-rpath,"$LIB" -lmlstm -fopenmp -lm -o $W/emu_${t}_tf32
  fi
done
# the f16/bf16 forward (fwd_tc.cuh): its own include folder first
if [ $tc16 = 1 ] && [ $wg16 = 0 ] && { [ ! -x $W/emu_fwd_tc16 ] || [ -n "$(find kernels_cuda tools/kernel_emu tests/util -newer $W/emu_fwd_tc16 -name '*.[ch]*')" ]; }; then
  g++ -std=c++17 -O2 -ffp-contract=off -fno-strict-aliasing -w ${EMU_CXXFLAGS:-} -I $W/tc16 -I $W -I tools/kernel_emu -I kernels_cuda \
    -I backends -I api -I tests/ref -I tests/util -I tests tools/kernel_emu/emu_tc16_main.cpp $W/mlstm_case.o \
    $W/test_util.o $W/mlstm_ref.o -L "$LIB" -Wl,-rpath,"$LIB" -lmlstm -fopenmp \
    -lm -o $W/emu_fwd_tc16
fi
if [ $tc16 = 1 ] && [ $wg16 = 0 ] && { [ ! -x $W/emu_bwd_tc16 ] || [ -n "$(find kernels_cuda tools/kernel_emu tests/util -newer $W/emu_bwd_tc16 -name '*.[ch]*')" ]; }; then
  g++ -std=c++17 -O2 -ffp-contract=off -fno-strict-aliasing -w ${EMU_CXXFLAGS:-} -I $W/tc16 -I $W -I tools/kernel_emu -I kernels_cuda \
    -I backends -I api -I tests/ref -I tests/util -I tests tools/kernel_emu/emu_tc16_bwd_main.cpp $W/mlstm_case.o \
    $W/test_util.o $W/mlstm_ref.o -L "$LIB" -Wl,-rpath,"$LIB" -lmlstm -fopenmp \
    -lm -o $W/emu_bwd_tc16
fi
# the sm_90a kernels (wg16 modes): emu_wgmma.h in place of their asm (make_wg16.py), their folder first
WG_SRC="-DEMU_WG16 -D__CUDA_ARCH_FEAT_SM90_ALL=1 -I $W/wg16 -I $W/tc16 -I $W -I tools/kernel_emu -I kernels_cuda -I backends -I api -I tests/ref -I tests/util -I tests"
wg_build() { # main.cpp binary [extra flags]
  if [ ! -x $W/$2 ] || [ -n "$(find kernels_cuda tools/kernel_emu tests/util -newer $W/$2 -name '*.[ch]*' -o -newer $W/$2 -name '*.py')" ]; then
    g++ -std=c++17 -O2 -ffp-contract=off -fno-strict-aliasing -w ${EMU_CXXFLAGS:-} ${3:-} $WG_SRC tools/kernel_emu/$1 $W/mlstm_case.o \
      $W/test_util.o $W/mlstm_ref.o -L "$LIB" -Wl,-rpath,"$LIB" -lmlstm -fopenmp -lm -o $W/$2 || rm -f $W/$2
  fi
}
if [ $wg16 = 1 ]; then
  python3 tools/kernel_emu/make_wg16.py $W
  wg_build emu_wg16_main.cpp emu_fwd_wg16 &
  [ "${1:-}" = wg16 ] && wg_build emu_wg16_main.cpp emu_fwd_wg16_var "-DMLSTM_FWD_PERS_STAGED_EPILOGUE=1" &
  wg_build emu_tc16_bwd_main.cpp emu_bwd_wg16 &
  [ "${1:-}" = wg16-quick ] || wg_build emu_tc16_bwd_main.cpp emu_bwd_wg16_var \
    "-DMLSTM_DQ_WG_STAGED_EPILOGUE=0 -DMLSTM_DKDV_STAGED_EPILOGUE=0 -DMLSTM_DKDV_SPLIT_PROLOGUE=1 -DMLSTM_DKDV_TMA=1" &
  wait
  for b in emu_fwd_wg16 emu_bwd_wg16; do [ -x $W/$b ] || { echo "kernel_emu: $b did not build"; exit 1; }; done
fi
fail=0
run() {
  local rc=0
  "$E" "$@" > $W/last.log 2>&1 || rc=$?
  grep -v tiles $W/last.log
  [ $rc = 0 ] || fail=1
}
E=$W/emu_fwd_tf32
case "${1:-}" in
tc16) # the f16/bf16 tensor-core forward (fwd_tc.cuh, the default tiles) against the f16/bf16 tolerances
  # (args: dtype D S B NH gates seed [eps scale])
  E=$W/emu_fwd_tc16
  seed=300
  for dt in f16 bf16; do
    for D in 64 128 256; do
      for S in 1 17 65 129 200; do
        seed=$((seed + 1))
        gates=std; [ $((seed % 2)) = 0 ] && gates=normal
        nh=1; [ $S -le 65 ] && nh=2
        run $dt $D $S 1 $nh $gates $seed
      done
    done
  done
  # the gate regimes of the default set (closed: f16 h below its subnormal range; extreme: the f16 range guard),
  # eps/scale, a longer sequence
  for dt in f16 bf16; do
    run $dt 64 65 2 1 closed 31
    run $dt 64 200 1 1 ext_n 29
    run $dt 128 129 1 1 ext_u 41
    run $dt 64 70 1 2 std 38 0.01 0.5
    run $dt 256 1000 1 1 std 10
  done
  # the D = 512 class (scores 512 wide, 256-column V tiles, masked columns): full and narrower heads
  for dt in f16 bf16; do
    run $dt 512x256 65 1 1 std 11
    run $dt 512x256 129 1 1 normal 12
    run $dt 320x200 100 1 1 std 13
    run $dt 264x64 33 1 2 std 14
    run $dt 512x256 70 1 1 ext_n 16
  done
  exit $fail ;;
tc16-bwd) # the f16/bf16 tensor-core backward (prep, bwd_tc.cuh dK/dV and dQ, gates; default tiles) after the tc16
  # forward, all eight outputs against the f16/bf16 tolerances (args: grad dtype D S B NH gates seed)
  E=$W/emu_bwd_tc16
  seed=400
  for dt in f16 bf16; do
    for D in 64 128 256; do
      for S in 17 65 129; do
        for g in exact detached; do
          seed=$((seed + 1))
          gates=std; [ $((seed % 2)) = 0 ] && gates=normal
          nh=1; [ $S -le 17 ] && nh=2
          run $g $dt $D $S 1 $nh $gates $seed
        done
      done
    done
  done
  # the D = 512 class (dK/dV in 128-column CTAs, dQ in two 256-column halves; DQK x DV, masked where narrower)
  for dt in f16 bf16; do
    run exact $dt 512x256 65 1 1 std 11
    run detached $dt 512x256 33 1 2 normal 12
    run exact $dt 320x200 100 1 1 normal 22
    run detached $dt 264x64 33 1 2 std 23
    run exact $dt 512x256 200 1 1 closed 31  # closed input gates: the f16 range guard's tiny rows
    run exact $dt 512x256 130 1 1 ext_n 32   # gates far out: the guard's huge rows
  done
  exit $fail ;;
wg16) # the sm_90a forward, default kernel and persistent variant (args: kernel dtype D S B NH gates seed [eps scale])
  E=$W/emu_fwd_wg16
  seed=500
  for dt in f16 bf16; do
    for D in 64 128 256; do
      for S in 1 65 300; do
        for k in default persistent; do
          seed=$((seed + 1))
          gates=std; [ $((seed % 2)) = 0 ] && gates=normal
          run $k $dt $D $S 2 2 $gates $seed
        done
      done
    done
  done
  for k in default persistent; do
    run $k f16 64 200 1 2 closed 31  # the f16 range guard's tiny rows
    run $k f16 128 129 1 1 ext_u 41  # and its huge ones
    run $k bf16 64 70 1 2 std 38 0.01 0.5
  done
  EMU_SMS=1 run persistent bf16 128 700 1 2 std 44 # one CTA walks every tile
  for D in 64 128 256; do run overlap bf16 $D 300 1 2 std $((48 + D)); done # the overlapped forward (OV, bf16)
  for k in default persistent; do # masking instances (narrower heads, maps over the heads' own columns)
    run $k bf16 96x96 150 1 2 std 45
    run $k f16 200x136 130 1 1 normal 46
    run $k bf16 256x200 200 1 1 std 47
  done
  E=$W/emu_fwd_wg16_var # the persistent forward with its staged epilogue (MLSTM_FWD_PERS_STAGED_EPILOGUE)
  [ -x $E ] || { echo "kernel_emu: emu_fwd_wg16_var did not build"; exit 1; }
  seed=560
  for dt in f16 bf16; do
    for D in 64 128 256; do
      seed=$((seed + 1))
      run persistent $dt $D 300 2 2 std $seed
    done
  done
  run persistent f16 64 200 1 2 closed 31
  EMU_SMS=1 run persistent bf16 128 700 1 2 std 44
  run persistent f16 200x136 130 1 1 normal 46
  run persistent bf16 256x200 200 1 1 std 47
  exit $fail ;;
wg16-quick) # a few wg16 and wg16-bwd cases (CI: tools/run_tests.sh)
  E=$W/emu_fwd_wg16
  run persistent bf16 256 300 1 2 std 81
  run default f16 128 200 1 2 normal 82
  run overlap bf16 64 300 1 1 std 83
  run persistent f16 200x136 130 1 1 normal 84
  E=$W/emu_bwd_wg16
  EMU_DKDV=wg EMU_DQ=wg run exact bf16 256 130 1 1 std 85
  EMU_DKDV=wg EMU_DQ=wgp run detached f16 256 100 1 1 normal 86
  EMU_PRIOR=1 EMU_DQ=wgp run exact bf16 128 200 1 1 std 87
  exit $fail ;;
wg16-bwd) # the backward with the sm_90a dK/dV and dQ kernels, as the defaults and with the switches flipped (args: grad dtype D S B NH
  # gates seed)
  seed=600
  for E in $W/emu_bwd_wg16 $W/emu_bwd_wg16_var; do
    for dt in f16 bf16; do
      for D in 64 128 256; do
        for S in 65 200; do
          seed=$((seed + 1))
          gates=std; [ $((seed % 2)) = 0 ] && gates=normal
          g=exact; [ $((seed % 3)) = 0 ] && g=detached
          EMU_DKDV=wg EMU_DQ=wg run $g $dt $D $S 1 2 $gates $seed
          EMU_DQ=wgp run $g $dt $D $S 2 1 $gates $seed
          EMU_DQ=wgs run $g $dt $D $S 1 1 $gates $seed
        done
      done
      EMU_PRIOR=1 EMU_DKDV=wg EMU_DQ=wg run exact $dt 256 130 1 1 std 71 # a chained slice's prior parts
      EMU_PRIOR=1 EMU_DQ=wgp run exact $dt 128 200 1 1 normal 72
    done
  done
  exit $fail ;;
tc16-quick)
  E=$W/emu_fwd_tc16
  run f16 64 129 2 1 std 9
  run bf16 64 65 1 2 normal 7
  exit $fail ;;
quick)
  run 0 64 129 2 3 std 9
  exit $fail ;;
acc) # the 3xTF32 accuracy-sensitive cases
  run 0 64 70 1 2 std 38 0.01 0.5
  run 0 64 64 1 1 std 6
  run 0 64 1000 1 1 std 10
  run 0 128 200 1 1 std 45
  run 0 256 33 1 1 std 22
  exit $fail ;;
bwd-quick)
  E=$W/emu_bwd_tf32
  run exact 0 64 129 2 3 std 9
  run detached 0 64 65 2 1 std 7
  exit $fail ;;
bwd)
  # every f32 backward case of the default conformance set that the tensor-core backward serves (DQK = DV in 64/128/256;
  # layouts as BNSD), in both math modes (args: grad mode D S B NH gates seed [eps scale]), plus D = 128 shapes
  # (the default set has no f32 D = 128 backward case)
  E=$W/emu_bwd_tf32
  for mode in 0 1; do
    for g in exact detached; do
      run $g $mode 64 1 1 1 std 1
      run $g $mode 64 2 1 1 normal 2
      run $g $mode 64 3 1 1 std 3
      run $g $mode 64 17 1 2 std 4
      run $g $mode 64 63 1 2 normal 5
      run $g $mode 64 64 1 1 std 6
      run $g $mode 64 65 2 1 std 7
      run $g $mode 64 127 1 1 normal 8
      run $g $mode 64 129 2 3 std 9
      run $g $mode 64 1000 1 1 std 10
      run $g $mode 64 200 1 1 ext_n 29
      run $g $mode 64 65 2 1 closed 31
      run $g $mode 64 65 2 2 normal 33
      run $g $mode 64 17 1 3 std 34
      run $g $mode 64 70 1 2 std 38 0.01 0.5
      run $g $mode 256 33 1 1 std 22
      run $g $mode 256 129 1 1 normal 23
      run $g $mode 128 200 1 1 std 45
      run $g $mode 128 130 1 1 normal 46
    done
    run exact $mode 64 2048 1 1 std 12
  done
  exit $fail ;;
bwd-sweep) # more lengths around the tile sizes (16/32-row steps, 64-row gate blocks), every head dim, 3xTF32
  E=$W/emu_bwd_tf32
  seed=200
  for D in 64 128 256; do
    for S in 5 31 33 95 97 160 191; do
      for g in exact detached; do
        seed=$((seed + 1))
        gates=std; [ $((seed % 2)) = 0 ] && gates=normal
        run $g 0 $D $S 1 2 $gates $seed
      done
    done
  done
  exit $fail ;;
bwd-det) # determinism: the same case twice, digests equal; and the strided layout (EMU_LAYOUT=padded: (B, S, NH,
  # D + 4) rows, gaps checked) must pass and give the same digest as the contiguous one
  E=$W/emu_bwd_tf32
  for args in "exact 0 64 129 2 3 std 9" "detached 0 128 130 1 2 normal 46" "exact 1 256 33 2 1 std 22" \
              "exact 0 256 70 1 2 normal 47" "detached 1 64 65 2 2 normal 33"; do
    d1=$($E $args | grep digest); d2=$($E $args | grep digest)
    r=0; EMU_LAYOUT=padded $E $args > $W/last.log 2>&1 || r=1
    d3=$(grep digest $W/last.log)
    echo "$args: $d1 / $d2 / padded$d3 $(grep -o 'canaries [a-z]*' $W/last.log) rc=$r"
    [ "$d1" = "$d2" ] && [ "$d1" = "$d3" ] && [ $r = 0 ] || fail=1
  done
  exit $fail ;;
esac
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
