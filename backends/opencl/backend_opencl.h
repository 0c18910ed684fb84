/* libmlstm OpenCL backend: what the API core may call besides the ops table (mlstm_backend_opencl_ops, declared
 * in backend.h): a context on the caller's own OpenCL objects, its handles, and the check of a wrapped cl_mem.
 * Plain C, no OpenCL header needed; the interop entry points of api/mlstm_opencl.h use these. */
#ifndef MLSTM_BACKEND_OPENCL_H
#define MLSTM_BACKEND_OPENCL_H

#include <stddef.h>
#include "backend.h"

/* Creates the backend state on the caller's cl_context, cl_device_id (a device of that context) and in-order
 * cl_command_queue of both (NULL: the backend creates its own queue); kernel_dir as in mlstm_backend_config.
 * Retains what it keeps and releases exactly those retains at destroy. On failure writes the detail into msg. */
int mlstm_opencl_init_external(void *context, void *device, void *queue, const char *kernel_dir, void **impl,
                               char *msg, size_t msg_len);
/* The context's cl_context, cl_device_id and cl_command_queue (borrowed); each out pointer may be NULL. */
void mlstm_opencl_handles(void *impl, void **context, void **device, void **queue);
/* MLSTM_OK when mem is a buffer object of the context's cl_context with at least bytes bytes; else
 * MLSTM_ERR_INVALID_ARGUMENT, MLSTM_ERR_CONTEXT_MISMATCH or MLSTM_ERR_BUFFER_TOO_SMALL with the detail in the
 * backend's last_error. */
int mlstm_opencl_check_mem(void *impl, void *mem, size_t bytes);

#endif /* MLSTM_BACKEND_OPENCL_H */
