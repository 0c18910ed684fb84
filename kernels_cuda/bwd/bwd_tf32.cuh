/* libmlstm CUDA kernels: tensor-core backward for f32 storage (mma.sync m16n8k8 tf32 as in fwd_tf32.cuh: 3xTF32 by
 * default, TF32 under MLSTM_MATH_TF32), DQK = DV = D in {64, 128, 256}: tc32::mlstm_bwd_dkdv_kernel (CTA = 64 keys,
 * walks the query rows upwards) and tc32::mlstm_bwd_dq_kernel (CTA = 64 query rows, walks the keys downwards).
 *
 * Gate gradients: the SIMT f32 scheme (simt.cuh, NOTES.md "Backward"): the dK/dV kernel sums M_tj = P_tj (scale S_tj)
 * over t (di, compensated), the dQ kernel over j, and df is the reverse cumsum of the difference; it cancels to
 * rounding level only if both kernels produce bitwise the same M_tj. A tensor-core S^T in one kernel and S in the other
 * would sum the same products through different mma operand roles and correction orders, so here BOTH kernels form the
 * S and dP tiles in ONE orientation, query rows as the mma's M dimension (A = Q or dh, B = K or V), with the same
 * routine (score_tile: same operand split, same k order, same per-slab and correction accumulators, so the operation
 * sequence of each element does not depend on the tile shape around it), and D', P, M with the same element routines
 * (bwd_dprime, bwd_p, m_elem) from the same gate terms. The dK/dV kernel needs P^T and (C/n)^T as A operands of its
 * second products: each warp transposes its own (query x 16 keys) tiles through a private shared-memory tile.
 * The exact-mode normaliser term is subtracted as dP_tj - delta_t (delta from mlstm_bwd_prep_kernel), not through the
 * SIMT path's per-element dh.(v - sigma h): a tensor-core product cannot form that difference. */
#pragma once

#include "fwd/fwd_tf32.cuh"

namespace mlstm {
namespace tc32 {

/* ---- pieces shared by the two kernels ---- */

/* acc[dt] += A B[:, 8 dt .. 8 dt + 7] for dt < NDT: A a 16 x 8 fragment (big, small; k = q4 <-> row 2 q4 of B,
 * k = q4 + 4 <-> row 2 q4 + 1), B the 8 rows at sB (swizzled tile, offset to the first output column, a multiple of
 * 32). The corrections go into the same accumulator (as fwd_tf32.cuh's O). */
template <int MODE, int NDT>
__device__ __forceinline__ void mma_brows(float (&acc)[NDT][4], const uint32_t (&ab)[4], const uint32_t (&as)[4],
                                          const float *sB, const int (&o0)[4], const int (&o1)[4])
{
#pragma unroll
    for (int dt = 0; dt < NDT; ++dt) {
        const float v0 = sB[o0[dt & 3] + 32 * (dt >> 2)];
        const float v1 = sB[o1[dt & 3] + 32 * (dt >> 2)];
        uint32_t vb0, vs0, vb1, vs1;
        split_tf32<MODE>(v0, vb0, vs0);
        split_tf32<MODE>(v1, vb1, vs1);
        mma_f32<MODE>(acc[dt], acc[dt], ab, as, vb0, vb1, vs0, vs1);
    }
}

/* The split A fragment {x0, x1, x2, x3} = entries (g, q4), (g + 8, q4), (g, q4 + 4), (g + 8, q4 + 4) */
template <int MODE>
__device__ __forceinline__ void split_frag(float x0, float x1, float x2, float x3, uint32_t (&ab)[4], uint32_t (&as)[4])
{
    split_tf32<MODE>(x0, ab[0], as[0]);
    split_tf32<MODE>(x1, ab[1], as[1]);
    split_tf32<MODE>(x2, ab[2], as[2]);
    split_tf32<MODE>(x3, ab[3], as[3]);
}

/* D'_tj = 2^((logD_tj - m_t) log2e) from the compensated pair terms (CGate64, as simt.cuh), 0 where not valid */
__device__ __forceinline__ float bwd_dprime(bool valid, float qh, float ql, float gh, float gl, float m)
{
    return valid ? fast_exp2(__fmul_rn(__fsub_rn(cgate_logd(qh, ql, gh, gl), m), MLSTM_LOG2E)) : 0.0f;
}
/* P_tj = (dP_tj - delta_t) inv_t D'_tj, exactly 0 where D' is (masked or underflowed; also for an inf delta) */
__device__ __forceinline__ float bwd_p(float dp, float delta, float inv, float d)
{
    return d != 0.0f ? __fmul_rn(__fmul_rn(__fsub_rn(dp, delta), inv), d) : 0.0f;
}

/* One warp: the query-side terms of the 64-row gate block at qs: compensated cumsum (qh, ql), m, 1 / (|n| + eps) and
 * delta (df, as mlstm_bwd_prep_kernel left it; 0 in normalizer-detached mode), rows >= S all 0 (as simt.cuh).
 * load() issues the global reads (a caller may do so a step early), finish() scans and writes them and returns the
 * block total (th, tl). */
struct BwdQueryTerms {
    CGate64 gt;
    float m[2], inv[2], del[2];
    __device__ __forceinline__ void load(const KArgs &args, int64_t b, int64_t hh, int64_t qs)
    {
        const TArg &tf = args.t[MLSTM_TENSOR_F], &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
        const TArg &tdf = args.t[MLSTM_TENSOR_DF];
        const float *gm = bh_ptr<float>(tm, b, hh), *gn = bh_ptr<float>(tn, b, hh), *gdel = bh_ptr<float>(tdf, b, hh);
        const int lane = threadIdx.x & 31;
        gt.load(bh_ptr<float>(tf, b, hh), tf.ss, nullptr, 0, qs, args.S);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int64_t t = qs + lane * 2 + e;
            const bool ok = t < args.S;
            m[e] = ok ? gm[t * tm.ss] : 0.0f;
            inv[e] = ok ? 1.0f / (fabsf(gn[t * tn.ss]) + args.eps) : 0.0f;
            del[e] = ok ? gdel[t * tdf.ss] : 0.0f;
        }
    }
    __device__ __forceinline__ void finish(int64_t qs, int64_t S, float *sQh, float *sQl, float *sMt, float *sInv,
                                           float *sDel, float &th, float &tl) const
    {
        const int lane = threadIdx.x & 31;
        float ch[2], cl[2];
        gt.scan(ch, cl, th, tl, qs, S);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int u = lane * 2 + e;
            sQh[u] = ch[e];
            sQl[u] = cl[e];
            sMt[u] = m[e];
            sInv[u] = inv[e];
            sDel[u] = del[e];
        }
    }
};
__device__ __forceinline__ void bwd_query_terms(const KArgs &args, int64_t b, int64_t hh, int64_t qs, float *sQh,
                                                float *sQl, float *sMt, float *sInv, float *sDel, float &th, float &tl)
{
    BwdQueryTerms q;
    q.load(args, b, hh, qs);
    q.finish(qs, args.S, sQh, sQl, sMt, sInv, sDel, th, tl);
}

/* ---- dK/dV ---- */

/* 4 warps x 16 keys = the 64 keys of one gate block; BMQ query rows per step (a divisor of 64), double-buffered.
 * SPLIT: two CTAs per key tile, one computing dV (from S), the other dK and di (from S and dP), each with one
 * accumulator of D / 2 floats per thread (D = 256: dK and dV together would need 256); else one CTA computes both.
 * Each warp transposes its P and C/n tiles through a private [16 keys][BMQ + 8] tile. */
template <int D, int NW, int BMQ, bool SPLIT>
struct DkdvCfg32 {
    static_assert(NW == 4, "one 64-key gate block per CTA");
    static_assert(64 % BMQ == 0 && BMQ % 16 == 0, "tile sizes");
    static constexpr int BNK = 64, NT = 32 * NW, NCTA = SPLIT ? 2 : 1;
    static constexpr int LDT = BMQ + 8; /* transposed tiles: float2 reads of rows g free of bank conflicts */
    static constexpr int K_OFF = 0;
    static constexpr int V_OFF = K_OFF + BNK * D * 4;
    static constexpr int Q_OFF = V_OFF + BNK * D * 4;  /* [2][BMQ][D] */
    static constexpr int DH_OFF = Q_OFF + 2 * BMQ * D * 4; /* [2][BMQ][D] */
    static constexpr int T_OFF = DH_OFF + 2 * BMQ * D * 4; /* [NW][2][16][LDT] */
    static constexpr int G_OFF = T_OFF + NW * 2 * 16 * LDT * 4;
    /* floats: sKh, sKl, sKi [64] (key block), sQh, sQl, sMt, sInv, sDel [64] (query block), sOf [4] */
    static constexpr int SMEM = G_OFF + (8 * 64 + 4) * 4;
};

/* dv, and dk with di_j = sum_t M_tj (compensated: hi into di, the residual into dq[j][0] for the dQ kernel, as
 * simt.cuh). Grid: (key tile, role (SPLIT: dV, dK), batch*head), heaviest key tiles first. */
template <int D, int MODE, int NW, int BMQ, bool SPLIT>
__global__ void __launch_bounds__(32 * NW) mlstm_bwd_dkdv_kernel(const __grid_constant__ KArgs args)
{
    using Cfg = DkdvCfg32<D, NW, BMQ, SPLIT>;
    constexpr int NT = Cfg::NT, MQ = BMQ / 16, LDT = Cfg::LDT, NDT = D / 8;
    constexpr int NA = SPLIT ? 1 : 2; /* accumulators: dV in acc[0], dK in acc[NA - 1] */
    extern __shared__ __align__(128) unsigned char smem[];
    float *sK = reinterpret_cast<float *>(smem + Cfg::K_OFF);
    float *sV = reinterpret_cast<float *>(smem + Cfg::V_OFF);
    float *sQ = reinterpret_cast<float *>(smem + Cfg::Q_OFF);
    float *sDh = reinterpret_cast<float *>(smem + Cfg::DH_OFF);
    float *sKh = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sKl = sKh + 64, *sKi = sKl + 64, *sQh = sKi + 64, *sQl = sQh + 64, *sMt = sQl + 64, *sInv = sMt + 64;
    float *sDel = sInv + 64, *sOf = sDel + 64;

    const int64_t S = args.S;
    const CtaPos cp = cta_pos(args, Cfg::NCTA);
    const int role = cp.sub;
    const int64_t b = cp.b, hh = cp.hh, kt = cp.rank;
    const int64_t ks = kt * 64;
    const bool do_dv = !SPLIT || role == 0, do_dk = !SPLIT || role == 1;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F], &tdh = args.t[MLSTM_TENSOR_DH];
    const float *gq = bh_ptr<float>(tq, b, hh), *gk = bh_ptr<float>(tk, b, hh), *gv = bh_ptr<float>(tv, b, hh);
    const float *gdh = bh_ptr<float>(tdh, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const int kw0 = warp * 16; /* this warp's keys within the tile */
    float *sTP = reinterpret_cast<float *>(smem + Cfg::T_OFF) + warp * 2 * 16 * LDT; /* P^T [16][LDT] */
    float *sTC = sTP + 16 * LDT;                                                     /* (C/n)^T */

    const int64_t nsteps = (S - ks + BMQ - 1) / BMQ; /* query steps: rows [ks + st BMQ, +BMQ) */
    load_tile32_async<64, D, NT>(sK, gk, tk.ss, ks, S);
    load_tile32_async<64, D, NT>(sV, gv, tv.ss, ks, S);
    load_tile32_async<BMQ, D, NT>(sQ, gq, tq.ss, ks, S);
    load_tile32_async<BMQ, D, NT>(sDh, gdh, tdh.ss, ks, S);
    cp_async_commit();
    if (warp == 0) /* key block: compensated cumsum and i */
        gate_block_terms(bh_ptr<float>(tf, b, hh), tf.ss, bh_ptr<float>(ti, b, hh), ti.ss, ks, S, sKh, sKl, sKi);

    const int aoff = g * D + ((q4 ^ sw32(g)) << 2);
    int o0[4], o1[4];
    brow_offsets<D>(g, q4, o0, o1);

    float acc[NA][NDT][4];
    frag_zero(acc);
    float dih[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}}, dil[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}}; /* keys [n][cc] */
    float offh = 0.0f, offl = 0.0f, pth = 0.0f, ptl = 0.0f; /* warp 0: O and the previous query block's total */
    const float scale = args.scale;

    for (int64_t st = 0; st < nsteps; ++st) {
        const int64_t r0 = ks + st * BMQ, qs = r0 & ~(int64_t)63;
        const int buf = (int)(st & 1);
        cp_async_wait<0>();
        __syncthreads(); /* this step's rows have landed; every warp is done with the previous step */
        const bool new_block = r0 == qs;
        if (new_block && warp == 0) {
            float th, tl;
            bwd_query_terms(args, b, hh, qs, sQh, sQl, sMt, sInv, sDel, th, tl);
            query_offset_step(offh, offl, pth, ptl, th, tl, qs > ks, sOf);
        }
        if (st + 1 < nsteps) {
            load_tile32_async<BMQ, D, NT>(sQ + (buf ^ 1) * BMQ * D, gq, tq.ss, r0 + BMQ, S);
            load_tile32_async<BMQ, D, NT>(sDh + (buf ^ 1) * BMQ * D, gdh, tdh.ss, r0 + BMQ, S);
            cp_async_commit();
        }
        if (new_block) __syncthreads(); /* query terms */
        if (r0 + BMQ - 1 < ks + kw0) continue; /* every row of the step before every key of the warp */

        const float *cQ = sQ + buf * BMQ * D, *cDh = sDh + buf * BMQ * D;
        float s[MQ][2][4], dp[MQ][2][4];
        score_tile<D, MODE, MQ, 2>(s, cQ, sK + kw0 * D, aoff);
        if (do_dk) score_tile<D, MODE, MQ, 2>(dp, cDh, sV + kw0 * D, aoff);

        float kgh[2][2], kgl[2][2];
        const float oh = sOf[0], ol = sOf[1];
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
                const int jl = kw0 + n * 8 + 2 * q4 + cc;
                cgate_key(sKh[jl], sKl[jl], sKi[jl], oh, ol, kgh[n][cc], kgl[n][cc]);
            }
        const int tb = (int)(r0 - qs); /* first row of the step within the query block */
#pragma unroll
        for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
            for (int n = 0; n < 2; ++n)
#pragma unroll
                for (int c = 0; c < 4; ++c) { /* the row terms are re-read per element: registers are tight */
                    const int rr = c >> 1, cc = c & 1;
                    const int tr = mq * 16 + g + 8 * rr, tl = tb + tr; /* row within the step / the query block */
                    const int jw = n * 8 + 2 * q4 + cc;                  /* key within the warp */
                    const int64_t t = qs + tl, j = ks + kw0 + jw;
                    const float inv = sInv[tl];
                    const float d = bwd_dprime(j <= t && t < S, sQh[tl], sQl[tl], kgh[n][cc], kgl[n][cc], sMt[tl]);
                    if (do_dk) {
                        const float p = bwd_p(dp[mq][n][c], sDel[tl], inv, d);
                        cadd(dih[n][cc], dil[n][cc], m_elem(p, s[mq][n][c], scale), 0.0f);
                        sTP[jw * LDT + tr] = p;
                    }
                    if (do_dv) sTC[jw * LDT + tr] = d != 0.0f ? s[mq][n][c] * scale * d * inv : 0.0f;
                }
        __syncwarp();
        /* dV += (C/n)^T dh, dK += P^T Q: A rows = the warp's keys g, g + 8, k = query rows 2 q4, 2 q4 + 1 */
#pragma unroll
        for (int kk = 0; kk < BMQ / 8; ++kk) {
            uint32_t ab[4], as[4];
            const int ra = g * LDT + kk * 8 + 2 * q4, rb = ra + 8 * LDT;
            if (do_dv) {
                const float2 x = *reinterpret_cast<const float2 *>(sTC + ra);
                const float2 y = *reinterpret_cast<const float2 *>(sTC + rb);
                split_frag<MODE>(x.x, y.x, x.y, y.y, ab, as);
                mma_brows<MODE, NDT>(acc[0], ab, as, cDh + kk * 8 * D, o0, o1);
            }
            if (do_dk) {
                const float2 x = *reinterpret_cast<const float2 *>(sTP + ra);
                const float2 y = *reinterpret_cast<const float2 *>(sTP + rb);
                split_frag<MODE>(x.x, y.x, x.y, y.y, ab, as);
                mma_brows<MODE, NDT>(acc[NA - 1], ab, as, cQ + kk * 8 * D, o0, o1);
            }
        }
        __syncwarp(); /* the transposed tiles are rewritten next step */
    }

    /* epilogue: rows = keys ks + kw0 + g (+8), columns 8 n + 2 q4 (+1) */
    const TArg &tdk = args.t[MLSTM_TENSOR_DK], &tdv = args.t[MLSTM_TENSOR_DV];
    float *gdk = bh_ptr<float>(tdk, b, hh), *gdv = bh_ptr<float>(tdv, b, hh);
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int64_t j = ks + kw0 + g + 8 * rr;
        if (j < S) {
#pragma unroll
            for (int n = 0; n < NDT; ++n) {
                const int cidx = n * 8 + 2 * q4;
                if (do_dk)
                    *reinterpret_cast<float2 *>(gdk + j * tdk.ss + cidx) =
                        make_float2(acc[NA - 1][n][rr * 2] * scale, acc[NA - 1][n][rr * 2 + 1] * scale);
                if (do_dv)
                    *reinterpret_cast<float2 *>(gdv + j * tdv.ss + cidx) =
                        make_float2(acc[0][n][rr * 2], acc[0][n][rr * 2 + 1]);
            }
        }
    }
    if (do_dk) {
        const TArg &tdi = args.t[MLSTM_TENSOR_DI], &tdq = args.t[MLSTM_TENSOR_DQ];
        float *gdi = bh_ptr<float>(tdi, b, hh), *gdq = bh_ptr<float>(tdq, b, hh);
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
                float h = dih[n][cc], l = dil[n][cc];
#pragma unroll
                for (int o = 4; o < 32; o <<= 1) { /* over the 8 row lanes g */
                    const float yh = __shfl_xor_sync(0xffffffffu, h, o), yl = __shfl_xor_sync(0xffffffffu, l, o);
                    cadd(h, l, yh, yl);
                }
                cnorm(h, l);
                const int64_t j = ks + kw0 + n * 8 + 2 * q4 + cc;
                if (g == 0 && j < S) {
                    gdi[j * tdi.ss] = h;
                    gdq[j * tdq.ss] = l; /* read (then overwritten) by the dQ kernel, launched after */
                }
            }
    }
}

/* ---- dQ ---- */

/* 4 warps x 16 query rows = one 64-row gate block (and df tile); key steps of BN (a divisor of 64), K/V
 * double-buffered. */
template <int D, int NW, int BN>
struct DqCfg32 {
    static_assert(NW == 4 && 16 * NW == DF_TILE, "one 64-row gate block (df tile) per CTA");
    static_assert(64 % BN == 0 && BN % 8 == 0, "tile sizes");
    static constexpr int BM = 64, NT = 32 * NW;
    static constexpr int Q_OFF = 0;
    static constexpr int DH_OFF = Q_OFF + BM * D * 4;
    static constexpr int K_OFF = DH_OFF + BM * D * 4; /* [2][BN][D] */
    static constexpr int V_OFF = K_OFF + 2 * BN * D * 4;
    static constexpr int G_OFF = V_OFF + 2 * BN * D * 4;
    /* floats: sQh, sQl, sMt, sInv, sDel, sE [64] (query rows), sGh, sGl [64] (key block), sF [2 * 64] (df rows) */
    static constexpr int SMEM = G_OFF + (8 * 64 + 2 * DF_TILE) * 4;
};

/* dq and the dQ side of the df scheme (df_row_terms / df_tile_suffix, common.cuh). Grid: (query tile, batch*head),
 * heaviest (last) tiles first. */
template <int D, int MODE, int NW, int BN>
__global__ void __launch_bounds__(32 * NW) mlstm_bwd_dq_kernel(const __grid_constant__ KArgs args)
{
    using Cfg = DqCfg32<D, NW, BN>;
    constexpr int BM = Cfg::BM, NT = Cfg::NT, NB = BN / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    float *sQ = reinterpret_cast<float *>(smem + Cfg::Q_OFF);
    float *sDh = reinterpret_cast<float *>(smem + Cfg::DH_OFF);
    float *sK = reinterpret_cast<float *>(smem + Cfg::K_OFF);
    float *sV = reinterpret_cast<float *>(smem + Cfg::V_OFF);
    float *sQh = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sQl = sQh + 64, *sMt = sQl + 64, *sInv = sMt + 64, *sDel = sInv + 64, *sE = sDel + 64;
    float *sGh = sE + 64, *sGl = sGh + 64, *sF = sGl + 64;

    const int64_t S = args.S;
    const QueryTile qtl = query_tile(args, BM);
    const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F], &tdh = args.t[MLSTM_TENSOR_DH];
    const TArg &tdq = args.t[MLSTM_TENSOR_DQ];
    const float *gq = bh_ptr<float>(tq, b, hh), *gk = bh_ptr<float>(tk, b, hh), *gv = bh_ptr<float>(tv, b, hh);
    const float *gdh = bh_ptr<float>(tdh, b, hh);
    float *gdq = bh_ptr<float>(tdq, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const int wr0 = warp * 16;

    /* key steps from the last one holding a key <= min(qs + 63, S - 1), downwards */
    const int64_t kfirst = (min(qs + BM - 1, S - 1) / BN) * BN;
    const int64_t nsteps = kfirst / BN + 1;
    load_tile32_async<BM, D, NT>(sQ, gq, tq.ss, qs, S);
    load_tile32_async<BM, D, NT>(sDh, gdh, tdh.ss, qs, S);
    load_tile32_async<BN, D, NT>(sK, gk, tk.ss, kfirst, S);
    load_tile32_async<BN, D, NT>(sV, gv, tv.ss, kfirst, S);
    cp_async_commit();
    if (warp == 0) {
        float th, tl;
        bwd_query_terms(args, b, hh, qs, sQh, sQl, sMt, sInv, sDel, th, tl);
    }
    if (threadIdx.x < BM) /* di's residual (dK/dV kernel), read before this CTA overwrites dq */
        sE[threadIdx.x] = qs + threadIdx.x < S ? gdq[(qs + threadIdx.x) * tdq.ss] : 0.0f;

    const int aoff = g * D + ((q4 ^ sw32(g)) << 2);
    int o0[4], o1[4];
    brow_offsets<D>(g, q4, o0, o1);

    float acc[1][D / 8][4];
    frag_zero(acc);
    float mh[2] = {0.0f, 0.0f}, ml[2] = {0.0f, 0.0f}; /* sum_j M_tj of rows g, g + 8 (compensated) */
    float offh = 0.0f, offl = 0.0f;                   /* warp 0: O of the key block */
    const float scale = args.scale;

    for (int64_t st = 0; st < nsteps; ++st) {
        const int64_t ks = kfirst - st * BN;
        const int buf = (int)(st & 1);
        cp_async_wait<0>();
        __syncthreads(); /* this step's keys have landed; every warp is done with the previous step */
        const bool new_block = st == 0 || (ks + BN) % 64 == 0;
        if (new_block && warp == 0) key_pair_terms(bh_ptr<float>(tf, b, hh), tf.ss, bh_ptr<float>(ti, b, hh), ti.ss,
                                                   ks & ~(int64_t)63, qs, S, offh, offl, sGh, sGl);
        if (st + 1 < nsteps) {
            load_tile32_async<BN, D, NT>(sK + (buf ^ 1) * BN * D, gk, tk.ss, ks - BN, S);
            load_tile32_async<BN, D, NT>(sV + (buf ^ 1) * BN * D, gv, tv.ss, ks - BN, S);
            cp_async_commit();
        }
        if (new_block) __syncthreads(); /* key pair terms */
        if (ks > qs + wr0 + 15) continue; /* every key of the step after every row of the warp */

        const float *cK = sK + buf * BN * D, *cV = sV + buf * BN * D;
        float s[1][NB][4], dp[1][NB][4];
        score_tile<D, MODE, 1, NB>(dp, sDh + wr0 * D, cV, aoff);
        score_tile<D, MODE, 1, NB>(s, sQ + wr0 * D, cK, aoff);
        const int jb = (int)(ks & 63); /* first key of the step within the key block */
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int tl = wr0 + g + 8 * rr;
            const int64_t t = qs + tl;
            const float qh = sQh[tl], ql = sQl[tl], mt = sMt[tl], inv = sInv[tl], del = sDel[tl];
#pragma unroll
            for (int n = 0; n < NB; ++n)
#pragma unroll
                for (int cc = 0; cc < 2; ++cc) {
                    const int c = rr * 2 + cc, jl = jb + n * 8 + 2 * q4 + cc;
                    const float d = bwd_dprime(ks + n * 8 + 2 * q4 + cc <= t && t < S, qh, ql, sGh[jl], sGl[jl], mt);
                    const float p = bwd_p(dp[0][n][c], del, inv, d);
                    cadd(mh[rr], ml[rr], m_elem(p, s[0][n][c], scale), 0.0f);
                    dp[0][n][c] = p;
                }
        }
        /* dq += P K: the P accumulator of key group n is the A fragment {c0, c2, c1, c3} (key 2 q4 as k = q4) */
#pragma unroll
        for (int n = 0; n < NB; ++n) {
            uint32_t ab[4], as[4];
            split_frag<MODE>(dp[0][n][0], dp[0][n][2], dp[0][n][1], dp[0][n][3], ab, as);
            mma_brows<MODE, D / 8>(acc[0], ab, as, cK + n * 8 * D, o0, o1);
        }
    }

    /* epilogue: dq rows qs + wr0 + g (+8); then dF_t = sum_j M_tj - di_t - residual, tile-local suffix sums into df */
    const TArg &tdi = args.t[MLSTM_TENSOR_DI], &tdf = args.t[MLSTM_TENSOR_DF];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int tl = wr0 + g + 8 * rr;
        const int64_t t = qs + tl;
        if (t < S) {
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
                *reinterpret_cast<float2 *>(gdq + t * tdq.ss + n * 8 + 2 * q4) =
                    make_float2(acc[0][n][rr * 2] * scale, acc[0][n][rr * 2 + 1] * scale);
        }
        float h = mh[rr], l = ml[rr];
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) { /* over the 4 column lanes q4 */
            const float yh = __shfl_xor_sync(0xffffffffu, h, o), yl = __shfl_xor_sync(0xffffffffu, l, o);
            cadd(h, l, yh, yl);
        }
        if (q4 == 0) df_row_terms(sF, tl, qs, S, h, l, bh_ptr<float>(tdi, b, hh), tdi.ss, sE[tl]);
    }
    __syncthreads();
    if (threadIdx.x == 0) df_tile_suffix(sF, bh_ptr<float>(tdf, b, hh), tdf.ss, qs, S);
}

} // namespace tc32
} // namespace mlstm
