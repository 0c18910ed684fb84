/* libmlstm CUDA kernels: the persistent variant of the sm_90a default-tile forward (fwd_wgmma.cuh, KS = 1, no
 * cluster, K / V through TMA maps): one CTA per SM walks query tiles, so that the next tile's gates, query cumsum,
 * first stages and Q load overlap the last steps and the epilogue of the one before (tile_config.h
 * MLSTM_FWD_WG_PERSISTENT; kernels_cuda/NOTES.md, "Persistent forward"). */
#pragma once

#include "fwd/fwd_wgmma.cuh"

namespace mlstm {
namespace wg {

/* FwdCfg's layout plus a second query-cumsum buffer and four mbarriers: Q full (its tensor copies), Q empty
 * (both consumer warpgroups done with a tile's products), cumsum consumed [2] (the consumers have read their rows of
 * sFq[buf]) */
template <int D, int BN, int NST> struct FwdPersCfg : FwdCfg<D, BN, 1, NST, 1> {
    using F = FwdCfg<D, BN, 1, NST, 1>;
    static constexpr int FQ2_OFF = (F::BAR_OFF + 32 * NST + 8 + 15) / 16 * 16; /* floats [BM] */
    static constexpr int PB_OFF = FQ2_OFF + F::BM * 4; /* mbar_init_tiles: Q full, Q empty, fq read[2], fq written[2] */
    static constexpr int SMEM = PB_OFF + PERS_TILE_BARS * 8 + 1024; /* + 1024: the base is aligned up at run time */

    static_assert(PB_OFF % 8 == 0, "mbarrier alignment");
    static_assert(SMEM <= 232448, "shared memory per block");
};

/* One key tile of a consumer warpgroup (the default kernel's step, fwd_wgmma.cuh): the score product (PP: the other
 * warpgroup's turn once it is issued), the gate step (masked near the diagonal; the tile's key gates at sG2t, sEt,
 * cPM), the range guard (f16), then O += C V. Warpgroup-uniform. */
template <typename T, int D, int BN, int BM, bool GUARD, bool PP>
__device__ __forceinline__ void fwd_wg_tile(uint32_t aQw, uint32_t cK, uint32_t cV, const float *sG2t, const float *sEt,
                                            const float *cPM, int64_t ks, int64_t qs, int wr0, int wgi, float lsc,
                                            float (&o)[1][D / 8][4], float (&mrun)[1][2], float (&lrun)[1][2],
                                            const float (&rowF)[1][2], float (&esc)[2], float (&hw)[2])
{
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    float(&oacc)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);
    float s[1][BN / 8][4];
    float(&sacc)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(s);
    reg_fence(sacc);
    fence();
    wgmma_kmajor_ss<T, BN, D, BM, BN>(sacc, aQw, cK);
    commit();
    if (PP) wgi == 0 ? named_arrive(5, 256) : named_arrive(4, 256); /* the other warpgroup's turn */
    wait<0>();
    reg_fence(sacc);

    const bool masked = ks + BN - 1 > qs + wr0;
    float gkv[BN / 8][2]; /* G2 (masked) or E (tc::fwd_gate_tile) */
    tc::load_key_row<BN>(gkv, masked ? sG2t : sEt, q4);
    const int lim0 = wr0 + g - (int)max(ks - qs, (int64_t)-BN);
    float mx[2];
    if (masked)
        tc::fwd_gate_tile<true, GUARD, 1, BN, D>(s, o, mrun, lrun, rowF, gkv, cPM, lim0, q4, lsc, esc, mx);
    else
        tc::fwd_gate_tile<false, GUARD, 1, BN, D>(s, o, mrun, lrun, rowF, gkv, cPM, lim0, q4, lsc, esc, mx);
    if constexpr (GUARD) {
        float fac[2];
        if (tc::range_guard_update(mx, hw, esc, fac)) {
            scale_frag_rows(s[0], fac);
            scale_frag_rows(o[0], fac);
            lrun[0][0] *= fac[0];
            lrun[0][1] *= fac[1];
        }
    }
    uint32_t pa[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) acc_to_a<T>(s[0], kk, pa[kk]);
    reg_fence(oacc);
    fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
        WgmmaRS<T, D>::run(oacc, pa[kk], desc_sw128(cV + kk * 16 * 128, BN * 128), 1);
    commit();
    wait<0>();
    reg_fence(oacc);
}

/* The CTA's query tiles are persistent_tile(0), persistent_tile(1), ... (common.cuh: heavy-first rounds, every other
 * one reversed); the stage ring and its parities run on over them (global step gs). Producer per tile n: warp 1 writes
 * the tile's query cumsum into buffer n & 1 (after the consumers have read tile n - 2's) and arrives on the buffer's
 * "written" mbarrier, which the consumers wait on (racecheck reported hazards while only the scan warp's bFull arrival
 * ordered the two, after named barrier 1); the 128 threads stage and
 * scan the gates of each step as the default kernel does while thread 0 issues the step's K / V tensor copies and,
 * after the tile's first step, its Q's once the consumers are done with tile n - 1's. Consumers per tile: wait for Q,
 * the steps, Q released, the epilogue from the fragments (the staged one would write into the tiles the producer is
 * refilling). Requires tm.on (the launch checks). */
template <typename T, int D, int BN, int NST, bool MC = (D == MASKED_COLS_CLASS)>
__global__ void __launch_bounds__(384, 1)
    mlstm_fwd_wgmma_persistent_kernel(const __grid_constant__ KArgs args, const __grid_constant__ TmaTileKV tm)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* built for an architecture without wgmma: never launched (dispatch.cu) */
#else
    using Cfg = FwdPersCfg<D, BN, NST>;
    constexpr int BM = Cfg::BM;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aQ = base, aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF;
    float *sFq0 = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sG2 = sFq0 + BM;        /* [NST][BN] G_j log2e */
    float *sPM = sG2 + NST * BN;   /* [NST][BN] prefix max of G_j over the tile */
    float *sE = sPM + NST * BN;    /* [NST][BN] 2^(G_j log2e - X) */
    float *sA = sE + NST * BN;     /* [2][BN] logsigmoid(f_j) (0 beyond S) */
    float *sI = sA + 2 * BN;       /* [2][BN] i_j */
    float *sFq1 = reinterpret_cast<float *>(smem + Cfg::FQ2_OFF);
    const uint32_t bFull = base + Cfg::BAR_OFF, bEmpty = bFull + 8 * NST;
    const uint32_t bQFull = base + Cfg::PB_OFF, bQEmpty = bQFull + 8;
    const uint32_t bFq = bQFull + 16, bFqSet = bQFull + 32; /* buffer n & 1 read, written: + 8 (n & 1) */

    const int64_t S = args.S, ntiles = (S + BM - 1) / BM * args.B * args.NH;
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
    const int wgi = warp >> 2; /* 0, 1: consumers; 2: producer */

    mbar_init_stages<NST>(bFull, 1 + 32); /* full: thread 0's expect-tx arrival, the scan warp */
    mbar_init_tiles(bQFull, 32); /* the cumsum's writers: warp 1 */
    __syncthreads(); /* the only CTA-wide barrier */

    if (wgi == 2) {
        /* ---- producer warpgroup ---- */
        setmaxnreg_dec<Cfg::PROD_REGS>();
        const int pt = (int)threadIdx.x - 256;
        const bool producer = pt < BN; /* gate producer: key pt of the step's tile */
        int64_t gs0 = 0;               /* steps of the tiles before this one */
        int64_t n = 0;
        for (int64_t tile = persistent_tile(0); tile < ntiles; tile = persistent_tile(++n)) {
            const QueryTile qtl = query_tile(args, BM, tile);
            const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;
            const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN), nsteps = kt_hi + 1;
            const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);
            float *sFq = (n & 1) ? sFq1 : sFq0;
            if (pt >= 32 && pt < 64) { /* warp 1: the tile's query cumsum, into a buffer the consumers have read */
                if (n >= 2) mbar_wait(bFq + 8 * (n & 1), (uint32_t)(((n >> 1) - 1) & 1));
                store_tile_cumsum<BM>(gf, tf.ss, qs, S, sFq);
                mbar_arrive(bFqSet + 8 * (n & 1)); /* each lane's stores, released to the consumers */
            }
            GateAhead<BN> ga = {gf, gi, tf.ss, ti.ss, kt_hi, nsteps, S, pt, producer, 0.0f, 0.0f, 0.0f, 0.0f};
            ga.start();
            Comp off = {0.0f, 0.0f};
            for (int64_t it = 0; it < nsteps; ++it) {
                const int64_t gs = gs0 + it, kt = kt_hi - it;
                const int stage = (int)(gs % NST);
                if (gs >= NST) mbar_wait(bEmpty + 8 * stage, (uint32_t)((gs / NST + 1) & 1));
                if (pt == 0) /* the stage's tensor copies, in flight while the gates are staged and scanned */
                    tma_kv_tiles<BN, D>(aK + stage * Cfg::KV_BYTES, aV + stage * Cfg::KV_BYTES, &tm.k, &tm.v, kt, hh, b,
                                        bFull + 8 * stage);
                ga.stage(it, sA, sI, (int)(gs & 1) * BN + pt);
                named_sync(1, 128); /* (also orders warp 1's cumsum before the scan reads it) */
                if (pt < 32) { /* the scan warp: the step's tile */
                    constexpr int E = BN / 32;
                    const int src = (int)(gs & 1) * BN, dst = stage * BN;
                    float a[E], iv[E], cum[E];
#pragma unroll
                    for (int e = 0; e < E; ++e) a[e] = sA[src + lane * E + e];
                    const float tot = GateTile<BN>::scan_values(cum, a);
#pragma unroll
                    for (int e = 0; e < E; ++e) iv[e] = sI[src + lane * E + e];
                    tc::fwd_key_gates_scanned<BN>(cum, tot, iv, off, kt * BN, qs, sFq, sG2 + dst, sPM + dst, sE + dst);
                    mbar_arrive(bFull + 8 * stage); /* the stage's gates are written */
                }
                if (it == 0 && pt == 0) { /* the tile's Q, once the consumers are done with the last one's */
                    if (n >= 1) mbar_wait(bQEmpty, (uint32_t)((n - 1) & 1));
                    tma_tile_sw128<BM, D>(aQ, &tm.x, qs, hh, b, bQFull);
                }
            }
            gs0 += nsteps;
        }
        return;
    }

    /* ---- consumer warpgroups ---- */
    setmaxnreg_inc<Cfg::CONS_REGS>();
    const int wgr = wgi * 64;                  /* the warpgroup's first query row within the tile */
    const int wr0 = wgr + (warp & 3) * 16;     /* first row of this warp within the tile */
    const uint32_t aQw = aQ + wgr * 128;
    const float lsc = log2f(fabsf(args.scale));
    constexpr bool GUARD = tc::NeedsRangeGuard<T>::value;
    constexpr bool PP = MLSTM_FWD_WG_PINGPONG;
    int64_t gs0 = 0, n = 0;
    for (int64_t tile = persistent_tile(0); tile < ntiles; tile = persistent_tile(++n)) {
        const QueryTile qtl = query_tile(args, BM, tile);
        const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;
        const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN), nsteps = kt_hi + 1;
        const float *sFq = (n & 1) ? sFq1 : sFq0;
        float o[1][D / 8][4];
        float(&oacc)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);
#pragma unroll
        for (int i = 0; i < D / 2; ++i) oacc[i] = 0.0f;
        float mrun[1][2] = {{MLSTM_FLOOR, MLSTM_FLOOR}}, lrun[1][2] = {{0.0f, 0.0f}}, rowF[1][2] = {{0.0f, 0.0f}};
        float esc[2] = {0.0f, 0.0f}, hw[2] = {0.0f, 0.0f}; /* range guard (range_guard.cuh) */
        mbar_wait(bQFull, (uint32_t)(n & 1));
        if (PP && wgi == 1) named_arrive(4, 256);
        for (int64_t it = 0; it < nsteps; ++it) {
            const int64_t gs = gs0 + it, ks = (kt_hi - it) * BN;
            const int stage = (int)(gs % NST);
            mbar_wait(bFull + 8 * stage, (uint32_t)((gs / NST) & 1));
            fence_proxy_async(); /* the gates (st.shared) before the wgmma's async-proxy reads */
            if (it == 0) { /* the cumsum: written by warp 1, which arrived on bFqSet (also ordered by bFull, indirectly) */
                mbar_wait(bFqSet + 8 * (n & 1), (uint32_t)((n >> 1) & 1));
                rowF[0][0] = sFq[wr0 + g];
                rowF[0][1] = sFq[wr0 + g + 8];
                mbar_arrive(bFq + 8 * (n & 1)); /* the cumsum buffer may take tile n + 2's */
            }
            /* every key of the tile after every row of the warpgroup: nothing to do (warpgroup-uniform) */
            const bool act = ks <= qs + wgr + 63;
            if (PP) wgi == 0 ? named_sync(4, 256) : named_sync(5, 256); /* this warpgroup's turn */
            if (act)
                fwd_wg_tile<T, D, BN, BM, GUARD, PP>(aQw, aK + stage * Cfg::KV_BYTES, aV + stage * Cfg::KV_BYTES,
                                                     sG2 + stage * BN, sE + stage * BN, sPM + stage * BN, ks, qs, wr0,
                                                     wgi, lsc, o, mrun, lrun, rowF, esc, hw);
            else if (PP)
                wgi == 0 ? named_arrive(5, 256) : named_arrive(4, 256);
            mbar_arrive(bEmpty + 8 * stage);
        }
        if constexpr (MLSTM_FWD_PERS_STAGED_EPILOGUE) {
            /* h through this warpgroup's own Q rows (its products are done with them; the other warpgroup's rows are
             * apart), then Q released */
            if (PP && wgi == 0) named_sync(4, 256); /* warpgroup 1's last turn signal */
            fwd_epilogue_staged<T, D, 0, GUARD, MC, BM * 128>(args, b, hh, qs, wgr, wr0, o, mrun, lrun, esc,
                                                              smem + wgr * 128, 2 + wgi, 128);
            fence_proxy_async(); /* these generic accesses before the next Q's tensor copies into the rows */
            mbar_arrive(bQEmpty);
        } else {
            mbar_arrive(bQEmpty); /* this warpgroup's products of the tile are done: Q may take the next tile's */
            if (PP && wgi == 0) named_sync(4, 256); /* warpgroup 1's last turn signal */
            tc::fwd_epilogue<T, 1, D, GUARD, MC>(args, b, hh, qs, wr0, o, mrun, lrun, esc);
        }
        gs0 += nsteps;
    }
#endif
}

} // namespace wg
} // namespace mlstm
