/* CUDA backend, the materialised algorithm: q k^T, C v and the backward's products as cuBLAS strided-batched GEMMs
 * (cublasGemmStridedBatchedEx over b*NH) on f32 copies of the tensors in a workspace, with the kernels of
 * kernels_cuda/materialized/materialized.cu between them. cuBLAS is loaded with dlopen at first use, so the library
 * keeps loading (and serving the fused kernels) where no driver or no cuBLAS is installed, and its size does not grow
 * by cuBLAS's static archives. Precision: f32 storage runs IEEE SGEMMs (CUBLAS_COMPUTE_32F_PEDANTIC); f16 / bf16
 * storage (and MLSTM_MATH_TF32) run TF32 tensor-core GEMMs, on which f16 / bf16 operands are exact, with the S x S
 * operands of the second products rounded to TF32's 10-bit mantissa (as the contract lets a C or P tile be rounded
 * to the storage type before the second product, with f32's range instead of f16's). */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <cublas_api.h>

#include "backend.h"
#include "mat_layout.h"
#include "cuda/materialized_cuda.h"
#include "../../kernels_cuda/materialized/materialized.h"

#define CUBLAS_SCRATCH_BYTES ((uint64_t)32 << 20) /* cublasSetWorkspace: 32 MiB, NVIDIA's advice for Hopper */
#define STR2(x) #x
#define STR(x) STR2(x)

typedef cublasStatus_t (*create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*set_stream_fn)(cublasHandle_t, cudaStream_t);
typedef cublasStatus_t (*set_workspace_fn)(cublasHandle_t, void *, size_t);
typedef const char *(*status_name_fn)(cublasStatus_t);
typedef cublasStatus_t (*gemm_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                  const void *, cudaDataType, int, long long, const void *, cudaDataType, int,
                                  long long, const void *, void *, cudaDataType, int, long long, int,
                                  cublasComputeType_t, cublasGemmAlgo_t);

struct mlstm_cuda_mat {
    void *lib;                   /* dlopen handle of libcublas */
    cublasHandle_t handle;
    destroy_fn destroy;
    set_stream_fn set_stream;
    set_workspace_fn set_workspace;
    status_name_fn status_name;
    gemm_fn gemm;
};

static int fail(char *err, size_t len, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static int fail(char *err, size_t len, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return status;
}

static int cuda_fail(char *err, size_t len, cudaError_t e, const char *what)
{
    (void)cudaGetLastError();
    return fail(err, len, e == cudaErrorMemoryAllocation ? MLSTM_ERR_OUT_OF_MEMORY : MLSTM_ERR_LAUNCH,
                "%s failed: %s (%d)", what, cudaGetErrorName(e), (int)e);
}

int mlstm_cuda_mat_workspace_size(const mlstm_params *p, int backward, uint64_t *bytes, char *err, size_t err_len)
{
    mlstm_mat_layout_t L;
    *bytes = 0;
    if (!mlstm_mat_layout(p, backward, CUBLAS_SCRATCH_BYTES / 4, &L) || L.total > (UINT64_C(1) << 60))
        return fail(err, err_len, MLSTM_ERR_SIZE_OVERFLOW,
                    "the materialised algorithm's workspace for B=%lld NH=%lld S=%lld overflows 64-bit sizes",
                    (long long)p->batch, (long long)p->heads, (long long)p->seq_len);
    *bytes = L.total * 4;
    return MLSTM_OK;
}

void mlstm_cuda_mat_release(mlstm_cuda_mat *m)
{
    if (!m)
        return;
    if (m->handle)
        m->destroy(m->handle);
    if (m->lib)
        dlclose(m->lib);
    free(m);
}

/* Loads cuBLAS and creates the handle (allocates: never inside a graph capture). */
static int load_cublas(mlstm_cuda_mat *m, char *err, size_t len)
{
    static const char *const names[] = {
        "libcublas.so." STR(CUBLAS_VER_MAJOR),
#ifdef MLSTM_CUBLAS_DIR
        MLSTM_CUBLAS_DIR "/libcublas.so." STR(CUBLAS_VER_MAJOR),
#endif
    };
    const char *why = "";
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !m->lib; i++) {
        m->lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!m->lib)
            why = dlerror();
    }
    if (!m->lib)
        return fail(err, len, MLSTM_ERR_UNSUPPORTED, "the materialised algorithm needs cuBLAS (libcublas.so.%d): %s",
                    CUBLAS_VER_MAJOR, why ? why : "not found");
    create_fn create = (create_fn)dlsym(m->lib, "cublasCreate_v2");
    m->destroy = (destroy_fn)dlsym(m->lib, "cublasDestroy_v2");
    m->set_stream = (set_stream_fn)dlsym(m->lib, "cublasSetStream_v2");
    m->set_workspace = (set_workspace_fn)dlsym(m->lib, "cublasSetWorkspace_v2");
    m->status_name = (status_name_fn)dlsym(m->lib, "cublasGetStatusName");
    m->gemm = (gemm_fn)dlsym(m->lib, "cublasGemmStridedBatchedEx");
    if (!create || !m->destroy || !m->set_stream || !m->set_workspace || !m->status_name || !m->gemm) {
        dlclose(m->lib);
        m->lib = NULL;
        return fail(err, len, MLSTM_ERR_UNSUPPORTED, "libcublas.so.%d lacks a function the materialised algorithm "
                    "uses (cublasCreate_v2, cublasGemmStridedBatchedEx, ...)", CUBLAS_VER_MAJOR);
    }
    const cublasStatus_t s = create(&m->handle);
    if (s != CUBLAS_STATUS_SUCCESS) {
        m->handle = NULL;
        return fail(err, len, s == CUBLAS_STATUS_ALLOC_FAILED ? MLSTM_ERR_OUT_OF_MEMORY : MLSTM_ERR_DEVICE,
                    "cublasCreate failed: %s (%d)", m->status_name(s), (int)s);
    }
    return MLSTM_OK;
}

/* Everything one call uses: cuBLAS, the workspace's arrays as pointers, the compute type. */
typedef struct {
    mlstm_cuda_mat *m;
    cudaStream_t stream;
    mlstm_mat_layout_t L;
    float *ws;
    int64_t G;
    int S, tf32;
    char *err;
    size_t len;
} call;

#define WS(c, name) ((c)->ws + (c)->L.name)

/* Row-major C[g] = alpha op(A[g]) op(B[g]) for every g, on workspace arrays (as CLBlast's row-major SGEMM): cuBLAS
 * is column-major, so it computes C^T = op(B)^T op(A)^T with the operands swapped. */
static int gemm(const call *c, const char *what, int ta, int tb, int m, int n, int k, float alpha, uint64_t a,
                int lda, long long sa, uint64_t b, int ldb, long long sb, uint64_t cc, int ldc, long long sc)
{
    const float beta = 0.0f;
    const cublasStatus_t s = c->m->gemm(
        c->m->handle, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, c->ws + b,
        CUDA_R_32F, ldb, sb, c->ws + a, CUDA_R_32F, lda, sa, &beta, c->ws + cc, CUDA_R_32F, ldc, sc, (int)c->G,
        c->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT);
    if (s == CUBLAS_STATUS_SUCCESS)
        return MLSTM_OK;
    return fail(c->err, c->len, s == CUBLAS_STATUS_ALLOC_FAILED ? MLSTM_ERR_OUT_OF_MEMORY : MLSTM_ERR_LAUNCH,
                "cublasGemmStridedBatchedEx (%s: %d x %d x %d, batch %lld) failed: %s (%d)", what, m, n, k,
                (long long)c->G, c->m->status_name(s), (int)s);
}

static int kernel(const call *c, int e, const char *what)
{
    return e == 0 ? MLSTM_OK : cuda_fail(c->err, c->len, (cudaError_t)e, what);
}

/* The call's workspace: backend_cuda.c always hands one over in p (the caller's or the context's own) */
static int workspace(const mlstm_params *p, uint64_t bytes, float **ws, char *err, size_t len)
{
    if (p->ws_mem == NULL || p->ws_bytes < bytes)
        return fail(err, len, MLSTM_ERR_INTERNAL, "the materialised algorithm got a workspace of %llu bytes, needs %llu",
                    (unsigned long long)p->ws_bytes, (unsigned long long)bytes);
    *ws = (float *)((char *)p->ws_mem + p->ws_offset);
    return MLSTM_OK;
}

static int prepare(mlstm_cuda_mat **state, const mlstm_params *p, int backward, void *stream, char *err, size_t len,
                   call *c)
{
    memset(c, 0, sizeof *c);
    c->err = err;
    c->len = len;
    c->stream = (cudaStream_t)stream;
    if (p->seq_len > 2147483647 - MLSTM_MAT_TILE_EDGE || p->dqk > 2147483647 ||
        (uint64_t)p->batch * (uint64_t)p->heads > 2147483647u)
        return fail(err, len, MLSTM_ERR_UNSUPPORTED, "the materialised algorithm takes S and B*NH below 2^31");
    if (!*state && !(*state = calloc(1, sizeof **state)))
        return fail(err, len, MLSTM_ERR_OUT_OF_MEMORY, "out of host memory");
    mlstm_cuda_mat *m = c->m = *state;
    uint64_t bytes;
    int st = mlstm_cuda_mat_workspace_size(p, backward, &bytes, err, len);
    if (st != MLSTM_OK)
        return st;
    mlstm_mat_layout(p, backward, CUBLAS_SCRATCH_BYTES / 4, &c->L);
    if (!m->handle) {
        enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
        const cudaError_t e = cudaStreamIsCapturing(c->stream, &cap);
        if (e != cudaSuccess)
            return cuda_fail(err, len, e, "cudaStreamIsCapturing");
        if (cap != cudaStreamCaptureStatusNone)
            return fail(err, len, MLSTM_ERR_UNSUPPORTED, "the materialised algorithm's first call creates the cuBLAS "
                        "handle, which cannot happen inside a CUDA graph capture: run one call before the capture");
        if ((st = load_cublas(m, err, len)) != MLSTM_OK)
            return st;
    }
    if ((st = workspace(p, bytes, &c->ws, err, len)) != MLSTM_OK)
        return st;
    cublasStatus_t s = m->set_stream(m->handle, c->stream);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = m->set_workspace(m->handle, WS(c, blas), (size_t)CUBLAS_SCRATCH_BYTES);
    if (s != CUBLAS_STATUS_SUCCESS)
        return fail(err, len, MLSTM_ERR_DEVICE, "cublasSetStream / cublasSetWorkspace failed: %s (%d)",
                    m->status_name(s), (int)s);
    c->G = p->batch * p->heads;
    c->S = (int)p->seq_len;
    c->tf32 = p->dtype != MLSTM_DTYPE_F32 || p->math_mode == MLSTM_MATH_TF32;
    return MLSTM_OK;
}

/* Both directions start alike: q, k, v to f32, the gate scan (forward: with m), the scores q k^T. */
static int scores(const call *c, const mlstm_params *p, int with_m)
{
    const mlstm_tensor_arg *t = p->t;
    const int S = c->S, dqk = (int)p->dqk;
    int st;
    if ((st = kernel(c, mlstm_mat_cu_pack(&t[MLSTM_TENSOR_Q], p->dtype, WS(c, qf), c->G, S, p->heads, dqk, c->stream),
                     "mlstm_mat_pack")) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_pack(&t[MLSTM_TENSOR_K], p->dtype, WS(c, kf), c->G, S, p->heads, dqk, c->stream),
                     "mlstm_mat_pack")) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_pack(&t[MLSTM_TENSOR_V], p->dtype, WS(c, vf), c->G, S, p->heads, (int)p->dv,
                                          c->stream), "mlstm_mat_pack")) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_scan(&t[MLSTM_TENSOR_F], &t[MLSTM_TENSOR_I], &t[MLSTM_TENSOR_M], WS(c, fh),
                                          WS(c, fl), with_m ? WS(c, r0) : NULL, c->G, S, p->heads, c->stream),
                     "mlstm_mat_scan")) != MLSTM_OK)
        return st;
    const long long sq = (long long)S * S, sk = (long long)S * dqk;
    return gemm(c, "q k^T", 0, 1, S, S, dqk, 1.0f, c->L.qf, dqk, sk, c->L.kf, dqk, sk, c->L.sm, S, sq);
}

static int forward(const call *c, const mlstm_params *p)
{
    const mlstm_tensor_arg *t = p->t;
    const int S = c->S, dv = (int)p->dv;
    int st;
    if ((st = scores(c, p, 1)) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_fwd_tile(WS(c, sm), WS(c, fh), WS(c, fl), WS(c, r0), WS(c, rh), WS(c, rl),
                                              &t[MLSTM_TENSOR_I], c->G, S, p->heads, p->scale, c->tf32, c->stream),
                     "mlstm_mat_fwd_tile")) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_fwd_rows(WS(c, r0), WS(c, rh), WS(c, rl), WS(c, r1), &t[MLSTM_TENSOR_N], c->G, S,
                                              p->heads, p->eps, c->stream), "mlstm_mat_fwd_rows")) != MLSTM_OK)
        return st;
    const long long sq = (long long)S * S, sv = (long long)S * dv;
    if ((st = gemm(c, "C v", 0, 0, S, dv, S, 1.0f, c->L.sm, S, sq, c->L.vf, dv, sv, c->L.xf, dv, sv)) != MLSTM_OK)
        return st;
    return kernel(c, mlstm_mat_cu_store(WS(c, xf), WS(c, r1), &t[MLSTM_TENSOR_H], p->dtype, c->G, S, p->heads, dv,
                                        c->stream), "mlstm_mat_store");
}

static int backward(const call *c, const mlstm_params *p)
{
    const mlstm_tensor_arg *t = p->t;
    const int S = c->S, dqk = (int)p->dqk, dv = (int)p->dv;
    const long long sq = (long long)S * S, sk = (long long)S * dqk, sv = (long long)S * dv;
    int st;
    if ((st = scores(c, p, 0)) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_pack(&t[MLSTM_TENSOR_DH], p->dtype, WS(c, xf), c->G, S, p->heads, dv, c->stream),
                     "mlstm_mat_pack")) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_bwd_rows(&t[MLSTM_TENSOR_H], &t[MLSTM_TENSOR_DH], p->dtype, &t[MLSTM_TENSOR_M],
                                              &t[MLSTM_TENSOR_N], WS(c, r0), WS(c, r1), WS(c, r2), c->G, S, p->heads,
                                              dv, p->grad_mode == MLSTM_GRAD_EXACT, p->eps, c->stream),
                     "mlstm_mat_bwd_rows")) != MLSTM_OK ||
        (st = gemm(c, "dh v^T", 0, 1, S, S, dv, 1.0f, c->L.xf, dv, sv, c->L.vf, dv, sv, c->L.pm, S, sq)) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_bwd_tile(WS(c, sm), WS(c, pm), WS(c, fh), WS(c, fl), WS(c, r0), WS(c, r1),
                                              WS(c, r2), WS(c, rh), WS(c, rl), WS(c, ch), WS(c, cl),
                                              &t[MLSTM_TENSOR_I], c->G, S, p->heads, p->scale, c->tf32, c->stream),
                     "mlstm_mat_bwd_tile")) != MLSTM_OK)
        return st;
    /* dq = scale P k, dk = scale P^T q, dv = (C / (|n| + eps))^T dh */
    if ((st = gemm(c, "P k", 0, 0, S, dqk, S, p->scale, c->L.pm, S, sq, c->L.kf, dqk, sk, c->L.dq, dqk, sk)) !=
            MLSTM_OK ||
        (st = gemm(c, "P^T q", 1, 0, S, dqk, S, p->scale, c->L.pm, S, sq, c->L.qf, dqk, sk, c->L.dk, dqk, sk)) !=
            MLSTM_OK ||
        (st = gemm(c, "C^T dh", 1, 0, S, dv, S, 1.0f, c->L.sm, S, sq, c->L.xf, dv, sv, c->L.dv, dv, sv)) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_bwd_gates(WS(c, rh), WS(c, rl), WS(c, ch), WS(c, cl), &t[MLSTM_TENSOR_F],
                                               &t[MLSTM_TENSOR_DI], &t[MLSTM_TENSOR_DF], c->G, S, p->heads,
                                               c->stream), "mlstm_mat_bwd_gates")) != MLSTM_OK)
        return st;
    if ((st = kernel(c, mlstm_mat_cu_store(WS(c, dq), NULL, &t[MLSTM_TENSOR_DQ], p->dtype, c->G, S, p->heads, dqk,
                                           c->stream), "mlstm_mat_store")) != MLSTM_OK ||
        (st = kernel(c, mlstm_mat_cu_store(WS(c, dk), NULL, &t[MLSTM_TENSOR_DK], p->dtype, c->G, S, p->heads, dqk,
                                           c->stream), "mlstm_mat_store")) != MLSTM_OK)
        return st;
    return kernel(c, mlstm_mat_cu_store(WS(c, dv), NULL, &t[MLSTM_TENSOR_DV], p->dtype, c->G, S, p->heads, dv,
                                        c->stream), "mlstm_mat_store");
}

int mlstm_cuda_mat_run(mlstm_cuda_mat **state, const mlstm_params *p, int backward_, void *stream, char *err,
                       size_t err_len)
{
    call c;
    int st = prepare(state, p, backward_, stream, err, err_len, &c);
    if (st != MLSTM_OK)
        return st;
    return backward_ ? backward(&c, p) : forward(&c, p);
}
