/* CUDA manners (needs an NVIDIA GPU; skips with exit code 77 and the reason otherwise): every libmlstm call leaves
 * the calling thread's current device as it found it, a stream of another device is refused by
 * mlstm_context_set_cuda_stream, and limits are MLSTM_ERR_UNSUPPORTED from the CUDA backend's supports(). The
 * device-restore and foreign-stream checks need two GPUs (a context on device 0, the caller on device 1); with one,
 * those parts say so and check what one GPU can. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <cuda_runtime_api.h>

#include "mlstm.h"
#include "mlstm_cuda.h"

static int g_ndev;

static mlstm_context *cuda_context(int device)
{
    mlstm_options o;
    mlstm_options_init(&o);
    o.backend = "cuda";
    o.device = device;
    mlstm_context *ctx = NULL;
    int st = mlstm_context_create(&o, &ctx);
    if (st != MLSTM_OK)
        fail_msg("CUDA context on device %d: %s: %s", device, mlstm_status_string(st), mlstm_last_error_global());
    return ctx;
}

static void expect_current(int want, const char *after)
{
    int dev = -1;
    assert_int_equal(cudaGetDevice(&dev), cudaSuccess);
    if (dev != want)
        fail_msg("after %s the current device is %d, the caller had %d", after, dev, want);
}

static void test_device_restored(void **state)
{
    (void)state;
    const int caller = g_ndev >= 2 ? 1 : 0;
    if (g_ndev < 2)
        printf("  note: one CUDA device: the caller's device equals the context's, so a call that failed to restore "
               "it would go unnoticed; run on two GPUs for the real check\n");
    assert_int_equal(cudaSetDevice(caller), cudaSuccess);
    mlstm_context *ctx = cuda_context(0);
    expect_current(caller, "mlstm_context_create");
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = 1; d.heads = 2; d.seq_len = 33; d.dqk = 64; d.dv = 64;
    static float x[2 * 33 * 64], g[2 * 33], h[2 * 33 * 64], m[2 * 33], n[2 * 33];
    assert_int_equal(mlstm_parallel_fwd_host(ctx, &d, x, x, x, g, g, h, m, n), MLSTM_OK);
    expect_current(caller, "mlstm_parallel_fwd_host");
    mlstm_buffer *b = NULL;
    assert_int_equal(mlstm_buffer_create(ctx, MLSTM_DTYPE_F32, 64, &b), MLSTM_OK);
    expect_current(caller, "mlstm_buffer_create");
    assert_int_equal(mlstm_buffer_write(b, 0, 64, x), MLSTM_OK);
    expect_current(caller, "mlstm_buffer_write");
    assert_int_equal(mlstm_buffer_read(b, 0, 64, h), MLSTM_OK);
    expect_current(caller, "mlstm_buffer_read");
    mlstm_plan *plan = NULL;
    assert_int_equal(mlstm_plan_create(ctx, &d, MLSTM_PLAN_FWD, &plan), MLSTM_OK);
    expect_current(caller, "mlstm_plan_create");
    assert_int_equal(mlstm_synchronize(ctx), MLSTM_OK);
    expect_current(caller, "mlstm_synchronize");
    mlstm_buffer_destroy(b);
    expect_current(caller, "mlstm_buffer_destroy");
    mlstm_plan_destroy(plan);
    mlstm_context_destroy(ctx);
    expect_current(caller, "mlstm_context_destroy");
}

static void test_stream_device(void **state)
{
    (void)state;
    mlstm_context *ctx = cuda_context(0);
    cudaStream_t own = NULL;
    assert_int_equal(cudaSetDevice(0), cudaSuccess);
    assert_int_equal(cudaStreamCreate(&own), cudaSuccess);
    assert_int_equal(mlstm_context_set_cuda_stream(ctx, (void *)own), MLSTM_OK);
    assert_int_equal(mlstm_context_set_cuda_stream(ctx, NULL), MLSTM_OK);
    assert_int_equal(mlstm_context_set_cuda_stream(ctx, (void *)cudaStreamPerThread), MLSTM_OK);
    if (g_ndev >= 2) {
        cudaStream_t foreign = NULL;
        assert_int_equal(cudaSetDevice(1), cudaSuccess);
        assert_int_equal(cudaStreamCreate(&foreign), cudaSuccess);
        assert_int_equal(mlstm_context_set_cuda_stream(ctx, (void *)foreign), MLSTM_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(mlstm_context_last_error(ctx), "device"));
        expect_current(1, "a refused mlstm_context_set_cuda_stream");
        assert_int_equal(cudaStreamDestroy(foreign), cudaSuccess);
    } else {
        printf("  note: one CUDA device: no stream of another device to refuse\n");
    }
    mlstm_context_destroy(ctx);
    assert_int_equal(cudaSetDevice(0), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(own), cudaSuccess);
}

static void test_supports(void **state)
{
    (void)state;
    mlstm_context *ctx = cuda_context(0);
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = 16; d.heads = 1; d.seq_len = INT32_MAX; d.dqk = 1; d.dv = 1;
    mlstm_plan *plan = NULL;
    assert_int_equal(mlstm_plan_create(ctx, &d, MLSTM_PLAN_FWD, &plan), MLSTM_ERR_UNSUPPORTED);
    assert_non_null(strstr(mlstm_context_last_error(ctx), "grids"));
    d.batch = 1; /* 2^31 positions of one head: within the grids */
    assert_int_equal(mlstm_plan_create(ctx, &d, MLSTM_PLAN_FWD, &plan), MLSTM_OK);
    mlstm_plan_destroy(plan);
    mlstm_context_destroy(ctx);
}

int main(void)
{
    cudaError_t e = cudaGetDeviceCount(&g_ndev);
    if (e != cudaSuccess || g_ndev == 0) {
        printf("[ SKIP ] cuda_manners: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorName(e) : "0 devices");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_restored),
        cmocka_unit_test(test_stream_device),
        cmocka_unit_test(test_supports),
    };
    return cmocka_run_group_tests_name("cuda_manners", tests, NULL, NULL);
}
