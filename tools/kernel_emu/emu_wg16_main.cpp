/* kernel_emu: runs the sm_90a f16/bf16 default-tile forward (kernels_cuda/fwd/fwd_wgmma.cuh, K / V through TMA as
 * run_fwd_wgmma launches it) or its persistent variant (fwd_wgmma_persistent.cuh) on the CPU, through emu_wgmma.h's
 * mbarriers, named barriers, TMA boxes and wgmma, and compares h, m, n with the float64 reference as emu_tc16_main.cpp.
 * Usage: emu_fwd_wg16 default|persistent|overlap dtype(f16|bf16) D(64|128|256)|DQKxDV S B NH gates seed [eps] [scale]
 * (overlap: the overlapped forward, fwd_wgmma.cuh OV, bf16 only)
 * (DQKxDV: 64..256, multiples of 8: the class's masking instance, the maps spanning the heads' own columns)
 * EMU_SMS: the persistent grid's CTAs (default 3, so that CTAs walk several tiles). */
#define EMU_NO_TF32
#include "fwd/fwd_wgmma_persistent.cuh"
#include "common/tile_config.h"
#include "emu_grid.h"

#include "emu_tc16.h"

namespace mlstm { namespace wg { alignas(1024) unsigned char smem_raw[232448]; } }

static mlstm::wg::TmaKV g_tk;
static bool g_overlap = false; /* the overlapped forward (fwd_wgmma.cuh OV; bf16) in place of the default kernel */
static mlstm::wg::TmaTileKV g_tq;
template <typename T, int D, int BN, int NST, bool MC> static void k_default(mlstm::KArgs a)
{
    mlstm::wg::mlstm_fwd_wgmma_kernel<T, D, BN, 1, NST, 1, true, MC, false>(a, g_tk);
}
template <typename T, int D, int BN, int NST, bool MC> static void k_overlap(mlstm::KArgs a)
{
    if constexpr (!mlstm::tc::NeedsRangeGuard<T>::value) /* (bf16 only) */
        mlstm::wg::mlstm_fwd_wgmma_kernel<T, D, BN, 1, NST, 1, true, MC, true>(a, g_tk);
}
template <typename T, int D, int BN, int NST, bool MC> static void k_persistent(mlstm::KArgs a)
{
    mlstm::wg::mlstm_fwd_wgmma_persistent_kernel<T, D, BN, NST, MC>(a, g_tq);
}

/* MC: the instance masks columns (the D = 128 class always; D = 256 for narrower heads, dispatch.cu masked_class) */
template <typename T, int D, bool MC> static void launch_wg_fwd(const mlstm::KArgs &a, bool persistent)
{
    using C = typename mlstm::TileCfg<D>::FwdWg;
    static_assert(C::KS == 1 && C::CL == 1, "default tiles");
    using F = mlstm::wg::FwdCfg<D, C::BN, 1, C::NST, 1>;
    using P = mlstm::wg::FwdPersCfg<D, C::BN, C::NST>;
    const int64_t tiles = (a.S + F::BM - 1) / F::BM * a.B * a.NH;
    emu_map_pair(g_tk, a, D, MC, C::BN);
    emu::block_start = emu::wg_block_start;
    if (persistent) {
        const int64_t grid = emu_persistent_setup(g_tq, g_tk, a, a.t[MLSTM_TENSOR_Q], MC ? a.DQK : D, F::BM, tiles);
        std::printf("  persistent forward, class %d (BN %d, NST %d), smem %d B, %lld tiles on %lld CTAs\n", D, C::BN,
                    C::NST, P::SMEM, (long long)tiles, (long long)grid);
        run_grid(k_persistent<T, D, C::BN, C::NST, MC>, a, grid, F::NT, mlstm::wg::smem_raw, sizeof mlstm::wg::smem_raw,
                 P::SMEM);
    } else {
        std::printf("  default-tile forward (TMA%s), class %d (BN %d, NST %d), smem %d B, %lld CTAs\n",
                    g_overlap ? ", overlapped" : "", D, C::BN, C::NST, F::SMEM, (long long)tiles);
        run_grid(g_overlap ? k_overlap<T, D, C::BN, C::NST, MC> : k_default<T, D, C::BN, C::NST, MC>, a, tiles, F::NT,
                 mlstm::wg::smem_raw, sizeof mlstm::wg::smem_raw, F::SMEM);
    }
}

static bool g_persistent = false;

template <typename T> static void launch_wg_for(const mlstm::KArgs &a)
{
    const int64_t w = a.DQK > a.DV ? a.DQK : a.DV;
    if (a.DQK == 64 && a.DV == 64) launch_wg_fwd<T, 64, false>(a, g_persistent);
    else if (w <= 128) launch_wg_fwd<T, 128, true>(a, g_persistent);
    else if (a.DQK == 256 && a.DV == 256) launch_wg_fwd<T, 256, false>(a, g_persistent);
    else launch_wg_fwd<T, 256, true>(a, g_persistent);
}
template <typename T> static bool run_case(mc_case &c) { return run_fwd_case<T>(c, launch_wg_for<T>); }

int main(int argc, char **argv)
{
    mc_case c;
    bool ok = false;
    if (argc < 9 || (std::strcmp(argv[1], "default") && std::strcmp(argv[1], "persistent") && std::strcmp(argv[1], "overlap")) ||
        (!std::strcmp(argv[1], "overlap") && std::strcmp(argv[2], "bf16")) ||
        !parse_tc16_case(argc - 2, argv + 2, c) || c.DQK > 256 || c.DV > 256 || c.DQK < 64 || c.DV < 64) {
        std::fprintf(stderr, "usage: emu_fwd_wg16 default|persistent|overlap f16|bf16 D|DQKxDV S B NH gates seed [eps] [scale]\n");
        return 2;
    }
    g_persistent = !std::strcmp(argv[1], "persistent");
    g_overlap = !std::strcmp(argv[1], "overlap");
    if (!with_dtype(argv[2], c, run_case<__half>, run_case<__nv_bfloat16>, ok)) {
        std::fprintf(stderr, "emu_fwd_wg16: dtype %s: f16 or bf16\n", argv[2]);
        return 2;
    }
    return ok ? 0 : 1;
}
