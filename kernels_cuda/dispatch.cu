/* libmlstm CUDA kernels: dispatch from mlstm_params to a compiled instance (dtype x head dim x path), the
 * kernel-attribute setup, and the C entry points of mlstm_cuda_kernels.h. Compiles no kernel body: the
 * instances live in inst/ (one per file). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/launch.h"
#include <type_traits>
#include "common/tile_config.h"
#include "mlstm_cuda_kernels.h"
#include "head_dims.h"

namespace mlstm {
PFN_cuTensorMapEncodeTiled_v12000 g_tma_encode = nullptr; /* launch.h; set once (tma_encoder) */
namespace {

KArgs make_args(const mlstm_params *p)
{
    KArgs a;
    const size_t esz = p->dtype == MLSTM_DTYPE_F32 ? 4 : 2;
    for (int x = 0; x < MLSTM_TENSOR_COUNT; ++x) {
        const mlstm_tensor_arg &t = p->t[x];
        const size_t sz = mlstm_tensor_is_f32(x) ? 4 : esz;
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

/* head dim -> index of the per-dim tables (64/128/256 -> 0/1/2), -1 elsewhere */
int dim_index(int64_t d) { return d == 64 ? 0 : d == 128 ? 1 : d == 256 ? 2 : -1; }

template <typename T> constexpr int tix() { return std::is_same<T, __nv_bfloat16>::value ? 1 : 0; }

} // namespace
} // namespace mlstm

using namespace mlstm;

/* The instance registry, one line per kernel variant: its name (what MLSTM_CUDA_FORCE names and the call trace
 * reports), the direction role it fills, and the storage it serves (16-bit f16/bf16, f32, or any). */
enum VariantRole { ROLE_FWD = 0, ROLE_DKDV = 1, ROLE_DQ = 2, ROLE_BWD32 = 3, ROLE_COUNT = 4 };
enum VariantDtypes { VD_HALF = 1, VD_F32 = 2, VD_ANY = 3 };
struct VariantInfo {
    const char *name;
    int role, dtypes;
};
enum Variant {
    V_AUTO = 0,
    V_FWD_SIMT, V_FWD_TC, V_FWD_TC_SMALL, V_FWD_TC_SPLIT, V_FWD_WG, V_FWD_WG_SPLIT, V_FWD_TC32, V_FWD_WG32,
    V_DKDV_TC, V_DKDV_TC_SMALL, V_DKDV_WG,
    V_DQ_TC, V_DQ_WG, V_DQ_WG_SPLIT,
    V_BWD_SIMT, V_BWD_TC32, V_BWD_WG32,
    V_COUNT
};
static const VariantInfo k_variants[V_COUNT] = {
    {"auto", -1, 0},
    {"fwd.simt", ROLE_FWD, VD_ANY},      {"fwd.tc", ROLE_FWD, VD_HALF},        {"fwd.tc_small", ROLE_FWD, VD_HALF},
    {"fwd.tc_split", ROLE_FWD, VD_HALF}, {"fwd.wg", ROLE_FWD, VD_HALF},        {"fwd.wg_split", ROLE_FWD, VD_HALF},
    {"fwd.tc32", ROLE_FWD, VD_F32},      {"fwd.wg32", ROLE_FWD, VD_F32},
    {"dkdv.tc", ROLE_DKDV, VD_HALF},     {"dkdv.tc_small", ROLE_DKDV, VD_HALF}, {"dkdv.wg", ROLE_DKDV, VD_HALF},
    {"dq.tc", ROLE_DQ, VD_HALF},         {"dq.wg", ROLE_DQ, VD_HALF},          {"dq.wg_split", ROLE_DQ, VD_HALF},
    {"bwd.simt", ROLE_BWD32, VD_ANY},    {"bwd.tc32", ROLE_BWD32, VD_F32},     {"bwd.wg32", ROLE_BWD32, VD_F32},
};

/* The dispatch state of one context: the instances its device accepted at setup and the policies read then.
 * Immutable after mlstm_cuda_kernels_setup, so contexts (and threads) never see each other's settings. */
struct mlstm_cuda_dispatch {
    int sms;        /* the device's SM count */
    int small_mode; /* small-grid policy: -1 auto (by grid size), 0 never, 1 always (MLSTM_CUDA_SMALL_TILES) */
    int wg_mode;    /* sm_90a warpgroup-MMA kernels: -1 auto, 0 never, 1 whenever eligible (MLSTM_CUDA_WGMMA) */
    bool f32_tc;    /* f32 on tensor cores at all (MLSTM_CUDA_F32_TC) */
    bool tma_ok;    /* the device launches clusters and the driver's tensor-map encoder was found */
    /* per-instance acceptance: [dtype f16=0 / bf16=1][D 64/128/256 -> 0/1/2], f32 ones [mode 3xTF32/TF32][D] */
    bool tc_ok[2][2][3];       /* [backward][t][d]: default tiles (forward; dK/dV + dQ) */
    bool tc_small_ok[2][2][3]; /* [backward][t][d]: the small-grid tiles */
    bool tc_split_ok[2][3];    /* the key-split forward */
    bool wg_ok[2][3], wgs_ok[2][3], wgq_ok[2][3], wgk_ok[2][3]; /* wgmma forward, its split, dQ, dK/dV */
    bool wgf_ok[2], wgfb_ok[2];                                 /* f32 split-f16 wgmma forward / backward, D 64/128 */
    bool wgm_ok[2], wgsm_ok[2], wgqm_ok[2], wgkm_ok[2]; /* the masking D = 256 wgmma instances: forward, split, dQ, dK/dV */
    bool tc32_ok[2][2][3];                                      /* [backward][mode][d] */
    Variant force[ROLE_COUNT][2]; /* tests: MLSTM_CUDA_FORCE per role and storage (16-bit, f32); V_AUTO: dispatch chooses */
};
typedef mlstm_cuda_dispatch Dispatch;

namespace mlstm {
namespace {

/* The trace of a call: the names of the instances it enqueued, "+"-joined */
void trace_add(mlstm_cuda_trace *tr, const char *name, int dtype, int64_t D, bool masking = false)
{
    if (!tr) return;
    const size_t n = strlen(tr->kernels);
    if (n + 1 >= sizeof tr->kernels) return;
    /* "m": the separately compiled masking instance of a class that does not mask by default (D = 256) */
    snprintf(tr->kernels + n, sizeof tr->kernels - n, "%s%s.%s.d%lld%s", n ? "+" : "", name,
             dtype == MLSTM_DTYPE_F32 ? "f32" : dtype == MLSTM_DTYPE_F16 ? "f16" : "bf16", (long long)D,
             masking ? "m" : "");
}

/* A forced variant of role r applies to calls of its storage class; elsewhere dispatch chooses */
Variant forced(const Dispatch &ds, int role, int dtype)
{
    return ds.force[role][dtype == MLSTM_DTYPE_F32 ? 1 : 0];
}

bool use_small(const Dispatch &ds, int64_t ctas_default)
{
    if (ds.small_mode >= 0) return ds.small_mode == 1;
    return ctas_default < (int64_t)MLSTM_SMALL_CTAS_PER_SM * ds.sms;
}

/* forward tile variant: the small tiles when the default grid is below MLSTM_SMALL_CTAS_PER_SM CTAs per SM, and
 * the key split instead when even the small tiles' grid is below MLSTM_SPLIT_CTAS_PER_SM (auto mode only) */
template <int D> Variant fwd_tc_variant(const Dispatch &ds, const KArgs &a, int t)
{
    using C = typename TileCfg<D>::Fwd;
    using CS = typename TileCfg<D>::FwdS;
    const int di = dim_index(D);
    if (!ds.tc_small_ok[0][t][di] || !use_small(ds, (a.S + C::BM - 1) / C::BM * a.B * a.NH)) return V_FWD_TC;
    if (ds.small_mode < 0 && ds.tc_split_ok[t][di] &&
        (a.S + CS::BM - 1) / CS::BM * a.B * a.NH < (int64_t)MLSTM_SPLIT_CTAS_PER_SM * ds.sms)
        return V_FWD_TC_SPLIT;
    return V_FWD_TC_SMALL;
}
/* the alternative dK/dV tiles: by grid size (D = 64/128), or whenever available unless the env variable says
 * never (D = 256: the sm_90 8-warp variant, tile_config.h) */
template <int D> bool bwd_small(const Dispatch &ds, const KArgs &a, int t)
{
    using C = typename TileCfg<D>::Dkdv;
    constexpr int BNK = 16 * C::NW;
    if (!TileCfg<D>::BWD_SMALL || !ds.tc_small_ok[1][t][dim_index(D)]) return false;
    if (TileCfg<D>::BWD_ALT_ALWAYS) return ds.small_mode != 0;
    return use_small(ds, (a.S + BNK - 1) / BNK * (D / C::DOUT) * a.B * a.NH);
}

/* the key-split wgmma forward can serve a: the instance, and for the cluster variant TMA maps of K and V */
template <int D> bool wgmma_split_ok(const Dispatch &ds, const KArgs &a, int t, bool mc = false)
{
    if (!(mc ? ds.wgsm_ok[t] : ds.wgs_ok[t][dim_index(D)])) return false;
    if (TileCfg<D>::FwdWgK::CL > 1) { /* the cluster variant loads K/V through TMA */
        cuuint64_t dims[4], strides[3];
        /* masked columns: the maps span DQK / DV columns; at least one whole 64-column box each (narrower heads
         * take the cp.async variants) */
        if (!ds.tma_ok || a.DQK < 64 || a.DV < 64 || !tma_shape(a.t[MLSTM_TENSOR_K], a, a.DQK, dims, strides) ||
            !tma_shape(a.t[MLSTM_TENSOR_V], a, a.DV, dims, strides))
            return false;
    }
    return true;
}
/* ... and is chosen: when its default grid has fewer CTAs than FWD_WG_SPLIT_PCT percent of the SMs (or always /
 * never under MLSTM_CUDA_SMALL_TILES=1 / 0) */
template <int D> bool use_wgmma_split(const Dispatch &ds, const KArgs &a, int t, bool mc = false)
{
    if (ds.small_mode == 0 || !wgmma_split_ok<D>(ds, a, t, mc)) return false;
    if (ds.small_mode == 1) return true;
    return (a.S + 127) / 128 * a.B * a.NH * 100 < (int64_t)TileCfg<D>::FWD_WG_SPLIT_PCT * ds.sms; /* 128-row tiles */
}

/* the f32 tensor-core kernels */
bool tc32_aligned(const KArgs &a, bool backward) { return rows_aligned(a, backward, 4); }

int tc32_mode(const mlstm_params *p) { return p->math_mode == MLSTM_MATH_TF32 ? 1 : 0; }

/* head dim served by the f32 tensor-core forward (or backward), or 0 */
int tc32_dim(const Dispatch &ds, const mlstm_params *p, const KArgs &a, bool backward = false)
{
    if (p->dtype != MLSTM_DTYPE_F32 || !ds.f32_tc || p->dqk != p->dv) return 0;
    const int di = dim_index(p->dqk);
    if (di < 0 || !ds.tc32_ok[backward ? 1 : 0][tc32_mode(p)][di]) return 0;
    if (!tc32_aligned(a, backward)) return 0;
    return (int)p->dqk;
}

/* head dim served by the tensor-core path, or 0 */
int tc_dim(const Dispatch &ds, const mlstm_params *p, const KArgs &a, bool backward)
{
    if (p->dtype != MLSTM_DTYPE_F16 && p->dtype != MLSTM_DTYPE_BF16) return 0;
    const int D = masked_class(ds, p->dtype, p->dqk, p->dv, backward);
    const int di = dim_index(D);
    if (di < 0 || !ds.tc_ok[backward ? 1 : 0][p->dtype == MLSTM_DTYPE_BF16 ? 1 : 0][di]) return 0;
    if (!tc_aligned(a, backward)) return 0;
    return D;
}

/* A pinned variant whose instance exists for the call's class but was refused at setup (or, for the cluster split,
 * lacks TMA): the call fails, so that tests never fall back silently; variants with no instance for the call's head
 * dim or math mode do not apply to it (dispatch chooses) */
#define MLSTM_UNAVAILABLE(v) MLSTM_RUN(cudaErrorNotSupported, k_variants[v].name)

template <typename T, int D>
int fwd_tc(const Dispatch &ds, const KArgs &a, cudaStream_t st, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    constexpr int t = tix<T>();
    const int di = dim_index(D);
    /* a narrower head on a class that does not mask by default: its masking wgmma instances (masked_class) */
    const bool mc = D != MASKED_COLS_CLASS && (a.DQK < D || a.DV < D);
    Variant v = forced(ds, ROLE_FWD, t ? MLSTM_DTYPE_BF16 : MLSTM_DTYPE_F16);
    if (v == V_AUTO) {
        if (mc || (ds.wg_ok[t][di] && ds.wg_mode != 0))
            v = use_wgmma_split<D>(ds, a, t, mc) ? V_FWD_WG_SPLIT : V_FWD_WG;
        else
            v = fwd_tc_variant<D>(ds, a, t);
    }
    const bool ok = mc ? (v == V_FWD_WG ? ds.wgm_ok[t] : v == V_FWD_WG_SPLIT && wgmma_split_ok<D>(ds, a, t, true))
                    : v == V_FWD_TC ? ds.tc_ok[0][t][di]
                    : v == V_FWD_TC_SMALL ? ds.tc_small_ok[0][t][di]
                    : v == V_FWD_TC_SPLIT ? ds.tc_split_ok[t][di]
                    : v == V_FWD_WG ? ds.wg_ok[t][di]
                    : v == V_FWD_WG_SPLIT ? wgmma_split_ok<D>(ds, a, t)
                                          : false;
    if (!ok) MLSTM_UNAVAILABLE(v);
    trace_add(tr, k_variants[v].name, t ? MLSTM_DTYPE_BF16 : MLSTM_DTYPE_F16, D, mc);
    if constexpr (D == 256) {
        if (mc) {
            if (v == V_FWD_WG_SPLIT)
                MLSTM_RUN((run_fwd_wgmma<T, D, true, true>(a, st)), "mlstm_fwd_wgmma_kernel (split, masked) launch");
            else
                MLSTM_RUN((run_fwd_wgmma<T, D, false, true>(a, st)), "mlstm_fwd_wgmma_kernel (masked) launch");
            return 0;
        }
    }
    switch (v) {
    case V_FWD_WG_SPLIT: MLSTM_RUN((run_fwd_wgmma<T, D, true>(a, st)), "mlstm_fwd_wgmma_kernel (split) launch"); break;
    case V_FWD_WG: MLSTM_RUN((run_fwd_wgmma<T, D, false>(a, st)), "mlstm_fwd_wgmma_kernel launch"); break;
    case V_FWD_TC_SPLIT: MLSTM_RUN((run_fwd_tc<T, D, FWD_SPLIT>(a, st)), "mlstm_fwd_kernel (tc split) launch"); break;
    case V_FWD_TC_SMALL: MLSTM_RUN((run_fwd_tc<T, D, FWD_SMALL>(a, st)), "mlstm_fwd_kernel (tc small) launch"); break;
    default: MLSTM_RUN((run_fwd_tc<T, D, FWD_DEFAULT>(a, st)), "mlstm_fwd_kernel (tc) launch"); break;
    }
    return 0;
}

/* the sm_90a dQ: its key split while the dQ grid has at most MLSTM_DQ_WS_CTAS_PER_SM 64-row tiles per SM (always /
 * never under MLSTM_CUDA_SMALL_TILES=1 / 0), else two query tiles per CTA */
bool dq_split(const Dispatch &ds, const KArgs &a)
{
    if (ds.small_mode >= 0) return ds.small_mode == 1;
    return (a.S + 63) / 64 * a.B * a.NH <= (int64_t)MLSTM_DQ_WS_CTAS_PER_SM * ds.sms;
}
template <typename T, int D>
int bwd_tc(const Dispatch &ds, const KArgs &a, cudaStream_t st, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    constexpr int t = tix<T>();
    constexpr int dt = t ? MLSTM_DTYPE_BF16 : MLSTM_DTYPE_F16;
    const int di = dim_index(D);
    const bool wg = ds.wg_mode != 0;
    /* a narrower head on a class that does not mask by default: its masking wgmma instances (masked_class) */
    const bool mc = D != MASKED_COLS_CLASS && (a.DQK < D || a.DV < D);
    Variant vk = forced(ds, ROLE_DKDV, dt), vq = forced(ds, ROLE_DQ, dt);
    if (vk == V_AUTO) {
        if (mc || (TileCfg<D>::DKDV_WG && ds.wgk_ok[t][di] && wg)) vk = V_DKDV_WG;
        else vk = bwd_small<D>(ds, a, t) ? V_DKDV_TC_SMALL : V_DKDV_TC;
    }
    if (vq == V_AUTO) vq = mc || (ds.wgq_ok[t][di] && wg) ? (dq_split(ds, a) ? V_DQ_WG_SPLIT : V_DQ_WG) : V_DQ_TC;
    const bool ok_k = mc ? vk == V_DKDV_WG && ds.wgkm_ok[t]
                      : vk == V_DKDV_WG ? TileCfg<D>::DKDV_WG && ds.wgk_ok[t][di]
                      : vk == V_DKDV_TC_SMALL ? TileCfg<D>::BWD_SMALL && ds.tc_small_ok[1][t][di]
                                              : ds.tc_ok[1][t][di];
    if (!ok_k) MLSTM_UNAVAILABLE(vk);
    if (mc ? vq == V_DQ_TC || !ds.wgqm_ok[t] : vq != V_DQ_TC && !ds.wgq_ok[t][di]) MLSTM_UNAVAILABLE(vq);
    trace_add(tr, k_variants[vk].name, dt, D, mc);
    trace_add(tr, k_variants[vq].name, dt, D, mc);
    if constexpr (D == 256) {
        if (mc) {
            MLSTM_RUN((run_bwd_dkdv_wgmma<T, D, true>(a, st)), "mlstm_bwd_dkdv_wgmma_kernel (masked) launch");
            MLSTM_RUN((run_bwd_dq_wgmma<T, D, true>(a, st, vq == V_DQ_WG_SPLIT)),
                      "mlstm_bwd_dq_wgmma_kernel (masked) launch");
            return 0;
        }
    }
    if constexpr (TileCfg<D>::DKDV_WG) {
        if (vk == V_DKDV_WG) MLSTM_RUN((run_bwd_dkdv_wgmma<T, D>(a, st)), "mlstm_bwd_dkdv_wgmma_kernel launch");
    }
    if constexpr (TileCfg<D>::BWD_SMALL) {
        if (vk == V_DKDV_TC_SMALL) MLSTM_RUN((run_bwd_dkdv_tc<T, D, true>(a, st)), "mlstm_bwd_dkdv_kernel (tc small) launch");
    }
    if (vk == V_DKDV_TC) MLSTM_RUN((run_bwd_dkdv_tc<T, D, false>(a, st)), "mlstm_bwd_dkdv_kernel (tc) launch");
    if (vq == V_DQ_TC) MLSTM_RUN((run_bwd_dq_tc<T, D>(a, st)), "mlstm_bwd_dq_kernel (tc) launch");
    else MLSTM_RUN((run_bwd_dq_wgmma<T, D>(a, st, vq == V_DQ_WG_SPLIT)), "mlstm_bwd_dq_wgmma_kernel launch");
    return 0;
}

/* The f32 variant of a role (d: the f32 tensor-core head dim serving the call, 0 for none): a pinned one where it has
 * an instance for the call (wg: D 64/128 and the default math; tc: any d), else the split-f16 wgmma kernel where the
 * device accepted it, else 3xTF32 / TF32, else SIMT. The caller fails a pinned wg the device refused. */
Variant f32_variant(const Dispatch &ds, int role, int d, bool tf32, const bool wg_ok[2], Variant simt, Variant tc,
                    Variant wg)
{
    Variant v = forced(ds, role, MLSTM_DTYPE_F32);
    if ((v == wg && (tf32 || (d != 64 && d != 128))) || (v == tc && d == 0)) v = V_AUTO;
    if (v != V_AUTO) return v;
    if (d == 0) return simt;
    return !tf32 && ds.wg_mode != 0 && (d == 64 || d == 128) && wg_ok[d == 128] ? wg : tc;
}

template <typename T>
int fwd_t(const Dispatch &ds, const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_trace *tr,
          mlstm_cuda_fail *fail)
{
    if (forced(ds, ROLE_FWD, p->dtype) != V_FWD_SIMT) {
        switch (tc_dim(ds, p, a, false)) {
        case 64: return fwd_tc<T, 64>(ds, a, st, tr, fail);
        case 128: return fwd_tc<T, 128>(ds, a, st, tr, fail);
        case 256: return fwd_tc<T, 256>(ds, a, st, tr, fail);
        default: break;
        }
    }
    trace_add(tr, k_variants[V_FWD_SIMT].name, p->dtype, p->dqk);
    MLSTM_RUN(run_fwd_simt<T>(a, st), "mlstm_fwd_kernel (simt) launch");
    return 0;
}
template <>
int fwd_t<float>(const Dispatch &ds, const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_trace *tr,
                 mlstm_cuda_fail *fail)
{
    const bool tf32 = tc32_mode(p) == 1;
    const int d = tc32_dim(ds, p, a);
    const Variant v = f32_variant(ds, ROLE_FWD, d, tf32, ds.wgf_ok, V_FWD_SIMT, V_FWD_TC32, V_FWD_WG32);
    if (v == V_FWD_WG32 && !ds.wgf_ok[d == 128]) MLSTM_UNAVAILABLE(v);
    trace_add(tr, k_variants[v].name, MLSTM_DTYPE_F32, p->dqk);
    if (v == V_FWD_WG32) {
        MLSTM_RUN((d == 64 ? run_fwd_wgmma_f32<64>(a, st) : run_fwd_wgmma_f32<128>(a, st)), "mlstm_fwd_wgmma_f32_kernel launch");
        return 0;
    }
    switch (v == V_FWD_TC32 ? d : 0) {
    case 64: MLSTM_RUN((tf32 ? run_fwd_tf32<64, 1>(a, st) : run_fwd_tf32<64, 0>(a, st)), "mlstm_fwd_kernel (tc32, D=64) launch"); break;
    case 128: MLSTM_RUN((tf32 ? run_fwd_tf32<128, 1>(a, st) : run_fwd_tf32<128, 0>(a, st)), "mlstm_fwd_kernel (tc32, D=128) launch"); break;
    case 256: MLSTM_RUN((tf32 ? run_fwd_tf32<256, 1>(a, st) : run_fwd_tf32<256, 0>(a, st)), "mlstm_fwd_kernel (tc32, D=256) launch"); break;
    default: MLSTM_RUN(run_fwd_simt<float>(a, st), "mlstm_fwd_kernel (simt) launch"); break;
    }
    return 0;
}

template <typename T>
int bwd_t(const Dispatch &ds, const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_trace *tr,
          mlstm_cuda_fail *fail)
{
    MLSTM_RUN(run_bwd_prep<T>(a, st), "mlstm_bwd_prep_kernel launch");
    const bool simt = forced(ds, ROLE_BWD32, p->dtype) == V_BWD_SIMT;
    int e = -1;
    switch (simt ? 0 : tc_dim(ds, p, a, true)) {
    case 64: e = bwd_tc<T, 64>(ds, a, st, tr, fail); break;
    case 128: e = bwd_tc<T, 128>(ds, a, st, tr, fail); break;
    case 256: e = bwd_tc<T, 256>(ds, a, st, tr, fail); break;
    default: break;
    }
    if (e > 0) return e;
    if (e < 0) {
        trace_add(tr, k_variants[V_BWD_SIMT].name, p->dtype, p->dqk);
        MLSTM_RUN(run_bwd_simt<T>(a, st), "mlstm_bwd_dkdv/dq_kernel (simt) launch");
    }
    MLSTM_RUN(run_bwd_gates(a, st), "mlstm_bwd_gates_kernel launch");
    return 0;
}
template <int D> cudaError_t bwd_tf32(const mlstm_params *p, const KArgs &a, cudaStream_t st)
{
    return tc32_mode(p) == 1 ? run_bwd_tf32<D, 1>(a, st) : run_bwd_tf32<D, 0>(a, st);
}
template <>
int bwd_t<float>(const Dispatch &ds, const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_trace *tr,
                 mlstm_cuda_fail *fail)
{
    MLSTM_RUN(run_bwd_prep<float>(a, st), "mlstm_bwd_prep_kernel launch");
    const bool tf32 = tc32_mode(p) == 1;
    const int d = tc32_dim(ds, p, a, true);
    const Variant v = f32_variant(ds, ROLE_BWD32, d, tf32, ds.wgfb_ok, V_BWD_SIMT, V_BWD_TC32, V_BWD_WG32);
    if (v == V_BWD_WG32 && !ds.wgfb_ok[d == 128]) MLSTM_UNAVAILABLE(v);
    trace_add(tr, k_variants[v].name, MLSTM_DTYPE_F32, p->dqk);
    if (v == V_BWD_WG32) {
        MLSTM_RUN((d == 64 ? run_bwd_wgmma_f32<64>(a, st) : run_bwd_wgmma_f32<128>(a, st)),
                  "mlstm_bwd_dkdv/dq_wgmma_f32_kernel launch");
    } else {
        switch (v == V_BWD_TC32 ? d : 0) { /* both leave df as mlstm_bwd_gates_tiled_kernel expects it */
        case 64: MLSTM_RUN(bwd_tf32<64>(p, a, st), "mlstm_bwd_dkdv/dq_kernel (tc32, D=64) launch"); break;
        case 128: MLSTM_RUN(bwd_tf32<128>(p, a, st), "mlstm_bwd_dkdv/dq_kernel (tc32, D=128) launch"); break;
        case 256: MLSTM_RUN(bwd_tf32<256>(p, a, st), "mlstm_bwd_dkdv/dq_kernel (tc32, D=256) launch"); break;
        default: MLSTM_RUN(run_bwd_simt<float>(a, st), "mlstm_bwd_dkdv/dq_kernel (simt) launch"); break;
        }
    }
    MLSTM_RUN(run_bwd_gates_tiled(a, st), "mlstm_bwd_gates_tiled_kernel launch");
    return 0;
}

} // namespace
} // namespace mlstm

/* tensor-core setup: a refused shared-memory size only disables that instance (cleared error) */
static bool accepted(cudaError_t e)
{
    if (e != cudaSuccess) (void)cudaGetLastError();
    return e == cudaSuccess;
}

template <typename T> static void tc_setup_all(Dispatch &ds, int t, bool sm90, bool sm90a)
{
    if (sm90a) {
        ds.wg_ok[t][0] = accepted(setup_fwd_wgmma<T, 64, false>());
        ds.wg_ok[t][1] = accepted(setup_fwd_wgmma<T, 128, false>());
        ds.wg_ok[t][2] = accepted(setup_fwd_wgmma<T, 256, false>());
        ds.wgs_ok[t][0] = ds.wg_ok[t][0] && accepted(setup_fwd_wgmma<T, 64, true>());
        ds.wgs_ok[t][1] = ds.wg_ok[t][1] && accepted(setup_fwd_wgmma<T, 128, true>());
        ds.wgs_ok[t][2] = ds.wg_ok[t][2] && accepted(setup_fwd_wgmma<T, 256, true>());
        ds.wgq_ok[t][0] = accepted(setup_bwd_dq_wgmma<T, 64>());
        ds.wgq_ok[t][1] = accepted(setup_bwd_dq_wgmma<T, 128>());
        ds.wgq_ok[t][2] = accepted(setup_bwd_dq_wgmma<T, 256>());
        ds.wgk_ok[t][0] = accepted(setup_bwd_dkdv_wgmma<T, 64>());
        ds.wgk_ok[t][1] = accepted(setup_bwd_dkdv_wgmma<T, 128>());
        ds.wgk_ok[t][2] = accepted(setup_bwd_dkdv_wgmma<T, 256>());
        ds.wgm_ok[t] = accepted(setup_fwd_wgmma<T, 256, false, true>());
        ds.wgsm_ok[t] = ds.wgm_ok[t] && accepted(setup_fwd_wgmma<T, 256, true, true>());
        ds.wgqm_ok[t] = accepted(setup_bwd_dq_wgmma<T, 256, true>());
        ds.wgkm_ok[t] = accepted(setup_bwd_dkdv_wgmma<T, 256, true>());
    }
    ds.tc_ok[0][t][0] = accepted(setup_fwd_tc<T, 64, FWD_DEFAULT>());
    ds.tc_ok[0][t][1] = accepted(setup_fwd_tc<T, 128, FWD_DEFAULT>());
    ds.tc_ok[0][t][2] = accepted(setup_fwd_tc<T, 256, FWD_DEFAULT>());
    ds.tc_ok[1][t][0] = accepted(setup_bwd_dkdv_tc<T, 64, false>()) && accepted(setup_bwd_dq_tc<T, 64>());
    ds.tc_ok[1][t][1] = accepted(setup_bwd_dkdv_tc<T, 128, false>()) && accepted(setup_bwd_dq_tc<T, 128>());
    ds.tc_ok[1][t][2] = accepted(setup_bwd_dkdv_tc<T, 256, false>()) && accepted(setup_bwd_dq_tc<T, 256>());
    if (!sm90) return; /* the small-grid variants are compiled for sm_90+ only (stubs on sm_80) */
    ds.tc_small_ok[0][t][0] = accepted(setup_fwd_tc<T, 64, FWD_SMALL>());
    ds.tc_small_ok[0][t][1] = accepted(setup_fwd_tc<T, 128, FWD_SMALL>());
    ds.tc_small_ok[0][t][2] = accepted(setup_fwd_tc<T, 256, FWD_SMALL>());
    ds.tc_split_ok[t][0] = accepted(setup_fwd_tc<T, 64, FWD_SPLIT>());
    ds.tc_split_ok[t][1] = accepted(setup_fwd_tc<T, 128, FWD_SPLIT>());
    ds.tc_split_ok[t][2] = accepted(setup_fwd_tc<T, 256, FWD_SPLIT>());
    ds.tc_small_ok[1][t][0] = accepted(setup_bwd_dkdv_tc<T, 64, true>());
    ds.tc_small_ok[1][t][1] = accepted(setup_bwd_dkdv_tc<T, 128, true>());
    ds.tc_small_ok[1][t][2] = accepted(setup_bwd_dkdv_tc<T, 256, true>());
}

/* The driver's tensor-map encoder (a process-wide driver entry point): looked up once, thread-safely */
static PFN_cuTensorMapEncodeTiled_v12000 tma_encoder()
{
    static const PFN_cuTensorMapEncodeTiled_v12000 enc = [] {
        void *fn = nullptr;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) == cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
        (void)cudaGetLastError();
        return (PFN_cuTensorMapEncodeTiled_v12000) nullptr;
    }();
    g_tma_encode = enc; /* launch.h; every writer stores the same value */
    return enc;
}

/* MLSTM_CUDA_FORCE (tests): comma-separated variant names ("fwd.wg_split,dq.tc"); an unknown name is an error */
static bool parse_force(Dispatch &ds, const char *spec)
{
    for (int r = 0; r < ROLE_COUNT; ++r) ds.force[r][0] = ds.force[r][1] = V_AUTO;
    if (!spec || !*spec) return true;
    const char *s = spec;
    while (*s) {
        const char *e = strchr(s, ',');
        const size_t n = e ? (size_t)(e - s) : strlen(s);
        int found = -1;
        for (int v = 1; v < V_COUNT; ++v)
            if (strlen(k_variants[v].name) == n && strncmp(k_variants[v].name, s, n) == 0) found = v;
        if (found < 0) return false;
        /* fwd.simt / bwd.simt serve every dtype; bwd.simt also stands for the 16-bit backward */
        const VariantInfo &vi = k_variants[found];
        if (vi.dtypes & VD_HALF) ds.force[vi.role][0] = (Variant)found;
        if (vi.dtypes & VD_F32) ds.force[vi.role][1] = (Variant)found;
        s += n + (e ? 1 : 0);
    }
    return true;
}

extern "C" int mlstm_cuda_kernels_setup(mlstm_cuda_fail *fail, int small_tiles, int f32_tc, int wgmma,
                                        const char *force, mlstm_cuda_dispatch **out)
{
    static_assert(TileCfg<64>::BWD_SMALL && TileCfg<128>::BWD_SMALL && TileCfg<256>::BWD_SMALL,
                  "small dK/dV instances (gen_instances.py BWD_SMALL_DIMS) out of step with tile_config.h");
    static_assert(TileCfg<64>::DKDV_WG && TileCfg<128>::DKDV_WG && TileCfg<256>::DKDV_WG,
                  "wgmma dK/dV instances (gen_instances.py WG_DKDV_DIMS) out of step with tile_config.h");
    *out = nullptr;
    Dispatch *ds = (Dispatch *)calloc(1, sizeof(Dispatch));
    if (!ds) MLSTM_RUN(cudaErrorMemoryAllocation, "dispatch state allocation");
    if (!parse_force(*ds, force)) {
        free(ds);
        MLSTM_RUN(cudaErrorInvalidValue, "MLSTM_CUDA_FORCE names an unknown kernel variant");
    }
    int dev = 0, sms = 0, major = 0, minor = 0;
    ds->sms = 132;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess) {
        if (sms > 0) ds->sms = sms;
    } else {
        (void)cudaGetLastError();
        major = minor = 0;
    }
    ds->small_mode = small_tiles >= -1 ? small_tiles : MLSTM_SMALL_TILES_DEFAULT;
    ds->wg_mode = wgmma >= -1 ? wgmma : MLSTM_WGMMA_DEFAULT;
#ifdef MLSTM_HAVE_SM90A
    const bool sm90a = major == 9 && minor == 0; /* sm_90a code runs on exactly this compute capability */
#else
    const bool sm90a = false;
#endif
    int clusters = 0;
    if (sm90a && cudaDeviceGetAttribute(&clusters, cudaDevAttrClusterLaunch, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        clusters = 0;
    }
    ds->tma_ok = sm90a && clusters && tma_encoder() != nullptr; /* (the switch of the cluster forward) */
    tc_setup_all<__half>(*ds, 0, major >= 9, sm90a);
    tc_setup_all<__nv_bfloat16>(*ds, 1, major >= 9, sm90a);
    ds->f32_tc = f32_tc == -2 ? MLSTM_F32_TC_DEFAULT != 0 : f32_tc != 0;
    if (sm90a) {
        ds->wgf_ok[0] = accepted(setup_fwd_wgmma_f32<64>());
        ds->wgf_ok[1] = accepted(setup_fwd_wgmma_f32<128>());
        ds->wgfb_ok[0] = accepted(setup_bwd_wgmma_f32<64>());
        ds->wgfb_ok[1] = accepted(setup_bwd_wgmma_f32<128>());
    }
    for (int bw = 0; bw < 2; ++bw) {
        ds->tc32_ok[bw][0][0] = accepted(bw ? setup_bwd_tf32<64, 0>() : setup_fwd_tf32<64, 0>());
        ds->tc32_ok[bw][0][1] = accepted(bw ? setup_bwd_tf32<128, 0>() : setup_fwd_tf32<128, 0>());
        ds->tc32_ok[bw][0][2] = accepted(bw ? setup_bwd_tf32<256, 0>() : setup_fwd_tf32<256, 0>());
        ds->tc32_ok[bw][1][0] = accepted(bw ? setup_bwd_tf32<64, 1>() : setup_fwd_tf32<64, 1>());
        ds->tc32_ok[bw][1][1] = accepted(bw ? setup_bwd_tf32<128, 1>() : setup_fwd_tf32<128, 1>());
        ds->tc32_ok[bw][1][2] = accepted(bw ? setup_bwd_tf32<256, 1>() : setup_fwd_tf32<256, 1>());
    }
    /* the SIMT path (63 KB) is the fallback for everything: its setup must succeed */
    const cudaError_t simt[6] = {setup_fwd_simt<float>(), setup_fwd_simt<__half>(), setup_fwd_simt<__nv_bfloat16>(),
                                 setup_bwd_simt<float>(), setup_bwd_simt<__half>(), setup_bwd_simt<__nv_bfloat16>()};
    for (cudaError_t e : simt)
        if (e != cudaSuccess) {
            free(ds);
            MLSTM_RUN(e, "cudaFuncSetAttribute (SIMT kernels)");
        }
    *out = ds;
    return 0;
}

extern "C" void mlstm_cuda_kernels_release(mlstm_cuda_dispatch *ds) { free(ds); }

extern "C" const char *mlstm_cuda_kernels_variant_name(int i) { return i > 0 && i < V_COUNT ? k_variants[i].name : NULL; }

namespace mlstm {
bool masked_cols_ok(int D, int64_t cols)
{
    /* the D = 256 split forward loads K and V through TMA maps of the tensors' own columns in 64-column boxes */
    return cols % 8 == 0 && (D != 256 || cols >= 64);
}

/* Whether the f16/bf16 tensor-core class D serves heads narrower than D by masking columns on this context, in this
 * direction: D = 128 always (its instances mask); D = 256 where the sm_90a masking instances were accepted, the
 * wgmma kernels are allowed and no pinned variant (MLSTM_CUDA_FORCE) of the direction is one without a masking
 * instance (the mma.sync kernels) */
bool class_masks(const Dispatch &ds, int dtype, int D, bool backward)
{
    if (dtype != MLSTM_DTYPE_F16 && dtype != MLSTM_DTYPE_BF16) return false;
    if (D == MASKED_COLS_CLASS) return true;
    if (D != 256 || ds.wg_mode == 0) return false;
    const int t = dtype == MLSTM_DTYPE_BF16 ? 1 : 0;
    if (!backward) {
        const Variant v = forced(ds, ROLE_FWD, dtype);
        return ds.wgm_ok[t] && (v == V_AUTO || v == V_FWD_WG || v == V_FWD_WG_SPLIT);
    }
    const Variant vk = forced(ds, ROLE_DKDV, dtype), vq = forced(ds, ROLE_DQ, dtype);
    return ds.wgkm_ok[t] && ds.wgqm_ok[t] && (vk == V_AUTO || vk == V_DKDV_WG) &&
           (vq == V_AUTO || vq == V_DQ_WG || vq == V_DQ_WG_SPLIT);
}

int masked_class(const Dispatch &ds, int dtype, int64_t dqk, int64_t dv, bool backward)
{
    if (dqk == dv && dim_index(dqk) >= 0) return (int)dqk;
    const int64_t w = dqk > dv ? dqk : dv;
    const int D = w <= 64 ? 64 : w <= 128 ? 128 : w <= 256 ? 256 : 0;
    if (D == 0 || !masked_cols_ok(D, dqk) || !masked_cols_ok(D, dv)) return 0;
    return class_masks(ds, dtype, D, backward) ? D : 0;
}

bool direct_tc(const Dispatch &ds, const mlstm_params *p, bool backward)
{
    const KArgs a = make_args(p);
    return p->dtype == MLSTM_DTYPE_F32 ? tc32_dim(ds, p, a, backward) != 0 : tc_dim(ds, p, a, backward) != 0;
}

int direct_fwd(const Dispatch &ds, const mlstm_params *p, cudaStream_t st, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    const KArgs a = make_args(p);
    switch (p->dtype) {
    case MLSTM_DTYPE_F32: return fwd_t<float>(ds, p, a, st, tr, fail);
    case MLSTM_DTYPE_F16: return fwd_t<__half>(ds, p, a, st, tr, fail);
    case MLSTM_DTYPE_BF16: return fwd_t<__nv_bfloat16>(ds, p, a, st, tr, fail);
    default: MLSTM_RUN(cudaErrorInvalidValue, "dtype"); return 0;
    }
}

int direct_bwd(const Dispatch &ds, const mlstm_params *p, cudaStream_t st, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    const KArgs a = make_args(p);
    switch (p->dtype) {
    case MLSTM_DTYPE_F32: return bwd_t<float>(ds, p, a, st, tr, fail);
    case MLSTM_DTYPE_F16: return bwd_t<__half>(ds, p, a, st, tr, fail);
    case MLSTM_DTYPE_BF16: return bwd_t<__nv_bfloat16>(ds, p, a, st, tr, fail);
    default: MLSTM_RUN(cudaErrorInvalidValue, "dtype"); return 0;
    }
}
} // namespace mlstm

extern "C" size_t mlstm_cuda_kernels_workspace_size(const mlstm_cuda_dispatch *ds, const mlstm_params *p, int backward)
{
    HeadDimPlan hp;
    return head_dim_plan(*ds, p, backward != 0, &hp) ? head_dim_workspace(p, hp, backward != 0) : 0;
}

static int run_call(const Dispatch &ds, const mlstm_params *p, int backward, void *stream, void *ws, size_t ws_bytes,
                    mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    cudaStream_t st = (cudaStream_t)stream;
    if (tr) tr->kernels[0] = '\0';
    HeadDimPlan hp;
    if (!head_dim_plan(ds, p, backward != 0, &hp))
        return backward ? direct_bwd(ds, p, st, tr, fail) : direct_fwd(ds, p, st, tr, fail);
    if (ws_bytes < head_dim_workspace(p, hp, backward != 0)) MLSTM_RUN(cudaErrorInvalidValue, "workspace too small");
    if (tr) snprintf(tr->kernels, sizeof tr->kernels, "headdim.d%dx%d", hp.D, hp.nslice);
    return backward ? head_dim_bwd(ds, p, hp, st, ws, tr, fail) : head_dim_fwd(ds, p, hp, st, ws, tr, fail);
}

extern "C" int mlstm_cuda_kernels_fwd(const mlstm_cuda_dispatch *ds, const mlstm_params *p, void *stream, void *ws,
                                      size_t ws_bytes, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    return run_call(*ds, p, 0, stream, ws, ws_bytes, tr, fail);
}

extern "C" int mlstm_cuda_kernels_bwd(const mlstm_cuda_dispatch *ds, const mlstm_params *p, void *stream, void *ws,
                                      size_t ws_bytes, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    return run_call(*ds, p, 1, stream, ws, ws_bytes, tr, fail);
}

extern "C" const char *mlstm_cuda_kernels_path(const mlstm_cuda_dispatch *ds, const mlstm_params *p, int backward)
{
    HeadDimPlan hp;
    const bool tc = direct_tc(*ds, p, backward != 0) || head_dim_plan(*ds, p, backward != 0, &hp);
    if (p->dtype == MLSTM_DTYPE_F32) return tc ? (p->math_mode == MLSTM_MATH_TF32 ? "tf32" : "tc32") : "simt";
    return tc ? "tc" : "simt";
}
