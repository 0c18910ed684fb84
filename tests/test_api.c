/* API tests that need no GPU: every kind of bad input gets its documented status and leaves every output
 * buffer bitwise untouched; status strings, versions, NULL-safe destroy/getters, backend selection errors,
 * buffers and views. Tests that need a context use whatever backend has a device (PoCL in CI) and skip with
 * the reason when there is none. */
#define _POSIX_C_SOURCE 200809L /* setenv / unsetenv */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mlstm.h"
#include "test_util.h"

static mlstm_context *g_ctx;   /* NULL when no backend has a device */

/* Whether the calls of this run need no workspace: the fused kernels (not forced otherwise with MLSTM_ALGO, which
 * the api.materialized test sets so that every workspace check runs with a workspace in play) on a backend other
 * than CUDA, which stages head dims */
static int fused_needs_no_workspace(const mlstm_context *ctx)
{
    const char *algo = getenv("MLSTM_ALGO");
    if (algo && strcmp(algo, "") && strcmp(algo, "auto") && strcmp(algo, "fused"))
        return 0;
    return strcmp(mlstm_context_backend_name(ctx), "cuda") != 0;
}
static char g_no_ctx_reason[2048];

#define NEED_CONTEXT()                                                                                   \
    do {                                                                                                 \
        if (!g_ctx) {                                                                                    \
            printf("[ SKIP ] %s: needs a context, and none could be created: %s\n", __func__, g_no_ctx_reason); \
            skip();                                                                                      \
        }                                                                                                \
    } while (0)

/* ------------------------------------------------------------------------------------------------ */
/* No context needed                                                                                 */

static void test_status_strings(void **state)
{
    (void)state;
    const char *unknown = mlstm_status_string(-12345);
    assert_non_null(unknown);
    assert_true(strlen(unknown) > 0);
    assert_non_null(mlstm_status_string(12345));
    assert_true(strlen(mlstm_status_string(12345)) > 0);
    assert_non_null(mlstm_status_string(INT32_MIN));
    const int codes[] = { MLSTM_OK, MLSTM_ERR_INVALID_ARGUMENT, MLSTM_ERR_UNSUPPORTED, MLSTM_ERR_BACKEND_UNAVAILABLE,
                          MLSTM_ERR_NO_DEVICE, MLSTM_ERR_OUT_OF_MEMORY, MLSTM_ERR_KERNEL_BUILD, MLSTM_ERR_LAUNCH,
                          MLSTM_ERR_DEVICE, MLSTM_ERR_INTERNAL, MLSTM_ERR_BUFFER_TOO_SMALL, MLSTM_ERR_DTYPE_MISMATCH,
                          MLSTM_ERR_SIZE_OVERFLOW, MLSTM_ERR_BAD_LAYOUT, MLSTM_ERR_CONTEXT_MISMATCH };
    const size_t nc = sizeof codes / sizeof codes[0];
    for (size_t a = 0; a < nc; a++) {
        const char *s = mlstm_status_string(codes[a]);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        assert_string_not_equal(s, unknown); /* every known code has its own text */
        for (size_t b = 0; b < a; b++)
            assert_string_not_equal(s, mlstm_status_string(codes[b]));
    }
    /* the codes are stable (never renumbered) */
    assert_int_equal(MLSTM_OK, 0);
    assert_int_equal(MLSTM_ERR_INVALID_ARGUMENT, -1);
    assert_int_equal(MLSTM_ERR_CONTEXT_MISMATCH, -14);
}

static void test_version_and_dtypes(void **state)
{
    (void)state;
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", MLSTM_VERSION_MAJOR, MLSTM_VERSION_MINOR, MLSTM_VERSION_PATCH);
    assert_non_null(mlstm_version());
    assert_string_equal(mlstm_version(), want);
    assert_int_equal(mlstm_dtype_size(MLSTM_DTYPE_F32), 4);
    assert_int_equal(mlstm_dtype_size(MLSTM_DTYPE_F16), 2);
    assert_int_equal(mlstm_dtype_size(MLSTM_DTYPE_BF16), 2);
    assert_int_equal(mlstm_dtype_size(0), 0);
    assert_int_equal(mlstm_dtype_size(4), 0);
    assert_int_equal(mlstm_dtype_size(-1), 0);
}

static void test_null_safety(void **state)
{
    (void)state;
    mlstm_context_destroy(NULL);
    mlstm_buffer_destroy(NULL);
    assert_string_equal(mlstm_context_backend_name(NULL), "");
    assert_string_equal(mlstm_context_device_name(NULL), "");
    assert_string_equal(mlstm_context_last_error(NULL), "");
    assert_int_equal(mlstm_buffer_count(NULL), 0);
    assert_int_equal(mlstm_buffer_dtype(NULL), 0);
    assert_int_equal(mlstm_synchronize(NULL), MLSTM_ERR_INVALID_ARGUMENT);
    mlstm_buffer *b = (mlstm_buffer *)(uintptr_t)1;
    assert_int_equal(mlstm_buffer_create(NULL, MLSTM_DTYPE_F32, 16, &b), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_create_view(NULL, 0, 1, &b), MLSTM_ERR_INVALID_ARGUMENT);
    float x[4] = { 1, 2, 3, 4 };
    assert_int_equal(mlstm_buffer_write(NULL, 0, 4, x), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_read(NULL, 0, 4, x), MLSTM_ERR_INVALID_ARGUMENT);
    assert_true(x[0] == 1 && x[3] == 4);
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = d.heads = d.seq_len = 1;
    d.dqk = d.dv = 4;
    assert_int_equal(mlstm_parallel_fwd(NULL, &d, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_parallel_bwd(NULL, &d, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                        NULL, NULL, NULL),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_parallel_fwd_host(NULL, &d, x, x, x, x, x, x, x, x), MLSTM_ERR_INVALID_ARGUMENT);
    mlstm_desc_init(NULL);
    mlstm_options_init(NULL);
}

static void test_init_defaults(void **state)
{
    (void)state;
    mlstm_desc d;
    memset(&d, 0xab, sizeof d);
    mlstm_desc_init(&d);
    assert_int_equal(d.struct_size, sizeof d);
    assert_int_equal(d.batch, 0);
    assert_int_equal(d.heads, 0);
    assert_int_equal(d.seq_len, 0);
    assert_int_equal(d.dqk, 0);
    assert_int_equal(d.dv, 0);
    assert_int_equal(d.dtype, MLSTM_DTYPE_F32);
    assert_true(d.eps == 1e-6f);
    assert_true(d.scale == 0.0f);
    assert_int_equal(d.grad_mode, MLSTM_GRAD_EXACT);
    assert_int_equal(d.math_mode, MLSTM_MATH_DEFAULT);
    for (int t = 0; t < MLSTM_MAX_TENSORS; t++)
        assert_true(d.layout[t].batch == 0 && d.layout[t].head == 0 && d.layout[t].seq == 0);
    mlstm_options o;
    memset(&o, 0xab, sizeof o);
    mlstm_options_init(&o);
    assert_int_equal(o.struct_size, sizeof o);
    assert_null(o.backend);
    assert_int_equal(o.device, -1);
    assert_int_equal(o.opencl_platform, -1);
}

static void test_backend_registry(void **state)
{
    (void)state;
    const int n = mlstm_backend_count();
    assert_true(n >= 0 && n <= 2);
    for (int b = 0; b < n; b++) {
        const char *name = mlstm_backend_name_at(b);
        assert_non_null(name);
        assert_true(strcmp(name, "cuda") == 0 || strcmp(name, "opencl") == 0);
    }
    assert_null(mlstm_backend_name_at(n));
    assert_null(mlstm_backend_name_at(-1));
    printf("  compiled backends: %d\n", n);
}

static int backend_compiled(const char *name)
{
    for (int b = 0; b < mlstm_backend_count(); b++)
        if (strcmp(mlstm_backend_name_at(b), name) == 0)
            return 1;
    return 0;
}

static void test_context_create_errors(void **state)
{
    (void)state;
    assert_int_equal(mlstm_context_create(NULL, NULL), MLSTM_ERR_INVALID_ARGUMENT);

    mlstm_context *ctx = (mlstm_context *)(uintptr_t)1;
    mlstm_options o;
    mlstm_options_init(&o);
    o.struct_size = 0; /* not initialised */
    assert_int_equal(mlstm_context_create(&o, &ctx), MLSTM_ERR_INVALID_ARGUMENT);
    assert_null(ctx);

    /* unknown backend via options */
    mlstm_options_init(&o);
    o.backend = "no-such-backend";
    ctx = (mlstm_context *)(uintptr_t)1;
    assert_int_equal(mlstm_context_create(&o, &ctx), MLSTM_ERR_BACKEND_UNAVAILABLE);
    assert_null(ctx);
    assert_true(strlen(mlstm_last_error_global()) > 0);
    printf("  unknown backend: %s\n", mlstm_last_error_global());

    /* a known backend that is not compiled in */
    const char *known[2] = { "cuda", "opencl" };
    for (int k = 0; k < 2; k++) {
        if (backend_compiled(known[k]))
            continue;
        o.backend = known[k];
        ctx = (mlstm_context *)(uintptr_t)1;
        assert_int_equal(mlstm_context_create(&o, &ctx), MLSTM_ERR_BACKEND_UNAVAILABLE);
        assert_null(ctx);
        printf("  %s not compiled in: %s\n", known[k], mlstm_last_error_global());
    }

    /* bad device index in options */
    mlstm_options_init(&o);
    o.device = -7;
    ctx = (mlstm_context *)(uintptr_t)1;
    assert_int_equal(mlstm_context_create(&o, &ctx), MLSTM_ERR_INVALID_ARGUMENT);
    assert_null(ctx);

    /* unknown backend via the environment (MLSTM_BACKEND), then a malformed MLSTM_DEVICE */
    const char *saved = getenv("MLSTM_BACKEND");
    char *saved_copy = saved ? tu_strdupf("%s", saved) : NULL;
    setenv("MLSTM_BACKEND", "no-such-backend", 1);
    ctx = (mlstm_context *)(uintptr_t)1;
    int st = mlstm_context_create(NULL, &ctx);
    const char *dev_saved = getenv("MLSTM_DEVICE");
    char *dev_copy = dev_saved ? tu_strdupf("%s", dev_saved) : NULL;
    unsetenv("MLSTM_BACKEND");
    if (saved_copy)
        setenv("MLSTM_BACKEND", saved_copy, 1);
    assert_int_equal(st, MLSTM_ERR_BACKEND_UNAVAILABLE);
    assert_null(ctx);

    setenv("MLSTM_DEVICE", "not-a-number", 1);
    ctx = (mlstm_context *)(uintptr_t)1;
    st = mlstm_context_create(NULL, &ctx);
    unsetenv("MLSTM_DEVICE");
    if (dev_copy)
        setenv("MLSTM_DEVICE", dev_copy, 1);
    assert_int_not_equal(st, MLSTM_OK);
    assert_null(ctx);
    printf("  MLSTM_DEVICE=not-a-number: %s: %s\n", mlstm_status_string(st), mlstm_last_error_global());

    /* an explicit backend in options wins over a bogus MLSTM_BACKEND */
    if (g_ctx) {
        setenv("MLSTM_BACKEND", "no-such-backend", 1);
        mlstm_options_init(&o);
        o.backend = mlstm_context_backend_name(g_ctx);
        ctx = NULL;
        st = mlstm_context_create(&o, &ctx);
        unsetenv("MLSTM_BACKEND");
        if (saved_copy)
            setenv("MLSTM_BACKEND", saved_copy, 1);
        assert_int_equal(st, MLSTM_OK);
        assert_string_equal(mlstm_context_backend_name(ctx), o.backend);
        mlstm_context_destroy(ctx);
    }
    free(saved_copy);
    free(dev_copy);
}

/* mlstm_tensor_extent against a brute-force maximum address of each layout. */
static void test_tensor_extent(void **state)
{
    (void)state;
    mlstm_desc d;
    mlstm_desc_init(&d);
    assert_int_equal(mlstm_tensor_extent(NULL, MLSTM_TENSOR_Q), 0);
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_Q), 0); /* sizes not set */
    d.batch = 2; d.heads = 3; d.seq_len = 5; d.dqk = 4; d.dv = 6;
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_Q), 2 * 3 * 5 * 4);
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_DK), 2 * 3 * 5 * 4);
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_V), 2 * 3 * 5 * 6);
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_DH), 2 * 3 * 5 * 6);
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_I), 2 * 3 * 5);
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_DF), 2 * 3 * 5);
    assert_int_equal(mlstm_tensor_extent(&d, -1), 0);
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_COUNT), 0);
    /* (B, S, NH, D) */
    d.layout[MLSTM_TENSOR_Q] = (mlstm_layout){ 5 * 3 * 4, 4, 3 * 4 };
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_Q), 2 * 3 * 5 * 4);
    /* padded */
    d.layout[MLSTM_TENSOR_H] = (mlstm_layout){ 1000, 200, 9 };
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_H), 1 * 1000 + 2 * 200 + 4 * 9 + 6);
    d.layout[MLSTM_TENSOR_M] = (mlstm_layout){ 40, 12, 2 };
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_M), 40 + 2 * 12 + 4 * 2 + 1);
    d.struct_size = 0;
    assert_int_equal(mlstm_tensor_extent(&d, MLSTM_TENSOR_Q), 0);
}

/* ------------------------------------------------------------------------------------------------ */
/* A valid problem with one buffer per tensor; outputs pre-filled with a pattern                      */

#define FX_B 1
#define FX_NH 2
#define FX_S 5
#define FX_DQK 4
#define FX_DV 3
#define FX_SLACK 16

typedef struct {
    mlstm_desc desc;
    mlstm_buffer *buf[MLSTM_TENSOR_COUNT];
    size_t count[MLSTM_TENSOR_COUNT];
    int dtype[MLSTM_TENSOR_COUNT];
} fixture;

static fixture g_fx;

static int is_f32_tensor(int t)
{
    return t == MLSTM_TENSOR_I || t == MLSTM_TENSOR_F || t == MLSTM_TENSOR_M || t == MLSTM_TENSOR_N ||
           t == MLSTM_TENSOR_DI || t == MLSTM_TENSOR_DF;
}

static int is_output(int t, int bwd)
{
    return bwd ? t >= MLSTM_TENSOR_DQ : (t >= MLSTM_TENSOR_H && t <= MLSTM_TENSOR_N);
}

static void fx_desc(mlstm_desc *d, int dtype)
{
    mlstm_desc_init(d);
    d->batch = FX_B; d->heads = FX_NH; d->seq_len = FX_S; d->dqk = FX_DQK; d->dv = FX_DV;
    d->dtype = dtype;
}

/* Fills every buffer: inputs with small finite values, outputs with the canary. */
static void fx_fill(fixture *fx, int bwd)
{
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        const size_t es = tu_dtype_size(fx->dtype[t]);
        unsigned char *h = malloc(fx->count[t] * es);
        assert_non_null(h);
        if (is_output(t, bwd)) {
            tu_canary_fill(h, fx->dtype[t], fx->count[t]);
        } else {
            for (size_t x = 0; x < fx->count[t]; x++)
                tu_store(h, fx->dtype[t], x, 0.25 * (double)((x * 7 + (size_t)t) % 9) - 1.0);
        }
        assert_int_equal(mlstm_buffer_write(fx->buf[t], 0, fx->count[t], h), MLSTM_OK);
        free(h);
    }
}

static void fx_create(fixture *fx, int dtype)
{
    memset(fx, 0, sizeof *fx);
    fx_desc(&fx->desc, dtype);
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        fx->dtype[t] = is_f32_tensor(t) ? MLSTM_DTYPE_F32 : dtype;
        fx->count[t] = mlstm_tensor_extent(&fx->desc, t) + FX_SLACK;
        assert_true(fx->count[t] > FX_SLACK);
        assert_int_equal(mlstm_buffer_create(g_ctx, fx->dtype[t], fx->count[t], &fx->buf[t]), MLSTM_OK);
    }
}

static void fx_destroy(fixture *fx)
{
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++)
        mlstm_buffer_destroy(fx->buf[t]);
    memset(fx, 0, sizeof *fx);
}

/* Which entry points call() uses: the bad-input tests run once per mode (see main). */
enum { MODE_POSITIONAL = 0, MODE_PACK = 1, MODE_PLAN = 2 };
static int g_call_mode = MODE_POSITIONAL;

static void fill_pack(mlstm_tensor_pack *pk, mlstm_buffer *const b[MLSTM_TENSOR_COUNT])
{
    mlstm_tensor_pack_init(pk);
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++)
        pk->tensors[t] = b[t];
}

/* One call through the mode's entry points: positional, pack, or plan create + execute + destroy (a desc the plan
 * rejects fails at creation, buffers at execution). */
static int call(mlstm_context *ctx, const mlstm_desc *d, mlstm_buffer *const b[MLSTM_TENSOR_COUNT], int bwd)
{
    if (g_call_mode == MODE_POSITIONAL) {
        if (!bwd)
            return mlstm_parallel_fwd(ctx, d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
        return mlstm_parallel_bwd(ctx, d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
                                  b[12], b[13]);
    }
    mlstm_tensor_pack pk;
    fill_pack(&pk, b);
    if (g_call_mode == MODE_PACK)
        return bwd ? mlstm_parallel_bwd_pack(ctx, d, &pk, NULL) : mlstm_parallel_fwd_pack(ctx, d, &pk, NULL);
    mlstm_plan *plan = (mlstm_plan *)(uintptr_t)1;
    int st = mlstm_plan_create(ctx, d, bwd ? MLSTM_PLAN_BWD : MLSTM_PLAN_FWD, &plan);
    if (st != MLSTM_OK) {
        if (plan != NULL)
            fail_msg("mlstm_plan_create failed (%d) but left *out non-NULL", st);
        return st;
    }
    size_t ws = 1;
    assert_int_equal(mlstm_plan_workspace_size(plan, &ws), MLSTM_OK);
    /* the fused path needs none, but on CUDA where it stages head dims (README "Head dimensions") */
    if (fused_needs_no_workspace(ctx))
        assert_int_equal(ws, 0);
    st = bwd ? mlstm_plan_execute_bwd(plan, &pk, NULL) : mlstm_plan_execute_fwd(plan, &pk, NULL);
    char keep[4096];
    snprintf(keep, sizeof keep, "%s", mlstm_context_last_error(ctx));
    mlstm_plan_destroy(plan);
    if (st != MLSTM_OK && strcmp(keep, mlstm_context_last_error(ctx)) != 0)
        fail_msg("mlstm_plan_destroy changed the context's last error");
    return st;
}

/* Every output buffer of the direction still holds the canary, bitwise. */
static void fx_expect_untouched(fixture *fx, int bwd, const char *what)
{
    assert_int_equal(mlstm_synchronize(g_ctx), MLSTM_OK);
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        if (!is_output(t, bwd))
            continue;
        const size_t es = tu_dtype_size(fx->dtype[t]);
        unsigned char *h = malloc(fx->count[t] * es);
        assert_non_null(h);
        assert_int_equal(mlstm_buffer_read(fx->buf[t], 0, fx->count[t], h), MLSTM_OK);
        size_t bad = tu_canary_first_bad(h, fx->dtype[t], 0, fx->count[t]);
        free(h);
        if (bad != (size_t)-1)
            fail_msg("%s: output tensor %d was written (element %zu) by a call that failed", what, t, bad);
    }
}

/* Runs a call that must fail with `want` for both directions (unless only_bwd / only_fwd), checking that
 * the outputs are untouched and that the context's last error explains the failure. */
static void expect_status(fixture *fx, const mlstm_desc *d, mlstm_buffer *const b[MLSTM_TENSOR_COUNT], int bwd,
                          int want, const char *what)
{
    fx_fill(fx, bwd);
    int st = call(g_ctx, d, b, bwd);
    if (st != want)
        fail_msg("%s (%s): got %s (%d), expected %s (%d); last error: %s", what, bwd ? "bwd" : "fwd",
                 mlstm_status_string(st), st, mlstm_status_string(want), want, mlstm_context_last_error(g_ctx));
    if (want != MLSTM_OK) {
        if (strlen(mlstm_context_last_error(g_ctx)) == 0)
            fail_msg("%s (%s): failed with %d but mlstm_context_last_error is empty", what, bwd ? "bwd" : "fwd", st);
        fx_expect_untouched(fx, bwd, what);
    }
}

static void expect_both(fixture *fx, const mlstm_desc *d, int want, const char *what)
{
    for (int bwd = 0; bwd < 2; bwd++)
        expect_status(fx, d, fx->buf, bwd, want, what);
}

static int fx_setup(void **state)
{
    (void)state;
    if (g_ctx)
        fx_create(&g_fx, MLSTM_DTYPE_F32);
    return 0;
}

static int fx_teardown(void **state)
{
    (void)state;
    if (g_ctx)
        fx_destroy(&g_fx);
    return 0;
}

/* The fixture itself is valid: both directions succeed and write finite outputs (otherwise the negative
 * tests below would prove nothing). */
static void test_valid_call_succeeds(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture *fx = &g_fx;
    for (int bwd = 0; bwd < 2; bwd++) {
        fx_fill(fx, 0);
        int st = call(g_ctx, &fx->desc, fx->buf, 0);
        if (st == MLSTM_OK && bwd) {
            /* keep h, m, n from the forward; fill only the backward's outputs */
            for (int t = MLSTM_TENSOR_DQ; t < MLSTM_TENSOR_COUNT; t++) {
                const size_t es = tu_dtype_size(fx->dtype[t]);
                unsigned char *h = malloc(fx->count[t] * es);
                assert_non_null(h);
                tu_canary_fill(h, fx->dtype[t], fx->count[t]);
                assert_int_equal(mlstm_buffer_write(fx->buf[t], 0, fx->count[t], h), MLSTM_OK);
                free(h);
            }
            st = call(g_ctx, &fx->desc, fx->buf, 1);
        }
        if (st != MLSTM_OK)
            fail_msg("valid %s call failed: %s: %s", bwd ? "bwd" : "fwd", mlstm_status_string(st),
                     mlstm_context_last_error(g_ctx));
        assert_int_equal(mlstm_synchronize(g_ctx), MLSTM_OK);
        for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
            if (!is_output(t, bwd))
                continue;
            const size_t ext = mlstm_tensor_extent(&fx->desc, t);
            float *h = malloc(fx->count[t] * sizeof(float));
            assert_non_null(h);
            assert_int_equal(mlstm_buffer_read(fx->buf[t], 0, fx->count[t], h), MLSTM_OK);
            for (size_t x = 0; x < ext; x++)
                assert_true(isfinite(h[x]));
            assert_true(tu_canary_first_bad(h, MLSTM_DTYPE_F32, ext, fx->count[t]) == (size_t)-1);
            free(h);
        }
    }
}

static void test_bad_handles(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture *fx = &g_fx;
    for (int bwd = 0; bwd < 2; bwd++) {
        fx_fill(fx, bwd);
        assert_int_equal(call(NULL, &fx->desc, fx->buf, bwd), MLSTM_ERR_INVALID_ARGUMENT);
        fx_expect_untouched(fx, bwd, "NULL ctx");
        expect_status(fx, NULL, fx->buf, bwd, MLSTM_ERR_INVALID_ARGUMENT, "NULL desc");
        const int used = bwd ? MLSTM_TENSOR_COUNT : MLSTM_TENSOR_N + 1;
        for (int t = 0; t < used; t++) {
            mlstm_buffer *b[MLSTM_TENSOR_COUNT];
            memcpy(b, fx->buf, sizeof b);
            b[t] = NULL;
            char what[64];
            snprintf(what, sizeof what, "NULL buffer for tensor %d", t);
            expect_status(fx, &fx->desc, b, bwd, MLSTM_ERR_INVALID_ARGUMENT, what);
        }
    }
}

static void test_bad_desc_values(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture *fx = &g_fx;
    mlstm_desc d;
#define BAD(stmt, want, what)       \
    do {                            \
        d = fx->desc;               \
        stmt;                       \
        expect_both(fx, &d, want, what); \
    } while (0)
    BAD(d.struct_size = 0, MLSTM_ERR_INVALID_ARGUMENT, "struct_size 0 (desc not initialised)");
    BAD(d.struct_size = (uint32_t)MLSTM_DESC_SIZE_V1 - 8, MLSTM_ERR_INVALID_ARGUMENT,
        "struct_size below the first published size");
    BAD(d.struct_size = (uint32_t)sizeof d + 100000, MLSTM_ERR_INVALID_ARGUMENT, "struct_size far too large");
    BAD(d.layout[MLSTM_TENSOR_COUNT].seq = 1, MLSTM_ERR_INVALID_ARGUMENT, "layout of a role this version lacks");
    BAD(d.layout[MLSTM_MAX_TENSORS - 1].batch = -1, MLSTM_ERR_INVALID_ARGUMENT, "layout of the last role slot");
    BAD(d.batch = 0, MLSTM_ERR_INVALID_ARGUMENT, "batch 0");
    BAD(d.heads = 0, MLSTM_ERR_INVALID_ARGUMENT, "heads 0");
    BAD(d.seq_len = 0, MLSTM_ERR_INVALID_ARGUMENT, "seq_len 0");
    BAD(d.dqk = 0, MLSTM_ERR_INVALID_ARGUMENT, "dqk 0");
    BAD(d.dv = 0, MLSTM_ERR_INVALID_ARGUMENT, "dv 0");
    BAD(d.batch = -1, MLSTM_ERR_INVALID_ARGUMENT, "batch -1");
    BAD(d.heads = -3, MLSTM_ERR_INVALID_ARGUMENT, "heads -3");
    BAD(d.seq_len = INT64_MIN, MLSTM_ERR_INVALID_ARGUMENT, "seq_len INT64_MIN");
    BAD(d.dqk = -4, MLSTM_ERR_INVALID_ARGUMENT, "dqk -4");
    BAD(d.dv = -1, MLSTM_ERR_INVALID_ARGUMENT, "dv -1");
    BAD(d.dqk = MLSTM_MAX_HEAD_DIM + 1, MLSTM_ERR_INVALID_ARGUMENT, "dqk 513");
    BAD(d.dv = MLSTM_MAX_HEAD_DIM + 1, MLSTM_ERR_INVALID_ARGUMENT, "dv 513");
    BAD(d.dqk = 1 << 20, MLSTM_ERR_INVALID_ARGUMENT, "dqk 2^20");
    BAD((d.batch = INT64_C(1) << 40, d.heads = INT64_C(1) << 40), MLSTM_ERR_SIZE_OVERFLOW, "B*NH = 2^80");
    BAD((d.batch = INT64_C(1) << 31, d.heads = INT64_C(1) << 31, d.seq_len = 2, d.dqk = 1, d.dv = 1),
        MLSTM_ERR_SIZE_OVERFLOW, "B*NH*S*D = 2^63");
    BAD((d.seq_len = INT64_MAX), MLSTM_ERR_SIZE_OVERFLOW, "S = INT64_MAX");
    BAD((d.batch = INT64_C(1) << 20, d.heads = INT64_C(1) << 20, d.seq_len = INT64_C(1) << 20, d.dqk = 512,
         d.dv = 512), MLSTM_ERR_SIZE_OVERFLOW, "B*NH*S*D = 2^69");
    BAD(d.dtype = 0, MLSTM_ERR_INVALID_ARGUMENT, "dtype 0");
    BAD(d.dtype = 4, MLSTM_ERR_INVALID_ARGUMENT, "dtype 4");
    BAD(d.dtype = -1, MLSTM_ERR_INVALID_ARGUMENT, "dtype -1");
    BAD(d.grad_mode = 2, MLSTM_ERR_INVALID_ARGUMENT, "grad_mode 2");
    BAD(d.grad_mode = -1, MLSTM_ERR_INVALID_ARGUMENT, "grad_mode -1");
    BAD(d.math_mode = 2, MLSTM_ERR_INVALID_ARGUMENT, "math_mode 2");
    BAD(d.math_mode = -1, MLSTM_ERR_INVALID_ARGUMENT, "math_mode -1");
    BAD(d.eps = -1e-6f, MLSTM_ERR_INVALID_ARGUMENT, "eps negative");
    BAD(d.eps = NAN, MLSTM_ERR_INVALID_ARGUMENT, "eps NaN");
    BAD(d.eps = INFINITY, MLSTM_ERR_INVALID_ARGUMENT, "eps Inf");
    BAD(d.eps = -INFINITY, MLSTM_ERR_INVALID_ARGUMENT, "eps -Inf");
    BAD(d.scale = NAN, MLSTM_ERR_INVALID_ARGUMENT, "scale NaN");
    BAD(d.scale = INFINITY, MLSTM_ERR_INVALID_ARGUMENT, "scale Inf");
    BAD(d.scale = -INFINITY, MLSTM_ERR_INVALID_ARGUMENT, "scale -Inf");
#undef BAD
}

static void test_bad_layouts(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture *fx = &g_fx;
    const int64_t S = FX_S, NH = FX_NH, DV = FX_DV, DQK = FX_DQK;
    mlstm_desc d;
    /* negative strides, on an input and on an output, in each dimension */
    const int tensors[4] = { MLSTM_TENSOR_Q, MLSTM_TENSOR_I, MLSTM_TENSOR_H, MLSTM_TENSOR_DQ };
    for (int k = 0; k < 4; k++) {
        const int t = tensors[k];
        const int64_t D = t == MLSTM_TENSOR_I ? 1 : (t == MLSTM_TENSOR_H ? DV : DQK);
        for (int dim = 0; dim < 3; dim++) {
            d = fx->desc;
            d.layout[t] = (mlstm_layout){ NH * S * D, S * D, D };
            if (dim == 0) d.layout[t].batch = -1;
            if (dim == 1) d.layout[t].head = -(S * D);
            if (dim == 2) d.layout[t].seq = -D;
            for (int bwd = (t == MLSTM_TENSOR_DQ); bwd < 2; bwd++)
                expect_status(fx, &d, fx->buf, bwd, MLSTM_ERR_BAD_LAYOUT, "negative stride");
        }
    }
    /* outputs whose layout maps two elements to one address (h, m, n are outputs of fwd only; the bwd reads
     * them, and inputs may alias themselves, e.g. a broadcast) */
    d = fx->desc;
    d.layout[MLSTM_TENSOR_H] = (mlstm_layout){ NH * S * DV, S * DV, 0 }; /* all rows on one address */
    expect_status(fx, &d, fx->buf, 0, MLSTM_ERR_BAD_LAYOUT, "h seq stride 0"); /* an input of bwd: may alias */
    d = fx->desc;
    d.layout[MLSTM_TENSOR_H] = (mlstm_layout){ NH * S * DV, S * DV, DV - 1 }; /* rows overlap by one element */
    expect_status(fx, &d, fx->buf, 0, MLSTM_ERR_BAD_LAYOUT, "h rows overlap"); /* an input of bwd: may alias */
    d = fx->desc;
    d.layout[MLSTM_TENSOR_M] = (mlstm_layout){ NH * S, 0, 1 }; /* both heads on one address */
    expect_status(fx, &d, fx->buf, 0, MLSTM_ERR_BAD_LAYOUT, "m head stride 0"); /* an input of bwd: may alias */
    d = fx->desc;
    d.layout[MLSTM_TENSOR_N] = (mlstm_layout){ NH * S, 2, 1 }; /* heads interleave into rows */
    expect_status(fx, &d, fx->buf, 0, MLSTM_ERR_BAD_LAYOUT, "n heads overlap rows"); /* an input of bwd: may alias */
    d = fx->desc;
    d.layout[MLSTM_TENSOR_DK] = (mlstm_layout){ NH * S * DQK, S * DQK, 1 };
    expect_status(fx, &d, fx->buf, 1, MLSTM_ERR_BAD_LAYOUT, "dk seq stride 1 < DQK");
    d = fx->desc;
    d.layout[MLSTM_TENSOR_DF] = (mlstm_layout){ 0, S, 1 }; /* batch stride 0 is fine with B = 1 ... */
    expect_status(fx, &d, fx->buf, 1, MLSTM_OK, "df batch stride 0 with B = 1 (valid)");
    d = fx->desc;
    d.layout[MLSTM_TENSOR_DF] = (mlstm_layout){ 0, 0, 1 }; /* ... but heads may not share rows */
    expect_status(fx, &d, fx->buf, 1, MLSTM_ERR_BAD_LAYOUT, "df head stride 0");
    /* strides whose extent overflows 64 bits */
    d = fx->desc;
    d.layout[MLSTM_TENSOR_Q] = (mlstm_layout){ 1, INT64_MAX / 2, DQK };
    expect_both(fx, &d, MLSTM_ERR_SIZE_OVERFLOW, "q extent overflows");
}

/* An output sharing memory with another tensor of the call (views of one buffer). */
static void test_output_aliasing(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture *fx = &g_fx;
    const size_t ext_q = mlstm_tensor_extent(&fx->desc, MLSTM_TENSOR_Q);
    const size_t ext_h = mlstm_tensor_extent(&fx->desc, MLSTM_TENSOR_H);
    mlstm_buffer *big = NULL, *vq = NULL, *vh = NULL;
    assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F32, ext_q + ext_h, &big), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create_view(big, 0, ext_q, &vq), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create_view(big, ext_q - 1, ext_h, &vh), MLSTM_OK); /* overlaps q by one */
    float *host = malloc((ext_q + ext_h) * sizeof(float));
    assert_non_null(host);
    for (size_t x = 0; x < ext_q + ext_h; x++)
        host[x] = x < ext_q - 1 ? 0.5f : tu_f32_from_bits(tu_canary_bits(MLSTM_DTYPE_F32));
    mlstm_buffer *b[MLSTM_TENSOR_COUNT];
    memcpy(b, fx->buf, sizeof b);
    b[MLSTM_TENSOR_Q] = vq;
    b[MLSTM_TENSOR_H] = vh;
    fx_fill(fx, 0);
    assert_int_equal(mlstm_buffer_write(big, 0, ext_q + ext_h, host), MLSTM_OK);
    int st = call(g_ctx, &fx->desc, b, 0);
    assert_int_equal(st, MLSTM_ERR_BAD_LAYOUT);
    float *back = malloc((ext_q + ext_h) * sizeof(float));
    assert_non_null(back);
    assert_int_equal(mlstm_buffer_read(big, 0, ext_q + ext_h, back), MLSTM_OK);
    assert_memory_equal(back, host, (ext_q + ext_h) * sizeof(float));
    fx_expect_untouched(fx, 0, "h aliases q");
    free(host);
    free(back);
    mlstm_buffer_destroy(vh);
    mlstm_buffer_destroy(vq);
    mlstm_buffer_destroy(big);
}

static void test_buffer_mismatches(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture *fx = &g_fx;
    for (int bwd = 0; bwd < 2; bwd++) {
        const int used = bwd ? MLSTM_TENSOR_COUNT : MLSTM_TENSOR_N + 1;
        for (int t = 0; t < used; t++) {
            mlstm_buffer *b[MLSTM_TENSOR_COUNT];
            memcpy(b, fx->buf, sizeof b);
            char what[96];
            /* one element too small */
            mlstm_buffer *small = NULL;
            const size_t ext = mlstm_tensor_extent(&fx->desc, t);
            assert_int_equal(mlstm_buffer_create(g_ctx, fx->dtype[t], ext - 1, &small), MLSTM_OK);
            b[t] = small;
            snprintf(what, sizeof what, "tensor %d buffer of extent-1 elements", t);
            expect_status(fx, &fx->desc, b, bwd, MLSTM_ERR_BUFFER_TOO_SMALL, what);
            mlstm_buffer_destroy(small);
            /* wrong dtype: f16 where f32 is needed (desc dtype f32; i, f, m, n, ... always f32) */
            mlstm_buffer *wrong = NULL;
            assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F16, fx->count[t], &wrong), MLSTM_OK);
            b[t] = wrong;
            snprintf(what, sizeof what, "tensor %d buffer of dtype f16, f32 expected", t);
            expect_status(fx, &fx->desc, b, bwd, MLSTM_ERR_DTYPE_MISMATCH, what);
            mlstm_buffer_destroy(wrong);
        }
    }
}

/* desc dtype bf16 with an f16 q buffer; i buffers must be f32 even for a bf16 problem. */
static void test_dtype_mismatch_half(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture fx;
    fx_create(&fx, MLSTM_DTYPE_BF16);
    for (int bwd = 0; bwd < 2; bwd++) {
        mlstm_buffer *b[MLSTM_TENSOR_COUNT];
        memcpy(b, fx.buf, sizeof b);
        mlstm_buffer *q16 = NULL, *ibf = NULL;
        assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F16, fx.count[MLSTM_TENSOR_Q], &q16), MLSTM_OK);
        assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_BF16, fx.count[MLSTM_TENSOR_I], &ibf), MLSTM_OK);
        b[MLSTM_TENSOR_Q] = q16;
        expect_status(&fx, &fx.desc, b, bwd, MLSTM_ERR_DTYPE_MISMATCH, "q f16 with desc bf16");
        b[MLSTM_TENSOR_Q] = fx.buf[MLSTM_TENSOR_Q];
        b[MLSTM_TENSOR_I] = ibf;
        expect_status(&fx, &fx.desc, b, bwd, MLSTM_ERR_DTYPE_MISMATCH, "i bf16 (must be f32)");
        mlstm_buffer_destroy(q16);
        mlstm_buffer_destroy(ibf);
        /* and the bf16 fixture itself is valid */
        expect_status(&fx, &fx.desc, fx.buf, 0, MLSTM_OK, "valid bf16 fwd");
    }
    fx_destroy(&fx);
}

static void test_context_mismatch(void **state)
{
    (void)state;
    NEED_CONTEXT();
    mlstm_options o;
    mlstm_options_init(&o);
    o.backend = mlstm_context_backend_name(g_ctx);
    mlstm_context *other = NULL;
    int st = mlstm_context_create(&o, &other);
    if (st != MLSTM_OK) {
        printf("[ SKIP ] %s: a second context on '%s' could not be created: %s: %s\n", __func__, o.backend,
               mlstm_status_string(st), mlstm_last_error_global());
        skip();
    }
    fixture *fx = &g_fx;
    mlstm_buffer *foreign = NULL;
    for (int bwd = 0; bwd < 2; bwd++) {
        const int tensors[3] = { MLSTM_TENSOR_K, MLSTM_TENSOR_F, bwd ? MLSTM_TENSOR_DV : MLSTM_TENSOR_M };
        for (int k = 0; k < 3; k++) {
            const int t = tensors[k];
            assert_int_equal(mlstm_buffer_create(other, fx->dtype[t], fx->count[t], &foreign), MLSTM_OK);
            mlstm_buffer *b[MLSTM_TENSOR_COUNT];
            memcpy(b, fx->buf, sizeof b);
            b[t] = foreign;
            expect_status(fx, &fx->desc, b, bwd, MLSTM_ERR_CONTEXT_MISMATCH, "buffer of another context");
            mlstm_buffer_destroy(foreign);
        }
    }
    mlstm_context_destroy(other);
}

static void test_buffers(void **state)
{
    (void)state;
    NEED_CONTEXT();
    mlstm_buffer *b = (mlstm_buffer *)(uintptr_t)1, *v = NULL;
    assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F32, 16, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F32, 0, &b), MLSTM_ERR_INVALID_ARGUMENT);
    assert_null(b);
    assert_int_equal(mlstm_buffer_create(g_ctx, 0, 16, &b), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_create(g_ctx, 7, 16, &b), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F32, SIZE_MAX / 2, &b), MLSTM_ERR_SIZE_OVERFLOW);
    assert_null(b);

    const int dts[3] = { MLSTM_DTYPE_F32, MLSTM_DTYPE_F16, MLSTM_DTYPE_BF16 };
    for (int k = 0; k < 3; k++) {
        const size_t n = 100, es = tu_dtype_size(dts[k]);
        assert_int_equal(mlstm_buffer_create(g_ctx, dts[k], n, &b), MLSTM_OK);
        assert_int_equal(mlstm_buffer_count(b), n);
        assert_int_equal(mlstm_buffer_dtype(b), dts[k]);
        unsigned char src[400], dst[400], keep[400];
        for (size_t x = 0; x < n * es; x++)
            src[x] = (unsigned char)(x * 13 + 1);
        assert_int_equal(mlstm_buffer_write(b, 0, n, src), MLSTM_OK);
        memset(dst, 0, sizeof dst);
        assert_int_equal(mlstm_buffer_read(b, 0, n, dst), MLSTM_OK);
        assert_memory_equal(src, dst, n * es);
        /* partial read at an offset */
        assert_int_equal(mlstm_buffer_read(b, 10, 5, dst), MLSTM_OK);
        assert_memory_equal(dst, src + 10 * es, 5 * es);
        /* views: range checks, shared memory */
        assert_int_equal(mlstm_buffer_create_view(b, 90, 11, &v), MLSTM_ERR_INVALID_ARGUMENT);
        assert_null(v);
        assert_int_equal(mlstm_buffer_create_view(b, 101, 1, &v), MLSTM_ERR_INVALID_ARGUMENT);
        assert_int_equal(mlstm_buffer_create_view(b, 0, 0, &v), MLSTM_ERR_INVALID_ARGUMENT);
        assert_int_equal(mlstm_buffer_create_view(b, SIZE_MAX, 2, &v), MLSTM_ERR_INVALID_ARGUMENT);
        assert_int_equal(mlstm_buffer_create_view(b, 2, SIZE_MAX, &v), MLSTM_ERR_INVALID_ARGUMENT);
        assert_int_equal(mlstm_buffer_create_view(b, 0, 1, NULL), MLSTM_ERR_INVALID_ARGUMENT);
        assert_int_equal(mlstm_buffer_create_view(b, 90, 10, &v), MLSTM_OK);
        assert_int_equal(mlstm_buffer_count(v), 10);
        assert_int_equal(mlstm_buffer_dtype(v), dts[k]);
        assert_int_equal(mlstm_buffer_read(v, 0, 10, dst), MLSTM_OK);
        assert_memory_equal(dst, src + 90 * es, 10 * es);
        unsigned char w[40];
        memset(w, 0x3c, sizeof w);
        assert_int_equal(mlstm_buffer_write(v, 2, 3, w), MLSTM_OK); /* lands at parent element 92 */
        assert_int_equal(mlstm_buffer_read(b, 0, n, dst), MLSTM_OK);
        memcpy(src + 92 * es, w, 3 * es);
        assert_memory_equal(src, dst, n * es);
        /* a view of a view */
        mlstm_buffer *vv = NULL;
        assert_int_equal(mlstm_buffer_create_view(v, 2, 3, &vv), MLSTM_OK);
        assert_int_equal(mlstm_buffer_read(vv, 0, 3, dst), MLSTM_OK);
        assert_memory_equal(dst, w, 3 * es);
        mlstm_buffer *vbad = NULL;
        assert_int_equal(mlstm_buffer_create_view(v, 8, 3, &vbad), MLSTM_ERR_INVALID_ARGUMENT); /* past the view */
        assert_null(vbad);
        mlstm_buffer_destroy(vv);
        /* out-of-range and NULL transfers fail and leave the host array untouched */
        memset(keep, 0x77, sizeof keep);
        memcpy(dst, keep, sizeof dst);
        assert_int_not_equal(mlstm_buffer_read(b, 95, 6, dst), MLSTM_OK);
        assert_int_not_equal(mlstm_buffer_read(v, 0, 11, dst), MLSTM_OK);
        assert_int_not_equal(mlstm_buffer_read(b, SIZE_MAX, 1, dst), MLSTM_OK);
        assert_memory_equal(dst, keep, sizeof dst);
        assert_int_not_equal(mlstm_buffer_write(b, 99, 2, src), MLSTM_OK);
        assert_int_not_equal(mlstm_buffer_write(v, 10, 1, src), MLSTM_OK);
        assert_int_equal(mlstm_buffer_write(b, 0, 1, NULL), MLSTM_ERR_INVALID_ARGUMENT);
        assert_int_equal(mlstm_buffer_read(b, 0, 1, NULL), MLSTM_ERR_INVALID_ARGUMENT);
        assert_int_equal(mlstm_buffer_read(b, 0, n, dst), MLSTM_OK); /* the failed writes changed nothing */
        assert_memory_equal(src, dst, n * es);
        mlstm_buffer_destroy(v);
        v = NULL;
        mlstm_buffer_destroy(b);
        b = NULL;
    }
    assert_int_equal(mlstm_synchronize(g_ctx), MLSTM_OK);
    assert_true(strlen(mlstm_context_backend_name(g_ctx)) > 0);
}

/* Host-array entry points: NULL arrays and bad descs fail without touching the caller's output arrays. */
static void test_host_api_errors(void **state)
{
    (void)state;
    NEED_CONTEXT();
    mlstm_desc d;
    fx_desc(&d, MLSTM_DTYPE_F32);
    float in[64], out[MLSTM_TENSOR_COUNT][64];
    for (int x = 0; x < 64; x++)
        in[x] = 0.1f * (float)(x % 7) - 0.3f;
    void *p[MLSTM_TENSOR_COUNT];
    for (int bwd = 0; bwd < 2; bwd++) {
        for (int t = 0; t < (bwd ? MLSTM_TENSOR_COUNT : MLSTM_TENSOR_N + 1); t++) {
            for (int k = 0; k < MLSTM_TENSOR_COUNT; k++) {
                tu_canary_fill(out[k], MLSTM_DTYPE_F32, 64);
                p[k] = is_output(k, bwd) ? (void *)out[k] : (void *)in;
            }
            p[t] = NULL;
            int st = bwd ? mlstm_parallel_bwd_host(g_ctx, &d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8],
                                                   p[9], p[10], p[11], p[12], p[13])
                         : mlstm_parallel_fwd_host(g_ctx, &d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
            assert_int_equal(st, MLSTM_ERR_INVALID_ARGUMENT);
            for (int k = 0; k < MLSTM_TENSOR_COUNT; k++)
                assert_true(tu_canary_first_bad(out[k], MLSTM_DTYPE_F32, 0, 64) == (size_t)-1);
        }
    }
    for (int k = 0; k < MLSTM_TENSOR_COUNT; k++)
        tu_canary_fill(out[k], MLSTM_DTYPE_F32, 64);
    mlstm_desc bad = d;
    bad.eps = NAN;
    assert_int_equal(mlstm_parallel_fwd_host(g_ctx, &bad, in, in, in, in, in, out[5], out[6], out[7]),
                     MLSTM_ERR_INVALID_ARGUMENT);
    bad = d;
    bad.layout[MLSTM_TENSOR_H] = (mlstm_layout){ 0, 0, 0 };
    bad.layout[MLSTM_TENSOR_H].seq = -1;
    assert_int_equal(mlstm_parallel_fwd_host(g_ctx, &bad, in, in, in, in, in, out[5], out[6], out[7]),
                     MLSTM_ERR_BAD_LAYOUT);
    bad = d;
    bad.layout[MLSTM_TENSOR_M] = (mlstm_layout){ FX_NH * FX_S, FX_S, 0 };
    assert_int_equal(mlstm_parallel_fwd_host(g_ctx, &bad, in, in, in, in, in, out[5], out[6], out[7]),
                     MLSTM_ERR_BAD_LAYOUT);
    bad = d;
    bad.dv = 0;
    assert_int_equal(mlstm_parallel_bwd_host(g_ctx, &bad, in, in, in, in, in, in, in, in, in, out[9], out[10],
                                             out[11], out[12], out[13]),
                     MLSTM_ERR_INVALID_ARGUMENT);
    for (int k = 0; k < MLSTM_TENSOR_COUNT; k++)
        assert_true(tu_canary_first_bad(out[k], MLSTM_DTYPE_F32, 0, 64) == (size_t)-1);
    /* and the valid host call works */
    assert_int_equal(mlstm_parallel_fwd_host(g_ctx, &d, in, in, in, in, in, out[5], out[6], out[7]), MLSTM_OK);
    for (int x = 0; x < FX_B * FX_NH * FX_S * FX_DV; x++)
        assert_true(isfinite(out[5][x]));
}

/* Valid edge values are accepted: eps = 0, a negative scale, an input broadcast with stride 0. */
static void test_valid_edges(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture *fx = &g_fx;
    mlstm_desc d = fx->desc;
    d.eps = 0.0f;
    expect_both(fx, &d, MLSTM_OK, "eps 0");
    d = fx->desc;
    d.scale = -0.75f;
    expect_both(fx, &d, MLSTM_OK, "negative scale");
    d = fx->desc;
    d.layout[MLSTM_TENSOR_K] = (mlstm_layout){ FX_NH * FX_S * FX_DQK, 0, FX_DQK }; /* k shared by the heads */
    expect_both(fx, &d, MLSTM_OK, "k broadcast over heads");
    d = fx->desc;
    d.math_mode = MLSTM_MATH_TF32;
    d.grad_mode = MLSTM_GRAD_NORMALIZER_DETACHED;
    expect_both(fx, &d, MLSTM_OK, "TF32 math, detached gradients");
}

/* ------------------------------------------------------------------------------------------------ */
/* Growing structs (the ABI rules of mlstm.h), tensor packs and plans                                */

/* The init functions write exactly the caller's size; struct sizes between the first published one and the
 * library's are read with the tail defaulted; larger ones only with a zero tail. */
static void test_struct_sizes(void **state)
{
    (void)state;
    struct { mlstm_desc d; unsigned char after[64]; } g;
    memset(&g, 0xa5, sizeof g);
    mlstm_desc_init_sized(&g.d, MLSTM_DESC_SIZE_V1);
    assert_int_equal(g.d.struct_size, MLSTM_DESC_SIZE_V1);
    const unsigned char *raw = (const unsigned char *)&g.d;
    for (size_t b = MLSTM_DESC_SIZE_V1; b < sizeof g.d; b++)
        if (raw[b] != 0xa5)
            fail_msg("mlstm_desc_init_sized(%zu) wrote byte %zu", (size_t)MLSTM_DESC_SIZE_V1, b);
    assert_true(g.d.eps == 1e-6f && g.d.dtype == MLSTM_DTYPE_F32);
    mlstm_desc_init_sized(&g.d, 2); /* smaller than struct_size itself: writes nothing */
    assert_int_equal(g.d.struct_size, MLSTM_DESC_SIZE_V1);
    mlstm_desc_init_sized(NULL, sizeof g.d);
    /* a newer caller's desc: the bytes beyond the library's struct default to zero */
    mlstm_desc_init_sized(&g.d, sizeof g);
    assert_int_equal(g.d.struct_size, sizeof g);
    for (size_t b = 0; b < sizeof g.after; b++)
        assert_int_equal(g.after[b], 0);
    assert_int_equal(MLSTM_DESC_SIZE_V1, 408); /* the 0.1 struct on LP64: 72 bytes of scalars, 14 layouts */
    assert_int_equal(MLSTM_OPTIONS_SIZE_V1, sizeof(mlstm_options));

    struct { mlstm_options o; unsigned char after[32]; } go;
    memset(&go, 0x5a, sizeof go);
    mlstm_options_init_sized(&go.o, sizeof go.o);
    for (size_t b = 0; b < sizeof go.after; b++)
        assert_int_equal(go.after[b], 0x5a);
    mlstm_context *c = (mlstm_context *)(uintptr_t)1;
    go.o.struct_size = (uint32_t)sizeof go; /* a newer caller whose extra members are set */
    go.o.backend = "no-such-backend";
    assert_int_equal(mlstm_context_create(&go.o, &c), MLSTM_ERR_INVALID_ARGUMENT);
    assert_null(c);
    assert_non_null(strstr(mlstm_last_error_global(), "does not know"));
    memset(go.after, 0, sizeof go.after); /* ... now unset: read as the defaults, so the bad name is what fails */
    assert_int_equal(mlstm_context_create(&go.o, &c), MLSTM_ERR_BACKEND_UNAVAILABLE);
    go.o.struct_size = (uint32_t)MLSTM_OPTIONS_SIZE_V1 - 4;
    assert_int_equal(mlstm_context_create(&go.o, &c), MLSTM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(mlstm_last_error_global(), "first published size"));
}

/* A desc from a newer caller (zero tail: accepted; set tail: rejected, outputs untouched) and packs that break the
 * rules, through every entry point that takes them. */
static void test_desc_and_pack_growth(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture *fx = &g_fx;
    struct { mlstm_desc d; uint64_t newer[4]; } g;
    memset(&g, 0, sizeof g);
    g.d = fx->desc;
    g.d.struct_size = (uint32_t)sizeof g;
    for (int bwd = 0; bwd < 2; bwd++)
        expect_status(fx, &g.d, fx->buf, bwd, MLSTM_OK, "desc of a newer caller, unknown members zero");
    g.newer[2] = 1;
    for (int bwd = 0; bwd < 2; bwd++)
        expect_status(fx, &g.d, fx->buf, bwd, MLSTM_ERR_INVALID_ARGUMENT, "desc of a newer caller, unknown member set");

    mlstm_tensor_pack pk;
    for (int bwd = 0; bwd < 2; bwd++) {
        fx_fill(fx, bwd);
        int (*run)(mlstm_context *, const mlstm_desc *, const mlstm_tensor_pack *, mlstm_buffer *) =
            bwd ? mlstm_parallel_bwd_pack : mlstm_parallel_fwd_pack;
        assert_int_equal(run(g_ctx, &fx->desc, NULL, NULL), MLSTM_ERR_INVALID_ARGUMENT);
        fill_pack(&pk, fx->buf);
        pk.tensors[MLSTM_TENSOR_COUNT] = fx->buf[0];
        assert_int_equal(run(g_ctx, &fx->desc, &pk, NULL), MLSTM_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(mlstm_context_last_error(g_ctx), "role"));
        fill_pack(&pk, fx->buf);
        pk.struct_size = 8;
        assert_int_equal(run(g_ctx, &fx->desc, &pk, NULL), MLSTM_ERR_INVALID_ARGUMENT);
        fx_expect_untouched(fx, bwd, "bad packs");
        /* a pack with every role set serves both directions (fwd ignores the backward's roles) */
        fill_pack(&pk, fx->buf);
        assert_int_equal(run(g_ctx, &fx->desc, &pk, NULL), MLSTM_OK);
    }
}

/* A zeroed host array large enough for any tensor of the fixture's shape. */
static void *zero_host(void)
{
    static float zeros[1024];
    return zeros;
}

/* Reads every output of the fixture into one host array (for bitwise comparisons). */
static unsigned char *fx_outputs(fixture *fx, int bwd, size_t *len)
{
    size_t total = 0;
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++)
        if (is_output(t, bwd))
            total += fx->count[t] * tu_dtype_size(fx->dtype[t]);
    unsigned char *out = malloc(total), *at = out;
    assert_non_null(out);
    assert_int_equal(mlstm_synchronize(g_ctx), MLSTM_OK);
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++)
        if (is_output(t, bwd)) {
            assert_int_equal(mlstm_buffer_read(fx->buf[t], 0, fx->count[t], at), MLSTM_OK);
            at += fx->count[t] * tu_dtype_size(fx->dtype[t]);
        }
    *len = total;
    return out;
}

static void test_plan_api(void **state)
{
    (void)state;
    NEED_CONTEXT();
    fixture *fx = &g_fx;
    mlstm_plan *plan = (mlstm_plan *)(uintptr_t)1;
    /* creation errors: *out NULL afterwards, a reason recorded */
    assert_int_equal(mlstm_plan_create(NULL, &fx->desc, MLSTM_PLAN_FWD, &plan), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_plan_create(g_ctx, &fx->desc, MLSTM_PLAN_FWD, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    const unsigned bad_dirs[] = {0u, 4u, MLSTM_PLAN_FWD | 8u};
    for (size_t k = 0; k < sizeof bad_dirs / sizeof bad_dirs[0]; k++) {
        plan = (mlstm_plan *)(uintptr_t)1;
        assert_int_equal(mlstm_plan_create(g_ctx, &fx->desc, bad_dirs[k], &plan), MLSTM_ERR_INVALID_ARGUMENT);
        assert_null(plan);
        assert_non_null(strstr(mlstm_context_last_error(g_ctx), "directions"));
    }
    plan = (mlstm_plan *)(uintptr_t)1;
    assert_int_equal(mlstm_plan_create(g_ctx, NULL, MLSTM_PLAN_FWD, &plan), MLSTM_ERR_INVALID_ARGUMENT);
    assert_null(plan);
    mlstm_plan_destroy(NULL);
    size_t ws = 7;
    assert_int_equal(mlstm_plan_workspace_size(NULL, &ws), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(ws, 7);
    mlstm_tensor_pack pk;
    fill_pack(&pk, fx->buf);
    assert_int_equal(mlstm_plan_execute_fwd(NULL, &pk, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_plan_execute_bwd(NULL, &pk, NULL), MLSTM_ERR_INVALID_ARGUMENT);

    /* a plan gives bitwise what the positional calls give; it keeps its own copy of the desc */
    size_t len_ref[2], len_plan[2];
    unsigned char *ref[2], *got[2];
    g_call_mode = MODE_POSITIONAL;
    for (int bwd = 0; bwd < 2; bwd++) {
        fx_fill(fx, bwd);
        assert_int_equal(call(g_ctx, &fx->desc, fx->buf, bwd), MLSTM_OK);
        ref[bwd] = fx_outputs(fx, bwd, &len_ref[bwd]);
    }
    mlstm_desc d = fx->desc;
    assert_int_equal(mlstm_plan_create(g_ctx, &d, MLSTM_PLAN_FWD | MLSTM_PLAN_BWD, &plan), MLSTM_OK);
    d.seq_len = 0; /* invalid now: the plan does not look */
    assert_int_equal(mlstm_plan_workspace_size(plan, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_plan_workspace_size(plan, &ws), MLSTM_OK);
    if (fused_needs_no_workspace(g_ctx)) /* CUDA stages this shape's head dims */
        assert_int_equal(ws, 0);
    for (int bwd = 0; bwd < 2; bwd++) {
        fx_fill(fx, bwd);
        assert_int_equal(bwd ? mlstm_plan_execute_bwd(plan, &pk, NULL) : mlstm_plan_execute_fwd(plan, &pk, NULL),
                         MLSTM_OK);
        got[bwd] = fx_outputs(fx, bwd, &len_plan[bwd]);
        assert_int_equal(len_ref[bwd], len_plan[bwd]);
        assert_memory_equal(ref[bwd], got[bwd], len_ref[bwd]);
        free(ref[bwd]);
        free(got[bwd]);
    }

    /* execution errors: clear status, a reason, outputs untouched */
    mlstm_options o;
    mlstm_options_init(&o);
    o.backend = mlstm_context_backend_name(g_ctx);
    mlstm_context *other = NULL;
    assert_int_equal(mlstm_context_create(&o, &other), MLSTM_OK);
    mlstm_buffer *foreign = NULL, *ws_other = NULL, *ws_own = NULL, *q16 = NULL, *small = NULL;
    assert_int_equal(mlstm_buffer_create(other, MLSTM_DTYPE_F32, fx->count[MLSTM_TENSOR_K], &foreign), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create(other, MLSTM_DTYPE_F32, 64, &ws_other), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F32, 64, &ws_own), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F16, fx->count[MLSTM_TENSOR_Q], &q16), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create(g_ctx, MLSTM_DTYPE_F32, mlstm_tensor_extent(&fx->desc, MLSTM_TENSOR_V) - 1,
                                         &small), MLSTM_OK);
    struct { int role; mlstm_buffer *buf; mlstm_buffer *ws; int want; const char *what; } bad[] = {
        {MLSTM_TENSOR_K, foreign, NULL, MLSTM_ERR_CONTEXT_MISMATCH, "k of another context"},
        {MLSTM_TENSOR_Q, q16, NULL, MLSTM_ERR_DTYPE_MISMATCH, "q f16 for an f32 plan"},
        {MLSTM_TENSOR_V, small, NULL, MLSTM_ERR_BUFFER_TOO_SMALL, "v one element short"},
        {MLSTM_TENSOR_F, NULL, NULL, MLSTM_ERR_INVALID_ARGUMENT, "f NULL"},
        {-1, NULL, ws_other, MLSTM_ERR_CONTEXT_MISMATCH, "workspace of another context"},
        {-1, NULL, fx->buf[MLSTM_TENSOR_H], MLSTM_ERR_BAD_LAYOUT, "workspace overlapping h"},
    };
    for (int bwd = 0; bwd < 2; bwd++)
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            mlstm_tensor_pack pb;
            fill_pack(&pb, fx->buf);
            if (bad[k].role >= 0)
                pb.tensors[bad[k].role] = bad[k].buf;
            fx_fill(fx, bwd);
            int st = bwd ? mlstm_plan_execute_bwd(plan, &pb, bad[k].ws) : mlstm_plan_execute_fwd(plan, &pb, bad[k].ws);
            if (st != bad[k].want)
                fail_msg("plan execute with %s: %d, expected %d (%s)", bad[k].what, st, bad[k].want,
                         mlstm_context_last_error(g_ctx));
            assert_true(strlen(mlstm_context_last_error(g_ctx)) > 0);
            fx_expect_untouched(fx, bwd, bad[k].what);
        }
    /* the caller's workspace: accepted where large enough (any size where the plan needs none); too small gives
     * MLSTM_ERR_BUFFER_TOO_SMALL and changes nothing; NULL runs on the context's own workspace */
    assert_int_equal(mlstm_plan_workspace_size(plan, &ws), MLSTM_OK);
    fx_fill(fx, 0);
    if (ws <= 64 * sizeof(float)) {
        assert_int_equal(mlstm_plan_execute_fwd(plan, &pk, ws_own), MLSTM_OK);
        printf("  note: %s: the plan needs %zu workspace bytes, so the too-small-workspace case does not apply\n",
               __func__, ws);
    } else {
        assert_int_equal(mlstm_plan_execute_fwd(plan, &pk, ws_own), MLSTM_ERR_BUFFER_TOO_SMALL);
        fx_expect_untouched(fx, 0, "too small a workspace");
        assert_int_equal(mlstm_plan_execute_fwd(plan, &pk, NULL), MLSTM_OK);
    }
    mlstm_plan_destroy(plan);

    /* a forward-only plan refuses the backward */
    assert_int_equal(mlstm_plan_create(g_ctx, &fx->desc, MLSTM_PLAN_FWD, &plan), MLSTM_OK);
    fx_fill(fx, 1);
    assert_int_equal(mlstm_plan_execute_bwd(plan, &pk, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    fx_expect_untouched(fx, 1, "bwd on a fwd-only plan");
    /* plans still alive when their context goes are freed with it (ASan / valgrind check the leak) */
    mlstm_plan *orphan = NULL;
    mlstm_desc od = fx->desc;
    assert_int_equal(mlstm_plan_create(other, &od, MLSTM_PLAN_BWD, &orphan), MLSTM_OK);
    /* a plan of the other context with buffers of this one */
    assert_int_equal(mlstm_plan_execute_bwd(orphan, &pk, NULL), MLSTM_ERR_CONTEXT_MISMATCH);
    fx_expect_untouched(fx, 1, "plan of another context");
    mlstm_plan_destroy(plan);
    mlstm_buffer_destroy(q16);
    mlstm_buffer_destroy(small);
    mlstm_buffer_destroy(ws_own);
    mlstm_context_destroy(other);
}

/* Limits are MLSTM_ERR_UNSUPPORTED at plan creation, before any buffer exists: 16 x 2^31 positions exceed both
 * backends (OpenCL indexes positions with int; CUDA's grids hold at most 2^31 - 1 blocks of 8 rows). */
static void test_plan_unsupported(void **state)
{
    (void)state;
    NEED_CONTEXT();
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = 16; d.heads = 1; d.seq_len = INT32_MAX; d.dqk = 1; d.dv = 1;
    mlstm_plan *plan = (mlstm_plan *)(uintptr_t)1;
    int st = mlstm_plan_create(g_ctx, &d, MLSTM_PLAN_FWD | MLSTM_PLAN_BWD, &plan);
    if (st != MLSTM_ERR_UNSUPPORTED)
        fail_msg("plan for 16 x 2^31 positions: %d, expected MLSTM_ERR_UNSUPPORTED (%s)", st,
                 mlstm_context_last_error(g_ctx));
    assert_null(plan);
    assert_true(strlen(mlstm_context_last_error(g_ctx)) > 0);
}

/* A plan compiles at creation, never at execution: an OpenCL context reads its kernel sources from a folder
 * (MLSTM_OPENCL_KERNEL_DIR), the plan is made, the folder is emptied; the plan still runs, while an unplanned call
 * that needs a new program fails to build it. */
static void test_plan_compiles_ahead(void **state)
{
    (void)state;
    NEED_CONTEXT();
    if (strcmp(mlstm_context_backend_name(g_ctx), "opencl") != 0) {
        printf("[ SKIP ] %s: kernel sources on disk are an OpenCL-backend feature; this run uses '%s'\n", __func__,
               mlstm_context_backend_name(g_ctx));
        skip();
    }
    char dir[] = "/tmp/mlstm_plan_kernels_XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const char *const files[] = {"common.cl", "fwd.cl", "bwd.cl", "materialized.cl"};
    enum { NFILES = sizeof files / sizeof files[0] };
    char path[NFILES][512];
    for (int k = 0; k < NFILES; k++) {
        char src[512];
        snprintf(src, sizeof src, "%s/%s", MLSTM_KERNELS_CL_DIR, files[k]);
        snprintf(path[k], sizeof path[k], "%s/%s", dir, files[k]);
        FILE *in = fopen(src, "rb"), *out = fopen(path[k], "wb");
        assert_non_null(in);
        assert_non_null(out);
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, in)) > 0)
            assert_int_equal(fwrite(buf, 1, n, out), n);
        fclose(in);
        fclose(out);
    }
    setenv("MLSTM_OPENCL_KERNEL_DIR", dir, 1);
    mlstm_options o;
    mlstm_options_init(&o);
    o.backend = "opencl";
    mlstm_context *ctx = NULL;
    int st = mlstm_context_create(&o, &ctx);
    unsetenv("MLSTM_OPENCL_KERNEL_DIR");
    assert_int_equal(st, MLSTM_OK);
    mlstm_desc d;
    fx_desc(&d, MLSTM_DTYPE_F16);
    mlstm_plan *plan = NULL;
    st = mlstm_plan_create(ctx, &d, MLSTM_PLAN_FWD | MLSTM_PLAN_BWD, &plan);
    for (int k = 0; k < NFILES; k++)
        assert_int_equal(remove(path[k]), 0);
    assert_int_equal(rmdir(dir), 0);
    if (st != MLSTM_OK)
        fail_msg("plan with the kernel sources present: %d (%s)", st, mlstm_context_last_error(ctx));
    mlstm_buffer *b[MLSTM_TENSOR_COUNT] = {0};
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        assert_int_equal(mlstm_buffer_create(ctx, is_f32_tensor(t) ? MLSTM_DTYPE_F32 : MLSTM_DTYPE_F16,
                                             mlstm_tensor_extent(&d, t), &b[t]), MLSTM_OK);
        unsigned char zero[256] = {0};
        assert_true(mlstm_tensor_extent(&d, t) * 4 <= sizeof zero);
        assert_int_equal(mlstm_buffer_write(b[t], 0, mlstm_tensor_extent(&d, t), zero), MLSTM_OK);
    }
    mlstm_tensor_pack pk;
    fill_pack(&pk, b);
    st = mlstm_plan_execute_fwd(plan, &pk, NULL);
    if (st == MLSTM_OK)
        st = mlstm_plan_execute_bwd(plan, &pk, NULL);
    if (st == MLSTM_OK)
        st = mlstm_synchronize(ctx);
    if (st != MLSTM_OK)
        fail_msg("planned calls after the sources were removed: %d (%s)", st, mlstm_context_last_error(ctx));
    /* the control: a bf16 call was never planned, and its program cannot be built now */
    d.dtype = MLSTM_DTYPE_BF16;
    assert_int_equal(mlstm_parallel_fwd_host(ctx, &d, zero_host(), zero_host(), zero_host(), zero_host(), zero_host(),
                                             zero_host(), zero_host(), zero_host()),
                     MLSTM_ERR_KERNEL_BUILD);
    mlstm_context_destroy(ctx);
}

static int group_setup(void **state)
{
    (void)state;
    int st = mlstm_context_create(NULL, &g_ctx);
    if (st != MLSTM_OK) {
        snprintf(g_no_ctx_reason, sizeof g_no_ctx_reason, "%s (%d): %s", mlstm_status_string(st), st,
                 mlstm_last_error_global());
        printf("api: no context (tests that need one will skip): %s\n", g_no_ctx_reason);
        g_ctx = NULL;
    } else {
        printf("api: context on backend '%s', device '%s'\n", mlstm_context_backend_name(g_ctx),
               mlstm_context_device_name(g_ctx));
        /* the api_materialized run (MLSTM_ALGO=materialized) needs the algorithm: a build without its BLAS skips */
        const char *algo = getenv("MLSTM_ALGO");
        mlstm_desc d;
        mlstm_desc_init(&d);
        d.batch = d.heads = 1;
        d.seq_len = d.dqk = d.dv = 16;
        size_t bytes;
        if (algo && !strcmp(algo, "materialized") && mlstm_workspace_size(g_ctx, &d, 0, &bytes) == MLSTM_ERR_UNSUPPORTED) {
            printf("[ SKIP ] api under MLSTM_ALGO=materialized: %s\n", mlstm_context_last_error(g_ctx));
            mlstm_context_destroy(g_ctx);
            exit(77);
        }
    }
    fflush(stdout);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    mlstm_context_destroy(g_ctx);
    return 0;
}

/* Runs test in call mode `mode`, then restores the positional mode. */
#define MODE_VARIANT(test, mode)                                                                        \
    static void test##_##mode(void **state)                                                            \
    {                                                                                                  \
        g_call_mode = mode;                                                                            \
        test(state);                                                                                   \
        g_call_mode = MODE_POSITIONAL;                                                                 \
    }
#define VARIANTS(test) MODE_VARIANT(test, MODE_PACK) MODE_VARIANT(test, MODE_PLAN)
VARIANTS(test_valid_call_succeeds)
VARIANTS(test_bad_handles)
VARIANTS(test_bad_desc_values)
VARIANTS(test_bad_layouts)
VARIANTS(test_output_aliasing)
VARIANTS(test_buffer_mismatches)
VARIANTS(test_context_mismatch)
#define PACK_AND_PLAN(test)                                                                             \
    cmocka_unit_test_setup_teardown(test##_MODE_PACK, fx_setup, fx_teardown),                          \
        cmocka_unit_test_setup_teardown(test##_MODE_PLAN, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_strings),
        cmocka_unit_test(test_version_and_dtypes),
        cmocka_unit_test(test_null_safety),
        cmocka_unit_test(test_init_defaults),
        cmocka_unit_test(test_backend_registry),
        cmocka_unit_test(test_context_create_errors),
        cmocka_unit_test(test_tensor_extent),
        cmocka_unit_test_setup_teardown(test_valid_call_succeeds, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_handles, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_desc_values, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_layouts, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_output_aliasing, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_buffer_mismatches, fx_setup, fx_teardown),
        cmocka_unit_test(test_dtype_mismatch_half),
        cmocka_unit_test_setup_teardown(test_context_mismatch, fx_setup, fx_teardown),
        cmocka_unit_test(test_buffers),
        cmocka_unit_test(test_host_api_errors),
        cmocka_unit_test_setup_teardown(test_valid_edges, fx_setup, fx_teardown),
        cmocka_unit_test(test_struct_sizes),
        cmocka_unit_test_setup_teardown(test_desc_and_pack_growth, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_plan_api, fx_setup, fx_teardown),
        cmocka_unit_test(test_plan_unsupported),
        cmocka_unit_test(test_plan_compiles_ahead),
        /* the bad-input tests again through the tensor-pack and plan entry points */
        PACK_AND_PLAN(test_valid_call_succeeds),
        PACK_AND_PLAN(test_bad_handles),
        PACK_AND_PLAN(test_bad_desc_values),
        PACK_AND_PLAN(test_bad_layouts),
        PACK_AND_PLAN(test_output_aliasing),
        PACK_AND_PLAN(test_buffer_mismatches),
        PACK_AND_PLAN(test_context_mismatch),
    };
    const char *filter = getenv("MLSTM_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests_name("api", tests, group_setup, group_teardown);
}
