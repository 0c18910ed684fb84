/* kernel_emu: runs tc::mlstm_fwd_kernel (kernels_cuda/fwd/fwd_tc.cuh, the f16/bf16 tensor-core forward, with the
 * default tiles run_fwd_tc<T, D, FWD_DEFAULT> launches) on the CPU and compares h, m, n with the float64 reference of
 * the conformance case as test_conformance does (tolerances.h's f16/bf16 rows, storage resolution of each output).
 * Usage: emu_fwd_tc16 dtype(f16|bf16) D(64|128|256) S B NH gates(std|normal|ext_u|ext_n|closed) seed [eps] [scale] */
#define EMU_NO_TF32
#include "fwd/fwd_tc.cuh"
#include "common/tile_config.h"
#include "emu_grid.h"

/* the kernel's `extern __shared__ smem[]` (declared inside mlstm::tc) */
namespace mlstm { namespace tc { alignas(128) unsigned char smem[232448]; } }

/* the f16/bf16 forward of head dim D over the grid run_fwd_tc<T, D, FWD_DEFAULT> launches (launch_impl.cuh) */
template <typename T, int D>
static void launch_tc(const mlstm::KArgs &a)
{
    using C = typename mlstm::TileCfg<D>::Fwd;
    using F = mlstm::tc::FwdCfg<D, C::MT, C::NW, C::BN, C::KS>;
    static_assert(F::SMEM <= (int)sizeof mlstm::tc::smem, "smem");
    const int64_t n = (a.S + F::BM - 1) / F::BM * a.B * a.NH;
    std::printf("  fwd tiles (MT, NW, BN, KS) = (%d, %d, %d, %d), BM %d, smem %d B, %lld CTAs\n", C::MT, C::NW, C::BN,
                C::KS, F::BM, F::SMEM, (long long)n);
    run_grid(mlstm::tc::mlstm_fwd_kernel<T, D, C::MT, C::NW, C::BN, false, C::KS>, a, n, F::NT, mlstm::tc::smem,
             sizeof mlstm::tc::smem);
}

template <typename T> static void launch_tc_for(const mlstm::KArgs &a, int D)
{
    if (D == 64) launch_tc<T, 64>(a);
    else if (D == 128) launch_tc<T, 128>(a);
    else launch_tc<T, 256>(a);
}

/* relative L2 error with each element charged max(0, |x - ref| - res) (test_conformance's check_output) */
static double rel_l2_res(const float *x, const double *ref, size_t n, double res)
{
    double num = 0, den = 0;
    for (size_t e = 0; e < n; ++e) {
        if (!std::isfinite(x[e])) return INFINITY;
        double d = std::fabs(x[e] - ref[e]);
        d = d > res ? d - res : 0.0;
        num += d * d;
        den += ref[e] * ref[e];
    }
    den = std::sqrt(den);
    return den > 0 ? std::sqrt(num) / den : std::sqrt(num);
}

/* the case on storage type T: q, k, v, h in T, the rest f32 */
template <typename T> static bool run_case(mc_case &c, T (*to_t)(float), float (*to_f)(T))
{
    mc_inputs in;
    mc_outputs ref;
    case_data(c, in, ref);
    const int D = (int)c.DQK;
    const size_t rows = (size_t)(c.B * c.NH * c.S), nq = rows * D;
    std::vector<T> q(nq), k(nq), v(nq), h(nq, to_t(NAN));
    for (size_t e = 0; e < nq; ++e) { /* storage-rounded already: exact */
        q[e] = to_t((float)in.q[e]);
        k[e] = to_t((float)in.k[e]);
        v[e] = to_t((float)in.v[e]);
    }
    std::vector<float> i(in.i, in.i + rows), f(in.f, in.f + rows), m(rows, NAN), n(rows, NAN);
    void *ptrs[MLSTM_TENSOR_COUNT] = {q.data(), k.data(), v.data(), i.data(), f.data(), h.data(), m.data(), n.data()};
    const mlstm::KArgs a = layout_args(c, ptrs, EmuLayout{false, c.B, c.NH, c.S, c.DQK});
    std::printf("emu %s\n", c.name);
    launch_tc_for<T>(a, D);
    std::vector<float> hf(nq);
    for (size_t e = 0; e < nq; ++e) hf[e] = to_f(h[e]);
    const float *dev[3] = {hf.data(), m.data(), n.data()};
    const size_t cnt[3] = {nq, rows, rows};
    const double gate_allowance = tol_gate_allowance(mc_extreme_gate_magnitude(&c, &in));
    bool ok = true;
    std::printf("  rel L2:");
    for (int o = 0; o < 3; ++o) {
        const double res = tol_storage_resolution(o == MC_OUT_H ? c.dtype : MLSTM_DTYPE_F32);
        const double err = rel_l2_res(dev[o], ref.t[o], cnt[o], res);
        const double tol = tol_max_rel_l2(c.dtype, o) + gate_allowance;
        ok &= err <= tol;
        std::printf(" %s=%.3e (tol %.1e)", mc_output_name(o), err, tol);
    }
    std::printf("\n  %s\n", ok ? "OK" : "FAILED");
    mc_inputs_free(&in);
    mc_outputs_free(&ref);
    return ok;
}

int main(int argc, char **argv)
{
    mc_case c;
    /* parse_case (emu_grid.h) reads argv[1..] as mode D S ...; the dtype takes the mode's place */
    if (argc < 8 || !parse_case(argc - 1, argv + 1, c) ||
        (std::strcmp(argv[1], "f16") != 0 && std::strcmp(argv[1], "bf16") != 0)) {
        std::fprintf(stderr, "usage: emu_fwd_tc16 f16|bf16 D S B NH gates seed [eps] [scale]\n");
        return 2;
    }
    c.math_mode = MLSTM_MATH_DEFAULT;
    bool ok;
    if (!std::strcmp(argv[1], "f16")) {
        c.dtype = MLSTM_DTYPE_F16;
        ok = run_case<__half>(c, __float2half_rn, __half2float);
    } else {
        c.dtype = MLSTM_DTYPE_BF16;
        ok = run_case<__nv_bfloat16>(c, __float2bfloat16_rn, __bfloat162float);
    }
    return ok ? 0 : 1;
}
