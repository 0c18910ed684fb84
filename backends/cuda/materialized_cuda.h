/* CUDA backend, the materialised algorithm (materialized_cuda.c): what backend_cuda.c calls. Plain C, no CUDA
 * header needed. */
#ifndef MLSTM_MATERIALIZED_CUDA_H
#define MLSTM_MATERIALIZED_CUDA_H

#include <stddef.h>
#include <stdint.h>
#include "params.h"

typedef struct mlstm_cuda_mat mlstm_cuda_mat;

/* Workspace bytes of p's call (the S x S matrices, per-row arrays, f32 copies, cuBLAS's scratch). MLSTM_OK or
 * MLSTM_ERR_SIZE_OVERFLOW (detail in err). */
int mlstm_cuda_mat_workspace_size(const mlstm_params *p, int backward, uint64_t *bytes, char *err, size_t err_len);
/* Enqueues the forward or backward of p on stream (a cudaStream_t) on the current device, in p's workspace (at
 * least mlstm_cuda_mat_workspace_size bytes; backend_cuda.c provides the context's own where the caller gave none).
 * *state holds cuBLAS (loaded with dlopen at first use); created on first use. */
int mlstm_cuda_mat_run(mlstm_cuda_mat **state, const mlstm_params *p, int backward, void *stream, char *err,
                       size_t err_len);
/* Frees the state (NULL is a no-op); the caller has synchronised. */
void mlstm_cuda_mat_release(mlstm_cuda_mat *state);

#endif /* MLSTM_MATERIALIZED_CUDA_H */
