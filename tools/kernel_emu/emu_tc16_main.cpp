/* kernel_emu: runs tc::mlstm_fwd_kernel (kernels_cuda/fwd/fwd_tc.cuh, the f16/bf16 tensor-core forward, with the
 * default tiles run_fwd_tc<T, D, FWD_DEFAULT> launches) on the CPU and compares h, m, n with the float64 reference of
 * the conformance case as test_conformance does (tolerances.h's f16/bf16 rows, storage resolution of each output).
 * Usage: emu_fwd_tc16 dtype(f16|bf16) D(64|128|256) S B NH gates(std|normal|ext_u|ext_n|closed) seed [eps] [scale] */
#define EMU_NO_TF32
#include "fwd/fwd_tc.cuh"
#include "common/tile_config.h"
#include "emu_grid.h"

#include "emu_tc16.h"

/* the class dispatch would run: D = DQK = DV in 64/128/256, else the D = 512 class (DQK <= 512, DV <= 256, masked) */
template <typename T> static void launch_tc_for(const mlstm::KArgs &a)
{
    if (a.DQK == 64 && a.DV == 64) launch_tc_fwd<T, 64>(a);
    else if (a.DQK == 128 && a.DV == 128) launch_tc_fwd<T, 128>(a);
    else if (a.DQK == 256 && a.DV == 256) launch_tc_fwd<T, 256>(a);
    else launch_tc_fwd<T, 512>(a);
}

/* the case on storage type T: q, k, v, h in T, the rest f32 */
template <typename T> static bool run_case(mc_case &c)
{
    const auto to_t = mlstm::from_f32<T>;
    const auto to_f = [](T x) { return mlstm::to_f32(x); };
    mc_inputs in;
    mc_outputs ref;
    case_data(c, in, ref);
    const size_t rows = (size_t)(c.B * c.NH * c.S), nq = rows * c.DQK, nv = rows * c.DV;
    std::vector<T> q(nq), k(nq), v(nv), h(nv, to_t(NAN));
    for (size_t e = 0; e < nq; ++e) { /* storage-rounded already: exact */
        q[e] = to_t((float)in.q[e]);
        k[e] = to_t((float)in.k[e]);
    }
    for (size_t e = 0; e < nv; ++e) v[e] = to_t((float)in.v[e]);
    std::vector<float> i(in.i, in.i + rows), f(in.f, in.f + rows), m(rows, NAN), n(rows, NAN);
    void *ptrs[MLSTM_TENSOR_COUNT] = {q.data(), k.data(), v.data(), i.data(), f.data(), h.data(), m.data(), n.data()};
    const mlstm::KArgs a = layout_args(c, ptrs, EmuLayout{false, c.B, c.NH, c.S, c.DQK, c.DV});
    std::printf("emu %s\n", c.name);
    launch_tc_for<T>(a);
    std::vector<float> hf(nv);
    for (size_t e = 0; e < nv; ++e) hf[e] = to_f(h[e]);
    const float *dev[3] = {hf.data(), m.data(), n.data()};
    const size_t cnt[3] = {nv, rows, rows};
    const double gate_allowance = tol_gate_allowance(mc_extreme_gate_magnitude(&c, &in));
    bool ok = true;
    std::printf("  rel L2:");
    for (int o = 0; o < 3; ++o) {
        const double res = tol_storage_resolution(o == MC_OUT_H ? c.dtype : MLSTM_DTYPE_F32);
        const double err = rel_l2(dev[o], ref.t[o], cnt[o], false, 0.0, res);
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
    bool ok = false;
    /* argv[1..] as mode D S ...; the dtype takes the mode's place */
    if (argc < 8 || !parse_tc16_case(argc - 1, argv + 1, c)) {
        std::fprintf(stderr, "usage: emu_fwd_tc16 f16|bf16 D|DQKxDV S B NH gates seed [eps] [scale]\n");
        return 2;
    }
    if (!with_dtype(argv[1], c, run_case<__half>, run_case<__nv_bfloat16>, ok)) {
        std::fprintf(stderr, "emu_fwd_tc16: dtype %s: f16 or bf16\n", argv[1]);
        return 2;
    }
    return ok ? 0 : 1;
}
