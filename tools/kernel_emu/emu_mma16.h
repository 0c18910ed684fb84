/* kernel_emu: the f16/bf16 tensor-core primitives of kernels_cuda/common/mma.cuh for the host: run.sh's copy of that
 * file calls these in place of its asm. Shared addresses are byte offsets from emu::smem_base (cuda_runtime.h: the
 * kernel's dynamic shared memory, set by run_grid); cp.async copies at once; ldmatrix .x4 (.trans) and mma.sync m16n8k16 are warp
 * collectives through exchange arrays and warp barriers, with PTX's fragment layouts. */
#pragma once
#include <type_traits>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace emu {
inline uint32_t xa[32][32]; /* ldmatrix row addresses of the lanes */
} // namespace emu

inline size_t __cvta_generic_to_shared(const void *p)
{
    return (size_t)((const unsigned char *)p - emu::smem_base);
}
inline unsigned char *emu_shared(uint32_t saddr) { return emu::smem_base + saddr; }

/* cp.async.cg.shared.global [saddr], [gmem], 16, n: n = 16 copies, n = 0 zero-fills (reads nothing) */
inline void emu_cp_async16(uint32_t saddr, const void *gmem, int n)
{
    if (n == 16) std::memcpy(emu_shared(saddr), gmem, 16);
    else std::memset(emu_shared(saddr), 0, 16);
}

/* ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8j..8j+7 give the row addresses of matrix j (8 b16 each);
 * lane l gets in r[j] the elements (row l/4, cols 2(l%4), 2(l%4)+1) of matrix j, or of its transpose (.trans) */
inline void emu_ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, uint32_t addr, bool trans)
{
    const int w = emu_warp(), l = emu_lane();
    emu::xa[w][l] = addr;
    emu::warp_bar();
    uint32_t r[4];
    for (int j = 0; j < 4; ++j) {
        uint16_t lo, hi;
        if (!trans) {
            const unsigned char *row = emu_shared(emu::xa[w][8 * j + l / 4]);
            std::memcpy(&lo, row + 4 * (l % 4), 2);
            std::memcpy(&hi, row + 4 * (l % 4) + 2, 2);
        } else { /* transposed (row l/4, col c) = stored (row c, col l/4) */
            std::memcpy(&lo, emu_shared(emu::xa[w][8 * j + 2 * (l % 4)]) + 2 * (l / 4), 2);
            std::memcpy(&hi, emu_shared(emu::xa[w][8 * j + 2 * (l % 4) + 1]) + 2 * (l / 4), 2);
        }
        r[j] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    emu::warp_bar();
    r0 = r[0];
    r1 = r[1];
    r2 = r[2];
    r3 = r[3];
}

/* one b16 element (half h: 0 low, 1 high) of a 32-bit register as f32 (exact) */
template <typename T> inline float emu_b16(uint32_t reg, int h)
{
    const unsigned short bits = (unsigned short)(h ? reg >> 16 : reg & 0xffffu);
    if constexpr (std::is_same<T, __half>::value) return emu_f16_bits_to_f32(bits);
    else return __bfloat162float(__nv_bfloat16{bits});
}

/* mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32, D = A B + C. Fragments (g = lane/4, t = lane%4): A regs a0 (row g,
 * k 2t..2t+1), a1 (row g+8, same k), a2 (row g, k 2t+8..2t+9), a3 (row g+8, k 2t+8..); B b0 (k 2t..2t+1, col g), b1
 * (k 2t+8..2t+9, col g); C c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8). The 16 products (exact in double) are
 * summed in double and added to c with one rounding to f32. */
template <typename T> inline void emu_mma16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    const int w = emu_warp(), l = emu_lane();
    for (int r = 0; r < 4; ++r) emu::ma[w][l][r] = a[r];
    emu::mb[w][l][0] = b0;
    emu::mb[w][l][1] = b1;
    emu::warp_bar();
    auto A = [&](int row, int k) {
        return (double)emu_b16<T>(emu::ma[w][(row & 7) * 4 + (k & 7) / 2][(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k & 1);
    };
    auto B = [&](int k, int n) { return (double)emu_b16<T>(emu::mb[w][n * 4 + (k & 7) / 2][k >= 8 ? 1 : 0], k & 1); };
    const int g = l >> 2, t = l & 3;
    float d[4];
    for (int e = 0; e < 4; ++e) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        double s = 0.0;
        for (int k = 0; k < 16; ++k) s += A(row, k) * B(k, col);
        d[e] = (float)((double)c[e] + s);
    }
    emu::warp_bar();
    for (int e = 0; e < 4; ++e) c[e] = d[e];
}
