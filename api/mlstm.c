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

static int run(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
               mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT])
{
    mlstm_params p;
    int st = mlstm_prepare_call(ctx, fn, desc, backward, bufs, &p);
    if (st == MLSTM_OK)
        st = mlstm_resolve_algo(ctx, fn, desc, backward, &p);
    if (st != MLSTM_OK)
        return st;
    if (ctx->ops->supports) {
        st = ctx->ops->supports(ctx->impl, &p, backward);
        if (st != MLSTM_OK)
            return mlstm_fail_backend(ctx, st, fn);
    }
    st = backward ? ctx->ops->bwd(ctx->impl, &p) : ctx->ops->fwd(ctx->impl, &p);
    if (st != MLSTM_OK)
        return mlstm_fail_backend(ctx, st, fn);
    ctx->last_error[0] = '\0';
    return MLSTM_OK;
}

int mlstm_parallel_fwd(mlstm_context *ctx, const mlstm_desc *desc, mlstm_buffer *q, mlstm_buffer *k,
                       mlstm_buffer *v, mlstm_buffer *i, mlstm_buffer *f, mlstm_buffer *h, mlstm_buffer *m,
                       mlstm_buffer *n)
{
    mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT] = {q, k, v, i, f, h, m, n};
    return run(ctx, "mlstm_parallel_fwd", desc, 0, bufs);
}

int mlstm_parallel_bwd(mlstm_context *ctx, const mlstm_desc *desc, mlstm_buffer *q, mlstm_buffer *k,
                       mlstm_buffer *v, mlstm_buffer *i, mlstm_buffer *f, mlstm_buffer *h, mlstm_buffer *m,
                       mlstm_buffer *n, mlstm_buffer *dh, mlstm_buffer *dq, mlstm_buffer *dk, mlstm_buffer *dv,
                       mlstm_buffer *di, mlstm_buffer *df)
{
    mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT] = {q, k, v, i, f, h, m, n, dh, dq, dk, dv, di, df};
    return run(ctx, "mlstm_parallel_bwd", desc, 1, bufs);
}

/* Host path: one temporary device buffer per tensor, sized to the tensor's extent. Outputs
 * are uploaded first too, so elements their layout does not address (gaps) come back unchanged. */
static int run_host(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
                    void *const host[MLSTM_TENSOR_COUNT])
{
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    char msg[1024];
    int st = mlstm_validate_desc(desc, NULL, msg, sizeof msg);
    if (st != MLSTM_OK)
        return mlstm_fail(ctx, st, "%s: %s", fn, msg);
    uint64_t extent[MLSTM_TENSOR_COUNT] = {0};
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        if (!mlstm_tensor_used(t, backward))
            continue;
        if (host[t] == NULL)
            return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: host array %s is NULL", fn,
                              mlstm_tensor_name(t));
        st = mlstm_tensor_geometry(desc, t, NULL, &extent[t], msg, sizeof msg);
        const mlstm_layout *l = &desc->layout[t];
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
        st = mlstm_buffer_create(ctx, mlstm_tensor_dtype(desc, t), (size_t)extent[t], &bufs[t]);
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
        st = run(ctx, fn, desc, backward, bufs);
    if (st == MLSTM_OK)
        st = mlstm_synchronize(ctx);
    /* read everything back into a staging copy first, so a failure leaves the caller's arrays untouched */
    void *stage[MLSTM_TENSOR_COUNT] = {0};
    for (int t = 0; t < MLSTM_TENSOR_COUNT && st == MLSTM_OK; t++) {
        if (!mlstm_tensor_used(t, backward) || !mlstm_tensor_is_output(t, backward))
            continue;
        stage[t] = malloc((size_t)extent[t] * mlstm_dtype_size(mlstm_tensor_dtype(desc, t)));
        if (stage[t] == NULL)
            st = mlstm_fail(ctx, MLSTM_ERR_OUT_OF_MEMORY, "%s: out of host memory for the download", fn);
        else
            st = mlstm_buffer_read(bufs[t], 0, (size_t)extent[t], stage[t]);
    }
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        if (st == MLSTM_OK && stage[t])
            memcpy(host[t], stage[t], (size_t)extent[t] * mlstm_dtype_size(mlstm_tensor_dtype(desc, t)));
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
