/* fwd.cl: mlstm_fwd_kernel, the tiled forward pass of the mLSTM parallel formulation. One work-group per
 * (batch, head, query tile) walks the key tiles from the diagonal back to tile 0 with an online stabiliser
 * m and normaliser l, rescaling its f32 h accumulator as FlashAttention does. Gate sums are tile-local plus
 * a compensated (hi, lo) offset between the key tile and the query tile, so logD keeps small magnitudes. */
#ifndef MLSTM_COMMON_CL
#include "common.cl"
#endif

/* Per element: logD_tj - m_t = (A_t + kF[j]) + (i_j - m_t), where A_t = F_t - F_(end of key tile) is
 * -kF[t] on the diagonal tile and qF[t] + offset below it (all terms <= 0 there: no cancellation), and
 * i_j - m_t is exact when they are close (the case that matters with large input gates).
 * Outputs: h (storage dtype), m_t, and n_t stored signed (l_t if |l_t| > exp(-m_t), else exp(-m_t)). */
__kernel __attribute__((reqd_work_group_size(NT, 1, 1)))
void mlstm_fwd_kernel(const __global stor_t *q, const long4 Lq,
                      const __global stor_t *k, const long4 Lk,
                      const __global stor_t *v, const long4 Lv,
                      const __global float *ig, const long4 Li,
                      const __global float *fg, const long4 Lf,
                      __global stor_t *h, const long4 Lh,
                      __global float *mo, const long4 Lm,
                      __global float *no, const long4 Ln,
                      const int S, const int ntiles, const long NH, const int dim_qk, const int dim_v,
                      const float scale, const float eps)
{
    __local float xs[DCHUNK * BLKP], ys[DCHUNK * BLKP]; /* q, k head-dim slices (transposed) */
    __local float ct[BLK * BLKP];                       /* C tile: C_tj = S_tj * D'_tj */
    __local float zs[RCHUNK * DVP];                     /* rows of v */
    __local float qF[BLK], kF[BLK], kI[BLK], kG[BLK], ktot[1];
    __local int busy[1];

    const int lid = get_local_id(0), r = lid / TC, c = lid % TC;
    const long grp = get_group_id(0);
    const int qt = ntiles - 1 - (int)(grp % ntiles); /* the longest rows first */
    const long bh = grp / ntiles, bb = bh / NH, hh = bh % NH;
    const int q0 = qt * BLK, nq = min(BLK, S - q0);
    const __global stor_t *qb = q + HEAD_BASE(Lq, bb, hh) + q0 * Lq.s3;
    const __global stor_t *kb = k + HEAD_BASE(Lk, bb, hh);
    const __global stor_t *vb = v + HEAD_BASE(Lv, bb, hh);
    const __global float *ib = ig + HEAD_BASE(Li, bb, hh);
    const __global float *fb = fg + HEAD_BASE(Lf, bb, hh);

    /* qF[t]: inclusive cumsum of a inside the query tile */
    if (lid < BLK)
        qF[lid] = lid < nq ? logsig(fb[(q0 + lid) * Lf.s3]) : 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0)
        LOOP_ROLLED for (int t = 1; t < BLK; ++t) qF[t] += qF[t - 1];

    float acc[RR][NV], m_r[RR];
    float2 lpart[RR]; /* this work-item's part of l_t (its columns of C), compensated */
    for (int a = 0; a < RR; ++a) {
        m_r[a] = MLSTM_M_FLOOR;
        lpart[a] = (float2)(0.0f, 0.0f);
        for (int e = 0; e < NV; ++e) acc[a][e] = 0.0f;
    }
    float2 off = (float2)(0.0f, 0.0f); /* sum of a over the key tiles strictly between kt and qt */

    for (int kt = qt; kt >= 0; --kt) {
        const int k0 = kt * BLK, nk = min(BLK, S - k0);
        const bool diag = kt == qt;
        barrier(CLK_LOCAL_MEM_FENCE);
        key_scan(ib + k0 * Li.s3, Li.s3, fb + k0 * Lf.s3, Lf.s3, nk, kF, kI, kG, ktot, busy);

        float A[RR], mnew[RR];
        const float offv = off.x + off.y;
        int any = diag;
        for (int a = 0; a < RR; ++a) {
            const int t = r + TR * a;
            A[a] = diag ? -kF[t] : qF[t] + offv;
            const float rowmax = A[a] + kG[diag ? t : BLK - 1];
            mnew[a] = fmax(m_r[a], rowmax);
            any |= rowmax - m_r[a] > MLSTM_SKIP_BELOW;
        }
        if (any)
            atomic_or(busy, 1);
        barrier(CLK_LOCAL_MEM_FENCE);

        if (busy[0]) { /* uniform over the work-group */
            float s[RR][RC];
            for (int a = 0; a < RR; ++a)
                for (int b = 0; b < RC; ++b) s[a][b] = 0.0f;
            tile_dot(s, qb, Lq.s3, nq, kb + k0 * Lk.s3, Lk.s3, nk, DIM_QK, xs, ys);
            for (int a = 0; a < RR; ++a) {
                const int t = r + TR * a;
                const float alpha = exp(m_r[a] - mnew[a]);
                m_r[a] = mnew[a];
                lpart[a] *= alpha;
                LOOP_ROLLED for (int e = 0; e < NCOLS(DIM_V); ++e) acc[a][e] *= alpha;
                for (int b = 0; b < RC; ++b) {
                    const int j = c + TC * b;
                    const float val = (A[a] + kF[j]) + (kI[j] - m_r[a]);
                    const float d = (diag && j > t) ? 0.0f : exp(val);
                    const float cv = d != 0.0f ? (scale * s[a][b]) * d : 0.0f; /* masked: 0 even for s = inf */
                    ct[t * BLKP + j] = cv;
                    lpart[a] = csum_add(lpart[a], cv);
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            tile_acc_v(acc, ct, vb + k0 * Lv.s3, Lv.s3, nk, DIM_V, zs);
        }
        if (!diag)
            off = csum_add(off, ktot[0]);
    }

    const float2 lsum = reduce_rows(lpart, ct); /* l_t = sum_j C_tj, into qF (free now) */
    if (lid < BLK)
        qF[lid] = lsum.x + lsum.y;
    barrier(CLK_LOCAL_MEM_FENCE);
    __global stor_t *hb = h + HEAD_BASE(Lh, bb, hh);
    __global float *mb = mo + HEAD_BASE(Lm, bb, hh);
    __global float *nb = no + HEAD_BASE(Ln, bb, hh);
    for (int a = 0; a < RR; ++a) {
        const int t = r + TR * a;
        if (t >= nq)
            continue;
        const float en = exp(-m_r[a]), l = qF[t];
        const float nout = fabs(l) > en ? l : en;
        const float den = fabs(nout) + eps;
        const long row = (long)(q0 + t);
        LOOP_ROLLED for (int e = 0; e < NCOLS(DIM_V); ++e) {
            const int col = c + TC * e;
            if (col < DIM_V)
                STORET(hb, row * Lh.s3 + col, acc[a][e] / den);
        }
        if (c == 0) {
            mb[row * Lm.s3] = m_r[a];
            nb[row * Ln.s3] = nout;
        }
    }
}
