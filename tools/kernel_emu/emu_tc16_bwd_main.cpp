/* kernel_emu: runs the f16/bf16 tensor-core backward on the CPU as dispatch.cu's bwd_call launches it for a 16-bit call
 * with the default tiles (aux.cuh's mlstm_bwd_prep_kernel<T, VEC>, bwd_tc.cuh's dK/dV and dQ kernels, aux.cuh's
 * mlstm_bwd_gates_kernel), after the f16/bf16 tensor-core forward, and compares all eight outputs with the float64
 * reference as test_conformance does (f16/bf16 tolerances, storage resolution, degenerate-gradient metric, detached
 * mode re-evaluated at the forward's m, n).
 * EMU_REF_FWD=1: the backward gets the reference's h, m, n instead of the emulated forward's. EMU_PRIOR=1 (exact mode):
 * the backward also adds the reference's dq, dk as a chained head-dim slice's prior parts (compared with twice them).
 * Built by run.sh wg16-bwd (EMU_WG16): EMU_DKDV=wg / EMU_DQ=wg|wgp|wgs put the sm_90a kernels in place of the mma.sync
 * ones.
 * Usage: emu_bwd_tc16 exact|detached f16|bf16 D(64|128|256)|DQKxDV S B NH gates seed [eps] [scale]
 * (DQKxDV: DQK <= 512, DV <= 256, multiples of 8: the D = 512 class) */
#define EMU_NO_TF32
#include "fwd/fwd_tc.cuh"
#include "bwd/bwd_tc.cuh"
#include "bwd/aux.cuh"
#include "common/tile_config.h"
#include "emu_grid.h"

#include "emu_tc16.h"

#ifdef EMU_WG16 /* run.sh wg16-bwd: the sm_90a dK/dV and dQ kernels through emu_wgmma.h, chosen by EMU_DKDV / EMU_DQ */
#include "bwd/bwd_wgmma_persistent.cuh"
namespace mlstm { namespace wg { alignas(1024) unsigned char smem_raw[232448]; } }
static mlstm::wg::TmaKV g_dq_tm;
static mlstm::wg::TmaTileKV g_dq_tp;
static bool env_is(const char *name, const char *value)
{
    const char *e = std::getenv(name);
    return e && !std::strcmp(e, value);
}
template <typename T, int D, int BN, int NST, bool MC> static void k_dq_ws(mlstm::KArgs a)
{
    mlstm::wg::mlstm_bwd_dq_ws_kernel<T, D, BN, NST, 1, MC, true>(a, g_dq_tm);
}
template <typename T, int D, int BN, int NST, bool MC> static void k_dq_split(mlstm::KArgs a)
{
    mlstm::wg::mlstm_bwd_dq_ws_kernel<T, D, BN, NST, 2, MC, mlstm::TileCfg<D>::DQ_WG_TMA>(a, g_dq_tm);
}
template <typename T, int D, int BN, int NST, bool MC> static void k_dq_pers(mlstm::KArgs a)
{
    mlstm::wg::mlstm_bwd_dq_persistent_kernel<T, D, BN, NST, MC>(a, g_dq_tp);
}
static mlstm::wg::TmaKV g_dkdv_tm; /* the ping-pong pair's maps of q and dh (MLSTM_DKDV_TMA) */
template <typename T, int D, int BMQ, bool MC> static void k_dkdv_pp(mlstm::KArgs a)
{
    mlstm::wg::mlstm_bwd_dkdv_wgmma_pp_kernel<T, D, BMQ, false, MC, MLSTM_DKDV_TMA != 0>(a, g_dkdv_tm);
}
/* EMU_DQ=wg: the dQ kernel's KS = 1 tiles (K / V through TMA) as run_bwd_dq_wgmma launches them; =wgp: their
 * persistent variant on EMU_SMS CTAs (default 3); =wgs: the small-grid key split (KS = 2, TMA as the class has it);
 * false: none asked for */
template <typename T, int D> static bool launch_dq_wg(const mlstm::KArgs &a)
{
    if constexpr (D > 256) return false;
    else {
    if (!(env_is("EMU_DQ", "wg") || env_is("EMU_DQ", "wgp") || env_is("EMU_DQ", "wgs"))) return false;
    constexpr int BN = mlstm::TileCfg<D>::DQ_WSL_BN, NST = mlstm::TileCfg<D>::DQ_WSL_NST;
    constexpr bool MC = D == mlstm::MASKED_COLS_CLASS;
    if (env_is("EMU_DQ", "wgs")) {
        constexpr int SBN = mlstm::TileCfg<D>::DQ_WS_BN, SNST = mlstm::TileCfg<D>::DQ_WS_NST;
        using QS = mlstm::wg::DqWsCfg<D, SBN, SNST, 2>;
        const int64_t n = (a.S + QS::BM - 1) / QS::BM * a.B * a.NH;
        emu_map_pair(g_dq_tm, a, D, MC, SBN);
        emu::block_start = emu::wg_block_start;
        std::printf("  dq: warp-specialised key split (KS = 2), %lld CTAs, smem %d B\n", (long long)n, QS::SMEM);
        run_grid(k_dq_split<T, D, SBN, SNST, MC>, a, n, QS::NT, mlstm::wg::smem_raw, sizeof mlstm::wg::smem_raw, QS::SMEM);
        return true;
    }
    using QL = mlstm::wg::DqWsCfg<D, BN, NST, 1>;
    const int64_t tiles = (a.S + QL::BM - 1) / QL::BM * a.B * a.NH;
    emu_map_pair(g_dq_tm, a, D, MC, BN);
    emu::block_start = emu::wg_block_start;
    if (env_is("EMU_DQ", "wgp")) {
        using P = mlstm::wg::DqPersCfg<D, BN, NST>;
        const int64_t grid = emu_persistent_setup(g_dq_tp, g_dq_tm, a, a.t[MLSTM_TENSOR_DH], MC ? a.DV : D, QL::BM, tiles);
        std::printf("  dq: persistent, %lld tiles on %lld CTAs, smem %d B\n", (long long)tiles, (long long)grid, P::SMEM);
        run_grid(k_dq_pers<T, D, BN, NST, MC>, a, grid, QL::NT, mlstm::wg::smem_raw, sizeof mlstm::wg::smem_raw, P::SMEM);
    } else {
        std::printf("  dq: warp-specialised KS = 1 tiles (TMA), %lld CTAs, smem %d B\n", (long long)tiles, QL::SMEM);
        run_grid(k_dq_ws<T, D, BN, NST, MC>, a, tiles, QL::NT, mlstm::wg::smem_raw, sizeof mlstm::wg::smem_raw, QL::SMEM);
    }
    return true;
    }
}
/* EMU_DKDV=wg: the sm_90a dK/dV kernel run_bwd_dkdv_wgmma launches (D = 256: the pair, bf16 ping-pong with mbarrier
 * handoffs, f16 in lockstep; else the single warpgroup); false: not asked for */
template <typename T, int D> static bool launch_dkdv_wg(const mlstm::KArgs &a)
{
    if constexpr (D > 256) return false;
    else {
    if (!env_is("EMU_DKDV", "wg")) return false;
    constexpr int BMQ = mlstm::TileCfg<D>::DKDV_WG_BMQ;
    constexpr bool MC = D == mlstm::MASKED_COLS_CLASS;
    emu::block_start = emu::wg_block_start;
    if constexpr (mlstm::TileCfg<D>::DKDV_WG_PAIR) {
        using K = mlstm::wg::DkdvPpCfg<D, BMQ>;
        const int64_t nk = (a.S + K::BNK - 1) / K::BNK * a.B * a.NH;
        std::printf("  dkdv: the warpgroup pair (%s), %lld CTAs\n", mlstm::tc::NeedsRangeGuard<T>::value ? "lockstep" : "ping-pong",
                    (long long)nk);
        if constexpr (mlstm::tc::NeedsRangeGuard<T>::value)
            run_grid(mlstm::wg::mlstm_bwd_dkdv_wgmma_pair_kernel<T, D, BMQ, MC>, a, nk, K::NT, mlstm::wg::smem_raw,
                     sizeof mlstm::wg::smem_raw, mlstm::wg::DkdvPairCfg<D, BMQ>::SMEM);
        else {
            emu_map_pair(g_dkdv_tm, a, D, MC, BMQ, MLSTM_TENSOR_Q, MLSTM_TENSOR_DH);
            run_grid(k_dkdv_pp<T, D, BMQ, MC>, a, nk, K::NT, mlstm::wg::smem_raw, sizeof mlstm::wg::smem_raw, K::SMEM);
        }
    } else {
        using K = mlstm::wg::DkdvCfg<D, BMQ>;
        const int64_t nk = (a.S + K::BNK - 1) / K::BNK * a.B * a.NH;
        std::printf("  dkdv: one warpgroup, %lld CTAs\n", (long long)nk);
        run_grid(mlstm::wg::mlstm_bwd_dkdv_wgmma_kernel<T, D, BMQ>, a, nk, K::NT, mlstm::wg::smem_raw,
                 sizeof mlstm::wg::smem_raw, K::SMEM);
    }
    return true;
    }
}
#else
template <typename T, int D> static bool launch_dq_wg(const mlstm::KArgs &) { return false; }
template <typename T, int D> static bool launch_dkdv_wg(const mlstm::KArgs &) { return false; }
#endif

/* the prep kernel as run_bwd_prep<T> launches it (16-byte vectors where h and dh rows allow them) */
template <typename T> static void run_prep(const mlstm::KArgs &a)
{
    const int64_t n = (a.B * a.NH * a.S + mlstm::PREP_ROWS - 1) / mlstm::PREP_ROWS;
    const mlstm::TArg &h = a.t[MLSTM_TENSOR_H], &dh = a.t[MLSTM_TENSOR_DH];
    const int64_t e = 16 / (int64_t)sizeof(T) - 1;
    const bool vec = (((uintptr_t)h.p | (uintptr_t)dh.p) & 15) == 0 && ((h.sb | h.sh | h.ss | dh.sb | dh.sh | dh.ss | a.DV) & e) == 0;
    if (vec) tc_grid(mlstm::mlstm_bwd_prep_kernel<T, true>, a, n, 256);
    else tc_grid(mlstm::mlstm_bwd_prep_kernel<T, false>, a, n, 256);
}

/* forward (run_fwd_tc<T, D, FWD_DEFAULT>; bwd false) or prep, dK/dV (run_bwd_dkdv_tc<T, D, false>), dQ
 * (run_bwd_dq_tc<T, D>) and the gates kernel (run_bwd_gates) (bwd true), with launch_impl.cuh's grids */
template <typename T, int D> static void launch_all(const mlstm::KArgs &a, bool bwd)
{
    if (!bwd) return launch_tc_fwd<T, D>(a);
    using TC = mlstm::TileCfg<D>;
    using CK = typename TC::Dkdv;
    using K = typename std::conditional<TC::DKDV_ROLES, mlstm::tc::DkdvRolesCfg<D, TC::DVT, CK::BMQ>,
                                        mlstm::tc::DkdvCfg<D, TC::DVT, CK::NW, CK::BMQ, CK::DOUT, CK::PAIR>>::type;
    using CQ = typename TC::Dq;
    using Q = mlstm::tc::DqCfg<D, TC::DVT, CQ::NW, CQ::BN>;
    static_assert(K::SMEM <= (int)sizeof mlstm::tc::smem && Q::SMEM <= (int)sizeof mlstm::tc::smem, "smem");
    static_assert(!CK::PAIR, "the warp-pair dK/dV needs named barriers, which the emulator lacks");
    const int64_t nk = (a.S + K::BNK - 1) / K::BNK * K::NGRID * a.B * a.NH;
    const int64_t nq = (a.S + Q::BM - 1) / Q::BM * a.B * a.NH;
    std::printf("  dkdv (NW, BMQ, DOUT) = (%d, %d, %d)%s, smem %d B, %lld CTAs; dq (NW, BN) = (%d, %d), smem %d B, "
                "%lld CTAs\n", K::NT / 32, CK::BMQ, TC::DKDV_ROLES ? 0 : CK::DOUT, TC::DKDV_ROLES ? " two CTA kinds" : "",
                K::SMEM, (long long)nk, CQ::NW, CQ::BN, Q::SMEM, (long long)nq);
    run_prep<T>(a);
    if (launch_dkdv_wg<T, D>(a)) {
    } else if constexpr (TC::DKDV_ROLES)
        tc_grid(mlstm::tc::mlstm_bwd_dkdv_roles_kernel<T, D, TC::DVT, CK::BMQ, false, TC::MASKS>, a, nk, K::NT, K::SMEM);
    else
        tc_grid(mlstm::tc::mlstm_bwd_dkdv_kernel<T, D, TC::DVT, CK::NW, CK::BMQ, CK::DOUT, false, CK::PAIR, TC::MASKS>, a,
                nk, K::NT, K::SMEM);
    if (!launch_dq_wg<T, D>(a))
        tc_grid(mlstm::tc::mlstm_bwd_dq_kernel<T, D, TC::DVT, CQ::NW, CQ::BN, false, TC::MASKS>, a, nq, Q::NT, Q::SMEM);
    tc_grid(mlstm::mlstm_bwd_gates_kernel, a, a.B * a.NH, mlstm::GATES_NT);
}

/* the class dispatch would run: D = DQK = DV in 64/128/256, else the D = 512 class (DQK <= 512, DV <= 256, masked) */
template <typename T> static void launch_for(const mlstm::KArgs &a, bool bwd)
{
    if (a.DQK == 64 && a.DV == 64) launch_all<T, 64>(a, bwd);
    else if (a.DQK == 128 && a.DV == 128) launch_all<T, 128>(a, bwd);
    else if (a.DQK == 256 && a.DV == 256) launch_all<T, 256>(a, bwd);
    else launch_all<T, 512>(a, bwd);
}

/* the case on storage type T: q, k, v, h, dh, dq, dk, dv in T, the rest f32 */
template <typename T> static bool run_case(mc_case &c)
{
    const auto to_t = mlstm::from_f32<T>;
    const auto to_f = [](T x) { return mlstm::to_f32(x); };
    mc_inputs in;
    mc_outputs ref;
    case_data(c, in, ref);
    double mag_den[MC_OUT_COUNT];
    const int degenerate = mc_degenerate_scales(&c, &in, &ref, mag_den);
    const size_t rows = (size_t)(c.B * c.NH * c.S);
    const auto count = [&](int t) { return rows * (size_t)(EmuLayout::v_side(t) ? c.DV : c.DQK); };
    static const int half_t[] = {MLSTM_TENSOR_Q, MLSTM_TENSOR_K, MLSTM_TENSOR_V, MLSTM_TENSOR_H, MLSTM_TENSOR_DH,
                                 MLSTM_TENSOR_DQ, MLSTM_TENSOR_DK, MLSTM_TENSOR_DV};
    static const int row_t[] = {MLSTM_TENSOR_I, MLSTM_TENSOR_F, MLSTM_TENSOR_M, MLSTM_TENSOR_N, MLSTM_TENSOR_DI,
                                MLSTM_TENSOR_DF};
    const double *src[MLSTM_TENSOR_COUNT] = {in.q, in.k, in.v, in.i, in.f, nullptr, nullptr, nullptr, in.dh};
    std::vector<T> hb[MLSTM_TENSOR_COUNT];
    std::vector<float> fb[MLSTM_TENSOR_COUNT];
    void *ptrs[MLSTM_TENSOR_COUNT];
    for (int t : half_t) { /* inputs storage-rounded already: exact; outputs NaN */
        hb[t].assign(count(t), to_t(NAN));
        if (src[t])
            for (size_t e = 0; e < count(t); ++e) hb[t][e] = to_t((float)src[t][e]);
        ptrs[t] = hb[t].data();
    }
    for (int t : row_t) {
        fb[t].assign(rows, NAN);
        if (src[t])
            for (size_t e = 0; e < rows; ++e) fb[t][e] = (float)src[t][e];
        ptrs[t] = fb[t].data();
    }
    mlstm::KArgs a = layout_args(c, ptrs, EmuLayout{false, c.B, c.NH, c.S, c.DQK, c.DV});
    std::printf("emu %s\n", c.name);
    launch_for<T>(a, false);
    const char *refh = std::getenv("EMU_REF_FWD"); /* 1: the backward gets the reference's h (rounded to T), m, n
                                                    * (f32) instead of the forward's, so that its errors are its own */
    if (refh && refh[0] == '1') {
        for (size_t e = 0; e < count(MLSTM_TENSOR_H); ++e) hb[MLSTM_TENSOR_H][e] = to_t((float)ref.t[MC_OUT_H][e]);
        for (size_t r = 0; r < rows; ++r) {
            fb[MLSTM_TENSOR_M][r] = (float)ref.t[MC_OUT_M][r];
            fb[MLSTM_TENSOR_N][r] = (float)ref.t[MC_OUT_N][r];
            /* the exp(-m) branch: n as expf of the stored m, as the forward writes it (see emu_bwd_main.cpp) */
            if (ref.t[MC_OUT_N][r] == std::exp(-ref.t[MC_OUT_M][r])) fb[MLSTM_TENSOR_N][r] = std::exp(-fb[MLSTM_TENSOR_M][r]);
        }
    }
    /* EMU_PRIOR=1: a chained head-dim slice's sums (KArgs::prior_dq / prior_dk): the backward adds the reference's dq
     * and dk (rounded to T) to its own, so that dq and dk are compared with twice the reference (df, di unchanged) */
    std::vector<T> prior[2];
    const bool chain = std::getenv("EMU_PRIOR") && std::getenv("EMU_PRIOR")[0] == '1';
    if (chain && c.grad_mode != MLSTM_GRAD_EXACT) {
        std::fprintf(stderr, "EMU_PRIOR=1: exact mode only (the detached reference is re-evaluated afterwards)\n");
        std::exit(2);
    }
    if (chain) {
        for (int x = 0; x < 2; ++x) {
            const int o = x ? MC_OUT_DK : MC_OUT_DQ, t = x ? MLSTM_TENSOR_DK : MLSTM_TENSOR_DQ;
            prior[x].resize(count(t));
            for (size_t e = 0; e < count(t); ++e) prior[x][e] = to_t((float)ref.t[o][e]);
            (x ? a.prior_dk : a.prior_dq) = mlstm::TArg{prior[x].data(), a.t[t].sb, a.t[t].sh, a.t[t].ss};
        }
        std::printf("  chained: dq, dk add the reference's\n");
    }
    launch_for<T>(a, true);
    if (chain)
        for (int o : {MC_OUT_DQ, MC_OUT_DK})
            for (size_t e = 0; e < count(o == MC_OUT_DQ ? MLSTM_TENSOR_DQ : MLSTM_TENSOR_DK); ++e) ref.t[o][e] *= 2.0;

    static const int out_tensor[MC_OUT_COUNT] = {MLSTM_TENSOR_H,  MLSTM_TENSOR_M,  MLSTM_TENSOR_N,  MLSTM_TENSOR_DQ,
                                                 MLSTM_TENSOR_DK, MLSTM_TENSOR_DV, MLSTM_TENSOR_DI, MLSTM_TENSOR_DF};
    std::vector<float> out[MC_OUT_COUNT];
    for (int o = 0; o < MC_OUT_COUNT; ++o) {
        const int t = out_tensor[o];
        if (hb[t].empty()) out[o] = fb[t];
        else {
            out[o].resize(count(t));
            for (size_t e = 0; e < count(t); ++e) out[o][e] = to_f(hb[t][e]);
        }
    }
    if (c.grad_mode == MLSTM_GRAD_NORMALIZER_DETACHED) { /* as test_conformance: at the forward's m, n */
        std::vector<double> md(out[MC_OUT_M].begin(), out[MC_OUT_M].end()), nd(out[MC_OUT_N].begin(), out[MC_OUT_N].end());
        mc_reference_bwd_at(&c, &in, c.grad_mode, md.data(), nd.data(), &ref);
    }
    const double gate_allowance = tol_gate_allowance(mc_extreme_gate_magnitude(&c, &in));
    bool ok = true;
    std::printf("  rel L2:");
    for (int o = 0; o < MC_OUT_COUNT; ++o) {
        const bool half = !hb[out_tensor[o]].empty();
        const double res = tol_storage_resolution(half ? c.dtype : MLSTM_DTYPE_F32);
        const double err = rel_l2(out[o].data(), ref.t[o], out[o].size(), false, degenerate ? mag_den[o] : 0.0, res);
        const double t0 = tol_max_rel_l2(c.dtype, o), tol = t0 + gate_allowance;
        ok &= t0 >= 0 && err <= tol;
        std::printf(" %s=%.3e%s%s", mc_output_name(o), err, degenerate && o >= MC_OUT_DQ ? "*" : "",
                    err <= tol ? "" : "!");
    }
    std::printf(" (tol %.1e / grads %.1e)\n  %s\n", tol_max_rel_l2(c.dtype, MC_OUT_H) + gate_allowance,
                tol_max_rel_l2(c.dtype, MC_OUT_DQ) + gate_allowance, ok ? "OK" : "FAILED");
    mc_inputs_free(&in);
    mc_outputs_free(&ref);
    return ok;
}

int main(int argc, char **argv)
{
    mc_case c;
    bool ok = false;
    /* argv[2..] as mode D S ...; the dtype takes the mode's place */
    if (argc < 9 || !parse_tc16_case(argc - 2, argv + 2, c)) {
        std::fprintf(stderr, "usage: emu_bwd_tc16 exact|detached f16|bf16 D|DQKxDV S B NH gates seed [eps] [scale]\n");
        return 2;
    }
    c.bwd = 1;
    c.grad_mode = std::strcmp(argv[1], "detached") ? MLSTM_GRAD_EXACT : MLSTM_GRAD_NORMALIZER_DETACHED;
    if (!with_dtype(argv[2], c, run_case<__half>, run_case<__nv_bfloat16>, ok)) {
        std::fprintf(stderr, "emu_bwd_tc16: dtype %s: f16 or bf16\n", argv[2]);
        return 2;
    }
    return ok ? 0 : 1;
}
