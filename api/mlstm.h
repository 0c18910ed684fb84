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


/* The roles of the tensors of a call: indices of mlstm_desc.layout and mlstm_tensor_pack.tensors. New roles
 * (the memory states, for example) are appended before MLSTM_TENSOR_COUNT, which may grow up to
 * MLSTM_MAX_TENSORS; the values of existing roles never change. */
#define MLSTM_MAX_TENSORS 32
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

/* ---- Structs that grow: the ABI rules ----
 * mlstm_desc, mlstm_options and mlstm_tensor_pack start with struct_size, the sizeof of the struct as the
 * caller's code was compiled. The init functions below are static inline, so they set the caller's sizeof and
 * never write beyond it. New members are only ever appended, and a zero value of a new member always means the
 * behaviour from before it existed. The library accepts any struct_size from the first published size of the
 * struct (MLSTM_DESC_SIZE_V1, ...) up to its own sizeof, reading the members the caller's struct holds and
 * defaulting the rest; a larger struct_size (a caller built against a newer header) is accepted when every
 * byte beyond the library's sizeof is zero, and rejected with MLSTM_ERR_INVALID_ARGUMENT otherwise (the caller
 * set a member this library does not know). The library never writes into these structs. */

/* Describes one problem. Initialise with mlstm_desc_init(), then set the sizes. */
typedef struct mlstm_desc {
    uint32_t struct_size;      /* sizeof(mlstm_desc) as the caller compiled it (set by mlstm_desc_init) */
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
    mlstm_layout layout[MLSTM_MAX_TENSORS]; /* by mlstm_tensor role; all zero = contiguous. Entries from
                                                MLSTM_TENSOR_COUNT on are for later roles and must be zero */
    int algo;                  /* mlstm_algo, default (0) MLSTM_ALGO_AUTO */
} mlstm_desc;

/* Size of the first published mlstm_desc (libmlstm 0.1: 14 layouts); the smallest struct_size accepted. */
#define MLSTM_DESC_SIZE_V1 (offsetof(mlstm_desc, layout) + 14 * sizeof(mlstm_layout))

/* Fills the first `size` bytes of *desc with defaults (zero sizes, to be set; f32, eps 1e-6, scale 0, exact
 * gradients, contiguous layouts, algorithm auto) and sets struct_size = size; writes nothing beyond `size` bytes. For
 * bindings that cannot use the inline mlstm_desc_init (pass their struct's size). */
MLSTM_API void mlstm_desc_init_sized(mlstm_desc *desc, size_t size);
static inline void mlstm_desc_init(mlstm_desc *desc) { mlstm_desc_init_sized(desc, sizeof *desc); }

/* ---- Contexts ----
 * Thread safety: contexts are independent (own queue or stream, program cache, last-error text) and may be
 * created, used and destroyed in different threads at the same time. One context, and its buffers, must not
 * be used from two threads at once without the caller's own locking: use one context per thread.
 * mlstm_last_error_global() is per thread. */
typedef struct mlstm_context mlstm_context;
typedef struct mlstm_buffer mlstm_buffer;

typedef struct mlstm_options {
    uint32_t struct_size;      /* sizeof(mlstm_options) as the caller compiled it (set by mlstm_options_init) */
    const char *backend;       /* "auto", "cuda", "opencl", or NULL: then MLSTM_BACKEND, then "auto" */
    int device;                /* device index, -1: then MLSTM_DEVICE, then 0 */
    int opencl_platform;       /* OpenCL platform index, -1: then MLSTM_OPENCL_PLATFORM, then the first
                                  platform that has a device */
} mlstm_options;

/* Size of the first published mlstm_options; the smallest struct_size accepted. */
#define MLSTM_OPTIONS_SIZE_V1 (offsetof(mlstm_options, opencl_platform) + sizeof(int))

/* Defaults (backend NULL, device -1, opencl_platform -1) for the first `size` bytes of *opt, struct_size = size. */
MLSTM_API void mlstm_options_init_sized(mlstm_options *opt, size_t size);
static inline void mlstm_options_init(mlstm_options *opt) { mlstm_options_init_sized(opt, sizeof *opt); }

/* Creates a context on one device. opt may be NULL (environment, then defaults). On failure *out is NULL
 * and the status says why; mlstm_last_error_global() then gives the detail. */
MLSTM_API int mlstm_context_create(const mlstm_options *opt, mlstm_context **out);
/* Destroys the context (waits for its work first). NULL is a no-op. The context and all of its buffers
 * must not be used afterwards (destroy buffers first; buffers still alive are released too). */
MLSTM_API void mlstm_context_destroy(mlstm_context *ctx);
MLSTM_API const char *mlstm_context_backend_name(const mlstm_context *ctx); /* "cuda", "opencl"; "" for NULL */
MLSTM_API const char *mlstm_context_device_name(const mlstm_context *ctx);  /* "" for NULL */
/* The kernels the last mlstm_parallel_fwd / _bwd on this context enqueued, "+"-joined variant names such as
 * "fwd.wg.bf16.d128", or the algorithm ("materialized.fwd.bf16") (for logs and tests; "" where the backend does not
 * report them, or for NULL). */
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

/* ---- Tensor packs: the tensors of one call, by role ----
 * tensors[role] is the buffer of that mlstm_tensor role (its layout comes from the desc). A forward reads q, k,
 * v, i, f and writes h, m, n; a backward reads q, k, v, i, f, h, m, n, dh and writes dq, dk, dv, di, df. Roles a
 * direction does not use are ignored, so one pack can serve both directions; entries from MLSTM_TENSOR_COUNT on
 * must be NULL (roles of later versions). */
typedef struct mlstm_tensor_pack {
    uint32_t struct_size;                    /* sizeof(mlstm_tensor_pack) as compiled (mlstm_tensor_pack_init) */
    mlstm_buffer *tensors[MLSTM_MAX_TENSORS];
} mlstm_tensor_pack;

/* Size of the first published mlstm_tensor_pack; the smallest struct_size accepted. */
#define MLSTM_TENSOR_PACK_SIZE_V1 (sizeof(mlstm_tensor_pack))

/* Empties *pack (every role NULL) and sets struct_size. */
static inline void mlstm_tensor_pack_init(mlstm_tensor_pack *pack)
{
    if (pack == NULL)
        return;
    pack->struct_size = (uint32_t)sizeof *pack;
    for (int r = 0; r < MLSTM_MAX_TENSORS; r++)
        pack->tensors[r] = NULL;
}

/* ---- Workspace ----
 * Device scratch memory some computations need (none of today's fused kernels do; later algorithms will). A
 * workspace is an ordinary mlstm_buffer of the call's context, of any dtype, whose size in bytes (elements *
 * element size; a view selects a range) is at least the plan's mlstm_plan_workspace_size. Where that size is 0
 * the workspace may be NULL. One workspace may serve many calls, but not two calls in flight on different
 * contexts or queues at once. */

/* ---- The mLSTM parallel formulation ----
 * Forward: h = mLSTM(q, k, v, i, f); m, n are the per-row stabiliser and normaliser the backward needs.
 * n is stored signed: n_t = l_t when |l_t| > exp(-m_t) (the |l_t| branch wins), else exp(-m_t); the
 * normaliser is |n_t|. Calls are asynchronous on device buffers (mlstm_synchronize waits); on error
 * nothing is written. Each call validates desc and every buffer; to validate a problem once and compile its
 * kernels ahead of time, use a plan (below). */
MLSTM_API int mlstm_parallel_fwd_pack(mlstm_context *ctx, const mlstm_desc *desc, const mlstm_tensor_pack *pack,
                                      mlstm_buffer *workspace);
/* Backward: given dh and the forward's h, m, n, writes dq, dk, dv, di, df. */
MLSTM_API int mlstm_parallel_bwd_pack(mlstm_context *ctx, const mlstm_desc *desc, const mlstm_tensor_pack *pack,
                                      mlstm_buffer *workspace);

/* The same with the tensors as arguments (no workspace): thin wrappers over the _pack calls. */
MLSTM_API int mlstm_parallel_fwd(mlstm_context *ctx, const mlstm_desc *desc,
                                 const mlstm_buffer *q, const mlstm_buffer *k, const mlstm_buffer *v,
                                 const mlstm_buffer *i, const mlstm_buffer *f,
                                 mlstm_buffer *h, mlstm_buffer *m, mlstm_buffer *n);
MLSTM_API int mlstm_parallel_bwd(mlstm_context *ctx, const mlstm_desc *desc,
                                 const mlstm_buffer *q, const mlstm_buffer *k, const mlstm_buffer *v,
                                 const mlstm_buffer *i, const mlstm_buffer *f,
                                 const mlstm_buffer *h, const mlstm_buffer *m, const mlstm_buffer *n,
                                 const mlstm_buffer *dh,
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

/* ---- Plans: a problem validated and prepared once, executed many times ----
 * mlstm_plan_create validates desc (sizes, scalars, layouts) once, asks the backend whether it serves the
 * problem (MLSTM_ERR_UNSUPPORTED otherwise), fixes what can be fixed ahead of the call (the OpenCL backend
 * builds its programs here) and reports the workspace the calls need. Executing a plan checks only what a
 * call can change: the plan and the workspace, and that every buffer of the pack is live, of the plan's
 * context and dtype, large enough for its tensor's extent, and that no output overlaps another tensor. It
 * compiles nothing. The plan keeps its own copy of desc. Plans belong to their context (same threading rules)
 * and are destroyed with it at the latest. */
typedef struct mlstm_plan mlstm_plan;

typedef enum mlstm_direction {
    MLSTM_PLAN_FWD = 1, /* the plan may run the forward */
    MLSTM_PLAN_BWD = 2  /* the plan may run the backward */
} mlstm_direction;

/* directions: MLSTM_PLAN_FWD, MLSTM_PLAN_BWD or both ORed. On failure *out is NULL. */
MLSTM_API int mlstm_plan_create(mlstm_context *ctx, const mlstm_desc *desc, unsigned directions,
                                mlstm_plan **out);
/* NULL is a no-op. Waits for nothing: queued calls of the plan keep running. */
MLSTM_API void mlstm_plan_destroy(mlstm_plan *plan);
/* Bytes of workspace the plan's calls need (0: none, pass NULL). A workspace of at least that size keeps execution
 * free of allocation; with NULL the calls use the context's (mlstm_context_set_workspace) or its own, allocated at
 * first need (an error inside CUDA graph capture). */
MLSTM_API int mlstm_plan_workspace_size(const mlstm_plan *plan, size_t *bytes);
MLSTM_API int mlstm_plan_execute_fwd(mlstm_plan *plan, const mlstm_tensor_pack *pack, mlstm_buffer *workspace);
MLSTM_API int mlstm_plan_execute_bwd(mlstm_plan *plan, const mlstm_tensor_pack *pack, mlstm_buffer *workspace);

/* Elements a tensor of the given role occupies under desc (its layout), or 0 when desc is invalid. */
MLSTM_API size_t mlstm_tensor_extent(const mlstm_desc *desc, int tensor);

#ifdef __cplusplus
}
#endif
#endif /* MLSTM_H */
