/* The interface between the two halves of the ABI test (test_abi.c, built against api/mlstm.h, and test_abi_old.c,
 * built against the frozen 0.1 header): plain types only, so both headers can include it. */
#ifndef MLSTM_TEST_ABI_H
#define MLSTM_TEST_ABI_H

#include <stddef.h>
#include <stdint.h>

typedef struct abi_problem {
    int64_t batch, heads, seq_len, dqk, dv;
    int dtype;
    int strided_role;                              /* one tensor with a non-contiguous layout */
    struct { int64_t batch, head, seq; } strided;
} abi_problem;

typedef struct abi_old_report {
    uint32_t struct_size;     /* what the init set: the old sizeof */
    int init_kept_canaries;   /* the init wrote nothing beyond the old struct */
    int call_kept_canaries;   /* neither did the forward nor the plan */
    int desc_unchanged;       /* nor into the struct */
    size_t extent_q;
    int plan_status;
} abi_old_report;

struct mlstm_context;
int abi_old_fwd(struct mlstm_context *ctx, const abi_problem *pr, const void *q, const void *k, const void *v,
                const float *i, const float *f, void *h, float *m, float *n, abi_old_report *rep);

#endif /* MLSTM_TEST_ABI_H */
