/* kernel_emu: stand-in for <cuda_bf16.h> when a kernel header is compiled for the host CPU: bfloat16 (the top 16 bits
 * of an f32) with round-to-nearest-even conversion from f32 (NaN kept quiet) and the exact one back; __nv_bfloat162
 * is two of them packed little-endian (the first argument in the low 16 bits). */
#pragma once
#include <cstdint>
#include <cstring>
#include <cuda_runtime.h> /* float2 */

struct __nv_bfloat16 { unsigned short x; };
struct __nv_bfloat162 { __nv_bfloat16 a, b; }; /* a: low half */

inline unsigned short emu_f32_to_bf16_bits(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u); /* NaN */
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); /* ties to even; overflow carries to inf */
}
inline float __bfloat162float(__nv_bfloat16 h)
{
    const uint32_t u = (uint32_t)h.x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{emu_f32_to_bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi)
{
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return float2{__bfloat162float(v.a), __bfloat162float(v.b)}; }
