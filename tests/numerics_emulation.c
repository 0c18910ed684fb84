/* numerics_emulation (a CPU diagnostic, not a test): issue 17's huge-gate case of tests/numerics_check.c with dq, dk
 * recomputed under one model of the f16 tensor-core arithmetic at a time (see the vn names below; D is what the
 * backward would get at the forward's row scale, which its kernels avoid by guarding their own tiles), counting the
 * entries that overflow f16 where the exact value fits. Build it as bench/gpu_numerics_check.sh builds numerics_check. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mlstm.h"
#include "mlstm_case.h"
#include "mlstm_ref.h"
#include "test_util.h"

static double r16(double x) { return tu_round_to_dtype(x, MLSTM_DTYPE_F16); }
/* f16's 11-bit significand without its range (the range guard scales each row by a power of two) */
static double r11(double x)
{
    if (x == 0.0 || !isfinite(x)) return x;
    int e;
    const double m = frexp(x, &e);
    return ldexp(nearbyint(ldexp(m, 11)), e - 11);
}

int main(void)
{
    const uint64_t seed = 177;
    mc_case c = mc_case_make(1, MLSTM_DTYPE_F16, MLSTM_GRAD_EXACT, 2, 4, 700, 256, 256, MC_GATES_STD, MC_LAYOUT_BSND, seed);
    mc_inputs in;
    mc_inputs_make(&c, &in);
    mc_inputs_huge_gates(&c, &in);
    mc_outputs ref;
    memset(&ref, 0, sizeof ref);
    mc_reference(&c, &in, c.grad_mode, &ref);
    const int64_t S = c.S, D = c.DQK, DV = c.DV;
    const double scale = (double)(float)(1.0 / sqrt((double)D));
    const size_t nq = (size_t)(c.B * c.NH * S * D);
    double *dq[6], *dk[6];
    for (int v = 0; v < 6; v++) { dq[v] = calloc(nq, 8); dk[v] = calloc(nq, 8); }
    double *delh = malloc(S * 8), *esck = malloc(S * 8), *esc = malloc(S * 8), *F = malloc(S * 8), *Ff = malloc(S * 8), *del = malloc(S * 8), *delf = malloc(S * 8), *inv = malloc(S * 8);
    for (int64_t bh = 0; bh < c.B * c.NH; bh++) {
        const double *q = in.q + bh * S * D, *k = in.k + bh * S * D, *v = in.v + bh * S * DV, *dh = in.dh + bh * S * DV;
        const double *ig = in.i + bh * S, *fg = in.f + bh * S;
        const double *h = ref.t[MC_OUT_H] + bh * S * DV, *m = ref.t[MC_OUT_M] + bh * S, *n = ref.t[MC_OUT_N] + bh * S;
        double acc = 0; float accf = 0;
        for (int64_t t = 0; t < S; t++) { acc += mlstm_ref_logsigmoid(fg[t]); F[t] = acc; accf += (float)mlstm_ref_logsigmoid(fg[t]); Ff[t] = accf; }
        for (int64_t t = 0; t < S; t++) {
            const double sigma = n[t] < 0 ? -1.0 : (n[t] > exp(-m[t]) ? 1.0 : 0.0);
            double d = 0; float df = 0;
            for (int64_t e = 0; e < DV; e++) { double he = r16(h[t * DV + e]); d += dh[t * DV + e] * he; df += (float)(dh[t * DV + e] * he); }
            del[t] = sigma * d; delf[t] = (float)(sigma * df);
            { /* F: delta from an h whose forward error flips a few roundings (h relative error 1e-4 before rounding) */
                tu_rng hr;
                tu_rng_seed(&hr, (uint64_t)(bh * S + t));
                double dd = 0;
                for (int64_t e = 0; e < DV; e++)
                    dd += dh[t * DV + e] * r16(h[t * DV + e] * (1.0 + 1e-4 * tu_rng_normal(&hr)));
                delh[t] = sigma * dd;
            }
            inv[t] = 1.0 / (fabs(n[t]) + (double)c.eps);
        }
        for (int64_t t = 0; t < S; t++) { /* the forward's range-guard exponent of row t, from its largest |C_tj| */
            double mx = 0;
            for (int64_t j = 0; j <= t; j++) {
                double sc = 0;
                for (int64_t d = 0; d < D; d++) sc += q[t * D + d] * k[j * D + d];
                mx = fmax(mx, fabs(scale * sc * exp((F[t] - F[j]) + ig[j] - m[t])));
            }
            int ex;
            frexp(mx, &ex); /* mx in [2^(ex-1), 2^ex) */
            esc[t] = mx > 16384.0 ? (double)(ex - 14) : (mx > 0 && mx < 1.0) ? (double)(ex - 10) : 0.0;
        }
        for (int64_t j = 0; j < S; j++) { /* the dK/dV kernel's exponent of key row j: largest of |C/n|, |P| */
            double mx = 0;
            for (int64_t t = j; t < S; t++) {
                double sc = 0, dp = 0;
                for (int64_t d = 0; d < D; d++) sc += q[t * D + d] * k[j * D + d];
                for (int64_t e = 0; e < DV; e++) dp += dh[t * DV + e] * v[j * DV + e];
                const double g = exp((F[t] - F[j]) + ig[j] - m[t]);
                mx = fmax(mx, fmax(fabs(scale * sc * g * inv[t]), fabs((dp - del[t]) * inv[t] * g)));
            }
            int ex;
            frexp(mx, &ex);
            esck[j] = mx > 16384.0 ? (double)(ex - 14) : (mx > 0 && mx < 1.0) ? (double)(ex - 10) : 0.0;
        }
        for (int64_t t = 0; t < S; t++)
            for (int64_t j = 0; j <= t; j++) {
                double dp = 0; float dpf = 0;
                for (int64_t e = 0; e < DV; e++) { dp += dh[t * DV + e] * v[j * DV + e]; dpf += (float)(dh[t * DV + e] * v[j * DV + e]); }
                const double g = exp((F[t] - F[j]) + ig[j] - m[t]);
                const double gf = (double)expf((float)((Ff[t] - Ff[j]) + ig[j] - m[t]));
                double p[6];
                p[5] = r11((dp - delh[t]) * inv[t] * g); /* F: delta from a forward-rounded h */
                p[4] = ldexp(r16(ldexp((dp - del[t]) * inv[t] * g, -(int)esck[j])), (int)esck[j]); /* E: key-row scale */
                p[3] = ldexp(r16(ldexp((dp - del[t]) * inv[t] * g, -(int)esc[t])), (int)esc[t]); /* D: the row scale */
                p[0] = r11((dp - del[t]) * inv[t] * g);                              /* A: P rounding only */
                p[1] = r11((double)((float)(dpf - (float)delf[t])) * inv[t] * g);    /* B: + f32 dP - delta */
                p[2] = r11((double)((float)(dpf - (float)delf[t])) * inv[t] * gf);   /* C: + f32 gate factor */
                for (int vv = 0; vv < 6; vv++)
                    for (int64_t d = 0; d < D; d++) {
                        dq[vv][(bh * S + t) * D + d] += scale * p[vv] * k[j * D + d];
                        dk[vv][(bh * S + j) * D + d] += scale * p[vv] * q[t * D + d];
                    }
            }
    }
    const char *vn[6] = {"A (P rounded to f16)", "B (+ f32 dP - delta)", "C (+ f32 gate factor)", "D (f16 at the row scale)", "E (f16 at the key-row scale of C/n and P)", "F (delta from the forward's h, a few roundings flipped)"};
    for (int vv = 0; vv < 6; vv++) {
        for (int o = 0; o < 2; o++) {
            const double *x = o ? dk[vv] : dq[vv], *r = ref.t[o ? MC_OUT_DK : MC_OUT_DQ];
            size_t over_fit = 0, fit_over = 0; double lo = INFINITY, maxrel = 0;
            for (size_t e = 0; e < nq; e++) {
                const int xo = fabs(x[e]) >= 65520.0, ro = fabs(r[e]) >= 65520.0;
                if (xo && !ro) { over_fit++; lo = fmin(lo, fabs(r[e])); }
                if (!xo && ro && fabs(r[e]) >= 65520.0 * 1.01) fit_over++;
                if (fabs(r[e]) > 1000) maxrel = fmax(maxrel, fabs(x[e] - r[e]) / fabs(r[e]));
            }
            printf("%-24s %s: overflow where the exact fits %zu (|exact| from %.6g), finite where it overflows %zu, max rel err (|exact| > 1000) %.2e\n",
                   vn[vv], o ? "dk" : "dq", over_fit, lo, fit_over, maxrel);
        }
    }
    return 0;
}
