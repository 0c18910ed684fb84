/* libmlstm CUDA kernels of the materialised algorithm: the row and element kernels between the cuBLAS products of
 * backends/cuda/materialized_cuda.c, a line-by-line port of kernels_cl/materialized.cl (same names, same math,
 * same compensated (hi, lo) sums, so both backends' materialised results agree with their fused ones the same
 * way). See materialized.h for the entry points and the workspace arrays. */
#include "common/common.cuh"
#include "materialized/materialized.h"

namespace mlstm {
namespace mat {

constexpr int MT = MLSTM_MAT_TILE; /* tile edge */
constexpr int MROWS = 8;           /* threads along a tile's rows; each owns MT / MROWS rows of one column */
constexpr int MSCAN = 64;          /* threads of the per-(b, h) scan kernels */
constexpr int ROW_WG = 256;        /* block size of the one-thread-per-element/row kernels */
constexpr int64_t MAX_GRID_Z = 65535;

/* (hi, lo) compensated pairs, as kernels_cl/common.cl's csum_add / csum_add2 / csum_split */
__device__ __forceinline__ float2 csum_add(float2 s, float x)
{
    const float t = s.x + x, bp = t - s.x;
    return make_float2(t, s.y + ((s.x - (t - bp)) + (x - bp)));
}
__device__ __forceinline__ float2 csum_add2(float2 s, float2 x) { return csum_add(csum_add(s, x.x), x.y); }
__device__ __forceinline__ float2 csum_split(float2 s) { return csum_add(make_float2(s.x, 0.0f), s.y); }
__device__ __forceinline__ float2 pair_max(float2 a, float2 b)
{
    return (b.x > a.x || (b.x == a.x && b.y > a.y)) ? b : a;
}

/* f32 rounded to TF32 (10-bit mantissa), to nearest even; inf and NaN kept */
__device__ __forceinline__ float round_tf32(float x)
{
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u)
        return x;
    u += 0xfffu + ((u >> 13) & 1u);
    return __uint_as_float(u & 0xffffe000u);
}

/* Element (b, h, s, d) of a tensor argument (mem is the allocation's base, offset in elements). */
template <typename T>
__device__ __forceinline__ T *at(const mlstm_tensor_arg &t, int64_t g, int64_t NH, int64_t s)
{
    return (T *)t.mem + t.offset + (g / NH) * t.stride_b + (g % NH) * t.stride_h + s * t.stride_s;
}

template <typename T>
__global__ void mlstm_mat_pack(const mlstm_tensor_arg t, float *dst, int S, int64_t NH, int D, int64_t total)
{
    const int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= total)
        return;
    const int64_t row = gid / D, g = row / S;
    const int d = (int)(gid - row * D), s = (int)(row - g * S);
    dst[gid] = to_f32(at<const T>(t, g, NH, s)[d]);
}

template <typename T>
__global__ void mlstm_mat_store(const float *src, const float *den, const mlstm_tensor_arg t, int S, int64_t NH, int D,
                                int64_t total)
{
    const int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= total)
        return;
    const int64_t row = gid / D, g = row / S;
    const int d = (int)(gid - row * D), s = (int)(row - g * S);
    float x = src[gid];
    if (den)
        x = x / den[row];
    at<T>(t, g, NH, s)[d] = from_f32<T>(x);
}

/* One block per (b, h): F_t as a pair; with mrow, m_t = max(floor, F_t + max_(j <= t) (i_j - F_j)). */
__global__ void __launch_bounds__(MSCAN) mlstm_mat_scan(const mlstm_tensor_arg f, const mlstm_tensor_arg ig,
                                                        const mlstm_tensor_arg mo, float *Fh, float *Fl, float *mrow,
                                                        int S, int64_t NH)
{
    __shared__ float2 part[MSCAN];
    const int lid = threadIdx.x;
    const int64_t g = blockIdx.x;
    const float *fb = at<const float>(f, g, NH, 0);
    const int len = (S + MSCAN - 1) / MSCAN, u0 = min(S, lid * len), u1 = min(S, u0 + len);
    Fh += g * S;
    Fl += g * S;

    float2 run = make_float2(0.0f, 0.0f);
    for (int u = u0; u < u1; ++u)
        run = csum_add(run, logsigmoid(fb[u * f.stride_s]));
    part[lid] = run;
    __syncthreads();
    if (lid == 0) {
        float2 acc = make_float2(0.0f, 0.0f);
        for (int x = 0; x < MSCAN; ++x) {
            const float2 y = part[x];
            part[x] = acc;
            acc = csum_add2(acc, y);
        }
    }
    __syncthreads();
    run = part[lid];
    for (int u = u0; u < u1; ++u) {
        run = csum_add(run, logsigmoid(fb[u * f.stride_s]));
        const float2 F = csum_split(run);
        Fh[u] = F.x;
        Fl[u] = F.y;
    }
    if (mrow == nullptr)
        return;

    const float *ib = at<const float>(ig, g, NH, 0);
    float2 mx = make_float2(-INFINITY, 0.0f);
    for (int u = u0; u < u1; ++u)
        mx = pair_max(mx, csum_split(csum_add(csum_add(make_float2(ib[u * ig.stride_s], 0.0f), -Fh[u]), -Fl[u])));
    __syncthreads();
    part[lid] = mx;
    __syncthreads();
    if (lid == 0) {
        float2 acc = make_float2(-INFINITY, 0.0f);
        for (int x = 0; x < MSCAN; ++x) {
            const float2 y = part[x];
            part[x] = acc;
            acc = pair_max(acc, y);
        }
    }
    __syncthreads();
    mx = part[lid];
    float *mb = at<float>(mo, g, NH, 0);
    for (int u = u0; u < u1; ++u) {
        mx = pair_max(mx, csum_split(csum_add(csum_add(make_float2(ib[u * ig.stride_s], 0.0f), -Fh[u]), -Fl[u])));
        const float2 s = csum_add(make_float2(Fh[u], 0.0f), mx.x);
        const float m = fmaxf(MLSTM_FLOOR, s.x + (s.y + (Fl[u] + mx.y)));
        mrow[g * S + u] = m;
        mb[u * mo.stride_s] = m;
    }
}

__device__ __forceinline__ float log_decay(const float *Fh, const float *Fl, int t, float fhj, float flj, float ij,
                                           float mt)
{
    return ((Fh[t] - fhj) + (Fl[t] - flj)) + (ij - mt);
}

/* Sums row lid % MT of red over its MT columns in order, as a pair. */
__device__ __forceinline__ float2 tile_row_sum(const float *red, int lid)
{
    float2 s = make_float2(0.0f, 0.0f);
    const int row = lid % MT;
    for (int x = 0; x < MT; ++x)
        s = csum_add(s, red[row * (MT + 1) + x]);
    return s;
}

/* Column data of an element kernel's thread, as kernels_cl/materialized.cl's LOAD_COLUMN. */
struct Column {
    int lx, ly, tc, tr, j;
    int64_t g;
    bool jok;
    float fhj, flj, ij;
};
__device__ __forceinline__ Column load_column(const float *Fh, const float *Fl, const mlstm_tensor_arg &ig, int S,
                                              int64_t NH, int64_t g0)
{
    Column c;
    c.lx = threadIdx.x;
    c.ly = threadIdx.y;
    c.tc = blockIdx.x;
    c.tr = blockIdx.y;
    c.g = g0 + blockIdx.z;
    c.j = c.tc * MT + c.lx;
    c.jok = c.j < S;
    c.fhj = c.jok ? Fh[c.g * S + c.j] : 0.0f;
    c.flj = c.jok ? Fl[c.g * S + c.j] : 0.0f;
    c.ij = c.jok ? at<const float>(ig, c.g, NH, c.j)[0] : 0.0f;
    return c;
}

__global__ void __launch_bounds__(MT *MROWS) mlstm_mat_fwd_tile(float *Sm, const float *Fh, const float *Fl,
                                                                 const float *mrow, float *rh, float *rl,
                                                                 const mlstm_tensor_arg ig, int S, int ntiles,
                                                                 int64_t NH, float scale, int rtf32, int64_t g0)
{
    __shared__ float red[MT * (MT + 1)];
    const Column c = load_column(Fh, Fl, ig, S, NH, g0);
    float *Sg = Sm + c.g * S * (int64_t)S;
    const float *Fhg = Fh + c.g * S, *Flg = Fl + c.g * S, *mt = mrow + c.g * S;
    if (c.tc > c.tr) {
        for (int a = 0; a < MT / MROWS; ++a) {
            const int t = c.tr * MT + c.ly + MROWS * a;
            if (t < S && c.jok)
                Sg[(int64_t)t * S + c.j] = 0.0f;
        }
        return;
    }
    for (int a = 0; a < MT / MROWS; ++a) {
        const int t = c.tr * MT + c.ly + MROWS * a;
        float v = 0.0f;
        if (t < S && c.jok && c.j <= t) {
            const float d = expf(log_decay(Fhg, Flg, t, c.fhj, c.flj, c.ij, mt[t]));
            v = d != 0.0f ? (scale * Sg[(int64_t)t * S + c.j]) * d : 0.0f;
        }
        if (t < S && c.jok)
            Sg[(int64_t)t * S + c.j] = rtf32 ? round_tf32(v) : v;
        red[(c.ly + MROWS * a) * (MT + 1) + c.lx] = v;
    }
    __syncthreads();
    const int lid = c.ly * MT + c.lx, t = c.tr * MT + lid;
    const float2 s = tile_row_sum(red, lid);
    if (lid < MT && t < S) {
        const int64_t o = (c.g * ntiles + c.tc) * S + t;
        rh[o] = s.x;
        rl[o] = s.y;
    }
}

__global__ void mlstm_mat_fwd_rows(const float *mrow, const float *rh, const float *rl, float *den,
                                   const mlstm_tensor_arg no, int S, int ntiles, int64_t NH, int64_t rows, float eps)
{
    const int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= rows)
        return;
    const int64_t g = gid / S;
    const int t = (int)(gid - g * S);
    float2 l = make_float2(0.0f, 0.0f);
    for (int tc = 0; tc <= t / MT; ++tc) {
        const int64_t o = (g * ntiles + tc) * S + t;
        l = csum_add2(l, make_float2(rh[o], rl[o]));
    }
    const float lt = l.x + l.y, en = expf(-mrow[gid]);
    const float nout = fabsf(lt) > en ? lt : en;
    at<float>(no, g, NH, t)[0] = nout;
    den[gid] = fabsf(nout) + eps;
}

/* sigma_t as kernels_cl/bwd.cl's mlstm_sigma */
__device__ __forceinline__ float mat_sigma(float n, float m)
{
    return n < 0.0f ? -1.0f : (n > expf(-m) * (1.0f + 8.0f * __FLT_EPSILON__) ? 1.0f : 0.0f);
}

template <typename T>
__global__ void mlstm_mat_bwd_rows(const mlstm_tensor_arg h, const mlstm_tensor_arg dh, const mlstm_tensor_arg m,
                                   const mlstm_tensor_arg n, float *mrow, float *qn, float *qd, int S, int64_t NH,
                                   int64_t rows, int dv, int exact, float eps)
{
    const int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= rows)
        return;
    const int64_t g = gid / S;
    const int t = (int)(gid - g * S);
    const float mt = at<const float>(m, g, NH, t)[0], nt = at<const float>(n, g, NH, t)[0];
    const float sigma = exact ? mat_sigma(nt, mt) : 0.0f;
    float delta = 0.0f;
    if (sigma != 0.0f) {
        const T *hr = at<const T>(h, g, NH, t), *dr = at<const T>(dh, g, NH, t);
        float dot = 0.0f;
        for (int d = 0; d < dv; ++d) dot += to_f32(dr[d]) * to_f32(hr[d]);
        delta = sigma * dot;
    }
    mrow[gid] = mt;
    qn[gid] = 1.0f / (fabsf(nt) + eps);
    qd[gid] = delta;
}

__global__ void __launch_bounds__(MT *MROWS) mlstm_mat_bwd_tile(float *Sm, float *Pm, const float *Fh, const float *Fl,
                                                                 const float *mrow, const float *qn, const float *qd,
                                                                 float *rh, float *rl, float *ch, float *cl,
                                                                 const mlstm_tensor_arg ig, int S, int ntiles,
                                                                 int64_t NH, float scale, int rtf32, int64_t g0)
{
    __shared__ float red[MT * (MT + 1)];
    __shared__ float2 cred[MROWS * MT];
    const Column c = load_column(Fh, Fl, ig, S, NH, g0);
    const int64_t mo = c.g * S * (int64_t)S;
    float *Sg = Sm + mo, *Pg = Pm + mo;
    const float *Fhg = Fh + c.g * S, *Flg = Fl + c.g * S, *mt = mrow + c.g * S, *qng = qn + c.g * S,
                *qdg = qd + c.g * S;
    if (c.tc > c.tr) {
        for (int a = 0; a < MT / MROWS; ++a) {
            const int t = c.tr * MT + c.ly + MROWS * a;
            if (t < S && c.jok)
                Sg[(int64_t)t * S + c.j] = Pg[(int64_t)t * S + c.j] = 0.0f;
        }
        return;
    }
    float2 csum = make_float2(0.0f, 0.0f);
    for (int a = 0; a < MT / MROWS; ++a) {
        const int t = c.tr * MT + c.ly + MROWS * a;
        float p = 0.0f, cn = 0.0f, mv = 0.0f;
        if (t < S && c.jok && c.j <= t) {
            const int64_t o = (int64_t)t * S + c.j;
            const float ss = scale * Sg[o];
            const float w = qng[t] * expf(log_decay(Fhg, Flg, t, c.fhj, c.flj, c.ij, mt[t]));
            p = (Pg[o] - qdg[t]) * w;
            mv = p * ss;
            cn = w != 0.0f ? ss * w : 0.0f;
        }
        if (t < S && c.jok) {
            Sg[(int64_t)t * S + c.j] = rtf32 ? round_tf32(cn) : cn;
            Pg[(int64_t)t * S + c.j] = rtf32 ? round_tf32(p) : p;
        }
        red[(c.ly + MROWS * a) * (MT + 1) + c.lx] = mv;
        csum = csum_add(csum, mv);
    }
    cred[c.ly * MT + c.lx] = csum;
    __syncthreads();
    const int lid = c.ly * MT + c.lx, t = c.tr * MT + lid;
    const float2 s = tile_row_sum(red, lid);
    float2 cs = make_float2(0.0f, 0.0f);
    for (int y = 0; y < MROWS; ++y) cs = csum_add2(cs, cred[y * MT + lid % MT]);
    if (lid < MT && t < S) {
        const int64_t o = (c.g * ntiles + c.tc) * S + t;
        rh[o] = s.x;
        rl[o] = s.y;
    }
    const int jc = c.tc * MT + lid;
    if (lid < MT && jc < S) {
        const int64_t o = (c.g * ntiles + c.tr) * S + jc;
        ch[o] = cs.x;
        cl[o] = cs.y;
    }
}

__global__ void __launch_bounds__(MSCAN) mlstm_mat_bwd_gates(float *rh, float *rl, const float *ch, const float *cl,
                                                             const mlstm_tensor_arg f, const mlstm_tensor_arg di,
                                                             const mlstm_tensor_arg df, int S, int ntiles, int64_t NH)
{
    __shared__ float2 part[MSCAN];
    const int lid = threadIdx.x;
    const int64_t g = blockIdx.x;
    const int len = (S + MSCAN - 1) / MSCAN, u0 = min(S, lid * len), u1 = min(S, u0 + len);
    float *dib = at<float>(di, g, NH, 0), *dfb = at<float>(df, g, NH, 0);
    const float *fb = at<const float>(f, g, NH, 0);
    float *dFh = rh + g * ntiles * S, *dFl = rl + g * ntiles * S;

    float2 run = make_float2(0.0f, 0.0f);
    for (int u = u0; u < u1; ++u) {
        float2 rs = make_float2(0.0f, 0.0f), cs = make_float2(0.0f, 0.0f);
        for (int x = 0; x <= u / MT; ++x)
            rs = csum_add2(rs, make_float2(rh[(g * ntiles + x) * S + u], rl[(g * ntiles + x) * S + u]));
        for (int x = u / MT; x < ntiles; ++x)
            cs = csum_add2(cs, make_float2(ch[(g * ntiles + x) * S + u], cl[(g * ntiles + x) * S + u]));
        const float2 dF = csum_split(csum_add2(rs, make_float2(-cs.x, -cs.y)));
        dib[u * di.stride_s] = cs.x + cs.y;
        dFh[u] = dF.x;
        dFl[u] = dF.y;
        run = csum_add2(run, dF);
    }
    part[lid] = run;
    __syncthreads();
    if (lid == 0) {
        float2 acc = make_float2(0.0f, 0.0f);
        for (int x = MSCAN - 1; x >= 0; --x) {
            const float2 y = part[x];
            part[x] = acc;
            acc = csum_add2(acc, y);
        }
    }
    __syncthreads();
    run = part[lid];
    for (int u = u1 - 1; u >= u0; --u) {
        run = csum_add2(run, make_float2(dFh[u], dFl[u]));
        dfb[u * df.stride_s] = (run.x + run.y) * sigmoid_neg(fb[u * f.stride_s]);
    }
}

inline unsigned blocks(int64_t n, int wg) { return (unsigned)((n + wg - 1) / wg); }

/* The element kernels' grid: (tile columns, tile rows, G in chunks of 65535). */
template <typename Launch>
int tiles(int64_t G, int S, Launch launch)
{
    const unsigned nt = (unsigned)((S + MT - 1) / MT);
    for (int64_t g0 = 0; g0 < G; g0 += MAX_GRID_Z) {
        const dim3 grid(nt, nt, (unsigned)(G - g0 < MAX_GRID_Z ? G - g0 : MAX_GRID_Z));
        launch(grid, dim3(MT, MROWS, 1), g0);
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return (int)e;
    }
    return 0;
}

} // namespace mat
} // namespace mlstm

using namespace mlstm::mat;

#define MAT_DISPATCH(dtype, KERNEL, GRID, BLOCK, STREAM, ...)                                                     \
    do {                                                                                                          \
        if ((dtype) == MLSTM_DTYPE_F16)                                                                           \
            KERNEL<__half><<<GRID, BLOCK, 0, STREAM>>>(__VA_ARGS__);                                              \
        else if ((dtype) == MLSTM_DTYPE_BF16)                                                                     \
            KERNEL<__nv_bfloat16><<<GRID, BLOCK, 0, STREAM>>>(__VA_ARGS__);                                       \
        else                                                                                                      \
            KERNEL<float><<<GRID, BLOCK, 0, STREAM>>>(__VA_ARGS__);                                               \
    } while (0)

extern "C" int mlstm_mat_cu_pack(const mlstm_tensor_arg *t, int dtype, float *dst, int64_t G, int S, int64_t NH, int D,
                                 void *stream)
{
    const int64_t total = G * S * (int64_t)D;
    MAT_DISPATCH(dtype, mlstm_mat_pack, blocks(total, ROW_WG), ROW_WG, (cudaStream_t)stream, *t, dst, S, NH, D, total);
    return (int)cudaGetLastError();
}

extern "C" int mlstm_mat_cu_store(const float *src, const float *den, const mlstm_tensor_arg *t, int dtype, int64_t G,
                                  int S, int64_t NH, int D, void *stream)
{
    const int64_t total = G * S * (int64_t)D;
    MAT_DISPATCH(dtype, mlstm_mat_store, blocks(total, ROW_WG), ROW_WG, (cudaStream_t)stream, src, den, *t, S, NH, D,
                 total);
    return (int)cudaGetLastError();
}

extern "C" int mlstm_mat_cu_scan(const mlstm_tensor_arg *f, const mlstm_tensor_arg *i, const mlstm_tensor_arg *m,
                                 float *Fh, float *Fl, float *mrow, int64_t G, int S, int64_t NH, void *stream)
{
    mlstm_mat_scan<<<(unsigned)G, MSCAN, 0, (cudaStream_t)stream>>>(*f, *i, *m, Fh, Fl, mrow, S, NH);
    return (int)cudaGetLastError();
}

extern "C" int mlstm_mat_cu_fwd_tile(float *Sm, const float *Fh, const float *Fl, const float *mrow, float *rh,
                                     float *rl, const mlstm_tensor_arg *i, int64_t G, int S, int64_t NH, float scale,
                                     int round_tf32, void *stream)
{
    const int nt = (S + MT - 1) / MT;
    return tiles(G, S, [&](dim3 grid, dim3 block, int64_t g0) {
        mlstm_mat_fwd_tile<<<grid, block, 0, (cudaStream_t)stream>>>(Sm, Fh, Fl, mrow, rh, rl, *i, S, nt, NH, scale,
                                                                     round_tf32, g0);
    });
}

extern "C" int mlstm_mat_cu_fwd_rows(const float *mrow, const float *rh, const float *rl, float *den,
                                     const mlstm_tensor_arg *n, int64_t G, int S, int64_t NH, float eps, void *stream)
{
    const int64_t rows = G * S;
    mlstm_mat_fwd_rows<<<blocks(rows, ROW_WG), ROW_WG, 0, (cudaStream_t)stream>>>(mrow, rh, rl, den, *n, S,
                                                                                   (S + MT - 1) / MT, NH, rows, eps);
    return (int)cudaGetLastError();
}

extern "C" int mlstm_mat_cu_bwd_rows(const mlstm_tensor_arg *h, const mlstm_tensor_arg *dh, int dtype,
                                     const mlstm_tensor_arg *m, const mlstm_tensor_arg *n, float *mrow, float *qn,
                                     float *qd, int64_t G, int S, int64_t NH, int dv, int exact, float eps,
                                     void *stream)
{
    const int64_t rows = G * S;
    MAT_DISPATCH(dtype, mlstm_mat_bwd_rows, blocks(rows, ROW_WG), ROW_WG, (cudaStream_t)stream, *h, *dh, *m, *n, mrow,
                 qn, qd, S, NH, rows, dv, exact, eps);
    return (int)cudaGetLastError();
}

extern "C" int mlstm_mat_cu_bwd_tile(float *Sm, float *Pm, const float *Fh, const float *Fl, const float *mrow,
                                     const float *qn, const float *qd, float *rh, float *rl, float *ch, float *cl,
                                     const mlstm_tensor_arg *i, int64_t G, int S, int64_t NH, float scale,
                                     int round_tf32, void *stream)
{
    const int nt = (S + MT - 1) / MT;
    return tiles(G, S, [&](dim3 grid, dim3 block, int64_t g0) {
        mlstm_mat_bwd_tile<<<grid, block, 0, (cudaStream_t)stream>>>(Sm, Pm, Fh, Fl, mrow, qn, qd, rh, rl, ch, cl, *i,
                                                                     S, nt, NH, scale, round_tf32, g0);
    });
}

extern "C" int mlstm_mat_cu_bwd_gates(float *rh, float *rl, const float *ch, const float *cl, const mlstm_tensor_arg *f,
                                      const mlstm_tensor_arg *di, const mlstm_tensor_arg *df, int64_t G, int S,
                                      int64_t NH, void *stream)
{
    mlstm_mat_bwd_gates<<<(unsigned)G, MSCAN, 0, (cudaStream_t)stream>>>(rh, rl, ch, cl, *f, *di, *df, S,
                                                                          (S + MT - 1) / MT, NH);
    return (int)cudaGetLastError();
}
