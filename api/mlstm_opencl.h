/* libmlstm OpenCL interop: a context on the caller's own cl_context, device and queue (CLBlast's convention), the
 * OpenCL objects of any OpenCL context, and cl_mem buffers the caller owns wrapped as mlstm_buffers (zero copy).
 * Include after mlstm.h; needs no OpenCL header itself (the struct names are those of CL/cl.h). */
#ifndef MLSTM_OPENCL_H
#define MLSTM_OPENCL_H

#include "mlstm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct _cl_mem;           /* cl_mem is `struct _cl_mem *` */
struct _cl_context;       /* cl_context */
struct _cl_device_id;     /* cl_device_id */
struct _cl_command_queue; /* cl_command_queue */

/* Creates an OpenCL context of libmlstm on the caller's objects: device must be a device of context, and queue (a
 * command queue of that context and device, in order) receives all of the context's work; queue NULL: libmlstm
 * creates its own queue there. libmlstm retains context, device and queue and releases exactly those retains in
 * mlstm_context_destroy; the caller keeps (and releases) its own references. Buffers, plans and programs are then
 * made in the caller's cl_context, so cl_mem objects of that context can be wrapped. MLSTM_ERR_INVALID_ARGUMENT
 * (detail in mlstm_last_error_global) for NULL, a device outside the context, a queue of another context or
 * device, or an out-of-order queue; MLSTM_ERR_BACKEND_UNAVAILABLE without the OpenCL backend. The objects must be
 * valid OpenCL objects (as for any OpenCL call). */
MLSTM_API int mlstm_context_create_opencl(struct _cl_context *context, struct _cl_device_id *device,
                                          struct _cl_command_queue *queue, mlstm_context **out);

/* The cl_context, cl_device_id and cl_command_queue of an OpenCL context (created either way), borrowed: valid
 * until mlstm_context_destroy, not retained for the caller. Each out pointer may be NULL.
 * MLSTM_ERR_BACKEND_UNAVAILABLE when ctx is not an OpenCL context. */
MLSTM_API int mlstm_context_get_opencl(const mlstm_context *ctx, struct _cl_context **context,
                                       struct _cl_device_id **device, struct _cl_command_queue **queue);

/* Wraps mem, a buffer object of ctx's cl_context (see mlstm_context_get_opencl / mlstm_context_create_opencl)
 * holding at least count elements of dtype (checked with clGetMemObjectInfo: MLSTM_ERR_CONTEXT_MISMATCH for a
 * cl_mem of another cl_context, MLSTM_ERR_BUFFER_TOO_SMALL for a smaller one, MLSTM_ERR_INVALID_ARGUMENT for an
 * image or an object that is not a cl_mem). mem must be a cl_mem: a pointer to readable host memory is detected
 * (its first word is not the platform's ICD dispatch pointer) and rejected; any other invalid pointer is
 * undefined behaviour, as in OpenCL itself. libmlstm never releases mem; the caller keeps it alive until the
 * buffer is destroyed. MLSTM_ERR_BACKEND_UNAVAILABLE when ctx is not an OpenCL context. */
MLSTM_API int mlstm_buffer_wrap_opencl(mlstm_context *ctx, struct _cl_mem *mem, int dtype, size_t count,
                                       mlstm_buffer **out);

#ifdef __cplusplus
}
#endif
#endif /* MLSTM_OPENCL_H */
