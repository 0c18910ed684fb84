/* Public entry points of the API core: buffers (create, view, read, write, destroy), the forward and
 * backward calls on device buffers, and the host-array versions that upload, run and download.
 * Every argument is validated here (and in validate.c) before a backend is called. */
#include <stdlib.h>
#include <string.h>
#include "internal.h"

static int check_buffer(const mlstm_buffer *b)
{
    return (b != NULL && b->magic == MLSTM_BUFFER_MAGIC && mlstm_check_context(b->ctx) == MLSTM_OK)
               ? MLSTM_OK
               : MLSTM_ERR_INVALID_ARGUMENT;
}

static void link_buffer(mlstm_context *ctx, mlstm_buffer *b)
{
    b->ctx = ctx;
    b->prev = NULL;
    b->next = ctx->buffers;
    if (ctx->buffers)
        ctx->buffers->prev = b;
    ctx->buffers = b;
}

/* Creates a buffer over an existing or new allocation; alloc == NULL allocates `count` elements. */
static int new_buffer(mlstm_context *ctx, const char *fn, int dtype, size_t count, mlstm_allocation *alloc,
                      size_t offset, void *wrap_mem, mlstm_buffer **out)
{
    mlstm_buffer *b = calloc(1, sizeof *b);
    if (b == NULL)
        return mlstm_fail(ctx, MLSTM_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    if (alloc == NULL) {
        alloc = calloc(1, sizeof *alloc);
        if (alloc == NULL) {
            free(b);
            return mlstm_fail(ctx, MLSTM_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        }
        if (wrap_mem != NULL) {
            alloc->mem = wrap_mem;
            alloc->owned = 0;
        } else {
            int st = ctx->ops->buffer_alloc(ctx->impl, count * mlstm_dtype_size(dtype), &alloc->mem);
            if (st != MLSTM_OK) {
                free(alloc);
                free(b);
                return mlstm_fail_backend(ctx, st, fn);
            }
            alloc->owned = 1;
        }
    }
    alloc->refs++;
    b->magic = MLSTM_BUFFER_MAGIC;
    b->alloc = alloc;
    b->offset = offset;
    b->count = count;
    b->dtype = dtype;
    link_buffer(ctx, b);
    *out = b;
    return MLSTM_OK;
}

static int check_count(mlstm_context *ctx, const char *fn, int dtype, size_t count)
{
    size_t es = mlstm_dtype_size(dtype);
    if (es == 0)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: dtype %d is not a mlstm_dtype", fn, dtype);
    if (count == 0)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: count is 0", fn);
    if (count > (size_t)INT64_MAX / es)
        return mlstm_fail(ctx, MLSTM_ERR_SIZE_OVERFLOW, "%s: %zu elements of %zu bytes overflow 64 bits", fn, count,
                          es);
    return MLSTM_OK;
}

int mlstm_buffer_create(mlstm_context *ctx, int dtype, size_t count, mlstm_buffer **out)
{
    static const char fn[] = "mlstm_buffer_create";
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    if (out == NULL)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    *out = NULL;
    int st = check_count(ctx, fn, dtype, count);
    return st != MLSTM_OK ? st : new_buffer(ctx, fn, dtype, count, NULL, 0, NULL, out);
}

/* Used by the interop entry points: a buffer over memory the caller owns. */
int mlstm_buffer_wrap_mem(mlstm_context *ctx, const char *fn, void *mem, int dtype, size_t count,
                          mlstm_buffer **out);
int mlstm_buffer_wrap_mem(mlstm_context *ctx, const char *fn, void *mem, int dtype, size_t count,
                          mlstm_buffer **out)
{
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    if (out == NULL || mem == NULL)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, out == NULL ? "out" : "memory");
    *out = NULL;
    int st = check_count(ctx, fn, dtype, count);
    return st != MLSTM_OK ? st : new_buffer(ctx, fn, dtype, count, NULL, 0, mem, out);
}

int mlstm_buffer_create_view(mlstm_buffer *parent, size_t offset, size_t count, mlstm_buffer **out)
{
    static const char fn[] = "mlstm_buffer_create_view";
    if (check_buffer(parent) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    mlstm_context *ctx = parent->ctx;
    if (out == NULL)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    *out = NULL;
    if (count == 0 || offset > parent->count || count > parent->count - offset)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT,
                          "%s: elements [%zu, %zu + %zu) are not inside the parent's %zu elements", fn, offset,
                          offset, count, parent->count);
    return new_buffer(ctx, fn, parent->dtype, count, parent->alloc, parent->offset + offset, NULL, out);
}

void mlstm_buffer_destroy(mlstm_buffer *b)
{
    if (check_buffer(b) != MLSTM_OK)
        return;
    mlstm_context *ctx = b->ctx;
    if (ctx->workspace == b)
        ctx->workspace = NULL;
    if (b->prev)
        b->prev->next = b->next;
    else
        ctx->buffers = b->next;
    if (b->next)
        b->next->prev = b->prev;
    if (--b->alloc->refs == 0) {
        if (b->alloc->owned) {
            ctx->ops->synchronize(ctx->impl); /* work queued on the memory must finish first */
            ctx->ops->buffer_free(ctx->impl, b->alloc->mem);
        }
        free(b->alloc);
    }
    b->magic = 0;
    free(b);
}

size_t mlstm_buffer_count(const mlstm_buffer *b) { return check_buffer(b) == MLSTM_OK ? b->count : 0; }
int mlstm_buffer_dtype(const mlstm_buffer *b) { return check_buffer(b) == MLSTM_OK ? b->dtype : 0; }

static int buffer_copy(mlstm_buffer *b, size_t offset, size_t count, void *host, int to_device, const char *fn)
{
    if (check_buffer(b) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    mlstm_context *ctx = b->ctx;
    if (host == NULL)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: host pointer is NULL", fn);
    if (count == 0 || offset > b->count || count > b->count - offset)
        return mlstm_fail(ctx, count == 0 ? MLSTM_ERR_INVALID_ARGUMENT : MLSTM_ERR_BUFFER_TOO_SMALL,
                          "%s: elements [%zu, %zu + %zu) are not inside the buffer's %zu elements", fn, offset,
                          offset, count, b->count);
    size_t es = mlstm_dtype_size(b->dtype);
    size_t at = (b->offset + offset) * es, bytes = count * es;
    int st = to_device ? ctx->ops->buffer_write(ctx->impl, b->alloc->mem, at, bytes, host)
                       : ctx->ops->buffer_read(ctx->impl, b->alloc->mem, at, bytes, host);
    return st == MLSTM_OK ? MLSTM_OK : mlstm_fail_backend(ctx, st, fn);
}

int mlstm_buffer_write(mlstm_buffer *b, size_t offset, size_t count, const void *src)
{
    return buffer_copy(b, offset, count, (void *)src, 1, "mlstm_buffer_write");
}

int mlstm_buffer_read(mlstm_buffer *b, size_t offset, size_t count, void *dst)
{
    return buffer_copy(b, offset, count, dst, 0, "mlstm_buffer_read");
}

/* Reads the caller's pack into bufs (roles this library knows); unknown roles must be empty. */
static int load_pack(mlstm_context *ctx, const char *fn, const mlstm_tensor_pack *in,
                     mlstm_buffer *bufs[MLSTM_TENSOR_COUNT])
{
    if (in == NULL)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: pack is NULL", fn);
    char msg[512];
    mlstm_tensor_pack pack;
    mlstm_tensor_pack_init(&pack);
    int st = mlstm_load_struct(in, "mlstm_tensor_pack", MLSTM_TENSOR_PACK_SIZE_V1, sizeof pack, &pack, msg,
                               sizeof msg);
    if (st != MLSTM_OK)
        return mlstm_fail(ctx, st, "%s: %s", fn, msg);
    for (int r = MLSTM_TENSOR_COUNT; r < MLSTM_MAX_TENSORS; r++)
        if (pack.tensors[r] != NULL)
            return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: pack role %d is set, but this libmlstm (%s) "
                              "knows only roles 0..%d", fn, r, mlstm_version(), MLSTM_TENSOR_COUNT - 1);
    memcpy(bufs, pack.tensors, sizeof *bufs * MLSTM_TENSOR_COUNT);
    return MLSTM_OK;
}

/* Hands validated params to the backend. */
static int launch(mlstm_context *ctx, const char *fn, const mlstm_params *p, int backward)
{
    int st = backward ? ctx->ops->bwd(ctx->impl, p) : ctx->ops->fwd(ctx->impl, p);
    if (st != MLSTM_OK)
        return mlstm_fail_backend(ctx, st, fn);
    ctx->last_error[0] = '\0';
    return MLSTM_OK;
}

static int check_supported(mlstm_context *ctx, const char *fn, const mlstm_params *p, int backward)
{
    int st = ctx->ops->supports ? ctx->ops->supports(ctx->impl, p, backward) : MLSTM_OK;
    return st == MLSTM_OK ? MLSTM_OK : mlstm_fail_backend(ctx, st, fn);
}

/* Attaches the workspace, asks the backend (ask_backend: supports()), launches. Where the automatic choice
 * (automatic set) took the materialised algorithm and the backend cannot run it after all (MLSTM_ERR_UNSUPPORTED:
 * its BLAS does not load; MLSTM_ERR_OUT_OF_MEMORY: its workspace cannot be allocated, or not during a CUDA graph
 * capture), the call runs the fused kernels instead: auto never fails where fused would not. */
static int attach_and_launch(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
                             mlstm_buffer *workspace, size_t min_bytes, int automatic, int ask_backend,
                             mlstm_params *p)
{
    int st = mlstm_attach_workspace(ctx, fn, desc, backward, workspace, min_bytes, p);
    if (st == MLSTM_OK && ask_backend)
        st = check_supported(ctx, fn, p, backward);
    if (st == MLSTM_OK)
        st = launch(ctx, fn, p, backward);
    if ((st == MLSTM_ERR_UNSUPPORTED || st == MLSTM_ERR_OUT_OF_MEMORY) && automatic &&
        p->algo == MLSTM_ALGO_MATERIALIZED) {
        p->algo = MLSTM_ALGO_FUSED;
        return attach_and_launch(ctx, fn, desc, backward, workspace, 0, 0, 1, p);
    }
    return st;
}

static int run(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
               mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT], mlstm_buffer *workspace)
{
    mlstm_params p;
    int st = mlstm_prepare_call(ctx, fn, desc, backward, bufs, &p);
    if (st != MLSTM_OK)
        return st;
    const int automatic = mlstm_resolve_algo(ctx, desc, backward, workspace, &p);
    return attach_and_launch(ctx, fn, desc, backward, workspace, 0, automatic, 1, &p);
}

static int run_pack(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
                    const mlstm_tensor_pack *pack, mlstm_buffer *workspace)
{
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    mlstm_buffer *bufs[MLSTM_TENSOR_COUNT];
    int st = load_pack(ctx, fn, pack, bufs);
    return st != MLSTM_OK ? st : run(ctx, fn, desc, backward, bufs, workspace);
}

int mlstm_parallel_fwd_pack(mlstm_context *ctx, const mlstm_desc *desc, const mlstm_tensor_pack *pack,
                            mlstm_buffer *workspace)
{
    return run_pack(ctx, "mlstm_parallel_fwd_pack", desc, 0, pack, workspace);
}

int mlstm_parallel_bwd_pack(mlstm_context *ctx, const mlstm_desc *desc, const mlstm_tensor_pack *pack,
                            mlstm_buffer *workspace)
{
    return run_pack(ctx, "mlstm_parallel_bwd_pack", desc, 1, pack, workspace);
}

/* The positional entry points: a pack of their arguments (compute calls never modify a buffer handle, only the
 * memory behind it, so dropping const here is safe). */
int mlstm_parallel_fwd(mlstm_context *ctx, const mlstm_desc *desc, const mlstm_buffer *q, const mlstm_buffer *k,
                       const mlstm_buffer *v, const mlstm_buffer *i, const mlstm_buffer *f, mlstm_buffer *h,
                       mlstm_buffer *m, mlstm_buffer *n)
{
    mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT] = {(mlstm_buffer *)q, (mlstm_buffer *)k, (mlstm_buffer *)v,
                                                    (mlstm_buffer *)i, (mlstm_buffer *)f, h, m, n};
    return run(ctx, "mlstm_parallel_fwd", desc, 0, bufs, NULL);
}

int mlstm_parallel_bwd(mlstm_context *ctx, const mlstm_desc *desc, const mlstm_buffer *q, const mlstm_buffer *k,
                       const mlstm_buffer *v, const mlstm_buffer *i, const mlstm_buffer *f, const mlstm_buffer *h,
                       const mlstm_buffer *m, const mlstm_buffer *n, const mlstm_buffer *dh, mlstm_buffer *dq,
                       mlstm_buffer *dk, mlstm_buffer *dv, mlstm_buffer *di, mlstm_buffer *df)
{
    mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT] = {
        (mlstm_buffer *)q, (mlstm_buffer *)k, (mlstm_buffer *)v, (mlstm_buffer *)i, (mlstm_buffer *)f,
        (mlstm_buffer *)h, (mlstm_buffer *)m, (mlstm_buffer *)n, (mlstm_buffer *)dh, dq, dk, dv, di, df};
    return run(ctx, "mlstm_parallel_bwd", desc, 1, bufs, NULL);
}

/* ---- plans ---- */

static int check_plan(const mlstm_plan *plan)
{
    return (plan != NULL && plan->magic == MLSTM_PLAN_MAGIC && mlstm_check_context(plan->ctx) == MLSTM_OK)
               ? MLSTM_OK
               : MLSTM_ERR_INVALID_ARGUMENT;
}

int mlstm_plan_create(mlstm_context *ctx, const mlstm_desc *desc, unsigned directions, mlstm_plan **out)
{
    static const char fn[] = "mlstm_plan_create";
    if (out != NULL)
        *out = NULL;
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    if (out == NULL)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    if (directions == 0 || (directions & ~(unsigned)(MLSTM_PLAN_FWD | MLSTM_PLAN_BWD)) != 0)
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT,
                          "%s: directions = %u: must be MLSTM_PLAN_FWD, MLSTM_PLAN_BWD or both", fn, directions);
    mlstm_plan *plan = calloc(1, sizeof *plan);
    if (plan == NULL)
        return mlstm_fail(ctx, MLSTM_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    int st = mlstm_plan_geometry(ctx, fn, desc, directions, &plan->desc, &plan->base, plan->extent);
    for (int bwd = 0; bwd < 2 && st == MLSTM_OK; bwd++)
        if (directions & (bwd ? MLSTM_PLAN_BWD : MLSTM_PLAN_FWD))
            st = check_supported(ctx, fn, &plan->base, bwd);
    /* each direction's algorithm, fixed now, and the workspace it needs (with a backend's staging) */
    uint64_t need[2] = {0, 0};
    for (int bwd = 0; bwd < 2 && st == MLSTM_OK; bwd++) {
        plan->base.plan_algo[bwd] = MLSTM_ALGO_FUSED;
        if (!(directions & (bwd ? MLSTM_PLAN_BWD : MLSTM_PLAN_FWD)))
            continue;
        mlstm_params q = plan->base;
        plan->algo_auto[bwd] = mlstm_resolve_algo(ctx, &plan->desc, bwd, NULL, &q);
        plan->base.plan_algo[bwd] = q.algo;
        st = mlstm_call_workspace_bytes(ctx, fn, &q, bwd, &need[bwd]);
    }
    if (st == MLSTM_OK && ctx->ops->plan_create) {
        st = ctx->ops->plan_create(ctx->impl, &plan->base, directions, &plan->backend_plan, &plan->workspace_bytes);
        if (st != MLSTM_OK)
            st = mlstm_fail_backend(ctx, st, fn);
    }
    for (int bwd = 0; bwd < 2; bwd++)
        if (need[bwd] > plan->workspace_bytes)
            plan->workspace_bytes = (size_t)need[bwd];
    if (st != MLSTM_OK) {
        free(plan);
        return st;
    }
    plan->magic = MLSTM_PLAN_MAGIC;
    plan->ctx = ctx;
    plan->directions = directions;
    plan->base.plan = plan->backend_plan;
    plan->next = ctx->plans;
    if (ctx->plans)
        ctx->plans->prev = plan;
    ctx->plans = plan;
    ctx->last_error[0] = '\0';
    *out = plan;
    return MLSTM_OK;
}

void mlstm_plan_destroy(mlstm_plan *plan)
{
    if (check_plan(plan) != MLSTM_OK)
        return;
    mlstm_context *ctx = plan->ctx;
    if (plan->prev)
        plan->prev->next = plan->next;
    else
        ctx->plans = plan->next;
    if (plan->next)
        plan->next->prev = plan->prev;
    if (ctx->ops->plan_destroy)
        ctx->ops->plan_destroy(ctx->impl, plan->backend_plan);
    plan->magic = 0;
    free(plan);
}

int mlstm_plan_workspace_size(const mlstm_plan *plan, size_t *bytes)
{
    if (check_plan(plan) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    if (bytes == NULL)
        return mlstm_fail(plan->ctx, MLSTM_ERR_INVALID_ARGUMENT, "mlstm_plan_workspace_size: bytes is NULL");
    *bytes = plan->workspace_bytes;
    return MLSTM_OK;
}

static int plan_execute(mlstm_plan *plan, const char *fn, int backward, const mlstm_tensor_pack *pack,
                        mlstm_buffer *workspace)
{
    if (check_plan(plan) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    mlstm_context *ctx = plan->ctx;
    if (!(plan->directions & (backward ? MLSTM_PLAN_BWD : MLSTM_PLAN_FWD)))
        return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: the plan was created without MLSTM_PLAN_%s", fn,
                          backward ? "BWD" : "FWD");
    mlstm_buffer *bufs[MLSTM_TENSOR_COUNT];
    mlstm_params p = plan->base;
    int st = load_pack(ctx, fn, pack, bufs);
    if (st == MLSTM_OK)
        st = mlstm_bind_buffers(ctx, fn, &plan->desc, backward, plan->extent, bufs, &p);
    if (st != MLSTM_OK)
        return st;
    p.algo = p.plan_algo[backward]; /* fixed when the plan was made */
    /* the backend accepted the plan's problem when it was made (supports, plan_create): no second question */
    return attach_and_launch(ctx, fn, &plan->desc, backward, workspace, plan->workspace_bytes,
                             plan->algo_auto[backward], 0, &p);
}

int mlstm_plan_execute_fwd(mlstm_plan *plan, const mlstm_tensor_pack *pack, mlstm_buffer *workspace)
{
    return plan_execute(plan, "mlstm_plan_execute_fwd", 0, pack, workspace);
}

int mlstm_plan_execute_bwd(mlstm_plan *plan, const mlstm_tensor_pack *pack, mlstm_buffer *workspace)
{
    return plan_execute(plan, "mlstm_plan_execute_bwd", 1, pack, workspace);
}

/* Host path: one temporary device buffer per tensor, sized to the tensor's extent. Outputs
 * are uploaded first too, so elements their layout does not address (gaps) come back unchanged. */
static int run_host(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
                    void *const host[MLSTM_TENSOR_COUNT])
{
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    char msg[1024];
    mlstm_desc norm;
    int st = mlstm_validate_desc(desc, &norm, NULL, msg, sizeof msg);
    if (st != MLSTM_OK)
        return mlstm_fail(ctx, st, "%s: %s", fn, msg);
    uint64_t extent[MLSTM_TENSOR_COUNT] = {0};
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        if (!mlstm_tensor_used(t, backward))
            continue;
        if (host[t] == NULL)
            return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: host array %s is NULL", fn,
                              mlstm_tensor_name(t));
        st = mlstm_tensor_geometry(&norm, t, NULL, &extent[t], msg, sizeof msg);
        const mlstm_layout *l = &norm.layout[t];
        if (st == MLSTM_ERR_BAD_LAYOUT && !mlstm_tensor_is_output(t, backward) && l->batch >= 0 &&
            l->head >= 0 && l->seq >= 0)
            st = MLSTM_OK; /* inputs may alias themselves, as in mlstm_prepare_call */
        if (st != MLSTM_OK)
            return mlstm_fail(ctx, st, "%s: %s", fn, msg);
    }
    mlstm_buffer *bufs[MLSTM_TENSOR_COUNT] = {0};
    for (int t = 0; t < MLSTM_TENSOR_COUNT && st == MLSTM_OK; t++) {
        if (!mlstm_tensor_used(t, backward))
            continue;
        st = mlstm_buffer_create(ctx, mlstm_tensor_dtype(&norm, t), (size_t)extent[t], &bufs[t]);
        if (st == MLSTM_OK && !mlstm_tensor_is_output(t, backward))
            st = mlstm_buffer_write(bufs[t], 0, (size_t)extent[t], host[t]);
    }
    if (st == MLSTM_OK) {
        /* validate the whole call before touching output buffers on the device */
        mlstm_params p;
        st = mlstm_prepare_call(ctx, fn, desc, backward, bufs, &p);
    }
    for (int t = 0; t < MLSTM_TENSOR_COUNT && st == MLSTM_OK; t++) {
        if (!mlstm_tensor_used(t, backward) || !mlstm_tensor_is_output(t, backward))
            continue;
        st = mlstm_buffer_write(bufs[t], 0, (size_t)extent[t], host[t]);
    }
    if (st == MLSTM_OK)
        st = run(ctx, fn, desc, backward, bufs, NULL);
    if (st == MLSTM_OK)
        st = mlstm_synchronize(ctx);
    /* read everything back into a staging copy first, so a failure leaves the caller's arrays untouched */
    void *stage[MLSTM_TENSOR_COUNT] = {0};
    for (int t = 0; t < MLSTM_TENSOR_COUNT && st == MLSTM_OK; t++) {
        if (!mlstm_tensor_used(t, backward) || !mlstm_tensor_is_output(t, backward))
            continue;
        stage[t] = malloc((size_t)extent[t] * mlstm_dtype_size(mlstm_tensor_dtype(&norm, t)));
        if (stage[t] == NULL)
            st = mlstm_fail(ctx, MLSTM_ERR_OUT_OF_MEMORY, "%s: out of host memory for the download", fn);
        else
            st = mlstm_buffer_read(bufs[t], 0, (size_t)extent[t], stage[t]);
    }
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        if (st == MLSTM_OK && stage[t])
            memcpy(host[t], stage[t], (size_t)extent[t] * mlstm_dtype_size(mlstm_tensor_dtype(&norm, t)));
        free(stage[t]);
    }
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++)
        mlstm_buffer_destroy(bufs[t]);
    return st;
}

int mlstm_parallel_fwd_host(mlstm_context *ctx, const mlstm_desc *desc, const void *q, const void *k,
                            const void *v, const float *i, const float *f, void *h, float *m, float *n)
{
    void *const host[MLSTM_TENSOR_COUNT] = {(void *)q, (void *)k, (void *)v, (void *)i, (void *)f, h, m, n};
    return run_host(ctx, "mlstm_parallel_fwd_host", desc, 0, host);
}

int mlstm_parallel_bwd_host(mlstm_context *ctx, const mlstm_desc *desc, const void *q, const void *k,
                            const void *v, const float *i, const float *f, const void *h, const float *m,
                            const float *n, const void *dh, void *dq, void *dk, void *dv, float *di, float *df)
{
    void *const host[MLSTM_TENSOR_COUNT] = {(void *)q, (void *)k, (void *)v, (void *)i, (void *)f,
                                            (void *)h, (void *)m, (void *)n, (void *)dh,
                                            dq, dk, dv, di, df};
    return run_host(ctx, "mlstm_parallel_bwd_host", desc, 1, host);
}
