/* Shared helpers for the libmlstm tests: seeded RNG (xoshiro256** seeded by splitmix64, normals by
 * Box-Muller), f32 <-> f16 / bf16 conversion with round-to-nearest-even, storage-dtype packing, relative
 * L2 error, NaN/Inf scans, guard-band (canary) patterns and case-name formatting. Pure C11, no GPU. */
#ifndef MLSTM_TEST_UTIL_H
#define MLSTM_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "mlstm.h"

/* ---- RNG ---- */
typedef struct tu_rng {
    uint64_t s[4];
    int has_spare;
    double spare;
} tu_rng;

void tu_rng_seed(tu_rng *r, uint64_t seed);
uint64_t tu_rng_u64(tu_rng *r);
double tu_rng_uniform(tu_rng *r);                      /* [0, 1), 53 random bits */
double tu_rng_uniform_range(tu_rng *r, double lo, double hi);
double tu_rng_normal(tu_rng *r);                       /* N(0, 1) */

/* ---- Conversions (round to nearest, ties to even; NaN stays NaN (quiet), Inf stays Inf) ---- */
uint16_t tu_f32_to_f16(float x);
float tu_f16_to_f32(uint16_t h);
uint16_t tu_f32_to_bf16(float x);
float tu_bf16_to_f32(uint16_t h);
uint32_t tu_f32_bits(float x);
float tu_f32_from_bits(uint32_t u);

/* Element size of a storage dtype (4 or 2), 0 if unknown. "f32", "f16", "bf16", "?". */
size_t tu_dtype_size(int dtype);
const char *tu_dtype_name(int dtype);

/* Rounds x to the dtype's storage (via f32 first) and returns the stored value as a double. */
double tu_round_to_dtype(double x, int dtype);
/* Stores x into element idx of a storage array of dtype / reads element idx back as a double. */
void tu_store(void *base, int dtype, size_t idx, double x);
double tu_load(const void *base, int dtype, size_t idx);

/* ---- The tensors of a call (indexed by mlstm_tensor) ---- */
/* Storage dtype of tensor t when q, k, v, h and their gradients are stored in `storage` (the others are f32). */
int tu_tensor_dtype(int t, int storage);
/* Last (contiguous) dimension of tensor t: dqk, dv or 1. */
int64_t tu_tensor_dim(int t, int64_t dqk, int64_t dv);
/* "q", "k", ..., "df"; "?" when out of range. */
const char *tu_tensor_name(int t);

/* ---- Error metrics and scans ---- */
/* ||x - ref||_2 / ||ref||_2; when ||ref|| == 0 returns ||x - ref||_2 (0 when both are zero).
 * Non-finite x gives +Inf. */
double tu_rel_l2(const double *x, const double *ref, size_t n);
/* The conformance metric (tests/tolerances.h): ||d|| / ||ref|| with each element charged d_k = max(0, |x_k - ref_k| -
 * res), res the storage resolution of the output's dtype; by_magnitude compares |x| with |ref|; den_floor > ||ref||
 * replaces the denominator (degenerate gradients; *floored set to 1 then, else 0; floored may be NULL). */
double tu_rel_l2_charged(const double *x, const double *ref, size_t n, double res, int by_magnitude, double den_floor,
                         int *floored);
double tu_l2(const double *x, size_t n);
double tu_max_abs_diff(const double *x, const double *ref, size_t n);
/* Number of NaN/Inf values; the index of the first in *first (if not NULL and any). */
size_t tu_count_nonfinite(const double *x, size_t n, size_t *first);

/* ---- Guard bands / canaries ---- */
/* The poison pattern of a dtype: a NaN with a recognisable payload (f32 0x7fc0dead, f16 0x7ead,
 * bf16 0x7fad), so a kernel that reads it produces NaN and a kernel that writes over it is detected. */
uint32_t tu_canary_bits(int dtype);
void tu_canary_fill(void *base, int dtype, size_t count);
/* True if element idx holds the canary bit pattern exactly. */
int tu_is_canary(const void *base, int dtype, size_t idx);
/* Index of the first element of [from, to) that is not the canary, or (size_t)-1 if all intact. */
size_t tu_canary_first_bad(const void *base, int dtype, size_t from, size_t to);

/* ---- Strings ---- */
/* malloc'd printf result (never NULL: aborts on allocation failure). */
char *tu_strdupf(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Reads an environment variable as a boolean: set, non-empty and not "0". */
int tu_env_flag(const char *name);

#endif /* MLSTM_TEST_UTIL_H */
