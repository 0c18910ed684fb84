/* Plain parameter structs handed from the API core to a backend's fwd/bwd: every size, scalar and tensor
 * (memory handle, element offset, resolved strides) of one call, already validated. Shared by host C and
 * kernel launch code (CUDA includes it too), so keep it POD and C-compatible. */
#ifndef MLSTM_PARAMS_H
#define MLSTM_PARAMS_H

#include <stdint.h>
#include "mlstm.h"

/* One tensor of a call. Element (b, h, s, d) lives at mem + offset + b*stride_b + h*stride_h + s*stride_s + d
 * (in elements of the tensor's dtype). Strides are resolved: contiguous layouts are spelled out here. */
typedef struct mlstm_tensor_arg {
    void *mem;          /* backend memory handle: a CUDA device pointer (base of the allocation), or a cl_mem */
    uint64_t offset;    /* element offset of element (0, 0, 0, 0) within mem */
    int64_t stride_b, stride_h, stride_s;
} mlstm_tensor_arg;

/* The tensors stored in f32 whatever the call's dtype: the gates, the stabiliser, the normaliser and their gradients. */
static inline int mlstm_tensor_is_f32(int t)
{
    return t == MLSTM_TENSOR_I || t == MLSTM_TENSOR_F || t == MLSTM_TENSOR_M || t == MLSTM_TENSOR_N ||
           t == MLSTM_TENSOR_DI || t == MLSTM_TENSOR_DF;
}

typedef struct mlstm_params {
    int64_t batch, heads, seq_len, dqk, dv;
    int dtype;          /* mlstm_dtype of q, k, v, h, dh, dq, dk, dv; the gate-like tensors are f32 */
    float eps;
    float scale;        /* resolved: never 0 here (1/sqrt(dqk) when the caller asked for the default) */
    int grad_mode;      /* mlstm_grad_mode */
    int math_mode;      /* mlstm_math_mode */
    int algo;           /* resolved mlstm_algo: MLSTM_ALGO_FUSED or MLSTM_ALGO_MATERIALIZED, never AUTO */
    int plan_algo[2];   /* plans: the algorithm of the forward [0] and backward [1], fixed when the plan is made */
    /* The caller's workspace (the call's or plan's workspace argument, else mlstm_context_set_workspace), or ws_mem
     * NULL: then the backend uses its own, allocated at first use and kept. ws_offset is 256-byte aligned; ws_bytes
     * is at least the backend's workspace_size for this call (the API checked it). */
    void *ws_mem;       /* backend memory handle, as mlstm_tensor_arg.mem */
    uint64_t ws_offset; /* bytes */
    uint64_t ws_bytes;
    mlstm_tensor_arg t[MLSTM_TENSOR_COUNT]; /* indexed by mlstm_tensor; bwd-only tensors are zero in fwd */
    const void *plan;   /* the backend's plan state from plan_create, or NULL: an unplanned call */
} mlstm_params;

#endif /* MLSTM_PARAMS_H */
