/* Benchmark of libmlstm through its public API only: times the forward and forward+backward passes on
 * the selected backend (MLSTM_BACKEND, default auto) for a list of shapes, warm-up then the median of N
 * runs, and prints ms and TFLOP/s (causal FLOPs: fwd 2*2*B*NH*S*S*D/2, fwd+bwd 3.5x; D = (DQK+DV)/2) as
 * a table and optionally CSV. --check also compares one run of each shape with the float64 reference. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mlstm.h"
#include "mlstm_ref.h"
#include "test_util.h"

typedef struct shape { long long b, nh, s, dqk, dv; } shape;

static const shape default_shapes[] = {
    {1, 8, 1024, 64, 64},  {1, 8, 4096, 64, 64},  {1, 8, 8192, 64, 64},
    {1, 8, 1024, 128, 128}, {1, 8, 4096, 128, 128}, {1, 8, 8192, 128, 128},
    {1, 8, 4096, 256, 256}, {1, 8, 8192, 256, 256}};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_mlstm [--dtype f32|f16|bf16|all] [--shapes B,NH,S,DQK,DV[;...]] [--iters N]\n"
            "                   [--warmup N] [--fwd-only] [--math ieee|tf32] [--csv FILE] [--check]\n"
            "                   [--algo auto|fused|materialized]\n"
            "  default shapes: the anchor shapes B=1 NH=8, S 1024..8192, DH 64/128/256 (use --shapes on a CPU).\n"
            "  --check: compare h and every gradient of one run per shape with the float64 reference\n"
            "           (slow for large shapes: O(S^2 D) on one CPU core); exit 1 on a contract violation.\n"
            "  --algo: desc.algo (materialized: the S x S matrices through cuBLAS / CLBlast)\n"
            "  --math tf32: desc.math_mode = MLSTM_MATH_TF32 (f32 products on TF32 tensor cores where the backend\n"
            "           offers it; --check then allows 5e-3, tests/tolerances.h's TF32 value).\n"
            "  MLSTM_CUDA_F32_TC=0 / =1: CUDA f32 forward on the SIMT path (the baseline) / on tensor cores.\n"
            "  The backend comes from MLSTM_BACKEND (auto|cuda|opencl), MLSTM_DEVICE, MLSTM_OPENCL_PLATFORM.\n");
}

#define CHECK_ST(call)                                                                                   \
    do {                                                                                                 \
        int st_ = (call);                                                                                \
        if (st_ != MLSTM_OK) {                                                                           \
            fprintf(stderr, "%s failed: %s: %s\n", #call, mlstm_status_string(st_),                      \
                    mlstm_context_last_error(ctx));                                                      \
            return st_;                                                                                  \
        }                                                                                                \
    } while (0)

typedef struct run_result { double fw_ms, fwbw_ms, err_max; int check_ok; } run_result;

static double tolerance(int dtype, int math_mode)
{
    if (dtype == MLSTM_DTYPE_F32)
        return math_mode == MLSTM_MATH_TF32 ? 5e-3 : 1e-5;
    return dtype == MLSTM_DTYPE_F16 ? 2e-3 : 1e-2;
}

/* Fills the storage array of tensor data (n elements) with x*sd + mean rounded to dtype; keeps doubles. */
static void fill(tu_rng *r, void *dst, double *ref, int dtype, size_t n, double mean, double sd)
{
    for (size_t e = 0; e < n; e++) {
        double x = tu_round_to_dtype(mean + sd * tu_rng_normal(r), dtype);
        tu_store(dst, dtype, e, x);
        if (ref)
            ref[e] = x;
    }
}

static int g_algo = MLSTM_ALGO_AUTO; /* --algo: desc.algo of every run */

static int bench_shape(mlstm_context *ctx, const shape *sh, int dtype, int math_mode, int iters, int warmup,
                       int fwd_only, int check, run_result *res)
{
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.math_mode = math_mode;
    d.algo = g_algo;
    d.batch = sh->b; d.heads = sh->nh; d.seq_len = sh->s; d.dqk = sh->dqk; d.dv = sh->dv; d.dtype = dtype;
    const size_t rows = (size_t)(sh->b * sh->nh * sh->s);
    const size_t nqk = rows * (size_t)sh->dqk, nv = rows * (size_t)sh->dv;
    const size_t es = mlstm_dtype_size(dtype);
    int st = MLSTM_OK;
    enum { NB = MLSTM_TENSOR_COUNT };
    mlstm_buffer *b[NB] = {0};
    size_t count[NB];
    for (int t = 0; t < NB; t++)
        count[t] = mlstm_tensor_extent(&d, t);
    void *host[NB] = {0};
    double *dref[NB] = {0};
    for (int t = 0; t < NB && st == MLSTM_OK; t++) {
        int dt = tu_tensor_dtype(t, dtype);
        st = mlstm_buffer_create(ctx, dt, count[t], &b[t]);
        host[t] = malloc(count[t] * (dt == MLSTM_DTYPE_F32 ? 4 : es));
        if (check)
            dref[t] = malloc(count[t] * sizeof(double));
        if (!host[t] || (check && !dref[t]))
            st = MLSTM_ERR_OUT_OF_MEMORY;
    }
    if (st != MLSTM_OK) {
        fprintf(stderr, "allocation failed: %s: %s\n", mlstm_status_string(st), mlstm_context_last_error(ctx));
        goto done;
    }
    tu_rng rng;
    tu_rng_seed(&rng, 1234 + (uint64_t)sh->s);
    const int in[] = {MLSTM_TENSOR_Q, MLSTM_TENSOR_K, MLSTM_TENSOR_V, MLSTM_TENSOR_I, MLSTM_TENSOR_F,
                      MLSTM_TENSOR_DH};
    for (size_t x = 0; x < sizeof in / sizeof in[0]; x++) {
        int t = in[x];
        int dt = tu_tensor_dtype(t, dtype);
        fill(&rng, host[t], dref[t], dt, count[t], t == MLSTM_TENSOR_F ? 3.0 : 0.0, 1.0);
        if ((st = mlstm_buffer_write(b[t], 0, count[t], host[t])) != MLSTM_OK)
            goto done;
    }
#define FWD() mlstm_parallel_fwd(ctx, &d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7])
#define BWD() mlstm_parallel_bwd(ctx, &d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], \
                                 b[11], b[12], b[13])
    double *t_fw = calloc((size_t)iters, sizeof(double)), *t_fb = calloc((size_t)iters, sizeof(double));
    for (int it = -warmup; it < iters && st == MLSTM_OK; it++) {
        double t0 = now_ms();
        st = FWD();
        if (st == MLSTM_OK)
            st = mlstm_synchronize(ctx);
        double t1 = now_ms();
        if (st == MLSTM_OK && !fwd_only) {
            st = BWD();
            if (st == MLSTM_OK)
                st = mlstm_synchronize(ctx);
        }
        double t2 = now_ms();
        if (it >= 0) {
            t_fw[it] = t1 - t0;
            t_fb[it] = t2 - t0;
        }
    }
    if (st != MLSTM_OK) {
        fprintf(stderr, "run failed: %s: %s\n", mlstm_status_string(st), mlstm_context_last_error(ctx));
        free(t_fw); free(t_fb);
        goto done;
    }
    qsort(t_fw, (size_t)iters, sizeof(double), cmp_double);
    qsort(t_fb, (size_t)iters, sizeof(double), cmp_double);
    res->fw_ms = t_fw[iters / 2];
    res->fwbw_ms = fwd_only ? NAN : t_fb[iters / 2];
    free(t_fw); free(t_fb);
    res->check_ok = 1;
    res->err_max = NAN;
    if (check) {
        mlstm_ref_shape rs = {sh->b, sh->nh, sh->s, sh->dqk, sh->dv, d.eps, 1.0 / sqrt((double)sh->dqk), 0};
        double *o = dref[MLSTM_TENSOR_H];
        mlstm_ref_fwd(&rs, dref[0], dref[1], dref[2], dref[3], dref[4], o, dref[6], dref[7]);
        /* the backward reads h as stored: give the reference the reference h rounded to the dtype */
        double *o_stored = malloc(count[MLSTM_TENSOR_H] * sizeof(double));
        for (size_t e = 0; o_stored && e < count[MLSTM_TENSOR_H]; e++)
            o_stored[e] = tu_round_to_dtype(o[e], dtype);
        if (o_stored)
            mlstm_ref_bwd(&rs, dref[0], dref[1], dref[2], dref[3], dref[4], o_stored, dref[6], dref[7], dref[8],
                          dref[9], dref[10], dref[11], dref[12], dref[13]);
        free(o_stored);
        res->err_max = 0;
        const int outs[] = {MLSTM_TENSOR_H, MLSTM_TENSOR_M, MLSTM_TENSOR_N, MLSTM_TENSOR_DQ, MLSTM_TENSOR_DK,
                            MLSTM_TENSOR_DV, MLSTM_TENSOR_DI, MLSTM_TENSOR_DF};
        double *got = malloc((nqk > nv ? nqk : nv) * sizeof(double));
        for (size_t x = 0; x < sizeof outs / sizeof outs[0] && got; x++) {
            int t = outs[x];
            if (fwd_only && t >= MLSTM_TENSOR_DQ)
                continue;
            int dt = tu_tensor_dtype(t, dtype);
            if ((st = mlstm_buffer_read(b[t], 0, count[t], host[t])) != MLSTM_OK)
                break;
            for (size_t e = 0; e < count[t]; e++)
                got[e] = tu_load(host[t], dt, e);
            double err = tu_rel_l2(got, dref[t], count[t]);
            if (!(err <= tolerance(dtype, math_mode))) {
                res->check_ok = 0;
                fprintf(stderr, "CHECK FAILED: %s relative L2 error %.3g > %.1g\n",
                        tu_tensor_name(t), err, tolerance(dtype, math_mode));
            }
            if (err > res->err_max || isnan(err))
                res->err_max = err;
        }
        free(got);
    }
done:
    for (int t = 0; t < NB; t++) {
        mlstm_buffer_destroy(b[t]);
        free(host[t]);
        free(dref[t]);
    }
    return st;
}

int main(int argc, char **argv)
{
    const char *dtype_arg = "bf16", *shapes_arg = NULL, *csv_path = NULL;
    int iters = 20, warmup = 3, fwd_only = 0, check = 0, math_mode = MLSTM_MATH_DEFAULT;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--dtype") && a + 1 < argc) dtype_arg = argv[++a];
        else if (!strcmp(argv[a], "--shapes") && a + 1 < argc) shapes_arg = argv[++a];
        else if (!strcmp(argv[a], "--iters") && a + 1 < argc) iters = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--warmup") && a + 1 < argc) warmup = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--csv") && a + 1 < argc) csv_path = argv[++a];
        else if (!strcmp(argv[a], "--fwd-only")) fwd_only = 1;
        else if (!strcmp(argv[a], "--algo") && a + 1 < argc) {
            const char *al = argv[++a];
            if (!strcmp(al, "fused")) g_algo = MLSTM_ALGO_FUSED;
            else if (!strcmp(al, "materialized")) g_algo = MLSTM_ALGO_MATERIALIZED;
            else if (!strcmp(al, "auto")) g_algo = MLSTM_ALGO_AUTO;
            else { usage(); return 2; }
        }
        else if (!strcmp(argv[a], "--math") && a + 1 < argc) {
            const char *m = argv[++a];
            if (!strcmp(m, "tf32")) math_mode = MLSTM_MATH_TF32;
            else if (!strcmp(m, "ieee")) math_mode = MLSTM_MATH_DEFAULT;
            else { usage(); return 2; }
        }
        else if (!strcmp(argv[a], "--check")) check = 1;
        else { usage(); return 2; }
    }
    if (iters < 1 || warmup < 0) { usage(); return 2; }
    int dtypes[3], ndt = 0;
    if (!strcmp(dtype_arg, "all")) { dtypes[0] = MLSTM_DTYPE_F32; dtypes[1] = MLSTM_DTYPE_F16; dtypes[2] = MLSTM_DTYPE_BF16; ndt = 3; }
    else if (!strcmp(dtype_arg, "f32")) dtypes[ndt++] = MLSTM_DTYPE_F32;
    else if (!strcmp(dtype_arg, "f16")) dtypes[ndt++] = MLSTM_DTYPE_F16;
    else if (!strcmp(dtype_arg, "bf16")) dtypes[ndt++] = MLSTM_DTYPE_BF16;
    else { usage(); return 2; }

    shape shapes[64];
    int nshape = 0;
    if (shapes_arg) {
        const char *p = shapes_arg;
        while (*p && nshape < 64) {
            shape s;
            int used = 0;
            if (sscanf(p, "%lld,%lld,%lld,%lld,%lld%n", &s.b, &s.nh, &s.s, &s.dqk, &s.dv, &used) != 5) {
                usage();
                return 2;
            }
            shapes[nshape++] = s;
            p += used;
            if (*p == ';') p++;
        }
    } else {
        nshape = (int)(sizeof default_shapes / sizeof default_shapes[0]);
        memcpy(shapes, default_shapes, sizeof default_shapes);
    }

    mlstm_context *ctx = NULL;
    int st = mlstm_context_create(NULL, &ctx);
    if (st != MLSTM_OK) {
        fprintf(stderr, "mlstm_context_create: %s: %s\n", mlstm_status_string(st), mlstm_last_error_global());
        return 1;
    }
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv_path && !csv) { perror(csv_path); mlstm_context_destroy(ctx); return 1; }
    if (csv) fprintf(csv, "backend,B,NH,S,DQK,DV,dtype,mlstm_fw_ms,mlstm_fwbw_ms,mlstm_fw_tflops,mlstm_fwbw_tflops%s\n",
                     check ? ",max_rel_err" : "");
    printf("libmlstm %s, backend %s, device %s; math %s; algo %s; median of %d runs after %d warm-up\n",
           mlstm_version(), mlstm_context_backend_name(ctx), mlstm_context_device_name(ctx),
           math_mode == MLSTM_MATH_TF32 ? "tf32" : "ieee",
           g_algo == MLSTM_ALGO_FUSED ? "fused" : g_algo == MLSTM_ALGO_MATERIALIZED ? "materialized" : "auto", iters,
           warmup);
    printf("%-4s %-4s %-6s %-4s %-4s %-5s %10s %10s %10s %10s%s\n", "B", "NH", "S", "DQK", "DV", "dtype", "fw ms",
           "fw TF/s", "fwbw ms", "fwbw TF/s", check ? "  max rel err" : "");
    int failed = 0;
    for (int x = 0; x < ndt; x++)
        for (int s = 0; s < nshape; s++) {
            run_result r = {0};
            st = bench_shape(ctx, &shapes[s], dtypes[x], math_mode, iters, warmup, fwd_only, check, &r);
            if (st != MLSTM_OK) { failed = 1; continue; }
            const shape *sh = &shapes[s];
            double flops = 2.0 * 2.0 * sh->b * sh->nh * (double)sh->s * sh->s * 0.5 * (sh->dqk + sh->dv) / 2.0;
            double tf_fw = flops / (r.fw_ms * 1e-3) / 1e12, tf_fb = 3.5 * flops / (r.fwbw_ms * 1e-3) / 1e12;
            printf("%-4lld %-4lld %-6lld %-4lld %-4lld %-5s %10.3f %10.3f %10.3f %10.3f", sh->b, sh->nh, sh->s,
                   sh->dqk, sh->dv, tu_dtype_name(dtypes[x]), r.fw_ms, tf_fw, r.fwbw_ms, tf_fb);
            if (check) printf("  %.2e %s", r.err_max, r.check_ok ? "ok" : "FAILED");
            printf("\n");
            if (csv) {
                fprintf(csv, "%s,%lld,%lld,%lld,%lld,%lld,%s,%.5f,%.5f,%.4f,%.4f", mlstm_context_backend_name(ctx),
                        sh->b, sh->nh, sh->s, sh->dqk, sh->dv, tu_dtype_name(dtypes[x]), r.fw_ms, r.fwbw_ms,
                        tf_fw, tf_fb);
                if (check) fprintf(csv, ",%.3e", r.err_max);
                fprintf(csv, "\n");
            }
            if (check && !r.check_ok) failed = 1;
        }
    if (csv) fclose(csv);
    mlstm_context_destroy(ctx);
    return failed ? 1 : 0;
}
