/* Naive float64 reference of the mLSTM parallel formulation, forward and backward (see mlstm_ref.h).
 * Straight from DESIGN.md section 1 plus the house decisions (m floored at -10, n stored signed); loops
 * over rows so memory is O(S * D) and cost O(S^2 * D) per (batch, head). Not tuned; clarity first. */
#include "mlstm_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    double *acc = malloc((size_t)DV * sizeof *acc);
    if (!F || !mrow || !acc)
        abort();
    for (int64_t bh = 0; bh < s->B * s->NH; bh++) {
        const double *qh = q + bh * S * DQK, *kh = k + bh * S * DQK, *vh = v + bh * S * DV;
        const double *ih = i + bh * S, *fh = f + bh * S;
        cumsum_logsig(S, fh, F);
        if (m_fixed)
            memcpy(mrow, m_fixed + bh * S, (size_t)S * sizeof *mrow);
        else
            stabilizer_head(S, F, ih, mrow);
        for (int64_t t = 0; t < S; t++) {
            const double mt = mrow[t];
            double l = 0.0;
            memset(acc, 0, (size_t)DV * sizeof *acc);
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
        }
    }
    free(acc);
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

void mlstm_ref_bwd(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                   const double *i, const double *f, const double *h, const double *m, const double *n,
                   const double *dh, double *dq, double *dk, double *dv, double *di, double *df)
{
    const int64_t S = s->S, DQK = s->DQK, DV = s->DV;
    double *F = malloc((size_t)S * sizeof *F);
    double *dF = malloc((size_t)S * sizeof *dF);
    if (!F || !dF)
        abort();
    for (int64_t bh = 0; bh < s->B * s->NH; bh++) {
        const double *qh = q + bh * S * DQK, *kh = k + bh * S * DQK, *vh = v + bh * S * DV;
        const double *ih = i + bh * S, *fh = f + bh * S;
        const double *hh = h + bh * S * DV, *mh = m + bh * S, *nh = n + bh * S, *dhh = dh + bh * S * DV;
        double *dqh = dq + bh * S * DQK, *dkh = dk + bh * S * DQK, *dvh = dv + bh * S * DV;
        double *dih = di + bh * S, *dfh = df + bh * S;

        cumsum_logsig(S, fh, F);
        memset(dkh, 0, (size_t)(S * DQK) * sizeof *dkh);
        memset(dvh, 0, (size_t)(S * DV) * sizeof *dvh);
        memset(dih, 0, (size_t)S * sizeof *dih);

        for (int64_t t = 0; t < S; t++) {
            const double mt = mh[t], nt = nh[t];
            const double sigma = nt < 0.0 ? -1.0 : (nt > exp(-mt) ? 1.0 : 0.0);
            const double *dht = dhh + t * DV, *qt = qh + t * DQK;
            const double delta = s->grad_mode == 0 ? sigma * dot(dht, hh + t * DV, DV) : 0.0;
            const double inv = 1.0 / (fabs(nt) + s->eps);
            double *dqt = dqh + t * DQK;
            memset(dqt, 0, (size_t)DQK * sizeof *dqt);
            for (int64_t j = 0; j <= t; j++) {
                const double *kj = kh + j * DQK, *vj = vh + j * DV;
                const double dp = exp((F[t] - F[j]) + ih[j] - mt);
                const double st = s->scale * dot(qt, kj, DQK);
                const double dc = (dot(dht, vj, DV) - delta) * inv;
                const double p = dc * dp;
                double *dkj = dkh + j * DQK, *dvj = dvh + j * DV;
                for (int64_t d = 0; d < DQK; d++) {
                    dqt[d] += s->scale * p * kj[d];
                    dkj[d] += s->scale * p * qt[d];
                }
                const double cw = st * dp * inv;
                for (int64_t d = 0; d < DV; d++)
                    dvj[d] += cw * dht[d];
                dih[j] += p * st;
            }
        }
        for (int64_t u = 0; u < S; u++)
            dF[u] = dot(qh + u * DQK, dqh + u * DQK, DQK) - dot(kh + u * DQK, dkh + u * DQK, DQK);
        double da = 0.0;
        for (int64_t u = S - 1; u >= 0; u--) {
            da += dF[u];
            dfh[u] = da * mlstm_ref_sigmoid(-fh[u]);
        }
    }
    free(dF);
    free(F);
}
