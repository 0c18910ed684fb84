/* libmlstm CUDA backend: what the API core may call besides the ops table (mlstm_backend_cuda_ops, declared
 * in backend.h). Plain C, no CUDA header needed. The interop wrappers of api/mlstm_cuda.h use these. */
#ifndef MLSTM_BACKEND_CUDA_H
#define MLSTM_BACKEND_CUDA_H

#include <stddef.h>
#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Makes later work of the context impl run on stream (a cudaStream_t); NULL restores the context's own
 * stream. Blocking copies and synchronize then wait on that stream. Returns an mlstm_status. */
int mlstm_cuda_set_stream(void *impl, void *stream);

/* (optional check for mlstm_buffer_wrap_cuda) MLSTM_OK when ptr is device (or managed) memory usable on the
 * context's device, else MLSTM_ERR_INVALID_ARGUMENT with the detail in the backend's last_error. */
int mlstm_cuda_check_pointer(void *impl, const void *ptr);

#ifdef __cplusplus
}
#endif
#endif /* MLSTM_BACKEND_CUDA_H */
