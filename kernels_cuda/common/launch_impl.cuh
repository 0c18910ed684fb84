/* libmlstm CUDA kernels: definitions of the launch functions declared in launch.h (grid shapes, shared
 * memory sizes, attribute setup). Included only by the generated instance files under inst/. */
#pragma once

#include <limits.h>
#include <string.h>
#include <type_traits>
#include "common/launch.h"
#include "common/tile_config.h"
#include "fwd/fwd_tc.cuh"
#include "bwd/bwd_tc.cuh"
#include "simt/simt.cuh"
#ifdef MLSTM_INST_TF32 /* only the f32 tensor-core instance files compile those kernels */
#include "fwd/fwd_tf32.cuh"
#include "bwd/bwd_tf32.cuh"
#endif
#ifdef MLSTM_INST_WGMMA /* only the sm_90a instance files compile those kernels */
#include "fwd/fwd_wgmma.cuh"
#include "fwd/fwd_wgmma_persistent.cuh"
#include "bwd/bwd_wgmma.cuh"
#include "bwd/bwd_wgmma_persistent.cuh"
#endif
#ifdef MLSTM_INST_WGMMA_F32 /* only the sm_90a f32 instance files */
#include "fwd/fwd_wgmma_f32.cuh"
#include "bwd/bwd_wgmma_f32.cuh"
#endif
#ifdef MLSTM_INST_AUX /* only inst/mlstm_bwd_aux.cu compiles the light passes */
#include "bwd/aux.cuh"
#endif

namespace mlstm {

/* 1-D grid of n CTAs; fails cleanly instead of launching a truncated grid. */
static inline bool grid_ok(int64_t n) { return n > 0 && n <= INT_MAX; }

/* the dynamic shared-memory limit of kernel k raised to bytes */
template <typename K> static inline cudaError_t set_smem(K k, int bytes)
{
    return cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}
/* k<<<n, nt, smem, st>>>(a), refusing a grid that does not fit */
template <typename K> static inline cudaError_t launch_1d(K k, int64_t n, int nt, int smem, cudaStream_t st, const KArgs &a)
{
    if (!grid_ok(n)) return cudaErrorInvalidConfiguration;
    k<<<(unsigned)n, nt, smem, st>>>(a);
    return cudaGetLastError();
}
/* the same with more kernel arguments, in n clusters of cl consecutive CTAs (cl 1: no clusters) */
template <typename K, typename... X>
static inline cudaError_t launch_1d_cl(K k, int64_t n, int cl, int nt, int smem, cudaStream_t st, const X &...x)
{
    if (!grid_ok(n * cl)) return cudaErrorInvalidConfiguration;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)cl;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.gridDim = dim3((unsigned)(n * cl));
    cfg.blockDim = dim3((unsigned)nt);
    cfg.dynamicSmemBytes = (size_t)smem;
    cfg.stream = st;
    cfg.attrs = attr;
    cfg.numAttrs = cl > 1 ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, x...);
}

#define MLSTM_TRY(x)                                                                                             \
    do {                                                                                                         \
        cudaError_t e_ = (x);                                                                                    \
        if (e_ != cudaSuccess) return e_;                                                                        \
    } while (0)

/* ---- tensor-core path (separate structs so a forward file never instantiates backward kernels) ----
 * forward VAR (launch.h): Fwd, FwdS or FwdK of TileCfg; backward SMALL: DkdvS (dQ is the same kernel either way). */
template <typename T, int D, int VAR> struct TcFwd {
    using TC = TileCfg<D>;
    template <int V, int = 0> struct Pick { using type = typename TC::Fwd; };
    template <int Z> struct Pick<FWD_SMALL, Z> { using type = typename TC::FwdS; };
    template <int Z> struct Pick<FWD_SPLIT, Z> { using type = typename TC::FwdK; };
    using C = typename Pick<VAR>::type;
    using F = tc::FwdCfg<D, TC::DVT, C::MT, C::NW, C::BN, C::KS>;
    static constexpr auto fwd = tc::mlstm_fwd_kernel<T, D, TC::DVT, C::MT, C::NW, C::BN,
                                                     VAR != FWD_DEFAULT || TC::FWD_SM90_ONLY, C::KS, TC::MASKS>;
};
template <typename T, int D, bool SMALL, bool ROLES = TileCfg<D>::DKDV_ROLES> struct TcBwd {
    using TC = TileCfg<D>;
    using CK = typename std::conditional<SMALL, typename TC::DkdvS, typename TC::Dkdv>::type;
    using K = tc::DkdvCfg<D, TC::DVT, CK::NW, CK::BMQ, CK::DOUT, CK::PAIR>;
    static constexpr auto dkdv = tc::mlstm_bwd_dkdv_kernel<T, D, TC::DVT, CK::NW, CK::BMQ, CK::DOUT,
                                                           SMALL || TC::BWD_SM90_ONLY, CK::PAIR, TC::MASKS>;
};
template <typename T, int D, bool SMALL> struct TcBwd<T, D, SMALL, true> { /* dK/dV in two CTA kinds (bwd_tc.cuh) */
    using TC = TileCfg<D>;
    using K = tc::DkdvRolesCfg<D, TC::DVT, TC::Dkdv::BMQ>;
    static constexpr auto dkdv = tc::mlstm_bwd_dkdv_roles_kernel<T, D, TC::DVT, TC::Dkdv::BMQ, TC::BWD_SM90_ONLY, TC::MASKS>;
};
template <typename T, int D> struct TcDq {
    using TC = TileCfg<D>;
    using CQ = typename TC::Dq;
    using Q = tc::DqCfg<D, TC::DVT, CQ::NW, CQ::BN>;
    static constexpr auto dq = tc::mlstm_bwd_dq_kernel<T, D, TC::DVT, CQ::NW, CQ::BN, TC::BWD_SM90_ONLY, TC::MASKS>;
};

template <typename T, int D, int VAR> cudaError_t setup_fwd_tc()
{
    using KK = TcFwd<T, D, VAR>;
    return set_smem(KK::fwd, KK::F::SMEM);
}

template <typename T, int D, int VAR> cudaError_t run_fwd_tc(const KArgs &a, cudaStream_t st)
{
    using KK = TcFwd<T, D, VAR>;
    const int64_t n = (a.S + KK::F::BM - 1) / KK::F::BM * a.B * a.NH;
    return launch_1d(KK::fwd, n, KK::F::NT, KK::F::SMEM, st, a);
}

template <typename T, int D, bool SMALL> cudaError_t setup_bwd_dkdv_tc()
{
    using KK = TcBwd<T, D, SMALL>;
    return set_smem(KK::dkdv, KK::K::SMEM);
}

template <typename T, int D, bool SMALL> cudaError_t run_bwd_dkdv_tc(const KArgs &a, cudaStream_t st)
{
    using KK = TcBwd<T, D, SMALL>;
    const int64_t nk = (a.S + KK::K::BNK - 1) / KK::K::BNK * KK::K::NGRID * a.B * a.NH;
    return launch_1d(KK::dkdv, nk, KK::K::NT, KK::K::SMEM, st, a);
}

template <typename T, int D> cudaError_t setup_bwd_dq_tc()
{
    using KK = TcDq<T, D>;
    return set_smem(KK::dq, KK::Q::SMEM);
}

template <typename T, int D> cudaError_t run_bwd_dq_tc(const KArgs &a, cudaStream_t st)
{
    using KK = TcDq<T, D>;
    const int64_t nq = (a.S + KK::Q::BM - 1) / KK::Q::BM * a.B * a.NH;
    return launch_1d(KK::dq, nq, KK::Q::NT, KK::Q::SMEM, st, a);
}

#ifdef MLSTM_INST_WGMMA
/* ---- sm_90a warpgroup-MMA forward ---- */
/* MC: the instance masks columns (common.cuh masked_cols; the D = 128 instances always, D = 256 in instances of its
 * own, MLSTM_INSTANTIATE_*_MASKED) */
template <typename T, int D, bool SPLIT, bool MC = (D == MASKED_COLS_CLASS)> struct WgFwd {
    using C = typename std::conditional<SPLIT, typename TileCfg<D>::FwdWgK, typename TileCfg<D>::FwdWg>::type;
    using F = wg::FwdCfg<D, C::BN, C::KS, C::NST, C::CL>;
    /* may load K/V through TMA maps: the cluster variant always, the default tiles where the class says so */
    static constexpr bool TMA = C::CL > 1 || (C::KS == 1 && TileCfg<D>::FWD_WG_TMA);
    /* fwd_wgmma.cuh OV (bf16: its straight-code gate step has no range guard) */
    static constexpr bool OV = C::KS == 1 && C::CL == 1 && TileCfg<D>::FWD_WG_OVERLAP && !tc::NeedsRangeGuard<T>::value;
    static constexpr auto fwd = wg::mlstm_fwd_wgmma_kernel<T, D, C::BN, C::KS, C::NST, C::CL, TMA, MC, OV>;
    /* the persistent variant (fwd_wgmma_persistent.cuh) where its switch is on and the launch's maps can be made */
    static constexpr bool PERS = !SPLIT && C::KS == 1 && C::CL == 1 && TMA && !OV && MLSTM_FWD_WG_PERSISTENT;
    using P = wg::FwdPersCfg<D, C::BN, C::NST>;
};
/* (a function, so that the persistent kernel is instantiated only where PERS is on) */
template <typename KK, typename T, int D, bool MC> static constexpr auto fwd_persistent_kernel()
{
    return wg::mlstm_fwd_wgmma_persistent_kernel<T, D, KK::C::BN, KK::C::NST, MC>;
}

/* the TMA map of tensor t (launch.h tma_shape; boxes of 64 columns x rows) */
template <typename T>
static inline cudaError_t tma_map(CUtensorMap *m, const TArg &t, const KArgs &a, int64_t D, int rows)
{
    cuuint64_t dims[4], strides[3];
    if (!tma_shape(t, a, D, dims, strides)) return cudaErrorNotSupported;
    const cuuint32_t box[4] = {64, (cuuint32_t)rows, 1, 1}, one[4] = {1, 1, 1, 1};
    const CUresult r = g_tma_encode(
        m, std::is_same<T, __nv_bfloat16>::value ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
        t.p, dims, strides, box, one, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

/* The K / V maps of a kernel that loads its key tiles (rows each) through TMA where it can: tm.on = 0 where the maps
 * cannot be made (layout, alignment, a masking instance's head narrower than one 64-column box), the kernel then
 * loads by cp.async. A masking instance's maps span the tensors' own columns: the rest of each box is zero-filled. */
template <typename T>
static inline void tma_kv_try(wg::TmaKV &tm, const KArgs &a, int D, bool MC, int rows, int xk = MLSTM_TENSOR_K,
                              int xv = MLSTM_TENSOR_V)
{ /* xk, xv: the tensors of DQK and of DV columns mapped into tm.k, tm.v (K, V; or Q, dH) */
    memset(&tm, 0, sizeof tm);
    tm.on = (!MC || (a.DQK >= 64 && a.DV >= 64)) &&
            tma_map<T>(&tm.k, a.t[xk], a, MC ? a.DQK : D, rows) == cudaSuccess &&
            tma_map<T>(&tm.v, a.t[xv], a, MC ? a.DV : D, rows) == cudaSuccess;
}

/* A persistent kernel k over n tiles, one CTA per SM (at most n), where its maps can be made: K / V from tm, the
 * tiles' resident input x (cols columns, boxes of rows rows) added; launched false (and nothing launched) where
 * tm has no maps or x cannot be mapped, so that the caller launches its non-persistent kernel */
template <typename T, typename K>
static inline cudaError_t launch_persistent(K k, const wg::TmaKV &tm, const TArg &x, int64_t cols, int rows, int64_t n,
                                            int nt, int smem, cudaStream_t st, const KArgs &a, bool &launched)
{
    launched = false;
    wg::TmaTileKV tp;
    memset(&tp, 0, sizeof tp);
    if (!tm.on || tma_map<T>(&tp.x, x, a, cols, rows) != cudaSuccess) return cudaSuccess;
    tp.k = tm.k;
    tp.v = tm.v;
    tp.on = 1;
    int dev = 0, nsm = 0;
    MLSTM_TRY(cudaGetDevice(&dev));
    MLSTM_TRY(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    launched = true;
    return launch_1d_cl(k, n < nsm ? n : (int64_t)nsm, 1, nt, smem, st, a, tp);
}

template <typename T, int D, bool SPLIT, bool MC> cudaError_t setup_fwd_wgmma()
{
    using KK = WgFwd<T, D, SPLIT, MC>;
    if constexpr (KK::PERS) MLSTM_TRY(set_smem(fwd_persistent_kernel<KK, T, D, MC>(), KK::P::SMEM));
    return set_smem(KK::fwd, KK::F::SMEM);
}

template <typename T, int D, bool SPLIT, bool MC>
cudaError_t run_fwd_wgmma(const KArgs &a, cudaStream_t st)
{
    using KK = WgFwd<T, D, SPLIT, MC>;
    const int64_t n = (a.S + KK::F::BM - 1) / KK::F::BM * a.B * a.NH;
    wg::TmaKV tm;
    memset(&tm, 0, sizeof tm);
    if (KK::C::CL > 1) {
        /* a masking instance's maps span the tensors' own columns (DQK, DV <= D): the tensor-memory-access engine
         * zero-fills the rest of each 64-column box, as the cp.async loaders do */
        MLSTM_TRY(tma_map<T>(&tm.k, a.t[MLSTM_TENSOR_K], a, MC ? a.DQK : D, KK::C::BN));
        MLSTM_TRY(tma_map<T>(&tm.v, a.t[MLSTM_TENSOR_V], a, MC ? a.DV : D, KK::C::BN));
        tm.on = 1;
    } else if (KK::TMA) {
        tma_kv_try<T>(tm, a, D, MC, KK::C::BN);
    }
    if constexpr (KK::PERS) {
        bool launched;
        const cudaError_t e = launch_persistent<T>(fwd_persistent_kernel<KK, T, D, MC>(), tm, a.t[MLSTM_TENSOR_Q],
                                                   MC ? a.DQK : D, KK::F::BM, n, KK::F::NT, KK::P::SMEM, st, a, launched);
        if (launched || e != cudaSuccess) return e;
    }
    return launch_1d_cl(KK::fwd, n, KK::C::CL, KK::F::NT, KK::F::SMEM, st, a, tm);
}

template <typename T, int D, bool MC = (D == MASKED_COLS_CLASS)> struct WgDq {
    using QS = wg::DqWsCfg<D, TileCfg<D>::DQ_WS_BN, TileCfg<D>::DQ_WS_NST, 2>;
    static constexpr bool TMA = TileCfg<D>::DQ_WG_TMA; /* K / V stages through TMA maps where they can be made */
    static constexpr auto dq_split =
        wg::mlstm_bwd_dq_ws_kernel<T, D, TileCfg<D>::DQ_WS_BN, TileCfg<D>::DQ_WS_NST, 2, MC, TMA>;
    using QL = wg::DqWsCfg<D, TileCfg<D>::DQ_WSL_BN, TileCfg<D>::DQ_WSL_NST, 1>;
    static constexpr auto dq = wg::mlstm_bwd_dq_ws_kernel<T, D, TileCfg<D>::DQ_WSL_BN, TileCfg<D>::DQ_WSL_NST, 1, MC, TMA>;
    /* the persistent variant of dq (bwd_wgmma_persistent.cuh) where its switch is on and the maps can be made */
    static constexpr bool PERS = MLSTM_DQ_WG_PERSISTENT && TileCfg<D>::DQ_WSL_BN == 64;
    using P = wg::DqPersCfg<D, TileCfg<D>::DQ_WSL_BN, TileCfg<D>::DQ_WSL_NST>;
};
/* (a function, so that the persistent kernel is instantiated only where PERS is on) */
template <typename T, int D, bool MC> static constexpr auto dq_persistent_kernel()
{
    return wg::mlstm_bwd_dq_persistent_kernel<T, D, TileCfg<D>::DQ_WSL_BN, TileCfg<D>::DQ_WSL_NST, MC>;
}

template <typename T, int D, bool MC> cudaError_t setup_bwd_dq_wgmma()
{
    using KK = WgDq<T, D, MC>;
    if constexpr (KK::PERS) MLSTM_TRY(set_smem(dq_persistent_kernel<T, D, MC>(), KK::P::SMEM));
    MLSTM_TRY(set_smem(KK::dq, KK::QL::SMEM));
    return set_smem(KK::dq_split, KK::QS::SMEM);
}

/* split (dispatch.cu): the key split of one query tile per CTA (small grids), else two query tiles per CTA */
template <typename T, int D, bool MC>
cudaError_t run_bwd_dq_wgmma(const KArgs &a, cudaStream_t st, bool split)
{
    using KK = WgDq<T, D, MC>;
    const auto tiles = [&](int bm) { return (a.S + bm - 1) / bm * a.B * a.NH; };
    wg::TmaKV tm;
    memset(&tm, 0, sizeof tm);
    if (KK::TMA) tma_kv_try<T>(tm, a, D, MC, split ? TileCfg<D>::DQ_WS_BN : TileCfg<D>::DQ_WSL_BN);
    if (split) return launch_1d_cl(KK::dq_split, tiles(KK::QS::BM), 1, KK::QS::NT, KK::QS::SMEM, st, a, tm);
    if constexpr (KK::PERS) {
        if (!KK::TMA) tma_kv_try<T>(tm, a, D, MC, TileCfg<D>::DQ_WSL_BN);
        bool launched;
        const cudaError_t e = launch_persistent<T>(dq_persistent_kernel<T, D, MC>(), tm, a.t[MLSTM_TENSOR_DH],
                                                   MC ? a.DV : D, KK::QL::BM, tiles(KK::QL::BM), KK::QL::NT, KK::P::SMEM,
                                                   st, a, launched);
        if (launched || e != cudaSuccess) return e;
    }
    return launch_1d_cl(KK::dq, tiles(KK::QL::BM), 1, KK::QL::NT, KK::QL::SMEM, st, a, tm);
}

/* the single-warpgroup kernel masks as its class does (D <= 128); the pairs (D = 256) take MC */
template <typename T, int D, bool MC, bool PAIR = TileCfg<D>::DKDV_WG_PAIR> struct WgDkdv {
    static_assert(MC == (D == MASKED_COLS_CLASS), "the single-warpgroup dK/dV kernel masks as its class does");
    using K = wg::DkdvCfg<D, TileCfg<D>::DKDV_WG_BMQ>;
    static constexpr auto dkdv = wg::mlstm_bwd_dkdv_wgmma_kernel<T, D, TileCfg<D>::DKDV_WG_BMQ>;
    static constexpr bool MAPS = false; /* whether the kernel takes a wg::TmaKV */
};
template <typename T, int D, bool MC, int PP = tc::NeedsRangeGuard<T>::value ? 0 : MLSTM_DKDV_PINGPONG>
struct WgDkdvPair { /* the ping-pong pair (bf16; PP 1: mbarrier handoffs, 2: named barriers) */
    using K = wg::DkdvPpCfg<D, TileCfg<D>::DKDV_WG_BMQ>;
    static constexpr bool MAPS = true, TMA = MLSTM_DKDV_TMA != 0; /* query tiles through TMA maps of q and dh */
    static constexpr auto dkdv =
        wg::mlstm_bwd_dkdv_wgmma_pp_kernel<T, D, TileCfg<D>::DKDV_WG_BMQ, PP == 2, MC, TMA>;
};
template <typename T, int D, bool MC> struct WgDkdvPair<T, D, MC, 0> { /* two warpgroups meeting at CTA barriers */
    using K = wg::DkdvPairCfg<D, TileCfg<D>::DKDV_WG_BMQ>;
    static constexpr bool MAPS = false;
    static constexpr auto dkdv = wg::mlstm_bwd_dkdv_wgmma_pair_kernel<T, D, TileCfg<D>::DKDV_WG_BMQ, MC>;
};
template <typename T, int D, bool MC> struct WgDkdv<T, D, MC, true> : WgDkdvPair<T, D, MC> {};

template <typename T, int D, bool MC> cudaError_t setup_bwd_dkdv_wgmma()
{
    using KK = WgDkdv<T, D, MC>;
    return set_smem(KK::dkdv, KK::K::SMEM);
}

template <typename T, int D, bool MC> cudaError_t run_bwd_dkdv_wgmma(const KArgs &a, cudaStream_t st)
{
    using KK = WgDkdv<T, D, MC>;
    const int64_t nk = (a.S + KK::K::BNK - 1) / KK::K::BNK * a.B * a.NH;
    if constexpr (KK::MAPS) { /* the ping-pong pair */
        wg::TmaKV tm;
        memset(&tm, 0, sizeof tm);
        if (KK::TMA) tma_kv_try<T>(tm, a, D, MC, TileCfg<D>::DKDV_WG_BMQ, MLSTM_TENSOR_Q, MLSTM_TENSOR_DH);
        return launch_1d_cl(KK::dkdv, nk, 1, KK::K::NT, KK::K::SMEM, st, a, tm);
    } else {
        return launch_1d(KK::dkdv, nk, KK::K::NT, KK::K::SMEM, st, a);
    }
}
#endif

#ifdef MLSTM_INST_TF32
/* ---- tensor-core path for f32 storage (forward) ---- */
template <int D, int MODE> struct Tc32Fwd {
    using C = typename TileCfg32<D>::Fwd;
    using F = tc32::FwdCfg<D, C::MT, C::NW, C::BN>;
    static constexpr auto fwd = tc32::mlstm_fwd_kernel<D, MODE, C::MT, C::NW, C::BN>;
};

template <int D, int MODE> cudaError_t setup_fwd_tf32()
{
    using KK = Tc32Fwd<D, MODE>;
    return set_smem(KK::fwd, KK::F::SMEM);
}

template <int D, int MODE> cudaError_t run_fwd_tf32(const KArgs &a, cudaStream_t st)
{
    using KK = Tc32Fwd<D, MODE>;
    const int64_t n = (a.S + KK::F::BM - 1) / KK::F::BM * a.B * a.NH;
    return launch_1d(KK::fwd, n, KK::F::NT, KK::F::SMEM, st, a);
}

/* ---- tensor-core path for f32 storage (backward: dK/dV then dQ) ---- */
template <int D, int MODE> struct Tc32Bwd {
    using CK = typename TileCfg32<D>::Dkdv;
    using CQ = typename TileCfg32<D>::Dq;
    using K = tc32::DkdvCfg32<D, CK::NW, CK::BMQ, CK::SPLIT>;
    using Q = tc32::DqCfg32<D, CQ::NW, CQ::BN>;
    static constexpr auto dkdv = tc32::mlstm_bwd_dkdv_kernel<D, MODE, CK::NW, CK::BMQ, CK::SPLIT>;
    static constexpr auto dq = tc32::mlstm_bwd_dq_kernel<D, MODE, CQ::NW, CQ::BN>;
};

template <int D, int MODE> cudaError_t setup_bwd_tf32()
{
    using KK = Tc32Bwd<D, MODE>;
    MLSTM_TRY(set_smem(KK::dkdv, KK::K::SMEM));
    return set_smem(KK::dq, KK::Q::SMEM);
}

template <int D, int MODE> cudaError_t run_bwd_tf32(const KArgs &a, cudaStream_t st)
{
    using KK = Tc32Bwd<D, MODE>;
    const int64_t nk = (a.S + KK::K::BNK - 1) / KK::K::BNK * KK::K::NCTA * a.B * a.NH;
    const int64_t nq = (a.S + KK::Q::BM - 1) / KK::Q::BM * a.B * a.NH;
    if (!grid_ok(nq)) return cudaErrorInvalidConfiguration; /* both grids checked before either launches */
    MLSTM_TRY(launch_1d(KK::dkdv, nk, KK::K::NT, KK::K::SMEM, st, a));
    return launch_1d(KK::dq, nq, KK::Q::NT, KK::Q::SMEM, st, a);
}
#endif

#ifdef MLSTM_INST_WGMMA_F32
/* ---- sm_90a f32 forward on split f16 warpgroup MMA ---- */
template <int D> struct WgFwdF32 {
    using C = typename TileCfg32<D>::FwdWg;
    using F = wg::FwdF32Cfg<D, C::BN, C::NST>;
    static constexpr auto fwd = wg::mlstm_fwd_wgmma_f32_kernel<D, C::BN, C::NST>;
};

template <int D> cudaError_t setup_fwd_wgmma_f32()
{
    using KK = WgFwdF32<D>;
    return set_smem(KK::fwd, KK::F::SMEM);
}

template <int D> cudaError_t run_fwd_wgmma_f32(const KArgs &a, cudaStream_t st)
{
    using KK = WgFwdF32<D>;
    const int64_t n = (a.S + KK::F::BM - 1) / KK::F::BM * a.B * a.NH;
    return launch_1d(KK::fwd, n, KK::F::NT, KK::F::SMEM, st, a);
}

template <int D> struct WgBwdF32 {
    static constexpr int NST = TileCfg32<D>::BWD_WG_NST;
    using K = wg::BwdDkdvF32Cfg<D, NST>;
    using Q = wg::BwdDqF32Cfg<D, NST>;
    static constexpr auto dkdv = wg::mlstm_bwd_dkdv_wgmma_f32_kernel<D, NST>;
    static constexpr auto dq = wg::mlstm_bwd_dq_wgmma_f32_kernel<D, NST>;
};

template <int D> cudaError_t setup_bwd_wgmma_f32()
{
    using KK = WgBwdF32<D>;
    MLSTM_TRY(set_smem(KK::dkdv, KK::K::SMEM));
    return set_smem(KK::dq, KK::Q::SMEM);
}

template <int D> cudaError_t run_bwd_wgmma_f32(const KArgs &a, cudaStream_t st)
{
    using KK = WgBwdF32<D>;
    const int64_t n = (a.S + 63) / 64 * a.B * a.NH; /* both: 64-row tiles */
    MLSTM_TRY(launch_1d(KK::dkdv, n, KK::K::NT, KK::K::SMEM, st, a));
    return launch_1d(KK::dq, n, KK::Q::NT, KK::Q::SMEM, st, a);
}
#endif

/* ---- generic SIMT path ---- */
template <typename T> cudaError_t setup_fwd_simt()
{
    return set_smem(simt::mlstm_fwd_kernel<T>, simt::SMEM_BYTES);
}

template <typename T> cudaError_t run_fwd_simt(const KArgs &a, cudaStream_t st)
{
    const int64_t n = (a.S + simt::TB - 1) / simt::TB * simt::chunk_groups(a.DV, simt::G_FWD) * a.B * a.NH;
    return launch_1d(simt::mlstm_fwd_kernel<T>, n, simt::NT, simt::SMEM_BYTES, st, a);
}

template <typename T> cudaError_t setup_bwd_simt()
{
    MLSTM_TRY(set_smem(simt::mlstm_bwd_dkdv_kernel<T>, simt::SMEM_BYTES));
    return set_smem(simt::mlstm_bwd_dq_kernel<T>, simt::SMEM_BYTES);
}

template <typename T> cudaError_t run_bwd_simt(const KArgs &a, cudaStream_t st)
{
    const int64_t nt = (a.S + simt::TB - 1) / simt::TB;
    const int64_t nch = simt::chunk_groups(a.DQK, simt::G_DKDV) + simt::chunk_groups(a.DV, simt::G_DKDV);
    const int64_t nk = nt * nch * a.B * a.NH, nq = nt * a.B * a.NH;
    if (!grid_ok(nq)) return cudaErrorInvalidConfiguration; /* both grids checked before either launches */
    MLSTM_TRY(launch_1d(simt::mlstm_bwd_dkdv_kernel<T>, nk, simt::NT, simt::SMEM_BYTES, st, a));
    return launch_1d(simt::mlstm_bwd_dq_kernel<T>, nq, simt::NT, simt::SMEM_BYTES, st, a);
}

#ifdef MLSTM_INST_AUX
/* ---- light passes ---- */
static_assert(DF_TILE == simt::TB, "mlstm_bwd_gates_tiled_kernel walks the SIMT dQ kernel's tiles");
template <typename T> cudaError_t run_bwd_prep(const KArgs &a, cudaStream_t st)
{
    const int64_t n = (a.B * a.NH * a.S + PREP_ROWS - 1) / PREP_ROWS;
    /* 16-byte vectors where every h and dh row starts on a 16-byte boundary and DV fills whole vectors */
    const TArg &h = a.t[MLSTM_TENSOR_H], &dh = a.t[MLSTM_TENSOR_DH];
    const int64_t e = 16 / (int64_t)sizeof(T) - 1;
    const bool vec = (((uintptr_t)h.p | (uintptr_t)dh.p) & 15) == 0 &&
                     ((h.sb | h.sh | h.ss | dh.sb | dh.sh | dh.ss | a.DV) & e) == 0;
    return vec ? launch_1d(mlstm_bwd_prep_kernel<T, true>, n, 256, 0, st, a)
               : launch_1d(mlstm_bwd_prep_kernel<T, false>, n, 256, 0, st, a);
}

#endif

} // namespace mlstm

/* explicit instantiation helpers for the generated files */
#define MLSTM_INSTANTIATE_FWD_TC(T, D, VAR)                                                                      \
    template cudaError_t mlstm::run_fwd_tc<T, D, VAR>(const mlstm::KArgs &, cudaStream_t);                       \
    template cudaError_t mlstm::setup_fwd_tc<T, D, VAR>();
#define MLSTM_INSTANTIATE_BWD_TC(T, D)                                                                           \
    template cudaError_t mlstm::run_bwd_dkdv_tc<T, D, false>(const mlstm::KArgs &, cudaStream_t);                \
    template cudaError_t mlstm::setup_bwd_dkdv_tc<T, D, false>();                                                \
    template cudaError_t mlstm::run_bwd_dq_tc<T, D>(const mlstm::KArgs &, cudaStream_t);                         \
    template cudaError_t mlstm::setup_bwd_dq_tc<T, D>();
#define MLSTM_INSTANTIATE_BWD_DKDV_SMALL_TC(T, D)                                                                \
    template cudaError_t mlstm::run_bwd_dkdv_tc<T, D, true>(const mlstm::KArgs &, cudaStream_t);                 \
    template cudaError_t mlstm::setup_bwd_dkdv_tc<T, D, true>();
#define MLSTM_INSTANTIATE_FWD_WGMMA(T, D, SPLIT)                                                                \
    template cudaError_t mlstm::run_fwd_wgmma<T, D, SPLIT>(const mlstm::KArgs &, cudaStream_t);                  \
    template cudaError_t mlstm::setup_fwd_wgmma<T, D, SPLIT>();
#define MLSTM_INSTANTIATE_BWD_DQ_WGMMA(T, D)                                                                    \
    template cudaError_t mlstm::run_bwd_dq_wgmma<T, D>(const mlstm::KArgs &, cudaStream_t, bool);                \
    template cudaError_t mlstm::setup_bwd_dq_wgmma<T, D>();
#define MLSTM_INSTANTIATE_BWD_DKDV_WGMMA(T, D)                                                                  \
    template cudaError_t mlstm::run_bwd_dkdv_wgmma<T, D>(const mlstm::KArgs &, cudaStream_t);                    \
    template cudaError_t mlstm::setup_bwd_dkdv_wgmma<T, D>();
/* the masking sm_90a instances of a class that does not mask by default (D = 256; common.cuh masked_cols) */
#define MLSTM_INSTANTIATE_FWD_WGMMA_MASKED(T, D, SPLIT)                                                         \
    template cudaError_t mlstm::run_fwd_wgmma<T, D, SPLIT, true>(const mlstm::KArgs &, cudaStream_t);            \
    template cudaError_t mlstm::setup_fwd_wgmma<T, D, SPLIT, true>();
#define MLSTM_INSTANTIATE_BWD_DQ_WGMMA_MASKED(T, D)                                                             \
    template cudaError_t mlstm::run_bwd_dq_wgmma<T, D, true>(const mlstm::KArgs &, cudaStream_t, bool);          \
    template cudaError_t mlstm::setup_bwd_dq_wgmma<T, D, true>();
#define MLSTM_INSTANTIATE_BWD_DKDV_WGMMA_MASKED(T, D)                                                           \
    template cudaError_t mlstm::run_bwd_dkdv_wgmma<T, D, true>(const mlstm::KArgs &, cudaStream_t);              \
    template cudaError_t mlstm::setup_bwd_dkdv_wgmma<T, D, true>();
#define MLSTM_INSTANTIATE_FWD_TF32(D, MODE)                                                                     \
    template cudaError_t mlstm::run_fwd_tf32<D, MODE>(const mlstm::KArgs &, cudaStream_t);                       \
    template cudaError_t mlstm::setup_fwd_tf32<D, MODE>();
#define MLSTM_INSTANTIATE_BWD_TF32(D, MODE)                                                                     \
    template cudaError_t mlstm::run_bwd_tf32<D, MODE>(const mlstm::KArgs &, cudaStream_t);                       \
    template cudaError_t mlstm::setup_bwd_tf32<D, MODE>();
#define MLSTM_INSTANTIATE_FWD_WGMMA_F32(D)                                                                      \
    template cudaError_t mlstm::run_fwd_wgmma_f32<D>(const mlstm::KArgs &, cudaStream_t);                        \
    template cudaError_t mlstm::setup_fwd_wgmma_f32<D>();                                                        \
    template cudaError_t mlstm::run_bwd_wgmma_f32<D>(const mlstm::KArgs &, cudaStream_t);                        \
    template cudaError_t mlstm::setup_bwd_wgmma_f32<D>();
#define MLSTM_INSTANTIATE_FWD_SIMT(T)                                                                            \
    template cudaError_t mlstm::run_fwd_simt<T>(const mlstm::KArgs &, cudaStream_t);                             \
    template cudaError_t mlstm::setup_fwd_simt<T>();
#define MLSTM_INSTANTIATE_BWD_SIMT(T)                                                                            \
    template cudaError_t mlstm::run_bwd_simt<T>(const mlstm::KArgs &, cudaStream_t);                             \
    template cudaError_t mlstm::setup_bwd_simt<T>();
