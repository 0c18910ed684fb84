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

typedef struct mlstm_params {
    int64_t batch, heads, seq_len, dqk, dv;
    int dtype;          /* mlstm_dtype of q, k, v, h, dh, dq, dk, dv; the gate-like tensors are f32 */
    float eps;
    float scale;        /* resolved: never 0 here (1/sqrt(dqk) when the caller asked for the default) */
    int grad_mode;      /* mlstm_grad_mode */
    int math_mode;      /* mlstm_math_mode */
    mlstm_tensor_arg t[MLSTM_TENSOR_COUNT]; /* indexed by mlstm_tensor; bwd-only tensors are zero in fwd */
    const void *plan;   /* the backend's plan state from plan_create, or NULL: an unplanned call */
    void *workspace;    /* backend memory handle of the caller's workspace, or NULL (none given) */
    uint64_t workspace_offset; /* bytes from the start of workspace */
    uint64_t workspace_bytes;  /* usable bytes from there; >= what plan_create asked for */
} mlstm_params;

#endif /* MLSTM_PARAMS_H */
