/* libmlstm CUDA kernels: tensor-core forward for f32 storage (mma.sync m16n8k8 tf32, f32 accumulation), head dims
 * DQK = DV = D in {64, 128, 256}. MODE_3XTF32 (the default, IEEE-f32-grade): every operand x = big + small with
 * big = tf32(x), small = x - big, and each product is big*big + big*small + small*big; MODE_TF32 (MLSTM_MATH_TF32):
 * one product of tf32-rounded operands. Tiling as fwd_tc.cuh; gate math compensated as in simt.cuh's f32 path. */
#pragma once

#include "common/mma.cuh"

namespace mlstm {
namespace tc32 {

enum { MODE_3XTF32 = 0, MODE_TF32 = 1 };

/* ---- shared-memory tiles of f32: rows of D floats, 16-byte chunks XOR-permuted within each 128-byte group ----
 * chunk c of row r lives at chunk c ^ sw32(r), sw32(r) = 2*((r >> 1) & 3) ^ 4*(r & 1). The fragment loads below
 * are then free of bank conflicts:
 *   Q/K (one 128-bit load per lane: row g, chunk q4 of a 16-column slab): the 8 lanes of a quarter warp read
 *     rows 2p, 2p+1, whose sw32 differ in bit 2, so their 4 chunks fall into opposite halves of the 128 bytes;
 *   V (32-bit loads: key rows 2*q4 (+1), 8 consecutive columns): sw32 of rows 0,2,4,6 (and of 1,3,5,7) differ
 *     in bits 1-2, so the 4 rows' 8-column pairs of chunks land in 4 distinct bank groups. */
__device__ __forceinline__ int sw32(int row) { return (((row >> 1) & 3) << 1) ^ ((row & 1) << 2); }

/* Loads rows [r0, r0+R) of a (rows x D) f32 matrix (row stride ld elements, 16-byte aligned rows) into a
 * swizzled tile; rows >= nrows are zero-filled. All NT threads take part. */
template <int R, int D, int NT>
__device__ __forceinline__ void load_tile32_async(float *sm, const float *__restrict__ g, int64_t ld, int64_t r0,
                                                  int64_t nrows)
{
    constexpr int CH = D / 4; /* 16-byte chunks per row */
    constexpr int TOTAL = R * CH;
#pragma unroll
    for (int it = 0; it < (TOTAL + NT - 1) / NT; ++it) {
        const int idx = it * NT + threadIdx.x;
        if (TOTAL % NT != 0 && idx >= TOTAL) break;
        const int r = idx / CH, c = idx % CH;
        const int64_t gr = r0 + r;
        const bool ok = gr < nrows;
        cp_async16(sm + r * D + ((c ^ sw32(r)) << 2), g + (ok ? gr : 0) * ld + c * 4, ok);
    }
}

/* ---- tf32 operands ----
 * The tensor core reads only the top 10 mantissa bits of a tf32 operand (CUTLASS's round_half_ulp_truncate relies
 * on it), so adding half an ulp of tf32 (0x1000) to the bit pattern rounds to nearest, ties away from zero, as
 * cvt.rna.tf32.f32 does. 3XTF32: big = that rounding with the 13 low bits cleared (so that small = x - big is exact
 * in f32, |small| <= 2^-11 |x|), small rounded the same way: an error <= 2^-11 |small| <= 2^-22 |x|. The dropped
 * small*small term is <= 2^-22 |x y| too, so a 3xTF32 product carries <= 3 * 2^-22 relative error (f32: 2^-24).
 * TF32: big only, low bits left for the tensor core to ignore (one integer add per operand). */
template <int MODE>
__device__ __forceinline__ void split_tf32(float x, uint32_t &big, uint32_t &small)
{
    if (MODE == MODE_3XTF32) {
        big = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
        small = __float_as_uint(__fsub_rn(x, __uint_as_float(big))) + 0x1000u;
    } else {
        big = __float_as_uint(x) + 0x1000u;
    }
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* c += A B in MODE; 3XTF32: the two correction products go to cc, big*big to c (cc unused in MODE_TF32).
 * The tensor core adds the products of one mma to the accumulator with truncation (significands aligned to the
 * largest term, bits below its 24-bit window dropped, no guard digits; measured on A100 by Fasi, Higham, Mikaitis
 * and Pranesh, 2021): every mma into an accumulator costs up to an ulp of that accumulator. Keeping the corrections
 * (2^-11 of the main terms) in their own accumulator makes their mmas' truncation negligible. */
template <int MODE>
__device__ __forceinline__ void mma_f32(float (&c)[4], float (&cc)[4], const uint32_t (&ab)[4], const uint32_t (&as)[4],
                                        uint32_t bb0, uint32_t bb1, uint32_t bs0, uint32_t bs1)
{
    if (MODE == MODE_3XTF32) {
        mma_tf32(cc, as, bb0, bb1);
        mma_tf32(cc, ab, bs0, bs1);
    }
    mma_tf32(c, ab, bb0, bb1);
}

/* mma accumulator fragment arrays: x = 0, x += y */
template <int MT, int NB>
__device__ __forceinline__ void frag_zero(float (&x)[MT][NB][4])
{
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < NB; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) x[mt][n][c] = 0.0f;
}
template <int MT, int NB>
__device__ __forceinline__ void frag_add(float (&x)[MT][NB][4], const float (&y)[MT][NB][4])
{
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < NB; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) x[mt][n][c] += y[mt][n][c];
}

/* s = A B^T over the D columns for one warp's block (S = Q K^T, and dP = dh V^T in bwd_tf32.cuh): rows 16 mt + g (+8)
 * of sA, rows 8 n + g of sB (sA, sB: the first row of the block in a swizzled tile, a multiple of 8; aoff = g D +
 * ((q4 ^ sw32(g)) << 2)). 3XTF32: big*big of each 16-column slab is summed in a fresh accumulator added to s in f32
 * (truncation relative to the slab's terms, not to the running sum), the corrections in their own accumulator added
 * at the end. Each element's operation sequence is independent of MT and NB (the backward kernels rely on it).
 * k order: in slab kk2, step 0 takes columns 4 q4 (as k = q4) and 4 q4 + 1 (as k = q4 + 4), step 1 columns 4 q4 + 2
 * and 4 q4 + 3, so one 128-bit load of a row gives a lane its entries of both steps. The slab loop is not unrolled
 * (unrolled, ptxas spilled with the three accumulator sets). */
template <int D, int MODE, int MT, int NB>
__device__ __forceinline__ void score_tile(float (&s)[MT][NB][4], const float *sA, const float *sB, int aoff)
{
    float sc[MT][NB][4];
    frag_zero(s);
    frag_zero(sc);
#pragma unroll 1
    for (int kk2 = 0; kk2 < D / 16; ++kk2) {
        const int off = (aoff ^ ((kk2 & 1) << 4)) + 32 * (kk2 >> 1);
        uint32_t ab[MT][2][4], as[MT][2][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const float4 x = *reinterpret_cast<const float4 *>(sA + off + mt * 16 * D);
            const float4 y = *reinterpret_cast<const float4 *>(sA + off + (mt * 16 + 8) * D);
            split_tf32<MODE>(x.x, ab[mt][0][0], as[mt][0][0]);
            split_tf32<MODE>(y.x, ab[mt][0][1], as[mt][0][1]);
            split_tf32<MODE>(x.y, ab[mt][0][2], as[mt][0][2]);
            split_tf32<MODE>(y.y, ab[mt][0][3], as[mt][0][3]);
            split_tf32<MODE>(x.z, ab[mt][1][0], as[mt][1][0]);
            split_tf32<MODE>(y.z, ab[mt][1][1], as[mt][1][1]);
            split_tf32<MODE>(x.w, ab[mt][1][2], as[mt][1][2]);
            split_tf32<MODE>(y.w, ab[mt][1][3], as[mt][1][3]);
        }
        float t[MT][NB][4];
        frag_zero(t);
#pragma unroll
        for (int n = 0; n < NB; ++n) {
            const float4 z = *reinterpret_cast<const float4 *>(sB + off + n * 8 * D);
            uint32_t bb[2][2], bs[2][2];
            split_tf32<MODE>(z.x, bb[0][0], bs[0][0]);
            split_tf32<MODE>(z.y, bb[0][1], bs[0][1]);
            split_tf32<MODE>(z.z, bb[1][0], bs[1][0]);
            split_tf32<MODE>(z.w, bb[1][1], bs[1][1]);
#pragma unroll
            for (int st = 0; st < 2; ++st)
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    mma_f32<MODE>(MODE == MODE_3XTF32 ? t[mt][n] : s[mt][n], sc[mt][n], ab[mt][st], as[mt][st],
                                  bb[st][0], bb[st][1], bs[st][0], bs[st][1]);
        }
        if (MODE == MODE_3XTF32) frag_add(s, t);
    }
    if (MODE == MODE_3XTF32) frag_add(s, sc);
}

/* Per-lane offsets of the B fragment of a second product (fwd_tf32.cuh's V operand): rows 2 q4 (as k = q4) and
 * 2 q4 + 1 (as k = q4 + 4) of an 8-row group of a swizzled tile, column 8 dt + g at o0/o1[dt & 3] + 32 (dt >> 2). */
template <int D>
__device__ __forceinline__ void brow_offsets(int g, int q4, int (&o0)[4], int (&o1)[4])
{
    const int b0 = ((g >> 2) ^ sw32(2 * q4)) << 2, b1 = ((g >> 2) ^ sw32(2 * q4 + 1)) << 2;
    const int row0 = 2 * q4 * D + (g & 3);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        o0[j] = row0 + ((8 * j) ^ b0);
        o1[j] = row0 + D + ((8 * j) ^ b1);
    }
}

template <int D, int MT, int NW, int BN>
struct FwdCfg {
    static constexpr int BM = 16 * MT * NW;
    static constexpr int NT = 32 * NW;
    static constexpr int Q_BYTES = BM * D * 4;
    static constexpr int KV_BYTES = BN * D * 4;
    static constexpr int K_OFF = Q_BYTES;
    static constexpr int V_OFF = K_OFF + 2 * KV_BYTES;
    static constexpr int G_OFF = V_OFF + 2 * KV_BYTES; /* floats: sQh[BM], sQl[BM], sGh[2][BN], sGl[2][BN] */
    static constexpr int SMEM = G_OFF + (2 * BM + 4 * BN) * 4;
    static_assert(BM % BN == 0, "query tile must be a multiple of the key tile");
    static_assert(BM % 32 == 0 && BN % 16 == 0, "tile sizes");
    static_assert(D % 32 == 0, "swizzle groups of 32 floats");
};

/* The gate part of one (warp rows x BN keys) tile, compensated as in the SIMT f32 forward: with the query-row
 * cumsum (qh, ql) and the key terms (gh, gl) (see CGate64, common.cuh), logD = (qh + gh) + (ql + gl), evaluated here as
 * ld = (qh + gh) + gl with ql moved to the row side: the row max is max_j ld + ql, and the exponent of element j
 * is (ld - (m - ql)) log2e + log2|scale|. The max comes from these exact per-element values (not from a prefix-max
 * lookup, whose single f32 sum Fq + G would carry ulp(|G|) into m and n); the O rescale is skipped when no row of
 * the warp raised its max. C = S * 2^(exponent) overwrites s, and l += C. */
template <bool MASK, int MT, int BN, int D>
__device__ __forceinline__ void fwd_gate_tile32(float (&s)[MT][BN / 8][4], float (&o)[MT][D / 8][4],
                                                float (&mrun)[MT][2], float (&lrun)[MT][2], const float (&rqh)[MT][2],
                                                const float (&rql)[MT][2], const float (&gkh)[BN / 8][2],
                                                const float (&gkl)[BN / 8][2], int lim0, int q4, float lsc)
{
    float rmx[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int lim = lim0 + mt * 16 + rr * 8; /* last valid key column of the row */
            float mx = -INFINITY;
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int cc = 0; cc < 2; ++cc) {
                    const float ld = __fadd_rn(__fadd_rn(rqh[mt][rr], gkh[n][cc]), gkl[n][cc]);
                    if (!MASK || n * 8 + 2 * q4 + cc <= lim) mx = fmaxf(mx, ld);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            rmx[mt][rr] = __fadd_rn(mx, rql[mt][rr]);
        }
    }
    online_max_raise(rmx, mrun, lrun, o);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int lim = lim0 + mt * 16 + rr * 8;
            const float mq = __fsub_rn(mrun[mt][rr], rql[mt][rr]);
            float l = lrun[mt][rr];
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int cc = 0; cc < 2; ++cc) {
                    const float ld = __fadd_rn(__fadd_rn(rqh[mt][rr], gkh[n][cc]), gkl[n][cc]);
                    float p = fast_exp2(fmaf(__fsub_rn(ld, mq), MLSTM_LOG2E, lsc));
                    if (MASK && n * 8 + 2 * q4 + cc > lim) p = 0.0f;
                    /* masked (or underflowed) elements exactly 0, also for s = inf (as every kernel does) */
                    const float cv = p != 0.0f ? s[mt][n][rr * 2 + cc] * p : 0.0f;
                    s[mt][n][rr * 2 + cc] = cv;
                    l += cv;
                }
            lrun[mt][rr] = l;
        }
    }
}

/* One warp: the compensated key terms (gh, gl) (cgate_key) of the key tile at ks (its f and i in gt) against the query
 * tile at qs (query-local cumsum sQh / sQl): inside the query tile F_t - F_j = Fq_t - (Fq_{ks-1} + Fk_j); below it the
 * tile's total joins the compensated offset (offh, offl), so the tiles must come in descending order. */
template <int BN>
__device__ __forceinline__ void fwd_key_terms32(const CGateTile<BN> &gt, int64_t ks, int64_t qs, int64_t S,
                                                const float *sQh, const float *sQl, float &offh, float &offl, float *gh,
                                                float *gl)
{
    constexpr int E = CGateTile<BN>::E;
    const int lane = threadIdx.x & 31;
    float ch[E], cl[E], th, tl;
    gt.scan(ch, cl, th, tl, ks, S);
    float oh = 0.0f, ol = 0.0f;
    if (ks > qs) {
        oh = -sQh[ks - 1 - qs];
        ol = -sQl[ks - 1 - qs];
    } else if (ks < qs) {
        cadd(offh, offl, th, tl);
        oh = offh;
        ol = offl;
        cnorm(oh, ol);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
        const int idx = lane * E + e;
        if (idx < BN) cgate_key(ch[e], cl[e], gt.i[e], oh, ol, gh[idx], gl[idx]);
    }
}

/* h = mLSTM(q, k, v, i, f) for one query tile of f32 storage; also writes m and signed n (see api/mlstm.h).
 * Fragment layouts (PTX ISA, mma.m16n8k8 tf32; g = lane/4, q4 = lane%4): A a0 (g, q4), a1 (g+8, q4), a2 (g, q4+4),
 * a3 (g+8, q4+4); B b0 (k q4, n g), b1 (k q4+4, n g); C c0, c1 (g, 2q4 + {0,1}), c2, c3 (g+8, ...).
 * The k index of a product may be permuted freely as long as A and B agree:
 *   S = Q K^T: see score_tile;
 *   O += C V: the C accumulator of key tile n holds keys 2q4, 2q4+1 of rows g, g+8; taking key 2q4 as k = q4 and
 *     2q4+1 as k = q4+4 makes it the A fragment as is ({c0, c2, c1, c3}), and V's B fragment rows 2q4, 2q4+1. */
template <int D, int MODE, int MT, int NW, int BN>
__global__ void __launch_bounds__(32 * NW) mlstm_fwd_kernel(const __grid_constant__ KArgs args)
{
    using Cfg = FwdCfg<D, MT, NW, BN>;
    constexpr int BM = Cfg::BM, NT = Cfg::NT;
    extern __shared__ __align__(128) unsigned char smem[];
    float *sQ = reinterpret_cast<float *>(smem);
    float *sK = reinterpret_cast<float *>(smem + Cfg::K_OFF);
    float *sV = reinterpret_cast<float *>(smem + Cfg::V_OFF);
    float *sQh = reinterpret_cast<float *>(smem + Cfg::G_OFF);
    float *sQl = sQh + BM;
    float *sGh = sQl + BM;     /* [2][BN] key terms gh (see CGate64, common.cuh) */
    float *sGl = sGh + 2 * BN; /* [2][BN] key terms gl */

    const int64_t S = args.S;
    const QueryTile qtl = query_tile(args, BM);
    const int64_t b = qtl.b, hh = qtl.hh, qs = qtl.qs;

    const TArg &tq = args.t[MLSTM_TENSOR_Q], &tk = args.t[MLSTM_TENSOR_K], &tv = args.t[MLSTM_TENSOR_V];
    const TArg &ti = args.t[MLSTM_TENSOR_I], &tf = args.t[MLSTM_TENSOR_F];
    const float *gq = bh_ptr<float>(tq, b, hh), *gk = bh_ptr<float>(tk, b, hh), *gv = bh_ptr<float>(tv, b, hh);
    const float *gi = bh_ptr<float>(ti, b, hh), *gf = bh_ptr<float>(tf, b, hh);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q4 = lane & 3;
    const int wr0 = warp * 16 * MT; /* first row of this warp within the tile */
    constexpr int GW = NW - 1;      /* gate warp: owns the last rows, so it never skips a tile */

    const int64_t kt_hi = min((qs + BM - 1) / BN, (S - 1) / BN);

    load_tile32_async<BM, D, NT>(sQ, gq, tq.ss, qs, S);
    load_tile32_async<BN, D, NT>(sK, gk, tk.ss, kt_hi * BN, S);
    load_tile32_async<BN, D, NT>(sV, gv, tv.ss, kt_hi * BN, S);
    cp_async_commit();

    if (warp == 0) { /* compensated query-tile cumsum */
        constexpr int E = CGateTile<BM>::E;
        CGateTile<BM> gt;
        gt.load(gf, tf.ss, nullptr, 0, qs, S);
        float ch[E], cl[E], th, tl;
        gt.scan(ch, cl, th, tl, qs, S);
#pragma unroll
        for (int e = 0; e < E; ++e) {
            sQh[lane * E + e] = ch[e];
            sQl[lane * E + e] = cl[e];
        }
    }
    __syncthreads();

    /* gate warp state: the compensated offset O = sum_{u in [ks, qs)} a_u of the key tiles below the query tile */
    float offh = 0.0f, offl = 0.0f;
    CGateTile<BN> gnext;
    auto gate_finish = [&](int64_t ks, int bsel) {
        fwd_key_terms32(gnext, ks, qs, S, sQh, sQl, offh, offl, sGh + bsel * BN, sGl + bsel * BN);
    };
    if (warp == GW) {
        gnext.load(gf, tf.ss, gi, ti.ss, kt_hi * BN, S);
        gate_finish(kt_hi * BN, 0);
    }

    /* per-lane fragment offsets (floats) into the swizzled tiles, kept out of the unrolled loops:
     * Q/K: row g, slab kk2 -> (aoff ^ 16 (kk2 & 1)) + 32 (kk2 >> 1) (+ row0 D); V: key row 2q4 (+1), column 8 dt + g ->
     * voff0/1[dt & 3] + 32 (dt >> 2) (+ key0 D) */
    const int xb = (q4 ^ sw32(g)) << 2;
    const int aoff = g * D + xb; /* g D is a multiple of 64: the xor touches xb only */
    int voff0[4], voff1[4];
    brow_offsets<D>(g, q4, voff0, voff1);

    float o[MT][D / 8][4];
    float mrun[MT][2], lrun[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) o[mt][n][c] = 0.0f;
        mrun[mt][0] = mrun[mt][1] = MLSTM_FLOOR;
        lrun[mt][0] = lrun[mt][1] = 0.0f;
    }
    /* C = scale * S * D' is computed as sign(scale) * S * 2^(log2(|scale|) + log2(D')): |scale| rides in the
     * exponent (lsc, recomputed per tile from the kernel argument: registers are tight at D = 256), the sign is
     * applied to l and O at the end */

    int buf = 0;
    for (int64_t kt = kt_hi; kt >= 0; --kt, buf ^= 1) {
        cp_async_wait<0>();
        __syncthreads();
        const int64_t ks = kt * BN;
        if (kt > 0) {
            const int64_t kn = (kt - 1) * BN;
            load_tile32_async<BN, D, NT>(sK + (buf ^ 1) * BN * D, gk, tk.ss, kn, S);
            load_tile32_async<BN, D, NT>(sV + (buf ^ 1) * BN * D, gv, tv.ss, kn, S);
            cp_async_commit();
            if (warp == GW) gnext.load(gf, tf.ss, gi, ti.ss, kn, S);
        }
        const float *cK = sK + buf * BN * D;
        const float *cV = sV + buf * BN * D;

        const bool skip = ks > qs + wr0 + 16 * MT - 1; /* every key of the tile is after every row of the warp */
        if (!skip) {
            float s[MT][BN / 8][4]; /* S = Q K^T */
            score_tile<D, MODE, MT, BN / 8>(s, sQ + wr0 * D, cK, aoff);

            float gkh[BN / 8][2], gkl[BN / 8][2];
#pragma unroll
            for (int n = 0; n < BN / 8; ++n) {
                const float2 h2 = *reinterpret_cast<const float2 *>(sGh + buf * BN + n * 8 + 2 * q4);
                const float2 l2 = *reinterpret_cast<const float2 *>(sGl + buf * BN + n * 8 + 2 * q4);
                gkh[n][0] = h2.x;
                gkh[n][1] = h2.y;
                gkl[n][0] = l2.x;
                gkl[n][1] = l2.y;
            }
            /* key column c of row r (within the tiles) is masked when ks + c > qs + r; only tiles that reach
             * past the warp's first row need the mask (diagonal region, or keys >= S) */
            const int lim0 = wr0 + g - (int)max(ks - qs, (int64_t)-BN); /* clamped: far tiles are all valid */
            float rqh[MT][2], rql[MT][2]; /* query-row cumsum, re-read here: registers are tight at D = 256 */
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int rr = 0; rr < 2; ++rr) {
                    rqh[mt][rr] = sQh[wr0 + mt * 16 + g + rr * 8];
                    rql[mt][rr] = sQl[wr0 + mt * 16 + g + rr * 8];
                }
            if (ks + BN - 1 > qs + wr0)
                fwd_gate_tile32<true, MT, BN, D>(s, o, mrun, lrun, rqh, rql, gkh, gkl, lim0, q4,
                                                 log2f(fabsf(args.scale)));
            else
                fwd_gate_tile32<false, MT, BN, D>(s, o, mrun, lrun, rqh, rql, gkh, gkl, lim0, q4,
                                                  log2f(fabsf(args.scale)));

            /* O += C V (the tile's contribution is mostly far below an ulp of O, so the truncating accumulation
             * of the corrections into O costs little; a per-tile O accumulator was 1.5x more accurate in the
             * emulation but spilled registers) */
#pragma unroll
            for (int kk = 0; kk < BN / 8; ++kk) {
                uint32_t cb[MT][4], cs[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    split_tf32<MODE>(s[mt][kk][0], cb[mt][0], cs[mt][0]);
                    split_tf32<MODE>(s[mt][kk][2], cb[mt][1], cs[mt][1]);
                    split_tf32<MODE>(s[mt][kk][1], cb[mt][2], cs[mt][2]);
                    split_tf32<MODE>(s[mt][kk][3], cb[mt][3], cs[mt][3]);
                }
                const float *vk = cV + kk * 8 * D;
#pragma unroll
                for (int dt = 0; dt < D / 8; ++dt) {
                    const float v0 = vk[voff0[dt & 3] + 32 * (dt >> 2)];
                    const float v1 = vk[voff1[dt & 3] + 32 * (dt >> 2)];
                    uint32_t vb0, vs0, vb1, vs1;
                    split_tf32<MODE>(v0, vb0, vs0);
                    split_tf32<MODE>(v1, vb1, vs1);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
                        mma_f32<MODE>(o[mt][dt], o[mt][dt], cb[mt], cs[mt], vb0, vb1, vs0, vs1);
                }
            }
        }
        if (kt > 0 && warp == GW) gate_finish((kt - 1) * BN, buf ^ 1);
    }

    /* epilogue: normaliser, h, m, n (as fwd_tc.cuh) */
    const TArg &th = args.t[MLSTM_TENSOR_H], &tm = args.t[MLSTM_TENSOR_M], &tn = args.t[MLSTM_TENSOR_N];
    float *gh = bh_ptr<float>(th, b, hh);
    float *gm = bh_ptr<float>(tm, b, hh), *gn = bh_ptr<float>(tn, b, hh);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const float m = mrun[mt][rr];
            float nsig;
            const float inv = fwd_row_inv<false>(args, lrun[mt][rr], m, 0.0f, nsig);
            const int64_t t = qs + wr0 + mt * 16 + g + rr * 8;
            if (t < S) {
                float *row = gh + t * th.ss;
#pragma unroll
                for (int n = 0; n < D / 8; ++n)
                    *reinterpret_cast<float2 *>(row + n * 8 + 2 * q4) =
                        make_float2(o[mt][n][rr * 2] * inv, o[mt][n][rr * 2 + 1] * inv);
                if (q4 == 0) {
                    gm[t * tm.ss] = m;
                    gn[t * tn.ss] = nsig;
                }
            }
        }
    }
}

} // namespace tc32
} // namespace mlstm
