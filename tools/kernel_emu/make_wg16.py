#!/usr/bin/env python3
"""kernel_emu: the host copies of the sm_90a building blocks for the wg16 builds (run.sh wg16*): the real
kernels_cuda/common/wgmma.cuh, common.cuh, mma.cuh and bwd/bwd_wgmma.cuh with each asm statement replaced by emu_wgmma.h's function (mechanical
substitutions only, each checked to apply once), and wgmma_ops.cuh (generated asm wrappers) replaced by
emu_wgmma.h's WgmmaSS / WgmmaRS. Usage: make_wg16.py EMU_DIR (writes EMU_DIR/wg16/common/ and wg16/bwd/)."""
import os
import re
import sys

W = sys.argv[1]
os.makedirs(f"{W}/wg16/common", exist_ok=True)


def substitute(src, subs, name):
    for pat, rep in subs:
        src, k = re.subn(pat, lambda _m, r=rep: r, src, flags=re.S)
        assert k == 1, f"{name}: {pat} applied {k} times"
    assert not re.search(r"\basm\s*(volatile\s*)?\(", src), f"{name}: asm left"
    return src


# common.cuh: the copy with ex2.approx already replaced (run.sh), named barriers to emu_named_*
src = open(f"{W}/common/common.cuh").read()
src = src.replace("#pragma once\n", '#pragma once\n#include "emu_wgmma.h"\n', 1)
src = substitute(src, [
    (r'asm volatile\("bar\.sync %0, %1;\\n" ::"r"\(id\), "r"\(n\) : "memory"\);', "emu_named_sync(id, n);"),
    (r'asm volatile\("bar\.arrive %0, %1;\\n" ::"r"\(id\), "r"\(n\) : "memory"\);', "emu_named_arrive(id, n);"),
], "common.cuh")
open(f"{W}/wg16/common/common.cuh", "w").write(src)

src = open("kernels_cuda/common/wgmma.cuh").read()
src = substitute(src, [
    (r'asm volatile\("wgmma\.fence\.sync\.aligned;\\n" ::: "memory"\);', ""),
    (r'asm volatile\("wgmma\.commit_group\.sync\.aligned;\\n" ::: "memory"\);', "emu_wgmma_commit();"),
    (r'asm volatile\("wgmma\.wait_group\.sync\.aligned %0;\\n" ::"n"\(N\) : "memory"\);', "emu_wgmma_wait(N);"),
    (r'asm volatile\("mbarrier\.init\.shared::cta\.b64 .*?\);', "emu_mbar_init(bar, count);"),
    (r'asm volatile\("fence\.mbarrier_init\.release\.cluster;\\n" ::: "memory"\);', ""),
    (r'asm volatile\("mbarrier\.arrive\.shared::cta\.b64 _, .*?\);', "emu_mbar_arrive(bar);"),
    (r'asm volatile\("\{\\n"\s*"\.reg \.pred P1;.*?: "memory"\);', "emu_mbar_wait(bar, parity);"),
    (r'asm volatile\("mbarrier\.arrive\.expect_tx\.shared::cta\.b64 .*?\);', "emu_mbar_expect_tx(bar, bytes);"),
    (r'asm volatile\("cp\.async\.bulk\.tensor\.4d\..*?: "memory"\);', "emu_tma_load_4d(dst, map, c0, c1, c2, c3, bar);"),
    (r'asm volatile\("cp\.async\.mbarrier\.arrive\.noinc\.shared::cta\.b64 .*?\);', "emu_cp_arrive(bar);"),
    (r'asm volatile\("setmaxnreg\.dec\.sync\.aligned\.u32 %0;\\n" ::"n"\(N\)\);', ""),
    (r'asm volatile\("setmaxnreg\.inc\.sync\.aligned\.u32 %0;\\n" ::"n"\(N\)\);', ""),
    (r'asm volatile\("fence\.proxy\.async\.shared::cta;\\n" ::: "memory"\);', ""),
    (r'asm volatile\("mov\.u32 %0, %%cluster_ctarank;\\n" : "=r"\(r\)\);', "r = 0;"),
    (r'asm volatile\("barrier\.cluster\.arrive\.release;\\n" ::: "memory"\);',
     'std::fprintf(stderr, "kernel_emu: clusters are not emulated\\n"); std::abort();'),
    (r'asm volatile\("barrier\.cluster\.wait\.acquire;\\n" ::: "memory"\);',
     'std::fprintf(stderr, "kernel_emu: clusters are not emulated\\n"); std::abort();'),
    (r'asm volatile\("mapa\.shared::cluster\.u32 .*?\);', "r = a + 0 * rank; std::abort();"),
    (r'asm volatile\("cp\.async\.bulk\.shared::cluster\.shared::cta\..*?: "memory"\);',
     "(void)dst; (void)src; (void)bytes; (void)bar; std::abort();"),
    (r'asm volatile\("" : "\+f"\(d\[i\]\)::"memory"\);', "(void)d[i];"),
], "wgmma.cuh")
open(f"{W}/wg16/common/wgmma.cuh", "w").write(src)

# mma.cuh: run.sh's tc16 copy (its asm already emulated), with the cp.async copies deferred to the wait_group or the
# mbarrier arrival that covers them (emu_wgmma.h), as the hardware may land them that late
src = open(f"{W}/tc16/common/mma.cuh").read()
src = substitute(src, [
    (r"emu_cp_async16\(saddr, gmem, n\);", "emu_cp_async16_deferred(saddr, gmem, n);"),
    (r"void cp_async_commit\(\) \{  \}", "void cp_async_commit() { emu_cp_commit(); }"),
    (r"void cp_async_wait\(\) \{  \}", "void cp_async_wait() { emu_cp_wait(N); }"),
], "mma.cuh")
open(f"{W}/wg16/common/mma.cuh", "w").write(src)

# bwd_wgmma.cuh: the dK/dV pair's 256-thread named barrier
os.makedirs(f"{W}/wg16/bwd", exist_ok=True)
src = open("kernels_cuda/bwd/bwd_wgmma.cuh").read()
src = substitute(src, [(r'asm volatile\("bar\.sync 1, 256;" ::: "memory"\);', "emu_named_sync(1, 256);")],
                 "bwd_wgmma.cuh")
open(f"{W}/wg16/bwd/bwd_wgmma.cuh", "w").write(src)

open(f"{W}/wg16/common/wgmma_ops.cuh", "w").write(
    "/* kernel_emu: WgmmaSS / WgmmaRS on the host (emu_wgmma.h), in place of the generated asm wrappers */\n"
    '#pragma once\n#include "emu_wgmma.h"\n')
