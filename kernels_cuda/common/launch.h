/* libmlstm CUDA kernels: declarations of the per-instance launch functions (defined in launch_impl.cuh,
 * explicitly instantiated one per generated file under inst/). dispatch.cu includes only this header, so
 * it compiles no kernel body. Each run_* enqueues on `st` and returns the launch's cudaError_t; each setup_*
 * raises the kernel's dynamic shared-memory limit (called once per device at context init). */
#pragma once

#include <cuda_runtime.h>
#include <cudaTypedefs.h> /* PFN_cuTensorMapEncodeTiled (called through cudaGetDriverEntryPointByVersion) */
#include "common/common.cuh"

namespace mlstm {

/* The driver's tensor-map encoder, found at setup (dispatch.cu; null: none, so no TMA kernels), and the shape of a
 * TMA map of tensor t of a (B, NH, S, D) problem with 2-byte elements (wgmma.cuh TmaKV): dims innermost first, byte
 * strides of dims 1..3 (a dimension of size 1 gets the row stride: any legal value serves). False where the hardware's
 * limits (strides multiples of 16 bytes below 2^40, coordinates within int32) rule TMA out. */
extern PFN_cuTensorMapEncodeTiled_v12000 g_tma_encode;
inline bool tma_shape(const TArg &t, const KArgs &a, int64_t D, cuuint64_t dims[4], cuuint64_t strides[3])
{
    const int64_t row = a.S > 1 ? t.ss * 2 : D * 2;
    const int64_t st[3] = {row, a.NH > 1 ? t.sh * 2 : row, a.B > 1 ? t.sb * 2 : row};
    for (int i = 0; i < 3; ++i) {
        if (st[i] <= 0 || st[i] % 16 != 0 || st[i] >= ((int64_t)1 << 40)) return false;
        strides[i] = (cuuint64_t)st[i];
    }
    if (a.S >= ((int64_t)1 << 31) || a.NH >= ((int64_t)1 << 31) || a.B >= ((int64_t)1 << 31)) return false;
    dims[0] = (cuuint64_t)D;
    dims[1] = (cuuint64_t)a.S;
    dims[2] = (cuuint64_t)a.NH;
    dims[3] = (cuuint64_t)a.B;
    return g_tma_encode != nullptr;
}

/* tensor-core path: T in {__half, __nv_bfloat16}, D in {64, 128, 256}, DQK = DV = D, 16-byte aligned rows;
 * forward VAR: FWD_DEFAULT, FWD_SMALL (small-grid tiles) or FWD_SPLIT (key split), tile_config.h; backward
 * SMALL: the small-grid tile variant (only where TileCfg<D>::BWD_SMALL) */
enum { FWD_DEFAULT = 0, FWD_SMALL = 1, FWD_SPLIT = 2 };
template <typename T, int D, int VAR> cudaError_t run_fwd_tc(const KArgs &a, cudaStream_t st);
template <typename T, int D, int VAR> cudaError_t setup_fwd_tc();
template <typename T, int D, bool SMALL> cudaError_t run_bwd_dkdv_tc(const KArgs &a, cudaStream_t st);
template <typename T, int D, bool SMALL> cudaError_t setup_bwd_dkdv_tc();
template <typename T, int D> cudaError_t run_bwd_dq_tc(const KArgs &a, cudaStream_t st);
template <typename T, int D> cudaError_t setup_bwd_dq_tc();

/* sm_90a warpgroup-MMA forward (fwd_wgmma.cuh): T in {__half, __nv_bfloat16}, D in {64, 128, 256}, the same
 * inputs as the tensor-core path; only for devices of compute capability 9.0 and builds that include sm_90a.
 * SPLIT: the small-grid variant (TileCfg<D>::FwdWgK: key split, or a cluster of CTAs, which loads K/V through TMA and
 * so needs tma_shape of K and V) */
/* MC: the instance masks columns (common.cuh masked_cols): the D = 128 ones always; for D = 256, separately
 * compiled masking instances (MC = true) serve heads narrower than 256 (dispatch.cu masked_class) */
template <typename T, int D, bool SPLIT, bool MC = (D == MASKED_COLS_CLASS)>
cudaError_t run_fwd_wgmma(const KArgs &a, cudaStream_t st);
template <typename T, int D, bool SPLIT, bool MC = (D == MASKED_COLS_CLASS)> cudaError_t setup_fwd_wgmma();
/* sm_90a warpgroup-MMA dQ and dK/dV kernels (bwd_wgmma.cuh), same conditions; replace run_bwd_dq_tc and
 * run_bwd_dkdv_tc (dK/dV: D = 256 as warpgroup pairs, TileCfg<D>::DKDV_WG_PAIR) */
template <typename T, int D, bool MC = (D == MASKED_COLS_CLASS)>
cudaError_t run_bwd_dq_wgmma(const KArgs &a, cudaStream_t st, bool split);
template <typename T, int D, bool MC = (D == MASKED_COLS_CLASS)> cudaError_t setup_bwd_dq_wgmma();
template <typename T, int D, bool MC = (D == MASKED_COLS_CLASS)>
cudaError_t run_bwd_dkdv_wgmma(const KArgs &a, cudaStream_t st);
template <typename T, int D, bool MC = (D == MASKED_COLS_CLASS)> cudaError_t setup_bwd_dkdv_wgmma();

/* tensor-core path for f32 storage: D in {64, 128, 256}, DQK = DV = D, 16-byte aligned rows;
 * MODE 0: 3xTF32 (IEEE-f32-grade, the default), 1: TF32 (MLSTM_MATH_TF32). The backward (dK/dV + dQ) runs between
 * run_bwd_prep<float> and run_bwd_gates_tiled, as run_bwd_simt<float> does. */
template <int D, int MODE> cudaError_t run_fwd_tf32(const KArgs &a, cudaStream_t st);
template <int D, int MODE> cudaError_t setup_fwd_tf32();
template <int D, int MODE> cudaError_t run_bwd_tf32(const KArgs &a, cudaStream_t st);
template <int D, int MODE> cudaError_t setup_bwd_tf32();

/* sm_90a f32 forward on split f16 warpgroup MMA (fwd_wgmma_f32.cuh): D in {64, 128}, the default (IEEE-grade)
 * f32 math, the same inputs as run_fwd_tf32; only where the sm_90a wgmma kernels run */
template <int D> cudaError_t run_fwd_wgmma_f32(const KArgs &a, cudaStream_t st);
template <int D> cudaError_t setup_fwd_wgmma_f32();
/* and its backward (bwd_wgmma_f32.cuh: dK/dV then dQ, between run_bwd_prep<float> and run_bwd_gates_tiled) */
template <int D> cudaError_t run_bwd_wgmma_f32(const KArgs &a, cudaStream_t st);
template <int D> cudaError_t setup_bwd_wgmma_f32();

/* generic SIMT path: any T, any DQK/DV, any strides */
template <typename T> cudaError_t run_fwd_simt(const KArgs &a, cudaStream_t st);
template <typename T> cudaError_t setup_fwd_simt();
template <typename T> cudaError_t run_bwd_simt(const KArgs &a, cudaStream_t st); /* dkdv + dq */
template <typename T> cudaError_t setup_bwd_simt();

/* light passes (inst/mlstm_bwd_aux.cu) */
template <typename T> cudaError_t run_bwd_prep(const KArgs &a, cudaStream_t st);
cudaError_t run_bwd_gates(const KArgs &a, cudaStream_t st);
cudaError_t run_bwd_gates_tiled(const KArgs &a, cudaStream_t st); /* after run_bwd_simt<float> */

} // namespace mlstm
