/* kernel_emu: runs the f32 tensor-core backward on the CPU as dispatch.cu launches it (aux.cuh's mlstm_bwd_prep_kernel,
 * bwd_tf32.cuh's dK/dV and dQ kernels, aux.cuh's mlstm_bwd_gates_tiled_kernel), after the f32 tensor-core forward (as
 * the conformance suite's device run does), on a conformance case's inputs, and compares every output with the float64
 * reference as test_conformance does (degenerate-gradient metric, extreme-gate allowance, normalizer-detached mode
 * re-evaluated at the forward's m, n). Prints the errors and an FNV-1a digest of all outputs (run twice: determinism).
 * Usage: emu_bwd_tf32 exact|detached mode(0 3xTF32 | 1 TF32) D S B NH gates seed [eps] [scale] */
#include "bwd/bwd_tf32.cuh"
#include "simt/simt.cuh"
#include "bwd/aux.cuh"
#include "common/tile_config.h"
#include "emu_grid.h"

namespace mlstm { namespace simt { alignas(16) float sm[SMEM_FLOATS]; } }

/* the backward's prep kernel as run_bwd_prep<float> launches it */
static void run_prep(const mlstm::KArgs &a)
{
    const int64_t n = (a.B * a.NH * a.S + mlstm::PREP_ROWS - 1) / mlstm::PREP_ROWS;
    const mlstm::TArg &h = a.t[MLSTM_TENSOR_H], &dh = a.t[MLSTM_TENSOR_DH];
    const bool vec = (((uintptr_t)h.p | (uintptr_t)dh.p) & 15) == 0 && ((h.sb | h.sh | h.ss | dh.sb | dh.sh | dh.ss | a.DV) & 3) == 0;
    if (vec) run_grid(mlstm::mlstm_bwd_prep_kernel<float, true>, a, n, 256);
    else run_grid(mlstm::mlstm_bwd_prep_kernel<float, false>, a, n, 256);
}

/* EMU_SIMT=1: the SIMT f32 forward, then the SIMT f32 backward between the same prep and gates kernels, as
 * run_fwd_simt<float> / run_bwd_simt<float> launch them (any head dim) */
static bool use_simt()
{
    const char *e = std::getenv("EMU_SIMT");
    return e && e[0] == '1';
}
static void launch_bwd_simt(const mlstm::KArgs &a)
{
    using namespace mlstm::simt;
    const int64_t nt = (a.S + TB - 1) / TB, nch = chunk_groups(a.DQK, G_DKDV) + chunk_groups(a.DV, G_DKDV);
    std::printf("  SIMT backward: %lld + %lld CTAs (%d / %d output chunks per CTA)\n", (long long)(nt * nch * a.B * a.NH),
                (long long)(nt * a.B * a.NH), G_DKDV, G_DQ);
    std::memset(sm, 0xA5, sizeof sm);
    run_prep(a);
    run_grid(mlstm_bwd_dkdv_kernel<float>, a, nt * nch * a.B * a.NH, NT);
    run_grid(mlstm_bwd_dq_kernel<float>, a, nt * a.B * a.NH, NT);
    run_grid(mlstm::mlstm_bwd_gates_tiled_kernel, a, a.B * a.NH, mlstm::GATES_TNT);
}

template <int D, int MODE>
static void launch_bwd(const mlstm::KArgs &a)
{
    if (use_simt()) return launch_bwd_simt(a);
    using CK = typename mlstm::TileCfg32<D>::Dkdv;
    using CQ = typename mlstm::TileCfg32<D>::Dq;
    using K = mlstm::tc32::DkdvCfg32<D, CK::NW, CK::BMQ, CK::SPLIT>;
    using Q = mlstm::tc32::DqCfg32<D, CQ::NW, CQ::BN>;
    static_assert(K::SMEM <= (int)sizeof mlstm::tc32::smem && Q::SMEM <= (int)sizeof mlstm::tc32::smem, "smem");
    const int64_t nk = (a.S + K::BNK - 1) / K::BNK * K::NCTA * a.B * a.NH;
    const int64_t nq = (a.S + Q::BM - 1) / Q::BM * a.B * a.NH;
    std::printf("  dkdv (NW, BMQ, SPLIT) = (%d, %d, %d), smem %d B, %lld CTAs; dq (NW, BN) = (%d, %d), smem %d B, "
                "%lld CTAs\n", CK::NW, CK::BMQ, (int)CK::SPLIT, K::SMEM, (long long)nk, CQ::NW, CQ::BN, Q::SMEM, (long long)nq);
    run_prep(a);
    run_grid(mlstm::tc32::mlstm_bwd_dkdv_kernel<D, MODE, CK::NW, CK::BMQ, CK::SPLIT>, a, nk, K::NT);
    run_grid(mlstm::tc32::mlstm_bwd_dq_kernel<D, MODE, CQ::NW, CQ::BN>, a, nq, Q::NT);
    run_grid(mlstm::mlstm_bwd_gates_tiled_kernel, a, a.B * a.NH, mlstm::GATES_TNT);
}

int main(int argc, char **argv)
{
    mc_case c;
    if (argc < 2 || !parse_case(argc - 2, argv + 2, c)) {
        std::fprintf(stderr, "usage: emu_bwd_tf32 exact|detached mode D S B NH gates seed [eps] [scale]\n");
        return 2;
    }
    c.bwd = 1;
    c.grad_mode = std::strcmp(argv[1], "detached") ? MLSTM_GRAD_EXACT : MLSTM_GRAD_NORMALIZER_DETACHED;
    mc_inputs in;
    mc_outputs ref;
    case_data(c, in, ref);
    const int mode = c.math_mode == MLSTM_MATH_TF32;
    const int D = (int)c.DQK;
    double mag_den[MC_OUT_COUNT];
    const int degenerate = mc_degenerate_scales(&c, &in, &ref, mag_den);

    /* every tensor in its own buffer, laid out as EMU_LAYOUT says (padded: (B, S, NH, D + 4)), canaries in the gaps */
    const char *lay = std::getenv("EMU_LAYOUT");
    const EmuLayout L{lay && !std::strcmp(lay, "padded"), c.B, c.NH, c.S, D};
    const float CANARY = -1234.5f;
    std::vector<float> buf[MLSTM_TENSOR_COUNT];
    void *ptrs[MLSTM_TENSOR_COUNT];
    const double *src[MLSTM_TENSOR_COUNT] = {in.q, in.k, in.v, in.i, in.f, nullptr, nullptr, nullptr, in.dh};
    for (int t = 0; t < MLSTM_TENSOR_COUNT; ++t) {
        buf[t].assign(L.size(t), CANARY);
        const size_t cnt = (size_t)(c.B * c.NH * c.S * L.width(t));
        for (size_t e = 0; e < cnt; ++e) buf[t][L.at(t, e)] = src[t] ? (float)src[t][e] : NAN;
        ptrs[t] = buf[t].data();
    }
    const mlstm::KArgs a = layout_args(c, ptrs, L);
    std::printf("emu %s\n", c.name);
    if (use_simt()) {
        using namespace mlstm::simt;
        const int64_t n = (a.S + TB - 1) / TB * chunk_groups(a.DV, G_FWD) * a.B * a.NH;
        std::printf("  SIMT forward: %lld CTAs\n", (long long)n);
        std::memset(sm, 0xA5, sizeof sm);
        run_grid(mlstm_fwd_kernel<float>, a, n, NT);
    } else {
        launch_fwd_for(a, D, mode);
    }
    const char *refh = std::getenv("EMU_REF_FWD"); /* 1: the backward gets the reference's h, m, n (rounded to f32)
                                                    * instead of the forward's, so its errors are its own */
    if (refh && refh[0] == '1') {
        static const int fwd_t[3] = {MLSTM_TENSOR_H, MLSTM_TENSOR_M, MLSTM_TENSOR_N};
        for (int o = 0; o < 3; ++o)
            for (size_t e = 0; e < (size_t)(c.B * c.NH * c.S * L.width(fwd_t[o])); ++e)
                buf[fwd_t[o]][L.at(fwd_t[o], e)] = (float)ref.t[o][e];
        /* a row on the exp(-m) branch stores n = exp(-m) exactly; the kernels find that branch by comparing n with
         * expf(-m) of the stored f32 m (as the forward writes it), so store that value, not exp(-m) rounded */
        for (size_t r = 0; r < (size_t)(c.B * c.NH * c.S); ++r)
            if (ref.t[MC_OUT_N][r] == std::exp(-ref.t[MC_OUT_M][r]))
                buf[MLSTM_TENSOR_N][L.at(MLSTM_TENSOR_N, r)] = std::exp(-buf[MLSTM_TENSOR_M][L.at(MLSTM_TENSOR_M, r)]);
    }
    if (use_simt()) launch_bwd_simt(a);
    else if (D == 64) mode ? launch_bwd<64, 1>(a) : launch_bwd<64, 0>(a);
    else if (D == 128) mode ? launch_bwd<128, 1>(a) : launch_bwd<128, 0>(a);
    else mode ? launch_bwd<256, 1>(a) : launch_bwd<256, 0>(a);
    /* outputs back in contiguous order; every gap still a canary */
    static const int out_tensor[MC_OUT_COUNT] = {MLSTM_TENSOR_H,  MLSTM_TENSOR_M,  MLSTM_TENSOR_N,  MLSTM_TENSOR_DQ,
                                                 MLSTM_TENSOR_DK, MLSTM_TENSOR_DV, MLSTM_TENSOR_DI, MLSTM_TENSOR_DF};
    std::vector<float> out[MC_OUT_COUNT];
    size_t cnt[MC_OUT_COUNT], canary_bad = 0;
    for (int o = 0; o < MC_OUT_COUNT; ++o) {
        const int t = out_tensor[o];
        cnt[o] = (size_t)(c.B * c.NH * c.S * L.width(t));
        out[o].resize(cnt[o]);
        std::vector<char> used(L.size(t), 0);
        for (size_t e = 0; e < cnt[o]; ++e) {
            out[o][e] = buf[t][L.at(t, e)];
            used[L.at(t, e)] = 1;
        }
        for (size_t x = 0; x < used.size(); ++x) canary_bad += !used[x] && buf[t][x] != CANARY;
    }
    if (c.grad_mode == MLSTM_GRAD_NORMALIZER_DETACHED) { /* as test_conformance: at the forward's m, n */
        std::vector<double> md(out[MC_OUT_M].begin(), out[MC_OUT_M].end()), nd(out[MC_OUT_N].begin(), out[MC_OUT_N].end());
        mc_reference_bwd_at(&c, &in, c.grad_mode, md.data(), nd.data(), &ref);
    }

    const float *dev[MC_OUT_COUNT];
    for (int o = 0; o < MC_OUT_COUNT; ++o) dev[o] = out[o].data();
    const double gate_allowance = tol_gate_allowance(mc_extreme_gate_magnitude(&c, &in));
    bool ok = canary_bad == 0;
    uint64_t digest = 1469598103934665603ull;
    std::printf("  rel L2:");
    for (int o = 0; o < MC_OUT_COUNT; ++o) {
        const bool mag = mode && o == MC_OUT_N;
        const double den_min = degenerate ? mag_den[o] : 0.0;
        const double err = rel_l2(dev[o], ref.t[o], cnt[o], mag, den_min);
        const double t0 = mode ? tol_max_rel_l2_tf32(o) : tol_max_rel_l2(MLSTM_DTYPE_F32, o);
        const double tol = t0 + gate_allowance;
        ok &= t0 >= 0 && err <= tol;
        std::printf(" %s%s%s=%.3e%s", mag ? "|" : "", mc_output_name(o), mag ? "|" : "", err,
                    degenerate && o >= MC_OUT_DQ ? "*" : "");
        for (size_t e = 0; e < cnt[o]; ++e) {
            uint32_t u;
            std::memcpy(&u, &dev[o][e], 4);
            digest = (digest ^ u) * 1099511628211ull;
        }
    }
    std::printf(" (tol %.1e / grads %.1e)%s\n  digest %016llx\n  %s\n",
                (mode ? tol_max_rel_l2_tf32(0) : tol_max_rel_l2(MLSTM_DTYPE_F32, 0)) + gate_allowance,
                (mode ? tol_max_rel_l2_tf32(MC_OUT_DQ) : tol_max_rel_l2(MLSTM_DTYPE_F32, MC_OUT_DQ)) + gate_allowance,
                L.padded ? (canary_bad ? " padded layout: CANARIES OVERWRITTEN" : " padded layout, canaries intact") : "",
                (unsigned long long)digest, ok ? "OK" : "FAILED");
    mc_inputs_free(&in);
    mc_outputs_free(&ref);
    return ok ? 0 : 1;
}
