/* OpenCL backend, the materialised algorithm: q k^T, C v and the backward's products as CLBlast SGEMMs (strided
 * batched over b*NH) on f32 copies of the tensors in a workspace, with the gate scan, the element kernels and the
 * row kernels of kernels_cl/materialized.cl between them. Every dtype computes in f32 (CLBlast's HGEMM would
 * accumulate in f16, and it has no bf16): the S x S intermediates are f32, so the result is at least as accurate
 * as the fused kernels'. Built without CLBlast, the algorithm reports MLSTM_ERR_UNSUPPORTED. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cl_internal.h"
#include "mat_layout.h"
#ifdef MLSTM_HAVE_CLBLAST
#include <clblast_c.h>
#endif

/* The kernels of kernels_cl/materialized.cl, in the order of mat_kernel_names. */
enum { K_PACK, K_STORE, K_SCAN, K_FWD_TILE, K_FWD_ROWS, K_BWD_ROWS, K_BWD_TILE, K_BWD_GATES, K_COUNT };

/* Per-context state: one program per storage dtype, and the context's own workspace. */
struct mlstm_cl_mat {
    cl_program program[4];           /* indexed by mlstm_dtype */
    cl_kernel kernels[4][K_COUNT];
    cl_mem ws;                       /* the context's workspace (when the caller passes none), or NULL */
    size_t ws_bytes;
};

int mlstm_cl_mat_workspace_size(mlstm_cl_ctx *cx, const mlstm_params *p, int backward, uint64_t *bytes)
{
    *bytes = 0;
#ifndef MLSTM_HAVE_CLBLAST
    (void)p;
    (void)backward;
    return mlstm_cl_fail(cx, MLSTM_ERR_UNSUPPORTED, "the materialised algorithm needs CLBlast; this library was "
                         "built without it (CMake option MLSTM_ENABLE_CLBLAST, Debian package libclblast-dev)");
#else
    mlstm_mat_layout_t L;
    if (!mlstm_mat_layout(p, backward, 0, &L))
        return mlstm_cl_fail(cx, MLSTM_ERR_SIZE_OVERFLOW, "the materialised algorithm's workspace for B=%lld NH=%lld "
                             "S=%lld overflows 64-bit sizes", (long long)p->batch, (long long)p->heads,
                             (long long)p->seq_len);
    *bytes = L.total * 4;
    return MLSTM_OK;
#endif
}

void mlstm_cl_mat_release(mlstm_cl_ctx *cx)
{
    struct mlstm_cl_mat *mt = cx->mat;
    if (!mt)
        return;
    for (int d = 0; d < 4; ++d) {
        for (int k = 0; k < K_COUNT; ++k)
            if (mt->kernels[d][k])
                clReleaseKernel(mt->kernels[d][k]);
        if (mt->program[d])
            clReleaseProgram(mt->program[d]);
    }
    if (mt->ws)
        clReleaseMemObject(mt->ws);
    free(mt);
    cx->mat = NULL;
}

#ifdef MLSTM_HAVE_CLBLAST

static const char *const mat_kernel_names[K_COUNT] = {
    "mlstm_mat_pack", "mlstm_mat_store", "mlstm_mat_scan", "mlstm_mat_fwd_tile",
    "mlstm_mat_fwd_rows", "mlstm_mat_bwd_rows", "mlstm_mat_bwd_tile", "mlstm_mat_bwd_gates"};
#define MAT_ROWS 8   /* MROWS */
#define MAT_SCAN 64  /* MSCAN */
#define MAT_ROW_WG 64 /* work-group size of the one-work-item-per-element/row kernels */

/* The program for p's dtype: common.cl + materialized.cl, built on first use. */
static int get_kernels(mlstm_cl_ctx *cx, int dtype, cl_kernel **out)
{
    struct mlstm_cl_mat *mt = cx->mat;
    if (mt->program[dtype]) {
        *out = mt->kernels[dtype];
        return MLSTM_OK;
    }
    const char *srcs[2] = {NULL, NULL};
    size_t lens[2] = {0, 0};
    char *owned[2] = {NULL, NULL};
    int st = mlstm_cl_load_source(cx, "common", &srcs[0], &lens[0], &owned[0]);
    if (st == MLSTM_OK)
        st = mlstm_cl_load_source(cx, "materialized", &srcs[1], &lens[1], &owned[1]);
    if (st != MLSTM_OK) {
        free(owned[0]);
        return st;
    }
    cl_int err;
    cl_program prog = clCreateProgramWithSource(cx->context, 2, srcs, lens, &err);
    free(owned[0]);
    free(owned[1]);
    if (err != CL_SUCCESS)
        return mlstm_cl_fail(cx, mlstm_cl_status(err), "clCreateProgramWithSource(materialized) failed: %s (%d)",
                             mlstm_cl_error_name(err), err);
    char options[128];
    snprintf(options, sizeof options, "-cl-std=CL1.2 -DMLSTM_M_FLOOR=((float)%.9g) -DMLSTM_DTYPE=%d",
             (double)MLSTM_M_FLOOR, dtype);
    err = clBuildProgram(prog, 1, &cx->device, options, NULL, NULL);
    if (err != CL_SUCCESS) {
        size_t log_len = 0;
        char *log = NULL;
        if (clGetProgramBuildInfo(prog, cx->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &log_len) == CL_SUCCESS &&
            (log = malloc(log_len + 1)) != NULL) {
            if (clGetProgramBuildInfo(prog, cx->device, CL_PROGRAM_BUILD_LOG, log_len, log, NULL) != CL_SUCCESS)
                log_len = 0;
            log[log_len] = '\0';
        }
        st = mlstm_cl_fail(cx, MLSTM_ERR_KERNEL_BUILD, "clBuildProgram(materialized) failed: %s (%d); options: %s\n%s",
                           mlstm_cl_error_name(err), err, options, log ? log : "(no build log)");
        free(log);
        clReleaseProgram(prog);
        return st;
    }
    for (int k = 0; k < K_COUNT; ++k) {
        mt->kernels[dtype][k] = clCreateKernel(prog, mat_kernel_names[k], &err);
        if (err != CL_SUCCESS) {
            for (int x = 0; x < k; ++x) {
                clReleaseKernel(mt->kernels[dtype][x]);
                mt->kernels[dtype][x] = NULL;
            }
            clReleaseProgram(prog);
            return mlstm_cl_fail(cx, mlstm_cl_status(err), "clCreateKernel(%s) failed: %s (%d)", mat_kernel_names[k],
                                 mlstm_cl_error_name(err), err);
        }
    }
    mt->program[dtype] = prog;
    *out = mt->kernels[dtype];
    return MLSTM_OK;
}

/* One launch: its arguments set in order (the first failure kept), then enqueued. */
typedef struct {
    mlstm_cl_ctx *cx;
    cl_kernel kernel;
    const char *name;
    cl_uint index;
    cl_int err;
} launch;

static launch begin(mlstm_cl_ctx *cx, cl_kernel *ks, int which)
{
    launch l = {cx, ks[which], mat_kernel_names[which], 0, CL_SUCCESS};
    return l;
}
static void put(launch *l, size_t size, const void *value)
{
    if (l->err == CL_SUCCESS)
        l->err = clSetKernelArg(l->kernel, l->index, size, value);
    l->index++;
}
static void put_long(launch *l, cl_long v) { put(l, sizeof v, &v); }
static void put_int(launch *l, cl_int v) { put(l, sizeof v, &v); }
static void put_float(launch *l, float v) { put(l, sizeof v, &v); }
static void put_mem(launch *l, cl_mem m) { put(l, sizeof m, &m); }
/* The workspace buffer, then element offsets into it. */
static void put_ws(launch *l, cl_mem ws, const uint64_t *offs, size_t n)
{
    put_mem(l, ws);
    for (size_t i = 0; i < n; ++i)
        put_long(l, (cl_long)offs[i]);
}
#define PUT_WS(l, ws, ...) \
    put_ws(l, ws, (const uint64_t[]){__VA_ARGS__}, sizeof((const uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t))
/* A tensor: its cl_mem, then long4 (offset, stride_b, stride_h, stride_s), as kernels_cl/common.cl's HEAD_BASE. */
static void put_tensor(launch *l, const mlstm_tensor_arg *t)
{
    cl_long4 v;
    v.s[0] = (cl_long)t->offset;
    v.s[1] = t->stride_b;
    v.s[2] = t->stride_h;
    v.s[3] = t->stride_s;
    put_mem(l, (cl_mem)t->mem);
    put(l, sizeof v, &v);
}

static int run(launch *l, cl_uint dims, const size_t *global, const size_t *local)
{
    mlstm_cl_ctx *cx = l->cx;
    if (l->err != CL_SUCCESS)
        return mlstm_cl_fail(cx, MLSTM_ERR_LAUNCH, "clSetKernelArg(%s, %u) failed: %s (%d)", l->name, l->index - 1,
                             mlstm_cl_error_name(l->err), l->err);
    const cl_int err = clEnqueueNDRangeKernel(cx->queue, l->kernel, dims, NULL, global, local, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        return MLSTM_OK;
    const int st = mlstm_cl_status(err);
    return mlstm_cl_fail(cx, st == MLSTM_ERR_OUT_OF_MEMORY ? st : MLSTM_ERR_LAUNCH,
                         "clEnqueueNDRangeKernel(%s) failed: %s (%d)", l->name, mlstm_cl_error_name(err), err);
}

/* 1-D launch over n work-items (rounded up to the work-group size). */
static int run_1d(launch *l, uint64_t n, size_t wg)
{
    const size_t global = (size_t)((n + wg - 1) / wg * wg);
    return run(l, 1, &global, &wg);
}

/* The call's workspace: the caller's, or the context's own (grown to `bytes` when smaller). *base is the element
 * offset of its start within *mem. */
static int workspace(mlstm_cl_ctx *cx, const mlstm_params *p, uint64_t bytes, cl_mem *mem, uint64_t *base)
{
    if (p->ws_mem) {
        *mem = (cl_mem)p->ws_mem;
        *base = p->ws_offset / 4;
        return MLSTM_OK;
    }
    struct mlstm_cl_mat *mt = cx->mat;
    *base = 0;
    if (mt->ws && mt->ws_bytes >= bytes) {
        *mem = mt->ws;
        return MLSTM_OK;
    }
    if (bytes > cx->max_alloc)
        return mlstm_cl_fail(cx, MLSTM_ERR_OUT_OF_MEMORY,
                             "the materialised algorithm needs a workspace of %llu bytes (%.1f GiB) for this shape; "
                             "the device allows buffers of at most %llu bytes (CL_DEVICE_MAX_MEM_ALLOC_SIZE)",
                             (unsigned long long)bytes, (double)bytes / 1073741824.0,
                             (unsigned long long)cx->max_alloc);
    if (mt->ws) { /* the runtime frees it once the work queued on it is done */
        clReleaseMemObject(mt->ws);
        mt->ws = NULL;
        mt->ws_bytes = 0;
    }
    cl_int err;
    cl_mem m = clCreateBuffer(cx->context, CL_MEM_READ_WRITE, (size_t)bytes, NULL, &err);
    if (err == CL_SUCCESS) { /* touch it, so that a lazy allocation fails here and not in a kernel */
        const cl_uchar zero = 0;
        err = clEnqueueFillBuffer(cx->queue, m, &zero, 1, 0, 1, 0, NULL, NULL);
        if (err == CL_SUCCESS)
            err = clFinish(cx->queue);
        if (err != CL_SUCCESS)
            clReleaseMemObject(m);
    }
    if (err != CL_SUCCESS)
        return mlstm_cl_fail(cx, MLSTM_ERR_OUT_OF_MEMORY,
                             "allocating the materialised algorithm's workspace of %llu bytes (%.1f GiB) failed: %s "
                             "(%d)", (unsigned long long)bytes, (double)bytes / 1073741824.0,
                             mlstm_cl_error_name(err), err);
    mt->ws = m;
    mt->ws_bytes = (size_t)bytes;
    *mem = m;
    return MLSTM_OK;
}

/* One strided-batched SGEMM, row-major: C[g] = alpha op(A[g]) op(B[g]) for g < batch. Operands are workspace
 * arrays at element offsets a, b, c with leading dimensions lda, ldb, ldc and batch strides sa, sb, sc. */
typedef struct { cl_mem mem; uint64_t a, lda, sa, b, ldb, sb, c, ldc, sc, batch; } gemm_ops;

static int sgemm(mlstm_cl_ctx *cx, const char *what, const gemm_ops *o, int ta, int tb, uint64_t m, uint64_t n,
                 uint64_t k, float alpha)
{
    const CLBlastStatusCode rc = CLBlastSgemmStridedBatched(
        CLBlastLayoutRowMajor, ta ? CLBlastTransposeYes : CLBlastTransposeNo,
        tb ? CLBlastTransposeYes : CLBlastTransposeNo, (size_t)m, (size_t)n, (size_t)k, alpha, o->mem, (size_t)o->a,
        (size_t)o->lda, (size_t)o->sa, o->mem, (size_t)o->b, (size_t)o->ldb, (size_t)o->sb, 0.0f, o->mem,
        (size_t)o->c, (size_t)o->ldc, (size_t)o->sc, (size_t)o->batch, &cx->queue, NULL);
    if (rc == CLBlastSuccess)
        return MLSTM_OK;
    const int st = (rc == CLBlastTempBufferAllocFailure || rc == CLBlastOpenCLOutOfResources ||
                    rc == CLBlastOpenCLOutOfHostMemory) ? MLSTM_ERR_OUT_OF_MEMORY
                   : rc == CLBlastOpenCLBuildProgramFailure ? MLSTM_ERR_KERNEL_BUILD : MLSTM_ERR_DEVICE;
    return mlstm_cl_fail(cx, st, "CLBlastSgemmStridedBatched (%s: %llu x %llu x %llu, batch %llu) failed with CLBlast "
                         "status %d", what, (unsigned long long)m, (unsigned long long)n, (unsigned long long)k,
                         (unsigned long long)o->batch, (int)rc);
}

/* Everything a direction needs before its launches: kernels, layout, workspace, and the element-index bound
 * (CLBlast's kernels index buffers with 32-bit ints). */
typedef struct {
    cl_kernel *k;
    mlstm_mat_layout_t L;
    cl_mem ws;
    uint64_t G;
    cl_int S, nt;
    cl_long NH;
} mat_call;

int mlstm_cl_mat_build(mlstm_cl_ctx *cx, int dtype)
{
    if (!cx->mat && !(cx->mat = calloc(1, sizeof *cx->mat)))
        return mlstm_cl_fail(cx, MLSTM_ERR_OUT_OF_MEMORY, "out of host memory");
    cl_kernel *k;
    return get_kernels(cx, dtype, &k);
}

static int prepare(mlstm_cl_ctx *cx, const mlstm_params *p, int backward, mat_call *c)
{
    if (!cx->mat && !(cx->mat = calloc(1, sizeof *cx->mat)))
        return mlstm_cl_fail(cx, MLSTM_ERR_OUT_OF_MEMORY, "out of host memory");
    if (p->seq_len > INT_MAX - MLSTM_MAT_TILE_EDGE)
        return mlstm_cl_fail(cx, MLSTM_ERR_UNSUPPORTED, "seq_len %lld exceeds the materialised algorithm's limit",
                             (long long)p->seq_len);
    int st = get_kernels(cx, p->dtype, &c->k);
    if (st != MLSTM_OK)
        return st;
    if (!mlstm_mat_layout(p, backward, 0, &c->L))
        return mlstm_cl_fail(cx, MLSTM_ERR_SIZE_OVERFLOW, "the materialised algorithm's workspace overflows");
    uint64_t base;
    st = workspace(cx, p, c->L.total * 4, &c->ws, &base);
    if (st != MLSTM_OK)
        return st;
    if (base + c->L.total > (uint64_t)INT_MAX)
        return mlstm_cl_fail(cx, MLSTM_ERR_UNSUPPORTED,
                             "the materialised algorithm on OpenCL addresses at most 2^31 f32 elements of workspace "
                             "(CLBlast indexes with 32-bit ints); this shape needs %llu from element %llu on",
                             (unsigned long long)c->L.total, (unsigned long long)base);
    uint64_t *const offs[] = {&c->L.fh, &c->L.fl, &c->L.r0, &c->L.r1, &c->L.r2, &c->L.rh, &c->L.rl, &c->L.ch,
                              &c->L.cl, &c->L.qf, &c->L.kf, &c->L.vf, &c->L.xf, &c->L.dq, &c->L.dk, &c->L.dv,
                              &c->L.sm, &c->L.pm};
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; ++i)
        *offs[i] += base;
    c->G = (uint64_t)p->batch * (uint64_t)p->heads;
    c->S = (cl_int)p->seq_len;
    c->nt = (cl_int)((p->seq_len + MLSTM_MAT_TILE_EDGE - 1) / MLSTM_MAT_TILE_EDGE);
    c->NH = p->heads;
    return MLSTM_OK;
}

/* Packs tensor t (dim D) into the f32 workspace array at off, or (store) writes the array back into t, divided
 * row by row by the workspace array at den (den >= 0). */
static int pack(mlstm_cl_ctx *cx, const mat_call *c, const mlstm_tensor_arg *t, uint64_t off, int64_t D)
{
    launch l = begin(cx, c->k, K_PACK);
    const uint64_t total = c->G * (uint64_t)c->S * (uint64_t)D;
    put_tensor(&l, t);
    put_mem(&l, c->ws);
    put_long(&l, (cl_long)off);
    put_int(&l, c->S);
    put_long(&l, c->NH);
    put_int(&l, (cl_int)D);
    put_long(&l, (cl_long)total);
    return run_1d(&l, total, MAT_ROW_WG);
}

static int store(mlstm_cl_ctx *cx, const mat_call *c, uint64_t off, int64_t den, const mlstm_tensor_arg *t, int64_t D)
{
    launch l = begin(cx, c->k, K_STORE);
    const uint64_t total = c->G * (uint64_t)c->S * (uint64_t)D;
    put_mem(&l, c->ws);
    put_long(&l, (cl_long)off);
    put_mem(&l, c->ws);
    put_long(&l, (cl_long)den);
    put_tensor(&l, t);
    put_int(&l, c->S);
    put_long(&l, c->NH);
    put_int(&l, (cl_int)D);
    put_long(&l, (cl_long)total);
    return run_1d(&l, total, MAT_ROW_WG);
}

/* The gate scan: F into (fh, fl); in the forward (m_off >= 0) also m. */
static int scan(mlstm_cl_ctx *cx, const mat_call *c, const mlstm_params *p, int64_t m_off)
{
    launch l = begin(cx, c->k, K_SCAN);
    put_tensor(&l, &p->t[MLSTM_TENSOR_F]);
    put_tensor(&l, &p->t[MLSTM_TENSOR_I]);
    put_tensor(&l, &p->t[MLSTM_TENSOR_M]);
    put_mem(&l, c->ws);
    put_long(&l, (cl_long)c->L.fh);
    put_long(&l, (cl_long)c->L.fl);
    put_long(&l, (cl_long)m_off);
    put_int(&l, c->S);
    put_long(&l, c->NH);
    return run_1d(&l, c->G * MAT_SCAN, MAT_SCAN);
}

/* The element kernels' 3-D launch: (tile columns * MT, tile rows * MROWS, G). */
static int run_tiles(launch *l, const mat_call *c)
{
    const size_t global[3] = {(size_t)c->nt * MLSTM_MAT_TILE_EDGE, (size_t)c->nt * MAT_ROWS, (size_t)c->G};
    const size_t local[3] = {MLSTM_MAT_TILE_EDGE, MAT_ROWS, 1};
    return run(l, 3, global, local);
}

static gemm_ops ops_for(const mat_call *c, uint64_t a, uint64_t lda, uint64_t sa, uint64_t b, uint64_t ldb,
                        uint64_t sb, uint64_t cc, uint64_t ldc, uint64_t sc)
{
    gemm_ops o = {c->ws, a, lda, sa, b, ldb, sb, cc, ldc, sc, c->G};
    return o;
}

/* Both directions start alike: q, k, v packed to f32, the gate scan (m_off >= 0: with m), S x S scores q k^T. */
static int scores(mlstm_cl_ctx *cx, const mat_call *c, const mlstm_params *p, int64_t m_off)
{
    const uint64_t S = (uint64_t)c->S, dqk = (uint64_t)p->dqk;
    int st;
    if ((st = pack(cx, c, &p->t[MLSTM_TENSOR_Q], c->L.qf, p->dqk)) != MLSTM_OK ||
        (st = pack(cx, c, &p->t[MLSTM_TENSOR_K], c->L.kf, p->dqk)) != MLSTM_OK ||
        (st = pack(cx, c, &p->t[MLSTM_TENSOR_V], c->L.vf, p->dv)) != MLSTM_OK || (st = scan(cx, c, p, m_off)) != MLSTM_OK)
        return st;
    const gemm_ops o = ops_for(c, c->L.qf, dqk, S * dqk, c->L.kf, dqk, S * dqk, c->L.sm, S, S * S);
    return sgemm(cx, "q k^T", &o, 0, 1, S, S, dqk, 1.0f);
}

int mlstm_cl_mat_fwd(mlstm_cl_ctx *cx, const mlstm_params *p)
{
    mat_call c;
    int st = prepare(cx, p, 0, &c);
    if (st != MLSTM_OK)
        return st;
    const uint64_t S = (uint64_t)c.S, dv = (uint64_t)p->dv, rows = c.G * S;
    const mlstm_tensor_arg *t = p->t;
    if ((st = scores(cx, &c, p, (int64_t)c.L.r0)) != MLSTM_OK)
        return st;
    gemm_ops o;

    launch l = begin(cx, c.k, K_FWD_TILE);
    PUT_WS(&l, c.ws, c.L.sm, c.L.fh, c.L.fl, c.L.r0, c.L.rh, c.L.rl);
    put_tensor(&l, &t[MLSTM_TENSOR_I]);
    put_int(&l, c.S);
    put_int(&l, c.nt);
    put_long(&l, c.NH);
    put_float(&l, p->scale);
    if ((st = run_tiles(&l, &c)) != MLSTM_OK)
        return st;

    l = begin(cx, c.k, K_FWD_ROWS);
    PUT_WS(&l, c.ws, c.L.r0, c.L.rh, c.L.rl, c.L.r1);
    put_tensor(&l, &t[MLSTM_TENSOR_N]);
    put_int(&l, c.S);
    put_int(&l, c.nt);
    put_long(&l, c.NH);
    put_long(&l, (cl_long)rows);
    put_float(&l, p->eps);
    if ((st = run_1d(&l, rows, MAT_ROW_WG)) != MLSTM_OK)
        return st;

    o = ops_for(&c, c.L.sm, S, S * S, c.L.vf, dv, S * dv, c.L.xf, dv, S * dv);
    if ((st = sgemm(cx, "C v", &o, 0, 0, S, dv, S, 1.0f)) != MLSTM_OK)
        return st;
    return store(cx, &c, c.L.xf, (int64_t)c.L.r1, &t[MLSTM_TENSOR_H], p->dv);
}

int mlstm_cl_mat_bwd(mlstm_cl_ctx *cx, const mlstm_params *p)
{
    mat_call c;
    int st = prepare(cx, p, 1, &c);
    if (st != MLSTM_OK)
        return st;
    const uint64_t S = (uint64_t)c.S, dqk = (uint64_t)p->dqk, dv = (uint64_t)p->dv, rows = c.G * S;
    const mlstm_tensor_arg *t = p->t;
    if ((st = scores(cx, &c, p, -1)) != MLSTM_OK || (st = pack(cx, &c, &t[MLSTM_TENSOR_DH], c.L.xf, p->dv)) != MLSTM_OK)
        return st;

    launch l = begin(cx, c.k, K_BWD_ROWS);
    put_tensor(&l, &t[MLSTM_TENSOR_H]);
    put_tensor(&l, &t[MLSTM_TENSOR_DH]);
    put_tensor(&l, &t[MLSTM_TENSOR_M]);
    put_tensor(&l, &t[MLSTM_TENSOR_N]);
    PUT_WS(&l, c.ws, c.L.r0, c.L.r1, c.L.r2);
    put_int(&l, c.S);
    put_long(&l, c.NH);
    put_long(&l, (cl_long)rows);
    put_int(&l, (cl_int)p->dv);
    put_int(&l, p->grad_mode == MLSTM_GRAD_EXACT);
    put_float(&l, p->eps);
    if ((st = run_1d(&l, rows, MAT_ROW_WG)) != MLSTM_OK)
        return st;

    gemm_ops o = ops_for(&c, c.L.xf, dv, S * dv, c.L.vf, dv, S * dv, c.L.pm, S, S * S);
    if ((st = sgemm(cx, "dh v^T", &o, 0, 1, S, S, dv, 1.0f)) != MLSTM_OK)
        return st;

    l = begin(cx, c.k, K_BWD_TILE);
    PUT_WS(&l, c.ws, c.L.sm, c.L.pm, c.L.fh, c.L.fl, c.L.r0, c.L.r1, c.L.r2, c.L.rh, c.L.rl, c.L.ch, c.L.cl);
    put_tensor(&l, &t[MLSTM_TENSOR_I]);
    put_int(&l, c.S);
    put_int(&l, c.nt);
    put_long(&l, c.NH);
    put_float(&l, p->scale);
    if ((st = run_tiles(&l, &c)) != MLSTM_OK)
        return st;

    /* dq = scale P k, dk = scale P^T q, dv = (C / (|n| + eps))^T dh */
    o = ops_for(&c, c.L.pm, S, S * S, c.L.kf, dqk, S * dqk, c.L.dq, dqk, S * dqk);
    if ((st = sgemm(cx, "P k", &o, 0, 0, S, dqk, S, p->scale)) != MLSTM_OK)
        return st;
    o = ops_for(&c, c.L.pm, S, S * S, c.L.qf, dqk, S * dqk, c.L.dk, dqk, S * dqk);
    if ((st = sgemm(cx, "P^T q", &o, 1, 0, S, dqk, S, p->scale)) != MLSTM_OK)
        return st;
    o = ops_for(&c, c.L.sm, S, S * S, c.L.xf, dv, S * dv, c.L.dv, dv, S * dv);
    if ((st = sgemm(cx, "C^T dh", &o, 1, 0, S, dv, S, 1.0f)) != MLSTM_OK)
        return st;

    l = begin(cx, c.k, K_BWD_GATES);
    PUT_WS(&l, c.ws, c.L.rh, c.L.rl, c.L.ch, c.L.cl);
    put_tensor(&l, &t[MLSTM_TENSOR_F]);
    put_tensor(&l, &t[MLSTM_TENSOR_DI]);
    put_tensor(&l, &t[MLSTM_TENSOR_DF]);
    put_int(&l, c.S);
    put_int(&l, c.nt);
    put_long(&l, c.NH);
    if ((st = run_1d(&l, c.G * MAT_SCAN, MAT_SCAN)) != MLSTM_OK)
        return st;

    if ((st = store(cx, &c, c.L.dq, -1, &t[MLSTM_TENSOR_DQ], p->dqk)) != MLSTM_OK ||
        (st = store(cx, &c, c.L.dk, -1, &t[MLSTM_TENSOR_DK], p->dqk)) != MLSTM_OK)
        return st;
    return store(cx, &c, c.L.dv, -1, &t[MLSTM_TENSOR_DV], p->dv);
}

#else /* !MLSTM_HAVE_CLBLAST: the API never gets here (workspace_size reports UNSUPPORTED first) */

int mlstm_cl_mat_build(mlstm_cl_ctx *cx, int dtype)
{
    (void)dtype;
    return mlstm_cl_fail(cx, MLSTM_ERR_UNSUPPORTED, "the materialised algorithm needs CLBlast, which this build lacks");
}

int mlstm_cl_mat_fwd(mlstm_cl_ctx *cx, const mlstm_params *p)
{
    uint64_t b;
    return mlstm_cl_mat_workspace_size(cx, p, 0, &b);
}

int mlstm_cl_mat_bwd(mlstm_cl_ctx *cx, const mlstm_params *p)
{
    uint64_t b;
    return mlstm_cl_mat_workspace_size(cx, p, 1, &b);
}

#endif
