/* CUDA manners (needs an NVIDIA GPU; skips with exit code 77 and the reason otherwise): every libmlstm call leaves
 * the calling thread's current device as it found it, a stream of another device is refused by
 * mlstm_context_set_cuda_stream, limits are MLSTM_ERR_UNSUPPORTED from the CUDA backend's supports(), and calls
 * whose head-dim slices run on two streams can be captured into a CUDA graph, and f32 head-dim slices take the class
 * whose kernels are fastest per column. The
 * device-restore and foreign-stream checks need two GPUs (a context on device 0, the caller on device 1); with one,
 * those parts say so and check what one GPU can. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

/* bf16 bits of x (round to nearest even; finite x) */
static uint16_t bf16_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Calls whose head dims run as column slices, which the CUDA backend spreads over the call's stream and a side
 * stream of the context (DQK 256 / DV 512: two D = 256 slices; 512/512: the D = 512 class's two 256-column slices,
 * on GPUs that have it), captured into a CUDA graph: the capture ends cleanly (the side stream forked from and
 * joined back into the captured stream) and the replay writes what the same calls wrote eagerly, bit for bit. The
 * eager calls come first: they allocate the context's workspace, which a capture may not. */
static void test_graph_capture_slices(void **state)
{
    (void)state;
    static const int shapes[2][2] = {{256, 512}, {512, 512}};
    enum { B = 1, NH = 2, S = 160, NIN = 6, NOUT = 8 };
    for (int sh = 0; sh < 2; sh++) {
        const int dqk = shapes[sh][0], dv = shapes[sh][1];
        mlstm_context *ctx = cuda_context(0);
        cudaStream_t own = NULL;
        assert_int_equal(cudaSetDevice(0), cudaSuccess);
        assert_int_equal(cudaStreamCreateWithFlags(&own, cudaStreamNonBlocking), cudaSuccess);
        assert_int_equal(mlstm_context_set_cuda_stream(ctx, (void *)own), MLSTM_OK);
        mlstm_desc d;
        mlstm_desc_init(&d);
        d.batch = B; d.heads = NH; d.seq_len = S; d.dqk = dqk; d.dv = dv; d.dtype = MLSTM_DTYPE_BF16;
        const size_t nqk = (size_t)B * NH * S * dqk, nv = (size_t)B * NH * S * dv, ng = (size_t)B * NH * S;
        /* roles and element counts: the inputs, then the outputs (a set for the eager calls, one for the graph) */
        const int in_role[NIN] = {MLSTM_TENSOR_Q, MLSTM_TENSOR_K, MLSTM_TENSOR_V, MLSTM_TENSOR_I, MLSTM_TENSOR_F,
                                  MLSTM_TENSOR_DH};
        const size_t in_n[NIN] = {nqk, nqk, nv, ng, ng, nv};
        const int out_role[NOUT] = {MLSTM_TENSOR_H, MLSTM_TENSOR_M, MLSTM_TENSOR_N, MLSTM_TENSOR_DQ,
                                    MLSTM_TENSOR_DK, MLSTM_TENSOR_DV, MLSTM_TENSOR_DI, MLSTM_TENSOR_DF};
        const size_t out_n[NOUT] = {nv, ng, ng, nqk, nqk, nv, ng, ng};
        mlstm_tensor_pack pk[2];
        mlstm_tensor_pack_init(&pk[0]);
        mlstm_tensor_pack_init(&pk[1]);
        uint32_t seed = 12345u;
        for (int t = 0; t < NIN; t++) {
            const int gate = in_role[t] == MLSTM_TENSOR_I || in_role[t] == MLSTM_TENSOR_F;
            const size_t es = gate ? 4 : 2;
            unsigned char *host = malloc(in_n[t] * es);
            assert_non_null(host);
            for (size_t x = 0; x < in_n[t]; x++) {
                seed = seed * 1664525u + 1013904223u;
                const float r = (float)(seed >> 8) / 16777216.0f - 0.5f; /* [-0.5, 0.5) */
                if (gate) {
                    const float g = in_role[t] == MLSTM_TENSOR_F ? 3.0f + 2.0f * r : 2.0f * r;
                    memcpy(host + x * 4, &g, 4);
                } else {
                    const uint16_t b = bf16_bits(2.0f * r);
                    memcpy(host + x * 2, &b, 2);
                }
            }
            mlstm_buffer *buf = NULL;
            assert_int_equal(mlstm_buffer_create(ctx, gate ? MLSTM_DTYPE_F32 : MLSTM_DTYPE_BF16, in_n[t], &buf), MLSTM_OK);
            assert_int_equal(mlstm_buffer_write(buf, 0, in_n[t], host), MLSTM_OK);
            free(host);
            pk[0].tensors[in_role[t]] = pk[1].tensors[in_role[t]] = buf;
        }
        for (int p = 0; p < 2; p++)
            for (int t = 0; t < NOUT; t++) {
                const int f32 = t == 1 || t == 2 || t >= 6; /* m, n, di, df */
                assert_int_equal(mlstm_buffer_create(ctx, f32 ? MLSTM_DTYPE_F32 : MLSTM_DTYPE_BF16, out_n[t],
                                                     &pk[p].tensors[out_role[t]]),
                                 MLSTM_OK);
            }
        /* eagerly */
        assert_int_equal(mlstm_parallel_fwd_pack(ctx, &d, &pk[0], NULL), MLSTM_OK);
        char kernels[256];
        snprintf(kernels, sizeof kernels, "%s", mlstm_context_last_kernels(ctx));
        assert_int_equal(mlstm_parallel_bwd_pack(ctx, &d, &pk[0], NULL), MLSTM_OK);
        assert_int_equal(mlstm_synchronize(ctx), MLSTM_OK);
        /* captured, then replayed */
        cudaGraph_t graph = NULL;
        cudaGraphExec_t exec = NULL;
        assert_int_equal(cudaStreamBeginCapture(own, cudaStreamCaptureModeThreadLocal), cudaSuccess);
        const int fst = mlstm_parallel_fwd_pack(ctx, &d, &pk[1], NULL);
        const int bst = mlstm_parallel_bwd_pack(ctx, &d, &pk[1], NULL);
        const cudaError_t ce = cudaStreamEndCapture(own, &graph);
        if (fst != MLSTM_OK || bst != MLSTM_OK || ce != cudaSuccess)
            fail_msg("%d/%d capture: fwd %s, bwd %s (%s), end of capture %s", dqk, dv, mlstm_status_string(fst),
                     mlstm_status_string(bst), mlstm_context_last_error(ctx), cudaGetErrorName(ce));
        assert_int_equal(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
        assert_int_equal(cudaGraphLaunch(exec, own), cudaSuccess);
        assert_int_equal(cudaStreamSynchronize(own), cudaSuccess);
        for (int t = 0; t < NOUT; t++) {
            const int f32 = t == 1 || t == 2 || t >= 6;
            const size_t bytes = out_n[t] * (f32 ? 4 : 2);
            unsigned char *a = malloc(bytes), *g = malloc(bytes);
            assert_non_null(a); assert_non_null(g);
            assert_int_equal(mlstm_buffer_read(pk[0].tensors[out_role[t]], 0, out_n[t], a), MLSTM_OK);
            assert_int_equal(mlstm_buffer_read(pk[1].tensors[out_role[t]], 0, out_n[t], g), MLSTM_OK);
            if (memcmp(a, g, bytes) != 0)
                fail_msg("%d/%d (%s): the graph's output %d differs from the eager call's", dqk, dv, kernels, t);
            free(a); free(g);
        }
        printf("[ CASE ] graph capture %d/%d bf16 (%s): replay equals the eager calls\n", dqk, dv, kernels);
        assert_int_equal(cudaGraphExecDestroy(exec), cudaSuccess);
        assert_int_equal(cudaGraphDestroy(graph), cudaSuccess);
        for (int t = 0; t < NIN; t++) mlstm_buffer_destroy(pk[0].tensors[in_role[t]]);
        for (int p = 0; p < 2; p++)
            for (int t = 0; t < NOUT; t++) mlstm_buffer_destroy(pk[p].tensors[out_role[t]]);
        mlstm_context_destroy(ctx);
        assert_int_equal(cudaStreamDestroy(own), cudaSuccess);
    }
}

/* The class an f32 head-dim call is sliced onto follows the kernels' rate per column (head_dims.cu): where the D = 128
 * f32 kernels are the split-f16 wgmma ones and the D = 256 ones are not (sm_90a), 128/256 runs as two D = 128
 * slices; elsewhere both classes cost the same per column and the tie goes to one D = 256 call. The traces of the
 * aligned 128/128 and 256/256 calls say which kernels the device runs. */
static void test_f32_slice_class(void **state)
{
    (void)state;
    enum { S = 64, DMAX = 256 };
    mlstm_context *ctx = cuda_context(0);
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = 1; d.heads = 1; d.seq_len = S; d.dtype = MLSTM_DTYPE_F32; d.algo = MLSTM_ALGO_FUSED;
    float *x = calloc((size_t)4 * S * DMAX, sizeof(float)); /* q, k, v, h */
    float ig[S], fg[S], m[S], n[S];
    assert_non_null(x);
    for (int t = 0; t < 3 * S * DMAX; t++) x[t] = (float)((t * 7) % 13 - 6) * 0.0625f;
    for (int t = 0; t < S; t++) ig[t] = 0.0f, fg[t] = 3.0f;
    static const int dims[3][2] = {{128, 128}, {256, 256}, {128, 256}};
    char k[3][256];
    for (int c = 0; c < 3; c++) {
        d.dqk = dims[c][0]; d.dv = dims[c][1];
        assert_int_equal(mlstm_parallel_fwd_host(ctx, &d, x, x + S * DMAX, x + 2 * S * DMAX, ig, fg, x + 3 * S * DMAX, m, n),
                         MLSTM_OK);
        snprintf(k[c], sizeof k[c], "%s", mlstm_context_last_kernels(ctx));
    }
    const int wg128 = strstr(k[0], "wg32") != NULL, wg256 = strstr(k[1], "wg32") != NULL;
    const int tc128 = strstr(k[0], "simt") == NULL, tc256 = strstr(k[1], "simt") == NULL;
    /* no f32 tensor-core class at all (MLSTM_CUDA_F32_TC=0): the SIMT kernels, unsliced */
    const char *want = tc128 && (!tc256 || (wg128 && !wg256)) ? "headdim.d128x2+" : tc256 ? "headdim.d256x1+" : "fwd.simt";
    if (strncmp(k[2], want, strlen(want)) != 0)
        fail_msg("f32 128/256 ran \"%s\", expected %s... (128/128: \"%s\", 256/256: \"%s\")", k[2], want, k[0], k[1]);
    printf("[ CASE ] f32 128/256: %s (128/128: %s, 256/256: %s)\n", k[2], k[0], k[1]);
    free(x);
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
        cmocka_unit_test(test_graph_capture_slices),
        cmocka_unit_test(test_f32_slice_class),
    };
    return cmocka_run_group_tests_name("cuda_manners", tests, NULL, NULL);
}
