/* Thread safety (cmocka): several pthreads, each with its own context on the backend MLSTM_BACKEND selects, run
 * forward+backward concurrently (host-array and device-buffer paths, contexts created and destroyed while others
 * compute) and must match the single-threaded results bitwise; failures recorded concurrently stay separate
 * (mlstm_last_error_global is per thread, mlstm_context_last_error per context); contexts created under different
 * environment settings while other threads compute keep their own settings. No device: exit 77.
 * MLSTM_TEST_FILTER=<cmocka glob> selects tests (e.g. 'test_settings*'). */
#define _DEFAULT_SOURCE /* mmap flags, mkdtemp, setenv, pthread barriers, clock_gettime under -std=c11 */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mlstm.h"
#include "rel_util.h"

#if defined(MLSTM_REL_HAVE_CUDART) /* CUDA builds: the device's architecture (wg_expected) */
#include <cuda_runtime_api.h>
#endif

#define NTHREADS 4
#define ITERS 3
#define NPROB 3

static mlstm_context *g_ctx;
static rel_problem g_in[NPROB];   /* inputs */
static rel_problem g_want[NPROB]; /* single-threaded results */
static pthread_barrier_t g_barrier;

typedef struct worker {
    int id;
    char fail[1024];      /* first failure, "" if none */
    int runs;
} worker;

static void record(worker *w, const char *fmt, ...)
{
    if (w->fail[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->fail, sizeof w->fail, fmt, ap);
    va_end(ap);
}

/* A contiguous problem of these sizes and dtype, otherwise the defaults. */
static mlstm_desc shape(int64_t B, int64_t NH, int64_t S, int64_t dqk, int64_t dv, int dtype)
{
    mlstm_desc d;
    mlstm_desc_init(&d);
    d.batch = B;
    d.heads = NH;
    d.seq_len = S;
    d.dqk = dqk;
    d.dv = dv;
    d.dtype = dtype;
    return d;
}

static void make_problems(void)
{
    static const struct { int64_t B, NH, S; int dtype, grad, layout; } cfg[NPROB] = {
        {2, 2, 70, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 1},
        {1, 3, 33, MLSTM_DTYPE_BF16, MLSTM_GRAD_EXACT, 0},
        {2, 1, 65, MLSTM_DTYPE_F16, MLSTM_GRAD_NORMALIZER_DETACHED, 0},
    };
    for (int k = 0; k < NPROB; k++) {
        mlstm_desc d = shape(cfg[k].B, cfg[k].NH, cfg[k].S, 3, 5, cfg[k].dtype);
        d.grad_mode = cfg[k].grad;
        if (cfg[k].layout == 1) /* (B, S, NH, D) */
            for (int t = 0; t < REL_NT; t++) {
                int64_t dim = rel_tensor_dim(&d, t);
                d.layout[t] = (mlstm_layout){d.seq_len * d.heads * dim, dim, d.heads * dim};
            }
        if (rel_problem_init(&g_in[k], &d, 100 + (uint64_t)k, REL_GATES_STD, 1.0) != 0) {
            fprintf(stderr, "test_threads: cannot build problem %d\n", k);
            exit(1);
        }
    }
}

static void *work(void *arg)
{
    worker *w = arg;
    char why[1024];
    mlstm_context *ctx = NULL;
    int st = rel_context_open(NULL, &ctx, why, sizeof why);
    if (st != MLSTM_OK)
        record(w, "thread %d: mlstm_context_create: %s", w->id, why);

    /* 1. concurrent compute, matching the single-threaded results bitwise */
    for (int it = 0; it < ITERS && ctx; it++) {
        int k = (w->id + it) % NPROB;
        rel_problem p;
        if (rel_problem_clone(&p, &g_in[k]) != 0) {
            record(w, "thread %d: out of memory", w->id);
            break;
        }
        int device = (w->id + it) % 2;
        st = device ? rel_run_fwd_bwd_device(ctx, &p) : rel_run_fwd_bwd(ctx, &p);
        char msg[256];
        if (st != MLSTM_OK)
            record(w, "thread %d iter %d problem %d (%s path): %s: %s", w->id, it, k, device ? "device" : "host",
                   mlstm_status_string(st), mlstm_context_last_error(ctx));
        else if (!rel_outputs_identical(&p, &g_want[k], 1, msg, sizeof msg))
            record(w, "thread %d iter %d problem %d (%s path) differs from the single-threaded run: %s", w->id, it,
                   k, device ? "device" : "host", msg);
        w->runs++;
        rel_problem_free(&p);
        if (it == 1) { /* a scratch context created and destroyed while the other threads compute */
            mlstm_context *scratch = NULL;
            st = rel_context_open(NULL, &scratch, why, sizeof why);
            if (st != MLSTM_OK)
                record(w, "thread %d: scratch context: %s", w->id, why);
            mlstm_buffer *b = NULL;
            if (scratch && mlstm_buffer_create(scratch, MLSTM_DTYPE_F32, 1024, &b) != MLSTM_OK)
                record(w, "thread %d: buffer on the scratch context failed", w->id);
            mlstm_context_destroy(scratch); /* releases b too */
        }
    }

    /* 2. the global error is per thread: every thread fails a creation, then all read their own */
    char bogus[32];
    snprintf(bogus, sizeof bogus, "bogus-backend-%d", w->id);
    mlstm_options o;
    mlstm_options_init(&o);
    o.backend = bogus;
    mlstm_context *none = NULL;
    st = mlstm_context_create(&o, &none);
    if (st != MLSTM_ERR_BACKEND_UNAVAILABLE || none != NULL)
        record(w, "thread %d: creating backend '%s' returned %d", w->id, bogus, st);
    pthread_barrier_wait(&g_barrier);
    if (!strstr(mlstm_last_error_global(), bogus))
        record(w, "thread %d: mlstm_last_error_global() is '%s', expected this thread's '%s'", w->id,
               mlstm_last_error_global(), bogus);
    pthread_barrier_wait(&g_barrier);

    /* 3. the context's last error is per context */
    char tag[32];
    snprintf(tag, sizeof tag, "%d", -1000 - w->id);
    if (ctx) {
        mlstm_desc d = g_in[0].d;
        d.batch = -1000 - w->id;
        void **a = g_in[0].t;
        st = mlstm_parallel_fwd_host(ctx, &d, a[0], a[1], a[2], a[3], a[4], NULL, NULL, NULL);
        if (st != MLSTM_ERR_INVALID_ARGUMENT)
            record(w, "thread %d: invalid batch returned %d", w->id, st);
    }
    pthread_barrier_wait(&g_barrier);
    if (ctx && !strstr(mlstm_context_last_error(ctx), tag))
        record(w, "thread %d: its context's last error is '%s', expected one naming batch %s", w->id,
               mlstm_context_last_error(ctx), tag);
    mlstm_context_destroy(ctx);
    return NULL;
}

static void test_concurrent_contexts_match_single_thread(void **state)
{
    (void)state;
    worker w[NTHREADS];
    pthread_t th[NTHREADS];
    memset(w, 0, sizeof w);
    assert_int_equal(pthread_barrier_init(&g_barrier, NULL, NTHREADS), 0);
    for (int i = 0; i < NTHREADS; i++) {
        w[i].id = i;
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    pthread_barrier_destroy(&g_barrier);
    int failed = 0, runs = 0;
    for (int i = 0; i < NTHREADS; i++) {
        runs += w[i].runs;
        if (w[i].fail[0]) {
            print_error("%s\n", w[i].fail);
            failed = 1;
        }
    }
    printf("  %d threads, %d concurrent forward+backward runs compared bitwise\n", NTHREADS, runs);
    assert_int_equal(runs, NTHREADS * ITERS);
    assert_false(failed);
}

/* The main thread's context is unaffected by all of the above. */
static void test_main_context_still_matches(void **state)
{
    (void)state;
    for (int k = 0; k < NPROB; k++) {
        rel_problem p;
        assert_int_equal(rel_problem_clone(&p, &g_in[k]), 0);
        int st = rel_run_fwd_bwd(g_ctx, &p);
        if (st != MLSTM_OK)
            fail_msg("problem %d: %s: %s", k, mlstm_status_string(st), mlstm_context_last_error(g_ctx));
        char msg[256];
        if (!rel_outputs_identical(&p, &g_want[k], 1, msg, sizeof msg))
            fail_msg("problem %d after the threads: %s", k, msg);
        rel_problem_free(&p);
    }
}

/* ---- Contexts created under different settings while other threads compute ----
 * The tuning variables below are read when a context is created (api/registry.c) and fixed for its lifetime. The
 * main thread creates and destroys contexts under each setting in turn, keeping the previous one alive and
 * computing with both, while SET_WORKERS threads compute on contexts they created before the first change. Every
 * result must equal, bitwise, that of a context created under the same setting with no other thread running.
 * Environment: only the main thread calls setenv, and only between creations; the workers never call getenv or
 * create a context while it does (theirs exist before the first change). Every variable is set (to "" where the
 * setting leaves it at its default, which the library treats as unset) before the workers start, so each later
 * setenv replaces an existing entry of environ in place and never reallocates the array that a getenv in another
 * library (the OpenCL runtime, for example) may be reading. On CUDA the kernels a call reports
 * (mlstm_context_last_kernels) must follow the context's own setting: no ".wg" kernel under MLSTM_CUDA_WGMMA=0,
 * one under the default on sm_90 with sm_90a code, only the SIMT kernels under MLSTM_CUDA_FORCE. */
#define SET_VARS 5
#define SET_PROBS 2
#define SET_WORKERS 2
#define SET_WORKER_MIN_RUNS 2 /* each worker's calls, at least; they go on until the main thread is done */
#define SET_MAX 6

static const char *const k_set_vars[SET_VARS] = {"MLSTM_CUDA_SMALL_TILES", "MLSTM_CUDA_WGMMA", "MLSTM_CUDA_F32_TC",
                                                 "MLSTM_CUDA_FORCE", "MLSTM_ALGO"};

/* wg: on CUDA, whether the 16-bit problem runs a ".wg" kernel (1: must on sm_90 with sm_90a code, 0: must not on
 * any device, -1: no claim); simt: whether calls run the SIMT kernels (1: every call must; 0: the 16-bit problem
 * must not; -1: no claim); optional: the backend may answer MLSTM_ERR_UNSUPPORTED (the OpenCL materialised
 * algorithm needs CLBlast), and then the setting is left out with a printed reason */
typedef struct setting {
    const char *name;
    const char *val[SET_VARS];
    int wg, simt, optional;
} setting;

static const setting k_settings[SET_MAX] = {
    {"default", {"", "", "", "", ""}, 1, 0, 0},
    {"MLSTM_CUDA_WGMMA=0", {"", "0", "", "", ""}, 0, 0, 0},
    {"MLSTM_CUDA_SMALL_TILES=1 MLSTM_CUDA_F32_TC=0", {"1", "", "0", "", ""}, 1, 0, 0},
    {"MLSTM_CUDA_SMALL_TILES=0 MLSTM_CUDA_WGMMA=0 MLSTM_CUDA_F32_TC=1", {"0", "0", "1", "", ""}, 0, 0, 0},
    {"MLSTM_CUDA_FORCE=fwd.simt,bwd.simt", {"", "", "", "fwd.simt,bwd.simt", ""}, 0, 1, 0},
    {"MLSTM_ALGO=materialized", {"", "", "", "", "materialized"}, -1, -1, 1},
};

static rel_problem g_sin[SET_PROBS];            /* inputs: a 16-bit problem of a tensor-core head dim, and f32 */
static rel_problem g_swant[SET_MAX][SET_PROBS]; /* single-threaded results per setting */
static int g_sok[SET_MAX];                      /* the setting serves these problems on this backend */
static int g_is_cuda, g_wg_expected;            /* CUDA backend; sm_90 device and a build with sm_90a code */
static atomic_int g_sdone;                      /* the main thread's rounds are over */

/* Whether the default CUDA dispatch must pick a wgmma kernel on `device`; why says why not. */
static int wg_expected(int device, char *why, size_t len)
{
#if defined(MLSTM_REL_HAVE_CUDART) && defined(MLSTM_REL_HAVE_SM90A)
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
        snprintf(why, len, "cudaGetDeviceProperties(%d) failed", device);
        return 0;
    }
    if (prop.major != 9 || prop.minor != 0) { /* sm_90a code runs on exactly this compute capability */
        snprintf(why, len, "device %d is sm_%d%d, the wgmma kernels need sm_90", device, prop.major, prop.minor);
        return 0;
    }
    return 1;
#elif defined(MLSTM_REL_HAVE_CUDART)
    (void)device;
    snprintf(why, len, "the library is built without sm_90a code (MLSTM_CUDA_ARCHS)");
    return 0;
#else
    (void)device;
    snprintf(why, len, "the test is built without the CUDA runtime");
    return 0;
#endif
}

static void apply_setting(int k)
{
    for (int v = 0; v < SET_VARS; v++)
        setenv(k_set_vars[v], k_settings[k].val[v], 1);
}

static void make_setting_problems(void)
{
    static const struct { int64_t B, NH, S, D; int dtype; } cfg[SET_PROBS] = {
        {1, 2, 64, 64, MLSTM_DTYPE_BF16},
        {1, 1, 40, 64, MLSTM_DTYPE_F32},
    };
    for (int p = 0; p < SET_PROBS; p++) {
        mlstm_desc d = shape(cfg[p].B, cfg[p].NH, cfg[p].S, cfg[p].D, cfg[p].D, cfg[p].dtype);
        if (rel_problem_init(&g_sin[p], &d, 300 + (uint64_t)p, REL_GATES_STD, 1.0) != 0) {
            fprintf(stderr, "test_threads: cannot build settings problem %d\n", p);
            exit(1);
        }
    }
}

/* The kernel claims of setting k about one call's trace (CUDA only); 0, or 1 with the reason in msg. */
static int trace_breaks(int k, int p, const char *trace, char *msg, size_t len)
{
    const setting *s = &k_settings[k];
    const int half = g_sin[p].d.dtype != MLSTM_DTYPE_F32;
    if (!g_is_cuda)
        return 0;
    if (s->wg == 0 && strstr(trace, ".wg"))
        snprintf(msg, len, "ran a wgmma kernel (%s)", trace);
    else if (s->wg == 1 && half && g_wg_expected && !strstr(trace, ".wg"))
        snprintf(msg, len, "ran no wgmma kernel on sm_90 (%s)", trace);
    else if (s->simt == 1 && !strstr(trace, "simt"))
        snprintf(msg, len, "ran other than the forced SIMT kernels (%s)", trace);
    else if (s->simt == 0 && half && strstr(trace, "simt"))
        snprintf(msg, len, "ran a SIMT kernel (%s)", trace);
    else
        return 0;
    return 1;
}

/* Forward, then backward on ctx (created under setting k) for problem p, host or device path; each direction's
 * kernels checked against the setting's claims, the results against want (NULL: none). 0 or 1 (msg says why). */
static int run_setting(mlstm_context *ctx, int k, int p, int device, rel_problem *out, const rel_problem *want,
                       char *msg, size_t len)
{
    char why[256];
    if (rel_problem_clone(out, &g_sin[p]) != 0) {
        snprintf(msg, len, "out of memory");
        return 1;
    }
    int st = device ? rel_run_fwd_bwd_device(ctx, out) : rel_run_fwd(ctx, out);
    if (st == MLSTM_OK && trace_breaks(k, p, mlstm_context_last_kernels(ctx), why, sizeof why)) {
        snprintf(msg, len, "%s: %s", device ? "backward" : "forward", why);
        return 1;
    }
    if (st == MLSTM_OK && !device) {
        void **a = out->t;
        st = mlstm_parallel_bwd_host(ctx, &out->d, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9],
                                     a[10], a[11], a[12], a[13]);
        if (st == MLSTM_OK && trace_breaks(k, p, mlstm_context_last_kernels(ctx), why, sizeof why)) {
            snprintf(msg, len, "backward: %s", why);
            return 1;
        }
    }
    if (st != MLSTM_OK) {
        snprintf(msg, len, "%s: %s", mlstm_status_string(st), mlstm_context_last_error(ctx));
        return 1;
    }
    if (want && !rel_outputs_identical(out, want, 1, why, sizeof why)) {
        snprintf(msg, len, "differs from the single-threaded run: %s", why);
        return 1;
    }
    return 0;
}

typedef struct sworker {
    int id;
    mlstm_context *ctx;
    char fail[1024];
    int runs;
} sworker;

static pthread_barrier_t g_sbarrier;

static void *compute_loop(void *arg)
{
    sworker *w = arg;
    char why[512];
    int st = rel_context_open(NULL, &w->ctx, why, sizeof why); /* under the default setting, before any change */
    if (st != MLSTM_OK)
        snprintf(w->fail, sizeof w->fail, "worker %d: mlstm_context_create: %s", w->id, why);
    pthread_barrier_wait(&g_sbarrier);
    for (int it = 0; w->ctx && !w->fail[0] && (it < SET_WORKER_MIN_RUNS || !atomic_load(&g_sdone)); it++) {
        int p = (w->id + it) % SET_PROBS, device = it % 2;
        rel_problem out;
        if (run_setting(w->ctx, 0, p, device, &out, &g_swant[0][p], why, sizeof why))
            snprintf(w->fail, sizeof w->fail, "worker %d call %d, problem %d (%s path, default setting): %s", w->id,
                     it, p, device ? "device" : "host", why);
        rel_problem_free(&out);
        w->runs++;
    }
    mlstm_context_destroy(w->ctx);
    return NULL;
}

static void test_settings_per_context_while_computing(void **state)
{
    (void)state;
    char why[512], msg[1024];
    const char *saved[SET_VARS];
    for (int v = 0; v < SET_VARS; v++) { /* the caller's values, restored at the end */
        const char *x = getenv(k_set_vars[v]);
        saved[v] = x ? strdup(x) : NULL;
    }
    g_is_cuda = !strcmp(mlstm_context_backend_name(g_ctx), "cuda");
    if (g_is_cuda) {
        const char *dev = getenv("MLSTM_DEVICE");
        g_wg_expected = wg_expected(dev && dev[0] ? atoi(dev) : 0, why, sizeof why);
        if (!g_wg_expected)
            printf("  not asserted: 'the default runs a .wg kernel' (%s)\n", why);
    } else {
        printf("  not asserted: the kernel names of each setting (CUDA only; backend %s)\n",
               mlstm_context_backend_name(g_ctx));
    }

    /* 1. single-threaded results of every setting */
    make_setting_problems();
    int nok = 0;
    for (int k = 0; k < SET_MAX; k++) {
        apply_setting(k);
        mlstm_context *ctx = NULL;
        int st = rel_context_open(NULL, &ctx, why, sizeof why);
        if (st != MLSTM_OK)
            fail_msg("context under %s: %s", k_settings[k].name, why);
        g_sok[k] = 1;
        for (int p = 0; p < SET_PROBS && g_sok[k]; p++) {
            if (run_setting(ctx, k, p, 0, &g_swant[k][p], NULL, msg, sizeof msg)) {
                if (k_settings[k].optional && strstr(msg, mlstm_status_string(MLSTM_ERR_UNSUPPORTED)) == msg) {
                    printf("  not run: setting %s (%s)\n", k_settings[k].name, msg);
                    g_sok[k] = 0;
                } else {
                    fail_msg("setting %s, problem %d, single-threaded: %s", k_settings[k].name, p, msg);
                }
            }
        }
        mlstm_context_destroy(ctx);
        nok += g_sok[k];
        if (k > 0 && g_sok[k]) {
            int same = 1;
            for (int p = 0; p < SET_PROBS; p++)
                same &= rel_outputs_identical(&g_swant[k][p], &g_swant[0][p], 1, why, sizeof why);
            printf("  setting %-62s results %s the default's\n", k_settings[k].name, same ? "equal" : "differ from");
        }
    }

    /* 2. workers compute under the default setting; the main thread creates contexts under each setting in turn */
    apply_setting(0);
    atomic_store(&g_sdone, 0);
    sworker w[SET_WORKERS];
    pthread_t th[SET_WORKERS];
    memset(w, 0, sizeof w);
    assert_int_equal(pthread_barrier_init(&g_sbarrier, NULL, SET_WORKERS + 1), 0);
    for (int i = 0; i < SET_WORKERS; i++) {
        w[i].id = i;
        assert_int_equal(pthread_create(&th[i], NULL, compute_loop, &w[i]), 0);
    }
    pthread_barrier_wait(&g_sbarrier); /* every worker's context exists: no creation reads the environment now */
    char fail[2048] = "";
    mlstm_context *prev = NULL;
    int kprev = 0, rounds = 0;
    for (int r = 0; r < SET_MAX && !fail[0]; r++) { /* the settings in turn, the default last */
        const int k = (r + 1) % SET_MAX, p = r % SET_PROBS, q = (p + 1) % SET_PROBS;
        if (!g_sok[k])
            continue;
        apply_setting(k);
        mlstm_context *ctx = NULL;
        if (rel_context_open(NULL, &ctx, why, sizeof why) != MLSTM_OK) {
            snprintf(fail, sizeof fail, "round %d: context under %s: %s", r, k_settings[k].name, why);
            break;
        }
        rel_problem out;
        if (run_setting(ctx, k, p, r % 2, &out, &g_swant[k][p], msg, sizeof msg))
            snprintf(fail, sizeof fail, "round %d: new context under %s, problem %d: %s", r, k_settings[k].name, p,
                     msg);
        rel_problem_free(&out);
        /* the previous context, created under another setting, still computes by its own */
        if (prev && !fail[0]) {
            if (run_setting(prev, kprev, q, 0, &out, &g_swant[kprev][q], msg, sizeof msg))
                snprintf(fail, sizeof fail, "round %d: context created under %s, after one under %s: problem %d: %s",
                         r, k_settings[kprev].name, k_settings[k].name, q, msg);
            rel_problem_free(&out);
        }
        mlstm_context_destroy(prev);
        prev = ctx;
        kprev = k;
        rounds++;
    }
    mlstm_context_destroy(prev);
    atomic_store(&g_sdone, 1);
    int runs = 0;
    for (int i = 0; i < SET_WORKERS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        runs += w[i].runs;
    }
    pthread_barrier_destroy(&g_sbarrier);

    for (int v = 0; v < SET_VARS; v++) {
        if (saved[v])
            setenv(k_set_vars[v], saved[v], 1);
        else
            unsetenv(k_set_vars[v]);
        free((void *)saved[v]);
    }
    for (int k = 0; k < SET_MAX; k++)
        for (int p = 0; p < SET_PROBS; p++)
            rel_problem_free(&g_swant[k][p]);
    for (int p = 0; p < SET_PROBS; p++)
        rel_problem_free(&g_sin[p]);

    printf("  %d settings, %d contexts created while %d threads ran %d forward+backward calls\n", nok, rounds,
           SET_WORKERS, runs);
    int failed = fail[0] != 0;
    if (failed)
        print_error("%s\n", fail);
    for (int i = 0; i < SET_WORKERS; i++)
        if (w[i].fail[0]) {
            print_error("%s\n", w[i].fail);
            failed = 1;
        }
    assert_false(failed);
    assert_int_equal(rounds, nok);
    assert_true(runs >= SET_WORKERS * SET_WORKER_MIN_RUNS);
}

int main(void)
{
    g_ctx = rel_context_or_skip("test_threads");
    make_problems();
    for (int k = 0; k < NPROB; k++) { /* the single-threaded results */
        if (rel_problem_clone(&g_want[k], &g_in[k]) != 0)
            return 1;
        int st = rel_run_fwd_bwd(g_ctx, &g_want[k]);
        if (st != MLSTM_OK) {
            fprintf(stderr, "FAIL test_threads: single-threaded problem %d: %s: %s\n", k, mlstm_status_string(st),
                    mlstm_context_last_error(g_ctx));
            return 1;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_contexts_match_single_thread),
        cmocka_unit_test(test_main_context_still_matches),
        cmocka_unit_test(test_settings_per_context_while_computing),
    };
    const char *filter = getenv("MLSTM_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    int rc = cmocka_run_group_tests_name("threads", tests, NULL, NULL);
    for (int k = 0; k < NPROB; k++) {
        rel_problem_free(&g_in[k]);
        rel_problem_free(&g_want[k]);
    }
    mlstm_context_destroy(g_ctx);
    return rc;
}
