/* One conformance case of the libmlstm tests and everything needed to run it: the case description and
 * its name, seeded storage-rounded inputs, tensor layouts (contiguous, (B,S,NH,D), padded with gaps), the
 * float64 reference outputs, and a device run through the public API into guard-banded buffer views with
 * canary checks. Shared by test_conformance and test_cross_backend. */
#ifndef MLSTM_TEST_CASE_H
#define MLSTM_TEST_CASE_H

#include <stddef.h>
#include <stdint.h>

#include "mlstm.h"

typedef enum {
    MC_GATES_STD = 0,  /* i ~ N(0,1), f ~ 3 + N(0,1)  (the precision-contract regime) */
    MC_GATES_NORMAL,   /* i ~ N(0,1), f ~ N(0,1) */
    MC_GATES_EXT_U,    /* i, f ~ U(-1e3, 1e3) */
    MC_GATES_EXT_N,    /* i, f ~ N(0, 300^2) */
    MC_GATES_CLOSED,   /* i ~ -30 + N(0,1), f ~ 3 + N(0,1): every row sits on the m floor */
    MC_GATES_COUNT
} mc_gates;

typedef enum {
    MC_LAYOUT_BNSD = 0, /* contiguous (B, NH, S, D): all strides 0 in the desc */
    MC_LAYOUT_BSND,     /* PyTorch (B, S, NH, D): {S*NH*D, D, NH*D}; per-position {S*NH, 1, NH} */
    MC_LAYOUT_PADDED,   /* (B, NH, S, D) with gaps after every row, head and batch */
    MC_LAYOUT_COUNT
} mc_layout;

/* Outputs, in report order (same order as tolerances.h). */
enum { MC_OUT_H = 0, MC_OUT_M, MC_OUT_N, MC_OUT_DQ, MC_OUT_DK, MC_OUT_DV, MC_OUT_DI, MC_OUT_DF, MC_OUT_COUNT };

typedef struct mc_case {
    int bwd;            /* 0: forward only (h, m, n); 1: forward then backward (all eight outputs) */
    int dtype;          /* MLSTM_DTYPE_* of q, k, v, h, dh, dq, dk, dv */
    int grad_mode;      /* MLSTM_GRAD_* (bwd only) */
    int64_t B, NH, S, DQK, DV;
    int gates;          /* mc_gates */
    int layout;         /* mc_layout */
    int odd_offsets;    /* view offsets odd and different per tensor instead of 256 */
    float eps;          /* desc.eps */
    float scale;        /* desc.scale (0 = default 1/sqrt(DQK)) */
    int math_mode;      /* desc.math_mode (MLSTM_MATH_DEFAULT, or MLSTM_MATH_TF32) */
    uint64_t seed;
    char name[224];     /* filled by mc_case_finish */
} mc_case;

/* Fills c->name from the parameters, e.g. bwd/bf16/exact/B2_NH3_S129_DQK48_DV96/gates=ext_u/layout=bsnd/seed=7
 * (non-default eps/scale/offsets/math mode are appended, e.g. /math=tf32). */
void mc_case_finish(mc_case *c);
/* A finished case of these parameters, contiguous tensor offsets, eps 1e-6, default scale and math */
mc_case mc_case_make(int bwd, int dtype, int grad_mode, int64_t B, int64_t NH, int64_t S, int64_t DQK, int64_t DV,
                     int gates, int layout, uint64_t seed);
const char *mc_gates_name(int gates);
const char *mc_layout_name(int layout);

/* Storage-rounded inputs as contiguous (B, NH, S, D) doubles. The same (shape, gates, seed, dtype) gives the
 * same values whatever the direction, mode or layout. */
typedef struct mc_inputs {
    double *q, *k, *v, *i, *f, *dh;
} mc_inputs;
void mc_inputs_make(const mc_case *c, mc_inputs *in);
void mc_inputs_free(mc_inputs *in);
/* Issue 17's huge-gate regime: overwrites in's gates with i ~ 20 N(0,1), f ~ 10 N(0,1) (f32-rounded like every
 * gate input), drawn from c->seed */
void mc_inputs_huge_gates(const mc_case *c, mc_inputs *in);

/* Outputs as contiguous doubles (t[o] NULL when the case does not produce output o). */
typedef struct mc_outputs {
    double *t[MC_OUT_COUNT];
} mc_outputs;
size_t mc_output_count(const mc_case *c, int out);
const char *mc_output_name(int out);
void mc_outputs_free(mc_outputs *o);
/* dst: a newly allocated copy of src (outputs of case c) */
void mc_outputs_copy(const mc_case *c, const mc_outputs *src, mc_outputs *dst);

/* The float64 reference of the case (backward in grad_mode, from the reference's own h, m, n). */
void mc_reference(const mc_case *c, const mc_inputs *in, int grad_mode, mc_outputs *out);
/* Recomputes the backward outputs of out (filled by mc_reference) at the given m, n: the f32 values the
 * backward under test actually receives from its own forward. */
void mc_reference_bwd_at(const mc_case *c, const mc_inputs *in, int grad_mode, const double *m, const double *n,
                         mc_outputs *out);

/* The desc of the case (sizes, dtype, eps, scale, mode, layout strides). */
void mc_desc(const mc_case *c, mlstm_desc *d);

/* Runs the case on ctx through mlstm_parallel_fwd (and _bwd): each tensor lives in a view in the middle of a
 * larger buffer, whose guard bands and unaddressed gaps hold the canary pattern. On return:
 *   - the API status (MLSTM_OK, or the failing call's status with mlstm_context_last_error in api_msg);
 *   - on MLSTM_OK, *out holds the device results and canary_msg is "" if every guard band and gap is intact
 *     and every input (and, for bwd, h, m, n) is bitwise unchanged, else it describes the first violation.
 * phase_ms (optional, 2 entries): wall time of the fwd and bwd calls including synchronisation. */
int mc_run_device(mlstm_context *ctx, const mc_case *c, const mc_inputs *in, mc_outputs *out, char *api_msg,
                  size_t api_len, char *canary_msg, size_t canary_len, double *phase_ms);

/* Elementwise error magnitudes of the backward (mlstm_ref_bwd_magnitudes, kind MLSTM_REF_MAG_P or _DP) at the
 * reference's own h, m, n (ref, filled by mc_reference): mag->t[MC_OUT_DQ], [MC_OUT_DK] hold those of dq, dk; the
 * other outputs are scratch. */
void mc_reference_magnitudes(const mc_case *c, const mc_inputs *in, int grad_mode, const mc_outputs *ref, int kind,
                             mc_outputs *mag);

/* For the extreme-gate regimes: max |i|, |f| over the case's inputs (the gate magnitude G of tolerances.h);
 * 0 for every other regime. */
double mc_extreme_gate_magnitude(const mc_case *c, const mc_inputs *in);

/* Degenerate gradients (tests/tolerances.h): at S = 1 and, in exact mode, with extreme gates, the gradients are
 * near-total cancellations. Returns 1 for such a case and fills mag_den[MC_OUT_COUNT] with the size of the
 * cancelling terms per output (the denominators to use where they exceed the reference's norm; 0 for h, m, n);
 * else returns 0 with mag_den all 0. ref: the case's mc_reference outputs. */
int mc_degenerate_scales(const mc_case *c, const mc_inputs *in, const mc_outputs *ref, double *mag_den);

#endif /* MLSTM_TEST_CASE_H */
