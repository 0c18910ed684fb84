/* kernel_emu: runs tc::mlstm_fwd_kernel (kernels_cuda/fwd/fwd_tc.cuh, the f16/bf16 tensor-core forward, with the
 * default tiles run_fwd_tc<T, D, FWD_DEFAULT> launches) on the CPU and compares h, m, n with the float64 reference of
 * the conformance case as test_conformance does (tolerances.h's f16/bf16 rows, storage resolution of each output).
 * Usage: emu_fwd_tc16 dtype(f16|bf16) D(64|128|256) S B NH gates(std|normal|ext_u|ext_n|closed) seed [eps] [scale] */
#define EMU_NO_TF32
#include "fwd/fwd_tc.cuh"
#include "common/tile_config.h"
#include "emu_grid.h"

#include "emu_tc16.h"

/* the class dispatch would run: D = DQK = DV in 64/128/256, else the D = 512 class (DQK <= 512, DV <= 256, masked) */
template <typename T> static void launch_tc_for(const mlstm::KArgs &a)
{
    if (a.DQK == 64 && a.DV == 64) launch_tc_fwd<T, 64>(a);
    else if (a.DQK == 128 && a.DV == 128) launch_tc_fwd<T, 128>(a);
    else if (a.DQK == 256 && a.DV == 256) launch_tc_fwd<T, 256>(a);
    else launch_tc_fwd<T, 512>(a);
}

template <typename T> static bool run_case(mc_case &c) { return run_fwd_case<T>(c, launch_tc_for<T>); }

int main(int argc, char **argv)
{
    mc_case c;
    bool ok = false;
    /* argv[1..] as mode D S ...; the dtype takes the mode's place */
    if (argc < 8 || !parse_tc16_case(argc - 1, argv + 1, c)) {
        std::fprintf(stderr, "usage: emu_fwd_tc16 f16|bf16 D|DQKxDV S B NH gates seed [eps] [scale]\n");
        return 2;
    }
    if (!with_dtype(argv[1], c, run_case<__half>, run_case<__nv_bfloat16>, ok)) {
        std::fprintf(stderr, "emu_fwd_tc16: dtype %s: f16 or bf16\n", argv[1]);
        return 2;
    }
    return ok ? 0 : 1;
}
