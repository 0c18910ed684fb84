/* Fault-path tests (cmocka) on the backend MLSTM_BACKEND selects (no device: exit 77): failed device allocations
 * (OUT_OF_MEMORY, or SIZE_OVERFLOW) leave the context usable; 64-bit overflowing sizes are rejected before any
 * work; NULL contexts, handles, descs and arrays fail cleanly; aliasing through wrapped memory is caught; a broken
 * kernel source gives KERNEL_BUILD with the log (when the backend reads MLSTM_OPENCL_KERNEL_DIR). */
#define _DEFAULT_SOURCE /* mmap flags, mkdtemp, setenv, pthread barriers, clock_gettime under -std=c11 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "mlstm.h"
#include "mlstm_cuda.h"
#include "mlstm_opencl.h"
#include "mlstm_ref.h"
#include "rel_util.h"
#include "test_util.h"
#include "tolerances.h"

static mlstm_context *g_ctx;

/* ---- helpers ---------------------------------------------------------------------------------------- */

/* A small f32 forward on ctx that must succeed and match the float64 reference (the f32 contract). */
static void assert_context_usable(mlstm_context *ctx)
{
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = 1;
    d.heads = 2;
    d.seq_len = 9;
    d.dqk = 3;
    d.dv = 5;
    rel_problem p;
    assert_int_equal(rel_problem_init(&p, &d, 1234, REL_GATES_STD, 1.0), 0);
    int st = rel_run_fwd(ctx, &p);
    if (st != MLSTM_OK)
        fail_msg("context no longer usable: fwd returned %s: %s", mlstm_status_string(st),
                 mlstm_context_last_error(ctx));
    size_t nqk = 2 * 9 * 3, nv = 2 * 9 * 5, ng = 2 * 9;
    double *q = malloc(nqk * sizeof *q), *k = malloc(nqk * sizeof *k), *v = malloc(nv * sizeof *v);
    double *ig = malloc(ng * sizeof *ig), *fg = malloc(ng * sizeof *fg), *h = malloc(nv * sizeof *h);
    double *got = malloc(nv * sizeof *got);
    assert_non_null(q && k && v && ig && fg && h && got);
    for (size_t e = 0; e < nqk; e++) {
        q[e] = ((float *)p.t[MLSTM_TENSOR_Q])[e];
        k[e] = ((float *)p.t[MLSTM_TENSOR_K])[e];
    }
    for (size_t e = 0; e < nv; e++) {
        v[e] = ((float *)p.t[MLSTM_TENSOR_V])[e];
        got[e] = ((float *)p.t[MLSTM_TENSOR_H])[e];
    }
    for (size_t e = 0; e < ng; e++) {
        ig[e] = ((float *)p.t[MLSTM_TENSOR_I])[e];
        fg[e] = ((float *)p.t[MLSTM_TENSOR_F])[e];
    }
    mlstm_ref_shape s = {1, 2, 9, 3, 5, 1e-6, 1.0 / sqrt(3.0), 0};
    mlstm_ref_fwd(&s, q, k, v, ig, fg, h, NULL, NULL);
    double err = tu_rel_l2(got, h, nv);
    if (!(err <= tol_max_rel_l2(MLSTM_DTYPE_F32, TOL_H)))
        fail_msg("context usable but h is wrong afterwards: rel L2 %.3g > %.3g", err,
                 tol_max_rel_l2(MLSTM_DTYPE_F32, TOL_H));
    free(q); free(k); free(v); free(ig); free(fg); free(h); free(got);
    rel_problem_free(&p);
}

/* Host arrays surrounded by canary guard bands; check_guarded verifies guards and that the payload equals the
 * snapshot taken at creation (for arrays a failing call must not touch). */
typedef struct guarded {
    unsigned char *raw, *p, *snap;
    size_t bytes;
} guarded;
#define GUARD_BYTES 256
static void guarded_make(guarded *g, size_t bytes, unsigned seed)
{
    g->bytes = bytes;
    g->raw = malloc(bytes + 2 * GUARD_BYTES);
    g->snap = malloc(bytes);
    assert_non_null(g->raw);
    assert_non_null(g->snap);
    memset(g->raw, 0xA5, GUARD_BYTES);
    memset(g->raw + GUARD_BYTES + bytes, 0x5A, GUARD_BYTES);
    g->p = g->raw + GUARD_BYTES;
    for (size_t e = 0; e < bytes; e++)
        g->p[e] = (unsigned char)(seed * 131u + e * 7u);
    memcpy(g->snap, g->p, bytes);
}
static void guarded_check_untouched(const guarded *g, const char *what)
{
    for (size_t e = 0; e < GUARD_BYTES; e++)
        if (g->raw[e] != 0xA5 || g->raw[GUARD_BYTES + g->bytes + e] != 0x5A)
            fail_msg("%s: guard band overwritten", what);
    if (memcmp(g->p, g->snap, g->bytes) != 0)
        fail_msg("%s: contents changed by a call that failed", what);
}
static void guarded_free(guarded *g)
{
    free(g->raw);
    free(g->snap);
}

static void small_desc(mlstm_desc *d)
{
    mlstm_desc_init(d);
    d->batch = 1;
    d->heads = 1;
    d->seq_len = 4;
    d->dqk = 3;
    d->dv = 5;
}

/* ---- device allocation failure ---------------------------------------------------------------------- */

static void test_alloc_out_of_memory(void **state)
{
    (void)state;
    mlstm_context *ctx = g_ctx;
    /* 2^40 f32 elements = 4 TiB: more than any device has */
    for (int round = 0; round < 20; round++) { /* repeated: nothing may leak or stick */
        mlstm_buffer *b = (mlstm_buffer *)(uintptr_t)1;
        int st = mlstm_buffer_create(ctx, MLSTM_DTYPE_F32, (size_t)1 << 40, &b);
        if (st != MLSTM_ERR_OUT_OF_MEMORY)
            fail_msg("buffer_create(2^40 f32) returned %s (%d), expected OUT_OF_MEMORY; last error: %s",
                     mlstm_status_string(st), st, mlstm_context_last_error(ctx));
        assert_null(b);
        assert_true(mlstm_context_last_error(ctx)[0] != '\0');
        if (round == 0)
            printf("  2^40 f32 elements: %s: %s\n", mlstm_status_string(st), mlstm_context_last_error(ctx));
    }
    mlstm_buffer *b = (mlstm_buffer *)(uintptr_t)1;
    int st = mlstm_buffer_create(ctx, MLSTM_DTYPE_BF16, (size_t)1 << 41, &b); /* 4 TiB of bf16 */
    assert_int_equal(st, MLSTM_ERR_OUT_OF_MEMORY);
    assert_null(b);
    /* byte count overflowing 64 bits: SIZE_OVERFLOW, not an allocation attempt */
    static const struct { int dtype; size_t count; } over[] = {
        {MLSTM_DTYPE_F32, (size_t)1 << 62}, {MLSTM_DTYPE_F32, (size_t)1 << 61}, {MLSTM_DTYPE_F16, (size_t)1 << 62},
        {MLSTM_DTYPE_BF16, SIZE_MAX}, {MLSTM_DTYPE_F32, SIZE_MAX / 4 + 1}};
    for (size_t k = 0; k < sizeof over / sizeof over[0]; k++) {
        b = (mlstm_buffer *)(uintptr_t)1;
        st = mlstm_buffer_create(ctx, over[k].dtype, over[k].count, &b);
        if (st != MLSTM_ERR_SIZE_OVERFLOW)
            fail_msg("buffer_create(dtype %d, %zu) returned %s (%d), expected SIZE_OVERFLOW", over[k].dtype,
                     over[k].count, mlstm_status_string(st), st);
        assert_null(b);
    }
    /* buffers made before and after the failures still work */
    mlstm_buffer *small = NULL;
    assert_int_equal(mlstm_buffer_create(ctx, MLSTM_DTYPE_F32, 64, &small), MLSTM_OK);
    float in[64], out[64];
    for (int e = 0; e < 64; e++)
        in[e] = (float)e * 0.5f;
    assert_int_equal(mlstm_buffer_write(small, 0, 64, in), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create(ctx, MLSTM_DTYPE_F32, (size_t)1 << 40, &b), MLSTM_ERR_OUT_OF_MEMORY);
    assert_int_equal(mlstm_buffer_read(small, 0, 64, out), MLSTM_OK);
    assert_memory_equal(in, out, sizeof in);
    mlstm_buffer_destroy(small);
    assert_context_usable(ctx);
}

/* A host call whose input tensor needs a 1 TiB device buffer: OUT_OF_MEMORY, outputs untouched, context usable.
 * The host array really spans the extent (a read-only MAP_NORESERVE mapping of zero pages), as the contract asks. */
static void test_host_call_out_of_memory(void **state)
{
    (void)state;
    mlstm_context *ctx = g_ctx;
    mlstm_desc d;
    small_desc(&d);
    d.seq_len = 2;
    const int64_t stride = (int64_t)1 << 38; /* q's rows 2^38 elements apart: extent 2^38 + 3 f32 = 1 TiB */
    d.layout[MLSTM_TENSOR_Q] = (mlstm_layout){2 * stride, 2 * stride, stride};
    size_t qext = mlstm_tensor_extent(&d, MLSTM_TENSOR_Q);
    assert_int_equal(qext, (size_t)stride + 3);
    void *q = mmap(NULL, qext * 4, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (q == MAP_FAILED) {
        printf("  SKIP part: cannot map a 1 TiB host array here (e.g. under valgrind); testing the device path "
               "only\n");
        mlstm_buffer *b = NULL;
        assert_int_equal(mlstm_buffer_create(ctx, MLSTM_DTYPE_F32, qext, &b), MLSTM_ERR_OUT_OF_MEMORY);
        assert_context_usable(ctx);
        return;
    }
    guarded k, v, i, f, h, m, n;
    guarded_make(&k, 4 * 2 * 3, 1);
    guarded_make(&v, 4 * 2 * 5, 2);
    guarded_make(&i, 4 * 2, 3);
    guarded_make(&f, 4 * 2, 4);
    guarded_make(&h, 4 * 2 * 5, 5);
    guarded_make(&m, 4 * 2, 6);
    guarded_make(&n, 4 * 2, 7);
    int st = mlstm_parallel_fwd_host(ctx, &d, q, k.p, v.p, (float *)i.p, (float *)f.p, h.p, (float *)m.p,
                                     (float *)n.p);
    munmap(q, qext * 4);
    if (st != MLSTM_ERR_OUT_OF_MEMORY)
        fail_msg("fwd_host with a 1 TiB input returned %s (%d), expected OUT_OF_MEMORY; last error: %s",
                 mlstm_status_string(st), st, mlstm_context_last_error(ctx));
    assert_true(mlstm_context_last_error(ctx)[0] != '\0');
    guarded_check_untouched(&h, "h");
    guarded_check_untouched(&m, "m");
    guarded_check_untouched(&n, "n");
    guarded_check_untouched(&k, "k");
    guarded *all[] = {&k, &v, &i, &f, &h, &m, &n};
    for (size_t a = 0; a < sizeof all / sizeof all[0]; a++)
        guarded_free(all[a]);
    assert_context_usable(ctx);
}

/* ---- 64-bit overflow ---------------------------------------------------------------------------------- */

/* Calls fwd, bwd (device buffers of 1 element: the call must not get as far as checking them) and fwd_host,
 * bwd_host (guarded tiny arrays that must stay untouched) with desc; every call must return `want`. */
static void expect_all_entry_points(mlstm_context *ctx, const mlstm_desc *d, int want, const char *what)
{
    mlstm_buffer *b[REL_NT];
    for (int t = 0; t < REL_NT; t++) { /* tensors before the faulty one must pass their own checks */
        size_t n = mlstm_tensor_extent(d, t);
        assert_int_equal(mlstm_buffer_create(ctx, rel_tensor_dtype(d, t), n ? n : 1, &b[t]), MLSTM_OK);
    }
    int st = mlstm_parallel_fwd(ctx, d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
    if (st != want)
        fail_msg("%s: mlstm_parallel_fwd returned %s (%d), expected %s", what, mlstm_status_string(st), st,
                 mlstm_status_string(want));
    assert_true(mlstm_context_last_error(ctx)[0] != '\0');
    st = mlstm_parallel_bwd(ctx, d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
                            b[13]);
    if (st != want)
        fail_msg("%s: mlstm_parallel_bwd returned %s (%d), expected %s", what, mlstm_status_string(st), st,
                 mlstm_status_string(want));
    for (int t = 0; t < REL_NT; t++)
        mlstm_buffer_destroy(b[t]);

    guarded g[REL_NT];
    void *p[REL_NT];
    for (int t = 0; t < REL_NT; t++) {
        guarded_make(&g[t], 64, (unsigned)t);
        p[t] = g[t].p;
    }
    st = mlstm_parallel_fwd_host(ctx, d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
    if (st != want)
        fail_msg("%s: mlstm_parallel_fwd_host returned %s (%d), expected %s", what, mlstm_status_string(st), st,
                 mlstm_status_string(want));
    st = mlstm_parallel_bwd_host(ctx, d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11],
                                 p[12], p[13]);
    if (st != want)
        fail_msg("%s: mlstm_parallel_bwd_host returned %s (%d), expected %s", what, mlstm_status_string(st), st,
                 mlstm_status_string(want));
    for (int t = 0; t < REL_NT; t++) {
        guarded_check_untouched(&g[t], rel_tensor_name(t));
        guarded_free(&g[t]);
    }
}

static void test_size_overflow_rejected(void **state)
{
    (void)state;
    mlstm_context *ctx = g_ctx;
    mlstm_desc d;

    /* B*NH*S*D*4 bytes overflows: 2^21 * 2^21 * 2^21 * 512 */
    small_desc(&d);
    d.batch = d.heads = d.seq_len = (int64_t)1 << 21;
    d.dqk = d.dv = 512;
    expect_all_entry_points(ctx, &d, MLSTM_ERR_SIZE_OVERFLOW, "B=NH=S=2^21, D=512");
    for (int t = 0; t < REL_NT; t++)
        assert_int_equal(mlstm_tensor_extent(&d, t), 0);

    /* element count itself overflows 64 bits */
    small_desc(&d);
    d.batch = INT64_MAX;
    d.heads = 3;
    expect_all_entry_points(ctx, &d, MLSTM_ERR_SIZE_OVERFLOW, "B=INT64_MAX, NH=3");
    small_desc(&d);
    d.batch = d.heads = 3037000500; /* B*NH just above 2^63 */
    expect_all_entry_points(ctx, &d, MLSTM_ERR_SIZE_OVERFLOW, "B=NH=3037000500");

    /* strides whose extent overflows 64 bits, on an input and on an output */
    small_desc(&d);
    d.batch = 3;
    d.layout[MLSTM_TENSOR_K] = (mlstm_layout){INT64_MAX, 1, 1};
    expect_all_entry_points(ctx, &d, MLSTM_ERR_SIZE_OVERFLOW, "k batch stride INT64_MAX, B=3");
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_K), 0);
    small_desc(&d);
    d.seq_len = 3;
    d.layout[MLSTM_TENSOR_H] = (mlstm_layout){0, 0, INT64_MAX / 2 + 1};
    expect_all_entry_points(ctx, &d, MLSTM_ERR_SIZE_OVERFLOW, "h seq stride 2^62, S=3");
    /* extent fits in 64 bits but its byte count does not (f32: 4 bytes per element) */
    small_desc(&d);
    d.seq_len = 2;
    d.layout[MLSTM_TENSOR_I] = (mlstm_layout){0, 0, (int64_t)1 << 62};
    expect_all_entry_points(ctx, &d, MLSTM_ERR_SIZE_OVERFLOW, "i seq stride 2^62 (bytes overflow)");

    /* buffer ranges that wrap size_t */
    mlstm_buffer *b = NULL, *view = (mlstm_buffer *)(uintptr_t)1;
    assert_int_equal(mlstm_buffer_create(ctx, MLSTM_DTYPE_F32, 16, &b), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create_view(b, 8, SIZE_MAX - 4, &view), MLSTM_ERR_INVALID_ARGUMENT);
    assert_null(view);
    assert_int_equal(mlstm_buffer_create_view(b, SIZE_MAX, 2, &view), MLSTM_ERR_INVALID_ARGUMENT);
    guarded g;
    guarded_make(&g, 64, 9);
    int st = mlstm_buffer_read(b, SIZE_MAX, 2, g.p);
    assert_int_equal(st, MLSTM_ERR_BUFFER_TOO_SMALL);
    st = mlstm_buffer_read(b, 4, SIZE_MAX - 2, g.p);
    assert_int_equal(st, MLSTM_ERR_BUFFER_TOO_SMALL);
    st = mlstm_buffer_write(b, SIZE_MAX / 4 + 1, 4, g.p);
    assert_int_equal(st, MLSTM_ERR_BUFFER_TOO_SMALL);
    guarded_check_untouched(&g, "read/write host array");
    guarded_free(&g);
    mlstm_buffer_destroy(b);
    assert_context_usable(ctx);
}

/* ---- NULL contexts, handles, descs, arrays -------------------------------------------------------------- */

static void test_null_context_everywhere(void **state)
{
    (void)state;
    mlstm_desc d;
    small_desc(&d);
    float a[64] = {0};
    mlstm_buffer *b = (mlstm_buffer *)(uintptr_t)1;
    mlstm_buffer *real = NULL;
    assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F32, 64, &real), MLSTM_OK);
    mlstm_buffer *r = real;

    assert_int_equal(mlstm_context_create(NULL, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    mlstm_context_destroy(NULL);
    assert_string_equal(mlstm_context_backend_name(NULL), "");
    assert_string_equal(mlstm_context_device_name(NULL), "");
    assert_string_equal(mlstm_context_last_error(NULL), "");
    assert_int_equal(mlstm_synchronize(NULL), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_create(NULL, MLSTM_DTYPE_F32, 4, &b), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_parallel_fwd(NULL, &d, r, r, r, r, r, r, r, r), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_parallel_bwd(NULL, &d, r, r, r, r, r, r, r, r, r, r, r, r, r, r),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_parallel_fwd_host(NULL, &d, a, a, a, a, a, a, a, a), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_parallel_bwd_host(NULL, &d, a, a, a, a, a, a, a, a, a, a, a, a, a, a),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_wrap_opencl(NULL, (struct _cl_mem *)(uintptr_t)8, MLSTM_DTYPE_F32, 4, &b),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_wrap_cuda(NULL, (void *)(uintptr_t)8, MLSTM_DTYPE_F32, 4, &b),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_context_set_cuda_stream(NULL, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    assert_ptr_equal(b, (mlstm_buffer *)(uintptr_t)1); /* nothing was written through out */
    mlstm_buffer_destroy(real);
    assert_context_usable(g_ctx);
}

static void test_null_handles_everywhere(void **state)
{
    (void)state;
    mlstm_context *ctx = g_ctx;
    mlstm_desc d;
    small_desc(&d);
    float host[64] = {0}, keep[64];
    memcpy(keep, host, sizeof keep);

    /* NULL out pointers and NULL buffers */
    assert_int_equal(mlstm_buffer_create(ctx, MLSTM_DTYPE_F32, 4, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    assert_true(mlstm_context_last_error(ctx)[0] != '\0');
    mlstm_buffer *buf = NULL, *out = (mlstm_buffer *)(uintptr_t)1;
    assert_int_equal(mlstm_buffer_create(ctx, MLSTM_DTYPE_F32, 64, &buf), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create_view(buf, 0, 4, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_create_view(NULL, 0, 4, &out), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_write(NULL, 0, 4, host), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_read(NULL, 0, 4, host), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_write(buf, 0, 4, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_read(buf, 0, 4, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_count(NULL), 0);
    assert_int_equal(mlstm_buffer_dtype(NULL), 0);
    mlstm_buffer_destroy(NULL);
    mlstm_desc_init(NULL);
    mlstm_options_init(NULL);
    assert_int_equal(mlstm_tensor_extent(NULL, MLSTM_TENSOR_Q), 0);
    assert_int_equal(mlstm_buffer_wrap_opencl(ctx, NULL, MLSTM_DTYPE_F32, 4, &out),
                     strcmp(mlstm_context_backend_name(ctx), "opencl") == 0 ? MLSTM_ERR_INVALID_ARGUMENT
                                                                            : MLSTM_ERR_BACKEND_UNAVAILABLE);
    assert_int_equal(mlstm_buffer_wrap_cuda(ctx, NULL, MLSTM_DTYPE_F32, 4, &out),
                     strcmp(mlstm_context_backend_name(ctx), "cuda") == 0 ? MLSTM_ERR_INVALID_ARGUMENT
                                                                          : MLSTM_ERR_BACKEND_UNAVAILABLE);
    if (strcmp(mlstm_context_backend_name(ctx), "cuda") != 0)
        assert_int_equal(mlstm_context_set_cuda_stream(ctx, NULL), MLSTM_ERR_BACKEND_UNAVAILABLE);

    /* NULL desc, then each NULL buffer / array position of every entry point */
    mlstm_buffer *bb[REL_NT];
    for (int t = 0; t < REL_NT; t++)
        assert_int_equal(mlstm_buffer_create(ctx, rel_tensor_dtype(&d, t), mlstm_tensor_extent(&d, t), &bb[t]),
                         MLSTM_OK);
    assert_int_equal(mlstm_parallel_fwd(ctx, NULL, bb[0], bb[1], bb[2], bb[3], bb[4], bb[5], bb[6], bb[7]),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_parallel_bwd(ctx, NULL, bb[0], bb[1], bb[2], bb[3], bb[4], bb[5], bb[6], bb[7], bb[8],
                                        bb[9], bb[10], bb[11], bb[12], bb[13]),
                     MLSTM_ERR_INVALID_ARGUMENT);
    float *hp[REL_NT];
    for (int t = 0; t < REL_NT; t++) {
        hp[t] = calloc(mlstm_tensor_extent(&d, t), sizeof(float)); /* f32 desc: 4 bytes an element */
        assert_non_null(hp[t]);
    }
    assert_int_equal(mlstm_parallel_fwd_host(ctx, NULL, hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], hp[7]),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_parallel_bwd_host(ctx, NULL, hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], hp[7],
                                             hp[8], hp[9], hp[10], hp[11], hp[12], hp[13]),
                     MLSTM_ERR_INVALID_ARGUMENT);
    for (int hole = 0; hole < REL_NT; hole++) {
        mlstm_buffer *x[REL_NT];
        float *y[REL_NT];
        char tag[16]; /* the detail names the NULL tensor: "... buffer dq is NULL" */
        snprintf(tag, sizeof tag, " %s ", rel_tensor_name(hole));
        for (int t = 0; t < REL_NT; t++) {
            x[t] = t == hole ? NULL : bb[t];
            y[t] = t == hole ? NULL : hp[t];
        }
        int st;
        if (hole < 8) {
            st = mlstm_parallel_fwd(ctx, &d, x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]);
            if (st != MLSTM_ERR_INVALID_ARGUMENT)
                fail_msg("fwd with NULL %s returned %d", rel_tensor_name(hole), st);
            st = mlstm_parallel_fwd_host(ctx, &d, y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]);
            if (st != MLSTM_ERR_INVALID_ARGUMENT)
                fail_msg("fwd_host with NULL %s returned %d", rel_tensor_name(hole), st);
            assert_non_null(strstr(mlstm_context_last_error(ctx), tag));
        }
        st = mlstm_parallel_bwd(ctx, &d, x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11],
                                x[12], x[13]);
        if (st != MLSTM_ERR_INVALID_ARGUMENT)
            fail_msg("bwd with NULL %s returned %d", rel_tensor_name(hole), st);
        st = mlstm_parallel_bwd_host(ctx, &d, y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7], y[8], y[9], y[10],
                                     y[11], y[12], y[13]);
        if (st != MLSTM_ERR_INVALID_ARGUMENT)
            fail_msg("bwd_host with NULL %s returned %d", rel_tensor_name(hole), st);
        assert_non_null(strstr(mlstm_context_last_error(ctx), tag));
        /* the arrays the failing calls were given are untouched (all zero) */
        for (int t = 0; t < REL_NT; t++)
            for (size_t e = 0; e < mlstm_tensor_extent(&d, t); e++)
                if (hp[t][e] != 0.0f)
                    fail_msg("a failing call with NULL %s wrote host array %s", rel_tensor_name(hole),
                             rel_tensor_name(t));
    }
    for (int t = 0; t < REL_NT; t++) {
        mlstm_buffer_destroy(bb[t]);
        free(hp[t]);
    }
    mlstm_buffer_destroy(buf);
    assert_memory_equal(host, keep, sizeof keep);
    assert_context_usable(ctx);
}

/* ---- kernel build failure ------------------------------------------------------------------------------- */

static void test_kernel_build_failure(void **state)
{
    (void)state;
#ifndef MLSTM_REL_HAVE_KERNEL_DIR
    printf("  SKIP: this build's OpenCL backend cannot load kernels from MLSTM_OPENCL_KERNEL_DIR (no such "
           "support in backends/opencl), so a broken kernel cannot be injected\n");
    skip();
#else
    if (strcmp(mlstm_context_backend_name(g_ctx), "opencl") != 0) {
        printf("  SKIP: kernel sources on disk are an OpenCL-backend feature; this run uses '%s'\n",
               mlstm_context_backend_name(g_ctx));
        skip();
    }
    char dir[] = "/tmp/mlstm_broken_kernels_XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const char *const files[] = {"common.cl", "fwd.cl", "bwd.cl"};
    for (size_t k = 0; k < sizeof files / sizeof files[0]; k++) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir, files[k]);
        FILE *fh = fopen(path, "w");
        assert_non_null(fh);
        fprintf(fh, "/* deliberately broken */\n__kernel void mlstm_fwd_kernel(__global float *x) { x[0] = "
                    "this_is_not_declared_anywhere; }\n#error deliberately broken kernel source\n");
        fclose(fh);
    }
    setenv("MLSTM_OPENCL_KERNEL_DIR", dir, 1);
    mlstm_context *ctx = NULL;
    char why[1024];
    int st = rel_context_open("opencl", &ctx, why, sizeof why);
    if (st == MLSTM_OK) {
        mlstm_desc d;
        small_desc(&d);
        rel_problem p;
        assert_int_equal(rel_problem_init(&p, &d, 5, REL_GATES_STD, 1.0), 0);
        st = rel_run_fwd(ctx, &p);
        printf("  broken kernel dir: %s; last error (first 300 chars): %.300s\n", mlstm_status_string(st),
               mlstm_context_last_error(ctx));
        assert_int_equal(st, MLSTM_ERR_KERNEL_BUILD);
        const char *log = mlstm_context_last_error(ctx);
        assert_true(strstr(log, "this_is_not_declared_anywhere") != NULL || strstr(log, "error") != NULL);
        for (int t = MLSTM_TENSOR_H; t <= MLSTM_TENSOR_N; t++)
            for (size_t e = 0; e < p.bytes[t]; e++)
                assert_int_equal(((unsigned char *)p.t[t])[e], 0); /* outputs untouched */
        rel_problem_free(&p);
        mlstm_context_destroy(ctx);
    } else {
        /* building at context creation is allowed too: then the creation fails with the log */
        printf("  broken kernel dir: context creation failed: %s\n", why);
        assert_int_equal(st, MLSTM_ERR_KERNEL_BUILD);
    }
    unsetenv("MLSTM_OPENCL_KERNEL_DIR");
    for (size_t k = 0; k < sizeof files / sizeof files[0]; k++) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir, files[k]);
        unlink(path);
    }
    rmdir(dir);
    assert_context_usable(g_ctx); /* the context made before is unaffected */
#endif
}

/* ---- main ----------------------------------------------------------------------------------------------- */

int main(void)
{
    g_ctx = rel_context_or_skip("test_faults");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_out_of_memory),
        cmocka_unit_test(test_host_call_out_of_memory),
        cmocka_unit_test(test_size_overflow_rejected),
        cmocka_unit_test(test_null_context_everywhere),
        cmocka_unit_test(test_null_handles_everywhere),
        cmocka_unit_test(test_kernel_build_failure),
    };
    const char *filter = getenv("MLSTM_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    int rc = cmocka_run_group_tests_name("faults", tests, NULL, NULL);
    mlstm_context_destroy(g_ctx);
    return rc;
}
