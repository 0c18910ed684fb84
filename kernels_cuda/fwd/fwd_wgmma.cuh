/* libmlstm CUDA kernels: the sm_90a forward for f16/bf16 storage on warpgroup MMA (wgmma.mma_async, f32
 * accumulation), head dims DQK = DV = D in {64, 128, 256}, warp-specialised: per CTA one producer warpgroup and
 * two consumer warpgroups that meet only at mbarriers, never at a CTA-wide barrier inside the key loop.
 * - The producer loads K/V tiles into NST stages (cp.async into 128-byte-swizzled tiles) and computes the key gates
 *   of each stage (one thread per key loads f and i two steps ahead and evaluates logsigmoid; one warp per key tile
 *   of the step scans); the stage's "full" mbarrier completes once every copy has landed (cp.async.mbarrier.arrive)
 *   and the scan warps have written the gates; the producer waits for "empty" before refilling a stage, up to NST
 *   steps ahead.
 * - Each consumer warpgroup owns 64 query rows: per key tile of BN keys S = Q K^T from shared memory, the gate /
 *   online-max / masking step of the mma.sync forward (fwd_tc.cuh) on the accumulator, then O += C V with C from
 *   registers, and marks the stage empty.
 * - KS = 2 (key split, for grids too small to fill the GPU): both consumers cover the same 64 rows and take every
 *   other key tile (a stage holds two); their states are merged at the end (fwd_split_merge).
 * - CL = 2 (cluster pair, the other answer to small grids): two CTAs of a cluster cover the same 128 rows, CTA r
 *   every other key tile from the diagonal's tile - r down (its scan warps walk both tiles of a step for the gate
 *   offset); at the end CTA r writes rows 64 r.. (its warpgroup r's): the other warpgroup's state of those rows
 *   comes from the peer CTA by one bulk copy between the CTAs' shared memories (see the merge below).
 * Registers: the producer gives its warpgroup's share back (setmaxnreg) so that the consumers hold 224 each.
 * Named barriers: 1 the producer warpgroup (its gate scratch), 2 the two consumer warpgroups (Q loaded; the split's
 * merge), 3 consumer warp 0 (query cumsum written) and the producer warpgroup, 4 and 5 the ping-pong turns (default
 * tiles), 4 also the cluster pair's staged epilogue. */
#pragma once

#include "fwd/fwd_tc.cuh"
#include "common/tile_config.h"
#include "common/wgmma.cuh"

namespace mlstm {
namespace wg {

template <int D, int BN, int KS, int NST, int CL = 1>
struct FwdCfg {
    static constexpr int BM = 128 / KS;      /* query rows of a CTA (two consumer warpgroups) */
    static constexpr int NT = 384;           /* consumers: threads 0..255, producer: 256..383 */
    static constexpr int PROD_REGS = 56, CONS_REGS = 224; /* 128 * 56 + 256 * 224 = 384 * 168, the launch allocation */
    /* OV: the overlapped D = 256 forward keeps O, the next scores and the pending P live at once; at 56 / 224 its
     * consumers spill in the loop (ptxas: nine 8-byte pairs), at 24 / 240 one pair there (FlashAttention-3's split for
     * two consumer warpgroups). 32 / 240 asks for 65536 > 384 * 168 registers and hangs (first GPU run of the OV). */
    static constexpr int OV_PROD_REGS = D >= 256 ? 24 : PROD_REGS, OV_CONS_REGS = D >= 256 ? 240 : CONS_REGS;
    static_assert(ws_regs_fit<PROD_REGS, CONS_REGS> && ws_regs_fit<OV_PROD_REGS, OV_CONS_REGS>, "register split");
    static constexpr int Q_BYTES = BM * D * 2;
    static constexpr int KV_BYTES = BN * D * 2;
    static constexpr int K_OFF = Q_BYTES;
    static constexpr int V_OFF = K_OFF + NST * KS * KV_BYTES; /* K, V: [NST stages][KS groups] tiles */
    static constexpr int G_OFF = V_OFF + NST * KS * KV_BYTES;
    static constexpr int NG = KS * CL;       /* key tiles per step, over the cluster */
    /* floats: sFq[BM]; [NST][KS][BN] each of sG2, sPM, sE (consumed with the stage); [2][NG][BN] each of sA
     * (logsigmoid f), sI (i) (the producer's scratch) */
    static constexpr int G_FLOATS = BM + 3 * NST * KS * BN + 4 * NG * BN;
    /* mbarriers: full[NST], empty[NST], cluster: in; overlap (OV): full[NST] and empty[NST] of the V tiles after */
    static constexpr int BAR_OFF = G_OFF + G_FLOATS * 4;
    static constexpr int SMEM = BAR_OFF + 32 * NST + 8 + 1024; /* + 1024: the base is aligned up at run time */
    /* cluster pair's merge, in the idle tiles: the outgoing state of 64 rows (fwd_split_store) at 0, the incoming
     * one at IN_OFF, the staged h rows at STG_OFF (row pitch STG_PITCH bytes) */
    static constexpr int XBUF = tc::split_buf_bytes(64, D), IN_OFF = (XBUF + 1023) / 1024 * 1024;
    static constexpr int STG_OFF = 2 * IN_OFF, STG_PITCH = D * 2 + 16;
    static_assert(CL == 1 || STG_OFF + 64 * STG_PITCH <= G_OFF, "cluster merge buffers");
    static_assert(KS > 1 || CL > 1 || 2 * 64 * STG_PITCH <= G_OFF, "default tiles' staged epilogue: two warpgroups' rows");
    static_assert(XBUF % 16 == 0, "bulk copy size");
    static_assert(Q_BYTES % 1024 == 0 && KV_BYTES % 1024 == 0, "tiles start on 1024-byte boundaries");
    static_assert(BM % BN == 0 && BN % 32 == 0 && D % 64 == 0, "tile sizes");
    static_assert(CL == 1 || (CL == 2 && KS == 1 && BM == 128), "cluster: a pair, one warpgroup's rows per CTA");
    static_assert(BAR_OFF % 8 == 0, "mbarrier alignment");
    static_assert(NST >= 2, "stages");
    static_assert(KS == 1 || (KS == 2 && tc::split_buf_bytes(BM, D) <= G_OFF), "key split: merge buffer");
    static_assert(SMEM <= 232448, "shared memory per block");
};

/* Forward epilogue of a warpgroup's 64 rows (first row qs + r0; the thread's rows as in fwd_epilogue), staged: h
 * goes through shared memory at stg (64 rows, pitch P bytes) so that the global stores are 16-byte and row-contiguous
 * (the fragment layout's 4-byte stores took ~2 us for 64 x 256 on H100); m and n as in fwd_epilogue. Barrier bar of
 * nbar threads (the warpgroup's 128, or both consumer warpgroups' 256 where each stages its rows at its own stg).
 * SWB > 0: stg holds the rows in a TMA tile's 128-byte-swizzled layout instead (64-column blocks SWB bytes apart, 128
 * bytes a row, 16-byte piece j of row r at piece j ^ (r & 7); stg 1024-byte aligned), e.g. the warpgroup's own rows
 * of a Q tile that its products no longer read. */
template <typename T, int D, int P, bool GUARD, bool MC = (D == MASKED_COLS_CLASS), int SWB = 0>
__device__ __forceinline__ void fwd_epilogue_staged(const KArgs &args, int64_t b, int64_t hh, int64_t qs, int r0, int wr0,
                                                    const float (&o)[1][D / 8][4], const float (&mrun)[1][2],
                                                    const float (&lrun)[1][2], const float (&esc)[2],
                                                    unsigned char *stg, int bar, int nbar = 128)
{
    const int lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const TArg &th = args.t[MLSTM_TENSOR_H], &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
    T *gh = bh_ptr<T>(th, b, hh);
    const int64_t S = args.S;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        float nsig;
        const float inv = fwd_row_inv<GUARD>(args, lrun[0][rr], mrun[0][rr], esc[rr], nsig);
        const int r = wr0 - r0 + g + rr * 8;
        if constexpr (SWB > 0) { /* rows g: eight different pieces of their 128-byte rows, so other banks */
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
                *reinterpret_cast<uint32_t *>(stg + (n / 8) * SWB + r * 128 + ((n % 8) ^ (r & 7)) * 16 + q4 * 4) =
                    pack2<T>(o[0][n][rr * 2] * inv, o[0][n][rr * 2 + 1] * inv);
        } else {
            uint32_t *srow = reinterpret_cast<uint32_t *>(stg + r * P); /* P / 4 = 4 (mod 32): rows g in other banks */
#pragma unroll
            for (int n = 0; n < D / 8; ++n) srow[n * 4 + q4] = pack2<T>(o[0][n][rr * 2] * inv, o[0][n][rr * 2 + 1] * inv);
        }
        const int64_t t = qs + r0 + r;
        if (q4 == 0 && t < S) {
            bh_ptr<float>(tm, b, hh)[t * tm.ss] = mrun[0][rr];
            bh_ptr<float>(tn, b, hh)[t * tn.ss] = nsig;
        }
    }
    named_sync(bar, nbar);
    constexpr int U = D / 8; /* 16-byte pieces per row (the tensor-core path has 16-byte aligned rows) */
#pragma unroll 4
    for (int i = (int)threadIdx.x & 127; i < 64 * U; i += 128) {
        const int r = i / U, c = i % U;
        const int64_t t = qs + r0 + r;
        if constexpr (SWB > 0) {
            if (t < S && col_in<D, MC>(c * 8, args.DV))
                *reinterpret_cast<uint4 *>(gh + t * th.ss + c * 8) =
                    *reinterpret_cast<const uint4 *>(stg + (c / 8) * SWB + r * 128 + ((c % 8) ^ (r & 7)) * 16);
        } else if (t < S && col_in<D, MC>(c * 8, args.DV)) /* DV <= D, a multiple of 8 (masked columns) */
            *reinterpret_cast<uint4 *>(gh + t * th.ss + c * 8) = *reinterpret_cast<const uint4 *>(stg + r * P + c * 16);
    }
}

/* The overlapped forward's (OV) gate step of an unmasked key tile (every key before every row of the warp), without
 * range guard (bf16), as tc::fwd_gate_tile<false, false> but in straight code, since a product is in flight: the
 * rows' new maxima (from the gates: rowF + pm[BN - 1]), l rescaled, s turned into C, and the factor of each row of O
 * in alpha (exactly 1 where the maximum stays), which the caller applies once the product is done. ex, pm: the
 * stage's E and prefix maxima. */
template <int BN>
__device__ __forceinline__ void fwd_gate_open(float (&s)[1][BN / 8][4], float (&mrun)[1][2], float (&lrun)[1][2],
                                              const float (&rowF)[1][2], const float *ex, const float *pm, int q4,
                                              float lsc, float (&alpha)[2])
{
    float gv[BN / 8][2];
    tc::load_key_row<BN>(gv, ex, q4);
    const float pmax = pm[BN - 1];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const float mnew = fmaxf(mrun[0][rr], rowF[0][rr] + pmax);
        alpha[rr] = fast_exp2((mrun[0][rr] - mnew) * MLSTM_LOG2E);
        mrun[0][rr] = mnew;
        const float rb2 = (rowF[0][rr] - mnew) * MLSTM_LOG2E + lsc;
        const float rf = fast_exp2(pmax * MLSTM_LOG2E + rb2);
        float l = lrun[0][rr] * alpha[rr];
#pragma unroll
        for (int n = 0; n < BN / 8; ++n)
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
                const float cv = s[0][n][rr * 2 + cc] * (gv[n][cc] * rf);
                s[0][n][rr * 2 + cc] = cv;
                l += cv;
            }
        lrun[0][rr] = l;
    }
}

/* The gate step of one key tile as the default loop takes it (masked where the tile reaches past a row of the warp),
 * for the overlapped forward's masked tiles (no product in flight); bf16 (no range guard) */
template <typename T, int BN, int D>
__device__ __forceinline__ void fwd_ov_gate_step(float (&s)[1][BN / 8][4], float (&o)[1][D / 8][4], float (&mrun)[1][2],
                                                 float (&lrun)[1][2], const float (&rowF)[1][2], const float *sG2,
                                                 const float *sE, const float *sPM, int stage, int64_t ks, int64_t qs,
                                                 int wr0, int g, int q4, float lsc, const float (&esc)[2])
{
    const bool masked = ks + BN - 1 > qs + wr0;
    float gkv[BN / 8][2];
    tc::load_key_row<BN>(gkv, (masked ? sG2 : sE) + stage * BN, q4);
    const int lim0 = wr0 + g - (int)max(ks - qs, (int64_t)-BN);
    float mx[2];
    if (masked)
        tc::fwd_gate_tile<true, false, 1, BN, D>(s, o, mrun, lrun, rowF, gkv, sPM + stage * BN, lim0, q4, lsc, esc, mx);
    else
        tc::fwd_gate_tile<false, false, 1, BN, D>(s, o, mrun, lrun, rowF, gkv, sPM + stage * BN, lim0, q4, lsc, esc, mx);
}

/* TMA (tm: the K / V maps): producer thread 0 loads each stage with tensor copies (always in the cluster variant; in
 * the others where tm.on, tile_config.h MLSTM_TC{D}_FWD_WG_TMA); else the 128 producer threads cp.async it.
 * OV (overlap, default tiles, bf16; tile_config.h MLSTM_TC{D}_FWD_WG_OVERLAP): a consumer warpgroup issues the score
 * product of key tile j together with O += P V of tile j - 1 and forms C of tile j while the latter runs; O's
 * rescale for tile j (its row maxima come from the gates) waits for that product. K and V then have their own
 * full / empty barriers: a K tile (and its gates) is released once C is formed, a V tile once its product is done,
 * so the producer refills K a step earlier than V. No branch may run while a product is in flight (ptxas would
 * serialise every wgmma of the kernel), hence the peeled loop (the consumer part below). */
template <typename T, int D, int BN, int KS, int NST, int CL = 1, bool TMA = (CL > 1),
          bool MC = (D == MASKED_COLS_CLASS), bool OV = false>
__global__ void __launch_bounds__(384, 1)
    mlstm_fwd_wgmma_kernel(const __grid_constant__ KArgs args, const __grid_constant__ TmaKV tm)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    /* built for an architecture without wgmma: never launched (dispatch.cu enables it on compute capability 9.0
     * in builds that include sm_90a) */
    __trap();
#else
    using Cfg = FwdCfg<D, BN, KS, NST, CL>;
    constexpr int BM = Cfg::BM, NG = Cfg::NG;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aQ = base, aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF;
    float *sFq = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sG2 = sFq + BM;            /* [NST][KS][BN] G_j log2e */
    float *sPM = sG2 + NST * KS * BN; /* [NST][KS][BN] prefix max of G_j over the tile */
    float *sE = sPM + NST * KS * BN;  /* [NST][KS][BN] 2^(G_j log2e - X), X the tile's largest (fwd_gate_tile) */
    float *sA = sE + NST * KS * BN;   /* [2][NG][BN] logsigmoid(f_j) (0 beyond S) */
    float *sI = sA + 2 * NG * BN;     /* [2][NG][BN] i_j */
    const uint32_t bFull = base + Cfg::BAR_OFF, bEmpty = bFull + 8 * NST;

    const int64_t S = args.S;
    const int crank = CL > 1 ? cluster_rank() : 0; /* a cluster's CTAs are consecutive in x */
    const int g0 = crank * KS;                      /* the step's first key tile of this CTA */
    const QueryTile qtl = query_tile(args, BM, blockIdx.x / CL);
    const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const T *gq = bh_ptr<T>(tq, b, hh), *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const int wgi = warp >> 2; /* 0, 1: consumers; 2: producer */

    const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN);
    const int64_t nsteps = kt_hi / NG + 1; /* steps of NG key tiles (KS of them this CTA's), from the diagonal down */

    static_assert(!TMA || KS == 1, "TMA stages: one key tile");
    static_assert(!OV || (KS == 1 && CL == 1 && !tc::NeedsRangeGuard<T>::value), "overlap: default tiles, bf16");
    const uint32_t bFullV = bFull + 16 * NST + 8, bEmptyV = bFullV + 8 * NST; /* OV: the V tiles' barriers */
    const bool tma = CL > 1 || (TMA && tm.on != 0); /* this launch loads K/V through the maps */
    /* full: every producer thread once its copies landed (TMA: thread 0's expect-tx arrival), the scan warps */
    const uint32_t bIn = bFull + 16 * NST; /* cluster: the incoming merge state's bytes */
    if (CL > 1 && threadIdx.x == 0) mbar_init(bIn, 1);
    mbar_init_stages<NST>(bFull, (tma ? 1 : 128) + 32 * KS);
    if (OV && threadIdx.x == 0) { /* (initialised after mbar_init_stages' fence, before the CTA barrier below) */
        for (int st = 0; st < NST; ++st) {
            mbar_init(bFullV + 8 * st, tma ? 1 : 128);
            mbar_init(bEmptyV + 8 * st, 256);
        }
        mbar_init_fence();
    }
    __syncthreads(); /* the only CTA-wide barrier: from here on the first K/V tiles, Q and the query gates load at once */

    if (wgi == 2) {
        /* ---- producer warpgroup ---- */
        setmaxnreg_dec<OV ? Cfg::OV_PROD_REGS : Cfg::PROD_REGS>();
        const int pt = (int)threadIdx.x - 256;
        const int ptile = pt / BN, ppos = pt % BN; /* gate producer: tile of the step, key in the tile */
        const bool producer = pt < NG * BN;
        /* f and i of the thread's key two steps ahead (the loads overtake the K/V copies issued in between) */
        float pf0 = 0.0f, pi0 = 0.0f, pf1 = 0.0f, pi1 = 0.0f;
        auto gate_load = [&](int64_t st, float &f, float &i) { /* step st: tiles kt_hi - st * NG - gs */
            const int64_t kt = kt_hi - st * NG - ptile, s = kt * BN + ppos;
            const bool ok = producer && st < nsteps && kt >= 0 && s < S;
            f = ok ? gf[s * tf.ss] : 0.0f;
            i = ok ? gi[s * ti.ss] : 0.0f;
        };
        Comp off = {0.0f, 0.0f};
        gate_load(0, pf0, pi0);
        gate_load(1, pf1, pi1);
        for (int64_t it = 0; it < nsteps; ++it) {
            const int stage = (int)(it % NST);
            if (it >= NST) mbar_wait(bEmpty + 8 * stage, (uint32_t)((it / NST + 1) & 1));
            /* TMA: thread 0 issues the stage's K/V tensor copies first (in flight while the gates are staged and
             * scanned); cp.async: the 128 threads copy after the gates (below) */
            if (TMA && tma) {
                const int64_t kt = kt_hi - it * NG - g0;
                if (pt == 0 && kt >= 0) {
                    const uint32_t full = bFull + 8 * stage, dk = aK + stage * Cfg::KV_BYTES, dv = aV + stage * Cfg::KV_BYTES;
                    mbar_arrive_expect_tx(full, (OV ? 1 : 2) * Cfg::KV_BYTES);
#pragma unroll
                    for (int cb = 0; cb < D / 64; ++cb) {
                        tma_load_4d(dk + cb * BN * 128, &tm.k, cb * 64, (int)(kt * BN), (int)hh, (int)b, full);
                        if (!OV) tma_load_4d(dv + cb * BN * 128, &tm.v, cb * 64, (int)(kt * BN), (int)hh, (int)b, full);
                    }
                } else if (pt == 0) {
                    mbar_arrive(bFull + 8 * stage); /* no tile of this CTA in the step */
                }
            }
            /* the gates, so that the scan warps write them while the K/V copies are being issued */
            if (producer) {
                const int64_t kt = kt_hi - it * NG - ptile, s = kt * BN + ppos;
                const int o = ((int)(it & 1) * NG + ptile) * BN + ppos;
                sA[o] = (kt >= 0 && s < S) ? logsigmoid(pf0) : 0.0f;
                sI[o] = pi0;
            }
            pf0 = pf1;
            pi0 = pi1;
            gate_load(it + 2, pf1, pi1);
            named_sync(1, 128);
            /* consumer warp 0 has written sFq (the whole warpgroup waits: with only the scan warps waiting here,
             * racecheck reported the staging's sA / sI stores racing with the scan's loads in the D = 64 key split) */
            if (it == 0) named_sync(3, 128 + 32);
            if (pt < 32 * KS) { /* scan warp w writes the gates of tile gs = g0 + w; every scan warp walks the step's
                                  * NG tiles in descending order and keeps the same compensated offset */
                constexpr int E = BN / 32;
                const int w = pt >> 5;
#pragma unroll
                for (int gs = 0; gs < NG; ++gs) {
                    const int64_t kt = kt_hi - it * NG - gs;
                    if (kt < 0) continue;
                    const int src = ((int)(it & 1) * NG + gs) * BN, dst = (stage * KS + gs - g0) * BN;
                    float a[E], iv[E], cum[E];
#pragma unroll
                    for (int e = 0; e < E; ++e) a[e] = sA[src + lane * E + e];
                    const float tot = GateTile<BN>::scan_values(cum, a);
                    if (gs == g0 + w) {
#pragma unroll
                        for (int e = 0; e < E; ++e) iv[e] = sI[src + lane * E + e];
                        tc::fwd_key_gates_scanned<BN>(cum, tot, iv, off, kt * BN, qs, sFq, sG2 + dst, sPM + dst,
                                                      sE + dst);
                    } else if (kt * BN < qs) {
                        comp_add(off, tot); /* what fwd_key_gates_scanned does to the offset */
                    }
                }
                mbar_arrive(bFull + 8 * stage); /* the stage's gates are written */
            }
            if (!tma && !OV) { /* (issued before the gates, racecheck reported a hazard on sA in the D = 64 key split) */
                ws_copy_stage<T, BN, D, KS>(aK, aV, Cfg::KV_BYTES, stage, kt_hi - it * NG - g0, gk, tk.ss, gv, tv.ss,
                                            S, pt, masked_cols<D, MC>(args.DQK), masked_cols<D, MC>(args.DV));
                mbar_arrive_cp_async(bFull + 8 * stage); /* fires when this thread's copies have landed */
            }
            if constexpr (OV) { /* the K tile (cp.async), then the V tile once its buffer is free */
                const int64_t kt = kt_hi - it;
                if (!tma) {
                    load_tile_sw128<T, BN, D, 128>(aK + stage * Cfg::KV_BYTES, gk, tk.ss, kt * BN, S, pt,
                                                   masked_cols<D, MC>(args.DQK));
                    mbar_arrive_cp_async(bFull + 8 * stage);
                }
                if (it >= NST) mbar_wait(bEmptyV + 8 * stage, (uint32_t)((it / NST + 1) & 1));
                const uint32_t fullv = bFullV + 8 * stage, dv = aV + stage * Cfg::KV_BYTES;
                if (tma) {
                    if (pt == 0) {
                        mbar_arrive_expect_tx(fullv, Cfg::KV_BYTES);
#pragma unroll
                        for (int cb = 0; cb < D / 64; ++cb)
                            tma_load_4d(dv + cb * BN * 128, &tm.v, cb * 64, (int)(kt * BN), (int)hh, (int)b, fullv);
                    }
                } else {
                    load_tile_sw128<T, BN, D, 128>(dv, gv, tv.ss, kt * BN, S, pt, masked_cols<D, MC>(args.DV));
                    mbar_arrive_cp_async(fullv);
                }
            }
        }
        cp_async_wait<0>(); /* no copy outlives its thread */
        if constexpr (CL > 1) { /* the merge's two cluster barriers count every thread */
            cluster_arrive();
            cluster_wait();
            cluster_arrive();
            cluster_wait();
        }
        return;
    }

    /* ---- consumer warpgroups ---- */
    setmaxnreg_inc<OV ? Cfg::OV_CONS_REGS : Cfg::CONS_REGS>();
    load_tile_sw128<T, BM, D, 256>(aQ, gq, tq.ss, qs, S, (int)threadIdx.x, masked_cols<D, MC>(args.DQK));
    cp_async_commit();
    if (warp == 0) { /* query-tile local cumsum, for the producer's scan warps (barrier 3) and, after their first
                      * full-stage wait, the consumers */
        store_tile_cumsum<BM>(gf, tf.ss, qs, S, sFq);
        named_arrive(3, 128 + 32);
    }
    const int grp = KS > 1 ? wgi : 0;       /* key group */
    const int wgr = KS > 1 ? 0 : wgi * 64;  /* its first query row within the tile */
    const int wr0 = wgr + (warp & 3) * 16;  /* first row of this warp within the tile */

    float rowF[1][2] = {{0.0f, 0.0f}}; /* sFq of the thread's rows, read after the first full-stage wait */

    float o[1][D / 8][4];
    float(&oacc)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);
    float mrun[1][2] = {{MLSTM_FLOOR, MLSTM_FLOOR}}, lrun[1][2] = {{0.0f, 0.0f}};
#pragma unroll
    for (int i = 0; i < D / 2; ++i) oacc[i] = 0.0f;
    const float lsc = log2f(fabsf(args.scale));
    constexpr bool GUARD = tc::NeedsRangeGuard<T>::value;
    float esc[2] = {0.0f, 0.0f}, hw[2] = {0.0f, 0.0f}; /* range guard (range_guard.cuh) */

    /* K-major descriptors of this warpgroup's Q rows and of the K stages advance by 32 bytes per k16 slice
     * inside a 64-column block, by (rows * 128) bytes per block */
    const uint32_t aQw = aQ + wgr * 128;
    cp_async_wait<0>();
    fence_proxy_async();
    named_sync(2, 256); /* Q is in shared memory */

    /* PP (default tiles: two warpgroups on different rows): they take turns issuing their score products (barriers 4,
     * 5), so that the tensor cores finish warpgroup 0's first and its gate math overlaps warpgroup 1's products (H100
     * bf16 S8192: D64 0.211 -> 0.201 ms, D128 0.288 -> 0.276; the cluster variant measured 26.5 -> 27.1 us without it) */
    constexpr bool PP = KS == 1 && CL == 1 && MLSTM_FWD_WG_PINGPONG;
    if (PP && wgi == 1) named_arrive(4, 256);
    /* barrier ids stay literal (a computed id makes ptxas reserve all sixteen) */
    auto turn_wait = [&] { wgi == 0 ? named_sync(4, 256) : named_sync(5, 256); };
    auto turn_pass = [&] { wgi == 0 ? named_arrive(5, 256) : named_arrive(4, 256); };
    if constexpr (OV) {
        /* Three phases per warpgroup, so that no branch runs while a product is in flight (ptxas serialises every
         * wgmma of a kernel that branches between a product's issue and its wait):
         * 1. the tiles before the first with a row of this warpgroup, and those whose key range reaches past a row of
         *    it (masking): one step at a time, as the loop below;
         * 2. the first unmasked tile: its scores, C, nothing pending;
         * 3. the rest: the scores of tile j and O += P V of tile j - 1 issued together, C of tile j formed (straight
         *    code, fwd_gate_open) while the latter runs, then O's rescale and the next P. */
        using Frag = float[1][BN / 8][4];
        auto pack = [](float (&x)[BN / 2], uint32_t (&p)[BN / 16][4]) { /* C as the A operand of O += P V */
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) acc_to_a<T>(reinterpret_cast<Frag &>(x)[0], kk, p[kk]);
        };
        auto pv_issue = [&](const uint32_t (&p)[BN / 16][4], uint32_t cV) {
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) WgmmaRS<T, D>::run(oacc, p[kk], desc_sw128(cV + kk * 16 * 128, BN * 128), 1);
            commit();
        };
        auto pv_sync = [&](const uint32_t (&p)[BN / 16][4], uint32_t cV) { /* ... issued and done */
            reg_fence(oacc);
            fence();
            pv_issue(p, cV);
            wait<0>();
            reg_fence(oacc);
        };
        int64_t it = 0;
        const auto masked_wg = [&](int64_t i) { return (kt_hi - i) * BN + BN - 1 > qs + wgr; }; /* some row masks */
        for (; it < nsteps && masked_wg(it); ++it) {
            const int stage = (int)(it % NST);
            const int64_t ks = (kt_hi - it) * BN;
            const uint32_t cK = aK + stage * Cfg::KV_BYTES, cV = aV + stage * Cfg::KV_BYTES;
            mbar_wait(bFull + 8 * stage, (uint32_t)((it / NST) & 1));
            mbar_wait(bFullV + 8 * stage, (uint32_t)((it / NST) & 1));
            fence_proxy_async();
            if (it == 0) {
                rowF[0][0] = sFq[wr0 + g];
                rowF[0][1] = sFq[wr0 + g + 8];
            }
            if (PP) turn_wait();
            if (ks <= qs + wgr + 63) { /* a row of this warpgroup sees the tile */
                float sacc[BN / 2];
                reg_fence(sacc);
                fence();
                wgmma_kmajor_ss<T, BN, D, BM, BN>(sacc, aQw, cK);
                commit();
                if (PP) turn_pass();
                wait<0>();
                reg_fence(sacc);
                fwd_ov_gate_step<T, BN, D>(reinterpret_cast<Frag &>(sacc), o, mrun, lrun, rowF, sG2, sE, sPM, stage, ks,
                                           qs, wr0, g, q4, lsc, esc);
                uint32_t pm[BN / 16][4];
                pack(sacc, pm);
                pv_sync(pm, cV);
            } else if (PP) {
                turn_pass();
            }
            mbar_arrive(bEmpty + 8 * stage);
            mbar_arrive(bEmptyV + 8 * stage);
        }
        if (it < nsteps) {
            uint32_t pa[BN / 16][4]; /* C of the pending tile, packed */
            /* one unmasked tile; PENDING: O += P V of the tile before is issued with its scores and done in the step
             * (compiled once per value: no branch while a product is in flight) */
            auto unmasked_step = [&](auto pending_c) {
                constexpr bool PENDING = decltype(pending_c)::value;
                const int stage = (int)(it % NST), pstage = (int)((it + NST - 1) % NST);
                mbar_wait(bFull + 8 * stage, (uint32_t)((it / NST) & 1));
                if (PENDING) mbar_wait(bFullV + 8 * pstage, (uint32_t)(((it - 1) / NST) & 1));
                fence_proxy_async();
                if (it == 0) {
                    rowF[0][0] = sFq[wr0 + g];
                    rowF[0][1] = sFq[wr0 + g + 8];
                }
                float sacc[BN / 2];
                if (PP) turn_wait();
                reg_fence(sacc);
                if (PENDING) reg_fence(oacc);
                fence();
                wgmma_kmajor_ss<T, BN, D, BM, BN>(sacc, aQw, aK + stage * Cfg::KV_BYTES);
                commit();
                if (PENDING) pv_issue(pa, aV + pstage * Cfg::KV_BYTES);
                if (PP) turn_pass();
                if (PENDING) wait<1>();
                else wait<0>();
                reg_fence(sacc);
                float alpha[2];
                fwd_gate_open<BN>(reinterpret_cast<Frag &>(sacc), mrun, lrun, rowF, sE + stage * BN, sPM + stage * BN, q4,
                                  lsc, alpha);
                mbar_arrive(bEmpty + 8 * stage);
                if (PENDING) {
                    wait<0>();
                    reg_fence(oacc);
                    mbar_arrive(bEmptyV + 8 * pstage);
                }
                scale_frag_rows(o[0], alpha);
                pack(sacc, pa);
            };
            unmasked_step(std::false_type{});
            for (++it; it < nsteps; ++it) unmasked_step(std::true_type{});
            const int pstage = (int)((nsteps - 1) % NST);
            mbar_wait(bFullV + 8 * pstage, (uint32_t)(((nsteps - 1) / NST) & 1));
            fence_proxy_async();
            pv_sync(pa, aV + pstage * Cfg::KV_BYTES);
        }
    }
    for (int64_t it = 0; !OV && it < nsteps; ++it) {
        const int stage = (int)(it % NST);
        const int64_t kt = kt_hi - it * NG - g0 - grp; /* this warpgroup's key tile (< 0: none left for its group) */
        const int64_t ks = kt * BN;
        const int slot = stage * KS + grp;
        const uint32_t cK = aK + slot * Cfg::KV_BYTES, cV = aV + slot * Cfg::KV_BYTES;
        const float *cPM = sPM + slot * BN;
        mbar_wait(bFull + 8 * stage, (uint32_t)((it / NST) & 1));
        fence_proxy_async(); /* the producer's cp.async / st.shared writes before the wgmma's async-proxy reads */
        if (it == 0) {
            rowF[0][0] = sFq[wr0 + g];
            rowF[0][1] = sFq[wr0 + g + 8];
        }

        /* no tile, or every key of the tile after every row of the warpgroup: nothing to do (warpgroup-uniform) */
        const bool act = kt >= 0 && ks <= qs + wgr + 63;
        if (PP) turn_wait(); /* this warpgroup's turn */
        if (!act && PP) turn_pass();
        if (act) {
            float s[1][BN / 8][4];
            float(&sacc)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(s);
            reg_fence(sacc);
            fence();
            wgmma_kmajor_ss<T, BN, D, BM, BN>(sacc, aQw, cK);
            commit();
            if (PP) turn_pass(); /* the other warpgroup's turn */
            wait<0>();
            reg_fence(sacc);

            const bool masked = ks + BN - 1 > qs + wr0;
            float gkv[BN / 8][2]; /* G2 (masked) or E (tc::fwd_gate_tile) */
            tc::load_key_row<BN>(gkv, (masked ? sG2 : sE) + slot * BN, q4);
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
            for (int kk = 0; kk < BN / 16; ++kk) {
                acc_to_a<T>(s[0], kk, pa[kk]);
            }
            reg_fence(oacc);
            fence();
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk)
                WgmmaRS<T, D>::run(oacc, pa[kk], desc_sw128(cV + kk * 16 * 128, BN * 128), 1);
            commit();
            wait<0>();
            reg_fence(oacc);
        }
        mbar_arrive(bEmpty + 8 * stage);
    }
    if (PP && wgi == 0) named_sync(4, 256); /* warpgroup 1's last turn signal */

    if constexpr (CL > 1) {
        /* CTA r writes rows [64 r, 64 r + 64), warpgroup r's. The other warpgroup stores its state in the idle tiles;
         * once both CTAs are done with their tiles (cluster barrier), one bulk copy takes it into the peer's shared
         * memory (through the tensor-memory-access engine: per-thread stores to the peer's shared memory ran at ~17
         * GB/s there, 3.9 us for the 68 KB). Warpgroup r folds the incoming state into its registers and writes its rows
         * staged through shared memory. */
        named_sync(2, 256); /* both consumers are done with the Q / K / V tiles */
        const bool owner = wgi == crank;
        if (!owner) {
            tc::fwd_split_store<1, D>(reinterpret_cast<float *>(smem), 64, wgr, wr0, o, mrun, lrun, esc);
            fence_proxy_async(); /* the stores, before the bulk copy reads them */
        } else if (threadIdx.x == (unsigned)wgr * 2) {
            mbar_arrive_expect_tx(bIn, Cfg::XBUF);
        }
        cluster_arrive();
        cluster_wait(); /* both CTAs' outgoing states are stored, their incoming buffers idle, the expectations set */
        if (!owner) {
            if (threadIdx.x == (unsigned)wgr * 2)
                bulk_copy_to_cluster(cluster_map_u32(base + Cfg::IN_OFF, wgi), base, Cfg::XBUF, cluster_map_u32(bIn, wgi));
            cluster_arrive();
            cluster_wait(); /* the peer has received the state: this CTA's buffer may go */
            return;
        }
        mbar_wait(bIn, 0);
        cluster_arrive(); /* the peer's copy has landed */
        tc::fwd_split_combine<1, D, GUARD>(reinterpret_cast<const float *>(smem + Cfg::IN_OFF), 64, wgr, wr0, o, mrun,
                                           lrun, esc);
        fwd_epilogue_staged<T, D, Cfg::STG_PITCH, GUARD, MC>(args, b, hh, qs, wgr, wr0, o, mrun, lrun, esc,
                                                         smem + Cfg::STG_OFF, 4);
        cluster_wait();
        return;
    }
    if constexpr (KS > 1) {
        named_sync(2, 256); /* both consumers are done with the Q / K / V tiles (all loads have landed): the merge
                             * reuses them */
        if (!tc::fwd_split_merge<1, D, GUARD, 256>(reinterpret_cast<float *>(smem), BM, grp, wr0, o, mrun, lrun, esc))
            return; /* group 1: no further barrier below */
    }
    if constexpr (KS == 1 && CL == 1 && MLSTM_FWD_WG_STAGED_EPILOGUE) {
        named_sync(2, 256); /* both consumers are done with the Q / K / V tiles (every load of the CTA has landed) */
        fwd_epilogue_staged<T, D, Cfg::STG_PITCH, GUARD, MC>(args, b, hh, qs, wgr, wr0, o, mrun, lrun, esc,
                                                         smem + wgi * 64 * Cfg::STG_PITCH, 2, 256);
        return;
    }
    tc::fwd_epilogue<T, 1, D, GUARD, MC>(args, b, hh, qs, wr0, o, mrun, lrun, esc);
#endif
}

} // namespace wg
} // namespace mlstm
