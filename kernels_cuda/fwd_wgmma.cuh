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
 *   offset); at the end the consumer warpgroup of rows 64 r.. in CTA r merges the peer's state of those rows, read
 *   from the peer's shared memory (fwd_split_combine through cluster_map), and writes them.
 * Registers: the producer gives its warpgroup's share back (setmaxnreg) so that the consumers hold 224 each.
 * Named barriers: 1 the producer warpgroup (its gate scratch), 2 the two consumer warpgroups (Q loaded; the split's
 * merge), 3 consumer warp 0 (query cumsum written) and the scan warps. */
#pragma once

#include "fwd_tc.cuh"
#include "tile_config.h"
#include "wgmma.cuh"

namespace mlstm {
namespace wg {

template <int D, int BN, int KS, int NST, int CL = 1>
struct FwdCfg {
    static constexpr int BM = 128 / KS;      /* query rows of a CTA (two consumer warpgroups) */
    static constexpr int NT = 384;           /* consumers: threads 0..255, producer: 256..383 */
    static constexpr int PROD_REGS = 56, CONS_REGS = 224; /* 128 * 56 + 256 * 224 = 384 * 168, the launch allocation */
    static constexpr int Q_BYTES = BM * D * 2;
    static constexpr int KV_BYTES = BN * D * 2;
    static constexpr int K_OFF = Q_BYTES;
    static constexpr int V_OFF = K_OFF + NST * KS * KV_BYTES; /* K, V: [NST stages][KS groups] tiles */
    static constexpr int G_OFF = V_OFF + NST * KS * KV_BYTES;
    static constexpr int NG = KS * CL;       /* key tiles per step, over the cluster */
    /* floats: sFq[BM]; [NST][KS][BN] each of sG2, sPM, sE (consumed with the stage); [2][NG][BN] each of sA
     * (logsigmoid f), sI (i) (the producer's scratch) */
    static constexpr int G_FLOATS = BM + 3 * NST * KS * BN + 4 * NG * BN;
    static constexpr int BAR_OFF = G_OFF + G_FLOATS * 4; /* mbarriers: full[NST], empty[NST] */
    static constexpr int SMEM = BAR_OFF + 16 * NST + 1024; /* + 1024: the base is aligned up at run time */
    static_assert(Q_BYTES % 1024 == 0 && KV_BYTES % 1024 == 0, "tiles start on 1024-byte boundaries");
    static_assert(BM % BN == 0 && BN % 32 == 0 && D % 64 == 0, "tile sizes");
    static_assert(CL == 1 || ((CL == 2 || CL == 4) && KS == 1 && tc::split_buf_bytes(BM, D) <= G_OFF),
                  "cluster: its size, the reduction buffer");
    static_assert(BAR_OFF % 8 == 0, "mbarrier alignment");
    static_assert(NST >= 2, "stages");
    static_assert(KS == 1 || (KS == 2 && tc::split_buf_bytes(BM, D) <= G_OFF), "key split: merge buffer");
    static_assert(SMEM <= 232448, "shared memory per block");
};

/* Cluster of CL CTAs (fwd_split_store buffers of BM rows in each CTA's shared memory at buf, visible): CTA crank
 * reduces rows [crank NR, crank NR + NR) of the CTAs' partial states and writes h, m, n for them (the 256 consumer
 * threads; TPR per row, each on 8-column chunks TPR * 8 apart). */
template <typename T, int D, int BM, int CL, bool GUARD>
__device__ __forceinline__ void fwd_cluster_epilogue(const KArgs &args, int64_t b, int64_t hh, int64_t qs,
                                                     const float *buf, int crank)
{
    constexpr int NR = BM / CL, TPR = 256 / NR, NCH = D / (8 * TPR);
    static_assert(256 % NR == 0 && D % (8 * TPR) == 0, "reduction layout");
    const int tid = (int)threadIdx.x, rl = tid / TPR, r = crank * NR + rl, c8 = (tid % TPR) * 8;
    const int64_t t = qs + r, S = args.S;
    const float *src[CL];
#pragma unroll
    for (int c = 0; c < CL; ++c) src[c] = c == crank ? buf : cluster_map(buf, c);
    /* buffer layout (fwd_split_store): O [BM][D + 8], l [BM][4], m [BM], esc [BM] */
    constexpr int DP = D + 8, LO = BM * DP;
    float mc[CL], f[CL], mm = MLSTM_FLOOR, ee = -1e30f;
#pragma unroll
    for (int c = 0; c < CL; ++c) {
        mc[c] = src[c][LO + BM * 4 + r];
        mm = fmaxf(mm, mc[c]);
        if (GUARD) ee = fmaxf(ee, src[c][LO + BM * 5 + r]);
    }
    float l = 0.0f;
#pragma unroll
    for (int c = 0; c < CL; ++c) {
        f[c] = expf(mc[c] - mm);
        if (GUARD) f[c] *= exp2f(src[c][LO + BM * 5 + r] - ee);
        const float4 lp = *reinterpret_cast<const float4 *>(src[c] + LO + r * 4);
        l += f[c] * ((lp.x + lp.y) + (lp.z + lp.w));
    }
    const float sgn = args.scale < 0.0f ? -1.0f : 1.0f, sc = GUARD ? exp2f(ee) : 1.0f;
    float nsig;
    const float inv = fwd_normalizer(l * sgn * sc, mm, sgn * sc, args.eps, nsig);
    if (t >= S) return;
    const TArg &th = args.t[MLSTM_TENSOR_H], &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
    T *row = bh_ptr<T>(th, b, hh) + t * th.ss;
#pragma unroll
    for (int k = 0; k < NCH; ++k) {
        const int col = k * TPR * 8 + c8;
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int c = 0; c < CL; ++c) {
            const float4 a = *reinterpret_cast<const float4 *>(src[c] + r * DP + col);
            const float4 z = *reinterpret_cast<const float4 *>(src[c] + r * DP + col + 4);
            acc[0] += f[c] * a.x, acc[1] += f[c] * a.y, acc[2] += f[c] * a.z, acc[3] += f[c] * a.w;
            acc[4] += f[c] * z.x, acc[5] += f[c] * z.y, acc[6] += f[c] * z.z, acc[7] += f[c] * z.w;
        }
        uint4 out;
        out.x = pack2<T>(acc[0] * inv, acc[1] * inv);
        out.y = pack2<T>(acc[2] * inv, acc[3] * inv);
        out.z = pack2<T>(acc[4] * inv, acc[5] * inv);
        out.w = pack2<T>(acc[6] * inv, acc[7] * inv);
        *reinterpret_cast<uint4 *>(row + col) = out;
    }
    if (c8 == 0) {
        bh_ptr<float>(tm, b, hh)[t * tm.ss] = mm;
        bh_ptr<float>(tn, b, hh)[t * tn.ss] = nsig;
    }
}

/* TMA (tm: the K / V maps): producer thread 0 loads each stage with tensor copies (the cluster variant); else the
 * 128 producer threads cp.async it and tm is unused */
template <typename T, int D, int BN, int KS, int NST, int CL = 1, bool TMA = (CL > 1)>
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
    /* full: every producer thread once its copies landed (TMA: thread 0's expect-tx arrival), the scan warps */
    mbar_init_stages<NST>(bFull, (TMA ? 1 : 128) + 32 * KS);
    __syncthreads(); /* the only CTA-wide barrier: from here on the first K/V tiles, Q and the query gates load at once */

    if (wgi == 2) {
        /* ---- producer warpgroup ---- */
        setmaxnreg_dec<Cfg::PROD_REGS>();
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
            if constexpr (TMA) {
                const int64_t kt = kt_hi - it * NG - g0;
                if (pt == 0 && kt >= 0) {
                    const uint32_t full = bFull + 8 * stage, dk = aK + stage * Cfg::KV_BYTES, dv = aV + stage * Cfg::KV_BYTES;
                    mbar_arrive_expect_tx(full, 2 * Cfg::KV_BYTES);
#pragma unroll
                    for (int cb = 0; cb < D / 64; ++cb) {
                        tma_load_4d(dk + cb * BN * 128, &tm.k, cb * 64, (int)(kt * BN), (int)hh, (int)b, full);
                        tma_load_4d(dv + cb * BN * 128, &tm.v, cb * 64, (int)(kt * BN), (int)hh, (int)b, full);
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
            if (pt < 32 * KS) { /* scan warp w writes the gates of tile gs = g0 + w; every scan warp walks the step's
                                  * NG tiles in descending order and keeps the same compensated offset */
                if (it == 0) named_sync(3, 32 * (KS + 1)); /* consumer warp 0 has written sFq */
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
            if constexpr (!TMA) { /* (issued before the gates, racecheck reported a hazard on sA in the D = 64 key split) */
                ws_copy_stage<T, BN, D, KS>(aK, aV, Cfg::KV_BYTES, stage, kt_hi - it * NG - g0, gk, tk.ss, gv, tv.ss,
                                            S, pt);
                mbar_arrive_cp_async(bFull + 8 * stage); /* fires when this thread's copies have landed */
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
    setmaxnreg_inc<Cfg::CONS_REGS>();
    load_tile_sw128<T, BM, D, 256>(aQ, gq, tq.ss, qs, S);
    cp_async_commit();
    if (warp == 0) { /* query-tile local cumsum, for the producer's scan warps (barrier 3) and, after their first
                      * full-stage wait, the consumers */
        store_tile_cumsum<BM>(gf, tf.ss, qs, S, sFq);
        named_arrive(3, 32 * (KS + 1));
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
    float esc[2] = {0.0f, 0.0f};

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
    for (int64_t it = 0; it < nsteps; ++it) {
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
        /* barrier ids stay literal (a computed id makes ptxas reserve all sixteen) */
        auto turn_wait = [&] { wgi == 0 ? named_sync(4, 256) : named_sync(5, 256); };
        auto turn_pass = [&] { wgi == 0 ? named_arrive(5, 256) : named_arrive(4, 256); };
        if (PP) turn_wait(); /* this warpgroup's turn */
        if (!act && PP) turn_pass();
        if (act) {
            float s[1][BN / 8][4];
            float(&sacc)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(s);
            reg_fence(sacc);
            fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const uint32_t koff = (kk & 3) * 32; /* k16 slice within the 64-column block */
                const uint64_t da = desc_sw128(aQw + (kk >> 2) * BM * 128 + koff, 16);
                const uint64_t db = desc_sw128(cK + (kk >> 2) * BN * 128 + koff, 16);
                WgmmaSS<T, BN>::run(sacc, da, db, kk > 0);
            }
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
                if (tc::range_guard_raise(mx, esc, fac)) {
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
        /* every CTA stores its state of all BM rows in its (now idle) Q / K / V tiles; once all are stored, CTA r
         * reduces rows [r BM / CL, (r + 1) BM / CL) over the cluster's buffers and writes them */
        named_sync(2, 256); /* both consumers are done with the Q / K / V tiles */
        float *buf = reinterpret_cast<float *>(smem);
        tc::fwd_split_store<1, D>(buf, BM, 0, wr0, o, mrun, lrun, esc);
        cluster_arrive();
        cluster_wait(); /* every CTA's stores are visible */
        fwd_cluster_epilogue<T, D, BM, CL, GUARD>(args, b, hh, qs, buf, crank);
        cluster_arrive();
        cluster_wait(); /* the cluster is done reading this CTA's shared memory: now it may exit */
        return;
    }
    if constexpr (KS > 1) {
        named_sync(2, 256); /* both consumers are done with the Q / K / V tiles (all loads have landed): the merge
                             * reuses them */
        if (!tc::fwd_split_merge<1, D, GUARD, 256>(reinterpret_cast<float *>(smem), BM, grp, wr0, o, mrun, lrun, esc))
            return; /* group 1: no further barrier below */
    }
    tc::fwd_epilogue<T, 1, D, GUARD>(args, b, hh, qs, wr0, o, mrun, lrun, esc);
#endif
}

} // namespace wg
} // namespace mlstm
