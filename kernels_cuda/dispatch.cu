/* libmlstm CUDA kernels: dispatch from mlstm_params to a compiled instance (dtype x head dim x path), the
 * kernel-attribute setup, and the C entry points of mlstm_cuda_kernels.h. Compiles no kernel body: the
 * instances live in inst/ (one per file). */
#include <stdint.h>
#include <stdlib.h>
#include "launch.h"
#include <type_traits>
#include "tile_config.h"
#include "mlstm_cuda_kernels.h"
#include "head_dims.h"

namespace mlstm {
PFN_cuTensorMapEncodeTiled_v12000 g_tma_encode = nullptr; /* launch.h */
namespace {

KArgs make_args(const mlstm_params *p)
{
    KArgs a;
    const size_t esz = p->dtype == MLSTM_DTYPE_F32 ? 4 : 2;
    for (int x = 0; x < MLSTM_TENSOR_COUNT; ++x) {
        const mlstm_tensor_arg &t = p->t[x];
        const bool f32 = x == MLSTM_TENSOR_I || x == MLSTM_TENSOR_F || x == MLSTM_TENSOR_M ||
                         x == MLSTM_TENSOR_N || x == MLSTM_TENSOR_DI || x == MLSTM_TENSOR_DF;
        const size_t sz = f32 ? 4 : esz;
        a.t[x].p = t.mem ? (void *)((char *)t.mem + t.offset * sz) : nullptr;
        a.t[x].sb = t.stride_b;
        a.t[x].sh = t.stride_h;
        a.t[x].ss = t.stride_s;
    }
    a.B = p->batch;
    a.NH = p->heads;
    a.S = p->seq_len;
    a.DQK = p->dqk;
    a.DV = p->dv;
    a.scale = p->scale;
    a.eps = p->eps;
    a.grad_mode = p->grad_mode;
    return a;
}

/* 16-byte aligned rows (base address, and every stride a multiple of elems elements = 16 bytes) for every tensor the
 * tensor-core kernels touch with cp.async / vector stores: forward q, k, v, h; backward q, k, v, dh, dq, dk, dv */
bool rows_aligned(const KArgs &a, bool backward, int elems)
{
    static const int fwd_t[] = {MLSTM_TENSOR_Q, MLSTM_TENSOR_K, MLSTM_TENSOR_V, MLSTM_TENSOR_H};
    static const int bwd_t[] = {MLSTM_TENSOR_Q,  MLSTM_TENSOR_K,  MLSTM_TENSOR_V, MLSTM_TENSOR_DH,
                                MLSTM_TENSOR_DQ, MLSTM_TENSOR_DK, MLSTM_TENSOR_DV};
    const int *list = backward ? bwd_t : fwd_t;
    const int n = backward ? 7 : 4;
    const int64_t m = elems - 1;
    for (int i = 0; i < n; ++i) {
        const TArg &t = a.t[list[i]];
        if (((uintptr_t)t.p & 15) != 0) return false;
        if ((t.sb & m) != 0 || (t.sh & m) != 0 || (t.ss & m) != 0) return false;
    }
    return true;
}
/* the 2-byte tensor-core path */
bool tc_aligned(const KArgs &a, bool backward) { return rows_aligned(a, backward, 8); }

/* Tensor-core instances whose shared-memory request the device accepted at setup, indexed
 * [backward][dtype f16=0 / bf16=1][D 64/128/256 -> 0/1/2]. A device with less shared memory per block
 * (e.g. sm_86: 99 KB) loses the large configurations and falls back to the SIMT path instead of failing. */
bool g_tc_ok[2][2][3];

int dim_index(int64_t d) { return d == 64 ? 0 : d == 128 ? 1 : d == 256 ? 2 : -1; }
/* same for the small-grid variants (a refused one falls back to the default tiles) and the key-split forward
 * ([dtype][D]; a refused one falls back to the small tiles) */
bool g_tc_small_ok[2][2][3];
bool g_tc_split_ok[2][3];
/* small-grid policy: -1 auto (default grid below MLSTM_SMALL_CTAS_PER_SM CTAs per SM), 0 never, 1 always
 * (env MLSTM_CUDA_SMALL_TILES=0/1/auto, read at setup; unset: MLSTM_SMALL_TILES_DEFAULT), and the SM count */
int g_small_mode = -1;
int g_sms = 132;

bool use_small(int64_t ctas_default)
{
    if (g_small_mode >= 0) return g_small_mode == 1;
    return ctas_default < (int64_t)MLSTM_SMALL_CTAS_PER_SM * g_sms;
}

/* forward tile variant: the small tiles when the default grid is below MLSTM_SMALL_CTAS_PER_SM CTAs per SM, and
 * the key split instead when even the small tiles' grid is below MLSTM_SPLIT_CTAS_PER_SM (auto mode only) */
template <int D> int fwd_variant(const KArgs &a, int t)
{
    using C = typename TileCfg<D>::Fwd;
    using CS = typename TileCfg<D>::FwdS;
    const int di = dim_index(D);
    if (!g_tc_small_ok[0][t][di] || !use_small((a.S + C::BM - 1) / C::BM * a.B * a.NH)) return FWD_DEFAULT;
    if (g_small_mode < 0 && g_tc_split_ok[t][di] &&
        (a.S + CS::BM - 1) / CS::BM * a.B * a.NH < (int64_t)MLSTM_SPLIT_CTAS_PER_SM * g_sms)
        return FWD_SPLIT;
    return FWD_SMALL;
}
/* the alternative dK/dV tiles: by grid size (D = 64/128), or whenever available unless the env variable says
 * never (D = 256: the sm_90 8-warp variant, tile_config.h) */
template <int D> bool bwd_small(const KArgs &a, int t)
{
    using C = typename TileCfg<D>::Dkdv;
    constexpr int BNK = 16 * C::NW;
    if (!TileCfg<D>::BWD_SMALL || !g_tc_small_ok[1][t][dim_index(D)]) return false;
    if (TileCfg<D>::BWD_ALT_ALWAYS) return g_small_mode != 0;
    return use_small((a.S + BNK - 1) / BNK * (D / C::DOUT) * a.B * a.NH);
}

/* sm_90a warpgroup-MMA forward (fwd_wgmma.cuh): instances the device accepted ([dtype][D]; only on compute
 * capability 9.0 with a build that includes sm_90a, MLSTM_HAVE_SM90A), and the policy: -1 auto, 0 never, 1 whenever
 * eligible (env MLSTM_CUDA_WGMMA, unset: MLSTM_WGMMA_DEFAULT) */
bool g_wg_ok[2][3];
bool g_wgs_ok[2][3]; /* the key-split forward, [dtype][D] */
bool g_wgq_ok[2][3]; /* the dQ kernel (bwd_wgmma.cuh), [dtype][D] */
bool g_wgk_ok[2][3]; /* the dK/dV kernel (bwd_wgmma.cuh), [dtype][D] */
int g_wg_mode = -1;

/* the key-split wgmma forward: when its default grid has fewer CTAs than FWD_WG_SPLIT_PCT percent of the SMs (or always /
 * never under MLSTM_CUDA_SMALL_TILES=1 / 0) */
template <int D> bool use_wgmma_split(const KArgs &a, int t)
{
    if (!g_wgs_ok[t][dim_index(D)] || g_small_mode == 0) return false;
    if (TileCfg<D>::FwdWgK::CL > 1) { /* the cluster variant loads K/V through TMA */
        cuuint64_t dims[4], strides[3];
        if (!tma_shape(a.t[MLSTM_TENSOR_K], a, D, dims, strides) || !tma_shape(a.t[MLSTM_TENSOR_V], a, D, dims, strides))
            return false;
    }
    if (g_small_mode == 1) return true;
    /* default tiles: 128 rows */
    return (a.S + 127) / 128 * a.B * a.NH * 100 < (int64_t)TileCfg<D>::FWD_WG_SPLIT_PCT * g_sms;
}

/* auto and 1 alike: wherever the instance is available (measured faster at every shape, bench/RESULTS.md
 * 2026-11-26 03:27) */
template <int D> bool use_wgmma(int t) { return g_wg_ok[t][dim_index(D)] && g_wg_mode != 0; }

/* the sm_90a f32 forward on split f16 wgmma (fwd_wgmma_f32.cuh), [D 64/128 -> 0/1]: the device accepted it; used for
 * the default f32 math wherever the tf32 forward would run, unless MLSTM_CUDA_WGMMA=0 */
bool g_wgf_ok[2];
bool g_wgfb_ok[2]; /* its backward (bwd_wgmma_f32.cuh) */

/* f32 tensor-core forward (fwd_tf32.cuh) and backward (bwd_tf32.cuh) instances the device accepted at setup,
 * [backward][mode 3xTF32=0 / TF32=1][D 64/128/256 -> 0/1/2], and whether that path is on at all (env
 * MLSTM_CUDA_F32_TC=0/1, unset: MLSTM_F32_TC_DEFAULT) */
bool g_tc32_ok[2][2][3];
bool g_f32_tc = false;

/* the f32 tensor-core kernels */
bool tc32_aligned(const KArgs &a, bool backward) { return rows_aligned(a, backward, 4); }

int tc32_mode(const mlstm_params *p) { return p->math_mode == MLSTM_MATH_TF32 ? 1 : 0; }

/* head dim served by the f32 tensor-core forward (or backward), or 0 */
int tc32_dim(const mlstm_params *p, const KArgs &a, bool backward = false)
{
    if (p->dtype != MLSTM_DTYPE_F32 || !g_f32_tc || p->dqk != p->dv) return 0;
    const int di = dim_index(p->dqk);
    if (di < 0 || !g_tc32_ok[backward ? 1 : 0][tc32_mode(p)][di]) return 0;
    if (!tc32_aligned(a, backward)) return 0;
    return (int)p->dqk;
}

/* head dim served by the tensor-core path, or 0 */
int tc_dim(const mlstm_params *p, const KArgs &a, bool backward)
{
    if (p->dtype != MLSTM_DTYPE_F16 && p->dtype != MLSTM_DTYPE_BF16) return 0;
    if (p->dqk != p->dv) return 0;
    const int di = dim_index(p->dqk);
    if (di < 0 || !g_tc_ok[backward ? 1 : 0][p->dtype == MLSTM_DTYPE_BF16 ? 1 : 0][di]) return 0;
    if (!tc_aligned(a, backward)) return 0;
    return (int)p->dqk;
}

template <typename T> constexpr int tix() { return std::is_same<T, __nv_bfloat16>::value ? 1 : 0; }

template <typename T, int D> cudaError_t fwd_tc(const KArgs &a, cudaStream_t st)
{
    const int variant = fwd_variant<D>(a, tix<T>());
    if (use_wgmma<D>(tix<T>()))
        return use_wgmma_split<D>(a, tix<T>()) ? run_fwd_wgmma<T, D, true>(a, st) : run_fwd_wgmma<T, D, false>(a, st);
    switch (variant) {
    case FWD_SPLIT: return run_fwd_tc<T, D, FWD_SPLIT>(a, st);
    case FWD_SMALL: return run_fwd_tc<T, D, FWD_SMALL>(a, st);
    default: return run_fwd_tc<T, D, FWD_DEFAULT>(a, st);
    }
}
/* the sm_90a dQ: its key split while the dQ grid has at most MLSTM_DQ_WS_CTAS_PER_SM 64-row tiles per SM (always /
 * never under MLSTM_CUDA_SMALL_TILES=1 / 0), else two query tiles per CTA */
static bool dq_split(const KArgs &a)
{
    if (g_small_mode >= 0) return g_small_mode == 1;
    return (a.S + 63) / 64 * a.B * a.NH <= (int64_t)MLSTM_DQ_WS_CTAS_PER_SM * g_sms;
}
template <typename T, int D> cudaError_t bwd_tc(const KArgs &a, cudaStream_t st)
{
    cudaError_t e;
    if constexpr (TileCfg<D>::DKDV_WG) {
        if (g_wgk_ok[tix<T>()][dim_index(D)] && g_wg_mode != 0) {
            e = run_bwd_dkdv_wgmma<T, D>(a, st);
            if (e != cudaSuccess) return e;
            return g_wgq_ok[tix<T>()][dim_index(D)] ? run_bwd_dq_wgmma<T, D>(a, st, dq_split(a)) : run_bwd_dq_tc<T, D>(a, st);
        }
    }
    if constexpr (TileCfg<D>::BWD_SMALL)
        e = bwd_small<D>(a, tix<T>()) ? run_bwd_dkdv_tc<T, D, true>(a, st) : run_bwd_dkdv_tc<T, D, false>(a, st);
    else
        e = run_bwd_dkdv_tc<T, D, false>(a, st);
    if (e != cudaSuccess) return e;
    if (g_wgq_ok[tix<T>()][dim_index(D)] && g_wg_mode != 0) return run_bwd_dq_wgmma<T, D>(a, st, dq_split(a));
    return run_bwd_dq_tc<T, D>(a, st);
}

template <typename T> int fwd_t(const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_fail *fail)
{
    switch (tc_dim(p, a, false)) {
    case 64: MLSTM_RUN((fwd_tc<T, 64>(a, st)), "mlstm_fwd_kernel (tc, D=64) launch"); return 0;
    case 128: MLSTM_RUN((fwd_tc<T, 128>(a, st)), "mlstm_fwd_kernel (tc, D=128) launch"); return 0;
    case 256: MLSTM_RUN((fwd_tc<T, 256>(a, st)), "mlstm_fwd_kernel (tc, D=256) launch"); return 0;
    default: MLSTM_RUN(run_fwd_simt<T>(a, st), "mlstm_fwd_kernel (simt) launch"); return 0;
    }
}
template <> int fwd_t<float>(const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_fail *fail)
{
    const bool tf32 = tc32_mode(p) == 1;
    const int d = tc32_dim(p, a);
    if (!tf32 && g_wg_mode != 0 && (d == 64 || d == 128) && g_wgf_ok[d == 128]) {
        MLSTM_RUN((d == 64 ? run_fwd_wgmma_f32<64>(a, st) : run_fwd_wgmma_f32<128>(a, st)),
                  "mlstm_fwd_wgmma_f32_kernel launch");
        return 0;
    }
    switch (d) {
    case 64:
        MLSTM_RUN((tf32 ? run_fwd_tf32<64, 1>(a, st) : run_fwd_tf32<64, 0>(a, st)), "mlstm_fwd_kernel (tc32, D=64) launch");
        return 0;
    case 128:
        MLSTM_RUN((tf32 ? run_fwd_tf32<128, 1>(a, st) : run_fwd_tf32<128, 0>(a, st)),
                  "mlstm_fwd_kernel (tc32, D=128) launch");
        return 0;
    case 256:
        MLSTM_RUN((tf32 ? run_fwd_tf32<256, 1>(a, st) : run_fwd_tf32<256, 0>(a, st)),
                  "mlstm_fwd_kernel (tc32, D=256) launch");
        return 0;
    default: MLSTM_RUN(run_fwd_simt<float>(a, st), "mlstm_fwd_kernel (simt) launch"); return 0;
    }
}

template <typename T> int bwd_t(const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_fail *fail)
{
    MLSTM_RUN(run_bwd_prep<T>(a, st), "mlstm_bwd_prep_kernel launch");
    switch (tc_dim(p, a, true)) {
    case 64: MLSTM_RUN((bwd_tc<T, 64>(a, st)), "mlstm_bwd_dkdv/dq_kernel (tc, D=64) launch"); break;
    case 128: MLSTM_RUN((bwd_tc<T, 128>(a, st)), "mlstm_bwd_dkdv/dq_kernel (tc, D=128) launch"); break;
    case 256: MLSTM_RUN((bwd_tc<T, 256>(a, st)), "mlstm_bwd_dkdv/dq_kernel (tc, D=256) launch"); break;
    default: MLSTM_RUN(run_bwd_simt<T>(a, st), "mlstm_bwd_dkdv/dq_kernel (simt) launch"); break;
    }
    MLSTM_RUN(run_bwd_gates(a, st), "mlstm_bwd_gates_kernel launch");
    return 0;
}
template <int D> cudaError_t bwd_tf32(const mlstm_params *p, const KArgs &a, cudaStream_t st)
{
    return tc32_mode(p) == 1 ? run_bwd_tf32<D, 1>(a, st) : run_bwd_tf32<D, 0>(a, st);
}
template <> int bwd_t<float>(const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_fail *fail)
{
    MLSTM_RUN(run_bwd_prep<float>(a, st), "mlstm_bwd_prep_kernel launch");
    const int d = tc32_dim(p, a, true);
    if (tc32_mode(p) == 0 && g_wg_mode != 0 && (d == 64 || d == 128) && g_wgfb_ok[d == 128]) {
        MLSTM_RUN((d == 64 ? run_bwd_wgmma_f32<64>(a, st) : run_bwd_wgmma_f32<128>(a, st)),
                  "mlstm_bwd_dkdv/dq_wgmma_f32_kernel launch");
        MLSTM_RUN(run_bwd_gates_tiled(a, st), "mlstm_bwd_gates_tiled_kernel launch");
        return 0;
    }
    switch (d) { /* both leave df as mlstm_bwd_gates_tiled_kernel expects it */
    case 64: MLSTM_RUN(bwd_tf32<64>(p, a, st), "mlstm_bwd_dkdv/dq_kernel (tc32, D=64) launch"); break;
    case 128: MLSTM_RUN(bwd_tf32<128>(p, a, st), "mlstm_bwd_dkdv/dq_kernel (tc32, D=128) launch"); break;
    case 256: MLSTM_RUN(bwd_tf32<256>(p, a, st), "mlstm_bwd_dkdv/dq_kernel (tc32, D=256) launch"); break;
    default: MLSTM_RUN(run_bwd_simt<float>(a, st), "mlstm_bwd_dkdv/dq_kernel (simt) launch"); break;
    }
    MLSTM_RUN(run_bwd_gates_tiled(a, st), "mlstm_bwd_gates_tiled_kernel launch");
    return 0;
}

} // namespace
} // namespace mlstm

using namespace mlstm;

/* tensor-core setup: a refused shared-memory size only disables that instance (cleared error) */
static void tc_setup(bool backward, int t, int di, cudaError_t e)
{
    g_tc_ok[backward][t][di] = e == cudaSuccess;
    if (e != cudaSuccess) (void)cudaGetLastError();
}
static void tc_small_setup(bool backward, int t, int di, cudaError_t e)
{
    g_tc_small_ok[backward][t][di] = e == cudaSuccess;
    if (e != cudaSuccess) (void)cudaGetLastError();
}

static void tc_split_setup(int t, int di, cudaError_t e)
{
    g_tc_split_ok[t][di] = e == cudaSuccess;
    if (e != cudaSuccess) (void)cudaGetLastError();
}

static void wg_setup(int t, int di, cudaError_t e, cudaError_t es, cudaError_t eq, cudaError_t ek)
{
    g_wg_ok[t][di] = e == cudaSuccess;
    g_wgs_ok[t][di] = es == cudaSuccess && g_wg_ok[t][di];
    g_wgq_ok[t][di] = eq == cudaSuccess;
    g_wgk_ok[t][di] = ek == cudaSuccess;
    if (e != cudaSuccess || es != cudaSuccess || eq != cudaSuccess || ek != cudaSuccess) (void)cudaGetLastError();
}

static cudaError_t bwd_setup(cudaError_t dkdv, cudaError_t dq) { return dkdv != cudaSuccess ? dkdv : dq; }

/* f32 tensor-core kernels: a refused shared-memory size only disables that instance (SIMT serves it) */
static void tc32_setup(bool backward, int mode, int di, cudaError_t e)
{
    g_tc32_ok[backward][mode][di] = e == cudaSuccess;
    if (e != cudaSuccess) (void)cudaGetLastError();
}

template <typename T> static void tc_setup_all(int t, bool sm90, bool sm90a)
{
    for (int di = 0; di < 3; ++di) g_wg_ok[t][di] = g_wgs_ok[t][di] = g_wgq_ok[t][di] = g_wgk_ok[t][di] = false;
    if (sm90a) {
        wg_setup(t, 0, setup_fwd_wgmma<T, 64, false>(), setup_fwd_wgmma<T, 64, true>(), setup_bwd_dq_wgmma<T, 64>(),
                 setup_bwd_dkdv_wgmma<T, 64>());
        wg_setup(t, 1, setup_fwd_wgmma<T, 128, false>(), setup_fwd_wgmma<T, 128, true>(), setup_bwd_dq_wgmma<T, 128>(),
                 setup_bwd_dkdv_wgmma<T, 128>());
        wg_setup(t, 2, setup_fwd_wgmma<T, 256, false>(), setup_fwd_wgmma<T, 256, true>(), setup_bwd_dq_wgmma<T, 256>(),
                 setup_bwd_dkdv_wgmma<T, 256>());
    }
    tc_setup(false, t, 0, setup_fwd_tc<T, 64, FWD_DEFAULT>());
    tc_setup(false, t, 1, setup_fwd_tc<T, 128, FWD_DEFAULT>());
    tc_setup(false, t, 2, setup_fwd_tc<T, 256, FWD_DEFAULT>());
    tc_setup(true, t, 0, bwd_setup(setup_bwd_dkdv_tc<T, 64, false>(), setup_bwd_dq_tc<T, 64>()));
    tc_setup(true, t, 1, bwd_setup(setup_bwd_dkdv_tc<T, 128, false>(), setup_bwd_dq_tc<T, 128>()));
    tc_setup(true, t, 2, bwd_setup(setup_bwd_dkdv_tc<T, 256, false>(), setup_bwd_dq_tc<T, 256>()));
    for (int bw = 0; bw < 2; ++bw)
        for (int di = 0; di < 3; ++di) g_tc_small_ok[bw][t][di] = g_tc_split_ok[t][di] = false;
    if (!sm90) return; /* the small-grid variants are compiled for sm_90+ only (stubs on sm_80) */
    tc_small_setup(false, t, 0, setup_fwd_tc<T, 64, FWD_SMALL>());
    tc_small_setup(false, t, 1, setup_fwd_tc<T, 128, FWD_SMALL>());
    tc_small_setup(false, t, 2, setup_fwd_tc<T, 256, FWD_SMALL>());
    tc_split_setup(t, 0, setup_fwd_tc<T, 64, FWD_SPLIT>());
    tc_split_setup(t, 1, setup_fwd_tc<T, 128, FWD_SPLIT>());
    tc_split_setup(t, 2, setup_fwd_tc<T, 256, FWD_SPLIT>());
    tc_small_setup(true, t, 0, setup_bwd_dkdv_tc<T, 64, true>());
    tc_small_setup(true, t, 1, setup_bwd_dkdv_tc<T, 128, true>());
    tc_small_setup(true, t, 2, setup_bwd_dkdv_tc<T, 256, true>());
}

extern "C" int mlstm_cuda_kernels_setup(mlstm_cuda_fail *fail, int small_tiles, int f32_tc, int wgmma)
{
    static_assert(TileCfg<64>::BWD_SMALL && TileCfg<128>::BWD_SMALL && TileCfg<256>::BWD_SMALL,
                  "small dK/dV instances (gen_instances.py BWD_SMALL_DIMS) out of step with tile_config.h");
    static_assert(TileCfg<64>::DKDV_WG && TileCfg<128>::DKDV_WG && TileCfg<256>::DKDV_WG,
                  "wgmma dK/dV instances (gen_instances.py WG_DKDV_DIMS) out of step with tile_config.h");
    int dev = 0, sms = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess) {
        if (sms > 0) g_sms = sms;
    } else {
        (void)cudaGetLastError();
        major = minor = 0;
    }
    g_small_mode = small_tiles >= -1 ? small_tiles : MLSTM_SMALL_TILES_DEFAULT;
    g_wg_mode = wgmma >= -1 ? wgmma : MLSTM_WGMMA_DEFAULT;
#ifdef MLSTM_HAVE_SM90A
    const bool sm90a = major == 9 && minor == 0; /* sm_90a code runs on exactly this compute capability */
#else
    const bool sm90a = false;
#endif
    g_tma_encode = nullptr; /* (also the switch of the cluster forward, which needs cluster launches too) */
    int clusters = 0;
    if (sm90a && cudaDeviceGetAttribute(&clusters, cudaDevAttrClusterLaunch, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        clusters = 0;
    }
    if (sm90a && clusters) {
        void *fn = nullptr;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) == cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            g_tma_encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
        else
            (void)cudaGetLastError();
    }
    tc_setup_all<__half>(0, major >= 9, sm90a);
    tc_setup_all<__nv_bfloat16>(1, major >= 9, sm90a);
    g_f32_tc = f32_tc == -2 ? MLSTM_F32_TC_DEFAULT != 0 : f32_tc != 0;
    g_wgf_ok[0] = g_wgf_ok[1] = g_wgfb_ok[0] = g_wgfb_ok[1] = false;
    if (sm90a) {
        g_wgf_ok[0] = setup_fwd_wgmma_f32<64>() == cudaSuccess;
        g_wgf_ok[1] = setup_fwd_wgmma_f32<128>() == cudaSuccess;
        g_wgfb_ok[0] = setup_bwd_wgmma_f32<64>() == cudaSuccess;
        g_wgfb_ok[1] = setup_bwd_wgmma_f32<128>() == cudaSuccess;
        (void)cudaGetLastError();
    }
    tc32_setup(false, 0, 0, setup_fwd_tf32<64, 0>());
    tc32_setup(false, 0, 1, setup_fwd_tf32<128, 0>());
    tc32_setup(false, 0, 2, setup_fwd_tf32<256, 0>());
    tc32_setup(false, 1, 0, setup_fwd_tf32<64, 1>());
    tc32_setup(false, 1, 1, setup_fwd_tf32<128, 1>());
    tc32_setup(false, 1, 2, setup_fwd_tf32<256, 1>());
    tc32_setup(true, 0, 0, setup_bwd_tf32<64, 0>());
    tc32_setup(true, 0, 1, setup_bwd_tf32<128, 0>());
    tc32_setup(true, 0, 2, setup_bwd_tf32<256, 0>());
    tc32_setup(true, 1, 0, setup_bwd_tf32<64, 1>());
    tc32_setup(true, 1, 1, setup_bwd_tf32<128, 1>());
    tc32_setup(true, 1, 2, setup_bwd_tf32<256, 1>());
    /* the SIMT path (63 KB) is the fallback for everything: its setup must succeed */
    MLSTM_RUN(setup_fwd_simt<float>(), "cudaFuncSetAttribute(fwd simt f32)");
    MLSTM_RUN(setup_fwd_simt<__half>(), "cudaFuncSetAttribute(fwd simt f16)");
    MLSTM_RUN(setup_fwd_simt<__nv_bfloat16>(), "cudaFuncSetAttribute(fwd simt bf16)");
    MLSTM_RUN(setup_bwd_simt<float>(), "cudaFuncSetAttribute(bwd simt f32)");
    MLSTM_RUN(setup_bwd_simt<__half>(), "cudaFuncSetAttribute(bwd simt f16)");
    MLSTM_RUN(setup_bwd_simt<__nv_bfloat16>(), "cudaFuncSetAttribute(bwd simt bf16)");
    return 0;
}

namespace mlstm {
bool direct_tc(const mlstm_params *p, bool backward)
{
    const KArgs a = make_args(p);
    return p->dtype == MLSTM_DTYPE_F32 ? tc32_dim(p, a, backward) != 0 : tc_dim(p, a, backward) != 0;
}

int direct_fwd(const mlstm_params *p, cudaStream_t st, mlstm_cuda_fail *fail)
{
    const KArgs a = make_args(p);
    switch (p->dtype) {
    case MLSTM_DTYPE_F32: return fwd_t<float>(p, a, st, fail);
    case MLSTM_DTYPE_F16: return fwd_t<__half>(p, a, st, fail);
    case MLSTM_DTYPE_BF16: return fwd_t<__nv_bfloat16>(p, a, st, fail);
    default: MLSTM_RUN(cudaErrorInvalidValue, "dtype"); return 0;
    }
}

int direct_bwd(const mlstm_params *p, cudaStream_t st, mlstm_cuda_fail *fail)
{
    const KArgs a = make_args(p);
    switch (p->dtype) {
    case MLSTM_DTYPE_F32: return bwd_t<float>(p, a, st, fail);
    case MLSTM_DTYPE_F16: return bwd_t<__half>(p, a, st, fail);
    case MLSTM_DTYPE_BF16: return bwd_t<__nv_bfloat16>(p, a, st, fail);
    default: MLSTM_RUN(cudaErrorInvalidValue, "dtype"); return 0;
    }
}
} // namespace mlstm

extern "C" size_t mlstm_cuda_kernels_workspace_size(const mlstm_params *p, int backward)
{
    HeadDimPlan hp;
    return head_dim_plan(p, backward != 0, &hp) ? head_dim_workspace(p, hp, backward != 0) : 0;
}

static int run_call(const mlstm_params *p, int backward, void *stream, void *ws, size_t ws_bytes, mlstm_cuda_fail *fail)
{
    cudaStream_t st = (cudaStream_t)stream;
    HeadDimPlan hp;
    if (!head_dim_plan(p, backward != 0, &hp)) return backward ? direct_bwd(p, st, fail) : direct_fwd(p, st, fail);
    if (ws_bytes < head_dim_workspace(p, hp, backward != 0)) MLSTM_RUN(cudaErrorInvalidValue, "workspace too small");
    return backward ? head_dim_bwd(p, hp, st, ws, fail) : head_dim_fwd(p, hp, st, ws, fail);
}

extern "C" int mlstm_cuda_kernels_fwd(const mlstm_params *p, void *stream, void *ws, size_t ws_bytes,
                                      mlstm_cuda_fail *fail)
{
    return run_call(p, 0, stream, ws, ws_bytes, fail);
}

extern "C" int mlstm_cuda_kernels_bwd(const mlstm_params *p, void *stream, void *ws, size_t ws_bytes,
                                      mlstm_cuda_fail *fail)
{
    return run_call(p, 1, stream, ws, ws_bytes, fail);
}

extern "C" const char *mlstm_cuda_kernels_path(const mlstm_params *p, int backward)
{
    HeadDimPlan hp;
    const bool tc = direct_tc(p, backward != 0) || head_dim_plan(p, backward != 0, &hp);
    if (p->dtype == MLSTM_DTYPE_F32) return tc ? (tc32_mode(p) == 1 ? "tf32" : "tc32") : "simt";
    return tc ? "tc" : "simt";
}
