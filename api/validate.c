/* Argument validation of the API core: every public argument is checked here once (sizes, dtypes,
 * scalars, layouts, buffer sizes, aliasing, 64-bit overflow) before a backend sees it; backends trust
 * what passes. Produces the resolved mlstm_params of a call. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "internal.h"

static const char *const tensor_names[MLSTM_TENSOR_COUNT] = {
    "q", "k", "v", "i", "f", "h", "m", "n", "dh", "dq", "dk", "dv", "di", "df"};

const char *mlstm_tensor_name(int tensor)
{
    return (tensor >= 0 && tensor < MLSTM_TENSOR_COUNT) ? tensor_names[tensor] : "?";
}

int mlstm_tensor_used(int tensor, int backward)
{
    if (tensor < 0 || tensor >= MLSTM_TENSOR_COUNT)
        return 0;
    return backward ? 1 : tensor <= MLSTM_TENSOR_N;
}

int mlstm_tensor_is_output(int tensor, int backward)
{
    if (backward)
        return tensor >= MLSTM_TENSOR_DQ && tensor <= MLSTM_TENSOR_DF;
    return tensor >= MLSTM_TENSOR_H && tensor <= MLSTM_TENSOR_N;
}

/* Head dimension (last, contiguous dimension) of a tensor. */
static int64_t tensor_dim(const mlstm_desc *d, int tensor)
{
    switch (tensor) {
    case MLSTM_TENSOR_Q: case MLSTM_TENSOR_K: case MLSTM_TENSOR_DQ: case MLSTM_TENSOR_DK:
        return d->dqk;
    case MLSTM_TENSOR_V: case MLSTM_TENSOR_H: case MLSTM_TENSOR_DH: case MLSTM_TENSOR_DV:
        return d->dv;
    default:
        return 1;
    }
}

int mlstm_tensor_dtype(const mlstm_desc *d, int tensor)
{
    return mlstm_tensor_is_f32(tensor) ? MLSTM_DTYPE_F32 : d->dtype;
}

int mlstm_check_context(const mlstm_context *ctx)
{
    return (ctx != NULL && ctx->magic == MLSTM_CONTEXT_MAGIC) ? MLSTM_OK : MLSTM_ERR_INVALID_ARGUMENT;
}

void mlstm_desc_init_sized(mlstm_desc *desc, size_t size)
{
    if (desc == NULL || size < sizeof desc->struct_size)
        return;
    mlstm_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = (uint32_t)(size <= UINT32_MAX ? size : UINT32_MAX);
    d.dtype = MLSTM_DTYPE_F32;
    d.eps = 1e-6f;
    d.scale = 0.0f;
    d.grad_mode = MLSTM_GRAD_EXACT;
    d.math_mode = MLSTM_MATH_DEFAULT;
    d.algo = MLSTM_ALGO_AUTO;
    /* members beyond this library's sizeof (a newer header) default to zero, by the growth rule in mlstm.h */
    memset(desc, 0, size);
    memcpy(desc, &d, size < sizeof d ? size : sizeof d);
}

int mlstm_load_struct(const void *in, const char *name, size_t first_size, size_t lib_size, void *out, char *msg,
                      size_t len)
{
    uint32_t size;
    memcpy(&size, in, sizeof size);
    if (size < first_size) {
        snprintf(msg, len, "%s.struct_size is %u, below the first published size %zu (initialise it with %s_init)",
                 name, size, first_size, name);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (size > lib_size + MLSTM_STRUCT_GROWTH_MAX) {
        snprintf(msg, len, "%s.struct_size is %u, more than %d bytes beyond this libmlstm's %zu (not initialised "
                 "with %s_init?)", name, size, MLSTM_STRUCT_GROWTH_MAX, lib_size, name);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    const unsigned char *bytes = in;
    for (size_t b = lib_size; b < size; b++)
        if (bytes[b] != 0) {
            snprintf(msg, len, "%s.struct_size is %u and byte %zu is not zero: the caller sets a member this "
                     "libmlstm (%s, %zu bytes) does not know", name, size, b, mlstm_version(), lib_size);
            return MLSTM_ERR_INVALID_ARGUMENT;
        }
    memcpy(out, in, size < lib_size ? size : lib_size);
    return MLSTM_OK;
}

/* 64-bit unsigned helpers that report overflow. */
static int mul_u64(uint64_t a, uint64_t b, uint64_t *r)
{
    if (a != 0 && b > UINT64_MAX / a)
        return 0;
    *r = a * b;
    return 1;
}
static int add_u64(uint64_t a, uint64_t b, uint64_t *r)
{
    if (b > UINT64_MAX - a)
        return 0;
    *r = a + b;
    return 1;
}

int mlstm_validate_desc(const mlstm_desc *in, mlstm_desc *d, float *scale, char *msg, size_t len)
{
    if (in == NULL) {
        snprintf(msg, len, "desc is NULL");
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    mlstm_desc_init(d);
    int st = mlstm_load_struct(in, "mlstm_desc", MLSTM_DESC_SIZE_V1, sizeof *d, d, msg, len);
    if (st != MLSTM_OK)
        return st;
    for (int t = MLSTM_TENSOR_COUNT; t < MLSTM_MAX_TENSORS; t++)
        if (d->layout[t].batch != 0 || d->layout[t].head != 0 || d->layout[t].seq != 0) {
            snprintf(msg, len, "desc->layout[%d] is set, but this libmlstm (%s) knows only roles 0..%d", t,
                     mlstm_version(), MLSTM_TENSOR_COUNT - 1);
            return MLSTM_ERR_INVALID_ARGUMENT;
        }
    const struct { const char *name; int64_t v, max; } sizes[] = {
        {"batch", d->batch, INT64_MAX}, {"heads", d->heads, INT64_MAX}, {"seq_len", d->seq_len, INT64_MAX},
        {"dqk", d->dqk, MLSTM_MAX_HEAD_DIM}, {"dv", d->dv, MLSTM_MAX_HEAD_DIM}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        if (sizes[s].v < 1 || sizes[s].v > sizes[s].max) {
            if (sizes[s].max == INT64_MAX)
                snprintf(msg, len, "desc->%s = %lld: must be >= 1", sizes[s].name, (long long)sizes[s].v);
            else
                snprintf(msg, len, "desc->%s = %lld: must be in 1..%lld", sizes[s].name, (long long)sizes[s].v,
                         (long long)sizes[s].max);
            return MLSTM_ERR_INVALID_ARGUMENT;
        }
    }
    uint64_t rows, elems;
    if (!mul_u64((uint64_t)d->batch, (uint64_t)d->heads, &rows) || !mul_u64(rows, (uint64_t)d->seq_len, &rows) ||
        !mul_u64(rows, (uint64_t)(d->dqk > d->dv ? d->dqk : d->dv), &elems) ||
        !mul_u64(elems, 4, &elems) || elems > (uint64_t)INT64_MAX) {
        snprintf(msg, len, "batch*heads*seq_len*head_dim (%lld*%lld*%lld*%lld) overflows 64-bit byte counts",
                 (long long)d->batch, (long long)d->heads, (long long)d->seq_len,
                 (long long)(d->dqk > d->dv ? d->dqk : d->dv));
        return MLSTM_ERR_SIZE_OVERFLOW;
    }
    if (mlstm_dtype_size(d->dtype) == 0) {
        snprintf(msg, len, "desc->dtype = %d: not a mlstm_dtype (F32=1, F16=2, BF16=3)", d->dtype);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (!(isfinite(d->eps) && d->eps >= 0.0f)) {
        snprintf(msg, len, "desc->eps = %g: must be finite and >= 0", (double)d->eps);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (!isfinite(d->scale)) {
        snprintf(msg, len, "desc->scale = %g: must be finite (0 selects 1/sqrt(dqk))", (double)d->scale);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (d->grad_mode != MLSTM_GRAD_EXACT && d->grad_mode != MLSTM_GRAD_NORMALIZER_DETACHED) {
        snprintf(msg, len, "desc->grad_mode = %d: not a mlstm_grad_mode", d->grad_mode);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (d->math_mode != MLSTM_MATH_DEFAULT && d->math_mode != MLSTM_MATH_TF32) {
        snprintf(msg, len, "desc->math_mode = %d: not a mlstm_math_mode", d->math_mode);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (d->algo != MLSTM_ALGO_AUTO && d->algo != MLSTM_ALGO_FUSED && d->algo != MLSTM_ALGO_MATERIALIZED) {
        snprintf(msg, len, "desc->algo = %d: not a mlstm_algo (AUTO=0, FUSED=1, MATERIALIZED=2)", d->algo);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (scale)
        *scale = d->scale != 0.0f ? d->scale : (float)(1.0 / sqrt((double)d->dqk));
    return MLSTM_OK;
}

/* Checks that a strided (B, NH, S, D) layout maps distinct elements to distinct addresses: with the
 * dimensions of size > 1 sorted by stride, each stride must exceed the reach of the inner ones. */
static int layout_injective(const int64_t size[3], const int64_t stride[3], int64_t dim)
{
    int idx[3] = {0, 1, 2};
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++)
            if (stride[idx[b]] < stride[idx[a]]) {
                int t = idx[a]; idx[a] = idx[b]; idx[b] = t;
            }
    uint64_t reach = (uint64_t)dim; /* elements covered by the inner dimensions */
    for (int a = 0; a < 3; a++) {
        int x = idx[a];
        if (size[x] <= 1)
            continue;
        if ((uint64_t)stride[x] < reach)
            return 0;
        reach = (uint64_t)stride[x] * (uint64_t)(size[x] - 1) + reach; /* no overflow: extent was checked */
    }
    return 1;
}

int mlstm_tensor_geometry(const mlstm_desc *d, int tensor, mlstm_tensor_arg *arg, uint64_t *extent,
                          char *msg, size_t len)
{
    const int64_t dim = tensor_dim(d, tensor);
    const mlstm_layout *l = &d->layout[tensor];
    const char *name = mlstm_tensor_name(tensor);
    int64_t sb = l->batch, sh = l->head, ss = l->seq;
    if (sb == 0 && sh == 0 && ss == 0) {
        uint64_t a, b;
        if (!mul_u64((uint64_t)d->seq_len, (uint64_t)dim, &a) || !mul_u64(a, (uint64_t)d->heads, &b) ||
            b > (uint64_t)INT64_MAX) {
            snprintf(msg, len, "tensor %s: contiguous strides overflow 64 bits", name);
            return MLSTM_ERR_SIZE_OVERFLOW;
        }
        ss = dim;
        sh = (int64_t)a;
        sb = (int64_t)b;
    } else if (sb < 0 || sh < 0 || ss < 0) {
        snprintf(msg, len, "tensor %s: strides {batch %lld, head %lld, seq %lld} must be >= 0", name,
                 (long long)sb, (long long)sh, (long long)ss);
        return MLSTM_ERR_BAD_LAYOUT;
    }
    const int64_t size[3] = {d->batch, d->heads, d->seq_len};
    const int64_t stride[3] = {sb, sh, ss};
    uint64_t ext = (uint64_t)dim, term;
    for (int x = 0; x < 3; x++) {
        if (!mul_u64((uint64_t)(size[x] - 1), (uint64_t)stride[x], &term) || !add_u64(ext, term, &ext)) {
            snprintf(msg, len, "tensor %s: the extent of its layout overflows 64 bits", name);
            return MLSTM_ERR_SIZE_OVERFLOW;
        }
    }
    uint64_t bytes;
    if (!mul_u64(ext, mlstm_dtype_size(mlstm_tensor_dtype(d, tensor)), &bytes) || bytes > (uint64_t)INT64_MAX ||
        bytes > (uint64_t)SIZE_MAX) {
        snprintf(msg, len, "tensor %s: its byte size overflows 64 bits", name);
        return MLSTM_ERR_SIZE_OVERFLOW;
    }
    if (arg) {
        arg->stride_b = sb;
        arg->stride_h = sh;
        arg->stride_s = ss;
    }
    if (extent)
        *extent = ext;
    if (!layout_injective(size, stride, dim)) { /* the caller decides whether that matters (outputs only) */
        snprintf(msg, len, "tensor %s: strides {batch %lld, head %lld, seq %lld} map two elements to one address",
                 name, (long long)sb, (long long)sh, (long long)ss);
        return MLSTM_ERR_BAD_LAYOUT;
    }
    return MLSTM_OK;
}

size_t mlstm_tensor_extent(const mlstm_desc *desc, int tensor)
{
    char msg[256];
    uint64_t ext = 0;
    mlstm_desc d;
    if (tensor < 0 || tensor >= MLSTM_TENSOR_COUNT || mlstm_validate_desc(desc, &d, NULL, msg, sizeof msg) != MLSTM_OK)
        return 0;
    int st = mlstm_tensor_geometry(&d, tensor, NULL, &ext, msg, sizeof msg);
    return (st == MLSTM_OK || st == MLSTM_ERR_BAD_LAYOUT) ? (size_t)ext : 0;
}

int mlstm_plan_geometry(mlstm_context *ctx, const char *fn, const mlstm_desc *in, unsigned directions,
                        mlstm_desc *desc, mlstm_params *p, uint64_t extent[MLSTM_TENSOR_COUNT])
{
    char msg[1024];
    float scale = 0.0f;
    int st = mlstm_validate_desc(in, desc, &scale, msg, sizeof msg);
    if (st != MLSTM_OK)
        return mlstm_fail(ctx, st, "%s: %s", fn, msg);
    memset(p, 0, sizeof *p);
    p->batch = desc->batch;
    p->heads = desc->heads;
    p->seq_len = desc->seq_len;
    p->dqk = desc->dqk;
    p->dv = desc->dv;
    p->dtype = desc->dtype;
    p->eps = desc->eps;
    p->scale = scale;
    p->grad_mode = desc->grad_mode;
    p->math_mode = desc->math_mode;
    const int bwd = (directions & MLSTM_PLAN_BWD) != 0;
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        extent[t] = 0;
        if (!mlstm_tensor_used(t, bwd))
            continue;
        st = mlstm_tensor_geometry(desc, t, &p->t[t], &extent[t], msg, sizeof msg);
        const int output = ((directions & MLSTM_PLAN_FWD) && mlstm_tensor_is_output(t, 0)) ||
                           ((directions & MLSTM_PLAN_BWD) && mlstm_tensor_is_output(t, 1));
        if (st == MLSTM_ERR_BAD_LAYOUT && !output && desc->layout[t].batch >= 0 && desc->layout[t].head >= 0 &&
            desc->layout[t].seq >= 0)
            st = MLSTM_OK; /* inputs may alias themselves (e.g. broadcast with stride 0) */
        if (st != MLSTM_OK)
            return mlstm_fail(ctx, st, "%s: %s", fn, msg);
    }
    return MLSTM_OK;
}

int mlstm_bind_buffers(mlstm_context *ctx, const char *fn, const mlstm_desc *desc, int backward,
                       const uint64_t extent[MLSTM_TENSOR_COUNT], mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT],
                       mlstm_params *p)
{
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        if (!mlstm_tensor_used(t, backward))
            continue;
        const char *name = mlstm_tensor_name(t);
        const mlstm_buffer *b = bufs[t];
        if (b == NULL || b->magic != MLSTM_BUFFER_MAGIC)
            return mlstm_fail(ctx, MLSTM_ERR_INVALID_ARGUMENT, "%s: buffer %s is %s", fn, name,
                              b == NULL ? "NULL" : "not a live mlstm_buffer");
        if (b->ctx != ctx)
            return mlstm_fail(ctx, MLSTM_ERR_CONTEXT_MISMATCH, "%s: buffer %s belongs to another context", fn, name);
        int want = mlstm_tensor_dtype(desc, t);
        if (b->dtype != want)
            return mlstm_fail(ctx, MLSTM_ERR_DTYPE_MISMATCH, "%s: buffer %s has dtype %d, tensor %s needs dtype %d",
                              fn, name, b->dtype, name, want);
        if (extent[t] > (uint64_t)b->count)
            return mlstm_fail(ctx, MLSTM_ERR_BUFFER_TOO_SMALL,
                              "%s: buffer %s holds %zu elements, its layout addresses %llu", fn, name, b->count,
                              (unsigned long long)extent[t]);
    }
    /* An output must not share memory with any other tensor of the call. Ranges are compared in bytes
     * within one allocation (conservative: the whole extent, gaps included). Two allocations with the same
     * backend handle are the same memory (one cl_mem or device pointer wrapped twice): both start at it. */
    for (int o = 0; o < MLSTM_TENSOR_COUNT; o++) {
        if (!mlstm_tensor_used(o, backward) || !mlstm_tensor_is_output(o, backward))
            continue;
        size_t eo = mlstm_dtype_size(mlstm_tensor_dtype(desc, o));
        uint64_t o_lo = (uint64_t)bufs[o]->offset * eo, o_hi = o_lo + extent[o] * eo;
        for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
            if (t == o || !mlstm_tensor_used(t, backward) ||
                (bufs[t]->alloc != bufs[o]->alloc && bufs[t]->alloc->mem != bufs[o]->alloc->mem))
                continue;
            size_t et = mlstm_dtype_size(mlstm_tensor_dtype(desc, t));
            uint64_t t_lo = (uint64_t)bufs[t]->offset * et, t_hi = t_lo + extent[t] * et;
            if (o_lo < t_hi && t_lo < o_hi)
                return mlstm_fail(ctx, MLSTM_ERR_BAD_LAYOUT, "%s: output %s overlaps tensor %s in memory", fn,
                                  mlstm_tensor_name(o), mlstm_tensor_name(t));
        }
    }
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        p->t[t].mem = mlstm_tensor_used(t, backward) ? bufs[t]->alloc->mem : NULL;
        p->t[t].offset = mlstm_tensor_used(t, backward) ? (uint64_t)bufs[t]->offset : 0;
    }
    return MLSTM_OK;
}

int mlstm_prepare_call(mlstm_context *ctx, const char *fn, const mlstm_desc *in, int backward,
                       mlstm_buffer *const bufs[MLSTM_TENSOR_COUNT], mlstm_params *p)
{
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    mlstm_desc desc;
    uint64_t extent[MLSTM_TENSOR_COUNT];
    int st = mlstm_plan_geometry(ctx, fn, in, backward ? MLSTM_PLAN_BWD : MLSTM_PLAN_FWD, &desc, p, extent);
    return st != MLSTM_OK ? st : mlstm_bind_buffers(ctx, fn, &desc, backward, extent, bufs, p);
}
