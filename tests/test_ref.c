/* Checks the float64 reference (tests/ref) itself, so that the conformance suite compares kernels against
 * something trustworthy: reference backward vs central finite differences of the reference forward (m held
 * fixed; n held fixed too for the normalizer-detached mode), the forward vs an independent recurrent
 * (matrix-memory) formulation, both normaliser branches incl. negative l, and the test_util conversions. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mlstm_ref.h"
#include "test_util.h"

/* ------------------------------------------------------------------------------------------------ */
/* Problem instances                                                                                 */

enum { GATES_STD, GATES_NORMAL, GATES_NEG_L, GATES_FLOOR, GATES_WIDE };

static const char *gates_name(int g)
{
    switch (g) {
    case GATES_STD: return "std(f~3+N)";
    case GATES_NORMAL: return "normal(f~N)";
    case GATES_NEG_L: return "neg_l";
    case GATES_FLOOR: return "floor(i=-30)";
    case GATES_WIDE: return "wide(i,f~N(0,4))";
    default: return "?";
    }
}

typedef struct {
    mlstm_ref_shape s;
    double *q, *k, *v, *i, *f;
    double *h, *m, *n;
    size_t nq, nv, ng; /* element counts: q/k, v/h, gates */
} inst;

static void inst_make(inst *p, int64_t B, int64_t NH, int64_t S, int64_t DQK, int64_t DV, int gates,
                      double eps, double scale, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    p->s = (mlstm_ref_shape){ B, NH, S, DQK, DV, eps, scale > 0 ? scale : 1.0 / sqrt((double)DQK), 0 };
    p->nq = (size_t)(B * NH * S * DQK);
    p->nv = (size_t)(B * NH * S * DV);
    p->ng = (size_t)(B * NH * S);
    p->q = malloc(p->nq * sizeof(double));
    p->k = malloc(p->nq * sizeof(double));
    p->v = malloc(p->nv * sizeof(double));
    p->h = malloc(p->nv * sizeof(double));
    p->i = malloc(p->ng * sizeof(double));
    p->f = malloc(p->ng * sizeof(double));
    p->m = malloc(p->ng * sizeof(double));
    p->n = malloc(p->ng * sizeof(double));
    assert_non_null(p->q); assert_non_null(p->k); assert_non_null(p->v); assert_non_null(p->h);
    assert_non_null(p->i); assert_non_null(p->f); assert_non_null(p->m); assert_non_null(p->n);
    tu_rng r;
    tu_rng_seed(&r, seed);
    for (size_t x = 0; x < p->nq; x++) p->q[x] = tu_rng_normal(&r);
    for (size_t x = 0; x < p->nq; x++) p->k[x] = tu_rng_normal(&r);
    for (size_t x = 0; x < p->nv; x++) p->v[x] = tu_rng_normal(&r);
    for (size_t x = 0; x < p->ng; x++) {
        switch (gates) {
        case GATES_STD: p->i[x] = tu_rng_normal(&r); p->f[x] = 3.0 + tu_rng_normal(&r); break;
        case GATES_NORMAL: p->i[x] = tu_rng_normal(&r); p->f[x] = tu_rng_normal(&r); break;
        case GATES_NEG_L: p->i[x] = 3.0 + 0.1 * tu_rng_normal(&r); p->f[x] = 3.0 + tu_rng_normal(&r); break;
        case GATES_FLOOR: p->i[x] = -30.0 + tu_rng_normal(&r); p->f[x] = tu_rng_normal(&r); break;
        case GATES_WIDE: p->i[x] = 4.0 * tu_rng_normal(&r); p->f[x] = 4.0 * tu_rng_normal(&r); break;
        }
    }
    if (gates == GATES_NEG_L) {
        /* Every other row: q_t = -k_t, so the diagonal term (the dominant one with i ~ 3 and slow decay)
         * is negative and exceeds exp(-m) ~ e^-3 in magnitude: the |l| branch wins with l < 0. */
        for (int64_t bh = 0; bh < B * NH; bh++)
            for (int64_t t = 0; t < S; t += 2)
                for (int64_t d = 0; d < DQK; d++)
                    p->q[(bh * S + t) * DQK + d] = -2.0 * p->k[(bh * S + t) * DQK + d];
    }
    mlstm_ref_fwd(&p->s, p->q, p->k, p->v, p->i, p->f, p->h, p->m, p->n);
}

static void inst_free(inst *p)
{
    free(p->q); free(p->k); free(p->v); free(p->i); free(p->f);
    free(p->h); free(p->m); free(p->n);
}

/* Rows per normaliser regime: |l| branch with l > 0, with l < 0, and the exp(-m) branch. */
static void count_branches(const inst *p, int *pos, int *neg, int *bound)
{
    *pos = *neg = *bound = 0;
    for (size_t x = 0; x < p->ng; x++) {
        double e = exp(-p->m[x]);
        if (p->n[x] < 0)
            (*neg)++;
        else if (p->n[x] > e)
            (*pos)++;
        else
            (*bound)++;
    }
}

/* L = sum(h * w) with m (and optionally n) held fixed at the instance's forward values. */
static double loss_fixed(const inst *p, const double *w, int fix_n, double *hbuf)
{
    mlstm_ref_fwd_fixed(&p->s, p->q, p->k, p->v, p->i, p->f, p->m, fix_n ? p->n : NULL, hbuf, NULL);
    double L = 0.0;
    for (size_t x = 0; x < p->nv; x++)
        L += hbuf[x] * w[x];
    return L;
}

/* Central finite differences (4th order) of loss_fixed with respect to every element of arr (n elements). */
static void fd_grad(const inst *p, double *arr, size_t n, const double *w, int fix_n, double *g, double *hbuf)
{
    for (size_t x = 0; x < n; x++) {
        const double x0 = arr[x];
        const double st = 1e-5 * fmax(1.0, fabs(x0));
        double l[4];
        const double off[4] = { 2.0, 1.0, -1.0, -2.0 };
        for (int o = 0; o < 4; o++) {
            arr[x] = x0 + off[o] * st;
            l[o] = loss_fixed(p, w, fix_n, hbuf);
        }
        arr[x] = x0;
        /* fourth-order central stencil: truncation error O(st^4), so FD noise stays far below FD_TOL */
        g[x] = (-l[0] + 8.0 * l[1] - 8.0 * l[2] + l[3]) / (12.0 * st);
    }
}

typedef struct {
    double *dq, *dk, *dv, *di, *df;
} grads;

static void grads_alloc(grads *g, const inst *p)
{
    g->dq = calloc(p->nq, sizeof(double));
    g->dk = calloc(p->nq, sizeof(double));
    g->dv = calloc(p->nv, sizeof(double));
    g->di = calloc(p->ng, sizeof(double));
    g->df = calloc(p->ng, sizeof(double));
    assert_non_null(g->dq); assert_non_null(g->dk); assert_non_null(g->dv);
    assert_non_null(g->di); assert_non_null(g->df);
}

static void grads_free(grads *g)
{
    free(g->dq); free(g->dk); free(g->dv); free(g->di); free(g->df);
}

static void run_bwd(inst *p, int mode, const double *dh, grads *g)
{
    mlstm_ref_shape s = p->s;
    s.grad_mode = mode;
    mlstm_ref_bwd(&s, p->q, p->k, p->v, p->i, p->f, p->h, p->m, p->n, dh, g->dq, g->dk, g->dv, g->di, g->df);
}

/* FD check tolerance on the relative L2 error of each gradient tensor. Tensors whose true gradient is
 * (near) zero, e.g. df for S = 1 (da_0 = sum_u dF_u = 0 identically), are measured against 1e-3 of the
 * norm of all gradients instead, so FD noise there does not count as relative error. */
#define FD_TOL 1e-6

static void check_fd_case(int64_t B, int64_t NH, int64_t S, int64_t DQK, int64_t DV, int gates, double eps,
                          double scale, uint64_t seed, int mode)
{
    inst p;
    inst_make(&p, B, NH, S, DQK, DV, gates, eps, scale, seed);
    double *w = malloc(p.nv * sizeof(double));
    double *hbuf = malloc(p.nv * sizeof(double));
    assert_non_null(w); assert_non_null(hbuf);
    tu_rng r;
    tu_rng_seed(&r, seed ^ 0xabcdefull);
    for (size_t x = 0; x < p.nv; x++)
        w[x] = tu_rng_normal(&r);

    grads an, fd;
    grads_alloc(&an, &p);
    grads_alloc(&fd, &p);
    run_bwd(&p, mode, w, &an);
    const int fix_n = mode == 1;
    fd_grad(&p, p.q, p.nq, w, fix_n, fd.dq, hbuf);
    fd_grad(&p, p.k, p.nq, w, fix_n, fd.dk, hbuf);
    fd_grad(&p, p.v, p.nv, w, fix_n, fd.dv, hbuf);
    fd_grad(&p, p.i, p.ng, w, fix_n, fd.di, hbuf);
    fd_grad(&p, p.f, p.ng, w, fix_n, fd.df, hbuf);

    const double *A[5] = { an.dq, an.dk, an.dv, an.di, an.df };
    const double *Fd[5] = { fd.dq, fd.dk, fd.dv, fd.di, fd.df };
    const size_t N[5] = { p.nq, p.nq, p.nv, p.ng, p.ng };
    const char *names[5] = { "dq", "dk", "dv", "di", "df" };
    double gsq = 0.0;
    for (int t = 0; t < 5; t++) {
        double l = tu_l2(Fd[t], N[t]);
        gsq += l * l;
    }
    const double gnorm = sqrt(gsq);
    assert_true(gnorm > 0.0);
    int pos, neg, bound;
    count_branches(&p, &pos, &neg, &bound);
    printf("  fd %-8s B%lld_NH%lld_S%lld_DQK%lld_DV%lld gates=%s eps=%g seed=%llu rows(l>0,l<0,bound)=(%d,%d,%d):",
           mode ? "detached" : "exact", (long long)B, (long long)NH, (long long)S, (long long)DQK, (long long)DV,
           gates_name(gates), eps, (unsigned long long)seed, pos, neg, bound);
    for (int t = 0; t < 5; t++) {
        double *d = malloc(N[t] * sizeof(double));
        assert_non_null(d);
        for (size_t x = 0; x < N[t]; x++)
            d[x] = A[t][x] - Fd[t][x];
        double num = tu_l2(d, N[t]);
        free(d);
        double den = fmax(tu_l2(Fd[t], N[t]), 1e-3 * gnorm);
        double err = num / den;
        printf(" %s=%.1e", names[t], err);
        if (!(err <= FD_TOL)) {
            printf("\n");
            fail_msg("reference %s gradient (%s mode) disagrees with finite differences: rel err %.3e > %.0e",
                     names[t], mode ? "detached" : "exact", err, FD_TOL);
        }
    }
    printf("\n");
    grads_free(&an);
    grads_free(&fd);
    free(w);
    free(hbuf);
    inst_free(&p);
}

static const struct { int64_t B, NH, S, DQK, DV; } fd_shapes[] = {
    { 1, 1, 1, 3, 2 }, { 1, 1, 5, 4, 3 }, { 2, 1, 17, 3, 5 }, { 1, 2, 17, 5, 2 }, { 1, 1, 5, 1, 1 },
};
static const int fd_gates[] = { GATES_STD, GATES_NORMAL, GATES_NEG_L, GATES_FLOOR, GATES_WIDE };

static void fd_all(int mode)
{
    uint64_t seed = 1;
    for (size_t a = 0; a < sizeof fd_shapes / sizeof fd_shapes[0]; a++)
        for (size_t g = 0; g < sizeof fd_gates / sizeof fd_gates[0]; g++)
            check_fd_case(fd_shapes[a].B, fd_shapes[a].NH, fd_shapes[a].S, fd_shapes[a].DQK, fd_shapes[a].DV,
                          fd_gates[g], 1e-6, 0.0, seed++, mode);
    /* a large eps (the normaliser is |n| + eps) and a non-default scale */
    check_fd_case(1, 1, 17, 4, 6, GATES_STD, 0.3, 0.0, 101, mode);
    check_fd_case(1, 1, 17, 4, 6, GATES_NORMAL, 1e-6, 0.7, 102, mode);
}

static void test_fd_exact(void **state)
{
    (void)state;
    fd_all(0);
}

static void test_fd_detached(void **state)
{
    (void)state;
    fd_all(1);
}

/* The instances used above really exercise every regime of the normaliser (otherwise the FD checks of the
 * sign handling would prove nothing). */
static void test_branch_coverage(void **state)
{
    (void)state;
    inst p;
    int pos, neg, bound;
    inst_make(&p, 1, 1, 17, 4, 6, GATES_NEG_L, 1e-6, 0.0, 3);
    count_branches(&p, &pos, &neg, &bound);
    printf("  neg_l case: rows l>0 %d, l<0 %d, bound %d\n", pos, neg, bound);
    assert_true(neg >= 5);
    for (size_t x = 0; x < p.ng; x++) /* the stored n is |l| only when it beats exp(-m) */
        if (p.n[x] < 0)
            assert_true(-p.n[x] > exp(-p.m[x]));
    inst_free(&p);

    inst_make(&p, 1, 1, 17, 4, 6, GATES_FLOOR, 1e-6, 0.0, 4);
    count_branches(&p, &pos, &neg, &bound);
    printf("  floor case: rows l>0 %d, l<0 %d, bound %d\n", pos, neg, bound);
    assert_int_equal(bound, 17);
    for (size_t x = 0; x < p.ng; x++) {
        assert_true(p.m[x] == MLSTM_REF_M_FLOOR);
        assert_true(p.n[x] == exp(-MLSTM_REF_M_FLOOR));
    }
    inst_free(&p);

    int tot[3] = { 0, 0, 0 };
    for (uint64_t seed = 10; seed < 20; seed++) {
        inst_make(&p, 1, 2, 17, 3, 5, GATES_NORMAL, 1e-6, 0.0, seed);
        count_branches(&p, &pos, &neg, &bound);
        tot[0] += pos; tot[1] += neg; tot[2] += bound;
        inst_free(&p);
    }
    printf("  normal gates, 10 seeds: rows l>0 %d, l<0 %d, bound %d\n", tot[0], tot[1], tot[2]);
    assert_true(tot[0] > 0 && tot[1] > 0 && tot[2] > 0);
}

/* exact == detached when dh_t is orthogonal to h_t per row; and they differ otherwise (both modes are
 * really computed). Also di_j == k_j . dk_j (DESIGN section 1). */
static void test_modes_orthogonal(void **state)
{
    (void)state;
    const int gl[] = { GATES_STD, GATES_NORMAL, GATES_NEG_L };
    for (size_t g = 0; g < 3; g++) {
        inst p;
        inst_make(&p, 2, 1, 17, 5, 4, gl[g], 1e-6, 0.0, 40 + g);
        const int64_t DV = p.s.DV, DQK = p.s.DQK;
        double *dh = malloc(p.nv * sizeof(double));
        assert_non_null(dh);
        tu_rng r;
        tu_rng_seed(&r, 77 + g);
        for (size_t x = 0; x < p.nv; x++)
            dh[x] = tu_rng_normal(&r);
        grads ex, de;
        grads_alloc(&ex, &p);
        grads_alloc(&de, &p);
        run_bwd(&p, 0, dh, &ex);
        run_bwd(&p, 1, dh, &de);
        double diff_general = tu_rel_l2(de.dq, ex.dq, p.nq);

        /* di == k . dk */
        for (size_t row = 0; row < p.ng; row++) {
            double kd = 0.0;
            for (int64_t d = 0; d < DQK; d++)
                kd += p.k[row * DQK + d] * ex.dk[row * DQK + d];
            assert_true(fabs(kd - ex.di[row]) <= 1e-12 * (1.0 + fabs(kd)));
        }

        for (size_t row = 0; row < p.ng; row++) { /* project out h_t */
            double hh = 0.0, wh = 0.0;
            for (int64_t d = 0; d < DV; d++) {
                hh += p.h[row * DV + d] * p.h[row * DV + d];
                wh += dh[row * DV + d] * p.h[row * DV + d];
            }
            if (hh > 0.0)
                for (int64_t d = 0; d < DV; d++)
                    dh[row * DV + d] -= wh / hh * p.h[row * DV + d];
        }
        run_bwd(&p, 0, dh, &ex);
        run_bwd(&p, 1, dh, &de);
        double e[5] = { tu_rel_l2(de.dq, ex.dq, p.nq), tu_rel_l2(de.dk, ex.dk, p.nq), tu_rel_l2(de.dv, ex.dv, p.nv),
                        tu_rel_l2(de.di, ex.di, p.ng), tu_rel_l2(de.df, ex.df, p.ng) };
        printf("  gates=%s: detached vs exact dq rel diff %.2e for generic dh; orthogonal dh: "
               "dq %.1e dk %.1e dv %.1e di %.1e df %.1e\n",
               gates_name(gl[g]), diff_general, e[0], e[1], e[2], e[3], e[4]);
        assert_true(diff_general > 1e-3);
        for (int t = 0; t < 5; t++)
            assert_true(e[t] <= 1e-12);
        grads_free(&ex);
        grads_free(&de);
        free(dh);
        inst_free(&p);
    }
}

/* The parallel forward equals the recurrent matrix-memory form:
 *   C_t = exp(a_t) C_{t-1} + exp(i_t) v_t k_t^T,  nv_t = exp(a_t) nv_{t-1} + exp(i_t) k_t,
 *   h_t = C_t (scale q_t) exp(-m_t) / (max(|nv_t . scale q_t| exp(-m_t), exp(-m_t)) + eps),
 * computed without any of the parallel form's index bookkeeping (moderate gates, so no overflow). */
static void test_fwd_vs_recurrent(void **state)
{
    (void)state;
    const int gl[] = { GATES_STD, GATES_NORMAL, GATES_NEG_L, GATES_WIDE };
    for (size_t g = 0; g < 4; g++) {
        inst p;
        inst_make(&p, 2, 2, 13, 3, 4, gl[g], 1e-6, 0.0, 60 + g);
        const int64_t S = p.s.S, DQK = p.s.DQK, DV = p.s.DV;
        double *C = malloc((size_t)(DV * DQK) * sizeof(double));
        double *nv = malloc((size_t)DQK * sizeof(double));
        double *h2 = malloc(p.nv * sizeof(double));
        double *n2 = malloc(p.ng * sizeof(double));
        assert_non_null(C); assert_non_null(nv); assert_non_null(h2); assert_non_null(n2);
        for (int64_t bh = 0; bh < p.s.B * p.s.NH; bh++) {
            memset(C, 0, (size_t)(DV * DQK) * sizeof(double));
            memset(nv, 0, (size_t)DQK * sizeof(double));
            for (int64_t t = 0; t < S; t++) {
                const size_t row = (size_t)(bh * S + t);
                const double fa = exp(mlstm_ref_logsigmoid(p.f[row])), ia = exp(p.i[row]);
                const double *qt = p.q + row * DQK, *kt = p.k + row * DQK, *vt = p.v + row * DV;
                for (int64_t a = 0; a < DV; a++)
                    for (int64_t b = 0; b < DQK; b++)
                        C[a * DQK + b] = fa * C[a * DQK + b] + ia * vt[a] * kt[b];
                for (int64_t b = 0; b < DQK; b++)
                    nv[b] = fa * nv[b] + ia * kt[b];
                const double em = exp(-p.m[row]);
                double l = 0.0;
                for (int64_t b = 0; b < DQK; b++)
                    l += nv[b] * p.s.scale * qt[b];
                l *= em;
                n2[row] = fabs(l) > em ? l : em;
                for (int64_t a = 0; a < DV; a++) {
                    double acc = 0.0;
                    for (int64_t b = 0; b < DQK; b++)
                        acc += C[a * DQK + b] * p.s.scale * qt[b];
                    h2[row * DV + a] = acc * em / (fabs(n2[row]) + p.s.eps);
                }
            }
        }
        double eh = tu_rel_l2(p.h, h2, p.nv), en = tu_rel_l2(p.n, n2, p.ng);
        printf("  gates=%s: parallel vs recurrent h %.1e n %.1e\n", gates_name(gl[g]), eh, en);
        assert_true(eh <= 1e-12);
        assert_true(en <= 1e-12);
        /* m: the floored maximum of logD, recomputed the slow way */
        double *m2 = malloc(p.ng * sizeof(double));
        assert_non_null(m2);
        mlstm_ref_stabilizer(&p.s, p.i, p.f, m2);
        for (size_t x = 0; x < p.ng; x++)
            assert_true(m2[x] == p.m[x] && p.m[x] >= MLSTM_REF_M_FLOOR);
        free(m2);
        free(C); free(nv); free(h2); free(n2);
        inst_free(&p);
    }
}

/* Extreme gates (|i|, |f| up to 1e3): the reference itself stays finite in forward and backward. */
static void test_ref_extreme_finite(void **state)
{
    (void)state;
    inst p;
    inst_make(&p, 1, 1, 64, 4, 4, GATES_NORMAL, 1e-6, 0.0, 5);
    tu_rng r;
    tu_rng_seed(&r, 99);
    for (size_t x = 0; x < p.ng; x++) {
        p.i[x] = tu_rng_uniform_range(&r, -1e3, 1e3);
        p.f[x] = tu_rng_uniform_range(&r, -1e3, 1e3);
    }
    p.i[0] = -1e3; /* a row whose every logD is far below the floor */
    mlstm_ref_fwd(&p.s, p.q, p.k, p.v, p.i, p.f, p.h, p.m, p.n);
    grads g;
    grads_alloc(&g, &p);
    run_bwd(&p, 0, p.v, &g);
    assert_int_equal(tu_count_nonfinite(p.h, p.nv, NULL), 0);
    assert_int_equal(tu_count_nonfinite(p.m, p.ng, NULL), 0);
    assert_int_equal(tu_count_nonfinite(p.n, p.ng, NULL), 0);
    assert_int_equal(tu_count_nonfinite(g.dq, p.nq, NULL), 0);
    assert_int_equal(tu_count_nonfinite(g.dk, p.nq, NULL), 0);
    assert_int_equal(tu_count_nonfinite(g.dv, p.nv, NULL), 0);
    assert_int_equal(tu_count_nonfinite(g.di, p.ng, NULL), 0);
    assert_int_equal(tu_count_nonfinite(g.df, p.ng, NULL), 0);
    assert_true(p.m[0] == MLSTM_REF_M_FLOOR);
    grads_free(&g);
    inst_free(&p);
}

/* ------------------------------------------------------------------------------------------------ */
/* test_util self-checks                                                                             */

/* Independent RNE check: the chosen code is a nearest representable value, and ties go to even. */
static void check_nearest(float x, uint16_t code, float (*dec)(uint16_t), double overflow_at, const char *what)
{
    double xd = x, c = dec(code);
    if (isinf(c)) { /* overflow: |x| at or beyond max finite + half an ulp (a tie goes to Inf: max is odd) */
        if (!(fabs(xd) >= overflow_at) || (c > 0) != (xd > 0))
            fail_msg("%s(%a) overflowed to Inf below the threshold %a", what, x, overflow_at);
        return;
    }
    if (fabs(xd) >= overflow_at)
        fail_msg("%s(%a) = 0x%04x should be Inf", what, x, code);
    double best = fabs(c - xd);
    for (int delta = -1; delta <= 1; delta += 2) {
        uint16_t nb = (uint16_t)(code + delta);
        if ((code & 0x7fff) == 0 && delta < 0)
            nb = (uint16_t)(code ^ 0x8000) + 1; /* across zero */
        double cn = dec(nb);
        if (isnan(cn) || isinf(cn))
            continue;
        double dn = fabs(cn - xd);
        if (dn < best)
            fail_msg("%s(%a) = 0x%04x (%a) but 0x%04x (%a) is nearer", what, x, code, c, nb, cn);
        if (dn == best && dn != 0.0 && (code & 1))
            fail_msg("%s(%a): tie not rounded to even (0x%04x)", what, x, code);
    }
}

static void test_util_conversions(void **state)
{
    (void)state;
    /* every 16-bit pattern survives a round trip through f32 */
    for (uint32_t b = 0; b < 65536; b++) {
        float x = tu_f16_to_f32((uint16_t)b);
        uint16_t back = tu_f32_to_f16(x);
        if (isnan(x))
            assert_true(isnan(tu_f16_to_f32(back)));
        else
            assert_int_equal(back, b);
        float y = tu_bf16_to_f32((uint16_t)b);
        back = tu_f32_to_bf16(y);
        if (isnan(y))
            assert_true(isnan(tu_bf16_to_f32(back)));
        else
            assert_int_equal(back, b);
    }
    /* known values */
    assert_int_equal(tu_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(tu_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);           /* tie -> even */
    assert_int_equal(tu_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);       /* tie -> even (up) */
    assert_int_equal(tu_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(tu_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(tu_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(tu_f32_to_f16(-INFINITY), 0xfc00);
    assert_int_equal(tu_f32_to_f16(0x1p-24f), 0x0001);
    assert_int_equal(tu_f32_to_f16(0x1p-25f), 0x0000);                  /* tie -> even 0 */
    assert_int_equal(tu_f32_to_f16(0x1.8p-25f), 0x0001);
    assert_int_equal(tu_f32_to_f16(0x3p-25f), 0x0002);                  /* 1.5 ulp -> 2 */
    assert_int_equal(tu_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(tu_f32_to_f16(0x1.ffcp-15f), 0x0400);              /* subnormal rounds up to normal */
    assert_true(isnan(tu_f16_to_f32(tu_f32_to_f16(NAN))));
    assert_int_equal(tu_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(tu_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);           /* tie -> even */
    assert_int_equal(tu_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    assert_int_equal(tu_f32_to_bf16(3.4028235e38f), 0x7f80);            /* FLT_MAX rounds to Inf */
    assert_int_equal(tu_f32_to_bf16(0x1p-133f), 0x0001);                /* subnormal */
    assert_true(isnan(tu_bf16_to_f32(tu_f32_to_bf16(NAN))));
    assert_true(tu_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(tu_f16_to_f32(0x7bff) == 65504.0f);
    /* random f32 across the f16 / bf16 ranges: nearest, ties to even */
    tu_rng r;
    tu_rng_seed(&r, 2024);
    for (int it = 0; it < 200000; it++) {
        uint32_t u = (uint32_t)tu_rng_u64(&r);
        float x = tu_f32_from_bits(u);
        if (!isfinite(x))
            continue;
        check_nearest(x, tu_f32_to_bf16(x), tu_bf16_to_f32, 0x1.ffp127, "bf16");
        float xs = ldexpf(frexpf(x, &(int){ 0 }), (int)(tu_rng_u64(&r) % 44) - 27); /* |x| in ~[2^-28, 2^16] */
        if (fabsf(xs) < 65504.0f)
            check_nearest(xs, tu_f32_to_f16(xs), tu_f16_to_f32, 65520.0, "f16");
        /* exact ties */
        uint32_t tie = (u & 0xffff0000u) | 0x8000u;
        if (isfinite(tu_f32_from_bits(tie)) && (tie & 0x7f800000u) != 0x7f000000u)
            check_nearest(tu_f32_from_bits(tie), tu_f32_to_bf16(tu_f32_from_bits(tie)), tu_bf16_to_f32, 0x1.ffp127, "bf16");
    }
    /* storage rounding helper agrees */
    assert_true(tu_round_to_dtype(1.0 + 0x1p-12, MLSTM_DTYPE_F16) == 1.0);
    assert_true(tu_round_to_dtype(1.0 + 0x1p-12, MLSTM_DTYPE_F32) == 1.0 + 0x1p-12);
    assert_true(tu_round_to_dtype(1.0 + 0x1p-7, MLSTM_DTYPE_BF16) == 1.0 + 0x1p-7);
    assert_true(tu_round_to_dtype(1.0 + 0x1p-9, MLSTM_DTYPE_BF16) == 1.0);
}

static void test_util_misc(void **state)
{
    (void)state;
    tu_rng a, b;
    tu_rng_seed(&a, 7);
    tu_rng_seed(&b, 7);
    for (int it = 0; it < 100; it++)
        assert_true(tu_rng_u64(&a) == tu_rng_u64(&b));
    tu_rng_seed(&b, 8);
    assert_true(tu_rng_u64(&a) != tu_rng_u64(&b));
    double s1 = 0, s2 = 0;
    const int N = 200000;
    for (int it = 0; it < N; it++) {
        double z = tu_rng_normal(&a);
        s1 += z;
        s2 += z * z;
    }
    printf("  normal: mean %.4f var %.4f\n", s1 / N, s2 / N);
    assert_true(fabs(s1 / N) < 0.01 && fabs(s2 / N - 1.0) < 0.02);
    for (int it = 0; it < 1000; it++) {
        double u = tu_rng_uniform_range(&a, -3, 5);
        assert_true(u >= -3 && u < 5);
    }

    double x[3] = { 1, 2, 2 }, y[3] = { 1, 2, 2 + 3e-3 };
    assert_true(fabs(tu_rel_l2(y, x, 3) - 1e-3) < 1e-12);
    assert_true(tu_rel_l2(x, x, 3) == 0.0);
    double big[2] = { 1e300, 1e300 }, bigr[2] = { 1e300, 0.5e300 };
    assert_true(isfinite(tu_rel_l2(big, bigr, 2)));
    double bad[3] = { 1, NAN, 2 };
    size_t first = 0;
    assert_int_equal(tu_count_nonfinite(bad, 3, &first), 1);
    assert_int_equal(first, 1);
    assert_true(isinf(tu_rel_l2(bad, x, 3)));

    uint16_t h16[8];
    float f32[8];
    tu_canary_fill(h16, MLSTM_DTYPE_BF16, 8);
    tu_canary_fill(f32, MLSTM_DTYPE_F32, 8);
    assert_true(isnan(tu_bf16_to_f32(h16[3])) && isnan(f32[3]));
    assert_true(isnan(tu_f16_to_f32((uint16_t)tu_canary_bits(MLSTM_DTYPE_F16))));
    assert_true(tu_canary_first_bad(f32, MLSTM_DTYPE_F32, 0, 8) == (size_t)-1);
    f32[5] = 0.0f;
    assert_true(tu_canary_first_bad(f32, MLSTM_DTYPE_F32, 0, 8) == 5);
    h16[7] = 0;
    assert_true(tu_canary_first_bad(h16, MLSTM_DTYPE_BF16, 0, 8) == 7);

    char *s = tu_strdupf("bwd/%s/B%d", "bf16", 2);
    assert_string_equal(s, "bwd/bf16/B2");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_util_conversions),
        cmocka_unit_test(test_util_misc),
        cmocka_unit_test(test_fwd_vs_recurrent),
        cmocka_unit_test(test_branch_coverage),
        cmocka_unit_test(test_fd_exact),
        cmocka_unit_test(test_fd_detached),
        cmocka_unit_test(test_modes_orthogonal),
        cmocka_unit_test(test_ref_extreme_finite),
    };
    return cmocka_run_group_tests_name("ref", tests, NULL, NULL);
}
