/* Benchmark of libmlstm through its public API only: times the forward and forward+backward passes on
 * the selected backend (MLSTM_BACKEND, default auto) for a list of shapes or a --dims sweep of (DQK, DV),
 * warm-up then the median of N runs, and prints ms, TFLOP/s (fwd 2*B*NH*S*S*(DQK+DV)/2, fwd+bwd 3.5x) and each
 * shape's time against its aligned reference, as a table and optionally CSV. --check also compares one run of
 * each shape with the float64 reference. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
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

static const char default_dims[] = "64/128,96/96,128/256,192/192,256/512,320/320,512/512";
static const long long aligned_dims[] = {64, 128, 256, 512};

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_mlstm [--dtype f32|f16|bf16|all] [--shapes B,NH,S,DQK,DV[;...]]\n"
            "                   [--dims [DQK/DV,...]] [--sizes B,NH,S[;...]] [--iters N] [--warmup N]\n"
            "                   [--fwd-only] [--math ieee|tf32] [--csv FILE] [--check] [--algo auto|fused|materialized|both]\n"
            "  default shapes: the anchor shapes B=1 NH=8, S 1024..8192, DH 64/128/256 (use --shapes on a CPU);\n"
            "           a shape of four numbers B,NH,S,D means DQK = DV = D.\n"
            "  --dims:  sweep head dims (DQK/DV pairs, D alone = D/D; without a list: %s)\n"
            "           at each B,NH,S of --sizes (default 1,8,4096), adding the aligned references they are\n"
            "           compared with; each reference is timed first, followed by the shapes compared with it.\n"
            "  Aligned shapes have DQK = DV in {64, 128, 256, 512}. Every other shape is compared with its aligned\n"
            "  reference, DQK = DV = the smallest of those at least max(DQK, DV) at the same B, NH, S and dtype, when\n"
            "  that shape came earlier in the list: columns fw/ref and fwbw/ref (time ratios); target 'ok' when\n"
            "  both are at most 1.2 (the issue's target), 'over' otherwise.\n"
            "  --check: compare h and every gradient of one run per shape with the float64 reference\n"
            "           (slow for large shapes: O(S^2 D) on one CPU core); exit 1 on a contract violation.\n"
            "  --algo: desc.algo (materialized: the S x S matrices through cuBLAS / CLBlast; both: fused and materialised\n"
            "          side by side in one row, with the speed-up of fused)\n"
            "  --math tf32: desc.math_mode = MLSTM_MATH_TF32 (f32 products on TF32 tensor cores where the backend\n"
            "           offers it; --check then allows 5e-3, tests/tolerances.h's TF32 value).\n"
            "  path: the backend and math mode the shapes ran with.\n"
            "  MLSTM_CUDA_F32_TC=0 / =1: CUDA f32 forward on the SIMT path (the baseline) / on tensor cores.\n"
            "  The backend comes from MLSTM_BACKEND (auto|cuda|opencl), MLSTM_DEVICE, MLSTM_OPENCL_PLATFORM.\n"
            "  Exit status: 0, 1 on a failed run or check, 2 on bad options, 77 when the backend finds no device.\n",
            default_dims);
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
    if (count[MLSTM_TENSOR_Q] == 0) { /* an invalid desc: the forward's validation says why */
        st = mlstm_parallel_fwd(ctx, &d, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        fprintf(stderr, "shape rejected: %s: %s\n", mlstm_status_string(st), mlstm_context_last_error(ctx));
        return st == MLSTM_OK ? MLSTM_ERR_INVALID_ARGUMENT : st;
    }
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
    if (!t_fw || !t_fb)
        st = MLSTM_ERR_OUT_OF_MEMORY;
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

/* ---- options and shape lists ---------------------------------------------------------------------------- */

enum { MAX_SHAPES = 256, MAX_DIMS = 64 };

typedef struct bench_opts {
    int dtypes[3], ndtypes, math_mode, iters, warmup, fwd_only, check;
    int both; /* --algo both: the fused and the materialised algorithm per row */
    const char *csv_path;
    shape shapes[MAX_SHAPES];
    int nshapes;
} bench_opts;

/* Parses "x<f>y<f>z<e>x<f>..." into rows of `width` numbers >= 1. An entry may have min_fields..width fields;
 * a short one repeats its last field ("96" reads as 96/96, "1,8,4096,128" as 1,8,4096,128,128). Returns the
 * number of rows, or -1 on a malformed list or more than max_rows entries. */
static int parse_list(const char *text, char entry_sep, char field_sep, int min_fields, int width,
                      long long *rows, int max_rows)
{
    int n = 0;
    for (const char *p = text; *p; n++) {
        if (n == max_rows)
            return -1;
        long long *row = rows + (size_t)n * (size_t)width;
        int k = 0;
        for (;;) {
            char *end;
            errno = 0;
            long long v = strtoll(p, &end, 10);
            if (end == p || errno || v < 1 || k == width)
                return -1;
            row[k++] = v;
            p = end;
            if (*p != field_sep)
                break;
            p++;
        }
        if (k < min_fields)
            return -1;
        for (; k < width; k++)
            row[k] = row[k - 1];
        if (*p == entry_sep)
            p++;
        else if (*p)
            return -1;
    }
    return n;
}

/* the aligned head dim a shape is compared with: the smallest of aligned_dims holding DQK and DV; 0 above */
static long long aligned_ref_dim(long long dqk, long long dv)
{
    long long d = dqk > dv ? dqk : dv;
    for (size_t x = 0; x < sizeof aligned_dims / sizeof aligned_dims[0]; x++)
        if (d <= aligned_dims[x])
            return aligned_dims[x];
    return 0;
}

static int is_aligned(long long dqk, long long dv) { return dqk == dv && dqk == aligned_ref_dim(dqk, dv); }

static int find_dims(const long long *dims, int n, long long dqk, long long dv)
{
    for (int x = 0; x < n; x++)
        if (dims[2 * x] == dqk && dims[2 * x + 1] == dv)
            return x;
    return -1;
}

/* The --dims sweep: every (B, NH, S) of `sizes` times every DQK/DV of `dims` plus the aligned references they
 * are compared with, grouped by reference (the reference first, then the rest in the order given). */
static int build_sweep(const char *sizes_arg, const char *dims_arg, bench_opts *o)
{
    enum { NALIGNED = sizeof aligned_dims / sizeof aligned_dims[0] };
    long long sizes[3 * MAX_SHAPES], dims[2 * MAX_DIMS], all[2 * (MAX_DIMS + NALIGNED)];
    int nsizes = parse_list(sizes_arg, ';', ',', 3, 3, sizes, MAX_SHAPES);
    int ndims = parse_list(dims_arg, ',', '/', 1, 2, dims, MAX_DIMS);
    if (nsizes < 1 || ndims < 1) {
        fprintf(stderr, "bench_mlstm: cannot read --sizes \"%s\" / --dims \"%s\"\n", sizes_arg, dims_arg);
        return -1;
    }
    int nall = 0;
    for (int g = 0; g <= NALIGNED; g++) { /* the groups of each aligned dim, then the shapes above 512 */
        long long ref = g < NALIGNED ? aligned_dims[g] : 0;
        int needed = 0;
        for (int x = 0; x < ndims; x++)
            needed |= aligned_ref_dim(dims[2 * x], dims[2 * x + 1]) == ref;
        if (needed && ref) {
            all[2 * nall] = all[2 * nall + 1] = ref;
            nall++;
        }
        for (int x = 0; x < ndims; x++)
            if (aligned_ref_dim(dims[2 * x], dims[2 * x + 1]) == ref &&
                find_dims(all, nall, dims[2 * x], dims[2 * x + 1]) < 0) {
                all[2 * nall] = dims[2 * x];
                all[2 * nall + 1] = dims[2 * x + 1];
                nall++;
            }
    }
    if ((size_t)nsizes * (size_t)nall > MAX_SHAPES) {
        fprintf(stderr, "bench_mlstm: more than %d shapes in the sweep\n", MAX_SHAPES);
        return -1;
    }
    o->nshapes = 0;
    for (int z = 0; z < nsizes; z++)
        for (int x = 0; x < nall; x++)
            o->shapes[o->nshapes++] = (shape){sizes[3 * z], sizes[3 * z + 1], sizes[3 * z + 2], all[2 * x],
                                              all[2 * x + 1]};
    return 0;
}

static int parse_dtypes(const char *arg, bench_opts *o)
{
    static const struct { const char *name; int dtype; } names[] = {
        {"f32", MLSTM_DTYPE_F32}, {"f16", MLSTM_DTYPE_F16}, {"bf16", MLSTM_DTYPE_BF16}};
    o->ndtypes = 0;
    for (size_t x = 0; x < sizeof names / sizeof names[0]; x++)
        if (!strcmp(arg, "all") || !strcmp(arg, names[x].name))
            o->dtypes[o->ndtypes++] = names[x].dtype;
    return o->ndtypes ? 0 : -1;
}

/* the value of option argv[*a] if it is `name` and has one; advances *a past it */
static const char *opt_value(int argc, char **argv, int *a, const char *name)
{
    if (strcmp(argv[*a], name) || *a + 1 >= argc)
        return NULL;
    return argv[++*a];
}

/* Fills o from the command line; 0 on success, -1 after a message (the caller prints the usage). */
static int parse_args(int argc, char **argv, bench_opts *o)
{
    const char *dtype_arg = "bf16", *shapes_arg = NULL, *dims_arg = NULL, *sizes_arg = NULL, *v;
    *o = (bench_opts){.iters = 20, .warmup = 3, .math_mode = MLSTM_MATH_DEFAULT};
    for (int a = 1; a < argc; a++) {
        if ((v = opt_value(argc, argv, &a, "--dtype"))) dtype_arg = v;
        else if ((v = opt_value(argc, argv, &a, "--shapes"))) shapes_arg = v;
        else if ((v = opt_value(argc, argv, &a, "--sizes"))) sizes_arg = v;
        else if ((v = opt_value(argc, argv, &a, "--iters"))) o->iters = atoi(v);
        else if ((v = opt_value(argc, argv, &a, "--warmup"))) o->warmup = atoi(v);
        else if ((v = opt_value(argc, argv, &a, "--csv"))) o->csv_path = v;
        else if ((v = opt_value(argc, argv, &a, "--math"))) {
            if (!strcmp(v, "tf32")) o->math_mode = MLSTM_MATH_TF32;
            else if (!strcmp(v, "ieee")) o->math_mode = MLSTM_MATH_DEFAULT;
            else return -1;
        }
        else if ((v = opt_value(argc, argv, &a, "--algo"))) {
            if (!strcmp(v, "auto")) g_algo = MLSTM_ALGO_AUTO;
            else if (!strcmp(v, "fused")) g_algo = MLSTM_ALGO_FUSED;
            else if (!strcmp(v, "materialized")) g_algo = MLSTM_ALGO_MATERIALIZED;
            else if (!strcmp(v, "both")) o->both = 1;
            else return -1;
        }
        else if (!strcmp(argv[a], "--dims"))  /* the list is optional */
            dims_arg = (a + 1 < argc && argv[a + 1][0] != '-') ? argv[++a] : default_dims;
        else if (!strcmp(argv[a], "--fwd-only")) o->fwd_only = 1;
        else if (!strcmp(argv[a], "--check")) o->check = 1;
        else return -1;
    }
    if (o->iters < 1 || o->warmup < 0 || parse_dtypes(dtype_arg, o))
        return -1;
    if (shapes_arg && (dims_arg || sizes_arg)) {
        fprintf(stderr, "bench_mlstm: --shapes lists whole shapes; --dims / --sizes build a sweep: give one\n");
        return -1;
    }
    if (dims_arg || sizes_arg)
        return build_sweep(sizes_arg ? sizes_arg : "1,8,4096", dims_arg ? dims_arg : default_dims, o);
    if (shapes_arg) {
        long long rows[5 * MAX_SHAPES];
        o->nshapes = parse_list(shapes_arg, ';', ',', 4, 5, rows, MAX_SHAPES);
        if (o->nshapes < 1) {
            fprintf(stderr, "bench_mlstm: cannot read --shapes \"%s\"\n", shapes_arg);
            return -1;
        }
        for (int x = 0; x < o->nshapes; x++)
            o->shapes[x] = (shape){rows[5 * x], rows[5 * x + 1], rows[5 * x + 2], rows[5 * x + 3], rows[5 * x + 4]};
        return 0;
    }
    o->nshapes = (int)(sizeof default_shapes / sizeof default_shapes[0]);
    memcpy(o->shapes, default_shapes, sizeof default_shapes);
    return 0;
}

/* ---- the table ------------------------------------------------------------------------------------------- */

/* one row's figures: the run, and where its aligned reference ran earlier, the time ratios to it */
typedef struct row {
    run_result r;
    int ok;                  /* the run succeeded */
    run_result mat;          /* --algo both: the materialised algorithm's run (r is the fused one) */
    int mat_ok;
    long long ref_dim;       /* 0: none; the row is aligned when ref_dim == dqk == dv */
    double fw_ratio, fwbw_ratio;
} row;

static double fwd_flops(const shape *sh) { return 2.0 * sh->b * sh->nh * (double)sh->s * sh->s * (sh->dqk + sh->dv) / 2.0; }

/* v with `digits` significant digits ("%.*g"), or "-" where v is NaN */
static const char *num(char *buf, size_t size, double v, int digits)
{
    if (isnan(v)) snprintf(buf, size, "-");
    else snprintf(buf, size, "%.*g", digits, v);
    return buf;
}

/* Looks up the aligned reference of shapes[s] among the rows before it and fills rows[s]'s ratios. */
static void compare_with_ref(const bench_opts *o, row *rows, int s)
{
    const shape *sh = &o->shapes[s];
    row *w = &rows[s];
    w->ref_dim = aligned_ref_dim(sh->dqk, sh->dv);
    w->fw_ratio = w->fwbw_ratio = NAN;
    if (is_aligned(sh->dqk, sh->dv) || !w->ok)
        return;
    for (int x = 0; x < s; x++) {
        const shape *rs = &o->shapes[x];
        if (rows[x].ok && rs->b == sh->b && rs->nh == sh->nh && rs->s == sh->s && rs->dqk == w->ref_dim &&
            rs->dv == w->ref_dim) {
            w->fw_ratio = w->r.fw_ms / rows[x].r.fw_ms;
            w->fwbw_ratio = w->r.fwbw_ms / rows[x].r.fwbw_ms;
            return;
        }
    }
}

/* 'ok' / 'over' against the 1.2x target, "" where there is no ratio */
static const char *target_mark(const row *w, int fwd_only)
{
    if (isnan(w->fw_ratio))
        return "";
    return (w->fw_ratio <= 1.2 && (fwd_only || w->fwbw_ratio <= 1.2)) ? "ok" : "over";
}

static void print_header(int check, int both)
{
    printf("%-3s %-3s %-6s %-8s %-5s %-12s %9s %9s %9s %9s %-8s %7s %8s %-6s", "B", "NH", "S", "DQK/DV",
           "dtype", "path", "fw ms", "fw TF/s", "fwbw ms", "fwbw TF/s", "ref", "fw/ref", "fwbw/ref", "target");
    if (both)
        printf(" | %9s %9s %9s %9s %8s %8s", "mat fw ms", "fw TF/s", "fwbw ms", "fwbw TF/s", "fused x", "fwbw x");
    printf("%s\n", check ? " max rel err" : "");
}

/* --algo both: the materialised run beside the fused one, and how many times faster fused is */
static void print_mat(const shape *sh, const row *w)
{
    char b[6][32];
    if (!w->mat_ok) {
        printf(" | %-9s", "failed");
        return;
    }
    const double f = fwd_flops(sh);
    printf(" | %9s %9s %9s %9s %8s %8s", num(b[0], 32, w->mat.fw_ms, 4), num(b[1], 32, f / (w->mat.fw_ms * 1e9), 4),
           num(b[2], 32, w->mat.fwbw_ms, 4), num(b[3], 32, 3.5 * f / (w->mat.fwbw_ms * 1e9), 4),
           num(b[4], 32, w->ok ? w->mat.fw_ms / w->r.fw_ms : NAN, 3),
           num(b[5], 32, w->ok ? w->mat.fwbw_ms / w->r.fwbw_ms : NAN, 3));
}

static void print_row(const shape *sh, int dtype, const char *path, const row *w, int fwd_only, int check, int both)
{
    char dims[24], ref[24], b[6][32];
    snprintf(dims, sizeof dims, "%lld/%lld", sh->dqk, sh->dv);
    if (is_aligned(sh->dqk, sh->dv)) snprintf(ref, sizeof ref, "aligned");
    else if (isnan(w->fw_ratio)) snprintf(ref, sizeof ref, "-");
    else snprintf(ref, sizeof ref, "%lld/%lld", w->ref_dim, w->ref_dim);
    printf("%-3lld %-3lld %-6lld %-8s %-5s %-12s ", sh->b, sh->nh, sh->s, dims, tu_dtype_name(dtype), path);
    if (!w->ok) {
        printf("run failed (message above)");
        if (both)
            print_mat(sh, w);
        printf("\n");
        return;
    }
    double f = fwd_flops(sh);
    printf("%9s %9s %9s %9s %-8s %7s %8s %-6s", num(b[0], 32, w->r.fw_ms, 4),
           num(b[1], 32, f / (w->r.fw_ms * 1e9), 4), num(b[2], 32, w->r.fwbw_ms, 4),
           num(b[3], 32, 3.5 * f / (w->r.fwbw_ms * 1e9), 4), ref, num(b[4], 32, w->fw_ratio, 3),
           num(b[5], 32, w->fwbw_ratio, 3), target_mark(w, fwd_only));
    if (both)
        print_mat(sh, w);
    if (check)
        printf(" %.2e %s", w->r.err_max, w->r.check_ok ? "ok" : "FAILED");
    printf("\n");
}

static void csv_row(FILE *csv, const char *backend, const char *path, const shape *sh, int dtype, const row *w,
                    int check, int both)
{
    if (!w->ok)
        return;
    double f = fwd_flops(sh);
    fprintf(csv, "%s,%lld,%lld,%lld,%lld,%lld,%s,%.5f,%.5f,%.4f,%.4f,%s,%lld,%.4f,%.4f", backend, sh->b, sh->nh,
            sh->s, sh->dqk, sh->dv, tu_dtype_name(dtype), w->r.fw_ms, w->r.fwbw_ms, f / (w->r.fw_ms * 1e9),
            3.5 * f / (w->r.fwbw_ms * 1e9), path, w->ref_dim, w->fw_ratio, w->fwbw_ratio);
    if (check)
        fprintf(csv, ",%.3e", w->r.err_max);
    if (both && w->mat_ok)
        fprintf(csv, ",%.5f,%.5f", w->mat.fw_ms, w->mat.fwbw_ms);
    else if (both)
        fprintf(csv, ",,");
    fprintf(csv, "\n");
}

int main(int argc, char **argv)
{
    static bench_opts o;
    static row rows[MAX_SHAPES];
    if (parse_args(argc, argv, &o)) {
        usage();
        return 2;
    }
    mlstm_context *ctx = NULL;
    int st = mlstm_context_create(NULL, &ctx);
    if (st != MLSTM_OK) {
        fprintf(stderr, "mlstm_context_create: %s: %s\n", mlstm_status_string(st), mlstm_last_error_global());
        return st == MLSTM_ERR_NO_DEVICE || st == MLSTM_ERR_BACKEND_UNAVAILABLE ? 77 : 1;
    }
    FILE *csv = o.csv_path ? fopen(o.csv_path, "w") : NULL;
    if (o.csv_path && !csv) { perror(o.csv_path); mlstm_context_destroy(ctx); return 1; }
    const char *backend = mlstm_context_backend_name(ctx);
    char path[32];
    snprintf(path, sizeof path, "%s/%s", backend, o.math_mode == MLSTM_MATH_TF32 ? "tf32" : "ieee");
    if (csv)
        fprintf(csv, "backend,B,NH,S,DQK,DV,dtype,mlstm_fw_ms,mlstm_fwbw_ms,mlstm_fw_tflops,mlstm_fwbw_tflops,"
                     "path,ref_dim,fw_vs_ref,fwbw_vs_ref%s%s\n", o.check ? ",max_rel_err" : "",
                o.both ? ",mat_fw_ms,mat_fwbw_ms" : "");
    printf("libmlstm %s, backend %s, device %s; median of %d runs after %d warm-up\n", mlstm_version(), backend,
           mlstm_context_device_name(ctx), o.iters, o.warmup);
    print_header(o.check, o.both);
    fflush(stdout);
    int failed = 0;
    for (int x = 0; x < o.ndtypes; x++)
        for (int s = 0; s < o.nshapes; s++) {
            row *w = &rows[s];
            *w = (row){0};
            if (o.both)
                g_algo = MLSTM_ALGO_FUSED;
            w->ok = bench_shape(ctx, &o.shapes[s], o.dtypes[x], o.math_mode, o.iters, o.warmup, o.fwd_only,
                                o.check, &w->r) == MLSTM_OK;
            if (o.both) {
                g_algo = MLSTM_ALGO_MATERIALIZED;
                w->mat_ok = bench_shape(ctx, &o.shapes[s], o.dtypes[x], o.math_mode, o.iters, o.warmup, o.fwd_only,
                                        o.check, &w->mat) == MLSTM_OK;
                if (!w->mat_ok || (o.check && !w->mat.check_ok))
                    failed = 1;
            }
            compare_with_ref(&o, rows, s);
            print_row(&o.shapes[s], o.dtypes[x], path, w, o.fwd_only, o.check, o.both);
            fflush(stdout);
            if (csv)
                csv_row(csv, backend, path, &o.shapes[s], o.dtypes[x], w, o.check, o.both);
            if (!w->ok || (o.check && !w->r.check_ok))
                failed = 1;
        }
    if (csv) fclose(csv);
    mlstm_context_destroy(ctx);
    return failed ? 1 : 0;
}
