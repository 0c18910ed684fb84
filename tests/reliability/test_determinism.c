/* Determinism (cmocka): for every compiled backend that finds a device (options.backend set explicitly; a
 * backend without one is skipped with its reason printed), the same inputs give bitwise-identical outputs (h, m,
 * n and every gradient) across repeated runs on one context, across the host and device-buffer paths, and
 * across contexts. Shapes span several sequence tiles so that any order-dependent reduction would show. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mlstm.h"
#include "rel_util.h"

typedef struct config {
    const char *name;
    int64_t B, NH, S, DQK, DV;
    int dtype, grad, layout; /* layout: 0 contiguous, 1 (B, S, NH, D), 2 padded rows */
    int gates;
} config;

static const config g_configs[] = {
    {"f32/exact/B2_NH2_S150_DQK3_DV5", 2, 2, 150, 3, 5, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 0, REL_GATES_STD},
    {"bf16/detached/B1_NH2_S150_DQK3_DV5/bsnd", 1, 2, 150, 3, 5, MLSTM_DTYPE_BF16, MLSTM_GRAD_NORMALIZER_DETACHED, 1,
     REL_GATES_NORMAL},
    {"f16/exact/B1_NH1_S200_DQK3_DV5/padded", 1, 1, 200, 3, 5, MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, 2, REL_GATES_STD},
    {"f32/exact/B1_NH2_S130_DQK64_DV64", 1, 2, 130, 64, 64, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 0, REL_GATES_NORMAL},
};
#define NCONFIG (sizeof g_configs / sizeof g_configs[0])

typedef struct entry {
    const char *backend;
    const config *cfg;
    char name[160];
} entry;

static void make_desc(const config *c, mlstm_desc *d)
{
    mlstm_desc_init(d);
    d->batch = c->B;
    d->heads = c->NH;
    d->seq_len = c->S;
    d->dqk = c->DQK;
    d->dv = c->DV;
    d->dtype = c->dtype;
    d->grad_mode = c->grad;
    for (int t = 0; t < REL_NT; t++) {
        int64_t dim = rel_tensor_dim(d, t);
        if (c->layout == 1)
            d->layout[t] = (mlstm_layout){c->S * c->NH * dim, dim, c->NH * dim};
        else if (c->layout == 2)
            d->layout[t] = (mlstm_layout){c->NH * c->S * (dim + 3) + 7, c->S * (dim + 3) + 1, dim + 3};
    }
}

static void test_bitwise_repeatable(void **state)
{
    const entry *e = *state;
    mlstm_desc d;
    make_desc(e->cfg, &d);
    char why[1024], msg[256];
    mlstm_context *a = NULL, *b = NULL;
    if (rel_context_open(e->backend, &a, why, sizeof why) != MLSTM_OK)
        fail_msg("context A on %s: %s", e->backend, why);
    if (rel_context_open(e->backend, &b, why, sizeof why) != MLSTM_OK)
        fail_msg("context B on %s: %s", e->backend, why);

    rel_problem ref, run;
    assert_int_equal(rel_problem_init(&ref, &d, 4242, e->cfg->gates, 1.0), 0);
    int st = rel_run_fwd_bwd(a, &ref);
    if (st != MLSTM_OK)
        fail_msg("first run: %s: %s", mlstm_status_string(st), mlstm_context_last_error(a));
    static const char *const how[] = {"a second run on the same context", "a third run on the same context",
                                      "the device-buffer path on the same context", "another context",
                                      "another context's device-buffer path"};
    for (int k = 0; k < 5; k++) {
        assert_int_equal(rel_problem_init(&run, &d, 4242, e->cfg->gates, 1.0), 0);
        mlstm_context *c = k < 3 ? a : b;
        st = (k == 2 || k == 4) ? rel_run_fwd_bwd_device(c, &run) : rel_run_fwd_bwd(c, &run);
        if (st != MLSTM_OK)
            fail_msg("%s: %s: %s", how[k], mlstm_status_string(st), mlstm_context_last_error(c));
        if (!rel_outputs_identical(&ref, &run, 1, msg, sizeof msg))
            fail_msg("%s is not bitwise identical to the first run: %s", how[k], msg);
        rel_problem_free(&run);
    }
    /* the outputs are meaningful (not all zero / not NaN), else "identical" would prove little */
    size_t nonzero = 0;
    for (size_t x = 0; x < ref.bytes[MLSTM_TENSOR_H]; x++)
        nonzero += ((unsigned char *)ref.t[MLSTM_TENSOR_H])[x] != 0;
    assert_true(nonzero > 0);
    assert_int_equal(rel_count_nonfinite(&ref, MLSTM_TENSOR_H), 0);
    assert_int_equal(rel_count_nonfinite(&ref, MLSTM_TENSOR_DF), 0);
    rel_problem_free(&ref);
    mlstm_context_destroy(a);
    mlstm_context_destroy(b);
}

int main(void)
{
    entry *entries = calloc((size_t)mlstm_backend_count() * NCONFIG + 1, sizeof *entries);
    struct CMUnitTest *tests = calloc((size_t)mlstm_backend_count() * NCONFIG + 1, sizeof *tests);
    if (!entries || !tests)
        return 1;
    size_t n = 0;
    int with_device = 0;
    for (int k = 0; k < mlstm_backend_count(); k++) {
        const char *name = mlstm_backend_name_at(k);
        mlstm_context *ctx = NULL;
        char why[1024];
        int st = rel_context_open(name, &ctx, why, sizeof why);
        if (st != MLSTM_OK) {
            printf("SKIP backend %s: %s\n", name, why);
            continue;
        }
        printf("determinism: backend %s, device %s\n", name, mlstm_context_device_name(ctx));
        mlstm_context_destroy(ctx);
        with_device++;
        for (size_t c = 0; c < NCONFIG; c++) {
            entry *e = &entries[n];
            e->backend = name;
            e->cfg = &g_configs[c];
            snprintf(e->name, sizeof e->name, "determinism/%s/%s", name, g_configs[c].name);
            tests[n].name = e->name;
            tests[n].test_func = test_bitwise_repeatable;
            tests[n].initial_state = e;
            n++;
        }
    }
    if (with_device == 0)
        rel_skip("test_determinism", "none of the %d compiled backends finds a device", mlstm_backend_count());
    const char *filter = getenv("MLSTM_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    int rc = _cmocka_run_group_tests("determinism", tests, n, NULL, NULL);
    free(tests);
    free(entries);
    return rc;
}
