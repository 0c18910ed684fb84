/* libmlstm CUDA kernels: the interface between dispatch.cu (the direct path: one compiled instance for the call's
 * exact shape) and head_dims.cu (every other head dimension served by those instances through zero padding and
 * column slices of DV, staged in a caller-provided workspace). Host C++ only; no kernel bodies. */
#pragma once

#include <cuda_runtime.h>
#include "params.h"
#include "mlstm_cuda_kernels.h"

#define MLSTM_RUN(call, name)                                                                                    \
    do {                                                                                                         \
        cudaError_t e_ = (call);                                                                                 \
        if (e_ != cudaSuccess) {                                                                                 \
            if (fail) {                                                                                          \
                fail->code = (int)e_;                                                                            \
                fail->what = name;                                                                               \
                fail->file = __FILE__;                                                                           \
                fail->line = __LINE__;                                                                           \
            }                                                                                                    \
            return (int)e_;                                                                                      \
        }                                                                                                        \
    } while (0)

namespace mlstm {

/* dispatch.cu: whether the tensor-core path serves p as it stands (16-byte aligned rows, the instance accepted at
 * setup, and f32: DQK = DV = 64, 128 or 256; f16/bf16: that, or DQK and DV multiples of 8 up to 256, masked columns),
 * and the direct launches (that path or SIMT) */
bool direct_tc(const mlstm_cuda_dispatch &ds, const mlstm_params *p, bool backward);
/* dispatch.cu: whether an f32 call that direct_tc serves runs on the split-f16 wgmma kernels (sm_90a, D = 64 / 128),
 * whose rate per FLOP is about four times that of the 3xTF32 mma.sync ones (H100, S4096: 128/128 forward +
 * backward 1.80 ms, 256/256 14.96 ms) */
bool f32_on_wgmma(const mlstm_cuda_dispatch &ds, const mlstm_params *p, bool backward);
/* dispatch.cu, masked columns (f16/bf16 heads narrower than their class D: the loaders zero-fill the tiles beyond
 * DQK / DV, the epilogues store only those columns; zeros add nothing to q.k, and the output columns beyond DV are
 * never formed in memory). class_masks: whether class D serves such heads on this context in this direction (D =
 * 128 always; D = 256 through its sm_90a masking instances where accepted, the wgmma kernels allowed and no pinned
 * mma.sync variant; f32 never). masked_cols_ok: whether a tensor of `cols` columns can be masked on class D (a
 * multiple of 8; D = 256: at least 64, the TMA boxes of its split forward). masked_class: the class serving
 * (dqk, dv) as they stand: D = dqk = dv, or the smallest class holding both where it masks them, else 0. */
bool class_masks(const mlstm_cuda_dispatch &ds, int dtype, int D, bool backward);
bool masked_cols_ok(int D, int64_t cols);
int masked_class(const mlstm_cuda_dispatch &ds, int dtype, int64_t dqk, int64_t dv, bool backward);
/* dispatch.cu: a context's side stream for head-dim slices (tile_config.h MLSTM_SLICE_STREAMS), the events that
 * fork it from a call's stream and join it back, and those that order chained backward slices; all null where the
 * context has none */
struct SliceStreams {
    cudaStream_t side;
    cudaEvent_t fork, join;
    cudaEvent_t dkdv_done, dq_done; /* the backward's chained slices (SliceLink) */
};
const SliceStreams &slice_streams(const mlstm_cuda_dispatch &ds);
void release_slice_streams(SliceStreams &ss);
/* dispatch.cu: the f16/bf16 tensor-core head-dimension classes of the instance registry, largest first (at most max
 * of them written to out); returns their number. class_out_tile: the output (V) tile width of class D (D, or 256
 * for the D = 512 class; 0 for no class) */
int tc_classes(int *out, int max);
int class_out_tile(int D);
/* How a call of the direct path runs beside others (head_dims.cu's slices; SliceLink{} for a call on its own):
 *   par: the number of such calls running at the same time (the slices on the call's and the side stream), which the
 *     grid-size policies count (1: this call alone);
 *   prior_dq, prior_dk: the earlier slices' dq / dk, which the backward adds to its own before rounding (mem null:
 *     none; only where bwd_chains(p));
 *   wait_dkdv, wait_dq: events the backward's stream waits for before its dK/dV (dQ) kernel; rec_dkdv, rec_dq: events
 *     it records after it (null: none). */
struct SliceLink {
    int par = 1;
    mlstm_tensor_arg prior_dq = {}, prior_dk = {};
    cudaEvent_t wait_dkdv = nullptr, rec_dkdv = nullptr, wait_dq = nullptr, rec_dq = nullptr;
};
int direct_fwd(const mlstm_cuda_dispatch &ds, const mlstm_params *p, cudaStream_t st, mlstm_cuda_trace *tr,
               mlstm_cuda_fail *fail, const SliceLink &lk = SliceLink{});
int direct_bwd(const mlstm_cuda_dispatch &ds, const mlstm_params *p, cudaStream_t st, mlstm_cuda_trace *tr,
               mlstm_cuda_fail *fail, const SliceLink &lk = SliceLink{});
/* dispatch.cu: whether slice calls like p (16-byte aligned rows) chain their dq / dk: direct_bwd runs p on the
 * f16/bf16 tensor-core kernels, whose epilogues add SliceLink's prior dq / dk (direct_bwd fails a call with priors
 * otherwise), and p's dK/dV grid is large enough (tile_config.h MLSTM_CHAIN_CTAS_PER_SM) */
bool bwd_chains(const mlstm_cuda_dispatch &ds, const mlstm_params *p);

/* head_dims.cu: a call the direct path would send to SIMT but a tensor-core instance of class D serves after
 * q, k are zero-padded to D columns and v, h (dh, dv) are cut into nslice column slices of the class's output tile
 * W (the last one zero-padded). Staging is needed where a tensor is narrower than its tile or its rows are not
 * 16-byte aligned. */
struct HeadDimPlan {
    int D;       /* the instance's class: its score width (64, 128, 256 or 512) */
    int W;       /* its output tile: the slice width (D, or 256 for D = 512) */
    int nslice;  /* ceil(DV / W), at most 8 */
    bool masked; /* class D masks columns for this call (class_masks): narrower tensors are used in place */
};
constexpr int HEAD_DIM_MAX_SLICES = 8;

/* True (and *hp filled) where the adapted tensor-core path serves p; false: the direct path. */
bool head_dim_plan(const mlstm_cuda_dispatch &ds, const mlstm_params *p, bool backward, HeadDimPlan *hp);
/* Workspace bytes the adapted call of p needs (0 where none). */
size_t head_dim_workspace(const mlstm_cuda_dispatch &ds, const mlstm_params *p, const HeadDimPlan &hp, bool backward);
int head_dim_fwd(const mlstm_cuda_dispatch &ds, const mlstm_params *p, const HeadDimPlan &hp, cudaStream_t st, void *ws,
                 mlstm_cuda_trace *tr, mlstm_cuda_fail *fail);
int head_dim_bwd(const mlstm_cuda_dispatch &ds, const mlstm_params *p, const HeadDimPlan &hp, cudaStream_t st, void *ws,
                 mlstm_cuda_trace *tr, mlstm_cuda_fail *fail);

} // namespace mlstm
