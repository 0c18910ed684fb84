/* libmlstm CUDA kernels: the generic SIMT path (f32 FFMA, any storage type, any DQK/DV in 1..512, any
 * strides, any alignment). Tiles of 64 x 64 with 256 threads, each thread a 4 x 4 micro-tile per output chunk; head
 * dims are walked in chunks (32 for contractions, 64 for outputs) and padded with zeros, never rejected. A CTA
 * accumulates up to G output chunks from one score (and dP) tile, so wide heads recompute the scores once per G
 * chunks, not once per chunk. Same algorithm, gate handling and kernel names as the tensor-core path (tc::), which it
 * backs up. */
#pragma once

#include <type_traits>
#include "common/common.cuh"

namespace mlstm {
namespace simt {

constexpr int TB = 64;      /* rows and cols of every tile */
constexpr int NT = 256;     /* threads */
constexpr int DC = 32;      /* contraction chunk */
constexpr int LDS = TB + 4; /* smem row stride (floats), keeps float4 alignment */
/* output chunks per CTA, per kernel (16 accumulator floats per thread and chunk; the kernels already hold ~240
 * registers at one chunk: with ptxas of CUDA 13, sm_90a, bf16, the forward spills 32 bytes at 4, dQ none at 4, dK/dV
 * 368 bytes at 2 and 1.1 KB at 4); MLSTM_SIMT_GROUP sets all three (tests) */
#ifdef MLSTM_SIMT_GROUP
#define MLSTM_SIMT_GROUP_FWD MLSTM_SIMT_GROUP
#define MLSTM_SIMT_GROUP_DKDV MLSTM_SIMT_GROUP
#define MLSTM_SIMT_GROUP_DQ MLSTM_SIMT_GROUP
#endif
#ifndef MLSTM_SIMT_GROUP_FWD
#define MLSTM_SIMT_GROUP_FWD 4
#endif
#ifndef MLSTM_SIMT_GROUP_DKDV
#define MLSTM_SIMT_GROUP_DKDV 2
#endif
#ifndef MLSTM_SIMT_GROUP_DQ
#define MLSTM_SIMT_GROUP_DQ 4
#endif
constexpr int G_FWD = MLSTM_SIMT_GROUP_FWD, G_DKDV = MLSTM_SIMT_GROUP_DKDV, G_DQ = MLSTM_SIMT_GROUP_DQ;
/* the 64-column output chunks of a head dim, and the groups of g of them that one CTA takes */
__host__ __device__ constexpr int out_chunks(int64_t d) { return (int)((d + TB - 1) / TB); }
__host__ __device__ constexpr int chunk_groups(int64_t d, int g) { return (out_chunks(d) + g - 1) / g; }

/* smem layout (floats) shared by the three kernels */
constexpr int A_OFF = 0;                /* [DC][LDS]  transposed chunk of the row-side operand */
constexpr int B_OFF = A_OFF + DC * LDS; /* [DC][LDS]  transposed chunk of the column-side operand */
constexpr int M_OFF = B_OFF + DC * LDS; /* [TB][LDS]  elementwise result, transposed ([k][row]) */
constexpr int X_OFF = M_OFF + TB * LDS; /* [TB][LDS]  second-product operand ([k][col]) */
constexpr int W_OFF = X_OFF + TB * LDS; /* [DC][LDS]  transposed chunk of sigma_t h_t (exact-mode dP) */
constexpr int G_OFF = W_OFF + DC * LDS; /* 8 x [TB]   gate vectors */
constexpr int SMEM_FLOATS = G_OFF + 8 * TB;
constexpr int SMEM_BYTES = SMEM_FLOATS * 4;

/* A TB x COLS block g[(r0 + r) * ld + c0 + c] into shared memory, zero outside rows < nrows, cols < ncols:
 * TR: transposed, sm[c][r]; else sm[r][c]. */
template <typename T, bool TR, int COLS>
__device__ __forceinline__ void load_block(float *sm, const T *__restrict__ g, int64_t ld, int64_t r0, int64_t nrows,
                                           int c0, int ncols)
{
#pragma unroll
    for (int it = 0; it < TB * COLS / NT; ++it) {
        int e = it * NT + threadIdx.x;
        int r = e / COLS, c = e % COLS;
        int64_t gr = r0 + r;
        float x = 0.0f;
        if (gr < nrows && c0 + c < ncols) x = to_f32(g[gr * ld + c0 + c]);
        sm[TR ? c * LDS + r : r * LDS + c] = x;
    }
}
/* sm[d][r] for a TB x DC chunk of the reduction dim; sm[r][c] for a TB x TB block */
template <typename T>
__device__ __forceinline__ void load_chunk_t(float *sm, const T *__restrict__ g, int64_t ld, int64_t r0,
                                             int64_t nrows, int d0, int ncols)
{
    load_block<T, true, DC>(sm, g, ld, r0, nrows, d0, ncols);
}
template <typename T>
__device__ __forceinline__ void load_chunk_n(float *sm, const T *__restrict__ g, int64_t ld, int64_t r0,
                                             int64_t nrows, int c0, int ncols)
{
    load_block<T, false, TB>(sm, g, ld, r0, nrows, c0, ncols);
}

/* acc[i][j] += sum_k A[k][ty*4+i] * B[k][tx*4+j] */
template <int K>
__device__ __forceinline__ void mm_acc(float (&acc)[4][4], const float *A, const float *B, int ty, int tx)
{
#pragma unroll 8
    for (int k = 0; k < K; ++k) {
        float4 a = *reinterpret_cast<const float4 *>(A + k * LDS + ty * 4);
        float4 b = *reinterpret_cast<const float4 *>(B + k * LDS + tx * 4);
        float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
}

/* acc = A_rows(r0..) . B_rows(c0..)^T over the contraction dim of length dd (chunked, zero padded) */
template <typename T>
__device__ __forceinline__ void tile_dot(float (&acc)[4][4], float *sA, float *sB, const T *ga, int64_t lda,
                                         int64_t ra, const T *gb, int64_t ldb, int64_t rb, int64_t nrows, int dd,
                                         int ty, int tx)
{
    for (int d0 = 0; d0 < dd; d0 += DC) {
        load_chunk_t<T>(sA, ga, lda, ra, nrows, d0, dd);
        load_chunk_t<T>(sB, gb, ldb, rb, nrows, d0, dd);
        __syncthreads();
        mm_acc<DC>(acc, sA, sB, ty, tx);
        __syncthreads();
    }
}

/* Exact-mode dP - delta, computed as dh_t . (v_j - sigma_t h_t) instead of dh_t . v_j - sigma_t (dh_t . h_t):
 * when h_t ~ sigma_t v_j (one dominant key) the difference is taken per element, where it is (nearly) exact,
 * rather than between two large dot products. sig[r]: sigma of row r of the t-side operand.
 * T_ROWS: the t side is the row operand (dq: acc[t][j]); else the column operand (dkdv: acc[j][t]). Both
 * evaluate fmaf(dh, fl(v - w), acc) in the same order, so the two kernels agree bitwise. */
template <typename T>
__device__ __forceinline__ void load_chunk_t_sig(float *sm, const T *__restrict__ g, int64_t ld, int64_t r0,
                                                 int64_t nrows, int d0, int ncols, const float *sig)
{
#pragma unroll
    for (int it = 0; it < TB * DC / NT; ++it) {
        int e = it * NT + threadIdx.x;
        int r = e / DC, d = e % DC;
        int64_t gr = r0 + r;
        float x = 0.0f;
        if (gr < nrows && d0 + d < ncols) x = sig[r] * to_f32(g[gr * ld + d0 + d]);
        sm[d * LDS + r] = x;
    }
}

template <bool T_ROWS, typename T>
__device__ __forceinline__ void tile_dot_dp(float (&acc)[4][4], float *sA, float *sB, float *sW, const T *gdh,
                                            int64_t ldh, const T *gv, int64_t ldv, const T *gh, int64_t lh,
                                            const float *sig, int64_t qs, int64_t ks, int64_t nrows, int dd, int ty,
                                            int tx)
{
    for (int d0 = 0; d0 < dd; d0 += DC) {
        if (T_ROWS) {
            load_chunk_t<T>(sA, gdh, ldh, qs, nrows, d0, dd);
            load_chunk_t<T>(sB, gv, ldv, ks, nrows, d0, dd);
        } else {
            load_chunk_t<T>(sA, gv, ldv, ks, nrows, d0, dd);
            load_chunk_t<T>(sB, gdh, ldh, qs, nrows, d0, dd);
        }
        load_chunk_t_sig<T>(sW, gh, lh, qs, nrows, d0, dd, sig);
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < DC; ++k) {
            float4 a = *reinterpret_cast<const float4 *>(sA + k * LDS + ty * 4);
            float4 b = *reinterpret_cast<const float4 *>(sB + k * LDS + tx * 4);
            float4 w = *reinterpret_cast<const float4 *>(sW + k * LDS + (T_ROWS ? ty : tx) * 4);
            float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w}, wv[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (T_ROWS) /* a = dh_t, b = v_j, w = sigma_t h_t */
                        acc[i][j] = fmaf(av[i], __fsub_rn(bv[j], wv[i]), acc[i][j]);
                    else /* a = v_j, b = dh_t, w = sigma_t h_t */
                        acc[i][j] = fmaf(bv[j], __fsub_rn(av[i], wv[j]), acc[i][j]);
                }
        }
        __syncthreads();
    }
}

/* stores v[i][j] (rows ty*4+i, cols tx*4+j) transposed: sm[(tx*4+j)*LDS + ty*4 + i] */
__device__ __forceinline__ void store_t(float *sm, const float (&v)[4][4], int ty, int tx)
{
#pragma unroll
    for (int j = 0; j < 4; ++j)
        *reinterpret_cast<float4 *>(sm + (tx * 4 + j) * LDS + ty * 4) = make_float4(v[0][j], v[1][j], v[2][j], v[3][j]);
}

__device__ __forceinline__ float red16_max(float v)
{
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float red16_sum(float v)
{
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
/* compensated (h, l) sum over the 16 lanes of a row group */
__device__ __forceinline__ void red16_csum(float &h, float &l)
{
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) {
        const float yh = __shfl_xor_sync(0xffffffffu, h, o), yl = __shfl_xor_sync(0xffffffffu, l, o);
        cadd(h, l, yh, yl);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Forward: CTA = (query tile, 64-column block of h, batch*head). */
template <typename T>
__global__ void __launch_bounds__(NT) mlstm_fwd_kernel(const __grid_constant__ KArgs args)
{
    constexpr int G = G_FWD;
    extern __shared__ __align__(16) float sm[];
    float *sA = sm + A_OFF, *sB = sm + B_OFF, *sC = sm + M_OFF, *sV = sm + X_OFF;
    float *sQh = sm + G_OFF, *sQl = sQh + TB, *sGh = sQl + TB, *sGl = sGh + TB;

    const int64_t S = args.S;
    const int DQK = (int)args.DQK, DV = (int)args.DV;
    const int64_t nqt = (S + TB - 1) / TB;
    const int nvc = out_chunks(DV);
    const CtaPos cp = cta_pos(args, chunk_groups(DV, G));
    const int vc0 = cp.sub * G; /* this CTA's first output chunk; it takes chunks vc0 .. vc0 + G - 1 below nvc */
    const int64_t b = cp.b, hh = cp.hh, qt = nqt - 1 - cp.rank;
    const int64_t qs = qt * TB;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const T *gq = bh_ptr<T>(tq, b, hh), *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int tid = threadIdx.x, warp = tid >> 5;
    const int ty = tid >> 4, tx = tid & 15;

    if (warp == 0) gate_block_terms(gf, tf.ss, nullptr, 0, qs, S, sQh, sQl, nullptr); /* compensated (CGate64) */
    __syncthreads();
    float rqh[4], rql[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        rqh[i] = sQh[ty * 4 + i];
        rql[i] = sQl[ty * 4 + i];
    }

    float o[G][4][4], mrun[4], lrun[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        mrun[i] = MLSTM_FLOOR;
        lrun[i] = 0.0f;
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
            for (int j = 0; j < 4; ++j) o[g][i][j] = 0.0f;
    }
    float offh = 0.0f, offl = 0.0f; /* O = sum_{u in [ks, qs)} a_u, compensated (warp 0) */
    const float scale = args.scale;

    for (int64_t kt = qt; kt >= 0; --kt) {
        const int64_t ks = kt * TB;
        if (warp == 0) key_pair_terms(gf, tf.ss, gi, ti.ss, ks, qs, S, offh, offl, sGh, sGl);
        float s[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
        tile_dot<T>(s, sA, sB, gq, tq.ss, qs, gk, tk.ss, ks, S, DQK, ty, tx);
        /* requires S rows: tile_dot zero-pads rows >= S of both operands */

        const bool diag = ks == qs;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int64_t t = qs + ty * 4 + i;
            float ld[4], mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int64_t jj = ks + tx * 4 + j;
                ld[j] = cgate_logd(rqh[i], rql[i], sGh[tx * 4 + j], sGl[tx * 4 + j]);
                if (diag && jj > t) ld[j] = -INFINITY;
                mx = fmaxf(mx, ld[j]);
            }
            mx = red16_max(mx);
            const float mnew = fmaxf(mrun[i], mx);
            const float alpha = fast_exp2((mrun[i] - mnew) * MLSTM_LOG2E);
            mrun[i] = mnew;
            lrun[i] *= alpha;
#pragma unroll
            for (int g = 0; g < G; ++g)
#pragma unroll
                for (int j = 0; j < 4; ++j) o[g][i][j] *= alpha;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float p = (ld[j] == -INFINITY) ? 0.0f : fast_exp2(__fmul_rn(__fsub_rn(ld[j], mnew), MLSTM_LOG2E));
                float c = p != 0.0f ? s[i][j] * scale * p : 0.0f; /* masked: 0 even for s = inf */
                s[i][j] = c;
                lrun[i] += c;
            }
        }
        store_t(sC, s, ty, tx);
#pragma unroll
        for (int g = 0; g < G; ++g) { /* one score tile for all of the CTA's output chunks */
            if (vc0 + g >= nvc) break; /* CTA-uniform */
            load_chunk_n<T>(sV, gv, tv.ss, ks, S, (vc0 + g) * TB, DV);
            __syncthreads();
            mm_acc<TB>(o[g], sC, sV, ty, tx);
            __syncthreads();
        }
    }

    const TArg &th = args.t[MLSTM_TENSOR_H], &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
    T *gh = bh_ptr<T>(th, b, hh);
    float *gm = bh_ptr<float>(tm, b, hh), *gn = bh_ptr<float>(tn, b, hh);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float l = red16_sum(lrun[i]);
        const float m = mrun[i];
        float nsig;
        const float inv = fwd_normalizer(l, m, 1.0f, args.eps, nsig);
        const int64_t t = qs + ty * 4 + i;
        if (t < S) {
#pragma unroll
            for (int g = 0; g < G; ++g)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int c = (vc0 + g) * TB + tx * 4 + j;
                    if (c < DV) gh[t * th.ss + c] = from_f32<T>(o[g][i][j] * inv);
                }
            if (tx == 0 && vc0 == 0) {
                gm[t * tm.ss] = m;
                gn[t * tn.ss] = nsig;
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* dK/dV: CTA = (key tile, a group of up to G 64-column blocks of dk or of dv, batch*head); walks query tiles upwards,
 * forming S (and dP for dk) once per query tile for all of its blocks. */
template <typename T>
__global__ void __launch_bounds__(NT) mlstm_bwd_dkdv_kernel(const __grid_constant__ KArgs args)
{
    constexpr int G = G_DKDV;
    extern __shared__ __align__(16) float sm[];
    float *sA = sm + A_OFF, *sB = sm + B_OFF, *sM = sm + M_OFF, *sX = sm + X_OFF;
    float *sKh = sm + G_OFF, *sKl = sKh + TB, *sKi = sKl + TB; /* key block: compensated cumsum, i */
    float *sQh = sKi + TB, *sQl = sQh + TB, *sMt = sQl + TB, *sInv = sMt + TB, *sSig = sInv + TB;
    float *sW = sm + W_OFF;
    const bool exact = args.grad_mode == MLSTM_GRAD_EXACT;
    const TArg &th = args.t[MLSTM_TENSOR_H];

    const int64_t S = args.S;
    const int DQK = (int)args.DQK, DV = (int)args.DV;
    const int64_t nt = (S + TB - 1) / TB;
    const int nqg = chunk_groups(DQK, G);
    const CtaPos cp = cta_pos(args, nqg + chunk_groups(DV, G));
    const int64_t b = cp.b, hh = cp.hh, kt = cp.rank;
    const int64_t ks = kt * TB;
    const bool is_dk = cp.sub < nqg;
    const bool first = cp.sub == 0;                  /* the dk group with chunk 0: also di */
    const int ch0 = (is_dk ? cp.sub : cp.sub - nqg) * G; /* the group's first 64-column chunk of dk or dv */
    const int ncols = is_dk ? DQK : DV, nchunk = out_chunks(ncols);
    const bool need_s = !is_dk || first;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const TArg &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N], &tdh = args.t[MLSTM_TENSOR_DH];
    const TArg &tdf = args.t[MLSTM_TENSOR_DF];
    const T *gq = bh_ptr<T>(tq, b, hh), *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);
    const T *gdh = bh_ptr<T>(tdh, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);
    const float *gm = bh_ptr<float>(tm, b, hh), *gn = bh_ptr<float>(tn, b, hh);
    const float *gdel = bh_ptr<float>(tdf, b, hh);
    const T *gh = bh_ptr<T>(th, b, hh);
    /* f32: di_j = sum_t M_tj in compensated form, its rounding residual left in dq[j][0] for the dQ kernel */
    constexpr bool CMP = std::is_same<T, float>::value;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int ty = tid >> 4, tx = tid & 15;
    const float eps = args.eps, scale = args.scale;

    if (warp == 0) gate_block_terms(gf, tf.ss, gi, ti.ss, ks, S, sKh, sKl, sKi);
    __syncthreads();
    float rkh[4], rkl[4], rki[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        rkh[i] = sKh[ty * 4 + i];
        rkl[i] = sKl[ty * 4 + i];
        rki[i] = sKi[ty * 4 + i];
    }

    float acc[G][4][4], di[4] = {0.0f, 0.0f, 0.0f, 0.0f}, dil[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[g][i][j] = 0.0f;
    float offh = 0.0f, offl = 0.0f, pth = 0.0f, ptl = 0.0f; /* O and the previous query block's total */
    __shared__ float sOf[2]; /* canonical O of the current query tile */

    for (int64_t qt = kt; qt < nt; ++qt) {
        const int64_t qs = qt * TB;
        if (warp == 0) {
            CGate64 gt;
            gt.load(gf, tf.ss, nullptr, 0, qs, S);
            float qch[2], qcl[2], qth, qtl;
            gt.scan(qch, qcl, qth, qtl, qs, S);
            if (qs > ks) cadd(offh, offl, pth, ptl);
            pth = qth;
            ptl = qtl;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int u = lane * 2 + e;
                const int64_t t = qs + u;
                const bool ok = t < S;
                const float m = ok ? gm[t * tm.ss] : 0.0f;
                const float n = ok ? gn[t * tn.ss] : 0.0f;
                sQh[u] = qch[e];
                sQl[u] = qcl[e];
                sMt[u] = m;
                sInv[u] = ok ? 1.0f / (fabsf(n) + eps) : 0.0f;
                sSig[u] = (ok && exact) ? ((n < 0.0f) ? -1.0f : (n > expf(-m) ? 1.0f : 0.0f)) : 0.0f;
            }
            if (lane == 0) {
                float oh = offh, ol = offl;
                cnorm(oh, ol);
                sOf[0] = oh;
                sOf[1] = ol;
            }
        }
        __syncthreads(); /* sSig feeds the first dP chunk load */
        float st[4][4], dpt[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) st[i][j] = dpt[i][j] = 0.0f;
        if (need_s) tile_dot<T>(st, sA, sB, gk, tk.ss, ks, gq, tq.ss, qs, S, DQK, ty, tx);
        if (is_dk) {
            if (exact) /* dpt = dP - delta directly */
                tile_dot_dp<false, T>(dpt, sA, sB, sW, gdh, tdh.ss, gv, tv.ss, gh, th.ss, sSig, qs, ks, S, DV, ty, tx);
            else
                tile_dot<T>(dpt, sA, sB, gv, tv.ss, ks, gdh, tdh.ss, qs, S, DV, ty, tx);
        }

        /* D'_tj = 2^((logD_tj - m_t) log2e) with logD from the compensated pair terms (CGate64): bitwise the
         * same arithmetic as the dq kernel, so both use the same P and q.dq - k.dk cancels cleanly */
        float kgh[4], kgl[4];
        const float oh = sOf[0], ol = sOf[1];
#pragma unroll
        for (int i = 0; i < 4; ++i) cgate_key(rkh[i], rkl[i], rki[i], oh, ol, kgh[i], kgl[i]);
        float mv[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int64_t j = ks + ty * 4 + i;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int u = tx * 4 + c;
                const int64_t t = qs + u;
                const float dp =
                    (j <= t && t < S)
                        ? fast_exp2(__fmul_rn(__fsub_rn(cgate_logd(sQh[u], sQl[u], kgh[i], kgl[i]), sMt[u]), MLSTM_LOG2E))
                        : 0.0f;
                const float inv = sInv[u];
                /* a masked element (dp = 0) is exactly 0, whatever its operands (an inf h_t, hence delta_t) */
                if (is_dk) {
                    const float p = dp != 0.0f ? __fmul_rn(__fmul_rn(dpt[i][c], inv), dp) : 0.0f; /* delta inside dpt */
                    if (first) {
                        if (CMP)
                            cadd(di[i], dil[i], m_elem(p, st[i][c], scale), 0.0f);
                        else
                            di[i] += p * st[i][c] * scale;
                    }
                    mv[i][c] = p;
                } else {
                    mv[i][c] = dp != 0.0f ? st[i][c] * scale * dp * inv : 0.0f;
                }
            }
        }
        store_t(sM, mv, ty, tx); /* sM[t][key] */
#pragma unroll
        for (int g = 0; g < G; ++g) { /* one P (or C/n) tile for all of the CTA's output chunks */
            if (ch0 + g >= nchunk) break; /* CTA-uniform */
            if (is_dk)
                load_chunk_n<T>(sX, gq, tq.ss, qs, S, (ch0 + g) * TB, ncols);
            else
                load_chunk_n<T>(sX, gdh, tdh.ss, qs, S, (ch0 + g) * TB, ncols);
            __syncthreads();
            mm_acc<TB>(acc[g], sM, sX, ty, tx);
            __syncthreads();
        }
    }

    const TArg &tout = args.t[is_dk ? MLSTM_TENSOR_DK : MLSTM_TENSOR_DV], &tdi = args.t[MLSTM_TENSOR_DI];
    T *gout = bh_ptr<T>(tout, b, hh);
    float *gdi = bh_ptr<float>(tdi, b, hh);
    const float fac = is_dk ? scale : 1.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t j = ks + ty * 4 + i;
        float dsum, dres = 0.0f;
        if (CMP) {
            dsum = di[i];
            dres = dil[i];
            red16_csum(dsum, dres);
            cnorm(dsum, dres);
        } else {
            dsum = red16_sum(di[i]);
        }
        if (j < S) {
#pragma unroll
            for (int g = 0; g < G; ++g)
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const int col = (ch0 + g) * TB + tx * 4 + c;
                    if (col < ncols) gout[j * tout.ss + col] = from_f32<T>(acc[g][i][c] * fac);
                }
            if (first && tx == 0) {
                gdi[j * tdi.ss] = dsum;
                if (CMP) { /* read (then overwritten) by the dQ kernel of this row's tile, launched after */
                    const TArg &tdq = args.t[MLSTM_TENSOR_DQ];
                    bh_ptr<float>(tdq, b, hh)[j * tdq.ss] = dres;
                }
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* dQ: CTA = (query tile, batch*head); walks the key tiles downwards once per G 64-column blocks of dq. Writes df last (no other CTA touches these rows): f32, the tile-local suffix sums of
 * dF_t = sum_j M_tj - di_t (see mlstm_bwd_gates_tiled_kernel); other types, df_t = q_t . dq_t. */
template <typename T>
__global__ void __launch_bounds__(NT) mlstm_bwd_dq_kernel(const __grid_constant__ KArgs args)
{
    constexpr int G = G_DQ;
    extern __shared__ __align__(16) float sm[];
    float *sA = sm + A_OFF, *sB = sm + B_OFF, *sM = sm + M_OFF, *sX = sm + X_OFF;
    float *sGh = sm + G_OFF, *sGl = sGh + TB, *sQh = sGl + TB, *sQl = sQh + TB, *sMt = sQl + TB;
    float *sInv = sMt + TB, *sSig = sInv + TB, *sE = sSig + TB;
    float *sW = sm + W_OFF;
    const bool exact = args.grad_mode == MLSTM_GRAD_EXACT;
    const TArg &th = args.t[MLSTM_TENSOR_H];
    /* f32: df gets the tile-local suffix sums of dF_t = sum_j M_tj - di_t (compensated, M bitwise the dK/dV
     * kernel's, di's residual read from dq[t][0]); else df_t = q_t . dq_t (aux.cuh subtracts di) */
    constexpr bool CMP = std::is_same<T, float>::value;

    const int64_t S = args.S;
    const int DQK = (int)args.DQK, DV = (int)args.DV;
    const int64_t nt = (S + TB - 1) / TB;
    const CtaPos cp = cta_pos(args);
    const int64_t b = cp.b, hh = cp.hh, qt = nt - 1 - cp.rank;
    const int64_t qs = qt * TB;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const TArg &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N], &tdh = args.t[MLSTM_TENSOR_DH];
    const TArg &tdf = args.t[MLSTM_TENSOR_DF], &tdq = args.t[MLSTM_TENSOR_DQ];
    const T *gq = bh_ptr<T>(tq, b, hh), *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);
    const T *gdh = bh_ptr<T>(tdh, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);
    const float *gm = bh_ptr<float>(tm, b, hh), *gn = bh_ptr<float>(tn, b, hh);
    float *gdf = bh_ptr<float>(tdf, b, hh);
    T *gdq = bh_ptr<T>(tdq, b, hh);
    const T *gh = bh_ptr<T>(th, b, hh);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int ty = tid >> 4, tx = tid & 15;
    const float scale = args.scale;

    if (warp == 0) {
        CGate64 gt;
        gt.load(gf, tf.ss, nullptr, 0, qs, S);
        float ch[2], cl[2], th, tl;
        gt.scan(ch, cl, th, tl, qs, S);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int u = lane * 2 + e;
            const int64_t t = qs + u;
            const bool ok = t < S;
            const float m = ok ? gm[t * tm.ss] : 0.0f;
            const float n = ok ? gn[t * tn.ss] : 0.0f;
            sQh[u] = ch[e];
            sQl[u] = cl[e];
            sMt[u] = m;
            sInv[u] = ok ? 1.0f / (fabsf(n) + args.eps) : 0.0f;
            sSig[u] = (ok && exact) ? ((n < 0.0f) ? -1.0f : (n > expf(-m) ? 1.0f : 0.0f)) : 0.0f;
        }
    }
    if (CMP && tid < TB) /* di's rounding residual (dK/dV kernel), before this CTA overwrites dq */
        sE[tid] = (qs + tid < S) ? to_f32(gdq[(qs + tid) * tdq.ss]) : 0.0f;
    __syncthreads();
    float rqh[4], rql[4], rm[4], inv[4], qdq[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float msh[4] = {0.0f, 0.0f, 0.0f, 0.0f}, msl[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* sum_j M_tj (f32) */
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        rqh[i] = sQh[ty * 4 + i];
        rql[i] = sQl[ty * 4 + i];
        rm[i] = sMt[ty * 4 + i];
        inv[i] = sInv[ty * 4 + i];
    }

    const int ndc = out_chunks(DQK);
    for (int dc0 = 0; dc0 < ndc; dc0 += G) { /* G 64-column chunks of dq per walk over the key tiles */
        float acc[G][4][4];
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[g][i][j] = 0.0f;
        float offh = 0.0f, offl = 0.0f;
        for (int64_t kt = qt; kt >= 0; --kt) {
            const int64_t ks = kt * TB;
            if (warp == 0) key_pair_terms(gf, tf.ss, gi, ti.ss, ks, qs, S, offh, offl, sGh, sGl);
            float dp[4][4], sq[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) dp[i][j] = sq[i][j] = 0.0f;
            const bool need_m = CMP && dc0 == 0;
            if (need_m) /* S_tj, bitwise the dK/dV kernel's (same fmaf chain over d) */
                tile_dot<T>(sq, sA, sB, gq, tq.ss, qs, gk, tk.ss, ks, S, DQK, ty, tx);
            if (exact)
                tile_dot_dp<true, T>(dp, sA, sB, sW, gdh, tdh.ss, gv, tv.ss, gh, th.ss, sSig, qs, ks, S, DV, ty, tx);
            else
                tile_dot<T>(dp, sA, sB, gdh, tdh.ss, qs, gv, tv.ss, ks, S, DV, ty, tx);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int64_t t = qs + ty * 4 + i;
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const int64_t j = ks + tx * 4 + c;
                    const float d =
                        (j <= t && t < S)
                            ? fast_exp2(__fmul_rn(
                                  __fsub_rn(cgate_logd(rqh[i], rql[i], sGh[tx * 4 + c], sGl[tx * 4 + c]), rm[i]),
                                  MLSTM_LOG2E))
                            : 0.0f;
                    dp[i][c] = d != 0.0f ? __fmul_rn(__fmul_rn(dp[i][c], inv[i]), d) : 0.0f; /* delta inside dp */
                    if (need_m) cadd(msh[i], msl[i], m_elem(dp[i][c], sq[i][c], scale), 0.0f);
                }
            }
            store_t(sM, dp, ty, tx); /* sM[j][t] */
#pragma unroll
            for (int g = 0; g < G; ++g) { /* one P tile for the walk's chunks */
                if (dc0 + g >= ndc) break; /* CTA-uniform */
                load_chunk_n<T>(sX, gk, tk.ss, ks, S, (dc0 + g) * TB, DQK);
                __syncthreads();
                mm_acc<TB>(acc[g], sM, sX, ty, tx);
                __syncthreads();
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int64_t t = qs + ty * 4 + i;
            if (t < S) {
#pragma unroll
                for (int g = 0; g < G; ++g)
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const int col = (dc0 + g) * TB + tx * 4 + c;
                        if (col < DQK) {
                            const float x = acc[g][i][c] * scale;
                            gdq[t * tdq.ss + col] = from_f32<T>(x);
                            if (!CMP) qdq[i] += to_f32(gq[t * tq.ss + col]) * x;
                        }
                    }
            }
        }
    }
    if (CMP) {
        /* dF_t as (hi, lo) pairs in sA (free now), then the tile-local suffix sums into df */
        const TArg &tdi = args.t[MLSTM_TENSOR_DI];
        const float *gdi = bh_ptr<float>(tdi, b, hh);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int u = ty * 4 + i;
            float h = msh[i], l = msl[i];
            red16_csum(h, l);
            if (tx == 0) df_row_terms(sA, u, qs, S, h, l, gdi, tdi.ss, sE[u]);
        }
        __syncthreads();
        if (tid == 0) df_tile_suffix(sA, gdf, tdf.ss, qs, S);
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float v = red16_sum(qdq[i]);
            const int64_t t = qs + ty * 4 + i;
            if (t < S && tx == 0) gdf[t * tdf.ss] = v;
        }
    }
}

} // namespace simt
} // namespace mlstm
