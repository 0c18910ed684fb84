/* libmlstm CUDA kernels: the sm_90a forward for f32 storage, IEEE-f32-grade (the default f32 math) on f16 warpgroup
 * MMA with split operands (wgmma_f32.cuh: hi*hi + hi*lo + lo*hi per product), head dims DQK = DV = D in {64, 128}.
 * Structure of fwd_wgmma.cuh (one producer warpgroup, two consumer warpgroups of 64 query rows meeting only at
 * mbarriers), gate math of fwd_tf32.cuh (compensated cumsums, one exp per element, exact per-element row max):
 * - the producer copies the raw f32 K/V rows of a stage (cp.async), splits them in place one step later (row scales
 *   into sKB / sVS), and its warp 0 writes the compensated key gates of each stage;
 * - per key tile a consumer computes S' = Q' K'^T (three wgmma per k16 slice; the corrections in their own
 *   accumulator), S = S' / (row scale of k) (the q row scale rides along in l and O), the gate tile, then
 *   P = C / (row scale of v), scaled per row by 2^-esc (split_guard_raise) and split, and O += P V' (three wgmma).
 * - epilogue: O 2^esc and l divided by q's row scale, then normaliser, h, m, n as fwd_tf32.cuh. */
#pragma once

#include "fwd/fwd_tc.cuh"
#include "fwd/fwd_tf32.cuh"
#include "common/wgmma_f32.cuh"

namespace mlstm {
namespace wg {

template <int D, int BN, int NST>
struct FwdF32Cfg {
    static constexpr int BM = 128;  /* query rows of a CTA (two consumer warpgroups) */
    static constexpr int NT = 384;  /* consumers: threads 0..255, producer: 256..383 */
    /* 128 PROD + 256 CONS = 384 * 168, the launch allocation (the producer splits 16 floats per row at D = 128) */
    static constexpr int PROD_REGS = D >= 128 ? 72 : 56, CONS_REGS = D >= 128 ? 216 : 224;
    static_assert(ws_regs_fit<PROD_REGS, CONS_REGS>, "register split");
    static constexpr int Q_BYTES = BM * D * 2;  /* one f16 tile (hi or lo) */
    static constexpr int KV_BYTES = BN * D * 2; /* one f16 tile (hi or lo) */
    static constexpr int K_OFF = 2 * Q_BYTES;   /* Q hi, Q lo, then K [NST][hi, lo], V [NST][hi, lo] */
    static constexpr int V_OFF = K_OFF + 2 * NST * KV_BYTES;
    static constexpr int G_OFF = V_OFF + 2 * NST * KV_BYTES;
    /* floats: sQh, sQl, sQI [BM]; [NST][BN] each of sGh, sGl, sKB, sVS */
    static constexpr int G_FLOATS = 3 * BM + 4 * NST * BN;
    static constexpr int BAR_OFF = G_OFF + G_FLOATS * 4; /* mbarriers: full[NST], empty[NST] */
    static constexpr int SMEM = BAR_OFF + 16 * NST + 1024;
    static_assert(Q_BYTES % 1024 == 0 && KV_BYTES % 1024 == 0, "tiles start on 1024-byte boundaries");
    static_assert(BN % 32 == 0 && BN <= 128 && BM % BN == 0 && D % 64 == 0, "tile sizes");
    static_assert(BAR_OFF % 8 == 0 && NST >= 2, "mbarriers, stages");
    static_assert(SMEM <= 232448, "shared memory per block");
};

template <int D, int BN, int NST>
__global__ void __launch_bounds__(384, 1) mlstm_fwd_wgmma_f32_kernel(const __grid_constant__ KArgs args)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* never launched without sm_90a (dispatch.cu) */
#else
    using Cfg = FwdF32Cfg<D, BN, NST>;
    constexpr int BM = Cfg::BM;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aQ = base, aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF;
    float *sQh = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sQl = sQh + BM;
    float *sQI = sQl + BM;           /* [BM] inverse row scale of q */
    float *sGh = sQI + BM;           /* [NST][BN] compensated key gate terms (cgate_key) */
    float *sGl = sGh + NST * BN;
    float *sKB = sGl + NST * BN;     /* [NST][BN] inverse row scale of k */
    float *sVS = sKB + NST * BN;     /* [NST][BN] inverse row scale of v */
    const uint32_t bFull = base + Cfg::BAR_OFF, bEmpty = bFull + 8 * NST;

    const int64_t S = args.S;
    const QueryTile qtl = query_tile(args, BM);
    const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const float *gq = bh_ptr<float>(tq, b, hh), *gk = bh_ptr<float>(tk, b, hh), *gv = bh_ptr<float>(tv, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const int wgi = warp >> 2; /* 0, 1: consumers; 2: producer */

    const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN);
    const int64_t nsteps = kt_hi + 1; /* key tiles from the diagonal down */

    mbar_init_stages<NST>(bFull, 128 + 32); /* full: every producer thread once its split is written, the gate warp */
    __syncthreads();

    if (wgi == 2) {
        /* ---- producer warpgroup ---- */
        setmaxnreg_dec<Cfg::PROD_REGS>();
        const int pt = (int)threadIdx.x - 256;
        float offh = 0.0f, offl = 0.0f; /* gate warp: compensated offset of the key tiles below the query tile */
        CGateTile<BN> gnext;
        if (pt < 32) gnext.load(gf, tf.ss, gi, ti.ss, kt_hi * BN, S);
        split_producer<NST>(
            nsteps, bEmpty,
            [&](int64_t it, int stage) {
                const int64_t kt = kt_hi - it, ks = kt * BN;
                split_copy<BN, D, 128>(aK + 2 * stage * Cfg::KV_BYTES, aK + (2 * stage + 1) * Cfg::KV_BYTES, gk, tk.ss,
                                       ks, S, pt);
                split_copy<BN, D, 128>(aV + 2 * stage * Cfg::KV_BYTES, aV + (2 * stage + 1) * Cfg::KV_BYTES, gv, tv.ss,
                                       ks, S, pt);
                cp_async_commit();
                if (pt < 32) { /* the gate warp: key terms of this step, then the next tile's f and i */
                    if (it == 0) named_sync(3, 64); /* consumer warp 0 has written sQh / sQl */
                    tc32::fwd_key_terms32(gnext, ks, qs, S, sQh, sQl, offh, offl, sGh + stage * BN, sGl + stage * BN);
                    if (kt > 0) gnext.load(gf, tf.ss, gi, ti.ss, ks - BN, S);
                    mbar_arrive(bFull + 8 * stage);
                }
            },
            [&](int64_t j) {
                const int ps = (int)(j % NST);
                split_convert<BN, D, 128>(aK + 2 * ps * Cfg::KV_BYTES, aK + (2 * ps + 1) * Cfg::KV_BYTES, sKB + ps * BN,
                                          pt);
                split_convert<BN, D, 128>(aV + 2 * ps * Cfg::KV_BYTES, aV + (2 * ps + 1) * Cfg::KV_BYTES, sVS + ps * BN,
                                          pt);
                mbar_arrive(bFull + 8 * ps);
            });
        return;
    }

    /* ---- consumer warpgroups ---- */
    setmaxnreg_inc<Cfg::CONS_REGS>();
    const int tid = (int)threadIdx.x;
    split_copy<BM, D, 256>(aQ, aQ + Cfg::Q_BYTES, gq, tq.ss, qs, S, tid);
    cp_async_commit();
    if (warp == 0) { /* compensated query-tile cumsum, for the gate warp (barrier 3) and the consumers */
        constexpr int E = CGateTile<BM>::E;
        CGateTile<BM> gt;
        gt.load(gf, tf.ss, nullptr, 0, qs, S);
        float ch[E], cl[E], th, tl;
        gt.scan(ch, cl, th, tl, qs, S);
#pragma unroll
        for (int e = 0; e < E; ++e) {
            sQh[lane * E + e] = ch[e];
            sQl[lane * E + e] = cl[e];
        }
        named_arrive(3, 64);
    }
    cp_async_wait<0>();
    split_convert<BM, D, 256>(aQ, aQ + Cfg::Q_BYTES, sQI, tid);
    fence_proxy_async();
    named_sync(2, 256); /* Q (split), its row scales and the query cumsum are in shared memory */

    const int wgr = wgi * 64;                  /* the warpgroup's first query row within the tile */
    const int wr0 = wgr + (warp & 3) * 16;     /* this warp's */
    float rqh[1][2], rql[1][2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        rqh[0][rr] = sQh[wr0 + g + rr * 8];
        rql[0][rr] = sQl[wr0 + g + rr * 8];
    }

    float o[1][D / 8][4];
    float(&oacc)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);
    float mrun[1][2] = {{MLSTM_FLOOR, MLSTM_FLOOR}}, lrun[1][2] = {{0.0f, 0.0f}};
    float esc[2] = {-126.0f, -126.0f};
#pragma unroll
    for (int i = 0; i < D / 2; ++i) oacc[i] = 0.0f;
    const float lsc = log2f(fabsf(args.scale));
    const uint32_t aQhi = aQ + wgr * 128, aQlo = aQhi + Cfg::Q_BYTES;

    for (int64_t it = 0; it < nsteps; ++it) {
        const int stage = (int)(it % NST);
        const int64_t kt = kt_hi - it, ks = kt * BN;
        const uint32_t cKhi = aK + 2 * stage * Cfg::KV_BYTES, cKlo = cKhi + Cfg::KV_BYTES;
        const uint32_t cVhi = aV + 2 * stage * Cfg::KV_BYTES, cVlo = cVhi + Cfg::KV_BYTES;
        mbar_wait(bFull + 8 * stage, (uint32_t)((it / NST) & 1));
        fence_proxy_async();

        if (ks <= qs + wgr + 63) { /* warpgroup-uniform: some key of the tile is at or before a row of ours */
            float s[1][BN / 8][4], c[1][BN / 8][4], s2[1][BN / 8][4];
            float(&sacc)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(s);
            float(&cacc)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(c);
            float(&s2acc)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(s2);
            split_score_wait<BN, D, BM, BN, true>(sacc, s2acc, cacc, aQhi, aQlo, cKhi, cKlo);

            /* S = (S' + corrections) / (k's row scale); the rows keep q's scale (undone in the epilogue) */
            float kb[BN / 8][2], gkh[BN / 8][2], gkl[BN / 8][2];
            tc::load_key_row<BN>(kb, sKB + stage * BN, q4);
            tc::load_key_row<BN>(gkh, sGh + stage * BN, q4);
            tc::load_key_row<BN>(gkl, sGl + stage * BN, q4);
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[0][n][e] *= kb[n][e & 1];

            const int lim0 = wr0 + g - (int)max(ks - qs, (int64_t)-BN);
            if (ks + BN - 1 > qs + wr0)
                tc32::fwd_gate_tile32<true, 1, BN, D>(s, o, mrun, lrun, rqh, rql, gkh, gkl, lim0, q4, lsc);
            else
                tc32::fwd_gate_tile32<false, 1, BN, D>(s, o, mrun, lrun, rqh, rql, gkh, gkl, lim0, q4, lsc);

            /* P = C / (v's row scale), rows scaled by 2^-esc before the split */
            float vs[BN / 8][2];
            tc::load_key_row<BN>(vs, sVS + stage * BN, q4);
            float amx[2] = {0.0f, 0.0f};
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float x = s[0][n][e] * vs[n][e & 1];
                    s[0][n][e] = x;
                    amx[e >> 1] = fmaxf(amx[e >> 1], fabsf(x));
                }
            uint32_t ph[BN / 16][4], pl[BN / 16][4];
            split_p_frags(s[0], amx, esc, o[0], ph, pl);
            split_rs_wait<D, BN / 16, BN>(oacc, ph, pl, cVhi, cVlo);
        }
        mbar_arrive(bEmpty + 8 * stage);
    }

    /* epilogue: undo the row scales (O carries 2^-esc and q's scale, l q's scale), then as fwd_tf32.cuh */
    const TArg &th = args.t[MLSTM_TENSOR_H], &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
    float *gh = bh_ptr<float>(th, b, hh);
    float *gm = bh_ptr<float>(tm, b, hh), *gn = bh_ptr<float>(tn, b, hh);
    const float sgn = args.scale < 0.0f ? -1.0f : 1.0f;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int r = wr0 + g + rr * 8;
        const float qi = sQI[r];
        float l = lrun[0][rr];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        l = l * qi * sgn;
        const float m = mrun[0][rr];
        float nsig;
        const float inv = fwd_normalizer(l, m, sgn * qi, args.eps, nsig);
        const float up = exp2f(esc[rr]);
        const int64_t t = qs + r;
        if (t < S) {
            float *row = gh + t * th.ss;
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
                *reinterpret_cast<float2 *>(row + n * 8 + 2 * q4) =
                    make_float2(o[0][n][rr * 2] * up * inv, o[0][n][rr * 2 + 1] * up * inv);
            if (q4 == 0) {
                gm[t * tm.ss] = m;
                gn[t * tn.ss] = nsig;
            }
        }
    }
#endif
}

} // namespace wg
} // namespace mlstm
