/* The workspace layout of the materialised algorithm, shared by both backends (backends/opencl/materialized_cl.c,
 * backends/cuda/materialized_cuda.c) so that mlstm_workspace_size means the same on each: f32 arrays at element
 * offsets from the workspace's start, each 256-byte aligned. Header-only, plain C. */
#ifndef MLSTM_MAT_LAYOUT_H
#define MLSTM_MAT_LAYOUT_H

#include <stdint.h>
#include <string.h>
#include "params.h"

#define MLSTM_MAT_TILE_EDGE 32 /* tile edge of the element kernels (MT in kernels_cl/materialized.cl, .cu) */

typedef struct {
    uint64_t fh, fl;         /* F_t as (hi, lo)                                    G*S each */
    uint64_t r0, r1, r2;     /* per row: m; |n| + eps (fwd) or 1 / (|n| + eps); delta */
    uint64_t rh, rl;         /* per-tile row sums (hi, lo)                        G*ntiles*S each */
    uint64_t ch, cl;         /* per-tile column sums (hi, lo; backward)           G*ntiles*S each */
    uint64_t qf, kf, vf, xf; /* f32 q, k, v, and h (fwd) or dh (bwd)              G*S*D */
    uint64_t dq, dk, dv;     /* f32 gradients (backward) */
    uint64_t sm, pm;         /* the S x S matrices: q k^T (then C), dh v^T (then P; backward) */
    uint64_t blas;           /* extra elements for the BLAS's own scratch (cuBLAS), or 0 */
    uint64_t total;          /* elements in all */
} mlstm_mat_layout_t;

/* a * b, 0 when it exceeds 2^62. */
static inline int mlstm_mat_mul(uint64_t a, uint64_t b, uint64_t *r)
{
    if (a != 0 && b > (UINT64_C(1) << 62) / a)
        return 0;
    *r = a * b;
    return 1;
}

/* Places count elements at *at (rounded up to 64 elements = 256 bytes). */
static inline int mlstm_mat_take(uint64_t *at, uint64_t count, uint64_t *off)
{
    *off = *at;
    const uint64_t rounded = (count + 63) / 64 * 64;
    if (rounded > (UINT64_C(1) << 62) - *at)
        return 0;
    *at += rounded;
    return 1;
}

/* The layout of p's call; blas_elems: elements reserved last for the BLAS's scratch. 0 on overflow. */
static inline int mlstm_mat_layout(const mlstm_params *p, int backward, uint64_t blas_elems, mlstm_mat_layout_t *L)
{
    memset(L, 0, sizeof *L);
    const uint64_t S = (uint64_t)p->seq_len, nt = (S + MLSTM_MAT_TILE_EDGE - 1) / MLSTM_MAT_TILE_EDGE;
    uint64_t G, gs, gts, gsq, gsk, gsv, at = 0;
    if (!mlstm_mat_mul((uint64_t)p->batch, (uint64_t)p->heads, &G) || !mlstm_mat_mul(G, S, &gs) ||
        !mlstm_mat_mul(gs, nt, &gts) || !mlstm_mat_mul(gs, S, &gsq) || !mlstm_mat_mul(gs, (uint64_t)p->dqk, &gsk) ||
        !mlstm_mat_mul(gs, (uint64_t)p->dv, &gsv))
        return 0;
    int ok = mlstm_mat_take(&at, gs, &L->fh) && mlstm_mat_take(&at, gs, &L->fl) && mlstm_mat_take(&at, gs, &L->r0) &&
             mlstm_mat_take(&at, gs, &L->r1) && mlstm_mat_take(&at, gs, &L->r2) &&
             mlstm_mat_take(&at, gts, &L->rh) && mlstm_mat_take(&at, gts, &L->rl) &&
             mlstm_mat_take(&at, gsk, &L->qf) && mlstm_mat_take(&at, gsk, &L->kf) &&
             mlstm_mat_take(&at, gsv, &L->vf) && mlstm_mat_take(&at, gsv, &L->xf);
    if (backward)
        ok = ok && mlstm_mat_take(&at, gts, &L->ch) && mlstm_mat_take(&at, gts, &L->cl) &&
             mlstm_mat_take(&at, gsk, &L->dq) && mlstm_mat_take(&at, gsk, &L->dk) && mlstm_mat_take(&at, gsv, &L->dv);
    ok = ok && mlstm_mat_take(&at, gsq, &L->sm) && (!backward || mlstm_mat_take(&at, gsq, &L->pm)) &&
         (blas_elems == 0 || mlstm_mat_take(&at, blas_elems, &L->blas));
    L->total = at;
    return ok;
}

#endif /* MLSTM_MAT_LAYOUT_H */
