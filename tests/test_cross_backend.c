/* Cross-backend check: when two or more compiled backends have a device (e.g. CUDA and OpenCL on one GPU
 * machine), runs the same cases on a context per backend (mlstm_options.backend = name) and compares the
 * backends' outputs with each other: relative L2 of the difference, over the float64 reference's norm, within
 * 2x the tolerance of tests/tolerances.h. Exits 77 (skipped) with the reason when fewer than two have a device. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mlstm.h"
#include "mlstm_case.h"
#include "test_util.h"
#include "tolerances.h"

#define MAX_BACKENDS 8

static mlstm_context *g_ctx[MAX_BACKENDS];
static const char *g_name[MAX_BACKENDS];
static int g_n;

static mc_inputs g_in;
static mc_outputs g_ref, g_out[MAX_BACKENDS];

static int case_teardown(void **state)
{
    (void)state;
    mc_inputs_free(&g_in);
    mc_outputs_free(&g_ref);
    for (int b = 0; b < MAX_BACKENDS; b++)
        mc_outputs_free(&g_out[b]);
    return 0;
}

static void test_cross(void **state)
{
    const mc_case *c = *state;
    mc_inputs_make(c, &g_in);
    mc_reference(c, &g_in, c->grad_mode, &g_ref);
    int ran[MAX_BACKENDS] = { 0 }, nran = 0;
    for (int b = 0; b < g_n; b++) {
        char api_msg[2048], canary_msg[512];
        int st = mc_run_device(g_ctx[b], c, &g_in, &g_out[b], api_msg, sizeof api_msg, canary_msg, sizeof canary_msg,
                               NULL);
        if (st == MLSTM_ERR_UNSUPPORTED) {
            printf("[ NOTE ] %s: backend %s reports MLSTM_ERR_UNSUPPORTED: %s\n", c->name, g_name[b], api_msg);
            continue;
        }
        if (st != MLSTM_OK)
            fail_msg("%s: backend %s: %s", c->name, g_name[b], api_msg);
        if (canary_msg[0])
            fail_msg("%s: backend %s: %s", c->name, g_name[b], canary_msg);
        ran[b] = 1;
        nran++;
    }
    if (nran < 2) {
        printf("[ SKIP ] %s: fewer than two backends support this case\n", c->name);
        skip();
    }
    for (int a = 0; a < g_n; a++) {
        for (int b = a + 1; b < g_n; b++) {
            if (!ran[a] || !ran[b])
                continue;
            char line[512] = "", fails[1024] = "";
            size_t lu = 0, fu = 0;
            for (int o = 0; o < MC_OUT_COUNT; o++) {
                const size_t n = mc_output_count(c, o);
                if (!n)
                    continue;
                const double lim =
                    2.0 * (tol_max_rel_l2(c->dtype, o) + tol_gate_allowance(mc_extreme_gate_magnitude(c, &g_in)));
                double *d = malloc(n * sizeof *d);
                if (!d)
                    abort();
                for (size_t x = 0; x < n; x++)
                    d[x] = g_out[a].t[o][x] - g_out[b].t[o][x];
                double den = tu_l2(g_ref.t[o], n);
                double err = tu_l2(d, n) / (den > 0.0 ? den : 1.0);
                free(d);
                lu += (size_t)snprintf(line + lu, sizeof line - lu, " %s=%.2e", mc_output_name(o), err);
                if (!(err <= lim) && fu < sizeof fails)
                    fu += (size_t)snprintf(fails + fu, sizeof fails - fu, " %s: %.3e > %.0e;", mc_output_name(o), err,
                                           lim);
            }
            printf("[ CASE ] %s: %s vs %s:%s\n", c->name, g_name[a], g_name[b], line);
            if (fails[0])
                fail_msg("%s: %s vs %s:%s", c->name, g_name[a], g_name[b], fails);
        }
    }
}

int main(void)
{
    char why[4096] = "";
    size_t wu = 0;
    for (int b = 0; b < mlstm_backend_count() && g_n < MAX_BACKENDS; b++) {
        const char *name = mlstm_backend_name_at(b);
        mlstm_options opt;
        mlstm_options_init(&opt);
        opt.backend = name;
        mlstm_context *ctx = NULL;
        int st = mlstm_context_create(&opt, &ctx);
        if (st == MLSTM_OK) {
            printf("cross_backend: backend '%s' on '%s'\n", name, mlstm_context_device_name(ctx));
            g_ctx[g_n] = ctx;
            g_name[g_n] = name;
            g_n++;
        } else if (wu < sizeof why) {
            wu += (size_t)snprintf(why + wu, sizeof why - wu, " %s: %s (%s);", name, mlstm_status_string(st),
                                   mlstm_last_error_global());
        }
    }
    if (g_n < 2) {
        printf("[ SKIP ] cross_backend: needs two compiled backends with a device; %d compiled, %d usable.%s\n",
               mlstm_backend_count(), g_n, why);
        for (int b = 0; b < g_n; b++)
            mlstm_context_destroy(g_ctx[b]);
        return 77;
    }

    static mc_case cases[8];
    int nc = 0;
    cases[nc++] = mc_case_make(1, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 2, 2, 129, 64, 64, MC_GATES_STD, MC_LAYOUT_BNSD, 201);
    cases[nc++] = mc_case_make(1, MLSTM_DTYPE_BF16, MLSTM_GRAD_EXACT, 1, 2, 1000, 128, 128, MC_GATES_STD, MC_LAYOUT_BNSD, 202);
    cases[nc++] = mc_case_make(1, MLSTM_DTYPE_F16, MLSTM_GRAD_NORMALIZER_DETACHED, 2, 3, 65, 48, 96, MC_GATES_NORMAL,
                     MC_LAYOUT_BSND, 203);
    cases[nc++] = mc_case_make(1, MLSTM_DTYPE_F32, MLSTM_GRAD_NORMALIZER_DETACHED, 1, 1, 200, 64, 64, MC_GATES_EXT_U,
                     MC_LAYOUT_PADDED, 204);
    cases[nc++] = mc_case_make(0, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 1, 1, 2048, 256, 256, MC_GATES_STD, MC_LAYOUT_BNSD, 205);
    cases[nc++] = mc_case_make(1, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 1, 1, 17, 3, 5, MC_GATES_NORMAL, MC_LAYOUT_BNSD, 206);

    struct CMUnitTest tests[8];
    memset(tests, 0, sizeof tests);
    for (int k = 0; k < nc; k++) {
        tests[k].name = cases[k].name;
        tests[k].test_func = test_cross;
        tests[k].teardown_func = case_teardown;
        tests[k].initial_state = &cases[k];
    }
    const char *filter = getenv("MLSTM_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    int rc = _cmocka_run_group_tests("cross_backend", tests, (size_t)nc, NULL, NULL);
    for (int b = 0; b < g_n; b++)
        mlstm_context_destroy(g_ctx[b]);
    return rc;
}
