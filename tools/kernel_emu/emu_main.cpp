/* kernel_emu: runs tc32::mlstm_fwd_kernel (kernels_cuda/fwd_tf32.cuh, compiled for the host with the stand-ins of
 * this folder) on the CPU, CTA by CTA, on the inputs of a conformance case (tests/util: same seeds, same values) and
 * compares h, m, n with the case's float64 reference as test_conformance does (TF32: tolerances.h's TF32 row, n by
 * magnitude). Usage: emu_fwd_tf32 mode(0 3xTF32 | 1 TF32) D S B NH gates(std|normal|ext_u|ext_n|closed) seed
 *                     [eps] [scale] */
#include "fwd_tf32.cuh"
#include "tile_config.h"
extern "C" {
#include "mlstm_case.h"
#include "tolerances.h"
}
#include <vector>

namespace mlstm { namespace tc32 { alignas(128) unsigned char smem[232448]; } }

template <int D, int MODE> using Cfg = typename mlstm::TileCfg32<D>::Fwd;


static const mlstm::KArgs *g_args;
static void (*g_kernel)(mlstm::KArgs);
static void thread_main()
{
    g_kernel(*g_args);
    emu::thr[emu::cur].state = emu::DONE;
    swapcontext(&emu::thr[emu::cur].ctx, &emu::sched);
}

static void run_grid(void (*kernel)(mlstm::KArgs), const mlstm::KArgs &a, int64_t nblocks, int nt)
{
    g_args = &a;
    g_kernel = kernel;
    const size_t STACK = 256 * 1024;
    std::vector<emu::Thr> th(nt);
    for (auto &t : th) t.stack = (char *)std::malloc(STACK);
    emu::thr = th.data();
    emu::nt = nt;
    for (int64_t bid = 0; bid < nblocks; ++bid) {
        std::memset(mlstm::tc32::smem, 0xA5, sizeof mlstm::tc32::smem); /* garbage, not zeros */
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
    }
    for (auto &t : th) std::free(t.stack);
}

template <int D, int MODE>
static void launch(const mlstm::KArgs &a)
{
    using C = Cfg<D, MODE>;
    using F = mlstm::tc32::FwdCfg<D, C::MT, C::NW, C::BN>;
    static_assert(F::SMEM <= (int)sizeof mlstm::tc32::smem, "smem");
    const int64_t n = (a.S + F::BM - 1) / F::BM * a.B * a.NH;
    std::printf("  tiles (MT, NW, BN) = (%d, %d, %d), BM %d, smem %d B, %lld CTAs\n", C::MT, C::NW, C::BN, F::BM, F::SMEM,
                (long long)n);
    run_grid(mlstm::tc32::mlstm_fwd_kernel<D, MODE, C::MT, C::NW, C::BN>, a, n, F::NT);
}

int main(int argc, char **argv)
{
    if (argc < 8) {
        std::fprintf(stderr, "usage: emu_fwd_tf32 mode D S B NH gates seed [eps] [scale]\n");
        return 2;
    }
    mc_case c;
    std::memset(&c, 0, sizeof c);
    const int mode = atoi(argv[1]);
    c.dtype = MLSTM_DTYPE_F32;
    c.math_mode = mode ? MLSTM_MATH_TF32 : MLSTM_MATH_DEFAULT;
    c.DQK = c.DV = atoi(argv[2]);
    c.S = atoll(argv[3]);
    c.B = atoll(argv[4]);
    c.NH = atoll(argv[5]);
    c.gates = -1;
    for (int g = 0; g < MC_GATES_COUNT; ++g)
        if (!std::strcmp(argv[6], mc_gates_name(g))) c.gates = g;
    if (c.gates < 0) { std::fprintf(stderr, "unknown gates %s\n", argv[6]); return 2; }
    c.seed = (uint64_t)atoll(argv[7]);
    c.eps = argc > 8 ? (float)atof(argv[8]) : 1e-6f;
    c.scale = argc > 9 ? (float)atof(argv[9]) : 0.0f;
    mc_case_finish(&c);
    const int D = (int)c.DQK;
    const int64_t S = c.S, B = c.B, NH = c.NH;
    mc_inputs in;
    mc_inputs_make(&c, &in);
    mc_outputs ref;
    mc_reference(&c, &in, c.grad_mode, &ref);
    const size_t rows = (size_t)(B * NH * S), nq = rows * D;
    std::vector<float> q(in.q, in.q + nq), k(in.k, in.k + nq), v(in.v, in.v + nq), i(in.i, in.i + rows),
        f(in.f, in.f + rows), h(nq, NAN), m(rows, NAN), n(rows, NAN);
    mlstm::KArgs a{};
    void *ptrs[8] = {q.data(), k.data(), v.data(), i.data(), f.data(), h.data(), m.data(), n.data()};
    for (int t = 0; t < MLSTM_TENSOR_COUNT; ++t) {
        const int64_t d = (t == MLSTM_TENSOR_I || t == MLSTM_TENSOR_F || t == MLSTM_TENSOR_M || t == MLSTM_TENSOR_N) ? 1 : D;
        a.t[t].p = t < 8 ? ptrs[t] : nullptr;
        a.t[t].ss = d;
        a.t[t].sh = S * d;
        a.t[t].sb = NH * S * d;
    }
    a.B = B; a.NH = NH; a.S = S; a.DQK = D; a.DV = D;
    a.scale = c.scale != 0.0f ? c.scale : (float)(1.0 / std::sqrt((double)D)); /* as api/validate.c resolves it */
    a.eps = c.eps;
    std::printf("emu %s\n", c.name);
    switch (D * 2 + mode) {
    case 128: launch<64, 0>(a); break;
    case 129: launch<64, 1>(a); break;
    case 256: launch<128, 0>(a); break;
    case 257: launch<128, 1>(a); break;
    case 512: launch<256, 0>(a); break;
    case 513: launch<256, 1>(a); break;
    default: std::fprintf(stderr, "D must be 64, 128 or 256\n"); return 2;
    }
    const float *dev[3] = {h.data(), m.data(), n.data()};
    const size_t cnt[3] = {nq, rows, rows};
    const double gate_allowance = tol_gate_allowance(mc_extreme_gate_magnitude(&c, &in));
    bool ok = true;
    std::printf("  rel L2:");
    for (int o = 0; o < 3; ++o) {
        double num = 0, den = 0;
        size_t bad = 0;
        const bool mag = mode && o == MC_OUT_N;
        for (size_t e = 0; e < cnt[o]; ++e) {
            const double x = dev[o][e], r = ref.t[o][e];
            bad += !std::isfinite(x);
            const double d = mag ? std::fabs(x) - std::fabs(r) : x - r;
            num += d * d;
            den += r * r;
        }
        const double err = bad ? INFINITY : (den > 0 ? std::sqrt(num / den) : std::sqrt(num));
        const double tol = (mode ? tol_max_rel_l2_tf32(o) : tol_max_rel_l2(MLSTM_DTYPE_F32, o)) + gate_allowance;
        ok &= err <= tol;
        std::printf(" %s%s%s=%.3e (tol %.1e)", mag ? "|" : "", mc_output_name(o), mag ? "|" : "", err, tol);
    }
    std::printf("\n  %s\n", ok ? "OK" : "FAILED");
    mc_inputs_free(&in);
    mc_outputs_free(&ref);
    return ok ? 0 : 1;
}
