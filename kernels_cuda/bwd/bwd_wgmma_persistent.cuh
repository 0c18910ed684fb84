/* libmlstm CUDA kernels: the persistent variant of the sm_90a dQ kernel's large-grid tiles (bwd_wgmma.cuh
 * mlstm_bwd_dq_ws_kernel, KS = 1, K / V through TMA maps): one CTA per SM walks query tiles, so that the next tile's
 * row state, gates, first stage and dH load overlap the last steps and the epilogue of the one before (tile_config.h
 * MLSTM_DQ_WG_PERSISTENT; kernels_cuda/NOTES.md, "Persistent forward", the same design). */
#pragma once

#include "bwd/bwd_wgmma.cuh"

namespace mlstm {
namespace wg {

/* DqWsCfg's layout (KS = 1) plus the rows' state [2 buffers][128] (bwd_row_a's A_t, delta_t) and four mbarriers:
 * dH full (its tensor copies), dH empty (both consumer warpgroups done with a tile's products), row state consumed [2] */
template <int D, int BN, int NST> struct DqPersCfg : DqWsCfg<D, BN, NST, 1> {
    using Q = DqWsCfg<D, BN, NST, 1>;
    static constexpr int RB_OFF = (Q::BAR_OFF + 16 * NST + 15) / 16 * 16; /* floats: A [2][BM], delta [2][BM] */
    static constexpr int PB_OFF = RB_OFF + 4 * Q::BM * 4; /* mbar_init_tiles: dH full, dH empty, rows read[2], written[2] */
    static constexpr int SMEM = PB_OFF + PERS_TILE_BARS * 8 + 1024; /* + 1024: the base is aligned up at run time */
    static_assert(Q::BM == 128 && BN == 64, "two 64-row blocks, 64-key tiles (one aligned gate block)");
    static_assert(PB_OFF % 8 == 0, "mbarrier alignment");
    static_assert(SMEM <= 232448, "shared memory per block");
};

/* The CTA's query tiles are persistent_tile(0), persistent_tile(1), ... (common.cuh: heavy-first rounds, every other
 * one reversed); the stage ring and its parities run on over them. Producer per tile n: warps 2 and 3 write the two
 * 64-row blocks' row state (the query cumsum through bwd_row_a, and delta) into buffer n & 1 once the consumers have
 * read tile n - 2's, and arrive on the buffer's "written" mbarrier, which the consumers wait on; the gates of each step are staged and scanned as in mlstm_bwd_dq_ws_kernel (KS = 1: scan warp w
 * for consumer w's block) while thread 0 issues the step's K / V tensor copies and, after the tile's first step, its
 * dH's once the consumers are done with tile n - 1's. Consumers per tile: the row state, the steps, dH released,
 * dq_epilogue from the fragments. Requires tm.on (the launch checks). */
template <typename T, int D, int BN, int NST, bool MC = (D == MASKED_COLS_CLASS)>
__global__ void __launch_bounds__(384, 1)
    mlstm_bwd_dq_persistent_kernel(const __grid_constant__ KArgs args, const __grid_constant__ TmaTileKV tm)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* built for an architecture without wgmma: never launched (dispatch.cu) */
#else
    using Cfg = DqPersCfg<D, BN, NST>;
    constexpr int BM = Cfg::BM;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aH = base, aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF;
    float *sG = reinterpret_cast<float *>(smem + Cfg::G_OFF) + BM; /* [NST][2][BN] (DqWsCfg: after sFq[BM]) */
    float *sA = sG + NST * 2 * BN;                                 /* [2][2][64] logsigmoid(f) (0 beyond S) */
    float *sI = sA + 2 * 2 * 64;                                   /* [2][2][64] its i */
    float *sRa = reinterpret_cast<float *>(smem + Cfg::RB_OFF);    /* [2][BM] A_t */
    float *sRd = sRa + 2 * BM;                                     /* [2][BM] delta_t */
    const uint32_t bFull = base + Cfg::BAR_OFF, bEmpty = bFull + 8 * NST;
    const uint32_t bHFull = base + Cfg::PB_OFF, bHEmpty = bHFull + 8;
    const uint32_t bRows = bHFull + 16, bRowsSet = bHFull + 32; /* buffer n & 1 read, written: + 8 (n & 1) */

    const int64_t S = args.S, ntiles = (S + BM - 1) / BM * args.B * args.NH;
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
    const int wgi = warp >> 2; /* 0, 1: consumers; 2: producer */

    mbar_init_stages<NST>(bFull, 1 + 64); /* full: thread 0's expect-tx arrival, both scan warps */
    mbar_init_tiles(bHFull, 64); /* the rows' state's writers: warps 2 and 3 */
    __syncthreads(); /* the only CTA-wide barrier */

    if (wgi == 2) {
        /* ---- producer warpgroup: thread pt < 64 loads f and i of position pt of the step's 64-key tile ---- */
        setmaxnreg_dec<Cfg::PROD_REGS>();
        const int pt = (int)threadIdx.x - 256, pw = pt >> 5;
        const bool gprod = pt < 64;
        const float lsc = log2f(fabsf(args.scale));
        int64_t gs0 = 0, n = 0;
        for (int64_t tile = persistent_tile(0); tile < ntiles; tile = persistent_tile(++n)) {
            const QueryTile qtl = query_tile(args, BM, tile);
            const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;
            const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN), nsteps = kt_hi + 1;
            const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);
            if (pw >= 2) { /* warps 2, 3: the row state of 64-row block pw - 2 (dq_row_state's values) */
                const int blk = pw - 2, buf = (int)(n & 1);
                if (n >= 2) mbar_wait(bRows + 8 * buf, (uint32_t)(((n >> 1) - 1) & 1));
                float *ra = sRa + buf * BM + 64 * blk, *rd = sRd + buf * BM + 64 * blk;
                store_tile_cumsum<64>(gf, tf.ss, qs + 64 * blk, S, ra); /* lane l: rows 2 l, 2 l + 1 */
                const TArg &tm_ = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N], &tdf = args.t[MLSTM_TENSOR_DF];
                const float *gm = bh_ptr<float>(tm_, b, hh), *gn = bh_ptr<float>(tn, b, hh);
                const float *gdf = bh_ptr<float>(tdf, b, hh);
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int r = lane * 2 + e;
                    const int64_t t = qs + 64 * blk + r;
                    const bool ok = t < S;
                    const float m = ok ? gm[t * tm_.ss] : 0.0f, nn = ok ? gn[t * tn.ss] : 0.0f;
                    ra[r] = ok ? bwd_row_a(ra[r], m, nn, args.eps, lsc) : -INFINITY;
                    rd[r] = ok ? gdf[t * tdf.ss] : 0.0f;
                }
                mbar_arrive(bRowsSet + 8 * buf); /* each lane's stores, released to the consumers */
            }
            GateAhead<BN> ga = {gf, gi, tf.ss, ti.ss, kt_hi, nsteps, S, pt, gprod, 0.0f, 0.0f, 0.0f, 0.0f};
            ga.start();
            Comp off = {0.0f, 0.0f};
            for (int64_t it = 0; it < nsteps; ++it) {
                const int64_t gs = gs0 + it, kt = kt_hi - it;
                const int stage = (int)(gs % NST);
                if (gs >= NST) mbar_wait(bEmpty + 8 * stage, (uint32_t)((gs / NST + 1) & 1));
                if (pt == 0) /* the stage's tensor copies, in flight while the gates are staged and scanned */
                    tma_kv_tiles<BN, D>(aK + stage * Cfg::KV_BYTES, aV + stage * Cfg::KV_BYTES, &tm.k, &tm.v, kt, hh, b,
                                        bFull + 8 * stage);
                ga.stage(it, sA, sI, (int)(gs & 1) * 2 * 64 + pt);
                named_sync(1, 128); /* (the rows' state reaches the consumers through bRowsSet) */
                if (pt < 64) { /* scan warp pw writes the step's tile's gates for consumer pw's query block */
                    const int src = (int)(gs & 1) * 2 * 64;
                    const float a[2] = {sA[src + 2 * lane], sA[src + 2 * lane + 1]};
                    const float iv[2] = {sI[src + 2 * lane], sI[src + 2 * lane + 1]};
                    float cum[2];
                    const float tot = GateTile<64>::scan_values(cum, a);
                    tc::dq_key_gates_scanned<BN>(cum, tot, iv, off, kt * BN, qs + 64 * pw, sG + (stage * 2 + pw) * BN);
                    mbar_arrive(bFull + 8 * stage); /* the stage's gates are written */
                }
                if (it == 0 && pt == 0) { /* the tile's dH, once the consumers are done with the last one's */
                    if (n >= 1) mbar_wait(bHEmpty, (uint32_t)((n - 1) & 1));
                    tma_tile_sw128<BM, D>(aH, &tm.x, qs, hh, b, bHFull);
                }
            }
            gs0 += nsteps;
        }
        return;
    }

    /* ---- consumer warpgroups: warpgroup w on the tile's 64-row block w ---- */
    setmaxnreg_inc<Cfg::CONS_REGS>();
    const int wgr = 64 * wgi;             /* the warpgroup's first query row within the tile: a 64-block */
    const int wr0 = (warp & 3) * 16;      /* first row of this warp within the 64-block */
    constexpr bool GUARD = tc::NeedsRangeGuard<T>::value;
    int64_t gs0 = 0, n = 0;
    for (int64_t tile = persistent_tile(0); tile < ntiles; tile = persistent_tile(++n)) {
        const QueryTile qtl = query_tile(args, BM, tile);
        const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;
        const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN), nsteps = kt_hi + 1;
        float rb2[2] = {0.0f, 0.0f}, del[2] = {0.0f, 0.0f};
        float adq[D / 8][4];
        float(&acc)[D / 2] = reinterpret_cast<float(&)[D / 2]>(adq);
#pragma unroll
        for (int i = 0; i < D / 2; ++i) acc[i] = 0.0f;
        float esc[2] = {0.0f, 0.0f}, hw[2] = {0.0f, 0.0f}; /* range guard (range_guard.cuh) */
        mbar_wait(bHFull, (uint32_t)(n & 1));
        for (int64_t it = 0; it < nsteps; ++it) {
            const int64_t gs = gs0 + it, kt = kt_hi - it;
            const int stage = (int)(gs % NST);
            mbar_wait(bFull + 8 * stage, (uint32_t)((gs / NST) & 1));
            fence_proxy_async(); /* the gates (st.shared) before the wgmma's async-proxy reads */
            if (it == 0) { /* the rows' state: written by warps 2 and 3, which arrived on bRowsSet */
                const int buf = (int)(n & 1);
                mbar_wait(bRowsSet + 8 * buf, (uint32_t)((n >> 1) & 1));
#pragma unroll
                for (int rr = 0; rr < 2; ++rr) {
                    rb2[rr] = sRa[buf * BM + wgr + wr0 + g + rr * 8];
                    del[rr] = sRd[buf * BM + wgr + wr0 + g + rr * 8];
                }
                mbar_arrive(bRows + 8 * buf); /* the buffer may take tile n + 2's */
            }
            /* every key of the tile after every row of the warpgroup: nothing to do (warpgroup-uniform) */
            if (kt * BN <= qs + wgr + 63)
                dq_step<T, D, BN, BM, GUARD>(aH + wgr * 128, aK + stage * Cfg::KV_BYTES, aV + stage * Cfg::KV_BYTES,
                                             sG + (stage * 2 + wgi) * BN, kt * BN, qs + wgr, wr0, rb2, del, esc, hw, adq);
            mbar_arrive(bEmpty + 8 * stage);
        }
        mbar_arrive(bHEmpty); /* this warpgroup's products of the tile are done: dH may take the next tile's */
        tc::dq_epilogue<T, D, GUARD, MC>(args, b, hh, qs + wgr, wr0, adq, esc);
        gs0 += nsteps;
    }
#endif
}

} // namespace wg
} // namespace mlstm
