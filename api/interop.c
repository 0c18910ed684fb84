/* Interop entry points of the API core: zero-copy wrapping of native CUDA device pointers and OpenCL
 * cl_mem objects, and routing a caller's cudaStream_t to the CUDA backend. The backend-specific work is
 * in backends/; this file only checks that the context runs the right backend. */
#include <string.h>
#include "internal.h"
#include "mlstm_cuda.h"
#include "mlstm_opencl.h"
#ifdef MLSTM_HAVE_CUDA
#include "cuda/backend_cuda.h"
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
    return st != MLSTM_OK ? st : mlstm_buffer_wrap_mem(ctx, fn, (void *)mem, dtype, count, out);
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
