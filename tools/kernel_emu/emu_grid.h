/* kernel_emu: what the emulator targets share: the CTA runner (a kernel over a 1-D grid, CTA after CTA, every CUDA
 * thread a coroutine of cuda_runtime.h, the dynamic shared memory (tc32::smem unless given) filled with garbage before
 * each CTA), the f32 tensor-core forward launch, a conformance case from the command line, and the suite's error
 * metric. Include after fwd_tf32.cuh (or define EMU_NO_TF32: no f32 launch) and tile_config.h. */
#pragma once
#include <vector>
extern "C" {
#include "mlstm_case.h"
#include "tolerances.h"
}

namespace mlstm { namespace tc32 { alignas(128) unsigned char smem[232448]; } }

namespace emu {
inline void (*block_start)() = nullptr; /* called before each CTA (emu_wgmma.h: its barrier state) */
}

static const mlstm::KArgs *g_args;
static void (*g_kernel)(mlstm::KArgs);
static void thread_main()
{
    g_kernel(*g_args);
    emu::thr[emu::cur].state = emu::DONE;
    swapcontext(&emu::thr[emu::cur].ctx, &emu::sched);
}

/* sm: the kernel's dynamic shared memory array (tc32::smem unless given), refilled with garbage before each CTA */
/* smem_used > 0: the kernel's dynamic shared memory size; a block that writes beyond it (into the rest of the
 * emulator's buffer, which a GPU would not have) stops the run */
static void run_grid(void (*kernel)(mlstm::KArgs), const mlstm::KArgs &a, int64_t nblocks, int nt,
                     unsigned char *sm = mlstm::tc32::smem, size_t sm_bytes = sizeof mlstm::tc32::smem,
                     size_t smem_used = 0)
{
    emu::smem_base = sm;
    g_args = &a;
    g_kernel = kernel;
    const size_t STACK = 256 * 1024;
    std::vector<emu::Thr> th(nt);
    for (auto &t : th) t.stack = (char *)std::malloc(STACK);
    emu::thr = th.data();
    emu::nt = nt;
    emu::grid_dim = EmuIdx{(int)nblocks, 1, 1};
    for (int64_t bid = 0; bid < nblocks; ++bid) {
        std::memset(sm, 0xA5, sm_bytes); /* garbage, not zeros */
        if (emu::block_start) emu::block_start();
        emu::block = EmuIdx{(int)bid, 0, 0};
        for (int t = 0; t < nt; ++t) {
            th[t].state = emu::RUN;
            th[t].idx = EmuIdx{t, 0, 0};
            getcontext(&th[t].ctx);
            th[t].ctx.uc_stack.ss_sp = th[t].stack;
            th[t].ctx.uc_stack.ss_size = STACK;
            th[t].ctx.uc_link = nullptr;
            makecontext(&th[t].ctx, thread_main, 0);
        }
        for (;;) {
            bool ran = false;
            for (int t = 0; t < nt; ++t)
                if (th[t].state == emu::RUN) {
                    emu::cur = t;
                    swapcontext(&emu::sched, &th[t].ctx);
                    ran = true;
                }
            int done = 0, wblock = 0;
            for (int t = 0; t < nt; ++t) {
                done += th[t].state == emu::DONE;
                wblock += th[t].state == emu::WAIT_BLOCK;
            }
            if (done == nt) break;
            for (int w = 0; w < nt / 32; ++w) {
                int ww = 0;
                for (int l = 0; l < 32; ++l) ww += th[w * 32 + l].state == emu::WAIT_WARP;
                if (ww == 32)
                    for (int l = 0; l < 32; ++l) th[w * 32 + l].state = emu::RUN;
                else if (ww != 0) {
                    bool any_run = false;
                    for (int l = 0; l < 32; ++l) any_run |= th[w * 32 + l].state == emu::RUN;
                    if (!any_run && !ran) { std::fprintf(stderr, "DEADLOCK: warp %d split at a warp barrier\n", w); std::exit(3); }
                }
            }
            if (wblock == nt)
                for (int t = 0; t < nt; ++t) th[t].state = emu::RUN;
            else if (wblock > 0 && wblock + done == nt) {
                std::fprintf(stderr, "DEADLOCK: %d threads finished while %d wait at __syncthreads\n", done, wblock);
                std::exit(3);
            }
        }
        for (size_t x = smem_used; smem_used && x < sm_bytes; ++x)
            if (sm[x] != 0xA5) {
                std::fprintf(stderr, "SMEM OVERRUN: block %lld wrote byte %zu of shared memory, beyond its %zu\n",
                             (long long)bid, x, smem_used);
                std::exit(3);
            }
    }
    for (auto &t : th) std::free(t.stack);
}

#ifndef EMU_NO_TF32 /* emu_tc16_main.cpp: the f16/bf16 build has no fwd_tf32.cuh */
/* the f32 tensor-core forward of mode MODE over the grid run_fwd_tf32 launches */
template <int D, int MODE>
static void launch_fwd(const mlstm::KArgs &a)
{
    using C = typename mlstm::TileCfg32<D>::Fwd;
    using F = mlstm::tc32::FwdCfg<D, C::MT, C::NW, C::BN>;
    static_assert(F::SMEM <= (int)sizeof mlstm::tc32::smem, "smem");
    const int64_t n = (a.S + F::BM - 1) / F::BM * a.B * a.NH;
    std::printf("  fwd tiles (MT, NW, BN) = (%d, %d, %d), BM %d, smem %d B, %lld CTAs\n", C::MT, C::NW, C::BN, F::BM,
                F::SMEM, (long long)n);
    run_grid(mlstm::tc32::mlstm_fwd_kernel<D, MODE, C::MT, C::NW, C::BN>, a, n, F::NT);
}

/* the forward instance of head dim D (64, 128, 256) and mode (0 3xTF32, 1 TF32) */
static void launch_fwd_for(const mlstm::KArgs &a, int D, int mode)
{
    switch (D * 2 + mode) {
    case 128: launch_fwd<64, 0>(a); break;
    case 129: launch_fwd<64, 1>(a); break;
    case 256: launch_fwd<128, 0>(a); break;
    case 257: launch_fwd<128, 1>(a); break;
    case 512: launch_fwd<256, 0>(a); break;
    case 513: launch_fwd<256, 1>(a); break;
    }
}

#endif

/* An f32 conformance case from argv[0..]: mode(0 3xTF32 | 1 TF32) D S B NH gates seed [eps] [scale]; returns false
 * on a bad argument. */
static bool parse_case(int argc, char **argv, mc_case &c)
{
    if (argc < 7) return false;
    std::memset(&c, 0, sizeof c);
    c.dtype = MLSTM_DTYPE_F32;
    c.math_mode = atoi(argv[0]) ? MLSTM_MATH_TF32 : MLSTM_MATH_DEFAULT;
    c.DQK = c.DV = atoi(argv[1]);
    c.S = atoll(argv[2]);
    c.B = atoll(argv[3]);
    c.NH = atoll(argv[4]);
    c.gates = -1;
    for (int g = 0; g < MC_GATES_COUNT; ++g)
        if (!std::strcmp(argv[5], mc_gates_name(g))) c.gates = g;
    if (c.gates < 0) { std::fprintf(stderr, "unknown gates %s\n", argv[5]); return false; }
    c.seed = (uint64_t)atoll(argv[6]);
    c.eps = argc > 7 ? (float)atof(argv[7]) : 1e-6f;
    c.scale = argc > 8 ? (float)atof(argv[8]) : 0.0f;
    const char *simt = std::getenv("EMU_SIMT"); /* the SIMT kernels take any head dim */
    if (simt && simt[0] == '1') return c.DQK >= 1 && c.DQK <= 512;
    return c.DQK == 64 || c.DQK == 128 || c.DQK == 256;
}

/* Finishes the case, makes its storage-rounded inputs and its float64 reference */
static void case_data(mc_case &c, mc_inputs &in, mc_outputs &ref)
{
    mc_case_finish(&c);
    mc_inputs_make(&c, &in);
    mc_reference(&c, &in, c.grad_mode, &ref);
}

/* Where tensor t's element (b, h, s, d) lives: contiguous (B, NH, S, w) with w = D (1 for i, f, m, n, di, df), or,
 * padded, (B, S, NH, pitch) with pitch = D + 4 (2) so that every stride differs from the contiguous one and the
 * rows stay 16-byte aligned (the tensor-core kernels' predicate); the gaps are canaries. */
struct EmuLayout {
    bool padded;
    int64_t B, NH, S, D;
    int64_t DV = 0; /* width of v, h, dh, dv where it differs from D (q, k, dq, dk); 0: D */
    static bool row_tensor(int t)
    {
        return t == MLSTM_TENSOR_I || t == MLSTM_TENSOR_F || t == MLSTM_TENSOR_M || t == MLSTM_TENSOR_N ||
               t == MLSTM_TENSOR_DI || t == MLSTM_TENSOR_DF;
    }
    static bool v_side(int t)
    {
        return t == MLSTM_TENSOR_V || t == MLSTM_TENSOR_H || t == MLSTM_TENSOR_DH || t == MLSTM_TENSOR_DV;
    }
    int64_t width(int t) const { return row_tensor(t) ? 1 : v_side(t) && DV ? DV : D; }
    int64_t pitch(int t) const { return padded ? width(t) + (row_tensor(t) ? 1 : 4) : width(t); }
    size_t size(int t) const { return (size_t)(B * NH * S * pitch(t)); }
    void strides(int t, int64_t &sb, int64_t &sh, int64_t &ss) const
    {
        const int64_t p = pitch(t);
        if (padded) { sb = S * NH * p; sh = p; ss = NH * p; }
        else { sb = NH * S * p; sh = S * p; ss = p; }
    }
    /* offset of element e of the contiguous (B, NH, S, width) order */
    size_t at(int t, size_t e) const
    {
        const int64_t w = width(t), d = (int64_t)e % w, r = (int64_t)e / w, s = r % S, h = r / S % NH, b = r / S / NH;
        int64_t sb, sh, ss;
        strides(t, sb, sh, ss);
        return (size_t)(b * sb + h * sh + s * ss + d);
    }
};

/* Kernel arguments over the arrays ptrs[tensor] laid out as l says */
static mlstm::KArgs layout_args(const mc_case &c, void *const *ptrs, const EmuLayout &l)
{
    mlstm::KArgs a{};
    for (int t = 0; t < MLSTM_TENSOR_COUNT; ++t) {
        a.t[t].p = ptrs[t];
        l.strides(t, a.t[t].sb, a.t[t].sh, a.t[t].ss);
    }
    a.B = c.B; a.NH = c.NH; a.S = c.S; a.DQK = c.DQK; a.DV = c.DV;
    a.scale = c.scale != 0.0f ? c.scale : (float)(1.0 / std::sqrt((double)c.DQK)); /* as api/validate.c resolves it */
    a.eps = c.eps;
    a.grad_mode = c.grad_mode;
    return a;
}

/* test_conformance's relative L2 error of one output (by magnitude: |x| - |ref|; each element charged max(0, |d| - res),
 * res the output's storage resolution (0: none); den_min: a larger denominator for the degenerate-gradient metric, 0
 * for none; INFINITY on a NaN/Inf) */
static double rel_l2(const float *x, const double *ref, size_t n, bool by_magnitude, double den_min, double res = 0.0)
{
    double num = 0, den = 0;
    for (size_t e = 0; e < n; ++e) {
        if (!std::isfinite(x[e])) return INFINITY;
        double d = std::fabs(by_magnitude ? std::fabs((double)x[e]) - std::fabs(ref[e]) : x[e] - ref[e]);
        d = d > res ? d - res : 0.0;
        num += d * d;
        den += ref[e] * ref[e];
    }
    den = std::sqrt(den);
    if (den_min > den) den = den_min;
    return den > 0 ? std::sqrt(num) / den : std::sqrt(num);
}
