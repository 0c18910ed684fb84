/* libmlstm CUDA interop: wrap a CUDA device pointer the caller owns as an mlstm_buffer (zero copy), and
 * run a context's work on the caller's cudaStream_t. Include after mlstm.h; needs no CUDA header. */
#ifndef MLSTM_CUDA_H
#define MLSTM_CUDA_H

#include "mlstm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Wraps device_ptr (memory of ctx's device holding at least count elements of dtype). libmlstm never frees
 * it. MLSTM_ERR_BACKEND_UNAVAILABLE when ctx is not a CUDA context. */
MLSTM_API int mlstm_buffer_wrap_cuda(mlstm_context *ctx, void *device_ptr, int dtype, size_t count,
                                     mlstm_buffer **out);
/* Makes later calls on ctx enqueue on stream (a cudaStream_t; NULL = the context's own stream). Blocking
 * copies and mlstm_synchronize then wait on that stream. */
MLSTM_API int mlstm_context_set_cuda_stream(mlstm_context *ctx, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* MLSTM_CUDA_H */
