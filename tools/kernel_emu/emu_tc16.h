/* kernel_emu: what the f16/bf16 tensor-core emulators (emu_tc16_main.cpp: forward; emu_tc16_bwd_main.cpp: forward
 * and backward) share: the kernels' shared memory, the grid runner on it, the forward as run_fwd_tc<T, D, FWD_DEFAULT>
 * launches it, and the storage type named on the command line. Include after fwd_tc.cuh, tile_config.h, emu_grid.h. */
#pragma once
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <vector>

/* the kernels' `extern __shared__ smem[]` (declared inside mlstm::tc) */
namespace mlstm { namespace tc { alignas(128) unsigned char smem[232448]; } }

static void tc_grid(void (*k)(mlstm::KArgs), const mlstm::KArgs &a, int64_t n, int nt, size_t smem_used = 0)
{
    run_grid(k, a, n, nt, mlstm::tc::smem, sizeof mlstm::tc::smem, smem_used);
}

/* the f16/bf16 forward of class D over the grid run_fwd_tc<T, D, FWD_DEFAULT> launches (launch_impl.cuh: scores
 * D wide, V / O tiles TileCfg<D>::DVT wide, masking where the class masks) */
template <typename T, int D> static void launch_tc_fwd(const mlstm::KArgs &a)
{
    using TC = mlstm::TileCfg<D>;
    using C = typename TC::Fwd;
    using F = mlstm::tc::FwdCfg<D, TC::DVT, C::MT, C::NW, C::BN, C::KS>;
    static_assert(F::SMEM <= (int)sizeof mlstm::tc::smem, "smem");
    const int64_t n = (a.S + F::BM - 1) / F::BM * a.B * a.NH;
    std::printf("  fwd class %d/%d tiles (MT, NW, BN, KS) = (%d, %d, %d, %d), BM %d, smem %d B, %lld CTAs\n", D, TC::DVT,
                C::MT, C::NW, C::BN, C::KS, F::BM, F::SMEM, (long long)n);
    tc_grid(mlstm::tc::mlstm_fwd_kernel<T, D, TC::DVT, C::MT, C::NW, C::BN, false, C::KS, TC::MASKS>, a, n, F::NT,
            F::SMEM);
}

/* parse_case (emu_grid.h) over argv[0..argc) (mode slot, D, S, B, NH, gates, seed, ...), where D may also be DQKxDV (the
 * D = 512 class: DQK <= 512, DV <= 256, multiples of 8); false for a malformed case */
static bool parse_tc16_case(int argc, char **argv, mc_case &c)
{
    static char d64[] = "64";
    int dqk = 0, dv = 0;
    const bool pair = argc > 1 && std::sscanf(argv[1], "%dx%d", &dqk, &dv) == 2;
    if (pair) {
        if (dqk < 8 || dqk > 512 || dv < 8 || dv > 256 || dqk % 8 || dv % 8) return false;
        argv[1] = d64; /* parse_case accepts the classes 64/128/256 only */
    }
    if (!parse_case(argc, argv, c)) return false;
    if (pair) {
        c.DQK = dqk;
        c.DV = dv;
    }
    return true;
}

/* runs the case on the storage type named dtype ("f16": run16, "bf16": run_b16; c.dtype set), its result in ok;
 * false for another name */
static bool with_dtype(const char *dtype, mc_case &c, bool (*run16)(mc_case &), bool (*run_b16)(mc_case &), bool &ok)
{
    c.math_mode = MLSTM_MATH_DEFAULT;
    if (!std::strcmp(dtype, "f16")) {
        c.dtype = MLSTM_DTYPE_F16;
        ok = run16(c);
    } else if (!std::strcmp(dtype, "bf16")) {
        c.dtype = MLSTM_DTYPE_BF16;
        ok = run_b16(c);
    } else {
        return false;
    }
    return true;
}

/* A forward case on storage type T (q, k, v, h in T, the rest f32): launch runs the kernels, then h, m, n are compared
 * with the float64 reference as test_conformance does (tolerances.h's f16/bf16 rows, each output's storage resolution) */
template <typename T> static bool run_fwd_case(mc_case &c, void (*launch)(const mlstm::KArgs &))
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
    launch(a);
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

#ifdef EMU_WG16
#include <cuda.h>
#include "emu_wgmma.h"
/* tensor t's TMA map as launch_impl.cuh tma_map makes it (emu_wgmma.h's encoding): (D or the head's own columns, S, NH,
 * B), boxes of 64 columns x rows */
static void emu_map(CUtensorMap *m, const mlstm::TArg &t, const mlstm::KArgs &a, int64_t D, int rows)
{
    const uint64_t dims[4] = {(uint64_t)D, (uint64_t)a.S, (uint64_t)a.NH, (uint64_t)a.B};
    const uint64_t strides[3] = {(uint64_t)t.ss * 2, (uint64_t)t.sh * 2, (uint64_t)t.sb * 2};
    emu_tma_encode(m, t.p, dims, strides, 64, (uint32_t)rows);
}
/* a wg::TmaKV as launch_impl.cuh tma_kv_try makes it: tensor xk's map over DQK columns into k, xv's over DV into v */
template <typename KVMaps>
static void emu_map_pair(KVMaps &kv, const mlstm::KArgs &a, int64_t D, bool MC, int rows, int xk = MLSTM_TENSOR_K,
                         int xv = MLSTM_TENSOR_V)
{
    emu_map(&kv.k, a.t[xk], a, MC ? a.DQK : D, rows);
    emu_map(&kv.v, a.t[xv], a, MC ? a.DV : D, rows);
    kv.on = 1;
}
/* a persistent kernel's maps (a wg::TmaTileKV: tensor x's map of cols columns in boxes of rows rows, and kv's K / V)
 * and its grid: EMU_SMS CTAs (default 3, so that each walks several tiles), at most tiles */
template <typename TileMaps, typename KVMaps>
static int64_t emu_persistent_setup(TileMaps &tp, const KVMaps &kv, const mlstm::KArgs &a, const mlstm::TArg &x,
                                    int64_t cols, int rows, int64_t tiles)
{
    emu_map(&tp.x, x, a, cols, rows);
    tp.k = kv.k;
    tp.v = kv.v;
    tp.on = 1;
    const char *e = std::getenv("EMU_SMS");
    const int64_t sms = e && atoi(e) > 0 ? atoi(e) : 3;
    return tiles < sms ? tiles : sms;
}
#endif
