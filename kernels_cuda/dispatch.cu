/* libmlstm CUDA kernels: dispatch from mlstm_params to a compiled instance (dtype x head dim x path), the
 * kernel-attribute setup, and the C entry points of mlstm_cuda_kernels.h. Compiles no kernel body: the
 * instances live in inst/ (one per file). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/launch.h"
#include "common/tile_config.h"
#include "mlstm_cuda_kernels.h"
#include "head_dims.h"

namespace mlstm {
PFN_cuTensorMapEncodeTiled_v12000 g_tma_encode = nullptr; /* launch.h; set once (tma_encoder) */
namespace {

/* A tensor argument of esz-byte elements as a kernel tensor (its offset applied; mem null: none) */
TArg kernel_tensor(const mlstm_tensor_arg &t, size_t esz)
{
    return TArg{t.mem ? (void *)((char *)t.mem + t.offset * esz) : nullptr, t.stride_b, t.stride_h, t.stride_s};
}

KArgs make_args(const mlstm_params *p)
{
    KArgs a;
    const size_t esz = p->dtype == MLSTM_DTYPE_F32 ? 4 : 2;
    for (int x = 0; x < MLSTM_TENSOR_COUNT; ++x) a.t[x] = kernel_tensor(p->t[x], mlstm_tensor_is_f32(x) ? 4 : esz);
    a.B = p->batch;
    a.NH = p->heads;
    a.S = p->seq_len;
    a.DQK = p->dqk;
    a.DV = p->dv;
    a.scale = p->scale;
    a.eps = p->eps;
    a.grad_mode = p->grad_mode;
    a.prior_dq = a.prior_dk = TArg{nullptr, 0, 0, 0};
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

/* The sm_90a dQ kernel serves both of its variants (two query tiles per CTA / key split): a registry row each */
template <typename T, int D, bool MC, bool SPLIT> cudaError_t run_dq_wgmma(const KArgs &a, cudaStream_t st)
{
    return run_bwd_dq_wgmma<T, D, MC>(a, st, SPLIT);
}

} // namespace
} // namespace mlstm

using namespace mlstm;

/* The variants, one line each: the name (what MLSTM_CUDA_FORCE names and the call trace reports), the direction
 * role it fills, the storage it serves (16-bit f16/bf16, f32, or any) and what a failed launch reports. */
enum VariantRole { ROLE_FWD = 0, ROLE_DKDV = 1, ROLE_DQ = 2, ROLE_BWD32 = 3, ROLE_COUNT = 4 };
enum VariantDtypes { VD_HALF = 1, VD_F32 = 2, VD_ANY = 3 };
struct VariantInfo {
    const char *name;
    int role, dtypes;
    const char *launch;
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
    {"auto", -1, 0, ""},
    {"fwd.simt", ROLE_FWD, VD_ANY, "mlstm_fwd_kernel (simt) launch"},
    {"fwd.tc", ROLE_FWD, VD_HALF, "mlstm_fwd_kernel (tc) launch"},
    {"fwd.tc_small", ROLE_FWD, VD_HALF, "mlstm_fwd_kernel (tc small) launch"},
    {"fwd.tc_split", ROLE_FWD, VD_HALF, "mlstm_fwd_kernel (tc split) launch"},
    {"fwd.wg", ROLE_FWD, VD_HALF, "mlstm_fwd_wgmma_kernel launch"},
    {"fwd.wg_split", ROLE_FWD, VD_HALF, "mlstm_fwd_wgmma_kernel (split) launch"},
    {"fwd.tc32", ROLE_FWD, VD_F32, "mlstm_fwd_kernel (tc32) launch"},
    {"fwd.wg32", ROLE_FWD, VD_F32, "mlstm_fwd_wgmma_f32_kernel launch"},
    {"dkdv.tc", ROLE_DKDV, VD_HALF, "mlstm_bwd_dkdv_kernel (tc) launch"},
    {"dkdv.tc_small", ROLE_DKDV, VD_HALF, "mlstm_bwd_dkdv_kernel (tc small) launch"},
    {"dkdv.wg", ROLE_DKDV, VD_HALF, "mlstm_bwd_dkdv_wgmma_kernel launch"},
    {"dq.tc", ROLE_DQ, VD_HALF, "mlstm_bwd_dq_kernel (tc) launch"},
    {"dq.wg", ROLE_DQ, VD_HALF, "mlstm_bwd_dq_wgmma_kernel launch"},
    {"dq.wg_split", ROLE_DQ, VD_HALF, "mlstm_bwd_dq_wgmma_kernel (split) launch"},
    {"bwd.simt", ROLE_BWD32, VD_ANY, "mlstm_bwd_dkdv/dq_kernel (simt) launch"},
    {"bwd.tc32", ROLE_BWD32, VD_F32, "mlstm_bwd_dkdv/dq_kernel (tc32) launch"},
    {"bwd.wg32", ROLE_BWD32, VD_F32, "mlstm_bwd_dkdv/dq_wgmma_f32_kernel launch"},
};

/* Where an instance runs: sm_80 and later; sm_90 and later (compiled for sm_90+ only, stubs on sm_80); sm_90a code
 * (compute capability 9.0 exactly, in builds that include sm_90a) */
enum InstanceArch { ARCH_ANY = 0, ARCH_SM90 = 1, ARCH_SM90A = 2 };
/* The facts of an instance's tiles that dispatch's policies read (tile_config.h): rows, the query (or key) rows of
 * one CTA of its grid; parts, its CTAs per such row tile; pct, the key-split wgmma forward's grid threshold (percent
 * of the SMs); always, the alternative dK/dV whenever the device runs it; tma, it loads K/V through TMA maps */
struct InstancePolicy {
    int rows, parts, pct;
    bool always, tma;
};
/* The instance registry: one row per compiled, dispatchable kernel instance, generated with the instance sources
 * from the one list in gen_instances.py (inst/registry.inc). A head-dimension class is the D of its rows. */
struct Instance {
    Variant variant;
    int dtype;     /* storage dtype */
    int D;         /* head-dimension class: DQK <= D (= D unless mc); 0: any (SIMT) */
    int dvt;       /* its output (V) tile: DV <= dvt (= dvt unless mc); D but for D = 512 (tile_config.h) */
    bool mc;       /* masks columns beyond DQK / DV (common.cuh masked_cols) */
    int mode;      /* f32 tensor-core math: 0 3xTF32, 1 TF32 (MLSTM_MATH_TF32) */
    int arch;      /* InstanceArch */
    cudaError_t (*run)(const KArgs &, cudaStream_t);
    cudaError_t (*setup)();
    Variant needs; /* the variant of the same (dtype, D, mc) whose acceptance this one also needs, or V_AUTO */
    InstancePolicy pol;
};
static const Instance k_instances[] = {
#define MLSTM_INSTANCE(v, dt, d, dvt, mc, mode, arch, run, setup, needs, ...)                                      \
    {v, dt, d, dvt, mc, mode, arch, run, setup, needs, __VA_ARGS__},
#include "inst/registry.inc"
#undef MLSTM_INSTANCE
};
enum { INSTANCE_COUNT = (int)(sizeof k_instances / sizeof k_instances[0]) };

/* The dispatch state of one context: the instances its device accepted at setup and the policies read then.
 * Immutable after mlstm_cuda_kernels_setup, so contexts (and threads) never see each other's settings. */
struct mlstm_cuda_dispatch {
    int sms;        /* the device's SM count */
    int small_mode; /* small-grid policy: -1 auto (by grid size), 0 never, 1 always (MLSTM_CUDA_SMALL_TILES) */
    int wg_mode;    /* sm_90a warpgroup-MMA kernels: -1 auto, 0 never, 1 whenever eligible (MLSTM_CUDA_WGMMA) */
    bool f32_tc;    /* f32 on tensor cores at all (MLSTM_CUDA_F32_TC) */
    bool tma_ok;    /* the device launches clusters and the driver's tensor-map encoder was found */
    bool ok[INSTANCE_COUNT];      /* per registry row: the device accepted the instance at setup */
    Variant force[ROLE_COUNT][2]; /* tests: MLSTM_CUDA_FORCE per role and storage (16-bit, f32); V_AUTO: dispatch chooses */
    SliceStreams slices;          /* the side stream of head-dim slices (null: none, the slices run in turn) */
};
typedef mlstm_cuda_dispatch Dispatch;

namespace mlstm {
namespace {

/* The registry row of variant v for (dtype, D, f32 mode) that masks columns where mask is set, else the one that
 * does not (or, in a class whose instances always mask, the masking one); -1 where there is none */
int find_instance(Variant v, int dtype, int D, bool mask, int mode = 0)
{
    /* the registry's rows of each variant, listed once (thread-safe static initialisation): a call scans a dozen */
    struct Rows {
        short n[V_COUNT], i[V_COUNT][INSTANCE_COUNT];
    };
    static const Rows rows = [] {
        Rows r = {};
        for (int k = 0; k < INSTANCE_COUNT; ++k) {
            const int vv = k_instances[k].variant;
            r.i[vv][r.n[vv]++] = (short)k;
        }
        return r;
    }();
    int any = -1;
    for (int j = 0; j < rows.n[v]; ++j) {
        const int i = rows.i[v][j];
        const Instance &in = k_instances[i];
        if (in.dtype != dtype || in.D != D || in.mode != mode) continue;
        if (in.mc == mask) return i;
        if (!mask) any = i;
    }
    return any;
}
/* ... where this context's device accepted it, else null */
const Instance *usable(const Dispatch &ds, Variant v, int dtype, int D, bool mask, int mode = 0)
{
    const int i = find_instance(v, dtype, D, mask, mode);
    return i >= 0 && ds.ok[i] ? &k_instances[i] : nullptr;
}
/* the policy facts of variant v's instance in class D (zeros where there is none) */
InstancePolicy policy_of(Variant v, int dtype, int D, bool mask)
{
    const int i = find_instance(v, dtype, D, mask);
    return i >= 0 ? k_instances[i].pol : InstancePolicy{};
}
/* the number of row tiles of `rows` rows covering S */
int64_t row_tiles(int64_t S, int rows) { return rows > 0 ? (S + rows - 1) / rows : S; }

/* The f16/bf16 tensor-core classes are the D of the registry's fwd.tc rows, each with its output tile dvt. The
 * smallest class whose scores hold dqk columns and whose output tile holds dv, or 0 */
int smallest_class(int64_t dqk, int64_t dv)
{
    int best = 0;
    for (const Instance &in : k_instances)
        if (in.variant == V_FWD_TC && in.dtype == MLSTM_DTYPE_F16 && in.D >= dqk && in.dvt >= dv &&
            (best == 0 || in.D < best))
            best = in.D;
    return best;
}
/* the fwd.tc row of class D (f16), or null */
const Instance *class_row(int D)
{
    const int i = find_instance(V_FWD_TC, MLSTM_DTYPE_F16, D, false);
    return i >= 0 ? &k_instances[i] : nullptr;
}

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
/* ... of one instance, run for a call of head dim D ("m" where the instance is the masking one of a class that has a
 * non-masking one too) */
void trace_instance(mlstm_cuda_trace *tr, const Instance &in, int64_t D)
{
    trace_add(tr, k_variants[in.variant].name, in.dtype, D,
              in.mc && &k_instances[find_instance(in.variant, in.dtype, in.D, false)] != &in);
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
Variant fwd_tc_variant(const Dispatch &ds, const KArgs &a, int dt, int D, bool mask, int par)
{
    const int64_t bh = a.B * a.NH * par; /* par calls at once (SliceLink) */
    if (!usable(ds, V_FWD_TC_SMALL, dt, D, mask) ||
        !use_small(ds, row_tiles(a.S, policy_of(V_FWD_TC, dt, D, mask).rows) * bh))
        return V_FWD_TC;
    if (ds.small_mode < 0 && usable(ds, V_FWD_TC_SPLIT, dt, D, mask) &&
        row_tiles(a.S, policy_of(V_FWD_TC_SMALL, dt, D, mask).rows) * bh < (int64_t)MLSTM_SPLIT_CTAS_PER_SM * ds.sms)
        return V_FWD_TC_SPLIT;
    return V_FWD_TC_SMALL;
}
/* the alternative dK/dV tiles: by grid size (D = 64/128), or whenever available unless the env variable says
 * never (D = 256: the sm_90 8-warp variant, tile_config.h) */
bool bwd_small(const Dispatch &ds, const KArgs &a, int dt, int D, bool mask, int par)
{
    const Instance *in = usable(ds, V_DKDV_TC_SMALL, dt, D, mask);
    if (!in) return false;
    if (in->pol.always) return ds.small_mode != 0;
    return use_small(ds, row_tiles(a.S, in->pol.rows) * in->pol.parts * a.B * a.NH * par);
}

/* the key-split wgmma forward's instance, where it can serve a (the cluster variant loads K and V through TMA
 * maps), else null */
const Instance *wgmma_split(const Dispatch &ds, const KArgs &a, int dt, int D, bool mask)
{
    const Instance *in = usable(ds, V_FWD_WG_SPLIT, dt, D, mask);
    if (!in || !in->pol.tma) return in;
    cuuint64_t dims[4], strides[3];
    /* masked columns: the maps span DQK / DV columns; at least one whole 64-column box each (narrower heads take
     * the cp.async variants) */
    if (!ds.tma_ok || a.DQK < 64 || a.DV < 64 || !tma_shape(a.t[MLSTM_TENSOR_K], a, a.DQK, dims, strides) ||
        !tma_shape(a.t[MLSTM_TENSOR_V], a, a.DV, dims, strides))
        return nullptr;
    return in;
}
/* ... and is chosen: when the default grids of the par calls running at once (SliceLink) have fewer CTAs than its
 * percentage of the SMs (or always / never under MLSTM_CUDA_SMALL_TILES=1 / 0) */
bool use_wgmma_split(const Dispatch &ds, const KArgs &a, int dt, int D, bool mask, int par)
{
    if (ds.small_mode == 0) return false;
    const Instance *in = wgmma_split(ds, a, dt, D, mask);
    if (!in) return false;
    if (ds.small_mode == 1) return true;
    return row_tiles(a.S, 128) * a.B * a.NH * par * 100 < (int64_t)in->pol.pct * ds.sms; /* 128-row tiles */
}

/* the f32 tensor-core kernels */
bool tc32_aligned(const KArgs &a, bool backward) { return rows_aligned(a, backward, 4); }

int tc32_mode(const mlstm_params *p) { return p->math_mode == MLSTM_MATH_TF32 ? 1 : 0; }

/* head dim served by the f32 tensor-core forward (or backward), or 0 */
int tc32_dim(const Dispatch &ds, const mlstm_params *p, const KArgs &a, bool backward = false)
{
    if (p->dtype != MLSTM_DTYPE_F32 || !ds.f32_tc || p->dqk != p->dv || p->dqk > 4096) return 0;
    if (!usable(ds, backward ? V_BWD_TC32 : V_FWD_TC32, MLSTM_DTYPE_F32, (int)p->dqk, false, tc32_mode(p))) return 0;
    if (!tc32_aligned(a, backward)) return 0;
    return (int)p->dqk;
}

/* head dim (class) served by the 16-bit tensor-core path, or 0: its default instances accepted (tc_class), and,
 * for tc_dim, aligned rows */
int tc_class(const Dispatch &ds, const mlstm_params *p, bool backward)
{
    if (p->dtype != MLSTM_DTYPE_F16 && p->dtype != MLSTM_DTYPE_BF16) return 0;
    const int D = masked_class(ds, p->dtype, p->dqk, p->dv, backward);
    if (D == 0) return 0;
    const bool ok = backward ? usable(ds, V_DKDV_TC, p->dtype, D, false) && usable(ds, V_DQ_TC, p->dtype, D, false)
                             : usable(ds, V_FWD_TC, p->dtype, D, false) != nullptr;
    return ok ? D : 0;
}
int tc_dim(const Dispatch &ds, const mlstm_params *p, const KArgs &a, bool backward)
{
    return tc_aligned(a, backward) ? tc_class(ds, p, backward) : 0;
}

/* A pinned variant whose instance exists for the call's class but was refused at setup (or, for the cluster split,
 * lacks TMA): the call fails, so that tests never fall back silently; variants with no instance for the call's head
 * dim or math mode do not apply to it (dispatch chooses) */
#define MLSTM_UNAVAILABLE(v) MLSTM_RUN(cudaErrorNotSupported, k_variants[v].name)

/* The f16/bf16 forward on class D */
int fwd_half(const Dispatch &ds, const KArgs &a, int dt, int D, cudaStream_t st, mlstm_cuda_trace *tr,
             mlstm_cuda_fail *fail, int par)
{
    const bool mask = a.DQK < D || a.DV < class_row(D)->dvt; /* a narrower head (masked_class) */
    Variant v = forced(ds, ROLE_FWD, dt);
    if (v != V_AUTO && find_instance(v, dt, D, mask) < 0) v = V_AUTO; /* a pin with no instance in the class */
    if (v == V_AUTO) {
        if (ds.wg_mode != 0 && usable(ds, V_FWD_WG, dt, D, mask))
            v = use_wgmma_split(ds, a, dt, D, mask, par) ? V_FWD_WG_SPLIT : V_FWD_WG;
        else
            v = fwd_tc_variant(ds, a, dt, D, mask, par);
    }
    const Instance *in = v == V_FWD_WG_SPLIT ? wgmma_split(ds, a, dt, D, mask) : usable(ds, v, dt, D, mask);
    if (!in) MLSTM_UNAVAILABLE(v);
    trace_instance(tr, *in, D);
    MLSTM_RUN(in->run(a, st), k_variants[v].launch);
    return 0;
}

/* the sm_90a dQ: its key split while the dQ grid has at most MLSTM_DQ_WS_CTAS_PER_SM 64-row tiles per SM (always /
 * never under MLSTM_CUDA_SMALL_TILES=1 / 0), else two query tiles per CTA */
bool dq_split(const Dispatch &ds, const KArgs &a, int par)
{
    if (ds.small_mode >= 0) return ds.small_mode == 1;
    return (a.S + 63) / 64 * a.B * a.NH * par <= (int64_t)MLSTM_DQ_WS_CTAS_PER_SM * ds.sms;
}
/* The f16/bf16 dK/dV and dQ kernels on class D, ordered by lk's events */
int bwd_half(const Dispatch &ds, const KArgs &a, int dt, int D, cudaStream_t st, mlstm_cuda_trace *tr,
             mlstm_cuda_fail *fail, const SliceLink &lk)
{
    const bool mask = a.DQK < D || a.DV < class_row(D)->dvt, wg = ds.wg_mode != 0;
    Variant vk = forced(ds, ROLE_DKDV, dt), vq = forced(ds, ROLE_DQ, dt);
    if (vk != V_AUTO && find_instance(vk, dt, D, mask) < 0) vk = V_AUTO; /* a pin with no instance in the class */
    if (vq != V_AUTO && find_instance(vq, dt, D, mask) < 0) vq = V_AUTO;
    if (vk == V_AUTO)
        vk = wg && usable(ds, V_DKDV_WG, dt, D, mask) ? V_DKDV_WG
             : bwd_small(ds, a, dt, D, mask, lk.par)  ? V_DKDV_TC_SMALL
                                                       : V_DKDV_TC;
    if (vq == V_AUTO)
        vq = wg && usable(ds, V_DQ_WG, dt, D, mask) ? (dq_split(ds, a, lk.par) ? V_DQ_WG_SPLIT : V_DQ_WG) : V_DQ_TC;
    const Instance *ik = usable(ds, vk, dt, D, mask), *iq = usable(ds, vq, dt, D, mask);
    if (!ik) MLSTM_UNAVAILABLE(vk);
    if (!iq) MLSTM_UNAVAILABLE(vq);
    trace_instance(tr, *ik, D);
    trace_instance(tr, *iq, D);
    if (lk.wait_dkdv) MLSTM_RUN(cudaStreamWaitEvent(st, lk.wait_dkdv, 0), "head-dim slice order (dK/dV)");
    MLSTM_RUN(ik->run(a, st), k_variants[vk].launch);
    if (lk.rec_dkdv) MLSTM_RUN(cudaEventRecord(lk.rec_dkdv, st), "head-dim slice order (dK/dV)");
    if (lk.wait_dq) MLSTM_RUN(cudaStreamWaitEvent(st, lk.wait_dq, 0), "head-dim slice order (dQ)");
    MLSTM_RUN(iq->run(a, st), k_variants[vq].launch);
    if (lk.rec_dq) MLSTM_RUN(cudaEventRecord(lk.rec_dq, st), "head-dim slice order (dQ)");
    return 0;
}

/* The f32 variant of a role (d: the f32 tensor-core head dim serving the call, 0 for none): a pinned one where it has
 * an instance for the call (wg: D 64/128 and the default math; tc: any d), else the split-f16 wgmma kernel where the
 * device accepted it, else 3xTF32 / TF32, else SIMT. The caller fails a pinned wg the device refused. */
Variant f32_variant(const Dispatch &ds, int role, int d, bool tf32, Variant simt, Variant tc, Variant wg)
{
    Variant v = forced(ds, role, MLSTM_DTYPE_F32);
    const bool wg_exists = d != 0 && find_instance(wg, MLSTM_DTYPE_F32, d, false) >= 0;
    if ((v == wg && (tf32 || !wg_exists)) || (v == tc && d == 0)) v = V_AUTO;
    if (v != V_AUTO) return v;
    if (d == 0) return simt;
    return !tf32 && ds.wg_mode != 0 && usable(ds, wg, MLSTM_DTYPE_F32, d, false) ? wg : tc;
}

/* The row of the chosen variant v of an f32 call on head dim d (f32 math mode of p), or null where refused */
const Instance *f32_instance(const Dispatch &ds, const mlstm_params *p, Variant v, Variant simt, Variant tc, int d)
{
    if (v == simt) return usable(ds, simt, MLSTM_DTYPE_F32, 0, false);
    return usable(ds, v, MLSTM_DTYPE_F32, d, false, v == tc ? tc32_mode(p) : 0);
}

/* An f32 call's kernel in one direction: the variant for its tensor-core head dim (tc32_dim, f32_variant) and that
 * variant's row, null where the device refused it */
struct F32Choice {
    Variant v;
    const Instance *in;
};
F32Choice f32_choice(const Dispatch &ds, const mlstm_params *p, const KArgs &a, bool backward)
{
    const Variant simt = backward ? V_BWD_SIMT : V_FWD_SIMT, tc = backward ? V_BWD_TC32 : V_FWD_TC32;
    const int d = tc32_dim(ds, p, a, backward);
    const Variant v = f32_variant(ds, backward ? ROLE_BWD32 : ROLE_FWD, d, tc32_mode(p) == 1, simt, tc,
                                  backward ? V_BWD_WG32 : V_FWD_WG32);
    return F32Choice{v, f32_instance(ds, p, v, simt, tc, d)};
}

cudaError_t run_prep(int dtype, const KArgs &a, cudaStream_t st)
{
    switch (dtype) {
    case MLSTM_DTYPE_F32: return run_bwd_prep<float>(a, st);
    case MLSTM_DTYPE_F16: return run_bwd_prep<__half>(a, st);
    default: return run_bwd_prep<__nv_bfloat16>(a, st);
    }
}

int fwd_call(const Dispatch &ds, const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_trace *tr,
             mlstm_cuda_fail *fail, int par)
{
    const int dt = p->dtype;
    if (dt == MLSTM_DTYPE_F32) {
        const F32Choice c = f32_choice(ds, p, a, false);
        if (!c.in) MLSTM_UNAVAILABLE(c.v);
        trace_instance(tr, *c.in, p->dqk);
        MLSTM_RUN(c.in->run(a, st), k_variants[c.v].launch);
        return 0;
    }
    if (forced(ds, ROLE_FWD, dt) != V_FWD_SIMT) {
        const int D = tc_dim(ds, p, a, false);
        if (D) return fwd_half(ds, a, dt, D, st, tr, fail, par);
    }
    const Instance *in = usable(ds, V_FWD_SIMT, dt, 0, false);
    if (!in) MLSTM_UNAVAILABLE(V_FWD_SIMT);
    trace_instance(tr, *in, p->dqk);
    MLSTM_RUN(in->run(a, st), k_variants[V_FWD_SIMT].launch);
    return 0;
}

int bwd_call(const Dispatch &ds, const mlstm_params *p, const KArgs &a, cudaStream_t st, mlstm_cuda_trace *tr,
             mlstm_cuda_fail *fail, const SliceLink &lk)
{
    const int dt = p->dtype;
    /* the f16/bf16 tensor-core class serving the call (0 for f32, SIMT); only its kernels add KArgs' prior dq / dk */
    const int D = forced(ds, ROLE_BWD32, dt) == V_BWD_SIMT ? 0 : tc_dim(ds, p, a, true);
    if ((a.prior_dq.p || a.prior_dk.p) && !D) /* head_dims.cu asks bwd_chains first */
        MLSTM_RUN(cudaErrorInvalidValue, "prior dq / dk for kernels that do not add them");
    MLSTM_RUN(run_prep(dt, a, st), "mlstm_bwd_prep_kernel launch");
    if (dt == MLSTM_DTYPE_F32) {
        const F32Choice c = f32_choice(ds, p, a, true);
        if (!c.in) MLSTM_UNAVAILABLE(c.v);
        trace_instance(tr, *c.in, p->dqk);
        MLSTM_RUN(c.in->run(a, st), k_variants[c.v].launch); /* each leaves df as mlstm_bwd_gates_tiled_kernel expects */
        MLSTM_RUN(run_bwd_gates_tiled(a, st), "mlstm_bwd_gates_tiled_kernel launch");
        return 0;
    }
    if (D) {
        const int e = bwd_half(ds, a, dt, D, st, tr, fail, lk);
        if (e) return e;
    } else {
        const Instance *in = usable(ds, V_BWD_SIMT, dt, 0, false);
        if (!in) MLSTM_UNAVAILABLE(V_BWD_SIMT);
        trace_instance(tr, *in, p->dqk);
        MLSTM_RUN(in->run(a, st), k_variants[V_BWD_SIMT].launch);
    }
    MLSTM_RUN(run_bwd_gates(a, st), "mlstm_bwd_gates_kernel launch");
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

extern "C" int mlstm_cuda_kernels_setup(mlstm_cuda_fail *fail, int small_tiles, int f32_tc, int wgmma, int d512,
                                        const char *force, mlstm_cuda_dispatch **out)
{
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
    ds->f32_tc = f32_tc == -2 ? MLSTM_F32_TC_DEFAULT != 0 : f32_tc != 0;
    const bool d512_on = d512 == -2 ? MLSTM_D512_DEFAULT != 0 : d512 == 1; /* the D = 512 class (tile_config.h) */
    /* every registry row the device can run: its setup (a refused shared-memory size only disables it); the SIMT
     * path (63 KB) is the fallback for everything, so its setup must succeed */
    for (int i = 0; i < INSTANCE_COUNT; ++i) {
        const Instance &in = k_instances[i];
        const bool runs = in.arch == ARCH_ANY || (in.arch == ARCH_SM90 && major >= 9) || (in.arch == ARCH_SM90A && sm90a);
        if (!runs || (in.D == 512 && !d512_on)) continue;
        const cudaError_t e = in.setup();
        if (e != cudaSuccess && in.D == 0) {
            free(ds);
            MLSTM_RUN(e, "cudaFuncSetAttribute (SIMT kernels)");
        }
        ds->ok[i] = accepted(e);
    }
    for (int i = 0; i < INSTANCE_COUNT; ++i) { /* the key-split wgmma forward also needs its default tiles */
        const Instance &in = k_instances[i];
        if (in.needs == V_AUTO) continue;
        const int j = find_instance(in.needs, in.dtype, in.D, in.mc, in.mode);
        ds->ok[i] = ds->ok[i] && j >= 0 && ds->ok[j];
    }
    if (MLSTM_SLICE_STREAMS) { /* an optimisation: where the stream or its events cannot be had, slices run in turn */
        SliceStreams &ss = ds->slices;
        if (cudaStreamCreateWithFlags(&ss.side, cudaStreamNonBlocking) != cudaSuccess ||
            cudaEventCreateWithFlags(&ss.fork, cudaEventDisableTiming) != cudaSuccess ||
            cudaEventCreateWithFlags(&ss.join, cudaEventDisableTiming) != cudaSuccess ||
            cudaEventCreateWithFlags(&ss.dkdv_done, cudaEventDisableTiming) != cudaSuccess ||
            cudaEventCreateWithFlags(&ss.dq_done, cudaEventDisableTiming) != cudaSuccess) {
            (void)cudaGetLastError();
            release_slice_streams(ss);
        }
    }
    *out = ds;
    return 0;
}

extern "C" void mlstm_cuda_kernels_release(mlstm_cuda_dispatch *ds)
{
    if (ds) release_slice_streams(ds->slices);
    free(ds);
}

extern "C" const char *mlstm_cuda_kernels_variant_name(int i) { return i > 0 && i < V_COUNT ? k_variants[i].name : NULL; }

namespace mlstm {
bool masked_cols_ok(int D, int64_t cols)
{
    /* a class whose split forward loads K and V through TMA maps (D = 256: the cluster pair) spans the tensors' own
     * columns in 64-column boxes */
    return cols % 8 == 0 && (!policy_of(V_FWD_WG_SPLIT, MLSTM_DTYPE_F16, D, false).tma || cols >= 64);
}

/* Whether the f16/bf16 tensor-core class D serves heads narrower than D by masking columns on this context, in this
 * direction: a class whose mma.sync instances mask (MASKED_COLS_CLASS, D = 512) always; another class
 * where each role of the direction has an accepted masking instance of the variant dispatch would run (the pinned
 * one, MLSTM_CUDA_FORCE, else the wgmma one: only those have masking instances of their own, gen_instances.py
 * WG_MASKED_DIMS) */
bool class_masks(const Dispatch &ds, int dtype, int D, bool backward)
{
    if (dtype != MLSTM_DTYPE_F16 && dtype != MLSTM_DTYPE_BF16) return false;
    const Instance *cr = class_row(D);
    if (cr && cr->mc) return true; /* its mma.sync instances mask (MASKED_COLS_CLASS, D = 512) */
    if (ds.wg_mode == 0) return false;
    const auto serves = [&](int role, Variant wg) {
        const Variant v = forced(ds, role, dtype);
        return usable(ds, v == V_AUTO ? wg : v, dtype, D, true) != nullptr;
    };
    return backward ? serves(ROLE_DKDV, V_DKDV_WG) && serves(ROLE_DQ, V_DQ_WG) : serves(ROLE_FWD, V_FWD_WG);
}

int masked_class(const Dispatch &ds, int dtype, int64_t dqk, int64_t dv, bool backward)
{
    const int D = smallest_class(dqk, dv);
    if (D == 0) return 0;
    if (dqk == D && dv == class_row(D)->dvt) return D;
    if (!masked_cols_ok(D, dqk) || !masked_cols_ok(D, dv)) return 0;
    return class_masks(ds, dtype, D, backward) ? D : 0;
}

int tc_classes(int *out, int max)
{
    int n = 0;
    for (int D = smallest_class(1, 0); D != 0 && n < max; D = smallest_class(D + 1, 0)) out[n++] = D;
    for (int i = 0; i < n / 2; ++i) { /* largest first */
        const int t = out[i];
        out[i] = out[n - 1 - i];
        out[n - 1 - i] = t;
    }
    return n;
}

int class_out_tile(int D)
{
    const Instance *cr = class_row(D);
    return cr ? cr->dvt : 0;
}

const SliceStreams &slice_streams(const Dispatch &ds) { return ds.slices; }

void release_slice_streams(SliceStreams &ss)
{
    if (ss.join) (void)cudaEventDestroy(ss.join);
    if (ss.dkdv_done) (void)cudaEventDestroy(ss.dkdv_done);
    if (ss.dq_done) (void)cudaEventDestroy(ss.dq_done);
    if (ss.fork) (void)cudaEventDestroy(ss.fork);
    if (ss.side) (void)cudaStreamDestroy(ss.side);
    ss = SliceStreams{};
}

bool direct_tc(const Dispatch &ds, const mlstm_params *p, bool backward)
{
    const KArgs a = make_args(p);
    return p->dtype == MLSTM_DTYPE_F32 ? tc32_dim(ds, p, a, backward) != 0 : tc_dim(ds, p, a, backward) != 0;
}

bool f32_on_wgmma(const Dispatch &ds, const mlstm_params *p, bool backward)
{
    return p->dtype == MLSTM_DTYPE_F32 &&
           f32_choice(ds, p, make_args(p), backward).v == (backward ? V_BWD_WG32 : V_FWD_WG32);
}

int direct_fwd(const Dispatch &ds, const mlstm_params *p, cudaStream_t st, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail,
               const SliceLink &lk)
{
    return fwd_call(ds, p, make_args(p), st, tr, fail, lk.par);
}

int direct_bwd(const Dispatch &ds, const mlstm_params *p, cudaStream_t st, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail,
               const SliceLink &lk)
{
    KArgs a = make_args(p);
    const size_t esz = p->dtype == MLSTM_DTYPE_F32 ? 4 : 2; /* dq, dk: the call's element type */
    a.prior_dq = kernel_tensor(lk.prior_dq, esz);
    a.prior_dk = kernel_tensor(lk.prior_dk, esz);
    return bwd_call(ds, p, a, st, tr, fail, lk);
}

bool bwd_chains(const Dispatch &ds, const mlstm_params *p)
{
    if (forced(ds, ROLE_BWD32, p->dtype) == V_BWD_SIMT) return false;
    if ((p->seq_len + 63) / 64 * p->batch * p->heads < (int64_t)MLSTM_CHAIN_CTAS_PER_SM * ds.sms) return false;
    return tc_class(ds, p, true) != 0;
}
} // namespace mlstm

extern "C" size_t mlstm_cuda_kernels_workspace_size(const mlstm_cuda_dispatch *ds, const mlstm_params *p, int backward)
{
    HeadDimPlan hp;
    return head_dim_plan(*ds, p, backward != 0, &hp) ? head_dim_workspace(*ds, p, hp, backward != 0) : 0;
}

static int run_call(const Dispatch &ds, const mlstm_params *p, int backward, void *stream, void *ws, size_t ws_bytes,
                    mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    cudaStream_t st = (cudaStream_t)stream;
    if (tr) tr->kernels[0] = '\0';
    HeadDimPlan hp;
    if (!head_dim_plan(ds, p, backward != 0, &hp))
        return backward ? direct_bwd(ds, p, st, tr, fail) : direct_fwd(ds, p, st, tr, fail);
    if (ws_bytes < head_dim_workspace(ds, p, hp, backward != 0)) MLSTM_RUN(cudaErrorInvalidValue, "workspace too small");
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
