/* Private declarations of the API core (the api/ sources): the context and buffer structs, error recording, the
 * environment reader and the validation that turns a public desc plus buffers into backend params.
 * Nothing here is exported. */
#ifndef MLSTM_INTERNAL_H
#define MLSTM_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include "mlstm.h"
#include "backend.h"

#define MLSTM_ERRMSG_MAX 16384
#define MLSTM_CONTEXT_MAGIC 0x6d4c6374u /* "mLct" */
#define MLSTM_BUFFER_MAGIC  0x6d4c6266u /* "mLbf" */
#define MLSTM_PLAN_MAGIC    0x6d4c706cu /* "mLpl" */
/* A struct_size this far beyond the library's sizeof is taken for garbage (never read), not for a newer header. */
#define MLSTM_STRUCT_GROWTH_MAX 256

/* One device allocation, shared by a buffer and its views; freed when the last reference goes. */
typedef struct mlstm_allocation {
    void *mem;            /* backend handle */
    int refs;
    int owned;            /* 0 for wrapped user memory: never freed by libmlstm */
} mlstm_allocation;

struct mlstm_buffer {
    uint32_t magic;
    mlstm_context *ctx;
    mlstm_allocation *alloc;
    size_t offset;        /* elements from the start of the allocation */
    size_t count;         /* elements */
    int dtype;
    mlstm_buffer *prev, *next; /* the context's list of live buffers */
};

/* A validated problem (mlstm_plan_create): the normalised desc, the resolved params without memory handles, the
 * extents of its tensors, and the backend's plan state. */
struct mlstm_plan {
    uint32_t magic;
    mlstm_context *ctx;
    unsigned directions;      /* MLSTM_PLAN_FWD | MLSTM_PLAN_BWD */
    mlstm_desc desc;
    mlstm_params base;
    uint64_t extent[MLSTM_TENSOR_COUNT];
    void *backend_plan;
    size_t workspace_bytes;
    int algo_auto[2];         /* base.plan_algo[d] was chosen by the automatic rule (mlstm_resolve_algo) */
    mlstm_plan *prev, *next;  /* the context's list of live plans */
};

struct mlstm_context {
    uint32_t magic;
    const mlstm_backend_ops *ops;
    void *impl;
    mlstm_buffer *buffers;
    int env_algo;          /* MLSTM_ALGO at creation: an mlstm_algo (MLSTM_ALGO_AUTO when unset) */
    mlstm_buffer *workspace; /* mlstm_context_set_workspace, or NULL */
    mlstm_plan *plans;
    char last_error[MLSTM_ERRMSG_MAX];
};

/* Records a formatted detail as the context's last error (ctx may be NULL) and returns status. */
int mlstm_fail(mlstm_context *ctx, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* After a backend call failed: copies the backend's detail into the context, prefixed by where. */
int mlstm_fail_backend(mlstm_context *ctx, int status, const char *where);
/* Sets the thread's global error (context creation failures). */
void mlstm_set_global_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* env.c: the only place that reads the environment. Each returns NULL/-1 when unset. */
const char *mlstm_env_string(const char *name);
/* Parses a non-negative integer variable: MLSTM_OK (value or -1 if unset) or INVALID_ARGUMENT. */
int mlstm_env_index(const char *name, int *value);

/* A tuning switch: "0" -> 0, "1" -> 1, "auto" -> -1; unset or anything else -> -2 (the build's default). */
int mlstm_env_tristate(const char *name);

/* MLSTM_ALGO: "auto" or unset -> MLSTM_ALGO_AUTO, "fused", "materialized" (or "materialised"); anything else -1. */
int mlstm_env_algo(void);

/* algo.c: resolves p->algo (desc's choice, else MLSTM_ALGO, else the measured table, which takes the materialised
 * algorithm only where its workspace is at hand: ws, the call's or plan's workspace argument, else the context's).
 * Returns 1 where the choice was automatic (the caller may fall back to the fused kernels). */
int mlstm_resolve_algo(const mlstm_context *ctx, const mlstm_desc *desc, int backward, const mlstm_buffer *ws,
                       mlstm_params *p);
/* algo.c: fills the workspace fields of p (algorithm resolved) from arg (a call's or plan's workspace argument),
 * else from the context's (mlstm_context_set_workspace), checked once for every path: live, of ctx, 256-byte
 * aligned, at least max(min_bytes, what the call needs), not overlapping the call's tensors. Without either, the
 * fields stay empty and the backend uses its own. A failure is recorded on ctx. */
int mlstm_attach_workspace(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
                           mlstm_buffer *arg, size_t min_bytes, mlstm_params *p);

/* registry.c */
int mlstm_registry_count(void);
const mlstm_backend_ops *mlstm_registry_at(int index);

/* registry.c: a context around a backend state made by ops->init or a backend's interop constructor. */
int mlstm_context_adopt(const mlstm_backend_ops *ops, void *impl, mlstm_context **out);

/* validate.c */
int mlstm_check_context(const mlstm_context *ctx);
/* Reads a caller's growing struct (struct_size first) into out, which holds the defaults: accepts struct_size from
 * first_size up to lib_size, and beyond when the extra bytes are zero (the ABI rules in mlstm.h). */
int mlstm_load_struct(const void *in, const char *name, size_t first_size, size_t lib_size, void *out, char *msg,
                      size_t msg_len);
/* Validates the caller's desc (struct size, scalars, sizes) into the normalised full-size copy *out; resolved
 * scale in *scale (may be NULL). msg gets the detail. */
int mlstm_validate_desc(const mlstm_desc *desc, mlstm_desc *out, float *scale, char *msg, size_t msg_len);
/* Resolved element strides and extent (elements the tensor addresses) of one tensor. */
int mlstm_tensor_geometry(const mlstm_desc *desc, int tensor, mlstm_tensor_arg *arg, uint64_t *extent,
                          char *msg, size_t msg_len);
/* The once-per-problem half of validation: desc and the layouts of the tensors of the directions; fills the
 * normalised desc, params (memory handles NULL) and the extents. Failures are recorded on ctx. */
int mlstm_plan_geometry(mlstm_context *ctx, const char *fn, const mlstm_desc *in, unsigned directions,
                        mlstm_desc *desc, mlstm_params *p, uint64_t extent[MLSTM_TENSOR_COUNT]);
/* The per-call half: buffers (live, context, dtype, size against extent) and output overlaps; sets the memory
 * handles of p. */
int mlstm_bind_buffers(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
                       const uint64_t extent[MLSTM_TENSOR_COUNT], mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT],
                       mlstm_params *p);
/* algo.c: the workspace bytes p (its algorithm resolved) needs on this backend */
int mlstm_call_workspace_bytes(mlstm_context *ctx, const char *fn, const mlstm_params *p, int backward, uint64_t *bytes);
/* Full validation of a call: desc, buffers (context, dtype, size), layouts, aliasing; fills params. */
int mlstm_prepare_call(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
                       mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT], mlstm_params *params);
/* The tensors a direction reads and writes. */
int mlstm_tensor_used(int tensor, int backward);
int mlstm_tensor_is_output(int tensor, int backward);
int mlstm_tensor_dtype(const mlstm_desc *desc, int tensor);
const char *mlstm_tensor_name(int tensor);

#endif /* MLSTM_INTERNAL_H */
