/* materialized.cl: the row and element kernels of the materialised algorithm (backends/opencl/materialized_cl.c).
 * The S x S matrices live in a workspace and the matrix products run as CLBlast SGEMMs between these kernels;
 * here: packing tensors to contiguous f32 and back, the gate scan (compensated cumsum F and the stabiliser m),
 * the element kernels that turn q k^T (and dh v^T) into C (and P, C / (|n| + eps)) tile by tile with
 * compensated partial row / column sums, and the per-row and per-(b, h) finishing kernels. The host prepends
 * common.cl (dtype loads/stores, logsig, compensated sums). Workspace arrays are f32, passed as one buffer plus
 * element offsets; slice g = b * NH + h of an S-long array starts at g * S, of an S x S matrix at g * S * S. */
#ifndef MLSTM_COMMON_CL
#include "common.cl"
#endif

#define MT    32 /* tile edge of the element kernels (MLSTM_MAT_TILE_EDGE of backends/mat_layout.h) */
#define MROWS 8  /* work-items along a tile's rows; each owns MT / MROWS rows of one column */
#define MSCAN 64 /* work-items of the per-(b, h) scan kernels */

/* (hi, lo) pairs compared by value (both normalised by csum_split) */
inline float2 pair_max(float2 a, float2 b) { return (b.x > a.x || (b.x == a.x && b.y > a.y)) ? b : a; }

/* sigma_t from the signed n the forward stored, as bwd.cl's mlstm_sigma (the same margin of a few ulps). */
inline float mat_sigma(float n, float m)
{
    return n < 0.0f ? -1.0f : (n > exp(-m) * (1.0f + 8.0f * FLT_EPSILON) ? 1.0f : 0.0f);
}

/* One work-item per element: dst[g][s][d] (contiguous f32) = src(b, h, s, d) in its dtype and layout. */
__kernel void mlstm_mat_pack(const __global stor_t *src, const long4 L, __global float *dst, const long doff,
                             const int S, const long NH, const int D, const long total)
{
    const long gid = get_global_id(0);
    if (gid >= total)
        return;
    const long row = gid / D, g = row / S;
    const int d = (int)(gid - row * D), s = (int)(row - g * S);
    dst[doff + gid] = LOADT(src, HEAD_BASE(L, g / NH, g % NH) + s * L.s3 + d);
}

/* One work-item per element: dst(b, h, s, d) = src[g][s][d], divided by den[g][s] when den_off >= 0. */
__kernel void mlstm_mat_store(const __global float *src, const long soff, const __global float *den,
                              const long den_off, __global stor_t *dst, const long4 L, const int S, const long NH,
                              const int D, const long total)
{
    const long gid = get_global_id(0);
    if (gid >= total)
        return;
    const long row = gid / D, g = row / S;
    const int d = (int)(gid - row * D), s = (int)(row - g * S);
    float x = src[soff + gid];
    if (den_off >= 0)
        x = x / den[den_off + row];
    STORET(dst, HEAD_BASE(L, g / NH, g % NH) + s * L.s3 + d, x);
}

/* One work-group per (b, h): F_t = a_0 + ... + a_t (a = logsigmoid(f)) as a compensated pair into
 * ws[fh_off + g*S + t] (hi) and ws[fl_off + ...] (lo). With m_off >= 0 (forward) also the stabiliser
 * m_t = max(MLSTM_M_FLOOR, F_t + max_(j <= t) (i_j - F_j)), the running maximum kept as a pair, into ws[m_off + ...]
 * and the output m. Each work-item scans a contiguous run of positions; the runs' totals are combined in order by
 * work-item 0, so the result does not depend on timing. */
__kernel __attribute__((reqd_work_group_size(MSCAN, 1, 1)))
void mlstm_mat_scan(const __global float *fg, const long4 Lf, const __global float *ig, const long4 Li,
                    __global float *mo, const long4 Lm, __global float *ws, const long fh_off, const long fl_off,
                    const long m_off, const int S, const long NH)
{
    __local float2 part[MSCAN];
    const int lid = get_local_id(0);
    const long g = get_group_id(0), bb = g / NH, hh = g % NH;
    const __global float *fb = fg + HEAD_BASE(Lf, bb, hh);
    const int len = (S + MSCAN - 1) / MSCAN, u0 = min(S, lid * len), u1 = min(S, u0 + len);
    __global float *Fh = ws + fh_off + g * S, *Fl = ws + fl_off + g * S;

    float2 run = (float2)(0.0f, 0.0f);
    for (int u = u0; u < u1; ++u)
        run = csum_add(run, logsig(fb[u * Lf.s3]));
    part[lid] = run;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) { /* part[x] := the sum of the runs before x */
        float2 acc = (float2)(0.0f, 0.0f);
        for (int x = 0; x < MSCAN; ++x) {
            const float2 y = part[x];
            part[x] = acc;
            acc = csum_add2(acc, y);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    run = part[lid];
    for (int u = u0; u < u1; ++u) {
        run = csum_add(run, logsig(fb[u * Lf.s3]));
        const float2 F = csum_split(run);
        Fh[u] = F.x;
        Fl[u] = F.y;
    }
    if (m_off < 0)
        return;

    /* X_t = max_(j <= t) (i_j - F_j) as a pair: run maxima, then the maxima of the earlier runs */
    const __global float *ib = ig + HEAD_BASE(Li, bb, hh);
    float2 mx = (float2)(-INFINITY, 0.0f);
    for (int u = u0; u < u1; ++u)
        mx = pair_max(mx, csum_split(csum_add(csum_add((float2)(ib[u * Li.s3], 0.0f), -Fh[u]), -Fl[u])));
    barrier(CLK_LOCAL_MEM_FENCE);
    part[lid] = mx;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) {
        float2 acc = (float2)(-INFINITY, 0.0f);
        for (int x = 0; x < MSCAN; ++x) {
            const float2 y = part[x];
            part[x] = acc;
            acc = pair_max(acc, y);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    mx = part[lid];
    __global float *mb = mo + HEAD_BASE(Lm, bb, hh);
    for (int u = u0; u < u1; ++u) {
        mx = pair_max(mx, csum_split(csum_add(csum_add((float2)(ib[u * Li.s3], 0.0f), -Fh[u]), -Fl[u])));
        const float2 s = csum_add((float2)(Fh[u], 0.0f), mx.x); /* F_t + X_t: hi parts first, exact error */
        const float m = fmax(MLSTM_M_FLOOR, s.x + (s.y + (Fl[u] + mx.y)));
        ws[m_off + g * S + u] = m;
        mb[u * Lm.s3] = m;
    }
}

/* logD_tj - m_t from the pairs: the difference of the hi parts is exact near the diagonal (Sterbenz), and
 * i_j - m_t is exact where the two are close (large input gates). */
inline float log_decay(const __global float *Fh, const __global float *Fl, int t, float fhj, float flj, float ij,
                       float mt)
{
    return ((Fh[t] - fhj) + (Fl[t] - flj)) + (ij - mt);
}

/* Column data of an element kernel's work-item: F_j as (hi, lo), i_j. */
#define LOAD_COLUMN()                                                                                     \
    const int lx = get_local_id(0), ly = get_local_id(1), tc = get_group_id(0), tr = get_group_id(1);    \
    const long g = get_group_id(2);                                                                       \
    const int j = tc * MT + lx;                                                                           \
    const bool jok = j < S;                                                                               \
    const __global float *Fh = ws + fh_off + g * S, *Fl = ws + fl_off + g * S, *mt = ws + m_off + g * S;  \
    const float fhj = jok ? Fh[j] : 0.0f, flj = jok ? Fl[j] : 0.0f;                                       \
    const float ij = jok ? ig[HEAD_BASE(Li, g / NH, g % NH) + j * Li.s3] : 0.0f

/* Sums row lid % MT of red (MT x (MT + 1) floats) over its MT columns in order, as a pair. Every work-item runs
 * the loop (as common.cl's reduce_rows, for PoCL); the caller keeps the result of work-items lid < MT. */
inline float2 tile_row_sum(__local const float *red, int lid)
{
    float2 s = (float2)(0.0f, 0.0f);
    const int row = lid % MT;
    for (int x = 0; x < MT; ++x)
        s = csum_add(s, red[row * (MT + 1) + x]);
    return s;
}

/* Forward, one work-group per (tile row tr, tile column tc, b*h) of MT x MT elements of the S x S matrix at
 * ws[s_off + g*S*S] holding q_t . k_j: overwrites it with C_tj = scale (q_t . k_j) exp(logD_tj - m_t) (0 for
 * j > t, so the next product C v needs no mask) and writes the tile's compensated row sums of C into
 * ws[rh_off / rl_off + (g*ntiles + tc)*S + t]. */
__kernel __attribute__((reqd_work_group_size(MT, MROWS, 1)))
void mlstm_mat_fwd_tile(__global float *ws, const long s_off, const long fh_off, const long fl_off,
                        const long m_off, const long rh_off, const long rl_off, const __global float *ig,
                        const long4 Li, const int S, const int ntiles, const long NH, const float scale)
{
    __local float red[MT * (MT + 1)];
    LOAD_COLUMN();
    __global float *Sm = ws + s_off + g * S * S;
    if (tc > tr) { /* above the diagonal */
        for (int a = 0; a < MT / MROWS; ++a) {
            const int t = tr * MT + ly + MROWS * a;
            if (t < S && jok)
                Sm[(long)t * S + j] = 0.0f;
        }
        return;
    }
    for (int a = 0; a < MT / MROWS; ++a) {
        const int t = tr * MT + ly + MROWS * a;
        float c = 0.0f;
        if (t < S && jok && j <= t) {
            const float d = exp(log_decay(Fh, Fl, t, fhj, flj, ij, mt[t]));
            c = d != 0.0f ? (scale * Sm[(long)t * S + j]) * d : 0.0f; /* masked: 0 even for an infinite score */
        }
        if (t < S && jok)
            Sm[(long)t * S + j] = c;
        red[(ly + MROWS * a) * (MT + 1) + lx] = c;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int lid = ly * MT + lx, t = tr * MT + lid;
    const float2 s = tile_row_sum(red, lid);
    if (lid < MT && t < S) {
        const long at = ((long)g * ntiles + tc) * S + t;
        ws[rh_off + at] = s.x;
        ws[rl_off + at] = s.y;
    }
}

/* Forward, one work-item per row (g, t): l_t = the sum of its tiles' row sums (compensated), n_t stored signed
 * (l_t when |l_t| > exp(-m_t), else exp(-m_t)), and |n_t| + eps into ws[den_off + g*S + t]. */
__kernel void mlstm_mat_fwd_rows(__global float *ws, const long m_off, const long rh_off, const long rl_off,
                                 const long den_off, __global float *no, const long4 Ln, const int S,
                                 const int ntiles, const long NH, const long rows, const float eps)
{
    const long gid = get_global_id(0);
    if (gid >= rows)
        return;
    const long g = gid / S;
    const int t = (int)(gid - g * S);
    float2 l = (float2)(0.0f, 0.0f);
    for (int tc = 0; tc <= t / MT; ++tc) {
        const long at = (g * ntiles + tc) * S + t;
        l = csum_add2(l, (float2)(ws[rh_off + at], ws[rl_off + at]));
    }
    const float lt = l.x + l.y, en = exp(-ws[m_off + gid]);
    const float nout = fabs(lt) > en ? lt : en;
    no[HEAD_BASE(Ln, g / NH, g % NH) + t * Ln.s3] = nout;
    ws[den_off + gid] = fabs(nout) + eps;
}

/* Backward, one work-item per row (g, t): m_t into ws[m_off], 1 / (|n_t| + eps) into ws[qn_off], and delta_t =
 * sigma_t (dh_t . h_t) (0 when detached) into ws[qd_off]. */
__kernel void mlstm_mat_bwd_rows(const __global stor_t *h, const long4 Lh, const __global stor_t *dh,
                                 const long4 Ldh, const __global float *m, const long4 Lm, const __global float *n,
                                 const long4 Ln, __global float *ws, const long m_off, const long qn_off,
                                 const long qd_off, const int S, const long NH, const long rows, const int dim_v,
                                 const int exact, const float eps)
{
    const long gid = get_global_id(0);
    if (gid >= rows)
        return;
    const long g = gid / S, bb = g / NH, hh = g % NH;
    const int t = (int)(gid - g * S);
    const float mt = m[HEAD_BASE(Lm, bb, hh) + t * Lm.s3], nt = n[HEAD_BASE(Ln, bb, hh) + t * Ln.s3];
    const float sigma = exact ? mat_sigma(nt, mt) : 0.0f;
    float delta = 0.0f;
    if (sigma != 0.0f) {
        const __global stor_t *hr = h + HEAD_BASE(Lh, bb, hh) + t * Lh.s3;
        const __global stor_t *dr = dh + HEAD_BASE(Ldh, bb, hh) + t * Ldh.s3;
        float dot = 0.0f;
        for (int d = 0; d < dim_v; ++d) dot += LOADT(dr, d) * LOADT(hr, d);
        delta = sigma * dot;
    }
    ws[m_off + gid] = mt;
    ws[qn_off + gid] = 1.0f / (fabs(nt) + eps);
    ws[qd_off + gid] = delta;
}

/* Backward, one work-group per tile as the forward's: from s = q_t . k_j (matrix at s_off) and dp = dh_t . v_j
 * (matrix at p_off), P_tj = (dp - delta_t) D'_tj / (|n_t| + eps) overwrites dp and C_tj / (|n_t| + eps) overwrites
 * s (both 0 for j > t). M_tj = P_tj scale s_tj: the tile's compensated row sums go to (rh_off, rl_off) at
 * (g*ntiles + tc)*S + t, its column sums to (ch_off, cl_off) at (g*ntiles + tr)*S + j. */
__kernel __attribute__((reqd_work_group_size(MT, MROWS, 1)))
void mlstm_mat_bwd_tile(__global float *ws, const long s_off, const long p_off, const long fh_off, const long fl_off,
                        const long m_off, const long qn_off, const long qd_off, const long rh_off, const long rl_off,
                        const long ch_off, const long cl_off, const __global float *ig, const long4 Li, const int S,
                        const int ntiles, const long NH, const float scale)
{
    __local float red[MT * (MT + 1)];
    __local float2 cred[MROWS * MT];
    LOAD_COLUMN();
    __global float *Sm = ws + s_off + g * S * S, *Pm = ws + p_off + g * S * S;
    const __global float *qn = ws + qn_off + g * S, *qd = ws + qd_off + g * S;
    if (tc > tr) {
        for (int a = 0; a < MT / MROWS; ++a) {
            const int t = tr * MT + ly + MROWS * a;
            if (t < S && jok)
                Sm[(long)t * S + j] = Pm[(long)t * S + j] = 0.0f;
        }
        return;
    }
    float2 csum = (float2)(0.0f, 0.0f);
    for (int a = 0; a < MT / MROWS; ++a) {
        const int t = tr * MT + ly + MROWS * a;
        float p = 0.0f, cn = 0.0f, mv = 0.0f;
        if (t < S && jok && j <= t) {
            const long at = (long)t * S + j;
            const float ss = scale * Sm[at];
            const float w = qn[t] * exp(log_decay(Fh, Fl, t, fhj, flj, ij, mt[t]));
            p = (Pm[at] - qd[t]) * w;
            mv = p * ss;
            cn = w != 0.0f ? ss * w : 0.0f;
        }
        if (t < S && jok) {
            Sm[(long)t * S + j] = cn;
            Pm[(long)t * S + j] = p;
        }
        red[(ly + MROWS * a) * (MT + 1) + lx] = mv;
        csum = csum_add(csum, mv);
    }
    cred[ly * MT + lx] = csum;
    barrier(CLK_LOCAL_MEM_FENCE);
    const int lid = ly * MT + lx, t = tr * MT + lid;
    const float2 s = tile_row_sum(red, lid);
    float2 c = (float2)(0.0f, 0.0f);
    for (int y = 0; y < MROWS; ++y) c = csum_add2(c, cred[y * MT + lid % MT]);
    if (lid < MT && t < S) {
        const long at = ((long)g * ntiles + tc) * S + t;
        ws[rh_off + at] = s.x;
        ws[rl_off + at] = s.y;
    }
    const int jc = tc * MT + lid;
    if (lid < MT && jc < S) {
        const long at = ((long)g * ntiles + tr) * S + jc;
        ws[ch_off + at] = c.x;
        ws[cl_off + at] = c.y;
    }
}

/* Backward, one work-group per (b, h): di_u = sum_t M_tu (the column sums), dF_u = sum_j M_uj - di_u (pairs),
 * da_u = dF_u + ... + dF_(S-1) (compensated: runs per work-item, then the later runs' totals in order), and
 * df_u = da_u sigmoid(-f_u). The row-sum slot of tile column 0 holds dF_u between the passes. */
__kernel __attribute__((reqd_work_group_size(MSCAN, 1, 1)))
void mlstm_mat_bwd_gates(__global float *ws, const long rh_off, const long rl_off, const long ch_off,
                         const long cl_off, const __global float *fg, const long4 Lf, __global float *di,
                         const long4 Ldi, __global float *df, const long4 Ldf, const int S, const int ntiles,
                         const long NH)
{
    __local float2 part[MSCAN];
    const int lid = get_local_id(0);
    const long g = get_group_id(0), bb = g / NH, hh = g % NH;
    const int len = (S + MSCAN - 1) / MSCAN, u0 = min(S, lid * len), u1 = min(S, u0 + len);
    __global float *dib = di + HEAD_BASE(Ldi, bb, hh), *dfb = df + HEAD_BASE(Ldf, bb, hh);
    const __global float *fb = fg + HEAD_BASE(Lf, bb, hh);
    __global float *dFh = ws + rh_off + g * ntiles * S, *dFl = ws + rl_off + g * ntiles * S;

    float2 run = (float2)(0.0f, 0.0f);
    for (int u = u0; u < u1; ++u) {
        float2 rs = (float2)(0.0f, 0.0f), cs = (float2)(0.0f, 0.0f);
        for (int x = 0; x <= u / MT; ++x)
            rs = csum_add2(rs, (float2)(ws[rh_off + (g * ntiles + x) * S + u], ws[rl_off + (g * ntiles + x) * S + u]));
        for (int x = u / MT; x < ntiles; ++x)
            cs = csum_add2(cs, (float2)(ws[ch_off + (g * ntiles + x) * S + u], ws[cl_off + (g * ntiles + x) * S + u]));
        const float2 dF = csum_split(csum_add2(rs, -cs));
        dib[u * Ldi.s3] = cs.x + cs.y;
        dFh[u] = dF.x;
        dFl[u] = dF.y;
        run = csum_add2(run, dF);
    }
    part[lid] = run;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) { /* part[x] := the sum of the runs after x */
        float2 acc = (float2)(0.0f, 0.0f);
        for (int x = MSCAN - 1; x >= 0; --x) {
            const float2 y = part[x];
            part[x] = acc;
            acc = csum_add2(acc, y);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    run = part[lid];
    for (int u = u1 - 1; u >= u0; --u) {
        run = csum_add2(run, (float2)(dFh[u], dFl[u]));
        dfb[u * Ldf.s3] = (run.x + run.y) * sigm_neg(fb[u * Lf.s3]);
    }
}
