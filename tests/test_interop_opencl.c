/* OpenCL interop with a program that owns its OpenCL objects: it creates the cl_context, queue and cl_mem buffers
 * itself, makes a libmlstm context on them (mlstm_context_create_opencl), runs forward and backward on wrapped
 * cl_mem buffers and compares bitwise with the library-allocated host path. Also: the getters, the checks of a
 * wrapped cl_mem (another cl_context, too small, an image-free host pointer, NULL), of the queue and device, two
 * wraps of one cl_mem seen as one memory, and that libmlstm releases exactly the references it took. Skips (77)
 * without an OpenCL device. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#define CL_TARGET_OPENCL_VERSION 120
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <CL/cl.h>
#include <cmocka.h>

#include "mlstm.h"
#include "mlstm_opencl.h"

static cl_platform_id g_platform;
static cl_device_id g_device;

#define B 1
#define NH 2
#define S 9
#define DQK 5
#define DV 3

static cl_uint refcount_context(cl_context c)
{
    cl_uint n = 0;
    assert_int_equal(clGetContextInfo(c, CL_CONTEXT_REFERENCE_COUNT, sizeof n, &n, NULL), CL_SUCCESS);
    return n;
}

static cl_uint refcount_queue(cl_command_queue q)
{
    cl_uint n = 0;
    assert_int_equal(clGetCommandQueueInfo(q, CL_QUEUE_REFERENCE_COUNT, sizeof n, &n, NULL), CL_SUCCESS);
    return n;
}

/* A reference count once the implementation's own deferred releases are done: PoCL frees a released cl_mem (and
 * the context reference it holds) and retires finished commands (and the queue reference each holds)
 * asynchronously, so under load a count can lag for a moment. Waits up to 5 s for it to reach want; a reference
 * libmlstm leaked never goes away, so the check still fails then. */
static cl_uint settled_refcount(cl_uint (*count)(void *), void *obj, cl_command_queue q, cl_uint want)
{
    clFinish(q);
    cl_uint n = count(obj);
    for (int i = 0; i < 500 && n != want; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        n = count(obj);
    }
    return n;
}
static cl_uint count_context(void *c) { return refcount_context((cl_context)c); }
static cl_uint count_queue(void *q) { return refcount_queue((cl_command_queue)q); }

static void make_desc(mlstm_desc *d)
{
    mlstm_desc_init(d);
    d->batch = B; d->heads = NH; d->seq_len = S; d->dqk = DQK; d->dv = DV;
}

/* Host inputs of every tensor (outputs zero). */
static float *host_tensor(const mlstm_desc *d, int t, int input)
{
    const size_t n = mlstm_tensor_extent(d, t);
    float *x = calloc(n, sizeof *x);
    assert_non_null(x);
    for (size_t e = 0; input && e < n; e++)
        x[e] = (float)((e * 37 + (size_t)t * 11) % 17) / 17.0f - 0.5f + (t == MLSTM_TENSOR_F ? 3.0f : 0.0f);
    return x;
}

static void test_own_objects(void **state)
{
    (void)state;
    cl_int err;
    cl_context clctx = clCreateContext(NULL, 1, &g_device, NULL, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_command_queue queue = clCreateCommandQueue(clctx, g_device, 0, &err);
    assert_int_equal(err, CL_SUCCESS);
    const cl_uint ctx_refs = refcount_context(clctx), queue_refs = refcount_queue(queue);

    mlstm_context *ctx = NULL;
    int st = mlstm_context_create_opencl((struct _cl_context *)clctx, (struct _cl_device_id *)g_device,
                                         (struct _cl_command_queue *)queue, &ctx);
    if (st != MLSTM_OK)
        fail_msg("mlstm_context_create_opencl: %s: %s", mlstm_status_string(st), mlstm_last_error_global());
    struct _cl_context *gc = NULL;
    struct _cl_device_id *gd = NULL;
    struct _cl_command_queue *gq = NULL;
    assert_int_equal(mlstm_context_get_opencl(ctx, &gc, &gd, &gq), MLSTM_OK);
    assert_ptr_equal(gc, clctx);
    assert_ptr_equal(gd, g_device);
    assert_ptr_equal(gq, queue);
    assert_int_equal(mlstm_context_get_opencl(ctx, NULL, NULL, NULL), MLSTM_OK);
    assert_int_equal(mlstm_context_get_opencl(NULL, &gc, NULL, NULL), MLSTM_ERR_INVALID_ARGUMENT);

    mlstm_desc d;
    make_desc(&d);
    float *host[MLSTM_TENSOR_COUNT];
    cl_mem mem[MLSTM_TENSOR_COUNT];
    mlstm_tensor_pack pk;
    mlstm_tensor_pack_init(&pk);
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        const int input = t <= MLSTM_TENSOR_F || t == MLSTM_TENSOR_DH;
        host[t] = host_tensor(&d, t, input);
        const size_t bytes = mlstm_tensor_extent(&d, t) * sizeof(float);
        mem[t] = clCreateBuffer(clctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, bytes, host[t], &err);
        assert_int_equal(err, CL_SUCCESS);
        st = mlstm_buffer_wrap_opencl(ctx, (struct _cl_mem *)mem[t], MLSTM_DTYPE_F32, mlstm_tensor_extent(&d, t),
                                      &pk.tensors[t]);
        if (st != MLSTM_OK)
            fail_msg("wrap of tensor %d: %s (%s)", t, mlstm_status_string(st), mlstm_context_last_error(ctx));
    }
    /* forward on the caller's buffers, then the backward on the forward's h, m, n */
    assert_int_equal(mlstm_parallel_fwd_pack(ctx, &d, &pk, NULL), MLSTM_OK);
    assert_int_equal(mlstm_parallel_bwd_pack(ctx, &d, &pk, NULL), MLSTM_OK);
    assert_int_equal(clFinish(queue), CL_SUCCESS); /* the work went to the caller's queue */
    float *got[MLSTM_TENSOR_COUNT];
    for (int t = MLSTM_TENSOR_H; t < MLSTM_TENSOR_COUNT; t++) {
        got[t] = host_tensor(&d, t, 0);
        assert_int_equal(clEnqueueReadBuffer(queue, mem[t], CL_TRUE, 0, mlstm_tensor_extent(&d, t) * sizeof(float),
                                             got[t], 0, NULL, NULL), CL_SUCCESS);
    }
    /* the library-allocated path on the same context */
    float *ref[MLSTM_TENSOR_COUNT];
    for (int t = MLSTM_TENSOR_H; t < MLSTM_TENSOR_COUNT; t++)
        ref[t] = host_tensor(&d, t, 0);
    assert_int_equal(mlstm_parallel_fwd_host(ctx, &d, host[0], host[1], host[2], host[3], host[4], ref[5], ref[6],
                                             ref[7]), MLSTM_OK);
    assert_int_equal(mlstm_parallel_bwd_host(ctx, &d, host[0], host[1], host[2], host[3], host[4], ref[5], ref[6],
                                             ref[7], host[8], ref[9], ref[10], ref[11], ref[12], ref[13]), MLSTM_OK);
    for (int t = MLSTM_TENSOR_H; t < MLSTM_TENSOR_COUNT; t++) {
        if (t != MLSTM_TENSOR_DH)
            assert_memory_equal(got[t], ref[t], mlstm_tensor_extent(&d, t) * sizeof(float));
        free(got[t]);
        free(ref[t]);
    }

    /* wrapping checks */
    mlstm_buffer *w = (mlstm_buffer *)(uintptr_t)1;
    st = mlstm_buffer_wrap_opencl(ctx, (struct _cl_mem *)mem[0], MLSTM_DTYPE_F32, mlstm_tensor_extent(&d, 0) + 1, &w);
    assert_int_equal(st, MLSTM_ERR_BUFFER_TOO_SMALL);
    assert_null(w);
    cl_context other = clCreateContext(NULL, 1, &g_device, NULL, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_mem foreign = clCreateBuffer(other, CL_MEM_READ_WRITE, 256, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    assert_int_equal(mlstm_buffer_wrap_opencl(ctx, (struct _cl_mem *)foreign, MLSTM_DTYPE_F32, 4, &w),
                     MLSTM_ERR_CONTEXT_MISMATCH);
    assert_non_null(strstr(mlstm_context_last_error(ctx), "another cl_context"));
    void *fake = calloc(1, 4096); /* a host block posing as a cl_mem */
    assert_non_null(fake);
    assert_int_equal(mlstm_buffer_wrap_opencl(ctx, (struct _cl_mem *)fake, MLSTM_DTYPE_F32, 4, &w),
                     MLSTM_ERR_INVALID_ARGUMENT);
    memset(fake, 0x5a, 4096);
    assert_int_equal(mlstm_buffer_wrap_opencl(ctx, (struct _cl_mem *)fake, MLSTM_DTYPE_F32, 4, &w),
                     MLSTM_ERR_INVALID_ARGUMENT);
    free(fake);
    assert_int_equal(mlstm_buffer_wrap_opencl(ctx, NULL, MLSTM_DTYPE_F32, 4, &w), MLSTM_ERR_INVALID_ARGUMENT);
    assert_null(w);

    /* one cl_mem wrapped twice is one memory: h overlapping q through the two wraps is rejected */
    cl_mem shared = clCreateBuffer(clctx, CL_MEM_READ_WRITE, 4096, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    mlstm_buffer *wq = NULL, *wh = NULL, *wh_view = NULL;
    assert_int_equal(mlstm_buffer_wrap_opencl(ctx, (struct _cl_mem *)shared, MLSTM_DTYPE_F32, 1024, &wq), MLSTM_OK);
    assert_int_equal(mlstm_buffer_wrap_opencl(ctx, (struct _cl_mem *)shared, MLSTM_DTYPE_F32, 1024, &wh), MLSTM_OK);
    assert_int_equal(mlstm_buffer_create_view(wh, 6, 1000, &wh_view), MLSTM_OK);
    mlstm_tensor_pack alias = pk;
    alias.tensors[MLSTM_TENSOR_Q] = wq;
    alias.tensors[MLSTM_TENSOR_H] = wh_view;
    assert_int_equal(mlstm_parallel_fwd_pack(ctx, &d, &alias, NULL), MLSTM_ERR_BAD_LAYOUT);
    assert_non_null(strstr(mlstm_context_last_error(ctx), "overlaps"));

    mlstm_context_destroy(ctx); /* destroys the wraps too; the cl_mem objects stay the caller's */
    for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
        assert_int_equal(clReleaseMemObject(mem[t]), CL_SUCCESS);
        free(host[t]);
    }
    clReleaseMemObject(shared);
    clReleaseMemObject(foreign);
    clReleaseContext(other);
    /* libmlstm released exactly the references it took */
    assert_int_equal(settled_refcount(count_context, clctx, queue, ctx_refs), ctx_refs);
    assert_int_equal(settled_refcount(count_queue, queue, queue, queue_refs), queue_refs);
    clReleaseCommandQueue(queue);
    clReleaseContext(clctx);
}

/* Bad objects at creation: clear errors, no context. */
static void test_create_errors(void **state)
{
    (void)state;
    cl_int err;
    cl_context a = clCreateContext(NULL, 1, &g_device, NULL, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_context b = clCreateContext(NULL, 1, &g_device, NULL, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_command_queue qb = clCreateCommandQueue(b, g_device, 0, &err);
    assert_int_equal(err, CL_SUCCESS);
    mlstm_context *ctx = (mlstm_context *)(uintptr_t)1;
    assert_int_equal(mlstm_context_create_opencl(NULL, (struct _cl_device_id *)g_device, NULL, &ctx),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_context_create_opencl((struct _cl_context *)a, NULL, NULL, &ctx),
                     MLSTM_ERR_INVALID_ARGUMENT);
    assert_int_equal(mlstm_context_create_opencl((struct _cl_context *)a, (struct _cl_device_id *)g_device, NULL,
                                                 NULL), MLSTM_ERR_INVALID_ARGUMENT);
    ctx = (mlstm_context *)(uintptr_t)1;
    assert_int_equal(mlstm_context_create_opencl((struct _cl_context *)a, (struct _cl_device_id *)g_device,
                                                 (struct _cl_command_queue *)qb, &ctx), MLSTM_ERR_INVALID_ARGUMENT);
    assert_null(ctx);
    assert_non_null(strstr(mlstm_last_error_global(), "another cl_context"));
    cl_command_queue ooo = clCreateCommandQueue(a, g_device, CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE, &err);
    if (err == CL_SUCCESS) {
        assert_int_equal(mlstm_context_create_opencl((struct _cl_context *)a, (struct _cl_device_id *)g_device,
                                                     (struct _cl_command_queue *)ooo, &ctx), MLSTM_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(mlstm_last_error_global(), "out of order"));
        clReleaseCommandQueue(ooo);
    } else {
        printf("  note: the device has no out-of-order queues (%d): that refusal is not exercised\n", err);
    }
    /* queue NULL: libmlstm makes its own queue on the caller's context */
    const cl_uint refs = refcount_context(a);
    assert_int_equal(mlstm_context_create_opencl((struct _cl_context *)a, (struct _cl_device_id *)g_device, NULL, &ctx),
                     MLSTM_OK);
    struct _cl_command_queue *own = NULL;
    assert_int_equal(mlstm_context_get_opencl(ctx, NULL, NULL, &own), MLSTM_OK);
    assert_non_null(own);
    float q[4] = {0}, h[4];
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = d.heads = d.seq_len = 1; d.dqk = 4; d.dv = 4;
    float g[1] = {0}, m[1], n[1];
    assert_int_equal(mlstm_parallel_fwd_host(ctx, &d, q, q, q, g, g, h, m, n), MLSTM_OK);
    mlstm_context_destroy(ctx);
    assert_int_equal(refcount_context(a), refs);
    clReleaseCommandQueue(qb);
    clReleaseContext(a);
    clReleaseContext(b);
}

int main(void)
{
    cl_uint np = 0;
    if (clGetPlatformIDs(1, &g_platform, &np) != CL_SUCCESS || np == 0 ||
        clGetDeviceIDs(g_platform, CL_DEVICE_TYPE_ALL, 1, &g_device, NULL) != CL_SUCCESS) {
        printf("[ SKIP ] interop_opencl: no OpenCL platform with a device\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_own_objects),
        cmocka_unit_test(test_create_errors),
    };
    return cmocka_run_group_tests_name("interop_opencl", tests, NULL, NULL);
}
