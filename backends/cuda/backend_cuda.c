/* libmlstm CUDA backend, host side (C11, CUDA runtime API linked statically): device probe, per-context
 * state (device, stream), device buffers, launches through kernels_cuda/ (the materialised algorithm through
 * materialized_cuda.c), and cudaError_t -> mlstm_status
 * mapping with a "cudaXxx failed: cudaErrorName (code) at file:line" detail for last_error. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "backend.h"
#include "cuda/backend_cuda.h"
#include "cuda/materialized_cuda.h"
#include "../../kernels_cuda/mlstm_cuda_kernels.h"

typedef struct mlstm_cuda_impl {
    int device;
    cudaStream_t own_stream; /* created at init, destroyed at destroy */
    cudaStream_t stream;     /* where work goes: own_stream or the caller's (mlstm_cuda_set_stream) */
    mlstm_cuda_dispatch *dispatch; /* this context's kernel choice state (kernels_cuda/dispatch.cu), immutable */
    mlstm_cuda_trace trace;        /* the kernels the last fwd/bwd enqueued */
    void *ws;                /* the head-dim staging workspace (kernels_cuda/head_dims.cu), grown on demand */
    size_t ws_bytes;
    mlstm_cuda_mat *mat;     /* the materialised algorithm's cuBLAS and workspace (materialized_cuda.c), or NULL */
    char name[256];
    char err[1024];
} mlstm_cuda_impl;

static void put_msg(char *msg, size_t len, const char *fmt, ...)
{
    if (msg == NULL || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
}

/* Status for a failed CUDA call. */
static int map_error(cudaError_t e, int launch)
{
    switch (e) {
    case cudaSuccess: return MLSTM_OK;
    case cudaErrorMemoryAllocation: return MLSTM_ERR_OUT_OF_MEMORY;
    case cudaErrorNotSupported: return MLSTM_ERR_UNSUPPORTED; /* e.g. a kernel variant forced by MLSTM_CUDA_FORCE */
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice: return MLSTM_ERR_NO_DEVICE;
    case cudaErrorLaunchOutOfResources:
    case cudaErrorInvalidConfiguration:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDeviceFunction: return MLSTM_ERR_LAUNCH;
    default: return launch ? MLSTM_ERR_LAUNCH : MLSTM_ERR_DEVICE;
    }
}

/* Records "what failed: cudaErrorName (code) at file:line" and clears a non-sticky error. */
static int fail_at(mlstm_cuda_impl *c, cudaError_t e, const char *what, const char *file, int line, int launch)
{
    if (c)
        put_msg(c->err, sizeof c->err, "%s failed: %s (%d) at %s:%d", what, cudaGetErrorName(e), (int)e, file,
                line);
    (void)cudaGetLastError();
    return map_error(e, launch);
}

#define CU_TRY(c, call)                                                                                          \
    do {                                                                                                         \
        cudaError_t e_ = (call);                                                                                 \
        if (e_ != cudaSuccess)                                                                                   \
            return fail_at((c), e_, #call, __FILE__, __LINE__, 0);                                               \
    } while (0)

/* ---- probe / init / destroy ---- */

static int cuda_probe(int *n_devices, char *msg, size_t msg_len)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        /* no driver, no device, driver too old, or a broken driver: all read as "no device" so that a
         * library built with CUDA still works (through OpenCL) on such a machine */
        put_msg(msg, msg_len, "cudaGetDeviceCount failed: %s (%d): %s", cudaGetErrorName(e), (int)e,
                cudaGetErrorString(e));
        (void)cudaGetLastError();
        *n_devices = 0;
        return MLSTM_OK;
    }
    if (n == 0)
        put_msg(msg, msg_len, "no CUDA device");
    *n_devices = n;
    return MLSTM_OK;
}

static void cuda_destroy(void *impl)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    if (c == NULL)
        return;
    if (cudaSetDevice(c->device) == cudaSuccess) {
        if (c->stream != c->own_stream)
            (void)cudaStreamSynchronize(c->stream);
        if (c->own_stream) {
            (void)cudaStreamSynchronize(c->own_stream);
            (void)cudaStreamDestroy(c->own_stream);
        }
        if (c->ws)
            (void)cudaFree(c->ws);
        mlstm_cuda_mat_release(c->mat);
    }
    mlstm_cuda_kernels_release(c->dispatch);
    (void)cudaGetLastError();
    free(c);
}

static int cuda_init(const mlstm_backend_config *cfg, void **impl, char *msg, size_t msg_len)
{
    *impl = NULL;
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)calloc(1, sizeof *c);
    if (c == NULL) {
        put_msg(msg, msg_len, "out of host memory");
        return MLSTM_ERR_OUT_OF_MEMORY;
    }
    c->device = cfg->device;
    int st = MLSTM_OK;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || cfg->device < 0 || cfg->device >= n) {
        put_msg(msg, msg_len, "CUDA device %d not present (%d device%s%s%s)", cfg->device, n, n == 1 ? "" : "s",
                e != cudaSuccess ? ", " : "", e != cudaSuccess ? cudaGetErrorName(e) : "");
        (void)cudaGetLastError();
        free(c);
        return MLSTM_ERR_NO_DEVICE;
    }
    struct cudaDeviceProp prop;
    if ((e = cudaSetDevice(c->device)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, c->device)) != cudaSuccess) {
        st = fail_at(c, e, "cudaSetDevice/cudaGetDeviceProperties", __FILE__, __LINE__, 0);
        goto fail;
    }
    if (prop.major < 8) {
        put_msg(c->err, sizeof c->err, "device %d (%s) has compute capability %d.%d; libmlstm's CUDA kernels need 8.0+",
                c->device, prop.name, prop.major, prop.minor);
        st = MLSTM_ERR_NO_DEVICE;
        goto fail;
    }
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    if ((e = cudaStreamCreate(&c->own_stream)) != cudaSuccess) {
        st = fail_at(c, e, "cudaStreamCreate", __FILE__, __LINE__, 0);
        goto fail;
    }
    c->stream = c->own_stream;
    {
        mlstm_cuda_fail f = {0, "", "", 0};
        if (mlstm_cuda_kernels_setup(&f, cfg->cuda_small_tiles, cfg->cuda_f32_tc, cfg->cuda_wgmma, cfg->cuda_force,
                                     &c->dispatch) != 0) {
            st = fail_at(c, (cudaError_t)f.code, f.what, f.file, f.line, 1);
            goto fail;
        }
    }
    *impl = c;
    return MLSTM_OK;
fail:
    put_msg(msg, msg_len, "%s", c->err);
    cuda_destroy(c);
    return st;
}

static const char *cuda_device_name(void *impl) { return ((mlstm_cuda_impl *)impl)->name; }

static const char *cuda_last_error(void *impl) { return impl ? ((mlstm_cuda_impl *)impl)->err : ""; }

static const char *cuda_last_kernels(void *impl) { return impl ? ((mlstm_cuda_impl *)impl)->trace.kernels : ""; }

/* ---- buffers ---- */

static int cuda_buffer_alloc(void *impl, size_t bytes, void **mem)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    *mem = NULL;
    CU_TRY(c, cudaSetDevice(c->device));
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        put_msg(c->err, sizeof c->err, "cudaMalloc(%zu bytes) failed: %s (%d) at %s:%d", bytes,
                cudaGetErrorName(e), (int)e, __FILE__, __LINE__);
        (void)cudaGetLastError(); /* out of memory is not sticky: the context stays usable */
        return map_error(e, 0);
    }
    *mem = p;
    return MLSTM_OK;
}

static void cuda_buffer_free(void *impl, void *mem)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    if (mem == NULL)
        return;
    if (cudaSetDevice(c->device) == cudaSuccess)
        (void)cudaFree(mem);
    (void)cudaGetLastError();
}

static int cuda_copy(mlstm_cuda_impl *c, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    CU_TRY(c, cudaSetDevice(c->device));
    if (bytes == 0)
        return MLSTM_OK;
    CU_TRY(c, cudaMemcpyAsync(dst, src, bytes, kind, c->stream));
    CU_TRY(c, cudaStreamSynchronize(c->stream));
    return MLSTM_OK;
}

static int cuda_buffer_write(void *impl, void *mem, size_t offset_bytes, size_t bytes, const void *src)
{
    return cuda_copy((mlstm_cuda_impl *)impl, (char *)mem + offset_bytes, src, bytes, cudaMemcpyHostToDevice);
}

static int cuda_buffer_read(void *impl, void *mem, size_t offset_bytes, size_t bytes, void *dst)
{
    return cuda_copy((mlstm_cuda_impl *)impl, dst, (const char *)mem + offset_bytes, bytes, cudaMemcpyDeviceToHost);
}

/* ---- compute ---- */

/* Makes the context's workspace at least bytes large. Never inside a CUDA graph capture (an allocation there would
 * be the graph's, not the context's): then a clear error asking for one uncaptured call first. */
static int ensure_workspace(mlstm_cuda_impl *c, size_t bytes)
{
    if (bytes <= c->ws_bytes)
        return MLSTM_OK;
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    CU_TRY(c, cudaStreamIsCapturing(c->stream, &cap));
    if (cap != cudaStreamCaptureStatusNone) {
        put_msg(c->err, sizeof c->err,
                "this call needs a %zu-byte device workspace (head dims staged for the tensor-core kernels) and the "
                "context has %zu bytes; it cannot be allocated during CUDA graph capture: run the call once before "
                "capturing",
                bytes, c->ws_bytes);
        return MLSTM_ERR_OUT_OF_MEMORY; /* as the materialised algorithm's workspace (mlstm.h) */
    }
    CU_TRY(c, cudaStreamSynchronize(c->stream)); /* the old workspace may still be in use */
    if (c->ws)
        (void)cudaFree(c->ws);
    c->ws = NULL;
    c->ws_bytes = 0;
    cudaError_t e = cudaMalloc(&c->ws, bytes);
    if (e != cudaSuccess) {
        c->ws = NULL;
        put_msg(c->err, sizeof c->err, "cudaMalloc of the %zu-byte workspace failed: %s (%d)", bytes,
                cudaGetErrorName(e), (int)e);
        (void)cudaGetLastError();
        return map_error(e, 0);
    }
    c->ws_bytes = bytes;
    return MLSTM_OK;
}

static int cuda_run(void *impl, const mlstm_params *p, int backward)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    CU_TRY(c, cudaSetDevice(c->device));
    if (p->algo == MLSTM_ALGO_MATERIALIZED)
        return mlstm_cuda_mat_run(&c->mat, p, backward, (void *)c->stream, c->err, sizeof c->err);
    /* the head-dim staging: in the caller's workspace (mlstm_context_set_workspace) where set, else the context's */
    void *ws = c->ws;
    size_t ws_bytes = c->ws_bytes;
    if (p->ws_mem != NULL) {
        ws = (char *)p->ws_mem + p->ws_offset;
        ws_bytes = (size_t)p->ws_bytes;
    } else {
        int st = ensure_workspace(c, mlstm_cuda_kernels_workspace_size(c->dispatch, p, backward));
        if (st != MLSTM_OK)
            return st;
        ws = c->ws;
        ws_bytes = c->ws_bytes;
    }
    mlstm_cuda_fail f = {0, "", "", 0};
    int e = backward ? mlstm_cuda_kernels_bwd(c->dispatch, p, (void *)c->stream, ws, ws_bytes, &c->trace, &f)
                     : mlstm_cuda_kernels_fwd(c->dispatch, p, (void *)c->stream, ws, ws_bytes, &c->trace, &f);
    if (e != 0)
        return fail_at(c, (cudaError_t)f.code, f.what, f.file, f.line, 1);
    return MLSTM_OK;
}

static int cuda_fwd(void *impl, const mlstm_params *p) { return cuda_run(impl, p, 0); }
static int cuda_bwd(void *impl, const mlstm_params *p) { return cuda_run(impl, p, 1); }

static int cuda_synchronize(void *impl)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    CU_TRY(c, cudaSetDevice(c->device));
    CU_TRY(c, cudaStreamSynchronize(c->stream));
    return MLSTM_OK;
}

/* ---- interop hooks (backend_cuda.h) ---- */

int mlstm_cuda_set_stream(void *impl, void *stream)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    if (c == NULL)
        return MLSTM_ERR_INVALID_ARGUMENT;
    c->stream = stream ? (cudaStream_t)stream : c->own_stream;
    return MLSTM_OK;
}

int mlstm_cuda_check_pointer(void *impl, const void *ptr)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    struct cudaPointerAttributes a;
    cudaError_t e = cudaPointerGetAttributes(&a, ptr);
    if (e != cudaSuccess) {
        (void)fail_at(c, e, "cudaPointerGetAttributes", __FILE__, __LINE__, 0);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (a.type == cudaMemoryTypeManaged)
        return MLSTM_OK;
    if (a.type != cudaMemoryTypeDevice || a.device != c->device) {
        put_msg(c->err, sizeof c->err, "pointer %p is not device memory of CUDA device %d (type %d, device %d)", ptr,
                c->device, (int)a.type, a.device);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    return MLSTM_OK;
}

static int cuda_workspace_size(void *impl, const mlstm_params *p, int backward, uint64_t *bytes)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    if (p->algo != MLSTM_ALGO_MATERIALIZED) {
        *bytes = mlstm_cuda_kernels_workspace_size(c->dispatch, p, backward); /* head-dim staging, usually 0 */
        return MLSTM_OK;
    }
    return mlstm_cuda_mat_workspace_size(p, backward, bytes, c->err, sizeof c->err);
}

const mlstm_backend_ops mlstm_backend_cuda_ops = {
    /* .abi_version  = */ MLSTM_BACKEND_ABI_VERSION,
    /* .name         = */ "cuda",
    /* .probe        = */ cuda_probe,
    /* .init         = */ cuda_init,
    /* .destroy      = */ cuda_destroy,
    /* .device_name  = */ cuda_device_name,
    /* .buffer_alloc = */ cuda_buffer_alloc,
    /* .buffer_free  = */ cuda_buffer_free,
    /* .buffer_write = */ cuda_buffer_write,
    /* .buffer_read  = */ cuda_buffer_read,
    /* .supports     = */ NULL,
    /* .fwd          = */ cuda_fwd,
    /* .bwd          = */ cuda_bwd,
    /* .synchronize  = */ cuda_synchronize,
    /* .last_error   = */ cuda_last_error,
    /* .last_kernels = */ cuda_last_kernels,
    /* .workspace_size = */ cuda_workspace_size,
};
