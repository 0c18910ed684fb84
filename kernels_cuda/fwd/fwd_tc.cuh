/* libmlstm CUDA kernels: tensor-core forward for f16/bf16 storage (mma.sync m16n8k16, f32 accumulation), score
 * width DK (DQK padded to the class) and output width DV (the class's V tile: DV = DK, or DK = 512 with DV = 256
 * slices). One CTA per (query tile of BM rows, batch*head); each warp owns 16*MT query rows; K/V tiles of BN keys
 * are double-buffered through cp.async and walked from the diagonal backwards, so the gate offset between query and
 * key tile is accumulated in compensated (hi, lo) form. */
#pragma once

#include "common/mma.cuh"
#include "common/range_guard.cuh"

namespace mlstm {
namespace tc {

/* bytes of a key-split merge buffer of NR rows (fwd_split_store) */
constexpr int split_buf_bytes(int NR, int D) { return (NR * (D + 8) + 6 * NR) * 4; }

template <int DK, int DV, int MT, int NW, int BN, int KS = 1>
struct FwdCfg {
    static constexpr int BM = 16 * MT * NW / KS; /* KS key groups of NW / KS warps each cover all BM rows */
    static constexpr int NT = 32 * NW;
    static constexpr int Q_BYTES = BM * DK * 2;
    static constexpr int K_BYTES = BN * DK * 2, V_BYTES = BN * DV * 2;
    static constexpr int K_OFF = Q_BYTES;
    static constexpr int V_OFF = K_OFF + 2 * KS * K_BYTES;
    /* floats: sFq[BM], then [2][KS][BN] each of sG2, sPM, sE */
    static constexpr int G_OFF = V_OFF + 2 * KS * V_BYTES;
    static constexpr int SMEM = G_OFF + (BM + 6 * KS * BN) * 4;
    /* KS > 1: the groups' merge reuses [0, G_OFF) for O [BM][DV], l [BM][4], m [BM], esc [BM] (floats) */
    static_assert(KS == 1 || split_buf_bytes(BM, DV) <= G_OFF, "merge buffer");
    static_assert(NW % KS == 0, "warps per key group");
    static_assert(BM % BN == 0, "query tile must be a multiple of the key tile");
    static_assert(BM % 32 == 0 && BN % 32 == 0 && BN % 16 == 0, "tile sizes");
    static_assert(DK % 64 == 0 && DV % 64 == 0, "swizzle needs rows of >= 64 columns");
};

/* the per-key values of the fragment columns a lane holds (columns n * 8 + 2 * q4 + {0, 1}) */
template <int BN> __device__ __forceinline__ void load_key_row(float (&v)[BN / 8][2], const float *src, int q4)
{
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
        const float2 v2 = *reinterpret_cast<const float2 *>(src + n * 8 + 2 * q4);
        v[n][0] = v2.x;
        v[n][1] = v2.y;
    }
}

/* The gate part of one (warp rows x BN keys) tile. With G_j the key gate (offset included) and Fq_t the
 * query-local cumsum, logD_tj = Fq_t + G_j, so the row max over the valid keys (j <= t) is Fq_t + PM[t - ks]
 * with PM the prefix max of G over the tile (rounding is monotone, so this equals the max of the rounded
 * sums). The online max m (floored at -10 by its initial value) costs one lookup per row; per element:
 * C = S 2^(G2_j + rb2_t) with G2 = G log2e, rb2 = (Fq - m) log2e + log2|scale|, then l += C. The O rescale
 * is skipped when no row of the warp raised its max (the usual case walking away from the diagonal).
 * A tile with no masked element factors the weight: 2^(G2_j + rb2_t) = E_j 2^(X + rb2_t), E_j = 2^(G2_j - X)
 * from the gate warp, X = PM[BN-1] log2e the tile's largest G2 (so E_j <= 1 and X + rb2_t <= log2|scale|):
 * one exp per row instead of one per element (the exp unit is the scarce one next to the tensor cores).
 * gv holds G2_j when MASK, E_j otherwise.
 * GUARD (f16): the row's range-guard exponent esc is subtracted too, and mx gets the row's largest |C|. */
template <bool MASK, bool GUARD, int MT, int BN, int DV>
__device__ __forceinline__ void fwd_gate_tile(float (&s)[MT][BN / 8][4], float (&o)[MT][DV / 8][4],
                                              float (&mrun)[MT][2], float (&lrun)[MT][2], const float (&rowF)[MT][2],
                                              const float (&gv)[BN / 8][2], const float *pm, int lim0, int q4,
                                              float lsc, const float (&esc)[MT * 2], float (&mx)[MT * 2])
{
    float rmx[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int lim = lim0 + mt * 16 + rr * 8; /* last valid key column of the row (>= BN-1: all) */
            rmx[mt][rr] = lim < 0 ? -INFINITY : rowF[mt][rr] + pm[min(lim, BN - 1)];
        }
    online_max_raise(rmx, mrun, lrun, o);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int lim = lim0 + mt * 16 + rr * 8;
            float rb2 = (rowF[mt][rr] - mrun[mt][rr]) * MLSTM_LOG2E + lsc;
            if (GUARD) rb2 -= esc[mt * 2 + rr];
            float l = lrun[mt][rr], amx = 0.0f;
            const float rf = MASK ? 0.0f : fast_exp2(pm[BN - 1] * MLSTM_LOG2E + rb2);
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int cc = 0; cc < 2; ++cc) {
                    const float p = MASK ? fast_exp2(gv[n][cc] + rb2) : gv[n][cc] * rf;
                    /* masked: exactly 0 (also for an overflowed score) */
                    const float cv = (MASK && n * 8 + 2 * q4 + cc > lim) ? 0.0f : s[mt][n][rr * 2 + cc] * p;
                    s[mt][n][rr * 2 + cc] = cv;
                    l += cv;
                    if (GUARD) amx = fmaxf(amx, fabsf(cv));
                }
            lrun[mt][rr] = l;
            if (GUARD) mx[mt * 2 + rr] = amx;
        }
    }
}

/* The gate warp's part of the forward: for the key tile at ks (gates gn loaded), with query tile at qs whose
 * local cumsum is sFq, writes G_j log2e to g2[j], the prefix max of G_j (natural units) to pm[j] and
 * 2^(G_j log2e - X), X = pm[BN-1] log2e, to ex[j] (fwd_gate_tile), G_j the key gate with the offset between key
 * and query tile included: off accumulates (compensated) the totals of the tiles before qs, which must
 * therefore be finished in descending order. One warp. */
template <int BN>
__device__ __forceinline__ void fwd_key_gates_scanned(const float (&cum)[BN / 32], float tot, const float (&iv)[BN / 32],
                                                      Comp &off, int64_t ks, int64_t qs, const float *sFq, float *g2,
                                                      float *pm, float *ex);
template <int BN>
__device__ __forceinline__ void fwd_key_gates(const GateTile<BN> &gn, Comp &off, int64_t ks, int64_t qs, int64_t S,
                                              const float *sFq, float *g2, float *pm, float *ex)
{
    float cum[GateTile<BN>::E];
    const float tot = gn.scan(cum, ks, S);
    fwd_key_gates_scanned<BN>(cum, tot, gn.i, off, ks, qs, sFq, g2, pm, ex);
}
/* the same from the tile-local cumsum (cum, tot) and the i values of the lane's positions */
template <int BN>
__device__ __forceinline__ void fwd_key_gates_scanned(const float (&cum)[BN / 32], float tot, const float (&iv)[BN / 32],
                                                      Comp &off, int64_t ks, int64_t qs, const float *sFq, float *g2,
                                                      float *pm, float *ex)
{
    constexpr int E = BN / 32;
    const int lane = threadIdx.x & 31;
    float ohi, olo;
    if (ks >= qs) {
        ohi = (ks > qs) ? -sFq[ks - 1 - qs] : 0.0f;
        olo = 0.0f;
    } else {
        comp_add(off, tot);
        ohi = off.hi;
        olo = off.lo;
    }
    float gv[E], pmx = -INFINITY;
#pragma unroll
    for (int e = 0; e < E; ++e) {
        gv[e] = ((iv[e] - cum[e]) + olo) + ohi;
        pmx = fmaxf(pmx, gv[e]);
    }
    /* exclusive prefix max over lanes, then running max within the lane */
    float incl = pmx;
#pragma unroll
    for (int o2 = 1; o2 < 32; o2 <<= 1) {
        float y = __shfl_up_sync(0xffffffffu, incl, o2);
        if (lane >= o2) incl = fmaxf(incl, y);
    }
    float run = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 0) run = -INFINITY;
#pragma unroll
    for (int e = 0; e < E; ++e) {
        run = fmaxf(run, gv[e]);
        g2[lane * E + e] = gv[e] * MLSTM_LOG2E;
        pm[lane * E + e] = run;
    }
    const float x2 = __shfl_sync(0xffffffffu, run, 31) * MLSTM_LOG2E; /* pm[BN - 1] log2e */
#pragma unroll
    for (int e = 0; e < E; ++e) ex[lane * E + e] = fast_exp2(gv[e] * MLSTM_LOG2E - x2);
}

/* Forward epilogue of one warp's 16*MT rows (first row qs + wr0): normaliser, h (its first args.DV <= DV columns), m,
 * n. */
template <typename T, int MT, int DV, bool GUARD, bool MC = (DV == MASKED_COLS_CLASS)>
__device__ __forceinline__ void fwd_epilogue(const KArgs &args, int64_t b, int64_t hh, int64_t qs, int wr0,
                                             const float (&o)[MT][DV / 8][4], const float (&mrun)[MT][2],
                                             const float (&lrun)[MT][2], const float (&esc)[MT * 2])
{
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const TArg &th = args.t[MLSTM_TENSOR_H], &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
    T *gh = bh_ptr<T>(th, b, hh);
    float *gm = bh_ptr<float>(tm, b, hh), *gn = bh_ptr<float>(tn, b, hh);
    const int64_t S = args.S;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const float m = mrun[mt][rr];
            float nsig;
            const float inv = fwd_row_inv<GUARD>(args, lrun[mt][rr], m, esc[mt * 2 + rr], nsig);
            const int64_t t = qs + wr0 + mt * 16 + g + rr * 8;
            if (t < S) {
                T *row = gh + t * th.ss;
#pragma unroll
                for (int n = 0; n < DV / 8; ++n)
                    if (col_in<DV, MC>(n * 8 + 2 * q4, args.DV)) /* args.DV <= DV, a multiple of 8 (masked columns) */
                        *reinterpret_cast<uint32_t *>(row + n * 8 + 2 * q4) =
                            pack2<T>(o[mt][n][rr * 2] * inv, o[mt][n][rr * 2 + 1] * inv);
                if (q4 == 0) {
                    gm[t * tm.ss] = m;
                    gn[t * tn.ss] = nsig;
                }
            }
        }
    }
}

/* Key split, the two halves of a merge of two partial states over disjoint key sets (O, l, m, esc) of the same
 * rows, through a buffer of NR rows (floats; O [NR][DV + 8], l [NR][4] per-lane partials, m [NR], esc [NR]) in which
 * a thread's rows are wr0 - r0 + mt * 16 + g (+ 8); the 8 floats of padding per O row put the eight rows g of a
 * warp's accesses into different banks. fwd_split_store writes the state; fwd_split_combine, once the
 * stores are visible, folds the buffer into the caller's state. */
template <int MT, int DV>
__device__ __forceinline__ void fwd_split_store(float *buf, int NR, int r0, int wr0, const float (&o)[MT][DV / 8][4],
                                                const float (&mrun)[MT][2], const float (&lrun)[MT][2],
                                                const float (&esc)[MT * 2])
{
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    constexpr int DP = DV + 8;
    float *cO = buf, *cL = cO + NR * DP, *cM = cL + NR * 4, *cE = cM + NR;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int r = wr0 - r0 + mt * 16 + g + rr * 8;
#pragma unroll
            for (int n = 0; n < DV / 8; ++n)
                *reinterpret_cast<float2 *>(cO + r * DP + n * 8 + 2 * q4) = make_float2(o[mt][n][rr * 2], o[mt][n][rr * 2 + 1]);
            cL[r * 4 + q4] = lrun[mt][rr];
            if (q4 == 0) {
                cM[r] = mrun[mt][rr];
                cE[r] = esc[mt * 2 + rr];
            }
        }
}

template <int MT, int DV, bool GUARD>
__device__ __forceinline__ void fwd_split_combine(const float *buf, int NR, int r0, int wr0, float (&o)[MT][DV / 8][4],
                                                  float (&mrun)[MT][2], float (&lrun)[MT][2], float (&esc)[MT * 2])
{
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    constexpr int DP = DV + 8;
    const float *cO = buf, *cL = cO + NR * DP, *cM = cL + NR * 4, *cE = cM + NR;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int r = wr0 - r0 + mt * 16 + g + rr * 8;
            const float m1 = cM[r], m0 = mrun[mt][rr], mm = fmaxf(m0, m1);
            float f0 = expf(m0 - mm), f1 = expf(m1 - mm);
            if (GUARD) {
                const float e0 = esc[mt * 2 + rr], e1 = cE[r], ee = fmaxf(e0, e1);
                f0 *= exp2f(e0 - ee);
                f1 *= exp2f(e1 - ee);
                esc[mt * 2 + rr] = ee;
            }
            mrun[mt][rr] = mm;
            lrun[mt][rr] = lrun[mt][rr] * f0 + cL[r * 4 + q4] * f1;
#pragma unroll
            for (int n = 0; n < DV / 8; ++n) {
                const float2 p = *reinterpret_cast<const float2 *>(cO + r * DP + n * 8 + 2 * q4);
                o[mt][n][rr * 2] = o[mt][n][rr * 2] * f0 + p.x * f1;
                o[mt][n][rr * 2 + 1] = o[mt][n][rr * 2 + 1] * f0 + p.y * f1;
            }
        }
}

/* Key split inside a CTA (two groups of warps on the same BM query rows, each having walked every other key tile):
 * merges group 1's state into group 0 through shared memory buf (BM rows, as fwd_split_store), which the caller has
 * freed (a __syncthreads() after the last use). Every thread calls it (SYNC_N > 0: only the first SYNC_N threads,
 * which then meet at barrier 2 instead of __syncthreads); returns true in group 0, which then holds the merged state
 * and writes the epilogue. */
template <int MT, int DV, bool GUARD, int SYNC_N = 0>
__device__ __forceinline__ bool fwd_split_merge(float *buf, int BM, int grp, int wr0, float (&o)[MT][DV / 8][4],
                                                float (&mrun)[MT][2], float (&lrun)[MT][2], float (&esc)[MT * 2])
{
    if (grp == 1) fwd_split_store<MT, DV>(buf, BM, 0, wr0, o, mrun, lrun, esc);
    if (SYNC_N > 0)
        named_sync(2, SYNC_N);
    else
        __syncthreads();
    if (grp == 1) return false;
    fwd_split_combine<MT, DV, GUARD>(buf, BM, 0, wr0, o, mrun, lrun, esc);
    return true;
}

/* h = mLSTM(q, k, v, i, f) for one query tile; also writes m and signed n (see api/mlstm.h).
 * KS > 1 (key split, for grids too small to fill the GPU): the NW warps form KS groups that each cover all BM
 * query rows and take every KS-th key tile (group g: kt_hi - g, kt_hi - g - KS, ...), which divides the serial
 * chain of key tiles a CTA walks by KS; the groups' (O, l, m, esc) are merged through shared memory at the end. */
template <typename T, int DK, int DV, int MT, int NW, int BN, bool SM90 = false, int KS = 1,
          bool MC = (DK == MASKED_COLS_CLASS)>
__global__ void __launch_bounds__(32 * NW) mlstm_fwd_kernel(const __grid_constant__ KArgs args)
{
    /* SM90: a small-grid variant that dispatch.cu uses on sm_90+ only; its sm_80 image is an empty stub, which
     * keeps the CI build time (two architectures) in bounds */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    if constexpr (SM90) {
        __trap();
    } else
#endif
    {
    using Cfg = FwdCfg<DK, DV, MT, NW, BN, KS>;
    constexpr int BM = Cfg::BM, NT = Cfg::NT, NWG = NW / KS;
    extern __shared__ __align__(128) unsigned char smem[];
    T *sQ = reinterpret_cast<T *>(smem);
    T *sK = reinterpret_cast<T *>(smem + Cfg::K_OFF); /* [2 stages][KS][BN * DK]; sV [2][KS][BN * DV] */
    T *sV = reinterpret_cast<T *>(smem + Cfg::V_OFF);
    float *sFq = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sG2 = sFq + BM;          /* [2][KS][BN] G_j log2e */
    float *sPM = sG2 + 2 * KS * BN; /* [2][KS][BN] prefix max of G_j over the tile (natural units) */
    float *sE = sPM + 2 * KS * BN;  /* [2][KS][BN] 2^(G_j log2e - X), X the tile's largest */

    const int64_t S = args.S;
    const QueryTile qtl = query_tile(args, BM);
    const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const T *gq = bh_ptr<T>(tq, b, hh), *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const int grp = warp / NWG;              /* key group */
    const int wr0 = (warp % NWG) * 16 * MT; /* first row of this warp within the tile */
    constexpr int GW = NW - 1;               /* gate warp (writes the gates of every group's tiles) */

    const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN);

    load_tile_async<T, BM, DK, NT>(sQ, gq, tq.ss, qs, S, masked_cols<DK, MC>(args.DQK));
#pragma unroll
    for (int gs = 0; gs < KS; ++gs)
        if (kt_hi - gs >= 0) {
            load_tile_async<T, BN, DK, NT>(sK + gs * BN * DK, gk, tk.ss, (kt_hi - gs) * BN, S, masked_cols<DK, MC>(args.DQK));
            load_tile_async<T, BN, DV, NT>(sV + gs * BN * DV, gv, tv.ss, (kt_hi - gs) * BN, S, masked_cols<DV, MC>(args.DV));
        }
    cp_async_commit();

    if (warp == 0) store_tile_cumsum<BM>(gf, tf.ss, qs, S, sFq); /* query-tile local cumsum */
    __syncthreads();

    /* gate warp state: the compensated offset sum_{u in [ks, qs)} a_u of the tile whose gates it writes; the
     * tiles are finished in descending order (all groups' tiles of a step, group 0 first) */
    Comp off = {0.0f, 0.0f};
    GateTile<BN> gnext[KS];
    auto gate_finish = [&](const GateTile<BN> &gn, int64_t ks, int slot) {
        fwd_key_gates<BN>(gn, off, ks, qs, S, sFq, sG2 + slot * BN, sPM + slot * BN, sE + slot * BN);
    };
    if (warp == GW) {
#pragma unroll
        for (int gs = 0; gs < KS; ++gs)
            if (kt_hi - gs >= 0) {
                gnext[gs].load(gf, tf.ss, gi, ti.ss, (kt_hi - gs) * BN, S);
                gate_finish(gnext[gs], (kt_hi - gs) * BN, gs);
            }
    }

    const FragBase<DK> fbk; /* Q, K tiles: rows of DK */
    const FragBase<DV> fbv; /* V tiles: rows of DV */
    const uint32_t aQ = smem_u32(sQ), aK = smem_u32(sK), aV = smem_u32(sV);

    float rowF[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) rowF[mt][rr] = sFq[wr0 + mt * 16 + g + rr * 8];

    float o[MT][DV / 8][4];
    float mrun[MT][2], lrun[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < DV / 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) o[mt][n][c] = 0.0f;
        mrun[mt][0] = mrun[mt][1] = MLSTM_FLOOR;
        lrun[mt][0] = lrun[mt][1] = 0.0f;
    }
    /* C = scale * S * D' is computed as sign(scale) * S * 2^(log2(|scale|) + log2(D')): |scale| rides in the
     * exponent, the sign is applied to l and O at the end */
    const float lsc = log2f(fabsf(args.scale));
    constexpr bool GUARD = NeedsRangeGuard<T>::value;
    float esc[MT * 2], hw[MT * 2]; /* range-guard exponents and high-water marks of the rows (range_guard.cuh) */
#pragma unroll
    for (int r = 0; r < MT * 2; ++r) esc[r] = hw[r] = 0.0f;

    const int64_t nsteps = kt_hi / KS + 1; /* steps of KS key tiles, from the diagonal down */
    int buf = 0;
    for (int64_t it = 0; it < nsteps; ++it, buf ^= 1) {
        cp_async_wait<0>();
        __syncthreads();
        const int64_t knext = kt_hi - (it + 1) * KS; /* group 0's tile of the next step */
        if (knext >= 0) {
#pragma unroll
            for (int gs = 0; gs < KS; ++gs)
                if (knext - gs >= 0) {
                    const int sl = (buf ^ 1) * KS + gs;
                    load_tile_async<T, BN, DK, NT>(sK + sl * BN * DK, gk, tk.ss, (knext - gs) * BN, S, masked_cols<DK, MC>(args.DQK));
                    load_tile_async<T, BN, DV, NT>(sV + sl * BN * DV, gv, tv.ss, (knext - gs) * BN, S, masked_cols<DV, MC>(args.DV));
                }
            cp_async_commit();
            if (warp == GW) {
#pragma unroll
                for (int gs = 0; gs < KS; ++gs)
                    if (knext - gs >= 0) gnext[gs].load(gf, tf.ss, gi, ti.ss, (knext - gs) * BN, S);
            }
        }
        const int64_t kt = kt_hi - it * KS - grp; /* this warp's key tile (< 0: none left for its group) */
        const int slot = buf * KS + grp;
        const uint32_t cK = aK + slot * BN * DK * 2;
        const uint32_t cV = aV + slot * BN * DV * 2;
        const float *cPM = sPM + slot * BN;
        const int64_t ks = kt * BN;

        /* no tile, or every key of the tile is after every row of the warp */
        const bool skip = kt < 0 || ks > qs + wr0 + 16 * MT - 1;
        if (!skip) {
            float s[MT][BN / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                    for (int c = 0; c < 4; ++c) s[mt][n][c] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < DK / 16; ++kk) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) load_a<DK>(a[mt], aQ, fbk, wr0 + mt * 16, kk * 16);
#pragma unroll
                for (int np = 0; np < BN / 16; ++np) {
                    uint32_t bb[4];
                    load_b_nk<DK>(bb, cK, fbk, np * 16, kk * 16);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_n16<T>(s[mt][2 * np], a[mt], bb);
                    }
                }
            }

            /* key column c of row r (within the tiles) is masked when ks + c > qs + r; only tiles that reach
             * past the warp's first row need the mask (diagonal region, or keys >= S) */
            const bool masked = ks + BN - 1 > qs + wr0;
            float gkv[BN / 8][2]; /* G2 (masked) or E (fwd_gate_tile) */
            load_key_row<BN>(gkv, (masked ? sG2 : sE) + slot * BN, q4);
            const int lim0 = wr0 + g - (int)max(ks - qs, (int64_t)-BN); /* clamped: far tiles are all valid */
            float mx[MT * 2];
            if (masked)
                fwd_gate_tile<true, GUARD, MT, BN, DV>(s, o, mrun, lrun, rowF, gkv, cPM, lim0, q4, lsc, esc, mx);
            else
                fwd_gate_tile<false, GUARD, MT, BN, DV>(s, o, mrun, lrun, rowF, gkv, cPM, lim0, q4, lsc, esc, mx);
            if constexpr (GUARD) {
                float fac[MT * 2];
                if (range_guard_update(mx, hw, esc, fac)) {
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        scale_frag_rows(s[mt], fac + mt * 2);
                        scale_frag_rows(o[mt], fac + mt * 2);
                        lrun[mt][0] *= fac[mt * 2];
                        lrun[mt][1] *= fac[mt * 2 + 1];
                    }
                }
            }

#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    acc_to_a<T>(s[mt], kk, a[mt]);
                }
#pragma unroll
                for (int dp = 0; dp < DV / 16; ++dp) {
                    uint32_t bb[4];
                    load_b_kn<DV>(bb, cV, fbv, kk * 16, dp * 16);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_n16<T>(o[mt][2 * dp], a[mt], bb);
                    }
                }
            }
        }
        if (knext >= 0 && warp == GW) {
#pragma unroll
            for (int gs = 0; gs < KS; ++gs)
                if (knext - gs >= 0) gate_finish(gnext[gs], (knext - gs) * BN, (buf ^ 1) * KS + gs);
        }
    }

    if constexpr (KS > 1) {
        static_assert(KS == 2, "fwd_split_merge handles two key groups");
        __syncthreads(); /* every warp is done with sQ / sK / sV: the merge reuses them */
        if (!fwd_split_merge<MT, DV, GUARD>(reinterpret_cast<float *>(smem), BM, grp, wr0, o, mrun, lrun, esc))
            return; /* group 1: no further barrier below */
    }

    fwd_epilogue<T, MT, DV, GUARD, MC>(args, b, hh, qs, wr0, o, mrun, lrun, esc);
    } /* SM90 guard */
}

} // namespace tc
} // namespace mlstm
