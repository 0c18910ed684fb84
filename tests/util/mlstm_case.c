/* Implementation of one conformance case (see mlstm_case.h): names, seeded inputs, layouts, the float64
 * reference and the guarded device run through the public API. The device run checks every guard band,
 * every gap between addressed elements, and that no input was written. */
#include "mlstm_case.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mlstm_ref.h"
#include "test_util.h"

static const char *const tensor_names[MLSTM_TENSOR_COUNT] = {
    "q", "k", "v", "i", "f", "h", "m", "n", "dh", "dq", "dk", "dv", "di", "df"
};
static const int out_tensor[MC_OUT_COUNT] = {
    MLSTM_TENSOR_H, MLSTM_TENSOR_M, MLSTM_TENSOR_N, MLSTM_TENSOR_DQ,
    MLSTM_TENSOR_DK, MLSTM_TENSOR_DV, MLSTM_TENSOR_DI, MLSTM_TENSOR_DF
};
static const char *const out_names[MC_OUT_COUNT] = { "h", "m", "n", "dq", "dk", "dv", "di", "df" };

const char *mc_output_name(int out) { return (out >= 0 && out < MC_OUT_COUNT) ? out_names[out] : "?"; }

const char *mc_gates_name(int gates)
{
    static const char *const n[MC_GATES_COUNT] = { "std", "normal", "ext_u", "ext_n", "closed" };
    return (gates >= 0 && gates < MC_GATES_COUNT) ? n[gates] : "?";
}

const char *mc_layout_name(int layout)
{
    static const char *const n[MC_LAYOUT_COUNT] = { "bnsd", "bsnd", "padded" };
    return (layout >= 0 && layout < MC_LAYOUT_COUNT) ? n[layout] : "?";
}

mc_case mc_case_make(int bwd, int dtype, int grad_mode, int64_t B, int64_t NH, int64_t S, int64_t DQK, int64_t DV,
                     int gates, int layout, uint64_t seed)
{
    mc_case c;
    memset(&c, 0, sizeof c);
    c.bwd = bwd; c.dtype = dtype; c.grad_mode = grad_mode;
    c.B = B; c.NH = NH; c.S = S; c.DQK = DQK; c.DV = DV;
    c.gates = gates; c.layout = layout; c.eps = 1e-6f; c.seed = seed;
    mc_case_finish(&c);
    return c;
}

void mc_case_finish(mc_case *c)
{
    char extra[96] = "";
    size_t u = 0;
    if (c->eps != 1e-6f)
        u += (size_t)snprintf(extra + u, sizeof extra - u, "/eps=%g", (double)c->eps);
    if (c->scale != 0.0f)
        u += (size_t)snprintf(extra + u, sizeof extra - u, "/scale=%g", (double)c->scale);
    if (c->odd_offsets)
        u += (size_t)snprintf(extra + u, sizeof extra - u, "/offsets=odd");
    if (c->math_mode == MLSTM_MATH_TF32)
        snprintf(extra + u, sizeof extra - u, "/math=tf32");
    snprintf(c->name, sizeof c->name, "%s/%s%s/B%lld_NH%lld_S%lld_DQK%lld_DV%lld/gates=%s/layout=%s/seed=%llu%s",
             c->bwd ? "bwd" : "fwd", tu_dtype_name(c->dtype),
             c->bwd ? (c->grad_mode == MLSTM_GRAD_EXACT ? "/exact" : "/detached") : "",
             (long long)c->B, (long long)c->NH, (long long)c->S, (long long)c->DQK, (long long)c->DV,
             mc_gates_name(c->gates), mc_layout_name(c->layout), (unsigned long long)c->seed, extra);
}

/* ---- tensor geometry ---- */
static int64_t tensor_dim(const mc_case *c, int t) { return tu_tensor_dim(t, c->DQK, c->DV); }
static int tensor_dtype(const mc_case *c, int t) { return tu_tensor_dtype(t, c->dtype); }

static int tensor_used(const mc_case *c, int t) { return c->bwd || t <= MLSTM_TENSOR_N; }

/* Written by the call that produces the case's final results. */
static int tensor_is_output(const mc_case *c, int t)
{
    if (t >= MLSTM_TENSOR_H && t <= MLSTM_TENSOR_N)
        return 1;
    return c->bwd && t >= MLSTM_TENSOR_DQ;
}

/* Element strides (b, h, s) actually used for addressing (contiguous resolved). */
static void tensor_strides(const mc_case *c, int t, int64_t st[3])
{
    const int64_t D = tensor_dim(c, t), S = c->S, NH = c->NH;
    switch (c->layout) {
    case MC_LAYOUT_BSND:
        st[0] = S * NH * D; st[1] = D; st[2] = NH * D;
        break;
    case MC_LAYOUT_PADDED: {
        const int64_t ss = D + (D > 1 ? 3 : 1);
        const int64_t sh = S * ss + (D > 1 ? 5 : 1);
        st[0] = NH * sh + (D > 1 ? 7 : 3); st[1] = sh; st[2] = ss;
        break;
    }
    default:
        st[0] = NH * S * D; st[1] = S * D; st[2] = D;
        break;
    }
}

static size_t tensor_extent(const mc_case *c, int t)
{
    int64_t st[3];
    tensor_strides(c, t, st);
    return (size_t)((c->B - 1) * st[0] + (c->NH - 1) * st[1] + (c->S - 1) * st[2] + tensor_dim(c, t));
}

static void guards(const mc_case *c, int t, size_t *lo, size_t *hi)
{
    if (c->odd_offsets) {
        *lo = 37 + 2 * (size_t)t; /* odd, different per tensor */
        *hi = 19 + (size_t)t;
    } else {
        *lo = 256;
        *hi = 256;
    }
}

void mc_desc(const mc_case *c, mlstm_desc *d)
{
    mlstm_desc_init(d);
    d->batch = c->B;
    d->heads = c->NH;
    d->seq_len = c->S;
    d->dqk = c->DQK;
    d->dv = c->DV;
    d->dtype = c->dtype;
    d->eps = c->eps;
    d->scale = c->scale;
    d->grad_mode = c->grad_mode;
    d->math_mode = c->math_mode;
    if (c->layout != MC_LAYOUT_BNSD) {
        for (int t = 0; t < MLSTM_TENSOR_COUNT; t++) {
            int64_t st[3];
            tensor_strides(c, t, st);
            d->layout[t].batch = st[0];
            d->layout[t].head = st[1];
            d->layout[t].seq = st[2];
        }
    }
}

/* ---- inputs ---- */
static double *xmalloc_d(size_t n)
{
    double *p = malloc((n ? n : 1) * sizeof *p);
    if (!p)
        abort();
    return p;
}

static void fill_tensor(const mc_case *c, int t, double *x, size_t n)
{
    tu_rng r;
    /* one stream per (seed, tensor): inputs do not depend on direction, mode, dtype or layout */
    tu_rng_seed(&r, c->seed * 0x9e3779b97f4a7c15ull + (uint64_t)t * 0x632be59bd9b4e019ull + 1);
    const int is_gate = (t == MLSTM_TENSOR_I || t == MLSTM_TENSOR_F);
    for (size_t e = 0; e < n; e++) {
        double val;
        if (!is_gate) {
            val = tu_rng_normal(&r);
        } else {
            const int ig = t == MLSTM_TENSOR_I;
            switch (c->gates) {
            case MC_GATES_NORMAL: val = tu_rng_normal(&r); break;
            case MC_GATES_EXT_U: val = tu_rng_uniform_range(&r, -1e3, 1e3); break;
            case MC_GATES_EXT_N: val = 300.0 * tu_rng_normal(&r); break;
            case MC_GATES_CLOSED: val = ig ? -30.0 + tu_rng_normal(&r) : 3.0 + tu_rng_normal(&r); break;
            default: val = ig ? tu_rng_normal(&r) : 3.0 + tu_rng_normal(&r); break;
            }
        }
        x[e] = tu_round_to_dtype(val, tensor_dtype(c, t));
    }
}

void mc_inputs_make(const mc_case *c, mc_inputs *in)
{
    const size_t rows = (size_t)(c->B * c->NH * c->S);
    in->q = xmalloc_d(rows * (size_t)c->DQK);
    in->k = xmalloc_d(rows * (size_t)c->DQK);
    in->v = xmalloc_d(rows * (size_t)c->DV);
    in->i = xmalloc_d(rows);
    in->f = xmalloc_d(rows);
    fill_tensor(c, MLSTM_TENSOR_Q, in->q, rows * (size_t)c->DQK);
    fill_tensor(c, MLSTM_TENSOR_K, in->k, rows * (size_t)c->DQK);
    fill_tensor(c, MLSTM_TENSOR_V, in->v, rows * (size_t)c->DV);
    fill_tensor(c, MLSTM_TENSOR_I, in->i, rows);
    fill_tensor(c, MLSTM_TENSOR_F, in->f, rows);
    in->dh = NULL;
    if (c->bwd) {
        in->dh = xmalloc_d(rows * (size_t)c->DV);
        fill_tensor(c, MLSTM_TENSOR_DH, in->dh, rows * (size_t)c->DV);
    }
}

/* standard normal from a 64-bit LCG (the huge-gate inputs only: their recorded results are of this sequence) */
static double lcg_gauss(uint64_t *s)
{
    double u[2];
    for (int k = 0; k < 2; k++) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        u[k] = ((double)(*s >> 11) + 0.5) / 9007199254740992.0;
    }
    return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

void mc_inputs_huge_gates(const mc_case *c, mc_inputs *in)
{
    uint64_t s = c->seed * 0x9e3779b97f4a7c15ull + 1;
    const size_t n = (size_t)(c->B * c->NH * c->S);
    for (size_t x = 0; x < n; x++) {
        in->i[x] = (double)(float)(20.0 * lcg_gauss(&s));
        in->f[x] = (double)(float)(10.0 * lcg_gauss(&s));
    }
}

void mc_inputs_free(mc_inputs *in)
{
    free(in->q); free(in->k); free(in->v); free(in->i); free(in->f); free(in->dh);
    memset(in, 0, sizeof *in);
}

size_t mc_output_count(const mc_case *c, int out)
{
    if (out < 0 || out >= MC_OUT_COUNT || (!c->bwd && out >= MC_OUT_DQ))
        return 0;
    return (size_t)(c->B * c->NH * c->S * tensor_dim(c, out_tensor[out]));
}

void mc_outputs_free(mc_outputs *o)
{
    for (int k = 0; k < MC_OUT_COUNT; k++) {
        free(o->t[k]);
        o->t[k] = NULL;
    }
}

static void outputs_alloc(const mc_case *c, mc_outputs *o)
{
    for (int k = 0; k < MC_OUT_COUNT; k++) {
        size_t n = mc_output_count(c, k);
        o->t[k] = n ? xmalloc_d(n) : NULL;
    }
}

void mc_outputs_copy(const mc_case *c, const mc_outputs *src, mc_outputs *dst)
{
    outputs_alloc(c, dst);
    for (int k = 0; k < MC_OUT_COUNT; k++)
        if (dst->t[k])
            memcpy(dst->t[k], src->t[k], mc_output_count(c, k) * sizeof(double));
}

void mc_reference(const mc_case *c, const mc_inputs *in, int grad_mode, mc_outputs *out)
{
    /* exactly the scalars the kernel receives: float eps, float resolved scale */
    const float sc = c->scale != 0.0f ? c->scale : (float)(1.0 / sqrt((double)c->DQK));
    mlstm_ref_shape s = { c->B, c->NH, c->S, c->DQK, c->DV, (double)c->eps, (double)sc, grad_mode };
    outputs_alloc(c, out);
    mlstm_ref_fwd(&s, in->q, in->k, in->v, in->i, in->f, out->t[MC_OUT_H], out->t[MC_OUT_M], out->t[MC_OUT_N]);
    if (c->bwd)
        mc_reference_bwd_at(c, in, grad_mode, out->t[MC_OUT_M], out->t[MC_OUT_N], out);
}

/* magnitudes: -1 the backward itself, else the mlstm_ref_bwd_magnitudes kind */
static void reference_bwd(const mc_case *c, const mc_inputs *in, int grad_mode, const double *m, const double *n,
                          mc_outputs *out, int magnitudes)
{
    const float sc = c->scale != 0.0f ? c->scale : (float)(1.0 / sqrt((double)c->DQK));
    mlstm_ref_shape s = { c->B, c->NH, c->S, c->DQK, c->DV, (double)c->eps, (double)sc, grad_mode };
    /* The backward reads h as stored (in the storage dtype), like every other input: the reference backward
     * gets the reference h rounded to that dtype, so the rounding of its input h is not counted as the
     * backward's error (the forward's own h error is checked on h). Likewise m and n are whatever the caller
     * passes (the reference's own, or the f32 values the backend's forward stored). */
    size_t nh = mc_output_count(c, MC_OUT_H);
    double *h_stored = xmalloc_d(nh);
    for (size_t e = 0; e < nh; e++)
        h_stored[e] = tu_round_to_dtype(out->t[MC_OUT_H][e], c->dtype);
    if (magnitudes < 0)
        mlstm_ref_bwd(&s, in->q, in->k, in->v, in->i, in->f, h_stored, m, n, in->dh, out->t[MC_OUT_DQ],
                      out->t[MC_OUT_DK], out->t[MC_OUT_DV], out->t[MC_OUT_DI], out->t[MC_OUT_DF]);
    else
        mlstm_ref_bwd_magnitudes(&s, in->q, in->k, in->v, in->i, in->f, h_stored, m, n, in->dh, magnitudes,
                                 out->t[MC_OUT_DQ], out->t[MC_OUT_DK], out->t[MC_OUT_DV], out->t[MC_OUT_DI],
                                 out->t[MC_OUT_DF]);
    free(h_stored);
}

void mc_reference_bwd_at(const mc_case *c, const mc_inputs *in, int grad_mode, const double *m, const double *n,
                         mc_outputs *out)
{
    reference_bwd(c, in, grad_mode, m, n, out, -1);
}

void mc_reference_magnitudes(const mc_case *c, const mc_inputs *in, int grad_mode, const mc_outputs *ref, int kind,
                             mc_outputs *mag)
{
    outputs_alloc(c, mag);
    memcpy(mag->t[MC_OUT_H], ref->t[MC_OUT_H], mc_output_count(c, MC_OUT_H) * sizeof(double));
    reference_bwd(c, in, grad_mode, ref->t[MC_OUT_M], ref->t[MC_OUT_N], mag, kind);
}

/* ---- device run ---- */
typedef struct {
    int used, dtype;
    size_t lo, ext, total, es;
    int64_t st[3], D;
    mlstm_buffer *parent, *view;
    unsigned char *host, *back, *saved; /* uploaded image, read-back image, image after the forward */
    unsigned char *mask;                /* 1 where the layout addresses an element (within the view) */
} dev_tensor;

static double now_ms(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static const double *input_data(const mc_inputs *in, int t)
{
    switch (t) {
    case MLSTM_TENSOR_Q: return in->q;
    case MLSTM_TENSOR_K: return in->k;
    case MLSTM_TENSOR_V: return in->v;
    case MLSTM_TENSOR_I: return in->i;
    case MLSTM_TENSOR_F: return in->f;
    case MLSTM_TENSOR_DH: return in->dh;
    default: return NULL;
    }
}

/* Visits every addressed element: contiguous index e, element index within the view a. */
#define FOR_EACH_ELEMENT(c, dt, e, a, BODY)                                                                    \
    do {                                                                                                       \
        size_t e = 0;                                                                                          \
        for (int64_t b_ = 0; b_ < (c)->B; b_++)                                                                \
            for (int64_t h_ = 0; h_ < (c)->NH; h_++)                                                           \
                for (int64_t s_ = 0; s_ < (c)->S; s_++)                                                        \
                    for (int64_t d_ = 0; d_ < (dt)->D; d_++, e++) {                                            \
                        const size_t a = (size_t)(b_ * (dt)->st[0] + h_ * (dt)->st[1] + s_ * (dt)->st[2] + d_); \
                        BODY;                                                                                  \
                    }                                                                                          \
    } while (0)

static void describe_bad(char *msg, size_t len, const dev_tensor *dt, const char *name, size_t idx,
                         const char *what)
{
    uint32_t got = dt->es == 4 ? ((const uint32_t *)dt->back)[idx] : ((const uint16_t *)dt->back)[idx];
    const char *where = idx < dt->lo              ? "guard band below the view"
                        : idx >= dt->lo + dt->ext ? "guard band above the view"
                        : dt->mask[idx - dt->lo]  ? "an addressed element"
                                                  : "gap between addressed elements";
    snprintf(msg, len, "tensor %s: %s at buffer element %zu (%s; view at %zu, extent %zu) now holds 0x%0*x",
             name, what, idx, where, dt->lo, dt->ext, (int)(dt->es * 2), (unsigned)got);
}

static int api_fail(mlstm_context *ctx, int st, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "%s: %s (%d): %s", what, mlstm_status_string(st), st, mlstm_context_last_error(ctx));
    return st;
}

int mc_run_device(mlstm_context *ctx, const mc_case *c, const mc_inputs *in, mc_outputs *out, char *api_msg,
                  size_t api_len, char *canary_msg, size_t canary_len, double *phase_ms)
{
    dev_tensor dt[MLSTM_TENSOR_COUNT];
    memset(dt, 0, sizeof dt);
    api_msg[0] = '\0';
    canary_msg[0] = '\0';
    memset(out, 0, sizeof *out);
    if (phase_ms)
        phase_ms[0] = phase_ms[1] = 0.0;
    mlstm_desc desc;
    mc_desc(c, &desc);
    int st = MLSTM_OK;

    for (int t = 0; t < MLSTM_TENSOR_COUNT && st == MLSTM_OK; t++) {
        dev_tensor *d = &dt[t];
        if (!tensor_used(c, t))
            continue;
        d->used = 1;
        d->dtype = tensor_dtype(c, t);
        d->es = tu_dtype_size(d->dtype);
        d->D = tensor_dim(c, t);
        tensor_strides(c, t, d->st);
        d->ext = tensor_extent(c, t);
        size_t hi;
        guards(c, t, &d->lo, &hi);
        d->total = d->lo + d->ext + hi;
        if (mlstm_tensor_extent(&desc, t) != d->ext) {
            snprintf(api_msg, api_len, "mlstm_tensor_extent(%s) = %zu, the test computes %zu", tensor_names[t],
                     mlstm_tensor_extent(&desc, t), d->ext);
            st = MLSTM_ERR_INTERNAL;
            break;
        }
        d->host = malloc(d->total * d->es);
        d->back = malloc(d->total * d->es);
        d->mask = calloc(d->ext, 1);
        if (!d->host || !d->back || !d->mask)
            abort();
        tu_canary_fill(d->host, d->dtype, d->total);
        const double *src = input_data(in, t);
        unsigned char *base = d->host + d->lo * d->es;
        FOR_EACH_ELEMENT(c, d, e, a, {
            d->mask[a] = 1;
            if (src)
                tu_store(base, d->dtype, a, src[e]);
        });
        st = mlstm_buffer_create(ctx, d->dtype, d->total, &d->parent);
        if (st != MLSTM_OK) {
            api_fail(ctx, st, "mlstm_buffer_create", api_msg, api_len);
            break;
        }
        st = mlstm_buffer_create_view(d->parent, d->lo, d->ext, &d->view);
        if (st != MLSTM_OK) {
            api_fail(ctx, st, "mlstm_buffer_create_view", api_msg, api_len);
            break;
        }
        st = mlstm_buffer_write(d->parent, 0, d->total, d->host);
        if (st != MLSTM_OK)
            api_fail(ctx, st, "mlstm_buffer_write", api_msg, api_len);
    }

    if (st == MLSTM_OK) {
        double t0 = now_ms();
        st = mlstm_parallel_fwd(ctx, &desc, dt[0].view, dt[1].view, dt[2].view, dt[3].view, dt[4].view,
                                dt[5].view, dt[6].view, dt[7].view);
        if (st != MLSTM_OK)
            api_fail(ctx, st, "mlstm_parallel_fwd", api_msg, api_len);
        else if ((st = mlstm_synchronize(ctx)) != MLSTM_OK)
            api_fail(ctx, st, "mlstm_synchronize after fwd", api_msg, api_len);
        if (phase_ms)
            phase_ms[0] = now_ms() - t0;
    }
    if (st == MLSTM_OK && c->bwd) {
        /* keep the forward's h, m, n images: the backward must leave them bitwise unchanged */
        for (int t = MLSTM_TENSOR_H; t <= MLSTM_TENSOR_N && st == MLSTM_OK; t++) {
            dev_tensor *d = &dt[t];
            d->saved = malloc(d->total * d->es);
            if (!d->saved)
                abort();
            st = mlstm_buffer_read(d->parent, 0, d->total, d->saved);
            if (st != MLSTM_OK)
                api_fail(ctx, st, "mlstm_buffer_read", api_msg, api_len);
        }
        if (st == MLSTM_OK) {
            double t0 = now_ms();
            st = mlstm_parallel_bwd(ctx, &desc, dt[0].view, dt[1].view, dt[2].view, dt[3].view, dt[4].view,
                                    dt[5].view, dt[6].view, dt[7].view, dt[8].view, dt[9].view, dt[10].view,
                                    dt[11].view, dt[12].view, dt[13].view);
            if (st != MLSTM_OK)
                api_fail(ctx, st, "mlstm_parallel_bwd", api_msg, api_len);
            else if ((st = mlstm_synchronize(ctx)) != MLSTM_OK)
                api_fail(ctx, st, "mlstm_synchronize after bwd", api_msg, api_len);
            if (phase_ms)
                phase_ms[1] = now_ms() - t0;
        }
    }
    for (int t = 0; t < MLSTM_TENSOR_COUNT && st == MLSTM_OK; t++) {
        if (!dt[t].used)
            continue;
        st = mlstm_buffer_read(dt[t].parent, 0, dt[t].total, dt[t].back);
        if (st != MLSTM_OK)
            api_fail(ctx, st, "mlstm_buffer_read", api_msg, api_len);
    }

    if (st == MLSTM_OK) {
        /* inputs untouched; the forward's outputs untouched by the backward; canaries intact */
        for (int t = 0; t < MLSTM_TENSOR_COUNT && !canary_msg[0]; t++) {
            dev_tensor *d = &dt[t];
            if (!d->used)
                continue;
            const unsigned char *expect = NULL;
            if (!tensor_is_output(c, t))
                expect = d->host;
            else if (c->bwd && t >= MLSTM_TENSOR_H && t <= MLSTM_TENSOR_N)
                expect = d->saved;
            if (expect) {
                for (size_t x = 0; x < d->total; x++) {
                    if (memcmp(expect + x * d->es, d->back + x * d->es, d->es) != 0) {
                        describe_bad(canary_msg, canary_len, d, tensor_names[t], x,
                                     t >= MLSTM_TENSOR_H && t <= MLSTM_TENSOR_N
                                         ? "forward output modified by the backward"
                                         : "input modified");
                        break;
                    }
                }
                if (canary_msg[0])
                    break;
            }
            for (size_t x = 0; x < d->total; x++) {
                const int addressed = x >= d->lo && x < d->lo + d->ext && d->mask[x - d->lo];
                if (!addressed && !tu_is_canary(d->back, d->dtype, x)) {
                    describe_bad(canary_msg, canary_len, d, tensor_names[t], x, "canary overwritten");
                    break;
                }
            }
        }
        outputs_alloc(c, out);
        for (int o = 0; o < MC_OUT_COUNT; o++) {
            if (!out->t[o])
                continue;
            dev_tensor *d = &dt[out_tensor[o]];
            const unsigned char *base = (c->bwd && o <= MC_OUT_N ? d->saved : d->back) + d->lo * d->es;
            double *dst = out->t[o];
            FOR_EACH_ELEMENT(c, d, e, a, { dst[e] = tu_load(base, d->dtype, a); });
        }
    }

    for (int t = MLSTM_TENSOR_COUNT - 1; t >= 0; t--) {
        mlstm_buffer_destroy(dt[t].view);
        mlstm_buffer_destroy(dt[t].parent);
        free(dt[t].host);
        free(dt[t].back);
        free(dt[t].saved);
        free(dt[t].mask);
    }
    return st;
}

double mc_extreme_gate_magnitude(const mc_case *c, const mc_inputs *in)
{
    if (c->gates != MC_GATES_EXT_U && c->gates != MC_GATES_EXT_N)
        return 0.0;
    const size_t rows = (size_t)(c->B * c->NH * c->S);
    double g = 0.0;
    for (size_t x = 0; x < rows; x++)
        g = fmax(g, fmax(fabs(in->i[x]), fabs(in->f[x])));
    return g;
}

int mc_degenerate_scales(const mc_case *c, const mc_inputs *in, const mc_outputs *ref, double *mag_den)
{
    for (int o = 0; o < MC_OUT_COUNT; o++)
        mag_den[o] = 0.0;
    const int degenerate = c->bwd && (c->S == 1 || (c->grad_mode == MLSTM_GRAD_EXACT &&
                                                     (c->gates == MC_GATES_EXT_U || c->gates == MC_GATES_EXT_N)));
    if (!degenerate)
        return 0;
    mc_outputs det_own;
    memset(&det_own, 0, sizeof det_own);
    const mc_outputs *det = ref;
    if (c->grad_mode == MLSTM_GRAD_EXACT) {
        mc_reference(c, in, MLSTM_GRAD_NORMALIZER_DETACHED, &det_own);
        det = &det_own;
    }
    for (int o = MC_OUT_DQ; o < MC_OUT_COUNT; o++)
        mag_den[o] = tu_l2(det->t[o], mc_output_count(c, o));
    /* df_u = sigmoid(-f_u) * sum_{v>=u} (q_v.dq_v - k_v.dk_v): the terms' size, with detached dq, dk */
    const size_t rows = mc_output_count(c, MC_OUT_DF);
    double *mag = malloc(rows * sizeof *mag);
    if (!mag)
        abort();
    for (int64_t bh = 0; bh < c->B * c->NH; bh++) {
        double acc = 0.0;
        for (int64_t u = c->S - 1; u >= 0; u--) {
            const size_t r = (size_t)(bh * c->S + u);
            double qd = 0.0, kd = 0.0;
            for (int64_t d = 0; d < c->DQK; d++) {
                qd += in->q[r * (size_t)c->DQK + (size_t)d] * det->t[MC_OUT_DQ][r * (size_t)c->DQK + (size_t)d];
                kd += in->k[r * (size_t)c->DQK + (size_t)d] * det->t[MC_OUT_DK][r * (size_t)c->DQK + (size_t)d];
            }
            acc += fabs(qd) + fabs(kd);
            const double fu = in->f[r];
            mag[r] = acc * (fu >= 0 ? exp(-fu) / (1.0 + exp(-fu)) : 1.0 / (1.0 + exp(fu)));
        }
    }
    mag_den[MC_OUT_DF] = fmax(mag_den[MC_OUT_DF], tu_l2(mag, rows));
    free(mag);
    mc_outputs_free(&det_own);
    return 1;
}
