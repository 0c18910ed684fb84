/* libmlstm public API: the mLSTM (xLSTM) parallel formulation, forward and backward, on GPUs.
 * One header, plain C11. Handles are opaque; every function returns an mlstm_status (MLSTM_OK = 0,
 * stable negative codes) and never aborts, exits or prints. See README.md for the math and the
 * precision contract. */
#ifndef MLSTM_H
#define MLSTM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  define MLSTM_API __declspec(dllexport)
#else
#  define MLSTM_API __attribute__((visibility("default")))
#endif

#define MLSTM_VERSION_MAJOR 0
#define MLSTM_VERSION_MINOR 1
#define MLSTM_VERSION_PATCH 0

/* Largest head dimension (DQK and DV) every backend serves. */
#define MLSTM_MAX_HEAD_DIM 512

/* The stabiliser floor: m_t = max(MLSTM_M_FLOOR, max_j logD_tj), so exp(-m_t) never overflows f32.
 * h depends on the floor only through eps (see README.md). */
#define MLSTM_M_FLOOR (-10.0f)

/* ---- Status codes: stable, never renumbered; new codes may be added. ---- */
typedef enum mlstm_status {
    MLSTM_OK                      =   0, /* success */
    MLSTM_ERR_INVALID_ARGUMENT    =  -1, /* an argument breaks the contract (NULL, bad size, bad value) */
    MLSTM_ERR_UNSUPPORTED         =  -2, /* a valid request this backend cannot serve */
    MLSTM_ERR_BACKEND_UNAVAILABLE =  -3, /* unknown backend name, or backend not compiled in */
    MLSTM_ERR_NO_DEVICE           =  -4, /* the backend is compiled in but finds no usable device */
    MLSTM_ERR_OUT_OF_MEMORY       =  -5, /* host or device allocation failed */
    MLSTM_ERR_KERNEL_BUILD        =  -6, /* a kernel failed to compile; last_error holds the build log */
    MLSTM_ERR_LAUNCH              =  -7, /* a kernel launch or enqueue failed */
    MLSTM_ERR_DEVICE              =  -8, /* any other runtime/driver error; last_error names it */
    MLSTM_ERR_INTERNAL            =  -9, /* a bug in libmlstm; please report */
    MLSTM_ERR_BUFFER_TOO_SMALL    = -10, /* a buffer is smaller than its tensor's shape and strides need */
    MLSTM_ERR_DTYPE_MISMATCH      = -11, /* a buffer's dtype differs from what its tensor requires */
    MLSTM_ERR_SIZE_OVERFLOW       = -12, /* sizes whose element or byte counts overflow 64 bits */
    MLSTM_ERR_BAD_LAYOUT          = -13, /* strides are negative or make an output overlap itself */
    MLSTM_ERR_CONTEXT_MISMATCH    = -14  /* a buffer belongs to another context */
} mlstm_status;

/* Static, never NULL text for any status value (unknown values get a generic text). */
MLSTM_API const char *mlstm_status_string(int status);

/* "MAJOR.MINOR.PATCH". */
MLSTM_API const char *mlstm_version(void);

/* ---- Types ---- */
typedef enum mlstm_dtype {
    MLSTM_DTYPE_F32  = 1, /* IEEE binary32 */
    MLSTM_DTYPE_F16  = 2, /* IEEE binary16, storage only: computed in f32 */
    MLSTM_DTYPE_BF16 = 3  /* bfloat16, storage only: computed in f32 */
} mlstm_dtype;

/* Size in bytes of one element of dtype, 0 for an unknown dtype. */
MLSTM_API size_t mlstm_dtype_size(int dtype);

typedef enum mlstm_grad_mode {
    MLSTM_GRAD_EXACT               = 0, /* the true gradient of h (m held constant) */
    MLSTM_GRAD_NORMALIZER_DETACHED = 1  /* delta_t = 0, as mlstm_kernels computes */
} mlstm_grad_mode;

typedef enum mlstm_math_mode {
    MLSTM_MATH_DEFAULT = 0, /* f32 storage computes in IEEE f32 */
    MLSTM_MATH_TF32    = 1  /* opt-in: f32 matrix products may use TF32 tensor cores (CUDA only;
                               other backends compute IEEE f32 anyway) */
} mlstm_math_mode;

/* How a call computes. Both algorithms meet the same precision contract (README.md). */
typedef enum mlstm_algo {
    MLSTM_ALGO_AUTO         = 0, /* the environment's MLSTM_ALGO, else the faster one for the shape (a measured
                                    table; the fused kernels wherever nothing was measured) */
    MLSTM_ALGO_FUSED        = 1, /* the tiled fused kernels: no workspace, but on CUDA for head dims that are
                                    staged (DQK != DV, dims other than 64/128/256, unaligned rows; README) */
    MLSTM_ALGO_MATERIALIZED = 2  /* the S x S matrices through the backend's BLAS (cuBLAS, CLBlast) and row
                                    kernels: needs a workspace (mlstm_workspace_size) */
} mlstm_algo;

/* The tensors of one call, used to index mlstm_desc.layout. */
typedef enum mlstm_tensor {
    MLSTM_TENSOR_Q = 0, MLSTM_TENSOR_K, MLSTM_TENSOR_V, MLSTM_TENSOR_I, MLSTM_TENSOR_F,
    MLSTM_TENSOR_H, MLSTM_TENSOR_M, MLSTM_TENSOR_N,
    MLSTM_TENSOR_DH, MLSTM_TENSOR_DQ, MLSTM_TENSOR_DK, MLSTM_TENSOR_DV, MLSTM_TENSOR_DI, MLSTM_TENSOR_DF,
    MLSTM_TENSOR_COUNT
} mlstm_tensor;

/* Element strides of the (batch, head, seq) dimensions of one tensor. The last dimension (DQK for q, k,
 * dq, dk; DV for v, h, dh, dv; 1 for i, f, m, n, di, df) is always contiguous. All three 0 means
 * contiguous (B, NH, S, D). Strides must be >= 0 (else MLSTM_ERR_BAD_LAYOUT). Inputs may alias themselves
 * (a stride of 0 broadcasts). An output's dimensions must nest: ordered by stride, each stride must be at
 * least the extent of the dimensions inside it (padding allowed, interleaving not), else
 * MLSTM_ERR_BAD_LAYOUT; an output must also not overlap any other tensor of the call (same error).
 * Example: a PyTorch (B, S, NH, D) tensor has {S*NH*D, D, NH*D}. */
typedef struct mlstm_layout {
    int64_t batch, head, seq;
} mlstm_layout;

/* Describes one problem. Initialise with mlstm_desc_init(), then set the sizes. */
typedef struct mlstm_desc {
    uint32_t struct_size;      /* set by mlstm_desc_init: sizeof(mlstm_desc) */
    int64_t batch;             /* B  >= 1 */
    int64_t heads;             /* NH >= 1 */
    int64_t seq_len;           /* S  >= 1 */
    int64_t dqk;               /* 1..MLSTM_MAX_HEAD_DIM */
    int64_t dv;                /* 1..MLSTM_MAX_HEAD_DIM */
    int dtype;                 /* mlstm_dtype of q, k, v, h, dh, dq, dk, dv; i, f, m, n, di, df are f32 */
    float eps;                 /* finite, >= 0; default 1e-6 */
    float scale;               /* 0 = 1/sqrt(dqk); else finite */
    int grad_mode;             /* mlstm_grad_mode, default MLSTM_GRAD_EXACT */
    int math_mode;             /* mlstm_math_mode, default MLSTM_MATH_DEFAULT */
    mlstm_layout layout[MLSTM_TENSOR_COUNT]; /* per tensor; all zero = contiguous */
    int algo;                  /* mlstm_algo, default MLSTM_ALGO_AUTO */
} mlstm_desc;

/* Fills *desc with defaults: zero sizes (to be set), f32, eps 1e-6, scale 0, exact gradients,
 * contiguous layouts, algorithm auto. */
MLSTM_API void mlstm_desc_init(mlstm_desc *desc);

/* ---- Contexts ----
 * Thread safety: contexts are independent (own queue or stream, program cache, last-error text) and may be
 * created, used and destroyed in different threads at the same time. One context, and its buffers, must not
 * be used from two threads at once without the caller's own locking: use one context per thread.
 * mlstm_last_error_global() is per thread. */
typedef struct mlstm_context mlstm_context;
typedef struct mlstm_buffer mlstm_buffer;

typedef struct mlstm_options {
    uint32_t struct_size;      /* set by mlstm_options_init */
    const char *backend;       /* "auto", "cuda", "opencl", or NULL: then MLSTM_BACKEND, then "auto" */
    int device;                /* device index, -1: then MLSTM_DEVICE, then 0 */
    int opencl_platform;       /* OpenCL platform index, -1: then MLSTM_OPENCL_PLATFORM, then the first
                                  platform that has a device */
} mlstm_options;

MLSTM_API void mlstm_options_init(mlstm_options *opt);

/* Creates a context on one device. opt may be NULL (environment, then defaults). On failure *out is NULL
 * and the status says why; mlstm_last_error_global() then gives the detail. */
MLSTM_API int mlstm_context_create(const mlstm_options *opt, mlstm_context **out);
/* Destroys the context (waits for its work first). NULL is a no-op. The context and all of its buffers
 * must not be used afterwards (destroy buffers first; buffers still alive are released too). */
MLSTM_API void mlstm_context_destroy(mlstm_context *ctx);
MLSTM_API const char *mlstm_context_backend_name(const mlstm_context *ctx); /* "cuda", "opencl"; "" for NULL */
MLSTM_API const char *mlstm_context_device_name(const mlstm_context *ctx);  /* "" for NULL */
/* The kernels the last mlstm_parallel_fwd / _bwd on this context enqueued, "+"-joined variant names such as
 * "fwd.wg.bf16.d128" (for logs and tests; "" where the backend does not report them, or for NULL). */
MLSTM_API const char *mlstm_context_last_kernels(const mlstm_context *ctx);
/* Detail of the last failure on this context ("" if none). Owned by the context; valid until the next
 * call on the context. */
MLSTM_API const char *mlstm_context_last_error(const mlstm_context *ctx);
/* Detail of the last mlstm_context_create failure in this thread. */
MLSTM_API const char *mlstm_last_error_global(void);
/* Waits until all work queued on the context is done. */
MLSTM_API int mlstm_synchronize(mlstm_context *ctx);

/* Backends compiled into this library, in auto-selection order. */
MLSTM_API int mlstm_backend_count(void);
MLSTM_API const char *mlstm_backend_name_at(int index); /* NULL when out of range */

/* ---- Buffers: device memory holding `count` elements of one dtype ---- */
MLSTM_API int mlstm_buffer_create(mlstm_context *ctx, int dtype, size_t count, mlstm_buffer **out);
/* A view of elements [offset, offset + count) of parent; it shares parent's memory and must be
 * destroyed before parent. */
MLSTM_API int mlstm_buffer_create_view(mlstm_buffer *parent, size_t offset, size_t count, mlstm_buffer **out);
/* NULL is a no-op. A destroyed buffer must not be used again. */
MLSTM_API void mlstm_buffer_destroy(mlstm_buffer *buf);
MLSTM_API size_t mlstm_buffer_count(const mlstm_buffer *buf);
MLSTM_API int mlstm_buffer_dtype(const mlstm_buffer *buf);
/* Copies count elements between host memory and elements [offset, offset + count) of buf (blocking). */
MLSTM_API int mlstm_buffer_write(mlstm_buffer *buf, size_t offset, size_t count, const void *src);
MLSTM_API int mlstm_buffer_read(mlstm_buffer *buf, size_t offset, size_t count, void *dst);

/* ---- The mLSTM parallel formulation ----
 * Forward: h = mLSTM(q, k, v, i, f); m, n are the per-row stabiliser and normaliser the backward needs.
 * n is stored signed: n_t = l_t when |l_t| > exp(-m_t) (the |l_t| branch wins), else exp(-m_t); the
 * normaliser is |n_t|. Calls are asynchronous on device buffers (mlstm_synchronize waits); on error
 * nothing is written. */
MLSTM_API int mlstm_parallel_fwd(mlstm_context *ctx, const mlstm_desc *desc,
                                 mlstm_buffer *q, mlstm_buffer *k, mlstm_buffer *v,
                                 mlstm_buffer *i, mlstm_buffer *f,
                                 mlstm_buffer *h, mlstm_buffer *m, mlstm_buffer *n);
/* Backward: given dh and the forward's h, m, n, writes dq, dk, dv, di, df. */
MLSTM_API int mlstm_parallel_bwd(mlstm_context *ctx, const mlstm_desc *desc,
                                 mlstm_buffer *q, mlstm_buffer *k, mlstm_buffer *v,
                                 mlstm_buffer *i, mlstm_buffer *f,
                                 mlstm_buffer *h, mlstm_buffer *m, mlstm_buffer *n,
                                 mlstm_buffer *dh,
                                 mlstm_buffer *dq, mlstm_buffer *dk, mlstm_buffer *dv,
                                 mlstm_buffer *di, mlstm_buffer *df);

/* Host-array versions: upload, run, download, synchronously. Each array holds the tensor in the layout
 * of desc (its extent is what the layout addresses). Elements of h/dq/... that the layout does not
 * address are left untouched. */
MLSTM_API int mlstm_parallel_fwd_host(mlstm_context *ctx, const mlstm_desc *desc,
                                      const void *q, const void *k, const void *v,
                                      const float *i, const float *f,
                                      void *h, float *m, float *n);
MLSTM_API int mlstm_parallel_bwd_host(mlstm_context *ctx, const mlstm_desc *desc,
                                      const void *q, const void *k, const void *v,
                                      const float *i, const float *f,
                                      const void *h, const float *m, const float *n,
                                      const void *dh,
                                      void *dq, void *dk, void *dv, float *di, float *df);

/* ---- Workspace of the materialised algorithm ----
 * Bytes of device scratch memory a call of desc needs (backward != 0: mlstm_parallel_bwd), with desc->algo
 * resolved as the call would resolve it. Materialised: roughly B*NH*S*S*4 bytes per S x S intermediate (one
 * forward, two backward) plus small per-row arrays. Fused: 0, except on CUDA where a head dim is staged for the
 * tensor-core kernels (README "Head dimensions": padded copies of the narrower tensors, per-slice gradients). */
MLSTM_API int mlstm_workspace_size(mlstm_context *ctx, const mlstm_desc *desc, int backward, size_t *bytes);
/* Hands the context a workspace for the calls that need one (mlstm_workspace_size): a buffer of this context (any dtype; its
 * bytes count, its first byte 256-byte aligned, as every mlstm_buffer_create buffer is). Calls use it instead of
 * the workspace the context otherwise allocates at first use and keeps (never inside a CUDA graph capture:
 * there, a call without a large enough workspace fails with MLSTM_ERR_OUT_OF_MEMORY). A call whose workspace is
 * smaller than mlstm_workspace_size gets MLSTM_ERR_BUFFER_TOO_SMALL. NULL returns to the context's own
 * workspace. The buffer must stay alive while set (destroying it unsets it) and must not be a tensor of the
 * calls that use it. */
MLSTM_API int mlstm_context_set_workspace(mlstm_context *ctx, mlstm_buffer *workspace);

/* Elements a tensor of the given role occupies under desc (its layout), or 0 when desc is invalid. */
MLSTM_API size_t mlstm_tensor_extent(const mlstm_desc *desc, int tensor);

#ifdef __cplusplus
}
#endif
#endif /* MLSTM_H */
