/* The precision contract (DESIGN.md section 2) as one table: (storage dtype, output tensor) -> maximum
 * relative L2 error ||x - x_ref|| / ||x_ref|| against the float64 reference computed from the storage-rounded
 * inputs. m, n, di, df are f32 outputs but are computed from rounded-storage inputs, so the same per-dtype
 * thresholds apply. Never loosen an entry to make a case pass: report the case instead. */
#ifndef MLSTM_TOLERANCES_H
#define MLSTM_TOLERANCES_H

#include "mlstm.h"

/* Degenerate gradients. Relative error is only meaningful when the reference is not a near-total cancellation.
 * Two situations make gradients exactly that, whatever the kernel:
 *   - S = 1: when the |l| branch wins, h_0 = C_00 v_0 / (|C_00| + eps) = sign(l_0) v_0 (up to eps), so the exact
 *     dq, dk, di are ~0 (the dh.v and delta terms cancel); and df_0 = 0 identically in both modes, since
 *     da_0 = sum_u dF_u = 0.
 *   - extreme gates (|i|, |f| up to 1e3) in exact mode: D' is ~one-hot, the same cancellation happens per row.
 * For those cases (only), the error of dq, dk, dv, di, df is ||x - ref|| / max(||ref||, ||scale||), where scale
 * is the normalizer-detached reference (the dh.v term before the cancellation) and, for df, additionally
 * sigmoid(-f_u) * sum_{v>=u} (|q_v.dq_v| + |k_v.dk_v|) (the size of the terms the reverse cumsum cancels).
 * The log marks such errors with '*'. Every other case uses the plain relative L2 error below. */

/* Outputs checked by the conformance suite, in report order. */
enum {
    TOL_H = 0, TOL_M, TOL_N, TOL_DQ, TOL_DK, TOL_DV, TOL_DI, TOL_DF, TOL_COUNT
};

static const char *const tol_output_name[TOL_COUNT] = { "h", "m", "n", "dq", "dk", "dv", "di", "df" };

/* rows: f32, f16, bf16; columns: h, m, n, dq, dk, dv, di, df */
static const double tol_table[3][TOL_COUNT] = {
    /* f32  */ { 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5 },
    /* f16  */ { 2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3 },
    /* bf16 */ { 1e-2, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2 },
};

/* Maximum relative L2 error of one output; -1 for an unknown dtype/output (callers treat it as a failure). */
static inline double tol_max_rel_l2(int dtype, int output)
{
    if (output < 0 || output >= TOL_COUNT)
        return -1.0;
    switch (dtype) {
    case MLSTM_DTYPE_F32: return tol_table[0][output];
    case MLSTM_DTYPE_F16: return tol_table[1][output];
    case MLSTM_DTYPE_BF16: return tol_table[2][output];
    default: return -1.0;
    }
}

#endif /* MLSTM_TOLERANCES_H */
