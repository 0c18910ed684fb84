/* libmlstm CUDA kernels: building blocks of the sm_90a f32 kernels, which run IEEE-f32-grade products on f16
 * warpgroup MMA (twice the rate of tf32, and f16 operands may be N-major, so no transposed copies are needed).
 * Every f32 operand row x is scaled by a power of two 2^c (its largest |x| lands in [2^14, 2^15)) and split into
 * hi = f16(x 2^c), lo = f16(x 2^c - hi); a product is hi*hi + hi*lo + lo*hi with f32 accumulation. hi and lo carry
 * 11 significant bits each, so x 2^c - hi - lo is at most 2^-22 |x 2^c| (entries down to 2^-17 of the row's largest
 * keep that; smaller ones keep an absolute error below 2^-39 of it), and the dropped lo*lo term is as small: the
 * same bound as 3xTF32 (fwd_tf32.cuh), at half the tensor-core time and with the same 2-byte swizzled tiles. */
#pragma once

#include "common/wgmma.cuh"

namespace mlstm {
namespace wg {

/* 2^k as a float, k in [-126, 127] */
__device__ __forceinline__ float pow2i(int k) { return __int_as_float((k + 127) << 23); }

/* The exponent c of the row scale 2^c for a row whose largest |x| is amax (>= 0): amax 2^c in [2^14, 2^15).
 * Zero / denormal rows get c = 124 (their entries stay finite), inf / NaN c = -114. */
__device__ __forceinline__ int split_row_exp(float amax)
{
    const int e = ((__float_as_int(amax) >> 23) & 0xff) - 127; /* floor(log2 amax) for a normal amax */
    return 14 - max(e, -110);
}

/* (a, b) -> packed f16 pairs hi = f16(a, b), lo = f16((a, b) - hi) */
__device__ __forceinline__ void split2(float a, float b, uint32_t &hi, uint32_t &lo)
{
    const __half2 h = __floats2half2_rn(a, b);
    const float2 hf = __half22float2(h);
    const __half2 l = __floats2half2_rn(a - hf.x, b - hf.y);
    hi = *reinterpret_cast<const uint32_t *>(&h);
    lo = *reinterpret_cast<const uint32_t *>(&l);
}

/* The two f16 tiles (hi at aHi, lo at aLo, each an R-row 128-byte-swizzled tile of D columns, wgmma.cuh) of rows
 * [r0, r0+R) of a (rows x D) f32 matrix (row stride ld, 16-byte aligned rows; rows >= nrows are zero). Two steps,
 * so that the copy is asynchronous: split_copy issues cp.async of the raw f32 rows into the same bytes (a row of D
 * floats takes exactly its hi and lo rows), split_convert (after cp_async_wait) rewrites them in place as hi / lo
 * and writes the row's inverse scale 2^-c to inv[r]. NT threads take part, 8 per row: thread t of a row copies
 * 16-byte chunks t + 8 i (columns 4 t + 32 i; coalesced), placed at chunk position t ^ (r & 7) of the hi (i even)
 * or lo (i odd) row of column block i / 2, so that each thread converts what it copied itself (no barrier between
 * the copy and the reads) and the reads are free of bank conflicts; the 8 threads of a row meet at __syncwarp
 * before writing, as their outputs overwrite each other's inputs. */
template <int R, int D, int NT>
__device__ __forceinline__ void split_copy(uint32_t aHi, uint32_t aLo, const float *__restrict__ g, int64_t ld,
                                           int64_t r0, int64_t nrows, int tid)
{
    constexpr int RPP = NT / 8; /* rows per pass */
    static_assert(R % RPP == 0 && RPP % 8 == 0 && D % 64 == 0, "whole passes, one swizzle phase per thread");
    const int t = tid & 7, rr = tid >> 3;
    const int64_t left = nrows - r0 - rr; /* row rr + RPP j exists iff RPP j < left */
    const float *row = g + (left > 0 ? r0 + rr : 0) * ld + 4 * t;
    const uint32_t o0 = (uint32_t)(rr * 128 + ((t ^ (rr & 7)) << 4));
#pragma unroll
    for (int j = 0; j < R / RPP; ++j) {
        const bool ok = (int64_t)j * RPP < left;
#pragma unroll
        for (int i = 0; i < D / 32; ++i)
            cp_async16(((i & 1) ? aLo : aHi) + (uint32_t)((i >> 1) * R * 128 + j * RPP * 128) + o0,
                       ok ? row + 32 * i : g, ok);
        row += (int64_t)RPP * ld;
    }
}

template <int R, int D, int NT>
__device__ __forceinline__ void split_convert(uint32_t aHi, uint32_t aLo, float *inv, int tid)
{
    constexpr int RPP = NT / 8;
    const int t = tid & 7, rr = tid >> 3;
    const uint32_t o0 = (uint32_t)(rr * 128 + ((t ^ (rr & 7)) << 4));
    /* output: columns 4 t + 32 i are half (t & 1) of 16-byte chunk k = t / 2 + 4 (i & 1) of column block i / 2 */
    const uint32_t w0 = (uint32_t)(rr * 128 + (t & 1) * 8);
#pragma unroll
    for (int j = 0; j < R / RPP; ++j) {
        float4 v[D / 32];
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < D / 32; ++i) {
            const uint32_t a = ((i & 1) ? aLo : aHi) + (uint32_t)((i >> 1) * R * 128 + j * RPP * 128) + o0;
            asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                         : "=f"(v[i].x), "=f"(v[i].y), "=f"(v[i].z), "=f"(v[i].w)
                         : "r"(a));
            amax = fmaxf(amax, fmaxf(fmaxf(fabsf(v[i].x), fabsf(v[i].y)), fmaxf(fabsf(v[i].z), fabsf(v[i].w))));
        }
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
        const int c = split_row_exp(amax);
        const float f = pow2i(c);
        __syncwarp();
#pragma unroll
        for (int i = 0; i < D / 32; ++i) {
            uint32_t h0, l0, h1, l1;
            split2(v[i].x * f, v[i].y * f, h0, l0);
            split2(v[i].z * f, v[i].w * f, h1, l1);
            const int k = (t >> 1) + 4 * (i & 1);
            const uint32_t o = (uint32_t)((i >> 1) * R * 128 + j * RPP * 128) + w0 + (uint32_t)((k ^ (rr & 7)) << 4);
            asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(aHi + o), "r"(h0), "r"(h1) : "memory");
            asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(aLo + o), "r"(l0), "r"(l1) : "memory");
        }
        if (t == 0) inv[rr + j * RPP] = pow2i(-c);
    }
}

/* s = X Y^T and its corrections c over D columns, from split tiles (A: RA-row tiles at aHi / aLo, the warpgroup's 64
 * rows; B: RB-row tiles, N rows): per k16 slice the main product hi*hi into s (the first 64-column block) or s2 (the
 * second; the tensor core truncates each accumulation to the accumulator's 24-bit window, so shorter chains of main
 * products summed in f32 lose less, as fwd_tf32.cuh's score_tile does per slab), then x_hi y_lo and x_lo y_hi into c,
 * x being the query-side operand (Q or dh) and y the key-side one (K or V), whichever is A (A_IS_QUERY). The dQ
 * kernel (queries as rows) and the dK/dV kernel (keys as rows) thus issue the same products in the same order, and
 * the f32 gate gradients need bitwise the same S_tj, dP_tj in both: wgmma's f32 accumulation was measured symmetric
 * in the operand roles and independent of N (H100, bench/RESULTS.md, measurement log, item 13). */
template <int N, int D, int RA, int RB, bool A_IS_QUERY>
__device__ __forceinline__ void split_score(float (&s)[N / 2], float (&s2)[N / 2], float (&c)[N / 2], uint32_t aHi,
                                            uint32_t aLo, uint32_t bHi, uint32_t bLo)
{
    static_assert(D == 64 || D == 128, "one or two 64-column blocks");
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t ko = (kk & 3) * 32; /* k16 slice within the 64-column block */
        const uint64_t dah = desc_sw128(aHi + (kk >> 2) * RA * 128 + ko, 16);
        const uint64_t dal = desc_sw128(aLo + (kk >> 2) * RA * 128 + ko, 16);
        const uint64_t dbh = desc_sw128(bHi + (kk >> 2) * RB * 128 + ko, 16);
        const uint64_t dbl = desc_sw128(bLo + (kk >> 2) * RB * 128 + ko, 16);
        if (kk < 4)
            WgmmaSS<__half, N>::run(s, dah, dbh, kk > 0);
        else
            WgmmaSS<__half, N>::run(s2, dah, dbh, kk > 4);
        if (A_IS_QUERY) {
            WgmmaSS<__half, N>::run(c, dah, dbl, kk > 0);
            WgmmaSS<__half, N>::run(c, dal, dbh, 1);
        } else {
            WgmmaSS<__half, N>::run(c, dal, dbh, kk > 0);
            WgmmaSS<__half, N>::run(c, dah, dbl, 1);
        }
    }
}

/* s = (s + s2) + c after split_score (s2 only for D = 128), in one operation order for every kernel */
template <int D, int M>
__device__ __forceinline__ void split_merge(float (&s)[M], const float (&s2)[M], const float (&c)[M])
{
#pragma unroll
    for (int i = 0; i < M; ++i) s[i] = __fadd_rn(D > 64 ? __fadd_rn(s[i], s2[i]) : s[i], c[i]);
}

/* acc += A B for the three products of split A fragments (hi, lo: NK k16 slices) and a split N-major B (rows = k,
 * R-row tiles at bHi / bLo, N = the accumulator's columns) */
template <int N, int NK, int R>
__device__ __forceinline__ void split_rs(float (&acc)[N / 2], const uint32_t (&ah)[NK][4], const uint32_t (&al)[NK][4],
                                         uint32_t bHi, uint32_t bLo)
{
#pragma unroll
    for (int kk = 0; kk < NK; ++kk) {
        const uint64_t dbh = desc_sw128(bHi + kk * 16 * 128, R * 128);
        const uint64_t dbl = desc_sw128(bLo + kk * 16 * 128, R * 128);
        WgmmaRS<__half, N>::run(acc, ah[kk], dbh, 1);
        WgmmaRS<__half, N>::run(acc, ah[kk], dbl, 1);
        WgmmaRS<__half, N>::run(acc, al[kk], dbh, 1);
    }
}

/* split_rs, issued and waited for */
template <int N, int NK, int R>
__device__ __forceinline__ void split_rs_wait(float (&acc)[N / 2], const uint32_t (&ah)[NK][4],
                                              const uint32_t (&al)[NK][4], uint32_t bHi, uint32_t bLo)
{
    reg_fence(acc);
    fence();
    split_rs<N, NK, R>(acc, ah, al, bHi, bLo);
    commit();
    wait<0>();
    reg_fence(acc);
}

/* split_score, issued and waited for, then split_merge: s holds the f32 scores (s2, c are scratch) */
template <int N, int D, int RA, int RB, bool A_IS_QUERY>
__device__ __forceinline__ void split_score_wait(float (&s)[N / 2], float (&s2)[N / 2], float (&c)[N / 2], uint32_t aHi,
                                                 uint32_t aLo, uint32_t bHi, uint32_t bLo)
{
    reg_fence(s);
    reg_fence(s2);
    reg_fence(c);
    fence();
    split_score<N, D, RA, RB, A_IS_QUERY>(s, s2, c, aHi, aLo, bHi, bLo);
    commit();
    wait<0>();
    reg_fence(s);
    reg_fence(s2);
    reg_fence(c);
    split_merge<D>(s, s2, c);
}

/* The producer warpgroup's loop of the f32 kernels over nsteps steps: for each step it, wait until its stage
 * it % NST is empty (empty barriers at bEmpty, 8 bytes apart), issue(it, stage) (the raw copies, committed as one
 * cp.async group, and the gate terms), and once step j's copies have landed split(j) (split_convert, then the arrive on
 * the stage's full barrier). With two stages the split of step j comes right after its copy (the consumers need it as
 * soon as they finish step j - 1, and the copy was issued when they finished j - 2); with more stages one step later,
 * so that the copy of step j + 1 is in flight meanwhile. */
template <int NST, typename Issue, typename Split>
__device__ __forceinline__ void split_producer(int64_t nsteps, uint32_t bEmpty, Issue &&issue, Split &&split)
{
    constexpr int LAG = NST >= 3 ? 1 : 0;
    for (int64_t it = 0; it <= nsteps; ++it) {
        if (LAG == 0 && it >= 1) {
            cp_async_wait<0>();
            split(it - 1);
        }
        if (it == nsteps) break;
        const int stage = (int)(it % NST);
        if (it >= NST) mbar_wait(bEmpty + 8 * stage, (uint32_t)((it / NST + 1) & 1));
        issue(it, stage);
        if (LAG == 1 && it >= 1) {
            cp_async_wait<1>(); /* step it's copies may still be in flight */
            split(it - 1);
        }
    }
    if (LAG == 1 && nsteps >= 1) {
        cp_async_wait<0>();
        split(nsteps - 1);
    }
}

/* The A fragments (hi, lo) of one k16 slice of P = x 2^-esc from an m64nN f32 accumulator x (rows g: elements 0, 1;
 * g + 8: elements 2, 3; sc[r] = 2^-esc[r]), as acc_to_a does for one product. */
template <int N>
__device__ __forceinline__ void split_acc_to_a(const float (&x)[N][4], int kk, const float (&sc)[2], uint32_t (&hi)[4],
                                               uint32_t (&lo)[4])
{
    split2(x[2 * kk][0] * sc[0], x[2 * kk][1] * sc[0], hi[0], lo[0]);
    split2(x[2 * kk][2] * sc[1], x[2 * kk][3] * sc[1], hi[1], lo[1]);
    split2(x[2 * kk + 1][0] * sc[0], x[2 * kk + 1][1] * sc[0], hi[2], lo[2]);
    split2(x[2 * kk + 1][2] * sc[1], x[2 * kk + 1][3] * sc[1], hi[3], lo[3]);
}

/* Range of the split P tiles: each accumulator row carries an exponent esc (starting at -126) such that its P tile
 * entries x 2^-esc stay below 2^14 (the hi part's f16 range) while the largest of the first nonzero tile lands in
 * [2^13, 2^14) (the lo part stays normal down to 2^-17 of it). amx[r]: this lane's largest |x| of row r in the tile;
 * the four lanes of a quad agree. When a row's esc grows, fac[r] = 2^(old - new) (else 1), by which the caller
 * multiplies the row's accumulators; returns whether any row of this lane grew. NaN never raises. */
__device__ __forceinline__ bool split_guard_raise(const float (&amx)[2], float (&esc)[2], float (&fac)[2])
{
    bool any = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float m = amx[r];
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        const float k = (float)(((__float_as_int(m) >> 23) & 0xff) - 127 - 13); /* floor(log2 m) - 13 */
        fac[r] = 1.0f;
        if (m > 0.0f && k > esc[r]) {
            fac[r] = exp2f(esc[r] - k);
            esc[r] = k;
            any = true;
        }
    }
    return any;
}

/* The split A fragments of a second product: x (an m64 accumulator fragment of NK k16 slices, this lane's largest |x|
 * per row in amx) scaled per row by 2^-esc after split_guard_raise, which rescales the rows of the product's
 * accumulator o when their exponent grows */
template <int NK, int NO>
__device__ __forceinline__ void split_p_frags(const float (&x)[2 * NK][4], const float (&amx)[2], float (&esc)[2],
                                              float (&o)[NO][4], uint32_t (&ah)[NK][4], uint32_t (&al)[NK][4])
{
    float fac[2];
    if (split_guard_raise(amx, esc, fac)) scale_frag_rows(o, fac);
    const float psc[2] = {pow2i(-(int)esc[0]), pow2i(-(int)esc[1])};
#pragma unroll
    for (int kk = 0; kk < NK; ++kk) split_acc_to_a(x, kk, psc, ah[kk], al[kk]);
}

} // namespace wg
} // namespace mlstm
