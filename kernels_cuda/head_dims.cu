/* libmlstm CUDA kernels: any DQK up to the largest class and any DV (up to MLSTM_MAX_HEAD_DIM) on the tensor-core
 * instances of class D (64, 128, 256; 512 on sm_90 with MLSTM_CUDA_D512). q and k are zero-padded to D columns (zeros
 * change no score); v, h, dh and dv are cut into column slices of the class's output tile W (D, or 256 for D = 512), each one call of
 * the class's instances (the scores are recomputed per slice). The backward's
 * dq, dk, di and df are sums over the slices: all are linear in dC = dh v^T / N + (row term), and the exact mode's
 * row term delta_t = sigma_t dh_t . h_t is itself the sum of the slices' dh . h. */
#include <stdint.h>
#include <type_traits>
#include "head_dims.h"
#include "common/common.cuh"

namespace mlstm {
namespace {

constexpr int COPY_THREADS = 256;

/* One strided (B, NH, S, cols) tensor: base pointer of element (0, 0, 0, 0) and element strides */
struct Cols {
    void *p;
    int64_t sb, sh, ss;
};

/* One warp per row r of the (B, NH, S) rows: the row's (b, h, s) is worked out once, the lanes stride over the
 * columns (consecutive lanes, consecutive addresses) */
constexpr int ROWS_PER_CTA = COPY_THREADS / 32;
template <typename T> __device__ __forceinline__ T *row_ptr(const Cols &c, int64_t r, int64_t NH, int64_t S)
{
    const int64_t s = r % S, bh = r / S;
    return (T *)c.p + (bh / NH) * c.sb + (bh % NH) * c.sh + s * c.ss;
}

/* dst[.., c] = c < src_cols ? src[.., c] : 0 for c < dst_cols (zero padding, or a plain column copy); U is the unit
 * moved (the element, or 16 bytes where rows and column counts allow), counts in units */
template <typename U>
__global__ void __launch_bounds__(COPY_THREADS)
copy_cols_kernel(Cols src, int64_t src_cols, Cols dst, int64_t dst_cols, int64_t NH, int64_t S, int64_t rows)
{
    const int64_t r = (int64_t)blockIdx.x * ROWS_PER_CTA + (threadIdx.x >> 5);
    if (r >= rows) return;
    const U *sp = row_ptr<U>(src, r, NH, S);
    U *dp = row_ptr<U>(dst, r, NH, S);
    for (int64_t c = threadIdx.x & 31; c < dst_cols; c += 32) dp[c] = c < src_cols ? sp[c] : U{};
}

__device__ __forceinline__ uint32_t bits_of(float x) { return __float_as_uint(x); }
__device__ __forceinline__ uint32_t bits_of(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ uint32_t bits_of(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }

/* dst[.., c] = sum over the n contiguous (rows, ld) slices of src (in f32, one rounding), c < cols */
struct SliceSrc {
    const void *p[HEAD_DIM_MAX_SLICES];
};
template <typename T, int V>
__global__ void __launch_bounds__(COPY_THREADS)
sum_slices_kernel(SliceSrc src, int n, int64_t ld, Cols dst, int64_t cols, int64_t NH, int64_t S, int64_t rows)
{
    const int64_t r = (int64_t)blockIdx.x * ROWS_PER_CTA + (threadIdx.x >> 5);
    if (r >= rows) return;
    T *dp = row_ptr<T>(dst, r, NH, S);
    /* V > 1: whole 16-byte loads and stores (V * sizeof(T) a multiple of 16, rows aligned: checked by the launch) */
    constexpr int NW = V > 1 ? (int)(V * sizeof(T) / 16) : 0;
    static_assert(V == 1 || NW * 16 == (int)(V * sizeof(T)), "16-byte vectors");
    for (int64_t c = (threadIdx.x & 31) * V; c < cols; c += 32 * V) {
        float acc[V] = {};
        for (int k = 0; k < n; ++k) {
            const T *sp = (const T *)src.p[k] + r * ld + c;
            if constexpr (V > 1) {
                uint4 w[NW];
#pragma unroll
                for (int i = 0; i < NW; ++i) w[i] = reinterpret_cast<const uint4 *>(sp)[i];
                const T *x = reinterpret_cast<const T *>(w);
#pragma unroll
                for (int e = 0; e < V; ++e) acc[e] += to_f32(x[e]);
            } else {
                acc[0] += to_f32(sp[0]);
            }
        }
        if constexpr (V > 1) {
            constexpr int PW = 4 / sizeof(T); /* elements per 32-bit word */
            uint32_t w[4 * NW];
#pragma unroll
            for (int i = 0; i < 4 * NW; ++i) {
                w[i] = 0;
#pragma unroll
                for (int e = 0; e < PW; ++e) w[i] |= (uint32_t)bits_of(from_f32<T>(acc[i * PW + e])) << (32 / PW * e);
            }
#pragma unroll
            for (int i = 0; i < NW; ++i)
                reinterpret_cast<uint4 *>(dp + c)[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
        } else {
            dp[c] = from_f32<T>(acc[0]);
        }
    }
}

/* f32 vectors (di, df; one column): one thread per row */
__global__ void __launch_bounds__(COPY_THREADS)
sum_vec_kernel(SliceSrc src, int n, Cols dst, int64_t NH, int64_t S, int64_t rows)
{
    const int64_t r = (int64_t)blockIdx.x * COPY_THREADS + threadIdx.x;
    if (r >= rows) return;
    float acc = 0.0f;
    for (int k = 0; k < n; ++k) acc += ((const float *)src.p[k])[r];
    *row_ptr<float>(dst, r, NH, S) = acc;
}

unsigned row_grid(int64_t rows, int per_cta) { return (unsigned)((rows + per_cta - 1) / per_cta); }

size_t dtype_bytes(int dtype) { return dtype == MLSTM_DTYPE_F32 ? 4 : 2; }

/* The columns [c0, c0 + w) of tensor x of p as a Cols */
Cols cols_of(const mlstm_params *p, int x, int64_t c0)
{
    const mlstm_tensor_arg &t = p->t[x];
    const size_t esz = mlstm_tensor_is_f32(x) ? 4 : dtype_bytes(p->dtype);
    return Cols{(char *)t.mem + (t.offset + c0) * esz, t.stride_b, t.stride_h, t.stride_s};
}

/* A contiguous (B, NH, S, cols) workspace tensor */
Cols contiguous(void *ptr, const mlstm_params *p, int64_t cols)
{
    return Cols{ptr, p->heads * p->seq_len * cols, p->seq_len * cols, cols};
}
mlstm_tensor_arg as_arg(const Cols &c) { return mlstm_tensor_arg{c.p, 0, c.sb, c.sh, c.ss}; }

/* Every row of c starts on a 16-byte boundary (base and every stride; esz-byte elements) */
bool rows16(const Cols &c, size_t esz)
{
    const int64_t m = 16 / (int64_t)esz - 1;
    return ((uintptr_t)c.p & 15) == 0 && ((c.sb | c.sh | c.ss) & m) == 0;
}

/* The widths of the slice calls' tensors: q, k (dq, dk) of DQK columns where the D instance serves them as they
 * stand (f16/bf16 masked columns: hp.masked, dispatch.cu masked_class), else D (zero-padded staging); v, h, dh, dv of
 * slice s (its w = min(W, DV - s W) columns) likewise against the output tile W */
int64_t slice_dqk(const mlstm_params *p, const HeadDimPlan &hp)
{
    return hp.masked && p->dqk < hp.D && masked_cols_ok(hp.D, p->dqk) ? p->dqk : hp.D;
}
int64_t slice_dv(const mlstm_params *p, int64_t c0, const HeadDimPlan &hp)
{
    const int64_t w = p->dv - c0 < hp.W ? p->dv - c0 : hp.W;
    return hp.masked && w < hp.W && masked_cols_ok(hp.D, w) ? w : hp.W;
}

/* Whether the columns from c0 of tensor x (width columns) that the slice call of class hp.D reads or writes
 * (slice_dqk or slice_dv of them) can be handed to it in place: they exist and the rows are 16-byte aligned */
bool in_place(const mlstm_params *p, int x, int64_t c0, int64_t width, const HeadDimPlan &hp)
{
    const bool qk = x == MLSTM_TENSOR_Q || x == MLSTM_TENSOR_K || x == MLSTM_TENSOR_DQ || x == MLSTM_TENSOR_DK;
    const int64_t need = qk ? slice_dqk(p, hp) : slice_dv(p, c0, hp);
    return c0 + need <= width && rows16(cols_of(p, x, c0), dtype_bytes(p->dtype));
}

/* 16-byte units where every row start of both tensors and both column counts allow them */
bool vec16(const Cols &a, const Cols &b, int64_t ca, int64_t cb, size_t esz)
{
    return rows16(a, esz) && rows16(b, esz) && ((ca | cb) & (16 / (int64_t)esz - 1)) == 0;
}
Cols in_units(const Cols &c, int64_t per_unit) { return Cols{c.p, c.sb / per_unit, c.sh / per_unit, c.ss / per_unit}; }

template <typename T> cudaError_t copy_cols(const Cols &src, int64_t src_cols, const Cols &dst, int64_t dst_cols,
                                            const mlstm_params *p, cudaStream_t st)
{
    const int64_t rows = p->batch * p->heads * p->seq_len;
    const unsigned grid = row_grid(rows, ROWS_PER_CTA);
    if (vec16(src, dst, src_cols, dst_cols, sizeof(T))) {
        constexpr int64_t k = 16 / sizeof(T);
        copy_cols_kernel<uint4><<<grid, COPY_THREADS, 0, st>>>(in_units(src, k), src_cols / k, in_units(dst, k),
                                                              dst_cols / k, p->heads, p->seq_len, rows);
    } else {
        copy_cols_kernel<T><<<grid, COPY_THREADS, 0, st>>>(src, src_cols, dst, dst_cols, p->heads, p->seq_len, rows);
    }
    return cudaGetLastError();
}
cudaError_t copy_cols_any(int dtype, const Cols &src, int64_t src_cols, const Cols &dst, int64_t dst_cols,
                          const mlstm_params *p, cudaStream_t st)
{
    if (dtype == MLSTM_DTYPE_F32) return copy_cols<float>(src, src_cols, dst, dst_cols, p, st);
    return copy_cols<uint16_t>(src, src_cols, dst, dst_cols, p, st); /* a plain 2-byte move */
}
template <typename T> cudaError_t sum_slices(const SliceSrc &src, int n, int64_t ld, const Cols &dst, int64_t cols,
                                             const mlstm_params *p, cudaStream_t st)
{
    const int64_t rows = p->batch * p->heads * p->seq_len;
    if (cols == 1 && ld == 1 && std::is_same<T, float>::value) /* di, df */
        sum_vec_kernel<<<row_grid(rows, COPY_THREADS), COPY_THREADS, 0, st>>>(src, n, dst, p->heads, p->seq_len, rows);
    else if (cols % 8 == 0 && ld % 8 == 0 && ((uintptr_t)dst.p & 15) == 0 && ((dst.sb | dst.sh | dst.ss) & 7) == 0)
        sum_slices_kernel<T, 8><<<row_grid(rows, ROWS_PER_CTA), COPY_THREADS, 0, st>>>(src, n, ld, dst, cols, p->heads,
                                                                                      p->seq_len, rows);
    else
        sum_slices_kernel<T, 1><<<row_grid(rows, ROWS_PER_CTA), COPY_THREADS, 0, st>>>(src, n, ld, dst, cols, p->heads,
                                                                                      p->seq_len, rows);
    return cudaGetLastError();
}
cudaError_t sum_slices_any(int dtype, const SliceSrc &src, int n, int64_t ld, const Cols &dst, int64_t cols,
                           const mlstm_params *p, cudaStream_t st)
{
    switch (dtype) {
    case MLSTM_DTYPE_F16: return sum_slices<__half>(src, n, ld, dst, cols, p, st);
    case MLSTM_DTYPE_BF16: return sum_slices<__nv_bfloat16>(src, n, ld, dst, cols, p, st);
    default: return sum_slices<float>(src, n, ld, dst, cols, p, st);
    }
}

/* The workspace: 256-byte aligned pieces handed out in order; with base == nullptr only the size is counted */
struct Arena {
    char *base;
    size_t used;
    void *take(size_t bytes)
    {
        void *r = base ? base + used : nullptr;
        used += (bytes + 255) / 256 * 256;
        return r;
    }
};

/* Everything one adapted call stages; null where a tensor is used in place */
struct Staging {
    void *q, *k, *v, *h, *dh, *dv;                  /* inputs (and dv, h output) staged D wide */
    void *dq[HEAD_DIM_MAX_SLICES], *dk[HEAD_DIM_MAX_SLICES];
    void *di[HEAD_DIM_MAX_SLICES], *df[HEAD_DIM_MAX_SLICES];
};

bool needs_stage(const mlstm_params *p, int x, int64_t width, const HeadDimPlan &hp)
{
    for (int s = 0; s < hp.nslice; ++s)
        if (!in_place(p, x, (int64_t)s * hp.W, width, hp)) return true;
    return false;
}

/* Lays the staging out in the arena (sizes only when the arena has no base); chain: the backward's slices chain
 * their dq, dk (slice_chain), so the last slice needs no parts of its own */
Staging lay_out(const mlstm_params *p, const HeadDimPlan &hp, bool backward, bool chain, Arena &ar)
{
    Staging g = {};
    const size_t rows = (size_t)p->batch * p->heads * p->seq_len;
    const size_t tile = rows * hp.D * dtype_bytes(p->dtype), vtile = rows * hp.W * dtype_bytes(p->dtype);
    const size_t vec = rows * 4;
    if (!in_place(p, MLSTM_TENSOR_Q, 0, p->dqk, hp)) g.q = ar.take(tile);
    if (!in_place(p, MLSTM_TENSOR_K, 0, p->dqk, hp)) g.k = ar.take(tile);
    if (needs_stage(p, MLSTM_TENSOR_V, p->dv, hp)) g.v = ar.take(vtile);
    if (!backward) {
        if (needs_stage(p, MLSTM_TENSOR_H, p->dv, hp)) g.h = ar.take(vtile);
        return g;
    }
    if (p->grad_mode == MLSTM_GRAD_EXACT && needs_stage(p, MLSTM_TENSOR_H, p->dv, hp)) g.h = ar.take(vtile);
    if (needs_stage(p, MLSTM_TENSOR_DH, p->dv, hp)) g.dh = ar.take(vtile);
    if (needs_stage(p, MLSTM_TENSOR_DV, p->dv, hp)) g.dv = ar.take(vtile);
    const bool single = hp.nslice == 1;
    for (int s = 0; s < hp.nslice; ++s) {
        const bool own = !(chain && s == hp.nslice - 1); /* the chain's last slice writes dq, dk */
        if (own && (!single || !in_place(p, MLSTM_TENSOR_DQ, 0, p->dqk, hp))) g.dq[s] = ar.take(tile);
        if (own && (!single || !in_place(p, MLSTM_TENSOR_DK, 0, p->dqk, hp))) g.dk[s] = ar.take(tile);
        if (!single) {
            g.di[s] = ar.take(vec);
            g.df[s] = ar.take(vec);
        }
    }
    return g;
}

/* The staged width of tensor x: D for q, k (dq, dk), the output tile W for v, h, dh, dv */
int tile_cols(int x, const HeadDimPlan &hp)
{
    return x == MLSTM_TENSOR_Q || x == MLSTM_TENSOR_K || x == MLSTM_TENSOR_DQ || x == MLSTM_TENSOR_DK ? hp.D : hp.W;
}

/* Tensor x of the slice call: in place (its columns from c0), or the staging buffer (filled from the call's
 * columns [c0, c0 + w) when fill is set, zero-padded to its tile width) */
int slice_tensor(const mlstm_params *p, mlstm_params &ps, int x, int64_t c0, int64_t width, void *stage, bool fill,
                 const HeadDimPlan &hp, cudaStream_t st, mlstm_cuda_fail *fail)
{
    const int D = tile_cols(x, hp);
    if (in_place(p, x, c0, width, hp)) {
        ps.t[x] = as_arg(cols_of(p, x, c0));
        return 0;
    }
    const Cols c = contiguous(stage, p, D);
    const int64_t w = width - c0 < D ? width - c0 : D;
    if (fill) MLSTM_RUN(copy_cols_any(p->dtype, cols_of(p, x, c0), w, c, D, p, st), "head-dim staging copy");
    ps.t[x] = as_arg(c);
    return 0;
}

/* Copies a staged slice output back into the call's columns [c0, c0 + w) of tensor x */
int unstage(const mlstm_params *p, const mlstm_params &ps, int x, int64_t c0, int64_t width, const HeadDimPlan &hp,
            cudaStream_t st, mlstm_cuda_fail *fail)
{
    const int D = tile_cols(x, hp);
    if (in_place(p, x, c0, width, hp)) return 0;
    const int64_t w = width - c0 < D ? width - c0 : D;
    const mlstm_tensor_arg &t = ps.t[x];
    MLSTM_RUN(copy_cols_any(p->dtype, Cols{t.mem, t.stride_b, t.stride_h, t.stride_s}, w, cols_of(p, x, c0), w, p, st),
              "head-dim copy-back");
    return 0;
}

/* The slice calls' params: q, k of slice_dqk columns; v, h, dh, dv set per slice (slice_dv) */
mlstm_params slice_params(const mlstm_params *p, const HeadDimPlan &hp)
{
    mlstm_params ps = *p;
    ps.dqk = slice_dqk(p, hp);
    ps.dv = hp.W;
    return ps;
}

/* The streams of a call's slices: slice s runs on the call's stream (s even) or the context's side stream (s odd)
 * when the slices share no staging buffer and the context has a side stream; fork() before the first slice, join()
 * after the last (always, also after a failed slice, so that no stream stays forked, e.g. in a graph capture). The
 * forward's slices all write the same m and n: the two streams may store those (bitwise equal) values twice. */
struct SliceRun {
    const SliceStreams *ss; /* null: one stream */
    cudaStream_t st;
    int par; /* slice calls running at once: 2 on two streams, else 1 (SliceLink::par) */
    cudaStream_t stream(int s) const { return ss && (s & 1) ? ss->side : st; }
    cudaError_t fork() const
    {
        if (!ss) return cudaSuccess;
        cudaError_t e = cudaEventRecord(ss->fork, st);
        return e != cudaSuccess ? e : cudaStreamWaitEvent(ss->side, ss->fork, 0);
    }
    cudaError_t join() const
    {
        if (!ss) return cudaSuccess;
        cudaError_t e = cudaEventRecord(ss->join, ss->side);
        return e != cudaSuccess ? e : cudaStreamWaitEvent(st, ss->join, 0);
    }
};
SliceRun slice_run(const mlstm_cuda_dispatch &ds, const HeadDimPlan &hp, bool shared_staging, cudaStream_t st)
{
    const SliceStreams &ss = slice_streams(ds);
    const bool two = hp.nslice > 1 && !shared_staging && ss.side;
    return SliceRun{two ? &ss : nullptr, st, two ? 2 : 1};
}

} // namespace

bool head_dim_plan(const mlstm_cuda_dispatch &ds, const mlstm_params *p, bool backward, HeadDimPlan *hp)
{
    int classes[8];
    const int nc = tc_classes(classes, 8);
    if (nc == 0 || p->dqk > classes[0] || direct_tc(ds, p, backward)) return false;
    /* cost ~ slices x (D + W) / 2, a width of 64 counted as 128 (its kernels run at about half the rate per FLOP),
     * an f32 class off the split-f16 wgmma kernels times 4 (f32_on_wgmma; on sm_90a 128/256 runs as two D = 128
     * slices, not one D = 256 call); ties: larger D */
    HeadDimPlan best = {0, 0, 0, false};
    int64_t best_cost = 0;
    for (int c = 0; c < nc; ++c) {
        const int D = classes[c], W = class_out_tile(D);
        if (D < p->dqk) continue;
        const int64_t ns = (p->dv + W - 1) / W;
        if (ns > HEAD_DIM_MAX_SLICES) continue;
        /* the instance exists and was accepted: ask the direct path about an aligned stand-in of this shape */
        const HeadDimPlan cand = {D, W, (int)ns, class_masks(ds, p->dtype, D, backward)};
        mlstm_params probe = slice_params(p, cand);
        for (int x = 0; x < MLSTM_TENSOR_COUNT; ++x) {
            probe.t[x].mem = probe.t[x].mem ? (void *)(uintptr_t)256 : nullptr;
            probe.t[x].offset = 0;
            probe.t[x].stride_s = mlstm_tensor_is_f32(x) ? 1 : tile_cols(x, cand);
            probe.t[x].stride_h = probe.t[x].stride_s * p->seq_len;
            probe.t[x].stride_b = probe.t[x].stride_h * p->heads;
        }
        if (!direct_tc(ds, &probe, backward)) continue;
        int64_t cost = ns * ((D < 128 ? 128 : D) + (W < 128 ? 128 : W)) / 2;
        if (p->dtype == MLSTM_DTYPE_F32 && !f32_on_wgmma(ds, &probe, backward)) cost *= 4;
        if (best.D == 0 || cost < best_cost) {
            best = cand;
            best_cost = cost;
        }
    }
    if (best.D == 0) return false;
    *hp = best;
    return true;
}

/* Whether the backward's slices chain their dq, dk (head_dim_bwd): several slices, dq and dk used in place, and
 * every slice call chains (bwd_chains) */
bool slice_chain(const mlstm_cuda_dispatch &ds, const mlstm_params *p, const HeadDimPlan &hp)
{
    if (hp.nslice < 2 || !in_place(p, MLSTM_TENSOR_DQ, 0, p->dqk, hp) || !in_place(p, MLSTM_TENSOR_DK, 0, p->dqk, hp))
        return false;
    mlstm_params ps = slice_params(p, hp);
    for (int s = 0; s < hp.nslice; ++s) {
        ps.dv = slice_dv(p, (int64_t)s * hp.W, hp);
        if (!bwd_chains(ds, &ps)) return false;
    }
    return true;
}

size_t head_dim_workspace(const mlstm_cuda_dispatch &ds, const mlstm_params *p, const HeadDimPlan &hp, bool backward)
{
    Arena ar = {nullptr, 0};
    (void)lay_out(p, hp, backward, backward && slice_chain(ds, p, hp), ar);
    return ar.used;
}

int head_dim_fwd(const mlstm_cuda_dispatch &ds, const mlstm_params *p, const HeadDimPlan &hp, cudaStream_t st, void *ws,
                 mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    Arena ar = {(char *)ws, 0};
    const Staging g = lay_out(p, hp, false, false, ar);
    mlstm_params ps = slice_params(p, hp);
    int e;
    if ((e = slice_tensor(p, ps, MLSTM_TENSOR_Q, 0, p->dqk, g.q, true, hp, st, fail))) return e;
    if ((e = slice_tensor(p, ps, MLSTM_TENSOR_K, 0, p->dqk, g.k, true, hp, st, fail))) return e;
    const SliceRun run = slice_run(ds, hp, g.v || g.h, st);
    MLSTM_RUN(run.fork(), "head-dim slice streams (fork)");
    for (int s = 0; s < hp.nslice && !e; ++s) {
        const int64_t c0 = (int64_t)s * hp.W;
        const cudaStream_t ss = run.stream(s);
        ps.dv = slice_dv(p, c0, hp);
        if ((e = slice_tensor(p, ps, MLSTM_TENSOR_V, c0, p->dv, g.v, true, hp, ss, fail))) break;
        if ((e = slice_tensor(p, ps, MLSTM_TENSOR_H, c0, p->dv, g.h, false, hp, ss, fail))) break;
        SliceLink lk = {};
        lk.par = run.par;
        if ((e = direct_fwd(ds, &ps, ss, s == 0 ? tr : nullptr, fail, lk))) break; /* each writes the same m and n */
        e = unstage(p, ps, MLSTM_TENSOR_H, c0, p->dv, hp, ss, fail);
    }
    const cudaError_t je = run.join();
    if (e) return e;
    MLSTM_RUN(je, "head-dim slice streams (join)");
    return 0;
}

int head_dim_bwd(const mlstm_cuda_dispatch &ds, const mlstm_params *p, const HeadDimPlan &hp, cudaStream_t st, void *ws,
                 mlstm_cuda_trace *tr, mlstm_cuda_fail *fail)
{
    const bool chain = slice_chain(ds, p, hp);
    Arena ar = {(char *)ws, 0};
    const Staging g = lay_out(p, hp, true, chain, ar);
    const int D = hp.D, ns = hp.nslice; /* D: dq, dk slices; hp.W: the v-side column slices */
    const bool exact = p->grad_mode == MLSTM_GRAD_EXACT;
    mlstm_params ps = slice_params(p, hp);
    int e;
    if ((e = slice_tensor(p, ps, MLSTM_TENSOR_Q, 0, p->dqk, g.q, true, hp, st, fail))) return e;
    if ((e = slice_tensor(p, ps, MLSTM_TENSOR_K, 0, p->dqk, g.k, true, hp, st, fail))) return e;
    /* each slice has its own di, df parts and, unless chained, dq and dk parts; v, dh, h, dv staging is one buffer
     * for all slices. Chained (every slice on the f16/bf16 tensor-core kernels, dq and dk in place): slice s adds
     * slice s - 1's dq, dk part to its own (KArgs::prior_dq / prior_dk) and the last one writes dq, dk, so that no sum
     * pass reads the parts again; on two streams, slice s's dK/dV (dQ) kernel waits for slice s - 1's. */
    const SliceRun run = slice_run(ds, hp, g.v || g.dh || g.h || g.dv, st);
    MLSTM_RUN(run.fork(), "head-dim slice streams (fork)");
    for (int s = 0; s < ns && !e; ++s) {
        const int64_t c0 = (int64_t)s * hp.W;
        const cudaStream_t ss = run.stream(s);
        ps.dv = slice_dv(p, c0, hp);
        if ((e = slice_tensor(p, ps, MLSTM_TENSOR_V, c0, p->dv, g.v, true, hp, ss, fail))) break;
        if ((e = slice_tensor(p, ps, MLSTM_TENSOR_DH, c0, p->dv, g.dh, true, hp, ss, fail))) break;
        if (exact && (e = slice_tensor(p, ps, MLSTM_TENSOR_H, c0, p->dv, g.h, true, hp, ss, fail))) break;
        if ((e = slice_tensor(p, ps, MLSTM_TENSOR_DV, c0, p->dv, g.dv, false, hp, ss, fail))) break;
        if (g.dq[s]) ps.t[MLSTM_TENSOR_DQ] = as_arg(contiguous(g.dq[s], p, D));
        else ps.t[MLSTM_TENSOR_DQ] = as_arg(cols_of(p, MLSTM_TENSOR_DQ, 0));
        if (g.dk[s]) ps.t[MLSTM_TENSOR_DK] = as_arg(contiguous(g.dk[s], p, D));
        else ps.t[MLSTM_TENSOR_DK] = as_arg(cols_of(p, MLSTM_TENSOR_DK, 0));
        if (g.di[s]) ps.t[MLSTM_TENSOR_DI] = as_arg(contiguous(g.di[s], p, 1));
        if (g.df[s]) ps.t[MLSTM_TENSOR_DF] = as_arg(contiguous(g.df[s], p, 1));
        SliceLink lk = {};
        lk.par = run.par;
        if (chain) {
            if (s > 0) {
                lk.prior_dq = as_arg(contiguous(g.dq[s - 1], p, D));
                lk.prior_dk = as_arg(contiguous(g.dk[s - 1], p, D));
            }
            if (run.ss) { /* consecutive slices on different streams */
                lk.wait_dkdv = s > 0 ? run.ss->dkdv_done : nullptr;
                lk.wait_dq = s > 0 ? run.ss->dq_done : nullptr;
                lk.rec_dkdv = s < ns - 1 ? run.ss->dkdv_done : nullptr;
                lk.rec_dq = s < ns - 1 ? run.ss->dq_done : nullptr;
            }
        }
        if ((e = direct_bwd(ds, &ps, ss, s == 0 ? tr : nullptr, fail, lk))) break;
        e = unstage(p, ps, MLSTM_TENSOR_DV, c0, p->dv, hp, ss, fail);
    }
    const cudaError_t je = run.join();
    if (e) return e;
    MLSTM_RUN(je, "head-dim slice streams (join)");
    /* dq, dk (unless chained: D wide slices -> DQK columns) and, over several slices, di and df: one f32 sum each */
    const struct { void *const *parts; int x; int64_t ld, cols; int dtype; bool summed; } outs[4] = {
        {g.dq, MLSTM_TENSOR_DQ, D, p->dqk, p->dtype, !chain},
        {g.dk, MLSTM_TENSOR_DK, D, p->dqk, p->dtype, !chain},
        {g.di, MLSTM_TENSOR_DI, 1, 1, MLSTM_DTYPE_F32, true},
        {g.df, MLSTM_TENSOR_DF, 1, 1, MLSTM_DTYPE_F32, true},
    };
    for (const auto &o : outs) {
        if (!o.parts[0] || !o.summed) continue;
        SliceSrc src = {};
        for (int s = 0; s < ns; ++s) src.p[s] = o.parts[s];
        MLSTM_RUN(sum_slices_any(o.dtype, src, ns, o.ld, cols_of(p, o.x, 0), o.cols, p, st), "head-dim slice sum");
    }
    return 0;
}

} // namespace mlstm
