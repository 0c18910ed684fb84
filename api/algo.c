/* Which algorithm a call runs (desc->algo, else MLSTM_ALGO, else the measured table below) and the workspace of a
 * call: mlstm_workspace_size, mlstm_context_set_workspace, and the one check that hands a call the caller's
 * workspace (its argument, else the context's: live, same context, aligned, large enough, no overlap with the
 * call's tensors). */
#include <stdio.h>
#include <string.h>
#include "internal.h"

#define WORKSPACE_ALIGN 256 /* bytes: the first byte of a caller's workspace */

/* auto: the shapes where the materialised algorithm was measured faster than the fused kernels, per backend,
 * direction and storage dtype, on GPUs (a CPU device keeps the fused kernels: nothing was measured there). The
 * measurements: bench/RESULTS.md, "auto table" (NVIDIA H100, bench_mlstm --algo fused / materialized, B1 NH8,
 * S 1024 and 4096, bf16 and f32, 2026-12-06). A row matches when every bound holds (0 = no bound). */
typedef struct {
    const char *backend; /* "cuda", "opencl"; NULL ends the table */
    int backward;        /* 0 forward, 1 backward */
    int dtype;           /* an mlstm_dtype, 0 = every dtype */
    int64_t min_dqk;     /* DQK >= */
    int64_t min_dim;     /* max(DQK, DV) >= */
    int64_t max_seq;     /* S <= */
    int64_t max_bh;      /* B * NH <= */
    int unless_tc;       /* 1: not where the backend's fused kernels serve the call on tensor cores */
} auto_rule;

static const auto_rule auto_table[] = {
    /* CUDA: DQK > 256 where the fused kernels are the SIMT ones (f32, sm_80): 512/512 S4096 bf16 42.5 -> 1.8 ms
     * forward. The f16/bf16 D = 512 class (sm_90) beats the materialised algorithm in both directions (H100, B1 NH8
     * S4096 bf16, 512/512: forward 0.90 against 1.79 ms, forward + backward 5.33 against 7.41 ms; bench/RESULTS.md,
     * fifteenth session), so there the fused kernels stay */
    {"cuda", 0, 0, 257, 0, 0, 0, 1},
    {"cuda", 1, 0, 257, 0, 0, 0, 1},
    /* CUDA f32 backward at DQK 129..256 (the D = 256 class, 3xTF32 mma.sync): 256/256 S4096 12.7 -> 9.6 ms,
     * 256/512 25.5 -> 12.5 ms; 192/192 forward + backward 15.5 -> 11.6 ms (forward alone: fused 2.39, materialised
     * 3.05 ms), 160/160 15.3 -> 10.6 ms (H100, fifteenth session) */
    {"cuda", 1, MLSTM_DTYPE_F32, 129, 0, 0, 0, 0},
    /* CUDA f32 forward 256/512 on small grids: S1024 B1 NH8 0.61 -> 0.44 ms (S4096: the fused kernels win) */
    {"cuda", 0, MLSTM_DTYPE_F32, 256, 512, 1024, 8, 0},
    /* OpenCL: forward at DQK 512 (512/512 S4096 bf16 14.2 -> 12.0 ms), backward from head dim 256 (256/256 S4096
     * 19.3 -> 16.9 ms, 256/512 53.3 -> 22.9 ms), and every shape on small grids (S1024 B1 NH8: 64/64 forward
     * 0.38 -> 0.28 ms, backward 0.91 -> 0.64 ms; the fused kernels leave most of the GPU idle there) */
    {"opencl", 0, 0, 512, 0, 0, 0, 0},
    {"opencl", 1, 0, 0, 256, 0, 0, 0},
    {"opencl", 0, 0, 0, 0, 1024, 8, 0},
    {"opencl", 1, 0, 0, 0, 1024, 8, 0},
    {NULL, 0, 0, 0, 0, 0, 0, 0},
};

/* Where auto finds the materialised algorithm faster but no workspace is at hand, the backend's own workspace is
 * allocated up to this size (B1 NH8 S4096 backward at head dim 512: 1.07 GB); beyond it auto stays fused, and where
 * the allocation fails the call runs fused (mlstm.c). */
#define AUTO_OWN_WORKSPACE_MAX ((uint64_t)4 << 30)

static int table_says_materialized(const mlstm_context *ctx, const mlstm_params *p, int backward)
{
    if (ctx->ops->device_is_cpu && ctx->ops->device_is_cpu(ctx->impl))
        return 0;
    const int64_t dim = p->dqk > p->dv ? p->dqk : p->dv;
    for (const auto_rule *r = auto_table; r->backend; r++)
        if (!strcmp(r->backend, ctx->ops->name) && r->backward == !!backward && (!r->dtype || r->dtype == p->dtype) &&
            p->dqk >= r->min_dqk && dim >= r->min_dim && (!r->max_seq || p->seq_len <= r->max_seq) &&
            (!r->max_bh || p->batch * p->heads <= r->max_bh) &&
            !(r->unless_tc && ctx->ops->fused_on_tensor_cores && ctx->ops->fused_on_tensor_cores(ctx->impl, p, backward)))
            return 1;
    return 0;
}

/* auto: materialised where the table says so and its workspace is at hand: a caller's workspace (ws, else the
 * context's) large enough, or none given and the backend's own within AUTO_OWN_WORKSPACE_MAX */
static int auto_choice(const mlstm_context *ctx, const mlstm_params *p, int backward, const mlstm_buffer *ws)
{
    if (ctx->ops->workspace_size == NULL || !table_says_materialized(ctx, p, backward))
        return MLSTM_ALGO_FUSED;
    mlstm_params q = *p;
    q.algo = MLSTM_ALGO_MATERIALIZED;
    uint64_t need;
    if (ctx->ops->workspace_size(ctx->impl, &q, backward, &need) != MLSTM_OK) /* e.g. built without the BLAS */
        return MLSTM_ALGO_FUSED;
    const mlstm_buffer *w = ws ? ws : ctx->workspace;
    if (w == NULL)
        return need <= AUTO_OWN_WORKSPACE_MAX ? MLSTM_ALGO_MATERIALIZED : MLSTM_ALGO_FUSED;
    const int live = w->magic == MLSTM_BUFFER_MAGIC && w->ctx == ctx; /* else attach_workspace reports it */
    return live && (uint64_t)w->count * mlstm_dtype_size(w->dtype) >= need ? MLSTM_ALGO_MATERIALIZED
                                                                           : MLSTM_ALGO_FUSED;
}

static int choose(const mlstm_context *ctx, const mlstm_desc *desc, const mlstm_params *p, int backward,
                  const mlstm_buffer *ws)
{
    if (desc->algo != MLSTM_ALGO_AUTO)
        return desc->algo;
    if (ctx->env_algo != MLSTM_ALGO_AUTO)
        return ctx->env_algo;
    return auto_choice(ctx, p, backward, ws);
}

/* The workspace bytes of the resolved algorithm of p (the fused kernels need one only where a backend stages
 * tensors, e.g. CUDA's head dims other than 64/128/256). */
int mlstm_call_workspace_bytes(mlstm_context *ctx, const char *fn, const mlstm_params *p, int backward, uint64_t *bytes)
{
    *bytes = 0;
    if (ctx->ops->workspace_size == NULL) {
        if (p->algo != MLSTM_ALGO_MATERIALIZED)
            return MLSTM_OK;
        return mlstm_fail(ctx, MLSTM_ERR_UNSUPPORTED, "%s: the %s backend has no materialised algorithm", fn,
                          ctx->ops->name);
    }
    const int st = ctx->ops->workspace_size(ctx->impl, p, backward, bytes);
    return st == MLSTM_OK ? MLSTM_OK : mlstm_fail_backend(ctx, st, fn);
}

/* Bytes [lo, hi) tensor t of p occupies within its memory (conservative: the whole extent, gaps included). */
static void tensor_bytes(const mlstm_desc *desc, const mlstm_params *p, int t, uint64_t *lo, uint64_t *hi)
{
    const mlstm_tensor_arg *a = &p->t[t];
    int64_t dim = 1;
    if (t == MLSTM_TENSOR_Q || t == MLSTM_TENSOR_K || t == MLSTM_TENSOR_DQ || t == MLSTM_TENSOR_DK)
        dim = p->dqk;
    else if (t == MLSTM_TENSOR_V || t == MLSTM_TENSOR_H || t == MLSTM_TENSOR_DH || t == MLSTM_TENSOR_DV)
        dim = p->dv;
    const uint64_t es = mlstm_dtype_size(mlstm_tensor_dtype(desc, t));
    /* validation already bounded every extent to 64-bit byte counts */
    const uint64_t ext = (uint64_t)dim + (uint64_t)(p->batch - 1) * (uint64_t)a->stride_b +
                         (uint64_t)(p->heads - 1) * (uint64_t)a->stride_h +
                         (uint64_t)(p->seq_len - 1) * (uint64_t)a->stride_s;
    *lo = a->offset * es;
    *hi = *lo + ext * es;
}

int mlstm_resolve_algo(const mlstm_context *ctx, const mlstm_desc *desc, int backward, const mlstm_buffer *ws,
                       mlstm_params *p)
{
    p->algo = choose(ctx, desc, p, backward, ws);
    return desc->algo == MLSTM_ALGO_AUTO && ctx->env_algo == MLSTM_ALGO_AUTO;
}

int mlstm_attach_workspace(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
                           mlstm_buffer *arg, size_t min_bytes, mlstm_params *p)
{
    p->ws_mem = NULL;
    p->ws_offset = p->ws_bytes = 0;
    uint64_t need;
    int st = mlstm_call_workspace_bytes(ctx, fn, p, backward, &need);
    if (st != MLSTM_OK)
        return st;
    if (need < min_bytes)
        need = min_bytes;
    const mlstm_buffer *w = arg ? arg : ctx->workspace;
    const char *which = arg ? "the workspace argument" : "the workspace set with mlstm_context_set_workspace";
    if (w == NULL || (arg == NULL && need == 0))
        return MLSTM_OK; /* the backend's own, allocated at first need */
    if (w->magic != MLSTM_BUFFER_MAGIC)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: %s is not a live mlstm_buffer", fn, which);
    if (w->ctx != ctx)
        return mlstm_fail(ctx, MLSTM_ERR_CONTEXT_MISMATCH, "%s: %s belongs to another context", fn, which);
    const size_t es = mlstm_dtype_size(w->dtype);
    const uint64_t have = (uint64_t)w->count * es, lo = (uint64_t)w->offset * es;
    if (lo % WORKSPACE_ALIGN != 0)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: %s starts at byte %llu of its allocation; it must be "
                          "%d-byte aligned", fn, which, (unsigned long long)lo, WORKSPACE_ALIGN);
    /* overlap first: a workspace that shares memory with a tensor is wrong at any size */
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        if (!mlstm_tensor_used(t, backward) || p->t[t].mem != w->alloc->mem)
            continue;
        uint64_t t_lo, t_hi;
        tensor_bytes(desc, p, t, &t_lo, &t_hi);
        if (t_lo < lo + have && lo < t_hi)
            return mlstm_fail(ctx, MLSTM_ERR_BAD_LAYOUT, "%s: %s overlaps tensor %s in memory", fn, which,
                              mlstm_tensor_name(t));
    }
    if (have < need)
        return mlstm_fail(ctx, MLSTM_ERR_BUFFER_TOO_SMALL, "%s: %s holds %llu bytes; this call needs %llu "
                          "(mlstm_workspace_size)", fn, which, (unsigned long long)have, (unsigned long long)need);
    p->ws_mem = w->alloc->mem;
    p->ws_offset = lo;
    p->ws_bytes = have;
    return MLSTM_OK;
}

int mlstm_workspace_size(mlstm_context *ctx, const mlstm_desc *desc, int backward, size_t *bytes)
{
    static const char fn[] = "mlstm_workspace_size";
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    if (bytes == NULL)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: bytes is NULL", fn);
    *bytes = 0;
    mlstm_desc d;
    mlstm_params p;
    uint64_t extent[MLSTM_TENSOR_COUNT];
    int st = mlstm_plan_geometry(ctx, fn, desc, backward ? MLSTM_PLAN_BWD : MLSTM_PLAN_FWD, &d, &p, extent);
    if (st != MLSTM_OK)
        return st;
    p.algo = choose(ctx, &d, &p, backward, NULL);
    uint64_t need;
    st = mlstm_call_workspace_bytes(ctx, fn, &p, backward, &need);
    if (st != MLSTM_OK)
        return st;
    if (need > (uint64_t)SIZE_MAX)
        return mlstm_fail(ctx, MLSTM_ERR_SIZE_OVERFLOW, "%s: %llu bytes do not fit size_t", fn,
                          (unsigned long long)need);
    *bytes = (size_t)need;
    ctx->last_error[0] = '\0';
    return MLSTM_OK;
}

int mlstm_context_set_workspace(mlstm_context *ctx, mlstm_buffer *w)
{
    static const char fn[] = "mlstm_context_set_workspace";
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    if (w != NULL) {
        if (w->magic != MLSTM_BUFFER_MAGIC)
            return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: workspace is not a live mlstm_buffer", fn);
        if (w->ctx != ctx)
            return mlstm_fail(ctx, MLSTM_ERR_CONTEXT_MISMATCH, "%s: the workspace belongs to another context", fn);
        const uint64_t lo = (uint64_t)w->offset * mlstm_dtype_size(w->dtype);
        if (lo % WORKSPACE_ALIGN != 0)
            return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT,
                              "%s: the workspace starts at byte %llu of its allocation; it must be %d-byte aligned", fn,
                              (unsigned long long)lo, WORKSPACE_ALIGN);
    }
    ctx->workspace = w;
    ctx->last_error[0] = '\0';
    return MLSTM_OK;
}
