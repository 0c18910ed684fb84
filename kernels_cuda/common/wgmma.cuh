/* libmlstm CUDA kernels: sm_90a warpgroup-MMA building blocks. The shared-memory tile layout wgmma reads with
 * the 128-byte swizzle (columns in blocks of 64 two-byte elements; within a block, row r is 128 bytes at r * 128,
 * its 16-byte chunks XOR-permuted by r % 8), the matrix descriptors for it, the cp.async loader that fills it,
 * and the fence / commit / wait instructions. The asm wrappers of the MMA itself are in wgmma_ops.cuh. */
#pragma once

#include <cuda.h> /* CUtensorMap (the type only: the maps are encoded on the host, launch_impl.cuh) */

#include "common/mma.cuh"
#include "common/wgmma_ops.cuh"

namespace mlstm {
namespace wg {

/* Tensor-memory-accelerator maps of K and V (kernel parameter): 4-D
 * (D, S, NH, B) with the tensors' strides, boxes of 64 columns x BN rows stored with the 128-byte swizzle, that is
 * one 64-column block of the layout above; rows beyond S arrive as zeros. */
struct TmaKV { /* each map 128-byte aligned (CUtensorMap) */
    CUtensorMap k, v;
    int on; /* the maps are set (a kernel that may load through them falls back to cp.async where not) */
};
/* The persistent kernels' maps: x, the tile's resident input (Q of the forward, dH of the dQ; thread 0 of the producer
 * loads every tile through the maps: the 128 threads' cp.async of a 128-row tile spilled ~700 bytes at the producer's
 * 56 registers), then K and V */
struct TmaTileKV {
    CUtensorMap x, k, v;
    int on;
};

/* Byte offset of element (r, c) of an R-row tile of 2-byte elements in the swizzled layout: column block
 * c / 64 at (c / 64) * R * 128. Tiles must start on a 1024-byte boundary (the swizzle repeats every 8 rows). */
template <int R>
__device__ __forceinline__ uint32_t sw128_off(int r, int c)
{
    return (uint32_t)((c >> 6) * R * 128 + r * 128 + ((((c >> 3) & 7) ^ (r & 7)) << 4) + (c & 7) * 2);
}

/* Rows [r0, r0+R) of a (rows x cols) global matrix (row stride ld elements, 16-byte aligned rows, cols <= D a
 * multiple of 8) into an R-row x D-column swizzled tile; rows >= nrows and columns >= cols are zero-filled. NT threads
 * take part (tid: 0..NT-1). */
template <typename T, int R, int D, int NT>
__device__ __forceinline__ void load_tile_sw128(uint32_t tile, const T *__restrict__ g, int64_t ld, int64_t r0,
                                                int64_t nrows, int tid = (int)threadIdx.x, int64_t cols = D)
{
    constexpr int RPP = NT / 8; /* rows per pass: every thread keeps one 16-byte column of a 64-column block */
    static_assert(NT % 64 == 0 && R % RPP == 0, "whole passes of NT / 8 rows");
    /* thread: column chunk c8, rows rr + RPP j (same r & 7, so the same swizzle); pointers advance by adds */
    const int c8 = tid & 7, rr = tid >> 3;
    const int64_t left = nrows - r0 - rr; /* row rr + RPP j exists iff RPP j < left */
    const T *row = g + (left > 0 ? r0 + rr : 0) * ld + c8 * 8;
    const uint32_t d0 = tile + (uint32_t)(rr * 128 + ((c8 ^ (rr & 7)) << 4));
#pragma unroll
    for (int cb = 0; cb < D / 64; ++cb) {
        const T *p = row + cb * 64;
        const bool col_ok = cb * 64 + c8 * 8 < cols;
#pragma unroll
        for (int j = 0; j < R / RPP; ++j) {
            const bool ok = col_ok && (int64_t)j * RPP < left;
            cp_async16(d0 + (uint32_t)(cb * R * 128 + j * RPP * 128), ok ? p : g, ok);
            p += (int64_t)RPP * ld;
        }
    }
}

/* A warp-specialised kernel's producer copies one stage: key tiles kt0, kt0 - 1, ..., kt0 - KS + 1 (none below 0) of
 * K and V (k_cols / v_cols of their columns, the rest zero) into slots stage * KS + gs (tiles of BN rows, kv_bytes
 * each); the 128 producer threads (pt) take part. */
template <typename T, int BN, int D, int KS>
__device__ __forceinline__ void ws_copy_stage(uint32_t aK, uint32_t aV, int kv_bytes, int stage, int64_t kt0,
                                              const T *gk, int64_t k_ss, const T *gv, int64_t v_ss, int64_t S, int pt,
                                              int64_t k_cols = D, int64_t v_cols = D)
{
#pragma unroll
    for (int gs = 0; gs < KS; ++gs) {
        const int64_t kt = kt0 - gs;
        if (kt >= 0) {
            const int sl = stage * KS + gs;
            load_tile_sw128<T, BN, D, 128>(aK + sl * kv_bytes, gk, k_ss, kt * BN, S, pt, k_cols);
            load_tile_sw128<T, BN, D, 128>(aV + sl * kv_bytes, gv, v_ss, kt * BN, S, pt, v_cols);
        }
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

/* acc (+)= A B^T over K columns, A and B K-major swizzled tiles of RA and RB rows at a and b (K / 64 column blocks
 * each): the score products (S = Q K^T, dP = dH V^T, their transposes), K / 16 wgmma of which the first overwrites
 * acc. The caller fences before and commits after. */
template <typename T, int N, int K, int RA, int RB>
__device__ __forceinline__ void wgmma_kmajor_ss(float (&acc)[N / 2], uint32_t a, uint32_t b)
{
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
        const uint32_t koff = (kk & 3) * 32; /* k16 slice within the 64-column block */
        WgmmaSS<T, N>::run(acc, desc_sw128(a + (kk >> 2) * RA * 128 + koff, 16),
                           desc_sw128(b + (kk >> 2) * RB * 128 + koff, 16), kk > 0);
    }
}

__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
/* makes this thread's completed generic-proxy shared-memory writes (cp.async included) visible to wgmma */
/* mbarriers in shared memory (PTX ISA "mbarrier"), CTA scope: arrive has release, the wait acquire semantics.
 * A wait for parity p returns once the phase with that parity has completed (phases alternate 0, 1, 0, ...). */
__device__ __forceinline__ void mbar_init(uint32_t bar, int count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
/* A warp-specialised kernel's stage barriers, by thread 0 before the CTA's first barrier: full[NST] (the producer's
 * arrivals, full_count) and empty[NST] (every one of the 256 consumer threads, after its last read of the stage), 8 bytes
 * apart from bFull */
template <int NST> __device__ __forceinline__ void mbar_init_stages(uint32_t bFull, int full_count)
{
    if (threadIdx.x == 0) {
        for (int st = 0; st < NST; ++st) {
            mbar_init(bFull + 8 * st, full_count);
            mbar_init(bFull + 8 * (NST + st), 256);
        }
        mbar_init_fence();
    }
}
/* A gate producer thread of a persistent kernel (key pt of each step's tile; step st: key tile kt_hi - st of BN keys,
 * nsteps of them): f and i loaded two steps ahead of their staging */
template <int BN> struct GateAhead {
    const float *gf, *gi;
    int64_t fs, is, kt_hi, nsteps, S;
    int pt;
    bool on; /* a gate producer */
    float f0, i0, f1, i1;
    __device__ __forceinline__ void load(int64_t st, float &f, float &i) const
    {
        const int64_t s = (kt_hi - st) * BN + pt;
        const bool ok = on && st < nsteps && s < S;
        f = ok ? gf[s * fs] : 0.0f;
        i = ok ? gi[s * is] : 0.0f;
    }
    __device__ __forceinline__ void start()
    {
        load(0, f0, i0);
        load(1, f1, i1);
    }
    /* step st's values into sA[o] (logsigmoid(f), 0 beyond S) and sI[o], then step st + 2's load */
    __device__ __forceinline__ void stage(int64_t st, float *sA, float *sI, int o)
    {
        if (on) {
            sA[o] = (kt_hi - st) * BN + pt < S ? logsigmoid(f0) : 0.0f;
            sI[o] = i0;
        }
        f0 = f1;
        i0 = i1;
        load(st + 2, f1, i1);
    }
};

/* The persistent kernels' per-tile mbarriers from b0 (8 bytes each, PERS_TILE_BARS of them): the tile's resident
 * input loaded (count 1: one thread's tensor-copy arrival), that input released by both consumer warpgroups (256),
 * two buffers of the rows' state read by the consumers (256 each), and the same two buffers written (writers: the
 * producer threads that write the rows' state, each arriving once it has). Thread 0, after mbar_init_stages, before
 * the CTA barrier. */
constexpr int PERS_TILE_BARS = 6;
__device__ __forceinline__ void mbar_init_tiles(uint32_t b0, int writers)
{
    if (threadIdx.x == 0) {
        mbar_init(b0, 1);
        mbar_init(b0 + 8, 256);
        mbar_init(b0 + 16, 256);
        mbar_init(b0 + 24, 256);
        mbar_init(b0 + 32, writers);
        mbar_init(b0 + 40, writers);
        mbar_init_fence();
    }
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity)
{
    asm volatile("{\n"
                 ".reg .pred P1;\n"
                 "LAB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@P1 bra DONE;\n"
                 "bra LAB_WAIT;\n"
                 "DONE:\n"
                 "}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
/* one arrival on bar that also expects bytes more of asynchronous copies (the phase completes once they landed) */
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/* TMA copy of the box at coordinates (c0, c1, c2, c3) of map into this CTA's shared memory at dst; its bytes complete
 * on bar */
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2, int c3,
                                            uint32_t bar)
{
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
                 "%5}], [%6];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                 : "memory");
}
/* One thread: rows [row, row + R) of (head hh, batch b) of map (boxes of 64 columns x R rows) as an R-row x D-column
 * 128-byte-swizzled tile at dst (block c / 64 at (c / 64) R 128, load_tile_sw128's layout), its bytes expected on bar
 * with this thread's arrival */
template <int R, int D>
__device__ __forceinline__ void tma_tile_sw128(uint32_t dst, const CUtensorMap *map, int64_t row, int64_t hh, int64_t b,
                                               uint32_t bar)
{
    mbar_arrive_expect_tx(bar, R * D * 2);
#pragma unroll
    for (int cb = 0; cb < D / 64; ++cb) tma_load_4d(dst + cb * R * 128, map, cb * 64, (int)row, (int)hh, (int)b, bar);
}
/* One thread: key tile kt (BN rows) of K and V as the tiles at dk and dv, both on bar (tma_tile_sw128 twice, one
 * arrival) */
template <int BN, int D>
__device__ __forceinline__ void tma_kv_tiles(uint32_t dk, uint32_t dv, const CUtensorMap *mk, const CUtensorMap *mv,
                                             int64_t kt, int64_t hh, int64_t b, uint32_t bar)
{
    mbar_arrive_expect_tx(bar, 2 * BN * D * 2);
#pragma unroll
    for (int cb = 0; cb < D / 64; ++cb) {
        tma_load_4d(dk + cb * BN * 128, mk, cb * 64, (int)(kt * BN), (int)hh, (int)b, bar);
        tma_load_4d(dv + cb * BN * 128, mv, cb * 64, (int)(kt * BN), (int)hh, (int)b, bar);
    }
}
/* an arrive on bar once every cp.async this thread issued before has landed (counts against the init count) */
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
/* per-warpgroup register budget (all four warps execute it): producers give registers back, consumers take them */
template <int N> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
/* Whether a 384-thread warp-specialised kernel's split (one producer warpgroup at PROD registers a thread, two
 * consumer warpgroups at CONS) fits the launch allocation of __launch_bounds__(384, 1), 168 a thread: a consumer
 * setmaxnreg.inc asking for more than the producers gave back waits forever (a hang, not an error) */
template <int PROD, int CONS>
constexpr bool ws_regs_fit = PROD >= 24 && CONS <= 256 && PROD % 8 == 0 && CONS % 8 == 0 && 128 * PROD + 256 * CONS <= 384 * 168;

__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/* Thread-block clusters: this CTA's rank in its cluster; the cluster barrier (arrive with release, wait with acquire;
 * complete once every thread of every CTA of the cluster has arrived). */
__device__ __forceinline__ int cluster_rank()
{
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return (int)r;
}
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory"); }
/* shared::cluster address of the shared::cta address a in the cluster's CTA rank */
__device__ __forceinline__ uint32_t cluster_map_u32(uint32_t a, int rank)
{
    uint32_t r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(rank));
    return r;
}
/* bulk copy of bytes (a multiple of 16, both addresses 16-byte aligned) from this CTA's shared memory at src to
 * another CTA's at dst (shared::cluster), completing as transaction bytes on that CTA's mbarrier bar (shared::cluster) */
__device__ __forceinline__ void bulk_copy_to_cluster(uint32_t dst, uint32_t src, uint32_t bytes, uint32_t bar)
{
    asm volatile("cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "r"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

/* Keeps the compiler from moving accesses of the accumulators across the asynchronous MMA's issue and wait. */
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

} // namespace wg
} // namespace mlstm
