/* OpenCL backend, kernel programs: the embedded .cl sources (one lookup table), the tile choice per
 * (direction, DQK, DV, device limits), the build-options string, and the per-context program cache keyed
 * by that string. A failed build returns MLSTM_ERR_KERNEL_BUILD with the build log as the last error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cl_internal.h"

#include "kernels_cl/common.cl.h"
#include "kernels_cl/fwd.cl.h"
#include "kernels_cl/bwd.cl.h"
#include "kernels_cl/materialized.cl.h"

const char *mlstm_cl_source(const char *name, size_t *len)
{
    static const struct { const char *name; const unsigned char *text; size_t size; } table[] = {
        {"common", mlstm_cl_common, sizeof mlstm_cl_common},
        {"fwd", mlstm_cl_fwd, sizeof mlstm_cl_fwd},
        {"bwd", mlstm_cl_bwd, sizeof mlstm_cl_bwd},
        {"materialized", mlstm_cl_materialized, sizeof mlstm_cl_materialized},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; ++i)
        if (strcmp(table[i].name, name) == 0) {
            *len = table[i].size - 1; /* without the terminating NUL */
            return (const char *)table[i].text;
        }
    *len = 0;
    return NULL;
}

int mlstm_cl_load_source(mlstm_cl_ctx *cx, const char *name, const char **text, size_t *len, char **owned)
{
    *owned = NULL;
    if (!cx->kernel_dir[0]) {
        *text = mlstm_cl_source(name, len);
        return *text ? MLSTM_OK
                     : mlstm_cl_fail(cx, MLSTM_ERR_INTERNAL, "OpenCL kernel source '%s' missing from the library", name);
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/%s.cl", cx->kernel_dir, name);
    FILE *fp = fopen(path, "rb");
    long size = -1;
    if (fp && fseek(fp, 0, SEEK_END) == 0)
        size = ftell(fp);
    char *buf = (fp && size >= 0 && fseek(fp, 0, SEEK_SET) == 0) ? malloc((size_t)size + 1) : NULL;
    size_t got = buf ? fread(buf, 1, (size_t)size, fp) : 0;
    if (fp)
        fclose(fp);
    if (!buf || got != (size_t)size) {
        free(buf);
        return mlstm_cl_fail(cx, MLSTM_ERR_KERNEL_BUILD, "cannot read OpenCL kernel source %s "
                             "(MLSTM_OPENCL_KERNEL_DIR)", path);
    }
    buf[got] = '\0';
    *text = buf;
    *len = got;
    *owned = buf;
    return MLSTM_OK;
}

static const char *const kernel_names[2][MLSTM_CL_MAX_KERNELS] = {
    {"mlstm_fwd_kernel", NULL, NULL, NULL},
    {"mlstm_bwd_prep_kernel", "mlstm_bwd_dkdv_kernel", "mlstm_bwd_dq_kernel", "mlstm_bwd_gates_kernel"},
};

/* Candidate tiles {block, rows, cols, dchunk, rchunk}, best first, for the larger head dimension dmax.
 * Per-work-item f32 registers: forward RR*RC (scores) + RR*NV (h accumulator); backward 2*RR*RC + RR*(NQK + NV)
 * (dk and dv accumulators), with RR = block/rows, RC = block/cols, NV = ceil(DV/cols). GPUs: measured on an
 * H200 through NVIDIA's OpenCL (B=1, NH=8, S=8192): 64 x 64 tiles on 16 x 8 work-items beat 16 x 16 by 10-20%
 * up to D = 128 (forward 2.39 vs 2.66 ms at D=64, 4.48 vs 5.72 ms at D=128; fwd+bwd 11.1 vs 12.3 ms and 23.4 vs
 * 24.9 ms); 16 x 16 work-items and narrower tiles above, within 48 KiB of local memory. CPUs (PoCL): one row per
 * work-item and 4 columns ran fastest (S=1000, D=64: fwd+bwd 0.16 s vs 0.34 s with 16 x 16). */
static int tile_candidates(int direction, int dmax, int cpu, mlstm_cl_tiles *out)
{
    static const mlstm_cl_tiles cpu_tiles = {64, 64, 4, 32, 16};
    static const mlstm_cl_tiles t128 = {64, 16, 8, 32, 16}, fwd256 = {64, 16, 16, 32, 8},
                                fwd512 = {32, 16, 16, 32, 8}, bwd256 = {32, 16, 16, 32, 16},
                                bwd512 = {16, 16, 16, 32, 8};
    static const mlstm_cl_tiles small1 = {32, 16, 16, 16, 8}, small2 = {16, 8, 8, 16, 4};
    int n = 0;
    if (cpu) /* registers do not matter there: private arrays live in memory anyway */
        out[n++] = cpu_tiles;
    else if (direction == MLSTM_CL_FWD)
        out[n++] = dmax <= 128 ? t128 : dmax <= 256 ? fwd256 : fwd512;
    else
        out[n++] = dmax <= 128 ? t128 : dmax <= 256 ? bwd256 : bwd512;
    out[n++] = small1; /* fallbacks for small local memories or work-group limits */
    out[n++] = small2;
    return n;
}

static int pow2_at_least(int x)
{
    int p = 1;
    while (p < x) p <<= 1;
    return p;
}

/* Local memory (bytes) the larger kernel of a direction declares with these tiles. */
static size_t local_bytes(int direction, const mlstm_cl_tiles *t, int dqk, int dv)
{
    const size_t blkp = (size_t)t->block + 1, nt = (size_t)t->rows * t->cols;
    const size_t dqkp = (size_t)((dqk + t->cols - 1) / t->cols) * t->cols;
    const size_t dvp = (size_t)((dv + t->cols - 1) / t->cols) * t->cols;
    const size_t common = 2 * (size_t)t->dchunk * blkp + (size_t)t->block * blkp;
    size_t floats;
    if (direction == MLSTM_CL_FWD) {
        floats = common + (size_t)t->rchunk * dvp + 4 * (size_t)t->block + 2;
    } else {
        floats = common + (size_t)t->rchunk * (dqkp > dvp ? dqkp : dvp) + 8 * (size_t)t->block + 4;
        if (2 * nt > floats)
            floats = 2 * nt; /* the gates kernel */
    }
    return floats * 4;
}

static void release_program(mlstm_cl_program *pr)
{
    for (int i = 0; i < pr->n_kernels; ++i)
        if (pr->kernels[i])
            clReleaseKernel(pr->kernels[i]);
    if (pr->program)
        clReleaseProgram(pr->program);
    free(pr);
}

void mlstm_cl_release_programs(mlstm_cl_ctx *cx)
{
    while (cx->programs) {
        mlstm_cl_program *next = cx->programs->next;
        release_program(cx->programs);
        cx->programs = next;
    }
}

/* Builds one program; MLSTM_OK, MLSTM_ERR_UNSUPPORTED when the built kernels do not fit the device with
 * these tiles (the caller tries the next candidate), or an error. */
static int build(mlstm_cl_ctx *cx, int direction, mlstm_cl_program *pr)
{
    size_t lens[2] = {0, 0};
    const char *srcs[2] = {NULL, NULL};
    char *owned[2] = {NULL, NULL};
    int st = mlstm_cl_load_source(cx, "common", &srcs[0], &lens[0], &owned[0]);
    if (st == MLSTM_OK)
        st = mlstm_cl_load_source(cx, direction == MLSTM_CL_FWD ? "fwd" : "bwd", &srcs[1], &lens[1], &owned[1]);
    if (st != MLSTM_OK) {
        free(owned[0]);
        return st;
    }
    cl_int err;
    pr->program = clCreateProgramWithSource(cx->context, 2, srcs, lens, &err);
    free(owned[0]);
    free(owned[1]);
    if (err != CL_SUCCESS)
        return mlstm_cl_fail(cx, mlstm_cl_status(err), "clCreateProgramWithSource failed: %s (%d)",
                             mlstm_cl_error_name(err), err);
    err = clBuildProgram(pr->program, 1, &cx->device, pr->options, NULL, NULL);
    if (err != CL_SUCCESS) {
        size_t log_len = 0;
        char *log = NULL;
        if (clGetProgramBuildInfo(pr->program, cx->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &log_len) == CL_SUCCESS &&
            (log = malloc(log_len + 1)) != NULL) {
            if (clGetProgramBuildInfo(pr->program, cx->device, CL_PROGRAM_BUILD_LOG, log_len, log, NULL) != CL_SUCCESS)
                log_len = 0;
            log[log_len] = '\0';
        }
        st = mlstm_cl_fail(cx, MLSTM_ERR_KERNEL_BUILD, "clBuildProgram(%s) failed: %s (%d); options: %s\n%s",
                               direction == MLSTM_CL_FWD ? "fwd" : "bwd", mlstm_cl_error_name(err), err,
                               pr->options, log ? log : "(no build log)");
        free(log);
        return st;
    }
    const size_t nt = (size_t)pr->tiles.rows * pr->tiles.cols;
    for (int i = 0; i < MLSTM_CL_MAX_KERNELS && kernel_names[direction][i]; ++i) {
        const char *name = kernel_names[direction][i];
        pr->names[i] = name;
        pr->kernels[i] = clCreateKernel(pr->program, name, &err);
        if (err != CL_SUCCESS)
            return mlstm_cl_fail(cx, mlstm_cl_status(err), "clCreateKernel(%s) failed: %s (%d)", name,
                                 mlstm_cl_error_name(err), err);
        pr->n_kernels = i + 1;
        size_t wg = 0;
        cl_ulong lmem = 0;
        err = clGetKernelWorkGroupInfo(pr->kernels[i], cx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
        if (err == CL_SUCCESS)
            err = clGetKernelWorkGroupInfo(pr->kernels[i], cx->device, CL_KERNEL_LOCAL_MEM_SIZE, sizeof lmem, &lmem,
                                           NULL);
        if (err != CL_SUCCESS)
            return mlstm_cl_fail(cx, mlstm_cl_status(err), "clGetKernelWorkGroupInfo(%s) failed: %s (%d)", name,
                                 mlstm_cl_error_name(err), err);
        if (strcmp(name, "mlstm_bwd_prep_kernel") != 0 && (wg < nt || lmem > cx->local_mem))
            return mlstm_cl_fail(cx, MLSTM_ERR_UNSUPPORTED,
                                 "%s with options %s needs %zu work-items and %llu bytes of local memory; the device "
                                 "allows %zu and %llu", name, pr->options, nt, (unsigned long long)lmem, wg,
                                 (unsigned long long)cx->local_mem);
    }
    return MLSTM_OK;
}

int mlstm_cl_get_program(mlstm_cl_ctx *cx, int direction, const mlstm_params *p, const mlstm_cl_program **out)
{
    /* GPUs get programs specialised to the exact head dimensions; CPUs, where every build costs seconds,
     * one program per dtype and direction serving all head dimensions up to the largest (runtime bounds). */
    const int exact_dims = !cx->generic_dims;
    const int dqk = exact_dims ? (int)p->dqk : MLSTM_MAX_HEAD_DIM, dv = exact_dims ? (int)p->dv : MLSTM_MAX_HEAD_DIM;
    char request[96];
    snprintf(request, sizeof request, "%s dtype=%d dqk=%d dv=%d", direction == MLSTM_CL_FWD ? "fwd" : "bwd", p->dtype,
             dqk, dv);
    for (mlstm_cl_program *pr = cx->programs; pr; pr = pr->next)
        if (strcmp(pr->request, request) == 0) {
            *out = pr;
            return MLSTM_OK;
        }

    mlstm_cl_tiles cand[4];
    const int n = tile_candidates(direction, dqk > dv ? dqk : dv, cx->generic_dims, cand);
    int st = MLSTM_ERR_UNSUPPORTED, tried = 0;
    for (int i = 0; i < n; ++i) {
        mlstm_cl_tiles t = cand[i];
        const int dc = pow2_at_least(dqk > dv ? dqk : dv); /* no wider than the head dims need */
        if (t.dchunk > dc)
            t.dchunk = dc;
        if ((size_t)t.rows * t.cols > cx->max_wg || local_bytes(direction, &t, dqk, dv) > cx->local_mem)
            continue;
        tried = 1;
        mlstm_cl_program *pr = calloc(1, sizeof *pr);
        if (!pr)
            return mlstm_cl_fail(cx, MLSTM_ERR_OUT_OF_MEMORY, "out of host memory");
        snprintf(pr->request, sizeof pr->request, "%s", request);
        pr->tiles = t;
        pr->direction = direction;
        snprintf(pr->options, sizeof pr->options,
                 "-cl-std=CL1.2 -DMLSTM_M_FLOOR=((float)%.9g) -DMLSTM_DTYPE=%d -DMLSTM_DQK=%d -DMLSTM_DV=%d -DMLSTM_EXACT_DIMS=%d -DMLSTM_BLOCK=%d "
                 "-DMLSTM_WG_ROWS=%d -DMLSTM_WG_COLS=%d -DMLSTM_DCHUNK=%d -DMLSTM_RCHUNK=%d",
                 (double)MLSTM_M_FLOOR, p->dtype, dqk, dv, exact_dims, t.block, t.rows, t.cols, t.dchunk, t.rchunk);
        for (mlstm_cl_program *o = cx->programs; o; o = o->next) /* same binary under another request */
            if (o->direction == direction && strcmp(o->options, pr->options) == 0) {
                free(pr);
                *out = o;
                return MLSTM_OK;
            }
        st = build(cx, direction, pr);
        if (st == MLSTM_OK) {
            pr->next = cx->programs;
            cx->programs = pr;
            *out = pr;
            return MLSTM_OK;
        }
        release_program(pr);
        if (st != MLSTM_ERR_UNSUPPORTED)
            return st;
    }
    if (!tried)
        mlstm_cl_fail(cx, st, "no tile configuration fits the device's %llu bytes of local memory and %zu work-items",
                      (unsigned long long)cx->local_mem, cx->max_wg);
    return st;
}
