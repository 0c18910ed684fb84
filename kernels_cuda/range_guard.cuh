/* libmlstm CUDA kernels: the f16 range guard of the tensor-core path. The kernels round tiles of f32 values
 * (C, C/n, P) to the storage type before the second product; f16 stops at 65504, so large inputs (q, k ~ 1e3 and
 * up) would overflow those tiles although every output fits. Each accumulator row therefore carries a power-of-two
 * exponent esc (starting at 0): its tile entries are scaled by 2^-esc (folded into the exponent of D'), esc grows
 * when an entry would exceed 2^14, the row's accumulators are rescaled by the exact power of two, and the
 * epilogue multiplies by 2^esc. bf16 has f32's range and skips all of it (compile time). */
#pragma once

#include <type_traits>
#include <cuda_fp16.h>
#include "common.cuh"

namespace mlstm {
namespace tc {

template <typename T> struct NeedsRangeGuard : std::is_same<T, __half> {};

constexpr int RANGE_GUARD_LOG2 = 14; /* largest tile entry after a raise: 2^14 (f16 max 65504 ~ 2^16) */

/* mx[r]: this lane's largest |entry| of row r in the tile just computed (already scaled by 2^-esc[r]). Returns
 * true, the same in every lane of the warp, when some row needs a raise; then esc[r] grew by k_r >= 0 and
 * fac[r] = 2^-k_r, by which the caller multiplies the row's tile entries and accumulators. The four lanes of a
 * quad hold the same rows and agree on k_r. NaN entries never raise (they propagate as they would anyway). */
template <int R>
__device__ __forceinline__ bool range_guard_raise(const float (&mx)[R], float (&esc)[R], float (&fac)[R])
{
    constexpr float LIM = (float)(1 << RANGE_GUARD_LOG2);
    bool big = false;
#pragma unroll
    for (int r = 0; r < R; ++r) big |= mx[r] > LIM;
    if (!__any_sync(0xffffffffu, big)) return false;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float m = mx[r];
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        int k = 0;
        if (m > LIM) /* m is a normal float >= 2^14: its exponent field is floor(log2 m) */
            k = ((__float_as_int(m) >> 23) & 0xff) - 127 + 1 - RANGE_GUARD_LOG2;
        fac[r] = exp2f((float)-k);
        esc[r] += (float)k;
    }
    return true;
}

} // namespace tc
} // namespace mlstm
