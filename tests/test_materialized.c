/* The materialised algorithm against the fused one on the backend MLSTM_BACKEND selects: the same inputs through
 * both (relative L2 difference of every output within the precision contract's bound), and the workspace API
 * (mlstm_workspace_size, mlstm_context_set_workspace: size, alignment, ownership, a too-small workspace, bitwise
 * equal results with the caller's and the context's own workspace), desc.algo and MLSTM_ALGO validation.
 * No device: exit 77. A backend without the materialised algorithm (OpenCL built without CLBlast) skips. */
#define _POSIX_C_SOURCE 200809L /* setenv, unsetenv */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "mlstm.h"
#include "mlstm_case.h"
#ifdef MLSTM_TEST_OPENCL
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include "mlstm_opencl.h"
#endif
#include "test_util.h"
#include "tolerances.h"

static mlstm_context *g_fused, *g_mat; /* contexts created under MLSTM_ALGO=fused and =materialized */
static mc_inputs g_in;
static mc_outputs g_a, g_b;
static mlstm_buffer *g_bufs[4];

static int teardown(void **state)
{
    (void)state;
    mc_inputs_free(&g_in);
    mc_outputs_free(&g_a);
    mc_outputs_free(&g_b);
    for (int i = 3; i >= 0; i--) { /* views (index 2) before their parent (1) */
        mlstm_buffer_destroy(g_bufs[i]);
        g_bufs[i] = NULL;
    }
    if (g_mat)
        mlstm_context_set_workspace(g_mat, NULL);
    return 0;
}

/* Runs c on ctx; skips (with the reason) where the materialised algorithm is unsupported. */
static void run_or_skip(mlstm_context *ctx, const mc_case *c, mc_outputs *out)
{
    char api_msg[2048], canary_msg[512];
    const int st = mc_run_device(ctx, c, &g_in, out, api_msg, sizeof api_msg, canary_msg, sizeof canary_msg, NULL);
    if (st == MLSTM_ERR_UNSUPPORTED) {
        printf("[ SKIP ] %s: MLSTM_ERR_UNSUPPORTED: %s\n", c->name, api_msg);
        skip();
    }
    if (st != MLSTM_OK)
        fail_msg("%s: %s: %s", c->name, mlstm_status_string(st), api_msg);
    if (canary_msg[0])
        fail_msg("%s: %s", c->name, canary_msg);
}

/* Fused and materialised on the same inputs: every output's relative L2 difference within the contract's
 * bound for the dtype (each is within it of the float64 reference; conformance checks that). */
static void test_fused_vs_materialized(void **state)
{
    (void)state;
    const mc_case cases[] = {
        mc_case_make(0, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 2, 3, 129, 48, 96, MC_GATES_STD, MC_LAYOUT_BNSD, 1),
        mc_case_make(1, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 2, 2, 97, 64, 64, MC_GATES_STD, MC_LAYOUT_BSND, 2),
        mc_case_make(1, MLSTM_DTYPE_F32, MLSTM_GRAD_NORMALIZER_DETACHED, 1, 2, 200, 32, 16, MC_GATES_NORMAL,
                  MC_LAYOUT_PADDED, 3),
        mc_case_make(1, MLSTM_DTYPE_BF16, MLSTM_GRAD_EXACT, 1, 2, 130, 48, 96, MC_GATES_STD, MC_LAYOUT_BNSD, 4),
        mc_case_make(1, MLSTM_DTYPE_F16, MLSTM_GRAD_NORMALIZER_DETACHED, 2, 1, 65, 64, 64, MC_GATES_NORMAL,
                  MC_LAYOUT_BNSD, 5),
        mc_case_make(1, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 1, 1, 300, 16, 16, MC_GATES_CLOSED, MC_LAYOUT_BNSD, 6),
        mc_case_make(0, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 1, 1, 150, 3, 5, MC_GATES_EXT_N, MC_LAYOUT_BNSD, 7),
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const mc_case *c = &cases[k];
        mc_inputs_make(c, &g_in);
        run_or_skip(g_fused, c, &g_a);
        run_or_skip(g_mat, c, &g_b);
        /* the call trace names the algorithm (CUDA reports its kernels; OpenCL reports none) */
        const char *lk = mlstm_context_last_kernels(g_mat);
        if (!strcmp(mlstm_context_backend_name(g_mat), "cuda") && strncmp(lk, "materialized.", 13) != 0)
            fail_msg("%s: mlstm_context_last_kernels after a materialised call: \"%s\"", c->name, lk);
        const double allowance = tol_gate_allowance(mc_extreme_gate_magnitude(c, &g_in));
        printf("[ CASE ] %s: materialised vs fused:", c->name);
        for (int o = 0; o < MC_OUT_COUNT; o++) {
            const size_t n = mc_output_count(c, o);
            if (!n)
                continue;
            size_t first = 0;
            if (tu_count_nonfinite(g_b.t[o], n, &first))
                fail_msg("%s: materialised %s[%zu] = %g is not finite", c->name, mc_output_name(o), first,
                         g_b.t[o][first]);
            const double d = tu_rel_l2(g_b.t[o], g_a.t[o], n), tol = tol_max_rel_l2(c->dtype, o) + allowance;
            printf(" %s=%.2e", mc_output_name(o), d);
            if (!(d <= tol))
                fail_msg("%s: %s differs from the fused result by %.3e relative L2 (bound %.0e)", c->name,
                         mc_output_name(o), d, tol);
        }
        printf("\n");
        mc_inputs_free(&g_in);
        mc_outputs_free(&g_a);
        mc_outputs_free(&g_b);
    }
}

/* A small problem in host arrays for the workspace tests. */
enum { WB = 1, WNH = 2, WS = 37, WDQK = 16, WDV = 24 };
static float hq[WB * WNH * WS * WDQK], hk[WB * WNH * WS * WDQK], hv[WB * WNH * WS * WDV];
static float hi[WB * WNH * WS], hf[WB * WNH * WS];

static void fill_inputs(void)
{
    tu_rng r;
    tu_rng_seed(&r, 99);
    for (size_t x = 0; x < sizeof hq / sizeof hq[0]; x++) {
        hq[x] = (float)tu_rng_normal(&r);
        hk[x] = (float)tu_rng_normal(&r);
    }
    for (size_t x = 0; x < sizeof hv / sizeof hv[0]; x++) hv[x] = (float)tu_rng_normal(&r);
    for (size_t x = 0; x < sizeof hi / sizeof hi[0]; x++) {
        hi[x] = (float)tu_rng_normal(&r);
        hf[x] = (float)(3.0 + tu_rng_normal(&r));
    }
}

static int fwd(mlstm_context *ctx, const mlstm_desc *d, float *h, float *m, float *n)
{
    return mlstm_parallel_fwd_host(ctx, d, hq, hk, hv, hi, hf, h, m, n);
}

static void test_workspace_api(void **state)
{
    (void)state;
    fill_inputs();
    mlstm_desc d;
    mlstm_desc_init(&d);
    assert_int_equal(d.algo, MLSTM_ALGO_AUTO);
    d.batch = WB; d.heads = WNH; d.seq_len = WS; d.dqk = WDQK; d.dv = WDV;
    size_t bytes = 1;
    d.algo = MLSTM_ALGO_FUSED;
    assert_int_equal(mlstm_workspace_size(g_mat, &d, 1, &bytes), MLSTM_OK);
    /* the fused kernels need none, but on CUDA where head dims are staged (README "Head dimensions": this shape's
     * DQK != DV is) */
    if (strcmp(mlstm_context_backend_name(g_mat), "cuda") != 0)
        assert_int_equal(bytes, 0);
    d.algo = 7;
    assert_int_equal(mlstm_workspace_size(g_mat, &d, 0, &bytes), MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(fwd(g_mat, &d, (float[WB * WNH * WS * WDV]){0}, (float[WB * WNH * WS]){0},
                         (float[WB * WNH * WS]){0}), MLSTM_ERR_INVALID_ARGUMENT);
    d.algo = MLSTM_ALGO_MATERIALIZED;
    size_t fwd_bytes = 0, bwd_bytes = 0;
    int st = mlstm_workspace_size(g_fused, &d, 0, &fwd_bytes);
    if (st == MLSTM_ERR_UNSUPPORTED) {
        printf("[ SKIP ] workspace: MLSTM_ERR_UNSUPPORTED: %s\n", mlstm_context_last_error(g_fused));
        skip();
    }
    assert_int_equal(st, MLSTM_OK);
    assert_int_equal(mlstm_workspace_size(g_fused, &d, 1, &bwd_bytes), MLSTM_OK);
    /* at least the S x S intermediates: one forward, two backward */
    assert_true(fwd_bytes >= (size_t)WB * WNH * WS * WS * 4);
    assert_true(bwd_bytes >= 2 * (size_t)WB * WNH * WS * WS * 4);
    assert_int_equal(mlstm_workspace_size(g_fused, &d, 0, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    /* auto under MLSTM_ALGO=materialized resolves to the materialised algorithm */
    d.algo = MLSTM_ALGO_AUTO;
    assert_int_equal(mlstm_workspace_size(g_mat, &d, 0, &bytes), MLSTM_OK);
    assert_int_equal(bytes, fwd_bytes);
    d.algo = MLSTM_ALGO_MATERIALIZED;

    /* reference results with the context's own workspace */
    static float h0[WB * WNH * WS * WDV], m0[WB * WNH * WS], n0[WB * WNH * WS];
    static float h1[WB * WNH * WS * WDV], m1[WB * WNH * WS], n1[WB * WNH * WS];
    assert_int_equal(fwd(g_fused, &d, h0, m0, n0), MLSTM_OK);

    /* too small: BUFFER_TOO_SMALL, outputs untouched */
    assert_int_equal(mlstm_buffer_create(g_fused, MLSTM_DTYPE_F32, fwd_bytes / 4 - 1, &g_bufs[0]), MLSTM_OK);
    assert_int_equal(mlstm_context_set_workspace(g_fused, g_bufs[0]), MLSTM_OK);
    memset(h1, 0x7f, sizeof h1);
    assert_int_equal(fwd(g_fused, &d, h1, m1, n1), MLSTM_ERR_BUFFER_TOO_SMALL);
    assert_non_null(strstr(mlstm_context_last_error(g_fused), "workspace"));
    for (size_t x = 0; x < sizeof h1 / sizeof h1[0]; x++)
        assert_int_equal(tu_f32_bits(h1[x]), 0x7f7f7f7fu);

    /* a misaligned view is refused; an aligned one (f16 elements, 128 of them = 256 bytes in) serves */
    assert_int_equal(mlstm_buffer_create(g_fused, MLSTM_DTYPE_F16, fwd_bytes / 2 + 1024, &g_bufs[1]), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create_view(g_bufs[1], 2, fwd_bytes / 2, &g_bufs[2]), MLSTM_OK);
    assert_int_equal(mlstm_context_set_workspace(g_fused, g_bufs[2]), MLSTM_ERR_INVALID_ARGUMENT);
    mlstm_buffer_destroy(g_bufs[2]);
    assert_int_equal(mlstm_buffer_create_view(g_bufs[1], 128, fwd_bytes / 2, &g_bufs[2]), MLSTM_OK);
    assert_int_equal(mlstm_context_set_workspace(g_fused, g_bufs[2]), MLSTM_OK);
    assert_int_equal(fwd(g_fused, &d, h1, m1, n1), MLSTM_OK);
    assert_memory_equal(h0, h1, sizeof h0);
    assert_memory_equal(m0, m1, sizeof m0);
    assert_memory_equal(n0, n1, sizeof n0);

    /* a buffer of another context is refused; destroying the workspace unsets it */
    assert_int_equal(mlstm_buffer_create(g_mat, MLSTM_DTYPE_F32, fwd_bytes / 4, &g_bufs[3]), MLSTM_OK);
    assert_int_equal(mlstm_context_set_workspace(g_fused, g_bufs[3]), MLSTM_ERR_CONTEXT_MISMATCH);
    mlstm_buffer_destroy(g_bufs[2]);
    g_bufs[2] = NULL;
    memset(h1, 0, sizeof h1);
    assert_int_equal(fwd(g_fused, &d, h1, m1, n1), MLSTM_OK);
    assert_memory_equal(h0, h1, sizeof h0);
    assert_int_equal(mlstm_context_set_workspace(NULL, NULL), MLSTM_ERR_INVALID_ARGUMENT);
    printf("[ CASE ] workspace: fwd %zu bytes, bwd %zu bytes; caller's and own workspace give the same bits\n",
           fwd_bytes, bwd_bytes);
}

static void test_env_algo(void **state)
{
    (void)state;
    mlstm_context *ctx = NULL;
    setenv("MLSTM_ALGO", "bogus", 1);
    const int st = mlstm_context_create(NULL, &ctx);
    unsetenv("MLSTM_ALGO");
    assert_int_equal(st, MLSTM_ERR_INVALID_ARGUMENT);
    assert_null(ctx);
    assert_non_null(strstr(mlstm_last_error_global(), "MLSTM_ALGO"));
}

/* Whether ctx's device is a CPU (the automatic choice keeps the fused kernels there, api/algo.c) */
static int device_is_cpu(const mlstm_context *ctx)
{
#ifdef MLSTM_TEST_OPENCL
    if (!strcmp(mlstm_context_backend_name(ctx), "opencl")) {
        cl_device_id dev = NULL;
        cl_device_type type = 0;
        assert_int_equal(mlstm_context_get_opencl(ctx, NULL, &dev, NULL), MLSTM_OK);
        assert_int_equal(clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof type, &type, NULL), CL_SUCCESS);
        return (type & CL_DEVICE_TYPE_CPU) != 0;
    }
#endif
    (void)ctx;
    return 0;
}

static int create_with_algo(const char *algo, mlstm_context **ctx);

/* MLSTM_ALGO_AUTO follows the measured table (api/algo.c): f32 DQK = DV = 512 is materialised in both directions on
 * every GPU backend (the fused kernels have no tensor-core instance there), fused on a CPU device; a context
 * workspace too small for the materialised algorithm keeps auto on the fused kernels; the call runs either way. */
static void test_auto_choice(void **state)
{
    (void)state;
    mlstm_context *ctx = NULL;
    assert_int_equal(create_with_algo("auto", &ctx), MLSTM_OK);
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = 1; d.heads = 1; d.seq_len = 48; d.dqk = 512; d.dv = 512;
    const int cpu = device_is_cpu(ctx);
    for (int bwd = 0; bwd < 2; bwd++) {
        size_t fused = 1, mat = 0, autob = 0;
        d.algo = MLSTM_ALGO_FUSED;
        assert_int_equal(mlstm_workspace_size(ctx, &d, bwd, &fused), MLSTM_OK);
        d.algo = MLSTM_ALGO_MATERIALIZED;
        const int st = mlstm_workspace_size(ctx, &d, bwd, &mat);
        d.algo = MLSTM_ALGO_AUTO;
        assert_int_equal(mlstm_workspace_size(ctx, &d, bwd, &autob), MLSTM_OK);
        if (st == MLSTM_ERR_UNSUPPORTED) { /* built without the BLAS: auto stays fused */
            assert_int_equal(autob, fused);
            continue;
        }
        assert_int_equal(st, MLSTM_OK);
        assert_true(mat > fused);
        assert_int_equal(autob, cpu ? fused : mat);
        /* a context workspace smaller than the materialised algorithm needs: auto takes the fused kernels */
        mlstm_buffer *small = NULL;
        assert_int_equal(mlstm_buffer_create(ctx, MLSTM_DTYPE_F32, (mat - 256) / 4, &small), MLSTM_OK);
        assert_int_equal(mlstm_context_set_workspace(ctx, small), MLSTM_OK);
        assert_int_equal(mlstm_workspace_size(ctx, &d, bwd, &autob), MLSTM_OK);
        assert_int_equal(autob, fused);
        assert_int_equal(mlstm_context_set_workspace(ctx, NULL), MLSTM_OK);
        mlstm_buffer_destroy(small);
        printf("[ CASE ] auto 512/512 %s: workspace fused %zu, materialised %zu; auto chose %s (%s device)\n",
               bwd ? "bwd" : "fwd", fused, mat, cpu ? "fused" : "materialised", cpu ? "CPU" : "GPU");
    }
    /* the call itself under auto */
    static float h[48 * 512], m[48], n[48];
    float *q = calloc(48 * 512, sizeof(float)), *k = calloc(48 * 512, sizeof(float)), *v = calloc(48 * 512, sizeof(float));
    float ig[48] = {0}, fg[48] = {0};
    assert_non_null(q); assert_non_null(k); assert_non_null(v);
    for (int x = 0; x < 48 * 512; x++) q[x] = k[x] = v[x] = (float)((x % 7) - 3) * 0.125f;
    assert_int_equal(mlstm_parallel_fwd_host(ctx, &d, q, k, v, ig, fg, h, m, n), MLSTM_OK);
    for (int x = 0; x < 48 * 512; x++) assert_true(isfinite(h[x]));
    free(q); free(k); free(v);

    /* bf16: where the fused kernels run on tensor cores (CUDA's D = 512 class, sm_90: its kernel names say d512),
     * auto keeps both directions fused, which is faster; elsewhere on a GPU both are materialised */
    size_t matb = 0;
    d.dtype = MLSTM_DTYPE_BF16;
    d.algo = MLSTM_ALGO_MATERIALIZED;
    if (!cpu && mlstm_workspace_size(ctx, &d, 1, &matb) == MLSTM_OK) {
        const size_t ne = 48 * 512;
        uint16_t *x16 = calloc(5 * ne, sizeof(uint16_t)); /* q, k, v, h, dh; then dq, dk, dv */
        uint16_t *g16 = calloc(3 * ne, sizeof(uint16_t));
        float *di = calloc(48, sizeof(float)), *df = calloc(48, sizeof(float));
        assert_non_null(x16); assert_non_null(g16); assert_non_null(di); assert_non_null(df);
        for (size_t x = 0; x < 3 * ne; x++) x16[x] = (uint16_t)(0x3e00u + (x % 5) * 0x20u); /* 0.125 .. 0.19 */
        for (size_t x = 4 * ne; x < 5 * ne; x++) x16[x] = 0x3f80u;                          /* dh = 1 */
        d.algo = MLSTM_ALGO_FUSED;
        assert_int_equal(mlstm_parallel_fwd_host(ctx, &d, x16, x16 + ne, x16 + 2 * ne, ig, fg, x16 + 3 * ne, m, n),
                         MLSTM_OK);
        char fused_k[256];
        snprintf(fused_k, sizeof fused_k, "%s", mlstm_context_last_kernels(ctx));
        const int tc = strstr(fused_k, ".d512") != NULL;
        d.algo = MLSTM_ALGO_AUTO;
        assert_int_equal(mlstm_parallel_fwd_host(ctx, &d, x16, x16 + ne, x16 + 2 * ne, ig, fg, x16 + 3 * ne, m, n),
                         MLSTM_OK);
        const char *lk = mlstm_context_last_kernels(ctx);
        if (!strstr(lk, tc ? ".d512" : "materialized"))
            fail_msg("auto bf16 512/512 forward ran \"%s\" (fused: \"%s\")", lk, fused_k);
        printf("[ CASE ] auto bf16 512/512 fwd: %s (fused: %s)\n", lk, fused_k);
        assert_int_equal(mlstm_parallel_bwd_host(ctx, &d, x16, x16 + ne, x16 + 2 * ne, ig, fg, x16 + 3 * ne, m, n,
                                                 x16 + 4 * ne, g16, g16 + ne, g16 + 2 * ne, di, df),
                         MLSTM_OK);
        lk = mlstm_context_last_kernels(ctx);
        if (!strstr(lk, tc ? ".d512" : "materialized"))
            fail_msg("auto bf16 512/512 backward ran \"%s\" (fused forward: \"%s\")", lk, fused_k);
        printf("[ CASE ] auto bf16 512/512 bwd: %s\n", lk);
        for (int x = 0; x < 48; x++) assert_true(isfinite(di[x]) && isfinite(df[x]));
        free(x16); free(g16); free(di); free(df);
    }
    mlstm_context_destroy(ctx);
}

/* A context created with MLSTM_ALGO set to algo (the previous value restored). */
static int create_with_algo(const char *algo, mlstm_context **ctx)
{
    const char *old = getenv("MLSTM_ALGO");
    char *saved = old ? tu_strdupf("%s", old) : NULL;
    setenv("MLSTM_ALGO", algo, 1);
    const int st = mlstm_context_create(NULL, ctx);
    if (saved) {
        setenv("MLSTM_ALGO", saved, 1);
        free(saved);
    } else {
        unsetenv("MLSTM_ALGO");
    }
    return st;
}

static int group_setup(void **state)
{
    (void)state;
    int st = create_with_algo("fused", &g_fused);
    if (st == MLSTM_OK)
        st = create_with_algo("materialized", &g_mat);
    if (st == MLSTM_ERR_NO_DEVICE || st == MLSTM_ERR_BACKEND_UNAVAILABLE) {
        printf("[ SKIP ] materialized: no device: %s: %s\n", mlstm_status_string(st), mlstm_last_error_global());
        exit(77);
    }
    if (st != MLSTM_OK) {
        printf("materialized: mlstm_context_create failed: %s: %s\n", mlstm_status_string(st),
               mlstm_last_error_global());
        return -1;
    }
    printf("materialized: backend '%s', device '%s'\n", mlstm_context_backend_name(g_mat),
           mlstm_context_device_name(g_mat));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    mlstm_context_destroy(g_fused);
    mlstm_context_destroy(g_mat);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_fused_vs_materialized, teardown),
        cmocka_unit_test_teardown(test_workspace_api, teardown),
        cmocka_unit_test(test_env_algo),
        cmocka_unit_test(test_auto_choice),
    };
    const char *filter = getenv("MLSTM_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests_name("materialized", tests, group_setup, group_teardown);
}
