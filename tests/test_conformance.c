/* The conformance suite: one case table run against the backend MLSTM_BACKEND selects (ctest runs it once per
 * compiled backend). Each case: seeded storage-rounded inputs, the float64 reference, the backend's results in
 * guard-banded views, then a NaN/Inf scan, relative L2 error per output against tests/tolerances.h, and canary /
 * untouched-input checks; plus bitwise determinism and host-API cases. */

/* Usage: MLSTM_BACKEND=auto|cuda|opencl (no device: exit 77); MLSTM_ALGO=fused|materialized runs the table on one
 * algorithm (ctest: conformance_materialized.<backend>), skipping cases whose workspace exceeds
 * MLSTM_TEST_WORKSPACE_MB (default 64); MLSTM_TEST_FILTER=<cmocka glob>, e.g. 'bwd/bf16/'
 * followed by a star; MLSTM_TEST_SLOW=1 runs the long precision-contract set INSTEAD of the default set (GPU runs:
 * `MLSTM_BACKEND=cuda MLSTM_TEST_SLOW=1 ./test_conformance`, or `ctest -L slow` in a build configured with
 * -DMLSTM_SLOW_TESTS=ON); `test_conformance --list` prints the case names. The default set ends with the GPU set
 * (names "gpu/...": training-sized grids), which runs on the CUDA backend and elsewhere only with
 * MLSTM_TEST_GPU_SET=1 (e.g. OpenCL on a GPU; =0 skips it on CUDA), and skips with that reason otherwise. Names
 * "didf/..." also hold di and df to tests/tolerances.h's tighter f16 / bf16 bound. The context is created with
 * mlstm_context_create(NULL, ...), the production selection path. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "mlstm.h"
#include "mlstm_case.h"
#include "test_util.h"
#include "tolerances.h"

/* ------------------------------------------------------------------------------------------------ */
/* Case table                                                                                        */

/* Which (direction, dtype, mode) combinations a shape entry expands to. */
enum {
    FWD_F32 = 1 << 0, FWD_F16 = 1 << 1, FWD_BF16 = 1 << 2,
    BWX_F32 = 1 << 3, BWX_F16 = 1 << 4, BWX_BF16 = 1 << 5,  /* backward, exact gradients */
    BWD_F32 = 1 << 6, BWD_F16 = 1 << 7, BWD_BF16 = 1 << 8,  /* backward, normalizer-detached */
    FWD_TF32 = 1 << 9,                                       /* f32 with math_mode = MLSTM_MATH_TF32: forward, */
    BWX_TF32 = 1 << 10,                                      /* backward exact, */
    BWD_TF32 = 1 << 11,                                      /* backward normalizer-detached */
    TF32_ALL = FWD_TF32 | BWX_TF32 | BWD_TF32,
    FWD_ALL = FWD_F32 | FWD_F16 | FWD_BF16,
    BWX_ALL = BWX_F32 | BWX_F16 | BWX_BF16,
    BWD_ALL = BWD_F32 | BWD_F16 | BWD_BF16,
    STD_SET = FWD_ALL | BWX_ALL | BWD_F32 | BWD_BF16,
    ALL_SET = FWD_ALL | BWX_ALL | BWD_ALL
};

typedef enum { KIND_CASE = 0, KIND_DETERMINISM, KIND_HOST_API } test_kind;

/* Entry flags (the name gets the prefix shown, so a cmocka glob selects them):
 *   IN_GPU_SET "gpu/":  training-sized grids (more CTAs than a GPU has SMs, so the kernels large calls pick run);
 *                       they run where the backend is CUDA, or with MLSTM_TEST_GPU_SET=1 (e.g. OpenCL on a GPU),
 *                       and skip with that reason elsewhere (minutes each on a CPU device);
 *   DIDF_TIGHT "didf/": di (an f32 output) also held to tests/tolerances.h's tol_didf_tight on f16 / bf16; df keeps
 *                     the contract (tolerances.h says why). */
enum { IN_GPU_SET = 1u << 0, DIDF_TIGHT = 1u << 1 };

typedef struct {
    test_kind kind;
    unsigned flags;
    mc_case c;
    char name[256];
} table_entry;

_Static_assert((int)TOL_COUNT == (int)MC_OUT_COUNT && (int)TOL_DF == (int)MC_OUT_DF, "tolerances.h and mlstm_case.h list the outputs alike");

static table_entry *g_table;
static size_t g_count, g_cap;

static void push_flags(test_kind kind, mc_case c, unsigned flags)
{
    mc_case_finish(&c);
    if (g_count == g_cap) {
        g_cap = g_cap ? 2 * g_cap : 256;
        g_table = realloc(g_table, g_cap * sizeof *g_table);
        if (!g_table)
            abort();
    }
    table_entry *e = &g_table[g_count++];
    e->kind = kind;
    e->flags = flags;
    e->c = c;
    snprintf(e->name, sizeof e->name, "%s%s%s%s", flags & IN_GPU_SET ? "gpu/" : "", flags & DIDF_TIGHT ? "didf/" : "",
             kind == KIND_DETERMINISM ? "determinism/" : kind == KIND_HOST_API ? "host_api/" : "", c.name);
}

static void push(test_kind kind, mc_case c) { push_flags(kind, c, 0); }

typedef struct {
    int64_t B, NH, S, DQK, DV;
    int gates, layout, odd;
    float eps, scale;
} shape;

/* the forward case of shape s in dtype, seeded */
static mc_case shape_case(shape s, int dtype, uint64_t seed)
{
    mc_case c;
    memset(&c, 0, sizeof c);
    c.grad_mode = MLSTM_GRAD_EXACT;
    c.dtype = dtype;
    c.B = s.B; c.NH = s.NH; c.S = s.S; c.DQK = s.DQK; c.DV = s.DV;
    c.gates = s.gates;
    c.layout = s.layout;
    c.odd_offsets = s.odd;
    c.eps = s.eps != 0.0f ? s.eps : 1e-6f;
    c.scale = s.scale;
    c.seed = seed;
    return c;
}

static void add_shape_flags(shape s, unsigned combos, uint64_t seed, unsigned flags)
{
    static const int dts[3] = { MLSTM_DTYPE_F32, MLSTM_DTYPE_F16, MLSTM_DTYPE_BF16 };
    for (int kind = 0; kind < 3; kind++) {         /* fwd, bwd exact, bwd detached */
        for (int d = 0; d < 3; d++) {
            if (!(combos & (1u << (kind * 3 + d))))
                continue;
            mc_case c = shape_case(s, dts[d], seed);
            c.bwd = kind > 0;
            c.grad_mode = kind == 2 ? MLSTM_GRAD_NORMALIZER_DETACHED : MLSTM_GRAD_EXACT;
            push_flags(KIND_CASE, c, flags);
        }
    }
    static const unsigned tf32_kinds[3] = { FWD_TF32, BWX_TF32, BWD_TF32 };
    for (int kind = 0; kind < 3; kind++) {
        if (!(combos & tf32_kinds[kind]))
            continue;
        mc_case c = shape_case(s, MLSTM_DTYPE_F32, seed);
        c.bwd = kind > 0;
        c.grad_mode = kind == 2 ? MLSTM_GRAD_NORMALIZER_DETACHED : MLSTM_GRAD_EXACT;
        c.math_mode = MLSTM_MATH_TF32;
        push_flags(KIND_CASE, c, flags);
    }
}

static void add_shape(shape s, unsigned combos, uint64_t seed) { add_shape_flags(s, combos, seed, 0); }

#define SH(B, NH, S, DQK, DV, G) ((shape){ B, NH, S, DQK, DV, MC_GATES_##G, MC_LAYOUT_BNSD, 0, 0.0f, 0.0f })
#define SHL(B, NH, S, DQK, DV, G, L, ODD) ((shape){ B, NH, S, DQK, DV, MC_GATES_##G, MC_LAYOUT_##L, ODD, 0.0f, 0.0f })

/* The default set: runs in CI on a 2-core CPU through PoCL, so S*S*D*B*NH stays small per case (S >= 1000
 * only with D <= 64 and B = NH = 1; D = 512 only with S <= 200; the whole set takes seconds there), except the
 * GPU set at the end, which runs on GPU backends only. A backend may compile one program per (direction, dtype,
 * DQK, DV) (the OpenCL one does on GPUs; on CPUs one per direction and dtype serves every head dim), so the S
 * sweep, the regimes and the layouts reuse a few head-dim pairs: (64,64) and (48,96) carry them, the pairs
 * 1, 3, 5, 96/48, 100/160, 256, 512, 512/1, 1/512 run in one or two dtypes, and the tensor-core head-dim classes
 * (64/128, 128/64, 96, 128/256, 256/512, 192, 100/36, 320, 512, 200/320) in every dtype and both modes. */
static void build_default_table(void)
{
    /* S: 1, tiny, both neighbours of every power-of-two tile size, long; head dims 64 */
    add_shape(SH(1, 1, 1, 64, 64, STD), ALL_SET | BWX_TF32, 1);
    add_shape(SH(1, 1, 2, 64, 64, NORMAL), STD_SET, 2);
    add_shape(SH(1, 1, 3, 64, 64, STD), STD_SET, 3);
    add_shape(SH(1, 2, 17, 64, 64, STD), STD_SET, 4);
    add_shape(SH(1, 2, 63, 64, 64, NORMAL), STD_SET, 5);
    add_shape(SH(1, 1, 64, 64, 64, STD), STD_SET, 6);
    add_shape(SH(2, 1, 65, 64, 64, STD), STD_SET, 7);
    add_shape(SH(1, 1, 127, 64, 64, NORMAL), STD_SET, 8);
    add_shape(SH(2, 3, 129, 64, 64, STD), STD_SET | TF32_ALL, 9);
    add_shape(SH(1, 1, 1000, 64, 64, STD), FWD_ALL | BWX_ALL | BWD_F32, 10);
    add_shape(SH(1, 1, 1000, 64, 64, NORMAL), FWD_F32 | FWD_TF32 | BWX_BF16 | BWD_F16, 11);
    add_shape(SH(1, 1, 2048, 64, 64, STD), BWX_F32 | BWX_BF16, 12);
    /* DQK != DV with the full matrix: B, NH > 1 */
    add_shape(SH(2, 3, 17, 48, 96, STD), ALL_SET & ~BWD_BF16 & ~BWD_F16, 13);
    add_shape(SH(1, 2, 130, 48, 96, NORMAL), FWD_ALL | BWX_ALL | BWD_F32, 14);
    /* odd and tiny head dims */
    add_shape(SH(1, 1, 2, 3, 5, NORMAL), FWD_F32 | BWX_F32 | BWX_BF16, 15);
    add_shape(SH(2, 1, 17, 3, 5, STD), FWD_F32 | FWD_BF16 | BWX_F32 | BWX_BF16, 16);
    add_shape(SH(1, 1, 3, 1, 1, STD), FWD_F32 | FWD_F16 | BWX_F32, 17);
    add_shape(SH(1, 2, 65, 1, 1, NORMAL), FWD_F32 | BWX_F32, 18);
    add_shape(SH(1, 1, 127, 96, 48, NORMAL), FWD_F32 | BWX_F32, 19);
    add_shape(SH(1, 1, 65, 100, 160, STD), FWD_F32 | FWD_BF16 | BWX_F32, 20);
    add_shape(SH(2, 1, 127, 100, 160, NORMAL), BWX_F32, 21);
    /* large head dims, and the extremes of DQK != DV */
    add_shape(SH(1, 1, 33, 256, 256, STD), BWX_F32 | BWX_BF16, 22);
    add_shape(SH(1, 1, 129, 256, 256, NORMAL), FWD_ALL | BWX_F32 | TF32_ALL, 23);
    /* f32 head dim 128 (the CUDA f32 tensor-core kernels serve 64, 128, 256; IEEE 3xTF32 and TF32) */
    add_shape(SH(1, 1, 200, 128, 128, STD), FWD_F32 | BWX_F32 | BWD_F32 | TF32_ALL, 45);
    add_shape(SH(1, 1, 130, 512, 512, NORMAL), FWD_F32 | BWX_F32 | BWX_F16, 24);
    add_shape(SH(1, 1, 17, 512, 512, STD), BWX_F16, 25);
    add_shape(SH(1, 1, 40, 512, 1, STD), FWD_F32 | BWX_F32, 26);
    add_shape(SH(1, 1, 40, 1, 512, NORMAL), FWD_BF16 | BWX_BF16, 27);
    /* extreme gates (|i|, |f| up to 1e3): no NaN/Inf, every output compared */
    add_shape(SH(1, 2, 129, 48, 96, EXT_U), FWD_ALL | BWX_ALL | BWD_F32, 28);
    add_shape(SH(1, 1, 200, 64, 64, EXT_N), ALL_SET | TF32_ALL, 29);
    add_shape(SH(2, 1, 17, 3, 5, EXT_U), FWD_F32 | BWX_F32 | BWX_BF16, 30);
    /* closed input gates (i ~ -30): every row on the m floor, D' ~ e^-20. In f16, h, dq, dk, dv (~1e-11) lie
     * below the smallest subnormal (2^-24) and round to 0, so there they are only held to T's resolution
     * (tolerances.h), while m, n, di, df (f32; di ~1e-13) keep the full check: a score or P tile that underflows
     * f16 on the way returns di = df = 0 (relative error 1.0). Tensor-core head dims 64/128/256. */
    add_shape(SH(2, 1, 65, 64, 64, CLOSED), ALL_SET | FWD_TF32 | BWX_TF32, 31);
    add_shape(SH(1, 2, 130, 128, 128, CLOSED), ALL_SET, 50);
    add_shape(SH(1, 1, 100, 256, 256, CLOSED), FWD_F16 | BWX_ALL | BWD_F16, 51);
    add_shape(SHL(2, 2, 77, 64, 64, CLOSED, BSND, 0), BWX_F16 | BWD_F16 | BWX_BF16, 52);
    /* strided layouts and view offsets */
    add_shape(SHL(2, 3, 129, 48, 96, STD, BSND, 0), FWD_ALL | BWX_ALL | BWD_F32, 32);
    add_shape(SHL(2, 2, 65, 64, 64, NORMAL, PADDED, 0), STD_SET, 33);
    add_shape(SHL(1, 3, 17, 64, 64, STD, PADDED, 1), ALL_SET, 34);
    add_shape(SHL(2, 2, 33, 48, 96, EXT_U, BSND, 1), BWX_F32 | BWX_BF16 | BWD_F32, 35);
    add_shape(SHL(1, 1, 1, 3, 5, STD, PADDED, 1), FWD_F32 | BWX_BF16, 36);
    add_shape(SHL(2, 1, 19, 3, 5, NORMAL, BSND, 1), BWX_F32, 37);
    /* non-default eps and scale */
    shape s = SH(1, 2, 70, 64, 64, STD);
    s.eps = 1e-2f;
    s.scale = 0.5f;
    add_shape(s, FWD_F32 | FWD_TF32 | FWD_BF16 | BWX_F32 | BWX_F16 | BWD_F32 | BWX_TF32, 38);

    /* di and df to near-f32 accuracy on f16 / bf16 storage (tolerances.h, tol_didf_tight), at tensor-core head
     * dims, both gradient modes ("didf/" prefix) */
    const unsigned half_bw = BWX_F16 | BWX_BF16 | BWD_F16 | BWD_BF16;
    add_shape_flags(SH(2, 2, 130, 64, 64, STD), half_bw, 53, DIDF_TIGHT);
    add_shape_flags(SH(1, 2, 200, 128, 128, STD), half_bw, 54, DIDF_TIGHT);
    add_shape_flags(SH(1, 1, 160, 256, 256, NORMAL), half_bw, 55, DIDF_TIGHT);
    add_shape_flags(SHL(2, 1, 129, 128, 128, STD, BSND, 0), BWX_BF16 | BWD_F16, 56, DIDF_TIGHT);

    /* every head-dimension class of the tensor-core path: DQK != DV both ways, head dims that are not multiples of
     * 64, the xLSTM-7B heads (256 / 512), up to 512 / 512, rows that are not 16-byte aligned (100 / 36 in f16 / bf16:
     * 200- and 72-byte rows; odd view offsets), every dtype and both modes, S across one to a few tiles */
    add_shape(SH(2, 1, 130, 64, 128, STD), ALL_SET | TF32_ALL, 80);
    add_shape(SH(1, 2, 97, 128, 64, NORMAL), ALL_SET, 81);
    add_shape(SH(2, 2, 65, 96, 96, STD), ALL_SET, 82);
    add_shape(SHL(1, 2, 150, 128, 256, STD, BSND, 0), ALL_SET, 83);
    add_shape(SH(1, 1, 200, 256, 512, STD), ALL_SET | TF32_ALL, 84);
    add_shape(SH(2, 1, 129, 192, 192, NORMAL), ALL_SET, 85);
    add_shape(SH(1, 2, 77, 100, 36, STD), ALL_SET | TF32_ALL, 86);
    add_shape(SH(1, 1, 129, 320, 320, STD), ALL_SET, 87);
    add_shape(SH(1, 1, 70, 512, 512, STD), ALL_SET, 88);
    add_shape(SHL(2, 1, 88, 64, 128, NORMAL, PADDED, 1), FWD_F16 | BWX_F16 | BWD_BF16, 89);
    /* the masking D = 256 instances (sm_90a): DQK 200 masked, DV 320 as a full slice and a masked 64-column one */
    add_shape(SH(1, 2, 130, 200, 320, STD), ALL_SET, 90);

    /* The GPU set ("gpu/" prefix; see IN_GPU_SET): grids of B*NH*ceil(S/64) = 512 .. 1024 query tiles, several per
     * SM of any current GPU, so that dispatch picks the kernels of training-sized calls (the smaller cases above
     * only reach the small-grid variants). Exact mode, f16 and bf16, head dims 64 / 128 / 256 (an f16 exact-mode
     * precision loss at D = 128 showed only on such grids), then tight di / df and the other head-dim classes. The
     * float64 reference of the largest (B8 NH8 S1024 D256) is ~70 G multiply-adds: seconds on a GPU host's cores. */
    add_shape_flags(SH(8, 8, 1024, 64, 64, STD), BWX_F16 | BWX_BF16, 60, IN_GPU_SET);
    add_shape_flags(SH(8, 8, 1024, 128, 128, STD), BWX_F16 | BWX_BF16, 61, IN_GPU_SET);
    add_shape_flags(SH(8, 8, 1024, 256, 256, STD), BWX_F16 | BWX_BF16, 62, IN_GPU_SET);
    add_shape_flags(SH(8, 8, 512, 64, 64, NORMAL), BWX_BF16 | BWD_F16, 63, IN_GPU_SET | DIDF_TIGHT);
    add_shape_flags(SH(8, 8, 512, 128, 128, STD), BWX_F16 | BWD_BF16, 64, IN_GPU_SET | DIDF_TIGHT);
    add_shape_flags(SH(4, 8, 512, 256, 256, STD), BWX_BF16 | BWD_F16, 65, IN_GPU_SET | DIDF_TIGHT);
    add_shape_flags(SH(8, 8, 512, 256, 512, STD), FWD_BF16 | BWX_BF16 | BWD_F16, 66, IN_GPU_SET);
    add_shape_flags(SH(8, 8, 512, 64, 128, STD), BWX_F16 | BWD_BF16, 67, IN_GPU_SET);
    add_shape_flags(SH(8, 8, 512, 96, 96, NORMAL), BWX_F16 | BWX_BF16, 68, IN_GPU_SET);
    add_shape_flags(SH(4, 8, 512, 192, 192, STD), BWX_F16 | BWD_BF16, 69, IN_GPU_SET);
    add_shape_flags(SHL(4, 8, 768, 128, 256, STD, BSND, 0), BWX_BF16 | BWX_F32, 70, IN_GPU_SET);
    add_shape_flags(SH(2, 8, 512, 512, 512, STD), BWX_BF16 | BWD_F16, 71, IN_GPU_SET);
    add_shape_flags(SH(4, 8, 512, 100, 36, STD), BWX_F16 | BWD_BF16, 72, IN_GPU_SET);
    /* the masking D = 256 instances on a grid above the SM count (the default, not the split, forward) */
    add_shape_flags(SH(4, 8, 1024, 200, 136, STD), FWD_BF16 | FWD_F16 | BWX_BF16 | BWD_F16, 73, IN_GPU_SET);
    /* the D = 512 class (sm_90, conformance_fused.cuda): DQK 384 masked, DV 320 as a full 256-column slice and a
     * masked one */
    add_shape_flags(SH(4, 8, 512, 384, 320, NORMAL), FWD_BF16 | FWD_F16 | BWX_BF16 | BWD_F16, 74, IN_GPU_SET);
    /* the backward's chained slices (dq / dk added through the epilogues; dK/dV grids of at least two CTAs per SM of
     * an H100 or H200): masked D = 256 slices (DQK 200 of 256, the second slice 144 of 256 columns), and the D = 512
     * class's roles kernels (B3: 384 64-key tiles, B2 would be one per SM and take the sum pass) */
    add_shape_flags(SH(8, 8, 512, 200, 400, STD), BWX_BF16 | BWD_F16, 75, IN_GPU_SET);
    add_shape_flags(SH(3, 8, 1024, 512, 512, STD), BWX_BF16 | BWD_F16, 76, IN_GPU_SET);

    /* bitwise determinism, run after run */
    mc_case c;
    memset(&c, 0, sizeof c);
    c.bwd = 1; c.dtype = MLSTM_DTYPE_F32; c.grad_mode = MLSTM_GRAD_EXACT;
    c.B = 2; c.NH = 2; c.S = 129; c.DQK = 48; c.DV = 96; c.gates = MC_GATES_STD; c.eps = 1e-6f; c.seed = 40;
    push(KIND_DETERMINISM, c);
    c.dtype = MLSTM_DTYPE_BF16; c.S = 300; c.DQK = 64; c.DV = 64; c.B = 1; c.seed = 41;
    push(KIND_DETERMINISM, c);
    /* the host-array entry points: same bits as the device path, gaps of strided outputs untouched */
    memset(&c, 0, sizeof c);
    c.bwd = 1; c.dtype = MLSTM_DTYPE_F32; c.grad_mode = MLSTM_GRAD_EXACT;
    c.B = 2; c.NH = 2; c.S = 37; c.DQK = 48; c.DV = 96; c.gates = MC_GATES_STD; c.layout = MC_LAYOUT_PADDED;
    c.eps = 1e-6f; c.seed = 42;
    push(KIND_HOST_API, c);
    c.dtype = MLSTM_DTYPE_F16; c.DQK = 64; c.DV = 64; c.layout = MC_LAYOUT_BSND;
    c.grad_mode = MLSTM_GRAD_NORMALIZER_DETACHED; c.seed = 43;
    push(KIND_HOST_API, c);
    c.bwd = 0; c.dtype = MLSTM_DTYPE_BF16; c.DQK = 3; c.DV = 5; c.layout = MC_LAYOUT_BNSD; c.seed = 44;
    push(KIND_HOST_API, c);
}

/* The slow set (MLSTM_TEST_SLOW=1): the precision-contract shapes, S up to 8192, for GPU runs. The float64
 * reference alone takes minutes here (O(S^2 * D) per case on one CPU core). Backward cases check h, m, n too. */
static void build_slow_table(void)
{
    const unsigned bwx = BWX_ALL;
    add_shape(SH(1, 1, 2048, 64, 64, STD), bwx | BWD_F32, 101);
    add_shape(SH(1, 1, 2048, 128, 128, STD), bwx, 102);
    add_shape(SH(1, 1, 2048, 256, 256, STD), bwx, 103);
    add_shape(SH(1, 1, 2048, 64, 64, NORMAL), BWX_F32 | BWX_BF16, 104);
    add_shape(SH(2, 4, 2048, 128, 128, STD), BWX_BF16, 105);
    add_shape(SH(1, 1, 4096, 64, 64, STD), bwx | BWD_F32, 106);
    add_shape(SH(1, 1, 4096, 128, 128, STD), bwx, 107);
    add_shape(SH(1, 1, 4096, 256, 256, STD), BWX_F32 | BWX_BF16, 108);
    add_shape(SH(1, 1, 4096, 64, 64, NORMAL), BWX_F32, 109);
    add_shape(SH(1, 1, 8192, 64, 64, STD), bwx, 110);
    add_shape(SH(1, 1, 8192, 128, 128, STD), BWX_F32 | BWX_BF16, 111);
    add_shape(SH(1, 1, 8192, 64, 64, NORMAL), BWX_F32, 112);
    add_shape(SH(1, 1, 4096, 64, 64, EXT_U), BWX_F32 | BWD_F32, 113);
    add_shape(SHL(1, 2, 4096, 64, 64, STD, BSND, 1), BWX_BF16, 114);
    /* f32 (IEEE, and TF32 on CUDA) at the anchor shapes' head dims, full length: forward (cheap), one TF32 backward */
    add_shape(SH(1, 1, 8192, 64, 64, STD), FWD_F32 | FWD_TF32, 115);
    add_shape(SH(1, 1, 8192, 64, 64, NORMAL), FWD_F32, 116);
    add_shape(SH(1, 1, 4096, 128, 128, STD), FWD_F32 | FWD_TF32 | BWX_TF32, 117);
    add_shape(SH(1, 1, 8192, 128, 128, NORMAL), FWD_F32 | FWD_TF32, 118);
    add_shape(SH(1, 1, 4096, 256, 256, STD), FWD_F32 | FWD_TF32, 119);
    add_shape(SHL(2, 4, 2048, 64, 64, STD, BSND, 0), FWD_F32, 120);
}

/* ------------------------------------------------------------------------------------------------ */
/* Running one case                                                                                  */

static mlstm_context *g_ctx;
static size_t g_workspace_limit; /* MLSTM_TEST_WORKSPACE_MB (default 64): cases whose workspace exceeds it skip */
static int g_backend_tf32; /* the backend honours MLSTM_MATH_TF32 (CUDA): TF32 cases get tests/tolerances.h's TF32 row */

/* Resources of the running test, released by the per-test teardown (cmocka failures longjmp). */
static mc_inputs g_in;
static mc_outputs g_ref, g_dev, g_dev2;
static void *g_host_mem[MLSTM_TENSOR_COUNT];

static int case_teardown(void **state)
{
    (void)state;
    mc_inputs_free(&g_in);
    mc_outputs_free(&g_ref);
    mc_outputs_free(&g_dev);
    mc_outputs_free(&g_dev2);
    for (size_t k = 0; k < sizeof g_host_mem / sizeof g_host_mem[0]; k++) {
        free(g_host_mem[k]);
        g_host_mem[k] = NULL;
    }
    return 0;
}

static double max_finite(int dtype)
{
    return dtype == MLSTM_DTYPE_F16 ? 65504.0 : dtype == MLSTM_DTYPE_BF16 ? 0x1.fep127 : 0x1.fffffep127;
}

static int out_dtype(const mc_case *c, int o)
{
    return (o == MC_OUT_H || o == MC_OUT_DQ || o == MC_OUT_DK || o == MC_OUT_DV) ? c->dtype : MLSTM_DTYPE_F32;
}

/* Runs the case on the device; skip() on MLSTM_ERR_UNSUPPORTED (with the reason), fail on any other error
 * or on a canary violation. */
static void device_run_or_skip(const mc_case *c, const char *name, mc_outputs *out, double *ms)
{
    char api_msg[2048], canary_msg[512];
    /* the materialised algorithm (MLSTM_ALGO=materialized) only where its workspace is small */
    mlstm_desc desc;
    mc_desc(c, &desc);
    size_t ws = 0;
    if (mlstm_workspace_size(g_ctx, &desc, c->bwd, &ws) == MLSTM_OK && ws > g_workspace_limit) {
        printf("[ SKIP ] %s: workspace of %zu bytes above this run's limit of %zu (MLSTM_TEST_WORKSPACE_MB)\n", name,
               ws, g_workspace_limit);
        fflush(stdout);
        skip();
    }
    int st = mc_run_device(g_ctx, c, &g_in, out, api_msg, sizeof api_msg, canary_msg, sizeof canary_msg, ms);
    if (st == MLSTM_ERR_UNSUPPORTED) {
        printf("[ SKIP ] %s: backend reports MLSTM_ERR_UNSUPPORTED: %s\n", name, api_msg);
        fflush(stdout);
        skip();
    }
    if (st != MLSTM_OK)
        fail_msg("%s: %s", name, api_msg);
    if (canary_msg[0])
        fail_msg("%s: %s", name, canary_msg);
}

/* Error of one output against its reference, appended to the report line and, over tol, to the failures:
 * relative L2 error with each element charged max(0, |x - ref| - the storage resolution of the output's dtype)
 * (tolerances.h); by_magnitude compares |x| with |ref| (TF32 n); den_floor > ||ref|| (degenerate gradients)
 * replaces the denominator and marks the value with '*'; a reference that lies wholly below the dtype's
 * subnormal range (rounds to 0 in storage) marks it with '~'. */
typedef struct {
    char line[1536], fails[1536];
    size_t lu, fu;
} report;

static void check_output(report *r, const char *label, const double *dev, const double *ref, size_t n, int dtype,
                         double tol, int by_magnitude, double den_floor)
{
    size_t first = 0;
    const size_t bad = tu_count_nonfinite(dev, n, &first);
    double err;
    const char *mark = "";
    if (bad) {
        err = INFINITY;
        r->fu += (size_t)snprintf(r->fails + r->fu, sizeof r->fails - r->fu, " %s: %zu NaN/Inf (first at %zu: %g, ref %g);",
                                  label, bad, first, dev[first], ref[first]);
    } else {
        const double res = tol_storage_resolution(dtype);
        double ref_max = 0.0;
        for (size_t x = 0; x < n; x++)
            ref_max = fmax(ref_max, fabs(ref[x]));
        int floored;
        err = tu_rel_l2_charged(dev, ref, n, res, by_magnitude, den_floor, &floored);
        if (floored)
            mark = "*";
        else if (ref_max < 2.0 * res)
            mark = "~";
        if (!(err <= tol))
            r->fu += (size_t)snprintf(r->fails + r->fu, sizeof r->fails - r->fu, " %s: rel L2 %.3e > %.0e (max abs diff %.3e);",
                                      label, err, tol, tu_max_abs_diff(dev, ref, n));
    }
    r->lu += (size_t)snprintf(r->line + r->lu, sizeof r->line - r->lu, by_magnitude ? " |%s|=%.2e%s" : " %s=%.2e%s", label,
                              err, mark);
    if (r->fu >= sizeof r->fails)
        r->fu = sizeof r->fails - 1;
    if (r->lu >= sizeof r->line)
        r->lu = sizeof r->line - 1;
}

/* "didf/" cases: di against the float64 backward evaluated at the inputs this backward received (the device's
 * stored h in exact mode; g_ref already holds the detached mode's evaluation at the device's m and n), held to
 * tol_didf_tight (tests/tolerances.h); df is held to the contract by the regular check. */
static void check_didf_tight(report *r, const mc_case *c)
{
    mc_outputs at = { { NULL } };
    const mc_outputs *ref = &g_ref;
    if (c->grad_mode == MLSTM_GRAD_EXACT) {
        for (int o = MC_OUT_DQ; o < MC_OUT_COUNT; o++) {
            at.t[o] = malloc(mc_output_count(c, o) * sizeof(double));
            if (!at.t[o])
                abort();
        }
        at.t[MC_OUT_H] = g_dev.t[MC_OUT_H]; /* borrowed: already in storage precision */
        mc_reference_bwd_at(c, &g_in, c->grad_mode, g_ref.t[MC_OUT_M], g_ref.t[MC_OUT_N], &at);
        at.t[MC_OUT_H] = NULL;
        ref = &at;
    }
    r->lu += (size_t)snprintf(r->line + r->lu, sizeof r->line - r->lu, " | at the received %s:",
                              c->grad_mode == MLSTM_GRAD_EXACT ? "h" : "m, n");
    check_output(r, "di", g_dev.t[MC_OUT_DI], ref->t[MC_OUT_DI], mc_output_count(c, MC_OUT_DI), MLSTM_DTYPE_F32,
                 tol_didf_tight(c->dtype), 0, 0.0);
    r->lu += (size_t)snprintf(r->line + r->lu, sizeof r->line - r->lu, " (tol %.2g)", tol_didf_tight(c->dtype));
    if (r->lu >= sizeof r->line)
        r->lu = sizeof r->line - 1;
    mc_outputs_free(&at);
}

static int g_gpu_set; /* run the "gpu/" entries (group_setup) */

static void test_case(void **state)
{
    const table_entry *e = *state;
    const mc_case *c = &e->c;
    if ((e->flags & IN_GPU_SET) && !g_gpu_set) {
        printf("[ SKIP ] %s: GPU set (a training-sized grid: minutes on a CPU device); runs on the CUDA backend, "
               "elsewhere with MLSTM_TEST_GPU_SET=1\n", e->name);
        fflush(stdout);
        skip();
    }
    mc_inputs_make(c, &g_in);
    mc_reference(c, &g_in, c->grad_mode, &g_ref);

    /* Degenerate gradients (see tolerances.h): their error is measured against the size of the cancelling terms */
    double mag_den[MC_OUT_COUNT] = { 0 };
    const int degenerate = mc_degenerate_scales(c, &g_in, &g_ref, mag_den);
    /* the case itself must be representable: reference outputs within the storage dtype's finite range */
    for (int o = 0; o < MC_OUT_COUNT; o++) {
        size_t n = mc_output_count(c, o);
        for (size_t x = 0; x < n; x++)
            if (!(fabs(g_ref.t[o][x]) <= max_finite(out_dtype(c, o))))
                fail_msg("%s: test case invalid: reference %s[%zu] = %g is outside the %s range; choose another "
                         "seed", e->name, mc_output_name(o), x, g_ref.t[o][x], tu_dtype_name(out_dtype(c, o)));
    }

    /* extreme gates: the f32 gate math's own error allowance (tolerances.h) */
    const double gate_allowance = tol_gate_allowance(mc_extreme_gate_magnitude(c, &g_in));
    /* TF32 on a backend that honours it: the TF32 row of tolerances.h, n by magnitude */
    const int tf32 = c->math_mode == MLSTM_MATH_TF32 && c->dtype == MLSTM_DTYPE_F32 && g_backend_tf32;

    double ms[2];
    device_run_or_skip(c, e->name, &g_dev, ms);
    /* Normalizer-detached mode: the backward is measured against the reference evaluated at the inputs it
     * received, m and n as the backend's forward stored them (f32; checked against the float64 forward below,
     * like h). Where n_t is ill-conditioned (extreme gates make D' one-hot, so n_t is a single score q_t.k_t
     * that may nearly cancel), the forward's rounding of n_t would otherwise be charged to the backward, which
     * divides by it. (Exact mode also reads which branch of max(|l|, e^-m) won from n and m, which rounded f32
     * values cannot tell apart at the boundary; there the degenerate-gradient metric above applies instead.) */
    if (c->bwd && c->grad_mode == MLSTM_GRAD_NORMALIZER_DETACHED)
        mc_reference_bwd_at(c, &g_in, c->grad_mode, g_dev.t[MC_OUT_M], g_dev.t[MC_OUT_N], &g_ref);

    report r;
    r.lu = r.fu = 0;
    r.line[0] = r.fails[0] = '\0';
    for (int o = 0; o < MC_OUT_COUNT; o++) {
        const size_t n = mc_output_count(c, o);
        if (!n)
            continue;
        const double tol = (tf32 ? tol_max_rel_l2_tf32(o) : tol_max_rel_l2(c->dtype, o)) + gate_allowance;
        check_output(&r, mc_output_name(o), g_dev.t[o], g_ref.t[o], n, out_dtype(c, o), tol, tf32 && o == MC_OUT_N,
                     degenerate ? mag_den[o] : 0.0);
    }
    r.lu += (size_t)snprintf(r.line + r.lu, sizeof r.line - r.lu, " (tol %.2g)",
                             (tf32 ? tol_max_rel_l2_tf32(TOL_H) : tol_max_rel_l2(c->dtype, TOL_H)) + gate_allowance);
    if ((e->flags & DIDF_TIGHT) && c->bwd)
        check_didf_tight(&r, c);
    printf("[ CASE ] %s:%s fwd %.1f ms%s", e->name, r.line, ms[0], c->bwd ? "" : "\n");
    if (c->bwd)
        printf(" bwd %.1f ms\n", ms[1]);
    /* the kernels the last call enqueued (CUDA; bench/gpu_instances.sh checks each pinned variant ran) */
    const char *kernels = mlstm_context_last_kernels(g_ctx);
    if (kernels[0])
        printf("[ KERNELS ] %s: %s\n", e->name, kernels);
    fflush(stdout);
    if (r.fails[0])
        fail_msg("%s:%s", e->name, r.fails);
}

/* The same case twice: every output bitwise identical (README.md "Threads, determinism, non-finite inputs"). */
static void test_determinism(void **state)
{
    const table_entry *e = *state;
    const mc_case *c = &e->c;
    mc_inputs_make(c, &g_in);
    device_run_or_skip(c, e->name, &g_dev, NULL);
    device_run_or_skip(c, e->name, &g_dev2, NULL);
    int checked = 0;
    for (int o = 0; o < MC_OUT_COUNT; o++) {
        const size_t n = mc_output_count(c, o);
        if (!n)
            continue;
        checked++;
        for (size_t x = 0; x < n; x++)
            if (memcmp(&g_dev.t[o][x], &g_dev2.t[o][x], sizeof(double)) != 0)
                fail_msg("%s: %s[%zu] differs between two identical runs: %a vs %a", e->name, mc_output_name(o), x,
                         g_dev.t[o][x], g_dev2.t[o][x]);
    }
    assert_int_equal(checked, c->bwd ? 8 : 3);
    printf("[ CASE ] %s: %d outputs bitwise identical across two runs\n", e->name, checked);
}

/* mlstm_parallel_fwd_host / _bwd_host on arrays laid out per the case: results bitwise equal to the device
 * path, and output elements the layout does not address keep the caller's values. */
static void test_host_api(void **state)
{
    const table_entry *e = *state;
    const mc_case *c = &e->c;
    mc_inputs_make(c, &g_in);
    device_run_or_skip(c, e->name, &g_dev, NULL);

    mlstm_desc desc;
    mc_desc(c, &desc);
    const int used = c->bwd ? MLSTM_TENSOR_COUNT : MLSTM_TENSOR_N + 1;
    size_t ext[MLSTM_TENSOR_COUNT] = { 0 };
    int dts[MLSTM_TENSOR_COUNT];
    for (int t = 0; t < used; t++) {
        ext[t] = mlstm_tensor_extent(&desc, t);
        assert_true(ext[t] > 0);
        const int per_pos = t == MLSTM_TENSOR_I || t == MLSTM_TENSOR_F || t == MLSTM_TENSOR_M ||
                            t == MLSTM_TENSOR_N || t == MLSTM_TENSOR_DI || t == MLSTM_TENSOR_DF;
        dts[t] = per_pos ? MLSTM_DTYPE_F32 : c->dtype;
        g_host_mem[t] = malloc(ext[t] * tu_dtype_size(dts[t]));
        assert_non_null(g_host_mem[t]);
        tu_canary_fill(g_host_mem[t], dts[t], ext[t]);
    }
    /* scatter inputs through the layout of the desc */
    const double *src[MLSTM_TENSOR_COUNT] = { g_in.q, g_in.k, g_in.v, g_in.i, g_in.f, NULL, NULL, NULL, g_in.dh };
    int64_t dims[MLSTM_TENSOR_COUNT] = { c->DQK, c->DQK, c->DV, 1, 1, c->DV, 1, 1, c->DV, c->DQK, c->DQK, c->DV, 1, 1 };
    for (int t = 0; t < used; t++) {
        int64_t sb = desc.layout[t].batch, sh = desc.layout[t].head, ss = desc.layout[t].seq;
        if (!sb && !sh && !ss) {
            ss = dims[t]; sh = c->S * ss; sb = c->NH * sh;
        }
        size_t e2 = 0;
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t h = 0; h < c->NH; h++)
                for (int64_t s = 0; s < c->S; s++)
                    for (int64_t d = 0; d < dims[t]; d++, e2++) {
                        size_t a = (size_t)(b * sb + h * sh + s * ss + d);
                        if (src[t])
                            tu_store(g_host_mem[t], dts[t], a, src[t][e2]);
                    }
    }
    void **hm = g_host_mem;
    int st = mlstm_parallel_fwd_host(g_ctx, &desc, hm[0], hm[1], hm[2], hm[3], hm[4], hm[5], hm[6], hm[7]);
    if (st == MLSTM_OK && c->bwd)
        st = mlstm_parallel_bwd_host(g_ctx, &desc, hm[0], hm[1], hm[2], hm[3], hm[4], hm[5], hm[6], hm[7], hm[8],
                                     hm[9], hm[10], hm[11], hm[12], hm[13]);
    if (st == MLSTM_ERR_UNSUPPORTED) {
        printf("[ SKIP ] %s: MLSTM_ERR_UNSUPPORTED: %s\n", e->name, mlstm_context_last_error(g_ctx));
        skip();
    }
    if (st != MLSTM_OK)
        fail_msg("%s: host call failed: %s: %s", e->name, mlstm_status_string(st), mlstm_context_last_error(g_ctx));

    static const int out_t[MC_OUT_COUNT] = { MLSTM_TENSOR_H, MLSTM_TENSOR_M, MLSTM_TENSOR_N, MLSTM_TENSOR_DQ,
                                             MLSTM_TENSOR_DK, MLSTM_TENSOR_DV, MLSTM_TENSOR_DI, MLSTM_TENSOR_DF };
    int checked = 0;
    for (int o = 0; o < MC_OUT_COUNT; o++) {
        if (!mc_output_count(c, o))
            continue;
        const int t = out_t[o];
        int64_t sb = desc.layout[t].batch, sh = desc.layout[t].head, ss = desc.layout[t].seq;
        if (!sb && !sh && !ss) {
            ss = dims[t]; sh = c->S * ss; sb = c->NH * sh;
        }
        unsigned char *mask = calloc(ext[t], 1);
        assert_non_null(mask);
        size_t e2 = 0;
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t h = 0; h < c->NH; h++)
                for (int64_t s = 0; s < c->S; s++)
                    for (int64_t d = 0; d < dims[t]; d++, e2++) {
                        size_t a = (size_t)(b * sb + h * sh + s * ss + d);
                        mask[a] = 1;
                        double got = tu_load(g_host_mem[t], dts[t], a), want = g_dev.t[o][e2];
                        if (memcmp(&got, &want, sizeof got) != 0) {
                            free(mask);
                            fail_msg("%s: host path %s[%zu] = %a, device path %a", e->name, mc_output_name(o), e2,
                                     got, want);
                        }
                    }
        for (size_t a = 0; a < ext[t]; a++)
            if (!mask[a] && !tu_is_canary(g_host_mem[t], dts[t], a)) {
                free(mask);
                fail_msg("%s: host path wrote %s element %zu, which the layout does not address", e->name,
                         mc_output_name(o), a);
            }
        free(mask);
        checked++;
    }
    assert_int_equal(checked, c->bwd ? 8 : 3);
    printf("[ CASE ] %s: host path matches the device path bitwise (%d outputs), gaps untouched\n", e->name, checked);
}

/* ------------------------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    const char *req = getenv("MLSTM_BACKEND");
    int st = mlstm_context_create(NULL, &g_ctx);
    if (st == MLSTM_ERR_NO_DEVICE ||
        (st == MLSTM_ERR_BACKEND_UNAVAILABLE && req &&
         (!strcasecmp(req, "cuda") || !strcasecmp(req, "opencl") || !strcasecmp(req, "auto")))) {
        printf("[ SKIP ] conformance: backend '%s': %s: %s\n", req && req[0] ? req : "auto", mlstm_status_string(st),
               mlstm_last_error_global());
        fflush(stdout);
        exit(77);
    }
    if (st != MLSTM_OK) {
        printf("conformance: mlstm_context_create(MLSTM_BACKEND=%s) failed: %s (%d): %s\n", req ? req : "(unset)",
               mlstm_status_string(st), st, mlstm_last_error_global());
        return -1;
    }
    g_backend_tf32 = strcmp(mlstm_context_backend_name(g_ctx), "cuda") == 0;
    /* the GPU set: on CUDA unless MLSTM_TEST_GPU_SET=0; elsewhere only with MLSTM_TEST_GPU_SET=1 (the API does not
     * say whether an OpenCL device is a GPU) */
    const char *gpu_set = getenv("MLSTM_TEST_GPU_SET");
    g_gpu_set = gpu_set && gpu_set[0] ? tu_env_flag("MLSTM_TEST_GPU_SET")
                                      : strcmp(mlstm_context_backend_name(g_ctx), "cuda") == 0;
    const char *wmb = getenv("MLSTM_TEST_WORKSPACE_MB");
    g_workspace_limit = (size_t)((wmb && wmb[0] ? atof(wmb) : 64.0) * 1048576.0);
    const char *algo = getenv("MLSTM_ALGO");
    printf("conformance: libmlstm %s, backend '%s', device '%s', algorithm %s\n", mlstm_version(),
           mlstm_context_backend_name(g_ctx), mlstm_context_device_name(g_ctx), algo && algo[0] ? algo : "auto");
    fflush(stdout);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    mlstm_context_destroy(g_ctx);
    g_ctx = NULL;
    return 0;
}

int main(int argc, char **argv)
{
    const int slow = tu_env_flag("MLSTM_TEST_SLOW");
    if (slow)
        build_slow_table();
    else
        build_default_table();
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (size_t k = 0; k < g_count; k++)
            printf("%s\n", g_table[k].name);
        return 0;
    }
    struct CMUnitTest *tests = calloc(g_count, sizeof *tests);
    if (!tests)
        abort();
    for (size_t k = 0; k < g_count; k++) {
        tests[k].name = g_table[k].name;
        tests[k].test_func = g_table[k].kind == KIND_DETERMINISM ? test_determinism
                             : g_table[k].kind == KIND_HOST_API  ? test_host_api
                                                                 : test_case;
        tests[k].setup_func = NULL;
        tests[k].teardown_func = case_teardown;
        tests[k].initial_state = &g_table[k];
    }
    const char *filter = getenv("MLSTM_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    int rc = _cmocka_run_group_tests(slow ? "conformance_slow" : "conformance", tests, g_count, group_setup,
                                     group_teardown);
    free(tests);
    free(g_table);
    return rc;
}
