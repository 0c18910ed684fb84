/* kernel_emu: stand-in for <cuda_fp16.h> (declarations the shared headers name; never executed). */
#pragma once
struct __half { unsigned short x; };
struct __half2 { __half a, b; };
inline float __half2float(__half) { return 0.0f; }
inline __half __float2half_rn(float) { return __half{0}; }
inline __half2 __floats2half2_rn(float, float) { return __half2{}; }
