/* Interop entry points of the API core: contexts on the caller's OpenCL objects and their handles, zero-copy
 * wrapping of native CUDA device pointers and OpenCL cl_mem objects (checked by the backend), and routing a
 * caller's cudaStream_t to the CUDA backend. The backend-specific work is in backends/; this file checks that
 * the context runs the right backend. */
#include <string.h>
#include "internal.h"
#include "mlstm_cuda.h"
#include "mlstm_opencl.h"
#ifdef MLSTM_HAVE_CUDA
#include "cuda/backend_cuda.h"
#endif
#ifdef MLSTM_HAVE_OPENCL
#include "opencl/backend_opencl.h"
#endif

int mlstm_buffer_wrap_mem(mlstm_context *ctx, const char *fn, void *mem, int dtype, size_t count,
                          mlstm_buffer **out);

static int require_backend(mlstm_context *ctx, const char *fn, const char *name)
{
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    if (strcmp(ctx->ops->name, name) != 0)
        return mlstm_fail(ctx, MLSTM_ERR_BACKEND_UNAVAILABLE, "%s: the context runs the '%s' backend, not '%s'", fn,
                          ctx->ops->name, name);
    return MLSTM_OK;
}

int mlstm_buffer_wrap_opencl(mlstm_context *ctx, struct _cl_mem *mem, int dtype, size_t count, mlstm_buffer **out)
{
    static const char fn[] = "mlstm_buffer_wrap_opencl";
    int st = require_backend(ctx, fn, "opencl");
    if (st != MLSTM_OK)
        return st;
#ifdef MLSTM_HAVE_OPENCL
    const size_t es = mlstm_dtype_size(dtype);
    if (out != NULL)
        *out = NULL;
    if (out != NULL && mem != NULL && es != 0 && count != 0 && count <= (size_t)INT64_MAX / es &&
        (st = mlstm_opencl_check_mem(ctx->impl, mem, count * es)) != MLSTM_OK)
        return mlstm_fail_backend(ctx, st, fn);
#endif
    return mlstm_buffer_wrap_mem(ctx, fn, (void *)mem, dtype, count, out); /* checks the rest */
}

int mlstm_context_create_opencl(struct _cl_context *context, struct _cl_device_id *device,
                                struct _cl_command_queue *queue, mlstm_context **out)
{
    static const char fn[] = "mlstm_context_create_opencl";
    mlstm_set_global_error("%s", "");
    if (out == NULL || context == NULL || device == NULL) {
        mlstm_set_global_error("%s: %s is NULL", fn, out == NULL ? "out" : context == NULL ? "context" : "device");
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    *out = NULL;
#ifdef MLSTM_HAVE_OPENCL
    char msg[MLSTM_ERRMSG_MAX / 2];
    msg[0] = '\0';
    void *impl = NULL;
    const char *kdir = mlstm_env_string("MLSTM_OPENCL_KERNEL_DIR");
    int st = mlstm_opencl_init_external(context, device, queue, kdir, &impl, msg, sizeof msg);
    if (st != MLSTM_OK) {
        mlstm_set_global_error("%s: %s%s%s", fn, mlstm_status_string(st), msg[0] ? ": " : "", msg);
        return st;
    }
    return mlstm_context_adopt(&mlstm_backend_opencl_ops, impl, out);
#else
    (void)queue;
    mlstm_set_global_error("%s: the OpenCL backend is not compiled into this library", fn);
    return MLSTM_ERR_BACKEND_UNAVAILABLE;
#endif
}

int mlstm_context_get_opencl(const mlstm_context *ctx, struct _cl_context **context, struct _cl_device_id **device,
                             struct _cl_command_queue **queue)
{
    static const char fn[] = "mlstm_context_get_opencl";
    int st = require_backend((mlstm_context *)ctx, fn, "opencl");
    if (st != MLSTM_OK)
        return st;
#ifdef MLSTM_HAVE_OPENCL
    void *c = NULL, *d = NULL, *q = NULL;
    mlstm_opencl_handles(ctx->impl, &c, &d, &q);
    if (context)
        *context = (struct _cl_context *)c;
    if (device)
        *device = (struct _cl_device_id *)d;
    if (queue)
        *queue = (struct _cl_command_queue *)q;
    return MLSTM_OK;
#else
    (void)context; (void)device; (void)queue;
    return MLSTM_ERR_INTERNAL; /* unreachable: no context can run "opencl" */
#endif
}

int mlstm_buffer_wrap_cuda(mlstm_context *ctx, void *device_ptr, int dtype, size_t count, mlstm_buffer **out)
{
    static const char fn[] = "mlstm_buffer_wrap_cuda";
    int st = require_backend(ctx, fn, "cuda");
    if (st != MLSTM_OK)
        return st;
#ifdef MLSTM_HAVE_CUDA
    if (device_ptr != NULL && (st = mlstm_cuda_check_pointer(ctx->impl, device_ptr)) != MLSTM_OK)
        return mlstm_fail_backend(ctx, st, fn);
#endif
    return mlstm_buffer_wrap_mem(ctx, fn, device_ptr, dtype, count, out);
}

int mlstm_context_set_cuda_stream(mlstm_context *ctx, void *stream)
{
    static const char fn[] = "mlstm_context_set_cuda_stream";
    int st = require_backend(ctx, fn, "cuda");
    if (st != MLSTM_OK)
        return st;
#ifdef MLSTM_HAVE_CUDA
    st = mlstm_cuda_set_stream(ctx->impl, stream);
    return st == MLSTM_OK ? MLSTM_OK : mlstm_fail_backend(ctx, st, fn);
#else
    (void)stream;
    return MLSTM_ERR_INTERNAL; /* unreachable: no context can run "cuda" */
#endif
}
