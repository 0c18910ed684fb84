/* kernel_emu: runs tc32::mlstm_fwd_kernel (kernels_cuda/fwd/fwd_tf32.cuh, compiled for the host with the stand-ins of
 * this folder) on the CPU, CTA by CTA, on the inputs of a conformance case (tests/util: same seeds, same values) and
 * compares h, m, n with the case's float64 reference as test_conformance does (TF32: tolerances.h's TF32 row, n by
 * magnitude). Usage: emu_fwd_tf32 mode(0 3xTF32 | 1 TF32) D S B NH gates(std|normal|ext_u|ext_n|closed) seed
 *                     [eps] [scale] */
#include "fwd/fwd_tf32.cuh"
#include "common/tile_config.h"
#include "emu_grid.h"

int main(int argc, char **argv)
{
    mc_case c;
    if (!parse_case(argc - 1, argv + 1, c)) {
        std::fprintf(stderr, "usage: emu_fwd_tf32 mode D S B NH gates seed [eps] [scale]\n");
        return 2;
    }
    mc_inputs in;
    mc_outputs ref;
    case_data(c, in, ref);
    const int mode = c.math_mode == MLSTM_MATH_TF32;
    const int D = (int)c.DQK;
    const size_t rows = (size_t)(c.B * c.NH * c.S), nq = rows * D;
    std::vector<float> q(in.q, in.q + nq), k(in.k, in.k + nq), v(in.v, in.v + nq), i(in.i, in.i + rows),
        f(in.f, in.f + rows), h(nq, NAN), m(rows, NAN), n(rows, NAN);
    void *ptrs[MLSTM_TENSOR_COUNT] = {q.data(), k.data(), v.data(), i.data(), f.data(), h.data(), m.data(), n.data()};
    const mlstm::KArgs a = layout_args(c, ptrs, EmuLayout{false, c.B, c.NH, c.S, c.DQK});
    std::printf("emu %s\n", c.name);
    launch_fwd_for(a, D, mode);
    const float *dev[3] = {h.data(), m.data(), n.data()};
    const size_t cnt[3] = {nq, rows, rows};
    const double gate_allowance = tol_gate_allowance(mc_extreme_gate_magnitude(&c, &in));
    bool ok = true;
    std::printf("  rel L2:");
    for (int o = 0; o < 3; ++o) {
        const bool mag = mode && o == MC_OUT_N;
        const double err = rel_l2(dev[o], ref.t[o], cnt[o], mag, 0.0);
        const double tol = (mode ? tol_max_rel_l2_tf32(o) : tol_max_rel_l2(MLSTM_DTYPE_F32, o)) + gate_allowance;
        ok &= err <= tol;
        std::printf(" %s%s%s=%.3e (tol %.1e)", mag ? "|" : "", mc_output_name(o), mag ? "|" : "", err, tol);
    }
    std::printf("\n  %s\n", ok ? "OK" : "FAILED");
    mc_inputs_free(&in);
    mc_outputs_free(&ref);
    return ok ? 0 : 1;
}
