/* Naive float64 reference of the mLSTM parallel formulation, forward and backward (see mlstm_ref.h).
 * Straight from README.md "The math" plus the house decisions (m floored at -10, n stored signed); loops
 * over rows so memory is O(S * D) and cost O(S^2 * D) per (batch, head). Not tuned; clarity first. Rows (and,
 * in the backward, columns) are independent, so with OpenMP they run in parallel (the long test cases). */
#include "mlstm_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#define REF_PARALLEL_FOR _Pragma("omp parallel for schedule(dynamic, 4) if (S >= 256)") /* S: the caller's seq_len */
#else
#define REF_PARALLEL_FOR
#endif

double mlstm_ref_logsigmoid(double x)
{
    return fmin(x, 0.0) - log1p(exp(-fabs(x)));
}

double mlstm_ref_sigmoid(double x)
{
    if (x >= 0.0)
        return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

static double dot(const double *a, const double *b, int64_t n)
{
    double s = 0.0;
    for (int64_t d = 0; d < n; d++)
        s += a[d] * b[d];
    return s;
}

/* F_t = sum_{u<=t} logsigmoid(f_u), for one (b, h). */
static void cumsum_logsig(int64_t S, const double *f, double *F)
{
    double acc = 0.0;
    for (int64_t t = 0; t < S; t++) {
        acc += mlstm_ref_logsigmoid(f[t]);
        F[t] = acc;
    }
}

/* m_t = max(floor, max_{j<=t} (F_t - F_j + i_j)) for one (b, h). */
static void stabilizer_head(int64_t S, const double *F, const double *i, double *m)
{
    for (int64_t t = 0; t < S; t++) {
        double mx = -INFINITY;
        for (int64_t j = 0; j <= t; j++) {
            double ld = (F[t] - F[j]) + i[j];
            if (ld > mx)
                mx = ld;
        }
        m[t] = mx > MLSTM_REF_M_FLOOR ? mx : MLSTM_REF_M_FLOOR;
    }
}

void mlstm_ref_stabilizer(const mlstm_ref_shape *s, const double *i, const double *f, double *m)
{
    const int64_t S = s->S;
    double *F = malloc((size_t)S * sizeof *F);
    if (!F)
        abort();
    for (int64_t bh = 0; bh < s->B * s->NH; bh++) {
        cumsum_logsig(S, f + bh * S, F);
        stabilizer_head(S, F, i + bh * S, m + bh * S);
    }
    free(F);
}

/* Forward over all (b, h). m_fixed / n_fixed: optional held-fixed stabiliser / normaliser. */
static void fwd_impl(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                     const double *i, const double *f, const double *m_fixed, const double *n_fixed,
                     double *h, double *m_out, double *n_out)
{
    const int64_t S = s->S, DQK = s->DQK, DV = s->DV;
    double *F = malloc((size_t)S * sizeof *F);
    double *mrow = malloc((size_t)S * sizeof *mrow);
    if (!F || !mrow)
        abort();
    for (int64_t bh = 0; bh < s->B * s->NH; bh++) {
        const double *qh = q + bh * S * DQK, *kh = k + bh * S * DQK, *vh = v + bh * S * DV;
        const double *ih = i + bh * S, *fh = f + bh * S;
        cumsum_logsig(S, fh, F);
        if (m_fixed)
            memcpy(mrow, m_fixed + bh * S, (size_t)S * sizeof *mrow);
        else
            stabilizer_head(S, F, ih, mrow);
        REF_PARALLEL_FOR
        for (int64_t t = 0; t < S; t++) {
            const double mt = mrow[t];
            double l = 0.0;
            double *acc = calloc((size_t)DV, sizeof *acc);
            if (!acc)
                abort();
            for (int64_t j = 0; j <= t; j++) {
                double dp = exp((F[t] - F[j]) + ih[j] - mt);
                double c = s->scale * dot(qh + t * DQK, kh + j * DQK, DQK) * dp;
                l += c;
                const double *vj = vh + j * DV;
                for (int64_t d = 0; d < DV; d++)
                    acc[d] += c * vj[d];
            }
            double emm = exp(-mt);
            double nsigned;
            if (n_fixed)
                nsigned = n_fixed[bh * S + t];
            else
                nsigned = fabs(l) > emm ? l : emm;
            double denom = fabs(nsigned) + s->eps;
            if (h) {
                double *ht = h + (bh * S + t) * DV;
                for (int64_t d = 0; d < DV; d++)
                    ht[d] = acc[d] / denom;
            }
            if (m_out)
                m_out[bh * S + t] = mt;
            if (n_out)
                n_out[bh * S + t] = nsigned;
            free(acc);
        }
    }
    free(mrow);
    free(F);
}

void mlstm_ref_fwd(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                   const double *i, const double *f, double *h, double *m, double *n)
{
    fwd_impl(s, q, k, v, i, f, NULL, NULL, h, m, n);
}

void mlstm_ref_fwd_fixed(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                         const double *i, const double *f, const double *m_fixed, const double *n_fixed,
                         double *h, double *n_out)
{
    fwd_impl(s, q, k, v, i, f, m_fixed, n_fixed, h, NULL, n_out);
}

/* abs_dot: sum |a_d b_d| */
static double abs_dot(const double *a, const double *b, int64_t n)
{
    double acc = 0.0;
    for (int64_t d = 0; d < n; d++)
        acc += fabs(a[d] * b[d]);
    return acc;
}

/* magnitudes 1: dq, dk get the sums of the terms' absolute values instead; 2: the sums of |terms| with P_tj's
 * factor (dh_t . v_j - delta_t) replaced by the magnitudes it is computed from, sum |dh_t v_j| + sum |dh_t h_t| (the
 * rest as always) */
static void bwd_impl(const mlstm_ref_shape *s, const double *q, const double *k, const double *v, const double *i,
                     const double *f, const double *h, const double *m, const double *n, const double *dh, double *dq,
                     double *dk, double *dv, double *di, double *df, int magnitudes)
{
    const int64_t S = s->S, DQK = s->DQK, DV = s->DV;
    double *F = malloc((size_t)S * sizeof *F);
    double *delta = malloc((size_t)S * sizeof *delta);
    double *inv = malloc((size_t)S * sizeof *inv);
    double *dF = malloc((size_t)S * sizeof *dF);
    if (!F || !delta || !inv || !dF)
        abort();
    for (int64_t bh = 0; bh < s->B * s->NH; bh++) {
        const double *qh = q + bh * S * DQK, *kh = k + bh * S * DQK, *vh = v + bh * S * DV;
        const double *ih = i + bh * S, *fh = f + bh * S;
        const double *hh = h + bh * S * DV, *mh = m + bh * S, *nh = n + bh * S, *dhh = dh + bh * S * DV;
        double *dqh = dq + bh * S * DQK, *dkh = dk + bh * S * DQK, *dvh = dv + bh * S * DV;
        double *dih = di + bh * S, *dfh = df + bh * S;

        cumsum_logsig(S, fh, F);
        /* per row: delta_t = sigma_t (dh_t . h_t) (exact mode), 1 / (|n_t| + eps) */
        for (int64_t t = 0; t < S; t++) {
            const double sigma = nh[t] < 0.0 ? -1.0 : (nh[t] > exp(-mh[t]) ? 1.0 : 0.0);
            delta[t] = s->grad_mode == 0 ? sigma * dot(dhh + t * DV, hh + t * DV, DV) : 0.0;
            inv[t] = 1.0 / (fabs(nh[t]) + s->eps);
        }
        /* P_tj = (dh_t . v_j - delta_t) / (|n_t| + eps) * D'_tj, recomputed where needed; REF_P_MAG: the same with the
         * factor's magnitudes (magnitudes == 2) */
#define REF_P_MAG(t, j)                                                                                \
        ((abs_dot(dhh + (t) * DV, vh + (j) * DV, DV) +                                            \
          (s->grad_mode == 0 ? abs_dot(dhh + (t) * DV, hh + (t) * DV, DV) : 0.0)) * inv[t] * dp_)
#define REF_P_AND_S(t, j, P, St)                                                                  \
        const double dp_ = exp((F[t] - F[j]) + ih[j] - mh[t]);                                    \
        const double St = s->scale * dot(qh + (t) * DQK, kh + (j) * DQK, DQK);                     \
        const double P = (dot(dhh + (t) * DV, vh + (j) * DV, DV) - delta[t]) * inv[t] * dp_
        /* rows: dq_t = scale sum_{j<=t} P_tj k_j */
        REF_PARALLEL_FOR
        for (int64_t t = 0; t < S; t++) {
            double *dqt = dqh + t * DQK;
            memset(dqt, 0, (size_t)DQK * sizeof *dqt);
            for (int64_t j = 0; j <= t; j++) {
                REF_P_AND_S(t, j, p, st);
                (void)st;
                const double *kj = kh + j * DQK;
                for (int64_t d = 0; d < DQK; d++)
                    dqt[d] += magnitudes ? fabs(s->scale * (magnitudes == 2 ? REF_P_MAG(t, j) : p) * kj[d])
                                         : s->scale * p * kj[d];
            }
        }
        /* columns: dk_j = scale sum_{t>=j} P_tj q_t, dv_j = sum_t C_tj dh_t / (|n_t| + eps), di_j = sum_t P_tj S_tj */
        REF_PARALLEL_FOR
        for (int64_t j = 0; j < S; j++) {
            double *dkj = dkh + j * DQK, *dvj = dvh + j * DV;
            memset(dkj, 0, (size_t)DQK * sizeof *dkj);
            memset(dvj, 0, (size_t)DV * sizeof *dvj);
            double dij = 0.0;
            for (int64_t t = j; t < S; t++) {
                REF_P_AND_S(t, j, p, st);
                const double *qt = qh + t * DQK, *dht = dhh + t * DV;
                for (int64_t d = 0; d < DQK; d++)
                    dkj[d] += magnitudes ? fabs(s->scale * (magnitudes == 2 ? REF_P_MAG(t, j) : p) * qt[d])
                                         : s->scale * p * qt[d];
                const double cw = st * dp_ * inv[t];
                for (int64_t d = 0; d < DV; d++)
                    dvj[d] += cw * dht[d];
                dij += p * st;
            }
            dih[j] = dij;
        }
#undef REF_P_AND_S
#undef REF_P_MAG
        /* gates: dF_u = q_u . dq_u - k_u . dk_u, da = reverse cumsum, df = da * sigmoid(-f) */
        for (int64_t u = 0; u < S; u++)
            dF[u] = dot(qh + u * DQK, dqh + u * DQK, DQK) - dot(kh + u * DQK, dkh + u * DQK, DQK);
        double da = 0.0;
        for (int64_t u = S - 1; u >= 0; u--) {
            da += dF[u];
            dfh[u] = da * mlstm_ref_sigmoid(-fh[u]);
        }
    }
    free(dF);
    free(inv);
    free(delta);
    free(F);
}

void mlstm_ref_bwd(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                   const double *i, const double *f, const double *h, const double *m, const double *n,
                   const double *dh, double *dq, double *dk, double *dv, double *di, double *df)
{
    bwd_impl(s, q, k, v, i, f, h, m, n, dh, dq, dk, dv, di, df, 0);
}

void mlstm_ref_bwd_magnitudes(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                              const double *i, const double *f, const double *h, const double *m, const double *n,
                              const double *dh, int kind, double *dq_mag, double *dk_mag, double *dv, double *di,
                              double *df)
{
    bwd_impl(s, q, k, v, i, f, h, m, n, dh, dq_mag, dk_mag, dv, di, df, kind == MLSTM_REF_MAG_DP ? 2 : 1);
}
