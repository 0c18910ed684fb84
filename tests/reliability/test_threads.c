/* Thread safety (cmocka): several pthreads, each with its own context on the backend MLSTM_BACKEND selects, run
 * forward+backward concurrently (host-array and device-buffer paths, contexts created and destroyed while others
 * compute) and must match the single-threaded results bitwise; failures recorded concurrently stay separate
 * (mlstm_last_error_global is per thread, mlstm_context_last_error per context). No device: exit 77. */
#define _DEFAULT_SOURCE /* mmap flags, mkdtemp, setenv, pthread barriers, clock_gettime under -std=c11 */
#include <pthread.h>
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

static void make_problems(void)
{
    static const struct { int64_t B, NH, S; int dtype, grad, layout; } cfg[NPROB] = {
        {2, 2, 70, MLSTM_DTYPE_F32, MLSTM_GRAD_EXACT, 1},
        {1, 3, 33, MLSTM_DTYPE_BF16, MLSTM_GRAD_EXACT, 0},
        {2, 1, 65, MLSTM_DTYPE_F16, MLSTM_GRAD_NORMALIZER_DETACHED, 0},
    };
    for (int k = 0; k < NPROB; k++) {
        mlstm_desc d;
        mlstm_desc_init(&d);
        d.batch = cfg[k].B;
        d.heads = cfg[k].NH;
        d.seq_len = cfg[k].S;
        d.dqk = 3;
        d.dv = 5;
        d.dtype = cfg[k].dtype;
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
    };
    int rc = cmocka_run_group_tests_name("threads", tests, NULL, NULL);
    for (int k = 0; k < NPROB; k++) {
        rel_problem_free(&g_in[k]);
        rel_problem_free(&g_want[k]);
    }
    mlstm_context_destroy(g_ctx);
    return rc;
}
