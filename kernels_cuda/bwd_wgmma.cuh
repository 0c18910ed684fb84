/* libmlstm CUDA kernels: the sm_90a dQ kernel for f16/bf16 storage on warpgroup MMA (wgmma.mma_async, f32
 * accumulation), D in {64, 128, 256}. One CTA = one warpgroup = one 64-row query tile (one aligned block of the gate
 * cumsums, as in the mma.sync dQ kernel of bwd_tc.cuh, whose gate, elementwise and epilogue code it shares, so both
 * produce bitwise the same P); per key tile of BN keys: dP = dH V^T from swizzled shared memory, P in registers,
 * dQ += P K with P as the register operand. K/V double-buffered through cp.async. */
#pragma once

#include "bwd_tc.cuh"
#include "wgmma.cuh"

namespace mlstm {
namespace wg {

template <int D, int BN>
struct DqCfg {
    static constexpr int BM = 64;
    static constexpr int NT = 128;
    static constexpr int H_BYTES = BM * D * 2;
    static constexpr int KV_BYTES = BN * D * 2;
    static constexpr int K_OFF = H_BYTES;
    static constexpr int V_OFF = K_OFF + 2 * KV_BYTES;
    static constexpr int G_OFF = V_OFF + 2 * KV_BYTES; /* floats: sFq[BM], sG[2][BN] */
    static constexpr int SMEM = G_OFF + (BM + 2 * BN) * 4 + 1024; /* + 1024: the base is aligned up at run time */
    static_assert(64 % BN == 0 && BN % 32 == 0 && (BN * 128) % 1024 == 0, "key tile within one 64-block");
};

template <typename T, int D, int BN>
__global__ void __launch_bounds__(128) mlstm_bwd_dq_wgmma_kernel(const __grid_constant__ KArgs args)
{
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* built for an architecture without wgmma: never launched (dispatch.cu) */
#else
    using Cfg = DqCfg<D, BN>;
    constexpr int BM = Cfg::BM, NT = Cfg::NT;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t raw = smem_u32(smem_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    unsigned char *smem = smem_raw + (base - raw);
    const uint32_t aH = base, aK = base + Cfg::K_OFF, aV = base + Cfg::V_OFF;
    float *sFq = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sG = sFq + BM;

    const int64_t S = args.S, BH = args.B * args.NH;
    const int64_t nqt = (S + BM - 1) / BM;
    const int64_t bh = blockIdx.x % BH;
    const int64_t qt = nqt - 1 - (int64_t)(blockIdx.x / BH);
    const int64_t b = bh / args.NH, hh = bh % args.NH;
    const int64_t qs = qt * BM;

    const TArg &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F], &tdh = args.t[MLSTM_TENSOR_DH];
    const T *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh), *gdh = bh_ptr<T>(tdh, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
    const int wr0 = warp * 16;
    constexpr int GW = 3;
    const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN);

    load_tile_sw128<T, BM, D, NT>(aH, gdh, tdh.ss, qs, S);
    load_tile_sw128<T, BN, D, NT>(aK, gk, tk.ss, kt_hi * BN, S);
    load_tile_sw128<T, BN, D, NT>(aV, gv, tv.ss, kt_hi * BN, S);
    cp_async_commit();

    if (warp == 0) {
        GateTile<BM> gt;
        gt.load(gf, tf.ss, nullptr, 0, qs, S);
        float cum[GateTile<BM>::E];
        gt.scan(cum, qs, S);
#pragma unroll
        for (int e = 0; e < GateTile<BM>::E; ++e) sFq[lane * GateTile<BM>::E + e] = cum[e];
    }
    __syncthreads();

    float rb2[2], del[2];
    tc::dq_row_state(args, b, hh, qs, wr0, sFq, rb2, del);

    Comp off = {0.0f, 0.0f};
    GateTile<64> gnext;
    if (warp == GW) {
        gnext.load(gf, tf.ss, gi, ti.ss, (kt_hi * BN) & ~(int64_t)63, S);
        tc::dq_key_gates<BN>(gnext, off, kt_hi * BN, qs, S, sG);
    }

    float adq[D / 8][4];
    float(&acc)[D / 2] = reinterpret_cast<float(&)[D / 2]>(adq);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) acc[i] = 0.0f;
    constexpr bool GUARD = tc::NeedsRangeGuard<T>::value;
    float esc[2] = {0.0f, 0.0f};

    int buf = 0;
    for (int64_t kt = kt_hi; kt >= 0; --kt, buf ^= 1) {
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        const int64_t ks = kt * BN;
        if (kt > 0) {
            const int64_t kn = (kt - 1) * BN;
            load_tile_sw128<T, BN, D, NT>(aK + (buf ^ 1) * Cfg::KV_BYTES, gk, tk.ss, kn, S);
            load_tile_sw128<T, BN, D, NT>(aV + (buf ^ 1) * Cfg::KV_BYTES, gv, tv.ss, kn, S);
            cp_async_commit();
            if (warp == GW) gnext.load(gf, tf.ss, gi, ti.ss, kn & ~(int64_t)63, S);
        }
        const uint32_t cK = aK + buf * Cfg::KV_BYTES, cV = aV + buf * Cfg::KV_BYTES;
        const float *cG = sG + buf * BN;

        float dp[BN / 8][4];
        float(&dacc)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(dp);
        reg_fence(dacc);
        fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const uint32_t koff = (kk & 3) * 32;
            WgmmaSS<T, BN>::run(dacc, desc_sw128(aH + (kk >> 2) * BM * 128 + koff, 16),
                                desc_sw128(cV + (kk >> 2) * BN * 128 + koff, 16), kk > 0);
        }
        commit();
        wait<0>();
        reg_fence(dacc);

        const int lim0 = wr0 + g - (int)(ks - qs);
        float rbs[2] = {rb2[0], rb2[1]};
        if (GUARD) {
            rbs[0] = __fsub_rn(rbs[0], esc[0]);
            rbs[1] = __fsub_rn(rbs[1], esc[1]);
        }
        float mx[2] = {0.0f, 0.0f};
        if (ks + BN - 1 > qs + wr0)
            tc::dq_elementwise<true, GUARD, BN>(dp, cG, rbs, del, lim0, mx);
        else
            tc::dq_elementwise<false, GUARD, BN>(dp, cG, rbs, del, lim0, mx);
        if constexpr (GUARD) {
            float fac[2];
            if (tc::range_guard_raise(mx, esc, fac)) {
                scale_frag_rows(dp, fac);
                scale_frag_rows(adq, fac);
            }
        }
        uint32_t pa[BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            pa[kk][0] = pack2<T>(dp[2 * kk][0], dp[2 * kk][1]);
            pa[kk][1] = pack2<T>(dp[2 * kk][2], dp[2 * kk][3]);
            pa[kk][2] = pack2<T>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
            pa[kk][3] = pack2<T>(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
        }
        reg_fence(acc);
        fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) WgmmaRS<T, D>::run(acc, pa[kk], desc_sw128(cK + kk * 16 * 128, BN * 128), 1);
        commit();
        wait<0>();
        reg_fence(acc);
        if (kt > 0 && warp == GW) tc::dq_key_gates<BN>(gnext, off, (kt - 1) * BN, qs, S, sG + (buf ^ 1) * BN);
    }

    tc::dq_epilogue<T, D, GUARD>(args, b, hh, qs, wr0, adq, esc);
#endif
}

} // namespace wg
} // namespace mlstm
