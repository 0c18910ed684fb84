/* Shared helpers of the reliability tests (see rel_util.h): context opening with skip-on-no-device, seeded
 * host problems in any layout and dtype, host- and device-path forward+backward runs, bitwise comparison.
 * Test-side code: it may print and exit (the library never does). */
#include "rel_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

const char *rel_tensor_name(int t) { return tu_tensor_name(t); }

const char *rel_dtype_name(int dtype) { return tu_dtype_name(dtype); }

void rel_skip(const char *test, const char *fmt, ...)
{
    va_list ap;
    printf("SKIP %s: ", test);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    exit(REL_SKIP);
}

int rel_context_open(const char *backend, mlstm_context **ctx, char *why, size_t why_len)
{
    mlstm_options o;
    mlstm_options_init(&o);
    o.backend = backend;
    int st = mlstm_context_create(&o, ctx);
    if (st != MLSTM_OK)
        snprintf(why, why_len, "%s: %s", mlstm_status_string(st), mlstm_last_error_global());
    else
        why[0] = '\0';
    return st;
}

mlstm_context *rel_context_or_skip(const char *test)
{
    char why[1024];
    mlstm_context *ctx = NULL;
    int st = rel_context_open(NULL, &ctx, why, sizeof why);
    if (st == MLSTM_ERR_NO_DEVICE || st == MLSTM_ERR_BACKEND_UNAVAILABLE)
        rel_skip(test, "no device for MLSTM_BACKEND=%s (%s)", getenv("MLSTM_BACKEND") ? getenv("MLSTM_BACKEND")
                                                                                        : "(unset)", why);
    if (st != MLSTM_OK) {
        fprintf(stderr, "FAIL %s: mlstm_context_create: %s\n", test, why);
        exit(1);
    }
    printf("%s: backend %s, device %s\n", test, mlstm_context_backend_name(ctx), mlstm_context_device_name(ctx));
    return ctx;
}

int rel_tensor_dtype(const mlstm_desc *d, int t) { return tu_tensor_dtype(t, d->dtype); }
int64_t rel_tensor_dim(const mlstm_desc *d, int t) { return tu_tensor_dim(t, d->dqk, d->dv); }

size_t rel_index(const mlstm_desc *d, int t, int64_t b, int64_t h, int64_t s, int64_t x)
{
    const mlstm_layout *l = &d->layout[t];
    int64_t dim = rel_tensor_dim(d, t), sb = l->batch, sh = l->head, ss = l->seq;
    if (sb == 0 && sh == 0 && ss == 0) {
        ss = dim;
        sh = d->seq_len * dim;
        sb = d->heads * sh;
    }
    return (size_t)(b * sb + h * sh + s * ss + x);
}

double rel_get(const rel_problem *p, int t, int64_t b, int64_t h, int64_t s, int64_t x)
{
    return tu_load(p->t[t], rel_tensor_dtype(&p->d, t), rel_index(&p->d, t, b, h, s, x));
}

void rel_put(rel_problem *p, int t, int64_t b, int64_t h, int64_t s, int64_t x, double v)
{
    tu_store(p->t[t], rel_tensor_dtype(&p->d, t), rel_index(&p->d, t, b, h, s, x), v);
}

void rel_problem_free(rel_problem *p)
{
    for (int t = 0; t < REL_NT; t++)
        free(p->t[t]);
    memset(p, 0, sizeof *p);
}

static int alloc_arrays(rel_problem *p, const mlstm_desc *d)
{
    memset(p, 0, sizeof *p);
    p->d = *d;
    for (int t = 0; t < REL_NT; t++) {
        p->count[t] = mlstm_tensor_extent(d, t);
        p->bytes[t] = p->count[t] * tu_dtype_size(rel_tensor_dtype(d, t));
        if (p->count[t] == 0 || !(p->t[t] = calloc(p->bytes[t], 1))) {
            rel_problem_free(p);
            return -1;
        }
    }
    return 0;
}

int rel_problem_init(rel_problem *p, const mlstm_desc *d, uint64_t seed, int gates, double qkv_scale)
{
    if (alloc_arrays(p, d) != 0)
        return -1;
    tu_rng r;
    tu_rng_seed(&r, seed);
    static const int inputs[] = {MLSTM_TENSOR_Q, MLSTM_TENSOR_K, MLSTM_TENSOR_V, MLSTM_TENSOR_I, MLSTM_TENSOR_F,
                                 MLSTM_TENSOR_DH};
    for (size_t k = 0; k < sizeof inputs / sizeof inputs[0]; k++) {
        int t = inputs[k];
        for (int64_t b = 0; b < d->batch; b++)
            for (int64_t h = 0; h < d->heads; h++)
                for (int64_t s = 0; s < d->seq_len; s++)
                    for (int64_t x = 0; x < rel_tensor_dim(d, t); x++) {
                        double v = tu_rng_normal(&r);
                        if (t == MLSTM_TENSOR_F)
                            v += gates == REL_GATES_STD ? 3.0 : 0.0;
                        else if (t == MLSTM_TENSOR_Q || t == MLSTM_TENSOR_K || t == MLSTM_TENSOR_V)
                            v *= qkv_scale;
                        rel_put(p, t, b, h, s, x, v);
                    }
    }
    return 0;
}

int rel_problem_clone(rel_problem *dst, const rel_problem *src)
{
    if (alloc_arrays(dst, &src->d) != 0)
        return -1;
    for (int t = 0; t < REL_NT; t++)
        memcpy(dst->t[t], src->t[t], src->bytes[t]);
    return 0;
}

void rel_problem_set_all(rel_problem *p, int t, double x)
{
    for (size_t e = 0; e < p->count[t]; e++)
        tu_store(p->t[t], rel_tensor_dtype(&p->d, t), e, x);
}

int rel_run_fwd(mlstm_context *ctx, rel_problem *p)
{
    void **a = p->t;
    return mlstm_parallel_fwd_host(ctx, &p->d, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
}

int rel_run_fwd_bwd(mlstm_context *ctx, rel_problem *p)
{
    int st = rel_run_fwd(ctx, p);
    if (st != MLSTM_OK)
        return st;
    void **a = p->t;
    return mlstm_parallel_bwd_host(ctx, &p->d, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10],
                                   a[11], a[12], a[13]);
}

int rel_run_fwd_bwd_device(mlstm_context *ctx, rel_problem *p)
{
    mlstm_buffer *b[REL_NT] = {0};
    int st = MLSTM_OK;
    for (int t = 0; t < REL_NT && st == MLSTM_OK; t++) {
        st = mlstm_buffer_create(ctx, rel_tensor_dtype(&p->d, t), p->count[t], &b[t]);
        if (st == MLSTM_OK)
            st = mlstm_buffer_write(b[t], 0, p->count[t], p->t[t]);
    }
    if (st == MLSTM_OK)
        st = mlstm_parallel_fwd(ctx, &p->d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
    if (st == MLSTM_OK)
        st = mlstm_parallel_bwd(ctx, &p->d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
                                b[12], b[13]);
    if (st == MLSTM_OK)
        st = mlstm_synchronize(ctx);
    for (int t = MLSTM_TENSOR_H; t < REL_NT && st == MLSTM_OK; t++)
        if (t != MLSTM_TENSOR_DH)
            st = mlstm_buffer_read(b[t], 0, p->count[t], p->t[t]);
    for (int t = 0; t < REL_NT; t++)
        mlstm_buffer_destroy(b[t]);
    return st;
}

int rel_outputs_identical(const rel_problem *a, const rel_problem *b, int bwd, char *msg, size_t len)
{
    static const int outs[] = {MLSTM_TENSOR_H, MLSTM_TENSOR_M, MLSTM_TENSOR_N, MLSTM_TENSOR_DQ, MLSTM_TENSOR_DK,
                               MLSTM_TENSOR_DV, MLSTM_TENSOR_DI, MLSTM_TENSOR_DF};
    for (int k = 0; k < (bwd ? 8 : 3); k++) {
        int t = outs[k];
        if (a->bytes[t] != b->bytes[t]) {
            snprintf(msg, len, "%s: sizes differ", rel_tensor_name(t));
            return 0;
        }
        if (memcmp(a->t[t], b->t[t], a->bytes[t]) != 0) {
            size_t es = tu_dtype_size(rel_tensor_dtype(&a->d, t));
            size_t e = 0;
            while (memcmp((const char *)a->t[t] + e * es, (const char *)b->t[t] + e * es, es) == 0)
                e++;
            snprintf(msg, len, "%s differs first at element %zu: %.9g vs %.9g", rel_tensor_name(t), e,
                     tu_load(a->t[t], rel_tensor_dtype(&a->d, t), e), tu_load(b->t[t], rel_tensor_dtype(&b->d, t), e));
            return 0;
        }
    }
    msg[0] = '\0';
    return 1;
}

size_t rel_count_nonfinite(const rel_problem *p, int t)
{
    size_t n = 0;
    for (int64_t b = 0; b < p->d.batch; b++)
        for (int64_t h = 0; h < p->d.heads; h++)
            for (int64_t s = 0; s < p->d.seq_len; s++)
                for (int64_t x = 0; x < rel_tensor_dim(&p->d, t); x++)
                    n += !isfinite(rel_get(p, t, b, h, s, x));
    return n;
}
