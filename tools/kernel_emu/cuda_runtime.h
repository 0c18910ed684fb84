/* kernel_emu: stand-in for <cuda_runtime.h> when a kernel header is compiled for the host CPU. A tiny SIMT runtime:
 * every CUDA thread of a CTA is a ucontext coroutine run round-robin by one OS thread; __syncthreads and the warp
 * collectives (shuffles, vote, the emulated mma) are barriers at which a coroutine yields to the scheduler. */
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ucontext.h>
#include <algorithm>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __shared__
#define __grid_constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
typedef int cudaError_t;
typedef void *cudaStream_t;

struct uint4 { uint32_t x, y, z, w; };
template <typename T> static inline T __ldg(const T *p) { return *p; }
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
struct EmuIdx { int x, y, z; };

namespace emu {
enum { RUN = 0, WAIT_WARP = 1, WAIT_BLOCK = 2, DONE = 3 };
struct Thr { ucontext_t ctx; int state; EmuIdx idx; char *stack; };
inline Thr *thr = nullptr;
inline int nt = 0, cur = 0;
inline ucontext_t sched;
inline EmuIdx block;
/* warp exchange slots */
inline float xf[32][32];
inline int xi[32][32];
inline uint32_t ma[32][32][4], mb[32][32][2];
inline int64_t xl[32][32];
inline unsigned char *smem_base = nullptr; /* the CTA's dynamic shared memory (shared addresses: offsets from it) */
inline void yield_state(int s)
{
    thr[cur].state = s;
    swapcontext(&thr[cur].ctx, &sched);
}
inline void warp_bar() { yield_state(WAIT_WARP); }
} // namespace emu

#define threadIdx (emu::thr[emu::cur].idx)
#define blockIdx (emu::block)
namespace emu { inline EmuIdx grid_dim{1, 1, 1}; } /* run_grid's CTA count */
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::yield_state(emu::WAIT_BLOCK); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_bar(); }
inline int emu_lane() { return threadIdx.x & 31; }
inline int emu_warp() { return threadIdx.x >> 5; }
inline float __shfl_xor_sync(unsigned, float v, int m)
{
    const int w = emu_warp(), l = emu_lane();
    emu::xf[w][l] = v;
    emu::warp_bar();
    const float r = emu::xf[w][l ^ m];
    emu::warp_bar();
    return r;
}
inline float __shfl_up_sync(unsigned, float v, int d)
{
    const int w = emu_warp(), l = emu_lane();
    emu::xf[w][l] = v;
    emu::warp_bar();
    const float r = l >= d ? emu::xf[w][l - d] : v;
    emu::warp_bar();
    return r;
}
inline float __shfl_down_sync(unsigned, float v, int d)
{
    const int w = emu_warp(), l = emu_lane();
    emu::xf[w][l] = v;
    emu::warp_bar();
    const float r = l + d < 32 ? emu::xf[w][l + d] : v;
    emu::warp_bar();
    return r;
}
inline float __shfl_sync(unsigned, float v, int src)
{
    const int w = emu_warp(), l = emu_lane();
    emu::xf[w][l] = v;
    emu::warp_bar();
    const float r = emu::xf[w][src & 31];
    emu::warp_bar();
    return r;
}
inline int64_t __shfl_sync(unsigned, int64_t v, int src)
{
    const int w = emu_warp(), l = emu_lane();
    emu::xl[w][l] = v;
    emu::warp_bar();
    const int64_t r = emu::xl[w][src & 31];
    emu::warp_bar();
    return r;
}
inline unsigned __ballot_sync(unsigned, bool p)
{
    const int w = emu_warp(), l = emu_lane();
    emu::xi[w][l] = p;
    emu::warp_bar();
    unsigned r = 0;
    for (int k = 0; k < 32; ++k) r |= (emu::xi[w][k] != 0 ? 1u : 0u) << k;
    emu::warp_bar();
    return r;
}
inline int __ffs(unsigned x) { return x ? __builtin_ctz(x) + 1 : 0; }
inline bool __any_sync(unsigned, bool p)
{
    const int w = emu_warp(), l = emu_lane();
    emu::xi[w][l] = p;
    emu::warp_bar();
    bool r = false;
    for (int k = 0; k < 32; ++k) r |= emu::xi[w][k] != 0;
    emu::warp_bar();
    return r;
}
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline uint32_t __float_as_uint(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
