/* libmlstm CUDA kernels: shared device helpers. Kernel argument struct (pointers already offset, 64-bit
 * strides), storage-type conversion, the stable gate math (logsigmoid, sigmoid), compensated TwoSum, fast
 * exp2, warp reductions, and the per-tile gate cumsum every kernel uses. Included by every .cu file. */
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "params.h"
#include "common/tile_config.h"

namespace mlstm {

/* Masked columns (tile_config.h): MC says whether a kernel instance masks them; by default the D = 128 instances do
 * (MASKED_COLS_CLASS), and separately compiled sm_90a D = 256 instances (MC = true) serve the narrower heads of
 * that class. The column count a class-D tile loads or stores for a tensor of `cols` columns: cols where the
 * instance masks, else D itself (a compile-time constant: the masks vanish). */
template <int D, bool MC = (D == MASKED_COLS_CLASS)> __device__ __forceinline__ int64_t masked_cols(int64_t cols)
{
    return MC ? cols : (int64_t)D;
}
/* Whether column col of a class-D tile exists in a tensor of `cols` columns (always, at compile time, where the
 * instance does not mask) */
template <int D, bool MC = (D == MASKED_COLS_CLASS)> __device__ __forceinline__ bool col_in(int64_t col, int64_t cols)
{
    return !MC || col < cols;
}

/* ---- kernel arguments ------------------------------------------------------------------------------ */

/* One tensor: pointer to element (0,0,0,0) (offset applied) and element strides of (b, h, s). */
struct TArg {
    void *p;
    int64_t sb, sh, ss;
};

/* Everything a kernel needs, passed by value (__grid_constant__). Tensors indexed by mlstm_tensor. prior_dq,
 * prior_dk (null p: none): the f16/bf16 tensor-core backward adds these tensors' dq / dk (of the call's element type)
 * to its own in f32 before rounding (pack2_prior), so that the head-dim slices of a call chain their sums
 * (head_dims.cu) */
struct KArgs {
    TArg t[MLSTM_TENSOR_COUNT];
    TArg prior_dq, prior_dk;
    int64_t B, NH, S, DQK, DV;
    float scale, eps;
    int grad_mode;
};

/* Where a CTA of the kernels' 1-D grids sits: blockIdx.x = (rank * nsub + sub) * B*NH + batch*head, with nsub CTAs
 * per tile (output-column blocks or roles). The kernels map rank to a tile so that the heaviest tiles come first. */
struct CtaPos {
    int64_t b, hh, rank;
    int sub;
};
__device__ __forceinline__ CtaPos cta_pos(const KArgs &a, int nsub = 1, int64_t idx = -1)
{
    if (idx < 0) idx = blockIdx.x; /* else the position of CTA index idx (e.g. a cluster's) */
    const int64_t BH = a.B * a.NH, bh = idx % BH, r = idx / BH;
    return CtaPos{bh / a.NH, bh % a.NH, r / nsub, (int)(r % nsub)};
}

/* The forward's normaliser of a row: nsig = l if |l| > e^-m else e^-m (l the signed sum of the row's weights, in
 * true units); returns the factor of the row's O, f / (|nsig| + eps) (f: the sign of the scale times whatever scale
 * O still carries, e.g. a range guard's 2^esc) */
__device__ __forceinline__ float fwd_normalizer(float l, float m, float f, float eps, float &nsig)
{
    const float em = expf(-m);
    nsig = (fabsf(l) > em) ? l : em;
    return f / (fabsf(nsig) + eps);
}
/* fwd_normalizer of a thread's row of an MMA fragment: l this lane's partial of the row's sum (the row's four lanes
 * add theirs), esc the range guard's exponent of the row (GUARD: l and O carry 2^-esc) */
template <bool GUARD>
__device__ __forceinline__ float fwd_row_inv(const KArgs &args, float l, float m, float esc, float &nsig)
{
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float sgn = args.scale < 0.0f ? -1.0f : 1.0f, sc = GUARD ? exp2f(esc) : 1.0f;
    return fwd_normalizer(l * sgn * sc, m, sgn * sc, args.eps, nsig);
}

/* The query tile of bm rows a forward or dQ CTA owns (CTA index idx as cta_pos): the heaviest (last) tiles first */
struct QueryTile {
    int64_t b, hh, qs;
};
__device__ __forceinline__ QueryTile query_tile(const KArgs &a, int64_t bm, int64_t idx = -1)
{
    const CtaPos cp = cta_pos(a, 1, idx);
    return QueryTile{cp.b, cp.hh, ((a.S + bm - 1) / bm - 1 - cp.rank) * bm};
}

/* The k-th tile (k = 0, 1, ...) of a persistent CTA's walk over query_tile's heavy-first order, in rounds of
 * gridDim.x tiles, every other round reversed: CTA c takes c, 2G - 1 - c, 2G + c, ... (G = gridDim.x), so that the
 * CTA with a round's heaviest tile takes the next round's lightest. With causal work falling linearly along the order
 * every CTA's sum is then about the mean; the plain stride c, c + G, ... gives CTA 0 the heaviest tile of every round
 * (1.5x the mean at two rounds). Increasing in k: a walk ends at its first tile beyond the last. */
__device__ __forceinline__ int64_t persistent_tile(int64_t k)
{
    const int64_t G = gridDim.x, c = blockIdx.x;
    return k * G + ((k & 1) ? G - 1 - c : c);
}

/* Base of tensor x for (batch b, head h), typed. */
template <typename T>
__device__ __forceinline__ T *bh_ptr(const TArg &x, int64_t b, int64_t h)
{
    return reinterpret_cast<T *>(x.p) + b * x.sb + h * x.sh;
}

/* ---- storage types --------------------------------------------------------------------------------- */

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/* Two floats packed into one 32-bit word of two T (T = __half or __nv_bfloat16), low half first. */
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi)
{
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* pack2 of (lo, hi) plus the two T at prior + col (a row of KArgs::prior_dq / prior_dk; null: none), added in f32 */
template <typename T> __device__ __forceinline__ uint32_t pack2_prior(const T *prior, int64_t col, float lo, float hi)
{
    if (prior) {
        lo += to_f32(prior[col]);
        hi += to_f32(prior[col + 1]);
    }
    return pack2<T>(lo, hi);
}
/* The row pointer of KArgs::prior_dq / prior_dk for row r of (b, h), or null where the call has none */
template <typename T> __device__ __forceinline__ const T *prior_row(const TArg &x, int64_t b, int64_t h, int64_t r)
{
    return x.p ? bh_ptr<const T>(x, b, h) + r * x.ss : nullptr;
}

/* x *= f[row] for an mma accumulator fragment array (per thread: rows g and g+8, elements 0,1 and 2,3) */
template <int N>
__device__ __forceinline__ void scale_frag_rows(float (&x)[N][4], const float *f)
{
#pragma unroll
    for (int n = 0; n < N; ++n) {
        x[n][0] *= f[0];
        x[n][1] *= f[0];
        x[n][2] *= f[1];
        x[n][3] *= f[1];
    }
}

/* ---- math ------------------------------------------------------------------------------------------ */

#define MLSTM_LOG2E 1.4426950408889634f
#define MLSTM_FLOOR MLSTM_M_FLOOR /* the stabiliser floor: defined once, in api/mlstm.h (through params.h) */

/* logsigmoid(f) = min(f,0) - log1p(exp(-|f|)), stable for any finite f. */
__device__ __forceinline__ float logsigmoid(float f) { return fminf(f, 0.0f) - log1pf(expf(-fabsf(f))); }

/* sigmoid(-f) = 1 / (1 + exp(f)), stable for any finite f. */
__device__ __forceinline__ float sigmoid_neg(float f)
{
    if (f > 0.0f) {
        float e = expf(-f);
        return e / (1.0f + e);
    }
    return 1.0f / (1.0f + expf(f));
}

/* 2^x by the special-function unit (rel. error ~2^-22; 2^-inf = 0). */
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Barrier among the first n threads' warps of a CTA that use barrier id (1..15; 0 is __syncthreads). */
__device__ __forceinline__ void named_sync(int id, int n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }
/* The arriving side of named_sync: counts towards barrier id's n threads without waiting (release). */
__device__ __forceinline__ void named_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }

/* Compensated sum (hi, lo): hi + lo carries the exact sum of the terms added so far, up to O(eps^2). */
struct Comp {
    float hi, lo;
};
__device__ __forceinline__ void comp_add(Comp &c, float x)
{
    float s = c.hi + x;
    float bp = s - c.hi;
    float err = (c.hi - (s - bp)) + (x - bp);
    c.hi = s;
    c.lo += err;
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Inclusive prefix sum across the 32 lanes of a warp. */
__device__ __forceinline__ float warp_incl_scan(float v)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        float y = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += y;
    }
    return v;
}

/* Gates of one tile of N positions [s0, s0+N), handled by ONE warp (N a multiple of 32). Lane l owns the
 * E = N/32 consecutive positions l*E ... l*E+E-1. Split in two phases so the global loads can be issued
 * early and their latency hidden behind other work:
 *   load():  f (and i) of the owned positions; positions >= S get f = +inf-like (a = 0) and i = 0.
 *   scan():  cum[e] = a_{s0} + ... + a_{s0+l*E+e}, the tile-local inclusive cumsum of a = logsigmoid(f);
 *            returns the tile total (rounded exactly as cum of the last position) in every lane. */
template <int N>
struct GateTile {
    static constexpr int E = N / 32;
    float f[E], i[E];
    __device__ __forceinline__ void load(const float *__restrict__ fg, int64_t fs, const float *__restrict__ ig,
                                         int64_t is, int64_t s0, int64_t S)
    {
        const int lane = threadIdx.x & 31;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            int64_t s = s0 + lane * E + e;
            bool ok = s < S;
            f[e] = ok ? fg[s * fs] : 0.0f;
            i[e] = (ok && ig) ? ig[s * is] : 0.0f;
        }
    }
    __device__ __forceinline__ float scan(float *cum, int64_t s0, int64_t S) const
    {
        const int lane = threadIdx.x & 31;
        float a[E];
#pragma unroll
        for (int e = 0; e < E; ++e) a[e] = (s0 + lane * E + e < S) ? logsigmoid(f[e]) : 0.0f;
        return scan_values(cum, a);
    }
    /* the same from the a values of the lane's positions (0 beyond S), e.g. computed by other threads */
    static __device__ __forceinline__ float scan_values(float *cum, const float (&a)[E])
    {
        float run = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            run += a[e];
            cum[e] = run;
        }
        float incl = warp_incl_scan(run);
        float excl = incl - run;
#pragma unroll
        for (int e = 0; e < E; ++e) cum[e] = excl + cum[e];
        return __shfl_sync(0xffffffffu, cum[E - 1], 31);
    }
};

/* The query-tile local cumsum of the tensor-core kernels: sF[r] = a_qs + ... + a_{qs+r} for r < N (one warp). */
template <int N>
__device__ __forceinline__ void store_tile_cumsum(const float *__restrict__ gf, int64_t fs, int64_t qs, int64_t S,
                                                  float *sF)
{
    const int lane = threadIdx.x & 31;
    GateTile<N> gt;
    gt.load(gf, fs, nullptr, 0, qs, S);
    float cum[GateTile<N>::E];
    gt.scan(cum, qs, S);
#pragma unroll
    for (int e = 0; e < GateTile<N>::E; ++e) sF[lane * GateTile<N>::E + e] = cum[e];
}

/* ---- compensated (hi, lo) arithmetic for the f32 path's cumsums ---- */
/* s + e == a + b exactly (Knuth's TwoSum); no FMA contraction. */
__device__ __forceinline__ float two_sum(float a, float b, float &e)
{
    const float s = __fadd_rn(a, b);
    const float bp = __fsub_rn(s, a);
    e = __fadd_rn(__fsub_rn(a, __fsub_rn(s, bp)), __fsub_rn(b, bp));
    return s;
}
/* (h, l) += (x, y) */
__device__ __forceinline__ void cadd(float &h, float &l, float x, float y)
{
    float e;
    h = two_sum(h, x, e);
    l = __fadd_rn(l, __fadd_rn(y, e));
}
/* canonical form: h = fl(h + l), l = the rest (so equal sums reached in different orders compare equal) */
__device__ __forceinline__ void cnorm(float &h, float &l)
{
    const float s = __fadd_rn(h, l);
    l = __fsub_rn(l, __fsub_rn(s, h));
    h = s;
}
/* A dQ kernel's running offset (offh, offl) at the start of a new query block of a key block's walk: the previous
 * block's total (pth, ptl) joins it where add (that block lies past the key block's start), this block's (th, tl)
 * waits for the next; lane 0 stores the offset in canonical form at dst[0], dst[1] */
__device__ __forceinline__ void query_offset_step(float &offh, float &offl, float &pth, float &ptl, float th, float tl,
                                                  bool add, float *dst)
{
    if (add) cadd(offh, offl, pth, ptl);
    pth = th;
    ptl = tl;
    if ((threadIdx.x & 31) == 0) {
        float oh = offh, ol = offl;
        cnorm(oh, ol);
        dst[0] = oh;
        dst[1] = ol;
    }
}

/* Online max of the forward kernels: raises each row's running max mrun to at least mx, scales l by
 * exp(old - new) and, unless no row of the warp rose (the usual case walking away from the diagonal), the O
 * fragments too. */
template <int MT, int ND>
__device__ __forceinline__ void online_max_raise(const float (&mx)[MT][2], float (&mrun)[MT][2], float (&lrun)[MT][2],
                                                 float (&o)[MT][ND][4])
{
    float alpha[MT][2];
    bool raised = false;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const float mnew = fmaxf(mrun[mt][rr], mx[mt][rr]);
            alpha[mt][rr] = fast_exp2((mrun[mt][rr] - mnew) * MLSTM_LOG2E);
            raised |= mnew > mrun[mt][rr];
            mrun[mt][rr] = mnew;
            lrun[mt][rr] *= alpha[mt][rr];
        }
    if (__any_sync(0xffffffffu, raised)) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) scale_frag_rows(o[mt], alpha[mt]);
    }
}

/* Compensated gates of an aligned 64-block [s0, s0+64) for the f32 path (one warp; lane l owns 2l, 2l+1):
 * (ch, cl) = inclusive cumsum of a = logsigmoid(f) in canonical (hi, lo) form, (th, tl) the block total.
 * With the tile offset O = (Oh, Ol) between key block and query block (canonical), the pair term is
 *   logD_tj = (qh_t + gh_j) + (ql_t + gl_j),  gh_j + e = Oh - kh_j (TwoSum), gl_j = ((Ol - kl_j) + e) + i_j,
 * whose first sum is exact-ish (nearby values) or about logD itself: F_t - F_j keeps its relative precision
 * even where |F| within the block reaches ~45 (f ~ N(0,1)), which a plain f32 cumsum does not.
 * Any tile size N (16 or a multiple of 32): lane l owns the E consecutive positions l*E ... l*E+E-1 (N = 16:
 * lanes 0..15, one each); (ch, cl) the tile-local inclusive cumsum, (th, tl) the tile total. CGate64 is N = 64. */
template <int N>
struct CGateTile {
    static_assert(N == 16 || N % 32 == 0, "gate tile size");
    static constexpr int E = N >= 32 ? N / 32 : 1;
    static constexpr int LANES = N / E; /* lanes that own positions */
    float f[E], i[E];
    __device__ __forceinline__ void load(const float *__restrict__ fg, int64_t fs, const float *__restrict__ ig,
                                         int64_t is, int64_t s0, int64_t S)
    {
        const int lane = threadIdx.x & 31;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int64_t s = s0 + lane * E + e;
            const bool ok = lane < LANES && s < S;
            f[e] = ok ? fg[s * fs] : 0.0f;
            i[e] = (ok && ig) ? ig[s * is] : 0.0f;
        }
    }
    __device__ __forceinline__ void scan(float (&ch)[E], float (&cl)[E], float &th, float &tl, int64_t s0,
                                         int64_t S) const
    {
        const int lane = threadIdx.x & 31;
        float h = 0.0f, l = 0.0f, lh[E], ll[E];
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int64_t s = s0 + lane * E + e;
            cadd(h, l, (lane < LANES && s < S) ? logsigmoid(f[e]) : 0.0f, 0.0f);
            lh[e] = h;
            ll[e] = l;
        }
        float ih = h, il = l;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            float yh = __shfl_up_sync(0xffffffffu, ih, o), yl = __shfl_up_sync(0xffffffffu, il, o);
            if (lane >= o) {
                cadd(yh, yl, ih, il);
                ih = yh;
                il = yl;
            }
        }
        float eh = __shfl_up_sync(0xffffffffu, ih, 1), el = __shfl_up_sync(0xffffffffu, il, 1);
        if (lane == 0) eh = el = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            float h2 = eh, l2 = el;
            cadd(h2, l2, lh[e], ll[e]);
            cnorm(h2, l2);
            ch[e] = h2;
            cl[e] = l2;
        }
        th = __shfl_sync(0xffffffffu, ch[E - 1], LANES - 1);
        tl = __shfl_sync(0xffffffffu, cl[E - 1], LANES - 1);
    }
};
using CGate64 = CGateTile<64>;

/* key-side pair terms for offset (oh, ol) */
__device__ __forceinline__ void cgate_key(float kh, float kl, float iv, float oh, float ol, float &gh, float &gl)
{
    float e;
    gh = two_sum(oh, -kh, e);
    gl = __fadd_rn(__fadd_rn(__fsub_rn(ol, kl), e), iv);
}
__device__ __forceinline__ float cgate_logd(float qh, float ql, float gh, float gl)
{
    return __fadd_rn(__fadd_rn(qh, gh), __fadd_rn(ql, gl));
}

/* The backward's D'_tj = 2^(A_t + B_j) with A_t = (Fq_t - m_t) log2e + log2(|scale| / (|n_t| + eps)) and
 * B_j = ((i_j - Fk_j) + O) log2e, Fq/Fk cumsums local to the aligned 64-blocks of t and j, O the f32 value of the
 * compensated sum of the block totals in between. The dK/dV and dQ kernels must produce bitwise the same P_tj
 * (so that q.dq - k.dk, whose reverse cumsum is df, cancels to rounding level): these helpers fix the operation
 * order (no FMA contraction). */
__device__ __forceinline__ float bwd_row_a(float cum, float m, float n, float eps, float lsc)
{
    return __fadd_rn(__fmul_rn(__fsub_rn(cum, m), MLSTM_LOG2E), __fsub_rn(lsc, log2f(__fadd_rn(fabsf(n), eps))));
}
__device__ __forceinline__ float bwd_col_b(float gkn, float of) { return __fmul_rn(__fadd_rn(gkn, of), MLSTM_LOG2E); }

/* One warp, walking key tiles downwards from the query tile at qs: the key-side pair terms (gh, gl) of the key
 * tile at ks into sGh/sGl (see CGate64), after adding the tile's gate total to the running compensated offset
 * (offh, offl) when the tile lies before the query tile. */
__device__ __forceinline__ void key_pair_finish(const CGate64 &gt, int64_t ks, int64_t qs, int64_t S, float &offh,
                                                float &offl, float *sGh, float *sGl);
__device__ __forceinline__ void key_pair_terms(const float *gf, int64_t fs, const float *gi, int64_t is, int64_t ks,
                                               int64_t qs, int64_t S, float &offh, float &offl, float *sGh, float *sGl)
{
    CGate64 gt;
    gt.load(gf, fs, gi, is, ks, S);
    key_pair_finish(gt, ks, qs, S, offh, offl, sGh, sGl);
}
/* the same from f and i loaded by the caller (gt.load(gf, fs, gi, is, ks, S), possibly a step early) */
__device__ __forceinline__ void key_pair_finish(const CGate64 &gt, int64_t ks, int64_t qs, int64_t S, float &offh,
                                                float &offl, float *sGh, float *sGl)
{
    const int lane = threadIdx.x & 31;
    float ch[2], cl[2], th, tl;
    gt.scan(ch, cl, th, tl, ks, S);
    if (ks < qs) cadd(offh, offl, th, tl);
    float oh = offh, ol = offl;
    cnorm(oh, ol);
#pragma unroll
    for (int e = 0; e < 2; ++e) cgate_key(ch[e], cl[e], gt.i[e], oh, ol, sGh[lane * 2 + e], sGl[lane * 2 + e]);
}

/* One warp: the compensated cumsum (ch, cl) of the 64-block at s0 into sH, sL and, where gi is given, i into sI (the
 * query side of the SIMT forward; the key side of the dK/dV kernels, where cgate_key turns them into pair terms once
 * the offset to a query block is known). */
__device__ __forceinline__ void gate_block_terms(const float *gf, int64_t fs, const float *gi, int64_t is, int64_t s0,
                                                 int64_t S, float *sH, float *sL, float *sI)
{
    const int lane = threadIdx.x & 31;
    CGate64 gt;
    gt.load(gf, fs, gi, is, s0, S);
    float ch[2], cl[2], th, tl;
    gt.scan(ch, cl, th, tl, s0, S);
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        sH[lane * 2 + e] = ch[e];
        sL[lane * 2 + e] = cl[e];
        if (gi) sI[lane * 2 + e] = gt.i[e];
    }
}
/* M_tj = P_tj * (scale * S_tj): the dK/dV and dQ kernels evaluate it bitwise identically (f32 gate gradients) */
__device__ __forceinline__ float m_elem(float p, float s, float scale) { return __fmul_rn(p, __fmul_rn(scale, s)); }

/* The dQ side of the f32 df scheme (simt.cuh, bwd_tf32.cuh; 64-row query tiles, DF_TILE == GATES_TILE of aux.cuh).
 * df_row_terms: row u of the tile at qs, with (h, l) = sum_j M_tj (compensated): dF_t = sum_j M_tj - di_t - r_t, r_t
 * the residual of di_t that the dK/dV kernel left in dq[t][0], kept as (hi, lo) in buf[u], buf[DF_TILE + u] (0 past S).
 * df_tile_suffix (one thread, after a barrier): the tile-local suffix sums of dF into df, for
 * mlstm_bwd_gates_tiled_kernel to add the later tiles' totals. */
constexpr int DF_TILE = 64;
__device__ __forceinline__ void df_row_terms(float *buf, int u, int64_t qs, int64_t S, float h, float l,
                                             const float *gdi, int64_t dis, float res)
{
    const bool ok = qs + u < S;
    cadd(h, l, ok ? -gdi[(qs + u) * dis] : 0.0f, 0.0f);
    cadd(h, l, -res, 0.0f);
    buf[u] = ok ? h : 0.0f;
    buf[DF_TILE + u] = ok ? l : 0.0f;
}
__device__ __forceinline__ void df_tile_suffix(const float *buf, float *gdf, int64_t dfs, int64_t qs, int64_t S)
{
    const int nq = (int)(S - qs < DF_TILE ? S - qs : DF_TILE);
    float rh = 0.0f, rl = 0.0f;
    for (int u = nq - 1; u >= 0; --u) {
        cadd(rh, rl, buf[u], buf[DF_TILE + u]);
        gdf[(qs + u) * dfs] = __fadd_rn(rh, rl);
    }
}

/* Suffix sums over a block: returns the sum of v over all threads with a larger threadIdx.x, and the block
 * total in *total. sw: NW floats of shared scratch. All threads must call it. */
template <int NW>
__device__ __forceinline__ float block_suffix_excl(float v, float *sw, float *total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        float y = __shfl_down_sync(0xffffffffu, inc, o);
        if (lane + o < 32) inc += y;
    }
    float ex = __shfl_down_sync(0xffffffffu, inc, 1);
    if (lane == 31) ex = 0.0f;
    __syncthreads();
    if (lane == 0) sw[warp] = inc;
    __syncthreads();
    float after = 0.0f;
    for (int w = NW - 1; w > warp; --w) after += sw[w];
    float tot = 0.0f;
    for (int w = NW - 1; w >= 0; --w) tot += sw[w];
    *total = tot;
    return ex + after;
}

} // namespace mlstm
