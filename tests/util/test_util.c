/* Shared helpers for the libmlstm tests (see test_util.h): RNG, f16/bf16 rounding, packing, error
 * metrics, NaN/Inf scans, canaries and string formatting. Everything here is deterministic and pure C11
 * so that the same seed gives the same case on every machine. */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- RNG ---- */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void tu_rng_seed(tu_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int k = 0; k < 4; k++)
        r->s[k] = splitmix64(&x);
    r->has_spare = 0;
    r->spare = 0.0;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t tu_rng_u64(tu_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double tu_rng_uniform(tu_rng *r)
{
    return (double)(tu_rng_u64(r) >> 11) * 0x1.0p-53;
}

double tu_rng_uniform_range(tu_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * tu_rng_uniform(r);
}

double tu_rng_normal(tu_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = 1.0 - tu_rng_uniform(r); /* (0, 1]: log is finite */
    double u2 = tu_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1));
    double th = 6.283185307179586476925 * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

/* ---- Conversions ---- */
uint32_t tu_f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

float tu_f32_from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t tu_f32_to_f16(float x)
{
    const uint32_t u = tu_f32_bits(x);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) { /* Inf or NaN */
        if (a > 0x7f800000u)
            return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* quiet NaN, keeps top payload */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (a >= 0x477ff000u) /* >= 65520: rounds to Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) { /* normal f16 range (>= 2^-14) */
        uint32_t base = (a - 0x38000000u) >> 13; /* rebias exponent 127 -> 15 */
        const uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (base & 1u)))
            base++;
        return (uint16_t)(sign | base);
    }
    if (a < 0x33000000u) /* < 2^-25 (or exactly: tie to even 0) */
        return sign;
    /* f16 subnormal: value / 2^-24, rounded to nearest even. */
    const uint32_t e = a >> 23;
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e; /* 14 .. 24 */
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u)))
        r++;
    return (uint16_t)(sign | r);
}

float tu_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (e == 0) {
        float v = ldexpf((float)mant, -24); /* exact: mant < 2^10 */
        return sign ? -v : v;
    }
    if (e == 31)
        return tu_f32_from_bits(sign | 0x7f800000u | (mant << 13));
    return tu_f32_from_bits(sign | ((e + 112u) << 23) | (mant << 13));
}

uint16_t tu_f32_to_bf16(float x)
{
    uint32_t u = tu_f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float tu_bf16_to_f32(uint16_t h)
{
    return tu_f32_from_bits((uint32_t)h << 16);
}

size_t tu_dtype_size(int dtype)
{
    switch (dtype) {
    case MLSTM_DTYPE_F32: return 4;
    case MLSTM_DTYPE_F16: return 2;
    case MLSTM_DTYPE_BF16: return 2;
    default: return 0;
    }
}

const char *tu_dtype_name(int dtype)
{
    switch (dtype) {
    case MLSTM_DTYPE_F32: return "f32";
    case MLSTM_DTYPE_F16: return "f16";
    case MLSTM_DTYPE_BF16: return "bf16";
    default: return "?";
    }
}

void tu_store(void *base, int dtype, size_t idx, double x)
{
    const float xf = (float)x;
    switch (dtype) {
    case MLSTM_DTYPE_F32: ((float *)base)[idx] = xf; break;
    case MLSTM_DTYPE_F16: ((uint16_t *)base)[idx] = tu_f32_to_f16(xf); break;
    case MLSTM_DTYPE_BF16: ((uint16_t *)base)[idx] = tu_f32_to_bf16(xf); break;
    default: abort();
    }
}

double tu_load(const void *base, int dtype, size_t idx)
{
    switch (dtype) {
    case MLSTM_DTYPE_F32: return (double)((const float *)base)[idx];
    case MLSTM_DTYPE_F16: return (double)tu_f16_to_f32(((const uint16_t *)base)[idx]);
    case MLSTM_DTYPE_BF16: return (double)tu_bf16_to_f32(((const uint16_t *)base)[idx]);
    default: abort();
    }
}

double tu_round_to_dtype(double x, int dtype)
{
    uint32_t tmp = 0;
    tu_store(&tmp, dtype, 0, x);
    return tu_load(&tmp, dtype, 0);
}

/* ---- Metrics ---- */
double tu_l2(const double *x, size_t n)
{
    /* scaled accumulation so huge/tiny magnitudes neither overflow nor underflow */
    double scale = 0.0, ssq = 1.0;
    for (size_t k = 0; k < n; k++) {
        double a = fabs(x[k]);
        if (a == 0.0)
            continue;
        if (!isfinite(a))
            return INFINITY;
        if (a > scale) {
            ssq = 1.0 + ssq * (scale / a) * (scale / a);
            scale = a;
        } else {
            ssq += (a / scale) * (a / scale);
        }
    }
    return scale * sqrt(ssq);
}

double tu_rel_l2(const double *x, const double *ref, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    if (!d)
        abort();
    for (size_t k = 0; k < n; k++)
        d[k] = x[k] - ref[k];
    double num = tu_l2(d, n);
    free(d);
    double den = tu_l2(ref, n);
    if (!isfinite(num))
        return INFINITY;
    if (den == 0.0)
        return num;
    return num / den;
}

double tu_rel_l2_charged(const double *x, const double *ref, size_t n, double res, int by_magnitude, double den_floor,
                         int *floored)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    if (!d)
        abort();
    for (size_t k = 0; k < n; k++) {
        const double diff = fabs(by_magnitude ? fabs(x[k]) - fabs(ref[k]) : x[k] - ref[k]);
        d[k] = diff > res ? diff - res : 0.0;
    }
    const double num = tu_l2(d, n);
    free(d);
    double den = tu_l2(ref, n);
    const int fl = den_floor > den;
    if (fl)
        den = den_floor;
    if (floored)
        *floored = fl;
    return den > 0.0 ? num / den : num;
}

double tu_max_abs_diff(const double *x, const double *ref, size_t n)
{
    double mx = 0.0;
    for (size_t k = 0; k < n; k++) {
        double a = fabs(x[k] - ref[k]);
        if (!(a <= mx)) /* catches NaN */
            mx = isnan(a) ? INFINITY : a;
    }
    return mx;
}

size_t tu_count_nonfinite(const double *x, size_t n, size_t *first)
{
    size_t c = 0;
    for (size_t k = 0; k < n; k++) {
        if (!isfinite(x[k])) {
            if (c == 0 && first)
                *first = k;
            c++;
        }
    }
    return c;
}

/* ---- Canaries ---- */
uint32_t tu_canary_bits(int dtype)
{
    switch (dtype) {
    case MLSTM_DTYPE_F32: return 0x7fc0deadu;
    case MLSTM_DTYPE_F16: return 0x7eadu;
    case MLSTM_DTYPE_BF16: return 0x7fadu;
    default: abort();
    }
}

void tu_canary_fill(void *base, int dtype, size_t count)
{
    const uint32_t c = tu_canary_bits(dtype);
    if (tu_dtype_size(dtype) == 4) {
        uint32_t *p = base;
        for (size_t k = 0; k < count; k++)
            p[k] = c;
    } else {
        uint16_t *p = base;
        for (size_t k = 0; k < count; k++)
            p[k] = (uint16_t)c;
    }
}

int tu_is_canary(const void *base, int dtype, size_t idx)
{
    const uint32_t c = tu_canary_bits(dtype);
    if (tu_dtype_size(dtype) == 4)
        return ((const uint32_t *)base)[idx] == c;
    return ((const uint16_t *)base)[idx] == (uint16_t)c;
}

size_t tu_canary_first_bad(const void *base, int dtype, size_t from, size_t to)
{
    for (size_t k = from; k < to; k++)
        if (!tu_is_canary(base, dtype, k))
            return k;
    return (size_t)-1;
}

/* ---- Strings ---- */
char *tu_strdupf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (len < 0)
        abort();
    char *s = malloc((size_t)len + 1);
    if (!s)
        abort();
    va_start(ap, fmt);
    vsnprintf(s, (size_t)len + 1, fmt, ap);
    va_end(ap);
    return s;
}

int tu_env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] && strcmp(v, "0") != 0;
}

int tu_tensor_dtype(int t, int storage)
{
    switch (t) {
    case MLSTM_TENSOR_I: case MLSTM_TENSOR_F: case MLSTM_TENSOR_M: case MLSTM_TENSOR_N:
    case MLSTM_TENSOR_DI: case MLSTM_TENSOR_DF:
        return MLSTM_DTYPE_F32;
    default:
        return storage;
    }
}

int64_t tu_tensor_dim(int t, int64_t dqk, int64_t dv)
{
    switch (t) {
    case MLSTM_TENSOR_Q: case MLSTM_TENSOR_K: case MLSTM_TENSOR_DQ: case MLSTM_TENSOR_DK: return dqk;
    case MLSTM_TENSOR_V: case MLSTM_TENSOR_H: case MLSTM_TENSOR_DH: case MLSTM_TENSOR_DV: return dv;
    default: return 1;
    }
}

const char *tu_tensor_name(int t)
{
    static const char *const names[MLSTM_TENSOR_COUNT] = {"q", "k", "v", "i", "f", "h", "m", "n",
                                                          "dh", "dq", "dk", "dv", "di", "df"};
    return (t >= 0 && t < MLSTM_TENSOR_COUNT) ? names[t] : "?";
}
