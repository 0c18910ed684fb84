/* common.cl: definitions shared by the mLSTM OpenCL kernels (fwd.cl, bwd.cl): tunables, storage-dtype
 * loads and stores (f32; f16 through vload_half/vstore_half_rte; bf16 as ushort bits), stable gate math,
 * compensated sums and the local-memory-staged tile products. The host prepends this file to every
 * program and sets the tunables with -D. Portable OpenCL C 1.2 (no cl_khr_fp16, no cl_khr_fp64). */
#ifndef MLSTM_COMMON_CL
#define MLSTM_COMMON_CL

/* ---- Tunables (the host passes every one of them with -D) ---- */
#ifndef MLSTM_DTYPE
#define MLSTM_DTYPE 1        // storage dtype of q, k, v, h, dh, dq, dk, dv: 1 f32, 2 f16, 3 bf16 (mlstm_dtype)
#endif
#ifndef MLSTM_DQK
#define MLSTM_DQK 64         // head dimension of q and k (1..512); with MLSTM_EXACT_DIMS 0, its upper bound
#endif
#ifndef MLSTM_DV
#define MLSTM_DV 64          // head dimension of v and h (1..512); with MLSTM_EXACT_DIMS 0, its upper bound
#endif
#ifndef MLSTM_EXACT_DIMS
#define MLSTM_EXACT_DIMS 1   // 1: dims are MLSTM_DQK, MLSTM_DV (constant loop bounds); 0: the dim_qk, dim_v arguments
#endif
#ifndef MLSTM_BLOCK
#define MLSTM_BLOCK 64       // sequence positions per query tile and per key tile (tiles are aligned and equal)
#endif
#ifndef MLSTM_WG_ROWS
#define MLSTM_WG_ROWS 16     // work-items along the tile rows
#endif
#ifndef MLSTM_WG_COLS
#define MLSTM_WG_COLS 16     // work-items along the tile columns and the head dimension
#endif
#ifndef MLSTM_DCHUNK
#define MLSTM_DCHUNK 32      // head-dimension slice staged in local memory per step of a tile dot product
#endif
#ifndef MLSTM_RCHUNK
#define MLSTM_RCHUNK 16      // tile rows of v / dh / q / k staged in local memory per step of an accumulation
#endif
#ifndef MLSTM_M_FLOOR // the stabiliser floor, m_t = max(MLSTM_M_FLOOR, max_j logD_tj): defined once, in api/mlstm.h
#error "MLSTM_M_FLOOR is passed by the host (backends/opencl/cl_program.c) as a build option"
#endif

/* ---- Derived sizes ----
 * A tile is BLK x BLK: query rows x key columns (forward, dQ), or key rows x query columns (dK/dV).
 * Work-item lid = r * TC + c owns tile rows r + TR*a (a < RR), tile columns c + TC*b (b < RC), and the
 * head-dimension columns c + TC*e (e < NCOLS(DIM_QK) <= NQK, or NCOLS(DIM_V) <= NV) of its rows'
 * accumulators:
 *
 *             tile columns c + TC*b                 head-dim columns c + TC*e
 *            +---------------------+               +------------------------------+
 *  rows      | s[a][b], p[a][b]    | --(local)-->  | acc[a][e] (f32 registers)    |
 *  r + TR*a  | (registers)         |   tile  x  Z  | Z = v, dh, q or k rows       |
 *            +---------------------+               +------------------------------+
 *
 * Local memory: two transposed DCHUNK x BLKP slices for the dot products, one BLK x BLKP tile, and
 * RCHUNK rows of Z; BLKP = BLK + 1 keeps the column accesses free of bank conflicts. */
#define BLK  MLSTM_BLOCK
#define TR   MLSTM_WG_ROWS
#define TC   MLSTM_WG_COLS
#define NT   (TR * TC)                          /* work-items per work-group */
#define RR   (BLK / TR)                         /* tile rows per work-item */
#define RC   (BLK / TC)                         /* tile columns per work-item */
#define BLKP (BLK + 1)
#define NQK  ((MLSTM_DQK + TC - 1) / TC)        /* q/k head-dim columns per work-item */
#define NV   ((MLSTM_DV + TC - 1) / TC)         /* v/h head-dim columns per work-item */
#define DQKP (NQK * TC)
#define DVP  (NV * TC)
#define DMAXP (DQKP > DVP ? DQKP : DVP)
#define NCOLS(dim) (((dim) + TC - 1) / TC)     /* head-dim columns per work-item for dim */
#if MLSTM_EXACT_DIMS
#define DIM_QK MLSTM_DQK                        /* the head dimensions as the kernels use them */
#define DIM_V  MLSTM_DV
#else
#define DIM_QK dim_qk                           /* the kernels' int arguments dim_qk, dim_v */
#define DIM_V  dim_v
#endif
/* Loops whose trip counts are runtime values in generic programs stay rolled there: unrolling them buys
 * little on a CPU and multiplies PoCL's work-group compile time. */
#if MLSTM_EXACT_DIMS
#define LOOP_ROLLED
#else
#define LOOP_ROLLED _Pragma("unroll 1")
#endif
#define DCHUNK MLSTM_DCHUNK
#define RCHUNK MLSTM_RCHUNK
/* Exponents below this underflow exp() to exactly 0 with a wide margin: a tile whose every exponent
 * logD_tj - m_t is below it contributes exact zeros and is skipped. */
#define MLSTM_SKIP_BELOW (-150.0f)

#if BLK % TR != 0 || BLK % TC != 0 || BLK % RCHUNK != 0
#error "MLSTM_BLOCK must be a multiple of MLSTM_WG_ROWS, MLSTM_WG_COLS and MLSTM_RCHUNK"
#endif
#if NT < BLK
#error "a work-group needs at least MLSTM_BLOCK work-items (one per tile row for the gate scans)"
#endif

/* ---- Storage dtypes: every value is computed in f32 ---- */
#if MLSTM_DTYPE == 1
typedef float stor_t;
#define LOADT(p, i)     ((p)[i])
#define STORET(p, i, x) ((p)[i] = (x))
#elif MLSTM_DTYPE == 2
typedef half stor_t;                               /* pointer-only use: legal without cl_khr_fp16 */
#define LOADT(p, i)     vload_half(0, (p) + (i))
#define STORET(p, i, x) vstore_half_rte((x), 0, (p) + (i))
#elif MLSTM_DTYPE == 3
typedef ushort stor_t;                             /* bfloat16 bits */
inline float bf16_to_f32(ushort b) { return as_float((uint)b << 16); }
inline ushort f32_to_bf16(float x)                /* round to nearest even, NaN kept quiet */
{
    uint u = as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (ushort)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (ushort)(u >> 16);
}
#define LOADT(p, i)     bf16_to_f32((p)[i])
#define STORET(p, i, x) ((p)[i] = f32_to_bf16(x))
#else
#error "MLSTM_DTYPE must be 1 (f32), 2 (f16) or 3 (bf16)"
#endif

/* A tensor slice: element (b, h, s, d) of a tensor is at L.s0 + b*L.s1 + h*L.s2 + s*L.s3 + d
 * (offset, stride_b, stride_h, stride_s), in 64-bit element arithmetic. */
#define HEAD_BASE(L, bb, hh) ((L).s0 + (bb) * (L).s1 + (hh) * (L).s2)

/* ---- Gate math and compensated sums ---- */
inline float logsig(float x) { return fmin(x, 0.0f) - log1p(exp(-fabs(x))); } /* log(sigmoid(x)), stable */
inline float sigm_neg(float x) { return 1.0f / (1.0f + exp(x)); }             /* sigmoid(-x) */

/* (hi, lo) += x by TwoSum: hi + lo carries the running sum to about f32 precision squared. */
inline float2 csum_add(float2 s, float x)
{
    const float t = s.x + x, bp = t - s.x;
    return (float2)(t, s.y + ((s.x - (t - bp)) + (x - bp)));
}
inline float2 csum_add2(float2 s, float2 x) { return csum_add(csum_add(s, x.x), x.y); }
/* (hi, lo) with hi = fl(s.x + s.y) and lo the rounding error: the pair's value as one float plus rest. */
inline float2 csum_split(float2 s) { return csum_add((float2)(s.x, 0.0f), s.y); }

/* ---- Gate scans (called by every work-item between barriers; BLK <= NT) ---- */

/* Key tile [0, nk) of i, f (pointers at the tile start): kF[j] = a_(j+1) + ... + a_(BLK-1) (exclusive
 * suffix sum inside the tile, a = 0 past the sequence), kI[j] = i_j (-inf past the sequence),
 * kG[j] = max_(u <= j) (kF[u] + kI[u]), *ktot = the tile's sum of a, added in ascending order (as every
 * kernel sums a tile's a, so that all of them derive bitwise the same offsets). Resets *flag to 0. */
inline void key_scan(const __global float *ig, long is, const __global float *fg, long fs, int nk,
                     __local float *kF, __local float *kI, __local float *kG, __local float *ktot,
                     __local int *flag)
{
    const int lid = get_local_id(0);
    if (lid < BLK) {
        kF[lid] = lid < nk ? logsig(fg[lid * fs]) : 0.0f;
        kI[lid] = lid < nk ? ig[lid * is] : -INFINITY;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) {
        float s = 0.0f, g = -INFINITY;
        LOOP_ROLLED for (int j = 0; j < BLK; ++j) s += kF[j];
        *ktot = s;
        s = 0.0f;
        LOOP_ROLLED for (int j = BLK - 1; j >= 0; --j) {
            const float a = kF[j];
            kF[j] = s;
            s += a;
        }
        LOOP_ROLLED for (int j = 0; j < BLK; ++j) {
            g = fmax(g, kF[j] + kI[j]);
            kG[j] = g;
        }
        *flag = 0;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}

/* ---- Tile products, operands staged through local memory (every work-item calls them) ---- */

/* Stages rows [0, BLK) x head-dim columns [d0, d0 + DCHUNK) of a slice (row stride ss) transposed into
 * dst[dd * BLKP + row]; rows >= nrows and columns >= dim read as 0. */
inline void stage_cols(__local float *dst, const __global stor_t *src, long ss, int nrows, int d0, int dim)
{
    for (int idx = get_local_id(0); idx < BLK * DCHUNK; idx += NT) {
        const int row = idx / DCHUNK, dd = idx - row * DCHUNK, d = d0 + dd;
        dst[dd * BLKP + row] = (row < nrows && d < dim) ? LOADT(src, row * ss + d) : 0.0f;
    }
}

/* acc[a][b] += X[r + TR*a] . Y[c + TC*b] over dim head-dim columns (X rows >= nx, Y rows >= ny are 0).
 * Starts and ends with all work-items past a barrier. */
inline void tile_dot(float acc[RR][RC], const __global stor_t *X, long xs_s, int nx,
                     const __global stor_t *Y, long ys_s, int ny, int dim,
                     __local float *xs, __local float *ys)
{
    const int r = get_local_id(0) / TC, c = get_local_id(0) % TC;
    for (int d0 = 0; d0 < dim; d0 += DCHUNK) {
        stage_cols(xs, X, xs_s, nx, d0, dim);
        stage_cols(ys, Y, ys_s, ny, d0, dim);
        barrier(CLK_LOCAL_MEM_FENCE);
        const int dn = min(DCHUNK, dim - d0);
        LOOP_ROLLED
        for (int dd = 0; dd < dn; ++dd) {
            float xa[RR], yb[RC];
            for (int a = 0; a < RR; ++a) xa[a] = xs[dd * BLKP + r + TR * a];
            for (int b = 0; b < RC; ++b) yb[b] = ys[dd * BLKP + c + TC * b];
            for (int a = 0; a < RR; ++a)
                for (int b = 0; b < RC; ++b)
                    acc[a][b] += xa[a] * yb[b];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}

/* out[a][e] += sum_(j < nz) T[(r + TR*a) * BLKP + j] * Z[j][c + TC*e] for e < NCOLS(dim): the local tile T
 * times rows of a slice Z (row stride zs_s, dim columns; rows >= nz read as 0), Z staged RCHUNK rows at a
 * time into zs. Defined once per accumulator capacity (NCOL = NQK or NV). Ends past a barrier. */
#define DEFINE_TILE_ACC(NAME, NCOL)                                                                         \
inline void NAME(float out[RR][NCOL], __local const float *T, const __global stor_t *Z, long zs_s, int nz, \
                 int dim, __local float *zs)                                                               \
{                                                                                                          \
    const int r = get_local_id(0) / TC, c = get_local_id(0) % TC, ne = NCOLS(dim), w = ne * TC;            \
    for (int j0 = 0; j0 < nz; j0 += RCHUNK) {                                                              \
        LOOP_ROLLED for (int idx = get_local_id(0); idx < RCHUNK * w; idx += NT) {                         \
            const int jj = idx / w, col = idx - jj * w;                                                    \
            zs[idx] = (j0 + jj < nz && col < dim) ? LOADT(Z, (j0 + jj) * zs_s + col) : 0.0f;                \
        }                                                                                                  \
        barrier(CLK_LOCAL_MEM_FENCE);                                                                      \
        LOOP_ROLLED                                                                                        \
        for (int jj = 0; jj < RCHUNK; ++jj) {                                                              \
            float ta[RR];                                                                                  \
            for (int a = 0; a < RR; ++a) ta[a] = T[(r + TR * a) * BLKP + j0 + jj];                          \
            LOOP_ROLLED                                                                                    \
            for (int e = 0; e < ne; ++e) {                                                                 \
                const float z = zs[jj * w + c + TC * e];                                                   \
                for (int a = 0; a < RR; ++a) out[a][e] += ta[a] * z;                                       \
            }                                                                                              \
        }                                                                                                  \
        barrier(CLK_LOCAL_MEM_FENCE);                                                                      \
    }                                                                                                      \
}
DEFINE_TILE_ACC(tile_acc_qk, NQK)
DEFINE_TILE_ACC(tile_acc_v, NV)

/* Sums one compensated pair per (tile row, work-item column) over the TC work-items of each row, in a fixed
 * order; work-item lid < BLK gets row lid's sum. buf (BLK x BLKP floats) is scratch. Starts and ends with a
 * barrier. (Every work-item runs the summing loop: PoCL 3.1 miscompiled it under an `if (lid < BLK)`.) */
inline float2 reduce_rows(const float2 part[RR], __local float *buf)
{
    const int lid = get_local_id(0), r = lid / TC, c = lid % TC, row = lid % BLK;
    float2 sum = (float2)(0.0f, 0.0f);
    for (int pass = 0; pass < 2; ++pass) {
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int a = 0; a < RR; ++a) buf[(r + TR * a) * BLKP + c] = pass ? part[a].y : part[a].x;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int cc = 0; cc < TC; ++cc) sum = csum_add(sum, buf[row * BLKP + cc]);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    return sum;
}

#endif /* MLSTM_COMMON_CL */
