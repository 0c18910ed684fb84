/* ABI test: a program built against the 0.1 header (tests/abi/mlstm_0_1.h: the desc with 14 layouts, 408 bytes;
 * test_abi_old.c) runs against this library. Its desc must be accepted (the missing tail defaulted, nothing read
 * or written beyond it, canaries intact) and give bitwise the results of the same problem described with the
 * current header. Skips (77) when no backend has a device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mlstm.h"
#include "test_abi.h"

static mlstm_context *g_ctx;

static void test_old_desc(void **state)
{
    (void)state;
    const abi_problem pr = {1, 2, 7, 5, 3, MLSTM_DTYPE_F32, MLSTM_TENSOR_K, {7 * 2 * 5, 5, 2 * 5}};
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = pr.batch; d.heads = pr.heads; d.seq_len = pr.seq_len; d.dqk = pr.dqk; d.dv = pr.dv;
    d.dtype = pr.dtype;
    d.layout[pr.strided_role] = (mlstm_layout){pr.strided.batch, pr.strided.head, pr.strided.seq};
    float *in[5], *out_new[3], *out_old[3];
    size_t ext[MLSTM_TENSOR_COUNT];
    for (int t = 0; t <= MLSTM_TENSOR_N; t++) {
        ext[t] = mlstm_tensor_extent(&d, t);
        assert_true(ext[t] > 0);
    }
    srand(7);
    for (int t = 0; t < 5; t++) {
        in[t] = malloc(ext[t] * sizeof(float));
        assert_non_null(in[t]);
        for (size_t x = 0; x < ext[t]; x++)
            in[t][x] = (float)rand() / (float)RAND_MAX - 0.5f + (t == MLSTM_TENSOR_F ? 3.0f : 0.0f);
    }
    for (int t = 0; t < 3; t++) {
        out_new[t] = calloc(ext[MLSTM_TENSOR_H + t], sizeof(float));
        out_old[t] = calloc(ext[MLSTM_TENSOR_H + t], sizeof(float));
        assert_non_null(out_new[t]);
        assert_non_null(out_old[t]);
    }
    int st = mlstm_parallel_fwd_host(g_ctx, &d, in[0], in[1], in[2], in[3], in[4], out_new[0], out_new[1], out_new[2]);
    if (st != MLSTM_OK)
        fail_msg("current desc: %s (%s)", mlstm_status_string(st), mlstm_context_last_error(g_ctx));
    abi_old_report rep;
    memset(&rep, 0, sizeof rep);
    st = abi_old_fwd(g_ctx, &pr, in[0], in[1], in[2], in[3], in[4], out_old[0], out_old[1], out_old[2], &rep);
    if (st != MLSTM_OK)
        fail_msg("0.1 desc: %s (%s)", mlstm_status_string(st), mlstm_context_last_error(g_ctx));
    assert_int_equal(rep.struct_size, MLSTM_DESC_SIZE_V1);
    assert_true(rep.struct_size < sizeof(mlstm_desc)); /* the test means something only while the desc has grown */
    assert_true(rep.init_kept_canaries);
    assert_true(rep.call_kept_canaries);
    assert_true(rep.desc_unchanged);
    assert_int_equal(rep.extent_q, ext[MLSTM_TENSOR_Q]);
    assert_int_equal(rep.plan_status, MLSTM_OK);
    for (int t = 0; t < 3; t++) {
        assert_memory_equal(out_new[t], out_old[t], ext[MLSTM_TENSOR_H + t] * sizeof(float));
        free(out_new[t]);
        free(out_old[t]);
    }
    for (int t = 0; t < 5; t++)
        free(in[t]);
}

int main(void)
{
    int st = mlstm_context_create(NULL, &g_ctx);
    if (st != MLSTM_OK) {
        printf("[ SKIP ] abi: no context could be created: %s: %s\n", mlstm_status_string(st),
               mlstm_last_error_global());
        return 77;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_old_desc)};
    int failed = cmocka_run_group_tests_name("abi", tests, NULL, NULL);
    mlstm_context_destroy(g_ctx);
    return failed;
}
