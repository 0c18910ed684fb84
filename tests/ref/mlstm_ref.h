/* Naive float64 reference of the mLSTM parallel formulation (README.md "The math"), forward and backward,
 * written straight from the equations for the tests. Contiguous (B, NH, S, D) double arrays; cost
 * O(S^2 * D) per (b, h) with no S x S allocation (rows are looped), so S = 8192 is feasible.
 * House decisions mirrored from api/mlstm.h: m floored at MLSTM_M_FLOOR (-10); n stored signed. */
#ifndef MLSTM_REF_H
#define MLSTM_REF_H

#include <stdint.h>

#define MLSTM_REF_M_FLOOR (-10.0)

typedef struct {
    int64_t B, NH, S, DQK, DV;
    double eps, scale;   /* scale already resolved (1/sqrt(DQK) for the API's default) */
    int grad_mode;       /* 0 exact, 1 normalizer-detached (delta_t = 0) */
} mlstm_ref_shape;

/* q, k: (B,NH,S,DQK); v, h: (B,NH,S,DV); i, f, m, n: (B,NH,S). n is signed: l_t when |l_t| > exp(-m_t),
 * else exp(-m_t). m or n may be NULL when not wanted. */
void mlstm_ref_fwd(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                   const double *i, const double *f, double *h, double *m, double *n);

/* Backward from h, m, n as a forward stored them: writes dq, dk (B,NH,S,DQK), dv (B,NH,S,DV), di, df (B,NH,S). */
void mlstm_ref_bwd(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                   const double *i, const double *f, const double *h, const double *m, const double *n,
                   const double *dh, double *dq, double *dk, double *dv, double *di, double *df);

/* The same, but dq_mag, dk_mag get elementwise error magnitudes of dq, dk (dv, di, df as in mlstm_ref_bwd).
 * MLSTM_REF_MAG_P: the sums of the absolute values of the terms (scale |P_tj| |k_j|, scale |P_tj| |q_t|): a relative
 * error e in every P_tj moves dq, dk by at most e times these (rounding the P tile to f16: e = 2^-11).
 * MLSTM_REF_MAG_DP: the same sums with P_tj's factor dh_t . v_j - delta_t replaced by the magnitudes it is formed from,
 * sum_d |dh_td v_jd| + sum_d |dh_td h_td| (exact mode): an error of e times those in every dh.v - delta (f32
 * accumulation, about (2 DV) 2^-24) moves dq, dk by at most e times these. */
enum { MLSTM_REF_MAG_P = 0, MLSTM_REF_MAG_DP = 1 };
void mlstm_ref_bwd_magnitudes(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                              const double *i, const double *f, const double *h, const double *m, const double *n,
                              const double *dh, int kind, double *dq_mag, double *dk_mag, double *dv, double *di,
                              double *df);

/* Forward variant for finite-difference checks: the stabiliser m is taken from m_fixed (not recomputed);
 * if n_fixed is not NULL the normaliser is taken from it too (|n_fixed| + eps), which makes the forward the
 * function whose gradient the normalizer-detached mode computes. n_out (may be NULL) gets the signed n
 * computed with m_fixed (or a copy of n_fixed). */
void mlstm_ref_fwd_fixed(const mlstm_ref_shape *s, const double *q, const double *k, const double *v,
                         const double *i, const double *f, const double *m_fixed, const double *n_fixed,
                         double *h, double *n_out);

/* The per-row stabiliser only (same value mlstm_ref_fwd writes into m). */
void mlstm_ref_stabilizer(const mlstm_ref_shape *s, const double *i, const double *f, double *m);

/* Stable helpers, exposed for tests. */
double mlstm_ref_logsigmoid(double x);
double mlstm_ref_sigmoid(double x);

#endif /* MLSTM_REF_H */
