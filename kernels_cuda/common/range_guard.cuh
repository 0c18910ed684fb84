/* libmlstm CUDA kernels: the f16 range guard of the tensor-core path. The kernels round tiles of f32 values
 * (C, C/n, P) to the storage type before the second product. f16 stops at 65504 and flushes below 2^-24, so large
 * inputs (q, k ~ 1e3 and up) would overflow those tiles and closed input gates (i ~ -30: whole rows ~1e-13) would
 * flush them to zero, although every f32 output (di, df, the accumulators) is representable. Each accumulator row
 * therefore carries a power-of-two exponent esc (starting at 0): its tile entries are scaled by 2^-esc, the row's
 * accumulators hold their sums in the same scale, and the epilogue multiplies by 2^esc. esc grows when an entry
 * would exceed 2^14, and falls once, for a row whose largest entry so far is below 1, so that it lands in
 * [2^9, 2^10); either change rescales the row's accumulators by the exact power of two. Rows whose largest entry
 * lies in [1, 2^14] keep esc = 0 (bitwise the results of an unguarded kernel). bf16 has f32's range and skips all of
 * it (compile time). */
#pragma once

#include <cfloat>
#include <type_traits>
#include <cuda_fp16.h>
#include "common/common.cuh"

namespace mlstm {
namespace tc {

template <typename T> struct NeedsRangeGuard : std::is_same<T, __half> {};

constexpr int RANGE_GUARD_LOG2 = 14;    /* largest tile entry after a raise: < 2^14 (f16 max 65504 ~ 2^16) */
constexpr int RANGE_GUARD_UP_LOG2 = 10; /* a row scaled up: its largest entry so far in [2^9, 2^10) */
/* bounds of esc: 2^-esc <= 2^64 keeps every scaled f32 entry finite (|P| < 2^61 unscaled), 2^esc <= 2^100 the
 * epilogue's factor */
constexpr int RANGE_GUARD_ESC_MIN = -64, RANGE_GUARD_ESC_MAX = 100;

/* mx[r]: this lane's largest |entry| of row r in the tile just computed (already scaled by 2^-esc[r]); hw[r]: the
 * row's largest |entry| so far (same scale; 0 at the start; the caller keeps it with esc). Returns true, the same in
 * every lane of the warp, when some row's exponent changed; then esc[r] changed by k_r and fac[r] = 2^-k_r (1 for the
 * other rows), by which the caller multiplies the row's tile entries and accumulators. The four lanes of a quad
 * hold the same rows and agree on k_r. NaN and infinite entries never change esc (they propagate as they would
 * anyway, without a factor 2^-115 on the row's finite entries). */
template <int R>
__device__ __forceinline__ bool range_guard_update(const float (&mx)[R], float (&hw)[R], float (&esc)[R],
                                                   float (&fac)[R])
{
    constexpr float LIM = (float)(1 << RANGE_GUARD_LOG2);
    bool need = false;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float h = fmaxf(hw[r], mx[r]); /* this lane's part of the row's high-water mark */
        need |= (h > LIM && h <= FLT_MAX) || (mx[r] > 0.0f && h < 1.0f);
        hw[r] = h;
    }
    if (!__any_sync(0xffffffffu, need)) return false;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float m = hw[r];
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        const int ex = ((__float_as_int(m) >> 23) & 0xff) - 127; /* floor(log2 m) for a normal m */
        int k = 0;
        if (m > LIM && m <= FLT_MAX)
            k = ex + 1 - RANGE_GUARD_LOG2;
        else if (m > 0.0f && m < 1.0f)
            k = ex + 1 - RANGE_GUARD_UP_LOG2;
        const int e0 = (int)esc[r];
        k = min(max(k, RANGE_GUARD_ESC_MIN - e0), RANGE_GUARD_ESC_MAX - e0);
        fac[r] = exp2f((float)-k);
        esc[r] = (float)(e0 + k);
        hw[r] = m * fac[r];
    }
    return true;
}

/* 2^-esc of the rows, the factor of the backward's tile entries (exact powers of two, so that the P tiles of the dK/dV
 * and dQ kernels stay the same values up to each row's power of two, and round to T alike) */
template <int R>
__device__ __forceinline__ void range_guard_pw(const float (&esc)[R], float (&pw)[R])
{
#pragma unroll
    for (int r = 0; r < R; ++r) pw[r] = exp2f(-esc[r]);
}

} // namespace tc
} // namespace mlstm
