/* libmlstm CUDA kernels: sm_90a warpgroup-MMA building blocks. The shared-memory tile layout wgmma reads with
 * the 128-byte swizzle (columns in blocks of 64 two-byte elements; within a block, row r is 128 bytes at r * 128,
 * its 16-byte chunks XOR-permuted by r % 8), the matrix descriptors for it, the cp.async loader that fills it,
 * and the fence / commit / wait instructions. The asm wrappers of the MMA itself are in wgmma_ops.cuh. */
#pragma once

#include "mma.cuh"
#include "wgmma_ops.cuh"

namespace mlstm {
namespace wg {

/* Byte offset of element (r, c) of an R-row tile of 2-byte elements in the swizzled layout: column block
 * c / 64 at (c / 64) * R * 128. Tiles must start on a 1024-byte boundary (the swizzle repeats every 8 rows). */
template <int R>
__device__ __forceinline__ uint32_t sw128_off(int r, int c)
{
    return (uint32_t)((c >> 6) * R * 128 + r * 128 + ((((c >> 3) & 7) ^ (r & 7)) << 4) + (c & 7) * 2);
}

/* Rows [r0, r0+R) of a (rows x D) global matrix (row stride ld elements, 16-byte aligned rows) into an R-row
 * swizzled tile; rows >= nrows are zero-filled. All NT threads take part. */
template <typename T, int R, int D, int NT>
__device__ __forceinline__ void load_tile_sw128(uint32_t tile, const T *__restrict__ g, int64_t ld, int64_t r0,
                                                int64_t nrows)
{
    constexpr int CH = D / 8; /* 16-byte chunks per row */
    constexpr int TOTAL = R * CH;
#pragma unroll
    for (int it = 0; it < (TOTAL + NT - 1) / NT; ++it) {
        const int idx = it * NT + threadIdx.x;
        if (TOTAL % NT != 0 && idx >= TOTAL) break;
        /* consecutive threads take consecutive 16-byte chunks of a 128-byte row segment: conflict-free stores */
        const int c8 = idx % 8, rest = idx / 8, r = rest % R, cb = rest / R;
        const int64_t gr = r0 + r;
        const bool ok = gr < nrows;
        const T *src = g + (ok ? gr : 0) * ld + cb * 64 + c8 * 8;
        const uint32_t dst = tile + (uint32_t)(cb * R * 128 + r * 128 + ((c8 ^ (r & 7)) << 4));
        cp_async16(dst, src, ok);
    }
}

/* The dynamic shared memory of a wgmma kernel from its first 1024-byte boundary (the swizzle atoms' alignment; the
 * kernels request 1024 bytes more than they use). */
__device__ __forceinline__ unsigned char *smem_aligned_1024(unsigned char *raw)
{
    const uint32_t a = smem_u32(raw);
    return raw + (((a + 1023u) & ~1023u) - a);
}

/* Matrix descriptor of a swizzled tile (PTX ISA, "matrix descriptor"): start address, leading and stride byte
 * offsets (all >> 4), swizzle mode 1 = 128 bytes in bits 62-63.
 * K-major operand (rows = M or N, columns = K; Q and K tiles): SBO = 1024 (next 8 rows), LBO unused (one
 * wgmma's K = 16 stays inside a 64-column block); the k16 slice at column k starts at + (k % 64) * 2 within the
 * block. N-major operand (rows = K, columns = N; the V tile of O += P V): SBO = 1024 (next 8 rows of K),
 * LBO = R * 128 (next block of 64 columns of N); the k16 slice at row k starts at + k * 128. */
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lbo)
{
    return (uint64_t)((addr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFFu) << 16) |
           ((uint64_t)(1024u >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
/* makes this thread's completed generic-proxy shared-memory writes (cp.async included) visible to wgmma */
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/* Keeps the compiler from moving accesses of the accumulators across the asynchronous MMA's issue and wait. */
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

} // namespace wg
} // namespace mlstm
