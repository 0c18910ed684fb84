/* libFuzzer harness over libmlstm's public API (validation, buffers, device-buffer and host-array entry points)
 * on one real backend (OpenCL/PoCL; MLSTM_FUZZ_BACKEND overrides) with tiny shapes. An independent model of the
 * contract predicts the allowed statuses; after each call every buffer and guarded host array is checked (rejects
 * touch nothing, accepts write only addressed output elements). Any violation prints and abort()s. */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlstm.h"
#include "test_util.h"

#define NT MLSTM_TENSOR_COUNT
#define CAP 4096u        /* most elements the harness gives any one tensor (host array or buffer) */
#define ENUM_CAP 8192u   /* outputs with at most this many elements have their addresses enumerated */
#define ARENA 8192u      /* elements of the shared allocation that views are carved from */
#define GUARD 64u        /* guard bytes on each side of every host array */
#define GUARD_BYTE 0xA5u
#define POOL 8           /* buffers alive at once in the buffer-operation sequences */
#define HUGE_COUNT_MIN (1ull << 38) /* element counts at or above this (>= 512 GiB) exceed any device */

/* ---------------------------------------------------------------------------------------------------- */
/* Oracle failure: print and abort so that libFuzzer records the input.                                  */

static void violation(int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\n==fuzz_api== ORACLE VIOLATION (fuzz_api.c:%d): ", line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}
#define REQUIRE(cond, ...) do { if (!(cond)) violation(__LINE__, __VA_ARGS__); } while (0)

/* ---------------------------------------------------------------------------------------------------- */
/* Input reader: bytes in, values out; an exhausted input reads as zeros (the tame defaults).            */

typedef struct rd { const uint8_t *p; size_t n; } rd_t;
static uint8_t u8(rd_t *r)
{
    if (r->n == 0)
        return 0;
    r->n--;
    return *r->p++;
}
static uint16_t u16(rd_t *r)
{
    uint16_t lo = u8(r);
    return (uint16_t)(lo | (uint16_t)u8(r) << 8);
}
static uint32_t u32(rd_t *r)
{
    uint32_t lo = u16(r);
    return lo | (uint32_t)u16(r) << 16;
}
static uint64_t u64(rd_t *r)
{
    uint64_t lo = u32(r);
    return lo | (uint64_t)u32(r) << 32;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Contract facts, written from api/mlstm.h (not from the library's sources).                            */

static int used(int t, int bwd) { return bwd ? 1 : t <= MLSTM_TENSOR_N; }
static int is_out(int t, int bwd)
{
    return bwd ? t >= MLSTM_TENSOR_DQ : (t >= MLSTM_TENSOR_H && t <= MLSTM_TENSOR_N);
}
static int64_t tdim(const mlstm_desc *d, int t)
{
    switch (t) {
    case MLSTM_TENSOR_Q: case MLSTM_TENSOR_K: case MLSTM_TENSOR_DQ: case MLSTM_TENSOR_DK: return d->dqk;
    case MLSTM_TENSOR_V: case MLSTM_TENSOR_H: case MLSTM_TENSOR_DH: case MLSTM_TENSOR_DV: return d->dv;
    default: return 1;
    }
}
static int tdtype(const mlstm_desc *d, int t)
{
    switch (t) {
    case MLSTM_TENSOR_I: case MLSTM_TENSOR_F: case MLSTM_TENSOR_M: case MLSTM_TENSOR_N:
    case MLSTM_TENSOR_DI: case MLSTM_TENSOR_DF: return MLSTM_DTYPE_F32;
    default: return d->dtype;
    }
}
static size_t esize(int dtype) { return dtype == MLSTM_DTYPE_F32 ? 4 : (dtype == 2 || dtype == 3) ? 2 : 0; }

#define BIT(status) (1u << (unsigned)(-(status)))
#define DOCUMENTED_ERRORS 0x7ffeu /* bits 1..14: every documented negative status */

typedef unsigned __int128 u128;
static const u128 SAT = (u128)1 << 120;
static u128 smul(u128 a, u128 b) { return (a != 0 && b > SAT / a) ? SAT : a * b; }
static u128 sadd(u128 a, u128 b) { return a + b > SAT ? SAT : a + b; }

/* What the contract says about one desc, per tensor. */
typedef struct model {
    unsigned desc_viol;     /* statuses the desc alone makes possible (0: desc valid) */
    unsigned geo_viol[NT];  /* statuses a tensor's layout makes possible */
    int geo_ok[NT];         /* strides resolved and extent fits */
    int64_t st[NT][3];      /* resolved element strides (batch, head, seq) */
    uint64_t ext[NT];       /* elements the layout addresses */
    int inj[NT];            /* output layout injective: 1, 0, or -1 unknown (too many elements to enumerate) */
    int nested[NT];         /* strides nest (each stride covers the inner dimensions' reach) */
} model_t;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Exact injectivity of the address map of a small tensor, by enumeration. */
static int injective(const mlstm_desc *d, int64_t dim, const int64_t st[3])
{
    u128 n = smul(smul(smul((u128)d->batch, (u128)d->heads), (u128)d->seq_len), (u128)dim);
    if (n > ENUM_CAP)
        return -1;
    uint64_t *a = malloc((size_t)n * sizeof *a);
    REQUIRE(a != NULL, "harness out of memory");
    size_t k = 0;
    for (int64_t b = 0; b < d->batch; b++)
        for (int64_t h = 0; h < d->heads; h++)
            for (int64_t s = 0; s < d->seq_len; s++)
                for (int64_t x = 0; x < dim; x++)
                    a[k++] = (uint64_t)(b * st[0] + h * st[1] + s * st[2] + x);
    qsort(a, k, sizeof *a, cmp_u64);
    int inj = 1;
    for (size_t j = 1; j < k; j++)
        if (a[j] == a[j - 1])
            inj = 0;
    free(a);
    return inj;
}

/* Whether some order of the dimensions of size > 1 has each stride >= the reach of the inner ones. */
static int nested(const mlstm_desc *d, int64_t dim, const int64_t st[3])
{
    static const int perm[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    const int64_t size[3] = {d->batch, d->heads, d->seq_len};
    for (int p = 0; p < 6; p++) {
        u128 reach = (u128)dim;
        int ok = 1;
        for (int j = 2; j >= 0 && ok; j--) { /* perm[p][2] innermost */
            int x = perm[p][j];
            if (size[x] <= 1)
                continue;
            if ((u128)st[x] < reach)
                ok = 0;
            reach = sadd(smul((u128)st[x], (u128)(size[x] - 1)), reach);
        }
        if (ok)
            return 1;
    }
    return 0;
}

static void model_desc(const mlstm_desc *d, int outputs_of_bwd, model_t *m)
{
    memset(m, 0, sizeof *m);
    /* the ABI rule of mlstm.h: any struct_size from the first published size up to the library's (the harness
     * never passes a larger one: the library would read the bytes beyond this struct) */
    if (d == NULL || d->struct_size < MLSTM_DESC_SIZE_V1 || d->struct_size > sizeof *d) {
        m->desc_viol = BIT(MLSTM_ERR_INVALID_ARGUMENT);
        return;
    }
    int dims_ok = d->batch >= 1 && d->heads >= 1 && d->seq_len >= 1 && d->dqk >= 1 &&
                  d->dqk <= MLSTM_MAX_HEAD_DIM && d->dv >= 1 && d->dv <= MLSTM_MAX_HEAD_DIM;
    if (!dims_ok)
        m->desc_viol |= BIT(MLSTM_ERR_INVALID_ARGUMENT);
    else {
        int64_t dmax = d->dqk > d->dv ? d->dqk : d->dv;
        u128 bytes = smul(smul(smul(smul((u128)d->batch, (u128)d->heads), (u128)d->seq_len), (u128)dmax), 4);
        if (bytes > (u128)INT64_MAX)
            m->desc_viol |= BIT(MLSTM_ERR_SIZE_OVERFLOW);
    }
    if (esize(d->dtype) == 0 || !(isfinite(d->eps) && d->eps >= 0.0f) || !isfinite(d->scale) ||
        (d->grad_mode != MLSTM_GRAD_EXACT && d->grad_mode != MLSTM_GRAD_NORMALIZER_DETACHED) ||
        (d->math_mode != MLSTM_MATH_DEFAULT && d->math_mode != MLSTM_MATH_TF32))
        m->desc_viol |= BIT(MLSTM_ERR_INVALID_ARGUMENT);
    if (m->desc_viol)
        return;
    const int64_t size[3] = {d->batch, d->heads, d->seq_len};
    for (int t = 0; t < NT; t++) {
        const mlstm_layout *l = &d->layout[t];
        int64_t dim = tdim(d, t);
        int64_t *st = m->st[t];
        if (l->batch == 0 && l->head == 0 && l->seq == 0) {
            st[2] = dim;
            st[1] = d->seq_len * dim;
            st[0] = d->heads * st[1];
        } else if (l->batch < 0 || l->head < 0 || l->seq < 0) {
            m->geo_viol[t] = BIT(MLSTM_ERR_BAD_LAYOUT);
            continue;
        } else {
            st[0] = l->batch;
            st[1] = l->head;
            st[2] = l->seq;
        }
        u128 ext = (u128)dim;
        for (int x = 0; x < 3; x++)
            ext = sadd(ext, smul((u128)(size[x] - 1), (u128)st[x]));
        if (smul(ext, esize(tdtype(d, t))) > (u128)INT64_MAX) {
            m->geo_viol[t] = BIT(MLSTM_ERR_SIZE_OVERFLOW);
            continue;
        }
        m->geo_ok[t] = 1;
        m->ext[t] = (uint64_t)ext;
        if (is_out(t, outputs_of_bwd)) {
            m->inj[t] = injective(d, dim, st);
            m->nested[t] = nested(d, dim, st);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Descriptor generation: mostly tiny and valid, sometimes special, huge, negative or raw values.        */

/* Valid head dimensions are pinned to DQK 3, DV 5 (odd, unequal, and a conformance case's pair): every
 * (dtype, dqk, dv, direction) is a kernel build, about 5 s (forward) to 20 s (backward) on PoCL without
 * sanitizers and several times that under ASan, so the fuzzer must not wander over head dims; run_fuzz.sh
 * warms PoCL's kernel cache for the nine builds these dims need before fuzzing. */
#define FUZZ_DQK 3
#define FUZZ_DV 5

/* kind: 0 batch or heads (tiny 1..3), 1 dqk, 2 seq_len (tiny 1..9), 3 dv. */
static int64_t gen_dim(rd_t *r, int kind)
{
    static const int64_t special[] = {0, -1, -2, INT64_MIN, INT64_MAX, 512, 513, 1ll << 31, (1ll << 31) + 1,
                                      1ll << 32, 1ll << 40, 1ll << 62, 3037000500ll, 65536, 1ll << 20, 17, 64,
                                      128, 1000, 4096};
    static const int64_t special_head[] = {0, -1, 513, INT64_MIN, INT64_MAX, 1ll << 31, 1ll << 32, 1ll << 40,
                                           600, 1024, -512, 1ll << 62}; /* all invalid */
    const int head = kind == 1 || kind == 3;
    const int64_t pinned = kind == 1 ? FUZZ_DQK : FUZZ_DV;
    uint8_t sel = u8(r);
    if (sel < 224) {
        uint8_t v = u8(r);
        return head ? pinned : 1 + v % (kind == 2 ? 9 : 3);
    }
    if (sel < 248)
        return head ? special_head[u8(r) % (sizeof special_head / sizeof special_head[0])]
                    : special[u8(r) % (sizeof special / sizeof special[0])];
    int64_t v = (int64_t)u64(r);
    return (head && v >= 1 && v <= MLSTM_MAX_HEAD_DIM) ? pinned : v;
}

static float gen_float(rd_t *r, float dflt, const float *choices, size_t nchoices)
{
    static const float special[] = {0.0f, -0.0f, -1e-6f, NAN, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, FLT_MIN,
                                    1e-45f, 1.0f, 1e10f, -1.0f, 1e30f};
    uint8_t sel = u8(r);
    if (sel < 192)
        return dflt;
    if (sel < 224)
        return choices[u8(r) % nchoices];
    if (sel < 248)
        return special[u8(r) % (sizeof special / sizeof special[0])];
    uint32_t bits = u32(r);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static int gen_enum(rd_t *r, int nvalid, int first)
{
    uint8_t sel = u8(r);
    return sel < 248 ? first + sel % nvalid : (int)u32(r);
}

/* Products of generated values may wrap: they are just values then (no signed overflow in the harness). */
static int64_t wmul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }
static int64_t wadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }

static int64_t gen_stride(rd_t *r, int64_t dim)
{
    static const int64_t special[] = {-1, 0, 1, 2, INT64_MIN, INT64_MAX, 1ll << 62, 1ll << 32, 1ll << 31,
                                      INT64_MAX / 2, -INT64_MAX, 3};
    uint8_t sel = u8(r);
    if (sel < 200)
        return (int64_t)(u8(r) % 48);
    if (sel < 216)
        return (int64_t)(0 - (uint64_t)dim); /* dim may be INT64_MIN: wrap, no signed overflow */
    if (sel < 248)
        return special[u8(r) % (sizeof special / sizeof special[0])];
    return (int64_t)u64(r);
}

/* Returns the desc to pass (possibly NULL). */
static const mlstm_desc *gen_desc(rd_t *r, mlstm_desc *d)
{
    static const float eps_choices[] = {0.0f, 1e-6f, 1e-3f, 1.0f};
    static const float scale_choices[] = {0.5f, 1.0f, 2.0f, -1.0f, 1e-3f, 10.0f, 0.125f};
    mlstm_desc_init(d);
    uint8_t flags = u8(r);
    if (flags == 0xff)
        return NULL;
    if (flags == 0xfe)
        d->struct_size = (uint32_t)(MLSTM_DESC_SIZE_V1 - 8); /* below the first published size */
    if (flags == 0xfd)
        d->struct_size = (uint32_t)MLSTM_DESC_SIZE_V1;       /* a 0.1 caller: valid, the tail defaults */
    d->batch = gen_dim(r, 0);
    d->heads = gen_dim(r, 0);
    d->seq_len = gen_dim(r, 2);
    d->dqk = gen_dim(r, 1);
    d->dv = gen_dim(r, 3);
    d->dtype = gen_enum(r, 3, 1);
    d->eps = gen_float(r, 1e-6f, eps_choices, 4);
    d->scale = gen_float(r, 0.0f, scale_choices, 7);
    d->grad_mode = gen_enum(r, 2, 0);
    d->math_mode = gen_enum(r, 2, 0);
    uint8_t lmode = u8(r);
    if (lmode >= 160) {
        for (int t = 0; t < NT; t++) {
            uint8_t sel = u8(r);
            int64_t dim = tdim(d, t);
            mlstm_layout *l = &d->layout[t];
            if (sel < 128) {
                /* contiguous */
            } else if (sel < 192) { /* (B, S, NH, D), PyTorch's layout */
                l->batch = wmul(wmul(d->seq_len, d->heads), dim);
                l->head = dim;
                l->seq = wmul(d->heads, dim);
            } else if (sel < 208) { /* contiguous with padding between rows */
                int64_t pad = u8(r) % 4;
                l->seq = wadd(dim, pad);
                l->head = wmul(d->seq_len, l->seq);
                l->batch = wadd(wmul(d->heads, l->head), (int64_t)(u8(r) % 4));
            } else {
                l->batch = gen_stride(r, dim);
                l->head = gen_stride(r, dim);
                l->seq = gen_stride(r, dim);
            }
        }
    }
    return d;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Element values.                                                                                        */

static void store_elem(uint8_t *p, int dtype, size_t idx, float v)
{
    if (dtype == MLSTM_DTYPE_F32)
        memcpy(p + 4 * idx, &v, 4);
    else {
        uint16_t h = dtype == MLSTM_DTYPE_F16 ? tu_f32_to_f16(v) : tu_f32_to_bf16(v);
        memcpy(p + 2 * idx, &h, 2);
    }
}

/* Fills n elements: mode 0-5 moderate values of several magnitudes, 6 raw bits, 7 moderate with specials. */
static void fill_elems(uint8_t *p, int dtype, size_t n, uint64_t *rng, int mode)
{
    static const float mag[4] = {1.0f, 1e-3f, 10.0f, 300.0f};
    static const float special[8] = {NAN, INFINITY, -INFINITY, 1e4f, -1e4f, 0.0f, -0.0f, 1e-30f};
    size_t es = esize(dtype);
    for (size_t k = 0; k < n; k++) {
        uint64_t x = splitmix(rng);
        if (mode % 8 == 6) {
            memcpy(p + es * k, &x, es);
            continue;
        }
        float v = (float)(((double)(x >> 11) * 0x1.0p-53 - 0.5) * 4.0) * mag[mode % 4];
        if (mode % 8 == 7 && (x & 7) == 0)
            v = special[(x >> 3) & 7];
        store_elem(p, dtype, k, v);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Host arrays with guard bands.                                                                           */

typedef struct harr {
    uint8_t *raw, *p; /* p = raw + GUARD; NULL when the array is passed as NULL */
    size_t bytes;
    uint8_t *snap;    /* contents before the call */
} harr_t;

static void harr_alloc(harr_t *a, size_t bytes)
{
    a->bytes = bytes;
    a->raw = malloc(bytes + 2 * GUARD);
    a->snap = malloc(bytes ? bytes : 1);
    REQUIRE(a->raw && a->snap, "harness out of memory");
    memset(a->raw, GUARD_BYTE, GUARD);
    memset(a->raw + GUARD + bytes, GUARD_BYTE, GUARD);
    a->p = a->raw + GUARD;
}
static void harr_snap(harr_t *a)
{
    if (a->p)
        memcpy(a->snap, a->p, a->bytes);
}
static void harr_check_guards(const harr_t *a, const char *what)
{
    if (!a->raw)
        return;
    for (size_t k = 0; k < GUARD; k++) {
        REQUIRE(a->raw[k] == GUARD_BYTE, "%s: guard byte %zu before the array overwritten", what, GUARD - k);
        REQUIRE(a->raw[GUARD + a->bytes + k] == GUARD_BYTE, "%s: guard byte %zu after the array overwritten",
                what, k);
    }
}
static void harr_free(harr_t *a)
{
    free(a->raw);
    free(a->snap);
    memset(a, 0, sizeof *a);
}

/* Marks the elements a tensor addresses (base + b*sb + h*sh + s*ss + x) in a byte map of `limit` entries. */
static void mark_addressed(uint8_t *map, uint64_t limit, uint64_t base, const mlstm_desc *d, int64_t dim,
                           const int64_t st[3])
{
    for (int64_t b = 0; b < d->batch; b++)
        for (int64_t h = 0; h < d->heads; h++)
            for (int64_t s = 0; s < d->seq_len; s++)
                for (int64_t x = 0; x < dim; x++) {
                    uint64_t idx = base + (uint64_t)(b * st[0] + h * st[1] + s * st[2] + x);
                    REQUIRE(idx < limit, "model: addressed element %llu outside %llu", (unsigned long long)idx,
                            (unsigned long long)limit);
                    map[idx] = 1;
                }
}

static const char *tname(int t)
{
    static const char *const n[NT] = {"q", "k", "v", "i", "f", "h", "m", "n", "dh", "dq", "dk", "dv", "di", "df"};
    return (t >= 0 && t < NT) ? n[t] : "?";
}

static void describe(const mlstm_desc *d)
{
    if (!d) {
        fprintf(stderr, "desc NULL\n");
        return;
    }
    fprintf(stderr, "desc: B %lld NH %lld S %lld DQK %lld DV %lld dtype %d eps %g scale %g grad %d math %d\n",
            (long long)d->batch, (long long)d->heads, (long long)d->seq_len, (long long)d->dqk, (long long)d->dv,
            d->dtype, (double)d->eps, (double)d->scale, d->grad_mode, d->math_mode);
    for (int t = 0; t < NT; t++)
        if (d->layout[t].batch || d->layout[t].head || d->layout[t].seq)
            fprintf(stderr, "  layout %s {%lld, %lld, %lld}\n", tname(t), (long long)d->layout[t].batch,
                    (long long)d->layout[t].head, (long long)d->layout[t].seq);
}

/* ---------------------------------------------------------------------------------------------------- */
/* The one context of the process (and a second, only to hand out buffers of another context).         */

static mlstm_context *g_ctx, *g_ctx2;
static void print_stats(void);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    mlstm_options o;
    mlstm_options_init(&o);
    const char *b = getenv("MLSTM_FUZZ_BACKEND");
    o.backend = (b && b[0]) ? b : "opencl";
    int st = mlstm_context_create(&o, &g_ctx);
    if (st != MLSTM_OK) {
        fprintf(stderr, "fuzz_api: cannot create a '%s' context: %s: %s\n", o.backend, mlstm_status_string(st),
                mlstm_last_error_global());
        exit(2);
    }
    st = mlstm_context_create(&o, &g_ctx2);
    if (st != MLSTM_OK) {
        fprintf(stderr, "fuzz_api: cannot create a second '%s' context: %s: %s\n", o.backend,
                mlstm_status_string(st), mlstm_last_error_global());
        exit(2);
    }
    if (getenv("MLSTM_FUZZ_STATS"))
        atexit(print_stats);
    fprintf(stderr, "fuzz_api: backend %s, device %s\n", mlstm_context_backend_name(g_ctx),
            mlstm_context_device_name(g_ctx));
    return 0;
}

/* Outcome counts per status, printed at exit when MLSTM_FUZZ_STATS is set (to see what the corpus reaches). */
static unsigned long g_stats[4][16]; /* [fwd_host, bwd_host, fwd, bwd][-status] */
static void print_stats(void)
{
    static const char *const names[4] = {"fwd_host", "bwd_host", "fwd", "bwd"};
    for (int k = 0; k < 4; k++) {
        fprintf(stderr, "fuzz_api stats %-8s:", names[k]);
        for (int c = 0; c < 16; c++)
            if (g_stats[k][c])
                fprintf(stderr, " %d:%lu", -c, g_stats[k][c]);
        fputc('\n', stderr);
    }
}
static void count_status(int kind, int st)
{
    if (st <= 0 && st > -16)
        g_stats[kind][-st]++;
}

static void check_status_in(int st, unsigned allowed, const char *fn, mlstm_context *ctx, const mlstm_desc *d)
{
    if (st == MLSTM_OK ? (allowed & 1u) : (st < 0 && st >= -31 && (allowed & BIT(st)))) {
        if (st != MLSTM_OK && ctx != NULL)
            REQUIRE(mlstm_context_last_error(ctx)[0] != '\0', "%s failed with %s but left no last_error", fn,
                    mlstm_status_string(st));
        return;
    }
    describe(d);
    fprintf(stderr, "allowed statuses:");
    if (allowed & 1u)
        fprintf(stderr, " OK");
    for (int c = 1; c < 32; c++)
        if (allowed & (1u << c))
            fprintf(stderr, " %d(%s)", -c, mlstm_status_string(-c));
    fprintf(stderr, "\nlast_error: %s\n", ctx ? mlstm_context_last_error(ctx) : "(no context)");
    violation(__LINE__, "%s returned %d (%s), not an allowed status", fn, st, mlstm_status_string(st));
}

/* ---------------------------------------------------------------------------------------------------- */
/* Host entry points.                                                                                     */

static void fuzz_host(rd_t *r, int bwd)
{
    mlstm_desc desc;
    const mlstm_desc *d = gen_desc(r, &desc);
    uint8_t cflags = u8(r);
    mlstm_context *ctx = cflags == 0x80 ? NULL : g_ctx;
    int rerun = (cflags & 3) == 1;
    model_t m;
    model_desc(d, bwd, &m);

    unsigned allowed = m.desc_viol;
    int uncertain = 0, conservative = 0;
    harr_t a[NT];
    memset(a, 0, sizeof a);
    uint8_t nullsel[NT];
    for (int t = 0; t < NT; t++)
        nullsel[t] = used(t, bwd) ? u8(r) : 1;
    if (!allowed) {
        for (int t = 0; t < NT; t++) {
            if (!used(t, bwd))
                continue;
            if (nullsel[t] == 0)
                allowed |= BIT(MLSTM_ERR_INVALID_ARGUMENT);
            allowed |= m.geo_viol[t];
            if (!m.geo_ok[t])
                continue;
            if (m.ext[t] > CAP)
                uncertain = 1;
            if (is_out(t, bwd)) {
                if (m.inj[t] == 0)
                    allowed |= BIT(MLSTM_ERR_BAD_LAYOUT);
                else if (m.inj[t] < 0)
                    uncertain = conservative = 1; /* not injective, or too big for the harness */
                else if (!m.nested[t])
                    conservative = 1; /* injective but not nested: the library may reject it conservatively */
            }
        }
    }
    if (ctx == NULL)
        allowed = BIT(MLSTM_ERR_INVALID_ARGUMENT), conservative = 0;
    if (!allowed && uncertain)
        return; /* a valid call bigger than the harness's cap: the library would read that much */
    int must_fail = allowed != 0;
    if (!must_fail)
        allowed = 1u;
    if (conservative)
        allowed |= BIT(MLSTM_ERR_BAD_LAYOUT);

    uint64_t rng = u64(r);
    for (int t = 0; t < NT; t++) {
        if (!used(t, bwd) || nullsel[t] == 0)
            continue;
        int dt = (d && esize(d->dtype)) ? tdtype(d, t) : MLSTM_DTYPE_F32;
        size_t n = (m.geo_ok[t] && m.ext[t] <= CAP) ? (size_t)m.ext[t] : 1;
        harr_alloc(&a[t], n * esize(dt));
        fill_elems(a[t].p, dt, n, &rng, is_out(t, bwd) ? 6 : u8(r));
        harr_snap(&a[t]);
    }
    void *p[NT];
    for (int t = 0; t < NT; t++)
        p[t] = a[t].p;
    int st = MLSTM_OK;
    const char *fn = bwd ? "mlstm_parallel_bwd_host" : "mlstm_parallel_fwd_host";
    for (int pass = 0; pass < 1 + (rerun && !must_fail); pass++) {
        if (pass == 1) {
            REQUIRE(st == MLSTM_OK || st == MLSTM_ERR_BAD_LAYOUT, "unreachable");
            if (st != MLSTM_OK)
                break;
            for (int t = 0; t < NT; t++)
                if (is_out(t, bwd))
                    harr_snap(&a[t]); /* the first pass's results */
        }
        if (bwd)
            st = mlstm_parallel_bwd_host(ctx, d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10],
                                         p[11], p[12], p[13]);
        else
            st = mlstm_parallel_fwd_host(ctx, d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
        if (pass == 0) {
            count_status(bwd, st);
            check_status_in(st, allowed, fn, ctx, d);
        }
        for (int t = 0; t < NT; t++)
            harr_check_guards(&a[t], tname(t));
        for (int t = 0; t < NT; t++) {
            if (!a[t].p)
                continue;
            if (pass == 1) {
                REQUIRE(st == MLSTM_OK, "%s: second identical call returned %d", fn, st);
                REQUIRE(memcmp(a[t].p, a[t].snap, a[t].bytes) == 0,
                        "%s: output %s differs bitwise between two identical calls", fn, tname(t));
                continue;
            }
            if (st != MLSTM_OK || !is_out(t, bwd)) {
                if (memcmp(a[t].p, a[t].snap, a[t].bytes) != 0) {
                    describe(d);
                    violation(__LINE__, "%s returned %d and changed host array %s (%s)", fn, st, tname(t),
                              is_out(t, bwd) ? "an output after a failure" : "an input");
                }
                continue;
            }
            /* success: elements of the output that its layout does not address must be unchanged */
            uint8_t *map = calloc((size_t)m.ext[t], 1);
            REQUIRE(map != NULL, "harness out of memory");
            mark_addressed(map, m.ext[t], 0, d, tdim(d, t), m.st[t]);
            size_t es = esize(tdtype(d, t));
            for (uint64_t e = 0; e < m.ext[t]; e++)
                if (!map[e] && memcmp(a[t].p + e * es, a[t].snap + e * es, es) != 0) {
                    describe(d);
                    violation(__LINE__, "%s wrote element %llu of %s, which its layout does not address", fn,
                              (unsigned long long)e, tname(t));
                }
            free(map);
        }
    }
    for (int t = 0; t < NT; t++)
        harr_free(&a[t]);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Device-buffer entry points.                                                                             */

typedef struct alloc_rec {
    mlstm_buffer *root;  /* the buffer that owns the allocation */
    mlstm_context *ctx;
    int dtype;
    size_t count;
    uint8_t *shadow;     /* expected contents */
} alloc_rec;

typedef struct bref {
    mlstm_buffer *b;     /* what is passed (NULL allowed) */
    int alloc;           /* index into the allocation list, -1 for NULL */
    size_t off, count;   /* elements, relative to the allocation */
    int dtype;
} bref;

typedef struct dev_state {
    alloc_rec al[NT + 4];
    int nal;
    mlstm_buffer *views[2 * NT];
    int nviews;
    int arena[4];        /* allocation index of the arena of each dtype, -1 when not made yet */
    size_t arena_cursor[4];
    uint64_t rng;
} dev_state;

static int new_alloc(dev_state *s, mlstm_context *ctx, int dtype, size_t count)
{
    alloc_rec *a = &s->al[s->nal];
    int st = mlstm_buffer_create(ctx, dtype, count, &a->root);
    REQUIRE(st == MLSTM_OK, "mlstm_buffer_create(dtype %d, %zu) failed: %d %s", dtype, count, st,
            mlstm_context_last_error(ctx));
    a->ctx = ctx;
    a->dtype = dtype;
    a->count = count;
    a->shadow = malloc(count * esize(dtype));
    REQUIRE(a->shadow != NULL, "harness out of memory");
    fill_elems(a->shadow, dtype, count, &s->rng, (int)(splitmix(&s->rng) & 7));
    st = mlstm_buffer_write(a->root, 0, count, a->shadow);
    REQUIRE(st == MLSTM_OK, "mlstm_buffer_write of a fresh buffer failed: %d %s", st, mlstm_context_last_error(ctx));
    return s->nal++;
}

static mlstm_buffer *new_view(dev_state *s, int alloc, size_t off, size_t count)
{
    mlstm_buffer *v = NULL;
    int st = mlstm_buffer_create_view(s->al[alloc].root, off, count, &v);
    REQUIRE(st == MLSTM_OK && v != NULL, "mlstm_buffer_create_view(%zu, %zu) of %zu failed: %d", off, count,
            s->al[alloc].count, st);
    REQUIRE(mlstm_buffer_count(v) == count && mlstm_buffer_dtype(v) == s->al[alloc].dtype,
            "a view reports count %zu dtype %d, expected %zu, %d", mlstm_buffer_count(v), mlstm_buffer_dtype(v),
            count, s->al[alloc].dtype);
    s->views[s->nviews++] = v;
    return v;
}

static void pick_buffer(rd_t *r, dev_state *s, const model_t *m, const mlstm_desc *d, int t, bref *refs)
{
    bref *o = &refs[t];
    int want = (d && esize(d->dtype)) ? tdtype(d, t) : MLSTM_DTYPE_F32;
    int ext_known = m->geo_ok[t] && m->ext[t] <= CAP;
    size_t ext = ext_known ? (size_t)m->ext[t] : 0;
    uint8_t c = u8(r), a1 = u8(r), a2 = u8(r);
    size_t fit = ext_known ? ext + a1 % 4 : (size_t)(1 + a1 % 16);
    o->alloc = -1;
    o->b = NULL;
    o->off = 0;
    /* c: < 2 NULL, < 4 wrong dtype, < 6 other context, < 8 too small, < 12 alias, < 60 arena view, < 72 view
     * of a fresh allocation, else a fresh buffer */
    int kind = c < 2 ? 0 : c < 4 ? 1 : c < 6 ? 2 : c < 8 ? 3 : c < 12 ? 4 : c < 24 ? 5 : c < 60 ? 6 : c < 72 ? 9 : 10;
    switch (kind) {
    case 0: /* NULL */
        return;
    case 1: { /* wrong dtype */
        int dt = want == MLSTM_DTYPE_F32 ? 2 + a2 % 2 : (want % 3) + 1;
        o->alloc = new_alloc(s, g_ctx, dt, fit);
        break;
    }
    case 2: /* another context's buffer */
        o->alloc = new_alloc(s, g_ctx2, want, fit);
        break;
    case 3: /* too small (when the extent allows) */
        o->alloc = new_alloc(s, g_ctx, want, ext > 1 ? ext - 1 - a2 % (ext - 1) : fit);
        break;
    case 4: /* the same buffer as an earlier tensor */
        if (t > 0) {
            *o = refs[a2 % t];
            return;
        }
        o->alloc = new_alloc(s, g_ctx, want, fit);
        break;
    case 5: case 6: { /* a view of the shared arena of this dtype */
        int dt = want;
        if (s->arena[dt] < 0)
            s->arena[dt] = new_alloc(s, g_ctx, dt, ARENA);
        int al = s->arena[dt];
        size_t off;
        if (kind == 5) { /* packed after the previous view: adjacent, not overlapping */
            off = s->arena_cursor[dt];
        } else {
            off = ((size_t)a2 * 37 + (size_t)c) % ARENA;
        }
        if (off >= ARENA)
            off = (size_t)a2 % ARENA;
        size_t cnt = fit < ARENA - off ? fit : ARENA - off;
        s->arena_cursor[dt] = off + cnt;
        o->b = new_view(s, al, off, cnt);
        o->alloc = al;
        o->off = off;
        o->count = cnt;
        o->dtype = dt;
        return;
    }
    case 9: { /* a view at an offset of a fresh allocation */
        size_t off = a2 % 5;
        int al = new_alloc(s, g_ctx, want, fit + off + a2 % 3);
        o->b = new_view(s, al, off, fit);
        o->alloc = al;
        o->off = off;
        o->count = fit;
        o->dtype = want;
        return;
    }
    default:
        o->alloc = new_alloc(s, g_ctx, want, fit);
        break;
    }
    o->b = s->al[o->alloc].root;
    o->count = s->al[o->alloc].count;
    o->dtype = s->al[o->alloc].dtype;
}

static void readback_check(dev_state *s, const uint8_t *const *changeable, const char *fn, int st,
                           const mlstm_desc *d)
{
    for (int a = 0; a < s->nal; a++) {
        alloc_rec *al = &s->al[a];
        size_t es = esize(al->dtype), bytes = al->count * es;
        uint8_t *got = malloc(bytes);
        REQUIRE(got != NULL, "harness out of memory");
        int rs = mlstm_buffer_read(al->root, 0, al->count, got);
        REQUIRE(rs == MLSTM_OK, "mlstm_buffer_read after %s failed: %d %s", fn, rs,
                mlstm_context_last_error(al->ctx));
        for (size_t e = 0; e < al->count; e++) {
            if (memcmp(got + e * es, al->shadow + e * es, es) == 0)
                continue;
            if (changeable && changeable[a] && changeable[a][e])
                continue;
            describe(d);
            violation(__LINE__, "%s returned %d and changed element %zu of allocation %d (dtype %d, %zu elements), "
                      "which is not an addressed output element", fn, st, e, a, al->dtype, al->count);
        }
        memcpy(al->shadow, got, bytes); /* outputs as computed, for a rerun comparison */
        free(got);
    }
}

static void fuzz_device(rd_t *r, int bwd)
{
    mlstm_desc desc;
    const mlstm_desc *d = gen_desc(r, &desc);
    uint8_t cflags = u8(r);
    mlstm_context *ctx = cflags == 0x80 ? NULL : g_ctx;
    int rerun = (cflags & 3) == 1;
    model_t m;
    model_desc(d, bwd, &m);

    dev_state s;
    memset(&s, 0, sizeof s);
    for (int k = 0; k < 4; k++)
        s.arena[k] = -1;
    s.rng = u64(r);
    bref refs[NT];
    memset(refs, 0, sizeof refs);
    for (int t = 0; t < NT; t++) {
        refs[t].alloc = -1;
        if (used(t, bwd))
            pick_buffer(r, &s, &m, d, t, refs);
    }

    unsigned allowed = m.desc_viol;
    int conservative = 0;
    if (!allowed) {
        for (int t = 0; t < NT; t++) {
            if (!used(t, bwd))
                continue;
            const bref *b = &refs[t];
            /* layouts are checked before buffers (the plan's half of validation), so a layout's violation is
             * possible whatever the buffer */
            allowed |= m.geo_viol[t];
            if (m.geo_ok[t] && is_out(t, bwd)) {
                if (m.inj[t] == 0)
                    allowed |= BIT(MLSTM_ERR_BAD_LAYOUT);
                else if (m.inj[t] < 0) /* > ENUM_CAP elements: not injective, or larger than any buffer here */
                    allowed |= BIT(MLSTM_ERR_BAD_LAYOUT) | BIT(MLSTM_ERR_BUFFER_TOO_SMALL);
                else if (!m.nested[t])
                    conservative = 1;
            }
            if (b->b == NULL) {
                allowed |= BIT(MLSTM_ERR_INVALID_ARGUMENT);
                continue;
            }
            if (s.al[b->alloc].ctx != g_ctx)
                allowed |= BIT(MLSTM_ERR_CONTEXT_MISMATCH);
            if (b->dtype != tdtype(d, t))
                allowed |= BIT(MLSTM_ERR_DTYPE_MISMATCH);
            if (m.geo_ok[t] && m.ext[t] > b->count)
                allowed |= BIT(MLSTM_ERR_BUFFER_TOO_SMALL);
        }
        /* outputs must not share memory with any other tensor of the call (whole extents compared) */
        for (int o = 0; o < NT; o++) {
            if (!used(o, bwd) || !is_out(o, bwd) || !refs[o].b || !m.geo_ok[o])
                continue;
            for (int t = 0; t < NT; t++) {
                if (t == o || !used(t, bwd) || !refs[t].b || !m.geo_ok[t] || refs[t].alloc != refs[o].alloc)
                    continue;
                size_t eo = esize(refs[o].dtype), et = esize(refs[t].dtype);
                u128 olo = (u128)refs[o].off * eo, ohi = olo + (u128)m.ext[o] * eo;
                u128 tlo = (u128)refs[t].off * et, thi = tlo + (u128)m.ext[t] * et;
                if (olo < thi && tlo < ohi)
                    allowed |= BIT(MLSTM_ERR_BAD_LAYOUT);
            }
        }
    }
    if (ctx == NULL)
        allowed = BIT(MLSTM_ERR_INVALID_ARGUMENT), conservative = 0;
    int must_fail = allowed != 0;
    if (!must_fail)
        allowed = 1u;
    if (conservative)
        allowed |= BIT(MLSTM_ERR_BAD_LAYOUT);

    mlstm_buffer *b[NT];
    for (int t = 0; t < NT; t++)
        b[t] = refs[t].b;
    const char *fn = bwd ? "mlstm_parallel_bwd" : "mlstm_parallel_fwd";
    int st = MLSTM_OK;
    for (int pass = 0; pass < 1 + (rerun && !must_fail); pass++) {
        if (bwd)
            st = mlstm_parallel_bwd(ctx, d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
                                    b[12], b[13]);
        else
            st = mlstm_parallel_fwd(ctx, d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
        if (pass == 0) {
            count_status(2 + bwd, st);
            check_status_in(st, allowed, fn, ctx, d);
        } else
            REQUIRE(st == MLSTM_OK, "%s: second identical call returned %d", fn, st);
        int ss = mlstm_synchronize(g_ctx);
        REQUIRE(ss == MLSTM_OK, "mlstm_synchronize after %s failed: %d %s", fn, ss, mlstm_context_last_error(g_ctx));
        if (st != MLSTM_OK && pass == 0) {
            readback_check(&s, NULL, fn, st, d);
            break;
        }
        if (pass == 1) { /* bitwise the same as the first pass: no element may differ from its shadow */
            readback_check(&s, NULL, "a second identical call", st, d);
            break;
        }
        uint8_t *map[NT + 4];
        memset(map, 0, sizeof map);
        for (int t = 0; t < NT; t++) {
            if (!used(t, bwd) || !is_out(t, bwd))
                continue;
            int a = refs[t].alloc;
            if (!map[a]) {
                map[a] = calloc(s.al[a].count, 1);
                REQUIRE(map[a] != NULL, "harness out of memory");
            }
            mark_addressed(map[a], s.al[a].count, refs[t].off, d, tdim(d, t), m.st[t]);
        }
        readback_check(&s, (const uint8_t *const *)map, fn, st, d);
        for (int a = 0; a < NT + 4; a++)
            free(map[a]);
    }

    for (int v = s.nviews - 1; v >= 0; v--)
        mlstm_buffer_destroy(s.views[v]);
    for (int a = 0; a < s.nal; a++) {
        mlstm_buffer_destroy(s.al[a].root);
        free(s.al[a].shadow);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Buffer operation sequences: create, view, write, read, query, destroy with random arguments.           */

typedef struct slot {
    mlstm_buffer *b;
    int parent;          /* slot index of the parent for views, -1 for roots */
    int children;
    int dtype;
    size_t count;
    size_t off;          /* elements from the root allocation's start */
    int root;            /* slot of the root */
    uint8_t *shadow;     /* roots only: expected contents */
} slot;

static size_t gen_count(rd_t *r, size_t avail)
{
    uint8_t sel = u8(r);
    if (sel < 160)
        return 1 + u8(r) % 64;
    if (sel < 190)
        return avail ? avail : 1;
    if (sel < 200)
        return 0;
    if (sel < 215)
        return (size_t)(HUGE_COUNT_MIN << (u8(r) % 3)); /* 2^38 .. 2^40 elements */
    if (sel < 235) {
        static const size_t special[] = {SIZE_MAX, SIZE_MAX / 2, SIZE_MAX / 4 + 1, (size_t)INT64_MAX / 2 + 1,
                                         (size_t)INT64_MAX / 4 + 1, (size_t)1 << 62, ((size_t)1 << 63) - 1};
        return special[u8(r) % 7];
    }
    size_t v = (size_t)u64(r);
    return v < HUGE_COUNT_MIN ? 1 + v % 64 : v; /* never a real multi-GiB allocation */
}

static void fuzz_buffers(rd_t *r)
{
    slot sl[POOL];
    memset(sl, 0, sizeof sl);
    uint64_t rng = u64(r);
    int nops = 1 + u8(r) % 24;
    for (int op = 0; op < nops; op++) {
        uint8_t kind = u8(r) % 8, which = u8(r) % POOL;
        slot *x = &sl[which];
        switch (kind) {
        case 0: case 1: { /* create */
            if (x->b)
                break;
            uint8_t dsel = u8(r);
            int dtype = dsel < 240 ? 1 + dsel % 3 : (int)u32(r);
            size_t count = gen_count(r, 0);
            int out_null = u8(r) == 0x55;
            mlstm_buffer *nb = (mlstm_buffer *)(uintptr_t)0x1; /* a sentinel: must become NULL or stay */
            int st = mlstm_buffer_create(g_ctx, dtype, count, out_null ? NULL : &nb);
            unsigned allowed;
            size_t es = esize(dtype);
            if (out_null || es == 0 || count == 0)
                allowed = BIT(MLSTM_ERR_INVALID_ARGUMENT);
            else if ((u128)count * es > (u128)INT64_MAX)
                allowed = BIT(MLSTM_ERR_SIZE_OVERFLOW);
            else if (count >= HUGE_COUNT_MIN)
                allowed = BIT(MLSTM_ERR_OUT_OF_MEMORY);
            else
                allowed = 1u;
            char what[96];
            snprintf(what, sizeof what, "mlstm_buffer_create(dtype %d, count %zu)", dtype, count);
            check_status_in(st, allowed, what, g_ctx, NULL);
            if (st != MLSTM_OK) {
                REQUIRE(out_null || nb == NULL || nb == (mlstm_buffer *)(uintptr_t)0x1,
                        "%s failed but set *out to a non-NULL handle", what);
                break;
            }
            REQUIRE(nb != NULL && mlstm_buffer_count(nb) == count && mlstm_buffer_dtype(nb) == dtype,
                    "%s: handle %p reports count %zu dtype %d", what, (void *)nb, mlstm_buffer_count(nb),
                    mlstm_buffer_dtype(nb));
            x->b = nb;
            x->parent = -1;
            x->children = 0;
            x->dtype = dtype;
            x->count = count;
            x->off = 0;
            x->root = which;
            x->shadow = malloc(count * es);
            REQUIRE(x->shadow != NULL, "harness out of memory");
            fill_elems(x->shadow, dtype, count, &rng, 6);
            st = mlstm_buffer_write(nb, 0, count, x->shadow);
            REQUIRE(st == MLSTM_OK, "initial write of %zu elements failed: %d", count, st);
            break;
        }
        case 2: { /* view */
            slot *p = &sl[u8(r) % POOL];
            size_t off = gen_count(r, p->b ? p->count : 0);
            if (u8(r) & 1)
                off = off > 0 ? off - 1 : 0; /* offsets start at 0 */
            size_t count = gen_count(r, p->b && off < p->count ? p->count - off : 0);
            if (x->b || p == x)
                break;
            int out_null = u8(r) == 0x55;
            mlstm_buffer *nb = (mlstm_buffer *)(uintptr_t)0x1;
            int st = mlstm_buffer_create_view(p->b, off, count, out_null ? NULL : &nb);
            unsigned allowed;
            if (!p->b || out_null || count == 0 || off > p->count || count > p->count - off)
                allowed = BIT(MLSTM_ERR_INVALID_ARGUMENT);
            else
                allowed = 1u;
            char what[96];
            snprintf(what, sizeof what, "mlstm_buffer_create_view(offset %zu, count %zu of %zu)", off, count,
                     p->b ? p->count : 0);
            check_status_in(st, allowed, what, p->b ? g_ctx : NULL, NULL);
            if (st != MLSTM_OK)
                break;
            REQUIRE(nb != NULL && mlstm_buffer_count(nb) == count && mlstm_buffer_dtype(nb) == p->dtype,
                    "%s: view reports count %zu dtype %d", what, mlstm_buffer_count(nb), mlstm_buffer_dtype(nb));
            int pidx = (int)(p - sl);
            x->b = nb;
            x->parent = pidx;
            x->children = 0;
            x->dtype = p->dtype;
            x->count = count;
            x->off = p->off + off;
            x->root = p->root;
            x->shadow = NULL;
            p->children++;
            break;
        }
        case 3: case 4: { /* write (3) or read (4) */
            size_t off = gen_count(r, x->b ? x->count : 0);
            if (u8(r) & 1)
                off = off > 0 ? off - 1 : 0;
            size_t count = gen_count(r, x->b && off < x->count ? x->count - off : 0);
            int host_null = u8(r) == 0x55;
            int valid_range = x->b && count > 0 && off <= x->count && count <= x->count - off;
            size_t es = x->b ? esize(x->dtype) : 4;
            size_t n = (valid_range && !host_null) ? count : 1;
            harr_t h;
            memset(&h, 0, sizeof h);
            harr_alloc(&h, n * es);
            fill_elems(h.p, x->b ? x->dtype : MLSTM_DTYPE_F32, n, &rng, 6);
            harr_snap(&h);
            int st = kind == 3 ? mlstm_buffer_write(x->b, off, count, host_null ? NULL : h.p)
                               : mlstm_buffer_read(x->b, off, count, host_null ? NULL : h.p);
            unsigned allowed;
            if (!x->b || host_null || count == 0)
                allowed = BIT(MLSTM_ERR_INVALID_ARGUMENT);
            else if (!valid_range)
                allowed = BIT(MLSTM_ERR_BUFFER_TOO_SMALL) | BIT(MLSTM_ERR_INVALID_ARGUMENT);
            else
                allowed = 1u;
            char what[96];
            snprintf(what, sizeof what, "mlstm_buffer_%s(offset %zu, count %zu of %zu)", kind == 3 ? "write" : "read",
                     off, count, x->b ? x->count : 0);
            check_status_in(st, allowed, what, x->b ? g_ctx : NULL, NULL);
            harr_check_guards(&h, what);
            if (st == MLSTM_OK) {
                uint8_t *shadow = sl[x->root].shadow + (x->off + off) * es;
                if (kind == 3)
                    memcpy(shadow, h.p, count * es);
                else
                    REQUIRE(memcmp(shadow, h.p, count * es) == 0, "%s read back data that differs from what was "
                            "written", what);
            } else {
                REQUIRE(memcmp(h.p, h.snap, h.bytes) == 0, "%s failed but changed the host array", what);
            }
            harr_free(&h);
            break;
        }
        case 5: { /* destroy, views before their parents */
            if (!x->b || x->children)
                break;
            mlstm_buffer_destroy(x->b);
            if (x->parent >= 0)
                sl[x->parent].children--;
            free(x->shadow);
            memset(x, 0, sizeof *x);
            break;
        }
        case 6: { /* queries */
            REQUIRE(mlstm_buffer_count(x->b) == (x->b ? x->count : 0), "mlstm_buffer_count wrong");
            REQUIRE(mlstm_buffer_dtype(x->b) == (x->b ? x->dtype : 0), "mlstm_buffer_dtype wrong");
            break;
        }
        default: { /* whole-root consistency: read every root back and compare with its shadow */
            for (int k = 0; k < POOL; k++) {
                if (!sl[k].b || sl[k].parent >= 0)
                    continue;
                size_t bytes = sl[k].count * esize(sl[k].dtype);
                uint8_t *got = malloc(bytes);
                REQUIRE(got != NULL, "harness out of memory");
                int st = mlstm_buffer_read(sl[k].b, 0, sl[k].count, got);
                REQUIRE(st == MLSTM_OK && memcmp(got, sl[k].shadow, bytes) == 0,
                        "buffer %d does not hold what was written (read status %d)", k, st);
                free(got);
            }
            break;
        }
        }
    }
    /* views first (children before parents), then roots */
    for (int pass = 0; pass < POOL + 1; pass++)
        for (int k = 0; k < POOL; k++)
            if (sl[k].b && sl[k].children == 0 && (sl[k].parent >= 0 || pass == POOL)) {
                mlstm_buffer_destroy(sl[k].b);
                if (sl[k].parent >= 0)
                    sl[sl[k].parent].children--;
                free(sl[k].shadow);
                memset(&sl[k], 0, sizeof sl[k]);
            }
    for (int k = 0; k < POOL; k++)
        REQUIRE(sl[k].b == NULL, "harness: buffer slot %d not released", k);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Everything else: NULL handles, status strings, dtype sizes, options, mlstm_tensor_extent.              */

static void fuzz_misc(rd_t *r)
{
    int code = (int)u32(r);
    const char *s = mlstm_status_string(code);
    REQUIRE(s != NULL && s[0], "mlstm_status_string(%d) is NULL or empty", code);
    int dt = (int)u32(r) % 6;
    REQUIRE(mlstm_dtype_size(dt) == esize(dt), "mlstm_dtype_size(%d) wrong", dt);
    int bi = (int)(int8_t)u8(r);
    const char *bn = mlstm_backend_name_at(bi);
    REQUIRE((bn != NULL) == (bi >= 0 && bi < mlstm_backend_count()), "mlstm_backend_name_at(%d) = %p", bi,
            (const void *)bn);

    /* NULL handles */
    mlstm_buffer *nb = (mlstm_buffer *)(uintptr_t)0x1;
    float tmp[4] = {0};
    REQUIRE(mlstm_synchronize(NULL) == MLSTM_ERR_INVALID_ARGUMENT, "mlstm_synchronize(NULL)");
    REQUIRE(strcmp(mlstm_context_last_error(NULL), "") == 0, "mlstm_context_last_error(NULL)");
    REQUIRE(strcmp(mlstm_context_backend_name(NULL), "") == 0, "mlstm_context_backend_name(NULL)");
    REQUIRE(strcmp(mlstm_context_device_name(NULL), "") == 0, "mlstm_context_device_name(NULL)");
    REQUIRE(mlstm_buffer_create(NULL, MLSTM_DTYPE_F32, 4, &nb) == MLSTM_ERR_INVALID_ARGUMENT,
            "mlstm_buffer_create(NULL ctx)");
    REQUIRE(mlstm_buffer_create_view(NULL, 0, 1, &nb) == MLSTM_ERR_INVALID_ARGUMENT, "view of NULL");
    REQUIRE(mlstm_buffer_write(NULL, 0, 1, tmp) == MLSTM_ERR_INVALID_ARGUMENT, "write to NULL");
    REQUIRE(mlstm_buffer_read(NULL, 0, 1, tmp) == MLSTM_ERR_INVALID_ARGUMENT, "read from NULL");
    REQUIRE(mlstm_buffer_count(NULL) == 0 && mlstm_buffer_dtype(NULL) == 0, "NULL buffer queries");
    mlstm_buffer_destroy(NULL);
    mlstm_context_destroy(NULL);
    mlstm_desc_init(NULL);
    mlstm_options_init(NULL);
    REQUIRE(mlstm_tensor_extent(NULL, (int)(u8(r) % NT)) == 0, "mlstm_tensor_extent(NULL)");

    /* context creation with bad options (never a valid one: contexts are expensive) */
    mlstm_options o;
    mlstm_options_init(&o);
    mlstm_context *c = (mlstm_context *)(uintptr_t)0x1;
    int st;
    switch (u8(r) % 5) {
    case 0:
        /* never a size the library would accept or read beyond this struct for (the ABI rule of mlstm.h:
         * MLSTM_OPTIONS_SIZE_V1 up to sizeof, and zero bytes beyond up to 256 more); too large ones are not read */
        o.struct_size = u32(r);
        if (o.struct_size >= MLSTM_OPTIONS_SIZE_V1 && o.struct_size <= sizeof o + 256)
            o.struct_size %= (uint32_t)MLSTM_OPTIONS_SIZE_V1;
        st = mlstm_context_create(&o, &c);
        REQUIRE(st == MLSTM_ERR_INVALID_ARGUMENT && c == NULL, "create with struct_size %u: %d", o.struct_size, st);
        break;
    case 1:
        st = mlstm_context_create(&o, NULL);
        REQUIRE(st == MLSTM_ERR_INVALID_ARGUMENT, "create with out NULL: %d", st);
        break;
    case 2:
        o.device = -2 - (int)(u32(r) & 0x7fffffff) % 1000;
        st = mlstm_context_create(&o, &c);
        REQUIRE(st == MLSTM_ERR_INVALID_ARGUMENT && c == NULL, "create with device %d: %d", o.device, st);
        break;
    case 3: {
        char name[9];
        for (int k = 0; k < 8; k++)
            name[k] = (char)('a' + u8(r) % 26);
        name[8] = '\0';
        o.backend = name;
        st = mlstm_context_create(&o, &c);
        REQUIRE(st == MLSTM_ERR_BACKEND_UNAVAILABLE && c == NULL, "create with backend '%s': %d", name, st);
        break;
    }
    default: {
        int have_cuda = 0;
        for (int k = 0; k < mlstm_backend_count(); k++)
            have_cuda |= strcmp(mlstm_backend_name_at(k), "cuda") == 0;
        if (have_cuda)
            break;
        o.backend = "cuda";
        st = mlstm_context_create(&o, &c);
        REQUIRE(st == MLSTM_ERR_BACKEND_UNAVAILABLE && c == NULL, "create with backend 'cuda' (not compiled): %d",
                st);
        break;
    }
    }
    if (c != (mlstm_context *)(uintptr_t)0x1)
        REQUIRE(mlstm_last_error_global()[0] != '\0', "failed context creation left no global error");

    /* mlstm_tensor_extent against the model */
    mlstm_desc desc;
    const mlstm_desc *d = gen_desc(r, &desc);
    int t = (int)(int8_t)u8(r);
    int tt = (t >= 0 && t < NT) ? t : 0;
    model_t m;
    model_desc(d, tt >= MLSTM_TENSOR_DH, &m);
    size_t got = mlstm_tensor_extent(d, t);
    size_t want = (t >= 0 && t < NT && !m.desc_viol && m.geo_ok[t]) ? (size_t)m.ext[t] : 0;
    if (got != want) {
        describe(d);
        violation(__LINE__, "mlstm_tensor_extent(tensor %d) = %zu, expected %zu", t, got, want);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rd_t r = {data, size};
    switch (u8(&r) % 6) {
    case 0: fuzz_misc(&r); break;
    case 1: fuzz_host(&r, 0); break;
    case 2: fuzz_host(&r, 1); break;
    case 3: fuzz_device(&r, 0); break;
    case 4: fuzz_device(&r, 1); break;
    default: fuzz_buffers(&r); break;
    }
    return 0;
}
