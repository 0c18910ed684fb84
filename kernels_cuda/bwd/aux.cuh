/* libmlstm CUDA kernels: the two light backward passes around the fused kernels.
 *   mlstm_bwd_prep_kernel:  delta_t = sigma_t * (dh_t . h_t) into df (0 in normalizer-detached mode; h_t recomputed
 *                           in f32 where the stored one overflowed T).
 *   mlstm_bwd_gates_kernel: dF = df - di (df holding q.dq; on the tensor-core path minus the dK/dV
 *                           kernel's residual, bwd_tc.cuh dkdv_epilogue), compensated reverse cumsum da, df = da*sigmoid(-f).
 *   mlstm_bwd_gates_tiled_kernel (SIMT f32): df holding tile-local suffix sums of dF, adds the later tiles'
 *                           totals (compensated), df = da*sigmoid(-f). */
#pragma once

#include "common/common.cuh"

#ifdef __CUDACC__
#define MLSTM_NOINLINE __noinline__
#else
#define MLSTM_NOINLINE
#endif

namespace mlstm {

/* delta_t / sigma_t for a row whose stored h_t is not finite (the exact h_t lies beyond T's range, so the stored inf
 * carries no value while the exact delta_t is finite): dh_t . h_t with h_t recomputed in f32 from the inputs,
 * h_t = sum_{j<=t} C_tj v_j / (|n_t| + eps), C_tj = scale (q_t . k_j) exp(F_t - F_j + i_j - m_t), F_t - F_j summed
 * (compensated) while walking j down from t. One warp, O(t (DQK + DV)) work: only such rows take it. */
template <typename T>
__device__ MLSTM_NOINLINE float prep_dot_h_recomputed(const KArgs &a, int64_t b, int64_t hh, int64_t t, float m,
                                                      float n)
{
    const int lane = threadIdx.x & 31;
    const TArg &tq = a.t[MLSTM_TENSOR_Q], &tk = a.t[MLSTM_TENSOR_K], &tv = a.t[MLSTM_TENSOR_V];
    const TArg &ti = a.t[MLSTM_TENSOR_I], &tf = a.t[MLSTM_TENSOR_F], &tdh = a.t[MLSTM_TENSOR_DH];
    const T *gq = bh_ptr<T>(tq, b, hh) + t * tq.ss, *gk = bh_ptr<T>(tk, b, hh), *gv = bh_ptr<T>(tv, b, hh);
    const T *gdh = bh_ptr<T>(tdh, b, hh) + t * tdh.ss;
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);
    float dot = 0.0f;
    for (int64_t c0 = 0; c0 < a.DV; c0 += 32) { /* lane: h_t[c0 + lane]; few registers, the rare row pays the passes */
        const int64_t c = c0 + lane;
        float acc = 0.0f, gh = 0.0f, gl = 0.0f; /* (gh, gl): F_t - F_j */
        for (int64_t j = t; j >= 0; --j) {
            if (j < t) cadd(gh, gl, logsigmoid(gf[(j + 1) * tf.ss]), 0.0f);
            const float w = expf(__fadd_rn(__fadd_rn(gh, gi[j * ti.ss] - m), gl)); /* D'_tj */
            if (w == 0.0f) continue; /* warp-uniform */
            const T *kr = gk + j * tk.ss;
            float sd = 0.0f;
            for (int64_t d = lane; d < a.DQK; d += 32) sd = fmaf(to_f32(gq[d]), to_f32(kr[d]), sd);
            const float cw = a.scale * warp_sum(sd) * w;
            if (c < a.DV) acc = fmaf(cw, to_f32(gv[j * tv.ss + c]), acc);
        }
        if (c < a.DV) dot = fmaf(acc, to_f32(gdh[c]), dot);
    }
    return warp_sum(dot) / (fabsf(n) + a.eps);
}

constexpr int PREP_LANES = 8;                  /* lanes per row: 16-byte loads, 4 rows per warp */
constexpr int PREP_ROWS = 256 / PREP_LANES;    /* rows per CTA of 256 threads */

/* (dh_t . h_t) partial sum of one lane: 16-byte vectors (VEC) or elements, every PREP_LANES-th from sub */
template <typename T, bool VEC>
__device__ __forceinline__ float prep_partial(const T *hr, const T *dr, int64_t DV, int sub)
{
    float acc = 0.0f;
    if constexpr (VEC) {
        constexpr int E = 16 / sizeof(T);
        const uint4 *hv = reinterpret_cast<const uint4 *>(hr), *dv = reinterpret_cast<const uint4 *>(dr);
        for (int64_t c = sub; c < DV / E; c += PREP_LANES) {
            const uint4 x = __ldg(hv + c), y = __ldg(dv + c);
            const T *xe = reinterpret_cast<const T *>(&x), *ye = reinterpret_cast<const T *>(&y);
#pragma unroll
            for (int e = 0; e < E; ++e) acc = fmaf(to_f32(xe[e]), to_f32(ye[e]), acc);
        }
    } else {
        for (int64_t d = sub; d < DV; d += PREP_LANES) acc = fmaf(to_f32(hr[d]), to_f32(dr[d]), acc);
    }
    return acc;
}

/* PREP_LANES lanes per row t, every load of the row issued at once (the kernel is latency-bound: one round trip to
 * memory per row); sigma_t from the signed n and m the forward stored (see api/mlstm.h). A row whose dh . h comes
 * out inf or NaN (h overflowed T in the forward) recomputes h_t in f32 (prep_dot_h_recomputed, the whole warp, out of
 * line), so that delta, hence P, stays finite: the gradients then overflow to +-inf only where their exact values do
 * not fit T, and never turn into NaN (an inf delta_t times an underflowed D' factor, or inf - inf in a product).
 * VEC: h and dh rows start on 16-byte boundaries and DV is a whole number of 16-byte vectors. */
template <typename T, bool VEC>
__global__ void __launch_bounds__(256, 4) mlstm_bwd_prep_kernel(const __grid_constant__ KArgs args)
{
    const int lane = threadIdx.x & 31, sub = lane % PREP_LANES;
    const int64_t S = args.S, rows = args.B * args.NH * S;
    const int64_t row = (int64_t)blockIdx.x * PREP_ROWS + threadIdx.x / PREP_LANES;
    const bool live = row < rows;
    const int64_t bh = live ? row / S : 0, t = live ? row % S : 0;
    const int64_t b = bh / args.NH, hh = bh % args.NH;
    const TArg &th = args.t[MLSTM_TENSOR_H], &tdh = args.t[MLSTM_TENSOR_DH], &tdf = args.t[MLSTM_TENSOR_DF];
    const TArg &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
    float delta = 0.0f;
    if (args.grad_mode == MLSTM_GRAD_EXACT) {
        float n = 0.0f, m = 0.0f, acc = 0.0f;
        if (live) {
            n = bh_ptr<float>(tn, b, hh)[t * tn.ss];
            m = bh_ptr<float>(tm, b, hh)[t * tm.ss];
            acc = prep_partial<T, VEC>(bh_ptr<T>(th, b, hh) + t * th.ss, bh_ptr<T>(tdh, b, hh) + t * tdh.ss, args.DV,
                                       sub);
        }
#pragma unroll
        for (int o = PREP_LANES / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        const float sigma = (n < 0.0f) ? -1.0f : (n > expf(-m) ? 1.0f : 0.0f);
        /* rows of this warp whose stored h overflowed: recomputed one after the other by the whole warp */
        unsigned redo = __ballot_sync(0xffffffffu, live && sigma != 0.0f && !(fabsf(acc) < INFINITY) && sub == 0);
        while (redo) {
            const int src = __ffs(redo) - 1;
            redo &= redo - 1;
            const int64_t rt = __shfl_sync(0xffffffffu, t, src), rb = __shfl_sync(0xffffffffu, b, src);
            const int64_t rh = __shfl_sync(0xffffffffu, hh, src);
            const float rm = __shfl_sync(0xffffffffu, m, src), rn = __shfl_sync(0xffffffffu, n, src);
            const float r = prep_dot_h_recomputed<T>(args, rb, rh, rt, rm, rn);
            if (lane / PREP_LANES == src / PREP_LANES) acc = r;
        }
        delta = sigma != 0.0f ? sigma * acc : 0.0f;
    }
    if (live && sub == 0) bh_ptr<float>(tdf, b, hh)[t * tdf.ss] = delta;
}

constexpr int GATES_NT = 512;
constexpr int GATES_ITEMS = 4;

/* One CTA per (b, h). Chunks of GATES_NT*GATES_ITEMS positions walked from the end; within a chunk a block
 * suffix scan in f32, across chunks a compensated (hi, lo) carry. */
__global__ void __launch_bounds__(GATES_NT) mlstm_bwd_gates_kernel(const __grid_constant__ KArgs args)
{
    __shared__ float sw[GATES_NT / 32];
    const int64_t bh = blockIdx.x;
    const int64_t b = bh / args.NH, hh = bh % args.NH;
    const int64_t S = args.S;
    const TArg &tdf = args.t[MLSTM_TENSOR_DF], &tdi = args.t[MLSTM_TENSOR_DI], &tf = args.t[MLSTM_TENSOR_F];
    float *gdf = bh_ptr<float>(tdf, b, hh);
    const float *gdi = bh_ptr<float>(tdi, b, hh), *gf = bh_ptr<float>(tf, b, hh);
    constexpr int CH = GATES_NT * GATES_ITEMS;
    Comp carry = {0.0f, 0.0f};
    for (int64_t c = (S - 1) / CH; c >= 0; --c) {
        const int64_t base = c * CH + threadIdx.x * GATES_ITEMS;
        float loc[GATES_ITEMS];
        float run = 0.0f;
#pragma unroll
        for (int e = GATES_ITEMS - 1; e >= 0; --e) {
            const int64_t u = base + e;
            const float v = (u < S) ? gdf[u * tdf.ss] - gdi[u * tdi.ss] : 0.0f;
            run += v;
            loc[e] = run;
        }
        float tot;
        const float ex = block_suffix_excl<GATES_NT / 32>(run, sw, &tot);
#pragma unroll
        for (int e = 0; e < GATES_ITEMS; ++e) {
            const int64_t u = base + e;
            if (u < S) {
                const float da = ((loc[e] + ex) + carry.lo) + carry.hi;
                gdf[u * tdf.ss] = da * sigmoid_neg(gf[u * tf.ss]);
            }
        }
        comp_add(carry, tot);
    }
}

constexpr int GATES_TILE = DF_TILE; /* the dQ kernels' df tiles (common.cuh; simt::TB, checked in launch_impl.cuh) */
constexpr int GATES_TNT = 256; /* threads; also the tiles per chunk */

/* One CTA per (b, h), for the SIMT f32 backward: the dQ kernel left in df, per 64-row tile, the suffix sums
 * dF_u + ... + dF_(end of tile) of dF_t = sum_j M_tj - di_t, so df at a tile's first row is the tile's total.
 * da_u = df_u + (totals of all later tiles), the latter a compensated (hi, lo) suffix scan: chunks of
 * GATES_TNT tiles walked from the end, warp 0 scanning a chunk (8 tiles a lane, then across lanes), a
 * compensated carry across chunks. Then df_u := da_u * sigmoid(-f_u), in place. */
__global__ void __launch_bounds__(GATES_TNT) mlstm_bwd_gates_tiled_kernel(const __grid_constant__ KArgs args)
{
    __shared__ float sT[GATES_TNT], sLh[GATES_TNT], sLl[GATES_TNT];
    constexpr int PER = GATES_TNT / 32;
    const int64_t bh = blockIdx.x;
    const int64_t b = bh / args.NH, hh = bh % args.NH;
    const int64_t S = args.S;
    const TArg &tdf = args.t[MLSTM_TENSOR_DF], &tf = args.t[MLSTM_TENSOR_F];
    float *gdf = bh_ptr<float>(tdf, b, hh);
    const float *gf = bh_ptr<float>(tf, b, hh);
    const int tid = threadIdx.x, lane = tid & 31;
    const int64_t ntiles = (S + GATES_TILE - 1) / GATES_TILE;
    float ch = 0.0f, cl = 0.0f; /* carry: totals of the tiles after the current chunk (warp 0) */
    for (int64_t c = (ntiles - 1) / GATES_TNT; c >= 0; --c) {
        const int64_t w = c * GATES_TNT + tid;
        sT[tid] = (w < ntiles) ? gdf[w * GATES_TILE * tdf.ss] : 0.0f;
        __syncthreads();
        if (tid < 32) {
            float eh[PER], el[PER], h = 0.0f, l = 0.0f;
#pragma unroll
            for (int e = PER - 1; e >= 0; --e) { /* exclusive suffix within the lane */
                eh[e] = h;
                el[e] = l;
                cadd(h, l, sT[lane * PER + e], 0.0f);
            }
            float ih = h, il = l; /* inclusive suffix across lanes */
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const float yh = __shfl_down_sync(0xffffffffu, ih, o), yl = __shfl_down_sync(0xffffffffu, il, o);
                if (lane + o < 32) cadd(ih, il, yh, yl);
            }
            float xh = __shfl_down_sync(0xffffffffu, ih, 1), xl = __shfl_down_sync(0xffffffffu, il, 1);
            const float toth = __shfl_sync(0xffffffffu, ih, 0), totl = __shfl_sync(0xffffffffu, il, 0);
            if (lane == 31) xh = xl = 0.0f;
            cadd(xh, xl, ch, cl);
#pragma unroll
            for (int e = 0; e < PER; ++e) {
                float lh = xh, ll = xl;
                cadd(lh, ll, eh[e], el[e]);
                cnorm(lh, ll);
                sLh[lane * PER + e] = lh;
                sLl[lane * PER + e] = ll;
            }
            cadd(ch, cl, toth, totl);
        }
        __syncthreads();
        const int64_t u0 = c * GATES_TNT * GATES_TILE;
        const int64_t u1 = (u0 + (int64_t)GATES_TNT * GATES_TILE < S) ? u0 + (int64_t)GATES_TNT * GATES_TILE : S;
        for (int64_t u = u0 + tid; u < u1; u += GATES_TNT) {
            const int x = (int)((u - u0) / GATES_TILE);
            float e;
            const float s = two_sum(sLh[x], gdf[u * tdf.ss], e);
            const float da = __fadd_rn(s, __fadd_rn(e, sLl[x]));
            gdf[u * tdf.ss] = da * sigmoid_neg(gf[u * tf.ss]);
        }
        __syncthreads();
    }
}

} // namespace mlstm
