/* libmlstm CUDA backend, host side (C11, CUDA runtime API linked statically): device probe, per-context
 * state (device, stream), device buffers, launches through kernels_cuda/ (the materialised algorithm through
 * materialized_cuda.c), the limits it serves (supports), and cudaError_t -> mlstm_status mapping with a
 * "cudaXxx failed: cudaErrorName (code) at file:line" detail for last_error. Every entry point leaves the calling
 * thread's current device as it found it. */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
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

/* ---- the caller's current device ---- */

/* Makes the context's device current and remembers the caller's (CUDA's default, device 0, when the thread never
 * chose one) in *prev for leave_device. */
static int enter_device(mlstm_cuda_impl *c, int *prev)
{
    if (cudaGetDevice(prev) != cudaSuccess) {
        (void)cudaGetLastError();
        *prev = -1;
    }
    if (*prev == c->device)
        return MLSTM_OK;
    cudaError_t e = cudaSetDevice(c->device);
    return e == cudaSuccess ? MLSTM_OK : fail_at(c, e, "cudaSetDevice", __FILE__, __LINE__, 0);
}

static void leave_device(int prev, int device)
{
    if (prev >= 0 && prev != device && cudaSetDevice(prev) != cudaSuccess)
        (void)cudaGetLastError();
}

/* Evaluates call (an mlstm_status expression) on the context's device and returns its status, the caller's device
 * current again. */
#define ON_DEVICE(c, call)                                                                                       \
    do {                                                                                                         \
        int prev_ = -1;                                                                                          \
        int st_ = enter_device((c), &prev_);                                                                     \
        if (st_ == MLSTM_OK)                                                                                     \
            st_ = (call);                                                                                        \
        leave_device(prev_, (c)->device);                                                                        \
        return st_;                                                                                              \
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
    int prev = -1;
    if (enter_device(c, &prev) == MLSTM_OK) {
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
    leave_device(prev, c->device);
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
    int prev = -1;
    if ((st = enter_device(c, &prev)) != MLSTM_OK)
        goto fail;
    if ((e = cudaGetDeviceProperties(&prop, c->device)) != cudaSuccess) {
        st = fail_at(c, e, "cudaGetDeviceProperties", __FILE__, __LINE__, 0);
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
        if (mlstm_cuda_kernels_setup(&f, cfg->cuda_small_tiles, cfg->cuda_f32_tc, cfg->cuda_wgmma, cfg->cuda_d512,
                                     cfg->cuda_force, &c->dispatch) != 0) {
            st = fail_at(c, (cudaError_t)f.code, f.what, f.file, f.line, 1);
            goto fail;
        }
    }
    leave_device(prev, c->device);
    *impl = c;
    return MLSTM_OK;
fail:
    put_msg(msg, msg_len, "%s", c->err);
    cuda_destroy(c);
    leave_device(prev, cfg->device);
    return st;
}

static const char *cuda_device_name(void *impl) { return ((mlstm_cuda_impl *)impl)->name; }

static const char *cuda_last_error(void *impl) { return impl ? ((mlstm_cuda_impl *)impl)->err : ""; }

static const char *cuda_last_kernels(void *impl) { return impl ? ((mlstm_cuda_impl *)impl)->trace.kernels : ""; }

/* ---- buffers ---- */

static int alloc_on(mlstm_cuda_impl *c, size_t bytes, void **mem)
{
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

static int cuda_buffer_alloc(void *impl, size_t bytes, void **mem)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    *mem = NULL;
    ON_DEVICE(c, alloc_on(c, bytes, mem));
}

static void cuda_buffer_free(void *impl, void *mem)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    if (mem == NULL)
        return;
    int prev = -1;
    if (enter_device(c, &prev) == MLSTM_OK)
        (void)cudaFree(mem);
    (void)cudaGetLastError();
    leave_device(prev, c->device);
}

static int copy_on(mlstm_cuda_impl *c, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    if (bytes == 0)
        return MLSTM_OK;
    CU_TRY(c, cudaMemcpyAsync(dst, src, bytes, kind, c->stream));
    CU_TRY(c, cudaStreamSynchronize(c->stream));
    return MLSTM_OK;
}

static int cuda_buffer_write(void *impl, void *mem, size_t offset_bytes, size_t bytes, const void *src)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    ON_DEVICE(c, copy_on(c, (char *)mem + offset_bytes, src, bytes, cudaMemcpyHostToDevice));
}

static int cuda_buffer_read(void *impl, void *mem, size_t offset_bytes, size_t bytes, void *dst)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    ON_DEVICE(c, copy_on(c, dst, (const char *)mem + offset_bytes, bytes, cudaMemcpyDeviceToHost));
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
                "this call needs a %zu-byte device workspace (the materialised algorithm, or head dims staged for the "
                "tensor-core kernels) and the context has %zu bytes; libmlstm does not allocate during CUDA graph "
                "capture: pass one (mlstm_context_set_workspace) or run the call once before capturing",
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

/* Limits of the kernels: 1-D grids of at most INT_MAX blocks, where the per-row passes take 8 rows of (batch, head,
 * position) per block and the tile kernels at least 16 positions of one (batch, head) (the OpenCL backend's
 * supports() states its own limits the same way). Head dimensions 1..MLSTM_MAX_HEAD_DIM are all served (the API
 * rejects larger ones). */
static int cuda_supports(void *impl, const mlstm_params *p, int backward)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    (void)backward;
    /* no overflow: the API bounds batch * heads * seq_len * head_dim * 4 bytes by INT64_MAX */
    const uint64_t bh = (uint64_t)p->batch * (uint64_t)p->heads;
    const uint64_t rows = bh * (uint64_t)p->seq_len, tiles = bh * (((uint64_t)p->seq_len + 15) / 16);
    if ((rows + 7) / 8 > (uint64_t)INT_MAX || tiles > (uint64_t)INT_MAX) {
        put_msg(c->err, sizeof c->err,
                "%lld x %lld x %lld positions exceed the CUDA backend's grids (at most %d blocks of 8 rows, or of 16 "
                "positions of one batch and head)", (long long)p->batch, (long long)p->heads, (long long)p->seq_len,
                INT_MAX);
        return MLSTM_ERR_UNSUPPORTED;
    }
    return MLSTM_OK;
}

static int cuda_workspace_size(void *impl, const mlstm_params *p, int backward, uint64_t *bytes);

static int run_on(mlstm_cuda_impl *c, const mlstm_params *p, int backward)
{
    /* the workspace of either algorithm: the caller's where the API attached one, else the context's own */
    mlstm_params q = *p;
    if (q.ws_mem == NULL) {
        uint64_t need = 0;
        int st = cuda_workspace_size(c, p, backward, &need);
        if (st == MLSTM_OK && need > 0)
            st = ensure_workspace(c, (size_t)need);
        if (st != MLSTM_OK)
            return st;
        q.ws_mem = c->ws;
        q.ws_offset = 0;
        q.ws_bytes = c->ws_bytes;
    }
    if (q.algo == MLSTM_ALGO_MATERIALIZED) {
        /* the call trace names the algorithm, so that mlstm_context_last_kernels never reports an earlier call's */
        snprintf(c->trace.kernels, sizeof c->trace.kernels, "materialized.%s.%s", backward ? "bwd" : "fwd",
                 q.dtype == MLSTM_DTYPE_F32 ? "f32" : q.dtype == MLSTM_DTYPE_F16 ? "f16" : "bf16");
        return mlstm_cuda_mat_run(&c->mat, &q, backward, (void *)c->stream, c->err, sizeof c->err);
    }
    void *ws = q.ws_mem ? (char *)q.ws_mem + q.ws_offset : NULL;
    mlstm_cuda_fail f = {0, "", "", 0};
    int e = backward ? mlstm_cuda_kernels_bwd(c->dispatch, &q, (void *)c->stream, ws, (size_t)q.ws_bytes, &c->trace, &f)
                     : mlstm_cuda_kernels_fwd(c->dispatch, &q, (void *)c->stream, ws, (size_t)q.ws_bytes, &c->trace, &f);
    if (e != 0)
        return fail_at(c, (cudaError_t)f.code, f.what, f.file, f.line, 1);
    return MLSTM_OK;
}

static int cuda_fwd(void *impl, const mlstm_params *p)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    ON_DEVICE(c, run_on(c, p, 0));
}

static int cuda_bwd(void *impl, const mlstm_params *p)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    ON_DEVICE(c, run_on(c, p, 1));
}

static int sync_on(mlstm_cuda_impl *c)
{
    CU_TRY(c, cudaStreamSynchronize(c->stream));
    return MLSTM_OK;
}

static int cuda_synchronize(void *impl)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    ON_DEVICE(c, sync_on(c));
}

/* ---- interop hooks (backend_cuda.h) ---- */

/* MLSTM_OK when stream runs on the context's device (which is current). */
static int stream_on_device(mlstm_cuda_impl *c, cudaStream_t stream)
{
    /* a stream under graph capture is taken as is: querying it (or recording into it) there would invalidate the
     * caller's capture */
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &cap) != cudaSuccess) {
        (void)cudaGetLastError();
        cap = cudaStreamCaptureStatusNone;
    }
    if (cap != cudaStreamCaptureStatusNone)
        return MLSTM_OK;
#if CUDART_VERSION >= 12080
    int dev = -1;
    cudaError_t e = cudaStreamGetDevice(stream, &dev);
    if (e != cudaSuccess) {
        (void)fail_at(c, e, "cudaStreamGetDevice", __FILE__, __LINE__, 0);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
#else /* no cudaStreamGetDevice: an event of the context's device cannot be recorded into another device's stream */
    const int dev = -1;
    cudaEvent_t ev;
    CU_TRY(c, cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    cudaError_t e = cudaEventRecord(ev, stream);
    (void)cudaEventDestroy(ev);
    (void)cudaGetLastError();
    if (e == cudaSuccess)
        return MLSTM_OK;
#endif
    if (dev == c->device)
        return MLSTM_OK;
    put_msg(c->err, sizeof c->err, "stream %p belongs to %s CUDA device (%d), the context runs on device %d",
            (void *)stream, dev >= 0 ? "another" : "another or no", dev, c->device);
    return MLSTM_ERR_INVALID_ARGUMENT;
}

int mlstm_cuda_set_stream(void *impl, void *stream)
{
    mlstm_cuda_impl *c = (mlstm_cuda_impl *)impl;
    if (c == NULL)
        return MLSTM_ERR_INVALID_ARGUMENT;
    cudaStream_t s = stream ? (cudaStream_t)stream : c->own_stream;
    if (s != c->own_stream && s != cudaStreamLegacy && s != cudaStreamPerThread) { /* the special handles: any device */
        int prev = -1;
        int st = enter_device(c, &prev);
        if (st == MLSTM_OK)
            st = stream_on_device(c, s);
        leave_device(prev, c->device);
        if (st != MLSTM_OK)
            return st;
    }
    c->stream = s;
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

/* the fused kernels dispatch.cu would run for p: a tensor-core path, or the SIMT kernels */
static int cuda_fused_on_tensor_cores(void *impl, const mlstm_params *p, int backward)
{
    const mlstm_cuda_impl *c = impl;
    return strcmp(mlstm_cuda_kernels_path(c->dispatch, p, backward), "simt") != 0;
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
    /* .supports     = */ cuda_supports,
    /* .fwd          = */ cuda_fwd,
    /* .bwd          = */ cuda_bwd,
    /* .synchronize  = */ cuda_synchronize,
    /* .last_error   = */ cuda_last_error,
    /* .last_kernels = */ cuda_last_kernels,
    /* .workspace_size = */ cuda_workspace_size,
    /* .plan_create  = */ NULL, /* plans carry no CUDA state yet; the instance choice stays per call */
    /* .plan_destroy = */ NULL,
    /* .device_is_cpu = */ NULL,
    /* .fused_on_tensor_cores = */ cuda_fused_on_tensor_cores,
};
