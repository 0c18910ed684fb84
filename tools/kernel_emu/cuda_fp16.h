/* kernel_emu: stand-in for <cuda_fp16.h> when a kernel header is compiled for the host CPU: an IEEE binary16 __half
 * (bits in x) with round-to-nearest-even conversions from f32 (subnormals, overflow to inf, NaN kept) and exact ones
 * back; __half2 is two halves packed little-endian (the first argument in the low 16 bits). */
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cuda_runtime.h> /* float2 */

struct __half { unsigned short x; };
struct __half2 { __half a, b; }; /* a: low half */

inline unsigned short emu_f32_to_f16_bits(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
    const uint32_t ax = u & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u); /* inf, NaN (quiet) */
    if (ax >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520: the tie above 65504 rounds up, to inf */
    if (ax < 0x38800000u) {                       /* below 2^-14: a subnormal half, steps of 2^-24 */
        const float a = std::fabs(f) * 0x1p24f;   /* exact (power of two) */
        return sign | (unsigned short)std::nearbyint(a); /* ties to even (default rounding mode); 1024 = 2^-14 */
    }
    const uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u); /* round to nearest even at bit 13 (carries into the exponent) */
    return sign | (unsigned short)((r - 0x38000000u) >> 13); /* rebias 127 -> 15 */
}
inline float emu_f16_bits_to_f32(unsigned short h)
{
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v;
    if (e == 0) v = std::ldexp((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = std::ldexp((float)(1024 + m), e - 25);
    return (h & 0x8000) ? -v : v;
}

inline float __half2float(__half h) { return emu_f16_bits_to_f32(h.x); }
inline __half __float2half_rn(float f) { return __half{emu_f32_to_f16_bits(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half_rn(lo), __float2half_rn(hi)}; }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline float2 __half22float2(__half2 v) { return float2{__half2float(v.a), __half2float(v.b)}; }
