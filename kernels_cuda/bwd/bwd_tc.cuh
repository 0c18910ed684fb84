/* libmlstm CUDA kernels: tensor-core backward for f16/bf16 storage, score width DK (DQK padded to the class) and
 * V width DV: DK = DV = D in {64, 128, 256}, or the D = 512 class (DK 512, DV 256 slices: head_dims.cu).
 *   mlstm_bwd_dkdv_kernel: one CTA per (key tile of 16*NW keys, output column block, batch*head); each warp
 *     owns 16 keys and computes S^T = K Q^T and dP^T = V dH^T for query tiles walked from the diagonal
 *     forwards, then dV += (C/n)^T dH and dK += P^T Q; writes dk, dv, di_j = sum_t P_tj S_tj from the f32 tiles, and
 *     into dq[j][0..1] the residual k_j . dk_j - di_j that keeps df on the rounded tiles. PAIR variant (D=256,
 *     sm_90): two warps per 16 keys split S^T / dP^T and the output columns, exchanging tiles in smem.
 *   mlstm_bwd_dq_kernel: one CTA per (query tile, batch*head); dP = dH V^T, dQ += P K over key tiles walked
 *     from the diagonal backwards; reads delta_t from df and overwrites df_t with q_t . dq_t minus that residual.
 *     DK = 512: two warps per 16 rows, each forming the same dP and accumulating one 256-column half of dQ. */
#pragma once

#include <type_traits>
#include "common/mma.cuh"
#include "common/range_guard.cuh"

namespace mlstm {
namespace tc {

/* the two floats of a pack2<T> word (lo, hi) */
template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t u);
template <> __device__ __forceinline__ float2 unpack2<__half>(uint32_t u)
{
    return __half22float2(*reinterpret_cast<const __half2 *>(&u));
}
template <> __device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t u)
{
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u));
}

/* barrier of the 64 threads of warp pair `pair` (named barriers 1.., 0 is __syncthreads) */
__device__ __forceinline__ void pair_sync(int pair) { asm volatile("bar.sync %0, 64;" ::"r"(1 + pair) : "memory"); }

/* ---------------------------------------------------------------------------------------------------- */
/* dK/dV kernel parts shared by the mma.sync and the wgmma versions. */

/* Key gates (see bwd_row_a / bwd_col_b) of a warp's two key rows wk0 + g, wk0 + g + 8 of the key tile at ks: the
 * warp scans the aligned 64-block holding its keys and keeps i_j - Fk_j of its rows in gkn. */
__device__ __forceinline__ void dkdv_key_gates(const float *gf, int64_t fs, const float *gi, int64_t is, int64_t ks,
                                               int wk0, int64_t S, float (&gkn)[2])
{
    const int g = (threadIdx.x & 31) >> 2;
    GateTile<64> gt;
    const int64_t kbs = ks + (wk0 / 64) * 64;
    gt.load(gf, fs, gi, is, kbs, S);
    float cum[2];
    gt.scan(cum, kbs, S);
    const float x0 = gt.i[0] - cum[0], x1 = gt.i[1] - cum[1];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int u = (wk0 & 63) + g + rr * 8;
        const float v0 = __shfl_sync(0xffffffffu, x0, u >> 1), v1 = __shfl_sync(0xffffffffu, x1, u >> 1);
        gkn[rr] = (u & 1) ? v1 : v0;
    }
}

/* Query gates of the query tiles a dK/dV CTA walks upwards (one warp; load() early, finish() later), for a key tile
 * of NKB 64-blocks at ks: cb = A_t (-inf for t >= S), del = delta_t, of[kb] = O between key block kb and the query
 * block (compensated, walked upwards). e = 2^(A_t + B_j) = |scale| D'_tj / (|n_t|+eps); with sgn = sign(scale):
 * C/n = sgn S e, scale P = sgn (dP - delta) e. */
template <int NKB, int BMQ>
struct DkdvQueryGates {
    const float *gf, *gm, *gn, *gdel;
    int64_t fs, ms, ns, dls, ks, S;
    float eps, lsc, prev_tot = 0.0f;
    Comp offk[NKB];
    GateTile<64> gq_next;
    float nm[2], nn[2], nd[2];
    __device__ __forceinline__ DkdvQueryGates(const KArgs &args, int64_t b, int64_t hh, int64_t ks_)
    {
        const TArg &tf = args.t[MLSTM_TENSOR_F], &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
        const TArg &tdf = args.t[MLSTM_TENSOR_DF];
        gf = bh_ptr<float>(tf, b, hh);
        gm = bh_ptr<float>(tm, b, hh);
        gn = bh_ptr<float>(tn, b, hh);
        gdel = bh_ptr<float>(tdf, b, hh);
        fs = tf.ss;
        ms = tm.ss;
        ns = tn.ss;
        dls = tdf.ss;
        ks = ks_;
        S = args.S;
        eps = args.eps;
        lsc = log2f(fabsf(args.scale));
#pragma unroll
        for (int kb = 0; kb < NKB; ++kb) offk[kb] = Comp{0.0f, 0.0f};
    }
    __device__ __forceinline__ void load(int64_t qs)
    {
        const int lane = threadIdx.x & 31;
        const int64_t qbs = qs & ~(int64_t)63;
        gq_next.load(gf, fs, nullptr, 0, qbs, S);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int64_t t = qbs + 2 * lane + e;
            const bool ok = t < S && t >= qs && t < qs + BMQ;
            nm[e] = ok ? gm[t * ms] : 0.0f;
            nn[e] = ok ? gn[t * ns] : 0.0f;
            nd[e] = ok ? gdel[t * dls] : 0.0f;
        }
    }
    __device__ __forceinline__ void finish(int64_t qs, float *cb, float *del, float *of)
    {
        const int64_t qbs = qs & ~(int64_t)63;
        float cum[2], t2[2];
        const float tot = gq_next.scan(cum, qbs, S);
#pragma unroll
        for (int e = 0; e < 2; ++e) t2[e] = row_term(nn[e]);
        finish_scanned(qs, cum, tot, nm, t2, nd, cb, del, of);
    }
    /* the n-dependent half of bwd_row_a (the same operations, so the same A_t) */
    __device__ __forceinline__ float row_term(float n) const { return __fsub_rn(lsc, log2f(__fadd_rn(fabsf(n), eps))); }
    __device__ __forceinline__ void finish_scanned(int64_t qs, const float (&cum)[2], float tot, const float (&m)[2],
                                                   const float (&t2)[2], const float (&d)[2], float *cb, float *del,
                                                   float *of)
    {
        const int lane = threadIdx.x & 31;
        const int64_t qbs = qs & ~(int64_t)63;
        if ((qs & 63) == 0 && qs > ks) { /* entering query block qb: add the total of block qb-1 */
#pragma unroll
            for (int kb = 0; kb < NKB; ++kb)
                if (ks + kb * 64 <= qbs - 64) comp_add(offk[kb], prev_tot);
        }
        prev_tot = tot;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int u = 2 * lane + e - (int)(qs - qbs);
            if (u >= 0 && u < BMQ) {
                const bool ok = qs + u < S;
                cb[u] = ok ? __fadd_rn(__fmul_rn(__fsub_rn(cum[e], m[e]), MLSTM_LOG2E), t2[e]) : -INFINITY;
                del[u] = d[e];
            }
        }
#pragma unroll
        for (int kb = 0; kb < NKB; ++kb)
            if (lane == kb) of[kb] = (qbs > ks + kb * 64) ? offk[kb].hi + offk[kb].lo : 0.0f;
    }
    /* Distributed form (the wgmma kernels): 64 producer threads, p = 0..63 the position in the query tile's 64-block,
     * load a step early and store late in the step before: pr = {logsigmoid(f), m, row_term(n), delta} x 64 (one
     * slot); then one warp runs finish_from on that slot. */
    __device__ __forceinline__ void produce_load(int64_t qs, int p, float (&r)[4]) const
    {
        const int64_t qbs = qs & ~(int64_t)63, t = qbs + p;
        const bool in = t < S, ok = in && t >= qs && t < qs + BMQ;
        r[0] = in ? gf[t * fs] : 0.0f;
        r[1] = ok ? gm[t * ms] : 0.0f;
        r[2] = ok ? gn[t * ns] : 0.0f;
        r[3] = ok ? gdel[t * dls] : 0.0f;
    }
    __device__ __forceinline__ void produce_store(int64_t qs, int p, const float (&r)[4], float *pr) const
    {
        const int64_t t = (qs & ~(int64_t)63) + p;
        pr[p] = t < S ? logsigmoid(r[0]) : 0.0f;
        pr[64 + p] = r[1];
        pr[128 + p] = row_term(r[2]);
        pr[192 + p] = r[3];
    }
    __device__ __forceinline__ void finish_from(int64_t qs, const float *pr, float *cb, float *del, float *of)
    {
        const int lane = threadIdx.x & 31;
        float a[2], m[2], t2[2], d[2], cum[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            a[e] = pr[2 * lane + e];
            m[e] = pr[64 + 2 * lane + e];
            t2[e] = pr[128 + 2 * lane + e];
            d[e] = pr[192 + 2 * lane + e];
        }
        const float tot = GateTile<64>::scan_values(cum, a);
        finish_scanned(qs, cum, tot, m, t2, d, cb, del, of);
    }
};

/* Visits every element (n, c = 2 rr + cc) of a warp's (16 keys x BMQ queries) tile with its D' factor e and
 * delta_t: body(n, c, rr, dead, e, delta). Key row jr = wk0 + g + 8 rr is masked for query column u when
 * jr > qrel + u (MASK); a masked element must come out exactly 0, whatever its operands (an inf h_t, hence delta_t).
 * GUARD: e carries the row's range-guard factor pw = 2^-esc as an exact product (not in the exponent's argument), so
 * that the f32 P of the dK/dV and dQ kernels differ only by powers of two and their T-rounded tiles agree. */
template <bool MASK, bool GUARD, int BMQ, typename Body>
__device__ __forceinline__ void dkdv_for_each_element(const float *cCb, const float *cDel, const float (&gb2)[2],
                                                      const float (&pw)[2], int wk0, int qrel, Body &&body)
{
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
#pragma unroll
    for (int n = 0; n < BMQ / 8; ++n) {
        const int u0 = n * 8 + 2 * q4;
        const float2 cb = *reinterpret_cast<const float2 *>(cCb + u0);
        const float2 dl = *reinterpret_cast<const float2 *>(cDel + u0);
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int jr = wk0 + g + rr * 8;
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
                const bool dead = MASK && jr > qrel + u0 + cc;
                float e = dead ? 0.0f : fast_exp2(__fadd_rn(cc ? cb.y : cb.x, gb2[rr]));
                if (GUARD) e = __fmul_rn(e, pw[rr]);
                body(n, rr * 2 + cc, rr, dead, e, cc ? dl.y : dl.x);
            }
        }
    }
}

/* x rounded to T's significand as the tile rounding would round x 2^s for the power of two 2^s that puts it in T's
 * normal range (f16: a range-guarded tile's entries are rounded after a power-of-two rescale this element does not
 * know yet; bf16 has f32's range) */
template <typename T> __device__ __forceinline__ float round_sig(float x) { return to_f32(from_f32<T>(x)); }
template <> __device__ __forceinline__ float round_sig<__half>(float x)
{
    const int u = __float_as_int(x), ex = u & 0x7f800000; /* 0 for zero and f32 subnormals: they come out 0 */
    const float y = __int_as_float((u & ~0x7f800000) | 0x3f800000); /* x's significand and sign, |y| in [1, 2) */
    return __half2float(__float2half_rn(y)) * __int_as_float(ex);
}

/* One element of the S^T / dP^T tiles -> (C/n) / sgn in st (for dV) and scale P / sgn in dpt (for dK). di_ex
 * accumulates sum_t P S from the f32 values (one FMA; di's own precision, not that of the rounded P tile). SPLIT (the
 * output columns split over CTAs, so no CTA holds all of k.dk): di_rd accumulates the same from the T-rounded P that
 * the dK product uses, as k.dk would; the epilogue passes di_rd - di_ex on to the dQ kernel, so that df (the reverse
 * cumsum of q.dq - k.dk) still cancels between the two kernels' rounded tiles. GUARD: mx gets each row's largest
 * |entry|. */
template <typename T, bool SPLIT, bool GUARD, int BMQ>
__device__ __forceinline__ void dkdv_element(float (&st)[BMQ / 8][4], float (&dpt)[BMQ / 8][4], int n, int c, int rr,
                                             bool dead, float e, float del, float (&di_ex)[2], float (&di_rd)[2],
                                             float (&mx)[2])
{
    const float sv = dead ? 0.0f : st[n][c];
    const float p = dead ? 0.0f : __fmul_rn(__fsub_rn(dpt[n][c], del), e);
    di_ex[rr] = fmaf(p, sv, di_ex[rr]);
    if (SPLIT) di_rd[rr] = fmaf(round_sig<T>(p), sv, di_rd[rr]);
    const float cn = sv * e;
    st[n][c] = cn;
    dpt[n][c] = p;
    if (GUARD) mx[rr] = fmaxf(mx[rr], fmaxf(fabsf(cn), fabsf(p)));
}

/* dK/dV epilogue of a warp's key rows wk0 + g, wk0 + g + 8 (output columns [c0, c0 + DOUT)): dk, dv = sgn * acc
 * (range guard undone) and, where write_di, di_j from di_ex (the per-thread partial sums of the f32 P S) and the
 * residual r_j = di'_j - di_j, with di'_j the same sum over the T-rounded P of the dK product: k_j . dk_j from the f32
 * accumulator (kval(row, col) gives k at (row, col), (row, col + 1) of the tile) or, RD_PS, from the partial sums
 * di_rd. r_j goes into dq[j][0..1] as one f32 (the dQ kernel reads it before it writes that row, dq_epilogue).
 * ROWS = false: di and r_j only, the caller writing dk and dv (bwd_wgmma.cuh dkdv_rows_staged). */
template <typename T, int DK, int DV, int DOUT, bool GUARD, bool RD_PS, bool MC = (DK == MASKED_COLS_CLASS),
          bool ROWS = true, typename KVal>
__device__ __forceinline__ void dkdv_epilogue(const KArgs &args, int64_t b, int64_t hh, int64_t ks, int wk0, int c0,
                                              bool write_di, const float (&adk)[DOUT / 8][4],
                                              const float (&adv)[DOUT / 8][4], const float (&esc)[2],
                                              const float (&di_ex)[2], const float (&di_rd)[2], KVal &&kval)
{
    const TArg &tdk = args.t[MLSTM_TENSOR_DK], &tdv = args.t[MLSTM_TENSOR_DV], &tdi = args.t[MLSTM_TENSOR_DI];
    const TArg &tdq = args.t[MLSTM_TENSOR_DQ];
    T *gdk = bh_ptr<T>(tdk, b, hh), *gdv = bh_ptr<T>(tdv, b, hh), *gdq = bh_ptr<T>(tdq, b, hh);
    float *gdi = bh_ptr<float>(tdi, b, hh);
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const float sgn = args.scale < 0.0f ? -1.0f : 1.0f;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int kr = wk0 + g + rr * 8;
        const int64_t j = ks + kr;
        const float osc = GUARD ? sgn * exp2f(esc[rr]) : sgn; /* sign(scale), range guard undone */
        float rd = 0.0f;
        if (!RD_PS) {
#pragma unroll
            for (int n = 0; n < DOUT / 8; ++n) {
                const float2 k2 = kval(kr, n * 8 + 2 * q4);
                rd += k2.x * adk[n][rr * 2] + k2.y * adk[n][rr * 2 + 1];
            }
        } else {
            rd = di_rd[rr];
        }
        float di = di_ex[rr] * osc;
        rd *= osc;
        di += __shfl_xor_sync(0xffffffffu, di, 1);
        di += __shfl_xor_sync(0xffffffffu, di, 2);
        rd += __shfl_xor_sync(0xffffffffu, rd, 1);
        rd += __shfl_xor_sync(0xffffffffu, rd, 2);
        if (j < args.S) {
            T *rk = gdk + j * tdk.ss + c0;
            T *rv = gdv + j * tdv.ss + c0;
            const T *pk = prior_row<T>(args.prior_dk, b, hh, j);
#pragma unroll
            for (int n = 0; n < (ROWS ? DOUT / 8 : 0); ++n) { /* !ROWS: the caller stores dk, dv (staged) */
                /* DQK <= DK, DV <= the V tile, multiples of 8 (masked columns); DK != DV: the column block may lie
                 * beyond one of the two (c0 >= DV: no dv block in this CTA) */
                const int col = c0 + n * 8 + 2 * q4;
                if ((DK == DV || c0 < DK) && col_in<DK, MC>(col, args.DQK))
                    *reinterpret_cast<uint32_t *>(rk + n * 8 + 2 * q4) =
                        pack2_prior<T>(pk, col, adk[n][rr * 2] * osc, adk[n][rr * 2 + 1] * osc);
                if ((DK == DV || c0 < DV) && col_in<DV, MC>(col, args.DV))
                    *reinterpret_cast<uint32_t *>(rv + n * 8 + 2 * q4) =
                        pack2<T>(adv[n][rr * 2] * osc, adv[n][rr * 2 + 1] * osc);
            }
            if (q4 == 0 && write_di) {
                gdi[j * tdi.ss] = di;
                *reinterpret_cast<float *>(gdq + j * tdq.ss) = rd - di; /* 4-byte aligned: 16-byte aligned rows */
            }
        }
    }
}

/* acc += A B^T for a warp's 16 rows from r0 of tile A (at shared address a) and the N rows from n0 of tile B (at b),
 * both rows of W columns (swizzled tiles, fb their fragment bases): a warp's S^T = K Q^T, dP^T = V dH^T or dP = dH V^T */
template <typename T, int W, int N>
__device__ __forceinline__ void warp_product_nt(float (&acc)[N / 8][4], uint32_t a, uint32_t b, const FragBase<W> &fb,
                                                int r0, int n0 = 0)
{
#pragma unroll
    for (int kk = 0; kk < W / 16; ++kk) {
        uint32_t a4[4];
        load_a<W>(a4, a, fb, r0, kk * 16);
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            uint32_t b4[4];
            load_b_nk<W>(b4, b, fb, n0 + np * 16, kk * 16);
            mma_n16<T>(acc[2 * np], a4, b4);
        }
    }
}

/* acc += A B for one k16 slice kk: A a warp's (16 x 16) fragment a, B the (16 x N) block at rows kk 16 of tile b (rows
 * of W columns, read transposed: ldmatrix .trans); the dV += (C/n)^T dH, dK += P^T Q and dQ += P K of one slice */
template <typename T, int W, int N>
__device__ __forceinline__ void warp_product_kn(float (&acc)[N / 8][4], const uint32_t (&a)[4], uint32_t b,
                                                const FragBase<W> &fb, int kk)
{
#pragma unroll
    for (int dp = 0; dp < N / 16; ++dp) {
        uint32_t b4[4];
        load_b_kn<W>(b4, b, fb, kk * 16, dp * 16);
        mma_n16<T>(acc[2 * dp], a, b4);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* PAIR (D = 256 on sm_90): the warps form NW/2 pairs on the same 16 keys; in a pair, warp 0 computes S^T and
 * warp 1 dP^T, they exchange the rounded C/n and P tiles through shared memory, and each accumulates dK and dV for
 * its half of the columns (DOUT = D/2): S^T and dP^T are computed once instead of once per column block. */
/* The inputs of a dK/dV CTA's (batch, head): q, k, v, dh (T) and i, f (f32) tensors and their base pointers; tile
 * loads of the CTA's key tile (K where with_k, V) and of a query tile (Q, dH), zero-filled beyond DQK / DV (MC) */
template <typename T, int DK, int DV, int NT, bool MC>
struct DkdvInputs {
    const KArgs &args;
    const TArg &tq, &tk, &tv, &ti, &tf, &tdh;
    const T *gq, *gk, *gv, *gdh;
    const float *gi, *gf;
    __device__ __forceinline__ DkdvInputs(const KArgs &a, int64_t b, int64_t hh)
        : args(a), tq(a.t[MLSTM_TENSOR_Q]), tk(a.t[MLSTM_TENSOR_K]), tv(a.t[MLSTM_TENSOR_V]), ti(a.t[MLSTM_TENSOR_I]),
          tf(a.t[MLSTM_TENSOR_F]), tdh(a.t[MLSTM_TENSOR_DH]), gq(bh_ptr<T>(tq, b, hh)), gk(bh_ptr<T>(tk, b, hh)),
          gv(bh_ptr<T>(tv, b, hh)), gdh(bh_ptr<T>(tdh, b, hh)), gi(bh_ptr<float>(ti, b, hh)), gf(bh_ptr<float>(tf, b, hh))
    {
    }
    template <int BNK>
    __device__ __forceinline__ void load_keys(T *sK, T *sV, int64_t ks, int64_t S, bool with_k) const
    {
        if (with_k) load_tile_async<T, BNK, DK, NT>(sK, gk, tk.ss, ks, S, masked_cols<DK, MC>(args.DQK));
        load_tile_async<T, BNK, DV, NT>(sV, gv, tv.ss, ks, S, masked_cols<DV, MC>(args.DV));
    }
    template <int BMQ> __device__ __forceinline__ void load_queries(T *sQ, T *sH, int64_t qs, int64_t S) const
    {
        load_tile_async<T, BMQ, DK, NT>(sQ, gq, tq.ss, qs, S, masked_cols<DK, MC>(args.DQK));
        load_tile_async<T, BMQ, DV, NT>(sH, gdh, tdh.ss, qs, S, masked_cols<DV, MC>(args.DV));
    }
    /* the top of query-tile step qt (buffer buf of the two): waits for its tiles, then starts the next step's Q, dH
     * loads and (warp 0) its query gates */
    template <int BMQ, typename QueryGates>
    __device__ __forceinline__ void next_query_tile(QueryGates &qg, T *sQ, T *sH, int buf, int64_t qs, bool more,
                                                    int64_t S, int warp) const
    {
        cp_async_wait<0>();
        __syncthreads();
        if (more) {
            load_queries<BMQ>(sQ + (buf ^ 1) * BMQ * DK, sH + (buf ^ 1) * BMQ * DV, qs + BMQ, S);
            cp_async_commit();
            if (warp == 0) qg.load(qs + BMQ);
        }
    }
};

template <int DK, int DV, int NW, int BMQ, int DOUT, bool PAIR = false>
struct DkdvCfg {
    static constexpr int BNK = 16 * (PAIR ? NW / 2 : NW); /* keys per CTA */
    static constexpr int NT = 32 * NW;
    static constexpr int K_BYTES = BNK * DK * 2, V_BYTES = BNK * DV * 2;
    static constexpr int QT_BYTES = BMQ * DK * 2, HT_BYTES = BMQ * DV * 2;
    static constexpr int K_OFF = 0;
    static constexpr int V_OFF = K_BYTES;
    static constexpr int Q_OFF = K_BYTES + V_BYTES;       /* [2] buffers */
    static constexpr int DH_OFF = Q_OFF + 2 * QT_BYTES;   /* [2] buffers */
    static constexpr int NKB = BNK / 64;                  /* 64-blocks of keys per CTA */
    static constexpr int G_OFF = DH_OFF + 2 * HT_BYTES;   /* floats: sA[2][BMQ], sDel[2][BMQ], sOf[2][NKB] */
    static constexpr int X_OFF = G_OFF + (4 * BMQ + 2 * NKB) * 4; /* PAIR: [NW][BMQ/16][4][32] u32 tiles, then
                                                                      [NW][2][32] floats row maxima, then
                                                                      [NW/2][BMQ/8][4][32] floats: role 1's f32 P */
    static constexpr int SMEM = X_OFF + (PAIR ? NW * (BMQ / 16 * 4 + 2) * 32 * 4 + NW / 2 * (BMQ / 2) * 32 * 4 : 0);
    /* CTAs per key tile: column block dc of dk (dc < DK / DOUT) and of dv (dc < DV / DOUT) */
    static constexpr int NGRID = PAIR ? 1 : (DK > DV ? DK : DV) / DOUT;
    static constexpr bool SPLIT = DOUT < DK;
    static_assert(!PAIR || (DK == DV && DOUT * 2 == DK && NW % 2 == 0), "a pair covers D with two column halves");
    static_assert(BNK % 64 == 0 && 64 % BMQ == 0 && BMQ % 32 == 0, "tiles vs the 64-blocks of the gate cumsums");
    static_assert(DK % DOUT == 0 && DV % DOUT == 0 && DOUT % 16 == 0, "output block");
};

template <typename T, int DK, int DV, int NW, int BMQ, int DOUT, bool SM90 = false, bool PAIR = false,
          bool MC = (DK == MASKED_COLS_CLASS)>
__global__ void __launch_bounds__(32 * NW) mlstm_bwd_dkdv_kernel(const __grid_constant__ KArgs args)
{
    /* SM90: a small-grid variant that dispatch.cu uses on sm_90+ only; its sm_80 image is an empty stub, which
     * keeps the CI build time (two architectures) in bounds */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    if constexpr (SM90) {
        __trap();
    } else
#endif
    {
    using Cfg = DkdvCfg<DK, DV, NW, BMQ, DOUT, PAIR>;
    constexpr int D = DK; /* PAIR (DK = DV) */
    constexpr int BNK = Cfg::BNK, NT = Cfg::NT;
    constexpr int NSPLIT = Cfg::NGRID;
    extern __shared__ __align__(128) unsigned char smem[];
    T *sK = reinterpret_cast<T *>(smem + Cfg::K_OFF);
    T *sV = reinterpret_cast<T *>(smem + Cfg::V_OFF);
    T *sQ = reinterpret_cast<T *>(smem + Cfg::Q_OFF);
    T *sH = reinterpret_cast<T *>(smem + Cfg::DH_OFF);
    float *sCb = reinterpret_cast<float *>(smem + Cfg::G_OFF); /* A_t */
    float *sDel = sCb + 2 * BMQ;
    float *sOf = sDel + 2 * BMQ;
    constexpr int NKB = Cfg::NKB;

    const int64_t S = args.S;
    const CtaPos cp = cta_pos(args, NSPLIT);
    const int dc = cp.sub;
    const int64_t b = cp.b, hh = cp.hh, kt = cp.rank; /* lowest key tiles (most work) first */
    const int64_t ks = kt * BNK;

    const DkdvInputs<T, DK, DV, NT, MC> in(args, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    /* PAIR: warp = role * NW/2 + pair; role 0 computes S^T, role 1 dP^T, each owns output columns role * DOUT */
    const int pair = PAIR ? warp % (NW / 2) : warp, role = PAIR ? warp / (NW / 2) : 0;
    const int wk0 = pair * 16;                 /* first key row of this warp within the tile */
    const int c0 = (PAIR ? role : dc) * DOUT;  /* first output column */
    const int64_t nqt = (S + BMQ - 1) / BMQ;
    const int64_t qt0 = ks / BMQ; /* == first query tile touching the key tile (BNK % BMQ == 0) */

    in.template load_keys<BNK>(sK, sV, ks, S, true);
    in.template load_queries<BMQ>(sQ, sH, qt0 * BMQ, S);
    cp_async_commit();

    /* key gates (see bwd_row_a / bwd_col_b): every warp scans the aligned 64-block holding its 16 keys and keeps
     * i_j - Fk_j of its two rows */
    const int kbw = wk0 / 64; /* key block of this warp within the CTA (ks % 64 == 0) */
    float gkn[2];
    dkdv_key_gates(in.gf, in.tf.ss, in.gi, in.ti.ss, ks, wk0, S, gkn);

    /* query gates of a tile, by warp 0 (DkdvQueryGates): sCb = A_t, sDel = delta_t, sOf[kb] = O */
    DkdvQueryGates<NKB, BMQ> qg(args, b, hh, ks);
    if (warp == 0) {
        qg.load(qt0 * BMQ);
        qg.finish(qt0 * BMQ, sCb, sDel, sOf);
    }

    const FragBase<DK> fb; /* K, Q tiles: rows of DK */
    const FragBase<DV> fbv; /* V, dH tiles: rows of DV (the same bases where DK = DV) */
    const uint32_t aK = smem_u32(sK), aV = smem_u32(sV), aQ = smem_u32(sQ), aH = smem_u32(sH);

    float adk[DOUT / 8][4], adv[DOUT / 8][4];
#pragma unroll
    for (int n = 0; n < DOUT / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) adk[n][c] = adv[n][c] = 0.0f;
    /* sum_t P_tj S_tj / sgn of the two key rows from the f32 P (di) and, SPLIT / PAIR, from the rounded P (dkdv_epilogue) */
    float di_ex[2] = {0.0f, 0.0f}, di_rd[2] = {0.0f, 0.0f};
    constexpr bool GUARD = NeedsRangeGuard<T>::value;
    float esc[2] = {0.0f, 0.0f}, hw[2] = {0.0f, 0.0f}; /* range guard of the two key rows (range_guard.cuh) */

    int buf = 0;
    for (int64_t qt = qt0; qt < nqt; ++qt, buf ^= 1) {
        const int64_t qs = qt * BMQ;
        in.template next_query_tile<BMQ>(qg, sQ, sH, buf, qs, qt + 1 < nqt, S, warp);
        const uint32_t cQ = aQ + buf * BMQ * DK * 2;
        const uint32_t cH = aH + buf * BMQ * DV * 2;
        const float *cCb = sCb + buf * BMQ, *cDel = sDel + buf * BMQ;
        const float of = sOf[buf * NKB + kbw];

        const bool skip = qs + BMQ - 1 < ks + wk0; /* every query of the tile precedes every key of the warp */
        if (!skip) {
            float st[BMQ / 8][4], dpt[BMQ / 8][4];
#pragma unroll
            for (int n = 0; n < BMQ / 8; ++n)
#pragma unroll
                for (int c = 0; c < 4; ++c) st[n][c] = dpt[n][c] = 0.0f;
            if constexpr (PAIR) { /* this warp's product only: S^T = K Q^T (role 0) or dP^T = V dH^T (role 1) */
                warp_product_nt<T, D, BMQ>(st, role ? aV : aK, role ? cH : cQ, fb, wk0);
            } else if constexpr (DK == DV)
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                uint32_t ak[4], av[4];
                load_a<D>(ak, aK, fb, wk0, kk * 16);
                load_a<D>(av, aV, fb, wk0, kk * 16);
#pragma unroll
                for (int np = 0; np < BMQ / 16; ++np) {
                    uint32_t bq[4], bh4[4];
                    load_b_nk<D>(bq, cQ, fb, np * 16, kk * 16);
                    load_b_nk<D>(bh4, cH, fb, np * 16, kk * 16);
                    mma_n16<T>(st[2 * np], ak, bq);
                    mma_n16<T>(dpt[2 * np], av, bh4);
                }
            }
            else { /* S^T over the DK columns of K and Q (for dv and di: the CTAs that own a dv block, CTA 0 among
                    * them; the others leave st zero), dP^T over the DV columns of V and dH */
                if (c0 < DV) warp_product_nt<T, DK, BMQ>(st, aK, cQ, fb, wk0);
                warp_product_nt<T, DV, BMQ>(dpt, aV, cH, fbv, wk0);
            }
            /* elementwise: rows = keys j (g, g+8), cols = queries t; key j = ks + jr is masked for query
             * t = qs + u when jr > qrel + u (only query tiles that start before the warp's last key) */
            const int qrel = (int)(qs - ks);
            const float gb2[2] = {bwd_col_b(gkn[0], of), bwd_col_b(gkn[1], of)};
            float pw[2];
            range_guard_pw(esc, pw);
            float mx[2] = {0.0f, 0.0f};
            /* visits every element (n, c = 2 rr + cc) of the tile with its D' factor e (rows = keys j, cols = queries
             * t) and delta_t; a masked element is exactly 0, whatever its operands (an inf h_t, hence delta_t) */
            auto for_each_element = [&](auto maskc, auto &&body) {
                dkdv_for_each_element<decltype(maskc)::value, GUARD, BMQ>(cCb, cDel, gb2, pw, wk0, qrel, body);
            };
            /* PAIR: role 0 turns its S^T tile into C/n (and keeps S in dpt for di), role 1 its dP^T tile into P */
            auto pair_element = [&](int n, int c, int rr, bool dead, float e, float del) {
                const float x = dead ? 0.0f : st[n][c];
                const float y = dead ? 0.0f : (role ? __fmul_rn(__fsub_rn(x, del), e) : x * e);
                dpt[n][c] = x;
                st[n][c] = y;
                if (GUARD) mx[rr] = fmaxf(mx[rr], fabsf(y));
            };
            auto element = [&](int n, int c, int rr, bool dead, float e, float del) {
                dkdv_element<T, Cfg::SPLIT, GUARD, BMQ>(st, dpt, n, c, rr, dead, e, del, di_ex, di_rd, mx);
            };
            if constexpr (PAIR) {
                if (qs < ks + wk0 + 15)
                    for_each_element(std::true_type{}, pair_element);
                else
                    for_each_element(std::false_type{}, pair_element);
            } else {
                if (qs < ks + wk0 + 15)
                    for_each_element(std::true_type{}, element);
                else
                    for_each_element(std::false_type{}, element);
            }
            uint32_t *xt = reinterpret_cast<uint32_t *>(smem + Cfg::X_OFF); /* PAIR exchange */
            float *xm = reinterpret_cast<float *>(xt + NW * (BMQ / 16) * 4 * 32);
            const int partner = PAIR ? (warp + NW / 2) % NW : warp;
            if constexpr (PAIR && GUARD) { /* one range-guard exponent per key row for both tiles of the pair */
                xm[(warp * 2 + 0) * 32 + lane] = mx[0];
                xm[(warp * 2 + 1) * 32 + lane] = mx[1];
                pair_sync(pair);
                mx[0] = fmaxf(mx[0], xm[(partner * 2 + 0) * 32 + lane]);
                mx[1] = fmaxf(mx[1], xm[(partner * 2 + 1) * 32 + lane]);
            }
            if constexpr (GUARD) {
                float fac[2];
                if (range_guard_update(mx, hw, esc, fac)) {
                    scale_frag_rows(st, fac);
                    if (!PAIR) scale_frag_rows(dpt, fac); /* PAIR: dpt holds raw S (role 0) */
                    scale_frag_rows(adk, fac);
                    scale_frag_rows(adv, fac);
#pragma unroll
                    for (int rr = 0; rr < 2; ++rr) {
                        di_ex[rr] *= fac[rr];
                        di_rd[rr] *= fac[rr];
                    }
                }
            }
            if constexpr (PAIR) {
                /* exchange the rounded tiles (mma A fragments, the same lane layout in both warps), and role 1's f32 P;
                 * role 0 forms di from the f32 P and the S it kept, and di_rd from the rounded P (as the dK product
                 * uses it) */
                float *xf = xm + NW * 2 * 32 + pair * (BMQ / 2) * 32;
                uint32_t own[BMQ / 16][4], oth[BMQ / 16][4];
#pragma unroll
                for (int kk = 0; kk < BMQ / 16; ++kk) {
                    acc_to_a<T>(st, kk, own[kk]);
#pragma unroll
                    for (int r = 0; r < 4; ++r) xt[((warp * (BMQ / 16) + kk) * 4 + r) * 32 + lane] = own[kk][r];
                }
                if (role == 1) {
#pragma unroll
                    for (int n = 0; n < BMQ / 8; ++n)
#pragma unroll
                        for (int c = 0; c < 4; ++c) xf[(n * 4 + c) * 32 + lane] = st[n][c];
                }
                pair_sync(pair);
#pragma unroll
                for (int kk = 0; kk < BMQ / 16; ++kk)
#pragma unroll
                    for (int r = 0; r < 4; ++r) oth[kk][r] = xt[((partner * (BMQ / 16) + kk) * 4 + r) * 32 + lane];
                if (role == 0) {
#pragma unroll
                    for (int kk = 0; kk < BMQ / 16; ++kk)
#pragma unroll
                        for (int r = 0; r < 4; ++r) {
                            const float2 p2 = unpack2<T>(oth[kk][r]); /* elements (n = 2kk + r/2, c = 2(r%2) + 0/1) */
                            const int n = 2 * kk + (r >> 1), c = 2 * (r & 1);
                            di_rd[r & 1] += p2.x * dpt[n][c] + p2.y * dpt[n][c + 1];
                        }
#pragma unroll
                    for (int n = 0; n < BMQ / 8; ++n)
#pragma unroll
                        for (int c = 0; c < 4; ++c) di_ex[c >> 1] = fmaf(xf[(n * 4 + c) * 32 + lane], dpt[n][c], di_ex[c >> 1]);
                }
#pragma unroll
                for (int kk = 0; kk < BMQ / 16; ++kk) {
                    uint32_t ac4[4], ap4[4];
#pragma unroll
                    for (int r = 0; r < 4; ++r) {
                        ac4[r] = role ? oth[kk][r] : own[kk][r];
                        ap4[r] = role ? own[kk][r] : oth[kk][r];
                    }
#pragma unroll
                    for (int dp = 0; dp < DOUT / 16; ++dp) {
                        uint32_t bh4[4], bq[4];
                        load_b_kn<D>(bh4, cH + c0 * 2, fb, kk * 16, dp * 16);
                        load_b_kn<D>(bq, cQ + c0 * 2, fb, kk * 16, dp * 16);
                        mma_n16<T>(adv[2 * dp], ac4, bh4);
                        mma_n16<T>(adk[2 * dp], ap4, bq);
                    }
                }
            } else if constexpr (DK == DV)
            /* dV += (C/n)^T dH ; dK += P^T Q  (k = query index) */
#pragma unroll
            for (int kk = 0; kk < BMQ / 16; ++kk) {
                uint32_t ac[4], ap[4];
                acc_to_a<T>(st, kk, ac);
                acc_to_a<T>(dpt, kk, ap);
#pragma unroll
                for (int dp = 0; dp < DOUT / 16; ++dp) {
                    uint32_t bh4[4], bq[4];
                    load_b_kn<D>(bh4, cH + c0 * 2, fb, kk * 16, dp * 16);
                    load_b_kn<D>(bq, cQ + c0 * 2, fb, kk * 16, dp * 16);
                    mma_n16<T>(adv[2 * dp], ac, bh4);
                    mma_n16<T>(adk[2 * dp], ap, bq);
                }
            }
            else {
                const bool has_dk = c0 < DK, has_dv = c0 < DV; /* this CTA's dk / dv column blocks (CTA-uniform) */
#pragma unroll
                for (int kk = 0; kk < BMQ / 16; ++kk) {
                    uint32_t ac[4], ap[4];
                    acc_to_a<T>(st, kk, ac);
                    acc_to_a<T>(dpt, kk, ap);
                    if (has_dv) warp_product_kn<T, DV, DOUT>(adv, ac, cH + c0 * 2, fbv, kk);
                    if (has_dk) warp_product_kn<T, DK, DOUT>(adk, ap, cQ + c0 * 2, fb, kk);
                }
            }
        }
        if (qt + 1 < nqt && warp == 0) qg.finish(qs + BMQ, sCb + (buf ^ 1) * BMQ, sDel + (buf ^ 1) * BMQ, sOf + (buf ^ 1) * NKB);
    }

    dkdv_epilogue<T, DK, DV, DOUT, GUARD, Cfg::SPLIT, MC>(args, b, hh, ks, wk0, c0, (PAIR ? role : dc) == 0, adk, adv, esc,
                                                         di_ex, di_rd, [&](int kr, int col) {
                                                 const T *kp = sK + swz<DK>(kr, col);
                                                 return make_float2(to_f32(kp[0]), to_f32(kp[1]));
                                             });
    } /* SM90 guard */
}

/* ---------------------------------------------------------------------------------------------------- */
/* dK/dV in two CTA kinds per 64-key tile (DK != DV classes, the D = 512 class): kind 0 accumulates dk, kind 1 dv
 * and di. A kind's 8 warps are 4 key groups of 16 keys x 2 roles; the roles of a group split each 32-query tile
 * (16 queries each), form their piece of dP^T (kind 0) or of S^T and dP^T (kind 1), and exchange the T-rounded
 * pieces (P, or C/n) through shared memory, so that each forms the products of its half of the output columns over
 * the whole tile. Every score-tile product is formed once per kind (against once per 128-column CTA). f16: the two
 * roles of a group share the range-guard exponent of each key row (their row maxima meet first). */
template <int DK, int DV, int BMQ>
struct DkdvRolesCfg {
    static constexpr int NW = 8, NT = 32 * NW, BNK = 16 * NW / 2, NKB = BNK / 64, NGRID = 2;
    static constexpr int DOUT_K = DK / 2, DOUT_V = DV / 2; /* a warp's dk (kind 0) / dv (kind 1) columns */
    static constexpr int K_BYTES = BNK * DK * 2, V_BYTES = BNK * DV * 2;
    static constexpr int QT_BYTES = BMQ * DK * 2, HT_BYTES = BMQ * DV * 2;
    static constexpr int K_OFF = 0, V_OFF = K_BYTES, Q_OFF = K_BYTES + V_BYTES;
    static constexpr int DH_OFF = Q_OFF + 2 * QT_BYTES;
    static constexpr int G_OFF = DH_OFF + 2 * HT_BYTES;           /* floats: sA[2][BMQ], sDel[2][BMQ], sOf[2][NKB] */
    static constexpr int X_OFF = G_OFF + (4 * BMQ + 2 * NKB) * 4; /* [NW][4][32] u32 pieces, [NW][2][32] floats row
                                                                     maxima, [NW / 2][16][2] floats di partials */
    static constexpr int SMEM = X_OFF + NW * 4 * 32 * 4 + NW * 2 * 32 * 4 + NW / 2 * 16 * 2 * 4;
    static_assert(BMQ == 32, "two roles of 16 queries (one k16 step each)");
    static_assert(DK % 32 == 0 && DV % 32 == 0, "column halves of whole n16 blocks");
};

template <typename T, int DK, int DV, int BMQ, bool SM90 = false, bool MC = (DK == MASKED_COLS_CLASS)>
__global__ void __launch_bounds__(256) mlstm_bwd_dkdv_roles_kernel(const __grid_constant__ KArgs args)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    if constexpr (SM90) { /* as mlstm_bwd_dkdv_kernel */
        __trap();
    } else
#endif
    {
    using Cfg = DkdvRolesCfg<DK, DV, BMQ>;
    constexpr int BNK = Cfg::BNK, NT = Cfg::NT, NW = Cfg::NW, NKB = Cfg::NKB;
    extern __shared__ __align__(128) unsigned char smem[];
    T *sK = reinterpret_cast<T *>(smem + Cfg::K_OFF);
    T *sV = reinterpret_cast<T *>(smem + Cfg::V_OFF);
    T *sQ = reinterpret_cast<T *>(smem + Cfg::Q_OFF);
    T *sH = reinterpret_cast<T *>(smem + Cfg::DH_OFF);
    float *sCb = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sDel = sCb + 2 * BMQ;
    float *sOf = sDel + 2 * BMQ;
    uint32_t *xt = reinterpret_cast<uint32_t *>(smem + Cfg::X_OFF); /* [NW][4][32] */
    float *xm = reinterpret_cast<float *>(xt + NW * 4 * 32);        /* [NW][2][32] */
    float *xd = xm + NW * 2 * 32;                                   /* [NW / 2][16][2] */

    const int64_t S = args.S;
    const CtaPos cp = cta_pos(args, Cfg::NGRID);
    const int64_t b = cp.b, hh = cp.hh, kt = cp.rank;
    const int64_t ks = kt * BNK;

    const DkdvInputs<T, DK, DV, NT, MC> in(args, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int role = warp & 1, partner = warp ^ 1, grp = warp >> 1;
    const int wk0 = grp * 16; /* the group's first key row within the tile */
    const int u0 = role * 16; /* the role's first query within a query tile */
    const int64_t nqt = (S + BMQ - 1) / BMQ;
    const int64_t qt0 = ks / BMQ;

    in.template load_keys<BNK>(sK, sV, ks, S, cp.sub != 0); /* kind 0 reads no K */
    in.template load_queries<BMQ>(sQ, sH, qt0 * BMQ, S);
    cp_async_commit();

    const int kbw = wk0 / 64;
    float gkn[2];
    dkdv_key_gates(in.gf, in.tf.ss, in.gi, in.ti.ss, ks, wk0, S, gkn);
    DkdvQueryGates<NKB, BMQ> qg(args, b, hh, ks);
    if (warp == 0) {
        qg.load(qt0 * BMQ);
        qg.finish(qt0 * BMQ, sCb, sDel, sOf);
    }

    const FragBase<DK> fb;
    const FragBase<DV> fbv;
    const uint32_t aK = smem_u32(sK), aV = smem_u32(sV), aQ = smem_u32(sQ), aH = smem_u32(sH);
    constexpr bool GUARD = NeedsRangeGuard<T>::value;

    /* the CTA's kind: 0 accumulates dk columns [c0, c0 + DK / 2), 1 dv columns [c0, c0 + DV / 2) and di */
    auto run = [&](auto kind_c) {
        constexpr int KIND = decltype(kind_c)::value;
        constexpr int DOUT = KIND ? Cfg::DOUT_V : Cfg::DOUT_K;
        const int c0 = role * DOUT;
        float acc[DOUT / 8][4];
#pragma unroll
        for (int n = 0; n < DOUT / 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[n][c] = 0.0f;
        float di_ex[2] = {0.0f, 0.0f}, di_rd[2] = {0.0f, 0.0f}; /* kind 1: over the role's queries */
        float esc[2] = {0.0f, 0.0f}, hw[2] = {0.0f, 0.0f};
        (void)hw; /* the range guard's high-water mark: f16 (GUARD) only */

        int buf = 0;
        for (int64_t qt = qt0; qt < nqt; ++qt, buf ^= 1) {
            const int64_t qs = qt * BMQ;
            in.template next_query_tile<BMQ>(qg, sQ, sH, buf, qs, qt + 1 < nqt, S, warp);
            const uint32_t cQ = aQ + buf * BMQ * DK * 2;
            const uint32_t cH = aH + buf * BMQ * DV * 2;
            const float *cCb = sCb + buf * BMQ, *cDel = sDel + buf * BMQ;
            const float of = sOf[buf * NKB + kbw];

            /* every query of the tile precedes every key of the group: both roles skip, and still meet the barriers */
            const bool skip = qs + BMQ - 1 < ks + wk0;
            float st[2][4], dpt[2][4]; /* the role's 16 x 16 piece: S^T -> C/n (kind 1), dP^T -> P */
#pragma unroll
            for (int n = 0; n < 2; ++n)
#pragma unroll
                for (int c = 0; c < 4; ++c) st[n][c] = dpt[n][c] = 0.0f;
            float mx[2] = {0.0f, 0.0f};
            if (!skip) {
                if (KIND) warp_product_nt<T, DK, 16>(st, aK, cQ, fb, wk0, u0);
                warp_product_nt<T, DV, 16>(dpt, aV, cH, fbv, wk0, u0);
                const int qrel = (int)(qs - ks) + u0;
                const float gb2[2] = {bwd_col_b(gkn[0], of), bwd_col_b(gkn[1], of)};
                float pw[2];
                range_guard_pw(esc, pw);
                auto element = [&](int n, int c, int rr, bool dead, float e, float del) {
                    dkdv_element<T, true, GUARD, 16>(st, dpt, n, c, rr, dead, e, del, di_ex, di_rd, mx);
                };
                if (qs + u0 < ks + wk0 + 15)
                    dkdv_for_each_element<true, GUARD, 16>(cCb + u0, cDel + u0, gb2, pw, wk0, qrel, element);
                else
                    dkdv_for_each_element<false, GUARD, 16>(cCb + u0, cDel + u0, gb2, pw, wk0, qrel, element);
            }
            if constexpr (GUARD) { /* one exponent per key row for both roles' pieces */
                xm[(warp * 2 + 0) * 32 + lane] = mx[0];
                xm[(warp * 2 + 1) * 32 + lane] = mx[1];
                __syncthreads();
                if (!skip) {
                    mx[0] = fmaxf(mx[0], xm[(partner * 2 + 0) * 32 + lane]);
                    mx[1] = fmaxf(mx[1], xm[(partner * 2 + 1) * 32 + lane]);
                    float fac[2];
                    if (range_guard_update(mx, hw, esc, fac)) {
                        scale_frag_rows(st, fac);
                        scale_frag_rows(dpt, fac);
                        scale_frag_rows(acc, fac);
#pragma unroll
                        for (int rr = 0; rr < 2; ++rr) {
                            di_ex[rr] *= fac[rr];
                            di_rd[rr] *= fac[rr];
                        }
                    }
                }
            }
            uint32_t own[4];
            if constexpr (KIND) acc_to_a<T>(st, 0, own);
            else acc_to_a<T>(dpt, 0, own);
#pragma unroll
            for (int r = 0; r < 4; ++r) xt[(warp * 4 + r) * 32 + lane] = own[r];
            __syncthreads();
            if (!skip) {
#pragma unroll
                for (int kk = 0; kk < 2; ++kk) { /* the tile's query steps in order, as one warp's whole tile */
                    uint32_t a4[4];
#pragma unroll
                    for (int r = 0; r < 4; ++r) a4[r] = kk == role ? own[r] : xt[(partner * 4 + r) * 32 + lane];
                    if constexpr (KIND)
                        warp_product_kn<T, DV, DOUT>(acc, a4, cH + c0 * 2, fbv, kk); /* dV += (C/n)^T dH */
                    else
                        warp_product_kn<T, DK, DOUT>(acc, a4, cQ + c0 * 2, fb, kk); /* dK += P^T Q */
                }
            }
            if (qt + 1 < nqt && warp == 0)
                qg.finish(qs + BMQ, sCb + (buf ^ 1) * BMQ, sDel + (buf ^ 1) * BMQ, sOf + (buf ^ 1) * NKB);
        }

        /* epilogue: dk or dv = sgn * acc (range guard undone); kind 1: di and the residual of the rounded P (as
         * dkdv_epilogue), the two roles' partial sums meeting in shared memory */
        const TArg &to = args.t[KIND ? MLSTM_TENSOR_DV : MLSTM_TENSOR_DK];
        const TArg &tdi = args.t[MLSTM_TENSOR_DI], &tdq = args.t[MLSTM_TENSOR_DQ];
        T *go = bh_ptr<T>(to, b, hh), *gdq = bh_ptr<T>(tdq, b, hh);
        float *gdi = bh_ptr<float>(tdi, b, hh);
        const int g = lane >> 2, q4 = lane & 3;
        const float sgn = args.scale < 0.0f ? -1.0f : 1.0f;
        float dis[2], rds[2];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int64_t j = ks + wk0 + g + rr * 8;
            const float osc = GUARD ? sgn * exp2f(esc[rr]) : sgn;
            float di = di_ex[rr] * osc, rd = di_rd[rr] * osc;
            di += __shfl_xor_sync(0xffffffffu, di, 1);
            di += __shfl_xor_sync(0xffffffffu, di, 2);
            rd += __shfl_xor_sync(0xffffffffu, rd, 1);
            rd += __shfl_xor_sync(0xffffffffu, rd, 2);
            dis[rr] = di;
            rds[rr] = rd;
            if (j < S) {
                T *ro = go + j * to.ss + c0;
                const T *pk = KIND ? nullptr : prior_row<T>(args.prior_dk, b, hh, j); /* kind 0 writes dk */
#pragma unroll
                for (int n = 0; n < DOUT / 8; ++n)
                    if (KIND ? col_in<DV, MC>(c0 + n * 8 + 2 * q4, args.DV) : col_in<DK, MC>(c0 + n * 8 + 2 * q4, args.DQK))
                        *reinterpret_cast<uint32_t *>(ro + n * 8 + 2 * q4) =
                            pack2_prior<T>(pk, c0 + n * 8 + 2 * q4, acc[n][rr * 2] * osc, acc[n][rr * 2 + 1] * osc);
            }
        }
        if constexpr (KIND) { /* di_j and r_j = di'_j - di_j (dkdv_epilogue): role 1's sums to role 0 of the group */
            if (role == 1 && q4 == 0)
#pragma unroll
                for (int rr = 0; rr < 2; ++rr) {
                    xd[(grp * 16 + g + rr * 8) * 2 + 0] = dis[rr];
                    xd[(grp * 16 + g + rr * 8) * 2 + 1] = rds[rr];
                }
            __syncthreads();
            if (role == 0 && q4 == 0)
#pragma unroll
                for (int rr = 0; rr < 2; ++rr) {
                    const int64_t j = ks + wk0 + g + rr * 8;
                    const float di = dis[rr] + xd[(grp * 16 + g + rr * 8) * 2 + 0];
                    const float rd = rds[rr] + xd[(grp * 16 + g + rr * 8) * 2 + 1];
                    if (j < S) {
                        gdi[j * tdi.ss] = di;
                        *reinterpret_cast<float *>(gdq + j * tdq.ss) = rd - di;
                    }
                }
        }
    };
    if (cp.sub)
        run(std::integral_constant<int, 1>{});
    else
        run(std::integral_constant<int, 0>{});
    } /* SM90 guard */
}

/* ---------------------------------------------------------------------------------------------------- */
/* dQ kernel parts shared by the mma.sync and the wgmma versions. */

/* The gate warp's part: key gates B_j of the tile at ks (BN keys inside the aligned 64-block whose gates gnext
 * holds) into g[0..BN), with O the sum of the totals of the blocks between key and query block (compensated in
 * off, walked downwards, each block added when first entered). One warp. */
template <int BN>
__device__ __forceinline__ void dq_key_gates_scanned(const float (&cum)[2], float tot, const float (&iv)[2], Comp &off,
                                                     int64_t ks, int64_t qs, float *g);
template <int BN>
__device__ __forceinline__ void dq_key_gates(const GateTile<64> &gnext, Comp &off, int64_t ks, int64_t qs, int64_t S,
                                             float *g)
{
    float cum[2];
    const float tot = gnext.scan(cum, ks & ~(int64_t)63, S);
    dq_key_gates_scanned<BN>(cum, tot, gnext.i, off, ks, qs, g);
}
/* the same from the block-local cumsum (cum, tot) and the i values of the lane's two positions */
template <int BN>
__device__ __forceinline__ void dq_key_gates_scanned(const float (&cum)[2], float tot, const float (&iv)[2], Comp &off,
                                                     int64_t ks, int64_t qs, float *g)
{
    const int lane = threadIdx.x & 31;
    const int64_t kbs = ks & ~(int64_t)63;
    if (kbs < qs && (ks - kbs) + BN == 64) comp_add(off, tot);
    const float of = kbs < qs ? off.hi + off.lo : 0.0f;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const int u = 2 * lane + e - (int)(ks - kbs);
        if (u >= 0 && u < BN) g[u] = bwd_col_b(iv[e] - cum[e], of);
    }
}

/* Per-row state of the thread's rows wr0 + g, wr0 + g + 8 of the query tile at qs (sFq: its local cumsum):
 * rb2 = (Fq_t - m_t) log2e + log2(|scale| / (|n_t|+eps)) (-inf for rows >= S), del = delta_t (read from df).
 * e = 2^(rb2_t + B_j) = |scale| D'_tj / (|n_t|+eps), and scale P = sgn (dP - delta) e. */
__device__ __forceinline__ void dq_row_state(const KArgs &args, int64_t b, int64_t hh, int64_t qs, int wr0,
                                             const float *sFq, float (&rb2)[2], float (&del)[2])
{
    const TArg &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N], &tdf = args.t[MLSTM_TENSOR_DF];
    const float *gm = bh_ptr<float>(tm, b, hh), *gn = bh_ptr<float>(tn, b, hh);
    const float *gdf = bh_ptr<float>(tdf, b, hh);
    const float lsc = log2f(fabsf(args.scale));
    const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int r = wr0 + g + rr * 8;
        const int64_t t = qs + r;
        const bool ok = t < args.S;
        const float m = ok ? gm[t * tm.ss] : 0.0f;
        const float n = ok ? gn[t * tn.ss] : 0.0f;
        rb2[rr] = ok ? bwd_row_a(sFq[r], m, n, args.eps, lsc) : -INFINITY;
        del[rr] = ok ? gdf[t * tdf.ss] : 0.0f;
    }
}

/* dP tile (rows g, g+8 of a warp, BN key columns) -> scale P / sgn = (dP - delta) e in place; key column c of
 * row r is masked when c > lim0 + r (MASK); a masked element is exactly 0, whatever its operands (an inf h_t,
 * hence delta_t). GUARD: e carries the row's range-guard factor pw (as in dkdv_for_each_element), and mx gets each
 * row's largest |P|. */
template <bool MASK, bool GUARD, int BN>
__device__ __forceinline__ void dq_elementwise(float (&dp)[BN / 8][4], const float *cG, const float (&rbs)[2],
                                               const float (&pw)[2], const float (&del)[2], int lim0, float (&mx)[2])
{
    const int q4 = threadIdx.x & 3;
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
        const float2 gv2 = *reinterpret_cast<const float2 *>(cG + n * 8 + 2 * q4);
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
                const bool dead = MASK && n * 8 + 2 * q4 + cc > lim0 + rr * 8;
                float e = fast_exp2(__fadd_rn(rbs[rr], cc ? gv2.y : gv2.x));
                if (GUARD) e = __fmul_rn(e, pw[rr]);
                const float p = dead ? 0.0f : __fmul_rn(__fsub_rn(dp[n][rr * 2 + cc], del[rr]), e);
                dp[n][rr * 2 + cc] = p;
                if (GUARD) mx[rr] = fmaxf(mx[rr], fabsf(p));
            }
        }
    }
}

/* dQ epilogue of a warp's rows: dq = sgn * acc (range guard undone); df_t = q_t . dq_t (from the f32 accumulator)
 * minus r_t, the residual the dK/dV kernel left in dq[t][0..1] (dkdv_epilogue), read before the row is written: the
 * gates kernel's dF_t = df_t - di_t is then q.dq - k.dk of the rounded P tiles of both kernels, which cancel */
template <typename T, int D, bool GUARD, bool MC = (D == MASKED_COLS_CLASS)>
__device__ __forceinline__ void dq_epilogue(const KArgs &args, int64_t b, int64_t hh, int64_t qs, int wr0,
                                            const float (&adq)[D / 8][4], const float (&esc)[2])
{
    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tdf = args.t[MLSTM_TENSOR_DF], &tdq = args.t[MLSTM_TENSOR_DQ];
    const T *gq = bh_ptr<T>(tq, b, hh);
    float *gdf = bh_ptr<float>(tdf, b, hh);
    T *gdq = bh_ptr<T>(tdq, b, hh);
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const float sgn = args.scale < 0.0f ? -1.0f : 1.0f;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int64_t t = qs + wr0 + g + rr * 8;
        const bool ok = t < args.S;
        const float osc = GUARD ? sgn * exp2f(esc[rr]) : sgn; /* sign(scale), range guard undone */
        float qd = 0.0f;
        T *row = gdq + (ok ? t : 0) * tdq.ss;
        const T *qrow = gq + (ok ? t : 0) * tq.ss;
        const T *prow = prior_row<T>(args.prior_dq, b, hh, ok ? t : 0);
        const float res = (ok && q4 == 0) ? *reinterpret_cast<const float *>(row) : 0.0f;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const int col = n * 8 + 2 * q4;
            const float x0 = adq[n][rr * 2] * osc, x1 = adq[n][rr * 2 + 1] * osc;
            if (ok && col_in<D, MC>(col, args.DQK)) { /* DQK <= D, a multiple of 8 (masked columns) */
                qd += to_f32(qrow[col]) * x0 + to_f32(qrow[col + 1]) * x1; /* this call's own dq (df is per call) */
                *reinterpret_cast<uint32_t *>(row + col) = pack2_prior<T>(prow, col, x0, x1);
            }
        }
        qd += __shfl_xor_sync(0xffffffffu, qd, 1);
        qd += __shfl_xor_sync(0xffffffffu, qd, 2);
        if (ok && q4 == 0) gdf[t * tdf.ss] = qd - res;
    }
}

/* dq_epilogue for NCH column chunks of DQC per row (DK = NCH DQC): each warp writes its chunk (ch) of dq; the chunks'
 * partial q . dq meet in shared memory sqd ([NCH - 1][BM] floats) and the chunk-0 warp, which owns dq[t][0..1] and
 * so reads the residual before its store, adds them in chunk order and writes df_t */
template <typename T, int DK, int DQC, int NCH, bool GUARD, bool MC>
__device__ __forceinline__ void dq_epilogue_chunked(const KArgs &args, int64_t b, int64_t hh, int64_t qs, int wr0,
                                                    int ch, const float (&adq)[DQC / 8][4], const float (&esc)[2],
                                                    float *sqd)
{
    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tdf = args.t[MLSTM_TENSOR_DF], &tdq = args.t[MLSTM_TENSOR_DQ];
    const T *gq = bh_ptr<T>(tq, b, hh);
    float *gdf = bh_ptr<float>(tdf, b, hh);
    T *gdq = bh_ptr<T>(tdq, b, hh);
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const float sgn = args.scale < 0.0f ? -1.0f : 1.0f;
    float qd[2], res[2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int64_t t = qs + wr0 + g + rr * 8;
        const bool ok = t < args.S;
        const float osc = GUARD ? sgn * exp2f(esc[rr]) : sgn; /* sign(scale), range guard undone */
        T *row = gdq + (ok ? t : 0) * tdq.ss;
        const T *qrow = gq + (ok ? t : 0) * tq.ss;
        const T *prow = prior_row<T>(args.prior_dq, b, hh, ok ? t : 0);
        res[rr] = (ok && q4 == 0 && ch == 0) ? *reinterpret_cast<const float *>(row) : 0.0f;
        float x = 0.0f;
#pragma unroll
        for (int n = 0; n < DQC / 8; ++n) {
            const int col = ch * DQC + n * 8 + 2 * q4;
            const float x0 = adq[n][rr * 2] * osc, x1 = adq[n][rr * 2 + 1] * osc;
            if (ok && col_in<DK, MC>(col, args.DQK)) {
                x += to_f32(qrow[col]) * x0 + to_f32(qrow[col + 1]) * x1;
                *reinterpret_cast<uint32_t *>(row + col) = pack2_prior<T>(prow, col, x0, x1);
            }
        }
        x += __shfl_xor_sync(0xffffffffu, x, 1);
        x += __shfl_xor_sync(0xffffffffu, x, 2);
        qd[rr] = x;
        if (ch > 0 && q4 == 0) sqd[(ch - 1) * 64 + wr0 + g + rr * 8] = x;
    }
    __syncthreads();
    if (ch != 0) return;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int64_t t = qs + wr0 + g + rr * 8;
        float x = qd[rr];
#pragma unroll
        for (int c = 1; c < NCH; ++c) x += sqd[(c - 1) * 64 + wr0 + g + rr * 8];
        if (t < args.S && q4 == 0) gdf[t * tdf.ss] = x - res[rr];
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* NCH = DK / DQC warps per 16 query rows, DQC = min(DK, 256) dQ columns each (the accumulator stays at 128 floats per
 * thread); NCH > 1: the warps of a row group split the BN keys of each dP tile (16 each), form their piece of dP and
 * P, and exchange the T-rounded pieces through shared memory (f16: the row maxima first, so that the pieces share one
 * range-guard exponent); each then forms its dQ columns over the whole tile, the same sums as one warp's tile */
template <int DK, int DV, int NW, int BN>
struct DqCfg {
    static constexpr int DQC = DK < 256 ? DK : 256, NCH = DK / DQC;
    static constexpr int BM = 16 * NW / NCH;
    static constexpr int NT = 32 * NW;
    static constexpr int H_BYTES = BM * DV * 2;
    static constexpr int K_BYTES = BN * DK * 2, V_BYTES = BN * DV * 2;
    static constexpr int K_OFF = H_BYTES;
    static constexpr int V_OFF = K_OFF + 2 * K_BYTES;
    static constexpr int G_OFF = V_OFF + 2 * V_BYTES; /* floats: sFq[BM], sG[2][BN], NCH > 1: sQd[NCH - 1][BM] */
    static constexpr int X_OFF = G_OFF + (BM + 2 * BN + (NCH - 1) * BM) * 4; /* NCH > 1: [NW][4][32] u32 pieces, then
                                                                               [NW][2][32] floats row maxima */
    static constexpr int SMEM = X_OFF + (NCH > 1 ? NW * (4 + 2) * 32 * 4 : 0);
    static_assert(BM == 64 && 64 % BN == 0 && BN % 32 == 0, "query tile = one 64-block of the gate cumsums");
    static_assert(DK % DQC == 0, "dQ column chunks");
    static_assert(NCH == 1 || BN == 16 * NCH, "one 16-key piece of each dP tile per warp of a row group");
};

template <typename T, int DK, int DV, int NW, int BN, bool SM90 = false, bool MC = (DK == MASKED_COLS_CLASS)>
__global__ void __launch_bounds__(32 * NW) mlstm_bwd_dq_kernel(const __grid_constant__ KArgs args)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    if constexpr (SM90) { /* as mlstm_bwd_dkdv_kernel: an sm_90-only instance, an empty stub on sm_80 */
        __trap();
    } else
#endif
    {
    using Cfg = DqCfg<DK, DV, NW, BN>;
    constexpr int BM = Cfg::BM, NT = Cfg::NT, DQC = Cfg::DQC, NCH = Cfg::NCH;
    extern __shared__ __align__(128) unsigned char smem[];
    T *sH = reinterpret_cast<T *>(smem);
    T *sK = reinterpret_cast<T *>(smem + Cfg::K_OFF);
    T *sV = reinterpret_cast<T *>(smem + Cfg::V_OFF);
    float *sFq = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sG = sFq + BM;

    const int64_t S = args.S;
    const QueryTile qtl = query_tile(args, BM);
    const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;

    const TArg &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const TArg &tdh = args.t[MLSTM_TENSOR_DH];
    const T *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);
    const T *gdh = bh_ptr<T>(tdh, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
    const int wr0 = (NCH == 1 ? warp : warp % (NW / NCH)) * 16; /* the warp's 16 rows */
    const int ch = NCH == 1 ? 0 : warp / (NW / NCH);              /* its dQ columns [ch DQC, ch DQC + DQC) */
    constexpr int GW = NW - 1;
    const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN);

    load_tile_async<T, BM, DV, NT>(sH, gdh, tdh.ss, qs, S, masked_cols<DV, MC>(args.DV));
    load_tile_async<T, BN, DK, NT>(sK, gk, tk.ss, kt_hi * BN, S, masked_cols<DK, MC>(args.DQK));
    load_tile_async<T, BN, DV, NT>(sV, gv, tv.ss, kt_hi * BN, S, masked_cols<DV, MC>(args.DV));
    cp_async_commit();

    if (warp == 0) store_tile_cumsum<BM>(gf, tf.ss, qs, S, sFq); /* query-tile local cumsum */
    __syncthreads();

    /* per-row state: rb2 = (Fq_t - m_t) log2e + log2(|scale| / (|n_t|+eps)) (-inf for rows >= S), del = delta_t.
     * e = 2^(rb2_t + G2_j) = |scale| D'_tj / (|n_t|+eps), and scale P = sgn (dP - delta) e. */
    float rb2[2], del[2];
    dq_row_state(args, b, hh, qs, wr0, sFq, rb2, del);

    /* key gates of a tile by the gate warp, from the scan of its aligned 64-block: sG = B_j; O = the sum of the
     * totals of the blocks between (compensated, walked downwards, each block added when first entered) */
    Comp off = {0.0f, 0.0f};
    GateTile<64> gnext;
    auto gate_finish = [&](int64_t ks, int bsel) { dq_key_gates<BN>(gnext, off, ks, qs, S, sG + bsel * BN); };
    if (warp == GW) {
        gnext.load(gf, tf.ss, gi, ti.ss, (kt_hi * BN) & ~(int64_t)63, S);
        gate_finish(kt_hi * BN, 0);
    }

    const FragBase<DV> fb;  /* dH, V tiles: rows of DV */
    const FragBase<DK> fbk; /* K tiles: rows of DK (the same bases where DK = DV) */
    const uint32_t aH = smem_u32(sH), aK = smem_u32(sK), aV = smem_u32(sV);

    float adq[DQC / 8][4];
#pragma unroll
    for (int n = 0; n < DQC / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) adq[n][c] = 0.0f;
    constexpr bool GUARD = NeedsRangeGuard<T>::value;
    float esc[2] = {0.0f, 0.0f}, hw[2] = {0.0f, 0.0f}; /* range guard of the two query rows (range_guard.cuh) */

    int buf = 0;
    for (int64_t kt = kt_hi; kt >= 0; --kt, buf ^= 1) {
        cp_async_wait<0>();
        __syncthreads();
        const int64_t ks = kt * BN;
        if (kt > 0) {
            const int64_t kn = (kt - 1) * BN;
            load_tile_async<T, BN, DK, NT>(sK + (buf ^ 1) * BN * DK, gk, tk.ss, kn, S, masked_cols<DK, MC>(args.DQK));
            load_tile_async<T, BN, DV, NT>(sV + (buf ^ 1) * BN * DV, gv, tv.ss, kn, S, masked_cols<DV, MC>(args.DV));
            cp_async_commit();
            if (warp == GW) gnext.load(gf, tf.ss, gi, ti.ss, kn & ~(int64_t)63, S);
        }
        const uint32_t cK = aK + buf * BN * DK * 2 + ch * DQC * 2; /* the warp's column chunk (DQC % 64 == 0) */
        const uint32_t cV = aV + buf * BN * DV * 2;
        const float *cG = sG + buf * BN;

        const bool skip = ks > qs + wr0 + 15;
        if constexpr (NCH > 1) { /* this warp's 16 keys of the tile, then the row group's pieces exchanged */
            constexpr int RG = NW / NCH; /* warps per chunk: the row group's warps are wr0 / 16 + RG c */
            const int k0 = ch * 16;
            uint32_t *xt = reinterpret_cast<uint32_t *>(smem + Cfg::X_OFF); /* [NW][4][32] */
            float *xm = reinterpret_cast<float *>(xt + NW * 4 * 32);        /* [NW][2][32] */
            float dp[2][4];
#pragma unroll
            for (int n = 0; n < 2; ++n)
#pragma unroll
                for (int c = 0; c < 4; ++c) dp[n][c] = 0.0f;
            float mx[2] = {0.0f, 0.0f};
            if (!skip) {
                warp_product_nt<T, DV, 16>(dp, aH, cV, fb, wr0, k0); /* dP = dH V^T, keys [k0, k0 + 16) */
                const int lim0 = wr0 + g - (int)(ks - qs) - k0;
                float pw[2];
                range_guard_pw(esc, pw);
                if (ks + k0 + 15 > qs + wr0)
                    dq_elementwise<true, GUARD, 16>(dp, cG + k0, rb2, pw, del, lim0, mx);
                else
                    dq_elementwise<false, GUARD, 16>(dp, cG + k0, rb2, pw, del, lim0, mx);
            }
            if constexpr (GUARD) { /* the row maxima over the whole tile, as one warp's tile has them */
                xm[(warp * 2 + 0) * 32 + lane] = mx[0];
                xm[(warp * 2 + 1) * 32 + lane] = mx[1];
                __syncthreads();
                if (!skip) {
#pragma unroll
                    for (int c = 0; c < NCH; ++c) {
                        const int w = warp % RG + c * RG;
                        mx[0] = fmaxf(mx[0], xm[(w * 2 + 0) * 32 + lane]);
                        mx[1] = fmaxf(mx[1], xm[(w * 2 + 1) * 32 + lane]);
                    }
                    float fac[2];
                    if (range_guard_update(mx, hw, esc, fac)) {
                        scale_frag_rows(dp, fac);
                        scale_frag_rows(adq, fac);
                    }
                }
            }
            uint32_t own[4];
            acc_to_a<T>(dp, 0, own);
#pragma unroll
            for (int r = 0; r < 4; ++r) xt[(warp * 4 + r) * 32 + lane] = own[r];
            __syncthreads();
            if (!skip) {
#pragma unroll
                for (int kk = 0; kk < NCH; ++kk) { /* the tile's key steps in order */
                    const int w = warp % RG + kk * RG;
                    uint32_t a[4];
#pragma unroll
                    for (int r = 0; r < 4; ++r) a[r] = kk == ch ? own[r] : xt[(w * 4 + r) * 32 + lane];
                    warp_product_kn<T, DK, DQC>(adq, a, cK, fbk, kk); /* dQ += P K */
                }
            }
        } else if (!skip) {
            float dp[BN / 8][4];
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int c = 0; c < 4; ++c) dp[n][c] = 0.0f;
            warp_product_nt<T, DV, BN>(dp, aH, cV, fb, wr0); /* dP = dH V^T */
            /* key column c of row r masked when ks + c > qs + r; keys >= S have zero K rows (no effect) */
            const int lim0 = wr0 + g - (int)(ks - qs);
            float pw[2];
            range_guard_pw(esc, pw);
            float mx[2] = {0.0f, 0.0f};
            if (ks + BN - 1 > qs + wr0)
                dq_elementwise<true, GUARD, BN>(dp, cG, rb2, pw, del, lim0, mx);
            else
                dq_elementwise<false, GUARD, BN>(dp, cG, rb2, pw, del, lim0, mx);
            if constexpr (GUARD) {
                float fac[2];
                if (range_guard_update(mx, hw, esc, fac)) {
                    scale_frag_rows(dp, fac);
                    scale_frag_rows(adq, fac);
                }
            }
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                uint32_t a[4];
                acc_to_a<T>(dp, kk, a);
                warp_product_kn<T, DK, DQC>(adq, a, cK, fbk, kk); /* dQ += P K */
            }
        }
        if (kt > 0 && warp == GW) gate_finish((kt - 1) * BN, buf ^ 1);
    }

    if constexpr (NCH == 1)
        dq_epilogue<T, DK, GUARD, MC>(args, b, hh, qs, wr0, adq, esc);
    else
        dq_epilogue_chunked<T, DK, DQC, NCH, GUARD, MC>(args, b, hh, qs, wr0, ch, adq, esc,
                                                        reinterpret_cast<float *>(smem + Cfg::G_OFF) + BM + 2 * BN);
    } /* SM90 guard */
}

} // namespace tc
} // namespace mlstm
