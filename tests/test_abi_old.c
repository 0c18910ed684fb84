/* The "old application" half of the ABI test: compiled against tests/abi/mlstm_0_1.h (the 0.1 desc, 14 layouts,
 * 408 bytes), not api/mlstm.h. It initialises its desc, runs a forward on host arrays and creates a plan, with
 * canary bytes right after the struct: the library must read only the caller's struct (a canary read as layouts
 * would be a garbage stride) and write nothing, neither into the struct nor beyond it. */
#include <string.h>
#include "abi/mlstm_0_1.h"
#include "test_abi.h"

#define CANARY 0xa5

/* The old desc with guard bytes behind it, as it would sit on an application's stack. */
typedef struct {
    mlstm_desc d;
    unsigned char after[512];
} guarded_desc;

static int canaries_intact(const guarded_desc *g)
{
    for (size_t b = 0; b < sizeof g->after; b++)
        if (g->after[b] != CANARY)
            return 0;
    return 1;
}

int abi_old_fwd(mlstm_context *ctx, const abi_problem *pr, const void *q, const void *k, const void *v,
                const float *i, const float *f, void *h, float *m, float *n, abi_old_report *rep)
{
    guarded_desc g;
    memset(&g, CANARY, sizeof g);
    mlstm_desc_init_sized(&g.d, sizeof g.d);
    rep->struct_size = g.d.struct_size;
    rep->init_kept_canaries = canaries_intact(&g);
    g.d.batch = pr->batch;
    g.d.heads = pr->heads;
    g.d.seq_len = pr->seq_len;
    g.d.dqk = pr->dqk;
    g.d.dv = pr->dv;
    g.d.dtype = pr->dtype;
    g.d.layout[pr->strided_role] = (mlstm_layout){pr->strided.batch, pr->strided.head, pr->strided.seq};
    mlstm_desc before = g.d;
    rep->extent_q = mlstm_tensor_extent(&g.d, 0);
    int st = mlstm_parallel_fwd_host(ctx, &g.d, q, k, v, i, f, h, m, n);
    mlstm_plan *plan = NULL;
    rep->plan_status = mlstm_plan_create(ctx, &g.d, 1u, &plan);
    mlstm_plan_destroy(plan);
    rep->call_kept_canaries = canaries_intact(&g);
    rep->desc_unchanged = memcmp(&before, &g.d, sizeof before) == 0;
    return st;
}
