/* kernel_emu: what the f16/bf16 tensor-core emulators (emu_tc16_main.cpp: forward; emu_tc16_bwd_main.cpp: forward
 * and backward) share: the kernels' shared memory, the grid runner on it, the forward as run_fwd_tc<T, D, FWD_DEFAULT>
 * launches it, and the storage type named on the command line. Include after fwd_tc.cuh, tile_config.h, emu_grid.h. */
#pragma once
#include <cstdio>
#include <cstring>

/* the kernels' `extern __shared__ smem[]` (declared inside mlstm::tc) */
namespace mlstm { namespace tc { alignas(128) unsigned char smem[232448]; } }

static void tc_grid(void (*k)(mlstm::KArgs), const mlstm::KArgs &a, int64_t n, int nt, size_t smem_used = 0)
{
    run_grid(k, a, n, nt, mlstm::tc::smem, sizeof mlstm::tc::smem, smem_used);
}

/* the f16/bf16 forward of class D over the grid run_fwd_tc<T, D, FWD_DEFAULT> launches (launch_impl.cuh: scores
 * D wide, V / O tiles TileCfg<D>::DVT wide, masking where the class masks) */
template <typename T, int D> static void launch_tc_fwd(const mlstm::KArgs &a)
{
    using TC = mlstm::TileCfg<D>;
    using C = typename TC::Fwd;
    using F = mlstm::tc::FwdCfg<D, TC::DVT, C::MT, C::NW, C::BN, C::KS>;
    static_assert(F::SMEM <= (int)sizeof mlstm::tc::smem, "smem");
    const int64_t n = (a.S + F::BM - 1) / F::BM * a.B * a.NH;
    std::printf("  fwd class %d/%d tiles (MT, NW, BN, KS) = (%d, %d, %d, %d), BM %d, smem %d B, %lld CTAs\n", D, TC::DVT,
                C::MT, C::NW, C::BN, C::KS, F::BM, F::SMEM, (long long)n);
    tc_grid(mlstm::tc::mlstm_fwd_kernel<T, D, TC::DVT, C::MT, C::NW, C::BN, false, C::KS, TC::MASKS>, a, n, F::NT,
            F::SMEM);
}

/* parse_case (emu_grid.h) over argv[0..argc) (mode slot, D, S, B, NH, gates, seed, ...), where D may also be DQKxDV (the
 * D = 512 class: DQK <= 512, DV <= 256, multiples of 8); false for a malformed case */
static bool parse_tc16_case(int argc, char **argv, mc_case &c)
{
    static char d64[] = "64";
    int dqk = 0, dv = 0;
    const bool pair = argc > 1 && std::sscanf(argv[1], "%dx%d", &dqk, &dv) == 2;
    if (pair) {
        if (dqk < 8 || dqk > 512 || dv < 8 || dv > 256 || dqk % 8 || dv % 8) return false;
        argv[1] = d64; /* parse_case accepts the classes 64/128/256 only */
    }
    if (!parse_case(argc, argv, c)) return false;
    if (pair) {
        c.DQK = dqk;
        c.DV = dv;
    }
    return true;
}

/* runs the case on the storage type named dtype ("f16": run16, "bf16": run_b16; c.dtype set), its result in ok;
 * false for another name */
static bool with_dtype(const char *dtype, mc_case &c, bool (*run16)(mc_case &), bool (*run_b16)(mc_case &), bool &ok)
{
    c.math_mode = MLSTM_MATH_DEFAULT;
    if (!std::strcmp(dtype, "f16")) {
        c.dtype = MLSTM_DTYPE_F16;
        ok = run16(c);
    } else if (!std::strcmp(dtype, "bf16")) {
        c.dtype = MLSTM_DTYPE_BF16;
        ok = run_b16(c);
    } else {
        return false;
    }
    return true;
}
