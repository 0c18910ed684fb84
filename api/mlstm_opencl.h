/* libmlstm OpenCL interop: wrap a cl_mem the caller owns as an mlstm_buffer (zero copy), so tensors that
 * already live in OpenCL memory need no copy. Include after mlstm.h; needs no OpenCL header itself. */
#ifndef MLSTM_OPENCL_H
#define MLSTM_OPENCL_H

#include "mlstm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct _cl_mem; /* cl_mem is `struct _cl_mem *` */

/* Wraps mem, which must belong to the OpenCL context libmlstm created for ctx's device and hold at least
 * count elements of dtype. libmlstm never releases mem; the caller keeps it alive until the
 * buffer is destroyed. MLSTM_ERR_BACKEND_UNAVAILABLE when ctx is not an OpenCL context. */
MLSTM_API int mlstm_buffer_wrap_opencl(mlstm_context *ctx, struct _cl_mem *mem, int dtype, size_t count,
                                       mlstm_buffer **out);

#ifdef __cplusplus
}
#endif
#endif /* MLSTM_OPENCL_H */
