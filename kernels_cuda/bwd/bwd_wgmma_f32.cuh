/* libmlstm CUDA kernels: the sm_90a backward for f32 storage, IEEE-f32-grade on split f16 warpgroup MMA (wgmma_f32.cuh),
 * D in {64, 128}: wg::mlstm_bwd_dkdv_wgmma_f32_kernel (CTA = 64 keys, walks 64-row query blocks upwards) and
 * wg::mlstm_bwd_dq_wgmma_f32_kernel (CTA = 64 query rows, walks 64-key blocks downwards), each with a producer
 * warpgroup (raw f32 copies split in place, gate terms) and two consumer warpgroups, as fwd_wgmma_f32.cuh.
 * Math and gate-gradient scheme of bwd_tf32.cuh: D', P, M_tj = P_tj (scale S_tj) from the same element routines and
 * compensated gate terms, di_j = sum_t M_tj (dK/dV, residual into dq[j][0]), the dQ kernel's tile-local suffix sums of
 * dF. M must be bitwise the same in both kernels: here the dK/dV kernel forms S^T and dP^T with keys as the wgmma's
 * rows (so P^T and (C/n)^T are A fragments in registers) and the dQ kernel S and dP with queries as rows (P is the A
 * fragment of dQ += P K), through split_score, which issues the same products in the same order either way; wgmma's
 * accumulation is symmetric in the operand roles (measured: bench/RESULTS.md, measurement log, item 13), and the
 * scaled values are formed in one operation order, ((block sums + corrections) / (k's row scale)) / (q's row scale).
 * Row scales: operand rows as split_copy / split_convert; each accumulator row (dV, dK: keys; dQ: queries) has its own
 * split_guard_raise exponent for its A tiles. */
#pragma once

#include "bwd/bwd_tf32.cuh"
#include "fwd/fwd_tc.cuh"
#include "common/tile_config.h"
#include "common/wgmma_f32.cuh"

#include <type_traits>

namespace mlstm {
namespace wg {

/* A pair of 64-row tiles X, Y split in place, hi / lo of X at st0, st0 + T and of Y at st0 + 2T, st0 + 3T (T: one
 * f16 tile): NT threads (tid < NT) copy rows r0.. of both (split_copy; the caller commits), or convert both
 * (split_convert; row scales into invX, invY) */
template <int D, int NT>
__device__ __forceinline__ void split_copy_xy(uint32_t st0, const float *gx, int64_t xss, const float *gy, int64_t yss,
                                              int64_t r0, int64_t S, int tid)
{
    constexpr int T = 64 * D * 2;
    split_copy<64, D, NT>(st0, st0 + T, gx, xss, r0, S, tid);
    split_copy<64, D, NT>(st0 + 2 * T, st0 + 3 * T, gy, yss, r0, S, tid);
}
template <int D, int NT>
__device__ __forceinline__ void split_convert_xy(uint32_t st0, float *invX, float *invY, int tid)
{
    constexpr int T = 64 * D * 2;
    split_convert<64, D, NT>(st0, st0 + T, invX, tid);
    split_convert<64, D, NT>(st0 + 2 * T, st0 + 3 * T, invY, tid);
}

/* ---- dK/dV: CTA = 64 keys; the consumer warpgroups' roles below (BOTH) ---- */
template <int D, int NST>
struct BwdDkdvF32Cfg {
    static constexpr int NT = 384;
    static constexpr int PROD_REGS = D >= 128 ? 72 : 56, CONS_REGS = D >= 128 ? 216 : 224; /* as FwdF32Cfg */
    static_assert(ws_regs_fit<PROD_REGS, CONS_REGS>, "register split");
    static constexpr int T_BYTES = 64 * D * 2;            /* one f16 tile of 64 rows */
    static constexpr int ST_OFF = 4 * T_BYTES;            /* K hi, K lo, V hi, V lo; then stages */
    static constexpr int G_OFF = ST_OFF + NST * 4 * T_BYTES; /* stage: Q hi, Q lo, dh hi, dh lo */
    /* floats: sKh, sKl, sKi, sKI, sVI [64]; [NST][8][64]: sQh, sQl, sMt, sInv, sDel, sQI, sDI, sOf (2 used) */
    static constexpr int G_FLOATS = 5 * 64 + NST * 8 * 64;
    static constexpr int BAR_OFF = G_OFF + G_FLOATS * 4;
    static constexpr int SMEM = BAR_OFF + 16 * NST + 1024;
    static_assert(T_BYTES % 1024 == 0 && BAR_OFF % 8 == 0 && NST >= 2, "alignment, stages");
    static_assert(D > 64 || (2 * 64 * D + 64 * 4 * 2 + 2 * 64) * 4 <= NST * 4 * T_BYTES, "merge buffer in the stages");
    static_assert(SMEM <= 232448, "shared memory per block");
};

template <int D, int NST>
__global__ void __launch_bounds__(384, 1) mlstm_bwd_dkdv_wgmma_f32_kernel(const __grid_constant__ KArgs args)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* never launched without sm_90a (dispatch.cu) */
#else
    using Cfg = BwdDkdvF32Cfg<D, NST>;
    constexpr int T = Cfg::T_BYTES;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aK = base, aV = base + 2 * T, aSt = base + Cfg::ST_OFF;
    float *sKh = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sKl = sKh + 64, *sKi = sKl + 64, *sKI = sKi + 64, *sVI = sKI + 64, *sStg = sVI + 64;
    const uint32_t bFull = base + Cfg::BAR_OFF, bEmpty = bFull + 8 * NST;

    const int64_t S = args.S;
    const CtaPos cp = cta_pos(args);
    const int64_t b = cp.b, hh = cp.hh, ks = cp.rank * 64; /* heaviest (first) key tiles first */
    const int64_t nsteps = (S - ks + 63) / 64;            /* query blocks ks, ks + 64, ... */

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F], &tdh = args.t[MLSTM_TENSOR_DH];
    const float *gq = bh_ptr<float>(tq, b, hh), *gk = bh_ptr<float>(tk, b, hh), *gv = bh_ptr<float>(tv, b, hh);
    const float *gdh = bh_ptr<float>(tdh, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const int wgi = warp >> 2;

    mbar_init_stages<NST>(bFull, 128 + 32); /* full: every producer thread after its split, the gate warp */
    __syncthreads();

    if (wgi == 2) {
        /* ---- producer: Q and dh rows of each query block, split; the gate warp its query terms ---- */
        setmaxnreg_dec<Cfg::PROD_REGS>();
        const int pt = (int)threadIdx.x - 256;
        float offh = 0.0f, offl = 0.0f, pth = 0.0f, ptl = 0.0f; /* gate warp: offset, previous block's total */
        tc32::BwdQueryTerms qnext; /* gate warp: the next query block's terms, loaded a step early */
        if (pt < 32) qnext.load(args, b, hh, ks);
        split_producer<NST>(
            nsteps, bEmpty,
            [&](int64_t it, int stage) {
                const int64_t qs = ks + it * 64;
                const uint32_t st0 = aSt + stage * 4 * T;
                split_copy_xy<D, 128>(st0, gq, tq.ss, gdh, tdh.ss, qs, S, pt);
                cp_async_commit();
                if (pt < 32) {
                    float *g0 = sStg + stage * 8 * 64;
                    float th, tl;
                    qnext.finish(qs, S, g0, g0 + 64, g0 + 128, g0 + 192, g0 + 256, th, tl);
                    if (it + 1 < nsteps) qnext.load(args, b, hh, qs + 64);
                    query_offset_step(offh, offl, pth, ptl, th, tl, qs > ks, g0 + 7 * 64);
                    mbar_arrive(bFull + 8 * stage);
                }
            },
            [&](int64_t j) {
                const int ps = (int)(j % NST);
                float *g0 = sStg + ps * 8 * 64;
                split_convert_xy<D, 128>(aSt + ps * 4 * T, g0 + 5 * 64, g0 + 6 * 64, pt);
                mbar_arrive(bFull + 8 * ps);
            });
        return;
    }

    /* ---- consumers: K and V of the key tile (split), the key block's gate terms ---- */
    setmaxnreg_inc<Cfg::CONS_REGS>();
    const int tid = (int)threadIdx.x;
    split_copy_xy<D, 256>(aK, gk, tk.ss, gv, tv.ss, ks, S, tid); /* aV = aK + 2T */
    cp_async_commit();
    if (warp == 0)
        gate_block_terms(bh_ptr<float>(tf, b, hh), tf.ss, bh_ptr<float>(ti, b, hh), ti.ss, ks, S, sKh, sKl, sKi);
    cp_async_wait<0>();
    split_convert_xy<D, 256>(aK, sKI, sVI, tid);
    fence_proxy_async();
    named_sync(2, 256);

    /* BOTH (D = 64: dK and dV fit one warpgroup's registers): warpgroup w takes query rows [32 w, 32 w + 32) of every
     * block and accumulates dK, dV and di for all 64 keys (merged at the end); else warpgroup 0 accumulates dV and
     * warpgroup 1 dK and di, each over all 64 rows of a block in two halves (S^T is formed by both) */
    constexpr bool BOTH = D <= 64;
    constexpr int NA = BOTH ? 2 : 1; /* accumulators: dV in acc[0], dK in acc[NA - 1] */
    const bool do_dk = BOTH || wgi == 1, do_dv = BOTH || wgi == 0;
    const int wr0 = (warp & 3) * 16; /* this warp's keys within the tile: rows g, g + 8 of its m16 block */
    float acc[NA][1][D / 8][4];
#pragma unroll
    for (int a = 0; a < NA; ++a)
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[a][0][n][e] = 0.0f;
    float esc[NA][2];
#pragma unroll
    for (int a = 0; a < NA; ++a) esc[a][0] = esc[a][1] = -126.0f;
    float dih[2] = {0.0f, 0.0f}, dil[2] = {0.0f, 0.0f};
    const float scale = args.scale;

    for (int64_t it = 0; it < nsteps; ++it) {
        const int stage = (int)(it % NST);
        const int64_t qs = ks + it * 64;
        const uint32_t st0 = aSt + stage * 4 * T;
        const float *g0 = sStg + stage * 8 * 64;
        const float *cQh = g0, *cQl = g0 + 64, *cMt = g0 + 128, *cInv = g0 + 192, *cDel = g0 + 256;
        mbar_wait(bFull + 8 * stage, (uint32_t)((it / NST) & 1));
        fence_proxy_async();

        const float oh = g0[7 * 64], ol = g0[7 * 64 + 1];
        float kgh[2], kgl[2], kinv[2], vinv[2];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int j = wr0 + g + 8 * rr;
            cgate_key(sKh[j], sKl[j], sKi[j], oh, ol, kgh[rr], kgl[rr]);
            kinv[rr] = sKI[j];
            vinv[rr] = sVI[j];
        }
#pragma unroll 1
        for (int hf = BOTH ? wgi : 0; hf < (BOTH ? wgi + 1 : 2); ++hf) {
            const uint32_t qo = hf * 32 * 128; /* the half's first row within the 64-row tiles */
            /* S^T = K Q^T (keys as rows) */
            float s[1][4][4], c[1][4][4], s2[1][4][4], dp[1][4][4];
            float(&sacc)[16] = reinterpret_cast<float(&)[16]>(s);
            float(&cacc)[16] = reinterpret_cast<float(&)[16]>(c);
            float(&s2acc)[16] = reinterpret_cast<float(&)[16]>(s2);
            float(&dacc)[16] = reinterpret_cast<float(&)[16]>(dp);
            split_score_wait<32, D, 64, 64, false>(sacc, s2acc, cacc, aK, aK + T, st0 + qo, st0 + T + qo);
            if (do_dk) { /* dP^T = V dh^T */
                split_score_wait<32, D, 64, 64, false>(dacc, s2acc, cacc, aV, aV + T, st0 + 2 * T + qo, st0 + 3 * T + qo);
            }
            /* the true S^T, dP^T (same operation order as the dQ kernel); the columns' (query rows') inverse scales of
             * the second products' B operands: q (dK) and dh (dV) */
            float cs[4][2], ds[4][2];
            tc::load_key_row<32>(cs, g0 + 5 * 64 + hf * 32, q4);
            tc::load_key_row<32>(ds, g0 + 6 * 64 + hf * 32, q4);
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[0][n][e] = __fmul_rn(__fmul_rn(s[0][n][e], kinv[e >> 1]), cs[n][e & 1]);
                    if (do_dk) dp[0][n][e] = __fmul_rn(__fmul_rn(dp[0][n][e], vinv[e >> 1]), ds[n][e & 1]);
                }
            /* s -> (C/n)^T / dh's scale (dV), dp -> P^T / q's scale (dK) */
            float amx[NA][2];
#pragma unroll
            for (int a = 0; a < NA; ++a) amx[a][0] = amx[a][1] = 0.0f;
#if !defined(MLSTM_F32_M_PARTIAL) || !defined(MLSTM_F32_FULL_BLOCKS)
#error "tile_config.h sets MLSTM_F32_M_PARTIAL and MLSTM_F32_FULL_BLOCKS"
#endif
#if MLSTM_F32_M_PARTIAL
            float mpart[2] = {0.0f, 0.0f};
#endif
            /* masked: the diagonal block or one reaching past S (else every pair j <= t < S) */
            auto elems = [&](auto masked) {
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int rr = e >> 1, tl = hf * 32 + n * 8 + 2 * q4 + (e & 1);
                    const int64_t t = qs + tl, j = ks + wr0 + g + 8 * rr;
                    const float inv = cInv[tl];
                    const bool valid = decltype(masked)::value ? (j <= t && t < S) : true;
                    const float d = tc32::bwd_dprime(valid, cQh[tl], cQl[tl], kgh[rr], kgl[rr], cMt[tl]);
                    const float sv = s[0][n][e];
                    if (do_dk) {
                        const float p = tc32::bwd_p(dp[0][n][e], cDel[tl], inv, d);
#if MLSTM_F32_M_PARTIAL
                        mpart[rr] += m_elem(p, sv, scale);
#else
                        cadd(dih[rr], dil[rr], m_elem(p, sv, scale), 0.0f);
#endif
                        const float x = p * cs[n][e & 1];
                        dp[0][n][e] = x;
                        amx[NA - 1][rr] = fmaxf(amx[NA - 1][rr], fabsf(x));
                    }
                    if (do_dv) {
                        const float x = (d != 0.0f ? sv * scale * d * inv : 0.0f) * ds[n][e & 1];
                        s[0][n][e] = x;
                        amx[0][rr] = fmaxf(amx[0][rr], fabsf(x));
                    }
                }
            };
#if MLSTM_F32_FULL_BLOCKS
            if (it > 0 && qs + 64 <= S)
                elems(std::false_type{});
            else
#endif
                elems(std::true_type{});
#if MLSTM_F32_M_PARTIAL
            if (do_dk) {
                cadd(dih[0], dil[0], mpart[0], 0.0f);
                cadd(dih[1], dil[1], mpart[1], 0.0f);
            }
#endif
            /* dV += ((C/n)^T / dh's scale) dh', dK += (P^T / q's scale) Q' over the half's query rows; x is s or
             * dp as a fixed array at each call (a run-time choice between them would select per element) */
            auto second = [&](float (&x)[1][4][4], int a, bool is_dk) {
                uint32_t ah[2][4], al[2][4];
                split_p_frags(x[0], amx[a], esc[a], acc[a][0], ah, al);
                const uint32_t bB = (is_dk ? st0 : st0 + 2 * T) + qo;
                split_rs_wait<D, 2, 64>(reinterpret_cast<float(&)[D / 2]>(acc[a]), ah, al, bB, bB + T);
            };
            if (BOTH) {
                second(s, 0, false);
                second(dp, NA - 1, true);
            } else if (do_dk) {
                second(dp, 0, true);
            } else {
                second(s, 0, false);
            }
        }
        mbar_arrive(bEmpty + 8 * stage);
    }

    /* BOTH: warpgroup 1's partial dK, dV (with their exponents) and di sums into warpgroup 0, through the idle stages */
    if constexpr (BOTH) {
        named_sync(2, 256);
        float *buf = reinterpret_cast<float *>(smem + Cfg::ST_OFF);
        float *bO = buf, *bH = bO + 2 * 64 * D, *bL = bH + 64 * 4, *bE = bL + 64 * 4; /* bE [2][64] */
        if (wgi == 1) {
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                const int r = wr0 + g + 8 * rr;
#pragma unroll
                for (int a = 0; a < 2; ++a) {
#pragma unroll
                    for (int n = 0; n < D / 8; ++n)
                        *reinterpret_cast<float2 *>(bO + (a * 64 + r) * D + n * 8 + 2 * q4) =
                            make_float2(acc[a][0][n][rr * 2], acc[a][0][n][rr * 2 + 1]);
                    if (q4 == 0) bE[a * 64 + r] = esc[a][rr];
                }
                bH[r * 4 + q4] = dih[rr];
                bL[r * 4 + q4] = dil[rr];
            }
        }
        named_sync(2, 256);
        if (wgi == 1) return;
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int r = wr0 + g + 8 * rr;
#pragma unroll
            for (int a = 0; a < 2; ++a) {
                const float e1 = bE[a * 64 + r], ee = fmaxf(esc[a][rr], e1);
                const float f0 = exp2f(esc[a][rr] - ee), f1 = exp2f(e1 - ee);
                esc[a][rr] = ee;
#pragma unroll
                for (int n = 0; n < D / 8; ++n) {
                    const float2 y = *reinterpret_cast<const float2 *>(bO + (a * 64 + r) * D + n * 8 + 2 * q4);
                    acc[a][0][n][rr * 2] = acc[a][0][n][rr * 2] * f0 + y.x * f1;
                    acc[a][0][n][rr * 2 + 1] = acc[a][0][n][rr * 2 + 1] * f0 + y.y * f1;
                }
            }
            cadd(dih[rr], dil[rr], bH[r * 4 + q4], bL[r * 4 + q4]);
        }
    }

    /* epilogue: rows = keys ks + wr0 + g (+8) */
    const TArg &tdk = args.t[MLSTM_TENSOR_DK], &tdv = args.t[MLSTM_TENSOR_DV];
#pragma unroll
    for (int a = 0; a < NA; ++a) {
        const bool is_dk = a == NA - 1 && do_dk;
        float *gout = is_dk ? bh_ptr<float>(tdk, b, hh) : bh_ptr<float>(tdv, b, hh);
        const int64_t oss = is_dk ? tdk.ss : tdv.ss;
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int64_t j = ks + wr0 + g + 8 * rr;
            const float f = exp2f(esc[a][rr]) * (is_dk ? scale : 1.0f);
            if (j < S) {
#pragma unroll
                for (int n = 0; n < D / 8; ++n)
                    *reinterpret_cast<float2 *>(gout + j * oss + n * 8 + 2 * q4) =
                        make_float2(acc[a][0][n][rr * 2] * f, acc[a][0][n][rr * 2 + 1] * f);
            }
        }
    }
    if (do_dk) {
        const TArg &tdi = args.t[MLSTM_TENSOR_DI], &tdq = args.t[MLSTM_TENSOR_DQ];
        float *gdi = bh_ptr<float>(tdi, b, hh), *gdq = bh_ptr<float>(tdq, b, hh);
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float h = dih[rr], l = dil[rr];
#pragma unroll
            for (int x = 1; x < 4; x <<= 1) { /* over the 4 column lanes q4 */
                const float yh = __shfl_xor_sync(0xffffffffu, h, x), yl = __shfl_xor_sync(0xffffffffu, l, x);
                cadd(h, l, yh, yl);
            }
            cnorm(h, l);
            const int64_t j = ks + wr0 + g + 8 * rr;
            if (q4 == 0 && j < S) {
                gdi[j * tdi.ss] = h;
                gdq[j * tdq.ss] = l; /* read (then overwritten) by the dQ kernel, launched after */
            }
        }
    }
#endif
}

/* ---- dQ: 64 query rows per CTA; each stage one 64-key block, consumer warpgroup w on its keys [32 w, 32 w + 32) ---- */
template <int D, int NST>
struct BwdDqF32Cfg {
    static constexpr int NT = 384;
    static constexpr int PROD_REGS = D >= 128 ? 72 : 56, CONS_REGS = D >= 128 ? 216 : 224;
    static_assert(ws_regs_fit<PROD_REGS, CONS_REGS>, "register split");
    static constexpr int T_BYTES = 64 * D * 2;
    static constexpr int ST_OFF = 4 * T_BYTES;               /* Q hi, Q lo, dh hi, dh lo; then stages */
    static constexpr int G_OFF = ST_OFF + NST * 4 * T_BYTES;    /* stage: K hi, K lo, V hi, V lo (64 keys) */
    /* floats: sQh, sQl, sMt, sInv, sDel, sQI, sDI, sE [64], sF [2][64]; [NST][4][64]: sGh, sGl, sKI, sVI */
    static constexpr int G_FLOATS = 10 * 64 + NST * 4 * 64;
    static constexpr int BAR_OFF = G_OFF + G_FLOATS * 4;
    static constexpr int SMEM = BAR_OFF + 16 * NST + 1024;
    static_assert(T_BYTES % 1024 == 0 && BAR_OFF % 8 == 0 && NST >= 2, "alignment, stages");
    static_assert((64 * D + 64 * 4 * 2 + 64) * 4 <= NST * 4 * T_BYTES, "merge buffer in the stages");
    static_assert(SMEM <= 232448, "shared memory per block");
};

template <int D, int NST>
__global__ void __launch_bounds__(384, 1) mlstm_bwd_dq_wgmma_f32_kernel(const __grid_constant__ KArgs args)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap();
#else
    using Cfg = BwdDqF32Cfg<D, NST>;
    constexpr int T = Cfg::T_BYTES;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char *smem = smem_aligned_1024(smem_raw);
    const uint32_t base = smem_u32(smem);
    const uint32_t aQ = base, aDh = base + 2 * T, aSt = base + Cfg::ST_OFF;
    float *sQh = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sQl = sQh + 64, *sMt = sQl + 64, *sInv = sMt + 64, *sDel = sInv + 64, *sQI = sDel + 64, *sDI = sQI + 64;
    float *sE = sDI + 64, *sF = sE + 64, *sStg = sF + 2 * 64;
    const uint32_t bFull = base + Cfg::BAR_OFF, bEmpty = bFull + 8 * NST;

    const int64_t S = args.S;
    const QueryTile qtl = query_tile(args, 64);
    const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;
    const int64_t kfirst = (min(qs + 63, S - 1) / 64) * 64;
    const int64_t nsteps = kfirst / 64 + 1; /* key blocks kfirst, kfirst - 64, ..., 0 */

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F], &tdh = args.t[MLSTM_TENSOR_DH];
    const TArg &tdq = args.t[MLSTM_TENSOR_DQ];
    const float *gq = bh_ptr<float>(tq, b, hh), *gk = bh_ptr<float>(tk, b, hh), *gv = bh_ptr<float>(tv, b, hh);
    const float *gdh = bh_ptr<float>(tdh, b, hh);
    float *gdq = bh_ptr<float>(tdq, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const int wgi = warp >> 2;

    mbar_init_stages<NST>(bFull, 128 + 32); /* full: every producer thread after its split, the gate warp */
    __syncthreads();

    if (wgi == 2) {
        /* ---- producer: K and V of each key block, split; the gate warp its pair terms ---- */
        setmaxnreg_dec<Cfg::PROD_REGS>();
        const int pt = (int)threadIdx.x - 256;
        float offh = 0.0f, offl = 0.0f;
        const float *gf = bh_ptr<float>(tf, b, hh), *gi = bh_ptr<float>(ti, b, hh);
        CGate64 knext; /* gate warp: the next key block's f and i, loaded a step early */
        if (pt < 32) knext.load(gf, tf.ss, gi, ti.ss, kfirst, S);
        split_producer<NST>(
            nsteps, bEmpty,
            [&](int64_t it, int stage) {
                const int64_t ks = kfirst - it * 64;
                const uint32_t st0 = aSt + stage * 4 * T;
                split_copy_xy<D, 128>(st0, gk, tk.ss, gv, tv.ss, ks, S, pt);
                cp_async_commit();
                if (pt < 32) {
                    float *g0 = sStg + stage * 4 * 64;
                    key_pair_finish(knext, ks, qs, S, offh, offl, g0, g0 + 64);
                    if (ks > 0) knext.load(gf, tf.ss, gi, ti.ss, ks - 64, S);
                    mbar_arrive(bFull + 8 * stage);
                }
            },
            [&](int64_t j) {
                const int ps = (int)(j % NST);
                float *g0 = sStg + ps * 4 * 64;
                split_convert_xy<D, 128>(aSt + ps * 4 * T, g0 + 2 * 64, g0 + 3 * 64, pt);
                mbar_arrive(bFull + 8 * ps);
            });
        return;
    }

    /* ---- consumers: Q and dh (split), query terms, di's residual ---- */
    setmaxnreg_inc<Cfg::CONS_REGS>();
    const int tid = (int)threadIdx.x;
    split_copy_xy<D, 256>(aQ, gq, tq.ss, gdh, tdh.ss, qs, S, tid); /* aDh = aQ + 2T */
    cp_async_commit();
    if (warp == 0) {
        float th, tl;
        tc32::bwd_query_terms(args, b, hh, qs, sQh, sQl, sMt, sInv, sDel, th, tl);
    }
    if (tid >= 64 && tid < 128) /* di's residual (dK/dV kernel), read before this CTA overwrites dq */
        sE[tid - 64] = qs + tid - 64 < S ? gdq[(qs + tid - 64) * tdq.ss] : 0.0f;
    cp_async_wait<0>();
    split_convert_xy<D, 256>(aQ, sQI, sDI, tid);
    fence_proxy_async();
    named_sync(2, 256);

    const int kh0 = wgi * 32;             /* this warpgroup's keys within a block */
    const int tr0 = (warp & 3) * 16;      /* this warp's query rows */
    float qinv[2], dinv[2], rqh[2], rql[2], rmt[2], rinv[2], rdel[2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int t = tr0 + g + 8 * rr;
        qinv[rr] = sQI[t];
        dinv[rr] = sDI[t];
        rqh[rr] = sQh[t];
        rql[rr] = sQl[t];
        rmt[rr] = sMt[t];
        rinv[rr] = sInv[t];
        rdel[rr] = sDel[t];
    }
    float o[1][D / 8][4];
    float(&oacc)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) oacc[i] = 0.0f;
    float esc[2] = {-126.0f, -126.0f};
    float mh[2] = {0.0f, 0.0f}, ml[2] = {0.0f, 0.0f}; /* sum_j M_tj of rows g, g + 8 (compensated) */
    const float scale = args.scale;

    for (int64_t it = 0; it < nsteps; ++it) {
        const int stage = (int)(it % NST);
        const int64_t ks = kfirst - it * 64, k0 = ks + kh0;
        const uint32_t st0 = aSt + stage * 4 * T;
        const float *g0 = sStg + stage * 4 * 64;
        mbar_wait(bFull + 8 * stage, (uint32_t)((it / NST) & 1));
        fence_proxy_async();
        if (k0 <= qs + 63 && k0 < S) { /* warpgroup-uniform: some key of ours is at or before some row */
            float s[1][4][4], c[1][4][4], dp[1][4][4], s2[1][4][4];
            float(&sacc)[16] = reinterpret_cast<float(&)[16]>(s);
            float(&cacc)[16] = reinterpret_cast<float(&)[16]>(c);
            float(&dacc)[16] = reinterpret_cast<float(&)[16]>(dp);
            float(&s2acc)[16] = reinterpret_cast<float(&)[16]>(s2);
            split_score_wait<32, D, 64, 64, true>(sacc, s2acc, cacc, aQ, aQ + T, st0 + kh0 * 128, st0 + T + kh0 * 128);
            float kc[4][2];
            tc::load_key_row<32>(kc, g0 + 2 * 64 + kh0, q4);
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    s[0][n][e] = __fmul_rn(__fmul_rn(s[0][n][e], kc[n][e & 1]), qinv[e >> 1]);
            split_score_wait<32, D, 64, 64, true>(dacc, s2acc, cacc, aDh, aDh + T, st0 + 2 * T + kh0 * 128,
                                             st0 + 3 * T + kh0 * 128);
            float vc[4][2];
            tc::load_key_row<32>(vc, g0 + 3 * 64 + kh0, q4);
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    dp[0][n][e] = __fmul_rn(__fmul_rn(dp[0][n][e], vc[n][e & 1]), dinv[e >> 1]);

            float amx[2] = {0.0f, 0.0f};
#if MLSTM_F32_M_PARTIAL
            float mpart[2] = {0.0f, 0.0f};
#endif
            auto elems = [&](auto masked) { /* masked: as in the dK/dV kernel */
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int rr = e >> 1, jl = kh0 + n * 8 + 2 * q4 + (e & 1);
                    const int64_t t = qs + tr0 + g + 8 * rr, j = ks + jl;
                    const bool valid = decltype(masked)::value ? (j <= t && t < S) : true;
                    const float d = tc32::bwd_dprime(valid, rqh[rr], rql[rr], g0[jl], g0[64 + jl], rmt[rr]);
                    const float p = tc32::bwd_p(dp[0][n][e], rdel[rr], rinv[rr], d);
#if MLSTM_F32_M_PARTIAL
                    mpart[rr] += m_elem(p, s[0][n][e], scale);
#else
                    cadd(mh[rr], ml[rr], m_elem(p, s[0][n][e], scale), 0.0f);
#endif
                    const float x = p * kc[n][e & 1]; /* dQ += (P / k's scale) K' */
                    s[0][n][e] = x;
                    amx[rr] = fmaxf(amx[rr], fabsf(x));
                }
            };
#if MLSTM_F32_FULL_BLOCKS
            if (k0 + 31 <= qs && qs + 64 <= S)
                elems(std::false_type{});
            else
#endif
                elems(std::true_type{});
#if MLSTM_F32_M_PARTIAL
            cadd(mh[0], ml[0], mpart[0], 0.0f);
            cadd(mh[1], ml[1], mpart[1], 0.0f);
#endif
            uint32_t ah[2][4], al[2][4];
            split_p_frags(s[0], amx, esc, o[0], ah, al);
            split_rs_wait<D, 2, 64>(oacc, ah, al, st0 + kh0 * 128, st0 + T + kh0 * 128);
        }
        mbar_arrive(bEmpty + 8 * stage);
    }

    /* merge warpgroup 1 into 0 through the (now idle) stages: dQ (per row exponent), the M sums */
    named_sync(2, 256);
    float *buf = reinterpret_cast<float *>(smem + Cfg::ST_OFF);
    float *bO = buf, *bH = bO + 64 * D, *bL = bH + 64 * 4, *bE = bL + 64 * 4;
    if (wgi == 1) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int r = tr0 + g + 8 * rr;
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
                *reinterpret_cast<float2 *>(bO + r * D + n * 8 + 2 * q4) = make_float2(o[0][n][rr * 2], o[0][n][rr * 2 + 1]);
            bH[r * 4 + q4] = mh[rr];
            bL[r * 4 + q4] = ml[rr];
            if (q4 == 0) bE[r] = esc[rr];
        }
    }
    named_sync(2, 256);
    if (wgi == 1) return;
    const TArg &tdi = args.t[MLSTM_TENSOR_DI], &tdf = args.t[MLSTM_TENSOR_DF];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int r = tr0 + g + 8 * rr;
        const float e1 = bE[r], ee = fmaxf(esc[rr], e1);
        const float f0 = exp2f(esc[rr] - ee), f1 = exp2f(e1 - ee), up = exp2f(ee) * scale;
        const int64_t t = qs + r;
        if (t < S) {
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                const float2 y = *reinterpret_cast<const float2 *>(bO + r * D + n * 8 + 2 * q4);
                *reinterpret_cast<float2 *>(gdq + t * tdq.ss + n * 8 + 2 * q4) =
                    make_float2((o[0][n][rr * 2] * f0 + y.x * f1) * up, (o[0][n][rr * 2 + 1] * f0 + y.y * f1) * up);
            }
        }
        float h = mh[rr], l = ml[rr];
        cadd(h, l, bH[r * 4 + q4], bL[r * 4 + q4]);
#pragma unroll
        for (int x = 1; x < 4; x <<= 1) { /* over the 4 column lanes q4 */
            const float yh = __shfl_xor_sync(0xffffffffu, h, x), yl = __shfl_xor_sync(0xffffffffu, l, x);
            cadd(h, l, yh, yl);
        }
        if (q4 == 0) df_row_terms(sF, r, qs, S, h, l, bh_ptr<float>(tdi, b, hh), tdi.ss, sE[r]);
    }
    named_sync(4, 128);
    if (threadIdx.x == 0) df_tile_suffix(sF, bh_ptr<float>(tdf, b, hh), tdf.ss, qs, S);
#endif
}

} // namespace wg
} // namespace mlstm
