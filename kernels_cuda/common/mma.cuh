/* libmlstm CUDA kernels: tensor-core building blocks for sm_80+ (mma.sync m16n8k16 with f32 accumulation,
 * ldmatrix, cp.async) and the swizzled shared-memory tile layout the fused kernels share.
 * Fragment layouts (PTX ISA, mma.m16n8k16): accumulator c0,c1 at (row g, cols 2q, 2q+1), c2,c3 at row g+8,
 * with g = lane/4, q = lane%4. */
#pragma once

#include "common/common.cuh"

namespace mlstm {

/* ---- shared-memory tiles: rows of D elements of 2 bytes, 16-byte chunks XOR-swizzled by (row % 8) ----
 * so that the 8 row addresses of one ldmatrix 8x8 matrix fall into 8 distinct bank groups. D >= 64. */
template <int D>
__device__ __forceinline__ int swz(int row, int col) /* element offset of (row, col) */
{
    return row * D + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(uint32_t saddr, const void *gmem, bool valid)
{
    const int n = valid ? 16 : 0; /* 0: zero-fill the 16 bytes, read nothing */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid)
{
    cp_async16(smem_u32(smem), gmem, valid);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

/* Loads rows [r0, r0+R) of a (rows x cols) global matrix (row stride ld elements, 16-byte aligned rows, cols <= D a
 * multiple of 8) into a swizzled smem tile of R rows x D columns; rows >= nrows and columns >= cols are zero-filled.
 * All NT threads take part. */
template <typename T, int R, int D, int NT>
__device__ __forceinline__ void load_tile_async(T *sm, const T *__restrict__ g, int64_t ld, int64_t r0,
                                                int64_t nrows, int64_t cols = D)
{
    constexpr int CH = D / 8;    /* 16-byte chunks per row */
    constexpr int RPP = NT / CH; /* rows per pass: each thread keeps one column chunk c of rows rr + RPP j */
    static_assert(NT % CH == 0 && R % RPP == 0, "whole passes of NT / CH rows");
    const int c = (int)threadIdx.x % CH, rr = (int)threadIdx.x / CH;
    const int64_t left = cols > c * 8 ? nrows - r0 - rr : 0; /* row rr + RPP j exists iff RPP j < left */
    const T *p = g + (left > 0 ? r0 + rr : 0) * ld + c * 8; /* advances by adds */
#pragma unroll
    for (int j = 0; j < R / RPP; ++j) {
        const bool ok = (int64_t)j * RPP < left;
        cp_async16(sm + swz<D>(rr + j * RPP, c * 8), ok ? p : g, ok);
        p += (int64_t)RPP * ld;
    }
}

__device__ __forceinline__ void ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

template <typename T> struct MmaOp;
template <> struct MmaOp<__half> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
template <> struct MmaOp<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

/* c[0..3] += A B0 and c[4..7] += A B1, with B0, B1 the two n8 halves of an ldmatrix.x4 B fragment b4 (16 columns) and
 * c two consecutive accumulator tiles (acc[2 n], acc[2 n + 1]) */
template <typename T> __device__ __forceinline__ void mma_n16(float *c, const uint32_t *a, const uint32_t *b4)
{
    MmaOp<T>::run(c, a, b4[0], b4[1]);
    MmaOp<T>::run(c + 4, a, b4[2], b4[3]);
}

/* The A fragment of k16 slice kk taken from an accumulator tile x of n8 blocks (blocks 2 kk and 2 kk + 1), rounded
 * to T: the C layout of one product is the A layout of the next (rows g, g + 8; columns 2 q + {0, 1}, + 8). */
template <typename T, int N>
__device__ __forceinline__ void acc_to_a(const float (&x)[N][4], int kk, uint32_t (&a)[4])
{
    a[0] = pack2<T>(x[2 * kk][0], x[2 * kk][1]);
    a[1] = pack2<T>(x[2 * kk][2], x[2 * kk][3]);
    a[2] = pack2<T>(x[2 * kk + 1][0], x[2 * kk + 1][1]);
    a[3] = pack2<T>(x[2 * kk + 1][2], x[2 * kk + 1][3]);
}

/* Fragment loads by ldmatrix from a swizzled tile. A load touches rows row0 + lr and 16-byte chunks
 * chunk0 + lc, where (lr, lc) depend on the lane only and row0 % 8 == 0, chunk0 even. Because the tile rows
 * are 128-byte multiples, the swizzled byte offset factors into a per-thread base XOR a compile-time
 * constant:  off = (base ^ ((chunk0 & 7) << 4)) + (chunk0 >> 3) * 128 + row0 * 2D,
 * with base = lr * 2D + ((lc ^ (lr & 7)) << 4). This keeps address registers out of the unrolled loops. */
template <int D>
struct FragBase {
    uint32_t a, nk, kn; /* per-thread bases for load_a, load_b_nk, load_b_kn */
    __device__ __forceinline__ FragBase()
    {
        const int lane = threadIdx.x & 31;
        a = base((lane & 15), lane >> 4);
        nk = base((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
        kn = base((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);
    }
    static __device__ __forceinline__ uint32_t base(int lr, int lc)
    {
        return (uint32_t)(lr * 2 * D + ((lc ^ (lr & 7)) << 4));
    }
};

template <int D>
__device__ __forceinline__ uint32_t frag_off(uint32_t base, int row0, int col0)
{
    const int chunk0 = col0 >> 3;
    return (base ^ (uint32_t)((chunk0 & 7) << 4)) + (uint32_t)((chunk0 >> 3) * 128 + row0 * 2 * D);
}

/* A fragment (16 x 16, row-major) at (row0, k0) of the tile at shared address tile. */
template <int D>
__device__ __forceinline__ void load_a(uint32_t *a, uint32_t tile, const FragBase<D> &fb, int row0, int k0)
{
    ldsm_x4(a[0], a[1], a[2], a[3], tile + frag_off<D>(fb.a, row0, k0));
}

/* B fragments for two n8 tiles (n0, n0+8) x k16 at k0, where the tile holds B^T row-major (rows = n,
 * cols = k), e.g. S = Q K^T with the K tile. b[0],b[1]: tile n0; b[2],b[3]: tile n0+8. */
template <int D>
__device__ __forceinline__ void load_b_nk(uint32_t *b, uint32_t tile, const FragBase<D> &fb, int n0, int k0)
{
    ldsm_x4(b[0], b[1], b[2], b[3], tile + frag_off<D>(fb.nk, n0, k0));
}

/* B fragments for two n8 tiles (n0, n0+8) x k16 at k0, where the tile holds B row-major (rows = k,
 * cols = n), e.g. O = C V with the V tile (transposing load). */
template <int D>
__device__ __forceinline__ void load_b_kn(uint32_t *b, uint32_t tile, const FragBase<D> &fb, int k0, int n0)
{
    ldsm_x4_t(b[0], b[1], b[2], b[3], tile + frag_off<D>(fb.kn, k0, n0));
}

} // namespace mlstm
