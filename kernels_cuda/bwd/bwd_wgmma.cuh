/* libmlstm CUDA kernels: the sm_90a backward kernels for f16/bf16 storage on warpgroup MMA (wgmma.mma_async, f32
 * accumulation). Each CTA works on one aligned 64-block of the gate cumsums, and shares its gate, elementwise and
 * epilogue code with the mma.sync kernel of bwd_tc.cuh it replaces, so P comes out bitwise the same.
 *   dQ (D 64/128/256): warp-specialised (a producer warpgroup, two consumer warpgroups of 64 query rows); per key
 *   tile of BN keys dP = dH V^T, then dQ += P K with P from registers. Key split for small grids, else two query
 *   tiles sharing the K/V stages.
 *   dK/dV (D 64/128): 64 keys; per query tile of BMQ queries S^T = K Q^T and dP^T = V dH^T, then dV += (C/n)^T dH
 *   and dK += P^T Q with the tiles from registers.
 *   dK/dV pairs (D 256, whose dK and dV would take 256 accumulator floats per thread): two warpgroups on 64 keys; one
 *   computes S^T and turns it into C/n, the other dP^T into P, they swap the packed tiles through shared memory, and
 *   each accumulates dV and dK for one half of the columns. The ping-pong pair (bf16) lets the two drift half a step
 *   apart, meeting only at one-way named barriers, so that one's elementwise work overlaps the other's products.
 * The streamed tiles are double-buffered through cp.async. */
#pragma once

#include "bwd/bwd_tc.cuh"
#include "common/wgmma.cuh"

namespace mlstm {
namespace wg {

/* One dQ step of a consumer warpgroup on the key tile at ks (K, V tiles at cK, cV, its gates at cG): dP = dH V^T from shared
 * memory, P = (dP - delta) e in registers (tc::dq_elementwise; range guard for f16), then adq += P K. */
template <typename T, int D, int BN, int BM, bool GUARD>
__device__ __forceinline__ void dq_step(uint32_t aH, uint32_t cK, uint32_t cV, const float *cG, int64_t ks, int64_t qs,
                                        int wr0, const float (&rb2)[2], const float (&del)[2], float (&esc)[2],
                                        float (&hw)[2], float (&adq)[D / 8][4])
{
    const int g = (threadIdx.x & 31) >> 2;
    float(&acc)[D / 2] = reinterpret_cast<float(&)[D / 2]>(adq);
    float dp[BN / 8][4];
    float(&dacc)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(dp);
    reg_fence(dacc);
    fence();
    wgmma_kmajor_ss<T, BN, D, BM, BN>(dacc, aH, cV);
    commit();
    wait<0>();
    reg_fence(dacc);

    const int lim0 = wr0 + g - (int)(ks - qs);
    float pw[2];
    tc::range_guard_pw(esc, pw);
    float mx[2] = {0.0f, 0.0f};
    if (ks + BN - 1 > qs + wr0)
        tc::dq_elementwise<true, GUARD, BN>(dp, cG, rb2, pw, del, lim0, mx);
    else
        tc::dq_elementwise<false, GUARD, BN>(dp, cG, rb2, pw, del, lim0, mx);
    if constexpr (GUARD) {
        float fac[2];
        if (tc::range_guard_update(mx, hw, esc, fac)) {
            scale_frag_rows(dp, fac);
            scale_frag_rows(adq, fac);
        }
    }
    uint32_t pa[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
        acc_to_a<T>(dp, kk, pa[kk]);
    }
    reg_fence(acc);
    fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) WgmmaRS<T, D>::run(acc, pa[kk], desc_sw128(cK + kk * 16 * 128, BN * 128), 1);
    commit();
    wait<0>();
    reg_fence(acc);
}

/* The staged epilogues' pieces: 8 staged floats (16-byte aligned) into x; 8 T (a 16-byte load) added to x; x as 8 T */
__device__ __forceinline__ void staged8(float (&x)[8], const float *p)
{
    const float4 lo = *reinterpret_cast<const float4 *>(p), hi = *reinterpret_cast<const float4 *>(p + 4);
    x[0] = lo.x, x[1] = lo.y, x[2] = lo.z, x[3] = lo.w, x[4] = hi.x, x[5] = hi.y, x[6] = hi.z, x[7] = hi.w;
}
template <typename T> __device__ __forceinline__ void add8(float (&x)[8], const T *p)
{
    const uint4 v = *reinterpret_cast<const uint4 *>(p);
    const T *e = reinterpret_cast<const T *>(&v);
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] += to_f32(e[i]);
}
template <typename T> __device__ __forceinline__ uint4 pack8(const float (&x)[8])
{
    return uint4{pack2<T>(x[0], x[1]), pack2<T>(x[2], x[3]), pack2<T>(x[4], x[5]), pack2<T>(x[6], x[7])};
}

/* tc::dq_epilogue staged (the dQ kernel's KS = 1 tiles, tile_config.h MLSTM_DQ_WG_STAGED_EPILOGUE), for the consumer
 * warpgroups once both are done with the tiles: each stages its 64 rows of sgn * acc (f32, range guard undone; row
 * pitch D + 8 floats) at stg, then each warp takes back its own 16 rows, a row's D / 8 column chunks across its
 * lanes: 16-byte loads of q (for q . dq) and of the chained slice's prior part, a 16-byte store of dq (the same
 * rounding as dq_epilogue), and df_t = q . dq - r_t, the chunk-0 lane reading the residual r_t in dq[t][0..1] before
 * its store. Rows 16-byte aligned, as on the whole tensor-core path (the chain's parts too). */
template <typename T, int D, bool GUARD, bool MC>
__device__ __forceinline__ void dq_epilogue_staged(const KArgs &args, int64_t b, int64_t hh, int64_t qs, int wr0,
                                                   const float (&adq)[D / 8][4], const float (&esc)[2], float *stg)
{
    constexpr int P = D + 8, CH = D / 8, RPI = 32 / CH; /* staged row pitch (floats); chunks per row; rows per pass */
    static_assert(CH <= 32 && 32 % CH == 0, "a row's chunks within one warp");
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const float sgn = args.scale < 0.0f ? -1.0f : 1.0f;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const float osc = GUARD ? sgn * exp2f(esc[rr]) : sgn; /* sign(scale), range guard undone */
        float *srow = stg + (wr0 + g + rr * 8) * P; /* P = 8 (mod 32): a half-warp's float2 stores in distinct banks */
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<float2 *>(srow + n * 8 + 2 * q4) =
                make_float2(adq[n][rr * 2] * osc, adq[n][rr * 2 + 1] * osc);
    }
    __syncwarp(); /* each warp reads back only the 16 rows it staged */
    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tdf = args.t[MLSTM_TENSOR_DF], &tdq = args.t[MLSTM_TENSOR_DQ];
    const T *gq = bh_ptr<T>(tq, b, hh);
    float *gdf = bh_ptr<float>(tdf, b, hh);
    T *gdq = bh_ptr<T>(tdq, b, hh);
    const int c = lane % CH;
#pragma unroll 2
    for (int k = 0; k < 16; k += RPI) {
        const int r = wr0 + k + lane / CH;
        const int64_t t = qs + r;
        float qd = 0.0f, res = 0.0f;
        if (t < args.S && col_in<D, MC>(c * 8, args.DQK)) { /* DQK <= D, a multiple of 8 (masked columns) */
            T *row = gdq + t * tdq.ss;
            if (c == 0) res = *reinterpret_cast<const float *>(row);
            float x[8];
            staged8(x, stg + r * P + c * 8);
            const uint4 qv = *reinterpret_cast<const uint4 *>(gq + t * tq.ss + c * 8);
            const T *qe = reinterpret_cast<const T *>(&qv);
#pragma unroll
            for (int e = 0; e < 8; ++e) qd += to_f32(qe[e]) * x[e]; /* this call's own dq (df is per call) */
            const T *prow = prior_row<T>(args.prior_dq, b, hh, t);
            if (prow) add8<T>(x, prow + c * 8);
            *reinterpret_cast<uint4 *>(row + c * 8) = pack8<T>(x);
        }
#pragma unroll
        for (int off = 1; off < CH; off <<= 1) qd += __shfl_xor_sync(0xffffffffu, qd, off);
        if (c == 0 && t < args.S) gdf[t * tdf.ss] = qd - res;
    }
}

/* dQ warp-specialised like the forward (fwd_wgmma.cuh): a producer warpgroup copies K/V tiles into NST stages and
 * computes their key gates (two scan warps); two consumer warpgroups meet it only at mbarriers.
 *   KS = 2 (small grids): both consumers on the same 64 query rows (one aligned 64-block of the gate cumsums), taking
 *   every other key tile (two per stage; scan warp w writes tile w's gates), which halves the CTA's serial chain; their
 *   dQ accumulators are added at the end (fwd_split_merge with equal maxima).
 *   KS = 1: consumer w on its own 64-row block, both reading each stage's key tile (scan warp w writes the tile's gates
 *   relative to block w). */
template <int D, int BN, int NST, int KS>
struct DqWsCfg {
    static constexpr int BM = 128 / KS; /* KS = 2: one 64-row tile for both consumers; 1: one each */
    static constexpr int NT = 384;           /* consumers: threads 0..255, producer: 256..383 */
    static constexpr int PROD_REGS = 56, CONS_REGS = 224; /* 128 * 56 + 256 * 224 = 384 * 168 */
    static_assert(ws_regs_fit<PROD_REGS, CONS_REGS>, "register split");
    static constexpr int H_BYTES = BM * D * 2;
    static constexpr int KV_BYTES = BN * D * 2;
    static constexpr int K_OFF = H_BYTES;
    static constexpr int V_OFF = K_OFF + NST * KS * KV_BYTES; /* K, V: [NST stages][KS groups] tiles */
    static constexpr int G_OFF = V_OFF + NST * KS * KV_BYTES;
    /* floats: sFq[BM]; sG[NST][2 consumers][BN]; producer scratch sA, sI [2][2][64] (the tiles' 64-blocks) */
    static constexpr int G_FLOATS = BM + NST * 2 * BN + 2 * 2 * 2 * 64;
    static constexpr int BAR_OFF = G_OFF + G_FLOATS * 4;
    static constexpr int SMEM = BAR_OFF + 16 * NST + 1024; /* + 1024: the base is aligned up at run time */
    static_assert(64 % BN == 0 && BN % 32 == 0 && (BN * 128) % 1024 == 0, "key tile within one 64-block");
    static_assert(NST >= 2 && BAR_OFF % 8 == 0, "stages, mbarrier alignment");
    static_assert(KS == 1 || (KS == 2 && tc::split_buf_bytes(BM, D) <= G_OFF), "merge buffer");
    static_assert(SMEM <= 232448, "shared memory per block");
    static_assert(KS > 1 || 2 * 64 * (D + 8) * 4 <= G_OFF, "staged epilogue (dq_epilogue_staged) in the tiles");
};

template <typename T, int D, int BN, int NST, int KS, bool MC = (D == MASKED_COLS_CLASS), bool TMA = false>
__global__ void __launch_bounds__(384, 1)
    mlstm_bwd_dq_ws_kernel(const __grid_constant__ KArgs args, const __grid_constant__ TmaKV tm)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* built for an architecture without wgmma: never launched (dispatch.cu) */
#else
    using Cfg = DqWsCfg<D, BN, NST, KS>;
    constexpr int BM = Cfg::BM;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aH = base, aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF;
    float *sFq = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sG = sFq + BM;             /* [NST][2][BN] key gates B_j of each consumer's tile */
    float *sA = sG + NST * 2 * BN;    /* [2][2][64] logsigmoid(f) of a key tile's 64-block (0 beyond S) */
    float *sI = sA + 2 * 2 * 64;      /* [2][2][64] its i */
    const uint32_t bFull = base + Cfg::BAR_OFF, bEmpty = bFull + 8 * NST;

    const int64_t S = args.S;
    const QueryTile qtl = query_tile(args, BM);
    const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;

    const TArg &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F], &tdh = args.t[MLSTM_TENSOR_DH];
    const T *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh), *gdh = bh_ptr<T>(tdh, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wgi = warp >> 2; /* 0, 1: consumers; 2: producer */
    const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN);
    const int64_t nsteps = kt_hi / KS + 1; /* steps of KS key tiles, from the diagonal down */

    /* TMA (tile_config.h MLSTM_TC{D}_DQ_WG_TMA, where tm.on): producer thread 0 loads each stage with tensor copies, else the
     * 128 producer threads cp.async it */
    const bool tma = TMA && tm.on != 0;
    /* full: every producer thread once its copies landed (TMA: thread 0's expect-tx arrival), both scan warps */
    mbar_init_stages<NST>(bFull, (tma ? 1 : 128) + 64);
    __syncthreads();

    if (wgi == 2) {
        /* ---- producer warpgroup: thread pt < 64 KS loads f and i of position pt % 64 of tile pt / 64's 64-block ---- */
        setmaxnreg_dec<Cfg::PROD_REGS>();
        const int pt = (int)threadIdx.x - 256;
        const int ptile = pt >> 6, ppos = pt & 63;
        const bool gprod = pt < 64 * KS;
        float pf0 = 0.0f, pi0 = 0.0f, pf1 = 0.0f, pi1 = 0.0f;
        auto gate_load = [&](int64_t st, float &f, float &i) {
            const int64_t kt = kt_hi - KS * st - ptile, s = ((kt * BN) & ~(int64_t)63) + ppos;
            const bool ok = gprod && st < nsteps && kt >= 0 && s < S;
            f = ok ? gf[s * tf.ss] : 0.0f;
            i = ok ? gi[s * ti.ss] : 0.0f;
        };
        Comp off = {0.0f, 0.0f};
        gate_load(0, pf0, pi0);
        gate_load(1, pf1, pi1);
        for (int64_t it = 0; it < nsteps; ++it) {
            const int stage = (int)(it % NST);
            if (it >= NST) mbar_wait(bEmpty + 8 * stage, (uint32_t)((it / NST + 1) & 1));
            if (TMA && tma && pt == 0) { /* the stage's tensor copies, in flight while the gates are staged and scanned */
                const uint32_t full = bFull + 8 * stage;
                const int ntiles = (int)min((int64_t)KS, kt_hi - KS * it + 1); /* tiles >= 0 of the step */
                mbar_arrive_expect_tx(full, (uint32_t)(2 * ntiles * Cfg::KV_BYTES));
                for (int gs = 0; gs < ntiles; ++gs) {
                    const int kt = (int)(kt_hi - KS * it - gs), sl = stage * KS + gs;
#pragma unroll
                    for (int cb = 0; cb < D / 64; ++cb) {
                        tma_load_4d(aK + sl * Cfg::KV_BYTES + cb * BN * 128, &tm.k, cb * 64, kt * BN, (int)hh, (int)b, full);
                        tma_load_4d(aV + sl * Cfg::KV_BYTES + cb * BN * 128, &tm.v, cb * 64, kt * BN, (int)hh, (int)b, full);
                    }
                }
            }
            if (gprod) {
                const int64_t kt = kt_hi - KS * it - ptile, s = ((kt * BN) & ~(int64_t)63) + ppos;
                const int o = ((int)(it & 1) * 2 + ptile) * 64 + ppos;
                sA[o] = (kt >= 0 && s < S) ? logsigmoid(pf0) : 0.0f;
                sI[o] = pi0;
            }
            pf0 = pf1;
            pi0 = pi1;
            gate_load(it + 2, pf1, pi1);
            named_sync(1, 128);
            if (pt < 64) {
                const int w = pt >> 5;
                if constexpr (KS == 2) {
                    /* scan warp w writes the gates of tile gs = w; both walk the step's tiles in descending order and
                     * keep the same compensated offset (dq_key_gates_scanned's update) */
#pragma unroll
                    for (int gs = 0; gs < 2; ++gs) {
                        const int64_t kt = kt_hi - 2 * it - gs;
                        if (kt < 0) continue;
                        const int src = ((int)(it & 1) * 2 + gs) * 64;
                        const float a[2] = {sA[src + 2 * lane], sA[src + 2 * lane + 1]};
                        float cum[2];
                        const float tot = GateTile<64>::scan_values(cum, a);
                        if (gs == w) {
                            const float iv[2] = {sI[src + 2 * lane], sI[src + 2 * lane + 1]};
                            tc::dq_key_gates_scanned<BN>(cum, tot, iv, off, kt * BN, qs, sG + (stage * 2 + gs) * BN);
                        } else {
                            const int64_t ks = kt * BN, kbs = ks & ~(int64_t)63;
                            if (kbs < qs && (ks - kbs) + BN == 64) comp_add(off, tot);
                        }
                    }
                } else {
                    /* scan warp w writes the step's tile's gates for consumer w's query block (its own offset) */
                    const int64_t kt = kt_hi - it;
                    const int src = (int)(it & 1) * 2 * 64;
                    const float a[2] = {sA[src + 2 * lane], sA[src + 2 * lane + 1]};
                    const float iv[2] = {sI[src + 2 * lane], sI[src + 2 * lane + 1]};
                    float cum[2];
                    const float tot = GateTile<64>::scan_values(cum, a);
                    tc::dq_key_gates_scanned<BN>(cum, tot, iv, off, kt * BN, qs + 64 * w, sG + (stage * 2 + w) * BN);
                }
                mbar_arrive(bFull + 8 * stage); /* the stage's gates are written */
            }
            if (!tma) {
                ws_copy_stage<T, BN, D, KS>(aK, aV, Cfg::KV_BYTES, stage, kt_hi - KS * it, gk, tk.ss, gv, tv.ss, S, pt,
                                            masked_cols<D, MC>(args.DQK), masked_cols<D, MC>(args.DV));
                mbar_arrive_cp_async(bFull + 8 * stage); /* fires when this thread's copies have landed */
            }
        }
        cp_async_wait<0>(); /* no copy outlives its thread */
        return;
    }

    /* ---- consumer warpgroups ---- */
    setmaxnreg_inc<Cfg::CONS_REGS>();
    load_tile_sw128<T, BM, D, 256>(aH, gdh, tdh.ss, qs, S, (int)threadIdx.x, masked_cols<D, MC>(args.DV));
    cp_async_commit();
    if ((warp & 3) == 0 && (KS == 1 || wgi == 0)) /* the 64-block local cumsum of each consumer's query rows */
        store_tile_cumsum<64>(gf, tf.ss, qs + (KS > 1 ? 0 : 64 * wgi), S, sFq + (KS > 1 ? 0 : 64 * wgi));
    const int grp = KS > 1 ? wgi : 0;      /* key group */
    const int wgr = KS > 1 ? 0 : 64 * wgi; /* the warpgroup's first query row within the tile: a 64-block */
    const int wr0 = (warp & 3) * 16;       /* first row of this warp within the 64-block */
    cp_async_wait<0>();
    fence_proxy_async();
    named_sync(2, 256); /* dH and the cumsums are in shared memory */

    float rb2[2] = {0.0f, 0.0f}, del[2] = {0.0f, 0.0f};
    float adq[D / 8][4];
    float(&acc)[D / 2] = reinterpret_cast<float(&)[D / 2]>(adq);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) acc[i] = 0.0f;
    constexpr bool GUARD = tc::NeedsRangeGuard<T>::value;
    float esc[2] = {0.0f, 0.0f}, hw[2] = {0.0f, 0.0f}; /* range guard (range_guard.cuh) */

    for (int64_t it = 0; it < nsteps; ++it) {
        const int stage = (int)(it % NST);
        const int64_t kt = kt_hi - KS * it - grp; /* this warpgroup's key tile (< 0: none left for its group) */
        const int slot = stage * KS + grp;
        mbar_wait(bFull + 8 * stage, (uint32_t)((it / NST) & 1));
        fence_proxy_async(); /* the producer's cp.async / st.shared writes before the wgmma's async-proxy reads */
        if (it == 0) tc::dq_row_state(args, b, hh, qs + wgr, wr0, sFq + wgr, rb2, del);
        /* no tile, or every key of the tile after every row of the warpgroup: nothing to do (warpgroup-uniform) */
        if (kt >= 0 && kt * BN <= qs + wgr + 63) {
            dq_step<T, D, BN, BM, GUARD>(aH + wgr * 128, aK + slot * Cfg::KV_BYTES, aV + slot * Cfg::KV_BYTES,
                                         sG + (stage * 2 + wgi) * BN, kt * BN, qs + wgr, wr0, rb2, del, esc, hw, adq);
        }
        mbar_arrive(bEmpty + 8 * stage);
    }

    if constexpr (KS > 1) {
        named_sync(2, 256); /* both consumers are done with the tiles (all copies have landed): the merge reuses them */
        float m0[1][2] = {{0.0f, 0.0f}}, l0[1][2] = {{0.0f, 0.0f}}; /* equal maxima: the merge adds the accumulators */
        float(&o1)[1][D / 8][4] = reinterpret_cast<float(&)[1][D / 8][4]>(adq);
        if (!tc::fwd_split_merge<1, D, GUARD, 256>(reinterpret_cast<float *>(smem), BM, grp, wr0, o1, m0, l0, esc))
            return; /* group 1 */
    }
    if constexpr (KS == 1 && MLSTM_DQ_WG_STAGED_EPILOGUE) {
        named_sync(2, 256); /* both consumers are done with the dH / K / V tiles (every load of the CTA has landed) */
        dq_epilogue_staged<T, D, GUARD, MC>(args, b, hh, qs + wgr, wr0, adq, esc,
                                            reinterpret_cast<float *>(smem) + wgi * 64 * (D + 8));
        return;
    }
    tc::dq_epilogue<T, D, GUARD, MC>(args, b, hh, qs + wgr, wr0, adq, esc);
#endif
}

/* A dK/dV CTA's first loads (all NT threads, cp.async, committed): its K and V tiles (BNK keys from ks) and the Q and
 * dH tiles of the query tile at qs0 */
template <typename T, int D, int BNK, int BMQ, int NT, bool MC>
__device__ __forceinline__ void dkdv_first_tiles(const KArgs &args, uint32_t aK, uint32_t aV, uint32_t aQ, uint32_t aH,
                                                 const T *gk, const T *gv, const T *gq, const T *gdh, int64_t ks,
                                                 int64_t qs0)
{
    const int64_t S = args.S;
    const int64_t qc = masked_cols<D, MC>(args.DQK), vc = masked_cols<D, MC>(args.DV);
    load_tile_sw128<T, BNK, D, NT>(aK, gk, args.t[MLSTM_TENSOR_K].ss, ks, S, (int)threadIdx.x, qc);
    load_tile_sw128<T, BNK, D, NT>(aV, gv, args.t[MLSTM_TENSOR_V].ss, ks, S, (int)threadIdx.x, vc);
    load_tile_sw128<T, BMQ, D, NT>(aQ, gq, args.t[MLSTM_TENSOR_Q].ss, qs0, S, (int)threadIdx.x, qc);
    load_tile_sw128<T, BMQ, D, NT>(aH, gdh, args.t[MLSTM_TENSOR_DH].ss, qs0, S, (int)threadIdx.x, vc);
    cp_async_commit();
}

/* The query gates of the wgmma dK/dV kernels, one query tile ahead: 64 producer threads (warps pw, pw + 1) load a
 * tile's values early in a step and store them late in the step before (tc::DkdvQueryGates::produce_*); warp 0 scans
 * them at the end of the step before their use (ANY_FW: warp pw - 2 instead, for the ping-pong pair's pipe per warpgroup).
 * Slots (qt - qt0) & 1 of pr [2][256]; outputs cb, del [2][BMQ], of [2]: G_FLOATS floats from cb on. */
template <int BMQ, bool ANY_FW = false>
struct DkdvGatePipe {
    static constexpr int G_FLOATS = 4 * BMQ + 2 + 512;
    tc::DkdvQueryGates<1, BMQ> qg;
    float *pr, *cb, *del, *of;
    int64_t qt0, nqt;
    int pidx;
    bool producer;
    float r[4];
    __device__ __forceinline__ DkdvGatePipe(const KArgs &args, int64_t b, int64_t hh, int64_t ks, int pw, float *pr_,
                                            float *cb_, float *del_, float *of_, int64_t qt0_, int64_t nqt_)
        : qg(args, b, hh, ks), pr(pr_), cb(cb_), del(del_), of(of_), qt0(qt0_), nqt(nqt_)
    {
        pidx = (int)threadIdx.x - 32 * pw;
        producer = pidx >= 0 && pidx < 64;
    }
    __device__ __forceinline__ float *slot(int64_t q) const { return pr + ((q - qt0) & 1) * 256; }
    /* the first two tiles' values, then tile qt0's gates (contains a __syncthreads) */
    __device__ __forceinline__ void prologue()
    {
        for (int64_t q = qt0; q < qt0 + 2 && q < nqt; ++q)
            if (producer) {
                qg.produce_load(q * BMQ, pidx, r);
                qg.produce_store(q * BMQ, pidx, r, slot(q));
            }
        __syncthreads();
        if (ANY_FW ? pidx >= -64 && pidx < -32 : threadIdx.x < 32) qg.finish_from(qt0 * BMQ, slot(qt0), cb, del, of);
    }
    /* in step qt (buffer buf): early, the loads for tile qt + 2; late, their store, and tile qt + 1's gates */
    __device__ __forceinline__ void early(int64_t qt)
    {
        if (producer && qt + 2 < nqt) qg.produce_load((qt + 2) * BMQ, pidx, r);
    }
    __device__ __forceinline__ void late(int64_t qt, int buf)
    {
        if (producer && qt + 2 < nqt) qg.produce_store((qt + 2) * BMQ, pidx, r, slot(qt + 2));
        if (qt + 1 < nqt && (ANY_FW ? pidx >= -64 && pidx < -32 : threadIdx.x < 32))
            qg.finish_from((qt + 1) * BMQ, slot(qt + 1), cb + (buf ^ 1) * BMQ, del + (buf ^ 1) * BMQ, of + (buf ^ 1));
    }
};

template <int D, int BMQ>
struct DkdvCfg {
    static constexpr int BNK = 64;
    static constexpr int NT = 128;
    static constexpr int KV_BYTES = BNK * D * 2;
    static constexpr int QT_BYTES = BMQ * D * 2;
    static constexpr int K_OFF = 0;
    static constexpr int V_OFF = KV_BYTES;
    static constexpr int Q_OFF = 2 * KV_BYTES;           /* [2] buffers */
    static constexpr int DH_OFF = Q_OFF + 2 * QT_BYTES; /* [2] buffers */
    static constexpr int G_OFF = DH_OFF + 2 * QT_BYTES; /* floats: sCb[2][BMQ], sDel[2][BMQ], sOf[2], sPr[2][256] */
    static constexpr int SMEM = G_OFF + (4 * BMQ + 2 + 512) * 4 + 1024; /* + 1024: the base is aligned up at run time */
    static_assert(64 % BMQ == 0 && BMQ % 32 == 0 && QT_BYTES % 1024 == 0, "query tile within one 64-block");
};

template <typename T, int D, int BMQ>
__global__ void __launch_bounds__(128) mlstm_bwd_dkdv_wgmma_kernel(const __grid_constant__ KArgs args)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* built for an architecture without wgmma: never launched (dispatch.cu) */
#else
    using Cfg = DkdvCfg<D, BMQ>;
    constexpr int BNK = Cfg::BNK, NT = Cfg::NT;
    constexpr int PW = 2; /* first producer warp */
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF, aQ = base + Cfg::Q_OFF, aH = base + Cfg::DH_OFF;
    float *sCb = reinterpret_cast<float *>(smem + Cfg::G_OFF); /* A_t */
    float *sDel = sCb + 2 * BMQ;
    float *sOf = sDel + 2 * BMQ;
    float *sPr = sOf + 2; /* [2][256]: the query gates' producer values (DkdvQueryGates::produce_store) */

    const int64_t S = args.S;
    const CtaPos cp = cta_pos(args);
    const int64_t b = cp.b, hh = cp.hh, kt = cp.rank; /* lowest key tiles (most work) first */
    const int64_t ks = kt * BNK;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F], &tdh = args.t[MLSTM_TENSOR_DH];
    const T *gq = bh_ptr<T>(tq, b, hh), *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);
    const T *gdh = bh_ptr<T>(tdh, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int warp = threadIdx.x >> 5;
    const int wk0 = warp * 16; /* first key row of this warp within the tile */
    const int64_t nqt = (S + BMQ - 1) / BMQ;
    const int64_t qt0 = ks / BMQ;

    dkdv_first_tiles<T, D, BNK, BMQ, NT, D == MASKED_COLS_CLASS>(args, aK, aV, aQ, aH, gk, gv, gq, gdh, ks, qt0 * BMQ);

    float gkn[2];
    tc::dkdv_key_gates(gf, tf.ss, gi, ti.ss, ks, wk0, S, gkn);
    DkdvGatePipe<BMQ> gp(args, b, hh, ks, PW, sPr, sCb, sDel, sOf, qt0, nqt);
    gp.prologue();

    float adk[D / 8][4], adv[D / 8][4];
    float(&acck)[D / 2] = reinterpret_cast<float(&)[D / 2]>(adk);
    float(&accv)[D / 2] = reinterpret_cast<float(&)[D / 2]>(adv);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) acck[i] = accv[i] = 0.0f;
    float di_ex[2] = {0.0f, 0.0f}, di_rd[2] = {0.0f, 0.0f}; /* di from the f32 P (di_rd: unused, k.dk in the epilogue) */
    constexpr bool GUARD = tc::NeedsRangeGuard<T>::value;
    float esc[2] = {0.0f, 0.0f}, hw[2] = {0.0f, 0.0f}; /* range guard (range_guard.cuh) */

    int buf = 0;
    for (int64_t qt = qt0; qt < nqt; ++qt, buf ^= 1) {
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        const int64_t qs = qt * BMQ;
        if (qt + 1 < nqt) {
            load_tile_sw128<T, BMQ, D, NT>(aQ + (buf ^ 1) * Cfg::QT_BYTES, gq, tq.ss, qs + BMQ, S, (int)threadIdx.x, masked_cols<D>(args.DQK));
            load_tile_sw128<T, BMQ, D, NT>(aH + (buf ^ 1) * Cfg::QT_BYTES, gdh, tdh.ss, qs + BMQ, S, (int)threadIdx.x, masked_cols<D>(args.DV));
            cp_async_commit();
        }
        gp.early(qt);
        const uint32_t cQ = aQ + buf * Cfg::QT_BYTES, cH = aH + buf * Cfg::QT_BYTES;
        const float *cCb = sCb + buf * BMQ, *cDel = sDel + buf * BMQ;
        const float of = sOf[buf];

        float st[BMQ / 8][4], dpt[BMQ / 8][4];
        float(&sacc)[BMQ / 2] = reinterpret_cast<float(&)[BMQ / 2]>(st);
        float(&pacc)[BMQ / 2] = reinterpret_cast<float(&)[BMQ / 2]>(dpt);
        reg_fence(sacc);
        reg_fence(pacc);
        fence();
        wgmma_kmajor_ss<T, BMQ, D, BNK, BMQ>(sacc, aK, cQ); /* S^T = K Q^T */
        wgmma_kmajor_ss<T, BMQ, D, BNK, BMQ>(pacc, aV, cH); /* dP^T = V dH^T */
        commit();
        wait<0>();
        reg_fence(sacc);
        reg_fence(pacc);

        /* rows = keys j (g, g+8 of each warp), cols = queries t */
        const int qrel = (int)(qs - ks);
        const float gb2[2] = {bwd_col_b(gkn[0], of), bwd_col_b(gkn[1], of)};
        float pw[2];
        tc::range_guard_pw(esc, pw);
        float mx[2] = {0.0f, 0.0f};
        auto element = [&](int n, int c, int rr, bool dead, float e, float del) {
            tc::dkdv_element<T, false, GUARD, BMQ>(st, dpt, n, c, rr, dead, e, del, di_ex, di_rd, mx);
        };
        if (qs < ks + wk0 + 15)
            tc::dkdv_for_each_element<true, GUARD, BMQ>(cCb, cDel, gb2, pw, wk0, qrel, element);
        else
            tc::dkdv_for_each_element<false, GUARD, BMQ>(cCb, cDel, gb2, pw, wk0, qrel, element);
        if constexpr (GUARD) {
            float fac[2];
            if (tc::range_guard_update(mx, hw, esc, fac)) {
                scale_frag_rows(st, fac);
                scale_frag_rows(dpt, fac);
                scale_frag_rows(adk, fac);
                scale_frag_rows(adv, fac);
                di_ex[0] *= fac[0];
                di_ex[1] *= fac[1];
            }
        }
        uint32_t ac[BMQ / 16][4], ap[BMQ / 16][4];
#pragma unroll
        for (int kk = 0; kk < BMQ / 16; ++kk) {
            acc_to_a<T>(st, kk, ac[kk]);
            acc_to_a<T>(dpt, kk, ap[kk]);
        }
        reg_fence(acck);
        reg_fence(accv);
        fence();
#pragma unroll
        for (int kk = 0; kk < BMQ / 16; ++kk) { /* dV += (C/n)^T dH ; dK += P^T Q  (k = query index) */
            WgmmaRS<T, D>::run(accv, ac[kk], desc_sw128(cH + kk * 16 * 128, BMQ * 128), 1);
            WgmmaRS<T, D>::run(acck, ap[kk], desc_sw128(cQ + kk * 16 * 128, BMQ * 128), 1);
        }
        commit();
        wait<0>();
        reg_fence(acck);
        reg_fence(accv);
        gp.late(qt, buf);
    }

    tc::dkdv_epilogue<T, D, D, D, GUARD, false>(args, b, hh, ks, wk0, 0, true, adk, adv, esc, di_ex, di_rd, [&](int kr, int col) {
        const T *kp = reinterpret_cast<const T *>(smem + Cfg::K_OFF + sw128_off<BNK>(kr, col));
        return make_float2(to_f32(kp[0]), to_f32(kp[1]));
    });
#endif
}

template <int D, int BMQ>
struct DkdvPairCfg {
    static constexpr int BNK = 64;
    static constexpr int NT = 256;
    static constexpr int KV_BYTES = BNK * D * 2;
    static constexpr int QT_BYTES = BMQ * D * 2;
    static constexpr int K_OFF = 0;
    static constexpr int V_OFF = KV_BYTES;
    static constexpr int Q_OFF = 2 * KV_BYTES;           /* [2] buffers */
    static constexpr int DH_OFF = Q_OFF + 2 * QT_BYTES; /* [2] buffers */
    static constexpr int X_OFF = DH_OFF + 2 * QT_BYTES; /* u32 [2 roles][BMQ/16][4][128] packed tiles */
    /* floats [BMQ/2][128]: role 0's raw S^T tile for role 1's di; it starts at role 1's packed tile, whose slots of a
     * thread the same thread reads (S) before it writes them (P) */
    static constexpr int SB_OFF = X_OFF + (BMQ / 16) * 4 * 128 * 4;
    static constexpr int XM_OFF = SB_OFF + (BMQ / 2) * 128 * 4; /* floats [2 roles][2][128]: row maxima, di */
    static constexpr int G_OFF = XM_OFF + 2 * 2 * 128 * 4; /* floats: sCb[2][BMQ], sDel[2][BMQ], sOf[2], sPr[2][256] */
    static constexpr int SMEM = G_OFF + (4 * BMQ + 2 + 512) * 4 + 1024; /* + 1024: the base is aligned up at run time */
    static_assert(64 % BMQ == 0 && BMQ % 32 == 0 && QT_BYTES % 1024 == 0 && D % 128 == 0, "tiles");
    static_assert(2 * 2 * 64 * (D / 2 + 8) * 4 <= X_OFF, "staged epilogue (dkdv_rows_staged) in the K / V / Q / dH tiles");
};

/* dk and dv of a warp's 16 key rows (wk0 + g, + 8; output columns [c0, c0 + DOUT)) through shared memory (the
 * pairs' staged epilogue, tile_config.h MLSTM_DKDV_STAGED_EPILOGUE): sgn * acc (range guard undone) staged in f32 at
 * stg (the warp's rows of [2 tensors][64 rows][DOUT + 8 floats]), read back by the same warp a row's DOUT / 8 column
 * chunks across its lanes, the chained slice's prior dk part added, then 16-byte stores: the values and rounding of
 * tc::dkdv_epilogue's fragment stores. Rows 16-byte aligned, as on the whole tensor-core path. */
template <typename T, int D, int DOUT, bool GUARD, bool MC>
__device__ __forceinline__ void dkdv_rows_staged(const KArgs &args, int64_t b, int64_t hh, int64_t ks, int wk0, int c0,
                                                 const float (&adk)[DOUT / 8][4], const float (&adv)[DOUT / 8][4],
                                                 const float (&esc)[2], float *stg)
{
    constexpr int P = DOUT + 8, CH = DOUT / 8, RPI = 32 / CH; /* staged row pitch (floats); chunks per row; rows per pass */
    static_assert(CH <= 32 && 32 % CH == 0, "a row's chunks within one warp");
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const float sgn = args.scale < 0.0f ? -1.0f : 1.0f;
    float *sk = stg, *sv = stg + 64 * P;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const float osc = GUARD ? sgn * exp2f(esc[rr]) : sgn; /* sign(scale), range guard undone */
        const int o = (wk0 + g + rr * 8) * P + 2 * q4; /* P = 8 (mod 32): a half-warp's float2 stores in distinct banks */
#pragma unroll
        for (int n = 0; n < DOUT / 8; ++n) {
            *reinterpret_cast<float2 *>(sk + o + n * 8) = make_float2(adk[n][rr * 2] * osc, adk[n][rr * 2 + 1] * osc);
            *reinterpret_cast<float2 *>(sv + o + n * 8) = make_float2(adv[n][rr * 2] * osc, adv[n][rr * 2 + 1] * osc);
        }
    }
    __syncwarp(); /* each warp reads back only the 16 rows it staged */
    const TArg &tdk = args.t[MLSTM_TENSOR_DK], &tdv = args.t[MLSTM_TENSOR_DV];
    T *gdk = bh_ptr<T>(tdk, b, hh), *gdv = bh_ptr<T>(tdv, b, hh);
    const int c = lane % CH, col = c0 + c * 8;
#pragma unroll 2
    for (int k = 0; k < 16; k += RPI) {
        const int r = wk0 + k + lane / CH;
        const int64_t j = ks + r;
        if (j >= args.S) continue;
        float x[8];
        if (col_in<D, MC>(col, args.DQK)) { /* DQK, DV <= D, multiples of 8 (masked columns) */
            staged8(x, sk + r * P + c * 8);
            const T *pk = prior_row<T>(args.prior_dk, b, hh, j);
            if (pk) add8<T>(x, pk + col);
            *reinterpret_cast<uint4 *>(gdk + j * tdk.ss + col) = pack8<T>(x);
        }
        if (col_in<D, MC>(col, args.DV)) {
            staged8(x, sv + r * P + c * 8);
            *reinterpret_cast<uint4 *>(gdv + j * tdv.ss + col) = pack8<T>(x);
        }
    }
}

/* The end of a dK/dV warpgroup pair (after both warpgroups' last products): k_j . dk_j over both column halves (the
 * rounded-P sum whose difference from di the dQ kernel takes back from df): per-thread partial sums, role 1's added
 * to role 0's, which also takes role 1's di_ex (the epilogue reduces over the quad and applies the sign and
 * range-guard factor); then dk, dv, di and the residual (tc::dkdv_epilogue). Contains __syncthreads. */
template <typename T, int D, int BMQ, bool GUARD, bool MC>
__device__ __forceinline__ void pair_epilogue(const KArgs &args, unsigned char *smem, int64_t b, int64_t hh, int64_t ks,
                                              int wk0, int role, float (&adk)[D / 16][4], float (&adv)[D / 16][4],
                                              float (&esc)[2], float (&di_ex)[2])
{
    using Cfg = DkdvPairCfg<D, BMQ>;
    constexpr int BNK = Cfg::BNK, DOUT = D / 2;
    float *xm = reinterpret_cast<float *>(smem + Cfg::XM_OFF);
    const int tid = threadIdx.x & 127, c0 = role * DOUT;
    const int lane = threadIdx.x & 31, q4 = lane & 3, g = lane >> 2;
    float di_ps[2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int kr = wk0 + g + rr * 8;
        float d = 0.0f;
#pragma unroll
        for (int n = 0; n < DOUT / 8; ++n) {
            const int col = c0 + n * 8 + 2 * q4;
            const T *kp = reinterpret_cast<const T *>(smem + Cfg::K_OFF + sw128_off<BNK>(kr, col));
            d += to_f32(kp[0]) * adk[n][rr * 2] + to_f32(kp[1]) * adk[n][rr * 2 + 1];
        }
        di_ps[rr] = d;
    }
    __syncthreads(); /* xm is free */
    if (role == 1) {
        xm[tid] = di_ps[0];
        xm[128 + tid] = di_ps[1];
        xm[256 + tid] = di_ex[0];
        xm[384 + tid] = di_ex[1];
    }
    __syncthreads();
    if (role == 0) {
        di_ps[0] += xm[tid];
        di_ps[1] += xm[128 + tid];
        di_ex[0] = xm[256 + tid];
        di_ex[1] = xm[384 + tid];
    }
    if constexpr (MLSTM_DKDV_STAGED_EPILOGUE) {
        /* di and the residual from the fragments; dk, dv staged in the tiles, which no warp reads any more (the K
         * tile's last reads, di_ps above, precede the barriers) */
        tc::dkdv_epilogue<T, D, D, DOUT, GUARD, true, MC, false>(args, b, hh, ks, wk0, c0, role == 0, adk, adv, esc, di_ex,
                                                                 di_ps, [](int, int) { return make_float2(0.0f, 0.0f); });
        cp_async_wait<0>(); /* (no copy is in flight after the last products; kept so that none could land on the stage) */
        dkdv_rows_staged<T, D, DOUT, GUARD, MC>(args, b, hh, ks, wk0, c0, adk, adv, esc,
                                                reinterpret_cast<float *>(smem) + role * 2 * 64 * (DOUT + 8));
    } else {
        tc::dkdv_epilogue<T, D, D, DOUT, GUARD, true, MC>(args, b, hh, ks, wk0, c0, role == 0, adk, adv, esc, di_ex,
                                                          di_ps, [](int, int) { return make_float2(0.0f, 0.0f); });
    }
}

/* The setup both dK/dV pair kernels share: the CTA's key tile (ks), its (b, hh) tensors, the thread's warpgroup role
 * (0: S^T -> C/n, 1: dP^T -> P), first key row wk0 within the tile and output columns c0, and the query tiles qt0 ..
 * nqt - 1 it visits. A macro rather than a struct so that every name stays a local of the kernel (the pair kernel's
 * PTX is unchanged by it). */
#define MLSTM_PAIR_CTA_SETUP                                                                                           \
    const int64_t S = args.S;                                                                                          \
    const CtaPos cp = cta_pos(args);                                                                                   \
    const int64_t b = cp.b, hh = cp.hh, kt = cp.rank; /* lowest key tiles (most work) first */                         \
    const int64_t ks = kt * BNK;                                                                                       \
    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];               \
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F], &tdh = args.t[MLSTM_TENSOR_DH];             \
    const T *gq = bh_ptr<T>(tq, b, hh), *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);                        \
    const T *gdh = bh_ptr<T>(tdh, b, hh);                                                                              \
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);                                        \
    const int warp = threadIdx.x >> 5, tid = threadIdx.x & 127;                                                        \
    const int role = warp >> 2;                                                                                        \
    const int wk0 = (warp & 3) * 16;                                                                                   \
    const int c0 = role * DOUT;                                                                                        \
    const int64_t nqt = (S + BMQ - 1) / BMQ;                                                                           \
    const int64_t qt0 = ks / BMQ;

/* named barrier of all 256 threads (barrier 1; __syncthreads is 0) */
__device__ __forceinline__ void pair_bar() { asm volatile("bar.sync 1, 256;" ::: "memory"); }

template <typename T, int D, int BMQ, bool MC = (D == MASKED_COLS_CLASS)>
__global__ void __launch_bounds__(256, 1) mlstm_bwd_dkdv_wgmma_pair_kernel(const __grid_constant__ KArgs args)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* built for an architecture without wgmma: never launched (dispatch.cu) */
#else
    using Cfg = DkdvPairCfg<D, BMQ>;
    constexpr int BNK = Cfg::BNK, NT = Cfg::NT, DOUT = D / 2, NKK = BMQ / 16;
    constexpr int PW = 6; /* first producer warp */
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF, aQ = base + Cfg::Q_OFF, aH = base + Cfg::DH_OFF;
    uint32_t *xt = reinterpret_cast<uint32_t *>(smem + Cfg::X_OFF);
    float *xm = reinterpret_cast<float *>(smem + Cfg::XM_OFF);
    float *sCb = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sDel = sCb + 2 * BMQ;
    float *sOf = sDel + 2 * BMQ;
    float *sPr = sOf + 2; /* [2][256]: the query gates' producer values (DkdvQueryGates::produce_store) */

    MLSTM_PAIR_CTA_SETUP

    dkdv_first_tiles<T, D, BNK, BMQ, NT, MC>(args, aK, aV, aQ, aH, gk, gv, gq, gdh, ks, qt0 * BMQ);

    float gkn[2];
    tc::dkdv_key_gates(gf, tf.ss, gi, ti.ss, ks, wk0, S, gkn);
    DkdvGatePipe<BMQ> gp(args, b, hh, ks, PW, sPr, sCb, sDel, sOf, qt0, nqt);
    gp.prologue();

    float adk[DOUT / 8][4], adv[DOUT / 8][4];
    float(&acck)[DOUT / 2] = reinterpret_cast<float(&)[DOUT / 2]>(adk);
    float(&accv)[DOUT / 2] = reinterpret_cast<float(&)[DOUT / 2]>(adv);
#pragma unroll
    for (int i = 0; i < DOUT / 2; ++i) acck[i] = accv[i] = 0.0f;
    constexpr bool GUARD = tc::NeedsRangeGuard<T>::value;
    float esc[2] = {0.0f, 0.0f}, hw[2] = {0.0f, 0.0f}; /* range guard (range_guard.cuh) */
    float di_ex[2] = {0.0f, 0.0f}; /* role 1: sum_t P S / sgn of its key rows from the f32 tiles (dkdv_epilogue) */
    float *sb = reinterpret_cast<float *>(smem + Cfg::SB_OFF);
    /* this warpgroup's product: S^T = K Q^T or dP^T = V dH^T (selected addresses: no branch around the MMA) */
    const uint32_t aA = role ? aV : aK, aB = role ? aH : aQ;

    int buf = 0;
    for (int64_t qt = qt0; qt < nqt; ++qt, buf ^= 1) {
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        const int64_t qs = qt * BMQ;
        if (qt + 1 < nqt) {
            load_tile_sw128<T, BMQ, D, NT>(aQ + (buf ^ 1) * Cfg::QT_BYTES, gq, tq.ss, qs + BMQ, S, (int)threadIdx.x, masked_cols<D, MC>(args.DQK));
            load_tile_sw128<T, BMQ, D, NT>(aH + (buf ^ 1) * Cfg::QT_BYTES, gdh, tdh.ss, qs + BMQ, S, (int)threadIdx.x, masked_cols<D, MC>(args.DV));
            cp_async_commit();
        }
        gp.early(qt);
        const uint32_t cQ = aQ + buf * Cfg::QT_BYTES, cH = aH + buf * Cfg::QT_BYTES;
        const uint32_t cB = aB + buf * Cfg::QT_BYTES;
        const float *cCb = sCb + buf * BMQ, *cDel = sDel + buf * BMQ;
        const float of = sOf[buf];

        float st[BMQ / 8][4];
        float(&sacc)[BMQ / 2] = reinterpret_cast<float(&)[BMQ / 2]>(st);
        reg_fence(sacc);
        fence();
        wgmma_kmajor_ss<T, BMQ, D, BNK, BMQ>(sacc, aA, cB);
        commit();
        wait<0>();
        reg_fence(sacc);

        /* rows = keys j (g, g+8 of each warp), cols = queries t: C/n = S e (role 0), P = (dP - delta) e (role 1),
         * with the operation order of tc::dkdv_element (bitwise the P of the dQ kernel) */
        const int qrel = (int)(qs - ks);
        const float gb2[2] = {bwd_col_b(gkn[0], of), bwd_col_b(gkn[1], of)};
        float pw[2];
        tc::range_guard_pw(esc, pw);
        float mx[2] = {0.0f, 0.0f};
        auto element = [&](int n, int c, int rr, bool dead, float e, float del) {
            const float x = dead ? 0.0f : st[n][c];
            const float y = dead ? 0.0f : (role ? __fmul_rn(__fsub_rn(x, del), e) : x * e);
            if (role == 0) sb[(n * 4 + c) * 128 + tid] = x; /* raw S for role 1's di */
            st[n][c] = y;
            if (GUARD) mx[rr] = fmaxf(mx[rr], fabsf(y));
        };
        if (qs < ks + wk0 + 15)
            tc::dkdv_for_each_element<true, GUARD, BMQ>(cCb, cDel, gb2, pw, wk0, qrel, element);
        else
            tc::dkdv_for_each_element<false, GUARD, BMQ>(cCb, cDel, gb2, pw, wk0, qrel, element);
        if constexpr (GUARD) { /* one range-guard exponent per key row for both tiles (and both warpgroups) */
            xm[(role * 2 + 0) * 128 + tid] = mx[0];
            xm[(role * 2 + 1) * 128 + tid] = mx[1];
        }
        pair_bar(); /* the row maxima and role 0's S are in shared memory */
        if constexpr (GUARD) {
            mx[0] = fmaxf(mx[0], xm[((role ^ 1) * 2 + 0) * 128 + tid]);
            mx[1] = fmaxf(mx[1], xm[((role ^ 1) * 2 + 1) * 128 + tid]);
            float fac[2];
            if (tc::range_guard_update(mx, hw, esc, fac)) {
                scale_frag_rows(st, fac);
                scale_frag_rows(adk, fac);
                scale_frag_rows(adv, fac);
                di_ex[0] *= fac[0];
                di_ex[1] *= fac[1];
            }
        }
        if (role == 1) { /* di from the f32 P (final scale) and S, before this thread's packed P overwrites its S slots */
#pragma unroll
            for (int n = 0; n < BMQ / 8; ++n)
#pragma unroll
                for (int c = 0; c < 4; ++c) di_ex[c >> 1] = fmaf(st[n][c], sb[(n * 4 + c) * 128 + tid], di_ex[c >> 1]);
        }
        uint32_t own[NKK][4], oth[NKK][4];
#pragma unroll
        for (int kk = 0; kk < NKK; ++kk) {
            acc_to_a<T>(st, kk, own[kk]);
#pragma unroll
            for (int r = 0; r < 4; ++r) xt[((role * NKK + kk) * 4 + r) * 128 + tid] = own[kk][r];
        }
        pair_bar();
#pragma unroll
        for (int kk = 0; kk < NKK; ++kk)
#pragma unroll
            for (int r = 0; r < 4; ++r) oth[kk][r] = xt[(((role ^ 1) * NKK + kk) * 4 + r) * 128 + tid];
        uint32_t ac[NKK][4], ap[NKK][4]; /* C/n and P as register operands */
#pragma unroll
        for (int kk = 0; kk < NKK; ++kk)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                ac[kk][r] = role ? oth[kk][r] : own[kk][r];
                ap[kk][r] = role ? own[kk][r] : oth[kk][r];
            }
        reg_fence(acck);
        reg_fence(accv);
        fence();
        /* dV[:, c0:] += (C/n)^T dH[:, c0:] ; dK[:, c0:] += P^T Q[:, c0:]  (column block c0 / 64 of the tiles) */
#pragma unroll
        for (int kk = 0; kk < NKK; ++kk) {
            WgmmaRS<T, DOUT>::run(accv, ac[kk], desc_sw128(cH + (c0 / 64) * BMQ * 128 + kk * 16 * 128, BMQ * 128), 1);
            WgmmaRS<T, DOUT>::run(acck, ap[kk], desc_sw128(cQ + (c0 / 64) * BMQ * 128 + kk * 16 * 128, BMQ * 128), 1);
        }
        commit();
        wait<0>();
        reg_fence(acck);
        reg_fence(accv);
        gp.late(qt, buf);
    }

    pair_epilogue<T, D, BMQ, GUARD, MC>(args, smem, b, hh, ks, wk0, role, adk, adv, esc, di_ex);
#endif
}

/* Ping-pong pair (bf16; f16's range guard needs both warpgroups' row maxima before either can pack its tile): the
 * same products and elementwise as the pair kernel, but the two warpgroups drift half a step apart instead of meeting
 * at CTA barriers, so that one warpgroup's elementwise work runs while the other's products occupy the tensor cores.
 * Role 0 (S^T -> C/n) publishes C and the raw S, accumulates its dV half from its own C while role 1 finishes P,
 * then its dK half from role 1's P, and issues the next tile's S^T. Role 1 (dP^T -> P) waits for C and S (its di),
 * publishes P, accumulates its dK and dV halves, and issues the next dP^T. Four one-way handoffs (one warpgroup
 * arrives, the other waits for the step's phase): C published, P published, C / S read, tile buffer read by role 0;
 * as mbarriers (NB false: 128 arrivals each) or as named barriers (NB: bar.arrive / bar.sync of 256 threads, which
 * PTX orders the same way but compute-sanitizer's racecheck reports as hazards). Role 1 loads the query tiles from
 * the third one on (cp.async, completion on the buffer's mbarrier; TMA: its thread 0 issues the tiles' tensor copies
 * from tm's maps of q (k) and dh (v), tile_config.h MLSTM_DKDV_TMA); each warpgroup runs its own query-gate pipe (the
 * same gates, bitwise). */
template <int D, int BMQ> struct DkdvPpCfg : DkdvPairCfg<D, BMQ> {
    using P = DkdvPairCfg<D, BMQ>;
    /* after the two gate blocks: mbarriers full[2], then the handoffs (PpBar) */
    static constexpr int MB_OFF = (P::G_OFF + 2 * DkdvGatePipe<BMQ>::G_FLOATS * 4 + 7) / 8 * 8;
    static constexpr int SMEM = MB_OFF + 7 * 8 + 1024; /* (the 7th: the second query tile, MLSTM_DKDV_SPLIT_PROLOGUE) */
    static_assert(SMEM <= 232448, "shared memory per block");
};
/* the ping-pong pair's handoffs (mbarrier i at 8 i bytes after full[2], or named barrier i) and its warpgroup-local
 * named barriers */
enum : int { PP_MB_C = 2, PP_MB_P = 3, PP_MB_CFREE = 4, PP_MB_EMPTY = 5, PP_BAR_WG = 6 /* + role */ };
template <bool NB> struct PpHandoff {
    uint32_t mb0; /* full[0]: handoff i is the mbarrier at mb0 + 8 i */
    __device__ __forceinline__ void arrive(int i) const
    {
        if (NB)
            named_arrive(i, 256);
        else
            mbar_arrive(mb0 + 8 * i);
    }
    __device__ __forceinline__ void wait(int i, uint32_t parity) const
    {
        if (NB)
            named_sync(i, 256);
        else
            mbar_wait(mb0 + 8 * i, parity);
    }
};

template <typename T, int D, int BMQ, bool NB, bool MC = (D == MASKED_COLS_CLASS), bool TMA = false>
__global__ void __launch_bounds__(256, 1)
    mlstm_bwd_dkdv_wgmma_pp_kernel(const __grid_constant__ KArgs args, const __grid_constant__ TmaKV tm)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* built for an architecture without wgmma: never launched (dispatch.cu) */
#else
    static_assert(!tc::NeedsRangeGuard<T>::value, "the ping-pong pair has no range guard");
    using Cfg = DkdvPpCfg<D, BMQ>;
    constexpr int BNK = Cfg::BNK, DOUT = D / 2, NKK = BMQ / 16;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF, aQ = base + Cfg::Q_OFF, aH = base + Cfg::DH_OFF;
    const uint32_t bFull = base + Cfg::MB_OFF; /* [2]: the query tiles from qt0 + 2 on, by buffer */
    uint32_t *xt = reinterpret_cast<uint32_t *>(smem + Cfg::X_OFF);
    float *sb = reinterpret_cast<float *>(smem + Cfg::SB_OFF); /* role 0's raw S^T tile for role 1's di */

    MLSTM_PAIR_CTA_SETUP
    const int64_t qcols = masked_cols<D, MC>(args.DQK), hcols = masked_cols<D, MC>(args.DV);

    /* SPLIT (tile_config.h MLSTM_DKDV_SPLIT_PROLOGUE): the first score products wait only for K, V and the first query
     * tile; the second lands meanwhile, on its own mbarrier (bSecond: every thread's copies) */
    constexpr bool SPLIT = MLSTM_DKDV_SPLIT_PROLOGUE != 0;
    const uint32_t bSecond = bFull + 6 * 8;
    const bool tma = TMA && tm.on != 0; /* role 1's query tiles through TMA (else cp.async: no maps) */
    if (threadIdx.x == 0) {
        for (int i = 0; i < 6; ++i) mbar_init(bFull + 8 * i, tma && i < 2 ? 1 : 128); /* TMA: one expect-tx arrival */
        if (SPLIT) mbar_init(bSecond, 256);
        mbar_init_fence();
    }
    const PpHandoff<NB> ho{bFull};
    load_tile_sw128<T, BNK, D, 256>(aK, gk, tk.ss, ks, S, (int)threadIdx.x, qcols);
    load_tile_sw128<T, BNK, D, 256>(aV, gv, tv.ss, ks, S, (int)threadIdx.x, hcols);
    for (int64_t q = qt0; q < qt0 + 2 && q < nqt; ++q) {
        const uint32_t o = (uint32_t)(q - qt0) * Cfg::QT_BYTES;
        if (SPLIT && q > qt0) cp_async_commit(); /* group 1: K, V, the first query tile */
        load_tile_sw128<T, BMQ, D, 256>(aQ + o, gq, tq.ss, q * BMQ, S, (int)threadIdx.x, qcols);
        load_tile_sw128<T, BMQ, D, 256>(aH + o, gdh, tdh.ss, q * BMQ, S, (int)threadIdx.x, hcols);
    }
    cp_async_commit();

    float gkn[2];
    tc::dkdv_key_gates(gf, tf.ss, gi, ti.ss, ks, wk0, S, gkn);
    float *sCb = reinterpret_cast<float *>(smem + Cfg::G_OFF) + role * DkdvGatePipe<BMQ>::G_FLOATS; /* this warpgroup's */
    float *sDel = sCb + 2 * BMQ, *sOf = sDel + 2 * BMQ, *sPr = sOf + 2;
    DkdvGatePipe<BMQ, true> gp(args, b, hh, ks, 4 * role + 2, sPr, sCb, sDel, sOf, qt0, nqt); /* scans: warp 4 role */
    gp.prologue(); /* contains __syncthreads: the mbarriers are initialised */

    float adk[DOUT / 8][4], adv[DOUT / 8][4];
    float(&acck)[DOUT / 2] = reinterpret_cast<float(&)[DOUT / 2]>(adk);
    float(&accv)[DOUT / 2] = reinterpret_cast<float(&)[DOUT / 2]>(adv);
#pragma unroll
    for (int i = 0; i < DOUT / 2; ++i) acck[i] = accv[i] = 0.0f;
    float esc[2] = {0.0f, 0.0f};  /* no range guard: stays 0 */
    float di_ex[2] = {0.0f, 0.0f}; /* role 1: sum_t P S / sgn of its key rows from the f32 tiles (dkdv_epilogue) */
    /* this warpgroup's score product: S^T = K Q^T or dP^T = V dH^T (selected addresses: no branch around the MMA) */
    const uint32_t aA = role ? aV : aK, aB = role ? aH : aQ;

    float st[BMQ / 8][4];
    float(&sacc)[BMQ / 2] = reinterpret_cast<float(&)[BMQ / 2]>(st);
    auto score_product = [&](uint32_t a, uint32_t cB) {
        reg_fence(sacc);
        fence();
        wgmma_kmajor_ss<T, BMQ, D, BNK, BMQ>(sacc, a, cB);
        commit();
    };

    if constexpr (SPLIT) {
        /* group 1 landed (the second tile's group may be pending; the mbarrier arrival can only come after the
         * __syncthreads in gp.prologue, which made bSecond's init visible) */
        if (nqt - qt0 > 1) cp_async_wait<1>();
        else cp_async_wait<0>();
        mbar_arrive_cp_async(bSecond);
    } else {
        cp_async_wait<0>();
    }
    fence_proxy_async();
    __syncthreads(); /* K, V, the first query tile (SPLIT; else the first two) and the first gates are in shared memory */
    score_product(aA, aB);
    wait<0>();
    reg_fence(sacc);

    /* the loop, compiled once per role (each path its own live ranges) */
    auto run = [&](auto role_c) {
        constexpr int ROLE = decltype(role_c)::value;
        int buf = 0;
        const int nst = (int)(nqt - qt0); /* query tiles of this CTA */
        for (int it = 0; it < nst; ++it, buf ^= 1) {
            const int64_t qt = qt0 + it;
            const int64_t qs = qt * BMQ;
            const uint32_t cQ = aQ + buf * Cfg::QT_BYTES, cH = aH + buf * Cfg::QT_BYTES;
            const float *cCb = sCb + buf * BMQ, *cDel = sDel + buf * BMQ;
            const float of = sOf[buf];
            if (ROLE == 1 && it >= 1 && it + 1 < nst) {
                /* tile qt + 1 into the other buffer once role 0 has read tile qt - 1 from it (this warpgroup has) */
                ho.wait(PP_MB_EMPTY, (uint32_t)((it - 1) & 1));
                const uint32_t o = (uint32_t)(buf ^ 1) * Cfg::QT_BYTES;
                if (TMA && tma) {
                    if (tid == 0) tma_kv_tiles<BMQ, D>(aQ + o, aH + o, &tm.k, &tm.v, qt + 1, hh, b, bFull + 8 * (buf ^ 1));
                } else {
                    /* operands from the kernel parameters again rather than kept in registers across the loop */
                    load_tile_sw128<T, BMQ, D, 128>(aQ + o, bh_ptr<T>(args.t[MLSTM_TENSOR_Q], b, hh),
                                                    args.t[MLSTM_TENSOR_Q].ss, qs + BMQ, S, tid, masked_cols<D, MC>(args.DQK));
                    load_tile_sw128<T, BMQ, D, 128>(aH + o, bh_ptr<T>(args.t[MLSTM_TENSOR_DH], b, hh),
                                                    args.t[MLSTM_TENSOR_DH].ss, qs + BMQ, S, tid, masked_cols<D, MC>(args.DV));
                    mbar_arrive_cp_async(bFull + 8 * (buf ^ 1)); /* fires when this thread's copies have landed */
                }
            }
            if (ROLE == 0 && it > 0) ho.wait(PP_MB_CFREE, (uint32_t)((it - 1) & 1)); /* role 1 has read C, S of qt - 1 */
            gp.early(qt);

            /* rows = keys j (g, g+8 of each warp), cols = queries t: C/n = S e (role 0), P = (dP - delta) e (role 1),
             * with the operation order of tc::dkdv_element (bitwise the P of the dQ kernel) */
            const int qrel = (int)(qs - ks);
            const float gb2[2] = {bwd_col_b(gkn[0], of), bwd_col_b(gkn[1], of)};
            const float pw[2] = {1.0f, 1.0f};
            auto element = [&](int n, int c, int rr, bool dead, float e, float del) {
                const float x = dead ? 0.0f : st[n][c];
                const float y = dead ? 0.0f : (ROLE ? __fmul_rn(__fsub_rn(x, del), e) : x * e);
                if (ROLE == 0) sb[(n * 4 + c) * 128 + tid] = x; /* raw S for role 1's di */
                st[n][c] = y;
            };
            if (qs < ks + wk0 + 15)
                tc::dkdv_for_each_element<true, false, BMQ>(cCb, cDel, gb2, pw, wk0, qrel, element);
            else
                tc::dkdv_for_each_element<false, false, BMQ>(cCb, cDel, gb2, pw, wk0, qrel, element);

            uint32_t own[NKK][4], oth[NKK][4];
            if constexpr (ROLE == 1) {
                ho.wait(PP_MB_C, (uint32_t)(it & 1)); /* C and S of tile qt are in shared memory */
#pragma unroll
                for (int n = 0; n < BMQ / 8; ++n) /* di from the f32 P and S, before this thread's P overwrites its S slots */
#pragma unroll
                    for (int c = 0; c < 4; ++c) di_ex[c >> 1] = fmaf(st[n][c], sb[(n * 4 + c) * 128 + tid], di_ex[c >> 1]);
            }
#pragma unroll
            for (int kk = 0; kk < NKK; ++kk) {
                acc_to_a<T>(st, kk, own[kk]);
#pragma unroll
                for (int r = 0; r < 4; ++r) xt[((ROLE * NKK + kk) * 4 + r) * 128 + tid] = own[kk][r];
            }
            reg_fence(acck);
            reg_fence(accv);
            if constexpr (ROLE == 0) {
                ho.arrive(PP_MB_C);
                fence();
#pragma unroll
                for (int kk = 0; kk < NKK; ++kk) /* dV[:, c0:] += (C/n)^T dH[:, c0:] from this warpgroup's C */
                    WgmmaRS<T, DOUT>::run(accv, own[kk], desc_sw128(cH + (c0 / 64) * BMQ * 128 + kk * 16 * 128, BMQ * 128), 1);
                commit();
                ho.wait(PP_MB_P, (uint32_t)(it & 1)); /* role 1's P of tile qt */
#pragma unroll
                for (int kk = 0; kk < NKK; ++kk)
#pragma unroll
                    for (int r = 0; r < 4; ++r) oth[kk][r] = xt[((NKK + kk) * 4 + r) * 128 + tid];
                fence();
#pragma unroll
                for (int kk = 0; kk < NKK; ++kk) /* dK[:, c0:] += P^T Q[:, c0:] */
                    WgmmaRS<T, DOUT>::run(acck, oth[kk], desc_sw128(cQ + (c0 / 64) * BMQ * 128 + kk * 16 * 128, BMQ * 128), 1);
                commit();
            } else {
                ho.arrive(PP_MB_P);
#pragma unroll
                for (int kk = 0; kk < NKK; ++kk)
#pragma unroll
                    for (int r = 0; r < 4; ++r) oth[kk][r] = xt[(kk * 4 + r) * 128 + tid];
                if (it + 1 < nst) ho.arrive(PP_MB_CFREE);
                fence();
#pragma unroll
                for (int kk = 0; kk < NKK; ++kk) { /* dK[:, c0:] += P^T Q[:, c0:] ; dV[:, c0:] += (C/n)^T dH[:, c0:] */
                    WgmmaRS<T, DOUT>::run(acck, own[kk], desc_sw128(cQ + (c0 / 64) * BMQ * 128 + kk * 16 * 128, BMQ * 128), 1);
                    WgmmaRS<T, DOUT>::run(accv, oth[kk], desc_sw128(cH + (c0 / 64) * BMQ * 128 + kk * 16 * 128, BMQ * 128), 1);
                }
                commit();
            }
            gp.late(qt, buf);
            wait<0>(); /* the packed tiles are free again only now (and the next score product needs no more registers) */
            reg_fence(acck);
            reg_fence(accv);
            if (ROLE == 0 && it + 2 < nst) ho.arrive(PP_MB_EMPTY); /* tile qt's buffer is read */
            if (it + 1 < nst) {
                if (it >= 1) mbar_wait(bFull + 8 * (buf ^ 1), (uint32_t)(((it - 1) >> 1) & 1));
                else if (SPLIT) mbar_wait(bSecond, 0); /* the second query tile of the prologue */
                fence_proxy_async(); /* the cp.async writes before the wgmma's async-proxy reads */
                named_sync(PP_BAR_WG + ROLE, 128); /* this warpgroup's gates of tile qt + 1 */
                score_product(ROLE ? aV : aK, (ROLE ? aH : aQ) + (buf ^ 1) * Cfg::QT_BYTES);
                wait<0>();
                reg_fence(sacc);
            }
        }
    };
    if (role == 0)
        run(std::integral_constant<int, 0>{});
    else
        run(std::integral_constant<int, 1>{});
    cp_async_wait<0>(); /* no copy outlives its thread */
    pair_epilogue<T, D, BMQ, false, MC>(args, smem, b, hh, ks, wk0, role, adk, adv, esc, di_ex);
#endif
}

} // namespace wg
} // namespace mlstm
