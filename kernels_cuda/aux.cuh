/* libmlstm CUDA kernels: the two light backward passes around the fused kernels.
 *   mlstm_bwd_prep_kernel:  delta_t = sigma_t * (dh_t . h_t) into df (0 in normalizer-detached mode).
 *   mlstm_bwd_gates_kernel: dF = df - di (df holding q.dq), compensated reverse cumsum da, df = da*sigmoid(-f). */
#pragma once

#include "common.cuh"

namespace mlstm {

/* One warp per row t; sigma_t from the signed n and m the forward stored (see api/mlstm.h). */
template <typename T>
__global__ void __launch_bounds__(256) mlstm_bwd_prep_kernel(const __grid_constant__ KArgs args)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * 8 + warp;
    const int64_t S = args.S;
    if (row >= args.B * args.NH * S) return;
    const int64_t bh = row / S, t = row % S;
    const int64_t b = bh / args.NH, hh = bh % args.NH;
    const TArg &th = args.t[MLSTM_TENSOR_H], &tdh = args.t[MLSTM_TENSOR_DH], &tdf = args.t[MLSTM_TENSOR_DF];
    const TArg &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
    float delta = 0.0f;
    if (args.grad_mode == MLSTM_GRAD_EXACT) {
        const float n = bh_ptr<float>(tn, b, hh)[t * tn.ss];
        const float m = bh_ptr<float>(tm, b, hh)[t * tm.ss];
        const float sigma = (n < 0.0f) ? -1.0f : (n > expf(-m) ? 1.0f : 0.0f);
        if (sigma != 0.0f) {
            const T *hr = bh_ptr<T>(th, b, hh) + t * th.ss;
            const T *dr = bh_ptr<T>(tdh, b, hh) + t * tdh.ss;
            float acc = 0.0f;
            for (int64_t d = lane; d < args.DV; d += 32) acc += to_f32(hr[d]) * to_f32(dr[d]);
            delta = sigma * warp_sum(acc);
        }
    }
    if (lane == 0) bh_ptr<float>(tdf, b, hh)[t * tdf.ss] = delta;
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

} // namespace mlstm
