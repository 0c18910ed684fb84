/* kernel_emu: runs the f32 tensor-core backward on the CPU as dispatch.cu launches it (aux.cuh's mlstm_bwd_prep_kernel,
 * bwd_tf32.cuh's dK/dV and dQ kernels, aux.cuh's mlstm_bwd_gates_tiled_kernel), after the f32 tensor-core forward (as
 * the conformance suite's device run does), on a conformance case's inputs, and compares every output with the float64
 * reference as test_conformance does (degenerate-gradient metric, extreme-gate allowance, normalizer-detached mode
 * re-evaluated at the forward's m, n). Prints the errors and an FNV-1a digest of all outputs (run twice: determinism).
 * Usage: emu_bwd_tf32 exact|detached mode(0 3xTF32 | 1 TF32) D S B NH gates seed [eps] [scale] */
#include "bwd_tf32.cuh"
#include "aux.cuh"
#include "tile_config.h"
#include "emu_grid.h"

template <int D, int MODE>
static void launch_bwd(const mlstm::KArgs &a)
{
    using CK = typename mlstm::TileCfg32<D>::Dkdv;
    using CQ = typename mlstm::TileCfg32<D>::Dq;
    using K = mlstm::tc32::DkdvCfg32<D, CK::NW, CK::BMQ, CK::SPLIT>;
    using Q = mlstm::tc32::DqCfg32<D, CQ::NW, CQ::BN>;
    static_assert(K::SMEM <= (int)sizeof mlstm::tc32::smem && Q::SMEM <= (int)sizeof mlstm::tc32::smem, "smem");
    const int64_t nk = (a.S + K::BNK - 1) / K::BNK * K::NCTA * a.B * a.NH;
    const int64_t nq = (a.S + Q::BM - 1) / Q::BM * a.B * a.NH;
    std::printf("  dkdv (NW, BMQ, SPLIT) = (%d, %d, %d), smem %d B, %lld CTAs; dq (NW, BN) = (%d, %d), smem %d B, "
                "%lld CTAs\n", CK::NW, CK::BMQ, (int)CK::SPLIT, K::SMEM, (long long)nk, CQ::NW, CQ::BN, Q::SMEM, (long long)nq);
    run_grid(mlstm::mlstm_bwd_prep_kernel<float>, a, (a.B * a.NH * a.S + 7) / 8, 256);
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
    mc_case_finish(&c);
    const int mode = c.math_mode == MLSTM_MATH_TF32;
    const int D = (int)c.DQK;
    mc_inputs in;
    mc_inputs_make(&c, &in);
    mc_outputs ref;
    mc_reference(&c, &in, c.grad_mode, &ref);
    double mag_den[MC_OUT_COUNT];
    const int degenerate = mc_degenerate_scales(&c, &in, &ref, mag_den);

    const size_t rows = (size_t)(c.B * c.NH * c.S), nq = rows * D;
    std::vector<float> q(in.q, in.q + nq), k(in.k, in.k + nq), v(in.v, in.v + nq), i(in.i, in.i + rows),
        f(in.f, in.f + rows), dh(in.dh, in.dh + nq);
    std::vector<float> h(nq, NAN), m(rows, NAN), n(rows, NAN), dq(nq, NAN), dk(nq, NAN), dv(nq, NAN), di(rows, NAN),
        df(rows, NAN);
    void *ptrs[MLSTM_TENSOR_COUNT] = {q.data(),  k.data(),  v.data(),  i.data(),  f.data(),  h.data(),  m.data(),
                                      n.data(),  dh.data(), dq.data(), dk.data(), dv.data(), di.data(), df.data()};
    const mlstm::KArgs a = contiguous_args(c, ptrs);
    std::printf("emu %s\n", c.name);
    switch (D * 2 + mode) {
    case 128: launch_fwd<64, 0>(a); launch_bwd<64, 0>(a); break;
    case 129: launch_fwd<64, 1>(a); launch_bwd<64, 1>(a); break;
    case 256: launch_fwd<128, 0>(a); launch_bwd<128, 0>(a); break;
    case 257: launch_fwd<128, 1>(a); launch_bwd<128, 1>(a); break;
    case 512: launch_fwd<256, 0>(a); launch_bwd<256, 0>(a); break;
    case 513: launch_fwd<256, 1>(a); launch_bwd<256, 1>(a); break;
    }
    if (c.grad_mode == MLSTM_GRAD_NORMALIZER_DETACHED) { /* as test_conformance: at the forward's m, n */
        std::vector<double> md(m.begin(), m.end()), nd(n.begin(), n.end());
        mc_reference_bwd_at(&c, &in, c.grad_mode, md.data(), nd.data(), &ref);
    }

    const float *dev[MC_OUT_COUNT] = {h.data(), m.data(), n.data(), dq.data(), dk.data(), dv.data(), di.data(), df.data()};
    const size_t cnt[MC_OUT_COUNT] = {nq, rows, rows, nq, nq, nq, rows, rows};
    const double gate_allowance = tol_gate_allowance(mc_extreme_gate_magnitude(&c, &in));
    bool ok = true;
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
    std::printf(" (tol %.1e / grads %.1e)\n  digest %016llx\n  %s\n",
                (mode ? tol_max_rel_l2_tf32(0) : tol_max_rel_l2(MLSTM_DTYPE_F32, 0)) + gate_allowance,
                (mode ? tol_max_rel_l2_tf32(MC_OUT_DQ) : tol_max_rel_l2(MLSTM_DTYPE_F32, MC_OUT_DQ)) + gate_allowance,
                (unsigned long long)digest, ok ? "OK" : "FAILED");
    mc_inputs_free(&in);
    mc_outputs_free(&ref);
    return ok ? 0 : 1;
}
