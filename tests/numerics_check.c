/* numerics_check: the tensor-core numerical edges of issues 13, 14 and 17 on training-sized grids, against the
 * float64 reference of tests/ref (through tests/util): f16/bf16 exact-mode gradients at D = 64/128/256 on grids larger
 * than a GPU's SM count, di from the f32 tiles (normalizer-detached, so that no storage-rounded h enters), closed input
 * gates (di, df must not flush to zero), and huge gates (no NaN; +-inf only where the exact value does not fit f16,
 * where the backward at the forward's stored h, m, n does not, or within the computation's first-order error bound of
 * the threshold: huge_violations).
 * Prints the relative L2 error of every output and exits 1 when one misses its bound (0: all pass, 77: no device).
 * Usage: numerics_check [substring of the case names to run]; the backend comes from MLSTM_BACKEND as everywhere.
 * numerics_check sweep [first last] (default seeds 401..520): short sequences, many seeds (sweep_seeds). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlstm.h"
#include "mlstm_case.h"
#include "test_util.h"
#include "mlstm_ref.h"
#include "tolerances.h"

typedef struct {
    const char *what;    /* the point the case checks */
    int dtype, grad_mode, gates, layout;
    int64_t B, NH, S, D;
    uint64_t seed;
    int kind;            /* CK_CONTRACT, CK_DI, CK_CLOSED, CK_HUGE */
} check_case;

enum { CK_CONTRACT = 0, CK_DI, CK_CLOSED, CK_HUGE };

/* f32-level bound for di from the f32 tiles in normalizer-detached mode (df = q.dq - k.dk - di still comes from the
 * rounded P tiles of the dQ / dK products, so it keeps the contract's bound) (the SIMT path reaches 5e-7, the
 * rounded-P sum 1.7e-3 in bf16) */
#define DI_F32_BOUND 1e-5

static const check_case g_cases[] = {
    /* issue 17: exact mode on grids larger than the SM count (every tensor-core instance a training call selects) */
    { "i17", MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, MC_GATES_STD, MC_LAYOUT_BNSD, 8, 8, 2048, 128, 171, CK_CONTRACT },
    { "i17", MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, MC_GATES_STD, MC_LAYOUT_BNSD, 16, 8, 1024, 128, 172, CK_CONTRACT },
    { "i17", MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, MC_GATES_STD, MC_LAYOUT_BNSD, 4, 8, 2048, 64, 173, CK_CONTRACT },
    { "i17", MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, MC_GATES_STD, MC_LAYOUT_BNSD, 2, 8, 4096, 256, 174, CK_CONTRACT },
    { "i17", MLSTM_DTYPE_BF16, MLSTM_GRAD_EXACT, MC_GATES_STD, MC_LAYOUT_BNSD, 8, 8, 2048, 128, 175, CK_CONTRACT },
    { "i17", MLSTM_DTYPE_F16, MLSTM_GRAD_NORMALIZER_DETACHED, MC_GATES_STD, MC_LAYOUT_BNSD, 8, 8, 2048, 128, 176,
      CK_CONTRACT },
    /* the same small-grid (one head) for comparison: the instances the conformance suite runs */
    { "i17small", MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, MC_GATES_STD, MC_LAYOUT_BNSD, 1, 1, 2048, 128, 171, CK_CONTRACT },
    /* issue 14 point 2: di (and df) from the f32 tiles, every head dim, both storage types */
    { "di", MLSTM_DTYPE_BF16, MLSTM_GRAD_NORMALIZER_DETACHED, MC_GATES_STD, MC_LAYOUT_BNSD, 2, 4, 1024, 64, 181, CK_DI },
    { "di", MLSTM_DTYPE_BF16, MLSTM_GRAD_NORMALIZER_DETACHED, MC_GATES_STD, MC_LAYOUT_BNSD, 2, 4, 1024, 128, 182, CK_DI },
    { "di", MLSTM_DTYPE_BF16, MLSTM_GRAD_NORMALIZER_DETACHED, MC_GATES_STD, MC_LAYOUT_BNSD, 2, 4, 1024, 256, 183, CK_DI },
    { "di", MLSTM_DTYPE_F16, MLSTM_GRAD_NORMALIZER_DETACHED, MC_GATES_STD, MC_LAYOUT_BNSD, 2, 4, 1024, 128, 184, CK_DI },
    { "di", MLSTM_DTYPE_F16, MLSTM_GRAD_NORMALIZER_DETACHED, MC_GATES_STD, MC_LAYOUT_BNSD, 2, 4, 1024, 256, 185, CK_DI },
    /* issues 13.4 / 14.1: closed input gates in f16 (di, df ~1e-13 must not flush to zero) */
    { "closed", MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, MC_GATES_CLOSED, MC_LAYOUT_BNSD, 1, 2, 1000, 64, 191, CK_CLOSED },
    { "closed", MLSTM_DTYPE_F16, MLSTM_GRAD_NORMALIZER_DETACHED, MC_GATES_CLOSED, MC_LAYOUT_BNSD, 1, 2, 1000, 128, 192,
      CK_CLOSED },
    { "closed", MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, MC_GATES_CLOSED, MC_LAYOUT_BNSD, 1, 2, 513, 256, 193, CK_CLOSED },
    /* issue 17, second part: huge gates (i ~ 20 N(0,1), f ~ 10 N(0,1)), (B, S, NH, D) */
    { "huge", MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, MC_GATES_STD, MC_LAYOUT_BSND, 2, 4, 700, 256, 177, CK_HUGE },
};

static double rel_l2(const double *x, const double *r, size_t n)
{
    double e = 0.0, d = 0.0;
    for (size_t k = 0; k < n; k++) {
        e += (x[k] - r[k]) * (x[k] - r[k]);
        d += r[k] * r[k];
    }
    return d > 0.0 ? sqrt(e / d) : sqrt(e);
}

/* huge gates: counts NaN, infinities of the wrong sign, finite values whose reference does not fit f16, and
 * infinities whose reference fits (|ref| < 65520 rounds to a finite f16). Such an infinity is the backward's faithful
 * answer to its inputs where the float64 backward at the forward's stored h (f16), m and n (f32) overflows (at; the
 * forward's rounding of those rows, propagated by the problem's conditioning: issue 17), or the computation's own
 * first-order error bound reaches the threshold: every term of dq, dk has its P_tj rounded once to f16 (relative
 * error <= 2^-11; the range guard keeps the tiles normal), and P_tj's factor dh_t . v_j - delta_t comes from f32 sums
 * of DV products each (the tensor cores' dh.v, the prep kernel's dh.h), so |computed - exact| <= 2^-11 mag_p +
 * (2 DV + 2) 2^-24 mag_dp (mag_p, mag_dp: the float64 reference's mlstm_ref_bwd_magnitudes). Other infinities count
 * as violations; mag_p NULL (dv, whose C tile is rounded the same way and showed no such entry) counts every one not
 * explained by at. Returns the violations. */
static size_t huge_violations(const char *name, const double *x, const double *r, const double *at,
                              const double *mag_p, const double *mag_dp, int64_t DV, size_t n)
{
    const double UP = ldexp(1.0, -11), UDP = (double)(2 * DV + 2) * ldexp(1.0, -24);
    size_t nan = 0, wrong_sign = 0, bad_fin = 0, inf_ok = 0, stored = 0, within_p = 0, within = 0, beyond = 0;
    double worst_p = 0.0, worst = 0.0; /* largest (65520 - |exact|) / bound among the infinities where it fits */
    for (size_t k = 0; k < n; k++) {
        if (isnan(x[k]))
            nan++;
        else if (isinf(x[k])) {
            if ((x[k] > 0) != (r[k] > 0))
                wrong_sign++;
            else if (fabs(r[k]) >= 65520.0)
                inf_ok++;
            else if (fabs(at[k]) >= 65520.0)
                stored++;
            else {
                const double gap = 65520.0 - fabs(r[k]);
                const double bp = mag_p ? UP * mag_p[k] : 0.0, b = bp + (mag_dp ? UDP * mag_dp[k] : 0.0);
                worst_p = fmax(worst_p, bp > 0.0 ? gap / bp : INFINITY);
                worst = fmax(worst, b > 0.0 ? gap / b : INFINITY);
                within_p += gap <= bp;
                if (gap <= b)
                    within++;
                else
                    beyond++;
            }
        } else if (fabs(r[k]) >= 65520.0 * 1.01)
            bad_fin++;
    }
    printf("    %-3s NaN %zu, inf where the exact value overflows %zu, inf of the wrong sign %zu, finite where it "
           "overflows %zu, inf where it fits: %zu where the backward at the stored h, m, n overflows, %zu within the "
           "error bound (%zu within its P-rounding part), %zu beyond it\n", name, nan, inf_ok, wrong_sign, bad_fin,
           stored, within, within_p, beyond);
    if (within + beyond)
        printf("        largest (65520 - |exact|) / bound among them: %.3g (P-rounding part alone: %.3g; <= 1: "
               "within)\n", worst, worst_p);
    return nan + wrong_sign + bad_fin + beyond;
}

/* The backward reads the forward's stored h (f16), m and n (f32). Fills at with the float64 backward at those stored
 * values (the reference of what the backward kernels compute from their inputs), and for each infinity of dq, dk
 * whose exact value fits f16 prints it beside the exact one, and beside the backward at the stored h alone and at the
 * stored m, n alone. */
static void huge_at_device_forward(const mc_case *c, const mc_inputs *in, const mc_outputs *ref, const mc_outputs *dev,
                                   mc_outputs *at)
{
    mc_outputs part[2]; /* 0: device h, reference m, n; 1: reference h, device m, n */
    for (int a = 0; a < 3; a++) {
        mc_outputs *o = a == 0 ? at : &part[a - 1];
        mc_outputs_copy(c, ref, o); /* the reference's h (the stored one below), then the backward recomputed */
        if (a < 2)
            memcpy(o->t[MC_OUT_H], dev->t[MC_OUT_H], mc_output_count(c, MC_OUT_H) * sizeof(double));
        const int dm = a != 1;
        mc_reference_bwd_at(c, in, c->grad_mode, dm ? dev->t[MC_OUT_M] : ref->t[MC_OUT_M],
                            dm ? dev->t[MC_OUT_N] : ref->t[MC_OUT_N], o);
    }
    for (int o = MC_OUT_DQ; o <= MC_OUT_DK; o++) {
        const size_t n = mc_output_count(c, o);
        for (size_t x = 0; x < n; x++) {
            if (!isinf(dev->t[o][x]) || fabs(ref->t[o][x]) >= 65520.0)
                continue;
            const size_t row = x / (size_t)c->DQK; /* (b, h, s) row of the contiguous (B, NH, S, DQK) output */
            printf("        %s[bh %zu, s %zu, col %zu] = inf: exact %.7g; at the stored h, m, n %.7g; h only %.7g; "
                   "m, n only %.7g\n", mc_output_name(o), row / (size_t)c->S, row % (size_t)c->S,
                   x % (size_t)c->DQK, ref->t[o][x], at->t[o][x], part[0].t[o][x], part[1].t[o][x]);
        }
    }
    mc_outputs_free(&part[0]);
    mc_outputs_free(&part[1]);
}

/* The small-S sweep (kernels_cuda/NOTES.md, exact-mode di / df): f16 and bf16, both gradient modes, DQK = DV = 64 /
 * 128 / 256, S 17 (NH 2) / 65 / 129, B1, gates std (odd seeds) / normal (even), seeds lo..hi, each case against the
 * contract (test_conformance's metric and bounds; detached mode at the device's m, n as there) and, in exact mode,
 * also against the float64 backward evaluated at the device's stored h (reference m, n: what the backward received).
 * Per group: the worst error / bound of each output, the cases over the bound on either reference. Fails only where
 * a backward misses the contract at the h it received; the misses against the reference's own h are the forward's h
 * error carried into di, df by exact mode's delta_t = dh_t . h_t, reported, not failed. */
static int sweep_seeds(mlstm_context *ctx, int lo, int hi)
{
    static const int dtypes[] = { MLSTM_DTYPE_F16, MLSTM_DTYPE_BF16 }, dims[] = { 64, 128, 256 }, seqs[] = { 17, 65, 129 };
    int fails = 0;
    for (int a = 0; a < 2; a++)
        for (int gm = 0; gm < 2; gm++)
            for (int di = 0; di < 3; di++)
                for (int si = 0; si < 3; si++) {
                    const int mode = gm ? MLSTM_GRAD_NORMALIZER_DETACHED : MLSTM_GRAD_EXACT;
                    double worst[MC_OUT_COUNT] = { 0 }, worst_at[MC_OUT_COUNT] = { 0 };
                    int over = 0, over_at = 0, n = 0;
                    for (int seed = lo; seed <= hi; seed++, n++) {
                        const mc_case c = mc_case_make(1, dtypes[a], mode, 1, seqs[si] <= 17 ? 2 : 1, seqs[si], dims[di],
                                                       dims[di], seed % 2 ? MC_GATES_STD : MC_GATES_NORMAL,
                                                       MC_LAYOUT_BNSD, (uint64_t)seed);
                        mc_inputs in;
                        mc_outputs ref, dev, at = { { NULL } };
                        char api_msg[512], canary_msg[256];
                        mc_inputs_make(&c, &in);
                        mc_reference(&c, &in, mode, &ref);
                        double den[MC_OUT_COUNT] = { 0 };
                        const int degenerate = mc_degenerate_scales(&c, &in, &ref, den);
                        if (mc_run_device(ctx, &c, &in, &dev, api_msg, sizeof api_msg, canary_msg, sizeof canary_msg,
                                          NULL) != MLSTM_OK || canary_msg[0]) {
                            printf("FAIL %s: %s%s\n", c.name, api_msg, canary_msg);
                            mc_inputs_free(&in);
                            mc_outputs_free(&ref);
                            return fails + 1;
                        }
                        if (mode == MLSTM_GRAD_NORMALIZER_DETACHED) /* as test_conformance */
                            mc_reference_bwd_at(&c, &in, mode, dev.t[MC_OUT_M], dev.t[MC_OUT_N], &ref);
                        else {
                            mc_outputs_copy(&c, &ref, &at);
                            memcpy(at.t[MC_OUT_H], dev.t[MC_OUT_H], mc_output_count(&c, MC_OUT_H) * sizeof(double));
                            mc_reference_bwd_at(&c, &in, mode, ref.t[MC_OUT_M], ref.t[MC_OUT_N], &at);
                        }
                        const double ga = tol_gate_allowance(mc_extreme_gate_magnitude(&c, &in));
                        double w = 0.0, w_at = 0.0;
                        for (int o = 0; o < MC_OUT_COUNT; o++) {
                            const int dt = (o == MC_OUT_M || o == MC_OUT_N || o >= MC_OUT_DI) ? MLSTM_DTYPE_F32 : c.dtype;
                            const size_t cnt = mc_output_count(&c, o);
                            const double bound = tol_max_rel_l2(c.dtype, o) + ga, df = degenerate ? den[o] : 0.0;
                            const double res = tol_storage_resolution(dt);
                            const double r = tu_rel_l2_charged(dev.t[o], ref.t[o], cnt, res, 0, df, NULL) / bound;
                            worst[o] = fmax(worst[o], r);
                            w = fmax(w, r);
                            if (at.t[o] && o >= MC_OUT_DQ) {
                                const double ra = tu_rel_l2_charged(dev.t[o], at.t[o], cnt, res, 0, df, NULL) / bound;
                                worst_at[o] = fmax(worst_at[o], ra);
                                w_at = fmax(w_at, ra);
                            }
                        }
                        over += w > 1.0;
                        over_at += w_at > 1.0;
                        mc_inputs_free(&in);
                        mc_outputs_free(&ref);
                        mc_outputs_free(&dev);
                        mc_outputs_free(&at);
                    }
                    printf("%s %-4s %-8s D%-3d S%-3d: %3d of %d over the contract; worst error / bound:", over_at ? "FAIL" : "ok  ",
                           dtypes[a] == MLSTM_DTYPE_F16 ? "f16" : "bf16", gm ? "detached" : "exact", dims[di], seqs[si],
                           over, n);
                    for (int o = 0; o < MC_OUT_COUNT; o++) printf(" %s %.2f", mc_output_name(o), worst[o]);
                    if (!gm) {
                        printf(" | at the stored h: %d over;", over_at);
                        for (int o = MC_OUT_DQ; o < MC_OUT_COUNT; o++) printf(" %s %.2f", mc_output_name(o), worst_at[o]);
                    }
                    printf("\n");
                    fflush(stdout);
                    fails += over_at > 0;
                }
    return fails;
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    mlstm_context *ctx = NULL;
    int st = mlstm_context_create(NULL, &ctx);
    if (st == MLSTM_ERR_NO_DEVICE || st == MLSTM_ERR_UNSUPPORTED) {
        printf("numerics_check: SKIP: no device (%s)\n", mlstm_status_string(st));
        return 77;
    }
    if (st != MLSTM_OK) {
        printf("numerics_check: mlstm_context_create failed: %s\n", mlstm_status_string(st));
        return 1;
    }
    printf("numerics_check: backend %s, device %s\n", mlstm_context_backend_name(ctx), mlstm_context_device_name(ctx));
    if (filter && !strcmp(filter, "sweep")) {
        const int lo = argc > 3 ? atoi(argv[2]) : 401, hi = argc > 3 ? atoi(argv[3]) : 520;
        const int f = sweep_seeds(ctx, lo, hi);
        mlstm_context_destroy(ctx);
        printf("numerics_check sweep: %d group(s) with a backward over the contract at the h it received\n", f);
        return f ? 1 : 0;
    }
    int fails = 0, ran = 0;
    for (size_t ci = 0; ci < sizeof g_cases / sizeof g_cases[0]; ci++) {
        const check_case *k = &g_cases[ci];
        const mc_case c = mc_case_make(1, k->dtype, k->grad_mode, k->B, k->NH, k->S, k->D, k->D, k->gates, k->layout,
                                       k->seed);
        char full[300];
        snprintf(full, sizeof full, "%s:%s", k->what, c.name);
        if (filter && !strstr(full, filter))
            continue;
        ran++;
        mc_inputs in;
        mc_outputs ref, dev;
        memset(&ref, 0, sizeof ref);
        memset(&dev, 0, sizeof dev);
        mc_inputs_make(&c, &in);
        if (k->kind == CK_HUGE)
            mc_inputs_huge_gates(&c, &in);
        char api_msg[2048], canary[512];
        double ms[2] = { 0, 0 };
        st = mc_run_device(ctx, &c, &in, &dev, api_msg, sizeof api_msg, canary, sizeof canary, ms);
        if (st != MLSTM_OK || canary[0]) {
            printf("FAIL %s: %s%s\n", full, st != MLSTM_OK ? api_msg : "", canary);
            fails++;
            mc_inputs_free(&in);
            mc_outputs_free(&dev);
            continue;
        }
        mc_reference(&c, &in, c.grad_mode, &ref);
        /* detached mode: the reference at the m, n the backward received (as test_conformance) */
        if (c.grad_mode == MLSTM_GRAD_NORMALIZER_DETACHED)
            mc_reference_bwd_at(&c, &in, c.grad_mode, dev.t[MC_OUT_M], dev.t[MC_OUT_N], &ref);
        int bad = 0;
        char line[512];
        size_t lu = 0;
        line[0] = '\0';
        for (int o = 0; o < MC_OUT_COUNT; o++) {
            const size_t n = mc_output_count(&c, o);
            if (!n)
                continue;
            if (k->kind == CK_HUGE)
                continue;
            const int t_out = o == MC_OUT_H || o == MC_OUT_DQ || o == MC_OUT_DK || o == MC_OUT_DV;
            /* closed gates: h, dq, dk, dv lie below f16's smallest subnormal (|h| ~ e^-20), only the f32 outputs
             * carry values; di, df are the point */
            if (k->kind == CK_CLOSED && t_out)
                continue;
            const double err = rel_l2(dev.t[o], ref.t[o], n);
            double bound = tol_max_rel_l2(c.dtype, o);
            if (k->kind == CK_DI && o == MC_OUT_DI) /* df keeps the rounded-P sum: kernels_cuda/NOTES.md */
                bound = DI_F32_BOUND;
            const int miss = !(err <= bound);
            bad |= miss;
            lu += (size_t)snprintf(line + lu, sizeof line - lu, " %s %.2e%s", mc_output_name(o), err, miss ? "!" : "");
        }
        if (k->kind == CK_HUGE) {
            size_t v = 0;
            mc_outputs mp, mdp, at;
            mc_reference_magnitudes(&c, &in, c.grad_mode, &ref, MLSTM_REF_MAG_P, &mp);
            mc_reference_magnitudes(&c, &in, c.grad_mode, &ref, MLSTM_REF_MAG_DP, &mdp);
            huge_at_device_forward(&c, &in, &ref, &dev, &at);
            v += huge_violations("dq", dev.t[MC_OUT_DQ], ref.t[MC_OUT_DQ], at.t[MC_OUT_DQ], mp.t[MC_OUT_DQ],
                                 mdp.t[MC_OUT_DQ], c.DV, mc_output_count(&c, MC_OUT_DQ));
            v += huge_violations("dk", dev.t[MC_OUT_DK], ref.t[MC_OUT_DK], at.t[MC_OUT_DK], mp.t[MC_OUT_DK],
                                 mdp.t[MC_OUT_DK], c.DV, mc_output_count(&c, MC_OUT_DK));
            v += huge_violations("dv", dev.t[MC_OUT_DV], ref.t[MC_OUT_DV], at.t[MC_OUT_DV], NULL, NULL, c.DV,
                                 mc_output_count(&c, MC_OUT_DV));
            mc_outputs_free(&mp);
            mc_outputs_free(&mdp);
            mc_outputs_free(&at);
            for (int o = MC_OUT_DI; o <= MC_OUT_DF; o++) {
                size_t nn = 0, n = mc_output_count(&c, o);
                for (size_t x = 0; x < n; x++) nn += !isfinite(dev.t[o][x]);
                printf("    %-3s non-finite %zu\n", mc_output_name(o), nn);
                v += nn;
            }
            bad = v > 0;
        }
        printf("%s %s (fwd %.1f ms, bwd %.1f ms):%s\n", bad ? "FAIL" : "ok  ", full, ms[0], ms[1], line);
        fflush(stdout);
        fails += bad;
        mc_inputs_free(&in);
        mc_outputs_free(&ref);
        mc_outputs_free(&dev);
    }
    mlstm_context_destroy(ctx);
    printf("numerics_check: %d of %d cases failed\n", fails, ran);
    return fails ? 1 : 0;
}
