/* bwd.cl: the backward pass, four kernels run in order on one in-order queue, with no scratch memory:
 *   mlstm_bwd_prep_kernel   delta_t = sigma_t * (dh_t . h_t) into df (exact mode only)
 *   mlstm_bwd_dkdv_kernel   per key tile, walking query tiles diagonal..end: dk, dv, di_j = sum_t M_tj
 *   mlstm_bwd_dq_kernel     per query tile, walking key tiles diagonal..0: dq, and into df the tile-local
 *                           suffix sums of dF_u = sum_j M_uj - di_u
 *   mlstm_bwd_gates_kernel  per (b, h): adds the later tiles' totals, df_u = da_u * sigmoid(-f_u)
 * with M_tj = P_tj S_tj. Gate gradients by construction: both tile kernels compute bitwise the same M_tj and
 * sum it in compensated (hi, lo) form, di's rounding error travels to the dQ kernel in dq's storage, and the
 * reverse cumsum is tile-local, so da_u = sum_(t >= u > j) M_tj loses no accuracy as S grows. */
#ifndef MLSTM_COMMON_CL
#include "common.cl"
#endif

/* sigma_t from the signed n the forward stored: -1 / +1 when the |l_t| branch won, 0 when exp(-m_t) did.
 * n > exp(-m) is tested with a margin of a few ulps, so an exp() that rounds differently here than in
 * the forward (e.g. vectorised vs scalar) cannot turn the exp(-m) branch into +1. */
inline float mlstm_sigma(float n, float m)
{
    return n < 0.0f ? -1.0f : (n > exp(-m) * (1.0f + 8.0f * FLT_EPSILON) ? 1.0f : 0.0f);
}

/* One work-item per row (b, h, t): df_t = delta_t. */
__kernel void mlstm_bwd_prep_kernel(const __global stor_t *h, const long4 Lh,
                                    const __global stor_t *dh, const long4 Ldh,
                                    const __global float *m, const long4 Lm,
                                    const __global float *n, const long4 Ln,
                                    __global float *df, const long4 Ldf,
                                    const int S, const long NH, const long rows, const int dim_v)
{
    const long gid = get_global_id(0);
    if (gid >= rows)
        return;
    const long bh = gid / S, t = gid - bh * S, bb = bh / NH, hh = bh % NH;
    const float sigma = mlstm_sigma(n[HEAD_BASE(Ln, bb, hh) + t * Ln.s3], m[HEAD_BASE(Lm, bb, hh) + t * Lm.s3]);
    float delta = 0.0f;
    if (sigma != 0.0f) {
        const __global stor_t *hr = h + HEAD_BASE(Lh, bb, hh) + t * Lh.s3;
        const __global stor_t *dr = dh + HEAD_BASE(Ldh, bb, hh) + t * Ldh.s3;
        float dot = 0.0f;
        LOOP_ROLLED for (int d = 0; d < DIM_V; ++d) dot += LOADT(dr, d) * LOADT(hr, d);
        delta = sigma * dot;
    }
    df[HEAD_BASE(Ldf, bb, hh) + t * Ldf.s3] = delta;
}

/* Loads the per-row statistics of query tile [0, nq) (pointers at the tile start) into local memory:
 * qM = m_t, qN = 1 / (|n_t| + eps), qD = delta_t (0 when detached), qA = a_t; zeros past the sequence. */
inline void load_row_stats(const __global float *mb, long ms, const __global float *nb, long ns,
                           const __global float *db, long ds, const __global float *fb, long fs, int nq,
                           int exact, float eps, __local float *qM, __local float *qN, __local float *qD,
                           __local float *qA)
{
    const int t = get_local_id(0);
    if (t < BLK) {
        const bool ok = t < nq;
        qM[t] = ok ? mb[t * ms] : 0.0f;
        qN[t] = ok ? 1.0f / (fabs(nb[t * ns]) + eps) : 0.0f;
        qD[t] = (ok && exact) ? db[t * ds] : 0.0f;
        qA[t] = ok ? logsig(fb[t * fs]) : 0.0f;
    }
}

/* The element (t, j) of a tile, computed identically by the dK/dV and dQ kernels (so their M_tj agree bit
 * for bit): s = q_t . k_j, dp = dh_t . v_j, A = A_t (F_t - F_(end of key tile)). Returns P_tj; *w gets
 * D'_tj / (|n_t| + eps), *mv gets M_tj = P_tj * S_tj. A masked element (!live) is exactly 0 in all three,
 * whatever its operands (an inf h_t, hence delta_t, must not turn the masked part of the tile into NaN). */
inline float element(float s, float dp, float A, float kf, float ki, float qm, float qn, float qd, bool live,
                     float scale, float *w, float *mv)
{
    const float d = live ? exp((A + kf) + (ki - qm)) : 0.0f;
    *w = live ? qn * d : 0.0f;
    const float p = live ? (dp - qd) * *w : 0.0f;
    *mv = live ? p * (scale * s) : 0.0f;
    return p;
}

/* One work-group per (b, h, key tile). dk_j = scale * sum_t P_tj q_t, dv_j = sum_t C_tj dh_t / (|n_t|+eps),
 * di_j = sum_t M_tj (compensated); di's rounding error goes to dq[j][0], which the dQ kernel reads before
 * writing dq. Reads delta from df. */
__kernel __attribute__((reqd_work_group_size(NT, 1, 1)))
void mlstm_bwd_dkdv_kernel(const __global stor_t *q, const long4 Lq,
                           const __global stor_t *k, const long4 Lk,
                           const __global stor_t *v, const long4 Lv,
                           const __global float *ig, const long4 Li,
                           const __global float *fg, const long4 Lf,
                           const __global float *m, const long4 Lm,
                           const __global float *n, const long4 Ln,
                           const __global stor_t *dh, const long4 Ldh,
                           const __global float *df, const long4 Ldf,
                           __global stor_t *dk, const long4 Ldk,
                           __global stor_t *dv, const long4 Ldv,
                           __global float *di, const long4 Ldi,
                           __global stor_t *dq, const long4 Ldq,
                           const int S, const int ntiles, const long NH, const int dim_qk, const int dim_v,
                           const int exact, const float scale, const float eps)
{
    __local float xs[DCHUNK * BLKP], ys[DCHUNK * BLKP];
    __local float tt[BLK * BLKP];           /* [key j][query t]: C/(|n|+eps), then P */
    __local float zs[RCHUNK * DMAXP];       /* rows of dh or q */
    __local float kF[BLK], kI[BLK], kG[BLK], ktot[1];
    __local float qM[BLK], qN[BLK], qD[BLK], qA[BLK], qtot[1];
    __local int busy[1];

    const int lid = get_local_id(0), r = lid / TC, c = lid % TC;
    const long grp = get_group_id(0);
    const int kt = (int)(grp % ntiles); /* the longest walks first */
    const long bh = grp / ntiles, bb = bh / NH, hh = bh % NH;
    const int k0 = kt * BLK, nk = min(BLK, S - k0);
    const __global stor_t *qb = q + HEAD_BASE(Lq, bb, hh);
    const __global stor_t *kb = k + HEAD_BASE(Lk, bb, hh) + k0 * Lk.s3;
    const __global stor_t *vb = v + HEAD_BASE(Lv, bb, hh) + k0 * Lv.s3;
    const __global stor_t *dhb = dh + HEAD_BASE(Ldh, bb, hh);
    const __global float *fb = fg + HEAD_BASE(Lf, bb, hh);
    const __global float *mb = m + HEAD_BASE(Lm, bb, hh);
    const __global float *nb = n + HEAD_BASE(Ln, bb, hh);
    const __global float *db = df + HEAD_BASE(Ldf, bb, hh);

    key_scan(ig + HEAD_BASE(Li, bb, hh) + k0 * Li.s3, Li.s3, fb + k0 * Lf.s3, Lf.s3, nk, kF, kI, kG, ktot, busy);

    float dka[RR][NQK], dva[RR][NV];
    float2 msum[RR]; /* this work-item's part of sum_t M_tj per key row */
    for (int a = 0; a < RR; ++a) {
        msum[a] = (float2)(0.0f, 0.0f);
        for (int e = 0; e < NQK; ++e) dka[a][e] = 0.0f;
        for (int e = 0; e < NV; ++e) dva[a][e] = 0.0f;
    }
    float2 off = (float2)(0.0f, 0.0f); /* sum of a over the query tiles strictly between kt and qt */

    for (int qt = kt; qt < ntiles; ++qt) {
        const int q0 = qt * BLK, nq = min(BLK, S - q0);
        const bool diag = qt == kt;
        barrier(CLK_LOCAL_MEM_FENCE);
        load_row_stats(mb + q0 * Lm.s3, Lm.s3, nb + q0 * Ln.s3, Ln.s3, db + q0 * Ldf.s3, Ldf.s3,
                       fb + q0 * Lf.s3, Lf.s3, nq, exact, eps, qM, qN, qD, qA);
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid == 0) { /* qA[t] := A_t = F_t - F_(end of key tile); the skip test over the whole tile */
            const float offv = off.x + off.y;
            float s = 0.0f, bound = -INFINITY;
            LOOP_ROLLED for (int t = 0; t < BLK; ++t) {
                s += qA[t];
                qA[t] = diag ? -kF[t] : s + offv;
                if (t < nq)
                    bound = fmax(bound, qA[t] - qM[t]);
            }
            *qtot = s;
            busy[0] = diag || bound + kG[BLK - 1] > MLSTM_SKIP_BELOW;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        if (busy[0]) { /* uniform over the work-group */
            float s[RR][RC], p[RR][RC];
            for (int a = 0; a < RR; ++a)
                for (int b = 0; b < RC; ++b) s[a][b] = p[a][b] = 0.0f;
            tile_dot(s, kb, Lk.s3, nk, qb + q0 * Lq.s3, Lq.s3, nq, DIM_QK, xs, ys);
            tile_dot(p, vb, Lv.s3, nk, dhb + q0 * Ldh.s3, Ldh.s3, nq, DIM_V, xs, ys);
            for (int a = 0; a < RR; ++a) {
                const int j = r + TR * a;
                for (int b = 0; b < RC; ++b) {
                    const int t = c + TC * b;
                    float w, mv;
                    p[a][b] = element(s[a][b], p[a][b], qA[t], kF[j], kI[j], qM[t], qN[t], qD[t],
                                      !(diag && j > t) && t < nq, scale, &w, &mv);
                    tt[j * BLKP + t] = w != 0.0f ? (scale * s[a][b]) * w : 0.0f; /* C_tj / (|n_t| + eps) */
                    msum[a] = csum_add(msum[a], mv);
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            tile_acc_v(dva, tt, dhb + q0 * Ldh.s3, Ldh.s3, nq, DIM_V, zs);
            for (int a = 0; a < RR; ++a)
                for (int b = 0; b < RC; ++b) tt[(r + TR * a) * BLKP + c + TC * b] = p[a][b];
            barrier(CLK_LOCAL_MEM_FENCE);
            tile_acc_qk(dka, tt, qb + q0 * Lq.s3, Lq.s3, nq, DIM_QK, zs);
        }
        if (!diag)
            off = csum_add(off, qtot[0]);
    }

    __global stor_t *dkb = dk + HEAD_BASE(Ldk, bb, hh) + k0 * Ldk.s3;
    __global stor_t *dvb = dv + HEAD_BASE(Ldv, bb, hh) + k0 * Ldv.s3;
    for (int a = 0; a < RR; ++a) {
        const int j = r + TR * a;
        LOOP_ROLLED for (int e = 0; e < NCOLS(DIM_QK); ++e) {
            const int col = c + TC * e;
            if (j < nk && col < DIM_QK)
                STORET(dkb, j * Ldk.s3 + col, scale * dka[a][e]);
        }
        LOOP_ROLLED for (int e = 0; e < NCOLS(DIM_V); ++e) {
            const int col = c + TC * e;
            if (j < nk && col < DIM_V)
                STORET(dvb, j * Ldv.s3 + col, dva[a][e]);
        }
    }
    const float2 sum = csum_split(reduce_rows(msum, tt));
    if (lid < nk) {
        di[HEAD_BASE(Ldi, bb, hh) + (k0 + lid) * Ldi.s3] = sum.x;
#if MLSTM_DTYPE == 2 /* a residual beyond f16's range (|di| > ~1e12) is kept at the largest finite value */
        STORET(dq, HEAD_BASE(Ldq, bb, hh) + (k0 + lid) * Ldq.s3, clamp(sum.y, -65504.0f, 65504.0f));
#else
        STORET(dq, HEAD_BASE(Ldq, bb, hh) + (k0 + lid) * Ldq.s3, sum.y);
#endif
    }
}

/* One work-group per (b, h, query tile). dq_t = scale * sum_j P_tj k_j. Then, with dF_u = sum_j M_uj - di_u
 * (di plus its rounding error left in dq[u][0] by the dK/dV kernel), writes df_u := dF_u + ... + dF_(end of
 * tile), overwriting the delta_t this work-group read at its start. */
__kernel __attribute__((reqd_work_group_size(NT, 1, 1)))
void mlstm_bwd_dq_kernel(const __global stor_t *q, const long4 Lq,
                         const __global stor_t *k, const long4 Lk,
                         const __global stor_t *v, const long4 Lv,
                         const __global float *ig, const long4 Li,
                         const __global float *fg, const long4 Lf,
                         const __global float *m, const long4 Lm,
                         const __global float *n, const long4 Ln,
                         const __global stor_t *dh, const long4 Ldh,
                         __global float *df, const long4 Ldf,
                         const __global float *di, const long4 Ldi,
                         __global stor_t *dq, const long4 Ldq,
                         const int S, const int ntiles, const long NH, const int dim_qk, const int dim_v,
                         const int exact, const float scale, const float eps)
{
    __local float xs[DCHUNK * BLKP], ys[DCHUNK * BLKP];
    __local float tt[BLK * BLKP];           /* [query t][key j]: P */
    __local float zs[RCHUNK * DQKP];        /* rows of k */
    __local float kF[BLK], kI[BLK], kG[BLK], ktot[1];
    __local float qM[BLK], qN[BLK], qD[BLK], qF[BLK], qE[BLK];
    __local int busy[1];

    const int lid = get_local_id(0), r = lid / TC, c = lid % TC;
    const long grp = get_group_id(0);
    const int qt = ntiles - 1 - (int)(grp % ntiles);
    const long bh = grp / ntiles, bb = bh / NH, hh = bh % NH;
    const int q0 = qt * BLK, nq = min(BLK, S - q0);
    const __global stor_t *qb = q + HEAD_BASE(Lq, bb, hh) + q0 * Lq.s3;
    const __global stor_t *kb = k + HEAD_BASE(Lk, bb, hh);
    const __global stor_t *vb = v + HEAD_BASE(Lv, bb, hh);
    const __global stor_t *dhb = dh + HEAD_BASE(Ldh, bb, hh) + q0 * Ldh.s3;
    const __global float *ib = ig + HEAD_BASE(Li, bb, hh);
    const __global float *fb = fg + HEAD_BASE(Lf, bb, hh);
    __global float *dfb = df + HEAD_BASE(Ldf, bb, hh) + q0 * Ldf.s3;
    __global stor_t *dqb = dq + HEAD_BASE(Ldq, bb, hh) + q0 * Ldq.s3;

    load_row_stats(m + HEAD_BASE(Lm, bb, hh) + q0 * Lm.s3, Lm.s3, n + HEAD_BASE(Ln, bb, hh) + q0 * Ln.s3, Ln.s3,
                   dfb, Ldf.s3, fb + q0 * Lf.s3, Lf.s3, nq, exact, eps, qM, qN, qD, qF);
    if (lid < BLK) /* di's rounding error, before this work-group overwrites dq */
        qE[lid] = lid < nq ? LOADT(dqb, lid * Ldq.s3) : 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0)
        LOOP_ROLLED for (int t = 1; t < BLK; ++t) qF[t] += qF[t - 1];

    float dqa[RR][NQK];
    float2 msum[RR]; /* this work-item's part of sum_j M_tj per query row */
    for (int a = 0; a < RR; ++a) {
        msum[a] = (float2)(0.0f, 0.0f);
        for (int e = 0; e < NQK; ++e) dqa[a][e] = 0.0f;
    }
    float2 off = (float2)(0.0f, 0.0f); /* sum of a over the key tiles strictly between kt and qt */

    for (int kt = qt; kt >= 0; --kt) {
        const int k0 = kt * BLK, nk = min(BLK, S - k0);
        const bool diag = kt == qt;
        barrier(CLK_LOCAL_MEM_FENCE);
        key_scan(ib + k0 * Li.s3, Li.s3, fb + k0 * Lf.s3, Lf.s3, nk, kF, kI, kG, ktot, busy);
        float A[RR]; /* A_t = F_t - F_(end of key tile) for this work-item's rows */
        const float offv = off.x + off.y;
        int any = diag;
        for (int a = 0; a < RR; ++a) {
            const int t = r + TR * a;
            A[a] = diag ? -kF[t] : qF[t] + offv;
            any |= t < nq && (A[a] - qM[t]) + kG[BLK - 1] > MLSTM_SKIP_BELOW;
        }
        if (any)
            atomic_or(busy, 1);
        barrier(CLK_LOCAL_MEM_FENCE);

        if (busy[0]) { /* uniform over the work-group */
            float s[RR][RC], p[RR][RC];
            for (int a = 0; a < RR; ++a)
                for (int b = 0; b < RC; ++b) s[a][b] = p[a][b] = 0.0f;
            tile_dot(s, qb, Lq.s3, nq, kb + k0 * Lk.s3, Lk.s3, nk, DIM_QK, xs, ys);
            tile_dot(p, dhb, Ldh.s3, nq, vb + k0 * Lv.s3, Lv.s3, nk, DIM_V, xs, ys);
            for (int a = 0; a < RR; ++a) {
                const int t = r + TR * a;
                for (int b = 0; b < RC; ++b) {
                    const int j = c + TC * b;
                    float w, mv;
                    tt[t * BLKP + j] = element(s[a][b], p[a][b], A[a], kF[j], kI[j], qM[t], qN[t], qD[t],
                                               !(diag && j > t) && t < nq, scale, &w, &mv);
                    msum[a] = csum_add(msum[a], mv);
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            tile_acc_qk(dqa, tt, kb + k0 * Lk.s3, Lk.s3, nk, DIM_QK, zs);
        }
        if (!diag)
            off = csum_add(off, ktot[0]);
    }

    for (int a = 0; a < RR; ++a) {
        const int t = r + TR * a;
        LOOP_ROLLED for (int e = 0; e < NCOLS(DIM_QK); ++e) {
            const int col = c + TC * e;
            if (t < nq && col < DIM_QK)
                STORET(dqb, t * Ldq.s3 + col, scale * dqa[a][e]);
        }
    }
    /* dF_u as a pair in (qM, qN) (free now), then the tile-local suffix sums */
    const float2 rsum = reduce_rows(msum, tt);
    if (lid < nq) {
        const float dis = di[HEAD_BASE(Ldi, bb, hh) + (q0 + lid) * Ldi.s3];
        const float2 dF = csum_add(csum_add(rsum, -dis), -qE[lid]);
        qM[lid] = dF.x;
        qN[lid] = dF.y;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) {
        float2 run = (float2)(0.0f, 0.0f);
        LOOP_ROLLED for (int t = nq - 1; t >= 0; --t) {
            run = csum_add2(run, (float2)(qM[t], qN[t]));
            dfb[t * Ldf.s3] = run.x + run.y;
        }
    }
}

/* One work-group per (b, h). df holds each tile's suffix sums of dF (so df at a tile's first position is the
 * tile's total); da_u = df_u + the totals of all later tiles (compensated: per-work-item runs of tiles, then
 * a serial suffix over the runs), and df_u := da_u * sigmoid(-f_u), in place. */
__kernel __attribute__((reqd_work_group_size(NT, 1, 1)))
void mlstm_bwd_gates_kernel(const __global float *fg, const long4 Lf,
                            __global float *df, const long4 Ldf,
                            const int S, const int ntiles, const long NH)
{
    __local float2 part[NT];
    const int lid = get_local_id(0);
    const long bh = get_group_id(0), bb = bh / NH, hh = bh % NH;
    const __global float *fb = fg + HEAD_BASE(Lf, bb, hh);
    __global float *db = df + HEAD_BASE(Ldf, bb, hh);
    const int len = (ntiles + NT - 1) / NT, w0 = min(ntiles, lid * len), w1 = min(ntiles, w0 + len);

    float2 sum = (float2)(0.0f, 0.0f);
    for (int w = w0; w < w1; ++w)
        sum = csum_add(sum, db[(long)w * BLK * Ldf.s3]);
    part[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) { /* part[x] := the totals of the runs after x */
        float2 run = (float2)(0.0f, 0.0f);
        for (int x = NT - 1; x >= 0; --x) {
            const float2 y = part[x];
            part[x] = run;
            run = csum_add2(run, y);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    sum = part[lid];
    for (int w = w1 - 1; w >= w0; --w) {
        const int u0 = w * BLK, u1 = min(S, u0 + BLK);
        const float tot = db[u0 * Ldf.s3], later = sum.x + sum.y;
        for (int u = u0; u < u1; ++u)
            db[u * Ldf.s3] = (db[u * Ldf.s3] + later) * sigm_neg(fb[u * Lf.s3]);
        sum = csum_add(sum, tot);
    }
}
