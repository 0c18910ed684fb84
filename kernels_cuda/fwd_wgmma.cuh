/* libmlstm CUDA kernels: the sm_90a forward for f16/bf16 storage on warpgroup MMA (wgmma.mma_async, f32
 * accumulation), head dims DQK = DV = D in {64, 128, 256}. One CTA per (query tile of 64*NWG rows, batch*head);
 * each warpgroup owns 64 query rows. Per key tile of BN keys: S = Q K^T with Q and K read from swizzled shared
 * memory, the gate / online-max / masking step of the mma.sync forward (fwd_tc.cuh) on the accumulator (same
 * fragment layout), then O += C V with C from registers. K/V double-buffered through cp.async.
 * KS = 2 (key split, for grids too small to fill the GPU): both warpgroups cover the same 64 rows and take every
 * other key tile; their states are merged at the end (fwd_split_merge), which halves the CTA's serial chain. */
#pragma once

#include "fwd_tc.cuh"
#include "wgmma.cuh"

namespace mlstm {
namespace wg {

template <int D, int BN, int NWG, int KS = 1>
struct FwdCfg {
    static constexpr int BM = 64 * NWG / KS;
    static constexpr int NT = 128 * NWG;
    static constexpr int Q_BYTES = BM * D * 2;
    static constexpr int KV_BYTES = BN * D * 2;
    static constexpr int K_OFF = Q_BYTES;
    static constexpr int V_OFF = K_OFF + 2 * KS * KV_BYTES;      /* K, V: [2 stages][KS groups] tiles */
    /* floats: sFq[BM], then [2 slots][KS][BN] each of sG2, sPM, sA (logsigmoid f), sI (i), sE */
    static constexpr int G_OFF = V_OFF + 2 * KS * KV_BYTES;
    static constexpr int SMEM = G_OFF + (BM + 10 * KS * BN) * 4 + 1024; /* + 1024: the base is aligned up at run time */
    static_assert(Q_BYTES % 1024 == 0 && KV_BYTES % 1024 == 0, "tiles start on 1024-byte boundaries");
    static_assert(BM % BN == 0 && BN % 32 == 0 && D % 64 == 0, "tile sizes");
    static_assert(KS * BN <= NT, "one gate producer thread per key of a step");
    static_assert(KS == 1 || (KS == 2 && NWG == 2 && (BM * D + 6 * BM) * 4 <= G_OFF), "key split: merge buffer");
};

template <typename T, int D, int BN, int NWG, int KS = 1>
__global__ void __launch_bounds__(128 * NWG, 1) mlstm_fwd_wgmma_kernel(const __grid_constant__ KArgs args)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    /* built for an architecture without wgmma: never launched (dispatch.cu enables it on compute capability 9.0
     * in builds that include sm_90a) */
    __trap();
#else
    using Cfg = FwdCfg<D, BN, NWG, KS>;
    constexpr int BM = Cfg::BM, NT = Cfg::NT, NW = 4 * NWG;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aQ = base, aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF;
    float *sFq = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sG2 = sFq + BM;         /* [2][KS][BN] G_j log2e */
    float *sPM = sG2 + 2 * KS * BN; /* [2][KS][BN] prefix max of G_j over the tile */
    float *sA = sPM + 2 * KS * BN;  /* [2][KS][BN] logsigmoid(f_j) (0 beyond S) */
    float *sI = sA + 2 * KS * BN;   /* [2][KS][BN] i_j */
    float *sE = sI + 2 * KS * BN;   /* [2][KS][BN] 2^(G_j log2e - X), X the tile's largest (fwd_gate_tile) */

    const int64_t S = args.S;
    const int64_t nqt = (S + BM - 1) / BM;
    const CtaPos cp = cta_pos(args);
    const int64_t b = cp.b, hh = cp.hh, qt = nqt - 1 - cp.rank; /* heaviest (last) query tiles first */
    const int64_t qs = qt * BM;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const T *gq = bh_ptr<T>(tq, b, hh), *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const int wgi = warp >> 2;                       /* warpgroup */
    const int grp = KS > 1 ? wgi : 0;                /* key group */
    const int wgr = KS > 1 ? 0 : wgi * 64;           /* its first query row within the tile */
    const int wr0 = wgr + (warp & 3) * 16;           /* first row of this warp within the tile */
    constexpr int GW = NW - 1;                       /* gate warp (writes the gates of every group's tiles) */

    const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN);

    load_tile_sw128<T, BM, D, NT>(aQ, gq, tq.ss, qs, S);
#pragma unroll
    for (int gs = 0; gs < KS; ++gs)
        if (kt_hi - gs >= 0) {
            load_tile_sw128<T, BN, D, NT>(aK + gs * Cfg::KV_BYTES, gk, tk.ss, (kt_hi - gs) * BN, S);
            load_tile_sw128<T, BN, D, NT>(aV + gs * Cfg::KV_BYTES, gv, tv.ss, (kt_hi - gs) * BN, S);
        }
    cp_async_commit();

    if (warp == 0) store_tile_cumsum<BM>(gf, tf.ss, qs, S, sFq); /* query-tile local cumsum */
    __syncthreads();

    /* Key gates, one step ahead: the first KS * BN threads (the gate producers, one key each) load f and i of a
     * step early and store logsigmoid(f) and i late in the step before; the gate warp turns them into G2 and the
     * prefix maxima at the end of the step before the one that uses them, walking the tiles in descending order
     * (all groups' tiles of a step, group 0 first) for the compensated offset. Slots: step st in st & 1. */
    const int ptile = (int)threadIdx.x / BN, ppos = (int)threadIdx.x % BN; /* producer: group, key in the tile */
    const bool producer = (int)threadIdx.x < KS * BN;
    float pf = 0.0f, pi = 0.0f;
    auto produce_load = [&](int64_t st) { /* step st = it: tiles kt_hi - it * KS - gs */
        const int64_t kt = kt_hi - st * KS - ptile, s = kt * BN + ppos;
        const bool ok = producer && kt >= 0 && s < S;
        pf = ok ? gf[s * tf.ss] : 0.0f;
        pi = ok ? gi[s * ti.ss] : 0.0f;
    };
    auto produce_store = [&](int64_t st) {
        const int64_t kt = kt_hi - st * KS - ptile, s = kt * BN + ppos;
        if (producer) {
            const int o = ((int)(st & 1) * KS + ptile) * BN + ppos;
            sA[o] = (kt >= 0 && s < S) ? logsigmoid(pf) : 0.0f;
            sI[o] = pi;
        }
    };
    Comp off = {0.0f, 0.0f};
    auto gates_finish = [&](int64_t st) { /* the gate warp */
        constexpr int E = BN / 32;
#pragma unroll
        for (int gs = 0; gs < KS; ++gs) {
            const int64_t kt = kt_hi - st * KS - gs;
            if (kt < 0) continue;
            const int sl = (int)(st & 1) * KS + gs;
            float a[E], iv[E], cum[E];
#pragma unroll
            for (int e = 0; e < E; ++e) {
                a[e] = sA[sl * BN + lane * E + e];
                iv[e] = sI[sl * BN + lane * E + e];
            }
            const float tot = GateTile<BN>::scan_values(cum, a);
            tc::fwd_key_gates_scanned<BN>(cum, tot, iv, off, kt * BN, qs, sFq, sG2 + sl * BN, sPM + sl * BN,
                                          sE + sl * BN);
        }
    };
    produce_load(0);
    produce_store(0);
    produce_load(1);
    produce_store(1);
    __syncthreads();
    if (warp == GW) gates_finish(0);

    float rowF[1][2];
    rowF[0][0] = sFq[wr0 + g];
    rowF[0][1] = sFq[wr0 + g + 8];

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

    const int64_t nsteps = kt_hi / KS + 1; /* steps of KS key tiles, from the diagonal down */
    int buf = 0;
    for (int64_t it = 0; it < nsteps; ++it, buf ^= 1) {
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        const int64_t knext = kt_hi - (it + 1) * KS; /* group 0's tile of the next step */
        if (knext >= 0) {
#pragma unroll
            for (int gs = 0; gs < KS; ++gs)
                if (knext - gs >= 0) {
                    const int sl = (buf ^ 1) * KS + gs;
                    load_tile_sw128<T, BN, D, NT>(aK + sl * Cfg::KV_BYTES, gk, tk.ss, (knext - gs) * BN, S);
                    load_tile_sw128<T, BN, D, NT>(aV + sl * Cfg::KV_BYTES, gv, tv.ss, (knext - gs) * BN, S);
                }
            cp_async_commit();
        }
        produce_load(it + 2);
        const int64_t kt = kt_hi - it * KS - grp; /* this warpgroup's key tile (< 0: none left for its group) */
        const int64_t ks = kt * BN;
        const int slot = buf * KS + grp;
        const uint32_t cK = aK + slot * Cfg::KV_BYTES, cV = aV + slot * Cfg::KV_BYTES;
        const float *cPM = sPM + slot * BN;

        /* no tile, or every key of the tile after every row of the warpgroup: nothing to do (warpgroup-uniform) */
        if (kt >= 0 && ks <= qs + wgr + 63) {
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
        produce_store(it + 2); /* into the slot of step it, which the gate warp finished reading in step it - 1 */
        if (knext >= 0 && warp == GW) gates_finish(it + 1);
    }

    if constexpr (KS > 1) {
        __syncthreads(); /* every warp is done with the Q / K / V tiles: the merge reuses them */
        if (!tc::fwd_split_merge<1, D, GUARD>(reinterpret_cast<float *>(smem), BM, grp, wr0, o, mrun, lrun, esc))
            return; /* group 1: no further barrier below */
    }
    tc::fwd_epilogue<T, 1, D, GUARD>(args, b, hh, qs, wr0, o, mrun, lrun, esc);
#endif
}

} // namespace wg
} // namespace mlstm
