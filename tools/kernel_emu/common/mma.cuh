/* kernel_emu: stand-in for kernels_cuda/common/mma.cuh (same path under this folder, which run.sh puts ahead of
 * kernels_cuda/ on the include path): cp.async as an immediate copy, and the emulated tf32 mma. */
#pragma once
#include "common/common.cuh"
namespace mlstm {
inline void cp_async16(void *smem, const void *gmem, bool valid)
{
    if (valid) std::memcpy(smem, gmem, 16);
    else std::memset(smem, 0, 16);
}
inline void cp_async_commit() {}
template <int N> inline void cp_async_wait() {}
} // namespace mlstm
/* mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: the tensor core reads the top 19 bits of each operand
 * (sign, exponent, 10 mantissa bits); products are exact. Accumulation: by default the 8 products are summed in
 * double and added to c with one rounding to nearest; with EMU_TC_TRUNC=1 as measured on A100 tensor cores (Fasi,
 * Higham, Mikaitis, Pranesh 2021): c and the 8 products are aligned to the largest exponent, each truncated (toward
 * zero) to a 24-bit window below it, no guard digits, summed, and the sum rounded toward zero to f32. */
inline bool emu_tc_trunc()
{
    static const int v = [] { const char *e = std::getenv("EMU_TC_TRUNC"); return e && e[0] == '1'; }();
    return v;
}
inline float emu_tc_sum(float c, const double *p)
{
    if (!emu_tc_trunc()) {
        double s = 0.0;
        for (int k = 0; k < 8; ++k) s += p[k];
        return (float)((double)c + s);
    }
    double t[9] = {(double)c, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]};
    int E = INT32_MIN;
    for (double x : t)
        if (x != 0.0) E = std::max(E, std::ilogb(x));
    if (E == INT32_MIN) return c;
    const double q = std::ldexp(1.0, E - 23);
    double s = 0.0;
    for (double x : t) s += std::trunc(x / q) * q;
    float r = (float)s;
    if (std::fabs((double)r) > std::fabs(s)) r = std::nextafter(r, 0.0f);
    return r;
}
inline void emu_mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    const int w = emu_warp(), l = emu_lane();
    for (int r = 0; r < 4; ++r) emu::ma[w][l][r] = a[r];
    emu::mb[w][l][0] = b0;
    emu::mb[w][l][1] = b1;
    emu::warp_bar();
    auto tf = [](uint32_t u) { return (double)__uint_as_float(u & 0xffffe000u); };
    auto A = [&](int row, int k) { return tf(emu::ma[w][((row & 7) << 2) | (k & 3)][(row >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)]); };
    auto B = [&](int k, int n) { return tf(emu::mb[w][(n << 2) | (k & 3)][k >= 4 ? 1 : 0]); };
    const int g = l >> 2, q = l & 3;
    for (int e = 0; e < 4; ++e) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * q + (e & 1);
        double p[8];
        for (int k = 0; k < 8; ++k) p[k] = A(row, k) * B(k, col);
        c[e] = emu_tc_sum(c[e], p);
    }
    emu::warp_bar();
}
