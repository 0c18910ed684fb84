/* Shared helpers of the reliability tests (tests/reliability): opening a context or skipping with a printed
 * reason (exit 77), seeded host-array problems in any layout and dtype, forward+backward runs through the host
 * entry points, bitwise comparison of results, and guarded host arrays. Built on tests/util (RNG, dtype
 * conversion) and the public API only. */
#ifndef MLSTM_REL_UTIL_H
#define MLSTM_REL_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "mlstm.h"

#define REL_SKIP 77
#define REL_NT MLSTM_TENSOR_COUNT

/* Prints "SKIP <test>: <reason>" to stdout and exits with 77 (CTest's SKIP_RETURN_CODE). */
void rel_skip(const char *test, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3), noreturn))
#endif
    ;

/* Creates a context on `backend` (NULL: MLSTM_BACKEND / auto, the production path). A status that means "no
 * device here" (NO_DEVICE, BACKEND_UNAVAILABLE) is returned with the reason in why; any other failure too. */
int rel_context_open(const char *backend, mlstm_context **ctx, char *why, size_t why_len);
/* Opens the context from the environment or skips the whole test program (exit 77) when no device serves. */
mlstm_context *rel_context_or_skip(const char *test);

/* Gate regimes for rel_problem_fill. */
enum { REL_GATES_STD = 0, /* i ~ N(0,1), f ~ 3 + N(0,1) */
       REL_GATES_NORMAL   /* i, f ~ N(0,1) */ };

/* A problem on host arrays: every tensor of desc, sized to its extent (mlstm_tensor_extent), in the storage
 * dtype. Inputs (q, k, v, i, f, dh) are seeded; outputs start zeroed; h, m, n are filled by rel_run_fwd. */
typedef struct rel_problem {
    mlstm_desc d;
    size_t count[REL_NT];  /* elements */
    size_t bytes[REL_NT];
    void *t[REL_NT];
} rel_problem;

/* Allocates and fills (q, k, v, dh ~ N(0,1), gates per `gates`); qkv_scale multiplies the draws of q, k, v.
 * Returns 0, or -1 when desc is invalid or memory runs out. */
int rel_problem_init(rel_problem *p, const mlstm_desc *d, uint64_t seed, int gates, double qkv_scale);
void rel_problem_free(rel_problem *p);
/* Copies every array (same desc): dst must be freed by the caller with rel_problem_free. */
int rel_problem_clone(rel_problem *dst, const rel_problem *src);
/* Sets every element of tensor t (its whole extent) to x (stored in the tensor's dtype). */
void rel_problem_set_all(rel_problem *p, int t, double x);
/* Element (b, h, s, d) of tensor t through the desc's layout: pointer-free accessors in double. */
size_t rel_index(const mlstm_desc *d, int t, int64_t b, int64_t h, int64_t s, int64_t x);
double rel_get(const rel_problem *p, int t, int64_t b, int64_t h, int64_t s, int64_t x);
void rel_put(rel_problem *p, int t, int64_t b, int64_t h, int64_t s, int64_t x, double v);
int rel_tensor_dtype(const mlstm_desc *d, int t);
int64_t rel_tensor_dim(const mlstm_desc *d, int t);

/* mlstm_parallel_fwd_host into p's h, m, n; then (rel_run_fwd_bwd) mlstm_parallel_bwd_host into dq..df. */
int rel_run_fwd(mlstm_context *ctx, rel_problem *p);
int rel_run_fwd_bwd(mlstm_context *ctx, rel_problem *p);
/* The same through device buffers (mlstm_buffer_create/write, mlstm_parallel_fwd/bwd, read). */
int rel_run_fwd_bwd_device(mlstm_context *ctx, rel_problem *p);

/* 1 if every output of a (h, m, n, and dq..df when bwd) is bitwise equal to b's; else 0 with the first
 * difference described in msg. */
int rel_outputs_identical(const rel_problem *a, const rel_problem *b, int bwd, char *msg, size_t len);

/* Counts non-finite elements of tensor t over the elements its layout addresses. */
size_t rel_count_nonfinite(const rel_problem *p, int t);

const char *rel_tensor_name(int t);
const char *rel_dtype_name(int dtype);

#endif /* MLSTM_REL_UTIL_H */
