/* libmlstm CUDA kernels: every tile choice of the tensor-core path, one place, with the reasons.
 * Limits that shaped them: sm_80 allows 163 KB of shared memory per CTA (sm_90: 227 KB), and a thread
 * holds at most 255 registers, so accumulators of (rows x D) per warp must stay near 128 floats per thread. */
#pragma once

namespace mlstm {

/* FWD: (MT, NW, BN[, KS]): 16*MT query rows per warp, NW warps, BN keys per tile; KS key groups (default 1:
 * the NW warps split into KS groups that each cover all BM = 16*MT*NW/KS rows and take every KS-th key tile).
 * DKDV: (NW, BMQ, DOUT): 16 keys per warp, NW warps, BMQ queries per tile, DOUT output columns per CTA.
 * DQ: (NW, BN): 16 query rows per warp, NW warps, BN keys per tile.
 * Each choice can be overridden at build time for tuning runs, packed into one integer (nvcc splits -D
 * values at commas): FWD = KS*1000000 + MT*10000 + NW*100 + BN (KS omitted: 1), DKDV = NW*100000 + BMQ*1000 + DOUT, DQ = NW*1000 + BN,
 * e.g. -DMLSTM_TC128_FWD=10864 for (1, 8, 64). */
template <int MT_, int NW_, int BN_, int KS_ = 1> struct FwdTile {
    static constexpr int MT = MT_, NW = NW_, BN = BN_, KS = KS_, BM = 16 * MT_ * NW_ / KS_;
};
template <int NW_, int BMQ_, int DOUT_, bool PAIR_ = false> struct DkdvTile {
    static constexpr int NW = NW_, BMQ = BMQ_, DOUT = DOUT_;
    static constexpr bool PAIR = PAIR_; /* warp pairs share S^T / dP^T (bwd_tc.cuh) */
};
template <int NW_, int BN_> struct DqTile { static constexpr int NW = NW_, BN = BN_; };

/* Masked columns (f16/bf16 heads narrower than their class D, DQK and DV multiples of 8: zero-filled loads,
 * predicated stores) exist for the D = 128 class only. The other classes compile the masks out: with them, aligned
 * heads ran slower in the same-call A/B (D = 64 and D = 256; D = 128 within the noise) (bench/RESULTS.md, "Tile choices"), and their
 * narrower heads keep the staged copies (kernels_cuda/head_dims.cu) or, for D = 256 on sm_90a, take masking instances
 * of their own (launch.h). */
constexpr int MASKED_COLS_CLASS = 128;

/* Head-dim column slices (head_dims.cu) run on two streams, the call's and a side stream of the context, where they
 * use no shared staging buffer: the slices are independent calls, so one slice's kernels fill the SMs that the other
 * slice's tails and small kernels (backward prep, gates) leave idle. 0: one after the other on the call's stream. */
#ifndef MLSTM_SLICE_STREAMS
#define MLSTM_SLICE_STREAMS 1
#endif

/* D = 64: small accumulators, so each warp takes 32 query rows (MT = 2) and shares every K/V fragment
 * between two m16 tiles (halves shared-memory traffic per MMA). 48 KB smem: several CTAs per SM. */
#ifndef MLSTM_TC64_FWD
#define MLSTM_TC64_FWD 20464
#endif
#ifndef MLSTM_TC64_DKDV
#define MLSTM_TC64_DKDV 864064
#endif
#ifndef MLSTM_TC64_DQ
#define MLSTM_TC64_DQ 4064
#endif

/* D = 128: 4 warps of 32 query rows (O accumulator 128 floats per thread); key tiles of 32 keep S at
 * 32 floats (with 64 keys ptxas spilled ~400 bytes). Backward: 8 warps x 16 keys, query tiles of 32
 * (dK, dV accumulators 64 + 64 floats; query tiles of 64 spilled 120 bytes). */
#ifndef MLSTM_TC128_FWD
#define MLSTM_TC128_FWD 20432
#endif
#ifndef MLSTM_TC128_DKDV
#define MLSTM_TC128_DKDV 832128
#endif
#ifndef MLSTM_TC128_DQ
#define MLSTM_TC128_DQ 4064
#endif

/* D = 256: O accumulator alone is 128 floats for 16 rows, so one m16 tile per warp and 8 warps; key tiles
 * of 32 keep smem at 128 KB (fits sm_80). Backward dK/dV would need 256 accumulator floats per thread:
 * split into two CTAs of 128 output columns each (S^T and dP^T recomputed; di from sum_t P S). */
#ifndef MLSTM_TC256_FWD
#define MLSTM_TC256_FWD 10832
#endif
#ifndef MLSTM_TC256_DKDV
#define MLSTM_TC256_DKDV 432128
#endif
#ifndef MLSTM_TC256_DQ
#define MLSTM_TC256_DQ 4032
#endif

/* Small-grid variants (query / key tiles of 64 rows: twice the CTAs of the defaults for D = 64/128), chosen
 * at run time when the default grid has fewer than MLSTM_SMALL_CTAS_PER_SM CTAs per SM (dispatch.cu; env
 * MLSTM_CUDA_SMALL_TILES=0/1/auto: never/always/by grid size; unset: MLSTM_SMALL_TILES_DEFAULT).
 * The forward (1, 4, 64) was faster at S = 2048 (bench/RESULTS.md, "Tile choices").
 * D = 256 dK/dV is different: its default (64-key CTAs, x2 column split, 128 KB so that sm_80 takes it) already
 * makes a large grid, but shared memory allows one 4-warp CTA per SM. Its "small" slot holds the sm_90 variant,
 * used whenever the device runs it (BWD_ALT_ALWAYS): 8 warps in 4 pairs on 64 keys (PAIR: one warp of a pair
 * computes S^T, the other dP^T, they swap the rounded tiles through shared memory and each accumulates one column
 * half of dK and dV), ~139 KB, so neither the column split's recomputation nor a 4-warp SM remains. */
/* Default policy when the env variable is unset: -1 auto, 0 never. Auto since the small-grid instances passed
 * the conformance suite and ran faster at every S <= 4096 measured (bench/RESULTS.md, "Tile choices"). */
#ifndef MLSTM_SMALL_TILES_DEFAULT
#define MLSTM_SMALL_TILES_DEFAULT (-1)
#endif
#ifndef MLSTM_SMALL_CTAS_PER_SM
#define MLSTM_SMALL_CTAS_PER_SM 2
#endif
#ifndef MLSTM_TC64_FWD_S
#define MLSTM_TC64_FWD_S 10464
#endif
#ifndef MLSTM_TC64_DKDV_S
#define MLSTM_TC64_DKDV_S 464064
#endif
#ifndef MLSTM_TC128_FWD_S
#define MLSTM_TC128_FWD_S 10464
#endif
#ifndef MLSTM_TC128_DKDV_S
#define MLSTM_TC128_DKDV_S 432128
#endif
#ifndef MLSTM_TC256_FWD_S
#define MLSTM_TC256_FWD_S 10432
#endif
/* Key-split forward (KS = 2: two groups of 4 warps on the same 64 query rows, alternate key tiles; halves the
 * serial chain of key tiles per CTA), chosen instead of the small tiles when even their grid has fewer than
 * MLSTM_SPLIT_CTAS_PER_SM CTAs per SM: faster than the small tiles at S <= 2048 of B1 NH8 (256 CTAs), slower at
 * S = 4096 (512 CTAs) (bench/RESULTS.md, "Tile choices"). */
#ifndef MLSTM_SPLIT_CTAS_PER_SM
#define MLSTM_SPLIT_CTAS_PER_SM 3
#endif
#ifndef MLSTM_TC64_FWD_K
#define MLSTM_TC64_FWD_K 2010864
#endif
#ifndef MLSTM_TC128_FWD_K
#define MLSTM_TC128_FWD_K 2010864
#endif
#ifndef MLSTM_TC256_FWD_K
#define MLSTM_TC256_FWD_K 2010832
#endif
/* The pairs beat the default and 8 warps without pairs (832128) at S 2048..8192 (bench/RESULTS.md, "Tile choices"). Packed as
 * PAIR*10000000 + NW*100000 + BMQ*1000 + DOUT. */
#ifndef MLSTM_TC256_DKDV_S
#define MLSTM_TC256_DKDV_S 10832128
#endif

#define MLSTM_FWD_TILE(X) FwdTile<(X) / 10000 % 100, (X) / 100 % 100, (X) % 100, ((X) / 1000000 ? (X) / 1000000 : 1)>
#define MLSTM_DKDV_TILE(X) DkdvTile<(X) / 100000 % 100, (X) / 1000 % 100, (X) % 1000, ((X) / 10000000) != 0>

/* sm_90a warpgroup-MMA forward (fwd_wgmma.cuh): (NST, BN) packed as NST * 1000 + BN: two consumer warpgroups of 64
 * query rows each and a producer warpgroup, BN keys per tile, NST K/V stages. D = 64/128: S = 64 x 128 per warpgroup
 * (64 floats per thread), O 32/64 floats; D = 256: O is 128 floats per thread, so 64-key tiles. Shared memory (Q +
 * NST K/V stages + gates): 154 / 167 / 196 KB. 64-key tiles were slower at S8192, fewer or more stages within the
 * noise (bench/RESULTS.md, "Tile choices"). */
template <int NST_, int BN_, int KS_ = 1, int CL_ = 1> struct WgTile {
    static constexpr int NST = NST_, BN = BN_, KS = KS_, CL = CL_;
};
#ifndef MLSTM_TC64_FWD_WG
#define MLSTM_TC64_FWD_WG 4128
#endif
#ifndef MLSTM_TC128_FWD_WG
#define MLSTM_TC128_FWD_WG 2128
#endif
#ifndef MLSTM_TC256_FWD_WG
#define MLSTM_TC256_FWD_WG 2064
#endif
/* Policy when env MLSTM_CUDA_WGMMA is unset: -1 auto (dispatch.cu use_wgmma), 0 never, 1 whenever eligible.
 * Auto since the kernels passed the conformance set, test_extreme, test_determinism and the sanitizers on an H200 and
 * ran faster than the mma.sync kernels at every measured shape. Variants measured and dropped: one warpgroup of 64
 * rows per CTA for small grids (two CTAs per SM; slower at every S), 64-key tiles for D = 64 (slower at S8192)
 * (bench/RESULTS.md, "Tile choices"). */
#ifndef MLSTM_WGMMA_DEFAULT
#define MLSTM_WGMMA_DEFAULT (-1)
#endif
#define MLSTM_WG_TILE(X)                                                                                         \
    WgTile<(X) / 1000 % 10, (X) % 1000, ((X) / 10000 % 10 > 0 ? (X) / 10000 % 10 : 1), ((X) / 100000 > 0 ? (X) / 100000 : 1)>
/* Key-split variant (KS = 2, packed as 20000 + NST * 1000 + BN): both consumer warpgroups on the same 64 query
 * rows, each taking every other key tile, for grids below MLSTM_TC{D}_FWD_WG_SPLIT_PCT percent of the SMs (default
 * tiles). Two K/V tiles per stage, so 64 / 64 / 32-key tiles with 4 / 3 / 2 stages keep shared memory at 146 / 216 /
 * 164 KB. It halves the serial chain of key tiles of a CTA; once the default grid fills the GPU it only adds the
 * merge (bench/RESULTS.md, "Tile choices").
 * Cluster variant (a pair, CL = 2, packed as 200000 + NST * 1000 + BN): the two CTAs of a thread-block cluster cover
 * the same 128 rows with the default tiles, CTA r every other key tile, K/V through TMA, the two partial states merged
 * by a bulk copy between the CTAs' shared memories. D = 256 uses it (faster than the key split at S1024 and S2048);
 * for D = 64 / 128 the pair (first version) was slower than the key split; clusters of four were slower for all and
 * are gone (bench/RESULTS.md, "Tile choices"). */
#ifndef MLSTM_TC64_FWD_WG_K
#define MLSTM_TC64_FWD_WG_K 24064
#endif
#ifndef MLSTM_TC128_FWD_WG_K
#define MLSTM_TC128_FWD_WG_K 23064
#endif
#ifndef MLSTM_TC256_FWD_WG_K
#define MLSTM_TC256_FWD_WG_K 202064
#endif
/* the split's threshold in percent of the SMs, per D: the split won at every D with the 128 default CTAs of B1 NH8
 * S2048 and by more at S <= 1024; at S4096 (256 CTAs) the default tiles fill the GPU (bench/RESULTS.md, "Tile choices"). */
#ifndef MLSTM_TC64_FWD_WG_SPLIT_PCT
#define MLSTM_TC64_FWD_WG_SPLIT_PCT 100
#endif
#ifndef MLSTM_TC128_FWD_WG_SPLIT_PCT
#define MLSTM_TC128_FWD_WG_SPLIT_PCT 100
#endif
#ifndef MLSTM_TC256_FWD_WG_SPLIT_PCT
#define MLSTM_TC256_FWD_WG_SPLIT_PCT 100
#endif
/* The default-tile forward of class D loads K / V through TMA maps (one producer thread issues a stage's tensor
 * copies, the other producer threads only stage the gates) where the call's tensors can be mapped, else by the 128
 * producer threads' cp.async: 1 on, 0 off. On for all three (H100, twentieth session, bench/RESULTS.md: bf16 forward
 * 5-13% faster at 64/64 to 256/512, f16 2-5%). */
#ifndef MLSTM_TC64_FWD_WG_TMA
#define MLSTM_TC64_FWD_WG_TMA 1
#endif
#ifndef MLSTM_TC128_FWD_WG_TMA
#define MLSTM_TC128_FWD_WG_TMA 1
#endif
#ifndef MLSTM_TC256_FWD_WG_TMA
#define MLSTM_TC256_FWD_WG_TMA 1
#endif
/* The default-tile forward of class D overlaps each consumer warpgroup's C of key tile j with its O += P V of tile
 * j - 1 (fwd_wgmma.cuh OV; K and V tiles on separate barriers): 1 on, 0 off. Off: correct, but 5-21% slower (H100,
 * bench/RESULTS.md, twentieth session). */
#ifndef MLSTM_TC64_FWD_WG_OVERLAP
#define MLSTM_TC64_FWD_WG_OVERLAP 0
#endif
#ifndef MLSTM_TC128_FWD_WG_OVERLAP
#define MLSTM_TC128_FWD_WG_OVERLAP 0
#endif
#ifndef MLSTM_TC256_FWD_WG_OVERLAP
#define MLSTM_TC256_FWD_WG_OVERLAP 0
#endif
/* The two consumer warpgroups of the default-tile forward take turns issuing their score products (fwd_wgmma.cuh
 * PP; faster at S8192, unchanged at S <= 2048: bench/RESULTS.md, "Tile choices") */
#ifndef MLSTM_FWD_WG_PINGPONG
#define MLSTM_FWD_WG_PINGPONG 1
#endif
/* The default-tile forward as a persistent kernel (fwd_wgmma_persistent.cuh: one CTA per SM walking query tiles, the
 * next tile's loads under the last one's tail; where the K / V maps can be made, else today's kernel): 1 on, 0 off.
 * Off: slower (H100, same call, with common.cuh persistent_tile's alternating order: bf16 forward +1% to +6% at
 * D = 128 / 256, -2% to -4% at 64/64 S8192), and racecheck reports shared-memory hazards in its D = 64 instances that
 * are not yet located (bench/RESULTS.md, twenty-first session). */
#ifndef MLSTM_FWD_WG_PERSISTENT
#define MLSTM_FWD_WG_PERSISTENT 0
#endif
/* The persistent forward writes h through its warpgroup's own rows of the Q tile (fwd_epilogue_staged in the TMA
 * layout: 16-byte stores as the default kernel's staged epilogue), releasing Q for the next tile's load only after
 * that, instead of from the fragments after releasing Q: 1 on, 0 off. Off until measured (twenty-first session:
 * correct on the CPU emulator, tools/kernel_emu run.sh wg16; not yet run on a GPU). */
#ifndef MLSTM_FWD_PERS_STAGED_EPILOGUE
#define MLSTM_FWD_PERS_STAGED_EPILOGUE 0
#endif
/* The default-tile forward writes h through shared memory (fwd_wgmma.cuh fwd_epilogue_staged: 16-byte row-contiguous
 * stores once both consumer warpgroups are done with the tiles) instead of from its fragments: 1 on, 0 off. On (H100,
 * twentieth session: forward 2-7% faster at every class, bench/RESULTS.md 09:05). */
#ifndef MLSTM_FWD_WG_STAGED_EPILOGUE
#define MLSTM_FWD_WG_STAGED_EPILOGUE 1
#endif
/* sm_90a dQ kernel (bwd_wgmma.cuh, warp-specialised: a producer warpgroup and two consumer warpgroups of 64 query
 * rows), tiles packed as NST * 1000 + BN (BN at most 64: a key tile stays inside one 64-block of the gate cumsums).
 * Key split for small grids (DQ_WS): both consumers on one query tile taking every other key tile, NST stages of two
 * K/V tiles; shared memory 141 / 213 / 164 KB. Used while the dQ grid has at most MLSTM_DQ_WS_CTAS_PER_SM tiles per SM:
 * it beat the former one-warpgroup kernel at two tiles per SM and lost at eight (bench/RESULTS.md, "Tile choices"). */
#ifndef MLSTM_TC64_DQ_WS
#define MLSTM_TC64_DQ_WS 4064
#endif
#ifndef MLSTM_TC128_DQ_WS
#define MLSTM_TC128_DQ_WS 3064
#endif
#ifndef MLSTM_TC256_DQ_WS
#define MLSTM_TC256_DQ_WS 2032
#endif
#ifndef MLSTM_DQ_WS_CTAS_PER_SM
#define MLSTM_DQ_WS_CTAS_PER_SM 2
#endif
/* The backward's head-dim slices chain their dq, dk through the kernels' epilogues (head_dims.cu) where one slice's
 * dK/dV grid (64-key tiles) has at least MLSTM_CHAIN_CTAS_PER_SM CTAs per SM; on smaller grids the chain's order
 * (each slice's dK/dV after the previous one's) costs more than the sum pass. 256/512 bf16 forward + backward on an
 * H100 (132 SMs), chained against summed: B1 NH8 S1024 (128 CTAs) 0.264 against 0.245 ms, B1 NH16 S1024 (256)
 * 0.372 against 0.406, B1 NH8 S2048 (256) 0.541 against 0.566 (bench/RESULTS.md, seventeenth session). */
#ifndef MLSTM_CHAIN_CTAS_PER_SM
#define MLSTM_CHAIN_CTAS_PER_SM 1
#endif
/* Above that (DQ_WSL): the consumers on two 64-row query tiles sharing each stage's K/V tile; shared memory 86 / 166 /
 * 197 KB. It beat the former one-warpgroup kernel at S4096 and S8192 for every D but D = 64 at S8192
 * (bench/RESULTS.md, "Tile choices"). D = 256 takes two stages of 64 keys rather than four of 32 (same shared memory):
 * with 32 keys dP = dH V^T is an N = 32 product bound by shared-memory reads; fwbw 3-4% faster on an H100
 * (bench/RESULTS.md, eighteenth and nineteenth sessions). */
#ifndef MLSTM_TC64_DQ_WSL
#define MLSTM_TC64_DQ_WSL 4064
#endif
#ifndef MLSTM_TC128_DQ_WSL
#define MLSTM_TC128_DQ_WSL 4064
#endif
#ifndef MLSTM_TC256_DQ_WSL
#define MLSTM_TC256_DQ_WSL 2064
#endif
/* The dQ kernels of class D (both tile shapes) load their K / V stages through TMA maps (one producer thread issues a
 * stage; the launch falls back to the producers' cp.async where the maps cannot be made): 1 on, 0 off. H100, twentieth
 * session (bench/RESULTS.md 09:08): fwbw 1-2% faster at D = 256, 1% slower at 128/128 S8192, even at 64/64. */
#ifndef MLSTM_TC64_DQ_WG_TMA
#define MLSTM_TC64_DQ_WG_TMA 0
#endif
#ifndef MLSTM_TC128_DQ_WG_TMA
#define MLSTM_TC128_DQ_WG_TMA 0
#endif
#ifndef MLSTM_TC256_DQ_WG_TMA
#define MLSTM_TC256_DQ_WG_TMA 1
#endif
/* The dQ kernels' KS = 1 tiles write dq (and df) through shared memory (bwd_wgmma.cuh dq_epilogue_staged: 16-byte
 * loads of q and the chained prior part, 16-byte dq stores) instead of from the fragments: 1 on, 0 off. On (H100,
 * same call: 256/512 bf16 fwbw -2.6% at B4 S2048, -2% at S8192; 64 / 128 within 1%; conformance, racecheck and
 * memcheck clean; bench/RESULTS.md, twenty-first session). */
#ifndef MLSTM_DQ_WG_STAGED_EPILOGUE
#define MLSTM_DQ_WG_STAGED_EPILOGUE 1
#endif
/* The dQ kernels' KS = 1 tiles as a persistent kernel (bwd_wgmma_persistent.cuh: one CTA per SM walking query tiles,
 * dH / K / V through TMA, the next tile's loads under the last one's tail; where the maps can be made, else today's
 * kernel): 1 on, 0 off. Off: even to 2% slower (H100, same call, with persistent_tile's alternating order;
 * bench/RESULTS.md, twenty-first session). */
#ifndef MLSTM_DQ_WG_PERSISTENT
#define MLSTM_DQ_WG_PERSISTENT 0
#endif
/* sm_90a dK/dV kernel: one warpgroup per 64 keys, BMQ queries per tile (dK and dV accumulators are D/2 floats per
 * thread each; D = 256 takes the warpgroup pairs below). Shared memory 49 / 97 KB. D = 128 with 64-query tiles (a
 * few spilled registers) beat 32; D = 64 with 32-query tiles was slower than 64 (bench/RESULTS.md, "Tile choices"). */
#ifndef MLSTM_TC64_DKDV_WG
#define MLSTM_TC64_DKDV_WG 64
#endif
#ifndef MLSTM_TC128_DKDV_WG
#define MLSTM_TC128_DKDV_WG 64
#endif
/* D = 256: two warpgroups per 64 keys (DKDV_WG_PAIR, bwd_wgmma.cuh), each accumulating dK and dV for 128 columns;
 * 64-query tiles, ~212 KB of shared memory (sm_90 only). */
#ifndef MLSTM_TC256_DKDV_WG
#define MLSTM_TC256_DKDV_WG 64
#endif
/* bf16 D = 256 dK/dV: 1 or 2 runs the ping-pong pair (bwd_wgmma.cuh mlstm_bwd_dkdv_wgmma_pp_kernel: the two
 * warpgroups half a step apart, so one's elementwise work overlaps the other's products), 0 the pair meeting at CTA
 * barriers; 1 hands the tiles over through mbarriers, 2 through named barriers. f16 keeps the pair (its range guard
 * joins both warpgroups' row maxima). 1 with the D = 256 dQ's 64-key tiles took 256/512 fwbw 6-9% below the pair with
 * 32-key dQ tiles on an H100 and passed the conformance suite, racecheck and memcheck; racecheck reports the
 * bar.arrive handoffs of 2 as hazards (bench/RESULTS.md, eighteenth and nineteenth sessions). */
#ifndef MLSTM_DKDV_PINGPONG
#define MLSTM_DKDV_PINGPONG 1
#endif
/* The ping-pong dK/dV pair (bf16 D = 256) starts its first score products once K, V and the first query tile have
 * landed, the second query tile landing meanwhile on its own mbarrier, instead of waiting for all three: 1 on, 0 off.
 * Off: no gain (H100, same call: bf16 fwbw -1% to +0.3%; bench/RESULTS.md, twenty-first session). */
#ifndef MLSTM_DKDV_SPLIT_PROLOGUE
#define MLSTM_DKDV_SPLIT_PROLOGUE 0
#endif
/* The D = 256 dK/dV pairs write dk and dv through shared memory (bwd_wgmma.cuh dkdv_rows_staged: 16-byte loads of the
 * chained prior part, 16-byte stores) instead of from the fragments: 1 on, 0 off. On (H100, same call: 256/512 bf16
 * fwbw -4% at B4 S2048; conformance clean; with the dQ's staged epilogue -7.4%, the full conformance suite, racecheck
 * and memcheck clean; bench/RESULTS.md, twenty-first session). */
#ifndef MLSTM_DKDV_STAGED_EPILOGUE
#define MLSTM_DKDV_STAGED_EPILOGUE 1
#endif
/* The ping-pong dK/dV pair (bf16 D = 256) loads its query tiles from the third on through TMA (role 1's thread 0
 * issues the q and dh tensor copies onto the buffer's mbarrier) instead of 128 threads' cp.async, where the maps can
 * be made (else cp.async): 1 on, 0 off. Off until measured (twenty-first session: correct on the CPU emulator,
 * tools/kernel_emu run.sh wg16-bwd; not yet run on a GPU). */
#ifndef MLSTM_DKDV_TMA
#define MLSTM_DKDV_TMA 0
#endif

/* the members every TileCfg<D> takes from its MLSTM_TC{D}_* entries above */
#define MLSTM_TILE_CFG_MEMBERS(D)                                                                                \
    using Fwd = MLSTM_FWD_TILE(MLSTM_TC##D##_FWD);                                                             \
    using Dkdv = MLSTM_DKDV_TILE(MLSTM_TC##D##_DKDV);                                                          \
    using Dq = DqTile<MLSTM_TC##D##_DQ / 1000, MLSTM_TC##D##_DQ % 1000>;                                       \
    using FwdS = MLSTM_FWD_TILE(MLSTM_TC##D##_FWD_S);                                                          \
    using FwdK = MLSTM_FWD_TILE(MLSTM_TC##D##_FWD_K);                                                          \
    using DkdvS = MLSTM_DKDV_TILE(MLSTM_TC##D##_DKDV_S);                                                       \
    using FwdWg = MLSTM_WG_TILE(MLSTM_TC##D##_FWD_WG);                                                         \
    using FwdWgK = MLSTM_WG_TILE(MLSTM_TC##D##_FWD_WG_K);                                                      \
    static constexpr int FWD_WG_SPLIT_PCT = MLSTM_TC##D##_FWD_WG_SPLIT_PCT;                                    \
    static constexpr bool FWD_WG_TMA = MLSTM_TC##D##_FWD_WG_TMA != 0;                                          \
    static constexpr bool FWD_WG_OVERLAP = MLSTM_TC##D##_FWD_WG_OVERLAP != 0;                                  \
    static constexpr bool DQ_WG_TMA = MLSTM_TC##D##_DQ_WG_TMA != 0;                                            \
    static constexpr int DQ_WS_BN = MLSTM_TC##D##_DQ_WS % 1000, DQ_WS_NST = MLSTM_TC##D##_DQ_WS / 1000;        \
    static constexpr int DQ_WSL_BN = MLSTM_TC##D##_DQ_WSL % 1000, DQ_WSL_NST = MLSTM_TC##D##_DQ_WSL / 1000;    \
    static constexpr int DKDV_WG_BMQ = MLSTM_TC##D##_DKDV_WG;                                                  \
    static constexpr bool DKDV_WG = true;                                                                      \
    static constexpr bool BWD_SMALL = MLSTM_TC##D##_DKDV_S != MLSTM_TC##D##_DKDV; /* a distinct small dK/dV */  \
    static constexpr int DVT = D;                       /* output (V) tile width: DQK = DV = D */              \
    static constexpr bool MASKS = D == MASKED_COLS_CLASS; /* its mma.sync instances mask columns */            \
    static constexpr bool FWD_SM90_ONLY = false;        /* the default forward runs on sm_80 too */            \
    static constexpr bool BWD_SM90_ONLY = false;        /* so does the default backward */                     \
    static constexpr bool DKDV_ROLES = false;           /* the default dK/dV: mlstm_bwd_dkdv_kernel */

template <int D> struct TileCfg;
template <> struct TileCfg<64> {
    MLSTM_TILE_CFG_MEMBERS(64)
    static constexpr bool DKDV_WG_PAIR = false;
    static constexpr bool BWD_ALT_ALWAYS = false; /* the small dK/dV chosen by grid size */
};
template <> struct TileCfg<128> {
    MLSTM_TILE_CFG_MEMBERS(128)
    static constexpr bool DKDV_WG_PAIR = false;
    static constexpr bool BWD_ALT_ALWAYS = false; /* the small dK/dV chosen by grid size */
};
template <> struct TileCfg<256> {
    MLSTM_TILE_CFG_MEMBERS(256)
    static constexpr bool DKDV_WG_PAIR = true;   /* two warpgroups per 64 keys (bwd_wgmma.cuh) */
    static constexpr bool BWD_ALT_ALWAYS = true; /* the sm_90 dK/dV whenever the device runs it */
};

/* D = 512 (DQK 257..512): scores over 512 columns (Q, K tiles 512 wide) and 256-column V / O tiles, so that O stays at
 * 128 floats per thread; a wider DV runs as 256-column slices (head_dims.cu), each recomputing the scores. Forward
 * (1, 8, 32): Q 128 KB + two stages of K (32 KB) and V (16 KB) + gates = 225 KB, which only sm_90's 227 KB hold.
 * dK/dV (its BMQ 32; bwd_tc.cuh mlstm_bwd_dkdv_roles_kernel): 64 keys, 32-query tiles, two CTAs of 8 warps per key
 * tile, one forming dP^T (256 wide) for dk, the other S^T (512 wide) and dP^T for dv and di, the two warps of a 16-key
 * group splitting each score tile's queries and sharing the pieces; 199 KB. dQ (8 warps, 32-key
 * tiles): two warps per 16 rows, each forming dP and P for 16 of the keys, exchanging them, and one 256-column half of
 * dQ; 135 KB. sm_90 only
 * (FWD_SM90_ONLY, BWD_SM90_ONLY: stubs on sm_80, where these heads keep the SIMT kernels). Its instances always mask
 * (DQK and DV multiples of 8). */
/* Whether the D = 512 class serves calls when env MLSTM_CUDA_D512 is unset (=1 on, =0 off): on since its kernels
 * passed the conformance suite on an H100 (conformance_fused.cuda, bench/RESULTS.md, fourteenth session). */
#ifndef MLSTM_D512_DEFAULT
#define MLSTM_D512_DEFAULT 1
#endif
#ifndef MLSTM_TC512_FWD
#define MLSTM_TC512_FWD 10832
#endif
#ifndef MLSTM_TC512_DKDV
#define MLSTM_TC512_DKDV 432128
#endif
#ifndef MLSTM_TC512_DQ
#define MLSTM_TC512_DQ 8032
#endif
template <> struct TileCfg<512> {
    using Fwd = MLSTM_FWD_TILE(MLSTM_TC512_FWD);
    using Dkdv = MLSTM_DKDV_TILE(MLSTM_TC512_DKDV);
    using DkdvS = Dkdv;
    using Dq = DqTile<MLSTM_TC512_DQ / 1000, MLSTM_TC512_DQ % 1000>;
    static constexpr int DVT = 256;
    static constexpr bool MASKS = true;
    static constexpr bool FWD_SM90_ONLY = true, BWD_SM90_ONLY = true;
    static constexpr bool DKDV_ROLES = true; /* dK/dV: mlstm_bwd_dkdv_roles_kernel (Dkdv's BMQ only) */
};

/* f32 storage on tensor cores (fwd_tf32.cuh), forward only: (MT, NW, BN) packed as the FWD entries above. f32
 * tiles take twice the shared memory of f16/bf16 and the 3xTF32 operand split needs registers, so:
 * D = 64: (1, 4, 64), 80 KB: 64-row query tiles (twice the CTAs of (2, 4, 32); faster up to S4096, slower at S8192).
 * D = 128: (1, 8, 32), 130 KB (one CTA of 8 warps per SM; K/V tiles shared by 128 query rows); (1, 8, 64) was
 * faster but needs 194 KB, more than sm_80's 163 KB (bench/RESULTS.md, "Tile choices"). D = 256: (1, 4, 16), 129 KB (O alone is 128
 * floats per thread). All fit sm_80. */
#ifndef MLSTM_TF32_64_FWD
#define MLSTM_TF32_64_FWD 10464
#endif
#ifndef MLSTM_TF32_128_FWD
#define MLSTM_TF32_128_FWD 10832
#endif
#ifndef MLSTM_TF32_256_FWD
#define MLSTM_TF32_256_FWD 10416
#endif
/* Whether the f32 forward uses these kernels when env MLSTM_CUDA_F32_TC is unset (=1 on, =0 off). On since they
 * passed the f32 conformance set (default and slow), test_extreme, test_determinism and the sanitizers on an H200
 * (bench/RESULTS.md, "Tile choices"). */
#ifndef MLSTM_F32_TC_DEFAULT
#define MLSTM_F32_TC_DEFAULT 1
#endif
/* f32 backward on tensor cores (bwd_tf32.cuh): dK/dV (NW, BMQ, SPLIT) packed as SPLIT*100000 + NW*1000 + BMQ, dQ
 * (NW, BN) as DQ above; NW = 4 (64-key / 64-row CTAs: one gate block, one df tile). dK/dV: K and V tiles of 64 keys
 * stay in shared memory while BMQ query rows per step stream through two buffers; the dK and dV accumulators take
 * D / 4 floats per thread each, so D = 256 splits by output (SPLIT: one CTA per key tile for dV, one for dK and di).
 * dQ: Q and dh of 64 rows stay, BN keys per step in two buffers. ptxas drove the step sizes: D = 128 dK/dV with
 * 32-row steps spilled 244 B (16: none), D = 256 dQ with 16-key steps 56 B (8: none).
 * Shared memory (occupancy on an H100, 228 KB and 64K registers per SM): D64 dK/dV 86 KB (2 CTAs), dQ 66.5 KB (3);
 * D128 dK/dV 110 KB (2), dQ 98.5 KB (2); D256 dK/dV 206 KB (1; sm_90 only: on sm_80 the setup refuses it and the
 * SIMT kernels serve D = 256), dQ 162.5 KB (1). */
template <int NW_, int BMQ_, bool SPLIT_> struct Dkdv32Tile {
    static constexpr int NW = NW_, BMQ = BMQ_;
    static constexpr bool SPLIT = SPLIT_;
};
#ifndef MLSTM_TF32_64_DKDV
#define MLSTM_TF32_64_DKDV 4032
#endif
#ifndef MLSTM_TF32_64_DQ
#define MLSTM_TF32_64_DQ 4032
#endif
#ifndef MLSTM_TF32_128_DKDV
#define MLSTM_TF32_128_DKDV 4016
#endif
#ifndef MLSTM_TF32_128_DQ
#define MLSTM_TF32_128_DQ 4016
#endif
#ifndef MLSTM_TF32_256_DKDV
#define MLSTM_TF32_256_DKDV 104016
#endif
#ifndef MLSTM_TF32_256_DQ
#define MLSTM_TF32_256_DQ 4008
#endif
#define MLSTM_DKDV32_TILE(X) Dkdv32Tile<(X) / 1000 % 100, (X) % 1000, ((X) / 100000) != 0>
#define MLSTM_DQ_TILE(X) DqTile<(X) / 1000, (X) % 1000>
/* sm_90a f32 forward on split f16 warpgroup MMA (fwd_wgmma_f32.cuh), D = 64 / 128: (NST, BN) packed as NST * 1000
 * + BN like FWD_WG. Q and every K/V stage hold a hi and a lo tile, twice fwd_wgmma.cuh's bytes: 64-key tiles with 4 /
 * 2 stages take 163 / 196 KB. */
#ifndef MLSTM_F32_64_FWD_WG
#define MLSTM_F32_64_FWD_WG 4064
#endif
#ifndef MLSTM_F32_128_FWD_WG
#define MLSTM_F32_128_FWD_WG 2064
#endif

/* its backward (bwd_wgmma_f32.cuh): K/V (dK/dV) or Q/dh (dQ) of 64 rows resident, NST stages of the other pair of
 * 64-row tiles: 4 / 2 stages for D = 64 / 128 (170 / 198 KB) */
#ifndef MLSTM_F32_64_BWD_WG_NST
#define MLSTM_F32_64_BWD_WG_NST 4
#endif
#ifndef MLSTM_F32_128_BWD_WG_NST
#define MLSTM_F32_128_BWD_WG_NST 2
#endif
/* its element loops: M_PARTIAL sums a thread's M_tj of a step (8 per row) in plain f32 before the compensated add
 * into di / the row sums; FULL_BLOCKS drops the per-element mask where a block is below the diagonal and inside S.
 * Faster, at some df accuracy in one gate regime (bench/RESULTS.md, "Tile choices"; kernels_cuda/NOTES.md, open items) */
#ifndef MLSTM_F32_M_PARTIAL
#define MLSTM_F32_M_PARTIAL 1
#endif
#ifndef MLSTM_F32_FULL_BLOCKS
#define MLSTM_F32_FULL_BLOCKS 1
#endif

template <int D> struct TileCfg32;
template <> struct TileCfg32<64> {
    using FwdWg = MLSTM_WG_TILE(MLSTM_F32_64_FWD_WG);
    static constexpr int BWD_WG_NST = MLSTM_F32_64_BWD_WG_NST;
    using Fwd = MLSTM_FWD_TILE(MLSTM_TF32_64_FWD);
    using Dkdv = MLSTM_DKDV32_TILE(MLSTM_TF32_64_DKDV);
    using Dq = MLSTM_DQ_TILE(MLSTM_TF32_64_DQ);
};
template <> struct TileCfg32<128> {
    using FwdWg = MLSTM_WG_TILE(MLSTM_F32_128_FWD_WG);
    static constexpr int BWD_WG_NST = MLSTM_F32_128_BWD_WG_NST;
    using Fwd = MLSTM_FWD_TILE(MLSTM_TF32_128_FWD);
    using Dkdv = MLSTM_DKDV32_TILE(MLSTM_TF32_128_DKDV);
    using Dq = MLSTM_DQ_TILE(MLSTM_TF32_128_DQ);
};
template <> struct TileCfg32<256> {
    using Fwd = MLSTM_FWD_TILE(MLSTM_TF32_256_FWD);
    using Dkdv = MLSTM_DKDV32_TILE(MLSTM_TF32_256_DKDV);
    using Dq = MLSTM_DQ_TILE(MLSTM_TF32_256_DQ);
};

} // namespace mlstm
